"""Sweeps: config -> members -> stages (dense, prune, retrain, measure) -> tables and figures."""
from tr_jax.sweep.run import Pipeline, member_key, run

__all__ = ["Pipeline", "member_key", "run"]
