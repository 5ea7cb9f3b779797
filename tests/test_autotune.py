"""``tr_jax.autotune``: the measured ``auto`` members strategy: the cache is written
and reused, a fixed strategy wins, candidates are validated, the budget skips with a reason."""
from __future__ import annotations

import json

import pytest

import tr_jax as tj
from tr_jax import autotune
from tr_jax.training import StepConfig

MODEL = tj.models.preresnet(8, 10, 0.25)
CFG = StepConfig(mean=(0.5,), std=(0.25,), batch_size=16, pad=1, flip=False)
SHAPE = (8, 8, 1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path))
    return tmp_path / autotune.CACHE_FILE


@pytest.fixture
def fake_measure(monkeypatch):
    """``measure`` replaced by a counter: gemm is fastest, every call costs no time."""
    calls = []
    speed = {"gemm": 300.0, "vmap": 200.0, "threads": 100.0, "loop": 90.0}

    def fake(model, step_cfg, image_shape, members, strategy, chunk_steps, repeats=2,
             give_up=None):
        calls.append(strategy)
        first = autotune.time.perf_counter()  # a fake clock in test_budget_skips_with_reason
        if give_up is not None and give_up(first):
            return {"compile_s": first}
        return {"member_steps_s": speed.get(strategy, 10.0), "seconds": 0.01, "compile_s": 0.0}

    monkeypatch.setattr(autotune, "measure", fake)
    return calls


def test_cache_written_and_reused(cache, fake_measure):
    first = autotune.choose(MODEL, CFG, SHAPE, 2, ("loop", "vmap", "gemm"), budget_s=1e9)
    assert first.strategy == "gemm" and not first.cached
    assert sorted(fake_measure) == ["gemm", "loop", "vmap"]
    assert len(json.loads(cache.read_text())) == 1
    hit = autotune.lookup(MODEL, CFG, SHAPE, 2, ("loop", "vmap", "gemm"))
    assert hit.strategy == "gemm" and hit.cached
    assert autotune.lookup(MODEL, CFG, SHAPE, 3, ("loop", "vmap", "gemm")) is None
    again = autotune.choose(MODEL, CFG, SHAPE, 2, ("loop", "vmap", "gemm"), budget_s=1e9)
    assert again.cached and again.strategy == "gemm" and len(fake_measure) == 3  # no timing
    autotune.choose(MODEL, CFG, SHAPE, 4, ("loop", "vmap", "gemm"), budget_s=1e9)  # new M
    assert len(fake_measure) == 6 and len(json.loads(cache.read_text())) == 2
    line = autotune.describe(again, 2)
    assert "gemm" in line and "cached" in line and "vmap 200.0/s" in line


def test_fixed_strategy_wins(cache, fake_measure):
    got = autotune.resolve_strategy("vmap", MODEL, CFG, SHAPE, 2)
    assert got.strategy == "vmap" and got.table == [] and fake_measure == []
    assert not cache.exists()
    with pytest.raises(ValueError, match="'vmapp'"):
        autotune.resolve_strategy("vmapp", MODEL, CFG, SHAPE, 2)
    assert autotune.resolve_strategy("auto", MODEL, CFG, SHAPE, 2, candidates=("loop", "gemm"),
                                     budget_s=1e9).strategy == "gemm"


@pytest.mark.parametrize("bad,match", [
    ((), "non-empty"), ("vmap", "non-empty"), (("vmap", "auto"), "'auto' cannot"),
    (("vmap", "grouped"), "'grouped'"), (("vmap", "vmap"), "'vmap' is listed twice"),
    (("map_chunked:0",), "'map_chunked:0'")])
def test_candidates_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        autotune.check_candidates(bad)


def test_gemm_candidate_needs_conv_impl():
    import flax.linen as nn
    with pytest.raises(ValueError, match="conv_impl"):
        autotune.check_candidates(("vmap", "gemm"), nn.Dense(3))


def test_budget_skips_with_reason(cache, fake_measure, monkeypatch):
    t = iter(range(10, 1000, 10))  # every perf_counter call: 10 s later
    monkeypatch.setattr(autotune.time, "perf_counter", lambda: float(next(t)))
    got = autotune.choose(MODEL, CFG, SHAPE, 2, ("vmap", "gemm", "loop"), budget_s=5.0)
    default = autotune.mem.default_strategy()
    assert got.strategy == default and "exceed the budget" in got.reason
    assert len(fake_measure) == 1  # only the first (the default, if listed) was timed
    assert autotune.choose(MODEL, CFG, SHAPE, 2, ("vmap", "gemm", "loop"),
                           budget_s=5.0).cached  # the skip is cached too


def test_real_measurement_tiny(cache):
    """The real timing path (Trainer's per-member program) on a tiny model: M=2, 1 step, 1
    repeat (the stacked programs run through the same Trainer, tested in test_gemm.py)."""
    got = autotune.choose(MODEL, CFG, SHAPE, 2, ("loop",), chunk_steps=1, repeats=1,
                          budget_s=1e9)
    assert got.strategy == "loop" and got.table[0]["member_steps_s"] > 0


def test_device_check_script_parses():
    """experiments/device_check.sh is valid bash (its CPU fallback is timed in README, not here)."""
    import pathlib
    import shutil
    import subprocess
    script = pathlib.Path(__file__).parents[1] / "experiments" / "device_check.sh"
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    subprocess.run([bash, "-n", str(script)], check=True)


def test_a_sweep_with_auto_uses_the_autotuners_choice_and_logs_it(tmp_path, monkeypatch):
    """``run.members_strategy="auto"``: the sweep asks the autotuner for the retraining's program
    shape (its own StepConfig, at most 8 steps per timed call) and logs the choice with its
    alternatives; a fixed strategy never asks."""
    import pathlib

    from tr_jax.config import load_config
    from tr_jax.sweep import setup
    tiny = str(pathlib.Path(__file__).parents[1] / "configs" / "tiny.py")
    asked = []

    def fake_choose(model, step_cfg, image_shape, members, candidates=None, **kw):
        asked.append((members, tuple(candidates), kw["chunk_steps"], step_cfg.batch_size,
                      kw["budget_s"]))
        return autotune.Choice("vmap", [{"strategy": "vmap", "member_steps_s": 9.0}], "faked")

    monkeypatch.setattr(autotune, "choose", fake_choose)
    p = setup(load_config(tiny, ["run.autotune=True", "run.autotune_budget_s=7"]),
              str(tmp_path / "a"), progress=False, echo=lambda s: None)
    assert p.strategy == "vmap" and p.stacked
    assert asked == [(8, ("threads", "loop", "vmap", "gemm"), 1, 256, 7.0)]
    assert "members strategy M=8: vmap (faked); member-steps/s: vmap 9.0/s" in (
        tmp_path / "a" / "log.txt").read_text()
    fixed = setup(load_config(tiny, ["run.members_strategy=loop", "run.autotune=True"]),
                  str(tmp_path / "b"), progress=False, echo=lambda s: None)
    assert fixed.strategy == "loop" and len(asked) == 1
    off = setup(load_config(tiny, []), str(tmp_path / "c"), progress=False,
                echo=lambda s: None)  # configs/tiny.py: run.autotune=False
    assert off.strategy == tj.members.default_strategy() and len(asked) == 1
    assert "autotuning off by run.autotune=False" in (tmp_path / "c" / "log.txt").read_text()
