"""The documentation: every public name is in the API reference, every configuration key in the
generated configuration reference, and the site builds with warnings as errors."""
from __future__ import annotations

import importlib
import importlib.util
import os
import pathlib
import pkgutil
import re
import subprocess
import sys

import pytest

import tr_jax

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API = DOCS / "api"


def _public_modules() -> dict[str, list[str]]:
    """``tr_jax`` and each of its public modules and subpackages that has an ``__all__``."""
    out = {"tr_jax": list(tr_jax.__all__)}
    for info in pkgutil.iter_modules(tr_jax.__path__):
        if info.name.startswith("_") or info.name == "cli":
            continue
        mod = importlib.import_module(f"tr_jax.{info.name}")
        if hasattr(mod, "__all__"):
            out[mod.__name__] = list(mod.__all__)
    return out


def _api_sources() -> dict[pathlib.Path, str]:
    files = sorted(API.rglob("*.md")) + sorted(API.rglob("*.rst"))
    return {f: f.read_text() for f in files}


def test_top_level_all_resolves():
    """``tr_jax.__all__`` names only what ``tr_jax`` has (``from tr_jax import *`` works)."""
    for name in tr_jax.__all__:
        assert getattr(tr_jax, name) is not None, name
    assert isinstance(tr_jax.__version__, str) and tr_jax.__version__


def test_every_public_name_is_in_the_api_reference():
    sources = _api_sources()
    assert sources, "docs/api/ has no pages"
    everything = "\n".join(sources.values())
    missing = []
    for modname, names in _public_modules().items():
        # the pages that document this module: names are listed there without the module prefix
        pages = [t for t in sources.values()
                 if re.search(rf"(?:currentmodule|automodule)::\s+{re.escape(modname)}\s*$", t, re.M)]
        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", "\n".join(pages)))
        for name in names:
            if f"{modname}.{name}" in everything or (pages and name in words):
                continue
            missing.append(f"{modname}.{name}")
    assert not missing, (f"public names missing from docs/api ({len(missing)}): {missing}; "
                         "regenerate the pages with `python docs/_ext/apigen.py --all`")


def _configdoc():
    spec = importlib.util.spec_from_file_location("tr_jax_configdoc", DOCS / "_ext" / "tr_jax_configdoc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_configuration_reference_lists_every_key():
    from tr_jax import config

    text = _configdoc().render()
    keys = config.schema_keys()
    assert keys
    missing = [k for k in keys if f"| `{k}` |" not in text]
    assert not missing, f"keys missing from the configuration reference: {missing}"
    ranges = config.ranges()
    for k in keys:  # the valid range of each key, in the words of its error message
        assert ranges[k].describe().replace("|", "\\|") in text, k
    assert "(not checked)" not in text


def test_committed_configuration_reference_is_current():
    """docs/configuration.md is committed (browsable in the repository) and equals what the
    build writes from the schema: rerun the docs build (or the generator's write) after a
    schema change."""
    assert (DOCS / "configuration.md").read_text() == _configdoc().render(), (
        "docs/configuration.md is stale: python -c \"import importlib.util, sys; "
        "sys.path.insert(0, 'docs/_ext'); import tr_jax_configdoc; tr_jax_configdoc.write('docs')\"")


def test_configuration_reference_defaults():
    from tr_jax import config

    doc = _configdoc()
    stale = sorted(set(doc.WRITTEN) - set(config.schema_keys()))
    assert not stale, f"docs/_ext/tr_jax_configdoc.py explains keys no longer in the schema: {stale}"
    text = doc.render()
    assert "| `seed` | `0` |" in text
    assert "| `retrain.mode` | `'lr_rewinding'` |" in text


@pytest.mark.skipif(importlib.util.find_spec("sphinx") is None or
                    importlib.util.find_spec("myst_nb") is None or
                    importlib.util.find_spec("sphinx_book_theme") is None,
                    reason="the docs extra is not installed (pip install -e '.[docs]')")
def test_site_builds_without_warnings(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    html = tmp_path / "html"
    for page in ("index.html", "configuration.html", "api/index.html", "api/landscape.html",
                 "notebooks/quickstart.html", "notebooks/your_model.html", "changelog.html"):
        assert (html / page).is_file(), page
    assert "measure.hessian.tol" in (html / "configuration.html").read_text()
