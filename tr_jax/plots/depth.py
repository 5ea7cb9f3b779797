"""Figures along the depth of the network: per-layer heat maps and Hessian eigenvalue densities.

:func:`layer_profile` draws a per-layer metric (a :func:`tr_jax.regimes.layer_profiles` table) as
one (temperature x layer) heat map per density; :func:`esd_grid` draws the Gaussian-smoothed
Hessian eigenvalue density (:func:`tr_jax.landscape.esd_density`) of every (temperature, density)
cell. Temperatures follow the phase diagrams (Zhou et al. 2023, Figure 2): hottest at the top.
"""

from __future__ import annotations

import os
import pathlib
from typing import Mapping

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..landscape import esd_density
from ..regimes import KNOB_LABELS, format_density, temperatures_hot_to_cold
from ._common import (_NAN_COLOR, _fmt_temperature, _single_knob, _temperature_label, metric_label,
                      save_figure)

_PROFILE_COLUMNS = ("knob", "temperature", "density", "metric", "layer", "layer_index", "value")


def _profile_rows(profile: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The rows of base ``metric`` of a one-knob profile table (ValueError naming the metric and
    the metrics present when there are none)."""
    missing = [c for c in _PROFILE_COLUMNS if c not in profile.columns]
    if missing:
        raise ValueError(f"layer_profile: profile table lacks column(s) {missing}; has "
                         f"{list(profile.columns)}")
    sub = profile[profile["metric"] == metric]
    if sub.empty:
        have = sorted({str(m) for m in profile["metric"]})
        raise ValueError(f"layer_profile: no rows for metric {metric!r}; the profile has {have}")
    return sub


def _layer_order(sub: pd.DataFrame) -> list[str]:
    """The layers of ``sub`` in ``layer_index`` order (network order)."""
    pairs = sub[["layer_index", "layer"]].drop_duplicates().sort_values("layer_index", kind="mergesort")
    return list(dict.fromkeys(str(x) for x in pairs["layer"]))


def _profile_grids(sub: pd.DataFrame, temps: list[float], dens: list[float], layers: list[str]
                   ) -> np.ndarray:
    """``[density, temperature, layer]`` grid of the mean ``value`` (NaN where missing)."""
    t_pos = {t: i for i, t in enumerate(temps)}
    d_pos = {d: i for i, d in enumerate(dens)}
    l_pos = {name: i for i, name in enumerate(layers)}
    total = np.zeros((len(dens), len(temps), len(layers)))
    count = np.zeros_like(total)
    for t, d, name, v in zip(sub["temperature"], sub["density"], sub["layer"], sub["value"]):
        if pd.isna(v):
            continue
        k = (d_pos[float(d)], t_pos[float(t)], l_pos[str(name)])
        total[k] += float(v)
        count[k] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1.0), np.nan)


def layer_profile(profile: pd.DataFrame, metric: str, path: str | os.PathLike, *,
                  title: str | None = None, cbar: str | None = None, log: bool = False,
                  cmap: str = "viridis", fmt: str = "{:.2f}", dpi: int = 120) -> pathlib.Path:
    """Heat maps of one per-layer metric, written as a PNG at ``path`` (atomically); returns it.

    ``profile``: a :func:`tr_jax.regimes.layer_profiles` table of one knob; ``metric``: a base
    metric name in it. One panel per density (ascending, side by side, titled "density 5%"), with
    the layers across (``layer_index`` order) and the temperatures down (hottest at the top, as in
    the phase diagrams). The colour is the value (its log10 when ``log``; non-positive values are
    then grey), on one scale shared by all panels with a colour bar labelled ``cbar`` (default: the
    metric's label). Each cell is annotated with ``fmt`` of its value; missing cells are grey.
    Raises ``ValueError`` naming the metric (and listing the metrics present) when the table has
    no rows for it, or when it holds more than one knob.
    """
    sub = _profile_rows(profile, metric)
    knob = _single_knob(sub)
    temps = temperatures_hot_to_cold(sub["temperature"], knob)
    dens = sorted({float(d) for d in sub["density"]})
    layers = _layer_order(sub)
    raw = _profile_grids(sub, temps, dens, layers)
    if log:
        with np.errstate(invalid="ignore", divide="ignore"):
            shown = np.where(raw > 0, np.log10(np.where(raw > 0, raw, 1.0)), np.nan)
    else:
        shown = raw
    finite = shown[np.isfinite(shown)]
    vmin = float(finite.min()) if finite.size else 0.0
    vmax = float(finite.max()) if finite.size else 1.0
    if vmax <= vmin:
        pad = max(0.1 * abs(vmin), 1e-3)
        vmin, vmax = vmin - pad, vmax + pad
    cmap_obj = matplotlib.colormaps[cmap].with_extremes(bad=_NAN_COLOR)

    n_d, n_t, n_l = len(dens), len(temps), len(layers)
    size = (max(5.0, n_d * (0.42 * n_l + 1.0) + 1.6), max(3.2, 0.45 * n_t + 2.6))
    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    axes = fig.subplots(1, n_d, sharey=True, squeeze=False)[0]
    font = 7 if max(n_t, n_l) <= 8 else 5.5
    im = None
    for j, (ax, d) in enumerate(zip(axes, dens)):
        im = ax.imshow(np.ma.masked_invalid(shown[j]), cmap=cmap_obj, vmin=vmin, vmax=vmax,
                       aspect="auto", interpolation="nearest", origin="upper")
        ax.set_title(f"density {format_density(d)}", fontsize=9)
        ax.set_xticks(range(n_l))
        ax.set_xticklabels(layers, rotation=90, fontsize=7)
        ax.set_yticks(range(n_t))
        ax.set_yticklabels([_fmt_temperature(t) for t in temps])
        ax.tick_params(length=0)
        ax.set_xlabel("layer")
        if j == 0:
            ax.set_ylabel(_temperature_label(knob))
        for i in range(n_t):
            for k in range(n_l):
                v = raw[j, i, k]
                if not np.isfinite(v):
                    continue
                s = shown[j, i, k]
                if np.isfinite(s):
                    r, g, b, _ = cmap_obj(im.norm(s))
                    color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                else:
                    color = "black"
                ax.text(k, i, fmt.format(v), ha="center", va="center", fontsize=font, color=color)
    label = cbar if cbar is not None else metric_label(metric)[1]
    if cbar is None and log:
        label = f"log10 {label}"
    cb = fig.colorbar(im, ax=list(axes), fraction=0.05 if n_d > 1 else 0.08, pad=0.02)
    cb.set_label(label)
    fig.suptitle(title if title is not None else f"{metric_label(metric)[0]} \u2014 knob: {knob}")
    return save_figure(fig, path, dpi=dpi)


def _cell_density(nodes: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(grid, density)`` of a cell's SLQ nodes/weights floored at 1e-8 of the maximum, or None
    when the cell holds no weighted node (or no positive density)."""
    nodes = np.asarray(nodes, dtype=float)
    weights = np.asarray(weights, dtype=float)
    if nodes.shape != weights.shape:
        raise ValueError(f"esd_grid: nodes shape {nodes.shape} != weights shape {weights.shape}")
    if nodes.size == 0 or not np.any(weights > 0):
        return None
    nodes, weights = np.atleast_2d(nodes), np.atleast_2d(weights)
    grid, dens = esd_density(nodes, weights)
    grid, dens = np.asarray(grid, dtype=float), np.asarray(dens, dtype=float)
    top = float(np.nanmax(dens)) if dens.size else 0.0
    if not np.isfinite(top) or top <= 0:
        return None
    return grid, np.maximum(dens, 1e-8 * top)


def esd_grid(spectra: Mapping[tuple[float, float], tuple[np.ndarray, np.ndarray]],
             path: str | os.PathLike, *, knob: str, title: str | None = None,
             dpi: int = 120) -> pathlib.Path:
    """Hessian eigenvalue densities of a sweep's cells, written as a PNG at ``path`` (atomically);
    returns it.

    ``spectra`` maps ``(temperature, density)`` to ``(nodes, weights)``, arrays ``[N, k]`` of the
    SLQ Ritz values and weights (all probes of all members of the cell stacked; a weight of 0
    marks an unused node). A grid of panels: rows are temperatures (hottest at the top, by the
    rule of ``knob``), columns densities ascending. Each panel plots the Gaussian-smoothed density
    (:func:`tr_jax.landscape.esd_density`) on a log y axis, floored at 1e-8 of its maximum, with
    a thin vertical line at eigenvalue 0; a cell missing from ``spectra`` (or without a weighted
    node) is left blank with "no data". Raises ``ValueError`` when ``spectra`` is empty.
    """
    if not spectra:
        raise ValueError("esd_grid: spectra is empty; expected {(temperature, density): "
                         "(nodes, weights)}")
    cells = {(float(t), float(d)): v for (t, d), v in spectra.items()}
    temps = temperatures_hot_to_cold([t for t, _ in cells], knob)
    dens = sorted({d for _, d in cells})
    n_t, n_d = len(temps), len(dens)
    fig = Figure(figsize=(max(4.0, 2.8 * n_d + 0.8), max(2.6, 2.0 * n_t + 0.8)), dpi=dpi,
                 layout="constrained")
    axes = fig.subplots(n_t, n_d, squeeze=False)
    knob_label = KNOB_LABELS.get(str(knob), str(knob))
    for i, t in enumerate(temps):
        for j, d in enumerate(dens):
            ax = axes[i, j]
            cell = cells.get((t, d))
            curve = None if cell is None else _cell_density(*cell)
            if curve is None:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes,
                        color="0.5", fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.semilogy(curve[0], curve[1], lw=1.0, color="C0")
                ax.axvline(0.0, color="0.3", lw=0.6)
                ax.tick_params(labelsize=7)
                ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(f"density {format_density(d)}", fontsize=9)
            if i == n_t - 1:
                ax.set_xlabel("eigenvalue")
            if j == 0:
                ax.set_ylabel(f"{knob_label} {_fmt_temperature(t)}", fontsize=8)
    fig.suptitle(title if title is not None else f"Hessian eigenvalue density \u2014 knob: {knob}")
    return save_figure(fig, path, dpi=dpi)
