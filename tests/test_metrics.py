"""Metrics as they happen: metrics.jsonl (epoch and chunk lines, each epoch once after a crash and
resume), tj.sweep.metrics, the train-error auxiliary output, TensorBoard scalars, progress lines."""
import json
import pathlib
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tr_jax as tj
from tr_jax import cli
from tr_jax.config import ConfigError, load_config, validate
from tr_jax.sweep.metrics import COLUMNS, MetricsLog, read_metrics

ROOT = pathlib.Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
#: tests/test_resume.py's SMALL config: 2 dense + 2 retrain epochs, a progress checkpoint every
#: epoch, and the test error of every epoch in the metrics
SMALL = ["temperatures=(2,)", "run.checkpoint_every=1", "run.chunk_steps=1",
         "dense.batch_size=256", "retrain.batch_size=256", "run.metrics_test_every=1"]


def _args(wd, extra=()):
    return ["run", TINY, "--workdir", str(wd), "--no-progress",
            *[a for o in [*SMALL, *extra] for a in ("--set", o)]]


def _epoch_keys(wd) -> list[tuple[str, int]]:
    recs = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    return [(r["program"], r["epoch"]) for r in recs if r["kind"] == "epoch"]


@pytest.fixture(scope="module")
def metrics_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("metrics") / "ref"
    assert cli.main(_args(wd)) == 0
    return wd


def test_metrics_file_has_every_epoch_and_chunk(metrics_run, capsys):
    wd = metrics_run
    keys = _epoch_keys(wd)
    assert keys == [("dense_p0", 1), ("dense_p0", 2), ("retrain_p0", 1), ("retrain_p0", 2)]
    df = tj.sweep.metrics(wd)
    assert list(df.columns) == list(COLUMNS)
    ep = df[df.kind == "epoch"]
    assert len(ep) == 2 * 1 + 2 * 4  # dense: 1 member, retrain: 4 members (padding dropped)
    assert ep.train_loss.notna().all() and ep.train_error.between(0, 1).all()
    assert ep.test_error.notna().all()  # run.metrics_test_every=1: every epoch
    assert (ep.member_steps_s > 0).all() and (ep.images_s > 0).all() and (ep.wall_s > 0).all()
    rt = ep[ep.stage == "retrain"]
    assert sorted(rt.member.unique()) == [0, 1, 2, 3]
    assert set(rt.density) == {0.1, 0.5} and set(rt.retrain_seed) == {1, 2}
    assert ep[ep.stage == "dense"].density.isna().all()
    # the dense checkpoint's test error is the one the results table keeps
    import pandas as pd
    res = pd.read_csv(wd / "results.csv")
    dense = res[(res.stage == "dense") & (res.metric == "test_error")].value
    assert np.allclose(ep[(ep.stage == "dense") & (ep.epoch == 2)].test_error, dense)
    ch = df[df.kind == "chunk"]
    assert set(ch.program) == {"outputs", "lmc"} and set(ch.stage) == {"measure"}
    assert ch.member.isna().all() and (ch.units > 0).all()
    assert ch.groupby("program").chunk.apply(sorted).map(len).eq(ch.groupby("program").chunks.first()).all()
    log = (wd / "log.txt").read_text()
    assert "retrain_p0: epoch 2/2," in log and "member-steps/s" in log and "ETA stage" in log
    assert "lmc: chunk " in log


def test_metrics_off_writes_no_file(tmp_path):
    from tr_jax.sweep.metrics import MetricsLog
    cfg = load_config(TINY, ["run.metrics=False"])
    log = MetricsLog(tmp_path, cfg.run.metrics, cfg.run.tensorboard, cfg.knob)  # as setup() does
    log.epoch({"stage": "dense", "program": "dense_p0", "epoch": 1, "members": {}})
    log.flush()
    log.chunk("measure", "lmc", 1, 1, 2, 0.5)
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("fault", ["between_flush_and_commit", "after_commit"])
def test_crash_then_resume_logs_each_epoch_once(fault, metrics_run, tmp_path, monkeypatch):
    """A crash in retraining (an exception, as in tests/test_resume.py) right after epoch 1's
    lines were flushed but before its progress checkpoint is committed, or at the start of epoch 2
    (after the commit); the rerun resumes and the file holds every (program, epoch) once, with
    the tables of the uninterrupted run."""
    from tr_jax.sweep import store
    from tr_jax.training import loop
    if fault == "between_flush_and_commit":
        real = store.Workdir.save

        def dying(self, name, *a, **k):
            if name == "retrain_p0_progress":
                raise KeyboardInterrupt("simulated crash")
            return real(self, name, *a, **k)
        monkeypatch.setattr(store.Workdir, "save", dying)
    else:
        real = loop.Trainer.train_epoch
        calls = {"n": 0}

        def dying(self, groups, images, labels, epoch):
            calls["n"] += 1
            if calls["n"] == 4:  # dense 1, 2, retrain 1, then retrain 2 dies
                raise KeyboardInterrupt("simulated crash")
            return real(self, groups, images, labels, epoch)
        monkeypatch.setattr(loop.Trainer, "train_epoch", dying)
    wd = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        cli.main(_args(wd))
    keys = _epoch_keys(wd)
    assert ("retrain_p0", 1) in keys  # flushed before the (attempted) commit
    monkeypatch.undo()
    assert cli.main(_args(wd)) == 0
    keys = _epoch_keys(wd)
    assert sorted(keys) == sorted(set(keys)) == sorted(_epoch_keys(metrics_run))
    assert (wd / "cells.csv").read_text() == (metrics_run / "cells.csv").read_text()
    a, b = tj.sweep.metrics(wd), tj.sweep.metrics(metrics_run)
    cols = ["program", "epoch", "member", "train_loss", "train_error", "test_error"]
    a = a[a.kind == "epoch"][cols].sort_values(cols[:3]).reset_index(drop=True)
    b = b[b.kind == "epoch"][cols].sort_values(cols[:3]).reset_index(drop=True)
    assert a.equals(b)  # a resumed run reproduces the uninterrupted run's numbers


def _record(program, epoch, stage="retrain", test=None):
    return {"stage": stage, "program": program, "epoch": epoch, "epochs": 3, "wall_s": 1.0,
            "member_steps_s": 10.0, "images_s": 640.0,
            "members": {"member": [0, 1], "dense_seed": [1, 1], "temperature": [5, 5],
                        "density": [0.1, 0.5], "retrain_seed": [1, 1],
                        "train_loss": np.asarray([float("nan"), 1.5]),
                        "train_error": np.asarray([0.5, np.inf]),
                        "test_error": [None, None] if test is None else test}}


def test_restart_drops_uncommitted_epochs_and_reader_tolerates_a_partial_line(tmp_path):
    log = MetricsLog(tmp_path)
    for e in (1, 2, 3):
        log.epoch(_record("retrain_p0", e))
    log.epoch(_record("dense_p0", 3, stage="dense"))
    log.flush()
    log.chunk("measure", "lmc", 1, 2, 4, 0.25)
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text  # NaN / inf as null
    log.restart("retrain_p0", 1)  # resumed from the checkpoint after epoch 1
    assert _epoch_keys(tmp_path) == [("retrain_p0", 1), ("dense_p0", 3)]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"t": 1, "kind": "epoch", "program": "ret')  # a kill mid-write
    df = read_metrics(tmp_path)
    assert len(df) == 2 + 2 + 1 and df[df.kind == "epoch"].train_loss.isna().sum() == 2
    assert df[df.kind == "chunk"].member.isna().all()
    log.chunk("measure", "lmc", 2, 2, 4, 0.25)  # appends on a fresh line after the partial one
    assert len(read_metrics(tmp_path)) == 6
    log.restart("retrain_p0", 0)
    assert _epoch_keys(tmp_path) == [("dense_p0", 3)]


def test_train_error_output_changes_no_number():
    """The error count is an auxiliary output of the same forward pass: state and losses are
    bit-identical with and without it, and the count is the batch's misclassified images."""
    from tr_jax import models
    from tr_jax.training import StepConfig, init_state, train_steps
    model = models.build("preresnet", depth=8, num_classes=10, width=0.25)
    v = models.init(model, jax.random.key(0), (8, 8, 1))
    state = init_state(v, jax.tree.map(jnp.ones_like, v["params"]), jax.random.key(1), 0.1, 5e-4)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 255, (64, 8, 8, 1)), jnp.uint8)
    labels = jnp.asarray(rng.integers(0, 10, 64), jnp.int32)
    cfg = StepConfig(mean=(0.5,), std=(0.25,), batch_size=16, pad=1, flip=False)
    z = jnp.asarray(0, jnp.int32)
    run = lambda w: jax.jit(lambda s: train_steps(model, cfg, s, images, labels, z, z,  # noqa
                                                  jnp.float32(1.0), n_steps=3, batch_size=16,
                                                  with_errors=w))(state)
    s0, loss0 = run(False)
    s1, (loss1, wrong) = run(True)
    assert np.array_equal(np.asarray(loss0), np.asarray(loss1))
    for a, b in zip(jax.tree.leaves(s0), jax.tree.leaves(s1)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert wrong.shape == (3,) and wrong.dtype == jnp.int32
    assert ((0 <= np.asarray(wrong)) & (np.asarray(wrong) <= 16)).all()


def test_metrics_config_keys_validate():
    cfg = load_config(TINY, ["run.metrics_test_every=3", "run.metrics=False",
                             "run.tensorboard=True"])
    validate(cfg, "test")
    with pytest.raises(ConfigError, match="metrics_test_every"):
        validate(load_config(TINY, ["run.metrics_test_every=-1"]), "test")
    from tr_jax.config import config_hash, to_json
    assert "metrics" not in to_json(load_config(TINY))  # defaults leave the hash as it was
    assert config_hash(cfg) != config_hash(load_config(TINY))


def _tfrecords(path: pathlib.Path):
    """The payloads of a TFRecord-framed file (length, crc, data, crc), lengths checked."""
    data, pos = path.read_bytes(), 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        yield data[pos + 12:pos + 12 + n]
        pos += 12 + n + 4
    assert pos == len(data)


def test_tensorboard_scalars_are_readable(tmp_path):
    pytest.importorskip("tensorboardX")
    from tensorboardX.proto import event_pb2
    log = MetricsLog(tmp_path, enabled=False, tensorboard=True, knob="lr")
    log.epoch(_record("retrain_p0", 1, test=[0.25, 0.75]))
    log.epoch(_record("retrain_p0", 2))
    log.close()
    assert not (tmp_path / "metrics.jsonl").exists()
    files = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(files) == 1
    scalars = {}
    for raw in _tfrecords(files[0]):
        ev = event_pb2.Event.FromString(raw)
        for v in ev.summary.value:
            scalars[(v.tag, ev.step)] = v.simple_value
    assert scalars[("retrain/train_loss/lr_5_density_0.5", 1)] == pytest.approx(1.5)
    assert scalars[("retrain/test_error/lr_5_density_0.1", 1)] == pytest.approx(0.25)
    assert ("retrain/train_loss/lr_5_density_0.1", 1) not in scalars  # NaN: nothing to plot
    assert ("retrain/test_error/lr_5_density_0.1", 2) not in scalars  # not evaluated
    assert ("retrain/train_error/lr_5_density_0.5", 2) not in scalars  # inf
    try:  # TensorFlow's own event reader (CRC-checked), where the test extra has it
        import tensorflow as tf
    except ImportError:
        return
    tags = {(v.tag, e.step) for e in tf.compat.v1.train.summary_iterator(str(files[0]))
            for v in e.summary.value}
    assert tags == set(scalars)
