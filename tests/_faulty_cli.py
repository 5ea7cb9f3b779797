"""``tr-jax`` with fault points armed: the launcher of the kill tests.

    python tests/_faulty_cli.py --kill-at save:written@retrain_p0_progress:1 -- run CONFIG ...

Each ``--kill-at POINT[@NAME]:N`` (repeatable) installs ``tr_jax.hooks.kill_at(POINT, N, NAME)``
in this process: it SIGKILLs itself the N-th time it reaches the hook point POINT (counting only
the points whose ``name`` is NAME, when given). Everything after ``--`` is the ``tr-jax``
command line, run exactly as the console script runs it (same exit codes).
"""
from __future__ import annotations

import sys


def parse_kill_at(spec: str) -> tuple[str, int, str | None]:
    """``"save:written@dense:2"`` -> ``("save:written", 2, "dense")``."""
    where, sep, n = spec.rpartition(":")
    if not sep or not n.isdigit() or int(n) < 1:
        raise SystemExit(f"--kill-at {spec!r}: expected POINT[@NAME]:N with N >= 1")
    point, _, name = where.partition("@")
    return point, int(n), name or None


def main(argv: list[str]) -> None:
    if "--" not in argv:
        raise SystemExit("usage: _faulty_cli.py [--kill-at POINT[@NAME]:N ...] -- TR-JAX-ARGS")
    ours, rest = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    specs = []
    while ours:
        flag = ours.pop(0)
        if flag != "--kill-at" or not ours:
            raise SystemExit(f"unexpected argument {flag!r}; usage: --kill-at POINT[@NAME]:N")
        specs.append(parse_kill_at(ours.pop(0)))
    from tr_jax import cli, hooks
    for point, n, name in specs:
        hooks.add(hooks.kill_at(point, n, name))
    sys.argv = ["tr-jax", *rest]
    cli._console_entry()


if __name__ == "__main__":
    main(sys.argv[1:])
