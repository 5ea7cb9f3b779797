"""Training and evaluating a group of members, epoch by epoch (a sweep is a stack of members, see
docs/design.md; docs/fidelity.md, Dense training, Temperature knobs, Retraining).

``Trainer`` compiles, once per (strategy, chunk shape), the per-member ``train_steps`` lifted to a
group of members, and runs an epoch as a few jitted chunks of unrolled steps (plus one call for the
last partial batch when ``drop_last`` is False). No Python runs per step, and the dataset stays on
the device: every call gets the same device arrays. The state is donated to each call (its
buffers are reused in place). Under the ``threads`` strategy the per-member calls are dispatched
from several host threads (``tr_jax.members.run_groups``).

Learning-rate schedules are traced ``[n_steps]`` multipliers of each member's base lr, computed on
the host per chunk, so no schedule ever recompiles:

* ``schedule="epoch"``: MultiStepLR over 0-indexed epochs (decay at the start of each milestone
  epoch; the epoch experiments, dense training and retraining, docs/fidelity.md, Dense training);
* ``schedule="iteration"``: MultiStepLR stepped per optimiser step, milestones in global steps
  (the batch-size experiments: ``optim.iteration_milestones(62400) == (31200, 46800)`` with
  ``drop_last=True``, docs/fidelity.md, Temperature knobs);
* a constant lr (fine-tuning) is either schedule with ``milestones=()``.

``max_steps`` caps the total number of optimiser steps: the epoch that reaches it is cut short
mid-epoch and later epochs are skipped (the batch-size experiments' fixed 62 400 iterations).
"""
from __future__ import annotations

import functools
from typing import Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tr_jax import _checks as ck
from tr_jax._jax_compat import compiled_count
from tr_jax import sharding
from tr_jax import members as mem
from tr_jax.training.optim import multistep
from tr_jax.training.steps import (StepConfig, TrainState, eval_batch, padded_batches,
                                   train_steps)


def epoch_chunks(num_train: int, batch_size: int, chunk_steps: int,
                 drop_last: bool = False) -> list[tuple[int, int, int]]:
    """(first step, number of steps, batch size) of each jitted call of one epoch."""
    if batch_size > num_train:
        raise ValueError(f"batch_size={batch_size} is larger than the training set ({num_train})")
    n_full, rem = divmod(num_train, batch_size)
    out = [(s, min(chunk_steps, n_full - s), batch_size) for s in range(0, n_full, chunk_steps)]
    if rem and not drop_last:
        out.append((n_full, 1, rem))
    return out


def truncate_chunks(plan: list[tuple[int, int, int]], n_steps: int) -> list[tuple[int, int, int]]:
    """The first ``n_steps`` steps of an epoch's chunk plan (the last kept chunk shortened)."""
    out, left = [], max(0, n_steps)
    for step0, n, bs in plan:
        if left == 0:
            break
        out.append((step0, min(n, left), bs))
        left -= out[-1][1]
    return out


SCHEDULES = ("epoch", "iteration")


def lr_scales(schedule: str, milestones: tuple[int, ...], gamma: float, epoch: int,
              steps: np.ndarray) -> np.ndarray:
    """Per-step multipliers [n] of the base lr for the global (0-indexed, counted from the start
    of training) optimiser steps ``steps`` [n] of 0-indexed ``epoch``."""
    steps = np.asarray(steps)
    if schedule == "epoch":
        return multistep(np.full(steps.shape, epoch), milestones, gamma)
    if schedule == "iteration":
        return multistep(steps, milestones, gamma)
    raise ValueError(f"schedule {schedule!r} is not one of {SCHEDULES}")


def program_model(model: nn.Module, strategy: str) -> nn.Module:
    """The model a ``strategy``'s programs compute with: ``gemm`` runs ``vmap`` over the model
    with ``conv_impl="gemm"`` (same parameters; ``tr_jax.models.conv``), others ``model``."""
    if strategy != "gemm":
        return model
    if "conv_impl" not in getattr(model, "__dataclass_fields__", {}):
        raise ValueError(f"members strategy 'gemm' needs a model with a conv_impl field; "
                         f"{type(model).__name__} has none (use 'vmap')")
    return model.clone(conv_impl="gemm")


@functools.lru_cache(maxsize=None)
def _compiled_train(model: nn.Module, cfg: StepConfig, strategy: str, n_steps: int,
                    batch_size: int) -> Callable:
    """The jitted group step, built once per (model, settings, strategy, chunk shape) per process,
    so every Trainer of a run (dense, retrain) and every run in a process shares the compile."""
    fn = functools.partial(train_steps, program_model(model, strategy), cfg, n_steps=n_steps,
                           batch_size=batch_size, with_errors=True)
    return mem.over_members(fn, strategy, (0, None, None, None, None, None), donate_argnums=(0,))


@functools.lru_cache(maxsize=None)
def _compiled_eval(model: nn.Module, cfg: StepConfig, strategy: str) -> Callable:
    fn = functools.partial(eval_batch, program_model(model, strategy), cfg)
    return mem.over_members(fn, strategy, (0, 0, 0, None, None, None))


def _run(work: Callable, groups: list, strategy: str, fns: list[Callable]) -> list:
    """``work`` over the groups (host threads under ``threads``). A compiled function that was
    never called is first called from this thread alone (the first group), so that concurrent
    first calls do not compile it twice."""
    if groups and mem.num_threads(strategy) > 1 and any(
            compiled_count(f) == 0 for f in fns):
        return [work(groups[0])] + mem.run_groups(work, groups[1:], strategy)
    return mem.run_groups(work, groups, strategy)


@functools.partial(jax.jit, static_argnums=1)
def _mean_loss(losses: list, n_steps: int) -> jnp.ndarray:
    """Mean of the per-step losses [..., n] of an epoch's calls."""
    return jnp.sum(jnp.concatenate(losses, axis=-1), axis=-1) / n_steps


@functools.partial(jax.jit, static_argnums=1)
def _error_rate(wrongs: list, n_images: int) -> jnp.ndarray:
    """Fraction of misclassified training images of an epoch from the per-step counts [..., n]."""
    return jnp.sum(jnp.concatenate(wrongs, axis=-1), axis=-1) / n_images


class Trainer:
    """Advances a stack of members (a ``TrainState`` with a leading [M] axis) together.

    ``milestones`` are 0-indexed epochs (``schedule="epoch"``) or global optimiser steps
    (``schedule="iteration"``); ``max_steps`` (None: no cap) stops training after exactly that
    many optimiser steps in total.
    """

    def __init__(self, model: nn.Module, cfg: StepConfig, strategy: str = "auto",
                 chunk_steps: int = 4, drop_last: bool = False, eval_batch_size: int = 0,
                 milestones: tuple[int, ...] = (80, 120), gamma: float = 0.1,
                 schedule: str = "epoch", max_steps: int | None = None):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule {schedule!r} is not one of {SCHEDULES}")
        if max_steps is not None and max_steps < 0:
            raise ValueError(f"max_steps={max_steps} must be >= 0")
        ck.check_args("tr_jax.training.Trainer", chunk_steps=(chunk_steps, ck.POS_INT),
                      milestones=(milestones, ck.Range("tuple", item=ck.NONNEG_INT,
                                                       increasing=True)),
                      gamma=(gamma, ck.FACTOR), drop_last=(drop_last, ck.BOOL))
        self.model, self.cfg = model, cfg
        self.milestones, self.gamma = tuple(int(m) for m in milestones), gamma
        self.schedule, self.max_steps = schedule, max_steps
        self.strategy = mem.resolve(strategy)
        self.chunk_steps, self.drop_last = chunk_steps, drop_last
        self.eval_batch_size = mem.eval_batch_size(eval_batch_size)  # 0: the backend's

    # -- compiled functions, cached per static shape --------------------------------------
    @property
    def _program(self) -> str:
        """The strategy the compiled programs are built for: ``loop`` and ``threads`` share one
        single-member program (bit-identical results, one compile)."""
        return "loop" if mem.per_member(self.strategy) else self.strategy

    def train_fn(self, n_steps: int, batch_size: int) -> Callable:
        """The jitted program of one call of ``n_steps`` steps at ``batch_size`` for a group of
        members: ``fn(group, images, labels, step0, epoch, lr_scales [n_steps])`` returns the new
        group and its per-step (losses, misclassified counts); the group is donated. Compiled
        once per process per (model, step settings, strategy, chunk shape); what the autotuner
        and the dry run time and cost one member's step with."""
        return _compiled_train(self.model, self.cfg, self._program, n_steps, batch_size)

    def _eval_fn(self) -> Callable:
        return _compiled_eval(self.model, self.cfg, self._program)

    # -- the step plan ------------------------------------------------------------------------
    def steps_per_epoch(self, num_train: int) -> int:
        """Optimiser steps in one full epoch (the partial batch counts unless ``drop_last``)."""
        plan = epoch_chunks(num_train, self.cfg.batch_size, self.chunk_steps, self.drop_last)
        return sum(n for _, n, _ in plan)

    def epochs_needed(self, num_train: int) -> int | None:
        """Epochs that ``max_steps`` spans, ``ceil(max_steps / steps_per_epoch)`` (None: no cap);
        the batch-size experiments' epoch count (B=16 -> 20, ..., 512 -> 644)."""
        if self.max_steps is None:
            return None
        return -(-self.max_steps // self.steps_per_epoch(num_train))

    def epoch_plan(self, num_train: int, epoch: int) -> list[tuple[int, int, int]]:
        """(first step, number of steps, batch size) of each jitted call of 0-indexed ``epoch``,
        cut to what is left of ``max_steps`` (empty when the budget is spent)."""
        plan = epoch_chunks(num_train, self.cfg.batch_size, self.chunk_steps, self.drop_last)
        if self.max_steps is None:
            return plan
        return truncate_chunks(plan, self.max_steps - epoch * self.steps_per_epoch(num_train))

    def lr_plan(self, num_train: int, epoch: int) -> list[np.ndarray]:
        """The lr multipliers [n] of each chunk of ``epoch_plan(num_train, epoch)``."""
        first = epoch * self.steps_per_epoch(num_train)  # global index of the epoch's step 0
        return [lr_scales(self.schedule, self.milestones, self.gamma, epoch,
                          first + step0 + np.arange(n))
                for step0, n, _ in self.epoch_plan(num_train, epoch)]

    # -- public -----------------------------------------------------------------------------
    def train_epoch(self, groups: list[TrainState], images: jnp.ndarray, labels: jnp.ndarray,
                    epoch: int) -> tuple[list[TrainState], list[jnp.ndarray]]:
        """One epoch for every group; returns new groups and their mean losses (on device).
        The running training error of each group (misclassified / trained images of the epoch,
        train mode, on device) is left in ``self.last_train_error``."""
        plan = self.epoch_plan(images.shape[0], epoch)
        if not plan:
            raise ValueError(f"epoch {epoch} lies beyond max_steps={self.max_steps}")
        ep = jnp.asarray(epoch, jnp.int32)
        calls = [(self.train_fn(n, bs), jnp.asarray(step0, jnp.int32), jnp.asarray(scales))
                 for (step0, n, bs), scales in zip(plan, self.lr_plan(images.shape[0], epoch))]
        n_steps = sum(n for _, n, _ in plan)
        n_images = sum(n * bs for _, n, bs in plan)

        def work(g):
            losses, wrongs = [], []
            for fn, step0, scales in calls:
                g, (loss, wrong) = fn(g, images, labels, step0, ep, scales)
                losses.append(loss)
                wrongs.append(wrong)
            # one reduction per epoch, not two small ops per call (each a dispatch)
            return g, _mean_loss(losses, n_steps), _error_rate(wrongs, n_images)

        out = _run(work, groups, self.strategy, [fn for fn, _, _ in calls])
        self.last_train_error = [err for _, _, err in out]
        return [g for g, _, _ in out], [loss for _, loss, _ in out]

    def evaluate(self, groups: list[TrainState], images: jnp.ndarray,
                 labels: jnp.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Eval-mode (error, mean loss) of every member, each shaped [M] (groups joined)."""
        n = images.shape[0]
        fn = self._eval_fn()
        batches = list(padded_batches(images, labels, self.eval_batch_size))

        def work(g):
            wrong, loss = 0, 0.0
            for x, y, valid in batches:
                w, lsum = fn(g.params, g.batch_stats, g.mask, x, y, valid)
                wrong, loss = wrong + w, loss + lsum
            return (np.atleast_1d(sharding.to_host(wrong) / n),
                    np.atleast_1d(sharding.to_host(loss) / n))

        out = _run(work, groups, self.strategy, [fn])
        return np.concatenate([e for e, _ in out]), np.concatenate([lo for _, lo in out])

    def fit(self, state: TrainState, images: jnp.ndarray, labels: jnp.ndarray, epochs: int,
            test: tuple[jnp.ndarray, jnp.ndarray] | None = None, eval_epochs: Iterable[int] = (),
            on_epoch: Callable[[int, Callable[[], TrainState]], None] | None = None,
            progress: Callable[[int], None] | None = None, start_epoch: int = 0,
            history: dict[int, np.ndarray] | None = None,
            on_metrics: Callable[[int, dict], None] | None = None,
            metric_epochs: Iterable[int] = ()):
        """Train the stacked members for epochs ``start_epoch .. epochs - 1`` (fewer when
        ``max_steps`` is spent earlier: the epoch that reaches it ends mid-epoch, and counts as
        done for ``eval_epochs`` and ``on_epoch``).

        ``eval_epochs``: 1-indexed epochs after which the test error of every member is recorded.
        ``on_epoch(epoch_done, get_state)`` is called after every epoch (1-indexed) with a thunk
        that joins the groups into a stacked state (only built when asked for).
        ``on_metrics(epoch_done, metrics)`` (before ``on_epoch``) gets host arrays [M] of the
        epoch: ``train_loss`` (mean over its steps), ``train_error`` (running error on its
        training batches) and ``test_error`` (None unless the epoch is in ``eval_epochs`` or
        ``metric_epochs``: extra epochs evaluated for the callback only, not kept in the history).
        Returns the stacked final state and ``{epoch: test errors [M]}`` (filled into ``history``
        when given, so a callback sees it as it grows).
        """
        eval_epochs, metric_epochs = set(eval_epochs), set(metric_epochs)
        M = mem.num_members(state)
        groups = mem.split_groups(state, self.strategy)
        history = {} if history is None else history
        needed = self.epochs_needed(images.shape[0])
        for epoch in range(start_epoch, epochs if needed is None else min(epochs, needed)):
            groups, losses = self.train_epoch(groups, images, labels, epoch)
            test_err = None
            if test is not None and (epoch + 1 in eval_epochs or
                                     (on_metrics is not None and epoch + 1 in metric_epochs)):
                test_err = self.evaluate(groups, *test)[0][:M]
                if epoch + 1 in eval_epochs:
                    history[epoch + 1] = test_err
            if on_metrics is not None:
                host = lambda xs: np.concatenate(  # noqa: E731
                    [np.atleast_1d(sharding.to_host(x)) for x in xs])[:M].astype(np.float64)
                on_metrics(epoch + 1, {"train_loss": host(losses),
                                       "train_error": host(self.last_train_error),
                                       "test_error": test_err})
            if on_epoch is not None:
                on_epoch(epoch + 1, lambda gs=groups: mem.join_groups(gs, self.strategy, M))
            if progress is not None:
                progress(1)
        return mem.join_groups(groups, self.strategy, M), history
