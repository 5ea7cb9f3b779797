"""Training and evaluating a group of members, epoch by epoch (DESIGN: a sweep is a stack of members).

``Trainer`` compiles, once per (strategy, chunk shape), the per-member ``train_steps`` lifted to a
group of members, and runs an epoch as a few jitted chunks of unrolled steps (plus one call for the
last partial batch when ``drop_last`` is False). No Python runs per step, and the dataset stays on
the device: every call gets the same device arrays.
"""
from __future__ import annotations

import functools
from typing import Callable, Iterable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from tr_jax.training import members as mem
from tr_jax.training.optim import step_decay
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


@functools.lru_cache(maxsize=None)
def _compiled_train(model: nn.Module, cfg: StepConfig, strategy: str, n_steps: int,
                    batch_size: int) -> Callable:
    """The jitted group step, built once per (model, settings, strategy, chunk shape) per process,
    so every Trainer of a run (dense, retrain) and every run in a process shares the compile."""
    fn = functools.partial(train_steps, model, cfg, n_steps=n_steps, batch_size=batch_size)
    return mem.over_members(fn, strategy, (0, None, None, None, None, None), donate_argnums=(0,))


@functools.lru_cache(maxsize=None)
def _compiled_eval(model: nn.Module, cfg: StepConfig, strategy: str) -> Callable:
    fn = functools.partial(eval_batch, model, cfg)
    return mem.over_members(fn, strategy, (0, 0, 0, None, None, None))


class Trainer:
    """Advances a stack of members (a ``TrainState`` with a leading [M] axis) together."""

    def __init__(self, model: nn.Module, cfg: StepConfig, strategy: str = "auto",
                 chunk_steps: int = 4, drop_last: bool = False, eval_batch_size: int = 500,
                 milestones: tuple[int, ...] = (80, 120), gamma: float = 0.1):
        self.model, self.cfg = model, cfg
        self.milestones, self.gamma = tuple(milestones), gamma
        self.strategy = mem.resolve(strategy)
        self.chunk_steps, self.drop_last = chunk_steps, drop_last
        self.eval_batch_size = eval_batch_size

    # -- compiled functions, cached per static shape --------------------------------------
    def _train_fn(self, n_steps: int, batch_size: int) -> Callable:
        return _compiled_train(self.model, self.cfg, self.strategy, n_steps, batch_size)

    def _eval_fn(self) -> Callable:
        return _compiled_eval(self.model, self.cfg, self.strategy)

    # -- public -----------------------------------------------------------------------------
    def train_epoch(self, groups: list[TrainState], images: jnp.ndarray, labels: jnp.ndarray,
                    epoch: int) -> tuple[list[TrainState], list[jnp.ndarray]]:
        """One epoch for every group; returns new groups and their summed losses (on device)."""
        plan = epoch_chunks(images.shape[0], self.cfg.batch_size, self.chunk_steps, self.drop_last)
        ep = jnp.asarray(epoch, jnp.int32)
        scale = jnp.asarray(float(step_decay(epoch, self.milestones, self.gamma)), jnp.float32)
        new, losses = [], []
        for g in groups:
            total = 0.0
            for step0, n, bs in plan:
                g, loss = self._train_fn(n, bs)(g, images, labels, jnp.asarray(step0, jnp.int32), ep,
                                                  scale)
                total = total + jnp.sum(loss, axis=-1)
            new.append(g)
            losses.append(total / sum(n for _, n, _ in plan))
        return new, losses

    def evaluate(self, groups: list[TrainState], images: jnp.ndarray,
                 labels: jnp.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Eval-mode (error, mean loss) of every member, each shaped [M] (groups joined)."""
        n = images.shape[0]
        fn = self._eval_fn()
        errs, losses = [], []
        for g in groups:
            wrong, loss = 0, 0.0
            for x, y, valid in padded_batches(images, labels, self.eval_batch_size):
                w, lsum = fn(g.params, g.batch_stats, g.mask, x, y, valid)
                wrong, loss = wrong + w, loss + lsum
            errs.append(np.atleast_1d(np.asarray(wrong) / n))
            losses.append(np.atleast_1d(np.asarray(loss) / n))
        return np.concatenate(errs), np.concatenate(losses)

    def fit(self, state: TrainState, images: jnp.ndarray, labels: jnp.ndarray, epochs: int,
            test: tuple[jnp.ndarray, jnp.ndarray] | None = None, eval_epochs: Iterable[int] = (),
            on_epoch: Callable[[int, Callable[[], TrainState]], None] | None = None,
            progress: Callable[[int], None] | None = None, start_epoch: int = 0,
            history: dict[int, np.ndarray] | None = None):
        """Train the stacked members for epochs ``start_epoch .. epochs - 1``.

        ``eval_epochs``: 1-indexed epochs after which the test error of every member is recorded.
        ``on_epoch(epoch_done, get_state)`` is called after every epoch (1-indexed) with a thunk
        that joins the groups into a stacked state (only built when asked for).
        Returns the stacked final state and ``{epoch: test errors [M]}`` (filled into ``history``
        when given, so a callback sees it as it grows).
        """
        eval_epochs = set(eval_epochs)
        groups = mem.split_groups(state, self.strategy)
        history = {} if history is None else history
        for epoch in range(start_epoch, epochs):
            groups, _ = self.train_epoch(groups, images, labels, epoch)
            if test is not None and epoch + 1 in eval_epochs:
                history[epoch + 1] = self.evaluate(groups, *test)[0]
            if on_epoch is not None:
                on_epoch(epoch + 1, lambda: mem.join_groups(groups, self.strategy))
            if progress is not None:
                progress(1)
        return mem.join_groups(groups, self.strategy), history
