"""Layer-wise linear CKA between members: which layers of two retrained copies agree.

The outputs-only CKA of the sweep (``tr_jax.landscape.cka`` on softmax outputs; Zhou et al. 2023,
§2) says whether two members compute the same function; layer-wise CKA (Kornblith et al. 2019,
"Similarity of neural network representations revisited") says at which depth they part. Each
layer's activations on the same n images are flattened per example ([n, d], d = H*W*C for a conv
map) and compared through n x n Gram matrices (``tr_jax.landscape.cka.gram``), so wide layers cost
O(n^2 d) and a member's layer is kept only as its [n, n] Gram. Both the biased CKA (``cka``) and
the CKA of the unbiased HSIC_1 (``cka_unbiased``; Nguyen, Raghu & Kornblith 2021) are given: with
n = 256 images and d in the thousands the biased one is inflated towards 1 even for unrelated
representations, the unbiased one is not.

Activations come from an eval-mode forward pass (running BN statistics) with Flax's
``capture_intermediates``, filtered so that only the chosen modules are recorded. A layer is a
module's ``__call__`` output, named by its module path (``'layer2_1'``, ``'block/conv'``; the
root module is never one):

* ``layers=None``: the defaults of the built-in architectures (``default_layers``), in network
  order, always ending with the logits:

  - PreResNet: the middle and the last residual block of each stage (``layer{s}_{(n-1)//2}``,
    ``layer{s}_{n-1}``; one block per stage at depth 8), then ``fc``: 4 (depth 8) to 7 layers;
  - VGG: the last conv layer of each of the 5 stages, before its ReLU and pool (the BN output
    ``features_{i}`` with ``vgg_bn``, the conv output without BN; ReLU and pools are not
    modules), then ``classifier``: 6 layers;
  - DenseNet: the output of each dense block (its last layer, ``dense{b}_{n-1}``: the block's
    concatenated features) and of each transition (``trans1``, ``trans2``), then ``fc``: 6 layers.

* ``layers="regex"``: every module whose path matches (``re.search``), e.g.
  ``"layer[0-9]+_[0-9]+$"`` (every residual block) or ``"^(block[0-9]|head)$"`` for your own
  Linen model (any model ``tr_jax.models.apply`` takes except NNX ones);
* ``layers=("layer1_0", "fc")``: exactly these paths.

Layers are returned in the order their modules finish (network order for a sequential model; a
module called more than once gives its last call). Images are raw pixels (0..255) normalised with
``mean`` / ``std`` as everywhere in tr_jax (``tr_jax.data.augment.normalize``).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import flax.traverse_util as tu
import jax
import jax.numpy as jnp
import numpy as np

from tr_jax import members as mem
from tr_jax import sharding
from tr_jax.data.augment import normalize
from tr_jax.landscape.cka import _check_n, cka_gram, cka_unbiased_gram, gram
from tr_jax.models.adapters import LinenAdapter, NativeAdapter, _variables, adapter
from tr_jax.models.densenet import DenseNet
from tr_jax.models.densenet import check_depth as _densenet_n
from tr_jax.models.preresnet import PreResNet
from tr_jax.models.preresnet import check_depth as _preresnet_n
from tr_jax.models.vgg import VGG
from tr_jax.models.vgg import check_depth as _vgg_config
from tr_jax.models.vgg import layer_indices as _vgg_layers

__all__ = ["default_layers", "layer_names", "module_paths", "layer_features", "layer_grams",
           "pair_layer_cka", "layer_cka_pairs"]


def _module(model: Any):
    """The Linen module and the keyword arguments of its eval-mode call."""
    ad = adapter(model)
    if isinstance(ad, NativeAdapter):
        return ad.module, {"mode": "eval"}
    if isinstance(ad, LinenAdapter):
        return ad.module, ad._kw(False)
    raise TypeError(f"layer-wise CKA needs a Linen model (capture_intermediates); "
                    f"{type(ad).__name__} models are not supported")


def default_layers(model: Any) -> tuple[str, ...]:
    """The default layers of a built-in architecture (see the module doc), in network order."""
    m = _module(model)[0]
    if isinstance(m, PreResNet):
        n = _preresnet_n(m.depth)
        blocks = sorted({(n - 1) // 2, n - 1})
        return tuple(f"layer{s}_{b}" for s in (1, 2, 3) for b in blocks) + ("fc",)
    if isinstance(m, VGG):
        convs = iter(_vgg_layers(m.depth, m.batch_norm))
        out, last = [], None
        for v in _vgg_config(m.depth):
            if v == "M":
                out.append(last)
                continue
            ci, bi = next(convs)
            last = f"features_{ci if bi is None else bi}"
        return tuple(out) + (last, "classifier")
    if isinstance(m, DenseNet):
        n = _densenet_n(m.depth)
        return (f"dense1_{n - 1}", "trans1", f"dense2_{n - 1}", "trans2", f"dense3_{n - 1}", "fc")
    raise ValueError(f"{type(m).__name__} is not a built-in architecture (PreResNet, VGG, "
                     "DenseNet): pass layers= a regex over module paths (e.g. 'block[0-9]+$') "
                     "or a tuple of paths")


def _spec(model: Any, layers: str | Sequence[str] | None) -> tuple:
    """A hashable layer selection: ('names', paths) or ('regex', pattern)."""
    if layers is None:
        return ("names", default_layers(model))
    if isinstance(layers, str):
        try:
            re.compile(layers)
        except re.error as e:
            raise ValueError(f"layers={layers!r} is not a valid regex over module paths: {e}") from e
        return ("regex", layers)
    names = tuple(layers)
    if not names or not all(isinstance(s, str) for s in names):
        raise ValueError(f"layers must be None, a regex or a non-empty sequence of module paths; "
                         f"got {layers!r}")
    return ("names", names)


def _matches(spec: tuple, path: str) -> bool:
    if not path:  # the root module: its output is the logits, which a named layer gives
        return False
    kind, what = spec
    return path in what if kind == "names" else re.search(what, path) is not None


def _path(mdl) -> str:
    return "/".join(str(p) for p in mdl.path)


def _capture(model: Any, spec: tuple, variables: dict, x: jnp.ndarray, record: list | None = None,
             every: bool = False) -> dict[str, jnp.ndarray]:
    """{path: flattened float32 output [n, d]} of the selected modules, one eval forward pass.
    ``record`` collects the paths in the order their calls finish (at trace time)."""
    module, kw = _module(model)

    def keep(mdl, method: str) -> bool:
        ok = method == "__call__" and (every or _matches(spec, _path(mdl)))
        if ok and record is not None:
            record.append(_path(mdl))
        return ok

    v = {k: t for k, t in _variables(variables).items() if k == "params" or t}
    _, state = module.apply(v, x, capture_intermediates=keep, mutable=["intermediates"], **kw)
    flat = tu.flatten_dict(dict(state.get("intermediates", {})))
    out = {}
    for key, calls in flat.items():
        leaves = jax.tree.leaves(calls[-1])
        out["/".join(map(str, key[:-1]))] = jnp.concatenate(
            [jnp.reshape(a, (x.shape[0], -1)).astype(jnp.float32) for a in leaves], axis=-1)
    return out


_NAMES: dict = {}


def _names(model: Any, spec: tuple, variables: dict, images: jnp.ndarray) -> tuple[str, ...]:
    """The selected layers in call order (one abstract trace per model, selection, image shape)."""
    key = (model, spec, tuple(images.shape[1:]))
    if key not in _NAMES:
        record: list[str] = []
        x = jax.ShapeDtypeStruct((1, *images.shape[1:]), jnp.float32)
        jax.eval_shape(lambda v, y: _capture(model, spec, v, y, record), variables, x)
        names = tuple(dict.fromkeys(record))
        what = type(_module(model)[0]).__name__
        missing = [s for s in spec[1] if s not in names] if spec[0] == "names" else []
        if missing:
            raise ValueError(f"layers {missing} are not module paths of {what}; it has "
                             f"{_all_paths(model, variables, x)}")
        if not names:
            raise ValueError(f"layers={spec[1]!r} matches no module path of {what}; it has "
                             f"{_all_paths(model, variables, x)}")
        _NAMES[key] = names
    return _NAMES[key]


def _abstract(variables: dict, stacked: bool) -> dict:
    drop = 1 if stacked else 0
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a)[drop:], a.dtype), variables)


def layer_names(model: Any, variables: dict, image_shape: Sequence[int],
                layers: str | Sequence[str] | None = None, *, stacked: bool = False
                ) -> tuple[str, ...]:
    """The layers ``layers`` selects (see the module doc), in network order, for images of shape
    ``image_shape`` (H, W, C): an abstract trace, nothing is computed. ``variables``: one
    member's, or a stacked tree [m, ...] with ``stacked``."""
    x = jnp.zeros((1, *tuple(image_shape)), jnp.uint8)
    return _names(model, _spec(model, layers), _abstract(variables, stacked), x)


def module_paths(model: Any, variables: dict, image_shape: Sequence[int], *,
                 stacked: bool = False) -> tuple[str, ...]:
    """Every module path of ``model`` in the order the modules finish their call (network order
    for a sequential model): an abstract trace. ``variables`` as in :func:`layer_names`."""
    x = jax.ShapeDtypeStruct((1, *tuple(image_shape)), jnp.float32)
    return tuple(_all_paths(model, _abstract(variables, stacked), x))


def _all_paths(model: Any, variables: dict, x) -> list[str]:
    record: list[str] = []
    jax.eval_shape(lambda v, y: _capture(model, ("regex", ""), v, y, record, every=True),
                   variables, x)
    return [p for p in dict.fromkeys(record) if p]


def _norm(mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return tuple(map(float, np.atleast_1d(mean))), tuple(map(float, np.atleast_1d(std)))


_FNS: dict = {}


def _features_fn(model, spec, names, mean, std):
    key = ("features", model, spec, names, mean, std)
    if key not in _FNS:
        def fn(v, x):
            f = _capture(model, spec, v, normalize(x, mean, std))
            return tuple(f[s] for s in names)
        _FNS[key] = mem.jit(fn)
    return _FNS[key]


def _grams_fn(model, spec, names, mean, std):
    """(stacked variables [k, ...], images [n, ...]) -> Grams [k, L, n, n]."""
    key = ("grams", model, spec, names, mean, std)
    if key not in _FNS:
        def one(v, x):
            f = _capture(model, spec, v, normalize(x, mean, std))
            return jnp.stack([gram(f[s]) for s in names])
        _FNS[key] = mem.jit(jax.vmap(one, in_axes=(0, None)))
    return _FNS[key]


def _check_images(images) -> jnp.ndarray:
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [n, H, W, C] raw pixels, got shape {images.shape}")
    return images


def layer_features(model: Any, variables: dict, images, *, mean, std,
                   layers: str | Sequence[str] | None = None,
                   batch_size: int = 0) -> dict[str, jnp.ndarray]:
    """Eval-mode activations of the selected layers (see the module doc) on raw images [n, H, W,
    C]: an ordered dict path -> float32 [n, d] (flattened per example), in network order.
    ``batch_size`` > 0 runs the forward pass in batches of that many images (one compile; the
    last batch is padded), 0 in one call."""
    images = _check_images(images)
    spec, (mu, sd) = _spec(model, layers), _norm(mean, std)
    names = _names(model, spec, variables, images)
    fn = _features_fn(model, spec, names, mu, sd)
    n = images.shape[0]
    b = n if batch_size <= 0 else min(int(batch_size), n)
    parts = []
    for s in range(0, n, b):
        x = images[s:s + b]
        if x.shape[0] < b:
            x = jnp.concatenate([x, jnp.zeros((b - x.shape[0], *x.shape[1:]), x.dtype)])
        parts.append(fn(variables, x))
    return {name: jnp.concatenate([p[i] for p in parts])[:n] for i, name in enumerate(names)}


def layer_grams(model: Any, variables: dict, images, *, mean, std,
                layers: str | Sequence[str] | None = None,
                members_per_call: int = 0) -> tuple[tuple[str, ...], jnp.ndarray]:
    """(layer names, centred linear Grams [m, L, n, n]) of m stacked members on the same images:
    what layer-wise CKA needs of each member (``cka_gram`` / ``cka_unbiased_gram`` of two rows).
    ``members_per_call`` > 0 bounds how many members one compiled call vmaps over (activation
    memory; the last call is padded), 0: all at once."""
    images = _check_images(images)
    spec, (mu, sd) = _spec(model, layers), _norm(mean, std)
    m = int(jax.tree.leaves(variables)[0].shape[0])
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), variables)
    names = _names(model, spec, one, images)
    fn = _grams_fn(model, spec, names, mu, sd)
    k = m if members_per_call <= 0 else min(int(members_per_call), m)
    out = []
    for s in range(0, m, k):
        idx = np.minimum(np.arange(s, s + k), m - 1)  # the last call padded with the last member
        g = fn(variables if (s == 0 and k == m) else mem.take(variables, idx), images)
        out.append(g[:min(k, m - s)])
    return names, (out[0] if len(out) == 1 else jnp.concatenate(out))


@jax.jit
def _pair_ckas(grams: jnp.ndarray, a: jnp.ndarray, b: jnp.ndarray):
    ga, gb = grams[a], grams[b]
    return cka_gram(ga, gb), cka_unbiased_gram(ga, gb)


def layer_cka_pairs(model: Any, variables: dict, images, a_idx, b_idx, *, mean, std,
                    layers: str | Sequence[str] | None = None, members_per_call: int = 0
                    ) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Layer-wise CKA of P pairs of members (rows ``a_idx[p]``, ``b_idx[p]`` of the stacked tree
    ``variables`` [m, ...]) on the same raw images [n, ...], n >= 4 (keep n small, e.g. 256: each
    member's layer is kept as an n x n Gram). Returns (layer names, biased CKA [P, L], unbiased
    CKA [P, L]) as host float arrays. Only the members named in the pairs are run, each once
    (vmapped, ``members_per_call`` at a time; see ``layer_grams``)."""
    images = _check_images(images)
    _check_n(images.shape[0])
    a = np.asarray(a_idx, np.int64).reshape(-1)
    b = np.asarray(b_idx, np.int64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"a_idx and b_idx must have the same length, got {a.size} and {b.size}")
    used, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
    names, grams = layer_grams(model, mem.take(variables, used), images, mean=mean, std=std,
                               layers=layers, members_per_call=members_per_call)
    biased, unbiased = _pair_ckas(grams, jnp.asarray(inv[:a.size], jnp.int32),
                                  jnp.asarray(inv[a.size:], jnp.int32))
    return (names, np.asarray(sharding.to_host(biased), np.float64),
            np.asarray(sharding.to_host(unbiased), np.float64))


def pair_layer_cka(model: Any, variables_a: dict, variables_b: dict, images, *, mean, std,
                   layers: str | Sequence[str] | None = None,
                   unbiased: bool = False) -> dict[str, float]:
    """Per-layer linear CKA (biased, or of the unbiased HSIC_1 with ``unbiased=True``; n >= 4
    then) of two members on the same raw images: ordered dict layer path -> float."""
    images = _check_images(images)
    if unbiased:
        _check_n(images.shape[0])
    both = mem.stack([_variables(variables_a), _variables(variables_b)])
    names, biased, unb = layer_cka_pairs(model, both, images, [0], [1], mean=mean, std=std,
                                         layers=layers)
    vals = unb if unbiased else biased
    return {name: float(vals[0, i]) for i, name in enumerate(names)}
