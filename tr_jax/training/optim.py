"""Optimisers with the reference's PyTorch semantics (SPEC §1.3, §1.4, §7).

SGD: coupled L2 (``g + wd * p``, on every parameter: BN and biases included), then the momentum
trace ``buf = momentum * buf + g`` (the first step's buffer is the gradient itself, as PyTorch's),
then ``p <- p - lr * buf``; no Nesterov, no dampening. The learning rate and weight decay are
injected hyperparameters (``optax.inject_hyperparams``), i.e. arrays in the optimiser state, so one
compiled program serves members with different values (the learning-rate temperature knob).
"""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import optax


def _sgd(learning_rate, weight_decay, momentum: float = 0.9):
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.trace(decay=momentum, nesterov=False),
        optax.scale_by_learning_rate(learning_rate),
    )


def sgd(learning_rate: float = 0.1, momentum: float = 0.9, weight_decay: float = 1e-4):
    """PyTorch's ``torch.optim.SGD(lr, momentum, weight_decay)`` as an optax transformation."""
    return optax.inject_hyperparams(_sgd, static_args=("momentum",))(
        learning_rate=learning_rate, weight_decay=weight_decay, momentum=momentum)


def step_decay(epoch, milestones: Sequence[int], gamma: float = 0.1):
    """Multiplier of the base lr at 0-indexed ``epoch``: ``gamma ** #{m in milestones: epoch >= m}``.

    The reference's schedule (160 epochs, milestones 80 and 120) decays at the *start* of epochs
    80 and 120 (0-indexed), i.e. epochs 1-80 at lr, 81-120 at lr/10, 121-160 at lr/100.
    """
    if not milestones:
        return jnp.ones((), jnp.float32)
    ms = jnp.asarray(tuple(milestones), jnp.int32)
    return jnp.asarray(gamma, jnp.float32) ** jnp.sum(jnp.asarray(epoch) >= ms).astype(jnp.float32)
