"""Sphinx extension: write ``docs/configuration.md`` from the configuration schema.

The page lists every key of ``tr_jax.config.default_config()`` with its default, its valid range
(``tr_jax.config.RANGES``, in the words of ``Range.describe()``, the same words a ``ConfigError``
uses) and a one-line meaning taken from the comments beside the key in ``default_config()``. It is
regenerated before every build (``builder-inited``), so it cannot drift from the code.

``render()`` returns the page text; ``python docs/_ext/tr_jax_configdoc.py`` prints it.
"""
from __future__ import annotations

import inspect
import io
import pathlib
import re
import tokenize

PAGE = "configuration.md"

_HEADER = """\
# Configuration reference

<!-- Generated from tr_jax/config.py by docs/_ext/tr_jax_configdoc.py at every build: do not edit. -->

Every key of the experiment configuration, with its default (the paper's settings, Zhou et al.
(2023)) and its valid range. A config file builds on `tr_jax.config.default_config()`; `tr-jax run
CONFIG --set key=value` overrides one key (the value is typed by the schema: `prune.densities=0.05`
is the tuple `(0.05,)`). A key that is not in this table, or a value outside its range, is a
`ConfigError` that names the key, the value, the range and where the value came from. Rules between
keys (milestones within the run, batch sizes within the training set, temperatures of the knob, ...)
are checked by `tr_jax.config.validate`.
"""


# ------------------------------------------------------------------ meanings from the comments
def _clean(text: str) -> str:
    """A comment's text as one line of prose."""
    return re.sub(r"\s+", " ", text).strip()


def _first_sentence(text: str) -> str:
    m = re.search(r"(?<![.]\w)(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z(])", text)
    out = text[:m.start() + 1] if m else text
    return out.strip().rstrip(";,")


def _comments(src: str) -> list[tuple[int, int, str, bool]]:
    """(line, column, text, inline) of every comment in ``src``."""
    out = []
    code_lines: set[int] = set()
    toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
    for t in toks:
        if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                          tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.add(t.start[0])
    for t in toks:
        if t.type == tokenize.COMMENT:
            out.append((t.start[0], t.start[1], t.string.lstrip("#").strip(), t.start[0] in code_lines))
    return out


def _expand(name: str) -> list[str]:
    """``{dense,retrain}.schedule`` -> ``["dense.schedule", "retrain.schedule"]``."""
    m = re.match(r"\{([^}]*)\}(.*)", name)
    if not m:
        return [name]
    return [p.strip() + m.group(2) for p in m.group(1).split(",")]


def meanings(keys: list[str]) -> dict[str, str]:
    """Dotted key -> the first sentence of the comment that explains it in ``default_config()``."""
    from tr_jax import config

    src = inspect.getsource(config.default_config)
    lines = src.splitlines()
    keyset = set(keys)
    found: dict[str, str] = {}

    def section_at(lineno: int) -> str:
        """The ``c.<section>`` assignment that the line belongs to (or follows)."""
        for i in range(lineno - 1, -1, -1):
            m = re.match(r"\s*c\.(\w+)\s*=", lines[i])
            if m:
                return m.group(1)
        return ""

    def assigned_after(lineno: int) -> str:
        """The key set by the first assignment after a comment paragraph ending at ``lineno``."""
        for i in range(lineno, len(lines)):
            s = lines[i].strip()
            if not s or s.startswith("#"):
                continue
            m = re.match(r"c\.(\w+)\s*=", s) or re.match(r"(\w+)\s*=", s)
            return m.group(1) if m else ""
        return ""

    def resolve(name: str, section: str) -> list[str]:
        out = []
        for n in _expand(name):
            if n in keyset:
                out.append(n)
            elif f"{section}.{n}" in keyset:
                out.append(f"{section}.{n}")
            else:  # a subsection: every key below it
                sub = [k for k in keys if k.startswith(n + ".") or k.startswith(f"{section}.{n}.")]
                out += sub
        return out

    comments = _comments(src)
    # inline comments (with their continuation lines) on `c.key = value  # ...`
    i = 0
    while i < len(comments):
        line, col, text, inline = comments[i]
        j = i + 1
        if inline:
            parts = [text]
            while (j < len(comments) and not comments[j][3] and comments[j][0] == comments[j - 1][0] + 1
                   and comments[j][1] < col and
                   re.match(r"\s*#\s{4,}", lines[comments[j][0] - 1])):
                parts.append(comments[j][2])
                j += 1
            m = re.match(r"\s*c\.(\w+)\s*=", lines[line - 1])
            if m and m.group(1) in keyset:
                found.setdefault(m.group(1), _clean(" ".join(parts)))
        i = j
    # paragraphs of full-line comments: "key: meaning; other_key: meaning" or a caption of the
    # assignment that follows
    paragraphs: list[list[tuple[int, str]]] = []
    for line, _col, text, inline in comments:
        if inline or re.match(r"\s*#\s{4,}", lines[line - 1]):
            continue
        if paragraphs and paragraphs[-1][-1][0] == line - 1:
            paragraphs[-1].append((line, text))
        else:
            paragraphs.append([(line, text)])
    key_re = re.compile(r"(?:^|(?<=;\s)|(?<=\.\s))(\{[\w,]+\}(?:\.\w+)+|[a-z_]+(?:\.[a-z_]+)*)"
                        r"(?:\s*\([^)]*\))?:\s+")
    for para in paragraphs:
        text = " ".join(t for _, t in para)
        section = section_at(para[0][0] - 1)
        hits = [(m, resolve(m.group(1), section)) for m in key_re.finditer(text)]
        hits = [(m, ks) for m, ks in hits if ks]
        if not hits:
            target = assigned_after(para[-1][0])
            ks = resolve(target, section) if target else []
            for k in ks:
                found.setdefault(k, _clean(text))
            continue
        for n, (m, ks) in enumerate(hits):
            end = hits[n + 1][0].start() if n + 1 < len(hits) else len(text)
            body = text[m.end():end].strip().rstrip(";")
            for k in ks:
                found.setdefault(k, _clean(body))
    for k, v in _measure_meanings(keyset).items():
        found.setdefault(k, v)
    return {k: _first_sentence(v) for k, v in found.items() if v}


def _measure_meanings(keyset: set[str]) -> dict[str, str]:
    """``measure.<name>.*``: the comment above ``settings=`` in the measure's registration
    (``tr_jax.measures``), for each of its keys."""
    import ast

    try:
        from tr_jax import measures
    except ImportError:
        return {}
    out: dict[str, str] = {}
    src = inspect.getsource(measures)
    lines = src.splitlines()
    for node in ast.walk(ast.parse(src)):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Measure"):
            continue
        kw = {k.arg: k for k in node.keywords}
        if "name" not in kw or "settings" not in kw or not isinstance(kw["name"].value, ast.Constant):
            continue
        name = kw["name"].value.value
        para = []
        i = kw["settings"].lineno - 2
        while i >= 0 and lines[i].strip().startswith("#"):
            para.insert(0, lines[i].strip().lstrip("#").strip())
            i -= 1
        text = _clean(" ".join(para))
        for k in keyset:
            if k.startswith(f"measure.{name}."):
                out[k] = (f"compute the {name} measure" + (f": {text}" if text else "")
                          if k.endswith(".enabled") else f"a setting of the {name} measure")
    return out


# ------------------------------------------------------------------ meanings written here
# For keys that have no comment in default_config(). tests/test_docs.py checks that every key
# named here is still in the schema; a comment in the code takes precedence.
_TRAINING = {
    "epochs": "epochs of training",
    "batch_size": "mini-batch size",
    "lr": "initial learning rate",
    "momentum": "SGD momentum (Adam: b1)",
    "weight_decay": "weight decay (coupled L2, as torch.optim)",
    "milestones": "when the learning rate is multiplied by gamma",
    "gamma": "learning-rate decay factor at each milestone",
    "iterations": "optimiser steps of the run when schedule='iteration'",
    "drop_last": "drop the last incomplete batch of each epoch",
}
WRITTEN: dict[str, str] = {
    "name": "name of the experiment (recorded in the workdir's config.json)",
    "knob": "the temperature-like hyperparameter that the temperature grid varies",
    "model.arch": "architecture (tr_jax.models.ARCHS: preresnet, vgg, vgg_bn, densenet)",
    "model.depth": "depth of the architecture (e.g. 20 for PreResNet-20)",
    "model.width": "width multiplier of every layer",
    **{f"dense.{k}": f"{v} (dense training)" for k, v in _TRAINING.items()},
    "dense.seeds": "seeds of the dense networks: one dense member per seed and temperature",
    "dense.sam_rho": "SAM radius of dense training (0 = plain optimiser)",
    "augment.pad": "zero padding before the random crop (0 = no crop)",
    "augment.flip": "random horizontal flips",
    "prune.densities": "fractions of the prunable weights kept after magnitude pruning",
    "prune.scope": "how the density is spread over layers: uniform (per layer), global, LAMP or ERK",
    **{f"retrain.{k}": f"{v} (retraining of the pruned networks)" for k, v in _TRAINING.items()},
    "retrain.seeds": "seeds of the retraining: each pruned network is retrained once per seed; "
                     "pairs of them are compared by LMC and CKA",
    "retrain.finetune_lr": "constant learning rate of retrain.mode='finetune'",
    "retrain.rewind_epoch": "epoch of the dense run whose weights retrain.mode='weight_rewinding' "
                            "restarts from",
    "measure.lmc_points": "evenly spaced points t in [0, 1] on the line between two retrained networks",
    "measure.bn_batch_size": "batch size of the BatchNorm recalibration at each point of a curve",
    "measure.cka_images": "training images whose outputs CKA compares (at most the training set)",
    "measure.test_error_last_epochs": "the test error of a member is the mean over its last "
                                      "epochs of retraining",
    "regimes.lmc_threshold": "a cell whose LMC is below it is Regime I (poorly connected)",
    "regimes.use_jump": "also call Regime I the cells at or beyond a density column's LMC change point",
    "regimes.jump_threshold": "the least LMC shift at the change point that counts as a jump",
    "regimes.jump_lmc_ceiling": "a cell beyond the jump is Regime I only if its own LMC is below this",
    "regimes.cka_mode": "how connected cells are split into II-A and II-B by CKA",
    "regimes.cka_delta": "relative mode: II-B if CKA is within cka_delta of the column's best",
    "regimes.cka_threshold": "absolute mode: II-B if CKA is at least this",
    "run.members_strategy": "how members are laid out in a compiled program (vmap, loop, gemm, ...; "
                            "auto = measured per device)",
    "run.memory_budget_gb": "cap on the memory of one compiled program, by the measured footprint "
                            "of a member (0 = no cap)",
}


# ------------------------------------------------------------------ the page
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(value) -> str:
    text = repr(value)
    if len(text) > 60 and isinstance(value, tuple):
        text = f"({value[0]!r}, ..., {value[-1]!r})  [{len(value)} values]"
    tick = "``" if "`" in text else "`"
    return _cell(f"{tick}{text}{tick}")


def render() -> str:
    """The configuration reference page (Markdown), from ``tr_jax.config``."""
    from tr_jax import config

    cfg = config.default_config()
    ranges = config.ranges()
    schema = config.schema_keys(cfg)
    keys = [k for k in ranges if k in schema] + [k for k in schema if k not in ranges]
    means = {**{k: v for k, v in WRITTEN.items() if k in keys}, **meanings(keys)}
    out = [_HEADER]
    sections: dict[str, list[str]] = {}
    for k in keys:
        sections.setdefault(k.split(".")[0] if "." in k else "", []).append(k)
    for sec, ks in sections.items():
        out.append(f"\n## {'Top level' if not sec else f'`{sec}`'}\n")
        out.append("| Key | Default | Valid range | Meaning |")
        out.append("|---|---|---|---|")
        for k in ks:
            value = cfg
            for part in k.split("."):
                value = value[part]
            rng = ranges.get(k)
            desc = rng.describe() if rng is not None else "(not checked)"
            out.append(f"| `{k}` | {_code(value)} | {_cell(desc)} | {_cell(means.get(k, ''))} |")
    return "\n".join(out) + "\n"


def write(docs_dir: str | pathlib.Path) -> pathlib.Path:
    """Write the page into ``docs_dir`` (only if its text changed, so that an unchanged page is
    not rebuilt)."""
    path = pathlib.Path(docs_dir) / PAGE
    text = render()
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def _builder_inited(app) -> None:
    write(app.srcdir)


def setup(app):
    app.connect("builder-inited", _builder_inited)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    print(render(), end="")
