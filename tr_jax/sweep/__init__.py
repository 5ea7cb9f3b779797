"""Sweeps: config -> members -> stages (dense, prune, retrain, measures) -> tables and figures."""
from tr_jax.sweep.context import Context, setup
from tr_jax.sweep.metrics import read_metrics as metrics
from tr_jax.sweep.run import member_key, run, run_stages
from tr_jax.sweep.status import status

__all__ = ["Context", "member_key", "metrics", "run", "run_stages", "setup", "status"]
