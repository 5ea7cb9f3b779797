"""notebooks/quickstart.ipynb runs top to bottom (the functional API from a notebook)."""
import os
import pathlib

import pytest

NB = pathlib.Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # as in conftest.py: faster XLA compiles in the kernel (compiling dominates this notebook)
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    nb = nbformat.read(NB, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    text = "".join(o.get("text", "") for c in code for o in c.get("outputs", []))
    # part 1: train, prune, retrain, LMC, CKA, classify
    assert "LMC =" in text and "CKA of softmax outputs =" in text
    assert "kept fraction of conv weights: 0.1" in text
    # part 2: the synthetic table is labelled as such; regimes, transition, advice, selection
    assert any("SYNTHETIC" in c.source for c in nb.cells)
    assert "knob=epochs: rows hot (top) -> cold" in text
    assert "lmc_transition" in text
    assert "regime I" in text and "advice: raise temperature" in text
    assert "advice right in" in text
    assert "lmc_cka picks the" in text
    # figures are rendered: the phase diagram and the three-regime picture
    pngs = [c for c in code if any("image/png" in o.get("data", {}) for o in c.get("outputs", []))]
    assert len(pngs) >= 2
    assert "three_regimes" in pngs[-1].source


def test_your_model_notebook_executes(monkeypatch):
    """notebooks/your_model.ipynb: a Linen CNN with flax BatchNorm and numpy arrays through a
    small sweep (Python API), the three case-study questions and the three-regime figure."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    nb = nbformat.read(NB.parent / "your_model.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    text = "".join(o.get("text", "") for c in code for o in c.get("outputs", []))
    assert "digits_arrays (8, 8, 1) 640 train / 360 test, 10 classes" in text
    assert "bad data -> dataset 'arrays': x_train has rank 3" in text
    assert "prunes ['Conv_0/kernel', 'Conv_1/kernel', 'Dense_0/kernel']" in text
    assert "regime" in text and "advice:" in text          # case study 1
    assert "lmc_cka picks the" in text                     # case study 2
    assert "sam_rho sweep: sam_rho (0.0, 0.05, 0.2)" in text  # case study 3 (how to call it)
    pngs = [c for c in code if any("image/png" in o.get("data", {}) for o in c.get("outputs", []))]
    assert pngs and "three_regimes" in pngs[-1].source
    if os.environ.get("TR_JAX_SAVE_NOTEBOOK"):  # an executed copy, to look at
        nbformat.write(nb, os.environ["TR_JAX_SAVE_NOTEBOOK"])
