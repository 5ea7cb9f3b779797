"""The one home of a sweep's enumeration: members, pairs, their coordinates and their keys.

Retrain members are every ``(dense seed, temperature, density, retrain seed)`` in that order
(seed-major, retrain seed fastest), so the R members of a *cell* ``(dense seed, temperature,
density)`` are contiguous; pairs are the ``combinations(R, 2)`` of retrain seeds of each cell, in
cell order. Dense members are the dense seeds (the ``epochs`` knob: checkpoints of one run) or
every ``(dense seed, temperature)``.

A member's PRNG key folds the root key with the stage and the member's coordinate *values*
(seeds, temperature, density — never grid indices), so a member's numbers do not depend on the
other members of the grid: a grown sweep (more temperatures, densities or seeds) keeps the old
members' numbers (README, "Growing a sweep").
"""
from __future__ import annotations

import dataclasses
import itertools
import zlib
from typing import Any

import jax
import numpy as np

DENSE, RETRAIN, BEZIER, HESSIAN, ESD = 0, 1, 2, 3, 4  # first fold of the root key per stage


def value_code(v: Any) -> int:
    """The integer folded into a key for a coordinate value: an integer as itself, any other
    value (a float temperature or density) as the CRC-32 of its canonical text ``repr(float)``."""
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"a coordinate value must be a number, not {v!r}")
    if isinstance(v, (int, np.integer)):
        return int(v) & 0xFFFFFFFF
    return zlib.crc32(repr(float(v)).encode())


def member_key(root: jax.Array, stage: int, *values: Any) -> jax.Array:
    """fold_in(... fold_in(fold_in(root, stage), code(v0)) ..., code(vn)) (see ``value_code``)."""
    k = jax.random.fold_in(root, int(stage))
    for v in values:
        k = jax.random.fold_in(k, value_code(v))
    return k


def key_data(keys: list[jax.Array]) -> np.ndarray:
    """Raw key data [n, 2] (uint32) of typed keys, on the host (small: one key per member)."""
    if not keys:
        return np.zeros((0, 2), np.uint32)
    return np.asarray(jax.random.key_data(jax.numpy.stack(keys)), np.uint32)


@dataclasses.dataclass(frozen=True)
class Grid:
    knob: str
    temperatures: tuple
    densities: tuple[float, ...]
    dense_seeds: tuple[int, ...]
    retrain_seeds: tuple[int, ...]

    @classmethod
    def from_config(cls, cfg: Any) -> "Grid":
        integer = cfg.knob in ("epochs", "batch_size")
        temps = tuple(int(t) if integer else float(t) for t in cfg.temperatures)
        return cls(cfg.knob, temps, tuple(float(d) for d in cfg.prune.densities),
                   tuple(int(s) for s in cfg.dense.seeds), tuple(int(r) for r in cfg.retrain.seeds))

    # -- sizes ------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(S, T, D, R)."""
        return (len(self.dense_seeds), len(self.temperatures), len(self.densities),
                len(self.retrain_seeds))

    @property
    def num_members(self) -> int:
        return int(np.prod(self.shape))

    @property
    def num_cells(self) -> int:
        S, T, D, _ = self.shape
        return S * T * D

    # -- enumeration ------------------------------------------------------------------------
    def dense_members(self) -> list[tuple[int, Any]]:
        """(dense seed, temperature or None) of every dense member."""
        if self.knob == "epochs":
            return [(s, None) for s in self.dense_seeds]
        return list(itertools.product(self.dense_seeds, self.temperatures))

    def members(self) -> list[tuple[int, Any, float, int]]:
        """(dense seed, temperature, density, retrain seed) of every retrain member."""
        return list(itertools.product(self.dense_seeds, self.temperatures, self.densities,
                                      self.retrain_seeds))

    def member_indices(self) -> np.ndarray:
        """Grid indices (s, t, d, r) of every member, [M, 4] int32."""
        S, T, D, R = self.shape
        return np.stack(np.unravel_index(np.arange(self.num_members), (S, T, D, R)),
                        axis=1).astype(np.int32)

    def pairs(self) -> list[tuple[int, int]]:
        """(member a, member b) of every pair of retrain seeds of every cell."""
        R = len(self.retrain_seeds)
        return [(c * R + i, c * R + j) for c in range(self.num_cells)
                for i, j in itertools.combinations(range(R), 2)]

    def pairs_array(self) -> np.ndarray:
        return np.asarray(self.pairs(), np.int64).reshape(-1, 2)

    @property
    def pairs_per_cell(self) -> int:
        R = len(self.retrain_seeds)
        return R * (R - 1) // 2

    def pair_values(self) -> list[tuple[int, Any, float, int, int]]:
        """(dense seed, temperature, density, retrain seed a, retrain seed b) of every pair."""
        mem = self.members()
        return [(*mem[a][:3], mem[a][3], mem[b][3]) for a, b in self.pairs()]

    # -- keys -------------------------------------------------------------------------------
    def retrain_keys(self, root: jax.Array) -> np.ndarray:
        """Data keys [M, 2] of the retrain members: (dense seed, retrain seed) — every density
        and temperature of a seed pair sees the same data order, as in the reference."""
        return key_data([member_key(root, RETRAIN, s, r) for s, _, _, r in self.members()])

    def bezier_keys(self, root: jax.Array) -> np.ndarray:
        return key_data([member_key(root, BEZIER, *v) for v in self.pair_values()])

    def hessian_keys(self, root: jax.Array) -> np.ndarray:
        """Probe keys [M, 2] of the Hessian trace and eigenvalue and of the per-layer traces
        (the same probes: the layers' traces add up to the whole trace's first probes)."""
        return key_data([member_key(root, HESSIAN, *m) for m in self.members()])

    def esd_keys(self, root: jax.Array) -> np.ndarray:
        """Start-vector keys [M, 2] of the Hessian's spectral density (stochastic Lanczos)."""
        return key_data([member_key(root, ESD, *m) for m in self.members()])

    # -- growing a sweep: where each member of this grid sits in a smaller one -----------------
    @classmethod
    def from_dict(cls, cfg: dict) -> "Grid":
        """The grid of a config as a plain (nested) dict, e.g. a workdir's ``config.json``."""
        import ml_collections
        return cls.from_config(ml_collections.ConfigDict(cfg))

    def member_map(self, old: "Grid") -> np.ndarray:
        """For each retrain member of this grid, its index among ``old`` 's members (-1: new)."""
        return _positions(self.members(), old.members())

    def pair_map(self, old: "Grid") -> np.ndarray:
        """For each pair of this grid, its index among ``old`` 's pairs (-1: new)."""
        return _positions(self.pair_values(), old.pair_values())


def _positions(items: list, old_items: list) -> np.ndarray:
    where = {v: i for i, v in enumerate(old_items)}
    return np.asarray([where.get(v, -1) for v in items], np.int64)
