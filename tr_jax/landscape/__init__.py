"""Loss-landscape measures of pruned models: LMC, CKA, BN recalibration (see docs/fidelity.md)."""
from tr_jax.landscape.bezier import bezier, curve_errors, mode_connectivity, train_curves
from tr_jax.landscape.bn import evaluate, evaluate_stacked, recalibrate, recalibrate_points
from tr_jax.landscape.cka import cka, cka_gram, cka_unbiased, cka_unbiased_gram, gram, hsic_unbiased
from tr_jax.landscape.hessian import (hessian_trace, hvp, lanczos, member_hessian, member_loss,
                                      top_eigenvalue)
from tr_jax.landscape.layers import (default_layers, layer_cka_pairs, layer_features, layer_grams,
                                     layer_names, module_paths, pair_layer_cka)
from tr_jax.landscape.lmc import (default_points_per_call, evaluate_points, interpolation_errors,
                                  lerp, line_points, lmc, loss_barrier, pair_curves,
                                  resolve_points_per_call)
from tr_jax.landscape.spectrum import (block_traces, esd_density, esd_summary, hessian_esd,
                                       layer_groups, layer_traces, slq)

__all__ = ["bezier", "cka", "cka_gram", "cka_unbiased", "cka_unbiased_gram", "curve_errors",
           "default_layers", "gram", "hsic_unbiased", "layer_cka_pairs", "layer_features",
           "layer_grams", "pair_layer_cka", "evaluate", "evaluate_points", "evaluate_stacked",
           "hessian_trace", "hvp", "interpolation_errors", "lanczos", "lerp", "line_points", "lmc",
           "loss_barrier", "member_hessian", "member_loss", "mode_connectivity", "pair_curves", "recalibrate",
           "recalibrate_points", "resolve_points_per_call", "default_points_per_call", "top_eigenvalue",
           "train_curves"]
__all__ += ["block_traces", "esd_density", "esd_summary", "hessian_esd", "layer_groups",
            "layer_traces", "slq", "layer_names", "module_paths"]
