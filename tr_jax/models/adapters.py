"""Any Flax model behind one boundary: ``init`` and ``apply`` in tr_jax's four BN modes (docs/fidelity.md,
§1.4, §2.2).

Every stage of tr_jax (training, SAM, pruning, LMC with BN recalibration, CKA, Bezier curves, the
Hessian) calls a model only through ``tr_jax.models.init`` / ``tr_jax.models.apply`` on plain
variables ``{'params': ..., 'batch_stats': ...}``. ``adapter(model)`` picks how a model is called:

``NativeAdapter``  a Linen module whose ``__call__`` takes ``mode`` (tr_jax's PreResNet / VGG /
    DenseNet, or a user module built on ``tr_jax.models.BatchNorm``): the mode is passed through.
``LinenAdapter``   any other Linen module, called as ``__call__(x, train=bool)`` (the keyword is
    ``train_arg``; a module whose ``__call__`` has no such parameter is called as ``__call__(x)``).
    ``flax.linen.BatchNorm`` layers are used as they are (``use_running_average=not train`` in the
    user's module).
``NNXAdapter``     an NNX model, built by a factory ``rngs -> nnx.Module`` (``from_nnx``), crossed
    through ``nnx.split`` / ``nnx.merge`` on every call; ``nnx.BatchNorm`` layers are switched by
    their ``use_running_average`` attribute, so ``__call__(x)`` needs no train argument.

Modes, for the Linen and NNX adapters:

* ``train``  BN on batch statistics, running statistics updated by the layer's own rule (flax:
  ``running <- momentum * running + (1 - momentum) * batch``, biased variance).
* ``frozen`` train mode with the updated running statistics discarded (SAM's second pass, §1.4).
* ``eval``   running statistics.
* ``collect`` train mode, and each BN layer's *input* is captured to compute that batch's exact
  per-channel mean and unbiased variance (``n / (n - 1)`` times the biased one, n = values per
  channel), returned in the layout of ``batch_stats``. Linen: an ``nn.intercept_methods``
  interceptor on ``nn.BatchNorm.__call__``; NNX: the merged copy's ``nnx.BatchNorm`` layers are
  given a recording subclass. Capturing the input (rather than back-solving the batch statistics
  from the updated running ones) is exact whatever the layer's momentum (even 1.0 or 0.0), needs no
  reset, and gives PyTorch's unbiased variance that BN recalibration averages, where flax keeps a biased
  one. ``tr_jax.landscape.recalibrate`` then forms the size-weighted average over batches.

A model without BN has an empty ``batch_stats``; ``collect`` returns ``{}`` and recalibration is a
no-op. Other variable collections (dropout RNGs, ``intermediates``) are not supported: training
calls carry no RNG.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

MODES = ("train", "frozen", "collect", "eval")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")


def batch_moments(x: jnp.ndarray, axis: int | tuple[int, ...] = -1) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-feature batch mean and *unbiased* variance of ``x`` (features on ``axis``, reduced over
    every other axis), in float32: what one batch contributes to BN recalibration
    (docs/fidelity.md, BN recalibration)."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    feat = tuple(sorted(a % x.ndim for a in axes))
    red = tuple(a for a in range(x.ndim) if a not in feat)
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=red)
    shape = [1 if a in red else x.shape[a] for a in range(x.ndim)]
    var = jnp.mean(jnp.square(xf - mean.reshape(shape)), axis=red)
    n = 1
    for a in red:
        n *= x.shape[a]
    return mean, var * (n / max(n - 1, 1))


def _variables(v: dict) -> dict:
    return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}


def _apply_result(mode: str, variables: dict, logits, stats):
    if mode == "train":
        return logits, {"params": variables["params"], "batch_stats": stats}
    if mode == "collect":
        return logits, stats
    return logits


@dataclasses.dataclass(frozen=True)
class NativeAdapter:
    """tr_jax's own models: ``__call__(x, mode=...)`` with ``tr_jax.models.BatchNorm``."""

    module: nn.Module

    def init(self, key: jax.Array, input_shape: tuple[int, ...]) -> dict:
        v = self.module.init(key, jnp.zeros((1, *input_shape), jnp.float32), mode="eval")
        return _variables(v)

    def apply(self, variables: dict, images: jnp.ndarray, mode: str):
        _check_mode(mode)
        v = _variables(variables)
        if mode in ("eval", "frozen"):
            return self.module.apply(v, images, mode=mode)
        coll = "batch_stats" if mode == "train" else "bn_stats"
        logits, upd = self.module.apply(v, images, mode=mode, mutable=[coll])
        return _apply_result(mode, variables, logits, upd.get(coll, {}))


def _takes(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _linen_collector(next_fun, args, kwargs, context):
    """Interceptor: record every ``nn.BatchNorm``'s batch moments in its own scope's
    ``bn_stats`` collection (so the tree has the layout of ``batch_stats``)."""
    mod = context.module
    if isinstance(mod, nn.BatchNorm) and context.method_name == "__call__" and args:
        mean, var = batch_moments(args[0], mod.axis)
        mod.put_variable("bn_stats", "mean", mean)
        mod.put_variable("bn_stats", "var", var)
    return next_fun(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class LinenAdapter:
    """A user Linen module called as ``__call__(x, **{train_arg: bool})`` (see the module doc)."""

    module: nn.Module
    train_arg: str | None = "train"

    def _kw(self, train: bool) -> dict:
        if self.train_arg and _takes(type(self.module).__call__, self.train_arg):
            return {self.train_arg: train}
        return {}

    def init(self, key: jax.Array, input_shape: tuple[int, ...]) -> dict:
        v = self.module.init(key, jnp.zeros((1, *input_shape), jnp.float32), **self._kw(False))
        extra = sorted(set(v) - {"params", "batch_stats"})
        if extra:
            raise ValueError(f"{type(self.module).__name__} has variable collections {extra}; "
                             "tr_jax models may hold only 'params' and 'batch_stats'")
        return _variables(v)

    def apply(self, variables: dict, images: jnp.ndarray, mode: str):
        _check_mode(mode)
        v = {k: x for k, x in _variables(variables).items() if k == "params" or x}
        if mode == "eval":
            return self.module.apply(v, images, **self._kw(False))
        if mode == "collect":
            with nn.intercept_methods(_linen_collector):
                logits, upd = self.module.apply(v, images, mutable=["batch_stats", "bn_stats"],
                                                **self._kw(True))
            return logits, upd.get("bn_stats", {})
        logits, upd = self.module.apply(v, images, mutable=["batch_stats"], **self._kw(True))
        if mode == "frozen":
            return logits
        return _apply_result(mode, variables, logits, upd.get("batch_stats", {}))


# (bn object, mean, var) while an NNX collect call is traced; per thread (members strategies may
# trace from several threads at once)
_NNX_RECORD = threading.local()


def _nnx_collecting_class(cls: type) -> type:
    """A subclass of an ``nnx.BatchNorm`` class that records its input's batch moments."""

    class Collecting(cls):  # type: ignore[misc, valid-type]
        def __call__(self, x, *args, **kwargs):
            record = getattr(_NNX_RECORD, "items", None)
            if record is not None:
                record.append((self, *batch_moments(x, self.axis)))
            return super().__call__(x, *args, **kwargs)

    Collecting.__name__ = Collecting.__qualname__ = f"Collecting{cls.__name__}"
    return Collecting


@functools.lru_cache(maxsize=None)
def _collecting(cls: type) -> type:
    return _nnx_collecting_class(cls)


def _nest(flat: dict[tuple, Any]) -> dict:
    out: dict = {}
    for path, leaf in flat.items():
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = leaf
    return out


@dataclasses.dataclass(frozen=True)
class NNXAdapter:
    """An NNX model given by ``factory(rngs) -> nnx.Module`` (see ``from_nnx``)."""

    factory: Callable[..., Any]

    @functools.cached_property
    def _abstract(self):
        from flax import nnx
        return nnx.split(nnx.eval_shape(lambda: self.factory(nnx.Rngs(0))), nnx.Param,
                         nnx.BatchStat, ...)

    def init(self, key: jax.Array, input_shape: tuple[int, ...]) -> dict:
        from flax import nnx
        _, params, stats, rest = nnx.split(self.factory(nnx.Rngs(key)), nnx.Param, nnx.BatchStat,
                                           ...)
        if jax.tree.leaves(rest):
            raise ValueError("the NNX model holds state other than nnx.Param and nnx.BatchStat "
                             f"({sorted(nnx.to_pure_dict(rest))}); tr_jax supports only those two")
        return {"params": nnx.to_pure_dict(params), "batch_stats": nnx.to_pure_dict(stats)}

    def merge(self, variables: dict):
        """The ``nnx.Module`` holding ``variables`` (a fresh object; the pure dicts are unchanged)."""
        import copy

        from flax import nnx
        graphdef, params, stats, rest = self._abstract
        params, stats = copy.deepcopy(params), copy.deepcopy(stats)
        nnx.replace_by_pure_dict(params, variables["params"])
        if variables.get("batch_stats"):
            nnx.replace_by_pure_dict(stats, variables["batch_stats"])
        return nnx.merge(graphdef, params, stats, rest)

    def apply(self, variables: dict, images: jnp.ndarray, mode: str):
        from flax import nnx
        _check_mode(mode)
        m = self.merge(variables)
        bns = {id(mod): (path, mod) for path, mod in nnx.iter_modules(m)
               if isinstance(mod, nnx.BatchNorm)}
        for _, mod in bns.values():
            mod.use_running_average = mode == "eval"
            if mode == "collect":  # this merged copy only; the user's classes are untouched
                mod.__class__ = _collecting(type(mod))
        if mode != "collect":
            logits = m(images)
            stats = nnx.to_pure_dict(nnx.split(m, nnx.Param, nnx.BatchStat, ...)[2])
            return _apply_result(mode, variables, logits, stats)
        _NNX_RECORD.items = record = []
        try:
            logits = m(images)
        finally:
            _NNX_RECORD.items = None
        flat = {}
        for mod, mean, var in record:
            flat[(*bns[id(mod)][0], "mean")] = mean
            flat[(*bns[id(mod)][0], "var")] = var
        return logits, _nest(flat)


def from_nnx(factory: Callable[..., Any]) -> NNXAdapter:
    """An NNX model for tr_jax: ``factory(rngs: nnx.Rngs) -> nnx.Module``, e.g.
    ``tj.models.from_nnx(lambda rngs: MyNet(rngs=rngs))``. ``init(key)`` builds it with
    ``nnx.Rngs(key)`` so that every member gets its own initialisation."""
    if not callable(factory):
        raise TypeError(f"from_nnx needs a factory rngs -> nnx.Module, got {factory!r}")
    return NNXAdapter(factory)


def from_linen(module: nn.Module, train_arg: str | None = "train") -> LinenAdapter:
    """A Linen module whose train flag has another name (``train_arg``, e.g. ``'training'``), or
    none (``None``: always called as ``module(x)``)."""
    return LinenAdapter(module, train_arg)


def adapter(model: Any):
    """The adapter of ``model``: itself if it is one, else by type (see the module doc)."""
    if isinstance(model, (NativeAdapter, LinenAdapter, NNXAdapter)):
        return model
    if isinstance(model, nn.Module):
        if "mode" in inspect.signature(type(model).__call__).parameters:
            return NativeAdapter(model)
        return LinenAdapter(model)
    try:
        from flax import nnx
        if isinstance(model, nnx.Module):
            raise TypeError(
                f"an nnx.Module instance ({type(model).__name__}) cannot be re-initialised per "
                "member: pass tj.models.from_nnx(lambda rngs: YourModel(..., rngs=rngs)), and "
                "its variables from tj.models.nnx_variables(instance)")
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not a Flax model: {model!r} (a flax.linen.Module, or an NNX model "
                    "through tj.models.from_nnx)")


def nnx_variables(module: Any) -> dict:
    """``{'params', 'batch_stats'}`` pure dicts of an existing ``nnx.Module`` instance."""
    from flax import nnx
    _, params, stats, _ = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
    return {"params": nnx.to_pure_dict(params), "batch_stats": nnx.to_pure_dict(stats)}
