"""One 3x3 conv layer, forward + backward, M members: XLA's conv vs ``conv_impl="gemm"`` (im2col +
matmul), each as M sequential single-member calls and as one vmapped call.

    python experiments/bench_gemm_layer.py [--members 4] [--batch 64]

Shapes: 32x32x16 (PreResNet's first stage on CIFAR) and 8x8x64 (its last stage), stride 1, pad 1.
Compiled with tr_jax's compiler options (``members.jit``) and with plain ``jax.jit`` (XLA's
defaults: on CPU, YNNPACK fusions on). Medians of 5 calls after a warm-up. Final lines
``RESULT name=value`` (milliseconds per call).
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

from tr_jax.models.conv import conv_gemm
from tr_jax import members as mem


def xla_conv(x, k, s, p):
    return lax.conv_general_dilated(x, k, s, p, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def median_ms(fn, *args) -> float:
    jax.block_until_ready(fn(*args))
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    M = a.members
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), M={M}, "
          f"batch {a.batch}")
    for hw, c in ((32, 16), (8, 64)):
        x = jax.random.normal(jax.random.key(0), (M, a.batch, hw, hw, c))
        k = jax.random.normal(jax.random.key(1), (M, 3, 3, c, c))
        for jname, jit in (("tr_jax", mem.jit), ("xla_default", jax.jit)):
            for name, conv in (("xla", xla_conv), ("gemm", conv_gemm)):
                def loss(x, k, conv=conv):
                    return jnp.sum(conv(x, k, (1, 1), ((1, 1), (1, 1))) ** 2)
                single = jit(jax.grad(loss, argnums=(0, 1)))
                seq = median_ms(lambda x, k, f=single: [f(x[i], k[i]) for i in range(M)], x, k)
                vm = median_ms(jit(jax.vmap(jax.grad(loss, argnums=(0, 1)))), x, k)
                tag = f"layer_{hw}x{hw}x{c}_{jname}_{name}"
                print(f"{hw}x{hw}x{c} {jname:11s} {name:4s}: sequential {seq:7.1f} ms, "
                      f"vmap {vm:7.1f} ms", flush=True)
                print(f"RESULT {tag}_sequential_ms={seq:.1f}\nRESULT {tag}_vmap_ms={vm:.1f}")


if __name__ == "__main__":
    main()
