"""Training curves of a sweep: test error against epoch, from the workdir's ``metrics.jsonl``.

``metrics.jsonl`` holds one JSON object per line; the training epochs are the objects with
``"kind": "epoch"``: ``stage`` (``"dense"`` or ``"retrain"``), ``program``, ``epoch``
(1-indexed) and ``members``, per member lists ``temperature``, ``density``, ``dense_seed``,
``test_error`` (null where not evaluated), ... . :func:`training_curves` draws one stage from
the file's records (dicts, as parsed) or from :func:`tr_jax.sweep.metrics.read_metrics`'s table
(one row per epoch line and member).
"""
from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Mapping

import numpy as np
from matplotlib.figure import Figure

from ._common import save_figure

__all__ = ["epoch_points", "training_curves"]


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _column(members: Mapping, name: str, n: int) -> list:
    v = members.get(name)
    return list(v) if isinstance(v, (list, tuple)) and len(v) == n else [None] * n


def _table_points(df, stage: str) -> list[dict]:
    """:func:`epoch_points` of a table with one row per (epoch line, member)."""
    sub = df[(df["kind"] == "epoch") & (df["stage"] == stage)]
    out = []
    for ep, t, d, s, e in zip(sub["epoch"], sub["temperature"], sub["density"],
                              sub["dense_seed"], sub["test_error"]):
        ep, t, e = _finite(ep), _finite(t), _finite(e)
        if ep is None or t is None or e is None:
            continue
        out.append({"epoch": int(ep), "temperature": t, "density": _finite(d),
                    "dense_seed": s, "test_error": e})
    return out


def epoch_points(records, stage: str) -> list[dict]:
    """Per member and epoch of ``stage``, ``{epoch, temperature, density, dense_seed,
    test_error}`` for every evaluated (non-null, finite) test error, from ``metrics.jsonl``'s
    records (dicts) or from :func:`tr_jax.sweep.metrics.read_metrics`'s table. An epoch recorded
    twice for a program (a resumed run redoing it) counts once: its last record."""
    if hasattr(records, "columns"):  # a DataFrame
        return _table_points(records, stage)
    last: dict[tuple[str, int], Mapping] = {}
    for r in records:
        if not isinstance(r, Mapping) or r.get("kind") != "epoch" or r.get("stage") != stage:
            continue
        ep = _finite(r.get("epoch"))
        if ep is None or not isinstance(r.get("members"), Mapping):
            continue
        last[(str(r.get("program", "")), int(ep))] = r
    out = []
    for (_, ep), r in sorted(last.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        m = r["members"]
        errs = m.get("test_error") or []
        n = len(errs)

        temps, dens, seeds = (_column(m, k, n) for k in ("temperature", "density", "dense_seed"))
        for i, e in enumerate(errs):
            e = _finite(e)
            t = _finite(temps[i])
            if e is None or t is None:
                continue
            out.append({"epoch": ep, "temperature": t, "density": _finite(dens[i]),
                        "dense_seed": seeds[i], "test_error": e})
    return out


def _label(knob: str, t: float) -> str:
    return f"{knob} {t:g}"


def training_curves(records, path: str | os.PathLike, *,
                    stage: str = "retrain", knob: str = "temperature", dpi: int = 120,
                    title: str = "") -> pathlib.Path | None:
    """Test error (%) against epoch for one ``stage`` of a sweep from ``metrics.jsonl``: its
    records (dicts) or :func:`tr_jax.sweep.metrics.read_metrics`'s table.

    ``stage="retrain"``: one panel per density, one line per temperature (the mean over the
    members with a test error at that epoch); ``stage="dense"``: one panel, one line per
    temperature and dense seed. Returns the PNG's path, or None when the records hold no test
    error of the stage (nothing is written)."""
    pts = epoch_points(records, stage)
    if not pts:
        return None
    if stage == "dense":
        panels = {None: pts}
    else:
        dens = sorted({p["density"] for p in pts if p["density"] is not None})
        panels = {d: [p for p in pts if p["density"] == d] for d in dens}
        if not panels:
            return None
    n = len(panels)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig = Figure(figsize=(3.6 * cols, 3.0 * rows), dpi=dpi)
    for k, (d, sub) in enumerate(panels.items()):
        ax = fig.add_subplot(rows, cols, k + 1)
        if stage == "dense":
            keys = sorted({(p["temperature"], str(p["dense_seed"])) for p in sub})
            lines = {f"{_label(knob, t)}, seed {s}": [p for p in sub if p["temperature"] == t
                                                      and str(p["dense_seed"]) == s]
                     for t, s in keys}
        else:
            lines = {_label(knob, t): [p for p in sub if p["temperature"] == t]
                     for t in sorted({p["temperature"] for p in sub})}
        for lab, ps in lines.items():
            eps = sorted({p["epoch"] for p in ps})
            mean = [100.0 * float(np.mean([p["test_error"] for p in ps if p["epoch"] == e]))
                    for e in eps]
            ax.plot(eps, mean, marker="o", ms=3, label=lab)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test error (%)")
        where = "dense training" if d is None else f"retraining, density {100 * d:g}%"
        ax.set_title(f"{title} {where}".strip(), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)
