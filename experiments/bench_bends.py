"""Curves with more bends side by side, measured in one run on this machine.

    python experiments/bench_bends.py [--pairs 4] [--epochs 2] [--points 5] [--repeats 3] [--density 1.0]

Wall time of one mode-connectivity measurement of ``--pairs`` curves, training the bends with
``tr_jax.landscape.train_curves(..., bends=k, kind=...)`` and then evaluating the curves with
``tr_jax.landscape.curve_errors(..., kind=...)`` (BN recalibrated at every point, train and test
errors), for four curve families: the paper's quadratic Bezier curve (one bend, Zhou et al. 2023,
§2), Bezier curves of order 3 and 4 (2 and 3 bends) and a polygonal chain of 2 bends (Garipov
et al. 2018, §3.2).

Setup: the embedded digits data, PreResNet-8 width 1.0, ``--pairs`` pairs of members from
different random initialisations stacked on a leading axis, masks all ones (``--density`` < 1:
magnitude masks of the first member of each pair at that density). The keyword arguments are
those of the ``bezier`` measure (``tr_jax.measures``) on CPU: ``chunk_steps=1, unroll=True``.

One warm-up call per variant (compiles excluded), then ``--repeats`` timed runs interleaved
round robin across the variants, blocking on the results. Reports the median seconds of each
variant and its ratio to the one-bend curve, and the median split between training
(``train_curves``) and evaluation (``curve_errors``). Final lines ``RESULT name=value``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import tr_jax as tj

#: (name, bends, kind) of the variants measured
VARIANTS = (("bezier1", 1, "bezier"), ("bezier2", 2, "bezier"), ("bezier3", 3, "bezier"),
            ("polychain2", 2, "polychain"))


def stack(trees):
    """The pytrees ``trees`` stacked leaf by leaf on a new leading axis."""
    return jax.tree.map(lambda *x: jnp.stack(x), *trees)


def measure(model, ds, pa, pb, mask, batch_stats, *, bends: int, kind: str, epochs: int,
            batch_size: int, points: int, cpu: bool):
    """Train and evaluate the curves of one variant; returns ``(train errors [P, points] on the
    host, seconds training, seconds evaluating)``, blocking on each part's results."""
    t0 = time.perf_counter()
    X, Y = jnp.asarray(ds.train_images), jnp.asarray(ds.train_labels)
    mid, _ = tj.landscape.train_curves(
        model, pa, pb, mask, batch_stats, X, Y, key=jax.random.key(0), mean=ds.mean, std=ds.std,
        epochs=epochs, batch_size=batch_size, chunk_steps=1 if cpu else None, unroll=cpu,
        bends=bends, kind=kind)
    jax.block_until_ready(mid)
    t1 = time.perf_counter()
    res = tj.landscape.curve_errors(
        model, pa, mid, pb, X, Y, mean=ds.mean, std=ds.std, ts=np.linspace(0.0, 1.0, points),
        test=(jnp.asarray(ds.test_images), jnp.asarray(ds.test_labels)), kind=kind)
    jax.block_until_ready(res)
    err = np.asarray(res["train_error"])
    t2 = time.perf_counter()
    return err, t1 - t0, t2 - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--points", type=int, default=5, help="evaluation points per curve")
    ap.add_argument("--density", type=float, default=1.0,
                    help="kept fraction of the magnitude masks (1.0 = all ones)")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if a.pairs < 1 or a.repeats < 1:
        raise ValueError(f"--pairs and --repeats must be >= 1, got {a.pairs} and {a.repeats}")
    if not 0.0 < a.density <= 1.0:
        raise ValueError(f"--density must lie in (0, 1], got {a.density}")

    ds = tj.data.load_dataset("digits", None)
    model = tj.models.build("preresnet", depth=a.depth, num_classes=ds.num_classes, width=a.width)
    vs = [tj.models.init(model, jax.random.key(i), ds.image_shape) for i in range(2 * a.pairs)]
    pa = stack([v["params"] for v in vs[0::2]])
    pb = stack([v["params"] for v in vs[1::2]])
    if a.density < 1.0:
        mask = jax.vmap(lambda p: tj.pruning.magnitude_masks(p, a.density))(pa)
        pa, pb = (jax.tree.map(lambda x, m: x * m, p, mask) for p in (pa, pb))
    else:
        mask = jax.tree.map(jnp.ones_like, pa)
    cpu = jax.default_backend() == "cpu"
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), PreResNet-{a.depth} "
          f"width {a.width}, digits {ds.train_images.shape[0]} train / {ds.test_images.shape[0]} "
          f"test images, {a.pairs} pairs, {a.epochs} epochs, batch {a.batch_size}, {a.points} "
          f"points, mask density {a.density}, chunk_steps={1 if cpu else None}, unroll={cpu}")

    def run(bends, kind):
        return measure(model, ds, pa, pb, mask, vs[0]["batch_stats"], bends=bends, kind=kind,
                       epochs=a.epochs, batch_size=a.batch_size, points=a.points, cpu=cpu)

    for name, bends, kind in VARIANTS:  # warm-up: compiles excluded from the timings
        t = time.perf_counter()
        err, _, _ = run(bends, kind)
        print(f"warm-up {name}: {time.perf_counter() - t:.2f}s, mean train error along the curves "
              f"{err.mean():.3f}")
    times = {name: [] for name, _, _ in VARIANTS}
    parts = {name: [] for name, _, _ in VARIANTS}  # (train, evaluate) seconds
    for r in range(a.repeats):  # round robin, so load changes hit every variant alike
        for name, bends, kind in VARIANTS:
            t = time.perf_counter()
            _, t_train, t_eval = run(bends, kind)
            times[name].append(time.perf_counter() - t)
            parts[name].append((t_train, t_eval))
        print(f"repeat {r + 1}: " + ", ".join(f"{n} {ts[-1]:.2f}s" for n, ts in times.items()))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, _, _ in VARIANTS:
        tr, ev = (statistics.median(p[j] for p in parts[name]) for j in (0, 1))
        print(f"{name}: median {med[name]:.2f}s = train_curves {tr:.2f}s + curve_errors {ev:.2f}s")
    for name, _, _ in VARIANTS:
        print(f"RESULT {name}_s={med[name]:.3f}")
    for name, _, _ in VARIANTS[1:]:
        print(f"RESULT {name}_over_bezier1={med[name] / med['bezier1']:.3f}")


if __name__ == "__main__":
    main()
