"""The errors tr_jax explains to its user in one line.

Every mistake in what a user gives — a config value, a command-line flag, a file, a table, a
multi-process launch — is raised as a :class:`UserError` (a ``ValueError``, so ``except
ValueError`` keeps working) whose message says what was wrong, with which value, and how to fix
it. ``tr-jax`` prints such a message as one line on stderr and exits with code 2; the traceback
goes to the workdir's ``log.txt`` (or to the terminal with ``--debug``).
"""
from __future__ import annotations

__all__ = ["UserError", "ConfigError", "TableError", "PeerError"]


class UserError(ValueError):
    """A mistake in the user's input, explained by the message (exit code 2 in ``tr-jax``)."""


class ConfigError(UserError):
    """A config value that is missing, of the wrong type or out of its valid range.

    ``key`` (dotted, e.g. ``"dense.lr"``), ``value``, ``valid`` (the range or choices, in words)
    and ``source`` (where the value came from: ``"--set"``, a config file, a function argument)
    are kept as attributes; the message holds them all."""

    def __init__(self, key: str, value, valid: str, source: str = "", hint: str = ""):
        self.key, self.value, self.valid, self.source = key, value, valid, source
        where = f" (from {source})" if source else ""
        msg = f"{key}={value!r}{where} is invalid: must be {valid}"
        super().__init__(msg + (f"; {hint}" if hint else ""))


class TableError(UserError):
    """A results table (``cells.csv``, ``results.csv``) that is missing, cut off or damaged."""


class PeerError(UserError):
    """A process of a multi-process run did not arrive, or was lost while the run went on."""
