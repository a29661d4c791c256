"""The ``multijet`` command line: ``info``, ``bench``, ``compare`` and ``autotune``.

    multijet info                      versions, backends, devices, cache location
    multijet bench --operator laplacian --dim 50 --batch-sizes 1,2,4,8 --out results/
    multijet bench --operator bilaplacian --dim 5 --samples 1,2,4,8 --batch 4
    multijet compare --operator bilaplacian --dim 3
    multijet autotune --operator laplacian --dim 50 --batch 16

Also ``python -m multijet``. Bad arguments print the usage and exit with code 2; a failed comparison exits
with code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from ._cli_output import Progress, fits_table, show, table
from .bench.programs import OPERATORS, PAPER_WIDTHS
from .errors import MultijetError
from .plan import DISTRIBUTIONS, METHODS

__all__ = ["main", "build_parser"]


# --- argument types --------------------------------------------------------------------------------------------


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.replace(" ", ",").split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,4, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _number(cast: Callable[[str], Any], ok: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse type: ``cast(text)`` that must satisfy ``ok``, else a usage error naming ``what``."""

    def parse(text: str):
        try:
            v = cast(text)
        except ValueError:
            v = None
        if v is None or not ok(v):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_seed_int = _number(int, lambda v: v >= 0, "a non-negative integer seed")
_positive_float = _number(float, lambda v: v > 0, "a positive number of seconds")


def _name_list(choices: Sequence[str], what: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(t.strip() for t in text.split(",") if t.strip())
        bad = [n for n in names if n not in choices]
        if not names or bad:
            raise argparse.ArgumentTypeError(f"unknown {what} {bad or text!r}; choose from {', '.join(choices)}")
        return names

    return parse


def _backends_arg(text: str) -> tuple[str, ...]:
    from .backends import BACKENDS, available_backends

    names = _name_list(tuple(BACKENDS), "backend")(text)
    missing = [n for n in names if n not in available_backends()]
    if missing:
        raise argparse.ArgumentTypeError(f"backend(s) {missing} not installed here; installed: {available_backends()}")
    return names


# --- the parser ------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="multijet",
        description="Linear PDE operators of programs with collapsed Taylor-mode AD: tools around the library.",
    )
    p.add_argument("--version", action="version", version=f"multijet {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = p.add_subparsers(dest="command", metavar="{info,bench,compare,autotune}")
    sub.required = True

    info = sub.add_parser("info", help="versions, backends, devices and the autotune cache location")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def common(q: argparse.ArgumentParser, dim: int, dtype: str) -> None:
        q.add_argument("--operator", choices=OPERATORS, default="laplacian", help="(default: %(default)s)")
        q.add_argument("--dim", type=_positive_int, default=dim, help="input dimension D (default: %(default)s)")
        q.add_argument("--backends", type=_backends_arg, default=None,
                       help="comma-separated, e.g. torch,jax (default: every installed backend)")  # fmt: skip
        q.add_argument("--methods", type=_name_list(METHODS, "method"), default=None,
                       help=f"comma-separated among {','.join(METHODS)} (default: all each backend has)")  # fmt: skip
        q.add_argument("--dtype", choices=("float32", "float64"), default=dtype, help="(default: %(default)s)")
        q.add_argument("--distribution", choices=DISTRIBUTIONS, default=None,
                       help="for randomised runs (default: rademacher; gaussian for the bi-Laplacian)")  # fmt: skip
        q.add_argument("--seed", type=_seed_int, default=0)

    bench = sub.add_parser(
        "bench",
        help="time and peak memory against batch size (or samples), with fitted slopes: JSON + PNG",
        description="The paper's experiment (Fig. 5 / Table 1): a tanh MLP D→widths→1, an operator, each backend "
        "× method, swept over batch sizes (exact) or sample counts (randomised, at a fixed batch).",
    )
    common(bench, 50, "float32")
    bench.add_argument("--widths", type=_int_list, default=PAPER_WIDTHS,
                       help="hidden widths (default: 768,768,512,512, the paper's)")  # fmt: skip
    sizes = bench.add_mutually_exclusive_group()
    sizes.add_argument("--batch-sizes", type=_int_list, default=None, help="exact, at these N (default: 1,2,4,8)")
    sizes.add_argument("--samples", type=_int_list, default=None, help="randomised operator at these sample counts S")
    bench.add_argument("--batch", type=_positive_int, default=1, help="fixed batch size with --samples (default 1)")
    bench.add_argument("--repeats", type=_positive_int, default=20, help="timed rounds (default: %(default)s)")
    bench.add_argument("--warmup", type=_positive_int, default=2, help="warm-up calls (default: %(default)s)")
    bench.add_argument("--budget", type=_positive_float, default=30.0,
                       help="seconds of timing per size (default: %(default)s)")
    bench.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    bench.add_argument("--no-differentiable", action="store_true", help="skip the differentiable (torch) memory")
    bench.add_argument("--jobs", type=_positive_int, default=1, help="memory subprocesses in parallel")
    bench.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="threads per framework (reruns itself with BLAS/OpenMP/XLA limits; default: theirs)",
    )
    bench.add_argument(
        "--out", type=Path, default=Path("multijet-bench"), help="output directory (default: %(default)s)"
    )
    bench.add_argument("--name", default=None, help="file stem (default: <operator>[-randomised]-D<dim>)")
    bench.add_argument("--no-plot", action="store_true", help="write the JSON only")

    cmp_ = sub.add_parser(
        "compare",
        help="cross-backend agreement report on a built-in tanh MLP",
        description="Runs mj.compare on a built-in array-API tanh MLP D→width→width→1: every backend × method, "
        "every pair's max absolute and relative difference, pass/fail. Exit code 1 if any pair disagrees.",
    )
    common(cmp_, 3, "float64")
    cmp_.add_argument("--batch", type=_positive_int, default=4, help="points N (default: %(default)s)")
    cmp_.add_argument("--width", type=_positive_int, default=16, help="hidden width (default: %(default)s)")
    cmp_.add_argument("--samples", type=_positive_int, default=None, help="randomised with S samples (same seed)")
    cmp_.add_argument("--pairs", action="store_true", help="list every pair instead of the matrix")
    cmp_.add_argument("--out", type=Path, default=None, help="also write the report as JSON to this file")

    tune = sub.add_parser(
        "autotune",
        help="time every backend × method on a built-in tanh MLP and name the fastest (cached)",
    )
    common(tune, 50, "float32")
    tune.add_argument("--widths", type=_int_list, default=PAPER_WIDTHS, help="hidden widths (default: the paper's)")
    tune.add_argument("--batch", type=_positive_int, default=16, help="points N (default: %(default)s)")
    tune.add_argument("--samples", type=_positive_int, default=None, help="randomised with S samples")
    tune.add_argument("--repeats", type=_positive_int, default=15)
    tune.add_argument("--budget", type=_positive_float, default=10.0,
                      help="seconds of timed rounds (default: %(default)s)")
    tune.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    tune.add_argument("--retune", action="store_true", help="measure again and overwrite the cached result")
    tune.add_argument("--threads", type=_positive_int, default=None,
                      help="threads per framework (reruns itself with BLAS/OpenMP/XLA limits; default: theirs)")
    return p


# --- commands --------------------------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from .autotune import cache_path
    from .bench import machine_info
    from .timing import dist_version, oversubscribed

    info = machine_info()
    info["autotune_cache"] = str(cache_path())
    info["devices"] = _devices(info["backends"])
    info["load_warning"] = oversubscribed()
    info["accelerators"] = sorted({d for devs in info["devices"].values() for d in devs
                                   if not d.startswith(("cpu", "error"))})  # fmt: skip
    for extra in ("rich", "matplotlib"):
        info["versions"][extra] = dist_version(extra)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    rows = [
        ["multijet", info["versions"]["multijet"] or __version__],
        ["python", f"{info['python']} ({info['platform']})"],
        ["cpu", f"{info['cpu']} ({info['cores']} cores)"],
    ]
    rows += [[k, v or "not installed"] for k, v in info["versions"].items() if k not in ("multijet",)]
    rows.append(["backends", ", ".join(info["backends"]) or "none"])
    rows += [[f"devices ({k})", ", ".join(v)] for k, v in info["devices"].items()]
    rows.append(["accelerators", ", ".join(info["accelerators"]) or "none visible (CPU only)"])
    rows.append(["autotune cache", info["autotune_cache"] + "  (override with $MULTIJET_CACHE_DIR)"])
    show(table("multijet info", ["item", "value"], rows))
    if info["load_warning"]:
        show(f"warning: {info['load_warning']}")
    return 0


def _devices(backends: Sequence[str]) -> dict[str, list[str]]:
    from .backends.interop import interop

    out: dict[str, list[str]] = {}
    for name in backends:
        try:
            out[name] = interop(name).devices()
        except Exception as exc:  # noqa: BLE001 - info must not fail on a broken framework
            out[name] = [f"error: {exc}"]
    return out


def _writable_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {path}: cannot create the output directory ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise ValueError(f"--out {path}: the output directory is not writable")


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchConfig, plot_bench, rerun_with_threads, run_bench

    rc = rerun_with_threads(args.threads, [sys.executable, "-m", "multijet.cli", *args.argv])
    if rc is not None:
        return rc

    randomised = args.samples is not None
    cfg = BenchConfig(
        operator=args.operator, dim=args.dim, widths=args.widths,
        sizes=args.samples if randomised else (args.batch_sizes or (1, 2, 4, 8)),
        vary="samples" if randomised else "batch", batch=args.batch, distribution=args.distribution,
        backends=args.backends, methods=args.methods, dtype=args.dtype, warmup=args.warmup, repeats=args.repeats,
        budget=args.budget, memory=not args.no_memory, differentiable=not args.no_differentiable, jobs=args.jobs,
        seed=args.seed,
    )  # fmt: skip
    if not cfg.candidates():
        raise ValueError("no backend × method to run: the chosen backends offer none of the chosen methods")
    _writable_dir(args.out)  # before the run, not after it
    stem = args.name or f"{args.operator}{'-randomised' if randomised else ''}-D{args.dim}"
    with Progress(f"bench {stem}") as progress:
        result = run_bench(cfg, progress=progress)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{stem}.json"
    json_path.write_text(json.dumps(result, indent=1))
    written = [json_path]
    if not args.no_plot:
        try:
            written.append(plot_bench(result, args.out / f"{stem}.png"))
        except ImportError as exc:
            print(f"multijet: no plot: {exc}", file=sys.stderr)
    show(fits_table(result))
    for e in result.get("estimates", []):
        if "error" not in e:
            print(f"{e['backend']}: estimate at one point, S={e['samples']}: {e['estimate']:.6g} ± {e['std']:.2g} "
                  f"(exact {e['exact']:.6g})")  # fmt: skip
    for name, err in result["errors"].items():
        print(f"  could not run {name}: {err.splitlines()[0] if err else ''}", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _demo_network(dim: int, width: int, dtype: str, seed: int):
    from .bench import make_program

    return make_program("numpy", dim, (width, width), dtype, seed)


def cmd_compare(args: argparse.Namespace) -> int:
    import numpy as np

    from .bench import make_operator
    from .compare import compare

    f = _demo_network(args.dim, args.width, args.dtype, args.seed)
    x = np.random.default_rng(args.seed + 1).standard_normal((args.batch, args.dim)).astype(args.dtype)
    op = make_operator(args.operator, args.dim, args.seed)
    report = compare(op, f, x, backends=args.backends, methods=args.methods, dtype=args.dtype, samples=args.samples,
                     distribution=args.distribution, seed=args.seed)  # fmt: skip
    if args.pairs:
        print(report.table(pairs=True))
    else:
        show(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report.to_dict(), indent=1))
        print(f"wrote {args.out}")
    return 0 if report.passed else 1


def cmd_autotune(args: argparse.Namespace) -> int:
    import numpy as np

    from .autotune import autotune
    from .bench import make_operator, make_program, rerun_with_threads

    rc = rerun_with_threads(args.threads, [sys.executable, "-m", "multijet.cli", *args.argv])
    if rc is not None:
        return rc

    f = make_program("numpy", args.dim, args.widths, args.dtype, args.seed)
    x = np.random.default_rng(args.seed + 1).standard_normal((args.batch, args.dim)).astype(args.dtype)
    op = make_operator(args.operator, args.dim, args.seed)
    result = autotune(op, f, x, backends=args.backends, methods=args.methods, samples=args.samples,
                      distribution=args.distribution, seed=args.seed, repeats=args.repeats, budget=args.budget,
                      cache=not args.no_cache, retune=args.retune)  # fmt: skip
    show(result)
    return 0 if result.best is not None else 1


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "info": cmd_info,
    "bench": cmd_bench,
    "compare": cmd_compare,
    "autotune": cmd_autotune,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``multijet`` command. Returns the exit code (0 ok, 1 failed check, 2 bad usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with code 2 and the usage on bad arguments
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("multijet: interrupted", file=sys.stderr)
        return 130
    except (MultijetError, ValueError, TypeError) as exc:
        if args.debug:
            raise
        sub = parser._subparsers._group_actions[0].choices[args.command]  # the subcommand's own usage line
        sub.print_usage(sys.stderr)
        print(f"multijet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a message, not a traceback, unless --debug
        if args.debug:
            raise
        print(f"multijet {args.command}: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
