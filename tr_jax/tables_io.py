"""Reading a sweep's tables back, checked: the one reader of ``cells.csv`` and ``results.csv``.

:func:`read_table` refuses a table that is cut off, emptied or damaged by hand, with a
:class:`~tr_jax.errors.TableError` naming the file, the line (1-based, the header is line 1) or
the missing row's coordinates, the column, and the fix: rerun ``tr-jax run`` on the workdir,
which rewrites both tables from its checkpoints. It checks, in this order:

* the file: not empty, text, a header and at least one row, ending with a newline (tr_jax writes
  every table whole, through a rename; a file that stops inside a row was cut off);
* the structure: every row has as many fields as the header, no column twice, the columns the
  analyses need are there;
* the values: numbers where numbers belong (empty, i.e. NaN, only where tr_jax may write it: a
  metric of a cell whose members or pairs are all sick, an interval, an optional metric), the
  stage and regime labels, no row twice;
* the rows: with the workdir's ``config.json`` (its temperature / density / seed grid), every
  cell of the grid in ``cells.csv``, and every dense checkpoint, retrained member and pair in
  ``results.csv``. A config without a grid (a hand-built table) skips this check.

After the checks the table is parsed with :func:`pandas.read_csv`, as before.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import os
import pathlib
from typing import Any, Callable, Mapping

import pandas as pd

from tr_jax.errors import TableError

__all__ = ["read_table", "table_fix", "expected_grid"]

#: the strings pandas reads as NaN (its default ``na_values``)
NA_STRINGS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                        "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
                        "nan", "null"})


def table_fix(path: str | os.PathLike) -> str:
    """The fix for a damaged table of the workdir holding ``path``."""
    wd = pathlib.Path(path).parent
    return (f"rerun `tr-jax run CONFIG --workdir {wd}` on this workdir, which rewrites the "
            f"tables from its checkpoints")


@dataclasses.dataclass(frozen=True)
class _Spec:
    required: tuple[str, ...]          # columns that must be there
    present: tuple[str, ...]           # columns (when there) whose every value must be given
    numeric: Callable[[str], bool]     # columns whose values must be numbers (or empty)
    integer: tuple[str, ...] = ()      # numeric columns of whole numbers
    #: column -> (the values it may hold, how the message names them)
    choices: Mapping[str, tuple[tuple[str, ...], str]] = dataclasses.field(default_factory=dict)


def _cells_spec() -> _Spec:
    from tr_jax.regimes.aggregate import cell_metrics, optional_metrics
    from tr_jax.regimes.rule import REGIMES
    metrics = set(cell_metrics()) | set(optional_metrics()) | {"dense_test_error",
                                                               "normalized_test_error"}
    plain = metrics | {"temperature", "density", "sick_members", "n_dense_seeds",
                       "regime_confidence"}

    def numeric(col: str) -> bool:
        return col in plain or (col.endswith(("_lo", "_hi")) and col[:-3] in metrics)

    return _Spec(required=("knob", "temperature", "density", "test_error", "lmc", "cka"),
                 present=("knob", "temperature", "density", "sick_members", "n_dense_seeds"),
                 numeric=numeric, integer=("sick_members", "n_dense_seeds"),
                 choices={"regime": (tuple(REGIMES), ", ".join(repr(r) for r in REGIMES[:-1])
                                     + f" or {REGIMES[-1]!r} (or empty)")})


def _results_spec() -> _Spec:
    num = {"temperature", "density", "dense_seed", "retrain_seed", "value"}
    return _Spec(required=("knob", "stage", "temperature", "density", "dense_seed", "metric",
                           "value"),
                 present=("knob", "stage", "temperature", "density", "dense_seed", "metric",
                          "sick"),
                 numeric=num.__contains__, integer=("dense_seed", "retrain_seed"),
                 choices={"stage": (("dense", "retrain", "pair"), "'dense', 'retrain' or 'pair'"),
                          "sick": (("True", "False", "true", "false", "TRUE", "FALSE", "1", "0",
                                    "1.0", "0.0"), "True or False")})


def expected_grid(config: Mapping[str, Any] | None):
    """The :class:`~tr_jax.sweep.grid.Grid` of a workdir's ``config.json`` (a dict); None when
    the config holds no complete grid (a hand-built table's config)."""
    if not isinstance(config, Mapping) or "temperatures" not in config:
        return None
    try:
        from tr_jax.sweep.grid import Grid
        return Grid.from_dict(dict(config))
    except (KeyError, AttributeError, TypeError, ValueError):
        return None


def _num(text: str) -> float:
    return float(f"{float(text):.12g}")  # the key of a coordinate: 0.1 and 0.10000000000001 agree


class _Table:
    """The raw rows of one CSV file (strings), with their line numbers."""

    def __init__(self, path: pathlib.Path, what: str):
        self.path, self.fix = path, table_fix(path)
        self.what = what
        try:
            self.text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise self.error(f"not a CSV text file (undecodable byte at offset {e.start})") from None
        if not self.text.strip():
            raise self.error("the file is empty (no header, no rows): emptied or cut off")
        self.rows: list[tuple[int, list[str]]] = []
        reader = csv.reader(io.StringIO(self.text))
        try:
            for row in reader:
                if row:  # pandas skips blank lines too
                    self.rows.append((reader.line_num, row))
        except csv.Error as e:
            raise self.error(f"not valid CSV ({e})", line=reader.line_num) from None
        self.header = self.rows.pop(0)[1]

    def error(self, problem: str, line: int | None = None, column: str | None = None
              ) -> TableError:
        where = str(self.path)
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        return TableError(f"{where}: {problem}; {self.fix}")

    def check_structure(self, spec: _Spec) -> None:
        header = self.header
        seen = set()
        for c in header:
            if c in seen:
                raise self.error("the header names this column twice", line=1, column=c)
            seen.add(c)
        if not self.rows:
            if not self.text.endswith("\n"):
                raise self.error("the header is cut off and there are no rows", line=1)
            raise self.error(f"a header but no rows: no {self.what}")
        n = len(header)
        for line, row in self.rows:
            if len(row) < n:
                raise self.error(f"the row is cut off: {len(row)} of {n} fields, the values "
                                 f"from this column on are missing", line=line,
                                 column=header[len(row)])
            if len(row) > n:
                raise self.error(f"{len(row)} fields where the header has {n}", line=line)
        if not self.text.endswith("\n"):
            line, row = self.rows[-1]
            raise self.error("the file ends inside this row (tr_jax ends every table with a "
                             "newline): the row, and the table, are cut off", line=line,
                             column=header[len(row) - 1])
        missing = [c for c in spec.required if c not in header]
        if missing:
            raise self.error(f"no column{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(repr(c) for c in missing)} in the header", line=1)

    def check_values(self, spec: _Spec) -> None:
        for j, col in enumerate(self.header):
            numeric, integer = spec.numeric(col), col in spec.integer
            needed, choices = col in spec.present, spec.choices.get(col)
            if not (numeric or needed or choices):
                continue
            for line, row in self.rows:
                v = row[j].strip()
                if v in NA_STRINGS:
                    if needed:
                        raise self.error("no value (empty)" + (", must be a number" if numeric
                                                               else ""), line=line, column=col)
                    continue
                if numeric:
                    try:
                        x = float(v)
                    except ValueError:
                        raise self.error(f"{row[j]!r} is not a number", line=line,
                                         column=col) from None
                    if integer and x != x // 1:
                        raise self.error(f"{row[j]!r} is not a whole number", line=line,
                                         column=col)
                elif choices and v not in choices[0]:
                    raise self.error(f"{row[j]!r} is not {choices[1]}", line=line, column=col)

    def column(self, name: str) -> list[str]:
        j = self.header.index(name)
        return [row[j].strip() for _, row in self.rows]


def _check_cells_rows(t: _Table, grid) -> None:
    knobs, temps, dens = t.column("knob"), t.column("temperature"), t.column("density")
    where: dict[tuple, int] = {}
    for (line, _), k, tt, d in zip(t.rows, knobs, temps, dens):
        key = (k, _num(tt), _num(d))
        if key in where:
            raise t.error(f"a second row for the cell knob={k!r}, temperature={key[1]:g}, "
                          f"density={key[2]:g} (first on line {where[key]})", line=line)
        where[key] = line
    if grid is None:
        return
    want = [(str(grid.knob), _num(tt), _num(d)) for tt, d in
            itertools.product(grid.temperatures, grid.densities)]
    missing = [key for key in want if key not in where]
    if missing:
        k, tt, d = missing[0]
        raise t.error(f"no row for the cell knob={k!r}, temperature={tt:g}, density={d:g} of "
                      f"config.json's grid ({len(missing)} of its {len(want)} cells missing)")


def _results_row(knob: str, stage: str, s: Any, tt: Any, d: Any, r: Any, pair: str,
                 metric: str) -> tuple[tuple, str]:
    """(key, description) of a results.csv row: a dense checkpoint (dense seed, temperature), a
    retrained member (and density, retrain seed) or a pair (and density, pair of retrain
    seeds), with its metric."""
    s, tt = _num(s), _num(tt)
    coords = f"dense_seed={s:g}, temperature={tt:g}"
    if stage == "dense":
        return ((knob, "dense", s, tt, metric),
                f"the dense checkpoint {coords}, metric {metric!r}")
    d = _num(d)
    if stage == "retrain":
        r = None if str(r).strip() in NA_STRINGS else _num(r)
        return ((knob, "retrain", s, tt, d, r, metric),
                f"the retrained member {coords}, density={d:g}, retrain_seed="
                f"{'?' if r is None else f'{r:g}'}, metric {metric!r}")
    return ((knob, "pair", s, tt, d, pair, metric),
            f"the pair {coords}, density={d:g}, pair={pair!r}, metric {metric!r}")


def _check_results_rows(t: _Table, grid) -> None:
    cols = {c: (t.column(c) if c in t.header else [""] * len(t.rows))
            for c in ("knob", "stage", "dense_seed", "temperature", "density", "retrain_seed",
                      "pair", "metric")}
    where: dict[tuple, int] = {}
    for i, (line, _) in enumerate(t.rows):
        c = {k: v[i] for k, v in cols.items()}
        key, text = _results_row(c["knob"], c["stage"], c["dense_seed"], c["temperature"],
                                 c["density"], c["retrain_seed"], c["pair"], c["metric"])
        if key in where:
            raise t.error(f"a second row for {text} (first on line {where[key]})", line=line)
        where[key] = line
    if grid is None:
        return
    k = str(grid.knob)
    want = [_results_row(k, "dense", s, tt, 1.0, None, "", "test_error")
            for s, tt in itertools.product(grid.dense_seeds, grid.temperatures)]
    want += [_results_row(k, "retrain", s, tt, d, r, "", "test_error")
             for s, tt, d, r in grid.members()]
    want += [_results_row(k, "pair", s, tt, d, None, f"{ra}-{rb}", metric)
             for s, tt, d, ra, rb in grid.pair_values() for metric in ("lmc", "cka")]
    missing = [text for key, text in want if key not in where]
    if missing:
        raise t.error(f"no row for {missing[0]} of config.json's grid ({len(missing)} of its "
                      f"{len(want)} rows missing)")


_KINDS = {"cells": (_cells_spec, _check_cells_rows, "cells"),
          "results": (_results_spec, _check_results_rows, "results")}


def read_table(path: str | os.PathLike, kind: str, *, config: Mapping[str, Any] | None = None
               ) -> pd.DataFrame:
    """``cells.csv`` (``kind="cells"``) or ``results.csv`` (``kind="results"``) at ``path``,
    checked (see the module's doc) and parsed with :func:`pandas.read_csv`.

    ``config``: the workdir's ``config.json`` as a dict; its grid (temperatures, densities,
    dense and retrain seeds) says which rows must be there. Raises
    :class:`~tr_jax.errors.TableError` naming the file, the line or the missing row, the column
    and the fix; ``FileNotFoundError`` when there is no file."""
    if kind not in _KINDS:
        raise ValueError(f"read_table: kind must be 'cells' or 'results', got {kind!r}")
    spec_of, check_rows, what = _KINDS[kind]
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    t = _Table(path, what)
    spec = spec_of()
    t.check_structure(spec)
    t.check_values(spec)
    check_rows(t, expected_grid(config))
    try:
        return pd.read_csv(io.StringIO(t.text))
    except (pd.errors.ParserError, ValueError) as e:  # not expected after the checks above
        raise t.error(f"pandas cannot read it ({e})") from None
