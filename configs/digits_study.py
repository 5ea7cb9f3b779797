"""The embedded digits, run properly: enough seeds to measure uncertainty, and a grid that
straddles the dense model's first LR drop.

Why this grid (Zhou et al. 2023, Figure 2): Figure 2's sharp LMC transition sits right after the dense
model's first LR drop (epoch 80 of 160), and the dichotomy (hotter better at low density,
worse at high density) shows at the densities where retraining starts to fail. quick's grid
(5..40 epochs, drops at 20/30, densities 2..50 %) showed neither. So here:

* dense: 60 epochs, LR x0.1 at epochs 30 and 45 (the paper's 1/2 and 3/4 of the run);
  temperatures 15 / 25 / 30 / 35 / 60: two well before the first drop, the last checkpoint at
  the high LR (30), one just after the drop (35), and the fully trained model (60);
* densities 1 / 2 / 5 / 50 %: 1-2 % is where retraining starts to fail on PreResNet-8, 50 %
  the high-density side of the dichotomy;
* 3 dense seeds x 3 retrain seeds (180 members, 3 pairs per cell): every cell is a mean of
  9 runs, as in Figure 2, so the bootstrap over dense seeds has 3 units;
* LR-rewinding retraining for 10 epochs (x0.1 at 5 and 8): half of quick's, for time;
* LMC on 6 points (t = 0, 0.2, ..., 1) instead of 11; Bezier and Hessian off (time).

Measured: 3577 s (dense 328 s, retraining 41 400 member-steps 2735 s, LMC/CKA ~14 min) on a
2-core CPU shared with three other jobs (load 12-18); on a quiet machine it should take a
fraction of that (not measured). A first version (20 retrain epochs, 5 densities, 11 LMC points)
could not finish in time there. What it shows: README, "The digits study". Run with
``tr-jax run configs/digits_study.py --workdir runs/digits_study`` then ``tr-jax report``.
"""
from tr_jax.config import default_config


def get_config():
    c = default_config()
    c.name = "digits_study"
    c.dataset = "digits"
    c.model.depth = 8
    c.model.width = 1.0
    c.temperatures = (15, 25, 30, 35, 60)
    c.dense.epochs = 60
    c.dense.milestones = (30, 45)
    c.dense.seeds = (1, 2, 3)
    c.augment.pad = 1
    c.augment.flip = False
    c.prune.densities = (0.01, 0.02, 0.05, 0.5)
    c.retrain.epochs = 10
    c.retrain.milestones = (5, 8)
    c.retrain.seeds = (1, 2, 3)
    c.measure.lmc_points = 6
    c.measure.bezier.enabled = False
    c.measure.hessian.enabled = False
    return c
