"""A self-contained report of a finished sweep: ``report.html`` and ``report.md``.

    from tr_jax.report import write_report
    paths = write_report("runs/quick")          # -> {"html": ..., "markdown": ..., "figures": [...]}

or ``tr-jax report runs/quick [--out DIR]``. The report reads the workdir's ``cells.csv``,
``results.csv`` (optional: the transition's seed uncertainty) and ``config.json`` (optional:
provenance and the regime rule the sweep used) and writes

* ``report.html``: one file, figures embedded as base64 PNG data URIs, inline CSS, no external
  resource (open it anywhere, mail it);
* ``report.md``: the same text, figures referenced as relative files in ``report_figures/``.

Sections: provenance; the three-regime picture of the sweep (paper Figure 1) and the phase
diagrams of every measured metric with regime boundaries and the transition (Figure 2); the
regime table; the transition per density with its seed-to-seed uncertainty; case study 1
(raise or lower the temperature? advice per density at the coldest temperature, and how often
the advice was right in this sweep); case study 2 (which model of the family to prune: the
selectors' regret); case study 3 (SAM rho tuning, when the sweep's knob is ``sam_rho``); and,
when regime labels are supplied, thresholds fitted to them.

The regime rule is tr_jax's own (the reference has none, SPEC section 3.3): the one in the
workdir's ``config.json`` unless ``rule`` is given.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import html
import json
import math
import os
import pathlib
import platform
import shutil
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from . import casestudies, plots, regimes
from .regimes import REGIMES, RegimeRule
from .sweep.store import atomic_write_text

__all__ = ["Sweep", "load_workdir", "match_density", "match_temperature", "write_report",
           "load_labels"]

FIGURES_DIR = "report_figures"


# ---------------------------------------------------------------------------------------------
# Reading a workdir
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Sweep:
    """What a finished sweep's workdir holds, as :func:`load_workdir` reads it.

    ``cells`` has a ``regime`` column (from ``cells.csv``, or recomputed with ``rule``),
    ``results`` is None without ``results.csv``, ``config`` is ``{}`` without ``config.json``,
    ``rule`` the regime rule in use, ``rule_source`` where it came from."""

    workdir: pathlib.Path
    cells: pd.DataFrame
    results: pd.DataFrame | None
    config: dict
    rule: RegimeRule
    rule_source: str

    @property
    def knobs(self) -> list[str]:
        return sorted({str(k) for k in self.cells["knob"]})

    @property
    def densities(self) -> list[float]:
        return sorted({float(d) for d in self.cells["density"]})


def _rule_from_config(config: Mapping[str, Any]) -> RegimeRule | None:
    section = config.get("regimes") if isinstance(config, Mapping) else None
    if not isinstance(section, Mapping):
        return None
    names = {f.name for f in dataclasses.fields(RegimeRule)}
    return RegimeRule.from_dict({k: v for k, v in section.items() if k in names})


def _none_for_nan(series: pd.Series) -> pd.Series:
    s = series.astype(object)
    return s.where(s.notna(), None)


def _with_intervals(cells: pd.DataFrame, results: pd.DataFrame, rule: RegimeRule
                    ) -> pd.DataFrame:
    """``cells`` with the interval columns of :func:`tr_jax.regimes.cells_from_results` (rebuilt
    from results.csv with ``rule``: a cells.csv written before the intervals existed, or a
    rule other than the run's). Unchanged when results.csv cannot be aggregated."""
    try:
        ci = regimes.cells_from_results(results, rule)
    except (ValueError, KeyError):
        return cells
    keys = ["knob", "temperature", "density"]
    extra = [c for c in ci.columns[list(ci.columns).index("test_error_lo"):]]
    ci = ci[keys + extra].assign(knob=ci["knob"].astype(str))
    out = cells.drop(columns=[c for c in extra if c in cells.columns])
    return out.merge(ci, on=keys, how="left")


def load_workdir(workdir: str | os.PathLike, *,
                 rule: RegimeRule | Mapping[str, Any] | None = None) -> Sweep:
    """Read ``cells.csv`` (required), ``results.csv`` and ``config.json`` of a sweep.

    Raises ``ValueError`` naming the path when the workdir or its ``cells.csv`` is missing, or
    when ``cells.csv`` lacks the columns a report needs. With ``rule`` the regimes are
    recomputed with it; otherwise the ``regime`` column of ``cells.csv`` is kept (computed from
    ``config.json``'s rule when absent)."""
    wd = pathlib.Path(workdir)
    if not wd.is_dir():
        raise ValueError(f"workdir {str(wd)!r} does not exist; run `tr-jax run CONFIG --workdir "
                         f"{wd}` first")
    cells_path = wd / "cells.csv"
    if not cells_path.is_file():
        raise ValueError(f"{cells_path} not found: no finished sweep in {str(wd)!r}; run "
                         f"`tr-jax run CONFIG --workdir {wd}` first")
    cells = pd.read_csv(cells_path)
    need = ("knob", "temperature", "density", "test_error", "lmc", "cka")
    missing = [c for c in need if c not in cells.columns]
    if missing:
        raise ValueError(f"{cells_path}: lacks column(s) {missing}; has {list(cells.columns)}")
    if len(cells) == 0:
        raise ValueError(f"{cells_path}: no cells (empty table)")
    cells["knob"] = cells["knob"].astype(str)
    cells["temperature"] = cells["temperature"].astype(float)
    cells["density"] = cells["density"].astype(float)
    results = None
    if (wd / "results.csv").is_file():
        results = pd.read_csv(wd / "results.csv")
        if "knob" in results.columns:
            results["knob"] = results["knob"].astype(str)
    config: dict = {}
    if (wd / "config.json").is_file():
        try:
            config = json.loads((wd / "config.json").read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{wd / 'config.json'}: not valid JSON ({e})") from None
    if rule is not None:
        rule_obj, source = RegimeRule.from_dict(rule), "given"
    else:
        from_cfg = _rule_from_config(config)
        rule_obj, source = ((from_cfg, "config.json") if from_cfg is not None
                            else (RegimeRule(), "tr_jax default"))
    if rule is not None or "regime" not in cells.columns:
        cells["regime"] = regimes.classify(cells, rule_obj)
        cells["advice"] = cells["regime"].map(regimes.advice)
    else:
        cells["regime"] = _none_for_nan(cells["regime"])
    if results is not None and (rule is not None or "regime_confidence" not in cells.columns):
        cells = _with_intervals(cells, results, rule_obj)
    return Sweep(workdir=wd, cells=cells, results=results, config=config, rule=rule_obj,
                 rule_source=source)


def _fmt_density(d: float) -> str:
    p = 100.0 * float(d)
    return f"{p:.0f}%" if abs(p - round(p)) < 1e-6 else f"{p:.3g}%"


def _close(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)


def _parse_number(value: Any, what: str) -> tuple[float, bool]:
    """A float from a number or a string (``"0.05"``, ``"5%"``); returns (value, was_percent)."""
    if isinstance(value, str):
        text = value.strip()
        pct = text.endswith("%")
        try:
            x = float(text[:-1] if pct else text)
        except ValueError:
            raise ValueError(f"{what} {value!r} is not a number") from None
        return (x / 100.0 if pct else x), pct
    try:
        return float(value), False
    except (TypeError, ValueError):
        raise ValueError(f"{what} {value!r} is not a number") from None


def match_density(cells: pd.DataFrame, density: Any) -> float:
    """The sweep's density equal to ``density`` (a fraction, or a string like ``"5%"``).

    Raises ``ValueError`` naming the density and listing the available ones."""
    available = sorted({float(d) for d in cells["density"]})
    x, _ = _parse_number(density, "density")
    for d in available:
        if _close(d, x):
            return d
    listing = ", ".join(f"{d:g} ({_fmt_density(d)})" for d in available)
    raise ValueError(f"density {density} is not in this sweep; available densities: {listing}")


def match_temperature(cells: pd.DataFrame, temperature: Any, *, density: float | None = None
                      ) -> float:
    """The sweep's temperature equal to ``temperature`` (at ``density`` when given); raises
    ``ValueError`` naming it and listing the available ones."""
    sub = cells if density is None else cells[np.isclose(cells["density"].astype(float), density)]
    available = sorted({float(t) for t in sub["temperature"]})
    x, _ = _parse_number(temperature, "temperature")
    for t in available:
        if _close(t, x):
            return t
    where = "" if density is None else f" at density {density:g}"
    raise ValueError(f"temperature {temperature} is not in this sweep{where}; available "
                     f"temperatures: {', '.join(f'{t:g}' for t in available)}")


def coldest_temperature(cells: pd.DataFrame, knob: str, density: float) -> float:
    """The coldest temperature of the ``(knob, density)`` column."""
    sub = cells[(cells["knob"] == knob) & np.isclose(cells["density"].astype(float), density)]
    return regimes.temperatures_hot_to_cold(sub["temperature"], knob)[-1]


def load_labels(cells: pd.DataFrame, labels: Any) -> pd.Series:
    """Regime labels aligned on ``cells.index`` from a column name of ``cells``, a Series, a
    sequence in row order, a DataFrame or a CSV path with ``temperature``, ``density``
    (optionally ``knob``) and a ``label`` (or ``regime``) column. Unlabelled cells are None."""
    if isinstance(labels, str) and labels in cells.columns:
        return _none_for_nan(cells[labels])
    if isinstance(labels, (str, os.PathLike)):
        path = pathlib.Path(labels)
        if not path.is_file():
            raise ValueError(f"labels file {str(path)!r} not found")
        labels = pd.read_csv(path)
    if isinstance(labels, pd.DataFrame):
        col = "label" if "label" in labels.columns else ("regime" if "regime" in labels.columns
                                                         else None)
        if col is None or not {"temperature", "density"} <= set(labels.columns):
            raise ValueError(f"labels table needs temperature, density and a label (or regime) "
                             f"column; has {list(labels.columns)}")
        keys = ["temperature", "density"] + (["knob"] if "knob" in labels.columns else [])
        lab = labels[keys + [col]].copy()
        lab["temperature"] = lab["temperature"].astype(float).round(12)
        lab["density"] = lab["density"].astype(float).round(12)
        if "knob" in lab.columns:
            lab["knob"] = lab["knob"].astype(str)
        left = cells[keys].copy()
        left["temperature"] = left["temperature"].astype(float).round(12)
        left["density"] = left["density"].astype(float).round(12)
        merged = left.reset_index().merge(lab.drop_duplicates(keys), on=keys, how="left")
        return _none_for_nan(pd.Series(merged[col].to_numpy(), index=merged["index"].to_numpy()))
    if isinstance(labels, pd.Series):
        return _none_for_nan(labels.reindex(cells.index))
    values = list(labels)
    if len(values) != len(cells):
        raise ValueError(f"got {len(values)} labels for {len(cells)} cells")
    return _none_for_nan(pd.Series(values, index=cells.index))


# ---------------------------------------------------------------------------------------------
# A tiny document model rendered to HTML and Markdown
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Block:
    kind: str  # h1 h2 h3 p pre table grid img
    text: str = ""
    table: pd.DataFrame | None = None
    grid: Any = None
    path: pathlib.Path | None = None


def _num(x: Any, fmt: str = "{:.4g}") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "n/a" if not math.isfinite(float(x)) else fmt.format(float(x))
    if isinstance(x, (tuple, list)):
        return ", ".join(_num(v, fmt) for v in x)
    return str(x)


def _pct(x: Any) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "n/a" if x is None else str(x)
    return "n/a" if not math.isfinite(v) else f"{100 * v:.2f}%"


def _table(df: pd.DataFrame, formats: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Every entry a string: ``formats`` maps a column to a callable or a format string;
    densities print as percents; other numbers as ``{:.4g}``."""
    formats = dict(formats or {})
    out = pd.DataFrame(index=range(len(df)))
    for col in df.columns:
        f = formats.get(col)
        if f is None and col == "density":
            f = _fmt_density
        vals = []
        for v in df[col].tolist():
            missing = v is None or (isinstance(v, float) and math.isnan(v))
            if f is None or missing:
                vals.append(_num(v))
            elif callable(f):
                vals.append(f(v))
            else:
                vals.append(_num(v, f))
        out[str(col)] = vals
    return out


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
 padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444;padding-bottom:.2em}h2{border-bottom:1px solid #bbb;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;border:1px solid #ddd;padding:.6em;overflow-x:auto;font-size:.85em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}.note{color:#555;font-size:.9em}
table.regimes td{text-align:center;min-width:5em}
""".strip()


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _render_html(blocks: Sequence[_Block], title: str) -> str:
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{html.escape(b.text)}</p>")
        elif b.kind == "note":
            out.append(f"<p class=\"note\">{html.escape(b.text)}</p>")
        elif b.kind == "pre":
            out.append(f"<pre>{html.escape(b.text)}</pre>")
        elif b.kind == "table":
            df = b.table
            rows = ["<table>", "<tr>" + "".join(f"<th>{html.escape(str(c))}</th>"
                                                for c in df.columns) + "</tr>"]
            for _, r in df.iterrows():
                rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>")
            rows.append("</table>")
            out.append("\n".join(rows))
        elif b.kind == "grid":
            header, body = b.grid
            rows = ["<table class=\"regimes\">", "<tr>" + "".join(
                f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
            for label, entries in body:
                cells_html = []
                for text, regime in entries:
                    color = plots.REGIME_COLORS.get(regime or "", "#d9d9d9")
                    cells_html.append(f"<td style=\"background:{color}\">{html.escape(text)}</td>")
                rows.append(f"<tr><th>{html.escape(label)}</th>{''.join(cells_html)}</tr>")
            rows.append("</table>")
            out.append("\n".join(rows))
        elif b.kind == "img":
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            out.append(f"<figure><img alt=\"{html.escape(b.text)}\" "
                       f"src=\"data:image/png;base64,{data}\">"
                       f"<figcaption>{html.escape(b.text)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _render_md(blocks: Sequence[_Block], figures_dir: pathlib.Path, out_dir: pathlib.Path) -> str:
    out = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"# {b.text}")
        elif b.kind == "h2":
            out.append(f"## {b.text}")
        elif b.kind == "h3":
            out.append(f"### {b.text}")
        elif b.kind in ("p", "note"):
            out.append(b.text if b.kind == "p" else f"*{b.text}*")
        elif b.kind == "pre":
            out.append("```\n" + b.text + "\n```")
        elif b.kind in ("table", "grid"):
            if b.kind == "table":
                header = [str(c) for c in b.table.columns]
                body = [[str(v) for v in r] for r in b.table.itertuples(index=False)]
            else:
                header = list(b.grid[0])
                body = [[label] + [t for t, _ in entries] for label, entries in b.grid[1]]
            lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
                     "|" + "|".join("---" for _ in header) + "|"]
            lines += ["| " + " | ".join(_md_escape(v) for v in r) + " |" for r in body]
            out.append("\n".join(lines))
        elif b.kind == "img":
            rel = os.path.relpath(b.path, out_dir).replace(os.sep, "/")
            out.append(f"![{b.text}]({rel})")
    return "\n\n".join(out) + "\n"


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
    rows.append(("densities", ", ".join(_fmt_density(d) for d in sw.densities)))
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
    mtime = _dt.datetime.fromtimestamp((sw.workdir / "cells.csv").stat().st_mtime)
    rows.append(("sweep finished (cells.csv written)", mtime.isoformat(sep=" ", timespec="seconds")))
    from . import __version__
    try:
        import jax
        jax_v = jax.__version__
    except ImportError:  # pragma: no cover
        jax_v = "n/a"
    rows.append(("report written", _dt.datetime.now().isoformat(sep=" ", timespec="seconds")
                 + f" by tr_jax {__version__} (jax {jax_v}, python {platform.python_version()})"))
    rule = ", ".join(f"{k}={v}" for k, v in sw.rule.to_dict().items())
    rows.append(("regime rule", f"{rule} (from {sw.rule_source}; tr_jax's own rule, SPEC 3.3)"))
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
    header = [f"T ({label}), hot at top"] + [_fmt_density(d) for d in dens]
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


def _asdict(obj: Any) -> dict:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return dict(vars(obj))


def accuracy_sentence(score: Any) -> str:
    """One line on :func:`tr_jax.casestudies.advice_accuracy`'s score."""
    n = int(score.n)
    if n == 0:
        return ("No cell of this sweep allows checking the advice (no neighbour in the advised "
                "direction, or missing errors).")
    k = int(score.n_right)
    text = (f"The advice was right in {k} of {n} checkable cells ({100 * k / n:.0f}%) of this "
            f"sweep (a move is right when the neighbour in the advised direction has a lower "
            f"pruned test error; a keep when no neighbour is better).")
    parts = []
    for r, v in (score.per_regime or {}).items():
        if int(v.get("n", 0)):
            parts.append(f"{r}: {int(v['n_right'])}/{int(v['n'])}")
    text += f" Per regime: {', '.join(parts)}." if parts else ""
    chance = getattr(score, "chance_sentence", None)
    return text + (f" Against chance: {chance()}." if callable(chance) else "")


def _advice_rows(sw: Sweep, densities: Sequence[float]) -> tuple[pd.DataFrame, dict]:
    rows, texts = [], {}
    for knob in sw.knobs:
        sub = sw.cells[sw.cells["knob"] == knob]
        for d in densities:
            if not np.isclose(sub["density"].astype(float), d).any():
                continue
            t = coldest_temperature(sub, knob, d)
            adv = casestudies.advise(sub, d, temperature=t, rule=sw.rule)
            ev = adv.evidence if isinstance(adv.evidence, Mapping) else {}
            rows.append(dict(knob=knob, density=d, temperature=adv.temperature, regime=adv.regime,
                             lmc=ev.get("lmc", np.nan), cka=ev.get("cka", np.nan),
                             action=adv.action,
                             suggested=(adv.suggested_temperature
                                        if adv.suggested_temperature is not None
                                        else ("edge of grid" if adv.action in (
                                            "raise temperature", "lower temperature") else None)),
                             error_now=adv.test_error_now, error_after=adv.test_error_after,
                             improved=adv.improved))
            texts[(knob, d)] = adv.text()
    return pd.DataFrame(rows), texts


def _case1(sw: Sweep, focus: float | None) -> list[_Block]:
    blocks = [_Block("h2", "Case study 1: raise or lower the temperature?"),
              _Block("p", "For each density, the regime of the model pruned from the coldest "
                     "(most trained) dense checkpoint, the move the three-regime model suggests "
                     "(I -> raise the temperature, II-A -> lower it, II-B -> keep), and whether "
                     "the suggested neighbour actually has a lower test error in this sweep.")]
    try:
        table, texts = _advice_rows(sw, sw.densities)
        score = casestudies.advice_accuracy(sw.cells, rule=sw.rule)
    except ValueError as e:
        return blocks + [_Block("note", f"Not available for this sweep: {e}")]
    if focus is not None:
        for (knob, d), text in texts.items():
            if _close(d, focus):
                blocks.append(_Block("h3", f"Density {_fmt_density(d)} ({knob})"))
                blocks.append(_Block("pre", text))
    blocks.append(_Block("table", table=_table(table, {
        "error_now": _pct, "error_after": _pct, "lmc": "{:.4f}", "cka": "{:.4f}"})))
    blocks.append(_Block("p", accuracy_sentence(score)))
    return blocks


def _case2(sw: Sweep) -> list[_Block]:
    blocks = [_Block("h2", "Case study 2: which model of the family to prune?"),
              _Block("p", "The family: the dense models at the sweep's temperatures. Each selector "
                     "picks one per density; regret = its pruned test error minus the best one in "
                     "hindsight (percentage points). 'lmc_cka' is the three-regime selector: among "
                     "well-connected candidates, the highest CKA.")]
    try:
        frames = []
        for knob in sw.knobs:
            cmp_ = casestudies.compare_selectors(sw.cells[sw.cells["knob"] == knob])
            if "knob" not in cmp_.columns:
                cmp_ = cmp_.assign(knob=knob)
            frames.append(cmp_)
        cmp_ = pd.concat(frames, ignore_index=True)
    except ValueError as e:
        return blocks + [_Block("note", f"Not available for this sweep: {e}")]
    if not {"density", "selector", "regret"} <= set(cmp_.columns):
        return blocks + [_Block("table", table=_table(cmp_))]
    for knob, part in cmp_.groupby("knob", sort=True):
        wide = part.pivot_table(index="density", columns="selector", values="regret",
                                aggfunc="mean", dropna=False)
        order = list(dict.fromkeys(part["selector"]))
        wide = wide[[s for s in order if s in wide.columns]]
        mean = wide.mean(axis=0, skipna=True)
        wide = wide.reset_index()
        wide["density"] = [_fmt_density(d) for d in wide["density"]]
        wide.loc[len(wide)] = ["mean"] + list(mean.to_numpy())
        pp = {c: (lambda v: "n/a" if pd.isna(v) else f"{100 * float(v):.2f}")
              for c in wide.columns if c != "density"}
        wide.columns = [str(c) for c in wide.columns]
        if len(sw.knobs) > 1:
            blocks.append(_Block("h3", f"knob: {knob}"))
        pp["density"] = str
        blocks.append(_Block("table", table=_table(wide, {str(k): v for k, v in pp.items()})))
        best = mean.idxmin() if mean.notna().any() else None
        if best is not None:
            blocks.append(_Block("p", f"Lowest mean regret: {best} ({100 * mean[best]:.2f} points)."))
        blocks += _selector_intervals(part)
    if "temperature" in cmp_.columns:
        picks = cmp_.pivot_table(index="density", columns="selector", values="temperature",
                                 aggfunc="first", dropna=False).reset_index()
        picks.columns = [str(c) for c in picks.columns]
        blocks.append(_Block("note", "Temperature picked by each selector:"))
        blocks.append(_Block("table", table=_table(picks, {c: "{:g}" for c in picks.columns
                                                           if c != "density"})))
    return blocks


def _selector_intervals(part: pd.DataFrame) -> list[_Block]:
    """Mean regret per selector with its bootstrap interval over densities, and the paired
    difference to each baseline (negative = better than the baseline)."""
    summ = casestudies.selector_summary(part)
    rows = []
    for r in summ.itertuples():
        row = {"selector": r.selector, "mean regret (points)":
               f"{100 * r.mean_regret:.2f} [{100 * r.mean_regret_lo:.2f}, "
               f"{100 * r.mean_regret_hi:.2f}]"}
        for b in casestudies.BASELINES:
            if f"vs_{b}" in summ.columns and r.selector != b:
                v, lo, hi = (getattr(r, f"vs_{b}"), getattr(r, f"vs_{b}_lo"),
                             getattr(r, f"vs_{b}_hi"))
                row[f"minus {b}"] = ("n/a" if pd.isna(v) else
                                     f"{100 * v:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]")
        rows.append(row)
    return [_Block("note", "95% bootstrap intervals over the densities; 'minus X' = the "
                   "selector's regret minus X's at the same density (negative = better than X; "
                   "an interval below 0 = reliably better):"),
            _Block("table", table=pd.DataFrame(rows).fillna(""))]


def _dichotomy_section(sw: Sweep) -> tuple[list[_Block], str | None]:
    blocks = [_Block("h2", "The dichotomy: does a hotter dense model help at low density and "
                     "hurt at high density?"),
              _Block("p", "Per density: the mean pruned test error of the hot half of the "
                     "temperatures minus that of the cold half (negative = hotter is better), "
                     "with a bootstrap interval over dense seeds and a t interval of the "
                     "per-seed effects; a direction is declared only when both exclude 0.")]
    if sw.results is None:
        return blocks + [_Block("note", "No results.csv: the dichotomy needs the runs.")], None
    try:
        text = regimes.dichotomy(sw.results).text()
    except ValueError as e:
        return blocks + [_Block("note", f"Not available for this sweep: {e}")], None
    return blocks + [_Block("pre", text)], text


def _case3(sw: Sweep) -> list[_Block]:
    blocks = [_Block("h2", "Case study 3: tuning SAM's rho for pruning")]
    if "sam_rho" not in sw.knobs:
        return blocks + [_Block("p", f"This sweep's knob is {', '.join(sw.knobs)}, not sam_rho. "
                                "Run `tr-jax run configs/sam_rho.py --workdir DIR` (rho treated "
                                "as a temperature) and report that workdir for this case study.")]
    blocks.append(_Block("p", "Rho treated as a temperature: per density, the rho chosen from the "
                         "regimes of the pruned models, its test error, the best rho in "
                         "hindsight and the regret."))
    try:
        tab = casestudies.tune_sam_rho(sw.cells[sw.cells["knob"] == "sam_rho"], rule=sw.rule)
    except ValueError as e:
        return blocks + [_Block("note", f"Not available for this sweep: {e}")]
    fmts = {c: _pct for c in tab.columns if "error" in str(c)}
    fmts.update({c: (lambda v: f"{100 * float(v):.2f} pts") for c in tab.columns
                 if "regret" in str(c)})
    blocks.append(_Block("table", table=_table(tab, fmts)))
    sm = casestudies.sam_rho_summary(tab)
    blocks.append(_Block("p", f"Mean regret of the regime walk {100 * sm['mean_regret']:.2f} "
                         f"[{100 * sm['mean_regret_lo']:.2f}, {100 * sm['mean_regret_hi']:.2f}] "
                         f"points, of always the smallest rho {100 * sm['baseline_regret']:.2f} "
                         f"[{100 * sm['baseline_regret_lo']:.2f}, "
                         f"{100 * sm['baseline_regret_hi']:.2f}]; walk minus baseline "
                         f"{100 * sm['vs_baseline']:+.2f} [{100 * sm['vs_baseline_lo']:+.2f}, "
                         f"{100 * sm['vs_baseline_hi']:+.2f}] (95% bootstrap over {sm['n']} "
                         f"densities)."))
    return blocks


def _fit_section(sw: Sweep, labels: Any) -> list[_Block]:
    lab = load_labels(sw.cells, labels)
    fit = regimes.fit_rule(sw.cells, lab, rule=sw.rule)
    d = fit.to_dict()
    rows = [("labelled cells", str(fit.n_cells)),
            ("agreement with the labels, rule in use", _pct(fit.agreement_before)),
            ("agreement, fitted rule", _pct(fit.agreement))]
    rows += [(f"fitted {k}", f"{v:.4g} (was {getattr(sw.rule, k):.4g})")
             for k, v in d.get("fitted", {}).items()]
    fitted_regimes = regimes.classify(sw.cells, fit.rule)
    changed = int(sum(a != b for a, b in zip(fitted_regimes, sw.cells["regime"])))
    rows.append(("cells whose regime changes with the fitted rule", str(changed)))
    return [_Block("h2", "Fitted thresholds"),
            _Block("p", "Rule thresholds fitted to the supplied regime labels by an exact 1-D "
                   "search per threshold (coordinate-wise), maximising agreement."),
            _Block("table", table=pd.DataFrame(rows, columns=["", "value"]))]


def _panels(cells: pd.DataFrame) -> list[str]:
    out = []
    for m in plots.ALL_PANELS:
        if m == "normalized_test_error" and "test_error" in cells.columns:
            out.append(m)
        elif m in cells.columns and pd.to_numeric(cells[m], errors="coerce").notna().any():
            out.append(m)
    return out


def write_report(workdir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                 rule: RegimeRule | Mapping[str, Any] | None = None, density: Any = None,
                 labels: Any = None, dpi: int = 110) -> dict[str, Any]:
    """Write ``report.html`` (self-contained) and ``report.md`` (+ ``report_figures/``) for the
    sweep in ``workdir`` into ``out_dir`` (default: the workdir).

    ``rule``: regime rule (default: the one in ``config.json``); ``density``: a density of the
    sweep whose case-study-1 advice is spelled out in full (``ValueError`` listing the
    available densities otherwise); ``labels``: regime labels for the fitted-threshold section
    (see :func:`load_labels`; the section is skipped without labels).

    Returns ``{"html": Path, "markdown": Path, "figures_dir": Path, "figures": [Path, ...],
    "dichotomy": str or None}`` (the verdict of :func:`tr_jax.regimes.dichotomy`, None
    without results.csv).
    Raises ``ValueError`` naming the path when the workdir has no ``cells.csv``.
    """
    sw = load_workdir(workdir, rule=rule)
    focus = match_density(sw.cells, density) if density is not None else None
    out = pathlib.Path(out_dir) if out_dir is not None else sw.workdir
    out.mkdir(parents=True, exist_ok=True)
    figdir = out / FIGURES_DIR
    figdir.mkdir(parents=True, exist_ok=True)
    tt, tt_source = _transition_table(sw)

    name = sw.config.get("name") or sw.workdir.name
    title = f"tr_jax report: {name}"
    blocks: list[_Block] = [
        _Block("h1", title),
        _Block("p", "A three-regime analysis of a pruning sweep (Zhou, Yang, Chang, Mahoney, "
               "ICML 2023): dense models at several temperatures, pruned to several densities "
               "and retrained with several seeds; linear mode connectivity (LMC) and CKA of "
               "the retrained pairs place each (temperature, density) cell in Regime I, II-A "
               "or II-B."),
    ]
    blocks += _provenance(sw)

    figures: list[pathlib.Path] = []
    blocks.append(_Block("h2", "The three regimes of this sweep"))
    for knob in sw.knobs:
        sub = sw.cells[sw.cells["knob"] == knob]
        p = plots.three_regimes(sub, figdir / f"{plots._safe_name(knob)}_three_regimes.png",
                                transition_table=tt, dpi=dpi)
        figures.append(p)
        blocks.append(_Block("img", text=f"Regimes of the (density x temperature) plane, knob "
                             f"{knob}: hottest at the top; arrows = favourable moves; diamonds = "
                             f"LMC transition (+- sd over dense seeds); stars = best test error.",
                             path=p))
    blocks += _regime_section(sw)

    blocks.append(_Block("h2", "Phase diagrams"))
    panels = _panels(sw.cells)
    skipped = [m for m in plots.ALL_PANELS if m not in panels]
    blocks.append(_Block("p", "Figure 2 of the paper for this sweep: density across, temperature "
                         "down (hottest on top). Solid line: Regime I | II; dashed: II-A | II-B; "
                         "grey: missing (NaN) cells; hatched: cells with sick members; diamonds: "
                         "the LMC transition with its seed error bar."))
    diagrams = plots.figure2(sw.cells, figdir, regimes="regime", panels=panels, dpi=dpi,
                             transition=tt)
    for p in diagrams:
        figures.append(p)
        metric = max((m for m in panels if p.stem.endswith("_" + m)), key=len, default=p.stem)
        blocks.append(_Block("img", text=plots.METRIC_LABELS.get(metric, (metric,))[0], path=p))
    if skipped:
        blocks.append(_Block("note", "Not measured in this sweep (no panel): "
                             + ", ".join(skipped) + "."))
    curves = sorted((sw.workdir / "figures").glob("curves_density_*.png"))
    if curves:
        blocks.append(_Block("h3", "Error along the path between retrained pairs"))
        for c in curves:
            dst = figdir / c.name
            if c.resolve() != dst.resolve():
                fd, tmp = tempfile.mkstemp(dir=figdir, prefix=f".{c.name}.", suffix=".tmp")
                os.close(fd)
                shutil.copyfile(c, tmp)
                os.chmod(tmp, 0o666 & ~plots._umask())
                os.replace(tmp, dst)
            figures.append(dst)
            blocks.append(_Block("img", text=f"Train error along t, {c.stem.split('_')[-1]} "
                                 "density (line = LMC path; Bezier when measured)", path=dst))

    blocks += _transition_section(sw, tt, tt_source)
    dich_blocks, dich_text = _dichotomy_section(sw)
    blocks += dich_blocks
    blocks += _case1(sw, focus)
    blocks += _case2(sw)
    blocks += _case3(sw)
    if labels is not None:
        blocks += _fit_section(sw, labels)

    html_path = out / "report.html"
    md_path = out / "report.md"
    atomic_write_text(html_path, _render_html(blocks, title))
    atomic_write_text(md_path, _render_md(blocks, figdir, out))
    return {"html": html_path, "markdown": md_path, "figures_dir": figdir, "figures": figures,
            "dichotomy": dich_text}
