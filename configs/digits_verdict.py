"""The digits verdict: the pre-registered confirmatory run of the dichotomy on the embedded digits
(plan, hypotheses, test and decision rule: docs/studies/digits-verdict.md).

The digits pilot (configs/digits_study.py, 3 dense seeds) saw the paper's signs (Zhou et al.,
ICML 2023, Section 4, Figure 2: a hotter dense model helps the pruned one at low density and
hurts it at high density) but could not decide them: with 3 dense seeds every t interval of the
per-seed hot-minus-cold effects contained 0. This run is sized by
``tr_jax.regimes.power_from_summary`` on the pilot's numbers:

* the same estimand as the pilot: the same 60-epoch dense run (LR x0.1 at 30 and 45), hot half
  = 15 and 25 epochs (before the first LR drop), cold half = 35 and 60 (after it); the pilot's
  middle temperature 30 only ever sat out of the halves, so it is dropped. Two temperatures do
  not carry the pilot's pattern: in its per-temperature means the 50 % effect comes from 15
  epochs (0.81 % vs 0.49-0.55 %) and the 5 % effect from 25 epochs (4.70 % vs 5.7-6.1 %), so
  25 vs 35 predicts -0.06 points at 50 % (the wrong sign) and 15 vs 35 predicts -0.36 at 5 %
  (d ~ 0.6, ~25 seeds);
* densities 5 % and 50 %, the pilot's two best-measured effects (d = -1.36 and +1.44): one
  density on each side of the claim. 1 % (n >= 13 at alpha/2, retraining fails there) and 2 %
  (n >= 17) need more seeds than the time allows: exploratory, not run;
* 10 fresh dense seeds (11..20, none of the pilot's): n needed for 80 % power at alpha 0.05/2
  (Holm over the 2 densities, Bonferroni bound) is 8 at both densities; 10 = 8 + 25 % margin
  (90 % power at 5 %, 95 % at 50 %; about 0.87 that both are called if the pilot's numbers
  hold);
* 2 retrain seeds (one pair per cell, LMC and CKA), LR-rewinding retraining for 10 epochs as in
  the pilot; LMC on 6 points; Bezier and Hessian off.

Members: 4 temperatures x 2 densities x 10 dense seeds x 2 retrain seeds = 160 retrained
members (the pilot had 180), 80 pairs, 10 dense runs of 60 epochs. From the pilot's measured
times (dense 109 s per 60-epoch seed, 15.2 s per retrained member, ~4.7 s per pair, on the
2-core CPU at load 12-18): dense ~1 090 s + retraining ~2 430 s + LMC/CKA ~380 s = ~65 min under
that load, less on a quieter machine. Run and analyse:

    tr-jax run configs/digits_verdict.py --workdir runs/digits_verdict
    python experiments/analyze_study.py runs/digits_verdict --correction holm --lmc-change 25,35
"""
from tr_jax.config import default_config


def get_config():
    c = default_config()
    c.name = "digits_verdict"
    c.dataset = "digits"
    c.model.depth = 8
    c.model.width = 1.0
    c.temperatures = (15, 25, 35, 60)
    c.dense.epochs = 60
    c.dense.milestones = (30, 45)
    c.dense.seeds = tuple(range(11, 21))
    c.augment.pad = 1
    c.augment.flip = False
    c.prune.densities = (0.05, 0.5)
    c.retrain.epochs = 10
    c.retrain.milestones = (5, 8)
    c.retrain.seeds = (1, 2)
    c.measure.lmc_points = 6
    c.measure.bezier.enabled = False
    c.measure.hessian.enabled = False
    return c
