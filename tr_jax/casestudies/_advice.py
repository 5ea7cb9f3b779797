"""Case study 1 (docs/fidelity.md, Case studies): raise or lower the temperature before pruning; the advice's
accuracy against shuffled moves."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from tr_jax import stats
from tr_jax.regimes import (KNOB_LABELS, REGIMES, RegimeRule, advice, change_point, coerce_rule,
                            column_codes)
from ._common import (HotterLike, RuleLike, _check_table, _column, _knobs, _match, _num, _opt, _pct,
                      _regime, _resolve_knob)

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


