"""notebooks/quickstart.ipynb runs top to bottom (the functional API from a notebook)."""
import pathlib

import pytest

NB = pathlib.Path(__file__).parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_executes():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NB, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3").execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "LMC =" in text and "CKA of softmax outputs =" in text
    assert "kept fraction of conv weights: 0.1" in text
