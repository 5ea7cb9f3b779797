"""Valid ranges of hyperparameters, checked the same way wherever a value comes from: a config file,
``--set``, a config passed in Python, or an argument of a functional-API constructor
(``tr_jax.training.optim.sgd``, ``StepConfig``, ``tr_jax.landscape.train_curves``, ...).

A :class:`Range` says what a value must be (type and bounds, in words too); ``Range.check`` raises
a :class:`tr_jax.errors.ConfigError` naming the key, the value, the range and where the value came
from. The conventions, the same for every key:

* a float accepts an int (``0`` is ``0.0``) but never a bool, ``None`` or a string, and must be
  finite: NaN and +-inf are refused everywhere;
* an int must be an integer (Python or numpy; not a bool, not ``3.0``, not ``"ten"``);
* a bool must be ``True`` or ``False`` (``0`` / ``1`` are refused: a typo of another key's value
  is likelier than a wish for a flag);
* a tuple accepts a list; its values are checked one by one and may not repeat (a repeated density
  or seed would train the same members twice).

This module imports nothing heavy (no JAX, no numpy): the config schema and the constructors both
use it. Functions that may run under ``jax.jit`` / ``jax.vmap`` check only concrete Python or
numpy numbers (:func:`check_args` skips arrays and tracers).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from typing import Any

from tr_jax.errors import ConfigError

__all__ = ["Range", "check_args", "is_concrete", "LR", "WEIGHT_DECAY", "MOMENTUM", "FACTOR",
           "SAM_RHO", "SEED", "POS_INT", "NONNEG_INT", "NONNEG_FLOAT", "FINITE", "BOOL", "STR"]

_KINDS = ("int", "float", "bool", "str", "tuple")


def _fmt(x: float) -> str:
    return repr(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def is_int(v: Any) -> bool:
    """An integer: Python or numpy, not a bool."""
    return isinstance(v, numbers.Integral) and not _is_bool(v)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool) or (type(v).__module__ == "numpy" and type(v).__name__ in
                                   ("bool_", "bool"))


def is_number(v: Any) -> bool:
    """A real number (Python or numpy scalar), not a bool."""
    return isinstance(v, numbers.Real) and not _is_bool(v)


def is_concrete(v: Any) -> bool:
    """Whether ``v`` is a plain value to check: anything but an array (a ``jax.Array``, a tracer
    under ``jit`` / ``vmap``, a numpy array). Numpy scalars are plain numbers."""
    return isinstance(v, numbers.Number) or _is_bool(v) or not hasattr(v, "shape")


@dataclasses.dataclass(frozen=True)
class Range:
    """What a hyperparameter must be.

    ``kind``: ``'int'``, ``'float'``, ``'bool'``, ``'str'`` or ``'tuple'``. Numbers: ``lo`` /
    ``hi`` bounds (``lo_open`` / ``hi_open``: strict). ``choices``: the allowed values. A tuple's
    values are each checked against ``item``; ``min_len`` values at least, no value repeated unless
    ``repeats``, strictly increasing if ``increasing``. ``note`` is appended to the description
    (e.g. ``"0 = auto"``); ``text`` replaces the whole description; ``hint`` (formatted with
    ``value``) is appended to an error message.
    """

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple | None = None
    item: "Range | None" = None
    min_len: int = 0
    repeats: bool = False
    increasing: bool = False
    note: str = ""
    text: str = ""
    hint: str = ""

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"Range.kind {self.kind!r} is not one of {_KINDS}")

    # ------------------------------------------------------------------ words
    def bounds(self) -> str:
        lo, hi = self.lo, self.hi
        if lo is not None and hi is not None:
            return (f"in {'(' if self.lo_open else '['}{_fmt(lo)}, {_fmt(hi)}"
                    f"{')' if self.hi_open else ']'}")
        if lo is not None:
            return f"{'>' if self.lo_open else '>='} {_fmt(lo)}"
        if hi is not None:
            return f"{'<' if self.hi_open else '<='} {_fmt(hi)}"
        return ""

    def describe(self) -> str:
        """The valid range in words: what follows "must be" in an error."""
        if self.text:
            return self.text
        if self.choices is not None:
            out = f"one of {tuple(self.choices)!r}"
        elif self.kind == "int":
            out = " ".join(filter(None, ("an integer", self.bounds())))
        elif self.kind == "float":
            out = " ".join(filter(None, ("a finite number", self.bounds())))
        elif self.kind == "bool":
            out = "True or False"
        elif self.kind == "str":
            out = "a string"
        else:
            parts = ["a tuple" if self.min_len == 0 else
                     "a non-empty tuple" if self.min_len == 1 else
                     f"a tuple of at least {self.min_len} values"]
            if self.item is not None:
                parts.append(f"of values each {self.item.describe()}")
            if self.increasing:
                parts.append("strictly increasing")
            elif not self.repeats:
                parts.append("without repeats")
            out = ", ".join(parts)
        return f"{out} ({self.note})" if self.note else out

    # ------------------------------------------------------------------ checks
    def _fail(self, key: str, value: Any, source: str, hint: str = "") -> None:
        extra = [h for h in (hint, self.hint.format(value=value) if self.hint else "") if h]
        raise ConfigError(key, value, self.describe(), source, "; ".join(extra))

    def problem(self, value: Any) -> str | None:
        """Why a single (non-tuple) value is out of range, or None if it is fine."""
        if self.kind == "int" and not is_int(value):
            return "not an integer"
        if self.kind == "float" and not is_number(value):
            return "not a number"
        if self.kind == "float" and not math.isfinite(float(value)):
            return "not finite"
        if self.kind == "bool" and not _is_bool(value):
            return "not True or False"
        if self.kind == "str" and not isinstance(value, str):
            return "not a string"
        if self.choices is not None and value not in self.choices:
            return "not a choice"
        if self.kind in ("int", "float"):
            v = float(value) if self.kind == "float" else int(value)
            if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
                return "below"
            if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
                return "above"
        return None

    def check(self, key: str, value: Any, source: str = "") -> Any:
        """``value`` if it is in range, else a :class:`ConfigError` naming ``key``, ``value``,
        the range and ``source``. A tuple's values are checked one by one (the error names the
        first bad one)."""
        if self.kind != "tuple":
            why = self.problem(value)
            if why == "not a choice" and isinstance(value, str):
                close = difflib.get_close_matches(value, [str(c) for c in self.choices], n=1)
                self._fail(key, value, source, f"Did you mean {close[0]!r}?" if close else "")
            if why is not None:
                self._fail(key, value, source)
            return value
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
            self._fail(key, value, source, "not a tuple")
        if len(value) < self.min_len:
            self._fail(key, value, source, f"{key} is empty" if not len(value) else "")
        if self.item is not None:
            for v in value:
                if self.item.problem(v) is not None:
                    self._fail(key, value, source, f"got {v!r}")
        seen: list = []
        for v in value:
            if not self.repeats and v in seen:
                self._fail(key, value, source, f"{v!r} is repeated")
            if self.increasing and seen and not v > seen[-1]:
                self._fail(key, value, source, f"{v!r} does not come after {seen[-1]!r}")
            seen.append(v)
        return value


def check_args(source: str, **named: tuple[Any, Range]) -> None:
    """Check function arguments: ``check_args("tr_jax.training.optim.sgd", learning_rate=(lr,
    LR))``. Arrays and tracers (a value under ``jit`` / ``vmap``) are skipped: only concrete
    Python / numpy values are checked."""
    for name, (value, rng) in named.items():
        if is_concrete(value):
            rng.check(name, value, source)


#: shared ranges (the config table and the constructors use the same objects)
LR = Range("float", lo=0, note="0 = weights frozen")  # as torch.optim: >= 0 and finite
WEIGHT_DECAY = Range("float", lo=0)                     # coupled L2: >= 0 (0 = none)
MOMENTUM = Range("float", lo=0, hi=1, hi_open=True)     # heavy ball / Adam's b1, b2: [0, 1)
FACTOR = Range("float", lo=0, lo_open=True)             # a multiplicative factor: > 0, finite
SAM_RHO = Range("float", lo=0, note="0 = no SAM")
SEED = Range("int", lo=0, hi=2**32 - 1)                 # folded into PRNG keys as 32 bits
POS_INT = Range("int", lo=1)
NONNEG_INT = Range("int", lo=0)
NONNEG_FLOAT = Range("float", lo=0)
FINITE = Range("float")
BOOL = Range("bool")
STR = Range("str")
