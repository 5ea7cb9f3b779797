"""The context of one sweep: everything its stages read, made once and passed explicitly.

:func:`setup` validates the inputs, opens (or resumes) the workdir, puts the dataset on device,
builds the model, plans the programs and picks the members strategy; the stages
(:mod:`tr_jax.sweep.train`, :mod:`tr_jax.sweep.measure`) and the driver (:mod:`tr_jax.sweep.run`)
are plain functions of the :class:`Context` it returns. Every process of a multi-process run
makes the same context (the members axis of every stacked tree is one global ``jax.Array``
sharded over every device of every process, :mod:`tr_jax.sharding`).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from tr_jax import __version__, autotune, hooks, measures, models, sharding
from tr_jax import members as mem
from tr_jax.config import config_hash, to_json
from tr_jax.data.arrays import check_dataset, small_test_split_note
from tr_jax.data.datasets import load_dataset
from tr_jax.errors import UserError
from tr_jax.sweep import stages
from tr_jax.sweep.estimate import members_cap
from tr_jax.sweep.grid import Grid
from tr_jax.sweep.growth import GROWN_SUFFIX, grown_stages as growable
from tr_jax.sweep.metrics import MetricsLog
from tr_jax.sweep.plan import Plan, make_plan, section_step
from tr_jax.sweep.store import Workdir
from tr_jax.training.loop import program_model


@dataclasses.dataclass
class Context:
    """One sweep's inputs and its few pieces of running state (the metrics log, the chunk timers,
    the stage timings, the partial tables), all declared here.

    ``model`` is the model as built; ``mmodel`` the model the measure stages run (the members
    strategy's program model, e.g. im2col convolutions for ``gemm``); ``X, Y, Xt, Yt`` the
    training and test sets on device, replicated; ``root`` the root PRNG key; ``old_grid`` the
    grid of the finished run a grown sweep extends (None otherwise)."""
    cfg: ml_collections.ConfigDict
    hash: str
    ds: Any
    model: Any
    mmodel: Any
    wd: Workdir
    X: Any
    Y: Any
    Xt: Any
    Yt: Any
    root: jax.Array
    grid: Grid
    old_grid: Grid | None
    plan: Plan
    strategy: str
    progress: bool
    echo_fn: Callable[[str], None]
    mlog: MetricsLog
    timings: dict = dataclasses.field(default_factory=dict)
    chunk_timers: dict = dataclasses.field(default_factory=dict)
    partial: Any = None

    @property
    def stacked(self) -> bool:
        """Whether the members strategy stacks members (else it advances them one by one)."""
        return not mem.per_member(self.strategy)

    @property
    def temps(self) -> list:
        return self.grid.temperatures

    @property
    def densities(self) -> list:
        return self.grid.densities

    def echo(self, text: str) -> None:
        """Print (process 0 only)."""
        if sharding.is_primary():
            self.echo_fn(text)

    def say(self, msg: str) -> None:
        """A time-stamped line, printed and appended to the workdir's log."""
        log_line(self.wd, self.echo_fn, msg)


def log_line(wd: Workdir, echo: Callable[[str], None], msg: str) -> None:
    """``msg`` time-stamped, printed by process 0 and appended to the workdir's log."""
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    if sharding.is_primary():
        echo(line)
    wd.log(line)


def sweep_strategy(requested: str) -> str:
    """The members strategy a sweep runs for ``run.members_strategy`` when it is not autotuned:
    ``auto`` is the backend's default, and a multi-process run needs a stacked strategy (its
    members axis spans processes)."""
    s = mem.resolve(requested)
    if sharding.multi_process() and mem.per_member(s):
        if requested != "auto":
            raise ValueError(f"run.members_strategy={requested!r} advances members one by one in "
                             "one process; a multi-process run needs a stacked strategy "
                             "('vmap', 'map', 'map_chunked:k')")
        s = "vmap"
    return s


def _choose_strategy(cfg, model, ds, plan: Plan, say: Callable[[str], None]) -> str:
    """``run.members_strategy``; ``auto`` is measured on this device for the retraining's
    program shape (``tr_jax.autotune``, cached per device, model, shapes, M and version), timed
    at the members that fit ``run.memory_budget_gb``, unless ``run.autotune`` is off, and except
    in a multi-process run, where it is ``vmap`` (the timing would have to agree across
    processes)."""
    requested = cfg.run.members_strategy
    if requested != "auto" or sharding.multi_process():
        return sweep_strategy(requested)
    if not cfg.run.autotune:
        say(f"members strategy: {sweep_strategy(requested)} (the backend default; "
            "autotuning off by run.autotune=False)")
        return sweep_strategy(requested)
    step, chunk = section_step(cfg, cfg.retrain, ds.num_train, ds.mean, ds.std)
    members = len(plan.stage_programs("retrain")[0].members)
    choice = autotune.choose(model, step, ds.image_shape, members,
                             autotune.model_candidates(model, members),
                             chunk_steps=min(chunk, 8), echo=say,
                             memory_budget_bytes=cfg.run.memory_budget_gb * 2**30 or None,
                             budget_s=cfg.run.autotune_budget_s)
    say(autotune.describe(choice, members))
    return choice.strategy


def setup(cfg: ml_collections.ConfigDict, workdir: str, progress: bool = True,
          echo: Callable[[str], None] = print, *, model=None, dataset=None) -> Context:
    """The :class:`Context` of a (validated) config's sweep in ``workdir``: bad data or a model
    tr_jax cannot drive fail before the workdir is created."""
    ds = check_dataset(dataset) if dataset is not None else load_dataset(cfg.dataset,
                                                                         cfg.data_dir or None)
    if model is not None:
        models.adapter(model)
    built = model if model is not None else models.build(
        cfg.model.arch, depth=cfg.model.depth, num_classes=ds.num_classes, width=cfg.model.width)
    check_layers(cfg, built, ds)
    wd = Workdir(workdir, to_json(cfg), grown_stages=grown_stages(cfg))
    h = config_hash(cfg)
    say = functools.partial(log_line, wd, echo)  # before the context exists

    say(f"tr_jax {__version__}: config {cfg.name!r} (hash {h}) on {jax.default_backend()} "
        f"({jax.device_count()} device(s), {jax.process_count()} process(es)); workdir {wd.path}")
    if note := small_test_split_note(ds.num_test):  # once, when the sweep starts
        say(f"warning: {note}")
    model = built
    X, Y, Xt, Yt = sharding.replicate((ds.train_images, ds.train_labels, ds.test_images,
                                       ds.test_labels))
    grid = Grid.from_config(cfg)
    old_grid = Grid.from_dict(wd.grown_from) if wd.grown_from else None
    cap, why = members_cap(cfg, model, ds.image_shape)
    if why:
        say(why)
    plan = make_plan(cfg, ds.num_train, cap)
    strategy = _choose_strategy(cfg, model, ds, plan, say)
    run = cfg.run
    mlog = MetricsLog(wd.path, run.metrics, run.tensorboard, cfg.knob)
    return Context(cfg=cfg, hash=h, ds=ds, model=model,
                   mmodel=(program_model(model, strategy) if not mem.per_member(strategy)
                           else model),
                   wd=wd, X=X, Y=Y, Xt=Xt, Yt=Yt, root=jax.random.key(cfg.seed), grid=grid,
                   old_grid=old_grid, plan=plan, strategy=strategy, progress=progress,
                   echo_fn=echo, mlog=mlog)


def check_layers(cfg, model, ds) -> None:
    """Refuse, before any work, a config whose per-layer measure selects no layer of ``model``
    (a ``layers`` regex that matches nothing; the default layers of a model that is not a
    built-in architecture): a :class:`~tr_jax.errors.UserError` naming the setting."""
    todo = [m for m in measures.enabled(cfg) if m.layer_names is not None]
    if not todo:
        return
    one = jax.eval_shape(lambda k: models.init(model, k, ds.image_shape), jax.random.key(0))
    stacked = {"variables": jax.tree.map(lambda a: jax.ShapeDtypeStruct((1, *a.shape), a.dtype),
                                         one)}
    for m in todo:
        inputs = measures.Inputs(cfg=cfg, grid=None, ds=ds, model=model, X=None, Y=None, Xt=None,
                                 Yt=None, root=None, stacked=False, strategy="", take=None,
                                 pad=None)
        try:
            m.layer_names(inputs, stacked)
        except (ValueError, TypeError) as e:
            raise UserError(f"measure.{m.name}.layers={cfg.measure[m.name].get('layers', '')!r}: "
                            f"{e}") from None


def grown_stages(cfg) -> tuple[str, ...]:
    """The checkpoints a grown sweep takes over from the run it extends: dense, retrain and
    each measure group that grows (``Measure.grows``) of every registered measure."""
    return growable(tuple(dict.fromkeys(m.group for m in measures.registered() if m.grows)))


def padded_idx(idx: np.ndarray, stacked: bool) -> np.ndarray:
    """``idx`` padded (repeating its last entry) to a multiple of the device count (stacked
    strategies; per-member strategies take ``idx`` as it is)."""
    idx = np.asarray(idx)
    if not stacked:
        return idx
    n = sharding.padded(len(idx))
    return np.concatenate([idx, np.repeat(idx[-1:], n - len(idx), axis=0)])


def measure_inputs(ctx: Context, stage: str) -> measures.Inputs:
    """What the measures of ``stage`` compute from: ``take`` gathers members (sharded and
    padded with a stacked strategy) and reports them at the ``stage:members`` hook point."""
    def take(tree, idx):
        if not ctx.stacked:
            return mem.take(tree, idx)
        out = stages.take_members(tree, padded_idx(idx, True))
        hooks.point("stage:members", stage=stage, tree=out)
        return out
    return measures.Inputs(cfg=ctx.cfg, grid=ctx.grid, ds=ctx.ds, model=ctx.mmodel, X=ctx.X,
                           Y=ctx.Y, Xt=ctx.Xt, Yt=ctx.Yt, root=ctx.root, stacked=ctx.stacked,
                           strategy=ctx.strategy, take=take,
                           pad=lambda idx: padded_idx(idx, ctx.stacked))


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on process 0 (disabled elsewhere, or when ``enabled`` is False)."""
    return tqdm(total=total, desc=desc, disable=not (enabled and sharding.is_primary()),
                leave=True, dynamic_ncols=True)


def restore(ctx: Context, name: str, like=None):
    """The committed checkpoint ``name`` (None when absent; an unreadable one is reported)."""
    return ctx.wd.restore(name, like, warn=ctx.say)


def old_stage(ctx: Context, stage: str, like=None):
    """The finished ``stage`` of the run this grown sweep extends (:mod:`tr_jax.sweep.growth`),
    or None."""
    if ctx.old_grid is None:
        return None
    name = f"{stage}{GROWN_SUFFIX}"
    return ctx.wd.load(name, like) if ctx.wd.has(name) else None
