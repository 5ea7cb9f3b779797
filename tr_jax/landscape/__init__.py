"""Loss-landscape measures of pruned models: LMC, CKA, BN recalibration (see docs/fidelity.md)."""
from tr_jax.landscape.bezier import bezier, curve_errors, mode_connectivity, train_curves
from tr_jax.landscape.bn import evaluate, evaluate_stacked, recalibrate, recalibrate_points
from tr_jax.landscape.cka import cka
from tr_jax.landscape.hessian import (hessian_trace, hvp, lanczos, member_hessian, member_loss,
                                      top_eigenvalue)
from tr_jax.landscape.lmc import (default_points_per_call, evaluate_points, interpolation_errors,
                                  lerp, line_points, lmc, loss_barrier, pair_curves,
                                  resolve_points_per_call)

__all__ = ["bezier", "cka", "curve_errors", "evaluate", "evaluate_points", "evaluate_stacked",
           "hessian_trace", "hvp", "interpolation_errors", "lanczos", "lerp", "line_points", "lmc",
           "loss_barrier", "member_hessian", "member_loss", "mode_connectivity", "pair_curves", "recalibrate",
           "recalibrate_points", "resolve_points_per_call", "default_points_per_call", "top_eigenvalue",
           "train_curves"]
