"""Every error of `tr-jax` is one line on stderr with exit code 2 (the traceback in the workdir's
log.txt, or on the terminal with --debug), missing input files are named, and the analysis
commands refuse a cut-off or damaged cells.csv / results.csv, naming the file, the line or the
missing row, the column and the fix. Hand-built workdirs (no training)."""
import json

import numpy as np
import pandas as pd
import pytest

from tr_jax import cli, regimes
from tr_jax.errors import TableError, UserError
from tr_jax.report import load_workdir
from tr_jax.tables_io import read_table

TEMPS, DENS, SEEDS, RETRAIN = [10, 20], [0.1, 0.5], [1, 2], [1, 2]
RULE = regimes.RegimeRule().to_dict()


def _results(sick_cell=None) -> pd.DataFrame:
    """results.csv as a run writes it (dense, retrain and pair rows); ``sick_cell`` =
    (temperature, density): every member of that cell sick (NaN values), so the cell has no
    LMC / CKA / regime."""
    rows = []
    base = dict(config_hash="abc123", tr_jax_version="0.3.0", jax_version="0.10.2",
                device_kind="cpu", members_strategy="threads", knob="epochs")
    for s in SEEDS:
        for rank, t in enumerate(TEMPS):
            rows.append(dict(base, stage="dense", temperature=t, dense_seed=s, density=1.0,
                             retrain_seed=np.nan, pair="", metric="test_error",
                             value=0.03 - 0.005 * rank, sick=False))
    for s in SEEDS:
        for rank, t in enumerate(TEMPS):
            for d in DENS:
                sick = (t, d) == sick_cell
                for r in RETRAIN:
                    c = dict(base, stage="retrain", temperature=t, dense_seed=s, density=d,
                             retrain_seed=r, pair="", sick=sick)
                    rows.append(dict(c, metric="test_error",
                                     value=np.nan if sick else 0.1 + 0.01 * rank - 0.05 * d))
                    rows.append(dict(c, metric="measured_density", value=d))
                c = dict(base, stage="pair", temperature=t, dense_seed=s, density=d,
                         retrain_seed=np.nan, pair="1-2", sick=sick)
                lmc = -0.4 if (d == 0.1 and rank == 1) else -0.01
                for m, v in (("lmc", lmc), ("cka", 0.9 + 0.05 * rank), ("cka_logits", 0.9),
                             ("loss_barrier", -lmc)):
                    rows.append(dict(c, metric=m, value=np.nan if sick else v))
    return pd.DataFrame(rows)


def make_workdir(path, sick_cell=None):
    """A finished sweep's workdir: config.json with its grid, results.csv, cells.csv."""
    path.mkdir(parents=True, exist_ok=True)
    res = _results(sick_cell)
    res.to_csv(path / "results.csv", index=False)
    regimes.cells_from_results(res, RULE, n_boot=20).to_csv(path / "cells.csv", index=False)
    cfg = {"name": "synthetic", "knob": "epochs", "temperatures": TEMPS, "dataset": "digits",
           "prune": {"densities": DENS}, "dense": {"seeds": SEEDS},
           "retrain": {"seeds": RETRAIN}, "regimes": RULE}
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture
def wd(tmp_path):
    return make_workdir(tmp_path / "wd")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """tr_jax's cache folder (where a traceback goes without a workdir), one per test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("TR_JAX_CACHE_DIR", str(folder))
    return folder


def fix(wd) -> str:
    return (f"rerun `tr-jax run CONFIG --workdir {wd}` on this workdir, which rewrites the tables "
            f"from its checkpoints")


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def advise_and_report(capsys, wd) -> list[tuple[int, str]]:
    """(exit code, stderr) of `tr-jax advise W --density 0.1` and `tr-jax report W`."""
    return [run_cli(capsys, "advise", wd, "--density", "0.1"), run_cli(capsys, "report", wd)]


def assert_refused(capsys, wd, message):
    """advise and report exit 2 with exactly ``message`` (and the fix) as their one line."""
    for code, err in advise_and_report(capsys, wd):
        assert code == 2
        assert err == f"tr-jax: error: {message}; {fix(wd)}\n"


# -- one line for every error, the traceback in the log ----------------------------------------

def _boom(*a, **k):
    raise RuntimeError("boom\n  second line\n")


def test_an_unexpected_error_is_one_line_and_its_traceback_goes_to_log_txt(wd, monkeypatch,
                                                                            capsys):
    monkeypatch.setattr(cli, "_advise", _boom)
    code, err = run_cli(capsys, "advise", wd, "--density", "0.1")
    assert code == 2
    assert err == (f"tr-jax: error: unexpected RuntimeError: boom second line; traceback in "
                   f"{wd / 'log.txt'} (rerun with --debug to see it here)\n")
    log = (wd / "log.txt").read_text()
    assert f"error in `tr-jax advise {wd} --density 0.1`" in log
    assert "Traceback (most recent call last)" in log and "RuntimeError: boom" in log
    assert "in _boom" in log


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_before_or_after_the_command_prints_the_traceback(where, wd, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_advise", _boom)
    argv = ["advise", wd, "--density", "0.1"]
    argv = ["--debug"] + argv if where == "before" else argv + ["--debug"]
    code, err = run_cli(capsys, *argv)
    assert code == 2
    assert err.startswith("Traceback (most recent call last)") and "in _boom" in err
    assert err.endswith("\ntr-jax: error: unexpected RuntimeError: boom second line\n")
    assert not (wd / "log.txt").exists()


def test_an_expected_error_is_one_line_and_a_long_message_is_cut(wd, monkeypatch, capsys, cache):
    code, err = run_cli(capsys, "advise", wd, "--density", "0.3")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("tr-jax: error: density 0.3 is not in this sweep")
    assert "ValueError: density 0.3" in (wd / "log.txt").read_text()

    def long(*a, **k):
        raise UserError("\n".join(f"line {i}: " + "x" * 50 for i in range(40)))

    monkeypatch.setattr(cli, "_advise", long)
    code, err = run_cli(capsys, "advise", wd, "--density", "0.1")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("tr-jax: error: line 0: xxx") and "line 1: xxx" in err
    suffix = f"line 39: {'x' * 50} (the whole message: traceback in {wd / 'log.txt'})\n"
    assert err.endswith(suffix) and " [...] " in err and len(err) - len(suffix) < 1000
    assert "line 39: " + "x" * 50 in (wd / "log.txt").read_text()


def test_without_a_workdir_the_traceback_goes_to_the_cache_folder(tmp_path, capsys, cache):
    code, err = run_cli(capsys, "measure", tmp_path / "a", tmp_path / "b", "--dataset", "digits")
    assert code == 2
    assert err == (f"tr-jax: error: no such directory: '{tmp_path / 'a'}' (an imported "
                   f"checkpoint; make one with: tr-jax import-torch FILE --arch ... --out DIR)\n")
    assert "UserError: no such directory" in (cache / "last_error.log").read_text()


# -- missing input files -----------------------------------------------------------------------

def test_import_torch_of_a_missing_file_says_no_such_file(tmp_path, capsys):
    code, err = run_cli(capsys, "import-torch", tmp_path / "missing.pth", "--arch", "preresnet",
                        "--depth", "20", "--out", tmp_path / "X")
    assert code == 2
    assert err == (f"tr-jax: error: no such file: '{tmp_path / 'missing.pth'}' (the checkpoint "
                   f"to read: a .pth, .pth.tar or .npz file)\n")
    code, err = run_cli(capsys, "import-torch", tmp_path, "--arch", "preresnet", "--depth", "20",
                        "--out", tmp_path / "X")
    assert code == 2
    assert err == (f"tr-jax: error: '{tmp_path}' is a directory, not a checkpoint file (.pth, "
                   f".pth.tar or .npz)\n")


def test_measure_of_a_file_or_a_folder_without_meta_json_is_named(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    make = "make one with: tr-jax import-torch FILE --arch ... --out DIR"
    code, err = run_cli(capsys, "measure", tmp_path / "f", tmp_path / "d", "--dataset", "digits")
    assert code == 2
    assert err == (f"tr-jax: error: '{tmp_path / 'f'}' is a file, not an imported checkpoint "
                   f"directory; {make}\n")
    code, err = run_cli(capsys, "measure", tmp_path / "d", tmp_path / "d", "--dataset", "digits")
    assert err == (f"tr-jax: error: '{tmp_path / 'd'}' is not a tr_jax imported checkpoint (no "
                   f"meta.json); {make}\n")


# -- damaged tables ----------------------------------------------------------------------------

def _lines(path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_an_intact_table_works(wd, capsys):
    assert cli.main(["advise", str(wd), "--density", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "training epochs = 20 at density 10%: regime" in out
    assert cli.main(["report", str(wd)]) == 0 and (wd / "report.md").is_file()
    sweep = load_workdir(wd)
    assert len(sweep.cells) == 4 and len(sweep.results) == len(_results())


def test_legitimate_empty_values_are_accepted(tmp_path, capsys):
    """A cell whose members are all sick: no test error, LMC, CKA or regime (empty in cells.csv,
    NaN values in results.csv); optional columns empty too."""
    wd = make_workdir(tmp_path / "wd", sick_cell=(20, 0.5))
    cells = pd.read_csv(wd / "cells.csv")
    assert cells[["lmc", "cka", "regime"]].isna().sum().tolist() == [1, 1, 1]
    cells["bezier_mc"] = np.nan
    cells.to_csv(wd / "cells.csv", index=False)
    sweep = load_workdir(wd)
    assert sweep.cells["lmc"].isna().sum() == 1
    assert run_cli(capsys, "advise", wd, "--density", "0.1")[0] == 0


def test_cells_cut_mid_row(wd, capsys):
    path = wd / "cells.csv"
    lines = _lines(path)
    header = lines[0].rstrip("\n").split(",")
    row = lines[2].split(",")
    path.write_text("".join(lines[:2]) + ",".join(row[:7])[:-3])  # the 7th value cut as well
    assert_refused(capsys, wd, f"{path}, line 3, column {header[7]!r}: the row is cut off: 7 of "
                               f"{len(header)} fields, the values from this column on are missing")


def test_cells_cut_inside_the_last_value(wd, capsys):
    path = wd / "cells.csv"
    text = path.read_text()
    header = text.splitlines()[0].split(",")
    path.write_text(text[:-4])  # the newline and 3 characters of the last value
    assert_refused(capsys, wd, f"{path}, line 5, column {header[-1]!r}: the file ends inside "
                               f"this row (tr_jax ends every table with a newline): the row, and "
                               f"the table, are cut off")


def test_cells_emptied_or_header_only(wd, capsys):
    path = wd / "cells.csv"
    header = _lines(path)[0]
    path.write_text("")
    assert_refused(capsys, wd, f"{path}: the file is empty (no header, no rows): emptied or cut "
                               f"off")
    path.write_text(header)
    assert_refused(capsys, wd, f"{path}: a header but no rows: no cells")


def test_cells_missing_a_cell_of_the_grid(wd, capsys):
    path = wd / "cells.csv"
    lines = _lines(path)
    assert lines[3].startswith("epochs,20.0,0.1,")
    path.write_text("".join(lines[:3] + lines[4:]))
    assert_refused(capsys, wd, f"{path}: no row for the cell knob='epochs', temperature=20, "
                               f"density=0.1 of config.json's grid (1 of its 4 cells missing)")
    path.write_text("".join(lines + lines[3:4]))
    assert_refused(capsys, wd, f"{path}, line 6: a second row for the cell knob='epochs', "
                               f"temperature=20, density=0.1 (first on line 4)")


def test_cells_garbage_in_a_column(wd, capsys):
    path = wd / "cells.csv"
    cells = pd.read_csv(path).astype({"lmc": object, "regime": object, "sick_members": object})
    good = cells.copy()
    cells.loc[2, "lmc"] = "abc"
    cells.to_csv(path, index=False)
    assert_refused(capsys, wd, f"{path}, line 4, column 'lmc': 'abc' is not a number")
    cells = good.copy()
    cells.loc[1, "regime"] = "III"
    cells.to_csv(path, index=False)
    assert_refused(capsys, wd, f"{path}, line 3, column 'regime': 'III' is not 'I', 'II-A' or "
                               f"'II-B' (or empty)")
    cells = good.copy()
    cells.loc[0, "sick_members"] = None
    cells.to_csv(path, index=False)
    assert_refused(capsys, wd, f"{path}, line 2, column 'sick_members': no value (empty), must "
                               f"be a number")
    good.drop(columns=["cka"]).to_csv(path, index=False)
    assert_refused(capsys, wd, f"{path}, line 1: no column 'cka' in the header")


def test_results_damaged(wd, capsys):
    path = wd / "results.csv"
    lines = _lines(path)
    header = lines[0].rstrip("\n").split(",")
    # cut mid-row
    path.write_text("".join(lines[:10]) + lines[10][:len(",".join(lines[10].split(",")[:9]))])
    assert_refused(capsys, wd, f"{path}, line 11, column {header[9]!r}: the row is cut off: 9 of "
                               f"{len(header)} fields, the values from this column on are missing")
    # a retrained member's row missing
    res = _results()
    drop = res.index[(res["stage"] == "retrain") & (res["temperature"] == 20)
                     & (res["density"] == 0.5) & (res["dense_seed"] == 2)
                     & (res["retrain_seed"] == 1) & (res["metric"] == "test_error")]
    res.drop(index=drop).to_csv(path, index=False)
    assert_refused(capsys, wd, f"{path}: no row for the retrained member dense_seed=2, "
                               f"temperature=20, density=0.5, retrain_seed=1, metric "
                               f"'test_error' of config.json's grid (1 of its 36 rows missing)")
    # a pair's row missing
    drop = res.index[(res["stage"] == "pair") & (res["metric"] == "cka")][-1:]
    res.drop(index=drop).to_csv(path, index=False)
    assert_refused(capsys, wd, f"{path}: no row for the pair dense_seed=2, temperature=20, "
                               f"density=0.5, pair='1-2', metric 'cka' of config.json's grid "
                               f"(1 of its 36 rows missing)")
    # garbage in the value column, an unknown stage
    bad = res.astype({"value": object, "stage": object})
    bad.loc[7, "value"] = "0.1.2"
    bad.to_csv(path, index=False)
    assert_refused(capsys, wd, f"{path}, line 9, column 'value': '0.1.2' is not a number")
    bad = res.astype({"stage": object})
    bad.loc[0, "stage"] = "dens"
    bad.to_csv(path, index=False)
    assert_refused(capsys, wd, f"{path}, line 2, column 'stage': 'dens' is not 'dense', "
                               f"'retrain' or 'pair'")
    path.write_text("")
    assert_refused(capsys, wd, f"{path}: the file is empty (no header, no rows): emptied or cut "
                               f"off")


def test_the_python_readers_raise_a_table_error(wd):
    path = wd / "cells.csv"
    text = path.read_text()
    path.write_text(text[:len(text) // 2])
    with pytest.raises(TableError, match=r"cells\.csv, line \d+, column '\w+': the row is cut "
                                         r"off") as e:
        load_workdir(wd)
    assert isinstance(e.value, ValueError)
    with pytest.raises(TableError, match="tr-jax run CONFIG --workdir"):
        read_table(path, "cells")
    assert len(read_table(wd / "results.csv", "results")) == len(_results())
