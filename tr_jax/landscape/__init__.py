"""Loss-landscape measures of pruned models: LMC, CKA, BN recalibration (SPEC §2)."""
from tr_jax.landscape.bn import evaluate, recalibrate
from tr_jax.landscape.cka import cka
from tr_jax.landscape.lmc import interpolation_errors, lerp, lmc

__all__ = ["cka", "evaluate", "interpolation_errors", "lerp", "lmc", "recalibrate"]
