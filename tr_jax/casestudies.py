"""The paper's three case studies, as tr_jax runs them on a sweep's cell table.

Zhou et al. (ICML 2023) illustrate the three-regime model with three case studies (SPEC 3.4):
(1) should a temperature knob be raised or lowered before pruning, (2) which dense model of a
family should be pruned, and (3) tuning SAM's rho for pruning. The paper's exact protocols,
baselines and table values are **UNVERIFIED** (only the abstract and figure captions were
available), so everything below is **tr_jax's own protocol**, documented here and configurable.

Input: a cells table (``cells.csv`` of a sweep, or :func:`tr_jax.regimes.cells_from_results`),
one row per ``(knob, temperature, density)`` with ``test_error`` (pruned + retrained model),
``lmc``, ``cka`` and, for some selectors, ``dense_test_error``. Extra columns are ignored.
Regimes are always recomputed with :func:`tr_jax.regimes.classify` and ``rule`` (``None`` =
the default :class:`~tr_jax.regimes.RegimeRule`); a ``regime`` column already in the table is
*not* used, so pass the sweep's own rule (``config.regimes``) to reproduce it.

Protocols
---------
**1. Direction advice** (:func:`advise`, :func:`advice_accuracy`). At a target density, look at
the regime of the cell at the current temperature (default: the coldest, i.e. the most-trained
dense model, the usual starting point): Regime I -> *raise* the temperature, II-A -> *lower* it,
II-B -> *keep*. The suggestion is the adjacent temperature of the sweep grid in that direction.
:func:`advice_accuracy` scores the advice of every cell against the measured pruned test error:
a move is right when the neighbour in the advised direction has a lower test error (by more
than ``tol``); a *keep* is right when no neighbour (hotter or colder) is better by more than
``tol`` (a local minimum). Cells without a neighbour in the advised direction, ``unknown``
advice, and NaN errors are not scored.

**2. Model selection** (:func:`select_model`, :func:`compare_selectors`). The family is the set
of dense models of a knob (its temperatures; or a user subset ``candidates``, matched in the
column ``key``). Every candidate is pruned to the target density and retrained, and LMC/CKA of
its retrained pairs are measured at that density (the premise of the case study); selectors may
use those and the *dense* test error, but **never the pruned test error** they are judged by.

* ``"lmc_cka"`` (the three-regime selector): among *connected* candidates the one with the
  highest CKA (SPEC 3.4; the SPEC sanity check on Figure 2 uses LMC > -0.1 then max CKA).
* ``"lmc_error"``: among connected candidates the lowest *dense* test error.
* ``"most_trained"``: the coldest candidate (baseline: prune the fully trained model).
* ``"best_dense"``: the lowest dense test error (baseline).
* ``"random"``: a uniformly random candidate; reported as the *expected* regret (mean over
  candidates), deterministic; with ``seed`` one seeded draw instead.

*Connected* (``connected=``): ``"rule"`` (default) = not Regime I under ``rule`` (Regime I
is judged on the whole density column, as :func:`~tr_jax.regimes.classify` does); if no
candidate is connected, it falls back to ``"tolerance"``. ``"tolerance"`` = ``lmc >= max(lmc of
the candidates) - lmc_tolerance`` (default 0.05 on the train-error fraction). ``"threshold"`` =
``lmc > lmc_threshold`` (default -0.1, the SPEC sanity check). Ties go to the hotter candidate
(cheaper to train). The judge: the pruned test error of the chosen cell; the *oracle* is the
candidate with the lowest pruned test error in hindsight; ``regret = error(choice) -
error(oracle)`` (>= 0).

**3. SAM rho** (:func:`tune_sam_rho`). Cells of knob ``"sam_rho"`` (rho is the temperature,
larger = hotter). Per density: start at the smallest rho (the coldest; rho = 0 is plain SGD when
swept), walk to the next larger rho while the cell is in Regime I (advice: raise the
temperature). All cells passed on the way are Regime I, so the connected cells all lie at or
beyond the stopping point; choose among them the II-B cell with the highest CKA, else the
connected cell with the highest CKA (ties: the smaller rho). If the walk reaches the largest rho
without finding a connected cell, that largest rho is chosen. Only regime/LMC/CKA are used, never
the test error. Reported with the best rho in hindsight, the regret, and the regret of the
baseline "always the smallest rho".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from tr_jax import stats
from tr_jax.regimes import (KNOB_LABELS, REGIMES, RegimeRule, advice, change_point, classify,
                            coerce_rule, column_codes, temperature_order)

__all__ = [
    "ACTIONS",
    "SELECTORS",
    "Advice",
    "AdviceScore",
    "Selection",
    "advise",
    "advice_accuracy",
    "select_model",
    "compare_selectors",
    "selector_summary",
    "tune_sam_rho",
    "sam_rho_summary",
]

ACTIONS: tuple[str, ...] = ("raise temperature", "lower temperature", "keep", "unknown")
SELECTORS: tuple[str, ...] = ("lmc_cka", "lmc_error", "most_trained", "best_dense", "random")
_CONNECTED = ("rule", "tolerance", "threshold")
_MATCH = 1e-9

RuleLike = RegimeRule | Mapping[str, Any] | None
HotterLike = bool | Mapping[str, bool] | None


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _check_table(cells: Any, what: str, columns: Iterable[str] = ("knob", "temperature", "density")
                 ) -> None:
    if not isinstance(cells, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(cells).__name__}")
    missing = [c for c in columns if c not in cells.columns]
    if missing:
        raise ValueError(f"{what}: cells table lacks column(s) {missing}; has {list(cells.columns)}")


def _knobs(cells: pd.DataFrame) -> list[str]:
    return sorted({str(k) for k in cells["knob"]})


def _resolve_knob(cells: pd.DataFrame, knob: str | None, what: str) -> str:
    have = _knobs(cells)
    if knob is None:
        if len(have) != 1:
            raise ValueError(f"{what}: the cells table holds {len(have)} knobs {have}; pass knob=")
        return have[0]
    if str(knob) not in have:
        raise ValueError(f"{what}: knob {knob!r} not in the cells table (has {have})")
    return str(knob)


def _fmt_list(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _match(value: Any, available: Sequence[float], name: str, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: {name} must be a number, got {value!r}") from None
    for a in available:
        if abs(a - v) <= _MATCH:
            return a
    raise ValueError(f"{what}: {name} {value!r} not in the table; available {name}s: "
                     f"{_fmt_list(available)}")


def _column(cells: pd.DataFrame, density: Any, knob: str | None, rule: RegimeRule,
            hotter_is_smaller: HotterLike, what: str) -> tuple[str, float, pd.DataFrame]:
    """The ``(knob, density)`` column, hot -> cold, with fresh ``regime`` labels, a clean
    0..n-1 index and NaN-filled metric columns where absent."""
    _check_table(cells, what)
    knob = _resolve_knob(cells, knob, what)
    sub = cells[cells["knob"].astype(str) == knob]
    dens = sorted({float(d) for d in sub["density"]})
    d = _match(density, dens, "density", what)
    col = sub[np.abs(sub["density"].astype(float) - d) <= _MATCH].copy()
    for m in ("test_error", "lmc", "cka", "dense_test_error"):
        col[m] = col[m].astype(float) if m in col.columns else np.nan
    col["temperature"] = col["temperature"].astype(float)
    dup = col["temperature"][col["temperature"].duplicated()]
    if len(dup):
        raise ValueError(f"{what}: several rows for knob {knob!r}, density {d:g}, temperature "
                         f"{float(dup.iloc[0]):g}: pass a per-cell table (one row per knob, "
                         f"temperature, density; e.g. regimes.cells_from_results)")
    col = col.sort_values("temperature", ascending=temperature_order(knob, hotter_is_smaller),
                          kind="mergesort").reset_index(drop=True)
    labels = classify(col, rule, hotter_is_smaller=hotter_is_smaller).to_numpy(dtype=object)
    col["regime"] = pd.Series(labels, index=col.index, dtype=object)
    return knob, d, col


def _regime(x: Any) -> str | None:
    """A regime label, with every flavour of missing (None, NaN, pd.NA) as None."""
    return x if isinstance(x, str) else None


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def _opt(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _regret(x: float, best: float) -> float:
    return x - best if math.isfinite(x) and math.isfinite(best) else float("nan")


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100.0 * x:.2f}%"


# ---------------------------------------------------------------------------------------------
# Case study 1: raise or lower the temperature?
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Advice:
    """Direction advice for one cell (case study 1).

    ``action`` is one of :data:`ACTIONS`; ``suggested_temperature`` the adjacent temperature
    of the sweep grid in the advised direction (None for keep/unknown or at the edge of the
    grid); ``test_error_after`` the pruned test error there (NaN if none); ``improved`` whether
    it is lower than ``test_error_now`` (None when not comparable). ``evidence`` holds the
    cell's ``lmc``, ``cka``, ``test_error`` and the thresholds the rule used in this column.
    """

    knob: str
    density: float
    temperature: float
    regime: str | None
    action: str
    evidence: dict[str, Any]
    suggested_temperature: float | None
    test_error_now: float
    test_error_after: float
    improved: bool | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def text(self) -> str:
        label = KNOB_LABELS.get(self.knob, self.knob)
        ev = self.evidence
        lines = [f"{label} = {self.temperature:g} at density {100 * self.density:g}%: "
                 f"regime {self.regime or 'unknown'}"]
        lmc, cka = ev.get("lmc"), ev.get("cka")
        why = [f"LMC {lmc:+.3f}" if lmc is not None else "LMC n/a",
               f"threshold {ev.get('lmc_threshold'):+.3f}"]
        if ev.get("jump_fired"):
            why.append(f"LMC drop {ev.get('jump_drop'):.3f} between {label} "
                       f"{ev.get('jump_hot_temperature'):g} and {ev.get('jump_cold_temperature'):g}")
        why.append(f"CKA {cka:.4f}" if cka is not None else "CKA n/a")
        ref = ev.get("cka_reference")
        if ref is not None:
            why.append(f"II-B cut {ref:.4f}")
        lines.append("  evidence: " + ", ".join(why))
        if self.action in ("raise temperature", "lower temperature"):
            if self.suggested_temperature is None:
                lines.append(f"  advice: {self.action} (already at the edge of the swept grid)")
            else:
                lines.append(f"  advice: {self.action} -> try {label} = "
                             f"{self.suggested_temperature:g}")
        elif self.action == "keep":
            lines.append("  advice: keep this temperature (Regime II-B)")
        else:
            lines.append("  advice: unknown (missing LMC/CKA)")
        now = _pct(self.test_error_now)
        if self.suggested_temperature is not None:
            verdict = {True: "improves", False: "does not improve", None: "not comparable"}[
                self.improved]
            lines.append(f"  pruned test error now {now}, at the suggestion "
                         f"{_pct(self.test_error_after)} ({verdict})")
        else:
            lines.append(f"  pruned test error now {now}")
        return "\n".join(lines)


def _evidence(col: pd.DataFrame, i: int, rule: RegimeRule) -> dict[str, Any]:
    lmc = col["lmc"].to_numpy(dtype=float)
    cka = col["cka"].to_numpy(dtype=float)
    temps = col["temperature"].to_numpy(dtype=float)
    codes = column_codes(lmc, cka, rule)[0]
    connected = codes >= 2
    if rule.cka_mode == "relative":
        ref = float(cka[connected].max() - rule.cka_delta) if connected.any() else None
    else:
        ref = float(rule.cka_threshold)
    cp = change_point(lmc)
    jump = None
    if cp is not None:
        fin = np.flatnonzero(np.isfinite(lmc))
        hot = int(fin[fin < cp[0]].max())  # the last finite cell before the change point
        jump = (hot, cp[0], cp[1])
    fired = bool(rule.use_jump and jump is not None and jump[2] > rule.jump_threshold)
    return {
        "lmc": _opt(lmc[i]), "cka": _opt(cka[i]), "test_error": _opt(_num(col["test_error"][i])),
        "lmc_threshold": float(rule.lmc_threshold), "use_jump": bool(rule.use_jump),
        "jump_threshold": float(rule.jump_threshold),
        "jump_lmc_ceiling": float(rule.jump_lmc_ceiling),
        "jump_drop": float(jump[2]) if jump else None,
        "jump_hot_temperature": float(temps[jump[0]]) if jump else None,
        "jump_cold_temperature": float(temps[jump[1]]) if jump else None,
        "jump_fired": fired,
        "cka_mode": rule.cka_mode, "cka_delta": float(rule.cka_delta),
        "cka_threshold": float(rule.cka_threshold), "cka_reference": ref,
    }


def _step(action: str) -> int:
    """Position offset of the advised move in a hot -> cold ordered column."""
    return {"raise temperature": -1, "lower temperature": +1}.get(action, 0)


def advise(cells: pd.DataFrame, density: float, *, temperature: float | None = None,
           rule: RuleLike = None, hotter_is_smaller: HotterLike = None,
           knob: str | None = None) -> Advice:
    """Case study 1: should the temperature be raised or lowered before pruning to ``density``?

    ``density`` and ``temperature`` must match a cell exactly (within 1e-9), else ``ValueError``
    lists the available values. ``temperature`` defaults to the coldest of the column (the
    most-trained model). ``knob`` is needed only when the table holds several knobs.
    """
    rule = coerce_rule(rule)
    knob, d, col = _column(cells, density, knob, rule, hotter_is_smaller, "advise")
    temps = col["temperature"].to_numpy(dtype=float)
    i = len(col) - 1 if temperature is None else int(np.flatnonzero(
        temps == _match(temperature, sorted(temps), "temperature", "advise"))[0])
    regime = _regime(col["regime"][i])
    action = advice(regime)
    j = i + _step(action)
    has_next = action in ("raise temperature", "lower temperature") and 0 <= j < len(col)
    now = _num(col["test_error"][i])
    after = _num(col["test_error"][j]) if has_next else float("nan")
    improved = bool(after < now) if has_next and math.isfinite(now) and math.isfinite(after) else None
    return Advice(knob=knob, density=d, temperature=float(temps[i]), regime=regime, action=action,
                  evidence=_evidence(col, i, rule),
                  suggested_temperature=float(temps[j]) if has_next else None,
                  test_error_now=now, test_error_after=after, improved=improved)


@dataclasses.dataclass(frozen=True)
class AdviceScore:
    """How often following the advice one step helps (see :func:`advice_accuracy`).

    ``table``: one row per cell (``knob, density, temperature, regime, action,
    suggested_temperature, test_error, test_error_after, scored, right``); ``n`` the number of
    scored cells, ``n_right``, ``fraction_right`` (NaN when ``n == 0``), ``per_regime``:
    regime -> ``{"n": ..., "n_right": ..., "fraction_right": ...}``.
    """

    table: pd.DataFrame
    fraction_right: float
    n: int
    n_right: int
    per_regime: dict[str, dict[str, float]]
    ci_lo: float = float("nan")
    ci_hi: float = float("nan")
    chance: float = float("nan")
    chance_lo: float = float("nan")
    chance_hi: float = float("nan")
    p_value: float = float("nan")
    n_perm: int = 0
    ci: float = 0.95

    def chance_sentence(self) -> str:
        """The accuracy's interval and the shuffled-moves baseline, in words."""
        if not self.n:
            return "no scored cells"
        out = (f"{int(100 * self.ci)}% Wilson interval [{_pct(self.ci_lo)}, {_pct(self.ci_hi)}]")
        if self.n_perm:
            out += (f"; the same moves shuffled over the cells ({self.n_perm} permutations) are "
                    f"right {_pct(self.chance)} of the time [{_pct(self.chance_lo)}, "
                    f"{_pct(self.chance_hi)}]; p = {self.p_value:.3g} that shuffled moves do as "
                    f"well")
        return out

    def summary(self) -> str:
        lines = [f"advice right in {self.n_right}/{self.n} scored cells "
                 f"({_pct(self.fraction_right) if self.n else 'n/a'}); {self.chance_sentence()}"]
        for r, v in self.per_regime.items():
            frac = _pct(v["fraction_right"]) if v["n"] else "n/a"
            lines.append(f"  {r:5s} ({advice(r)}): {v['n_right']}/{v['n']} ({frac})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"fraction_right": self.fraction_right, "n": self.n, "n_right": self.n_right,
                "per_regime": self.per_regime, "ci_lo": self.ci_lo, "ci_hi": self.ci_hi,
                "chance": self.chance, "chance_lo": self.chance_lo, "chance_hi": self.chance_hi,
                "p_value": self.p_value, "n_perm": self.n_perm, "ci": self.ci}


def _score_move(err: np.ndarray, i: int, action: str, tol: float
                ) -> tuple[bool, bool | None, int | None, float]:
    """Score one advised move of cell ``i`` of a hot -> cold column of pruned test errors:
    ``(scored, right, neighbour position or None, error after)`` (see :func:`advice_accuracy`)."""
    if action in ("raise temperature", "lower temperature"):
        j = i + _step(action)
        if 0 <= j < len(err):
            if np.isfinite(err[i]) and np.isfinite(err[j]):
                return True, bool(err[j] < err[i] - tol), j, float(err[j])
            return False, None, j, float(err[j])
    elif action == "keep":
        nb = [err[j] for j in (i - 1, i + 1) if 0 <= j < len(err)]
        if nb and np.isfinite(err[i]) and all(np.isfinite(nb)):
            return True, bool(min(nb) >= err[i] - tol), None, float(min(nb))
    return False, None, None, float("nan")


def _shuffled_accuracy(errs: list[np.ndarray], where: list[tuple[int, int]], actions: list[str],
                       tol: float, n_perm: int, seed: int) -> np.ndarray:
    """Accuracy of the same moves shuffled over the same cells, ``n_perm`` times."""
    rng = np.random.default_rng(seed)
    out = np.full(n_perm, np.nan)
    acts = np.asarray(actions, dtype=object)
    for k in range(n_perm):
        shuffled = acts[rng.permutation(len(acts))]
        scored = right = 0
        for (c, i), a in zip(where, shuffled):
            sc, ok, _, _ = _score_move(errs[c], i, a, tol)
            scored += sc
            right += bool(ok)
        out[k] = right / scored if scored else np.nan
    return out


def advice_accuracy(cells: pd.DataFrame, rule: RuleLike = None, *, knob: str | None = None,
                    hotter_is_smaller: HotterLike = None, tol: float = 0.0, n_perm: int = 1000,
                    seed: int = 0, ci: float = 0.95) -> AdviceScore:
    """Score the direction advice of every cell against the measured pruned test error.

    Move (I: raise, II-A: lower) right iff ``error(neighbour in that direction) < error(cell) -
    tol``; keep (II-B) right iff every existing neighbour has ``error >= error(cell) - tol``.
    Unscored: ``unknown`` advice, a move at the edge of the grid, a keep without neighbours, or
    NaN errors. ``knob=None`` scores every knob of the table.

    Against chance: ``ci_lo, ci_hi`` the Wilson interval of the fraction right; ``chance`` the
    mean accuracy of the *same moves shuffled* over the cells that have advice (``n_perm``
    permutations, seeded; ``chance_lo, chance_hi`` their ``ci`` percentile range) and
    ``p_value`` the one-sided permutation p-value that shuffled moves do at least as well. A
    rule whose advice beats its own shuffle knows something about *where* to move; one that
    does not is as good as the marginal frequencies of its moves. ``n_perm=0`` skips it.
    """
    rule = coerce_rule(rule)
    _check_table(cells, "advice_accuracy")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"advice_accuracy: tol must be a finite number >= 0, got {tol!r}")
    if int(n_perm) < 0:
        raise ValueError(f"advice_accuracy: n_perm must be >= 0, got {n_perm!r}")
    knobs = [_resolve_knob(cells, knob, "advice_accuracy")] if knob is not None else _knobs(cells)
    rows, errs, where, actions = [], [], [], []
    for kn in knobs:
        sub = cells[cells["knob"].astype(str) == kn]
        for d in sorted({float(x) for x in sub["density"]}):
            _, _, col = _column(sub, d, kn, rule, hotter_is_smaller, "advice_accuracy")
            temps = col["temperature"].to_numpy(dtype=float)
            err = col["test_error"].to_numpy(dtype=float)
            errs.append(err)
            for i in range(len(col)):
                regime = _regime(col["regime"][i])
                action = advice(regime)
                scored, right, j, after = _score_move(err, i, action, tol)
                rows.append(dict(knob=kn, density=d, temperature=float(temps[i]), regime=regime,
                                 action=action,
                                 suggested_temperature=float(temps[j]) if j is not None else np.nan,
                                 test_error=err[i], test_error_after=after, scored=scored,
                                 right=right))
                if action != "unknown":
                    where.append((len(errs) - 1, i))
                    actions.append(action)
    columns = ["knob", "density", "temperature", "regime", "action", "suggested_temperature",
               "test_error", "test_error_after", "scored", "right"]
    table = pd.DataFrame(rows, columns=columns)
    table["right"] = table["right"].astype(object)
    scored = table[table["scored"].astype(bool)]
    n = int(len(scored))
    n_right = int(sum(bool(x) for x in scored["right"]))
    per_regime = {}
    for r in REGIMES:
        s = scored[scored["regime"] == r]
        k = int(sum(bool(x) for x in s["right"]))
        per_regime[r] = {"n": int(len(s)), "n_right": k,
                         "fraction_right": k / len(s) if len(s) else float("nan")}
    frac = n_right / n if n else float("nan")
    lo, hi = stats.wilson_interval(n_right, n, ci)
    extra: dict[str, Any] = dict(ci_lo=lo, ci_hi=hi, ci=float(ci), n_perm=int(n_perm))
    if n and n_perm:
        null = _shuffled_accuracy(errs, where, actions, tol, int(n_perm), seed)
        c_lo, c_hi = stats.percentile_interval(null, ci)
        extra.update(chance=float(np.nanmean(null)), chance_lo=float(c_lo), chance_hi=float(c_hi),
                     p_value=stats.permutation_pvalue(frac, null))
    return AdviceScore(table=table, fraction_right=frac, n=n, n_right=n_right,
                       per_regime=per_regime, **extra)


# ---------------------------------------------------------------------------------------------
# Case study 2: which model of the family to prune?
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Selection:
    """Outcome of :func:`select_model` at one density.

    ``chosen`` is the chosen member (its ``key`` value, a temperature by default; None when no
    choice is possible, and for the ``"random"`` selector without a seed), ``test_error`` its
    pruned test error (``"random"`` without a seed: the mean over candidates), ``oracle`` /
    ``oracle_test_error`` the best candidate in hindsight, ``regret = test_error -
    oracle_test_error`` (NaN when undefined), ``candidates`` / ``connected`` the members
    considered / judged connected (hot -> cold), ``note`` any fallback taken.
    """

    knob: str
    density: float
    selector: str
    chosen: Any
    test_error: float
    oracle: Any
    oracle_test_error: float
    regret: float
    candidates: tuple
    connected: tuple
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _member(x: Any) -> Any:
    if isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool):
        return float(x)
    return x


def _candidates(col: pd.DataFrame, candidates: Iterable[Any] | None, key: str,
                what: str) -> pd.DataFrame:
    if key not in col.columns:
        raise ValueError(f"{what}: key column {key!r} not in the cells table "
                         f"(has {list(col.columns)})")
    members = [_member(v) for v in col[key]]
    if len(set(members)) != len(members):
        raise ValueError(f"{what}: key column {key!r} is not unique within the density column")
    if candidates is None:
        return col
    wanted = list(candidates)
    if not wanted:
        raise ValueError(f"{what}: candidates is empty")
    pos = []
    for c in wanted:
        c = _member(c)
        hits = [i for i, m in enumerate(members)
                if (m == c) or (isinstance(m, float) and isinstance(c, float) and abs(m - c) <= _MATCH)]
        if not hits:
            shown = _fmt_list(members) if all(isinstance(m, float) for m in members) else members
            raise ValueError(f"{what}: candidate {c!r} not in column {key!r} at this density "
                             f"(available: {shown})")
        pos.append(hits[0])
    return col.iloc[sorted(set(pos))]


def _connected(cand: pd.DataFrame, connected: str, lmc_tolerance: float,
               lmc_threshold: float) -> tuple[np.ndarray, str]:
    lmc = cand["lmc"].to_numpy(dtype=float)
    fin = np.isfinite(lmc)

    def by_tolerance() -> np.ndarray:
        return fin & (lmc >= np.max(lmc[fin]) - lmc_tolerance) if fin.any() else fin

    if connected == "rule":
        mask = np.asarray([r in ("II-A", "II-B") for r in cand["regime"]], dtype=bool)
        if not mask.any() and fin.any():
            return by_tolerance(), "no candidate connected by the rule: used the LMC tolerance"
        return mask, ""
    if connected == "tolerance":
        return by_tolerance(), ""
    with np.errstate(invalid="ignore"):
        return fin & (lmc > lmc_threshold), ""


def _argbest(values: np.ndarray, mask: np.ndarray, largest: bool) -> int | None:
    """Position of the best finite value under ``mask``; first (hottest) on ties."""
    ok = mask & np.isfinite(values)
    if not ok.any():
        return None
    v = np.where(ok, values if largest else -values, -np.inf)
    return int(np.argmax(v))


def select_model(cells: pd.DataFrame, density: float, *, by: str = "lmc_cka",
                 candidates: Iterable[Any] | None = None, connected: str = "rule",
                 lmc_tolerance: float = 0.05, lmc_threshold: float = -0.1, rule: RuleLike = None,
                 knob: str | None = None, key: str = "temperature",
                 hotter_is_smaller: HotterLike = None, seed: int | None = None) -> Selection:
    """Case study 2: choose the dense model of a family to prune to ``density``.

    ``by`` is one of :data:`SELECTORS`; the selectors, the meaning of ``connected`` and the
    regret are described in the module docstring. ``candidates``: a subset of the values of
    column ``key`` (default: temperatures) at this density; unknown values raise
    ``ValueError``. No selector reads the pruned ``test_error``; it is only the judge.
    """
    if by not in SELECTORS:
        raise ValueError(f"select_model: unknown selector {by!r}; expected one of {SELECTORS}")
    if connected not in _CONNECTED:
        raise ValueError(f"select_model: unknown connected={connected!r}; expected one of "
                         f"{_CONNECTED}")
    for name, v in (("lmc_tolerance", lmc_tolerance), ("lmc_threshold", lmc_threshold)):
        if not (isinstance(v, (int, float)) and math.isfinite(v)):
            raise ValueError(f"select_model: {name} must be a finite number, got {v!r}")
    rule = coerce_rule(rule)
    knob, d, col = _column(cells, density, knob, rule, hotter_is_smaller, "select_model")
    cand = _candidates(col, candidates, key, "select_model")
    members = tuple(_member(v) for v in cand[key])
    err = cand["test_error"].to_numpy(dtype=float)
    o = _argbest(err, np.ones(len(cand), bool), largest=False)
    oracle = members[o] if o is not None else None
    oracle_err = float(err[o]) if o is not None else float("nan")
    mask, note = _connected(cand, connected, lmc_tolerance, lmc_threshold)
    conn = tuple(m for m, k in zip(members, mask) if k)
    pick: int | None = None
    chosen_err = float("nan")
    chosen: Any = None
    if by == "lmc_cka":
        pick = _argbest(cand["cka"].to_numpy(dtype=float), mask, largest=True)
    elif by == "lmc_error":
        pick = _argbest(cand["dense_test_error"].to_numpy(dtype=float), mask, largest=False)
    elif by == "most_trained":
        pick = len(cand) - 1 if len(cand) else None
    elif by == "best_dense":
        pick = _argbest(cand["dense_test_error"].to_numpy(dtype=float), np.ones(len(cand), bool),
                        largest=False)
    elif seed is not None:  # random, one seeded draw
        pick = int(np.random.default_rng(seed).integers(len(cand))) if len(cand) else None
    else:  # random, expected over a uniform draw (candidates with a finite judge)
        fin = np.isfinite(err)
        chosen_err = float(err[fin].mean()) if fin.any() else float("nan")
        note = (note + "; " if note else "") + "expected over a uniform draw"
    if pick is not None:
        chosen = members[pick]
        chosen_err = float(err[pick])
    elif by != "random":
        note = (note + "; " if note else "") + "no candidate has the metrics this selector needs"
    regret = _regret(chosen_err, oracle_err)
    return Selection(knob=knob, density=d, selector=by, chosen=chosen, test_error=chosen_err,
                     oracle=oracle, oracle_test_error=oracle_err, regret=regret,
                     candidates=members, connected=conn, note=note)


def compare_selectors(cells: pd.DataFrame, densities: Iterable[float] | None = None,
                      selectors: Iterable[str] = SELECTORS, *, knob: str | None = None,
                      **kwargs: Any) -> pd.DataFrame:
    """Run :func:`select_model` for every ``(knob, density, selector)``.

    ``densities`` default: every density of the knob; ``knob=None``: every knob of the table
    (``densities`` must then exist for each). ``kwargs`` go to :func:`select_model`. Rows:
    ``knob, density, selector, chosen, test_error, oracle, oracle_test_error, regret,
    n_candidates, n_connected, note``. Per-selector means: :func:`selector_summary`.
    """
    _check_table(cells, "compare_selectors")
    selectors = tuple(selectors)
    for s in selectors:
        if s not in SELECTORS:
            raise ValueError(f"compare_selectors: unknown selector {s!r}; expected one of {SELECTORS}")
    if "by" in kwargs:
        raise ValueError("compare_selectors: pass selectors=, not by=")
    knobs = [_resolve_knob(cells, knob, "compare_selectors")] if knob is not None else _knobs(cells)
    rows = []
    for kn in knobs:
        sub = cells[cells["knob"].astype(str) == kn]
        dens = sorted({float(x) for x in sub["density"]}) if densities is None else list(densities)
        for d in dens:
            for s in selectors:
                sel = select_model(sub, d, by=s, knob=kn, **kwargs)
                rows.append(dict(knob=kn, density=sel.density, selector=s, chosen=sel.chosen,
                                 test_error=sel.test_error, oracle=sel.oracle,
                                 oracle_test_error=sel.oracle_test_error, regret=sel.regret,
                                 n_candidates=len(sel.candidates), n_connected=len(sel.connected),
                                 note=sel.note))
    columns = ["knob", "density", "selector", "chosen", "test_error", "oracle",
               "oracle_test_error", "regret", "n_candidates", "n_connected", "note"]
    return pd.DataFrame(rows, columns=columns)


#: the naive choices a selector must beat (case study 2)
BASELINES: tuple[str, ...] = ("most_trained", "best_dense", "random")


def selector_summary(table: pd.DataFrame, *, baselines: Iterable[str] = BASELINES,
                     n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Per ``(knob, selector)`` of a :func:`compare_selectors` table: ``mean_regret``,
    ``max_regret``, ``n`` (densities with a finite regret), ``n_zero_regret`` (regret <= 1e-12),
    in the order the selectors appear; then the intervals.

    ``mean_regret_lo, mean_regret_hi``: bootstrap ``ci`` interval of the mean regret over the
    densities (the densities are the resampled units: a cells table holds means, so the noise
    between dense seeds enters only through them). For every baseline ``b`` present in the table
    (``most_trained``, ``best_dense``, ``random``): ``vs_{b}`` the mean over densities of
    ``regret(selector) - regret(b)`` (paired; negative = the selector beats the baseline) with
    ``vs_{b}_lo, vs_{b}_hi``. A selector beats a baseline when ``vs_{b}_hi < 0``.
    """
    _check_table(table, "selector_summary", ("knob", "selector", "regret"))
    base = [b for b in baselines if b in set(table["selector"])]
    rows = []
    for (kn, s), g in table.groupby(["knob", "selector"], sort=False):
        r = g["regret"].to_numpy(dtype=float)
        r = r[np.isfinite(r)]
        mean, lo, hi = stats.bootstrap_mean(r, n_boot, seed, ci)
        row = dict(knob=kn, selector=s, mean_regret=mean,
                   max_regret=float(r.max()) if r.size else np.nan, n=int(r.size),
                   n_zero_regret=int((r <= 1e-12).sum()), mean_regret_lo=lo, mean_regret_hi=hi)
        mine = g.set_index("density")["regret"].astype(float)
        for b in base:
            theirs = table[(table["knob"] == kn) & (table["selector"] == b)]
            theirs = theirs.set_index("density")["regret"].astype(float)
            diff = (mine - theirs.reindex(mine.index)).to_numpy()
            row[f"vs_{b}"], row[f"vs_{b}_lo"], row[f"vs_{b}_hi"] = stats.bootstrap_mean(
                diff, n_boot, seed, ci)
        rows.append(row)
    cols = ["knob", "selector", "mean_regret", "max_regret", "n", "n_zero_regret",
            "mean_regret_lo", "mean_regret_hi"]
    cols += [f"vs_{b}{x}" for b in base for x in ("", "_lo", "_hi")]
    return pd.DataFrame(rows, columns=cols)


# ---------------------------------------------------------------------------------------------
# Case study 3: tuning SAM's rho for pruning
# ---------------------------------------------------------------------------------------------

def tune_sam_rho(cells: pd.DataFrame, *, rule: RuleLike = None,
                 hotter_is_smaller: HotterLike = None) -> pd.DataFrame:
    """Case study 3: pick SAM's rho per density from the regimes (protocol in the module
    docstring). Rows per density: ``knob, density, chosen_rho, chosen_regime,
    chosen_test_error, best_rho, best_test_error, regret, baseline_rho`` (the smallest rho),
    ``baseline_test_error, baseline_regret, path`` (the rhos visited by the walk, a tuple),
    ``n_rho, note``. ``ValueError`` (naming the knobs present) when there are no sam_rho cells.
    """
    rule = coerce_rule(rule)
    _check_table(cells, "tune_sam_rho")
    if "sam_rho" not in _knobs(cells):
        raise ValueError(f"tune_sam_rho: no 'sam_rho' cells in the table (knobs present: "
                         f"{_knobs(cells)})")
    sub = cells[cells["knob"].astype(str) == "sam_rho"]
    rows = []
    for d in sorted({float(x) for x in sub["density"]}):
        _, _, col = _column(sub, d, "sam_rho", rule, hotter_is_smaller, "tune_sam_rho")
        rho = col["temperature"].to_numpy(dtype=float)
        err = col["test_error"].to_numpy(dtype=float)
        cka = col["cka"].to_numpy(dtype=float)
        regime = [_regime(r) for r in col["regime"]]
        n = len(col)
        note = ""
        # walk from the coldest (last, hot -> cold order) towards hotter while Regime I
        i = n - 1
        path = [float(rho[i])]
        while regime[i] == "I" and i > 0:
            i -= 1
            path.append(float(rho[i]))
        conn = np.asarray([r in ("II-A", "II-B") for r in regime], dtype=bool)
        iib = np.asarray([r == "II-B" for r in regime], dtype=bool)
        # ties: the smaller rho = the colder = the later position; search from the cold end
        pick = None
        for mask in (iib, conn):
            ok = mask & np.isfinite(cka)
            if ok.any():
                rev = np.where(ok, cka, -np.inf)[::-1]
                pick = n - 1 - int(np.argmax(rev))
                break
        if pick is None:
            if regime[i] == "I":
                pick, note = i, "no connected rho: walked to the largest rho"
            else:
                note = "no regime (missing LMC/CKA): no choice"
        o = int(np.nanargmin(err)) if np.isfinite(err).any() else None
        best_err = float(err[o]) if o is not None else float("nan")
        chosen_err = float(err[pick]) if pick is not None else float("nan")
        base_err = float(err[n - 1])

        rows.append(dict(
            knob="sam_rho", density=d, chosen_rho=float(rho[pick]) if pick is not None else np.nan,
            chosen_regime=regime[pick] if pick is not None else None, chosen_test_error=chosen_err,
            best_rho=float(rho[o]) if o is not None else np.nan, best_test_error=best_err,
            regret=_regret(chosen_err, best_err), baseline_rho=float(rho[n - 1]),
            baseline_test_error=base_err,
            baseline_regret=_regret(base_err, best_err), path=tuple(path), n_rho=n, note=note))
    columns = ["knob", "density", "chosen_rho", "chosen_regime", "chosen_test_error", "best_rho",
               "best_test_error", "regret", "baseline_rho", "baseline_test_error",
               "baseline_regret", "path", "n_rho", "note"]
    return pd.DataFrame(rows, columns=columns)


def sam_rho_summary(table: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0,
                    ci: float = 0.95) -> dict[str, float]:
    """Case study 3 against its baseline: of a :func:`tune_sam_rho` table, the mean regret of
    the regime walk and of "always the smallest rho", and their paired difference (walk minus
    baseline, over densities; negative = the walk helps), each with a bootstrap ``ci`` interval
    over the densities. Keys: ``mean_regret, mean_regret_lo, mean_regret_hi, baseline_regret,
    baseline_regret_lo, baseline_regret_hi, vs_baseline, vs_baseline_lo, vs_baseline_hi, n``."""
    _check_table(table, "sam_rho_summary", ("density", "regret", "baseline_regret"))
    r = table["regret"].to_numpy(float)
    b = table["baseline_regret"].to_numpy(float)
    out: dict[str, float] = {}
    for name, v in (("mean_regret", r), ("baseline_regret", b), ("vs_baseline", r - b)):
        out[name], out[f"{name}_lo"], out[f"{name}_hi"] = stats.bootstrap_mean(v, n_boot, seed, ci)
    out["n"] = int(np.isfinite(r - b).sum())
    return out
