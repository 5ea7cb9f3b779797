"""A dry run is a plan: it prints the plan, the estimates and the members strategy a run would use
without timing the autotuner or allocating the sweep; the autotuner itself times its candidates at
a probe of members that fits a memory budget."""
from __future__ import annotations

import os
import pathlib
import resource
import subprocess
import sys

import pytest

import tr_jax as tj
from tr_jax import autotune
from tr_jax.config import AUTOTUNE_BUDGET_S
from tr_jax.training import StepConfig

ROOT = pathlib.Path(__file__).parents[1]
MODEL = tj.models.preresnet(8, 10, 0.25)
CFG = StepConfig(mean=(0.5,), std=(0.25,), batch_size=16, pad=1, flip=False)
SHAPE = (8, 8, 1)
# Address space a dry run of figure2 / vgg_densenet may reserve: 2.5x the measured peak. On a
# 2-core CPU the fixed dry run peaks at 2.2 GiB (figure2) and 3.2 GiB (vgg_densenet) of virtual
# size (VmPeak; JAX and XLA reserve address space beyond the 0.9 / 1.8 GiB resident). Stacking
# the whole members axis to time the autotuner's candidates, as the dry run once did, needs 1296
# member states (4.3 GB for PreResNet-20, ~220 GB for VGG-16) plus their programs: figure2's old
# dry run reached 22 GB resident; under this limit it did not finish in 240 s. Each host thread
# reserves a stack and a malloc arena: a margin per core.
AS_LIMIT = 8 * 2**30 + 128 * 2**20 * (os.cpu_count() or 1)
TIMEOUT_S = 300


def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path))
    return tmp_path / autotune.CACHE_FILE


@pytest.mark.parametrize("config,members", [("figure2", 1296), ("vgg_densenet", 1296)])
def test_dry_run_of_a_large_sweep_is_a_plan_in_bounded_memory(config, members, tmp_path):
    """``tr-jax run CONFIG --dry-run`` of Figure 2's sweeps (1 296 members of PreResNet-20 /
    VGG-16 on CIFAR shapes; no CIFAR data needed) finishes under an address-space limit and a
    timeout, and says which members strategy the run would use, measuring nothing."""
    env = dict(os.environ)
    env[autotune.CACHE_ENV] = str(tmp_path)
    env["JAX_PLATFORMS"] = "cpu"  # an accelerator runtime reserves address space of its own
    proc = subprocess.run(
        [sys.executable, "-m", "tr_jax.cli", "run", f"configs/{config}.py", "--dry-run"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
        preexec_fn=_limited)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert f"config {config!r}" in out
    assert f"retrain: {members} members" in out and "member-steps" in out
    assert "retrain estimate:" in out and "MiB per member-step" in out
    assert (f"members strategy M={members}: auto, measured at the start of the run, "
            f"~{AUTOTUNE_BUDGET_S:.0f} s") in out
    assert f" of {members} members: memory budget" in out or f"at all {members}" in out
    assert not (tmp_path / autotune.CACHE_FILE).exists()  # nothing was timed, nothing cached


def test_autotune_times_a_probe_that_fits_the_memory_budget(cache):
    """With a budget that holds only 3 members' steps, 64 members are timed at 2 (the largest
    power of two that fits), on the real timing path; the probe is in the table (as stacked),
    the Choice, describe() and the cache key."""
    per = autotune.one_member_step(MODEL, CFG, SHAPE)["bytes_per_member"]
    got = autotune.choose(MODEL, CFG, SHAPE, 64, ("vmap",), chunk_steps=1, repeats=1,
                          budget_s=1e9, memory_budget_bytes=3.5 * per)
    assert got.probe == 2 and got.table[0]["members"] == 2  # not the whole members axis
    assert got.table[0]["member_steps_s"] > 0
    line = autotune.describe(got, 64)
    assert "timed at 2 of 64 members: memory budget" in line and "per member" in line
    # the cache key holds the probe: the same shape under a budget that fits all 64 is not cached
    assert autotune.lookup(MODEL, CFG, SHAPE, 64, ("vmap",), chunk_steps=1,
                           memory_budget_bytes=3.5 * per).probe == 2
    assert autotune.lookup(MODEL, CFG, SHAPE, 64, ("vmap",), chunk_steps=1,
                           memory_budget_bytes=100 * per) is None
    fits = autotune.planned(MODEL, CFG, SHAPE, 64, ("vmap",), chunk_steps=1, budget_s=30.0,
                            memory_budget_bytes=100 * per)
    assert "measured at the start of the run" in fits and "at all 64 members" in fits


def test_gemm_is_timed_at_what_fits_its_own_footprint(cache, monkeypatch):
    """gemm's im2col step needs more memory than the plain step: under a budget that fits 4 plain
    members it is timed at fewer, and its row says so."""
    timed = []

    def fake(model, step_cfg, image_shape, members, strategy, chunk_steps, repeats=2,
             give_up=None):
        timed.append((strategy, members))
        return {"members": members, "member_steps_s": 10.0 * members, "seconds": 0.01,
                "compile_s": 0.0}

    monkeypatch.setattr(autotune, "measure", fake)
    plain = autotune.one_member_step(MODEL, CFG, SHAPE)["bytes_per_member"]
    gemm = autotune.one_member_step(MODEL, CFG, SHAPE, strategy="gemm")["bytes_per_member"]
    assert gemm > plain
    budget = 4.5 * plain
    got = autotune.choose(MODEL, CFG, SHAPE, 64, ("vmap", "gemm"), budget_s=1e9,
                          memory_budget_bytes=budget)
    assert dict(timed) == {"vmap": 4, "gemm": min(4, autotune._fit(gemm, budget, 64))}
    assert dict(timed)["gemm"] * gemm <= budget and got.probe == 4
    if dict(timed)["gemm"] < 4:
        assert f"(at {dict(timed)['gemm']} members)" in autotune.describe(got, 64)


def test_dry_run_times_nothing_and_shows_the_runs_cached_choice(tmp_path, cache, monkeypatch):
    """The dry run never calls the autotuner's timing; once a run has chosen (here with a faked
    timing), the dry run of the same config finds that choice in the cache: both compute the same
    key (the run's step settings, its probe) without the dry run reading the data."""
    from tr_jax.config import load_config
    from tr_jax.sweep.estimate import dry_run
    from tr_jax.sweep import setup

    def no_timing(*a, **k):
        raise AssertionError("the dry run timed a members strategy")

    monkeypatch.setattr(autotune, "measure", no_timing)
    cfg = load_config(str(ROOT / "configs" / "tiny.py"), ["run.autotune=True"])
    before = dry_run(cfg)
    assert "members strategy M=8: auto, measured at the start of the run" in before
    assert "timed at all 8 members" in before and not cache.exists()

    def fake(model, step_cfg, image_shape, members, strategy, chunk_steps, repeats=2,
             give_up=None):
        speed = {"vmap": 50.0}.get(strategy, 10.0)
        return {"members": members, "member_steps_s": speed, "seconds": 0.01, "compile_s": 0.0}

    monkeypatch.setattr(autotune, "measure", fake)
    p = setup(cfg, str(tmp_path / "w"), progress=False, echo=lambda s: None)
    assert p.strategy == "vmap"
    monkeypatch.setattr(autotune, "measure", no_timing)
    after = dry_run(cfg)
    assert "members strategy M=8: vmap (measured fastest" in after and ", cached)" in after
    assert "timed at all 8 members" in after

    off = dry_run(load_config(str(ROOT / "configs" / "tiny.py"), []), measure=False)
    assert "autotuning off by run.autotune=False" in off
    slow = dry_run(load_config(str(ROOT / "configs" / "tiny.py"), ["run.autotune=True",
                                                                  "run.autotune_budget_s=45"]),
                   measure=False)
    assert "measured at the start of the run, ~45 s (run.autotune_budget_s" in slow
