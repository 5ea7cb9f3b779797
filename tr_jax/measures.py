"""The registry of landscape measures: one entry per measure, the one place that says what it is.

A :class:`Measure` says, for one landscape measure of the retrained members:

* its ``name`` (the stage name: its chunk records, its checkpoint, its lines in metrics.jsonl)
  and its ``unit``: ``"member"`` (one value per retrained member) or ``"pair"`` (one per pair of
  members of a cell);
* its config switch and settings (``settings``: the defaults of the section
  ``measure.<name>``, with ``enabled``; ``ranges``: their valid ranges) — or none, when the
  measure is always on;
* its ``compute`` function: ``compute(inputs, retrained, items) -> {key: host array [len(items),
  ...]}`` for a chunk of members or pairs, of global arrays sharded over the members mesh
  (:class:`Inputs` gives the data, the program model and ``take``, which gathers members as a
  sharded, padded stacked tree), and ``finish``, which derives whole-stage arrays from the
  per-item ones (e.g. the LMC of the error curves);
* the ``metrics`` it adds to ``results.csv`` (:class:`Metric`: the array it reads, whether and
  how cells.csv aggregates it, its figure and labels);
* whether a grown sweep extends it (``grows``) and whether the partial tables of a sweep still
  measuring use it (``partial``).

The driver (:mod:`tr_jax.sweep.run`), the tables, cell aggregation, growth, the figures, the
report and the config schema read this registry; none lists measures of its own. A measure of
your own is one :func:`register` call (see the developer docs, "Adding a landscape measure").

Cells aggregate every metric with ``cell`` set the same way: the mean over the cell's healthy
units with a bootstrap percentile interval (``{metric}_lo``, ``{metric}_hi``; see
:func:`tr_jax.regimes.cells_from_results`).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from tr_jax import _checks as ck
from tr_jax import landscape, models
from tr_jax import members as mem
from tr_jax import sharding
from tr_jax._checks import Range
from tr_jax.data.augment import normalize
from tr_jax.training.steps import padded_batches

__all__ = ["Metric", "Measure", "Inputs", "register", "unregister", "get", "registered",
           "enabled", "groups", "metric", "metrics", "cell_metrics", "CURVE_KEYS",
           "HESSIAN_KEYS", "member_logits", "pair_cka", "hessian_members"]

#: the per-point curves of a pair's path (line or Bezier): train and test error and loss
CURVE_KEYS = ("train_error", "train_loss", "test_error", "test_loss")


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric of a measure: a ``results.csv`` row per member or pair.

    ``name``: the ``metric`` value in results.csv (and the cells.csv column); ``key``: the array
    of the measure's output it reads ([items]); ``label``: (figure title, colour-bar label);
    ``cell``: ``"always"`` (a cells.csv column in every sweep), ``"measured"`` (a column when
    measured) or None (results.csv only); ``order``: the position of its rows and columns among
    all metrics; ``panel``: the position of its phase-diagram figure among the figures (None: no
    figure); ``cmap``, ``fmt`` (cell annotation), ``log`` (log10 colour scale), ``zero_is_top``
    (the colour scale reaches 0 at least: a connectivity, 0 = connected) for the figure."""
    name: str
    key: str
    label: tuple[str, str]
    cell: str | None = "measured"
    order: float = 100.0
    panel: float | None = 100.0
    cmap: str = "viridis"
    fmt: str = "{:.3f}"
    log: bool = False
    zero_is_top: bool = False

    def __post_init__(self):
        if self.cell not in ("always", "measured", None):
            raise ValueError(f"Metric {self.name!r}: cell must be 'always', 'measured' or None, "
                             f"got {self.cell!r}")


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What a measure computes from: built once per sweep by the driver, the same in every
    process. ``model`` is the program model of the sweep's members strategy; ``X, Y`` / ``Xt,
    Yt`` the training and test sets on device (replicated); ``grid`` the sweep's
    :class:`tr_jax.sweep.grid.Grid`; ``root`` its root PRNG key; ``stacked`` whether the members
    strategy stacks members (else it advances them one by one); ``take(tree, idx)`` gathers
    members ``idx`` of a stacked tree (sharded over the mesh and padded with a stacked strategy,
    one device array per leaf otherwise); ``pad(idx)`` pads host indices as ``take`` does."""
    cfg: Any
    grid: Any
    ds: Any
    model: Any
    X: Any
    Y: Any
    Xt: Any
    Yt: Any
    root: Any
    stacked: bool
    strategy: str
    take: Callable[[Any, np.ndarray], Any]
    pad: Callable[[np.ndarray], np.ndarray]

    def settings(self, name: str):
        """The config section ``measure.<name>``."""
        return self.cfg.measure[name]


@dataclasses.dataclass(frozen=True)
class Measure:
    """One landscape measure (see the module docstring for every field's role).

    ``keys``: the arrays ``compute`` returns per item (committed per chunk, carried over by a
    grown sweep); ``sizing(inputs) -> (items per cell on the device axis, items per compiled
    call)`` sets the chunk size (chunks are whole cells: enough that a chunk fills whole calls
    spread over every device); ``describe(inputs) -> str`` is the log line when the stage starts;
    ``curve``: the label of its error-along-t curve in the curve figures (needs ``curve_*`` keys
    and ``ts``), or None; ``hash_defaults``: keep the settings section in the config hash at its
    defaults (the built-in switchable measures, whose sections predate the registry); a measure
    registered later leaves its section out of the hash while it is at its defaults, so every
    existing workdir keeps its hash. ``check(section) -> (setting, valid range) | None``: a
    rule between its settings (a config naming the setting is refused when it fails);
    ``batch_setting``: the setting that is a training batch size (it must fit in the training
    set). ``group``: the stage it runs in (default: its name): the measures of one group share
    one checkpoint and one line in the status (LMC and CKA are the group ``measure``)."""
    name: str
    unit: str
    metrics: tuple[Metric, ...]
    compute: Callable[[Inputs, dict, np.ndarray], dict]
    keys: tuple[str, ...]
    finish: Callable[[Inputs, dict], dict] | None = None
    settings: Mapping[str, Any] | None = None
    ranges: Mapping[str, Range] = dataclasses.field(default_factory=dict)
    sizing: Callable[[Inputs], tuple[int, int]] | None = None
    describe: Callable[[Inputs], str] | None = None
    curve: str | None = None
    check: Callable[[Any], tuple[str, str] | None] | None = None
    batch_setting: str | None = None
    grows: bool = True
    partial: bool = False
    hash_defaults: bool = False
    group: str = ""

    def __post_init__(self):
        object.__setattr__(self, "group", self.group or self.name)
        if self.unit not in ("member", "pair"):
            raise ValueError(f"Measure {self.name!r}: unit must be 'member' or 'pair', "
                             f"got {self.unit!r}")
        if self.settings is not None and "enabled" not in self.settings:
            raise ValueError(f"Measure {self.name!r}: settings need an 'enabled' switch")
        missing = sorted(set(self.settings or {}) - set(self.ranges) - {"enabled"})
        if missing:
            raise ValueError(f"Measure {self.name!r}: no valid range for setting(s) {missing}")

    @property
    def switch(self) -> str | None:
        """The config key that turns it on (None: always on)."""
        return None if self.settings is None else f"measure.{self.name}.enabled"

    def is_enabled(self, cfg) -> bool:
        return self.settings is None or bool(cfg.measure[self.name].enabled)


_REGISTRY: dict[str, Measure] = {}
#: stage names the driver uses for other things: a measure may not take them
RESERVED = ("dense", "retrain", "measure", "tables", "setup")  # "measure": a group only


def register(measure: Measure, *, replace: bool = False) -> Measure:
    """Add ``measure`` to the registry (in order: stages run in registration order). Returns it.
    A name already registered is refused unless ``replace``."""
    if (measure.name in RESERVED or measure.group in RESERVED[:2] + RESERVED[3:]
            or not measure.name.isidentifier()):
        raise ValueError(f"measure name {measure.name!r} is reserved or not a plain name")
    if measure.name in _REGISTRY and not replace:
        raise ValueError(f"a measure named {measure.name!r} is registered already")
    taken = {m.name for e in _REGISTRY.values() if e.name != measure.name for m in e.metrics}
    clash = sorted(taken & {m.name for m in measure.metrics})
    if clash:
        raise ValueError(f"measure {measure.name!r}: metric name(s) {clash} are taken")
    _REGISTRY[measure.name] = measure
    return measure


def unregister(name: str) -> None:
    """Remove a registered measure (tests, notebooks)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> Measure:
    return _REGISTRY[name]


def registered() -> tuple[Measure, ...]:
    """Every registered measure, in registration order."""
    return tuple(_REGISTRY.values())


def enabled(cfg) -> tuple[Measure, ...]:
    """The measures a sweep of ``cfg`` runs, in order."""
    return tuple(m for m in _REGISTRY.values() if m.is_enabled(cfg))


def groups(cfg=None) -> dict[str, tuple[Measure, ...]]:
    """The measure groups (stages) in order, each with its measures: every registered one, or
    those a sweep of ``cfg`` runs."""
    out: dict[str, list[Measure]] = {}
    for m in (registered() if cfg is None else enabled(cfg)):
        out.setdefault(m.group, []).append(m)
    return {g: tuple(ms) for g, ms in out.items()}


def metrics(unit: str | None = None) -> tuple[tuple[Measure, Metric], ...]:
    """Every (measure, metric), in ``Metric.order`` (ties: registration order)."""
    pairs = [(m, x) for m in _REGISTRY.values() if unit in (None, m.unit) for x in m.metrics]
    return tuple(sorted(pairs, key=lambda p: p[1].order))


def metric(name: str) -> Metric | None:
    """The registered metric called ``name``, or None."""
    for _, x in metrics():
        if x.name == name:
            return x
    return None


def cell_metrics(cell: str) -> tuple[str, ...]:
    """Names of the metrics whose ``cell`` is ``cell`` (``"always"`` or ``"measured"``), in
    order."""
    return tuple(x.name for _, x in metrics() if x.cell == cell)


# ------------------------------------------------------------------ shared pieces of the built-ins
def _points_per_call(inputs: Inputs) -> int:
    return landscape.resolve_points_per_call(inputs.cfg.measure.points_per_call)


def _curve_errors(res: dict, n: int) -> dict:
    return {f"curve_{k}": v[:n] for k, v in res.items() if k in CURVE_KEYS}


CURVE_OUT = tuple(f"curve_{k}" for k in CURVE_KEYS)


# ------------------------------------------------------------------ LMC along the straight line
def _lmc_ts(inputs: Inputs) -> np.ndarray:
    return np.linspace(0.0, 1.0, inputs.cfg.measure.lmc_points)


def _lmc_compute(inputs: Inputs, retrained: dict, pidx: np.ndarray) -> dict:
    c, pairs, V = inputs.cfg, inputs.grid.pairs_array(), retrained["variables"]
    pa, pb = inputs.take(V, pairs[pidx, 0]), inputs.take(V, pairs[pidx, 1])
    res = landscape.pair_curves(
        inputs.model, pa["params"], pb["params"], mem.take(pa["batch_stats"], 0), inputs.X,
        inputs.Y, mean=inputs.ds.mean, std=inputs.ds.std, ts=_lmc_ts(inputs),
        bn_batch_size=c.measure.bn_batch_size, test=(inputs.Xt, inputs.Yt),
        eval_batch_size=c.run.eval_batch_size, points_per_call=c.measure.points_per_call or None)
    return _curve_errors(res, len(pidx))


def _lmc_finish(inputs: Inputs, out: dict) -> dict:
    return {"lmc": np.asarray(landscape.lmc(out["curve_train_error"], n=inputs.ds.num_train)),
            "loss_barrier": landscape.loss_barrier(out["curve_train_loss"]),
            "ts": _lmc_ts(inputs)}


LMC = Measure(
    name="lmc", unit="pair", compute=_lmc_compute, finish=_lmc_finish, keys=CURVE_OUT,
    metrics=(Metric("lmc", "lmc", ("LMC (mode connectivity)",
                                   "LMC, train-error fraction (< 0 = barrier)"),
                    cell="always", order=10, panel=3, zero_is_top=True),
             Metric("loss_barrier", "loss_barrier",
                    ("Loss barrier (line)", "max over t of loss above the straight line"),
                    cell="always", order=40, panel=20, cmap="magma_r", fmt="{:.2f}")),
    sizing=lambda i: (i.grid.pairs_per_cell * i.cfg.measure.lmc_points, _points_per_call(i)),
    describe=lambda i: (f"LMC ({i.cfg.measure.lmc_points} points, BN recalibrated on "
                        f"{i.ds.num_train} images) for {len(i.grid.pairs())} pairs"),
    curve="line (LMC)", partial=True, group="measure")


# ------------------------------------------------------------------ CKA of the outputs
@jax.jit
def _pair_cka(logits, a, b):
    probs = jax.nn.softmax(logits, axis=-1)
    return (landscape.cka(probs[a], probs[b]), landscape.cka(logits[a], logits[b]))


def pair_cka(logits: jnp.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """CKA of softmax outputs and of logits of pairs (rows a, b of ``logits`` [m, n, K])."""
    soft, lg = _pair_cka(logits, jnp.asarray(a, jnp.int32), jnp.asarray(b, jnp.int32))
    return {"cka_softmax": sharding.to_host(soft), "cka_logits": sharding.to_host(lg)}


@functools.lru_cache(maxsize=None)
def _logits_fn(model, mean: tuple, std: tuple):
    return mem.jit(lambda v, x: jax.vmap(lambda w: models.apply(model, w, normalize(x, mean, std)))(v))


def member_logits(model, variables: Any, images: jnp.ndarray, mean, std,
                  batch_size: int = 0) -> jnp.ndarray:
    """Eval-mode logits [m, n, K] of m stacked members (sharded) on images [n, ...] in order."""
    fn = _logits_fn(model, tuple(map(float, mean)), tuple(map(float, std)))
    labels = jnp.zeros((images.shape[0],), jnp.int32)
    out = [fn(variables, x)
           for x, _, _ in padded_batches(images, labels, mem.eval_batch_size(batch_size))]
    return jnp.concatenate(out, axis=1)[:, :images.shape[0]]


def _cka_images(inputs: Inputs) -> int:
    return min(inputs.cfg.measure.cka_images, inputs.ds.num_train)


def _cka_compute(inputs: Inputs, retrained: dict, pidx: np.ndarray) -> dict:
    c, pairs, V = inputs.cfg, inputs.grid.pairs_array(), retrained["variables"]
    n = _cka_images(inputs)
    Xc = inputs.X[:n]
    members, local = np.unique(pairs[pidx], return_inverse=True)
    local = local.reshape(-1, 2)
    if inputs.stacked:
        logits = member_logits(inputs.model, inputs.take(V, members), Xc, inputs.ds.mean,
                               inputs.ds.std, c.run.eval_batch_size)
    else:
        logits = jnp.stack([landscape.evaluate(
            inputs.model, mem.take(V, i), Xc, inputs.Y[:n], inputs.ds.mean, inputs.ds.std,
            c.run.eval_batch_size, return_logits=True)["logits"] for i in members])
    return pair_cka(logits, local[:, 0], local[:, 1])


CKA = Measure(
    name="outputs", unit="pair", compute=_cka_compute, keys=("cka_softmax", "cka_logits"),
    metrics=(Metric("cka", "cka_softmax", ("CKA similarity", "linear CKA of softmax outputs"),
                    cell="always", order=20, panel=4),
             Metric("cka_logits", "cka_logits", ("CKA similarity (logits)",
                                                 "linear CKA of logits"),
                    cell="always", order=30, panel=30)),
    sizing=lambda i: (len(i.grid.retrain_seeds), 1),
    describe=lambda i: f"CKA ({_cka_images(i)} images) for {len(i.grid.pairs())} pairs",
    partial=True, group="measure")


# ------------------------------------------------------------------ trained Bezier curves
def _bezier_ts(inputs: Inputs) -> np.ndarray:
    return np.linspace(0.0, 1.0, inputs.cfg.measure.bezier.points)


def _bezier_compute(inputs: Inputs, retrained: dict, pidx: np.ndarray) -> dict:
    bc, m = inputs.cfg.measure.bezier, inputs.cfg.measure
    pairs, keys = inputs.grid.pairs_array(), inputs.grid.bezier_keys(inputs.root)
    V, masks = retrained["variables"], retrained["mask"]
    cpu = jax.default_backend() == "cpu"
    pa, pb = inputs.take(V, pairs[pidx, 0]), inputs.take(V, pairs[pidx, 1])
    mask = inputs.take(masks, pairs[pidx, 0])
    mid, _ = landscape.train_curves(
        inputs.model, pa["params"], pb["params"], mask, mem.take(pa["batch_stats"], 0),
        inputs.X, inputs.Y, key=jnp.asarray(inputs.pad(keys[pidx])), mean=inputs.ds.mean,
        std=inputs.ds.std, epochs=bc.epochs, batch_size=bc.batch_size, lr=bc.lr,
        weight_decay=bc.weight_decay, momentum=bc.momentum, chunk_steps=1 if cpu else None,
        unroll=cpu, strategy=inputs.strategy)
    res = landscape.curve_errors(
        inputs.model, pa["params"], mid, pb["params"], inputs.X, inputs.Y, mean=inputs.ds.mean,
        std=inputs.ds.std, ts=_bezier_ts(inputs), bn_batch_size=m.bn_batch_size,
        test=(inputs.Xt, inputs.Yt), eval_batch_size=inputs.cfg.run.eval_batch_size,
        points_per_call=m.points_per_call or None)
    return _curve_errors(res, len(pidx))


def _bezier_finish(inputs: Inputs, out: dict) -> dict:
    return {"mc": np.asarray(landscape.mode_connectivity(out["curve_train_error"])),
            "ts": _bezier_ts(inputs)}


BEZIER = Measure(
    name="bezier", unit="pair", compute=_bezier_compute, finish=_bezier_finish, keys=CURVE_OUT,
    metrics=(Metric("bezier_mc", "mc", ("Bezier mode connectivity",
                                        "mc, train-error fraction (< 0 = barrier)"),
                    cell="measured", order=50, panel=10, zero_is_top=True),),
    # a quadratic Bezier curve per pair, its middle bend trained (masked) with the two
    # endpoints fixed (Zhou et al. 2023, §2; docs/fidelity.md, Bezier curves)
    settings=dict(enabled=True, epochs=50, batch_size=128, lr=0.01, weight_decay=5e-4,
                  momentum=0.9, points=5),
    ranges={"epochs": ck.POS_INT, "batch_size": ck.POS_INT, "lr": ck.LR,
            "weight_decay": ck.WEIGHT_DECAY, "momentum": ck.MOMENTUM,
            "points": Range("int", lo=3)},
    sizing=lambda i: (i.grid.pairs_per_cell * i.cfg.measure.bezier.points, _points_per_call(i)),
    describe=lambda i: (f"{len(i.grid.pairs())} curves x {i.cfg.measure.bezier.epochs} epochs "
                        f"(batch {i.cfg.measure.bezier.batch_size}), evaluated at "
                        f"{i.cfg.measure.bezier.points} points"),
    curve="Bezier", batch_setting="batch_size", hash_defaults=True)


# ------------------------------------------------------------------ Hessian trace and top eigenvalue
#: the per-member results of :func:`tr_jax.landscape.member_hessian` a sweep keeps
HESSIAN_KEYS = ("trace", "trace_stderr", "trace_probes", "top_eigenvalue")
@functools.lru_cache(maxsize=None)
def _hessian_fn(model, mean: tuple, std: tuple, max_probes: int, chunk: int, max_iters: int,
                tol: float, restrict: bool):
    def one(v, m, x, y, k):
        r = landscape.member_hessian(model, v, m if restrict else None, x, y,
                                     jax.random.wrap_key_data(k), mean=mean, std=std,
                                     max_probes=max_probes, chunk=chunk, max_iters=max_iters,
                                     tol=tol, loop="while")
        return jnp.stack([jnp.asarray(r[name], r["trace"].dtype) for name in HESSIAN_KEYS])
    return mem.jit(jax.vmap(one, in_axes=(0, 0, None, None, 0)))


def hessian_members(model, variables: Any, masks: Any, images, labels, keys: np.ndarray, *,
                    mean, std, max_probes: int, chunk: int, max_iters: int, tol: float,
                    restrict_to_mask: bool) -> np.ndarray:
    """[m, len(HESSIAN_KEYS)] of m stacked members in one program (``lax.while_loop`` inside,
    no host sync per iteration)."""
    fn = _hessian_fn(model, tuple(map(float, mean)), tuple(map(float, std)), int(max_probes),
                     int(chunk), int(max_iters), float(tol), bool(restrict_to_mask))
    return sharding.to_host(fn(variables, masks, images, labels, jnp.asarray(keys, jnp.uint32)))


def _hessian_compute(inputs: Inputs, retrained: dict, idx: np.ndarray) -> dict:
    hc = inputs.cfg.measure.hessian
    n = min(hc.images, inputs.ds.num_train)
    V, masks, keys = (retrained["variables"], retrained["mask"],
                      inputs.grid.hessian_keys(inputs.root))
    X, Y = inputs.X[:n], inputs.Y[:n]
    opts = dict(mean=tuple(inputs.ds.mean), std=tuple(inputs.ds.std),
                max_probes=int(hc.max_probes), chunk=int(hc.chunk), max_iters=int(hc.eig_iters),
                tol=float(hc.tol))
    if inputs.stacked:
        h = hessian_members(inputs.model, inputs.take(V, idx), inputs.take(masks, idx), X, Y,
                            inputs.pad(keys[idx]), restrict_to_mask=bool(hc.restrict_to_mask),
                            **opts)
        h = np.asarray(h, np.float64)[:len(idx)]
    else:  # one member at a time, the host loop (what pays on CPU)
        def one(i):
            m = mem.take(masks, i) if hc.restrict_to_mask else None
            r = landscape.member_hessian(inputs.model, mem.take(V, i), m, X, Y,
                                         jax.random.wrap_key_data(jnp.asarray(keys[i])), **opts)
            return np.asarray([r[k] for k in HESSIAN_KEYS], np.float64)
        h = np.stack([one(i) for i in idx])
    return {k: h[:, j] for j, k in enumerate(HESSIAN_KEYS)}


def _hessian_describe(i: Inputs) -> str:
    hc = i.cfg.measure.hessian
    return (f"trace (<= {hc.max_probes} probes, tol {hc.tol}) and top eigenvalue of "
            f"{i.grid.num_members} members on {min(hc.images, i.ds.num_train)} training images"
            f"{', probes on unpruned weights' if hc.restrict_to_mask else ''}")


HESSIAN = Measure(
    name="hessian", unit="member", compute=_hessian_compute, keys=HESSIAN_KEYS,
    metrics=(Metric("hessian_trace", "trace",
                    ("Hessian trace", "log10 Hutchinson trace (eval mode, 200 images)"),
                    order=60, panel=40, cmap="magma_r", fmt="{:.2f}", log=True),
             Metric("hessian_trace_stderr", "trace_stderr", ("Hessian trace (standard error)",
                                                             "standard error of the trace"),
                    cell=None, order=61, panel=None),
             Metric("hessian_trace_probes", "trace_probes", ("Hutchinson probes", "probes"),
                    cell=None, order=62, panel=None),
             Metric("hessian_top_eigenvalue", "top_eigenvalue",
                    ("Hessian top eigenvalue", "log10 top eigenvalue"),
                    order=63, panel=50, cmap="magma_r", fmt="{:.2f}", log=True)),
    # eval mode, the first `images` training images (Zhou et al. 2023, §2; docs/fidelity.md,
    # Hessian)
    settings=dict(enabled=True, images=200, max_probes=100, tol=1e-3, chunk=10, eig_iters=100,
                  restrict_to_mask=True),
    ranges={"images": ck.POS_INT, "max_probes": ck.POS_INT,
            "tol": Range("float", lo=0, note="0 = run every probe / iteration"),
            "chunk": Range("int", lo=1, note="<= measure.hessian.max_probes"),
            "eig_iters": ck.POS_INT, "restrict_to_mask": ck.BOOL},
    sizing=lambda i: (len(i.grid.retrain_seeds), 1),
    check=lambda h: (("chunk", f"an integer in [1, measure.hessian.max_probes={h.max_probes}] "
                             "(probes per batched Hessian-vector product)")
                     if h.chunk > h.max_probes else None),
    describe=_hessian_describe, hash_defaults=True)


for _m in (CKA, LMC, BEZIER, HESSIAN):
    register(_m)
del _m

