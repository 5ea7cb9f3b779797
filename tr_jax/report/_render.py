"""A tiny document model (blocks) rendered to self-contained HTML and to Markdown."""
from __future__ import annotations

import base64
import dataclasses
import html
import math
import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from .. import plots, regimes

# ---------------------------------------------------------------------------------------------
# A tiny document model rendered to HTML and Markdown
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Block:
    kind: str  # h1 h2 h3 p pre table grid img
    text: str = ""
    table: pd.DataFrame | None = None
    grid: Any = None
    path: pathlib.Path | None = None


def _num(x: Any, fmt: str = "{:.4g}") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "n/a" if not math.isfinite(float(x)) else fmt.format(float(x))
    if isinstance(x, (tuple, list)):
        return ", ".join(_num(v, fmt) for v in x)
    return str(x)


def _pct(x: Any) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "n/a" if x is None else str(x)
    return "n/a" if not math.isfinite(v) else f"{100 * v:.2f}%"


def _table(df: pd.DataFrame, formats: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Every entry a string: ``formats`` maps a column to a callable or a format string;
    densities print as percents; other numbers as ``{:.4g}``."""
    formats = dict(formats or {})
    out = pd.DataFrame(index=range(len(df)))
    for col in df.columns:
        f = formats.get(col)
        if f is None and col == "density":
            f = regimes.format_density
        vals = []
        for v in df[col].tolist():
            missing = v is None or (isinstance(v, float) and math.isnan(v))
            if f is None or missing:
                vals.append(_num(v))
            elif callable(f):
                vals.append(f(v))
            else:
                vals.append(_num(v, f))
        out[str(col)] = vals
    return out


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
 padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444;padding-bottom:.2em}h2{border-bottom:1px solid #bbb;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;border:1px solid #ddd;padding:.6em;overflow-x:auto;font-size:.85em}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555}.note{color:#555;font-size:.9em}
table.regimes td{text-align:center;min-width:5em}
""".strip()


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _render_html(blocks: Sequence[_Block], title: str) -> str:
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{html.escape(b.text)}</p>")
        elif b.kind == "note":
            out.append(f"<p class=\"note\">{html.escape(b.text)}</p>")
        elif b.kind == "pre":
            out.append(f"<pre>{html.escape(b.text)}</pre>")
        elif b.kind == "table":
            df = b.table
            rows = ["<table>", "<tr>" + "".join(f"<th>{html.escape(str(c))}</th>"
                                                for c in df.columns) + "</tr>"]
            for _, r in df.iterrows():
                rows.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>")
            rows.append("</table>")
            out.append("\n".join(rows))
        elif b.kind == "grid":
            header, body = b.grid
            rows = ["<table class=\"regimes\">", "<tr>" + "".join(
                f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
            for label, entries in body:
                cells_html = []
                for text, regime in entries:
                    color = plots.REGIME_COLORS.get(regime or "", "#d9d9d9")
                    cells_html.append(f"<td style=\"background:{color}\">{html.escape(text)}</td>")
                rows.append(f"<tr><th>{html.escape(label)}</th>{''.join(cells_html)}</tr>")
            rows.append("</table>")
            out.append("\n".join(rows))
        elif b.kind == "img":
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            out.append(f"<figure><img alt=\"{html.escape(b.text)}\" "
                       f"src=\"data:image/png;base64,{data}\">"
                       f"<figcaption>{html.escape(b.text)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _render_md(blocks: Sequence[_Block], figures_dir: pathlib.Path, out_dir: pathlib.Path) -> str:
    out = []
    for b in blocks:
        if b.kind == "h1":
            out.append(f"# {b.text}")
        elif b.kind == "h2":
            out.append(f"## {b.text}")
        elif b.kind == "h3":
            out.append(f"### {b.text}")
        elif b.kind in ("p", "note"):
            out.append(b.text if b.kind == "p" else f"*{b.text}*")
        elif b.kind == "pre":
            out.append("```\n" + b.text + "\n```")
        elif b.kind in ("table", "grid"):
            if b.kind == "table":
                header = [str(c) for c in b.table.columns]
                body = [[str(v) for v in r] for r in b.table.itertuples(index=False)]
            else:
                header = list(b.grid[0])
                body = [[label] + [t for t, _ in entries] for label, entries in b.grid[1]]
            lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |",
                     "|" + "|".join("---" for _ in header) + "|"]
            lines += ["| " + " | ".join(_md_escape(v) for v in r) + " |" for r in body]
            out.append("\n".join(lines))
        elif b.kind == "img":
            rel = os.path.relpath(b.path, out_dir).replace(os.sep, "/")
            out.append(f"![{b.text}]({rel})")
    return "\n\n".join(out) + "\n"


