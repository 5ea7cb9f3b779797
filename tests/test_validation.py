"""Every hyperparameter has a valid range, checked the same way wherever the value comes from: a
config file, ``--set``, a config passed in Python (``validate``, ``tj.sweep.run``) or a
functional-API constructor. Errors are ``ConfigError``s naming the key, the value, the range and
the source. No training here: every test is fast."""
import math
import pathlib
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from tr_jax import _checks as ck
from tr_jax import cli
from tr_jax.config import (KNOBS, RANGES, RETRAIN_MODES, config_hash, default_config, load_config,
                           ranges, schema_keys, validate)
from tr_jax.errors import ConfigError, UserError

ROOT = pathlib.Path(__file__).parents[1]
CONFIGS = ROOT / "configs"
TINY = str(CONFIGS / "tiny.py")

#: config_hash of every configs/*.py measured before the range table existed: a workdir of any of
#: them must keep its hash (resume), so validation may refuse values but never change one
HASHES = {
    "batch_size.py": "37f079559b9e",
    "cifar100.py": "efa7bb38e7d4",
    "cifar_small.py": "21973bd6567f",
    "digits_study.py": "62760af208bf",
    "figure2.py": "107542253425",
    "lr.py": "251c35712513",
    "quick.py": "b8026ddaa8e7",
    "sam_rho.py": "574830352480",
    "tiny.py": "4bbd8b7a8854",  # sets run.autotune=False; with it True: "63cb2253f0e5" as before
    "vgg_densenet.py": "142dde07488d",
}


def _error(overrides, path=TINY) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    return e.value


def _write(tmp_path, body: str, name: str = "mine.py") -> pathlib.Path:
    p = tmp_path / name
    p.write_text("from tr_jax.config import default_config\n\n\ndef get_config():\n"
                 "    c = default_config()\n" + textwrap.indent(textwrap.dedent(body), "    ")
                 + "    return c\n")
    return p


# ------------------------------------------------------------------ the table
@pytest.mark.parametrize("key", schema_keys())
def test_every_schema_key_has_a_range(key):
    table = ranges()  # RANGES and the registered measures' settings
    assert key in table, f"{key} has no entry in tr_jax.config.RANGES (or its measure's ranges)"
    value = default_config()
    for p in key.split("."):
        value = value[p]
    table[key].check(key, value, "default")  # every default is in its own range


def test_the_table_has_no_stale_key():
    assert sorted(ranges()) == sorted(schema_keys())
    assert not any(k.startswith(("measure.bezier.", "measure.hessian.")) for k in RANGES)


def test_the_tables_choices_are_the_modules():
    from tr_jax.pruning import SCOPES
    from tr_jax.regimes.rule import _CKA_MODES
    from tr_jax.training.loop import SCHEDULES
    from tr_jax.training.optim import OPTIMIZERS
    from tr_jax.training.steps import PRECISIONS
    assert RANGES["dense.optimizer"].choices == OPTIMIZERS
    assert RANGES["dense.schedule"].choices == RANGES["retrain.schedule"].choices == SCHEDULES
    assert RANGES["prune.scope"].choices == SCOPES
    assert RANGES["run.precision"].choices == PRECISIONS
    assert RANGES["retrain.mode"].choices == RETRAIN_MODES
    assert RANGES["knob"].choices == KNOBS
    assert RANGES["regimes.cka_mode"].choices == _CKA_MODES


@pytest.mark.parametrize("rng, good, bad", [
    (ck.LR, [0, 0.0, 1e-9, 1, 0.1], [-0.1, math.inf, math.nan, None, True, "0.1"]),
    (ck.WEIGHT_DECAY, [0, 0.0, 5e-4], [-1e-4, math.nan, math.inf]),
    (ck.MOMENTUM, [0, 0.0, 0.9, 0.999], [1, 1.0, 1.5, -0.1, math.nan]),
    (ck.POS_INT, [1, 64], [0, -1, 3.0, True, "ten", None]),
    (ck.SEED, [0, 2**32 - 1], [-1, 2**32, 1.0]),
    (ck.BOOL, [True, False], [0, 1, "True", None]),
])
def test_the_shared_ranges(rng, good, bad):
    for v in good:
        assert rng.check("k", v, "test") == v
    for v in bad:
        with pytest.raises(ConfigError):
            rng.check("k", v, "test")


# ------------------------------------------------------------------ --set, files, Python configs
def test_negative_lr_via_set():
    e = _error(["dense.lr=-0.1"])
    assert str(e) == ("dense.lr=-0.1 (from --set) is invalid: must be a finite number >= 0 "
                      "(0 = weights frozen)")
    assert (e.key, e.value, e.source) == ("dense.lr", -0.1, "--set")


def test_inf_lr_set_in_a_config_file(tmp_path):
    path = _write(tmp_path, 'c.retrain.lr = float("inf")\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (f"retrain.lr=inf (from {path}) is invalid: must be a finite number "
                            ">= 0 (0 = weights frozen)")


def test_nan_weight_decay_in_a_python_config():
    c = default_config()
    c.dense.weight_decay = float("nan")
    with pytest.raises(ConfigError) as e:
        validate(c)
    assert str(e.value) == ("dense.weight_decay=nan (from config) is invalid: must be a finite "
                            "number >= 0")
    with pytest.raises(ConfigError, match=r"dense.weight_decay='nan' \(from --set\)"):
        load_config(TINY, ["dense.weight_decay=nan"])  # not a Python literal: the text itself


def test_momentum_out_of_range():
    assert str(_error(["dense.momentum=1.5"])) == (
        "dense.momentum=1.5 (from --set) is invalid: must be a finite number in [0, 1)")
    assert "measure.bezier.momentum=-0.5 (from --set)" in str(
        _error(["measure.bezier.momentum=-0.5"]))


def test_repeated_values_are_refused():
    e = _error(["prune.densities=(0.1,0.1)"])
    assert "prune.densities=(0.1, 0.1) (from --set)" in str(e) and "0.1 is repeated" in str(e)
    assert "without repeats" in str(e)
    e = _error(["dense.seeds=(1, 1)"])
    assert str(e) == ("dense.seeds=(1, 1) (from --set) is invalid: must be a non-empty tuple, of "
                      "values each an integer in [0, 4294967295], without repeats; 1 is repeated")
    e = _error(["retrain.seeds=(2, 2)"])
    assert "retrain.seeds=(2, 2)" in str(e) and "2 distinct" in str(e)
    assert "1 is repeated" in str(_error(["temperatures=(1, 1)"]))


def test_a_word_for_an_integer_is_a_one_line_config_error():
    e = _error(["retrain.epochs=ten"])
    assert str(e) == "retrain.epochs='ten' (from --set) is invalid: must be an integer >= 1"
    assert (e.key, e.value, e.source) == ("retrain.epochs", "ten", "--set")
    assert "\n" not in str(e)
    # ints are ints: 3.0 is not 3 (as ml_collections refuses it in a config file)
    assert "must be an integer >= 1" in str(_error(["retrain.epochs=3.0"]))


def test_a_scalar_where_a_tuple_is_expected_is_a_one_element_tuple():
    cfg = load_config(TINY, ["prune.densities=0.05", "dense.seeds=7"])
    assert cfg.prune.densities == (0.05,) and cfg.dense.seeds == (7,)
    assert load_config(TINY, ["prune.densities=[0.05, 0.1]"]).prune.densities == (0.05, 0.1)


def test_override_types_follow_the_schema():
    assert load_config(TINY, ["dense.drop_last=false"]).dense.drop_last is False
    assert load_config(TINY, ["dense.drop_last=TRUE"]).dense.drop_last is True
    assert load_config(TINY, ["dense.drop_last=False"]).dense.drop_last is False
    assert "must be True or False" in str(_error(["dense.drop_last=1"]))
    cfg = load_config(TINY, ["dense.lr=1", "name=2024"])  # an int for a float; text for a string
    assert cfg.dense.lr == 1.0 and isinstance(cfg.dense.lr, float) and cfg.name == "2024"
    assert "seed=-1 (from --set)" in str(_error(["seed=-1"]))
    assert "dense.lr=None (from --set)" in str(_error(["dense.lr=None"]))


def test_milestones():
    e = _error(["dense.milestones=(1, 0)"])
    assert "dense.milestones=(1, 0) (from --set)" in str(e) and "strictly increasing" in str(e)
    e = _error(["dense.milestones=(1, 5)"])
    assert str(e) == ("dense.milestones=(1, 5) (from --set) is invalid: must be strictly "
                      "increasing integers in [0, dense.epochs=2] (0-indexed epochs); 5 is beyond "
                      "the end of the run (dense.epochs from " + TINY + "), where it would never "
                      "decay the lr; set dense.milestones too, e.g. dense.milestones=(1,)")
    # a milestone from the file, the run shortened by --set: both sources named
    e = _error(["dense.epochs=25", "temperatures=(5, 10)"], CONFIGS / "quick.py")
    assert f"dense.milestones=(20, 30) (from {CONFIGS / 'quick.py'})" in str(e)
    assert "(dense.epochs from --set)" in str(e) and "e.g. dense.milestones=(12, 18)" in str(e)
    # the default milestones (80, 120) of a shortened run are kept as before (no decay in it)
    load_config(CONFIGS / "figure2.py", ["retrain.epochs=10"])
    # a milestone at the end never fires but is allowed (a run cut short: tiny at 1 epoch)
    load_config(TINY, ["dense.epochs=1", "temperatures=(1,)"])
    # fine-tuning does not use retrain.milestones
    load_config(TINY, ["retrain.mode=finetune", "retrain.milestones=(100,)"])
    # an iteration schedule counts optimiser steps
    it = ["dense.schedule=iteration", "dense.iterations=10", "knob=lr", "temperatures=(0.1,)"]
    load_config(TINY, it + ["dense.milestones=(5, 10)"])
    assert "[0, dense.iterations=10]" in str(_error(it + ["dense.milestones=(5, 11)"]))


def test_gamma_and_other_factors():
    assert "dense.gamma=0.0 (from --set) is invalid: must be a finite number > 0" in str(
        _error(["dense.gamma=0"]))
    assert load_config(TINY, ["dense.gamma=2.0"]).dense.gamma == 2.0  # a factor, not only decay
    assert "run.memory_budget_gb=-1.0" in str(_error(["run.memory_budget_gb=-1"]))
    assert "measure.hessian.tol=-0.001" in str(_error(["measure.hessian.tol=-1e-3"]))


def test_a_plain_dict_or_a_wrong_type_in_python_names_the_key():
    with pytest.raises(ConfigError, match=r"^dense.epochs='ten' \(from config\) is invalid: must "
                                          "be an integer >= 1$"):
        validate({"dense": {"epochs": "ten"}})
    with pytest.raises(ConfigError, match=r"regimes.cka_delta=-1.0 \(from config\)"):
        validate({"regimes": {"cka_delta": -1.0}})
    import numpy as np
    cfg = validate({"prune": {"densities": np.array([0.1, 0.5])}, "dense": {"seeds": 4}})
    assert cfg.prune.densities == (0.1, 0.5) and type(cfg.prune.densities[0]) is float
    assert cfg.dense.seeds == (4,)


def test_a_config_file_assigning_another_type_is_one_line(tmp_path):
    path = _write(tmp_path, "c.dense.epochs = 'ten'\n")
    with pytest.raises(UserError) as e:
        load_config(path)
    assert str(path) in str(e.value) and "epochs" in str(e.value) and "\n" not in str(e.value)


def test_every_config_validates_with_its_hash_unchanged():
    assert set(HASHES) <= {p.name for p in CONFIGS.glob("*.py")}
    for path in sorted(CONFIGS.glob("*.py")):  # configs added later: validated, hash not pinned
        cfg = load_config(path)
        want = HASHES.get(path.name, config_hash(cfg))
        assert config_hash(cfg) == want, path.name
        again = validate(validate(cfg, "tj.sweep.run(cfg)"))  # re-validation changes nothing
        assert config_hash(again) == want and again.to_dict() == cfg.to_dict(), path.name


def test_new_run_keys_at_their_defaults_leave_the_hash_alone():
    """run.autotune and run.autotune_budget_s came after workdirs were written: at their defaults
    they are left out of the hash (config._NEW_KEY_DEFAULTS), so those workdirs still resume."""
    assert config_hash(load_config(TINY, ["run.autotune=True"])) == "63cb2253f0e5"
    assert config_hash(load_config(TINY, ["run.autotune=True", "run.autotune_budget_s=18.0"])) \
        == "63cb2253f0e5"
    assert config_hash(load_config(TINY, ["run.autotune=True", "run.autotune_budget_s=60"])) \
        != "63cb2253f0e5"
    with pytest.raises(ConfigError, match="run.autotune_budget_s"):
        load_config(TINY, ["run.autotune_budget_s=0"])


def test_override_hashes_unchanged():
    cfg = load_config(CONFIGS / "cifar_small.py", ["knob=lr", "temperatures=(0.2,0.1,0.05)"])
    assert config_hash(cfg) == "a060e4accb28"
    # configs/tiny.py sets run.autotune=False since; at the default the hash is the old one
    assert config_hash(load_config(TINY, ["dense.lr=1", "run.autotune=True"])) == "d4ed2dc238f7"


def test_sweep_run_validates_its_config(tmp_path):
    import tr_jax as tj
    cfg = load_config(TINY)
    cfg.dense.lr = -0.5
    with pytest.raises(ConfigError) as e:
        tj.sweep.run(cfg, str(tmp_path / "w"), progress=False)
    assert str(e.value) == ("dense.lr=-0.5 (from tj.sweep.run(cfg)) is invalid: must be a finite "
                            "number >= 0 (0 = weights frozen)")
    assert not (tmp_path / "w").exists()


def test_cli_refuses_a_negative_lr_in_one_line(tmp_path, capsys):
    wd = tmp_path / "w"
    assert cli.main(["run", TINY, "--workdir", str(wd), "--set", "dense.lr=-0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tr-jax: error:") and err.count("\n") == 1, err
    assert "dense.lr=-0.1 (from --set) is invalid: must be a finite number >= 0 (0 = weights frozen)" in err
    assert not wd.exists()


# ------------------------------------------------------------------ the functional API
def test_optimisers_refuse_a_bad_lr():
    from tr_jax.training import optim
    with pytest.raises(ConfigError) as e:
        optim.sgd(-0.1)
    assert str(e.value) == ("learning_rate=-0.1 (from tr_jax.training.optim.sgd) is invalid: must "
                            "be a finite number >= 0 (0 = weights frozen)")
    with pytest.raises(ConfigError, match=r"learning_rate=nan \(from tr_jax.training.optim.adam\)"):
        optim.adam(float("nan"))
    with pytest.raises(ConfigError, match=r"b2=1.0 \(from tr_jax.training.optim.adam\)"):
        optim.adam(1e-3, b2=1.0)
    with pytest.raises(ConfigError, match=r"learning_rate=-1.0 \(from tr_jax.training.optim.make\)"):
        optim.make("sgd", -1.0)
    with pytest.raises(ConfigError, match=r"momentum=1.5 \(from tr_jax.training.optim.make\)"):
        optim.make("sgd", 0.1, 0.0, 1.5)
    with pytest.raises(ConfigError, match=r"weight_decay=-1"):
        optim.sgd(0.1, 0.9, -1)


def test_traced_and_array_values_are_not_checked():
    from tr_jax.training import optim
    params = {"w": jnp.zeros(2)}
    jax.jit(lambda lr: optim.sgd(lr).init(params))(jnp.float32(0.1))  # a tracer: skipped
    optim.sgd(jnp.asarray(0.1)).init(params)                            # an array: skipped


def test_step_config_init_state_and_trainer_refuse_bad_values():
    from tr_jax.training import StepConfig, Trainer, init_state
    with pytest.raises(ConfigError, match=r"^batch_size=0 \(from tr_jax.training.StepConfig\)"):
        StepConfig(mean=(0.5,), std=(0.25,), batch_size=0)
    with pytest.raises(ConfigError, match=r"momentum=1.0 \(from tr_jax.training.StepConfig\)"):
        StepConfig(mean=(0.5,), std=(0.25,), momentum=1.0)
    with pytest.raises(ConfigError, match=r"optimizer='adamw'.*Did you mean 'adam'"):
        StepConfig(mean=(0.5,), std=(0.25,), optimizer="adamw")
    with pytest.raises(ConfigError) as e:
        init_state({}, None, None, -1.0, 1e-4)
    assert str(e.value) == ("lr=-1.0 (from tr_jax.training.init_state) is invalid: must be a "
                            "finite number >= 0 (0 = weights frozen)")
    with pytest.raises(ConfigError, match=r"weight_decay=inf \(from tr_jax.training.init_state\)"):
        init_state({}, None, None, 0.1, math.inf)
    step = StepConfig(mean=(0.5,), std=(0.25,))
    with pytest.raises(ConfigError, match=r"gamma=0 \(from tr_jax.training.Trainer\)"):
        Trainer(None, step, "vmap", gamma=0)
    with pytest.raises(ConfigError, match=r"milestones=\(3, 1\).*1 does not come after 3"):
        Trainer(None, step, "vmap", milestones=(3, 1))


def test_landscape_settings_are_checked():
    from tr_jax.landscape import hessian
    from tr_jax.landscape.bezier import train_curves
    with pytest.raises(ConfigError, match=r"^lr=-1.0 \(from tr_jax.landscape.train_curves\)"):
        train_curves(None, None, None, None, None, None, None, key=None, mean=(0.5,),
                     std=(0.25,), lr=-1.0)
    with pytest.raises(ConfigError, match=r"epochs=0 \(from tr_jax.landscape.train_curves\)"):
        train_curves(None, None, None, None, None, None, None, key=None, mean=(0.5,),
                     std=(0.25,), epochs=0)
    with pytest.raises(ConfigError, match=r"max_probes=0 \(from tr_jax.landscape.hessian_trace"):
        hessian.hessian_trace(None, None, None, max_probes=0)
    with pytest.raises(ConfigError, match=r"tol=nan \(from tr_jax.landscape.top_eigenvalue"):
        hessian.top_eigenvalue(None, None, None, tol=float("nan"))
    with pytest.raises(ConfigError, match=r"chunk=2.5 \(from tr_jax.landscape.member_hessian"):
        hessian.member_hessian(None, {}, None, None, None, None, mean=(0.5,), std=(0.25,),
                               chunk=2.5)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
    assert isinstance(default_config(), ml_collections.ConfigDict)
