"""Writing tr_jax's files: the one atomic writer, and a full disk explained.

Every table, text, figure, config and chunk record tr_jax writes goes through
:func:`atomic_write_bytes`: the data is written to a temporary file in the destination's folder,
fsynced, then renamed over the destination. A reader never sees a half-written file, and a write
that fails (or a process killed in the middle) leaves the previous file intact; a killed run
leaves at most a hidden temporary file ``.{name}.*.tmp``, which the next run removes.

Running out of disk space is reported as :class:`DiskFullError`, a ``ValueError`` (the command
line prints it as one line) that is also an ``OSError`` with errno ENOSPC, naming the folder and
what was being written. :func:`is_disk_full` recognises a full disk in an exception or anything
it was raised from, by errno or — for the libraries that re-raise other types (tensorstore,
orbax's background threads) — by its message.

This module depends on no other part of tr_jax but :mod:`tr_jax.hooks`, through which the writer
reports the point between write and rename (``text:written``, ``chunk:written``).
"""
from __future__ import annotations

import errno
import os
import pathlib
import tempfile
from typing import Any

from tr_jax import hooks

__all__ = ["DiskFullError", "is_disk_full", "disk_full_error", "atomic_write_bytes",
           "atomic_write_text", "atomic_write_csv"]

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "enospc")


class DiskFullError(ValueError, OSError):
    """A write into the workdir failed for lack of disk space (errno ENOSPC / EDQUOT)."""

    errno = errno.ENOSPC


def is_disk_full(e: BaseException | None) -> bool:
    """Whether ``e`` (or an exception it was raised from) says the disk is full: an OSError with
    errno ENOSPC/EDQUOT, or — tensorstore and orbax's background threads re-raise other types — a
    message that says so."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _DISK_FULL:
            return True
        if any(t in str(e).lower() for t in _DISK_FULL_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


def disk_full_error(folder: str | os.PathLike, what: str, e: BaseException) -> DiskFullError:
    """The :class:`DiskFullError` for a failed write of ``what`` into the workdir ``folder``
    (``e``: the original error, quoted). The caller raises it ``from e``."""
    return DiskFullError(
        f"no space left on the disk of workdir {str(folder)!r} while writing {what} ({e}). Free "
        "some space (or copy the workdir to a larger disk) and rerun the same command: the state "
        "before this write is intact and the run resumes from its last committed checkpoint.")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, point: str = "text:written",
                       **info: Any) -> None:
    """The one atomic writer of tr_jax's files (tables, texts, figures, chunk records): write to
    a temporary file in the same folder, fsync, rename. A reader never sees a half-written file,
    and a failed write (a full disk: :class:`DiskFullError` naming the file) leaves the previous
    file intact. Between write and rename the hook point ``point`` is reached (see
    :mod:`tr_jax.hooks`) with ``info``: ``name`` (default: the file's name), ``path`` (the
    destination) and any other keys given."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        hooks.point(point, **{"name": path.name, "path": str(path), **info})
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, Exception) and is_disk_full(e):
            raise disk_full_error(path.parent, f"{str(path)!r}", e) from e
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` (UTF-8)."""
    atomic_write_bytes(path, text.encode())


def atomic_write_csv(path: str | os.PathLike, df) -> None:
    """:func:`atomic_write_text` of a pandas DataFrame as CSV, without its index."""
    atomic_write_text(path, df.to_csv(index=False))
