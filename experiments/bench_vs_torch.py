"""tr_jax against PyTorch on this machine: one member's train step and one LMC point, measured in one
process, interleaved, medians.

    python experiments/bench_vs_torch.py [--shape cifar|digits] [--repeats 7] [--threads N] [--no-lmc]

* Train step: PreResNet-20 (the reference's structure), SGD momentum 0.9, weight decay 5e-4,
  cross-entropy, batch 64 of 32x32x3 uint8 images with the reference augmentation (random crop with
  4 pixels of zero padding, random flip) and normalisation, a fresh permutation per epoch. tr_jax:
  the program ``Trainer`` runs (``loop``/``threads`` strategy: one member, state donated, the CPU
  compiler options of ``tr_jax.members``), plus ablations in the same process: without
  the compiler options ("before": XLA's defaults, YNNPACK fusions on), without donation, and in
  mixed precision (``StepConfig.precision="bfloat16"``).
  PyTorch: eager ``nn.Module``, ``torch.optim.SGD``, augmentation as tensor ops on the batch.
  ``--shape digits``: 8x8x1 images, crop padding 1, no flip (the digits configs).
* LMC point: BN recalibration over ``--lmc-train`` images (batch 64, in order, the exact cumulative
  average) and evaluation on ``--lmc-test`` images: ``tj.landscape.recalibrate`` +
  ``tj.landscape.evaluate`` with their defaults (batches per call chosen per backend and image
  size, see ``tr_jax.members``) against the same in PyTorch (``momentum=None`` BN,
  ``no_grad``, test batches of 500), plus tr_jax without the CPU compiler options ("before").

Timed calls are interleaved in a rotated order, each 0.3 s after the previous one ended (PyTorch's
OpenMP workers spin after a parallel region and would slow the next function).

Both frameworks use ``--threads`` threads (default: every core): ``torch.set_num_threads`` and XLA's
own pool. Final lines ``RESULT {shape}_name=value``; ``*_vs_torch`` > 1 means tr_jax is faster.
Without torch: ``RESULT torch_available=0`` and exit 0. On a machine shared with other jobs the
ratios move with the load (PyTorch's OpenMP threads suffer most): read the printed load average.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import tr_jax as tj
from tr_jax.landscape import bn as lbn
from tr_jax.training import StepConfig, Trainer, init_state
from tr_jax import members as mem
from tr_jax.training.steps import train_steps

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def torch_preresnet(torch, depth: int = 20, num_classes: int = 10, in_channels: int = 3):
    """The reference's PreResNet-depth (models/cifar/preresnet.py, BasicBlock) as a torch module."""
    nn, F = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self, inplanes, planes, stride):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(inplanes)
            self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.downsample = (nn.Conv2d(inplanes, planes, 1, stride, bias=False)
                               if stride != 1 or inplanes != planes else None)

        def forward(self, x):
            out = self.conv1(F.relu(self.bn1(x)))
            out = self.conv2(F.relu(self.bn2(out)))
            return out + (x if self.downsample is None else self.downsample(x))

    class PreResNet(nn.Module):
        def __init__(self):
            super().__init__()
            n, inplanes, layers = (depth - 2) // 6, 16, []
            self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
            for stage, planes in enumerate((16, 32, 64)):
                for b in range(n):
                    layers.append(Block(inplanes, planes, 2 if stage > 0 and b == 0 else 1))
                    inplanes = planes
            self.layers = nn.Sequential(*layers)
            self.bn = nn.BatchNorm2d(64)
            self.fc = nn.Linear(64, num_classes)

        def forward(self, x):
            x = F.relu(self.bn(self.layers(self.conv1(x))))
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    return PreResNet()


class TorchRun:
    """The reference's training and LMC measurement in PyTorch on uint8 NHWC tensors."""

    def __init__(self, torch, X: np.ndarray, Y: np.ndarray, mean, std, pad: int, flip: bool,
                 batch: int = 64):
        self.torch, self.F = torch, torch.nn.functional
        self.X, self.Y = torch.from_numpy(X), torch.from_numpy(Y).long()
        c = X.shape[-1]
        self.mean = torch.tensor(mean).view(1, c, 1, 1)
        self.std = torch.tensor(std).view(1, c, 1, 1)
        self.pad, self.flip = pad, flip
        self.net = torch_preresnet(torch, in_channels=c)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        self.batch, self.perm, self.pos = batch, torch.randperm(len(X)), 0

    def normalize(self, x_nhwc):
        return (x_nhwc.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std

    def augment(self, x):  # random crop (zero padding) + flip on a uint8 [B, H, W, C] batch
        t, p = self.torch, self.pad
        b, h, w, _ = x.shape
        padded = self.F.pad(x, (0, 0, p, p, p, p))
        off = t.randint(0, 2 * p + 1, (b, 2))
        rows = off[:, :1] + t.arange(h)
        cols = off[:, 1:] + t.arange(w)
        if self.flip:
            cols = t.where((t.rand(b) < 0.5)[:, None], cols.flip(1), cols)
        return padded[t.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]

    def steps(self, n: int) -> None:
        self.net.train()
        for _ in range(n):
            if self.pos + self.batch > len(self.X):
                self.perm, self.pos = self.torch.randperm(len(self.X)), 0
            idx = self.perm[self.pos:self.pos + self.batch]
            self.pos += self.batch
            x = self.normalize(self.augment(self.X[idx]))
            self.opt.zero_grad()
            loss = self.F.cross_entropy(self.net(x), self.Y[idx])
            loss.backward()
            self.opt.step()

    def lmc_point(self, Xtr, Xte, Yte) -> float:
        """Recalibrate BN on Xtr (cumulative average), then the eval-mode error on (Xte, Yte)."""
        t = self.torch
        for m in self.net.modules():
            if isinstance(m, t.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        self.net.train()
        with t.no_grad():
            for s in range(0, len(Xtr), 64):
                self.net(self.normalize(Xtr[s:s + 64]))
            self.net.eval()
            wrong = sum(int((self.net(self.normalize(Xte[s:s + 500])).argmax(1)
                             != Yte[s:s + 500]).sum()) for s in range(0, len(Xte), 500))
        for m in self.net.modules():
            if isinstance(m, t.nn.BatchNorm2d):
                m.momentum = 0.1
        return wrong / len(Xte)


def median_times(fns: dict, repeats: int, settle: float = 0.3) -> dict[str, float]:
    """Run every fn once (warm-up), then ``repeats`` interleaved rounds in a rotated order;
    median seconds each. Each timed call starts ``settle`` seconds after the previous one ended:
    PyTorch's OpenMP workers keep spinning after a parallel region and slowed whichever function
    ran right after torch (the first tr_jax entry read 20-25 % slower than the same program
    under another name, before this pause)."""
    for f in fns.values():
        f()
    names = list(fns)
    times = {n: [] for n in fns}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            time.sleep(settle)
            t = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t)
    return {n: statistics.median(v) for n, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=("cifar", "digits"), default="cifar")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=2, help="train steps per timed repeat")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--images", type=int, default=2048, help="training images (train step)")
    ap.add_argument("--lmc-train", type=int, default=2048)
    ap.add_argument("--lmc-test", type=int, default=1024)
    ap.add_argument("--no-lmc", action="store_true")
    a = ap.parse_args()
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed (an optional extra: pip install torch); nothing to compare.")
        print("RESULT torch_available=0")
        return
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__}, "
          f"{a.threads} threads, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    rng = np.random.default_rng(0)
    shape = (32, 32, 3) if a.shape == "cifar" else (8, 8, 1)
    mean, std = (MEAN, STD) if a.shape == "cifar" else ((0.5,), (0.25,))
    pad, flip = (4, True) if a.shape == "cifar" else (1, False)
    X = rng.integers(0, 256, (a.images, *shape), dtype=np.uint8)
    Y = rng.integers(0, 10, (a.images,)).astype(np.int32)
    Xj, Yj = jnp.asarray(X), jnp.asarray(Y)

    # -- train step ------------------------------------------------------------------------
    model = tj.models.preresnet(20, 10)
    v = tj.models.init(model, jax.random.key(0), shape)
    fresh = lambda: jax.tree.map(jnp.copy, init_state(  # noqa: E731  (own buffers: donated)
        v, jax.tree.map(jnp.ones_like, v["params"]), jax.random.key(1), 0.1, 5e-4))
    cfg = StepConfig(mean=mean, std=std, batch_size=64, pad=pad, flip=flip, momentum=0.9)
    k = 1  # steps per jitted call (a repeat makes ``--steps`` calls)
    raw = functools.partial(train_steps, model, cfg, n_steps=k, batch_size=64)
    cfg16 = StepConfig(**{**cfg.__dict__, "precision": "bfloat16"})
    fns = {"tr_jax": Trainer(model, cfg, "loop").train_fn(k, 64),
           "before (XLA defaults)": jax.jit(raw, donate_argnums=(0,)),
           "no donation": mem.jit(raw),
           "tr_jax bfloat16": Trainer(model, cfg16, "loop").train_fn(k, 64)}
    states = {n: fresh() for n in fns}
    n_batches = a.images // 64
    step_no = {"i": 0}

    def jax_steps(name):
        def run():
            for _ in range(a.steps):
                i = step_no["i"]
                states[name], _ = fns[name](states[name], Xj, Yj, jnp.int32(i % n_batches),
                                            jnp.int32(i // n_batches), jnp.ones((k,), jnp.float32))
                step_no["i"] += 1
            jax.block_until_ready(states[name])
        return run

    tr = TorchRun(torch, X, Y, mean, std, pad, flip)
    t0 = time.perf_counter()
    for n in fns:
        jax_steps(n)()
    print(f"compiled {len(fns)} jax train programs in {time.perf_counter() - t0:.0f}s")
    runs = {n: jax_steps(n) for n in fns}
    runs["torch"] = lambda: tr.steps(a.steps)
    med = median_times(runs, a.repeats)
    ips = {n: 64 * a.steps / s for n, s in med.items()}
    for n, r in ips.items():
        print(f"train step  {n:24s} {r:7.1f} img/s  ({1e3 * med[n] / a.steps:6.1f} ms/step)")
    res = {"train_step_jax_vs_torch": ips["tr_jax"] / ips["torch"],
           "train_step_jax_before_vs_torch": ips["before (XLA defaults)"] / ips["torch"],
           "train_step_cpu_options_speedup": ips["tr_jax"] / ips["before (XLA defaults)"],
           "train_step_donation_speedup": ips["tr_jax"] / ips["no donation"],
           "train_step_bf16_vs_fp32": ips["tr_jax bfloat16"] / ips["tr_jax"]}
    res = {f"{a.shape}_{k}": r for k, r in res.items()}

    # -- one LMC point: recalibrate BN on the train set, evaluate on the test set ----------
    if not a.no_lmc:
        Xtr, Xte = X[:a.lmc_train], rng.integers(0, 256, (a.lmc_test, *shape), dtype=np.uint8)
        Yte = rng.integers(0, 10, (a.lmc_test,)).astype(np.int32)
        Xtr_j, Xte_j, Yte_j = jnp.asarray(Xtr), jnp.asarray(Xte), jnp.asarray(Yte)
        Xtr_t, Xte_t, Yte_t = (torch.from_numpy(z) for z in (Xtr, Xte, Yte.astype(np.int64)))
        jitted = {"default": (lbn._collect_sums, lbn._eval_batch),  # tr_jax: compiler options
                  "xla defaults": (jax.jit(lbn.collect_sums, static_argnames=("model", "mean", "std")),
                                   jax.jit(lbn.batch_metrics, static_argnames=("model", "mean", "std")))}

        def jax_point(which):
            def run():
                saved = lbn._collect_sums, lbn._eval_batch
                lbn._collect_sums, lbn._eval_batch = jitted[which]
                try:
                    w = tj.landscape.recalibrate(model, v, Xtr_j, mean, std, batch_size=64)
                    return float(tj.landscape.evaluate(model, w, Xte_j, Yte_j, mean, std)["error"])
                finally:
                    lbn._collect_sums, lbn._eval_batch = saved
            return run

        med = median_times({"tr_jax": jax_point("default"),
                            "before (XLA defaults)": jax_point("xla defaults"),
                            "torch": lambda: tr.lmc_point(Xtr_t, Xte_t, Yte_t)}, a.repeats)
        for n, s in med.items():
            print(f"LMC point   {n:24s} {s:7.2f} s  ({a.lmc_train} train + {a.lmc_test} test images)")
        res[f"{a.shape}_lmc_point_jax_vs_torch"] = med["torch"] / med["tr_jax"]
        res[f"{a.shape}_lmc_point_cpu_options_speedup"] = med["before (XLA defaults)"] / med["tr_jax"]
    print(f"load average {os.getloadavg()[0]:.1f}; total {time.perf_counter() - t_start:.0f}s")
    print("RESULT torch_available=1")
    for name, value in res.items():
        print(f"RESULT {name}={value:.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
