"""Partial results of a sweep still measuring (cells.partial.csv, summary.partial.txt), the report
of such a workdir (its banner) and the report's training curves from metrics.jsonl."""
import json
import pathlib

import numpy as np
import pandas as pd
import pytest

from tr_jax import plots, regimes
from tr_jax.config import load_config, to_json
from tr_jax.errors import TableError
from tr_jax.report import load_workdir, write_report

ROOT = pathlib.Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
TEMPS, DENSITIES, SEEDS = (1, 2), (0.1, 0.5), (1, 2)
KNOB = load_config(TINY).knob


def _results(cells=((1, 0.1),)) -> pd.DataFrame:
    """A results table of the tiny grid with the given (temperature, density) cells measured."""
    base = {"config_hash": "abc", "knob": KNOB}
    rows = [{**base, "stage": "dense", "temperature": t, "dense_seed": 1, "density": 1.0,
             "retrain_seed": np.nan, "pair": "", "metric": "test_error", "value": 0.1 * t,
             "sick": False} for t in TEMPS]
    for k, (t, d) in enumerate(cells):
        for r in SEEDS:
            rows.append({**base, "stage": "retrain", "temperature": t, "dense_seed": 1,
                         "density": d, "retrain_seed": r, "pair": "", "metric": "test_error",
                         "value": 0.2 + 0.01 * r + 0.1 * k, "sick": False})
        for metric, v in (("lmc", 0.05 * (k + 1)), ("cka", 0.9), ("cka_logits", 0.8),
                          ("loss_barrier", 0.3)):
            rows.append({**base, "stage": "pair", "temperature": t, "dense_seed": 1,
                         "density": d, "retrain_seed": np.nan, "pair": "1-2", "metric": metric,
                         "value": v, "sick": False})
    return pd.DataFrame(rows)


@pytest.fixture
def partial_wd(tmp_path):
    """A workdir of the tiny config stopped while measuring: 1 of its 4 cells measured."""
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "config.json").write_text(to_json(load_config(TINY)))
    cells = regimes.cells_from_results(_results())
    cells["partial"] = True
    cells.to_csv(wd / "cells.partial.csv", index=False)
    return wd


def _epoch(stage, program, epoch, temps, dens, seeds, errs):
    n = len(errs)
    return {"t": 1.0 + epoch, "kind": "epoch", "stage": stage, "program": program,
            "epoch": epoch, "epochs": 2, "wall_s": 1.0, "member_steps_s": 1.0, "images_s": 1.0,
            "members": {"member": list(range(n)), "dense_seed": list(seeds),
                        "temperature": list(temps), "density": list(dens),
                        "retrain_seed": [None if d is None else 1 for d in dens],
                        "train_loss": [1.0] * n, "train_error": [0.5] * n,
                        "test_error": list(errs)}}


def _metrics_lines() -> list[str]:
    """metrics.jsonl of the tiny grid: dense (2 members: temperatures 1, 2) and retraining (8
    members, (t, d, r)-major) for 2 epochs, a chunk line, a cut-off last line."""
    recs = [_epoch("dense", "dense_p0", e, TEMPS, [None, None], [1, 1], [0.5 / e, 0.6 / e])
            for e in (1, 2)]
    temps = [t for t in TEMPS for _ in DENSITIES for _ in SEEDS]
    dens = [d for _ in TEMPS for d in DENSITIES for _ in SEEDS]
    errs1 = [None] * 8  # not evaluated in epoch 1
    errs2 = [0.1 * (i + 1) for i in range(8)]
    recs += [_epoch("retrain", "retrain_p0", 1, temps, dens, [1] * 8, errs1),
             _epoch("retrain", "retrain_p0", 2, temps, dens, [1] * 8, errs2),
             {"t": 9.0, "kind": "chunk", "stage": "measure", "program": "lmc", "chunk": 1,
              "chunks": 4, "wall_s": 1.0, "units": 1}]
    return [json.dumps(r) for r in recs] + ['{"t": 10, "kind": "epo']


def test_report_of_a_partial_workdir_has_the_banner(partial_wd, tmp_path):
    sw = load_workdir(partial_wd, partial_ok=True)
    assert sw.partial == (1, 4) and sw.results is None
    with pytest.raises(ValueError, match="cells.csv not found"):  # other readers: finished only
        load_workdir(partial_wd)
    paths = write_report(partial_wd, tmp_path / "out")
    md, html = paths["markdown"].read_text(), paths["html"].read_text()
    want = (f"Partial results: 1 of 4 cells; the run is still going or was stopped — rerun "
            f"`tr-jax run CONFIG --workdir {partial_wd}` to finish it")
    assert want in md and "Partial results: 1 of 4 cells" in html
    assert paths["partial"].startswith("Partial results: 1 of 4 cells")
    assert "## Training curves" in md and "No metrics.jsonl" in md


def test_a_finished_workdir_has_no_banner(partial_wd, tmp_path):
    cells = regimes.cells_from_results(_results([(t, d) for t in TEMPS for d in DENSITIES]))
    cells.to_csv(partial_wd / "cells.csv", index=False)  # cells.csv wins over the partial file
    assert load_workdir(partial_wd, partial_ok=True).partial is None
    paths = write_report(partial_wd, tmp_path / "out")
    assert paths["partial"] is None and "Partial results" not in paths["markdown"].read_text()


def test_a_damaged_partial_table_is_refused(partial_wd):
    text = (partial_wd / "cells.partial.csv").read_text()
    (partial_wd / "cells.partial.csv").write_text(text[:-5])  # cut off inside its row
    with pytest.raises(TableError, match="cells.partial.csv"):
        load_workdir(partial_wd, partial_ok=True)


def test_training_curves_from_metrics_jsonl(partial_wd, tmp_path):
    (partial_wd / "metrics.jsonl").write_text("\n".join(_metrics_lines()))
    from tr_jax.sweep.metrics import read_metrics
    records = [json.loads(x) for x in _metrics_lines()[:-1]]
    table = read_metrics(partial_wd / "metrics.jsonl")
    for data in (records, table):
        pts = plots.epoch_points(data, "retrain")
        assert {p["epoch"] for p in pts} == {2}  # epoch 1 not evaluated (null)
        # temperature 1, density 0.5: members 2, 3 (errors 0.3, 0.4)
        sel = [p["test_error"] for p in pts if p["temperature"] == 1 and p["density"] == 0.5]
        assert np.isclose(np.mean(sel), 0.35)
        assert len(plots.epoch_points(data, "dense")) == 4
        for stage in ("dense", "retrain"):
            p = plots.training_curves(data, tmp_path / f"{stage}.png", stage=stage)
            assert p is not None and p.read_bytes()[:4] == b"\x89PNG"
    assert plots.training_curves([], tmp_path / "none.png") is None
    paths = write_report(partial_wd, tmp_path / "out")
    md = paths["markdown"].read_text()
    assert "## Training curves" in md and "No metrics.jsonl" not in md
    names = {p.name for p in paths["figures"]}
    assert {"training_dense.png", "training_retrain.png"} <= names


def test_a_stopped_run_has_partial_tables_and_resumes(tmp_path, monkeypatch):
    """The tiny config stopped right after its first LMC chunk commits (1 of 4 cells measured):
    cells.partial.csv and summary.partial.txt hold that cell, the report shows it with the
    banner; resumed, the run removes them and its cells.csv has the same numbers for it."""
    from tr_jax.sweep import partial
    from tr_jax.sweep import run as sweep_run

    class Stop(Exception):
        pass

    real = partial.committed

    def stopping(pipe, stage, items, done):
        real(pipe, stage, items, done)
        if stage == "lmc":
            raise Stop

    monkeypatch.setattr(partial, "committed", stopping)
    cfg = load_config(TINY)
    wd = tmp_path / "wd"
    with pytest.raises(Stop):
        sweep_run(cfg, str(wd), progress=False, echo=lambda _: None)
    monkeypatch.undo()
    assert not (wd / "cells.csv").exists()
    part = pd.read_csv(wd / partial.CELLS)
    assert len(part) == 1 and part["partial"].all()
    assert (wd / partial.SUMMARY).read_text().splitlines()[0] == (
        "PARTIAL: 1 of 4 cells measured; the run is still going or was stopped")
    paths = write_report(wd, tmp_path / "out")
    assert "Partial results: 1 of 4 cells" in paths["markdown"].read_text()

    sweep_run(cfg, str(wd), progress=False, echo=lambda _: None)
    assert not (wd / partial.CELLS).exists() and not (wd / partial.SUMMARY).exists()
    final = pd.read_csv(wd / "cells.csv")
    assert "partial" not in final.columns
    merged = part.merge(final, on=["knob", "temperature", "density"], suffixes=("_p", ""))
    assert len(merged) == 1
    for m in ("test_error", "lmc", "cka", "cka_logits", "loss_barrier", "dense_test_error",
              "sick_members"):
        for col in (m, f"{m}_lo", f"{m}_hi"):
            if col in final.columns:
                np.testing.assert_array_equal(merged[col + "_p"], merged[col], err_msg=col)
