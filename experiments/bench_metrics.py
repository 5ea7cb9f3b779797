"""Cost of writing metrics.jsonl (``run.metrics``): a reduced quick job run with the metrics on and
off, alternating, in fresh workdirs, in one process (after one discarded warm-up run that pays
the compiles), ``--repeats`` times each; medians of the training stages' seconds (dense +
retrain, where the per-epoch metrics are gathered) and of the whole run.

    python experiments/bench_metrics.py [--repeats 3] [--set key=value ...]

Default reduction of configs/quick.py: 10 dense epochs (temperatures 5, 10), 5 retrain epochs
(2 temperatures x 5 densities x 2 seeds = 20 members), 3 LMC points, no Bezier / Hessian stage.
Final lines ``RESULT name=value``.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).parents[1]
REDUCED = ["temperatures=(5, 10)", "dense.epochs=10", "dense.milestones=(5,)",
           "retrain.epochs=5", "retrain.milestones=(3,)", "measure.lmc_points=3",
           "measure.bezier.enabled=False", "measure.hessian.enabled=False"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--config", default=str(ROOT / "configs" / "quick.py"))
    ap.add_argument("--set", action="append", default=[], help="extra overrides key=value")
    a = ap.parse_args()
    import tr_jax as tj
    from tr_jax.config import load_config

    def one(metrics: bool, root: pathlib.Path, tag: str) -> tuple[float, float]:
        cfg = load_config(a.config, [*REDUCED, *a.set, f"run.metrics={metrics}"])
        wd = root / tag
        t = time.perf_counter()
        out = tj.sweep.run(cfg, str(wd), progress=False, echo=lambda s: None)
        total = time.perf_counter() - t
        train = out["timings"]["dense"] + out["timings"]["retrain"]
        assert (wd / "metrics.jsonl").exists() == metrics
        print(f"{tag}: metrics={metrics} train {train:.2f}s total {total:.2f}s", flush=True)
        return train, total

    res: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="bench_metrics_") as tmp:
        root = pathlib.Path(tmp)
        one(True, root, "warmup")  # compiles (shared by every later run of this process)
        for r in range(a.repeats):
            order = (True, False) if r % 2 == 0 else (False, True)
            for m in order:
                res[m].append(one(m, root, f"r{r}_{'on' if m else 'off'}"))
    med = {m: (statistics.median(t for t, _ in v), statistics.median(t for _, t in v))
           for m, v in res.items()}
    print(f"RESULT train_s_metrics_on={med[True][0]:.3f}")
    print(f"RESULT train_s_metrics_off={med[False][0]:.3f}")
    print(f"RESULT total_s_metrics_on={med[True][1]:.3f}")
    print(f"RESULT total_s_metrics_off={med[False][1]:.3f}")
    print(f"RESULT metrics_overhead_train_pct={100 * (med[True][0] / med[False][0] - 1):.2f}")
    print(f"RESULT metrics_overhead_pct={100 * (med[True][1] / med[False][1] - 1):.2f}")


if __name__ == "__main__":
    sys.exit(main())
