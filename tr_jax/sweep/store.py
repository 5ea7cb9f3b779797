"""A run directory: its config, one orbax checkpoint per finished stage, and atomic table writes.

A stage is done when its checkpoint is committed (orbax writes to a temporary folder and renames it
on commit), so a killed run resumes at the first unfinished stage. A workdir belongs to one config:
another config is refused with the keys that differ.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import numpy as np
import orbax.checkpoint as ocp


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


class Workdir:
    def __init__(self, path: str | os.PathLike, config_json: str):
        self.path = pathlib.Path(path).absolute()
        self.path.mkdir(parents=True, exist_ok=True)
        cfg_file = self.path / "config.json"
        if cfg_file.exists():
            old = json.loads(cfg_file.read_text())
            new = json.loads(config_json)
            if old != new:
                fo, fn = _flat(old), _flat(new)
                diff = sorted(k for k in set(fo) | set(fn) if fo.get(k) != fn.get(k))
                shown = ", ".join(f"{k}: {fo.get(k)!r} -> {fn.get(k)!r}" for k in diff[:6])
                raise ValueError(
                    f"workdir {str(self.path)!r} holds a run of a different config ({shown}"
                    f"{', ...' if len(diff) > 6 else ''}). Use another --workdir, or delete this "
                    "one to start over.")
        else:
            atomic_write_text(cfg_file, config_json)
        self._ckpt = ocp.StandardCheckpointer()

    def stage_dir(self, name: str) -> pathlib.Path:
        return self.path / "stages" / name

    def has(self, name: str) -> bool:
        d = self.stage_dir(name)
        return d.is_dir() and (d / "_CHECKPOINT_METADATA").exists()

    def save(self, name: str, tree: Any) -> None:
        """Commit ``tree`` (any pytree of arrays) as checkpoint ``name`` (atomic: orbax renames a
        finished temporary folder)."""
        import jax
        self._ckpt.save(self.stage_dir(name), jax.tree.map(np.asarray, tree), force=True)
        self._ckpt.wait_until_finished()

    def load(self, name: str, like: Any = None) -> Any:
        """Checkpoint ``name`` as numpy arrays; with ``like`` (a pytree of the same structure) the
        containers (NamedTuples, optimiser states) are rebuilt too."""
        import jax
        d = self.stage_dir(name)
        if like is None:
            return jax.tree.map(np.asarray, self._ckpt.restore(d))
        return jax.tree.map(np.asarray, self._ckpt.restore(d, jax.tree.map(np.asarray, like)))

    def remove(self, name: str) -> None:
        shutil.rmtree(self.stage_dir(name), ignore_errors=True)

    def log(self, line: str) -> None:
        with open(self.path / "log.txt", "a") as f:
            f.write(line.rstrip() + "\n")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write then rename: a reader never sees a half-written file."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def atomic_write_csv(path: str | os.PathLike, df) -> None:
    atomic_write_text(path, df.to_csv(index=False))
