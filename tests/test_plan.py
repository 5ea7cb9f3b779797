"""The planner (issue: sweeps at scale): members, shape groups, programs, budgets, knob lengths."""
import pathlib

import pytest

from tr_jax.config import load_config
from tr_jax.sweep.plan import make_plan, members_for_budget, section_length

CONFIGS = pathlib.Path(__file__).parents[1] / "configs"


def test_figure2_plan_is_the_paper_grid():
    cfg = load_config(CONFIGS / "figure2.py")
    plan = make_plan(cfg, 50000)
    assert len(plan.dense_members) == 3                   # one full-schedule run per dense seed
    assert len(plan.retrain_members) == 16 * 9 * 3 * 3 == 1296
    assert len(plan.pairs) == 16 * 9 * 3 * 3              # 3 pairs per (seed, epoch, density)
    (d,) = plan.stage_programs("dense")
    assert (d.epochs, d.steps, d.batch_size) == (160, 160 * 782, 64)  # drop_last=False: 782 steps
    (r,) = plan.stage_programs("retrain")
    assert len(r.members) == 1296 and r.steps == 160 * 782


def test_batch_size_knob_groups_by_shape_and_counts_iterations():
    cfg = load_config(CONFIGS / "batch_size.py")
    plan = make_plan(cfg, 50000)
    progs = plan.stage_programs("dense")
    assert [p.batch_size for p in progs] == [16, 32, 64, 128, 256, 512]   # one group per shape
    assert all(len(p.members) == 3 for p in progs)                        # the 3 dense seeds
    # batch-size knob: epochs = ceil(62400 / floor(50000 / B)), exactly 62 400 steps
    assert [p.epochs for p in progs] == [20, 40, 80, 160, 320, 644]
    assert all(p.steps == 62400 for p in progs)
    (r,) = plan.stage_programs("retrain")
    assert (r.batch_size, r.epochs, r.steps) == (128, 160, 62400)


@pytest.mark.parametrize("knob,temps", [("lr", (0.2, 0.1)), ("sam_rho", (0.1, 0.5)),
                                        ("weight_decay", (1e-4, 5e-4))])
def test_per_member_hyperparameter_knobs_are_one_program(knob, temps):
    cfg = load_config(CONFIGS / "figure2.py", [f"knob={knob}", f"temperatures={temps}"])
    plan = make_plan(cfg, 50000)
    (d,) = plan.stage_programs("dense")
    assert len(d.members) == 3 * 2 and d.epochs == 160
    assert plan.dense_members[:2] == ((1, temps[0]), (1, temps[1]))


def test_max_members_and_memory_budget_cut_programs():
    cfg = load_config(CONFIGS / "figure2.py", ["run.max_members=500"])
    progs = make_plan(cfg, 50000).stage_programs("retrain")
    assert [len(p.members) for p in progs] == [500, 500, 296]
    assert [p.name for p in progs] == ["retrain_p0", "retrain_p1", "retrain_p2"]
    flat = [m for p in progs for m in p.members]
    assert flat == list(range(1296))                       # programs keep member order
    assert members_for_budget(200 * 2**20, 1 * 2**30) == 5
    assert members_for_budget(2 * 2**30, 1 * 2**30) == 1   # at least one


def test_section_length_epoch_and_iteration():
    cfg = load_config(CONFIGS / "figure2.py")
    assert section_length(cfg.dense, 1437, 64) == (160, 160 * 23)
    cfg = load_config(CONFIGS / "batch_size.py")
    assert section_length(cfg.dense, 1437, 128) == (-(-62400 // 11), 62400)
    with pytest.raises(ValueError, match="batch size 2048 is larger than the training set"):
        section_length(cfg.dense, 1437, 2048)


def test_bad_knob_values_are_named():
    with pytest.raises(ValueError, match="temperature 0.0 \\(a dense learning rate\\)"):
        load_config(CONFIGS / "figure2.py", ["knob=lr", "temperatures=(0.1, 0.0)"])
    with pytest.raises(ValueError, match="temperature 12.5 \\(a dense batch size\\)"):
        load_config(CONFIGS / "figure2.py", ["knob=batch_size", "temperatures=(64, 12.5)"])
    with pytest.raises(ValueError, match="dense.iterations >= 1"):
        load_config(CONFIGS / "figure2.py", ["dense.schedule=iteration", "knob=lr",
                                             "temperatures=(0.1,)"])
    with pytest.raises(ValueError, match="knob 'tempo' is not supported"):
        load_config(CONFIGS / "figure2.py", ["knob=tempo"])


def test_every_config_in_configs_validates():
    for path in sorted(CONFIGS.glob("*.py")):
        cfg = load_config(path)
        make_plan(cfg, 50000 if cfg.dataset != "digits" else 1437)
