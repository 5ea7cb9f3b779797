"""The ``tr-jax`` command line.

    tr-jax run configs/quick.py --workdir runs/quick [--set dense.epochs=20 ...]
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tr-jax", description=__doc__.splitlines()[1])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run (or resume) a sweep: dense, prune, retrain, measure, regimes")
    p.add_argument("config", help="config file defining get_config(), e.g. configs/quick.py")
    p.add_argument("--workdir", required=True, help="run directory (created; resumed if present)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set retrain.epochs=10 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    from tr_jax.config import load_config
    try:
        cfg = load_config(args.config, args.overrides)
        from tr_jax.sweep import run
        run(cfg, args.workdir, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"tr-jax: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
