"""The tr_jax version a workdir was written by (``tr_jax_version.json``).

A workdir belongs to one tr_jax major.minor version: its checkpoints and tables may not be
compatible with another. :func:`check` refuses a workdir of another major.minor with both
versions named and the ways out; a patch release reads its minor's workdirs.
"""
from __future__ import annotations

import json
import pathlib

VERSION_FILE = "tr_jax_version.json"


def read_json(path: pathlib.Path) -> dict:
    """A JSON file of the workdir; unreadable: a ValueError naming it (not a tr_jax workdir, or
    a damaged one)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{str(path)!r} is unreadable ({e}): this is not a tr_jax workdir, or it "
                         "was damaged. Use another --workdir (or delete this one to start "
                         "over).") from e


def major_minor(version: str) -> tuple[str, ...]:
    """``"0.2.7"`` -> ``("0", "2")``: the part of a version that must match."""
    return tuple(str(version).split(".")[:2])


def compatible(a: str, b: str) -> bool:
    """Whether a workdir written by tr_jax ``a`` can be continued by tr_jax ``b``."""
    return major_minor(a) == major_minor(b)


def check(workdir: pathlib.Path, version: str) -> None:
    """Refuse ``workdir`` (a ValueError naming both versions) when its ``tr_jax_version.json``
    names another major.minor than ``version``. A workdir without the file (new, or from before
    versions were recorded) passes."""
    ver_file = workdir / VERSION_FILE
    if not ver_file.exists():
        return
    old_version = read_json(ver_file).get("tr_jax_version", "?")
    if not compatible(old_version, version):
        raise ValueError(
            f"workdir {str(workdir)!r} was written by tr_jax {old_version}, this is "
            f"tr_jax {version}: its checkpoints and tables may not be compatible. "
            f"Use another --workdir for tr_jax {version} (or delete this one to "
            f"start over), or finish it with tr_jax "
            f"{'.'.join(major_minor(old_version))}.x.")


def record(version: str) -> str:
    """The text of ``tr_jax_version.json`` for ``version``."""
    return json.dumps({"tr_jax_version": version}) + "\n"
