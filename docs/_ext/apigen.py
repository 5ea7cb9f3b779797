"""Write a skeleton API reference page for a module from its ``__all__``.

    python docs/_ext/apigen.py tr_jax.landscape > docs/api/landscape.md
    python docs/_ext/apigen.py --all        # rewrite docs/api/<name>.md for every module in PAGES

The pages in ``docs/api/`` named in ``PAGES`` are this output (rerun it when an ``__all__``
changes); ``index.md``, ``config.md``, ``pruning.md`` and ``internals.md`` are written by hand.
``tests/test_docs.py`` checks that every name of every public ``__all__`` appears in ``docs/api``.
"""
from __future__ import annotations

import importlib
import inspect
import pathlib
import sys
import types

#: the modules whose page is generated from their ``__all__``
PAGES = ("landscape", "regimes", "sweep", "plots", "training", "models", "data", "casestudies",
         "report", "stats", "errors", "tables_io", "measures", "files")


def page(modname: str, title: str | None = None) -> str:
    mod = importlib.import_module(modname)
    names = list(getattr(mod, "__all__", ()))
    out = [f"# {title or f'`{modname}`'}", "", "```{eval-rst}", f".. automodule:: {modname}",
           "   :no-members:", "", f".. currentmodule:: {modname}", ""]
    if names:
        out += [".. autosummary::", "   :nosignatures:", ""] + [f"   {n}" for n in names] + [""]
    for n in names:
        obj = getattr(mod, n)
        if isinstance(obj, types.ModuleType):
            out += [f".. py:module:: {modname}.{n}", "   :no-index:", ""]
        elif inspect.isclass(obj):
            extra = ["   :members:", "   :show-inheritance:"] if not issubclass(obj, BaseException) \
                else ["   :show-inheritance:"]
            out += [f".. autoclass:: {n}"] + extra + [""]
        elif callable(obj):
            out += [f".. autofunction:: {n}", ""]
        else:
            out += [f".. autodata:: {n}"] + (["   :no-value:"] if len(repr(obj)) > 120 else []) + [""]
    out += ["```", ""]
    return "\n".join(out)


def write_all(api_dir: str | pathlib.Path = pathlib.Path(__file__).parent.parent / "api") -> None:
    for name in PAGES:
        (pathlib.Path(api_dir) / f"{name}.md").write_text(page(f"tr_jax.{name}"))


if __name__ == "__main__":
    if sys.argv[1] == "--all":
        write_all()
    else:
        print(page(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None), end="")
