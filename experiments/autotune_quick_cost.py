"""Cost of ``tr_jax.autotune.choose`` at the quick job's retraining shape, cold (one process, no cache).

    python experiments/autotune_quick_cost.py [--budget S] [--members 50]

configs/quick.py retrains 5 temperatures x 5 densities x 2 seeds = 50 PreResNet-8 members on 8x8x1
digits, batch 64, 4 unrolled steps per call on CPU. Prints the choice, the table and the wall time,
and its fraction of the quick job (``QUICK_JOB_S``, measured on a 2-core CPU). Final lines
``RESULT name=value``.
"""
from __future__ import annotations

import argparse
import time

import jax

import tr_jax as tj
from tr_jax import autotune
from tr_jax.config import AUTOTUNE_BUDGET_S
from tr_jax.training import StepConfig

QUICK_JOB_S = 360.0  # configs/quick.py on a 2-core CPU: ~6 min wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=AUTOTUNE_BUDGET_S,
                    help="seconds (default: run.autotune_budget_s's default)")
    ap.add_argument("--members", type=int, default=50)
    ap.add_argument("--chunk-steps", type=int, default=4)
    a = ap.parse_args()
    model = tj.models.preresnet(8, 10)
    cfg = StepConfig(mean=(0.5,), std=(0.25,), batch_size=64, pad=1, flip=False)
    t = time.perf_counter()
    choice = autotune.choose(model, cfg, (8, 8, 1), a.members, chunk_steps=a.chunk_steps,
                             budget_s=a.budget, use_cache=False, echo=print)
    dt = time.perf_counter() - t
    print(f"{jax.devices()[0].device_kind}: {autotune.describe(choice, a.members)}")
    print(f"RESULT quick_autotune_choice={choice.strategy}")
    print(f"RESULT quick_autotune_s={dt:.1f}")
    print(f"RESULT quick_autotune_fraction_of_quick_job={dt / QUICK_JOB_S:.3f}")


if __name__ == "__main__":
    main()
