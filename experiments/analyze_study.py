"""Print the paper's claims, measured with their uncertainty, for a finished sweep.

    python experiments/analyze_study.py runs/digits_study [--n-boot 1000]
    python experiments/analyze_study.py runs/digits_verdict --correction holm --lmc-change 25,35

Reads ``results.csv`` of the workdir and prints: the cells with 95 % bootstrap intervals over
dense seeds and regime confidences (:func:`tr_jax.regimes.cells_from_results`), the dichotomy
(:func:`tr_jax.regimes.dichotomy`, optionally Holm-corrected over the densities) with the power
of its t test and how many dense seeds would decide each density (:func:`tr_jax.regimes.power`;
the figure goes to ``dichotomy.png`` in the workdir), optionally the LMC change between two
temperatures per dense seed (:func:`tr_jax.regimes.lmc_change`), the LMC transition per dense seed
(:func:`tr_jax.regimes.transition_with_uncertainty`), case study 1's advice accuracy against
shuffled moves and case study 2's selector regret against the baselines
(:mod:`tr_jax.casestudies`). The rule is the default :class:`~tr_jax.regimes.RegimeRule`
unless ``--from-config`` takes the run's own.
"""
from __future__ import annotations

import argparse
import json
import pathlib

import pandas as pd

from tr_jax import casestudies, plots, regimes
from tr_jax.tables_io import read_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--from-config", action="store_true",
                    help="use the run's own regime rule (config.json) instead of the default")
    ap.add_argument("--correction", choices=regimes.CORRECTIONS, default="none",
                    help="multiple-testing correction of the dichotomy over the densities")
    ap.add_argument("--lmc-change", default=None, metavar="HOT,COLD",
                    help="also test LMC(COLD) - LMC(HOT) per dense seed (e.g. 25,35 around an "
                         "LR drop at 30), with the same correction")
    args = ap.parse_args()
    wd = pathlib.Path(args.workdir)
    config = (json.loads((wd / "config.json").read_text())
              if (wd / "config.json").is_file() else {})
    res = read_table(wd / "results.csv", "results", config=config)  # checked: cut, damaged, rows
    rule = config.get("regimes") if args.from_config else None
    cells = regimes.cells_from_results(res, rule, n_boot=args.n_boot)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 30)
    print("== cells (percent; [lo, hi] = 95% bootstrap over dense seeds)")
    show = pd.DataFrame({
        "T": cells.temperature, "density": cells.density,
        "test_error": [f"{100 * v:.2f} [{100 * lo:.2f},{100 * hi:.2f}]" for v, lo, hi in
                       zip(cells.test_error, cells.test_error_lo, cells.test_error_hi)],
        "lmc": [f"{v:+.3f} [{lo:+.3f},{hi:+.3f}]" for v, lo, hi in
                zip(cells.lmc, cells.lmc_lo, cells.lmc_hi)],
        "cka": [f"{v:.4f} [{lo:.4f},{hi:.4f}]" for v, lo, hi in
                zip(cells.cka, cells.cka_lo, cells.cka_hi)],
        "regime": cells.regime, "confidence": cells.regime_confidence.round(2),
        "dense_err": (100 * cells.dense_test_error).round(2)})
    print(show.to_string(index=False))
    print()
    print(regimes.summary_table(cells))
    print("\n== dichotomy")
    dich = regimes.dichotomy(res, n_boot=args.n_boot, correction=args.correction)
    print(dich.text())
    n_tests = len(dich.table) if args.correction == "holm" else 1
    print(f"-- power of the t test (80 %, alpha 0.05{f' / {n_tests}' if n_tests > 1 else ''}, "
          f"from these per-seed effects)")
    print(regimes.power(res, n_tests=n_tests).text())
    if len(dich.table):
        print(f"(figure: {plots.dichotomy(dich, wd / 'dichotomy.png')})")
    if args.lmc_change:
        hot, cold = (float(x) for x in args.lmc_change.split(","))
        print(f"\n== LMC({cold:g}) - LMC({hot:g}) per dense seed (negative = connectivity lost)")
        ch = regimes.lmc_change(res, hot, cold, correction=args.correction)
        print(ch[["density", "lmc_hot", "lmc_cold", "change", "change_t_lo", "change_t_hi",
                  "n_seeds", "p_value", "p_holm", "direction"]].to_string(index=False))
    print("\n== LMC transition per dense seed")
    tt = regimes.transition_with_uncertainty(res)
    print(tt[["density", "hot_temperature", "cold_temperature", "lmc_drop", "lmc_drop_std",
              "lmc_step_std", "sharp", "best_temperature", "best_temperature_seeds"]]
          .to_string(index=False))
    print("\n== case study 1: advice accuracy")
    print(casestudies.advice_accuracy(cells, rule).summary())
    print("\n== case study 2: selector regret (points)")
    cmp_ = casestudies.compare_selectors(cells, rule=rule)
    print((cmp_.pivot_table(index="density", columns="selector", values="regret") * 100)
          .round(2).to_string())
    summ = casestudies.selector_summary(cmp_, results=res, rule=rule, n_boot=args.n_boot)
    print(f"(intervals resample: {summ['unit'].iloc[0]} {summ['unit_note'].iloc[0]})")
    summ = summ.drop(columns=["unit", "unit_note"])
    num = summ.select_dtypes("number").columns
    summ[num] = summ[num].astype(float)
    for c in num:
        if c not in ("n", "n_zero_regret"):
            summ[c] = (100 * summ[c]).round(2)
    print(summ.to_string(index=False))


if __name__ == "__main__":
    main()
