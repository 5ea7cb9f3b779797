"""Optimisers (SGD, Adam, SAM), schedules, train/eval steps and the members-axis training loop
(see docs/fidelity.md, Dense training, Temperature knobs, Retraining)."""
from tr_jax.training.loop import SCHEDULES, Trainer, epoch_chunks, lr_scales, truncate_chunks
from tr_jax.members import STRATEGIES, over_members, resolve, stack, unstack
from tr_jax.training.optim import (OPTIMIZERS, adam, iteration_milestones, make, multistep,
                                   sam_perturbation, sgd)
from tr_jax.training.steps import (StepConfig, TrainState, auto_chunk, init_state, train_step,
                                   train_steps)

__all__ = ["OPTIMIZERS", "SCHEDULES", "STRATEGIES", "StepConfig", "TrainState", "Trainer", "adam",
           "auto_chunk",
           "epoch_chunks", "init_state", "iteration_milestones", "lr_scales", "make", "multistep",
           "over_members", "resolve", "sam_perturbation", "sgd", "stack", "train_step",
           "train_steps", "truncate_chunks", "unstack"]
