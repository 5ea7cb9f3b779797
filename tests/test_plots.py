"""Tests for tr_jax.plots: files written, orientation, NaN handling, boundary counts."""

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from tr_jax.plots import (PANELS, all_panels, draw_regime_boundaries, draw_three_regimes,
                          draw_transition, figure2, metric_grid, phase_diagram, save_figure,
                          three_regimes)
from tr_jax.plots.overlays import _temperature_y
from tr_jax.regimes import classify, transition

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


# -- the three-regime picture (Figure 1 of the paper for the user's sweep) ----------------------

def _regime_codes(grid):
    code = {"I": 0.0, "II-A": 1.0, "II-B": 2.0}
    return np.array([[np.nan if v is None else code[v] for v in row] for row in grid])


def test_three_regimes_draws_planted_regions():
    df = planted()
    fig = Figure()
    ax = fig.add_subplot()
    out = draw_three_regimes(ax, df)
    # the image's values are the planted regimes (0 = I, 1 = II-A, 2 = II-B), hottest row on top
    arr = out["image"].get_array()
    np.testing.assert_array_equal(np.ma.filled(arr, np.nan), _regime_codes(PLANTED_GRID))
    assert out["temperatures"] == EPOCHS and out["densities"] == DENS
    ylim = ax.get_ylim()
    assert ylim[0] > ylim[1]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["10", "20", "40", "80"]
    assert "hotter" in ax.get_ylabel()
    # each regime has its own colour
    colors = {tuple(np.round(out["image"].cmap(out["image"].norm(v)), 4)) for v in (0, 1, 2)}
    assert len(colors) == 3
    # boundaries computed from the data
    (solid,) = _collections(ax, "regime_I_boundary")
    (dashed,) = _collections(ax, "regime_II_boundary")
    assert len(solid.get_segments()) == PLANTED_SOLID
    assert len(dashed.get_segments()) == PLANTED_DASHED
    # one arrow per connected region: up (hotter) inside Regime I, down (colder) inside II-A
    arrows = dict(out["arrows"])
    assert sorted(r for r, _ in out["arrows"]) == ["I", "II-A"]
    for regime, up in (("I", True), ("II-A", False)):
        (x0, y0), (x1, y1) = arrows[regime]._posA_posB
        assert x0 == x1
        assert (y1 < y0) if up else (y1 > y0)  # y grows downwards (hot row 0 on top)
        for y in (y0, y1):  # both ends inside cells of that regime
            assert PLANTED_GRID[int(round(y)), int(round(x0))] == regime
        assert arrows[regime].get_gid() == f"advice_arrow_{regime}"
        assert arrows[regime] in ax.patches
    # the transition: the sharp LMC drop of the 5% and 10% columns, between 20 and 40 epochs
    assert out["transition"]["x"] == [0, 1]
    assert out["transition"]["y"] == [1.5, 1.5]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("I:") and "raise" in t for t in labels)
    assert any(t.startswith("II-A:") and "lower" in t for t in labels)
    assert any(t.startswith("II-B:") for t in labels)
    assert any("transition" in t for t in labels)
    # cells are annotated with regime and test error
    texts = [t.get_text() for t in ax.texts]
    assert sum(t.startswith("I\n") for t in texts) == 4


def test_three_regimes_separate_components_get_their_own_arrows():
    grid = np.array([["I", "II-B", "I"], ["I", "II-B", "II-A"]], dtype=object)
    rows = [dict(knob="epochs", temperature=t, density=d, test_error=0.1, lmc=0.0, cka=0.9,
                 regime=grid[i, j])
            for i, t in enumerate([10.0, 20.0]) for j, d in enumerate([0.1, 0.2, 0.5])]
    out = draw_three_regimes(Figure().add_subplot(), pd.DataFrame(rows), transition_table=False)
    assert sorted(r for r, _ in out["arrows"]) == ["I", "I", "II-A"]
    assert out["transition"]["transition"] is None


def test_three_regimes_nan_and_sick_cells(tmp_path):
    df = planted()
    df["sick_members"] = 0
    sick = (df.temperature == 10.0) & (df.density == 0.5)
    df.loc[sick, "sick_members"] = 2
    df.loc[sick, ["lmc", "cka"]] = np.nan
    ax = Figure().add_subplot()
    out = draw_three_regimes(ax, df)
    arr = out["image"].get_array()
    assert arr.mask[0, 3] and arr.mask.sum() == 1  # no regime: grey
    (patch,) = out["sick"]
    assert patch.get_gid() == "sick_cell" and patch.get_hatch()
    assert patch.get_xy() == pytest.approx((3 - 0.46, 0 - 0.46))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "cell with sick members" in labels and "no regime (NaN)" in labels


def test_three_regimes_file_is_written_atomically(tmp_path):
    df = pd.concat([planted(), planted("sam_rho", [0.2, 0.1, 0.05, 0.0])], ignore_index=True)
    with pytest.raises(ValueError, match="several knobs"):
        three_regimes(df, tmp_path / "x.png")
    path = three_regimes(df, tmp_path / "sub" / "rho.png", knob="sam_rho")
    assert path == tmp_path / "sub" / "rho.png"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img[..., :3].std() > 0.05
    assert sorted(p.name for p in path.parent.iterdir()) == ["rho.png"]  # no temp file left


def test_save_figure_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    path.write_bytes(b"old")
    fig = Figure()
    fig.add_subplot().plot([0, 1])

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_figure(fig, path)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
    fig2 = Figure()
    fig2.add_subplot().plot([0, 1])
    save_figure(fig2, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_transition_overlay_with_seed_error_bars():
    df = planted()
    tt = pd.DataFrame(dict(knob="epochs", density=[0.05, 0.1, 0.2],
                           lmc_transition=[30.0, 30.0, np.nan], lmc_transition_std=[10.0, 0.0, 0.0],
                           best_temperature=[20.0, 20.0, 80.0],
                           best_temperature_std=[np.nan, 0.0, 0.0], sharp=[True, False, False]))
    ax = Figure().add_subplot()
    phase_diagram(ax, df, "lmc", regimes=classify(df), transition=tt)
    (marker,) = [ln for ln in ax.lines if ln.get_gid() == "transition"]
    np.testing.assert_allclose(np.asarray(marker.get_xdata(), float), [0, 1])
    np.testing.assert_allclose(np.asarray(marker.get_ydata(), float), [1.5, 1.5])  # midway between 20 and 40
    # 30 +- 10 epochs spans the rows of 20 and 40 epochs
    cont = [c for c in ax.containers if c.lines[0] is marker][0]
    segs = [np.round(s, 6).tolist() for s in cont.lines[2][0].get_segments()]
    assert [[0.0, 1.0], [0.0, 2.0]] in segs and [[1.0, 1.5], [1.0, 1.5]] in segs
    # hollow marker for the transition that is not sharp
    (hollow,) = [ln for ln in ax.lines if ln.get_gid() == "transition_not_sharp"]
    np.testing.assert_allclose(np.asarray(hollow.get_xdata(), float), [1])
    (best,) = [ln for ln in ax.lines if ln.get_gid() == "best_temperature"]
    np.testing.assert_allclose(np.asarray(best.get_ydata(), float), [1, 1, 3])
    # regimes.transition's table (no seeds): on the edge between hot and cold temperature
    ax2 = Figure().add_subplot()
    out = draw_transition(ax2, transition(df), EPOCHS, DENS, best=False)
    assert out["x"] == [0, 1] and out["y"] == [1.5, 1.5]  # only columns whose LMC drops


def test_temperature_y_interpolates_and_clips():
    assert _temperature_y([10.0, 20.0, 40.0], 30.0) == pytest.approx(1.5)
    assert _temperature_y([0.2, 0.1, 0.0], 0.05) == pytest.approx(1.5)  # hot = large rho on top
    assert _temperature_y([10.0, 20.0], 1000.0) == pytest.approx(1.5)  # half a cell past the edge
    assert np.isnan(_temperature_y([10.0, 20.0], np.nan))


def test_figure2_boundaries_sick_and_transition_on_every_panel(tmp_path, monkeypatch):
    import tr_jax.plots.phase as plots_mod  # figure2 calls the overlays through its own names
    df = planted()
    df["bezier_mc"] = df["lmc"] * 0.5
    df["hessian_trace"] = 100.0 + df["temperature"]
    df["sick_members"] = 0
    df.loc[df.index[0], "sick_members"] = 1
    calls = {"bounds": 0, "sick": 0, "transition": 0}
    real_b, real_s, real_t = (plots_mod.draw_regime_boundaries, plots_mod.draw_sick_cells,
                              plots_mod.draw_transition)

    def count(name, fn):
        def wrapped(*a, **k):
            out = fn(*a, **k)
            if name != "sick" or out:
                calls[name] += 1
            return out
        return wrapped

    monkeypatch.setattr(plots_mod, "draw_regime_boundaries", count("bounds", real_b))
    monkeypatch.setattr(plots_mod, "draw_sick_cells", count("sick", real_s))
    monkeypatch.setattr(plots_mod, "draw_transition", count("transition", real_t))
    panels = [m for m in all_panels() if m in df.columns or m == "normalized_test_error"]
    paths = figure2(df, tmp_path, panels=panels, transition=transition(df), dpi=40)
    assert len(paths) == len(panels) == 6
    assert calls == {"bounds": 6, "sick": 6, "transition": 6}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_uncertain_cells_are_marked(tmp_path):
    """Cells whose regime_confidence is below 80 % get a "?" at their own grid position, in
    the three-regimes figure (with a legend entry) and on every Figure-2 panel."""
    from tr_jax.plots import UNCERTAIN_BELOW, draw_uncertain_cells
    df = planted()
    df["regime_confidence"] = 1.0
    unsure = (df.temperature == 40.0) & (df.density == 0.1)  # row 2, column 1
    df.loc[unsure, "regime_confidence"] = 0.55
    df.loc[(df.temperature == 80.0) & (df.density == 0.5), "regime_confidence"] = UNCERTAIN_BELOW
    ax = Figure().add_subplot()
    out = draw_three_regimes(ax, df)
    (mark,) = out["uncertain"]
    assert mark.get_text() == "?" and mark.get_gid() == "uncertain_cell"
    assert mark.get_position() == pytest.approx((1 + 0.36, 2 - 0.3))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "regime confidence < 80%" in labels
    assert draw_uncertain_cells(Figure().add_subplot(), df.drop(columns="regime_confidence")) == []
    paths = figure2(df, tmp_path, dpi=40)
    assert len(paths) == 4 and all(p.stat().st_size > 0 for p in paths)
