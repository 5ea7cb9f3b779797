"""Packaging: the wheel installs into a fresh virtual environment and carries what it must (the
version, the type-hint marker, the data files of the package, the `tr-jax` entry point)."""
from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import shutil
import site
import subprocess
import sys
import textwrap

import tr_jax

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tr_jax"


def _data_files() -> list[str]:
    """Non-Python files of the package source (relative to tr_jax/; those git tracks, when it
    can tell), as the wheel must ship them."""
    files = [p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    try:
        tracked = subprocess.run(["git", "ls-files", "-z", "--", "tr_jax"], cwd=ROOT, check=True,
                                 capture_output=True, text=True, timeout=60).stdout.split("\0")
        tracked_set = {(ROOT / t).resolve() for t in tracked if t}
        if tracked_set:
            files = [p for p in files if p.resolve() in tracked_set or p.name == "py.typed"]
    except (OSError, subprocess.SubprocessError):
        pass
    return sorted(p.relative_to(PACKAGE).as_posix() for p in files if p.suffix not in (".py", ".pyc"))


def test_one_version():
    """``tr_jax.__version__`` is the version: pyproject reads it, CITATION.cff repeats it."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    project = re.search(r"^\[project\]\n(.*?)(?=^\[)", pyproject, re.M | re.S).group(1)
    assert re.search(r'^dynamic\s*=\s*\[[^\]]*"version"', project, re.M)
    assert not re.search(r'^version\s*=', project, re.M)
    assert 'version = { attr = "tr_jax.__version__" }' in pyproject
    cff = (ROOT / "CITATION.cff").read_text()
    assert re.search(rf'^version:\s*"?{re.escape(tr_jax.__version__)}"?\s*$', cff, re.M)


def test_license_and_citation():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert "Copyright 2026 The tr_jax authors" in text
    cff = (ROOT / "CITATION.cff").read_text()
    assert "cff-version: 1.2.0" in cff and "preferred-citation:" in cff
    assert "A Three-regime Model of Network Pruning" in cff and "2305.18383" in cff
    assert (PACKAGE / "py.typed").is_file()


def test_wheel_installs_into_a_fresh_venv(tmp_path):
    # build from a copy of what the sdist holds, so that nothing is written into the source tree
    # (setuptools' build/ folder would otherwise keep files of modules removed since)
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "tr_jax", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    # without build isolation (offline) when this environment can build: setuptools is here
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation,
                           "-q", "-w", str(wheels), str(src)],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PIP_NO_INPUT="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    [wheel] = list(wheels.glob("tr_jax-*.whl"))
    assert f"-{tr_jax.__version__}-" in wheel.name

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    # the dependencies: those of this interpreter (its virtual environment's site-packages, when
    # it runs in one), as plain path lines, so that the .pth files there (an editable install of
    # tr_jax) are not run
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in site.getsitepackages() if pathlib.Path(p).is_dir()]
    (pathlib.Path(purelib) / "_test_deps.pth").write_text("".join(f"{p}\n" for p in deps))
    proc = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # from a folder outside the source tree, so that `import tr_jax` finds the installed copy
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["JAX_PLATFORMS"] = "cpu"
    probe = textwrap.dedent("""
        import json, pathlib, tr_jax
        root = pathlib.Path(tr_jax.__file__).parent
        files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                       if p.is_file() and "__pycache__" not in p.parts)
        from importlib.metadata import version
        print(json.dumps({"file": tr_jax.__file__, "version": tr_jax.__version__,
                          "dist_version": version("tr_jax"), "files": files}))
    """)
    out = subprocess.run([str(python), "-c", probe], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert pathlib.Path(info["file"]).resolve().is_relative_to(venv.resolve()), info["file"]
    assert info["version"] == info["dist_version"] == tr_jax.__version__
    assert "py.typed" in info["files"]
    missing = [f for f in _data_files() if f not in info["files"]]
    assert not missing, f"package data files missing from the wheel: {missing}"

    # the console script
    proc = subprocess.run([str(bindir / "tr-jax"), "--help"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run" in proc.stdout and "report" in proc.stdout
