"""Sphinx extension: render a docstring that is not valid reStructuredText as plain text.

The docstrings of tr_jax are written as plain technical text with reStructuredText markup where it
helps (``code``, :func:`links`, Google-style sections read by napoleon). A few are not valid
reStructuredText (a ``|x|`` read as a substitution, an indented continuation line, ``**kwargs``
read as bold). Rather than silence docutils for the whole site (the build runs with ``-W``), each
docstring is parsed once after napoleon has processed it; one that docutils would warn about is
shown verbatim as a preformatted block, and the build log lists it (``-v``). Everything else is
rendered normally, and the Markdown pages stay under ``-W``.
"""
from __future__ import annotations

import io
import re

from docutils.core import publish_doctree
from docutils import nodes
from sphinx.util import logging
from sphinx.util.docstrings import prepare_docstring

logger = logging.getLogger(__name__)

# Sphinx-only markup that plain docutils does not know: replaced by a literal for the check
_ROLE = re.compile(r":(?:[\w.-]+:)?[\w-]+:`([^`]*)`")
_IGNORED = ("Unknown interpreted text role", "Unknown directive type", "No role entry",
            "No directive entry", 'Unknown target name', "Duplicate implicit target name",
            "Duplicate explicit target name")

_raw: dict[tuple[str, str], list[str]] = {}
_plain: list[str] = []


def _problems(lines: list[str]) -> list[str]:
    """What docutils would warn about in ``lines`` (Sphinx-only roles and directives aside)."""
    text = _ROLE.sub(lambda m: f"``{m.group(1)}``", "\n".join(lines))
    doc = publish_doctree(text, settings_overrides={
        "report_level": 2, "halt_level": 5, "warning_stream": io.StringIO(),
        "file_insertion_enabled": False, "raw_enabled": False})
    out = []
    for msg in doc.findall(nodes.system_message):
        body = msg.astext()
        if msg["level"] >= 2 and not any(s in body for s in _IGNORED):
            out.append(body.splitlines()[0] if body else "")
    out += [f"problematic: {p.astext()}" for p in doc.findall(nodes.problematic)
            if not any(s in p.astext() for s in ("``",))]
    return out


def _escape(text: str) -> str:
    return re.sub(r"([\\*`|_\[\]])", r"\\\1", text)


def _plain_lines(raw: list[str]) -> list[str]:
    """``raw`` as valid reST: its first paragraph as one line (escaped if it must be: the summary
    autosummary shows), the rest verbatim in a literal block."""
    n = next((i for i, line in enumerate(raw) if not line.strip()), len(raw))
    first = " ".join(line.strip() for line in raw[:n])
    if first and _problems([first]):
        first = _escape(first)
    rest = raw[n:]
    while rest and not rest[0].strip():
        rest = rest[1:]
    out = [first, ""] if first else []
    if rest:
        out += ["::", ""] + [f"    {line}" if line.strip() else "" for line in rest] + [""]
    return out


def _stash(app, what, name, obj, options, lines):
    if what in ("data", "attribute") and lines and obj.__doc__ == type(obj).__doc__ and \
            "\n".join(lines).strip() == "\n".join(prepare_docstring(obj.__doc__ or "")).strip():
        lines[:] = []  # the docstring of the value's type (dict, tuple, ...), not of the name
    _raw[(what, name)] = list(lines)


def _protect_summary(lines: list[str]) -> None:
    """autosummary's summary is the first paragraph up to the first period followed by a space,
    even inside an inline literal (``a .. b``), which leaves the literal unterminated: a zero-width
    space after such a period (invisible) keeps the literal whole."""
    n = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    for i in range(n):
        lines[i] = re.sub(r"``.+?``", lambda m: re.sub(r"\.(?=\s)", ".\u200b", m.group(0)),
                          lines[i])


def _check(app, what, name, obj, options, lines):
    _protect_summary(lines)
    raw = _raw.pop((what, name), None)
    if not lines or raw is None or not _problems(lines):
        return
    _plain.append(name)
    logger.verbose("docstring of %s is not valid reStructuredText: shown as plain text", name)
    lines[:] = _plain_lines(raw)


def _report(app, exception):
    if _plain:
        logger.info("tr_jax_docstrings: %d docstring(s) shown as plain text: %s", len(set(_plain)),
                    ", ".join(sorted(set(_plain))))


def setup(app):
    # napoleon converts Google / numpy sections at the default priority (500): keep the raw text
    # before it, check the result after it
    app.connect("autodoc-process-docstring", _stash, priority=400)
    app.connect("autodoc-process-docstring", _check, priority=600)
    app.connect("build-finished", _report)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
