"""Optimisers, SAM and learning-rate schedules with the reference's PyTorch semantics
(see docs/fidelity.md, Dense training, SAM, Retraining, PyTorch semantics checklist).

SGD (``torch.optim.SGD``): coupled L2 (``g + wd * p``, on every parameter: BN and biases
included), then the momentum trace ``buf = momentum * buf + g`` (the first step's buffer is the
gradient itself, as PyTorch's), then ``p <- p - lr * buf``; no Nesterov, no dampening.

Adam (``torch.optim.Adam``, the reference's ``--optimizer Adam``): coupled L2 ``g + wd * p``
*before* the moments, ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g²``, and
``p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`` (eps outside the square root;
``sqrt(v / c)`` equals torch's ``sqrt(v) / sqrt(c)``).

For both, the learning rate and weight decay are injected hyperparameters
(``optax.inject_hyperparams``), i.e. arrays in the optimiser state, so one compiled program serves
members with different values (the learning-rate temperature knob); ``with_learning_rate`` sets
the scheduled lr of a step.

SAM (the reference's ``utils/sam.py``; docs/fidelity.md, SAM): ``sam_perturbation`` is the
non-adaptive ascent step
``e = rho * g / (||g||_2 + 1e-12)`` with the *global* L2 norm over all parameters; the two-pass
step itself (BN frozen in the second pass, weight decay only in the base step) is
``tr_jax.training.steps.train_step`` with ``StepConfig(sam=True)``.

Schedules: ``multistep`` is PyTorch's MultiStepLR multiplier ``gamma ** #{m : t >= m}``, applied to
0-indexed epochs (epoch experiments, decay at the *start* of epochs 80 and 120) or to 0-indexed
optimiser steps (batch-size experiments, milestones ``int(0.5 T)``, ``int(0.75 T)`` of a budget
of T iterations, ``iteration_milestones``).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tr_jax import _checks as ck

OPTIMIZERS = ("sgd", "adam")
SAM_EPS = 1e-12  # added to the gradient norm (the reference's utils/sam.py)


def _sgd(learning_rate, weight_decay, momentum: float = 0.9):
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.trace(decay=momentum, nesterov=False),
        optax.scale_by_learning_rate(learning_rate),
    )


def sgd(learning_rate: float = 0.1, momentum: float = 0.9, weight_decay: float = 1e-4):
    """PyTorch's ``torch.optim.SGD(lr, momentum, weight_decay)`` as an optax transformation.

    ``learning_rate`` > 0, ``momentum`` in [0, 1), ``weight_decay`` >= 0, all finite (plain
    numbers are checked; arrays and traced values are not)."""
    ck.check_args("tr_jax.training.optim.sgd", learning_rate=(learning_rate, ck.LR),
                  momentum=(momentum, ck.MOMENTUM), weight_decay=(weight_decay, ck.WEIGHT_DECAY))
    return optax.inject_hyperparams(_sgd, static_args=("momentum",))(
        learning_rate=learning_rate, weight_decay=weight_decay, momentum=momentum)


def scale_by_torch_adam(b1: float = 0.9, b2: float = 0.999,
                        eps: float = 1e-8) -> optax.GradientTransformation:
    """Adam's direction as ``torch.optim.Adam`` computes it: ``(m / (1 - b1^t)) /
    (sqrt(v) / sqrt(1 - b2^t) + eps)`` (optax's ``scale_by_adam`` is the same up to rounding, but
    its ``float ** int32`` bias correction fails under strict dtype promotion)."""

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros,
                                      nu=jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * g * g, state.nu, updates)
        count = state.count + 1
        t = count.astype(jnp.float32)
        bc1, bc2_sqrt = 1.0 - b1 ** t, jnp.sqrt(1.0 - b2 ** t)
        out = jax.tree.map(lambda m, v: (m / bc1) / (jnp.sqrt(v) / bc2_sqrt + eps), mu, nu)
        return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def _adam(learning_rate, weight_decay, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        scale_by_torch_adam(b1, b2, eps),
        optax.scale_by_learning_rate(learning_rate),
    )


def adam(learning_rate: float = 1e-3, weight_decay: float = 0.0, b1: float = 0.9,
         b2: float = 0.999, eps: float = 1e-8):
    """PyTorch's ``torch.optim.Adam(lr, betas=(b1, b2), eps, weight_decay)`` (coupled L2, not
    AdamW) as an optax transformation. ``learning_rate`` > 0, ``weight_decay`` >= 0, ``b1`` and
    ``b2`` in [0, 1), ``eps`` >= 0, all finite (plain numbers are checked)."""
    ck.check_args("tr_jax.training.optim.adam", learning_rate=(learning_rate, ck.LR),
                  weight_decay=(weight_decay, ck.WEIGHT_DECAY), b1=(b1, ck.MOMENTUM),
                  b2=(b2, ck.MOMENTUM), eps=(eps, ck.NONNEG_FLOAT))
    return optax.inject_hyperparams(_adam, static_args=("b1", "b2", "eps"))(
        learning_rate=learning_rate, weight_decay=weight_decay, b1=b1, b2=b2, eps=eps)


def make(name: str, learning_rate: float = 0.1, weight_decay: float = 0.0,
         momentum: float = 0.9) -> optax.GradientTransformation:
    """The optimiser called ``name`` (``'sgd'`` or ``'adam'``; ``momentum`` is SGD's only).

    Only ``name`` and ``momentum`` shape the transformation; ``learning_rate`` and
    ``weight_decay`` are its initial injected values (they live in the state).
    """
    ck.check_args("tr_jax.training.optim.make", learning_rate=(learning_rate, ck.LR),
                  weight_decay=(weight_decay, ck.WEIGHT_DECAY), momentum=(momentum, ck.MOMENTUM))
    if name == "sgd":
        return sgd(learning_rate, momentum, weight_decay)
    if name == "adam":
        return adam(learning_rate, weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; known: {OPTIMIZERS}")


def with_learning_rate(opt_state: Any, learning_rate: jnp.ndarray) -> Any:
    """``opt_state`` (from ``make``) with its injected learning rate replaced by ``learning_rate``."""
    return opt_state._replace(
        hyperparams={**opt_state.hyperparams, "learning_rate": learning_rate})


def sam_perturbation(grads: Any, rho: jnp.ndarray) -> Any:
    """SAM's ascent step ``rho * g / (||g||_2 + 1e-12)``, the norm global over every leaf."""
    scale = rho / (optax.tree.norm(grads) + SAM_EPS)
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)


def multistep(t, milestones: Sequence[int], gamma: float = 0.1) -> np.ndarray:
    """MultiStepLR multiplier of the base lr at 0-indexed ``t`` (an epoch or an optimiser step,
    scalar or array): ``gamma ** #{m in milestones: t >= m}``, float32, computed on the host.

    The reference's schedule (160 epochs, milestones 80 and 120) decays at the *start* of epochs
    80 and 120 (0-indexed), i.e. epochs 1-80 at lr, 81-120 at lr/10, 121-160 at lr/100."""
    t = np.asarray(t)
    k = np.sum(t[..., None] >= np.asarray(tuple(milestones), np.int64).reshape(-1), axis=-1)
    return (float(gamma) ** k.astype(np.float64)).astype(np.float32)


def iteration_milestones(total_steps: int, fractions: Sequence[float] = (0.5, 0.75)) -> tuple:
    """The batch-size experiments' MultiStepLR milestones ``int(f * total)``
    (docs/fidelity.md, Temperature knobs):
    ``iteration_milestones(62400) == (31200, 46800)``."""
    return tuple(int(f * total_steps) for f in fractions)
