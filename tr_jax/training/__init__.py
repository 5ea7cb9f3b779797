"""Optimisers, train/eval steps and the members-axis training loop."""
from tr_jax.training.loop import Trainer, epoch_chunks
from tr_jax.training.members import STRATEGIES, over_members, resolve, stack, unstack
from tr_jax.training.optim import sgd, step_decay
from tr_jax.training.steps import StepConfig, TrainState, init_state, train_step, train_steps

__all__ = ["STRATEGIES", "StepConfig", "TrainState", "Trainer", "epoch_chunks", "init_state",
           "over_members", "resolve", "sgd", "stack", "step_decay", "train_step", "train_steps",
           "unstack"]
