"""Growing a finished sweep: a config that only adds temperatures, densities or seeds computes
only the new members; the old members' numbers are unchanged (their keys fold coordinate values,
never grid indices)."""
from __future__ import annotations

import pathlib

import pandas as pd
import pytest

from tr_jax import cli

TINY = str(pathlib.Path(__file__).parents[1] / "configs" / "tiny.py")
BASE = ["temperatures=(1,)", "dense.epochs=1", "prune.densities=(0.5,)", "retrain.epochs=1",
        "measure.test_error_last_epochs=1", "measure.lmc_points=2", "measure.cka_images=64",
        "measure.hessian.enabled=True", "measure.hessian.max_probes=2", "measure.hessian.eig_iters=2"]
GROWN = ["temperatures=(1, 2)", "dense.epochs=2", "prune.densities=(0.2, 0.5)",
         "retrain.seeds=(1, 2, 3)"]


def _run(wd, sets) -> int:
    return cli.main(["run", TINY, "--workdir", str(wd), "--no-progress",
                     *[a for s in sets for a in ("--set", s)]])


def _rows(results: pd.DataFrame) -> pd.DataFrame:
    keys = ["stage", "temperature", "dense_seed", "density", "retrain_seed", "pair", "metric"]
    return results.set_index(keys)["value"].sort_index()


def test_a_grown_sweep_computes_only_the_new_members_and_keeps_the_old_numbers(tmp_path, capsys):
    wd = tmp_path / "w"
    assert _run(wd, BASE) == 0
    before = _rows(pd.read_csv(wd / "results.csv"))
    capsys.readouterr()
    assert _run(wd, BASE + GROWN) == 0
    out = capsys.readouterr().out
    log = (wd / "log.txt").read_text()
    assert "growing the finished sweep: adds" in log and "retrain.seeds [3]" in log
    # 1 x 2 x 2 x 3 = 12 members, 2 of them from the finished run
    assert "retrain (lr_rewinding): 10 members" in out and "2 from the finished run" in out
    after = _rows(pd.read_csv(wd / "results.csv"))
    assert len(after) > len(before)
    pd.testing.assert_series_equal(after.loc[before.index], before)  # bit for bit
    cells = pd.read_csv(wd / "cells.csv")
    assert len(cells) == 4 and cells.lmc.notna().all() and cells.hessian_trace.notna().all()
    assert not any(p.name.endswith("@grown") for p in (wd / "stages").iterdir())
    assert not (wd / "grown.json").exists()


def test_only_finished_sweeps_grow_and_only_along_the_grid(tmp_path, capsys):
    wd = tmp_path / "w"
    (wd / "stages").mkdir(parents=True)
    from tr_jax.config import load_config, to_json
    from tr_jax.sweep.store import Workdir
    Workdir(wd, to_json(load_config(TINY, BASE)))  # an unfinished run of BASE
    with pytest.raises(ValueError, match="unfinished run; a sweep can only grow"):
        Workdir(wd, to_json(load_config(TINY, BASE + GROWN)))
    (wd / "cells.csv").write_text("finished\n")
    with pytest.raises(ValueError, match=r"retrain\.lr: 0\.1 -> 0\.2"):
        Workdir(wd, to_json(load_config(TINY, BASE + GROWN + ["retrain.lr=0.2"])))
    with pytest.raises(ValueError, match=r"prune\.densities"):  # a density dropped
        Workdir(wd, to_json(load_config(TINY, BASE + ["prune.densities=(0.2,)"])))
