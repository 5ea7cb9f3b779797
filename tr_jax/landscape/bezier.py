"""Trained quadratic Bezier-curve mode connectivity, batched over pairs (docs/fidelity.md, Bezier curves).

The curve between two members theta_a, theta_b (same mask) is
``phi(t) = (1 - t)^2 theta_a + 2 t (1 - t) theta_mid + t^2 theta_b`` on every parameter. The
endpoints are fixed; the middle bend starts at the midpoint (where the curve *is* the straight
line of LMC) and is trained, as the predecessor (Yang et al. 2021, after Garipov et al. 2018):
every minibatch draws one ``t ~ U(0, 1)`` and takes an SGD step (momentum 0.9, PyTorch semantics,
no SGD weight decay) on ``CE(f(x; phi(t))) + 0.5 wd ||phi(t)||^2`` (the L2 term is on the point of
the curve, as the predecessor's ``curves.l2_regularizer``; the three-regime repo's unused
``mc_utils.l2_regularizer`` instead sums *unsquared* norms of the bends), batch statistics in BN,
training data without augmentation, lr constant for the first half of the epochs, linearly down
to 1 % of the base by 90 %, then 1 % (:func:`curve_lr_scale`).
With sparse endpoints the middle bend's update is multiplied by the shared mask, so pruned entries
of ``theta_mid`` stay exactly 0 and the whole curve stays in the sparse subspace.

All P curves of a stack of pairs (every leaf shaped ``[P, ...]``) train in one compiled program:
a per-pair step lifted over pairs (``jax.vmap`` by default; any ``members_strategy``). Data order
and t are a pure function of (pair key, epoch, step), as in :mod:`tr_jax.training.steps`: epoch key
``k_e = fold_in(key, epoch)``, permutation from ``fold_in(k_e, 0)``, t of step s from
``fold_in(k_e, s + 1)``; so a pair's curve does not depend on the pairs beside it nor on chunking.

:func:`curve_errors` evaluates the trained curves at t in {0, .25, .5, .75, 1} with BN recalibrated
at every point, and :func:`mode_connectivity` is ``e_bar - e(t*)`` (the LMC formula, negative =
barrier; the predecessor plots it on the train error in %, i.e. errors x 100).

k bends (``bends=k``; Garipov et al. 2018, §3.2): ``kind='bezier'`` is the Bezier curve of order
k + 1 with control points a, m_1 .. m_k, b, ``phi(t) = sum_j C(k+1, j) t^j (1 - t)^(k+1-j)
theta_j``; ``kind='polychain'`` the polygonal chain through a, m_1 .. m_k, b with bend i at
t = i / (k + 1), linear in between. Bend i starts on the straight line at t = i / (k + 1) (where
both curves *are* the line), all k bends are trained together (masked) and are passed around as a
tuple of k pytrees. One bend is a bare pytree, as before; ``bends=1, kind='bezier'`` runs the
quadratic curve's own code path, so its numbers do not change.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from tr_jax import _checks as ck
from tr_jax import models, sharding
from tr_jax.data.augment import normalize
from tr_jax.landscape.lmc import lerp, lmc, pair_curves
from tr_jax import members as mem
from tr_jax.pruning import apply_masks, masked_update
from tr_jax.training import optim
from tr_jax.training.loop import epoch_chunks
from tr_jax.training.steps import cross_entropy

CURVE_TS = (0.0, 0.25, 0.5, 0.75, 1.0)  # evaluation points of the predecessor
KINDS = ("bezier", "polychain")  # curve families with k bends (Garipov et al. 2018, §3.2)


def bezier(t, a, mid, b):
    """phi(t) = (1 - t)^2 a + 2 t (1 - t) mid + t^2 b over whole pytrees (t a scalar)."""
    s = 1.0 - t
    return jax.tree.map(lambda x, m, y: (s * s) * x + (2.0 * t * s) * m + (t * t) * y, a, mid, b)


def _is_bends(mid) -> bool:
    """k bends are a tuple (or list) of pytrees; one bend may be a bare pytree (params are dicts)."""
    return isinstance(mid, (tuple, list))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def bend_ts(n_bends: int) -> tuple[float, ...]:
    """The t of every bend: i / (k + 1), i = 1 .. k (the polygonal chain passes through them)."""
    return tuple(i / (n_bends + 1) for i in range(1, n_bends + 1))


def curve_weights(t, n_bends: int, kind: str = "bezier") -> list:
    """Weights w_0 .. w_{k+1} of a, m_1 .. m_k, b at ``t``: phi(t) = sum_j w_j theta_j.

    'bezier': the Bernstein polynomials C(k+1, j) t^j (1 - t)^(k+1-j); 'polychain': the hat
    functions max(0, 1 - |(k + 1) t - j|) (piecewise linear, 1 at bend j, 0 at the others).
    Both sum to 1 for every t in [0, 1].
    """
    _check_kind(kind)
    n = n_bends + 1
    if kind == "bezier":
        s = 1.0 - t
        return [float(math.comb(n, j)) * t ** j * s ** (n - j) for j in range(n + 1)]
    u = n * t
    return [jnp.maximum(0.0, 1.0 - jnp.abs(u - j)) for j in range(n + 1)]


def curve_point(t, a, mid, b, kind: str = "bezier"):
    """phi(t) of the curve a, mid, b over whole pytrees (t a scalar).

    ``mid``: one bend (a pytree) or k bends (a tuple of pytrees). One Bezier bend is exactly
    :func:`bezier`; otherwise ``sum_j w_j theta_j`` with :func:`curve_weights`.
    """
    _check_kind(kind)
    if kind == "bezier" and (not _is_bends(mid) or len(mid) == 1):
        return bezier(t, a, mid[0] if _is_bends(mid) else mid, b)
    bends = tuple(mid) if _is_bends(mid) else (mid,)
    w = curve_weights(t, len(bends), kind)

    def point(x, *ys):
        out = w[0] * x
        for wj, y in zip(w[1:], ys):
            out = out + wj * y
        return out

    return jax.tree.map(point, a, *bends, b)


def _map_bends(fn, mid, *rest):
    """fn on every bend of ``mid`` (a bare pytree: once) with the matching bends of ``rest``."""
    if not _is_bends(mid):
        return fn(mid, *rest)
    return tuple(fn(m, *r) for m, *r in zip(mid, *rest))


def curve_lr_scale(epoch: int, epochs: int) -> float:
    """Multiplier of the base lr in 0-indexed ``epoch`` of ``epochs`` (the predecessor's curve schedule).

    The predecessor's ``learning_rate_schedule`` with its 1-indexed epoch ``epoch + 1``:
    alpha = (epoch + 1) / epochs; 1 for alpha <= 0.5, ``1 - 0.99 (alpha - 0.5) / 0.4`` for
    alpha <= 0.9, then 0.01. Set once per epoch.
    """
    alpha = (epoch + 1) / epochs
    if alpha <= 0.5:
        return 1.0
    if alpha <= 0.9:
        return 1.0 - (alpha - 0.5) / 0.4 * 0.99
    return 0.01


class CurveState(NamedTuple):
    """One curve's training state (leaves gain a leading [P] axis when stacked)."""

    mid: Any        # the middle bend theta_mid, shaped like params (k bends: a tuple of them)
    opt_state: Any  # optim.sgd state (momentum buffer; lr injected per step)
    key: jax.Array  # uint32 key data [2] of the pair's data/t key


def _sq_norm(tree) -> jnp.ndarray:
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def curve_step(model: nn.Module, momentum: float, state: CurveState, a, b, mask, batch_stats,
               x: jnp.ndarray, y: jnp.ndarray, t: jnp.ndarray, lr: jnp.ndarray,
               weight_decay: jnp.ndarray, kind: str = "bezier") -> tuple[CurveState, jnp.ndarray]:
    """One SGD step of the middle bend (or all k bends) at curve point ``t`` on a normalised
    batch x [B, H, W, C].

    Returns the new state and the step's objective CE + 0.5 wd ||phi(t)||^2.
    """

    def loss_fn(mid):
        phi = apply_masks(curve_point(t, a, mid, b, kind), mask)
        logits = models.apply(model, {"params": phi, "batch_stats": batch_stats}, x, mode="frozen")
        return cross_entropy(logits, y) + 0.5 * weight_decay * _sq_norm(phi)

    loss, grads = jax.value_and_grad(loss_fn)(state.mid)
    opt_state = optim.with_learning_rate(state.opt_state, lr)
    updates, opt_state = optim.sgd(momentum=momentum).update(grads, opt_state, state.mid)
    mid = _map_bends(lambda m, u: masked_update(m, u, mask), state.mid, updates)
    return state._replace(mid=mid, opt_state=opt_state), loss


def curve_steps(model: nn.Module, mean: tuple, std: tuple, momentum: float, state: CurveState, a,
                b, mask, batch_stats, images: jnp.ndarray, labels: jnp.ndarray,
                step0: jnp.ndarray, epoch: jnp.ndarray, lr: jnp.ndarray,
                weight_decay: jnp.ndarray, *, n_steps: int, batch_size: int,
                full_batch_size: int, unroll: bool,
                kind: str = "bezier") -> tuple[CurveState, jnp.ndarray]:
    """Steps ``step0 .. step0 + n_steps - 1`` of ``epoch`` for one curve (no pairs axis).

    images: uint8 [N, H, W, C] (no augmentation); labels int32 [N]. ``batch_size`` is this call's
    batch (smaller for the last partial batch), ``full_batch_size`` the epoch's. Returns the state
    and the per-step objectives [n_steps].
    """
    k_epoch = jax.random.fold_in(jax.random.wrap_key_data(state.key), epoch)
    perm = jax.random.permutation(jax.random.fold_in(k_epoch, 0), images.shape[0])

    def body(st, s):
        idx = lax.dynamic_slice(perm, (s * full_batch_size,), (batch_size,))
        t = jax.random.uniform(jax.random.fold_in(k_epoch, s + 1), ())
        x = normalize(images[idx], mean, std)
        return curve_step(model, momentum, st, a, b, mask, batch_stats, x, labels[idx], t, lr,
                          weight_decay, kind)

    steps = step0 + jnp.arange(n_steps, dtype=jnp.int32)
    if not unroll:
        return lax.scan(body, state, steps)
    losses = []  # Python-unrolled: XLA CPU runs rolled loops of conv steps 10-70x slower
    for i in range(n_steps):
        state, loss = body(state, steps[i])
        losses.append(loss)
    return state, jnp.stack(losses)


@functools.lru_cache(maxsize=None)
def _compiled_steps(model: nn.Module, mean: tuple, std: tuple, momentum: float, strategy: str,
                    n_steps: int, batch_size: int, full_batch_size: int, unroll: bool,
                    kind: str = "bezier"):
    fn = functools.partial(curve_steps, model, mean, std, momentum, n_steps=n_steps,
                           batch_size=batch_size, full_batch_size=full_batch_size, unroll=unroll,
                           kind=kind)
    in_axes = (0, 0, 0, 0) + (None,) * 7  # state, a, b, mask per pair; the rest shared
    return mem.over_members(fn, strategy, in_axes, donate_argnums=(0,))


def _pair_keys(key: jax.Array, n_pairs: int) -> jnp.ndarray:
    """uint32 key data [P, k]: ``key`` per pair ([P] typed / [P, k] raw), or ``fold_in(key, p)``
    of one root key ([] typed / [k] raw). Always a fresh buffer (the training state is donated)."""
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
    if key.ndim == 0:
        key = jax.vmap(lambda p: jax.random.fold_in(key, p))(jnp.arange(n_pairs))
    if key.shape != (n_pairs,):
        raise ValueError(f"key: expected one root key or {n_pairs} pair keys, got shape {key.shape}")
    return jnp.array(jax.random.key_data(key), copy=True)


def _n_pairs(tree) -> int:
    return int(jax.tree.leaves(tree)[0].shape[0])


@functools.partial(jax.jit, static_argnums=(4, 6))
def _start_bends(params_a, params_b, mask, mid, momentum: float, lr, n_bends: int = 1):
    """The masked initial bends and their optimiser state, in one compiled call (op by op, every
    leaf shape would compile on its own). Default: one bend at the midpoint (a bare pytree), or
    k bends on the straight line at t = i / (k + 1) (a tuple)."""
    if mid is None and n_bends == 1:
        mid = jax.tree.map(lambda x, y: 0.5 * (x + y), params_a, params_b)
    elif mid is None:
        mid = tuple(lerp(t, params_a, params_b) for t in bend_ts(n_bends))
    mid = _map_bends(lambda m: apply_masks(m, mask), mid)
    opt = optim.sgd(lr, momentum, 0.0)  # the L2 term is in the loss, on phi(t)
    return mid, jax.vmap(opt.init)(mid)


def train_curves(model: nn.Module, params_a, params_b, mask, batch_stats, images: jnp.ndarray,
                 labels: jnp.ndarray, *, key: jax.Array, mean: Sequence[float],
                 std: Sequence[float], epochs: int = 50, batch_size: int = 128, lr: float = 0.01,
                 weight_decay: float = 5e-4, momentum: float = 0.9, mid=None,
                 chunk_steps: int | None = 4, unroll: bool = True, drop_last: bool = False,
                 strategy: str = "vmap", bends: int = 1, kind: str = "bezier"):
    """Train the middle bends of P Bezier curves together (docs/fidelity.md, Bezier curves).

    params_a, params_b, mask: pytrees with a leading pairs axis [P, ...] (endpoints masked; mask
    1.0 keep / 0.0 pruned, all ones where nothing is pruned). batch_stats: one member's BN
    template (no pairs axis; BN uses batch statistics while training, mode 'frozen').
    images: uint8 [N, H, W, C] training images (no augmentation), labels int32 [N].
    key: per-pair keys [P] (typed, or raw [P, 2]), or one root key, folded with the pair index.
    mid: initial middle bends [P, ...]; default the midpoint (theta_a + theta_b) / 2.
    bends, kind: k >= 1 trained bends of a Bezier curve of order k + 1 ('bezier') or of a
    polygonal chain ('polychain'), see the module docstring; k > 1: ``mid`` (given or returned)
    is a tuple of k pytrees [P, ...], the default bend i on the line at t = i / (k + 1).
    An epoch runs as jitted calls of ``chunk_steps`` steps (``None``: the whole epoch in one
    call), Python-unrolled (``unroll=True``, for XLA CPU) or a ``lax.scan`` (accelerators); the
    last partial batch is a step of its own unless ``drop_last``. ``strategy``: how pairs
    advance (``tr_jax.members``; 'vmap' = one program for all pairs).
    Returns ``(mid [P, ...], losses [P, epochs])``: the trained bend(s) (masked) and the mean
    training objective CE + 0.5 wd ||phi(t)||^2 of every epoch.
    ``epochs`` and ``batch_size`` >= 1, ``lr`` > 0, ``weight_decay`` >= 0, ``momentum`` in
    [0, 1) (checked as the config's ``measure.bezier.*``).
    """
    ck.check_args("tr_jax.landscape.train_curves", epochs=(epochs, ck.POS_INT),
                  batch_size=(batch_size, ck.POS_INT), lr=(lr, ck.LR),
                  weight_decay=(weight_decay, ck.WEIGHT_DECAY), momentum=(momentum, ck.MOMENTUM),
                  drop_last=(drop_last, ck.BOOL), unroll=(unroll, ck.BOOL),
                  bends=(bends, ck.POS_INT), kind=(kind, ck.Range("str", choices=KINDS)))
    if mid is not None and (len(mid) if _is_bends(mid) else 1) != bends:
        raise ValueError(f"tr_jax.landscape.train_curves: mid has {len(mid) if _is_bends(mid) else 1}"
                         f" bend(s), bends={bends}")
    if chunk_steps is not None:
        ck.check_args("tr_jax.landscape.train_curves", chunk_steps=(chunk_steps, ck.POS_INT))
    mean, std = tuple(map(float, mean)), tuple(map(float, std))
    images, labels = jnp.asarray(images), jnp.asarray(labels)  # on the device once
    strategy = mem.resolve(strategy)
    n_pairs = _n_pairs(params_a)
    if mid is not None and bends > 1:
        mid = tuple(mid)
    mid, opt_state = _start_bends(params_a, params_b, mask, mid, float(momentum),
                                  jnp.float32(lr), int(bends))
    state = CurveState(mid, opt_state, _pair_keys(key, n_pairs))
    pieces = [mem.split_groups(x, strategy) for x in (state, params_a, params_b, mask)]
    groups = [list(g) for g in zip(*pieces)]  # [state, a, b, mask] per group

    n = images.shape[0]
    plan = epoch_chunks(n, batch_size, chunk_steps or n, drop_last)
    n_seen = sum(steps * bs for _, steps, bs in plan)
    wd = jnp.asarray(weight_decay, jnp.float32)
    history = []
    for epoch in range(epochs):
        lr_e = jnp.asarray(lr * curve_lr_scale(epoch, epochs), jnp.float32)
        ep = jnp.asarray(epoch, jnp.int32)
        totals = []
        for g in groups:
            total = 0.0
            for step0, steps, bs in plan:
                fn = _compiled_steps(model, mean, std, float(momentum), strategy, steps, bs,
                                     batch_size, unroll, kind)
                g[0], loss = fn(g[0], g[1], g[2], g[3], batch_stats, images, labels,
                                jnp.asarray(step0, jnp.int32), ep, lr_e, wd)
                total = total + bs * jnp.sum(loss, axis=-1)
            totals.append(total / n_seen)
        history.append(jnp.stack(totals) if mem.per_member(strategy) else totals[0])
    final = mem.join_groups([g[0] for g in groups], strategy)
    return final.mid, sharding.to_host(jnp.stack(history, axis=-1))


def _batch_stats_template(model: nn.Module, image_shape: tuple[int, ...]):
    """Zeros shaped like the model's BN statistics (recalibration overwrites them)."""
    shapes = jax.eval_shape(lambda k: models.init(model, k, image_shape), jax.random.key(0))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["batch_stats"])


@functools.partial(jax.jit, static_argnames="kind")
def curve_points(params_a, mid, params_b, ts, kind: str = "bezier"):
    """phi(t) of every curve at every t: leaves [P, ...] and ts [T] -> leaves [P, T, ...]
    (``mid``: one bend [P, ...] or a tuple of k)."""
    ts = jnp.asarray(ts, jnp.float32)
    return jax.vmap(lambda a, m, b: jax.vmap(lambda t: curve_point(t, a, m, b, kind))(ts))(
        params_a, mid, params_b)


def curve_errors(model: nn.Module, params_a, mid, params_b, images: jnp.ndarray,
                 labels: jnp.ndarray, *, mean: Sequence[float], std: Sequence[float],
                 ts: Sequence[float] = CURVE_TS, bn_batch_size: int = 64,
                 test: tuple[jnp.ndarray, jnp.ndarray] | None = None, eval_batch_size: int = 0,
                 points_per_call: int | None = None,
                 kind: str = "bezier") -> dict[str, np.ndarray]:
    """Errors (fractions) and mean cross-entropy along P curves, BN recalibrated at every point.

    params_a, mid, params_b: [P, ...] (masked; ``mid`` a tuple of k bends for k > 1, of the
    curve family ``kind``, as :func:`train_curves` returns them). images uint8 [N, H, W, C] in
    dataset order.
    The P x T points go to :func:`tr_jax.landscape.lmc.evaluate_points` (``points_per_call`` at a
    time). Returns ``{'t' [T], 'train_error', 'train_loss'[, 'test_error', 'test_loss']}``, each
    [P, T].
    """
    ck.check_args("tr_jax.landscape.curve_errors", bn_batch_size=(bn_batch_size, ck.POS_INT),
                  eval_batch_size=(eval_batch_size, ck.NONNEG_INT))
    _check_kind(kind)
    mid = tuple(mid) if _is_bends(mid) else mid
    points_fn = lambda a, b, t: curve_points(a, mid, b, t, kind=kind)  # noqa: E731
    return pair_curves(model, params_a, params_b,
                       _batch_stats_template(model, tuple(images.shape[1:])), images, labels,
                       points_fn, mean=mean, std=std, ts=np.asarray(ts, np.float32),
                       bn_batch_size=bn_batch_size, test=test, eval_batch_size=eval_batch_size,
                       points_per_call=points_per_call)


def mode_connectivity(errors) -> jnp.ndarray:
    """mc = (e(0) + e(1)) / 2 - e(t*), t* = argmax_t |e(t) - (e(0) + e(1)) / 2| of errors [..., T].

    The LMC formula (:func:`tr_jax.landscape.lmc.lmc`) on the curve's points: < 0 a barrier,
    ~0 well connected, > 0 the curve beats its endpoints. The predecessor computes and plots it on
    the train error in % (pass ``100 * curve_errors(...)['train_error']``; colour range [-30, 30]).
    """
    return lmc(errors)
