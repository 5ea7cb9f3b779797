"""Sphinx configuration of the tr_jax documentation.

Build (offline, warnings are errors):

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""
from __future__ import annotations

import os
import sys

DOCS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(DOCS, "_ext"))
sys.path.insert(0, os.path.dirname(DOCS))  # the source tree, when tr_jax is not installed
# autodoc imports tr_jax: keep JAX on the CPU and quiet while it does
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tr_jax  # noqa: E402

project = "tr_jax"
author = "The tr_jax authors"
copyright = "2026, The tr_jax authors"
release = tr_jax.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "myst_nb",                     # Markdown (MyST) pages and the notebooks
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "tr_jax_configdoc",            # writes configuration.md from tr_jax.config before the build
    "tr_jax_docstrings",           # a docstring that is not valid reST is shown as plain text
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints",
                    "jupyter_execute"]

# ---------------------------------------------------------------- MyST and notebooks
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath", "amsmath", "fieldlist",
                          "attrs_inline", "substitution", "tasklist"]
myst_heading_anchors = 4           # `[text](page.md#a-heading)` links resolve
nb_execution_mode = "off"          # notebooks are rendered with their stored outputs
nb_merge_streams = True

# ---------------------------------------------------------------- API reference
autosummary_generate = False       # the pages in api/ list the names themselves
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True   # `density=0.05`, not the evaluated object
autodoc_default_options = {"undoc-members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True           # "Attributes:" as fields, not duplicates of the members
add_module_names = False
nitpicky = False                   # type hints name jax / flax / numpy types we do not link to

# No intersphinx: the build must not fetch anything.

# ---------------------------------------------------------------- HTML
html_theme = "sphinx_book_theme"
html_title = f"tr_jax {release}"
html_theme_options = {
    "repository_url": "https://github.com/tr-jax/tr_jax",
    "repository_branch": "main",
    "path_to_docs": "docs",
    "use_repository_button": True,
    "use_issues_button": True,
    "use_edit_page_button": False,
    "show_toc_level": 2,
}
html_static_path: list[str] = []
html_last_updated_fmt = None
