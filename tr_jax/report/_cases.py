"""Report sections: the dichotomy, the three case studies against their baselines, fitted
thresholds."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import casestudies, plots, regimes
from ._load import (Sweep, _close, coldest_temperature, load_labels)
from ._render import (_Block, _pct, _table)

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
                blocks.append(_Block("h3", f"Density {regimes.format_density(d)} ({knob})"))
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
        wide["density"] = [regimes.format_density(d) for d in wide["density"]]
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
        blocks += _selector_intervals(part, sw.results)
    if "temperature" in cmp_.columns:
        picks = cmp_.pivot_table(index="density", columns="selector", values="temperature",
                                 aggfunc="first", dropna=False).reset_index()
        picks.columns = [str(c) for c in picks.columns]
        blocks.append(_Block("note", "Temperature picked by each selector:"))
        blocks.append(_Block("table", table=_table(picks, {c: "{:g}" for c in picks.columns
                                                           if c != "density"})))
    return blocks


def _selector_intervals(part: pd.DataFrame, results: pd.DataFrame | None = None
                        ) -> list[_Block]:
    """Mean regret per selector with its bootstrap interval (over dense seeds when results.csv
    has >= 2 of them, else over densities), and the paired difference to each baseline
    (negative = better than the baseline)."""
    if results is not None and "knob" in results.columns:
        results = results[results["knob"].astype(str).isin({str(k) for k in part["knob"]})]
    summ = casestudies.selector_summary(part, results=results)
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
    unit = summ["unit"].iloc[0] if len(summ) else "density"
    over = ("over the dense seeds (each draw reruns the selectors on the resampled cells)"
            if unit == "dense_seed" else
            f"over the densities ({summ['unit_note'].iloc[0] if len(summ) else ''})")
    return [_Block("note", f"95% bootstrap intervals {over}; 'minus X' = the "
                   "selector's regret minus X's at the same density (negative = better than X; "
                   "an interval below 0 = reliably better):"),
            _Block("table", table=pd.DataFrame(rows).fillna(""))]


def _power_sentence(sw: Sweep) -> str | None:
    """How many dense seeds would decide each density's effect (:func:`regimes.power`), or None
    when no density can be sized (one dense seed, no spread)."""
    try:
        pw = regimes.power(sw.results)
    except ValueError:
        return None
    if not pw.table["n_needed"].notna().any():
        return None
    return ("Power of the t test (80 % power, alpha 0.05, from this sweep's own per-seed "
            "effects; a pilot's effect and sd are estimates, so plan with a margin):\n"
            + pw.text())


def _dichotomy_section(sw: Sweep, figdir: Any = None, dpi: int = 110
                       ) -> tuple[list[_Block], str | None]:
    blocks = [_Block("h2", "The dichotomy: does a hotter dense model help at low density and "
                     "hurt at high density?"),
              _Block("p", "Per density: the mean pruned test error of the hot half of the "
                     "temperatures minus that of the cold half (negative = hotter is better), "
                     "with a bootstrap interval over dense seeds and a t interval of the "
                     "per-seed effects; a direction is declared only when both exclude 0.")]
    if sw.results is None:
        return blocks + [_Block("note", "No results.csv: the dichotomy needs the runs.")], None
    try:
        dich = regimes.dichotomy(sw.results)
        text = dich.text()
    except ValueError as e:
        return blocks + [_Block("note", f"Not available for this sweep: {e}")], None
    blocks.append(_Block("pre", text))
    if figdir is not None and len(dich.table):
        p = plots.dichotomy(dich, figdir / "dichotomy.png", dpi=dpi)
        blocks.append(_Block("img", text="Hot-minus-cold pruned test error per density (points; "
                             "negative = hotter better): grey bar = bootstrap interval over "
                             "dense seeds, capped line = t interval of the per-seed effects, "
                             "dashed = 0.", path=p))
    power_text = _power_sentence(sw)
    if power_text:
        blocks.append(_Block("pre", power_text))
    return blocks, text


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
    for m in plots.all_panels():
        if m == "normalized_test_error" and "test_error" in cells.columns:
            out.append(m)
        elif m in cells.columns and pd.to_numeric(cells[m], errors="coerce").notna().any():
            out.append(m)
    return out


