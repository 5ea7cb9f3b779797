"""Landscape measures side by side, measured in one run on this machine (issue: vectorised metrics).

    python experiments/bench_landscape.py [--shape digits|cifar] [--depth 8] [--pairs 3] [--lmc-only]

* LMC of 11 t points: the straight-line points of ``--pairs`` pairs evaluated by
  ``pair_curves`` with every point of a pair in one vmapped program (``points_per_call`` = 11 and
  = pairs x 11), against the per-t loop (one recalibration + evaluation per point: the
  reference's way, and tr_jax's CPU default ``points_per_call=1``).
* Hessian trace: Hutchinson probes vmapped in chunks against a Python loop over probes.
* One cell's full measurement (CKA outputs, LMC of its pairs, Hessian trace of its members).

Medians of ``--repeats`` runs after a warm-up (compiles excluded). Final lines ``RESULT name=value``.
``--lmc-only``: the LMC part alone (``device_check.sh``).
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import tr_jax as tj

SHAPES = {"digits": (8, 8, 1), "cifar": (32, 32, 3)}


def timeit(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile + warm up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def per_t_loop(model, va, vb, X, Y, Xt, Yt, ts, mean, std):
    """The per-point baseline: recalibrate, then evaluate train and test, one t at a time."""
    out = []
    for t in ts:
        v = {"params": tj.landscape.lerp(jnp.float32(t), va["params"], vb["params"]),
             "batch_stats": va["batch_stats"]}
        v = tj.landscape.recalibrate(model, v, X, mean, std)
        out.append((tj.landscape.evaluate(model, v, X, Y, mean, std)["error"],
                    tj.landscape.evaluate(model, v, Xt, Yt, mean, std)["error"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="digits")
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--images", type=int, default=1437)
    ap.add_argument("--test-images", type=int, default=360)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--probes", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lmc-only", action="store_true", help="skip the Hessian and cell parts")
    ap.add_argument("--points", type=int, default=11, help="t points per LMC curve")
    a = ap.parse_args()
    shape = SHAPES[a.shape]
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.integers(0, 256, (a.images, *shape), dtype=np.uint8))
    Y = jnp.asarray(rng.integers(0, 10, (a.images,)), jnp.int32)
    Xt, Yt = X[:a.test_images], Y[:a.test_images]
    mean, std = (0.5,) * shape[2], (0.25,) * shape[2]
    model = tj.models.preresnet(a.depth, 10)
    vs = [tj.models.init(model, jax.random.key(i), shape) for i in range(max(a.pairs + 1, 3))]
    stack = lambda xs: jax.tree.map(lambda *x: jnp.stack(x), *xs)  # noqa: E731
    pa = stack([v["params"] for v in vs[:-1]])
    pb = stack([v["params"] for v in vs[1:]])
    ts = np.linspace(0, 1, a.points)
    bs = vs[0]["batch_stats"]
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), PreResNet-{a.depth}, "
          f"shape {shape}, {a.images} train / {a.test_images} test images, {a.pairs} pairs")

    def curves(ppc, pairs=1):
        return lambda: tj.landscape.pair_curves(
            model, jax.tree.map(lambda x: x[:pairs], pa), jax.tree.map(lambda x: x[:pairs], pb), bs,
            X, Y, mean=mean, std=std, ts=ts, test=(Xt, Yt), points_per_call=ppc)["train_error"]

    t_loop = timeit(lambda: per_t_loop(model, vs[0], vs[1], X, Y, Xt, Yt, ts, mean, std), a.repeats)
    t_ppc1 = timeit(curves(1), a.repeats)
    t_batched = timeit(curves(a.points), a.repeats)
    t_pairs_loop = a.pairs * t_ppc1
    t_pairs = timeit(curves(a.points * a.pairs, a.pairs), a.repeats)
    print(f"LMC, {a.points} points, 1 pair: per-t loop {t_loop:.2f}s, points_per_call=1 "
          f"{t_ppc1:.2f}s, {a.points} points batched {t_batched:.2f}s")
    print(f"LMC, {a.points} points, {a.pairs} pairs batched {t_pairs:.2f}s vs {t_pairs_loop:.2f}s "
          f"one point per call")
    lmc_results = (f"RESULT lmc_points_batched_vs_per_t_loop={t_loop / t_batched:.3f}\n"
                   f"RESULT lmc_points_per_call1_vs_per_t_loop={t_loop / t_ppc1:.3f}\n"
                   f"RESULT lmc_pairs_batched_vs_one_point_per_call={t_pairs_loop / t_pairs:.3f}")
    if a.lmc_only:
        print(lmc_results)
        return

    # Hessian trace: probes batched vs a Python loop over probes
    from tr_jax.landscape import hessian
    v = vs[0]
    mask = jax.tree.map(jnp.ones_like, v["params"])
    loss = hessian.member_loss(model, v, mask, X[:200], Y[:200], mean, std)
    key = jax.random.key(0)
    t_h_batched = timeit(lambda: hessian.hessian_trace(loss, v["params"], key, max_probes=a.probes,
                                                       tol=0.0, chunk=a.probes)[0], a.repeats)
    hvp = jax.jit(lambda p, z: hessian.hvp(loss, p, z))

    def probes_loop():
        acc = 0.0
        for i in range(a.probes):
            leaves, tdef = jax.tree.flatten(v["params"])
            ks = jax.random.split(jax.random.fold_in(key, i), len(leaves))
            z = jax.tree.unflatten(tdef, [jax.random.rademacher(k, x.shape, jnp.float32)
                                          for k, x in zip(ks, leaves)])
            acc = acc + sum(jnp.vdot(p, q) for p, q in zip(jax.tree.leaves(z),
                                                           jax.tree.leaves(hvp(v["params"], z))))
        return acc / a.probes

    t_h_loop = timeit(probes_loop, a.repeats)
    print(f"Hessian trace, {a.probes} probes: batched {t_h_batched:.2f}s, loop {t_h_loop:.2f}s")

    # one cell: R = 3 retrain seeds -> 3 pairs; CKA outputs of 3 members, LMC of 3 pairs, Hessian x3
    def cell():
        outs = [tj.landscape.evaluate(model, vv, X, Y, mean, std, return_logits=True)["logits"]
                for vv in vs[:3]]
        probs = jax.nn.softmax(jnp.stack(outs), -1)
        idx = np.asarray(list(itertools.combinations(range(3), 2)))
        cka = tj.landscape.cka(probs[idx[:, 0]], probs[idx[:, 1]])
        p3a, p3b = (stack([vs[i]["params"] for i in idx[:, j]]) for j in (0, 1))
        lmc = tj.landscape.pair_curves(model, p3a, p3b, bs, X, Y, mean=mean, std=std, ts=ts,
                                       test=(Xt, Yt))["train_error"]
        tr = [hessian.hessian_trace(hessian.member_loss(model, vv, mask, X[:200], Y[:200], mean, std),
                                    vv["params"], key, max_probes=100, tol=1e-3)[0] for vv in vs[:3]]
        return cka, lmc, tr

    t_cell = timeit(cell, 1)
    print(f"one cell (3 members, 3 pairs: CKA + LMC 11 points + Hessian trace): {t_cell:.2f}s")
    print(lmc_results)
    print(f"RESULT hessian_probes_batched_vs_loop={t_h_loop / t_h_batched:.3f}")
    print(f"RESULT cell_measure_seconds={t_cell:.2f}")


if __name__ == "__main__":
    main()
