"""Reading a finished sweep's workdir (cells.csv, results.csv, config.json) and matching
user-given densities / temperatures."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .. import regimes
from ..regimes import RegimeRule
from ..tables_io import expected_grid, read_table

#: the partial cells table of a sweep still measuring (``tr_jax.sweep.partial.CELLS``)
PARTIAL_CELLS = "cells.partial.csv"


# ---------------------------------------------------------------------------------------------
# Reading a workdir
# ---------------------------------------------------------------------------------------------

#: folder of the report's figures, next to report.md
FIGURES_DIR = "report_figures"


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
    #: ``(cells measured, cells of the grid)`` when read from ``cells.partial.csv`` (a sweep
    #: still measuring, or stopped), else None
    partial: tuple[int, int] | None = None

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
                 rule: RegimeRule | Mapping[str, Any] | None = None,
                 partial_ok: bool = False) -> Sweep:
    """Read ``cells.csv`` (required), ``results.csv`` and ``config.json`` of a sweep.

    With ``partial_ok`` (the report): a sweep still measuring (or stopped while measuring) has
    no ``cells.csv`` but may have a ``cells.partial.csv`` (the cells measured so far,
    :mod:`tr_jax.sweep.partial`): it is read instead, with the parse checks but not the grid's
    completeness, without ``results.csv``, and ``Sweep.partial`` says how many of the grid's
    cells it holds.

    Raises ``ValueError`` naming the path when the workdir or its ``cells.csv`` is missing, and
    a :class:`~tr_jax.errors.TableError` naming the file, the line or the missing row, and the
    column when ``cells.csv`` or ``results.csv`` is cut off, damaged or lacks rows of
    ``config.json``'s grid (see :func:`tr_jax.tables_io.read_table`). With ``rule`` the regimes are
    recomputed with it; otherwise the ``regime`` column of ``cells.csv`` is kept (computed from
    ``config.json``'s rule when absent)."""
    wd = pathlib.Path(workdir)
    if not wd.is_dir():
        raise ValueError(f"workdir {str(wd)!r} does not exist; run `tr-jax run CONFIG --workdir "
                         f"{wd}` first")
    cells_path = wd / "cells.csv"
    partial_path = wd / PARTIAL_CELLS
    is_partial = partial_ok and not cells_path.is_file() and partial_path.is_file()
    if is_partial:
        cells_path = partial_path
    elif not cells_path.is_file():
        raise ValueError(f"{cells_path} not found: no finished sweep in {str(wd)!r}; run "
                         f"`tr-jax run CONFIG --workdir {wd}` first")
    config: dict = {}
    if (wd / "config.json").is_file():
        try:
            config = json.loads((wd / "config.json").read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{wd / 'config.json'}: not valid JSON ({e})") from None
    # checked against config.json's grid: a cut-off or damaged table raises a TableError
    # (the partial table: parse checks only; it holds the cells measured so far)
    cells = read_table(cells_path, "cells", config=None if is_partial else config)
    cells["knob"] = cells["knob"].astype(str)
    cells["temperature"] = cells["temperature"].astype(float)
    cells["density"] = cells["density"].astype(float)
    results = None
    if not is_partial and (wd / "results.csv").is_file():
        results = read_table(wd / "results.csv", "results", config=config)
        results["knob"] = results["knob"].astype(str)
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
    partial = None
    if is_partial:
        grid = expected_grid(config)
        total = (len(grid.temperatures) * len(grid.densities) if grid is not None
                 else len(cells))
        partial = (len(cells), total)
    return Sweep(workdir=wd, cells=cells, results=results, config=config, rule=rule_obj,
                 rule_source=source, partial=partial)


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
    listing = ", ".join(f"{d:g} ({regimes.format_density(d)})" for d in available)
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

