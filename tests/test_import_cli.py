"""`tr-jax import-torch` and `tr-jax measure` on reference-style checkpoints (issue: fidelity)."""
import json

import jax
import numpy as np
import pytest

import tr_jax as tj
from tr_jax import cli


def _export(tmp_path, name, key, masks=None):
    m = tj.models.preresnet(8, 10, width=0.25)
    v = tj.models.init(m, jax.random.key(key), (8, 8, 1))
    if masks is None:
        masks = tj.pruning.magnitude_masks(v["params"], 0.3)
    v = {"params": tj.pruning.apply_masks(v["params"], masks), "batch_stats": v["batch_stats"]}
    sd = tj.models.to_torch(v, arch="preresnet", depth=8, num_classes=10, width=0.25, masks=masks)
    path = tmp_path / f"{name}.npz"
    np.savez(path, **{f"module.{k}": x for k, x in sd.items()})  # DataParallel prefix
    return path, v, masks


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("imp")
    pa, va, masks = _export(tmp, "a", 0)
    pb, _, _ = _export(tmp, "b", 1, masks)
    for p, out in ((pa, tmp / "A"), (pb, tmp / "B")):
        assert cli.main(["import-torch", str(p), "--arch", "preresnet", "--depth", "8",
                         "--width", "0.25", "--out", str(out)]) == 0
    return tmp, va, masks


def test_import_round_trips_variables_and_mask(imported):
    tmp, va, masks = imported
    from tr_jax.sweep.imported import load_imported
    model, v, mask, meta = load_imported(tmp / "A")
    assert meta["arch"] == "preresnet" and meta["depth"] == 8
    assert meta["density"] == pytest.approx(0.3, abs=0.01)
    for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(va)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(mask), jax.tree.leaves(masks)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_measure_pair_self_and_other(imported, capsys):
    tmp, _, _ = imported
    out_json = tmp / "self.json"
    assert cli.main(["measure", str(tmp / "A"), str(tmp / "A"), "--dataset", "digits",
                     "--points", "3", "--hessian-probes", "4", "--json", str(out_json)]) == 0
    res = json.loads(out_json.read_text())
    assert res["lmc"] == 0.0 and res["cka"] == pytest.approx(1.0, abs=1e-5)
    assert res["hessian_trace_a"] == pytest.approx(res["hessian_trace_b"])
    assert cli.main(["measure", str(tmp / "A"), str(tmp / "B"), "--dataset", "digits",
                     "--points", "3", "--no-hessian", "--json", str(out_json)]) == 0
    res = json.loads(out_json.read_text())
    assert res["cka"] < 0.999 and np.isfinite(res["lmc"]) and "hessian_trace_a" not in res
    assert len(res["lmc_train_error"]) == 3
    assert "lmc " in capsys.readouterr().out


def test_import_of_another_architecture_and_mask_mismatch_are_clear(imported, tmp_path, capsys):
    tmp, _, _ = imported
    assert cli.main(["import-torch", str(tmp / "a.npz"), "--arch", "densenet", "--depth", "10",
                     "--out", str(tmp_path / "X")]) == 2
    err = capsys.readouterr().err
    assert "tr-jax: error:" in err and "preresnet" in err
    pc, _, _ = _export(tmp_path, "c", 2)  # its own mask
    assert cli.main(["import-torch", str(pc), "--arch", "preresnet", "--depth", "8", "--width",
                     "0.25", "--out", str(tmp_path / "C")]) == 0
    assert cli.main(["measure", str(tmp / "A"), str(tmp_path / "C"), "--dataset", "digits",
                     "--no-hessian"]) == 2
    assert "share a mask" in capsys.readouterr().err
    assert cli.main(["measure", str(tmp_path), str(tmp / "A"), "--dataset", "digits"]) == 2
    assert "not a tr_jax imported checkpoint" in capsys.readouterr().err
