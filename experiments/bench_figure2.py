"""The Figure-2 retraining grid on this device: members-scaling, memory per member, achieved FLOP/s
against the device's peak, and the extrapolated wall time of Figure 2's 1 296 retrains.

    python experiments/bench_figure2.py [--members 1 4 16 64 256] [--strategy auto] [--steps 4]
        [--repeats 5] [--peak-tflops T] [--memory-gb G] [--precision bfloat16]
        [--depth 20] [--shape cifar]

What is timed is the program a sweep's retraining stage runs: ``Trainer``'s compiled group step
(``Trainer.train_fn``) for M masked PreResNet-20 members, CIFAR shapes
(32x32x3 uint8 images on device, augmentation inside the step), batch 64, SGD momentum, ``--steps``
steps per call, state donated, under ``--strategy`` (``auto``: ``vmap`` on an accelerator,
``threads`` on CPU). Per M it prints member-steps/s, the speed-up over M = 1, the compiled
program's FLOPs per member-step (XLA's ``cost_analysis``), the achieved FLOP/s and its fraction of
the device's peak, and the memory per member (``memory_analysis``: arguments + outputs +
temporaries of the program, over M).

The Figure-2 extrapolation (16 epoch-temperatures x 9 densities x 3 dense seeds x 3 retrain
seeds = 1 296 retrains of 160 epochs at ``ceil(50 000 / 64) = 782`` steps per epoch) takes the
fastest M whose members fit ``--memory-gb`` (default: the device's memory, else 16) and divides the
grid's member-steps by its member-steps/s: the retraining stage on one device, the dense runs and
the measures left out (they are <5 % of the steps: 3 dense runs, 1 296 LMC curves of 11 points).
The issue's goal is <= 8 h on one H100-class GPU.

The peak (``--peak-tflops``) defaults to the float32 peak of known accelerators (H100 SXM 67,
H200 67, A100 19.5 TFLOP/s; XLA's default float32 convolutions on these GPUs may use TF32 tensor
cores, whose peak is higher: the fraction is then an upper bound); on CPU and unknown devices no
fraction is printed unless ``--peak-tflops`` is given. Defaults finish in a few minutes on the
2-core CPU (M = 1, 4).

``--precision bfloat16``: the step's convs and classifier in bfloat16 (``StepConfig.precision``).
``--depth`` / ``--shape digits`` (PreResNet-8 on 8x8x1: ``device_check.sh``'s CPU fallback) change
the program measured; the Figure-2 extrapolation is then not Figure 2's (it says so).

``RESULT name=value`` lines (printed per M, so a run cut short still reports):
``figure2_M{M}_member_steps_s``, ``figure2_M{M}_vs_M1``, ``figure2_M{M}_tflops``,
``figure2_M{M}_mib_per_member``, ``figure2_M{M}_peak_fraction`` (with a peak),
``figure2_retrain_hours``.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import tr_jax as tj
from tr_jax.training import StepConfig, Trainer, init_state, stack
from tr_jax import members as mem

#: float32 peak TFLOP/s (dense, no sparsity) of accelerators by ``device_kind`` substring
PEAK_TFLOPS = {"H200": 67.0, "H100": 67.0, "A100": 19.5, "L4": 30.3, "V100": 15.7}
FIGURE2_RETRAINS = 16 * 9 * 3 * 3  # epoch temperatures x densities x dense seeds x retrain seeds
FIGURE2_STEPS = 160 * math.ceil(50_000 / 64)  # 160 epochs of CIFAR-10 at batch 64


def peak_tflops(kind: str, given: float | None) -> float | None:
    if given:
        return given
    return next((v for k, v in PEAK_TFLOPS.items() if k.lower() in kind.lower()), None)


def device_memory_gb(given: float | None) -> float:
    if given:
        return given
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # CPU clients have none
        stats = {}
    return stats.get("bytes_limit", 16 * 2**30) / 2**30


def program_costs(compiled) -> tuple[float, float]:
    """(FLOPs, bytes of arguments + outputs + temporaries) of one call of a compiled program."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float((cost or {}).get("flops", float("nan")))
    m = compiled.memory_analysis()
    nbytes = float("nan") if m is None else float(
        m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
        - getattr(m, "alias_size_in_bytes", 0))
    return flops, nbytes


SHAPES = {"cifar": (32, 32, 3), "digits": (8, 8, 1)}


def bench(M: int, strategy: str, steps: int, repeats: int, depth: int = 20, shape: str = "cifar",
          precision: str = "float32") -> dict[str, float]:
    """member-steps/s, FLOPs and bytes per member-step of M members under ``strategy``."""
    rng = np.random.default_rng(0)
    n = 64 * steps
    hw = SHAPES[shape]
    X = jnp.asarray(rng.integers(0, 256, (n, *hw), dtype=np.uint8))
    Y = jnp.asarray(rng.integers(0, 10, (n,)), jnp.int32)
    model = tj.models.preresnet(depth, 10)
    c = hw[2]
    cfg = StepConfig(mean=(0.49, 0.48, 0.45)[:c], std=(0.25, 0.24, 0.26)[:c], batch_size=64,
                     pad=4 if hw[0] == 32 else 1, flip=hw[0] == 32, precision=precision)
    v = tj.models.init(model, jax.random.key(0), hw)
    keep = jax.tree.map(lambda p: (jax.random.uniform(jax.random.key(1), p.shape) < 0.5
                                   ).astype(p.dtype), v["params"])  # a 50 % random mask
    one = init_state(v, keep, jax.random.key(2), 0.1, 5e-4)
    groups = mem.split_groups(jax.tree.map(jnp.copy, stack([one] * M)), strategy)
    step_args = (jnp.int32(0), jnp.int32(0), jnp.ones((steps,), jnp.float32))  # shared by members
    t = time.perf_counter()  # one compile: its executable is both analysed and run
    compiled = Trainer(model, cfg, strategy).train_fn(steps, 64).lower(
        groups[0], X, Y, *step_args).compile()
    compile_s = time.perf_counter() - t

    def call(g):
        return compiled(g, X, Y, *step_args)[0]

    flops, nbytes = program_costs(compiled)
    per_call = 1 if mem.per_member(strategy) else M  # members one compiled call advances
    groups = jax.block_until_ready(mem.run_groups(call, groups, strategy))  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        groups = jax.block_until_ready(mem.run_groups(call, groups, strategy))
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    return {"member_steps_s": M * steps / sec, "flops_per_member_step": flops / (per_call * steps),
            "bytes_per_member": nbytes / per_call, "compile_s": compile_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cpu = jax.default_backend() == "cpu"
    ap.add_argument("--members", type=int, nargs="+",
                    default=[1, 4] if cpu else [1, 4, 16, 64, 256])
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--steps", type=int, default=2 if cpu else 8, help="steps per compiled call")
    ap.add_argument("--repeats", type=int, default=5 if cpu else 10)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--memory-gb", type=float, default=None)
    ap.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--depth", type=int, default=20, help="PreResNet depth (Figure 2: 20)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="cifar", help="(Figure 2: cifar)")
    a = ap.parse_args()
    strategy = mem.resolve(a.strategy)
    kind = jax.devices()[0].device_kind
    peak = peak_tflops(kind, a.peak_tflops)
    budget = device_memory_gb(a.memory_gb)
    t0 = time.perf_counter()
    print(f"backend {jax.default_backend()} ({kind}), strategy {strategy}, {os.cpu_count()} CPU "
          f"cores, peak {peak or '?'} TFLOP/s, memory budget {budget:.1f} GiB, PreResNet-"
          f"{a.depth} {a.shape}, {a.precision}", flush=True)
    printed: set[str] = set()

    def emit():
        for k, v in res.items():
            if k not in printed:
                printed.add(k)
                print(f"RESULT {k}={v:.4g}", flush=True)
    res, rows = {}, {}
    for M in a.members:
        r = rows[M] = bench(M, strategy, a.steps, a.repeats, a.depth, a.shape, a.precision)
        tflops = r["member_steps_s"] * r["flops_per_member_step"] / 1e12
        mib = r["bytes_per_member"] / 2**20
        tag = f"figure2_M{M}"
        res[f"{tag}_member_steps_s"] = r["member_steps_s"]
        res[f"{tag}_vs_M1"] = r["member_steps_s"] / rows[a.members[0]]["member_steps_s"]
        res[f"{tag}_tflops"] = tflops
        res[f"{tag}_mib_per_member"] = mib
        if peak:
            res[f"{tag}_peak_fraction"] = tflops / peak
        print(f"M={M:4d}: {r['member_steps_s']:9.1f} member-steps/s ({res[f'{tag}_vs_M1']:.2f}x "
              f"M={a.members[0]}), {r['flops_per_member_step'] / 1e9:.2f} GFLOP/member-step, "
              f"{tflops:.3f} TFLOP/s" + (f" ({100 * tflops / peak:.1f} % of peak)" if peak else "")
              + f", {mib:.1f} MiB/member, compile {r['compile_s']:.1f}s", flush=True)
        emit()
    fits = [M for M in rows if M * rows[M]["bytes_per_member"] <= budget * 2**30] or [min(rows)]
    best = max(fits, key=lambda M: rows[M]["member_steps_s"])
    hours = FIGURE2_RETRAINS * FIGURE2_STEPS / rows[best]["member_steps_s"] / 3600
    res["figure2_retrain_hours"] = hours
    other = "" if (a.depth, a.shape) == (20, "cifar") else (
        f" [NOT Figure 2's program: PreResNet-{a.depth} {a.shape}]")
    print(f"Figure 2 retraining ({FIGURE2_RETRAINS} x {FIGURE2_STEPS:,} member-steps) at M={best}: "
          f"{hours:.1f} h on one {kind}{other} (goal on one H100/H200-class GPU: <= 3 h); total "
          f"{time.perf_counter() - t0:.0f}s")
    emit()


if __name__ == "__main__":
    main()
