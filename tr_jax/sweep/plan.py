"""The planner (a sweep is a stack of members, see docs/design.md): config -> members ->
shape groups -> programs.

Dense members are (dense seed, temperature) — except for the ``epochs`` knob, whose temperatures are
checkpoints of one full-schedule run per seed (docs/fidelity.md, Temperature knobs). Members that
share shapes (the batch size, for the ``batch_size`` knob) form a group; a group is cut into
*programs* of at most ``max_members`` members (``run.max_members``, or what ``run.memory_budget_gb``
allows given a measured per-member footprint). Per-member hyperparameters (lr, SAM rho, weight
decay) are arrays inside one program, so a temperature sweep of those knobs is one compiled program.

``describe`` prints the plan for ``tr-jax run CONFIG --dry-run``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections

from tr_jax.sweep.grid import Grid
from tr_jax.training import StepConfig
from tr_jax.training.steps import auto_chunk


@dataclasses.dataclass(frozen=True)
class Program:
    """Members advanced together by one compiled program."""

    stage: str                  # 'dense' | 'retrain'
    name: str                   # checkpoint name of its result, e.g. 'dense_p0'
    members: tuple[int, ...]    # indices into the stage's member list
    batch_size: int
    epochs: int
    steps: int                  # optimiser steps per member


@dataclasses.dataclass(frozen=True)
class Plan:
    knob: str
    temperatures: tuple
    dense_members: tuple        # (dense seed, temperature or None)
    retrain_members: tuple      # (dense seed, temperature, density, retrain seed)
    pairs: tuple                # (member a, member b) of retrain members, same cell
    programs: tuple             # Program, dense first

    def stage_programs(self, stage: str) -> list[Program]:
        return [p for p in self.programs if p.stage == stage]

    def member_steps(self, stage: str) -> int:
        return sum(len(p.members) * p.steps for p in self.stage_programs(stage))

    def describe(self, estimate: dict[str, Any] | None = None) -> str:
        lines = [f"knob {self.knob}: temperatures {list(self.temperatures)}"]
        for stage in ("dense", "retrain"):
            progs = self.stage_programs(stage)
            members = self.dense_members if stage == "dense" else self.retrain_members
            groups = sorted({p.batch_size for p in progs})
            lines.append(f"{stage}: {len(members)} members in {len(groups)} shape group(s) "
                         f"(batch {groups}), {len(progs)} program(s), "
                         f"{self.member_steps(stage):,} member-steps")
            for p in progs:
                lines.append(f"  {p.name}: {len(p.members)} members x {p.steps:,} steps "
                             f"({p.epochs} epochs, batch {p.batch_size})")
        lines.append(f"measure: {len(self.pairs)} pairs (LMC, CKA, Bezier), "
                     f"{len(self.retrain_members)} members (Hessian)")
        if estimate:
            for stage in ("dense", "retrain"):
                e = estimate.get(stage)
                if not e:
                    continue
                steps = self.member_steps(stage)
                lines.append(
                    f"{stage} estimate: {e['flops_per_step'] / 1e9:.3g} GFLOP and "
                    f"{e['bytes_per_member'] / 2**20:.1f} MiB per member-step "
                    f"(measured {1e3 * e['seconds_per_step']:.1f} ms/member-step on "
                    f"{e['device']}); total {steps * e['flops_per_step'] / 1e12:.3g} TFLOP, "
                    f"~{_hms(steps * e['seconds_per_step'])}")
        return "\n".join(lines)


def _hms(seconds: float) -> str:
    h, rem = divmod(int(seconds), 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def steps_per_epoch(num_train: int, batch_size: int, drop_last: bool) -> int:
    if batch_size > num_train:
        raise ValueError(f"batch size {batch_size} is larger than the training set ({num_train} "
                         "images): lower it")
    return num_train // batch_size if drop_last else -(-num_train // batch_size)


def section_length(section: Any, num_train: int, batch_size: int,
                   epochs: int | None = None) -> tuple[int, int]:
    """(epochs, optimiser steps per member) of a training section (dense or retrain): an epoch
    schedule runs ``epochs``; an iteration schedule runs exactly ``section.iterations`` steps
    over ``ceil(iterations / steps_per_epoch)`` epochs (docs/fidelity.md, Temperature knobs)."""
    spe = steps_per_epoch(num_train, batch_size, bool(section.drop_last))
    if section.schedule == "iteration":
        return -(-int(section.iterations) // spe), int(section.iterations)
    e = int(section.epochs if epochs is None else epochs)
    return e, e * spe


def _chunks(idx: list[int], size: int) -> list[tuple[int, ...]]:
    size = size or len(idx) or 1
    return [tuple(idx[i:i + size]) for i in range(0, len(idx), size)]


def make_plan(cfg: Any, num_train: int, max_members: int | None = None) -> Plan:
    """The plan of a validated config on a training set of ``num_train`` images (members and
    pairs from ``tr_jax.sweep.grid``, their one home)."""
    grid = Grid.from_config(cfg)
    knob, temps = cfg.knob, grid.temperatures
    cap = int(cfg.run.max_members if max_members is None else max_members)
    programs = []
    dense_members = tuple(grid.dense_members())
    if knob == "epochs":
        groups = {int(cfg.dense.batch_size): list(range(len(dense_members)))}
    else:
        groups: dict[int, list[int]] = {}
        for i, (_, t) in enumerate(dense_members):
            b = int(t) if knob == "batch_size" else int(cfg.dense.batch_size)
            groups.setdefault(b, []).append(i)
    for b, idx in sorted(groups.items()):
        epochs, steps = section_length(cfg.dense, num_train, b,
                                       max(temps) if knob == "epochs" else None)
        for chunk in _chunks(idx, cap):
            programs.append(Program("dense", f"dense_p{len(programs)}", chunk, b, epochs, steps))
    retrain_members = tuple(grid.members())
    rb = int(cfg.retrain.batch_size)
    epochs, steps = section_length(cfg.retrain, num_train, rb)
    for k, chunk in enumerate(_chunks(list(range(len(retrain_members))), cap)):
        programs.append(Program("retrain", f"retrain_p{k}", chunk, rb, epochs, steps))
    return Plan(knob, temps, dense_members, retrain_members, tuple(grid.pairs()), tuple(programs))


def members_for_budget(bytes_per_member: float, budget_bytes: float) -> int:
    """How many members fit a memory budget (at least 1)."""
    return max(1, math.floor(budget_bytes / max(bytes_per_member, 1.0)))


def section_step(cfg: ml_collections.ConfigDict, section: ml_collections.ConfigDict,
                 num_train: int, mean, std, batch_size: int | None = None,
                 sam: bool = False) -> tuple[StepConfig, int]:
    """(``StepConfig``, steps per call) of a training section (dense or retrain) of ``cfg`` on a
    training set of ``num_train`` images normalised by ``mean``/``std``: what a run compiles, and
    what ``--dry-run`` looks up in the autotune cache without the data."""
    bs = int(batch_size or section.batch_size)
    chunk, unroll = cfg.run.chunk_steps, True
    if chunk == 0:
        chunk, unroll = auto_chunk(num_train, bs)
    step = StepConfig(mean=tuple(mean), std=tuple(std), batch_size=bs,
                      pad=cfg.augment.pad, flip=cfg.augment.flip, momentum=section.momentum,
                      unroll=unroll, optimizer=section.get("optimizer", "sgd"),
                      sam=sam or section.get("sam_rho", 0.0) > 0,
                      precision=cfg.run.get("precision", "float32"))
    return step, chunk
