"""The benchmark process's environment: machine description, thread limits, JAX float64."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from typing import Any

from ..backends import available_backends
from ..timing import cpu_model, versions

__all__ = ["THREADS_ENV", "machine_info", "thread_env", "rerun_with_threads", "enable_jax_x64"]

#: set in a child started by :func:`rerun_with_threads`: the thread limit it runs under
THREADS_ENV = "MULTIJET_BENCH_THREADS"


def machine_info() -> dict[str, Any]:
    """Python, platform, CPU, versions and installed backends: the header of every result file."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "versions": versions(),
        "backends": available_backends(),
        "threads": os.environ.get(THREADS_ENV, "framework defaults"),
    }


def thread_env(n: int) -> dict[str, str]:
    """Environment that limits NumPy's BLAS, torch (OpenMP) and XLA to ``n`` threads.

    Must be in place before the frameworks load, hence :func:`rerun_with_threads`. On a machine shared with
    other jobs, spin-waiting thread pools slow down by an order of magnitude; one thread per process keeps
    the measurements meaningful there.
    """
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
        env[var] = str(n)
    if n == 1:
        flags = env.get("XLA_FLAGS", "")
        extra = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        env["XLA_FLAGS"] = f"{flags} {extra}".strip() if extra not in flags else flags
    env[THREADS_ENV] = str(n)
    return env


def rerun_with_threads(n: int | None, argv: Sequence[str]) -> int | None:
    """Run ``argv`` again in a child whose frameworks use ``n`` threads; None if this process already does
    (or ``n`` is None). Returns the child's exit code."""
    if not n or os.environ.get(THREADS_ENV) == str(n):
        return None
    return subprocess.run(list(argv), env=thread_env(n), check=False).returncode


def enable_jax_x64() -> None:
    """Turn on JAX's float64 for this process (benchmark processes only; the library never does this)."""
    import jax

    jax.config.update("jax_enable_x64", True)
