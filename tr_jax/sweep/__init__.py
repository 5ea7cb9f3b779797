"""Sweeps: config -> members -> stages (dense, prune, retrain, measure) -> tables and figures."""
from tr_jax.sweep.metrics import read_metrics as metrics
from tr_jax.sweep.run import Pipeline, member_key, run
from tr_jax.sweep.status import status

__all__ = ["Pipeline", "member_key", "metrics", "run", "status"]
