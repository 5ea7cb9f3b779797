"""One member's train and eval steps as pure functions of pytrees (see docs/fidelity.md,
Dense training, SAM, PyTorch semantics checklist).

A member's state is a ``TrainState`` (no members axis here; ``tr_jax.members`` lifts these
functions to groups). Masked training multiplies the weights by the mask in the forward pass and
masks the update, so pruned weights stay exactly zero (weight decay of a zero is zero).

Data order and augmentation are a pure function of (member key, epoch, step): epoch key
``k_e = fold_in(key, epoch)``, permutation from ``fold_in(k_e, 0)``, augmentation of step s from
``fold_in(k_e, s + 1)``. So results do not depend on how an epoch is cut into jitted chunks, nor on
which other members run beside this one.

Mixed precision (``StepConfig.precision="bfloat16"``): the training forward and backward passes run
the model's convolutions and classifier in bfloat16 (inputs and kernels cast; the model's
``dtype``), while parameters, optimiser state, BatchNorm statistics and the loss stay float32.
Evaluation always runs in float32.

The optimiser (SGD or Adam, ``tr_jax.training.optim``) and whether a step is a SAM step are static
``StepConfig`` fields; the learning rate (per step: the schedule is a traced ``[n_steps]`` array of
multipliers), weight decay and SAM's rho are traced per-member values, so one compiled program
serves every epoch, every schedule and a whole temperature sweep (lr or rho knob). SAM
(docs/fidelity.md, SAM):
the first pass runs in train mode (running BN statistics updated), the second at ``w + e`` in
``frozen`` mode (batch statistics, running statistics untouched); with masks the gradient of the
effective weights ``params * mask`` is zero at pruned entries, so the perturbation and the update
never touch them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from tr_jax import _checks as ck
from tr_jax import models
from tr_jax.data.augment import augment, normalize
from tr_jax.pruning import apply_masks, masked_update
from tr_jax.training import optim


PRECISIONS = ("float32", "bfloat16")


class TrainState(NamedTuple):
    """One member's training state (every leaf gains a leading [M] axis when stacked)."""

    params: Any
    batch_stats: Any
    opt_state: Any
    mask: Any          # 1.0 keep / 0.0 pruned, shaped like params (all ones for dense training)
    key: jax.Array     # uint32 key data [2] (jax.random.key_data of the member's data key)
    base_lr: jax.Array  # [] float32, lr before the step schedule (per member: the lr knob)
    rho: jax.Array      # [] float32, SAM radius (per member: the SAM-rho knob; unused without SAM)


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of a training program (hashable; one compile per value)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    batch_size: int = 64
    pad: int = 4
    flip: bool = True
    momentum: float = 0.9
    unroll: bool = True  # fully unroll the steps of a chunk (XLA CPU: rolled conv loops are slow)
    optimizer: str = "sgd"  # 'sgd' | 'adam' (must match the ``init_state`` that made the state)
    sam: bool = False       # SAM steps (two passes) with the optimiser above as the base step
    precision: str = "float32"  # compute precision of training ('float32' | 'bfloat16')

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        ck.check_args("tr_jax.training.StepConfig", batch_size=(self.batch_size, ck.POS_INT),
                      pad=(self.pad, ck.NONNEG_INT), momentum=(self.momentum, ck.MOMENTUM),
                      flip=(self.flip, ck.BOOL), unroll=(self.unroll, ck.BOOL),
                      sam=(self.sam, ck.BOOL),
                      optimizer=(self.optimizer, ck.Range("str", choices=optim.OPTIMIZERS)))


CPU_CHUNK_STEPS = 4  # steps per call of the automatic chunk on CPU


def auto_chunk(num_train: int, batch_size: int, backend: str | None = None) -> tuple[int, bool]:
    """(steps per jitted call, whether to unroll them) when ``run.chunk_steps`` is 0 (auto): on
    CPU ``CPU_CHUNK_STEPS`` unrolled steps (XLA CPU runs a rolled loop of conv steps slowly), on
    accelerators a whole epoch of ``ceil(num_train / batch_size)`` steps as one rolled
    ``lax.scan``. ``backend``: ``jax.default_backend()`` when None."""
    if (backend or jax.default_backend()) == "cpu":
        return CPU_CHUNK_STEPS, True
    return -(-int(num_train) // int(batch_size)), False


def compute_model(model: nn.Module, precision: str) -> nn.Module:
    """``model`` computing its convolutions and classifier in ``precision`` (parameters stay
    float32): the model itself for 'float32', a clone with ``dtype=bfloat16`` for 'bfloat16'."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if precision == "float32":
        return model
    if "dtype" not in getattr(model, "__dataclass_fields__", {}):
        raise ValueError(f"precision={precision!r} needs a model with a compute dtype; "
                         f"{type(model).__name__} has none (use precision='float32')")
    return model.clone(dtype=jnp.bfloat16)


def init_state(variables: dict, mask: Any, key: jax.Array, lr: float, weight_decay: float,
               momentum: float = 0.9, *, optimizer: str = "sgd", rho: float = 0.0) -> TrainState:
    """Fresh optimiser state (moments 0) for ``variables`` masked by ``mask``.

    ``optimizer`` must equal the ``StepConfig.optimizer`` the state is trained with; ``rho`` is
    the member's SAM radius (used only when ``StepConfig.sam``). Vmappable over every argument
    except ``optimizer`` and ``momentum``.
    """
    ck.check_args("tr_jax.training.init_state", lr=(lr, ck.LR),
                  weight_decay=(weight_decay, ck.WEIGHT_DECAY), momentum=(momentum, ck.MOMENTUM),
                  rho=(rho, ck.SAM_RHO))
    params = apply_masks(variables["params"], mask)
    opt = optim.make(optimizer, lr, weight_decay, momentum)
    key_data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return TrainState(params, variables["batch_stats"], opt.init(params), mask,
                      jnp.asarray(key_data, jnp.uint32), jnp.asarray(lr, jnp.float32),
                      jnp.asarray(rho, jnp.float32))


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Mean cross-entropy of logits [B, K] and integer labels [B]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _check_opt_state(opt: optax.GradientTransformation, cfg: StepConfig, state: TrainState):
    shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), state.params)
    want = jax.tree.structure(jax.eval_shape(opt.init, shapes))
    if jax.tree.structure(state.opt_state) != want:
        raise ValueError(f"the optimiser state does not belong to StepConfig.optimizer="
                         f"{cfg.optimizer!r}: pass the same optimizer= to init_state")


def train_step(model: nn.Module, cfg: StepConfig, state: TrainState, x: jnp.ndarray,
               y: jnp.ndarray, lr: jnp.ndarray, *, with_errors: bool = False):
    """One masked optimiser step (a SAM step when ``cfg.sam``) on a normalised batch
    x [B, H, W, C], labels y [B], at learning rate ``lr`` []. Returns the new state and the
    (first-pass) training loss; with ``with_errors``, the loss is a pair (loss, #misclassified
    images of the batch in the first, train-mode pass) [] int32 (an auxiliary output of the same
    forward pass: the state and loss are unchanged)."""
    model = compute_model(model, cfg.precision)

    def train_loss(params):
        variables = {"params": apply_masks(params, state.mask), "batch_stats": state.batch_stats}
        logits, new = models.apply(model, variables, x, train=True)
        wrong = jnp.sum(jnp.argmax(logits, -1) != y).astype(jnp.int32)
        return cross_entropy(logits, y), (new["batch_stats"], wrong)

    def frozen_loss(params):  # batch statistics, running statistics untouched
        variables = {"params": apply_masks(params, state.mask), "batch_stats": state.batch_stats}
        return cross_entropy(models.apply(model, variables, x, mode="frozen"), y)

    (loss, (batch_stats, wrong)), grads = jax.value_and_grad(train_loss, has_aux=True)(state.params)
    if cfg.sam:
        e = optim.sam_perturbation(grads, state.rho)
        grads = jax.grad(frozen_loss)(jax.tree.map(jnp.add, state.params, e))
    opt = optim.make(cfg.optimizer, momentum=cfg.momentum)
    _check_opt_state(opt, cfg, state)
    opt_state = optim.with_learning_rate(state.opt_state, lr)
    updates, opt_state = opt.update(grads, opt_state, state.params)
    params = masked_update(state.params, updates, state.mask)
    new = state._replace(params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new, ((loss, wrong) if with_errors else loss)


def train_steps(model: nn.Module, cfg: StepConfig, state: TrainState, images: jnp.ndarray,
                labels: jnp.ndarray, step0: jnp.ndarray, epoch: jnp.ndarray, lr_scale: jnp.ndarray,
                *, n_steps: int, batch_size: int, with_errors: bool = False):
    """Steps ``step0 .. step0 + n_steps - 1`` of ``epoch`` for one member.

    images: uint8 [N, H, W, C] raw pixels (shared by all members); labels: int32 [N].
    ``batch_size`` may be smaller than ``cfg.batch_size`` for the last partial batch of an epoch.
    ``lr_scale`` [n_steps] (or [], the same for every step): the schedule's multiplier of the
    member's base lr at each step (a traced value, so one program serves every epoch and every
    schedule, per epoch or per iteration).
    Returns the new state and the per-step training losses [n_steps]; with ``with_errors``, a
    pair (losses [n_steps], #misclassified training images of each step [n_steps] int32).
    """
    key = jax.random.wrap_key_data(state.key)
    k_epoch = jax.random.fold_in(key, epoch)
    perm = jax.random.permutation(jax.random.fold_in(k_epoch, 0), images.shape[0])
    lrs = state.base_lr * jnp.broadcast_to(jnp.asarray(lr_scale, jnp.float32), (n_steps,))

    def body(st, s_lr):
        s, lr = s_lr
        idx = lax.dynamic_slice(perm, (s * cfg.batch_size,), (batch_size,))
        x = augment(jax.random.fold_in(k_epoch, s + 1), images[idx], cfg.pad, cfg.flip)
        return train_step(model, cfg, st, normalize(x, cfg.mean, cfg.std), labels[idx], lr,
                          with_errors=with_errors)

    steps = step0 + jnp.arange(n_steps, dtype=jnp.int32)
    if not cfg.unroll:
        return lax.scan(body, state, (steps, lrs))
    # Python unrolling: a length-1 ``lax.scan`` (even with unroll=True) still lowers to a while
    # loop, which XLA CPU runs ~10x slower than the same step unrolled (measured, PreResNet-8).
    losses = []
    for i in range(n_steps):
        state, loss = body(state, (steps[i], lrs[i]))
        losses.append(loss)
    return state, jax.tree.map(lambda *xs: jnp.stack(xs), *losses)


def padded_batches(images: jnp.ndarray, labels: jnp.ndarray, batch_size: int):
    """Yield ``(x, y, valid)`` of one fixed shape [b, ...] over a dataset in order: the last batch
    is zero-padded and ``valid`` [b] marks its real rows (one compile for every batch)."""
    n = images.shape[0]
    b = min(batch_size, n)
    for s in range(0, n, b):
        x, y = images[s:s + b], labels[s:s + b]
        pad = b - x.shape[0]
        if pad:
            x = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
            y = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)])
        yield x, y, jnp.arange(b) < b - pad


def batch_metrics(model: nn.Module, variables: dict, images: jnp.ndarray, labels: jnp.ndarray,
                  valid: jnp.ndarray, mean: tuple, std: tuple):
    """Eval-mode (#errors, summed loss, logits) on uint8 images [B, H, W, C]; ``valid`` [B] masks
    padding rows out of the counts."""
    logits = models.apply(model, variables, normalize(images, mean, std))
    wrong = (jnp.argmax(logits, -1) != labels) & valid
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(wrong), jnp.sum(jnp.where(valid, loss, 0.0)), logits


def eval_batch(model: nn.Module, cfg: StepConfig, params: Any, batch_stats: Any, mask: Any,
               images: jnp.ndarray, labels: jnp.ndarray,
               valid: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(#errors, summed loss) of one (masked) member in eval mode on a batch."""
    variables = {"params": apply_masks(params, mask), "batch_stats": batch_stats}
    wrong, loss, _ = batch_metrics(model, variables, images, labels, valid, cfg.mean, cfg.std)
    return wrong, loss
