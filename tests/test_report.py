"""tr_jax.report and the `tr-jax advise` / `tr-jax report` commands on hand-built workdirs
(cells.csv, results.csv, config.json written by the test; no training)."""
import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from tr_jax import cli, regimes
from tr_jax.report import load_workdir, match_density, write_report

EPOCHS = [10.0, 20.0, 40.0, 80.0]
DENS = [0.05, 0.1, 0.2, 0.5]
RULE = regimes.RegimeRule().to_dict()


def barrier(knob_rank, density, seed):
    """Planted Regime I: low density and long training; seed 2 at 10% only from rank 3 on
    (so the transition's location differs between the dense seeds)."""
    if density > 0.1:
        return False
    return knob_rank >= (3 if (seed == 2 and density == 0.1) else 2)


def make_results(knob="epochs", temps=EPOCHS, seeds=(1, 2), optional=False):
    rows = []
    base = dict(config_hash="abc123", tr_jax_version="0.1.0", knob=knob)
    for seed in seeds:
        for rank, t in enumerate(temps):
            rows.append(dict(base, stage="dense", temperature=t, dense_seed=seed, density=1.0,
                             retrain_seed=np.nan, pair="", metric="test_error",
                             value=0.03 - 0.005 * rank))
            for d in DENS:
                bad = barrier(rank, d, seed)
                err = 0.05 + 0.1 * (1 - d) + (0.015 + 0.01 * (rank - 2) if bad else -0.004 * rank)
                for r in (1, 2):
                    coords = dict(base, stage="retrain", temperature=t, dense_seed=seed,
                                  density=d, retrain_seed=r, pair="")
                    rows.append(dict(coords, metric="test_error", value=err + 0.001 * r))
                    rows.append(dict(coords, metric="measured_density", value=d))
                    if optional:
                        rows.append(dict(coords, metric="hessian_trace", value=50.0 + t))
                coords = dict(base, stage="pair", temperature=t, dense_seed=seed, density=d,
                              retrain_seed=np.nan, pair="1-2")
                lmc = -0.4 if bad else -0.01
                rows += [dict(coords, metric="lmc", value=lmc),
                         dict(coords, metric="cka", value=[0.90, 0.93, 0.96, 0.99][rank]),
                         dict(coords, metric="cka_logits", value=0.9),
                         dict(coords, metric="loss_barrier", value=-lmc)]
                if optional:
                    rows.append(dict(coords, metric="bezier_mc", value=lmc / 2))
    return pd.DataFrame(rows)


def make_workdir(path, knob="epochs", temps=EPOCHS, seeds=(1, 2), optional=False, sick=False,
                 config=True, results=True):
    path.mkdir(parents=True, exist_ok=True)
    res = make_results(knob, temps, seeds, optional)
    cells = regimes.cells_from_results(res, RULE, n_boot=50)
    cells = cells[list(cells.columns[:list(cells.columns).index("test_error_lo")])]  # as 0.2.0
    cells["regime"] = regimes.classify(cells, RULE)
    cells["advice"] = cells["regime"].map(regimes.advice)
    cells["config_hash"] = "abc123"
    if sick:
        cells["jax_version"] = "0.10.2"
        cells["device_kind"] = "cpu"
        cells["sick_members"] = 0
        cells.loc[cells.index[0], "sick_members"] = 1
    cells.to_csv(path / "cells.csv", index=False)
    if results:
        res.to_csv(path / "results.csv", index=False)
    if config:
        cfg = {"name": "synthetic", "knob": knob, "dataset": "digits",
               "model": {"arch": "preresnet", "depth": 8, "width": 1.0},
               "dense": {"seeds": list(seeds)}, "retrain": {"seeds": [1, 2], "mode": "lr_rewinding"},
               "regimes": RULE}
        (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    wd = make_workdir(tmp_path_factory.mktemp("sweep") / "wd", sick=True)
    paths = write_report(wd, density="5%", dpi=40)
    return wd, paths


SECTIONS = ["Provenance", "The three regimes of this sweep", "Regimes", "Phase diagrams",
            "Transition per density",
            "The dichotomy: does a hotter dense model help at low density and hurt at high density?",
            "Case study 1: raise or lower the temperature?",
            "Case study 2: which model of the family to prune?",
            "Case study 3: tuning SAM's rho for pruning"]


def test_report_has_every_section(report):
    wd, paths = report
    assert paths["html"] == wd / "report.html" and paths["markdown"] == wd / "report.md"
    html = paths["html"].read_text()
    md = paths["markdown"].read_text()
    for s in SECTIONS:
        assert f"<h2>{s.replace(chr(39), '&#x27;')}</h2>" in html, s
        assert f"\n## {s}\n" in md, s
    assert "Fitted thresholds" not in md  # no labels given
    # provenance: config name, hash, versions, device, sick members, dates
    for text in ("synthetic", "abc123", "0.10.2", "device", "cells with sick members",
                 "1 of 16", "report written", "sweep finished"):
        assert text in md, text
    # regime table: the planted cells (html cells coloured by regime)
    assert "| 80 | I 17.15% | I 16.65% | II-B 11.95% | II-B 8.95% |" in md
    assert "| 10 | II-A 14.65% (sick: 1) |" in md
    assert html.count("<td style=\"background:") == 16
    # transition with seed uncertainty: 10% column at 30 (seed 1) and 60 (seed 2)
    assert "| epochs | 10% | 20 | 40 | 45 | 21.21 |" in md
    # case study 1 at the coldest temperature, advice spelled out for 5%, accuracy sentence
    assert "### Density 5% (epochs)" in md
    assert "advice: raise temperature -> try training epochs = 40" in md
    assert re.search(r"The advice was right in \d+ of \d+ checkable cells", md)
    # case study 2: selectors' regret per density and the mean row
    assert "| density | lmc_cka |" in md and "| mean |" in md
    # uncertainty: intervals and regime confidences (rebuilt from results.csv for a cells.csv
    # without them), the dichotomy's verdict (planted: hotter better at 5 %, colder at 50 %),
    # advice against shuffled moves, selector regret against the baselines with intervals
    assert "regime confidence" in md and "resampling the 2 dense seeds" in md
    assert "Dichotomy HOLDS: hotter is better at 5% density" in md
    assert "Against chance: 95% Wilson interval" in md and "shuffled over the cells" in md
    assert "minus most_trained" in md and "minus random" in md
    # case study 3: not a sam_rho sweep -> which config to run
    assert "configs/sam_rho.py" in md
    # optional metrics not measured are named, not drawn
    assert "Not measured in this sweep (no panel): bezier_mc, hessian_trace" in md


def test_report_html_is_self_contained(report):
    _, paths = report
    html = paths["html"].read_text()
    imgs = re.findall(r"<img [^>]*src=\"([^\"]+)\"", html)
    # three regimes + 6 phase diagrams + the dichotomy (no curves in this workdir)
    assert len(imgs) == 1 + 6 + 1
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'src="figures/' not in html and 'src="report_figures/' not in html
    assert "http://" not in html and "https://" not in html and "<link" not in html
    assert "<style>" in html and "<script" not in html


def test_report_markdown_references_existing_files(report):
    wd, paths = report
    md = paths["markdown"].read_text()
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(refs) == 8
    for ref in refs:
        assert ref.startswith("report_figures/")
        assert (wd / ref).is_file()
    assert sorted(p.name for p in paths["figures"]) == sorted(p.name for p in
                                                               (wd / "report_figures").iterdir())
    assert "epochs_three_regimes.png" in {p.name for p in paths["figures"]}
    assert "dichotomy.png" in {p.name for p in paths["figures"]}


def test_report_optional_metrics_out_dir_and_labels(tmp_path):
    wd = make_workdir(tmp_path / "wd", seeds=(1,), optional=True)
    (wd / "figures").mkdir()
    (wd / "figures" / "curves_density_0.05.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    labels = pd.read_csv(wd / "cells.csv")[["temperature", "density", "regime"]]
    labels = labels.rename(columns={"regime": "label"})
    labels.to_csv(tmp_path / "labels.csv", index=False)
    out = tmp_path / "out"
    paths = write_report(wd, out, labels=tmp_path / "labels.csv", dpi=40)
    md = paths["markdown"].read_text()
    assert paths["html"].parent == out and (out / "report_figures").is_dir()
    assert not (wd / "report.html").exists()
    names = {p.name for p in paths["figures"]}
    assert {"epochs_bezier_mc.png", "epochs_hessian_trace.png", "curves_density_0.05.png"} <= names
    assert "Not measured in this sweep" in md and "hessian_top_eigenvalue" in md
    assert "bezier_mc," not in md.split("Not measured in this sweep")[1].split("\n")[0]
    assert "One dense seed" in md
    assert "## Fitted thresholds" in md and "agreement, fitted rule | 100.00%" in md


def test_report_sam_rho_case_study(tmp_path):
    wd = make_workdir(tmp_path / "rho", knob="sam_rho", temps=[0.2, 0.1, 0.05, 0.0])
    md = write_report(wd, dpi=40)["markdown"].read_text()
    section = md.split("## Case study 3")[1]
    assert "chosen_rho" in section and "configs/sam_rho.py" not in section
    assert "walk minus baseline" in section


def test_report_errors(tmp_path):
    with pytest.raises(ValueError, match=r"cells\.csv.*tr-jax run"):
        write_report(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        write_report(tmp_path / "nope")
    wd = make_workdir(tmp_path / "wd", config=False, results=False)
    with pytest.raises(ValueError, match=r"density 0\.3 is not in this sweep; available "
                                         r"densities: 0\.05 \(5%\), 0\.1 \(10%\)"):
        write_report(wd, density=0.3)
    # no config.json / results.csv: default rule, transition without seed uncertainty
    md = write_report(wd, dpi=40)["markdown"].read_text()
    assert "from tr_jax default" in md and "no seed uncertainty" in md
    assert match_density(load_workdir(wd).cells, "10%") == 0.1


# -- the command line ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return make_workdir(tmp_path_factory.mktemp("cli") / "wd")


def test_cli_advise(workdir, tmp_path, capsys):
    js = tmp_path / "advice.json"
    assert cli.main(["advise", str(workdir), "--density", "0.05", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "training epochs = 80 at density 5%: regime I" in out
    assert "LMC -0.400" in out and "CKA 0.9900" in out
    assert "advice: raise temperature -> try training epochs = 40" in out
    assert "(improves)" in out
    assert re.search(r"The advice was right in \d+ of \d+ checkable cells", out)
    data = json.loads(js.read_text())
    assert data["advice"]["regime"] == "I" and data["advice"]["suggested_temperature"] == 40.0
    assert data["advice"]["improved"] is True and data["accuracy"]["n"] > 0
    # a given temperature; II-A advice at 50%
    assert cli.main(["advise", str(workdir), "--density", "50%", "--temperature", "10"]) == 0
    out = capsys.readouterr().out
    assert "regime II-A" in out and "advice: lower temperature -> try training epochs = 20" in out


def test_cli_advise_bad_input(workdir, tmp_path, capsys):
    assert cli.main(["advise", str(workdir), "--density", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "density 0.3 is not in this sweep" in err
    assert "0.05 (5%), 0.1 (10%), 0.2 (20%), 0.5 (50%)" in err
    assert cli.main(["advise", str(workdir), "--density", "0.05", "--temperature", "30"]) == 2
    assert "available temperatures: 10, 20, 40, 80" in capsys.readouterr().err
    assert cli.main(["advise", str(tmp_path), "--density", "0.05"]) == 2
    assert "cells.csv" in capsys.readouterr().err


def test_cli_report(workdir, tmp_path, capsys):
    out = tmp_path / "rep"
    assert cli.main(["report", str(workdir), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out / "report.html") in printed and str(out / "report.md") in printed
    assert "Dichotomy HOLDS" in printed and "density 50%" in printed
    assert (out / "report.html").stat().st_size > 10_000
    assert cli.main(["report", str(tmp_path / "empty")]) == 2
    assert "does not exist" in capsys.readouterr().err
