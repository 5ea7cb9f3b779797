"""Case study 3 (docs/fidelity.md, Case studies): tuning SAM's rho for pruning, against the smallest rho."""
from __future__ import annotations


import numpy as np
import pandas as pd

from tr_jax import stats
from tr_jax.regimes import (coerce_rule)
from ._common import (HotterLike, RuleLike, _check_table, _column, _knobs, _regime, _regret)

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

