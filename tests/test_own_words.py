"""The repository speaks in its own words: no text in it cites documents that are not part of it,
development tracker numbers, or the circumstances of its development.

Every text file under the scanned paths is searched for

* citations of planning documents kept outside the repository (the upper-case names in
  :data:`PATTERNS`) and paths that point outside the checkout;
* tracker numbers ("issue 12", "issues 8, 18", "issue #12");
* talk about how the code was developed: "session" (except pytest's own meaning: fixture scopes,
  ``pytest session``, "session-scoped"), hardware "lent", a "workplace".

The paper is cited as "Zhou et al. (2023)", settings and the reference implementation as
``docs/fidelity.md``, the architecture as ``docs/design.md``.
"""
from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCANNED = ("tr_jax", "tests", "configs", "experiments", "docs", "notebooks", "README.md",
           "CHANGELOG.md")
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".sh", ".txt", ".rst", ".toml", ".yaml", ".yml", ".cfg",
                 ".ini", ".json", ".css", ".html", ".tex", ".bib"}
SKIPPED_DIRS = {"__pycache__", "_build", ".ipynb_checkpoints", ".pytest_cache"}
THIS_FILE = pathlib.Path(__file__).resolve()

#: (name, pattern): each match is a violation
PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("planning document", re.compile(r"\bSPEC\b|\bDESIGN\b|\bSPEC\.md\b|\bDESIGN\.md\b")),
    ("path outside the repository", re.compile(r"\.\./shared\b|/work/shared\b")),
    ("tracker number", re.compile(r"\b[Ii]ssues? ?#?\d+")),
    ("development session", re.compile(r"\bsessions?\b", re.IGNORECASE)),
    ("lent hardware", re.compile(r"\blent\b", re.IGNORECASE)),
    ("workplace", re.compile(r"\bworkplaces?\b", re.IGNORECASE)),
)

#: legitimate uses of "session" (pytest's meaning, client objects), blanked before matching
ALLOWED_SESSION = re.compile(
    r"""scope\s*=\s*\\?["']session\\?["']"""     # @pytest.fixture(scope="session")
    r"|\bpytest(?:'s)?\s+(?:test\s+)?session\b"  # "the pytest session"
    r"|\bsession[- ](?:scoped?|fixtures?|scope)\b"  # "session-scoped fixture"
    r"|\.Session\b",                             # requests.Session(), tf.Session()
    re.IGNORECASE)


def scanned_files() -> list[pathlib.Path]:
    out = []
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            for p in sorted(path.rglob("*")):
                if (p.is_file() and p.suffix in TEXT_SUFFIXES
                        and not SKIPPED_DIRS.intersection(p.relative_to(ROOT).parts)
                        and p.resolve() != THIS_FILE):
                    out.append(p)
    return out


def violations(text: str) -> list[tuple[int, str, str]]:
    """``(line number, pattern name, matched text)`` for every violation in ``text``."""
    found = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        for name, pattern in PATTERNS:
            probe = ALLOWED_SESSION.sub(" ", line) if name == "development session" else line
            for m in pattern.finditer(probe):
                found.append((lineno, name, m.group(0)))
    return found


@pytest.mark.parametrize("text", [
    "as in SPEC §2.2", "see SPEC.md", "the reference (SPEC section 3.3)", "(DESIGN.md, Scale-out)",
    "DESIGN: a sweep", "needs ../shared/fidelity", "(issue 18)", "issue #12", "issues 8, 18",
    "Issue 7 says", "in this session", "the previous session's code", "no accelerator was lent",
    "the workplace's machine"])
def test_patterns_catch(text):
    assert violations(text), text


@pytest.mark.parametrize("text", [
    '@pytest.fixture(scope="session")', "one per pytest session", "a session-scoped fixture",
    "s = requests.Session()", "equivalent", "silently", "jax.sharding.PartitionSpec", "specs",
    "design choices (docs/design.md)", "tissue 3", "Zhou et al. (2023), §2.3", "jax#13800",
    "the shared CPU", "docs/fidelity.md, LMC"])
def test_patterns_spare(text):
    assert not violations(text), violations(text)


def test_scan_covers_the_repository():
    files = {p.relative_to(ROOT).as_posix() for p in scanned_files()}
    assert "tr_jax/__init__.py" in files and "tests/conftest.py" in files
    assert THIS_FILE.relative_to(ROOT).as_posix() not in files


def test_repository_speaks_in_its_own_words():
    hits = []
    for path in scanned_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for lineno, name, match in violations(text):
            hits.append(f"{path.relative_to(ROOT).as_posix()}:{lineno}: {name}: {match!r}")
    assert not hits, f"{len(hits)} citation(s) of outside material:\n" + "\n".join(hits)
