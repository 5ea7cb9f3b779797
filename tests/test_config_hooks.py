"""Config files with get_model() / get_dataset(): the CLI hands them to the sweep, the
config hash covers their source, dataset names npz:/tfds:/arrays: and prune.leaves validate."""
import pathlib
import textwrap

import pytest

from tr_jax import cli
from tr_jax.config import config_hash, default_config, load_config, to_json, validate

CONFIG = textwrap.dedent('''
    import flax.linen as nn
    import numpy as np
    import tr_jax as tj
    from tr_jax.config import default_config


    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.BatchNorm(use_running_average=not train)(nn.Conv(WIDTH, (3, 3))(x))
            return nn.Dense(2)(x.mean((1, 2)))


    def get_config():
        c = default_config()
        c.dataset = "arrays:mine"
        c.temperatures = (1,)
        c.dense.epochs = 1
        c.dense.batch_size = 4
        c.retrain.batch_size = 4
        c.prune.leaves = "conv+dense"
        c.run.autotune = False
        return c


    def get_model():
        return Net()


    def get_dataset(cfg):
        x = np.arange(6 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4, 1)
        return tj.data.from_arrays(x, np.arange(6) % 2, x[:2], np.array([0, 1]), name="mine")
    ''')


def _write(tmp_path, text, name="mine.py") -> pathlib.Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_cli_run_uses_get_model_and_get_dataset(tmp_path, monkeypatch):
    import tr_jax.sweep
    seen = {}

    def fake_run(cfg, workdir, progress=True, *, model=None, dataset=None):
        seen.update(cfg=cfg, model=model, dataset=dataset)
    monkeypatch.setattr(tr_jax.sweep, "run", fake_run)
    path = _write(tmp_path, CONFIG.replace("WIDTH", "3"))
    assert cli.main(["run", str(path), "--workdir", str(tmp_path / "wd"), "--no-progress"]) == 0
    assert type(seen["model"]).__name__ == "Net"
    assert seen["dataset"].name == "mine" and seen["dataset"].num_train == 6
    assert seen["cfg"].prune.leaves == "conv+dense" and len(seen["cfg"].code_hash) == 16


def test_config_hash_covers_the_model_source(tmp_path):
    a = load_config(_write(tmp_path, CONFIG.replace("WIDTH", "3"), "a.py"))
    b = load_config(_write(tmp_path, CONFIG.replace("WIDTH", "5"), "b.py"))
    a2 = load_config(_write(tmp_path, CONFIG.replace("WIDTH", "3"), "c.py"))
    assert config_hash(a) != config_hash(b)  # a changed model is a different workdir
    assert config_hash(a) == config_hash(a2)
    # a config without hooks keeps the hash it had before code_hash / prune.leaves existed
    plain = validate(default_config())
    assert "code_hash" not in to_json(plain) and '"leaves"' not in to_json(plain)


def test_arrays_dataset_needs_get_dataset(tmp_path):
    text = CONFIG.split("def get_model")[0]
    with pytest.raises(ValueError, match="'arrays:mine'.*defines no get_dataset"):
        load_config(_write(tmp_path, text))


@pytest.mark.parametrize("name, ok", [("npz:/data/mine.npz", True), ("tfds:mnist", True),
                                      ("arrays:x", True), ("npz:", False), ("mnist", False)])
def test_dataset_names(name, ok):
    c = default_config()
    c.dataset = name
    if ok:
        assert validate(c).dataset == name
    else:
        with pytest.raises(ValueError, match="unknown dataset.*npz:PATH"):
            validate(c)


def test_prune_leaves_validated():
    c = default_config()
    c.prune.leaves = "Conv_[0-"
    with pytest.raises(ValueError, match=r"prune.leaves='Conv_\[0-' is neither"):
        validate(c)
