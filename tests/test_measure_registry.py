"""A landscape measure added from this file alone: the weight norm of the retrained members.

One :func:`tr_jax.measures.register` call, nothing changed in the library: the sweep computes it
on the members mesh, writes it to results.csv and cells.csv (with its interval) and draws its
figure; a run killed inside its stage resumes it; a grown sweep computes it for the new members
only, keeping the old members' values bit for bit. Also the registry's own rules.
"""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from tr_jax import cli, hooks, measures, sharding
from tr_jax._checks import Range
from tr_jax.config import config_hash, default_config, load_config, ranges

TINY = str(pathlib.Path(__file__).parents[1] / "configs" / "tiny.py")
BASE = ["temperatures=(1,)", "dense.epochs=1", "prune.densities=(0.2, 0.5)", "retrain.epochs=1",
        "measure.test_error_last_epochs=1", "measure.lmc_points=2", "measure.cka_images=64",
        "run.members_strategy=vmap", "measure.weight_norm.enabled=True"]
GROWN = ["retrain.seeds=(1, 2, 3)"]
computed: list[int] = []  # members whose norm was computed, in order


def _norm(inputs: measures.Inputs, retrained: dict, idx: np.ndarray) -> dict:
    """The L2 norm of each member's parameters, computed on the members' own devices."""
    params = inputs.take(retrained["variables"], idx)["params"]
    sq = [jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), axis=1) for x in jax.tree.leaves(params)]
    computed.extend(int(i) for i in idx)
    return {"norm": np.asarray(sharding.to_host(jnp.sqrt(sum(sq))), np.float64)[:len(idx)]}


WEIGHT_NORM = measures.Measure(
    name="weight_norm", unit="member", compute=_norm, keys=("norm",),
    metrics=(measures.Metric("weight_norm", "norm", ("Weight norm", "L2 norm of the weights"),
                             fmt="{:.2f}"),),
    settings={"enabled": False, "scale": 1.0}, ranges={"scale": Range("float", lo=0)},
    describe=lambda i: f"L2 norm of {i.grid.num_members} members")


@pytest.fixture(autouse=True)
def weight_norm():
    measures.register(WEIGHT_NORM)
    computed.clear()
    yield
    measures.unregister("weight_norm")


def _run(wd, sets) -> int:
    return cli.main(["run", TINY, "--workdir", str(wd), "--no-progress",
                     *[a for s in sets for a in ("--set", s)]])


def test_registered_measure_config_section_and_hash():
    cfg = default_config()
    assert cfg.measure.weight_norm.enabled is False and cfg.measure.weight_norm.scale == 1.0
    assert isinstance(ranges()["measure.weight_norm.scale"], Range)
    # at its defaults the new section leaves every existing config's hash as it was
    measures.unregister("weight_norm")
    before = config_hash(load_config(TINY, []))
    measures.register(WEIGHT_NORM)
    assert config_hash(load_config(TINY, [])) == before
    assert config_hash(load_config(TINY, ["measure.weight_norm.enabled=True"])) != before
    with pytest.raises(ValueError, match="measure.weight_norm.scale"):
        load_config(TINY, ["measure.weight_norm.scale=-1"])


def test_registry_rules():
    with pytest.raises(ValueError, match="registered already"):
        measures.register(WEIGHT_NORM)
    with pytest.raises(ValueError, match="reserved"):
        measures.register(measures.Measure(name="retrain", unit="member", compute=_norm,
                                           keys=(), metrics=()))
    with pytest.raises(ValueError, match="metric name"):
        measures.register(measures.Measure(
            name="other", unit="pair", compute=_norm, keys=("x",),
            metrics=(measures.Metric("lmc", "x", ("a", "b")),)))
    with pytest.raises(ValueError, match="no valid range"):
        measures.Measure(name="x", unit="pair", compute=_norm, keys=(), metrics=(),
                         settings={"enabled": True, "k": 1})
    with pytest.raises(ValueError, match="unit"):
        measures.Measure(name="x", unit="cell", compute=_norm, keys=(), metrics=())
    assert "weight_norm" in measures.cell_metrics("measured")
    assert measures.groups()["measure"] == (measures.get("outputs"), measures.get("lmc"))


def test_a_registered_measure_runs_resumes_grows_and_is_drawn(tmp_path, capsys):
    wd = tmp_path / "w"
    seen: list = []

    def inspect(name, info):  # the trees the measure computes on, at the stage:members point
        if name == "stage:members" and info["stage"] == "weight_norm":
            seen.append([leaf.sharding for leaf in jax.tree.leaves(info["tree"])])

    class Crash(Exception):
        pass

    def crash_in_second_chunk(name, info):  # a deterministic fault point: chunk 1 committed
        if name == "chunk:written" and info["name"] == "weight_norm" and info["lo"] > 0:
            raise Crash("simulated crash")

    with hooks.added(inspect), hooks.added(crash_in_second_chunk):
        assert _run(wd, BASE) != 0  # the command line reports the crash in one line
    assert "simulated crash" in capsys.readouterr().err
    assert computed == [0, 1, 2, 3] and not (wd / "results.csv").exists()
    assert seen and all(s == sharding.members_sharding() for tree in seen for s in tree)
    computed.clear()
    assert _run(wd, BASE) == 0  # resumed: the second chunk only
    out = capsys.readouterr().out
    assert "weight_norm: resuming after 2/4 items" in out
    assert "measure: done before, loaded" in out
    assert computed == [2, 3]

    res = pd.read_csv(wd / "results.csv")
    norms = res[res.metric == "weight_norm"]
    assert len(norms) == 4 and (norms.stage == "retrain").all()
    assert np.isfinite(norms.value).all() and (norms.value > 0).all()
    # the values are the norms of the retrained members' weights as checkpointed
    from tr_jax.sweep.store import Workdir
    params = Workdir(wd, (wd / "config.json").read_text()).load("retrain")["variables"]["params"]
    want = np.sqrt(sum(np.square(np.asarray(x, np.float64)).reshape(x.shape[0], -1).sum(1)
                       for x in jax.tree.leaves(params)))[:4]
    np.testing.assert_allclose(norms.value.to_numpy(), want, rtol=1e-5)
    cells = pd.read_csv(wd / "cells.csv")
    assert {"weight_norm", "weight_norm_lo", "weight_norm_hi"} <= set(cells.columns)
    assert cells.weight_norm.notna().all()
    assert (wd / "figures" / "epochs_weight_norm.png").stat().st_size > 0

    computed.clear()
    assert _run(wd, BASE + GROWN) == 0  # grown: the new retrain seed's members only
    assert computed == [2, 5]
    grown = pd.read_csv(wd / "results.csv")
    keys = ["temperature", "density", "retrain_seed"]
    old = norms.set_index(keys).value.sort_index()
    new = grown[grown.metric == "weight_norm"].set_index(keys).value.sort_index()
    assert len(new) == 6
    pd.testing.assert_series_equal(new.loc[old.index], old)  # bit for bit
