"""The notebooks run top to bottom, and are stored with the outputs of such a run.

notebooks/quickstart.ipynb: the quick job's workdir (here a small job the notebook runs itself),
then the functional API; notebooks/your_model.ipynb: a user's Flax model through a sweep. The
stored copies (what GitHub and the documentation show) must hold their outputs, figures included:
``python notebooks/execute_notebooks.py`` makes them.
"""
import os
import pathlib

import pytest

NB = pathlib.Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb"
NOTEBOOKS = ("quickstart.ipynb", "your_model.ipynb")
MAX_BYTES = 1_500_000


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def _text(cells):
    """The stream text of the cells' outputs (what they printed)."""
    return "".join(o.get("text", "") for c in cells for o in c.get("outputs", []))


def _png_cells(cells):
    return [c for c in cells if any("image/png" in o.get("data", {}) for o in c.get("outputs", []))]


def _execute(nbformat, nbclient, name):
    nb = nbformat.read(NB.parent / name, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NB.parent)}}).execute()
    return nb


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_notebook_has_outputs(name):
    """The stored notebook was executed top to bottom and kept its outputs: a figure at least,
    no error, no stderr noise (warnings, progress bars), and a modest size."""
    nbformat = pytest.importorskip("nbformat")
    path = NB.parent / name
    nb = nbformat.read(path, as_version=4)
    code = _code(nb)
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{name} is stored without outputs or not run top to bottom (execution counts {counts}); "
        f"run python notebooks/execute_notebooks.py {name}")
    assert _png_cells(code), f"{name} is stored without any figure output"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert not [o for o in outputs if o.get("name") == "stderr"]
    assert path.stat().st_size < MAX_BYTES
    if name == "quickstart.ipynb":  # the stored outputs come from the quick job itself
        text = _text(code)
        assert "reading the finished sweep in runs/quick" in text
        assert "config 'quick'" in text


def test_quickstart_notebook_executes(monkeypatch, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # as in conftest.py: faster XLA compiles in the kernel (compiling dominates this notebook)
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    # a workdir without cells.csv: the notebook runs its small job there instead of reading
    # runs/quick (part 1)
    monkeypatch.setenv("TR_JAX_QUICKSTART_WORKDIR", str(tmp_path / "small"))
    nb = _execute(nbformat, nbclient, "quickstart.ipynb")
    code = _code(nb)
    text = _text(code)
    # part 1: the workdir's files and figures
    assert "cells.csv not found: running a small job instead" in text
    assert "tr-jax run configs/tiny.py --workdir" in text
    assert (tmp_path / "small" / "cells.csv").is_file()
    assert "config 'tiny', knob 'epochs': temperatures 1, 2, 4 x densities 0.1, 0.5" in text
    assert "(NN%) = regime confidence" in text                      # summary.txt
    assert "epochs_three_regimes.png" in text and "epochs_lmc.png" in text
    # part 2: train, prune, retrain, LMC, CKA, classify
    assert "LMC =" in text and "CKA of softmax outputs =" in text
    assert "kept fraction of conv weights: 0.1" in text
    # part 3: the synthetic table is labelled as such; regimes, transition, advice, selection
    assert any("SYNTHETIC" in c.source for c in nb.cells)
    assert "knob=epochs: rows hot (top) -> cold" in text
    assert "lmc_transition" in text
    assert "regime I" in text and "advice: raise temperature" in text
    assert "advice right in" in text
    assert "lmc_cka picks the" in text
    # figures are rendered: the workdir's three-regime picture and Figure 2 panels, the phase
    # diagram of one cell and the three-regime picture of the synthetic table
    pngs = _png_cells(code)
    assert len(pngs) >= 4
    assert "three_regimes" in pngs[0].source and "PANELS" in pngs[1].source
    assert "three_regimes" in pngs[-1].source


def test_your_model_notebook_executes(monkeypatch):
    """notebooks/your_model.ipynb: a Linen CNN with flax BatchNorm and numpy arrays through a
    small sweep (Python API), the three case-study questions and the three-regime figure."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    nb = _execute(nbformat, nbclient, "your_model.ipynb")
    code = _code(nb)
    text = _text(code)
    assert "digits_arrays (8, 8, 1) 640 train / 360 test, 10 classes" in text
    assert "bad data -> dataset 'arrays': x_train has rank 3" in text
    assert "prunes ['Conv_0/kernel', 'Conv_1/kernel', 'Dense_0/kernel']" in text
    assert "regime" in text and "advice:" in text          # case study 1
    assert "lmc_cka picks the" in text                     # case study 2
    assert "sam_rho sweep: sam_rho (0.0, 0.05, 0.2)" in text  # case study 3 (how to call it)
    pngs = _png_cells(code)
    assert pngs and "three_regimes" in pngs[-1].source
    if os.environ.get("TR_JAX_SAVE_NOTEBOOK"):  # an executed copy, to look at
        nbformat.write(nb, os.environ["TR_JAX_SAVE_NOTEBOOK"])
