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
import pathlib
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
           "HESSIAN_KEYS", "member_logits", "pair_cka", "hessian_members", "esd_scalars"]

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
    (the colour scale reaches 0 at least: a connectivity, 0 = connected) for the figure.

    ``layers``: a per-layer metric: ``key`` reads an array [items, layers] whose layer names the
    measure's ``layer_names`` gives; results.csv has one row per item and layer, its metric
    ``{name}@{layer}`` (:func:`tr_jax.regimes.layer_profiles` averages them per cell and layer).
    Its ``cell`` must be None; a ``panel`` draws its layer-profile figure (layers across,
    temperature down, one panel per density)."""
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
    layers: bool = False

    def __post_init__(self):
        if self.cell not in ("always", "measured", None):
            raise ValueError(f"Metric {self.name!r}: cell must be 'always', 'measured' or None, "
                             f"got {self.cell!r}")
        if self.layers and self.cell is not None:
            raise ValueError(f"Metric {self.name!r}: a per-layer metric has no cells.csv column "
                             f"(cell=None), got cell={self.cell!r}")
        if "@" in self.name:
            raise ValueError(f"Metric {self.name!r}: '@' separates a per-layer metric's name "
                             "from its layer in results.csv")


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
    one checkpoint and one line in the status (LMC and CKA are the group ``measure``).

    ``layer_names(inputs, retrained) -> tuple[str, ...]``: the layers of its per-layer metrics
    (``Metric.layers``), in network order: a function of the config and the model, so a resumed
    or grown sweep gets the same. ``figures(inputs, arrays, results, out_dir) -> [paths]``: its
    own figures, drawn by process 0 when the sweep writes its tables (``arrays``: the stage's
    arrays; ``results``: results.csv). ``new_settings``: settings added to a section kept in the
    hash (``hash_defaults``) after the hash existed; at their defaults they stay out of it, so
    existing workdirs keep their hash. ``curve`` may also be a function of the config (a label
    that names the curve's settings)."""
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
    curve: str | Callable[[Any], str] | None = None
    check: Callable[[Any], tuple[str, str] | None] | None = None
    batch_setting: str | None = None
    grows: bool = True
    partial: bool = False
    hash_defaults: bool = False
    group: str = ""
    layer_names: Callable[[Inputs, dict], tuple[str, ...]] | None = None
    figures: Callable[[Inputs, dict, Any, Any], list] | None = None
    new_settings: tuple[str, ...] = ()

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
        if any(x.layers for x in self.metrics) and self.layer_names is None:
            raise ValueError(f"Measure {self.name!r}: per-layer metrics need layer_names")
        unknown = sorted(set(self.new_settings) - set(self.settings or {}))
        if unknown:
            raise ValueError(f"Measure {self.name!r}: new_settings {unknown} are not settings")

    def curve_label(self, cfg) -> str | None:
        """The label of its curve in the curve figures (None: no curve)."""
        return self.curve(cfg) if callable(self.curve) else self.curve

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
        unroll=cpu, strategy=inputs.strategy, bends=int(bc.bends), kind=str(bc.kind))
    res = landscape.curve_errors(
        inputs.model, pa["params"], mid, pb["params"], inputs.X, inputs.Y, mean=inputs.ds.mean,
        std=inputs.ds.std, ts=_bezier_ts(inputs), bn_batch_size=m.bn_batch_size,
        test=(inputs.Xt, inputs.Yt), eval_batch_size=inputs.cfg.run.eval_batch_size,
        points_per_call=m.points_per_call or None, kind=str(bc.kind))
    return _curve_errors(res, len(pidx))


def _bezier_label(cfg) -> str:
    bc = cfg.measure.bezier
    if int(bc.bends) == 1 and bc.kind == "bezier":
        return "Bezier"
    name = "Bezier" if bc.kind == "bezier" else "polygonal chain"
    return f"{name} ({int(bc.bends)} bend{'s' if int(bc.bends) > 1 else ''})"


def _bezier_finish(inputs: Inputs, out: dict) -> dict:
    return {"mc": np.asarray(landscape.mode_connectivity(out["curve_train_error"])),
            "ts": _bezier_ts(inputs)}


BEZIER = Measure(
    name="bezier", unit="pair", compute=_bezier_compute, finish=_bezier_finish, keys=CURVE_OUT,
    metrics=(Metric("bezier_mc", "mc", ("Bezier mode connectivity",
                                        "mc, train-error fraction (< 0 = barrier)"),
                    cell="measured", order=50, panel=10, zero_is_top=True),),
    # a quadratic Bezier curve per pair, its middle bend trained (masked) with the two
    # endpoints fixed (Zhou et al. 2023, §2; docs/fidelity.md, Bezier curves); bends > 1: a
    # Bezier curve of order bends + 1 or a polygonal chain (Garipov et al. 2018), all bends trained
    settings=dict(enabled=True, epochs=50, batch_size=128, lr=0.01, weight_decay=5e-4,
                  momentum=0.9, points=5, bends=1, kind="bezier"),
    ranges={"epochs": ck.POS_INT, "batch_size": ck.POS_INT, "lr": ck.LR,
            "weight_decay": ck.WEIGHT_DECAY, "momentum": ck.MOMENTUM,
            "points": Range("int", lo=3),
            "bends": Range("int", lo=1, note="trained bends; 1 = the paper's quadratic curve"),
            "kind": Range("str", choices=("bezier", "polychain"))},
    new_settings=("bends", "kind"),
    sizing=lambda i: (i.grid.pairs_per_cell * i.cfg.measure.bezier.points, _points_per_call(i)),
    describe=lambda i: (f"{len(i.grid.pairs())} curves ({_bezier_label(i.cfg)}) x "
                        f"{i.cfg.measure.bezier.epochs} epochs (batch "
                        f"{i.cfg.measure.bezier.batch_size}), evaluated at "
                        f"{i.cfg.measure.bezier.points} points"),
    curve=_bezier_label, batch_setting="batch_size", hash_defaults=True)


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


# ------------------------------------------------------------------ depth: layers and spectra
def _layers(text: str):
    """A ``layers`` setting: '' = the defaults, else a regex over module paths."""
    return str(text) or None


def _one(tree):
    """One member's abstract variables (shapes only) of a stacked tree."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tree)


def _images(inputs: Inputs, name: str) -> int:
    return min(int(inputs.settings(name).images), inputs.ds.num_train)


def _finite_share(top: np.ndarray, total: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, top / total, np.nan)


def _chunk_rule(name: str, many: str):
    def check(h):
        if h.chunk > h[many]:
            return ("chunk", f"an integer in [1, measure.{name}.{many}={h[many]}] "
                             "(probes per batched Hessian-vector product)")
        return None
    return check


# layer-wise CKA of the retrained pairs (Kornblith et al. 2019; the unbiased HSIC_1 estimator of
# Nguyen, Raghu & Kornblith 2021): tr_jax.landscape.layers
def _layer_cka_names(inputs: Inputs, retrained: dict) -> tuple[str, ...]:
    return landscape.layer_names(inputs.model, _one(retrained["variables"]), inputs.ds.image_shape,
                                 _layers(inputs.settings("layer_cka").layers))


def _layer_cka_compute(inputs: Inputs, retrained: dict, pidx: np.ndarray) -> dict:
    s = inputs.settings("layer_cka")
    pairs = inputs.grid.pairs_array()[pidx]
    members, local = np.unique(pairs, return_inverse=True)
    local = local.reshape(-1, 2)
    _, biased, unbiased = landscape.layer_cka_pairs(
        inputs.model, inputs.take(retrained["variables"], members),
        inputs.X[:_images(inputs, "layer_cka")], local[:, 0], local[:, 1], mean=inputs.ds.mean,
        std=inputs.ds.std, layers=_layers(s.layers), members_per_call=int(s.members_per_call))
    return {"layer_cka": biased, "layer_cka_unbiased": unbiased}


def _layer_cka_finish(inputs: Inputs, out: dict) -> dict:
    u = np.asarray(out["layer_cka_unbiased"], np.float64)
    return {"layer_cka_min": u.min(axis=1) if u.shape[1] else np.full(len(u), np.nan)}


LAYER_CKA = Measure(
    name="layer_cka", unit="pair", compute=_layer_cka_compute, finish=_layer_cka_finish,
    keys=("layer_cka", "layer_cka_unbiased"), layer_names=_layer_cka_names,
    metrics=(Metric("layer_cka", "layer_cka", ("Layer CKA (biased)", "linear CKA per layer"),
                    cell=None, order=70, panel=60, layers=True),
             Metric("layer_cka_unbiased", "layer_cka_unbiased",
                    ("Layer CKA (unbiased)", "linear CKA per layer, unbiased HSIC"),
                    cell=None, order=71, panel=61, layers=True),
             Metric("layer_cka_min", "layer_cka_min",
                    ("Least similar layer", "min over layers of the unbiased layer CKA"),
                    order=72, panel=62)),
    # the first `images` training images, eval mode (running BN statistics); layers: '' = the
    # built-in architecture's blocks (tr_jax.landscape.default_layers), else a regex over paths
    settings=dict(enabled=False, images=256, layers="", members_per_call=0),
    ranges={"images": Range("int", lo=4, note="each member's layer is kept as an images^2 Gram"),
            "layers": Range("str", note="'' = the built-in blocks; else a regex over module paths"),
            "members_per_call": Range("int", lo=0, note="0 = every member of a chunk at once")},
    sizing=lambda i: (len(i.grid.retrain_seeds), 1),
    describe=lambda i: (f"layer-wise CKA ({_images(i, 'layer_cka')} images, layers "
                        f"{i.settings('layer_cka').layers or 'the built-in blocks'!s}) for "
                        f"{len(i.grid.pairs())} pairs"))


# per-layer Hessian traces (Hutchinson on every layer's block from one probe over all weights):
# tr_jax.landscape.spectrum
def _layer_groups(inputs: Inputs, variables) -> dict[str, tuple[int, ...]]:
    """The layer groups of the Hessian, in network order (the order their modules finish)."""
    one = _one(variables)
    groups = landscape.layer_groups(one["params"], _layers(inputs.settings("layer_hessian").layers))
    paths = landscape.module_paths(inputs.model, one, inputs.ds.image_shape)

    def rank(name: str) -> int:
        return next((i for i, p in enumerate(paths) if p == name or p.startswith(name + "/")),
                    len(paths))
    return {k: groups[k] for k in sorted(groups, key=rank)}


def _layer_hessian_names(inputs: Inputs, retrained: dict) -> tuple[str, ...]:
    return tuple(_layer_groups(inputs, retrained["variables"]))


def _trace_key(raw) -> jax.Array:
    """The trace's probe key of a member's raw Hessian key, as ``member_hessian`` splits it: the
    per-layer traces draw the whole-network trace's probes."""
    return jax.random.split(jax.random.wrap_key_data(raw))[0]


@functools.lru_cache(maxsize=None)
def _layer_trace_fn(model, mean: tuple, std: tuple, groups: tuple, probes: int, chunk: int,
                    restrict: bool):
    layers = dict(groups)

    def one(v, m, x, y, k):
        r = landscape.layer_traces(model, v, m if restrict else None, x, y,
                                   _trace_key(k), mean=mean, std=std, layers=layers,
                                   probes=probes, chunk=chunk, loop="while")
        return jnp.stack([r[n][0] for n in layers]), jnp.stack([r[n][1] for n in layers])
    return mem.jit(jax.vmap(one, in_axes=(0, 0, None, None, 0)))


def _layer_hessian_compute(inputs: Inputs, retrained: dict, idx: np.ndarray) -> dict:
    s = inputs.settings("layer_hessian")
    n = _images(inputs, "layer_hessian")
    V, masks, keys = retrained["variables"], retrained["mask"], inputs.grid.hessian_keys(inputs.root)
    groups = _layer_groups(inputs, V)
    X, Y = inputs.X[:n], inputs.Y[:n]
    mean, std = tuple(map(float, inputs.ds.mean)), tuple(map(float, inputs.ds.std))
    if inputs.stacked:
        fn = _layer_trace_fn(inputs.model, mean, std, tuple(groups.items()), int(s.probes),
                             int(s.chunk), bool(s.restrict_to_mask))
        tr, se = fn(inputs.take(V, idx), inputs.take(masks, idx), X, Y,
                    jnp.asarray(inputs.pad(keys[idx]), jnp.uint32))
        tr, se = (np.asarray(sharding.to_host(a), np.float64)[:len(idx)] for a in (tr, se))
    else:  # one member at a time, the host loop
        rows = []
        for i in idx:
            r = landscape.layer_traces(
                inputs.model, mem.take(V, i), mem.take(masks, i) if s.restrict_to_mask else None,
                X, Y, _trace_key(jnp.asarray(keys[i])), mean=mean, std=std,
                layers=groups, probes=int(s.probes), chunk=int(s.chunk))
            rows.append([[float(r[g][0]) for g in groups], [float(r[g][1]) for g in groups]])
        tr, se = (np.asarray([r[j] for r in rows], np.float64).reshape(len(idx), len(groups))
                  for j in (0, 1))
    return {"layer_trace": tr, "layer_trace_stderr": se}


def _layer_hessian_finish(inputs: Inputs, out: dict) -> dict:
    t = np.asarray(out["layer_trace"], np.float64)
    return {"layer_trace_top_share": _finite_share(t.max(axis=1, initial=-np.inf), t.sum(axis=1))}


LAYER_HESSIAN = Measure(
    name="layer_hessian", unit="member", compute=_layer_hessian_compute,
    finish=_layer_hessian_finish, keys=("layer_trace", "layer_trace_stderr"),
    layer_names=_layer_hessian_names,
    metrics=(Metric("layer_trace", "layer_trace", ("Hessian trace per layer",
                                                   "log10 trace of the layer's Hessian block"),
                    cell=None, order=73, panel=63, cmap="magma_r", log=True, layers=True),
             Metric("layer_trace_stderr", "layer_trace_stderr",
                    ("Hessian trace per layer (standard error)", "standard error"),
                    cell=None, order=74, panel=None, layers=True),
             Metric("layer_trace_top_share", "layer_trace_top_share",
                    ("Curvature in the most curved layer",
                     "largest layer trace / sum of layer traces"),
                    order=75, panel=64, cmap="magma_r")),
    # the Hessian measure's loss, images, probe keys and mask rule; layers: '' = one group per
    # top-level module, else a regex over parameter paths (its first group names the layer)
    settings=dict(enabled=False, images=200, probes=20, chunk=5, restrict_to_mask=True, layers=""),
    ranges={"images": ck.POS_INT, "probes": ck.POS_INT,
            "chunk": Range("int", lo=1, note="<= measure.layer_hessian.probes"),
            "restrict_to_mask": ck.BOOL,
            "layers": Range("str", note="'' = one group per top-level module; else a regex over "
                                        "parameter paths")},
    sizing=lambda i: (len(i.grid.retrain_seeds), 1), check=_chunk_rule("layer_hessian", "probes"),
    describe=lambda i: (f"per-layer Hessian traces ({i.settings('layer_hessian').probes} probes) "
                        f"of {i.grid.num_members} members on {_images(i, 'layer_hessian')} "
                        "training images"))


# the Hessian's eigenvalue spectral density by stochastic Lanczos quadrature
# (tr_jax.landscape.spectrum; Ghorbani, Krishnan & Xiao 2019)
@functools.lru_cache(maxsize=None)
def _esd_fn(model, mean: tuple, std: tuple, probes: int, steps: int, restrict: bool):
    def one(v, m, x, y, k):
        r = landscape.hessian_esd(model, v, m if restrict else None, x, y,
                                  jax.random.wrap_key_data(k), mean=mean, std=std,
                                  num_probes=probes, lanczos_steps=steps, num_points=2,
                                  loop="while")
        return r["nodes"], r["weights"]
    return mem.jit(jax.vmap(one, in_axes=(0, 0, None, None, 0)))


def _esd_compute(inputs: Inputs, retrained: dict, idx: np.ndarray) -> dict:
    s = inputs.settings("hessian_esd")
    n = _images(inputs, "hessian_esd")
    V, masks, keys = retrained["variables"], retrained["mask"], inputs.grid.esd_keys(inputs.root)
    X, Y = inputs.X[:n], inputs.Y[:n]
    mean, std = tuple(map(float, inputs.ds.mean)), tuple(map(float, inputs.ds.std))
    if inputs.stacked:
        fn = _esd_fn(inputs.model, mean, std, int(s.probes), int(s.lanczos_steps),
                     bool(s.restrict_to_mask))
        nodes, weights = fn(inputs.take(V, idx), inputs.take(masks, idx), X, Y,
                            jnp.asarray(inputs.pad(keys[idx]), jnp.uint32))
        nodes, weights = (np.asarray(sharding.to_host(a), np.float64)[:len(idx)]
                          for a in (nodes, weights))
    else:
        outs = [landscape.hessian_esd(
            inputs.model, mem.take(V, i), mem.take(masks, i) if s.restrict_to_mask else None, X,
            Y, jax.random.wrap_key_data(jnp.asarray(keys[i])), mean=mean, std=std,
            num_probes=int(s.probes), lanczos_steps=int(s.lanczos_steps), num_points=2)
            for i in idx]
        nodes = np.stack([np.asarray(o["nodes"], np.float64) for o in outs])
        weights = np.stack([np.asarray(o["weights"], np.float64) for o in outs])
    return {"esd_nodes": nodes, "esd_weights": weights}


def esd_scalars(nodes: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Per member, from SLQ nodes and weights [m, probes, k]: the negative mass (the weight of the
    negative Ritz values, mean over probes) and the largest weighted Ritz value (host numpy, as
    :func:`tr_jax.landscape.esd_summary` per member)."""
    nodes, weights = np.asarray(nodes, np.float64), np.asarray(weights, np.float64)
    live = weights > 0
    neg = np.where(nodes < 0, weights, 0.0).sum(axis=2).mean(axis=1)
    top = np.where(live, nodes, -np.inf).reshape(len(nodes), -1).max(axis=1, initial=-np.inf)
    return {"esd_negative_mass": neg, "esd_top": np.where(np.isfinite(top), top, np.nan)}


def _esd_finish(inputs: Inputs, out: dict) -> dict:
    return esd_scalars(out["esd_nodes"], out["esd_weights"])


def _esd_figures(inputs: Inputs, arrays: dict, results, out_dir) -> list:
    from tr_jax import plots  # plots import this registry
    grid = inputs.grid
    idx = grid.member_indices()
    nodes, weights = np.asarray(arrays["esd_nodes"]), np.asarray(arrays["esd_weights"])
    ok = np.isfinite(nodes).all(axis=(1, 2)) & np.isfinite(weights).all(axis=(1, 2))
    spectra = {}
    for ti, t in enumerate(grid.temperatures):
        for di, d in enumerate(grid.densities):
            sel = ok & (idx[:, 1] == ti) & (idx[:, 2] == di)
            if sel.any():
                k = nodes.shape[-1]
                spectra[(t, d)] = (nodes[sel].reshape(-1, k), weights[sel].reshape(-1, k))
    if not spectra:
        return []
    return [plots.esd_grid(spectra, pathlib.Path(out_dir) / "hessian_esd.png",
                           knob=inputs.cfg.knob,
                           title="Hessian eigenvalue density (stochastic Lanczos quadrature)")]


HESSIAN_ESD = Measure(
    name="hessian_esd", unit="member", compute=_esd_compute, finish=_esd_finish,
    keys=("esd_nodes", "esd_weights"), figures=_esd_figures,
    metrics=(Metric("esd_negative_mass", "esd_negative_mass",
                    ("Negative curvature (ESD)", "mass of the eigenvalue density below 0"),
                    order=76, panel=65, cmap="magma_r"),
             Metric("esd_top", "esd_top", ("Largest Ritz value (ESD)", "largest Ritz value"),
                    cell=None, order=77, panel=None)),
    # the Hessian measure's loss and mask rule; probes x lanczos_steps Hessian-vector products
    settings=dict(enabled=False, images=200, probes=2, lanczos_steps=20, restrict_to_mask=True),
    ranges={"images": ck.POS_INT, "probes": ck.POS_INT, "lanczos_steps": Range("int", lo=2),
            "restrict_to_mask": ck.BOOL},
    sizing=lambda i: (len(i.grid.retrain_seeds), 1),
    describe=lambda i: (f"Hessian eigenvalue density ({i.settings('hessian_esd').probes} probes x "
                        f"{i.settings('hessian_esd').lanczos_steps} Lanczos steps) of "
                        f"{i.grid.num_members} members on {_images(i, 'hessian_esd')} images"))


for _m in (CKA, LMC, BEZIER, HESSIAN, LAYER_CKA, LAYER_HESSIAN, HESSIAN_ESD):
    register(_m)
del _m

