"""Tests for tr_jax.plots: files written, orientation, NaN handling, boundary counts."""

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from tr_jax.plots import PANELS, draw_regime_boundaries, figure2, metric_grid, phase_diagram
from tr_jax.regimes import classify

EPOCHS = [10.0, 20.0, 40.0, 80.0]
DENS = [0.05, 0.1, 0.2, 0.5]
CKA_BY_T = {10.0: 0.90, 20.0: 0.93, 40.0: 0.96, 80.0: 0.99}

# Regimes of the planted table (rows hot -> cold, columns density ascending), see
# tests/test_regimes.py::EXPECTED_RELATIVE.
PLANTED_GRID = np.array([
    ["II-A", "II-A", "II-A", "II-A"],
    ["II-B", "II-B", "II-A", "II-A"],
    ["I", "I", "II-A", "II-A"],
    ["I", "I", "II-B", "II-B"],
], dtype=object)
# I|non-I edges: (1,0)-(2,0), (1,1)-(2,1), (2,1)-(2,2), (3,1)-(3,2)
PLANTED_SOLID = 4
# II-A|II-B edges: (0,0)-(1,0), (0,1)-(1,1), (1,1)-(1,2), (2,2)-(3,2), (2,3)-(3,3)
PLANTED_DASHED = 5


def planted(knob="epochs", temps=EPOCHS):
    rows = []
    for t_rank, t in enumerate(temps):
        for d in DENS:
            bad = d <= 0.1 and t_rank >= 2
            rows.append(dict(knob=knob, temperature=t, density=d,
                             test_error=0.05 + 0.1 * (1 - d) + (0.02 if bad else 0.0),
                             lmc=-0.4 if bad else -0.01,
                             cka=[0.90, 0.93, 0.96, 0.99][t_rank]))
    return pd.DataFrame(rows).sample(frac=1.0, random_state=1)


def brute_force_counts(grid):
    solid = dashed = 0
    n, m = grid.shape
    for r in range(n):
        for c in range(m):
            for rr, cc in ((r + 1, c), (r, c + 1)):
                if rr >= n or cc >= m:
                    continue
                a, b = grid[r, c], grid[rr, cc]
                if a is None or b is None:
                    continue
                if (a == "I") != (b == "I"):
                    solid += 1
                elif {a, b} == {"II-A", "II-B"}:
                    dashed += 1
    return solid, dashed


def test_figure2_writes_four_loadable_pngs(tmp_path):
    df = planted()
    out = tmp_path / "figs" / "nested"
    paths = figure2(df, out)
    assert [p.name for p in paths] == [f"epochs_{m}.png" for m in PANELS]
    for p in paths:
        assert p.exists() and p.stat().st_size > 5000
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 400
        assert img[..., :3].std() > 0.05  # not a blank canvas


def test_figure2_multiple_knobs_and_filter(tmp_path):
    df = pd.concat([planted(), planted("sam_rho", [0.2, 0.1, 0.05, 0.0])],
                   ignore_index=True)
    paths = figure2(df, tmp_path)
    assert len(paths) == 8
    assert {p.name for p in paths} >= {"sam_rho_lmc.png", "epochs_cka.png"}
    only = figure2(df, tmp_path / "one", knob="sam_rho", panels=("lmc", "cka"))
    assert [p.name for p in only] == ["sam_rho_lmc.png", "sam_rho_cka.png"]
    with pytest.raises(ValueError, match="lr"):
        figure2(df, tmp_path, knob="lr")


def test_metric_grid_orientation():
    df = planted()
    temps, dens, grid = metric_grid(df, "lmc")
    assert temps == EPOCHS and dens == DENS  # fewest epochs (hottest) first = top row
    assert grid[3, 0] == -0.4 and grid[0, 3] == -0.01
    rho = planted("sam_rho", [0.0, 0.05, 0.1, 0.2])
    temps, _, grid = metric_grid(rho, "cka")
    assert temps == [0.2, 0.1, 0.05, 0.0]  # largest rho (hottest) first
    assert list(grid[:, 0]) == [0.99, 0.96, 0.93, 0.90]
    _, _, rgrid = metric_grid(df, classify(df))
    assert (rgrid == PLANTED_GRID).all()


def test_phase_diagram_axes_and_nan():
    df = planted()
    df.loc[(df.temperature == 20.0) & (df.density == 0.2), "lmc"] = np.nan
    fig = Figure()
    ax = fig.add_subplot()
    im = phase_diagram(ax, df, "lmc")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["5%", "10%", "20%", "50%"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["10", "20", "40", "80"]
    ylim = ax.get_ylim()
    assert ylim[0] > ylim[1]  # row 0 (hottest) drawn at the top
    assert "hotter" in ax.get_ylabel() and "epochs" in ax.get_ylabel()
    assert "Density" in ax.get_xlabel()
    assert "LMC" in ax.get_title()
    arr = im.get_array()
    assert np.ma.is_masked(arr) and arr.mask[1, 2] and arr.mask.sum() == 1
    # one annotation per finite cell
    assert len(ax.texts) == 15
    # light (0) vs dark (barrier) for LMC
    def lum(rgba):
        return 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
    assert lum(im.cmap(im.norm(0.0))) > lum(im.cmap(im.norm(-0.4)))


def test_phase_diagram_test_error_in_percent():
    df = planted()
    fig = Figure()
    ax = fig.add_subplot()
    im = phase_diagram(ax, df, "test_error", colorbar=False)
    assert np.nanmax(im.get_array()) == pytest.approx(100 * df.test_error.max())
    with pytest.raises(ValueError, match="exactly one knob"):
        phase_diagram(ax, pd.concat([df, df.assign(knob="lr")]), "lmc")


def _collections(ax, gid):
    return [c for c in ax.collections if isinstance(c, LineCollection) and c.get_gid() == gid]


def test_boundaries_known_grid_counts():
    fig = Figure()
    ax = fig.add_subplot()
    ax.imshow(np.zeros(PLANTED_GRID.shape))
    out = draw_regime_boundaries(ax, PLANTED_GRID)
    assert len(out["solid"].get_segments()) == PLANTED_SOLID
    assert len(out["dashed"].get_segments()) == PLANTED_DASHED
    assert brute_force_counts(PLANTED_GRID) == (PLANTED_SOLID, PLANTED_DASHED)
    (solid,) = _collections(ax, "regime_I_boundary")
    (dashed,) = _collections(ax, "regime_II_boundary")
    assert solid is out["solid"] and dashed is out["dashed"]
    # the I|II-A edge between (2,1) and (2,2) is the vertical segment x = 1.5, y in [1.5, 2.5]
    segs = [np.round(s, 6).tolist() for s in solid.get_segments()]
    assert [[1.5, 1.5], [1.5, 2.5]] in segs
    # solid vs dashed styles
    assert solid.get_linestyle()[0][1] is None
    assert dashed.get_linestyle()[0][1] is not None


def test_boundaries_skip_missing_and_random_grids():
    rng = np.random.default_rng(0)
    choices = np.array(["I", "II-A", "II-B", None], dtype=object)
    for _ in range(20):
        grid = rng.choice(choices, size=(rng.integers(1, 6), rng.integers(1, 7)))
        fig = Figure()
        ax = fig.add_subplot()
        out = draw_regime_boundaries(ax, grid, label_cells=False)
        want = brute_force_counts(grid)
        assert (len(out["solid"].get_segments()), len(out["dashed"].get_segments())) == want
    grid = np.array([["I", None], [None, "II-B"]], dtype=object)
    out = draw_regime_boundaries(Figure().add_subplot(), grid)
    assert len(out["solid"].get_segments()) == 0 and len(out["dashed"].get_segments()) == 0


def test_phase_diagram_draws_boundaries_from_data():
    df = planted()
    fig = Figure()
    ax = fig.add_subplot()
    phase_diagram(ax, df, "cka", regimes=classify(df))
    (solid,) = _collections(ax, "regime_I_boundary")
    (dashed,) = _collections(ax, "regime_II_boundary")
    assert len(solid.get_segments()) == PLANTED_SOLID
    assert len(dashed.get_segments()) == PLANTED_DASHED
    # regime column by name, positional list, and a 2-D grid agree
    fig2 = Figure()
    ax2 = fig2.add_subplot()
    phase_diagram(ax2, df.assign(regime=classify(df)), "cka", regimes="regime")
    assert len(_collections(ax2, "regime_I_boundary")[0].get_segments()) == PLANTED_SOLID
    ax3 = Figure().add_subplot()
    phase_diagram(ax3, df, "cka", regimes=PLANTED_GRID)
    assert len(_collections(ax3, "regime_II_boundary")[0].get_segments()) == PLANTED_DASHED


def test_figure2_with_nan_metrics(tmp_path):
    df = planted()
    idx = df.index[:3]
    df.loc[idx[0], "lmc"] = np.nan
    df.loc[idx[1], "cka"] = np.nan
    df.loc[idx[2], "test_error"] = np.nan
    paths = figure2(df, tmp_path)
    assert len(paths) == 4
    for p in paths:
        assert mpimg.imread(p).shape[2] in (3, 4)
    # all-NaN metric still renders
    paths = figure2(df.assign(lmc=np.nan, cka=np.nan), tmp_path / "allnan",
                    panels=("lmc", "cka"))
    assert len(paths) == 2 and all(p.stat().st_size > 0 for p in paths)


def test_figure2_missing_column_skipped_with_warning(tmp_path):
    df = planted().drop(columns=["cka"])
    with pytest.warns(UserWarning, match="cka"):
        paths = figure2(df, tmp_path, regimes=False)
    assert [p.name for p in paths] == [f"epochs_{m}.png" for m in PANELS if m != "cka"]
