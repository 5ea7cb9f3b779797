"""Scale-out bookkeeping at Figure 2's plan shape: is orchestration linear in the members?

Figure 2's plan is 16 temperatures x 9 densities x 3 dense seeds x 3 retrain seeds = 1 296
retrain members and 1 296 pairs. This runs that plan with a tiny model (PreResNet-8, width 0.25,
the first 128 / 64 digits) and one step per stage (epochs of one batch of 128, 2 LMC points, a
Hessian of 2 probes on 16 images; Bezier only with ``--bezier``), on 4 simulated CPU devices with the ``vmap``
strategy, at M = 1 296 and at a grid 1/8 that size (2 temperatures x 9 x 3 x 3 = 162), each in its
own process (so peak RSS is per run).

Per run it prints ``RESULT`` lines: wall seconds per stage; the run's XLA compile seconds, workdir
I/O seconds (checkpoints, chunk records, barriers) and the rest (compiled compute plus dispatch);
peak host RSS; bytes written to the workdir (and the bytes the finished stages hold). Then the
ratios M=1296 / M=162 of bytes written and peak RSS (goal <= 10: linear or better) and the
orchestration share at M = 1 296 (compile + I/O + tables over wall; goal <= 20 %).

    python experiments/bench_scale.py                     # both sizes
    python experiments/bench_scale.py --temperatures 2    # one size only"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _one(temperatures: int, workdir: str, bezier: bool, n_train: int, n_test: int) -> dict:
    """Run the sweep in this process; return the measurements."""
    import jax
    import jax.monitoring

    from tr_jax.config import default_config, validate
    from tr_jax.sweep import store
    from tr_jax.sweep import run_stages, setup

    compile_s = {"t": 0.0}

    def on_duration(event: str, duration: float, **_kw) -> None:
        if "backend_compile" in event:
            compile_s["t"] += duration

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    io = {"t": 0.0}
    for name in ("save", "save_chunk", "load", "load_chunks", "has", "remove", "remove_chunks"):
        orig = getattr(store.Workdir, name)

        def timed(self, *a, _orig=orig, **k):
            t = time.perf_counter()
            try:
                return _orig(self, *a, **k)
            finally:
                io["t"] += time.perf_counter() - t
        setattr(store.Workdir, name, timed)

    c = default_config()
    c.name = f"bench_scale_{temperatures}"
    c.dataset = "digits"
    c.model.depth, c.model.width = 8, 0.25
    c.temperatures = tuple(range(1, temperatures + 1))
    c.dense.epochs, c.dense.milestones, c.dense.seeds = temperatures, (), (1, 2, 3)
    c.dense.batch_size, c.dense.drop_last = n_train, True   # one step per epoch
    c.prune.densities = (0.05, 0.06, 0.07, 0.08, 0.1, 0.14, 0.2, 0.4, 0.8)
    c.retrain.epochs, c.retrain.milestones, c.retrain.seeds = 1, (), (1, 2, 3)
    c.retrain.batch_size, c.retrain.drop_last = n_train, True
    c.augment.pad, c.augment.flip = 1, False
    c.measure.lmc_points, c.measure.cka_images, c.measure.test_error_last_epochs = 2, 32, 1
    c.measure.bezier.enabled, c.measure.bezier.epochs, c.measure.bezier.points = bezier, 1, 3
    c.measure.bezier.batch_size = n_train
    c.measure.hessian.enabled, c.measure.hessian.images = True, 16
    c.measure.hessian.max_probes, c.measure.hessian.chunk, c.measure.hessian.eig_iters = 2, 2, 2
    c.run.members_strategy, c.run.checkpoint_every = "vmap", 0
    c = validate(c)
    # the first n_train / n_test digits: the plan's shape with a fraction of the per-member work
    from tr_jax.data import from_arrays, load_dataset
    full = load_dataset("digits")
    ds = from_arrays(full.train_images[:n_train], full.train_labels[:n_train],
                     full.test_images[:n_test], full.test_labels[:n_test], name=f"digits{n_train}")
    t0 = time.time()
    p = setup(c, workdir, progress=False, echo=lambda s: None, dataset=ds)
    setup = time.time() - t0
    out = run_stages(p)
    wall = time.time() - t0
    stages = pathlib.Path(workdir) / "stages"
    held = sum(f.stat().st_size for f in stages.rglob("*") if f.is_file())
    return {"members": p.grid.num_members, "pairs": len(p.grid.pairs()), "wall": wall,
            "setup": setup, "stages": out["timings"], "compile": compile_s["t"], "io": io["t"],
            "bytes_written": out["bytes_written"], "bytes_held": held,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "devices": jax.device_count()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--temperatures", type=int, nargs="*", default=[2, 16],
                    help="temperatures of each run (x 9 densities x 3 x 3 members)")
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--bezier", action="store_true", help="also train Bezier curves (1 epoch)")
    ap.add_argument("--train-images", type=int, default=128,
                    help="the first N training digits (one batch: one step per epoch)")
    ap.add_argument("--test-images", type=int, default=64)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print("JSON " + json.dumps(_one(a.temperatures[0], a.workdir, a.bezier, a.train_images,
                                        a.test_images)), flush=True)
        return
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={a.devices}"}
    runs = {}
    for t in a.temperatures:
        with tempfile.TemporaryDirectory() as tmp:
            r = subprocess.run([sys.executable, __file__, "--child", "--temperatures", str(t),
                                "--workdir", str(pathlib.Path(tmp) / "w"),
                                "--train-images", str(a.train_images),
                                "--test-images", str(a.test_images)]
                               + (["--bezier"] if a.bezier else []), env=env,
                               capture_output=True, text=True, cwd=ROOT)
        if r.returncode:
            sys.exit(f"run with {t} temperatures failed:\n{r.stderr[-4000:]}")
        res = json.loads(r.stdout.split("JSON ", 1)[1])
        M = res["members"]
        runs[M] = res
        print(f"M={M} ({res['pairs']} pairs, {res['devices']} devices): wall {res['wall']:.1f}s "
              f"(setup {res['setup']:.1f}s), stages "
              + ", ".join(f"{k} {v:.1f}s" for k, v in res["stages"].items()), flush=True)
        for k, v in res["stages"].items():
            print(f"RESULT scale_M{M}_{k}_s={v:.2f}")
        other = res["compile"] + res["io"] + res["stages"].get("tables", 0.0)
        print(f"RESULT scale_M{M}_compile_s={res['compile']:.2f}")
        print(f"RESULT scale_M{M}_io_s={res['io']:.2f}")
        print(f"RESULT scale_M{M}_compute_s={res['wall'] - res['setup'] - other:.2f}")
        print(f"RESULT scale_M{M}_peak_rss_mib={res['peak_rss'] / 2**20:.1f}")
        print(f"RESULT scale_M{M}_bytes_written={res['bytes_written']}")
        print(f"RESULT scale_M{M}_bytes_held={res['bytes_held']}")
        print(f"RESULT scale_M{M}_written_over_held={res['bytes_written'] / max(1, res['bytes_held']):.2f}")
    if len(runs) >= 2:
        small, big = min(runs), max(runs)
        s, b = runs[small], runs[big]
        print(f"RESULT scale_members_ratio={big / small:.2f}")
        print(f"RESULT scale_bytes_written_ratio={b['bytes_written'] / s['bytes_written']:.2f}")
        print(f"RESULT scale_peak_rss_ratio={b['peak_rss'] / s['peak_rss']:.2f}")
        orch = b["compile"] + b["io"] + b["stages"].get("tables", 0.0)
        print(f"RESULT scale_orchestration_fraction_M{big}={orch / b['wall']:.3f}")


if __name__ == "__main__":
    main()
