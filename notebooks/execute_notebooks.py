"""Execute the notebooks top to bottom and store them with their outputs.

    python notebooks/execute_notebooks.py                  # both notebooks
    python notebooks/execute_notebooks.py quickstart.ipynb # one of them

Each notebook runs in a fresh kernel with notebooks/ as its working directory (so the quickstart
finds ``runs/quick`` of the repository: run ``tr-jax run configs/quick.py --workdir runs/quick``
first, or it falls back to a small job). Outputs are kept small: stderr streams (warnings,
progress bars) are dropped and the notebook's size is printed. The stored outputs are what the
documentation (myst-nb with execution off) and GitHub show, and what ``tests/test_notebook.py``
checks for.
"""
from __future__ import annotations

import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
NOTEBOOKS = ("quickstart.ipynb", "your_model.ipynb")


def clean(nb) -> None:
    """Drop stderr stream outputs and per-cell execution metadata (timestamps) of ``nb``."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.outputs = [o for o in cell.outputs
                        if not (o.output_type == "stream" and o.get("name") == "stderr")]
        cell.metadata.pop("execution", None)


def execute(path: pathlib.Path, timeout: int = 3600) -> float:
    """Run ``path`` in place; returns the seconds it took."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    t = time.time()
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(HERE)}}).execute()
    clean(nb)
    nbformat.write(nb, path)
    return time.time() - t


def main(argv: list[str]) -> int:
    for name in argv or NOTEBOOKS:
        path = (HERE / name) if not pathlib.Path(name).is_file() else pathlib.Path(name)
        seconds = execute(path)
        print(f"{path.name}: executed in {seconds:.0f} s, {path.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
