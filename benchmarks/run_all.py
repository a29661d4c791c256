"""Run every benchmark script in this folder, one subprocess each under a timeout (what ``nox -s bench`` runs).

    python benchmarks/run_all.py                   # the full runs: results into benchmarks/results/ and the
                                                   # JAX section of benchmarks/README.md (tens of minutes)
    python benchmarks/run_all.py --quick           # a smoke run of every script (a few minutes); results go
                                                   # to a temporary directory, the stored ones are left alone
    python benchmarks/run_all.py --only table1 --quick --out /tmp/bench
    nox -s bench -- --quick                        # the same through nox (arguments are forwarded)

Scripts: ``table1.py`` (the paper's Table 1 through ``multijet.bench``, every installed backend),
``jax_bench.py`` (JAX against nested AD, folx, jax.experimental.jet) and ``torch_bench.py`` (PyTorch against
torch.func). A script whose framework is not installed is skipped. The exit code is 0 when every script that
ran succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Script:
    name: str
    file: str
    needs: tuple[str, ...]  # frameworks the script imports
    args: Callable[[bool, Path | None], list[str]]  # (quick, output directory or None) -> arguments


def _table1_args(quick: bool, out: Path | None) -> list[str]:
    # quick: the tiny network, and two of the six rows (an exact and a randomised one, memory included)
    args = ["--quick", "--rows", "laplacian,bilaplacian-randomised"] if quick else []
    return args + (["--out", str(out)] if out else [])


def _jax_args(quick: bool, out: Path | None) -> list[str]:
    args = ["--quick", "--no-memory"] if quick else []
    return args + (["--out", str(out / "jax.json"), "--no-readme"] if out else [])


def _torch_args(quick: bool, out: Path | None) -> list[str]:
    return [*(["--quick"] if quick else []), *(["--out", str(out / "torch.json")] if out else [])]


SCRIPTS: tuple[Script, ...] = (
    Script("table1", "table1.py", (), _table1_args),
    Script("jax", "jax_bench.py", ("jax",), _jax_args),
    Script("torch", "torch_bench.py", ("torch",), _torch_args),
)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_script(cmd: Sequence[str], timeout: float) -> tuple[str, float]:
    """Run ``cmd`` in its own process group (its memory children too); kill the group after ``timeout`` s.

    Returns ``(status, seconds)`` with status ``"ok"``, ``"failed (exit N)"`` or ``"timed out"``.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), cwd=HERE.parent, env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return f"timed out after {timeout:.0f} s", time.perf_counter() - t0
    except KeyboardInterrupt:
        _kill_group(proc)
        raise
    return ("ok" if rc == 0 else f"failed (exit {rc})"), time.perf_counter() - t0


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short smoke run of every script")
    p.add_argument(
        "--only",
        default=None,
        help=f"comma-separated scripts to run among {','.join(s.name for s in SCRIPTS)} (default: all)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds per script before it is killed (default: 900 with --quick, 10800 otherwise)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory for every script's results (default: a temporary directory with --quick, "
        "else each script's own default under benchmarks/results/)",
    )
    p.add_argument("--stop-on-failure", action="store_true", help="do not run the remaining scripts after a failure")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    scripts = list(SCRIPTS)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        known = {s.name for s in SCRIPTS}
        if bad := [w for w in wanted if w not in known]:
            p.error(f"unknown script(s) {bad}; choose from {sorted(known)}")
        scripts = [s for s in SCRIPTS if s.name in wanted]
    timeout = args.timeout if args.timeout is not None else (900.0 if args.quick else 10800.0)
    if timeout <= 0:
        p.error("--timeout must be positive")
    out = args.out
    if out is None and args.quick:
        out = Path(tempfile.mkdtemp(prefix="multijet-bench-quick-"))
    if out is not None:
        out = out.resolve()
        out.mkdir(parents=True, exist_ok=True)
    print(f"benchmarks: {', '.join(s.name for s in scripts)}{' (quick)' if args.quick else ''}; "
          f"timeout {timeout:.0f} s each; results in {out or 'benchmarks/results/'}", flush=True)  # fmt: skip
    summary: list[tuple[str, str, float]] = []
    for s in scripts:
        missing = [m for m in s.needs if not _installed(m)]
        if missing:
            summary.append((s.name, f"skipped ({', '.join(missing)} not installed)", 0.0))
            continue
        cmd = [sys.executable, str(HERE / s.file), *s.args(args.quick, out)]
        print(f"\n=== {s.name}: {' '.join(cmd)}", flush=True)
        status, seconds = run_script(cmd, timeout)
        summary.append((s.name, status, seconds))
        print(f"=== {s.name}: {status} in {seconds:.0f} s", flush=True)
        if status != "ok" and args.stop_on_failure:
            break
    print("\nsummary:")
    for name, status, seconds in summary:
        print(f"  {name:<8} {status:<40} {seconds:7.0f} s")
    if out is not None:
        print(f"results in {out}")
    failed = [name for name, status, _ in summary if status != "ok" and not status.startswith("skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
