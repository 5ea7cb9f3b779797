"""The batch-size temperature (docs/fidelity.md, Temperature knobs): PreResNet-20 / CIFAR-10, B = 16 ... 512.

Dense: a fixed budget of 62 400 iterations (= 160 epochs at batch 128) at lr 0.1 for every batch size,
MultiStepLR x0.1 at iterations 31 200 and 46 800 (stepped per iteration), drop_last; only the final
checkpoint is pruned. Retrain: batch 128, lr 0.1, 62 400 iterations with the same milestones.
Members are grouped by batch size (one program per group). Smaller batch = hotter [UNVERIFIED].
"""
from tr_jax.config import default_config


def get_config():
    c = default_config()
    c.name = "batch_size"
    c.dataset = "cifar10"
    c.knob = "batch_size"
    c.temperatures = (16, 32, 64, 128, 256, 512)
    for sec in (c.dense, c.retrain):
        sec.schedule, sec.iterations, sec.milestones, sec.drop_last = "iteration", 62400, (31200, 46800), True
    c.retrain.batch_size = 128
    c.measure.bezier.enabled = False
    return c
