"""Report sections: provenance, regimes (with intervals), transition."""
from __future__ import annotations

import datetime as _dt
import math
import platform
from typing import Mapping

import pandas as pd

from .. import __version__, regimes
from ..regimes import REGIMES
from ._load import Sweep
from ._render import (_Block, _pct, _table)

# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------

def _unique(df: pd.DataFrame | None, col: str) -> str | None:
    if df is None or col not in df.columns:
        return None
    vals = sorted({str(v) for v in df[col].dropna()})
    return ", ".join(vals) if vals else None


def _provenance(sw: Sweep) -> list[_Block]:
    cfg = sw.config
    rows: list[tuple[str, str]] = [("workdir", str(sw.workdir.resolve()))]
    if cfg.get("name"):
        rows.append(("config", str(cfg["name"])))
    h = _unique(sw.cells, "config_hash") or _unique(sw.results, "config_hash")
    if h:
        rows.append(("config hash", h))
    rows.append(("temperature knob", ", ".join(sw.knobs)))
    model = cfg.get("model")
    if isinstance(model, Mapping):
        rows.append(("model", f"{model.get('arch', '?')}-{model.get('depth', '?')} "
                              f"(width {model.get('width', '?')})"))
    if cfg.get("dataset"):
        rows.append(("dataset", str(cfg["dataset"])))
    temps = sorted({float(t) for t in sw.cells["temperature"]})
    rows.append(("temperatures", ", ".join(f"{t:g}" for t in temps)))
    rows.append(("densities", ", ".join(regimes.format_density(d) for d in sw.densities)))
    for section, key in (("dense", "seeds"), ("retrain", "seeds")):
        sec = cfg.get(section)
        if isinstance(sec, Mapping) and key in sec:
            rows.append((f"{section} seeds", ", ".join(str(s) for s in sec[key])))
    if isinstance(cfg.get("retrain"), Mapping) and cfg["retrain"].get("mode"):
        rows.append(("retraining", str(cfg["retrain"]["mode"])))
    for col, label in (("tr_jax_version", "tr_jax version (sweep)"),
                       ("jax_version", "jax version (sweep)"), ("device_kind", "device"),
                       ("members_strategy", "members strategy")):
        v = _unique(sw.cells, col) or _unique(sw.results, col)
        if v:
            rows.append((label, v))
    if "sick_members" in sw.cells.columns:
        sick = pd.to_numeric(sw.cells["sick_members"], errors="coerce").fillna(0)
        rows.append(("cells with sick members", f"{int((sick > 0).sum())} of {len(sw.cells)}"))
    if getattr(sw, "partial", None) is not None:  # a sweep still measuring (or stopped)
        mtime = _dt.datetime.fromtimestamp((sw.workdir / "cells.partial.csv").stat().st_mtime)
        rows.append(("partial results (cells.partial.csv written)",
                     mtime.isoformat(sep=" ", timespec="seconds")))
    else:
        mtime = _dt.datetime.fromtimestamp((sw.workdir / "cells.csv").stat().st_mtime)
        rows.append(("sweep finished (cells.csv written)",
                     mtime.isoformat(sep=" ", timespec="seconds")))
    try:
        import jax
        jax_v = jax.__version__
    except ImportError:  # pragma: no cover
        jax_v = "n/a"
    rows.append(("report written", _dt.datetime.now().isoformat(sep=" ", timespec="seconds")
                 + f" by tr_jax {__version__} (jax {jax_v}, python {platform.python_version()})"))
    rule = ", ".join(f"{k}={v}" for k, v in sw.rule.to_dict().items())
    rows.append(("regime rule", f"{rule} (from {sw.rule_source}; tr_jax's own rule, docs/fidelity.md)"))
    return [_Block("h2", "Provenance"),
            _Block("table", table=pd.DataFrame(rows, columns=["", "value"]))]


def _regime_grid(cells: pd.DataFrame, knob: str) -> tuple[list[str], list]:
    sub = cells[cells["knob"] == knob]
    temps = regimes.temperatures_hot_to_cold(sub["temperature"], knob)
    dens = sorted({float(d) for d in sub["density"]})
    entry = {}
    sick = sub["sick_members"] if "sick_members" in sub.columns else None
    for idx, row in sub.iterrows():
        r = row["regime"]
        r = None if r is None or (isinstance(r, float) and math.isnan(r)) else str(r)
        text = f"{r or '-'} {_pct(row['test_error'])}"
        if sick is not None and pd.notna(sick.loc[idx]) and float(sick.loc[idx]) > 0:
            text += f" (sick: {int(sick.loc[idx])})"
        entry[(float(row["temperature"]), float(row["density"]))] = (text, r)
    label = regimes.KNOB_LABELS.get(knob, knob)
    header = [f"T ({label}), hot at top"] + [regimes.format_density(d) for d in dens]
    body = [(f"{t:g}", [entry.get((t, d), ("", None)) for d in dens]) for t in temps]
    return header, body


def _regime_section(sw: Sweep) -> list[_Block]:
    blocks = [_Block("h2", "Regimes"),
              _Block("p", "Each cell: regime and mean test error over its retrained members. "
                     "Regime I = poorly connected (LMC barrier), II-A = connected but dissimilar "
                     "(lower CKA), II-B = connected and similar. Favourable moves at a fixed "
                     "density: I -> raise the temperature, II-A -> lower it.")]
    for knob in sw.knobs:
        blocks.append(_Block("grid", grid=_regime_grid(sw.cells, knob)))
    counts = sw.cells["regime"].value_counts(dropna=False)
    parts = [f"{r}: {int(counts.get(r, 0))}" for r in REGIMES]
    n_none = int(sw.cells["regime"].isna().sum())
    if n_none:
        parts.append(f"no regime (NaN metrics): {n_none}")
    blocks.append(_Block("p", "Cells per regime: " + ", ".join(parts) + "."))
    blocks.append(_Block("pre", regimes.summary_table(sw.cells)))
    return blocks


def _transition_table(sw: Sweep) -> tuple[pd.DataFrame, str]:
    if sw.results is not None:
        try:
            tt = regimes.transition_with_uncertainty(sw.results)
            return tt, "results.csv (per dense seed)"
        except (ValueError, KeyError) as e:
            note = f"results.csv unusable for per-seed estimates ({e}); "
    else:
        note = "no results.csv; "
    tt = regimes.transition(sw.cells)
    return tt, note + "from cells.csv (means over seeds): no seed uncertainty"


def _transition_section(sw: Sweep, tt: pd.DataFrame, source: str) -> list[_Block]:
    blocks = [_Block("h2", "Transition per density"),
              _Block("p", "Per density column, the largest drop of LMC between adjacent "
                     "temperatures (hot -> cold); the transition temperature is the midpoint of "
                     "that pair, estimated per dense seed (mean +- sample sd over seeds). "
                     "'best T' is where the test error is lowest. 'sharp' (tr_jax's rule): the "
                     "drop exceeds 3 x the sd of the other LMC steps and 0.05.")]
    if "lmc_transition" in tt.columns:
        cols = ["knob", "density", "hot_temperature", "cold_temperature", "lmc_transition",
                "lmc_transition_std", "lmc_drop", "lmc_drop_std", "sharp", "best_temperature",
                "best_temperature_std", "n_seeds"]
        show = tt[[c for c in cols if c in tt.columns]].rename(columns={
            "hot_temperature": "hot T", "cold_temperature": "cold T",
            "lmc_transition": "transition T", "lmc_transition_std": "sd (seeds)",
            "lmc_drop": "LMC drop", "lmc_drop_std": "drop sd", "best_temperature": "best T",
            "best_temperature_std": "best T sd", "n_seeds": "dense seeds"})
        blocks.append(_Block("table", table=_table(show)))
        if "n_seeds" in tt.columns and len(tt) and int(tt["n_seeds"].max()) < 2:
            blocks.append(_Block("note", "One dense seed: the seed-to-seed sd needs at least two "
                                 "dense seeds (dense.seeds in the config)."))
    else:
        show = tt.rename(columns={"hot_temperature": "hot T", "cold_temperature": "cold T",
                                  "best_temperature": "best T"})
        blocks.append(_Block("table", table=_table(show, {"best_test_error": _pct})))
    blocks.append(_Block("note", f"Source: {source}."))
    return blocks


