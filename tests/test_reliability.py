"""Reliability without a full run: atomic checkpoint swaps, corrupt checkpoints, a full disk, the
workdir's tr_jax version, and bad input (each error names the value and the fix).

The pipeline-level tests (a `tr-jax run` SIGKILLed anywhere, sick members, a member alone vs in a
group, a corrupt stage and a full disk in the middle of a run) reuse the finished tiny run of
tests/test_cli.py and live there.
"""
import errno
import json
import os
import pathlib
import socket

import numpy as np
import pytest

from tr_jax import cli, hooks
from tr_jax.config import load_config, to_json
from tr_jax.files import DiskFullError, atomic_write_text
from tr_jax.sweep.store import CorruptCheckpointError, Workdir

ROOT = pathlib.Path(__file__).parents[1]
TINY = str(ROOT / "configs" / "tiny.py")
CFG = json.dumps({"name": "unit"})


def _tree(v: float) -> dict:
    return {"a": np.full((3,), v, np.float32), "b": {"c": np.arange(4, dtype=np.int32) + int(v)}}


def _assert_tree(got: dict, v: float) -> None:
    np.testing.assert_array_equal(got["a"], np.full((3,), v, np.float32))
    np.testing.assert_array_equal(got["b"]["c"], np.arange(4, dtype=np.int32) + int(v))


def _hidden(wd: Workdir) -> list[str]:
    """Temporary / half-written things left in the workdir."""
    return sorted(str(p.relative_to(wd.path)) for p in wd.path.rglob(".*"))


class _Died(BaseException):
    """A simulated SIGKILL: nothing after the fault point runs (no cleanup either)."""


@pytest.mark.parametrize("point", ["save:written", "save:swapping"])
def test_a_checkpoint_replaced_when_the_process_dies_is_never_lost(point, tmp_path):
    """Die inside the write of version 2 over version 1 (after orbax committed the new copy,
    or between the two renames): the next process finds version 2, fully written, in place."""
    wd = Workdir(tmp_path / "w", CFG)
    wd.save("p", _tree(1))

    def die(where, info):
        if where == point and info["name"] == "p":
            raise _Died(where)

    with hooks.added(die), pytest.raises(_Died):
        wd.save("p", _tree(2))
    if point == "save:swapping":
        assert not wd.stage_dir("p").exists()  # the dangerous moment: only .p.old and .p.new
    again = Workdir(tmp_path / "w", CFG)  # a new process on the same workdir
    assert again.has("p")
    _assert_tree(again.load("p", like=_tree(0)), 2)
    assert _hidden(again) == []
    assert "committed p" in (tmp_path / "w" / "log.txt").read_text()


def test_an_interrupted_first_write_leaves_nothing_half_done(tmp_path, monkeypatch):
    wd = Workdir(tmp_path / "w", CFG)
    real = wd._ckpt.save

    def partial(path, tree, force=False):  # orbax writes part of its folder, then dies
        pathlib.Path(f"{path}.orbax-checkpoint-tmp-1").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(wd._ckpt, "save", partial)
    with pytest.raises(KeyboardInterrupt):
        wd.save("q", _tree(1))
    monkeypatch.setattr(wd._ckpt, "save", real)
    assert not wd.has("q") and wd.restore("q") is None
    assert _hidden(Workdir(tmp_path / "w", CFG)) == []


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   ValueError("tensorstore: Error writing: No space left on device")])
def test_a_full_disk_keeps_the_previous_checkpoint(error, tmp_path, monkeypatch):
    wd = Workdir(tmp_path / "w", CFG)
    wd.save("p", _tree(1))

    def full(path, tree, force=False):
        pathlib.Path(path).mkdir(parents=True)
        (pathlib.Path(path) / "half").write_bytes(b"x")
        raise error

    monkeypatch.setattr(wd._ckpt, "save", full)
    with pytest.raises(DiskFullError) as e:
        wd.save("p", _tree(2))
    msg = str(e.value)
    assert str(wd.path) in msg and "Free some space" in msg and "rerun the same command" in msg
    assert isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    assert isinstance(e.value, ValueError)  # the CLI prints it as `tr-jax: error: ...`, exit 2
    _assert_tree(wd.load("p", like=_tree(0)), 1)
    assert _hidden(wd) == []


def test_a_full_disk_while_writing_a_table_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "cells.csv"
    atomic_write_text(path, "old\n")

    class Full:
        def __init__(self, fd, mode):
            os.close(fd)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", Full)
    with pytest.raises(DiskFullError, match=f"{tmp_path}.*Free some space"):
        atomic_write_text(path, "new\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.csv"]


def test_a_table_write_that_dies_leaves_the_old_table(tmp_path):
    """Die after the new table is written to its temporary file, before the rename: the old
    table is intact; the temporary file a SIGKILL leaves behind is removed by the next run."""
    wd = Workdir(tmp_path / "w", CFG)
    atomic_write_text(wd.path / "cells.csv", "old\n")

    def die(where, info):
        if where == "text:written" and info["name"] == "cells.csv":
            raise _Died(where)

    with hooks.added(die), pytest.raises(_Died):
        atomic_write_text(wd.path / "cells.csv", "new\n")
    assert (wd.path / "cells.csv").read_text() == "old\n"
    (wd.path / ".cells.csv.x1y2z3").write_text("ne")  # what SIGKILL leaves (no cleanup runs)
    (wd.path / "figures").mkdir()
    (wd.path / "figures" / ".epochs_lmc.png.x1y2.tmp").write_bytes(b"\x89PN")
    assert _hidden(Workdir(tmp_path / "w", CFG)) == []


def test_hooks_see_every_point_of_a_save_and_kill_at_counts_named_points(tmp_path):
    """The points of a checkpoint save, a chunk record and a table write reach every hook with
    their info, in order; a remover unregisters; ``kill_at`` SIGKILLs a real process the n-th
    time a point of the given name is reached (and not at other names)."""
    import signal
    import subprocess
    import sys

    wd = Workdir(tmp_path / "w", CFG)
    seen = []
    remove = hooks.add(lambda p, info: seen.append((p, info["name"])))
    with hooks.added(lambda p, info: seen.append(("again", p))):
        wd.save("p", _tree(1))
        wd.save_chunk("lmc", 0, 2, {"x": np.zeros(2)})
    atomic_write_text(wd.path / "cells.csv", "x\n")
    remove()
    remove()  # harmless twice
    hooks.point("save:written", name="p")  # nobody listens any more
    assert seen == [("save:written", "p"), ("again", "save:written"),
                    ("save:swapping", "p"), ("again", "save:swapping"),
                    ("chunk:written", "lmc"), ("again", "chunk:written"),
                    ("text:written", "cells.csv")]
    script = (
        "import sys\n"
        "from tr_jax import hooks\n"
        "hooks.add(hooks.kill_at('save:written', 2, where='b'))\n"
        "for name in ('b', 'a', 'a', 'b', 'a'):\n"
        "    print(name, flush=True)\n"
        "    hooks.point('save:written', name=name)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert r.stdout.split() == ["b", "a", "a", "b"]


def _corrupt(folder: pathlib.Path) -> None:
    """Truncate every data file of an orbax checkpoint (its commit markers stay)."""
    for p in folder.rglob("*"):
        if p.is_file() and not p.name.startswith("_") and p.name != "commit_success.txt":
            p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's failed read
def test_a_corrupt_checkpoint_is_named_or_recomputed(tmp_path):
    wd = Workdir(tmp_path / "w", CFG)
    wd.save("p", _tree(1))
    _corrupt(wd.stage_dir("p"))
    assert wd.has("p")  # committed, so only reading it shows the damage
    with pytest.raises(CorruptCheckpointError) as e:
        wd.load("p")
    assert str(wd.stage_dir("p")) in str(e.value) and "Delete that folder" in str(e.value)
    warnings = []
    assert wd.restore("p", like=_tree(0), warn=warnings.append) is None
    assert len(warnings) == 1 and str(wd.stage_dir("p")) in warnings[0]
    assert "recomputing it" in warnings[0] and "p.corrupt" in warnings[0]
    assert not wd.has("p") and wd.stage_dir("p.corrupt").is_dir()
    wd.save("p", _tree(3))  # recomputed
    _assert_tree(wd.load("p", like=_tree(0)), 3)


def test_a_checkpoint_of_other_shapes_is_not_trusted(tmp_path):
    wd = Workdir(tmp_path / "w", CFG)
    wd.save("p", {"a": np.zeros((2,), np.float32)})
    with pytest.raises(CorruptCheckpointError, match="unreadable"):
        wd.load("p", like={"a": np.zeros((5,), np.float32)})


def test_a_workdir_of_another_tr_jax_version_is_refused(tmp_path, capsys):
    from tr_jax import __version__ as tj_version
    Workdir(tmp_path / "w", CFG, version="0.1.0")
    assert json.loads((tmp_path / "w" / "tr_jax_version.json").read_text()) == {
        "tr_jax_version": "0.1.0"}
    Workdir(tmp_path / "w", CFG, version="0.1.7")  # same major.minor: fine
    with pytest.raises(ValueError) as e:
        Workdir(tmp_path / "w", CFG, version="0.2.0")
    msg = str(e.value)
    for part in ("tr_jax 0.1.0", "tr_jax 0.2.0", "another --workdir", "tr_jax 0.1.x"):
        assert part in msg, msg
    # through the CLI, in a workdir of the same config written by an older tr_jax
    wd = tmp_path / "cli"
    Workdir(wd, to_json(load_config(TINY)), version="0.0.3")
    assert cli.main(["run", TINY, "--workdir", str(wd), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "written by tr_jax 0.0.3" in err and f"this is tr_jax {tj_version}" in err


@pytest.mark.parametrize("overrides, parts", [
    (["model.depth=10"], ["model.depth=10", "6n+2", "Set model.depth"]),
    (["prune.densities=(0.5, 1.5)"], ["prune.densities=(0.5, 1.5)", "got 1.5", "e.g. 0.05 for 5%"]),
    (["prune.densities=(0,)"], ["got 0", "(0, 1]"]),
    (["dense.batch_size=5000"], ["dense.batch_size=5000", "1437 images", "<= 1437"]),
    (["knob=batch_size", "temperatures=(64, 4096)"], ["temperature 4096", "<= 1437 in temperatures"]),
    (["temperatures=()"], ["temperatures is empty", "e.g. (10, 20)"]),
    (["retrain.seeds=(1,)"], ["retrain.seeds=(1,)", "at least 2", "retrain.seeds=(1, 2)"]),
    (["retrain.seeds=(3, 3)"], ["retrain.seeds=(3, 3)", "2 distinct"]),
    (["retrain.epoch=3"], ["'retrain.epoch'", "Did you mean 'epochs'"]),
    (["retrain.epochs=0"], ["retrain.epochs=0", ">= 1"]),
])
def test_bad_input_names_the_value_and_the_fix(overrides, parts, tmp_path, capsys):
    sets = [a for o in overrides for a in ("--set", o)]
    assert cli.main(["run", TINY, "--workdir", str(tmp_path / "x"), *sets]) == 2
    err = capsys.readouterr().err
    for part in parts:
        assert part in err, err
    assert not (tmp_path / "x").exists()  # refused before anything is written


def test_a_torch_checkpoint_of_another_architecture_is_named(tmp_path, capsys):
    """No torch needed: a reference state_dict saved as .npz (VGG-11-BN) imported as PreResNet."""
    import jax

    from tr_jax.models import to_torch
    from tr_jax.models.torch_import import expected_shapes
    shapes = expected_shapes("vgg_bn", 11, 10)
    variables = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes)
    np.savez(tmp_path / "vgg.npz", **to_torch(variables, "vgg_bn", 11))
    code = cli.main(["import-torch", str(tmp_path / "vgg.npz"), "--arch", "preresnet",
                     "--depth", "20", "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "arch='preresnet'" in err and "looks like arch='vgg_bn', depth=11" in err


def test_a_tfds_data_dir_without_the_dataset_fails_at_once_without_network(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow")
    pytest.importorskip("tensorflow_datasets")
    from tr_jax.data import load_dataset

    def no_network(*a, **k):
        raise AssertionError(f"tried to reach the network: {a!r}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("svhn_cropped", data_dir=str(tmp_path))
    msg = str(e.value)
    for part in ("'svhn_cropped'", str(tmp_path), "download_and_prepare()",
                 f"{tmp_path}/svhn_cropped"):
        assert part in msg, msg
