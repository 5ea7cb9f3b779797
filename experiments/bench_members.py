"""Members strategies side by side: member-images/s of M members advanced together against M
sequential single-member runs (the reference's way), measured in one process, interleaved, medians.

    python experiments/bench_members.py [--shapes digits cifar] [--members 1 4 16 64]
        [--strategies threads loop vmap gemm map map_chunked:4] [--steps N] [--repeats 2] [--all]
        [--autotune]
    python experiments/bench_members.py --precision-check [--epochs 8]

* ``sequential``: each member trained alone, one after the other, by tr_jax's jitted
  single-member program (one call per step), blocking after each member.
* every strategy: one epoch of ``--steps`` steps per member (default 4 at 8x8, 1 at 32x32)
  through ``Trainer.train_epoch`` (the code path a sweep runs: ``loop``, ``threads`` = loop's
  program from host threads, ``vmap``, ``gemm`` = vmap of the model with ``conv_impl="gemm"``:
  im2col + batched matmuls, no grouped convolution, ``map``, ``map_chunked:k``).
PreResNet-``--depth`` (default 20), batch 64, CIFAR shapes (32x32x3) and digits shapes (8x8x1),
synthetic uint8 data. ``auto`` resolves to the backend's default (``resolve('auto')``).

Hopeless combinations on CPU are skipped with the reason printed (``--all`` runs them): ``map`` /
``map_chunked`` (a rolled ``lax.map`` of conv train steps runs each step ~25-70x slower on XLA
CPU), ``vmap`` at 32x32 beyond 4 members (grouped convolutions: 0.24-0.53x sequential at M=4).

``--autotune``: also ``tr_jax.autotune.choose`` for each (shape, M) with its default candidates
(one step per call: mostly the programs compiled above), without its cache and with
``--autotune-budget`` seconds (default: ``run.autotune_budget_s``'s): its choice, the seconds it
took and its table.

``--precision-check``: PreResNet-8 on the embedded digits data, trained ``--epochs`` epochs in
float32 and in bfloat16 (``StepConfig.precision``) from the same initialisation: test error both
ways and the train-step speed ratio.

Final lines ``RESULT name=value``: ``{shape}_M{M}_{strategy}_vs_sequential`` (> 1: faster than
sequential runs) and ``{shape}_M{M}_{strategy}_member_img_s``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import tr_jax as tj
from tr_jax.config import AUTOTUNE_BUDGET_S
from tr_jax.training import StepConfig, Trainer, init_state, stack
from tr_jax import members as mem

SHAPES = {"digits": (8, 8, 1), "cifar": (32, 32, 3)}
DEFAULT_STEPS = {"digits": 4, "cifar": 1}  # per member and repeat (--steps overrides both)


def skip_reason(strategy: str, shape: str, M: int, cpu: bool) -> str | None:
    """Why (strategy, shape, M) is not run by default on this backend (None: it runs)."""
    if not cpu:
        return None
    if strategy.startswith("map"):
        return "rolled lax.map of conv train steps: each step ~25-70x slower on XLA CPU"
    if strategy == "vmap" and shape == "cifar" and M > 4:
        return "vmap at 32x32 = grouped convolutions on XLA CPU: 0.24-0.53x sequential at M=4"
    return None


class Case:
    """M members of one shape: their data, states and a timed epoch per strategy."""

    def __init__(self, shape: str, M: int, depth: int, steps: int):
        self.shape, self.M, self.steps = SHAPES[shape], M, steps
        rng = np.random.default_rng(0)
        n = 64 * steps
        self.X = jnp.asarray(rng.integers(0, 256, (n, *self.shape), dtype=np.uint8))
        self.Y = jnp.asarray(rng.integers(0, 10, (n,)), jnp.int32)
        self.model = tj.models.preresnet(depth, 10)
        c = self.shape[2]
        self.cfg = StepConfig(mean=(0.5,) * c, std=(0.25,) * c, batch_size=64,
                              pad=1 if self.shape[0] == 8 else 4, flip=self.shape[0] != 8)
        v = tj.models.init(self.model, jax.random.key(0), self.shape)
        one = init_state(v, jax.tree.map(jnp.ones_like, v["params"]), jax.random.key(0), 0.1, 5e-4)
        self.template = stack([one] * M)
        self.groups: dict[str, list] = {}
        self.epoch = 0

    def fresh(self):
        return jax.tree.map(jnp.copy, self.template)  # own buffers (donated to every call)

    def sequential(self):
        """Each member alone: its single-member program, one call per step, then the next."""
        fn = Trainer(self.model, self.cfg, "loop").train_fn(1, 64)
        if "sequential" not in self.groups:
            self.groups["sequential"] = mem.unstack(self.fresh())
        gs = self.groups["sequential"]
        ep, one = jnp.int32(self.epoch), jnp.ones((1,), jnp.float32)
        steps = [jnp.int32(s) for s in range(self.steps)]  # arguments made once, as Trainer does
        for i in range(self.M):
            for s in steps:
                gs[i], _ = fn(gs[i], self.X, self.Y, s, ep, one)
            jax.block_until_ready(gs[i])

    def strategy(self, name: str):
        tr = Trainer(self.model, self.cfg, name, chunk_steps=1, drop_last=True, milestones=())
        if name not in self.groups:
            self.groups[name] = mem.split_groups(self.fresh(), tr.strategy)
        self.groups[name], _ = tr.train_epoch(self.groups[name], self.X, self.Y, self.epoch)
        jax.block_until_ready(self.groups[name])

    def run(self, name: str) -> float:
        t = time.perf_counter()
        self.sequential() if name == "sequential" else self.strategy(name)
        return time.perf_counter() - t


_PRINTED: set[str] = set()


def emit(res: dict) -> None:
    """Print the ``RESULT name=value`` lines of ``res`` not printed yet (flushed)."""
    for k, v in res.items():
        if k in _PRINTED:
            continue
        _PRINTED.add(k)
        if isinstance(v, str):
            print(f"RESULT {k}={v}", flush=True)
        else:
            print(f"RESULT {k}={v:.4g}" if "img_s" in k or "error" in k else
                  f"RESULT {k}={v:.3f}", flush=True)


def autotune_case(case: Case, shape: str, M: int, res: dict, budget: float) -> None:
    """The autotuner's choice for this case (no cache; one step per call, the programs the
    strategies above compiled), printed and put into ``res``."""
    from tr_jax import autotune
    t = time.perf_counter()
    choice = autotune.choose(case.model, case.cfg, case.shape, M, chunk_steps=1,
                             budget_s=budget, use_cache=False)
    res[f"{shape}_M{M}_autotune_s"] = time.perf_counter() - t
    res[f"{shape}_M{M}_autotune"] = choice.strategy
    print(f"  autotune ({res[f'{shape}_M{M}_autotune_s']:.0f}s): "
          f"{autotune.describe(choice, M)}")


def bench_members(a) -> dict[str, float | str]:
    cpu = jax.default_backend() == "cpu"
    auto = mem.resolve("auto")
    strategies = [s if s != "auto" else auto for s in a.strategies]
    res: dict[str, float | str] = {}
    for shape in a.shapes:
        steps = a.steps or DEFAULT_STEPS[shape]
        print(f"\n{shape} {SHAPES[shape]}: PreResNet-{a.depth}, batch 64, {steps} steps per "
              f"member, median of >= {a.repeats} interleaved repeats (after a warm-up)")
        for M in a.members:
            case = Case(shape, M, a.depth, steps)
            names = ["sequential"]
            for s in strategies:
                why = None if a.all else skip_reason(s, shape, M, cpu)
                if why:
                    print(f"  M={M:3d} {s:>14s}: skipped ({why}; --all runs it)")
                elif s not in names:
                    names.append(s)
            t0 = time.perf_counter()
            for n in names:  # compile + warm up (per-member programs are shared across M)
                if M == a.members[0] or not mem.per_member(n if n != "sequential" else "loop"):
                    case.run(n)
            case.epoch += 1
            times = {n: [] for n in names}
            while len(times["sequential"]) < a.repeats or (  # short cases: more repeats
                    sum(times["sequential"]) < a.min_time and len(times["sequential"]) < 12):
                for n in names:
                    times[n].append(case.run(n))
                case.epoch += 1
            base = M * steps * 64 / statistics.median(times["sequential"])
            for n in names:
                ips = M * steps * 64 / statistics.median(times[n])
                tag = f"{shape}_M{M}_{n.replace(':', '')}"
                res[f"{tag}_member_img_s"] = ips
                if n != "sequential":
                    res[f"{tag}_vs_sequential"] = ips / base
                print(f"  M={M:3d} {n:>14s}: {ips:8.0f} member-images/s  {ips / base:5.2f}x "
                      f"sequential{'  (auto)' if n == auto else ''}")
            print(f"  (M={M}: {len(times[names[0]])} repeats, {time.perf_counter() - t0:.0f}s)")
            if a.autotune:
                autotune_case(case, shape, M, res, a.autotune_budget)
            emit(res)  # RESULT lines per case: a run cut short by a timeout still reports
    return res


def precision_check(a) -> dict[str, float]:
    """PreResNet-8 on digits: test error after ``a.epochs`` epochs in float32 and bfloat16."""
    ds = tj.data.load_dataset("digits")
    X, Y = jnp.asarray(ds.train_images), jnp.asarray(ds.train_labels)
    Xt, Yt = jnp.asarray(ds.test_images), jnp.asarray(ds.test_labels)
    model = tj.models.preresnet(8, ds.num_classes)
    v = tj.models.init(model, jax.random.key(0), ds.image_shape)
    one = init_state(v, jax.tree.map(jnp.ones_like, v["params"]), jax.random.key(1), 0.1, 5e-4)
    ms = (a.epochs // 2, 3 * a.epochs // 4)
    out, trainers, states = {}, {}, {}
    for p in ("float32", "bfloat16"):
        cfg = StepConfig(mean=tuple(ds.mean), std=tuple(ds.std), batch_size=64, pad=1,
                         flip=False, precision=p)
        trainers[p] = Trainer(model, cfg, "loop", chunk_steps=4, milestones=ms)
        states[p] = stack([jax.tree.map(jnp.copy, one)])
    times = {p: [] for p in trainers}
    for epoch in range(a.epochs):  # interleaved, epoch by epoch
        for p, tr in trainers.items():
            t = time.perf_counter()
            g, _ = tr.train_epoch(mem.unstack(states[p]), X, Y, epoch)
            states[p] = stack(g)
            jax.block_until_ready(states[p])
            times[p].append(time.perf_counter() - t)
    for p, tr in trainers.items():
        err = float(tr.evaluate(mem.unstack(states[p]), Xt, Yt)[0][0])
        ips = ds.num_train / statistics.median(times[p][1:] or times[p])
        out[p] = (err, ips)
        print(f"digits PreResNet-8, {a.epochs} epochs, {p:9s}: test error {100 * err:5.2f}%, "
              f"{ips:7.0f} img/s (median epoch after the first)")
    return {"precision_test_error_float32": out["float32"][0],
            "precision_test_error_bfloat16": out["bfloat16"][0],
            "precision_bf16_vs_fp32_speed": out["bfloat16"][1] / out["float32"][1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["digits", "cifar"])
    ap.add_argument("--members", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--strategies", nargs="+",
                    default=["threads", "loop", "vmap", "gemm", "map", "map_chunked:4"])
    ap.add_argument("--depth", type=int, default=20)
    ap.add_argument("--steps", type=int, default=0,
                    help="train steps per member and repeat (0: digits 4, cifar 1)")
    ap.add_argument("--repeats", type=int, default=2, help="at least; more (up to 12) until "
                    "the sequential runs of a case add up to --min-time seconds")
    ap.add_argument("--min-time", type=float, default=3.0)
    ap.add_argument("--all", action="store_true", help="also run the combinations skipped on CPU")
    ap.add_argument("--autotune", action="store_true",
                    help="also time tr_jax.autotune.choose per (shape, M) and print its choice")
    ap.add_argument("--autotune-budget", type=float, default=AUTOTUNE_BUDGET_S,
                    help="seconds per case for --autotune (default: run.autotune_budget_s's)")
    ap.add_argument("--precision-check", action="store_true")
    ap.add_argument("--epochs", type=int, default=8, help="epochs of --precision-check")
    a = ap.parse_args()
    for s in a.strategies:
        mem.resolve(s)
    t0 = time.perf_counter()
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), {os.cpu_count()} "
          f"cores, load average {os.getloadavg()[0]:.1f}, members strategy auto = "
          f"{mem.resolve('auto')}")
    res = precision_check(a) if a.precision_check else bench_members(a)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s, load average {os.getloadavg()[0]:.1f}")
    emit(res)


if __name__ == "__main__":
    main()
