"""The ``tr-jax`` command line.

    tr-jax run configs/quick.py --workdir runs/quick [--set dense.epochs=20 ...]
    tr-jax import-torch finetuned.pth.tar --arch preresnet --depth 20 --num-classes 10 --out ckpt/a
    tr-jax measure ckpt/a ckpt/b --dataset cifar10 [--json pair.json]
    tr-jax advise runs/quick --density 0.05 [--temperature 40] [--json advice.json]
    tr-jax report runs/quick [--out DIR] [--density 0.05] [--labels labels.csv]

Every error is one line on stderr (``tr-jax: error: ...``) and exit code 2; its traceback is
appended to the workdir's ``log.txt`` (``run --workdir``, ``report`` / ``advise`` WORKDIR,
``import-torch --out``), or written to ``last_error.log`` in tr_jax's cache folder. ``--debug``
(before or after the command) prints the traceback on the terminal instead.
"""
from __future__ import annotations

import argparse
import pathlib
import sys


def main(argv: list[str] | None = None) -> int:
    # --debug before or after the command: SUPPRESS keeps a subparser's default from overwriting
    # the value parsed before the command
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print an error's traceback here (default: one line, the traceback "
                        "in the workdir's log.txt)")
    parser = argparse.ArgumentParser(prog="tr-jax", description=__doc__.splitlines()[1],
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", parents=[common],
                       help="run (or resume) a sweep: dense, prune, retrain, measure, regimes")
    p.add_argument("config", help="config file defining get_config() (and optionally "
                   "get_model(), get_dataset()), e.g. configs/quick.py")
    p.add_argument("--workdir", default=None, help="run directory (created; resumed if present)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set retrain.epochs=10 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--dry-run", action="store_true", help="print the plan (members, groups, "
                   "programs, steps, FLOPs, memory, time estimate from a measured step); run nothing")
    p.add_argument("--distributed", action="store_true", help="one process of a multi-process run: "
                   "jax.distributed auto-detects the cluster (TPU pod slice, SLURM, Open MPI)")
    p.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="address of process 0, for a multi-process run without auto-detection")
    p.add_argument("--num-processes", type=int, default=None, metavar="N",
                   help="number of processes of the run (with --coordinator)")
    p.add_argument("--process-id", type=int, default=None, metavar="I",
                   help="this process's index, 0..N-1 (with --coordinator)")
    p.add_argument("--start-timeout", type=float, default=300.0, metavar="S",
                   help="multi-process runs: wait at most S seconds for every process to connect, "
                   "then exit naming the missing ones (default 300)")
    p = sub.add_parser("import-torch", parents=[common],
                       help="convert a reference PyTorch checkpoint (state_dict or "
                       ".pth.tar, pruned or not) into a tr_jax checkpoint")
    p.add_argument("file", help="the .pth / .pth.tar / .npz file")
    p.add_argument("--arch", required=True, help="preresnet | vgg | vgg_bn | densenet")
    p.add_argument("--depth", required=True, type=int)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--out", required=True, help="output directory")
    p = sub.add_parser("measure", parents=[common],
                       help="LMC, CKA, loss barrier, Hessian (and Bezier) of two "
                       "imported checkpoints sharing a mask")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--points", type=int, default=11, help="LMC points")
    p.add_argument("--bezier-epochs", type=int, default=0, help="train a Bezier curve (0 = no)")
    p.add_argument("--no-hessian", action="store_true")
    p.add_argument("--hessian-probes", type=int, default=100,
                   help="at most this many Hutchinson probes and power iterations")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p = sub.add_parser("advise", parents=[common],
                       help="case study 1 on a finished sweep: raise or lower the "
                       "temperature before pruning to a density?")
    p.add_argument("workdir", help="workdir of a finished `tr-jax run`")
    p.add_argument("--density", required=True,
                   help="target density of the sweep, e.g. 0.05 or 5%%")
    p.add_argument("--temperature", default=None,
                   help="current temperature (default: the coldest, i.e. the most-trained model)")
    p.add_argument("--knob", default=None, help="the knob, when the sweep holds several")
    p.add_argument("--json", default=None, help="also write the advice and its accuracy here")
    p = sub.add_parser("report", parents=[common],
                       help="write report.html (self-contained) and report.md of a "
                       "finished sweep")
    p.add_argument("workdir", help="workdir of a finished `tr-jax run`")
    p.add_argument("--out", default=None, help="output directory (default: the workdir)")
    p.add_argument("--density", default=None,
                   help="spell out case study 1's advice for this density")
    p.add_argument("--labels", default=None, help="CSV of regime labels (temperature, density, "
                   "label) to fit the rule's thresholds to")
    p = sub.add_parser("status", parents=[common],
                       help="where a sweep stands (live or not; takes no lock): holder, stage, "
                       "progress, throughput, ETA, sick members, what a rerun would do")
    p.add_argument("workdir", help="workdir of a `tr-jax run` (running, killed or finished)")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("--watch", type=float, default=None, metavar="S",
                   help="reprint every S seconds until the run is finished or no longer alive")
    p.add_argument("--watch-count", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    try:
        return _dispatch(args)
    except Exception as e:  # noqa: BLE001 - every error: one line (see _fail)
        return _fail(e, args, argv)


def _console_entry() -> None:
    """The ``tr-jax`` console script: :func:`main`, then an exit that cannot hang.

    Every error ends the process with exit code 2 (130 after Ctrl-C) through ``os._exit``, right
    after flushing stdout and stderr: a non-daemon thread still alive (orbax's background save
    thread) cannot keep a failed run's process up, and in a multi-process run the other processes
    are stopped by the runtime instead of waiting in a collective for this one. Success exits
    normally (atexit handlers, e.g. ``jax.distributed.shutdown``, run)."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("tr-jax: interrupted; rerun the same command to resume from the last checkpoint",
              file=sys.stderr)
        code = 130
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except BaseException as e:  # main() answers every Exception itself; this is what is left
        code = _fail(e, None, None)
    if code != 0:
        _hard_exit(code)
    sys.exit(code)


def _hard_exit(code: int) -> None:
    """Flush stdout and stderr, then end the process now, whatever threads are still alive."""
    import contextlib
    import os
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed stream: nothing left to flush
            stream.flush()
    os._exit(code)


#: errors in what the user gave (a UserError is a ValueError): their message is the explanation
_EXPECTED = (ValueError, OSError, ImportError)
#: the longest error message on its line; a longer one loses its middle (its start says what
#: went wrong, its end usually the fix), the whole of it is in the log
_MAX_LINE = 1000


def _one_line(text: str) -> tuple[str, bool]:
    """``text`` on one line (its lines joined, runs of blanks collapsed, at most about
    ``_MAX_LINE`` characters: the start and the end); returns (line, whether it was cut)."""
    line = " ".join(text.split())
    if len(line) <= _MAX_LINE:
        return line, False
    tail = _MAX_LINE // 4
    return f"{line[:_MAX_LINE - tail].rstrip()} [...] {line[-tail:].lstrip()}", True


def _error_log(args: argparse.Namespace | None) -> tuple[str, pathlib.Path]:
    """(mode, path) of the file an error's traceback goes to: the command's workdir's log.txt
    (appended) when that folder exists, else ``last_error.log`` in the cache folder (rewritten)."""
    folder = None
    if args is not None:
        folder = {"run": "workdir", "advise": "workdir", "report": "workdir",
                  "import-torch": "out"}.get(getattr(args, "command", None))
        folder = getattr(args, folder, None) if folder else None
    if folder and pathlib.Path(folder).is_dir():
        return "a", pathlib.Path(folder) / "log.txt"
    try:
        from tr_jax.autotune import cache_dir
        cache = cache_dir()
    except Exception:  # noqa: BLE001 - the error path must not fail: the same rule, inline
        import os
        cache = pathlib.Path(os.environ.get("TR_JAX_CACHE_DIR") or pathlib.Path(
            os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "tr_jax")
    return "w", cache / "last_error.log"


def _save_traceback(text: str, args: argparse.Namespace | None, argv: list[str] | None
                    ) -> tuple[str | None, str]:
    """Write ``text`` (a traceback) under a header line to the error log; returns (its path, "")
    or (None, why it could not be written)."""
    import datetime
    import os
    mode, path = _error_log(args)
    command = " ".join(["tr-jax"] + list(sys.argv[1:] if argv is None else argv))
    stamp = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, mode) as f:
            f.write(f"--- {stamp} error in `{command}` (pid {os.getpid()}):\n{text}")
    except OSError as e:
        return None, f"{type(e).__name__}: {e}"
    return str(path), ""


def _fail(e: BaseException, args: argparse.Namespace | None, argv: list[str] | None) -> int:
    """Answer the error ``e`` of a command: one line ``tr-jax: error: ...`` on stderr, the
    traceback in the error log (:func:`_error_log`), or on stderr with ``--debug``; returns 2."""
    import traceback
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    debug = (getattr(args, "debug", False) if args is not None
             else "--debug" in (sys.argv[1:] if argv is None else argv))
    try:
        message, cut = _one_line(str(e))
    except Exception:  # noqa: BLE001 - an exception whose str() fails
        message, cut = "(the message cannot be printed)", False
    expected = isinstance(e, _EXPECTED)
    if not expected:
        name = type(e).__name__
        message = f"unexpected {name}: {message}" if message else f"unexpected {name}"
    if debug:
        print(tb, end="", file=sys.stderr)
        print(f"tr-jax: error: {message}", file=sys.stderr)
        return 2
    log, why = _save_traceback(tb, args, argv)
    where = (f"traceback in {log}" if log else f"the traceback could not be saved ({why})")
    if not expected:
        message += f"; {where} (rerun with --debug to see it here)"
    elif cut:
        message += f" (the whole message: {where})" if log else " (rerun with --debug for all)"
    print(f"tr-jax: error: {message}", file=sys.stderr)
    return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from tr_jax import distributed  # first: before anything touches JAX
        distributed.initialize(args.distributed, args.coordinator, args.num_processes,
                               args.process_id, timeout_s=args.start_timeout)
        if not args.workdir and not args.dry_run:
            raise ValueError("tr-jax run needs --workdir DIR (or --dry-run)")
        from tr_jax.config import call_hook, config_functions, load_config
        from tr_jax.sweep import run
        cfg = load_config(args.config, args.overrides)
        # a config file's get_model() / get_dataset() replace model.arch / dataset
        hooks = {k: call_hook(f, cfg) for k, f in config_functions(args.config).items()}
        if args.dry_run:
            from tr_jax.sweep.run import dry_run
            print(dry_run(cfg, model=hooks.get("get_model"), dataset=hooks.get("get_dataset")))
            return 0
        from tr_jax.sweep.lock import workdir_lock
        with workdir_lock(args.workdir):  # one run per workdir (all its processes share it)
            run(cfg, args.workdir, progress=not args.no_progress, model=hooks.get("get_model"),
                dataset=hooks.get("get_dataset"))
    elif args.command == "import-torch":
        from tr_jax.sweep.imported import import_torch
        meta = import_torch(args.file, args.out, arch=args.arch, depth=args.depth,
                            num_classes=args.num_classes, width=args.width)
        print(f"tr-jax: wrote {args.out}: {meta['arch']}-{meta['depth']} (width {meta['width']}, "
              f"{meta['num_classes']} classes), conv density {100 * meta['density']:.2f}%")
    elif args.command == "measure":
        import json

        from tr_jax.data import load_dataset
        from tr_jax.sweep.imported import measure_pair, require_imported
        require_imported(args.a)  # both checkpoints before the dataset is loaded
        require_imported(args.b)
        ds = load_dataset(args.dataset, args.data_dir)
        out = measure_pair(args.a, args.b, ds, lmc_points=args.points,
                           hessian=not args.no_hessian, hessian_probes=args.hessian_probes,
                           bezier_epochs=args.bezier_epochs)
        for k, v in out.items():
            if isinstance(v, float):
                print(f"{k:28s} {v:.6g}")
        if args.json:
            from tr_jax.files import atomic_write_text
            atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
    elif args.command == "advise":
        _advise(args)
    elif args.command == "status":
        import json

        from tr_jax.sweep.status import format_status, status, watch
        if args.watch is not None:
            if not args.watch > 0:
                raise ValueError(f"--watch {args.watch:g}: give a number of seconds > 0")
            watch(args.workdir, args.watch, as_json=args.json, count=args.watch_count)
        else:
            st = status(args.workdir)
            print(json.dumps(st, indent=1, default=str) if args.json else format_status(st))
    elif args.command == "report":
        from tr_jax.report import write_report
        paths = write_report(args.workdir, args.out, density=args.density, labels=args.labels)
        if paths.get("partial"):
            print(f"tr-jax: {paths['partial']}")
        if paths.get("dichotomy"):
            print(paths["dichotomy"])
        print(f"tr-jax: wrote {paths['html']}")
        print(f"tr-jax: wrote {paths['markdown']} (figures in {paths['figures_dir']})")
    return 0


def _json_safe(x):
    """Plain JSON values: numpy scalars to Python, NaN/inf to null, tuples to lists."""
    import math

    import numpy as np
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    return x


def _advise(args: argparse.Namespace) -> None:
    import json

    from tr_jax import casestudies
    from tr_jax.report import accuracy_sentence, load_workdir, match_density, match_temperature
    sweep = load_workdir(args.workdir)
    cells = sweep.cells
    if args.knob is not None:
        if args.knob not in sweep.knobs:
            raise ValueError(f"knob {args.knob!r} is not in this sweep (has {sweep.knobs})")
        cells = cells[cells["knob"] == args.knob]
    elif len(sweep.knobs) > 1:
        raise ValueError(f"this sweep holds several knobs {sweep.knobs}; pass --knob")
    density = match_density(cells, args.density)
    temperature = (None if args.temperature is None
                   else match_temperature(cells, args.temperature, density=density))
    adv = casestudies.advise(cells, density, temperature=temperature, rule=sweep.rule)
    score = casestudies.advice_accuracy(cells, rule=sweep.rule)
    print(adv.text())
    print(accuracy_sentence(score))
    if args.json:
        from tr_jax.files import atomic_write_text
        out = {"workdir": str(sweep.workdir), "advice": adv.to_dict(), "text": adv.text(),
               "accuracy": score.to_dict(), "rule": sweep.rule.to_dict(),
               "rule_source": sweep.rule_source}
        import pathlib
        atomic_write_text(pathlib.Path(args.json), json.dumps(_json_safe(out), indent=1) + "\n")


if __name__ == "__main__":
    _console_entry()
