"""Members strategies side by side: member-images/s of M members advanced together vs M separate
single-member runs (the reference's way), measured in one run on this machine.

    python experiments/bench_members.py [--members 1 4] [--shape digits|cifar] [--depth 8]

Prints a table and final lines ``RESULT name=value`` (ratios against ``loop``). The default
members strategy per backend (``tr_jax.training.members.resolve('auto')``) comes from these
numbers; see README's performance section.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import tr_jax as tj
from tr_jax.training import StepConfig, Trainer, init_state, stack

SHAPES = {"digits": (8, 8, 1), "cifar": (32, 32, 3)}


def bench(strategy: str, M: int, shape, depth: int, n_images: int, repeats: int) -> float:
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.integers(0, 256, (n_images, *shape), dtype=np.uint8))
    Y = jnp.asarray(rng.integers(0, 10, (n_images,)), jnp.int32)
    model = tj.models.preresnet(depth, 10)
    states = []
    for i in range(M):
        v = tj.models.init(model, jax.random.key(i), shape)
        states.append(init_state(v, jax.tree.map(jnp.ones_like, v["params"]), jax.random.key(i),
                                 0.1, 1e-4))
    state = stack(states)
    cfg = StepConfig(mean=(0.5,) * shape[2], std=(0.25,) * shape[2], batch_size=64,
                     pad=1 if shape[0] == 8 else 4, flip=shape[0] != 8)
    tr = Trainer(model, cfg, strategy, chunk_steps=4, drop_last=True)
    state, _ = tr.fit(state, X, Y, 1)  # compile + warm up
    jax.block_until_ready(state)
    times = []
    for r in range(repeats):
        t = time.perf_counter()
        state, _ = tr.fit(state, X, Y, r + 2, start_epoch=r + 1)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
    return M * (n_images // 64) * 64 / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--strategies", nargs="+", default=["loop", "vmap", "map_chunked:2"])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="digits")
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    print(f"backend {jax.default_backend()}, PreResNet-{a.depth}, shape {SHAPES[a.shape]}, "
          f"batch 64, {a.images} images/epoch, median of {a.repeats} epochs")
    results = {}
    for M in a.members:
        for s in a.strategies:
            results[(s, M)] = bench(s, M, SHAPES[a.shape], a.depth, a.images, a.repeats)
            print(f"M={M:3d} {s:>14s}: {results[(s, M)]:9.0f} member-images/s")
    for M in a.members:
        for s in a.strategies:
            if s != "loop":
                print(f"RESULT {a.shape}_M{M}_{s.replace(':', '')}_vs_loop="
                      f"{results[(s, M)] / results[('loop', M)]:.3f}")


if __name__ == "__main__":
    main()
