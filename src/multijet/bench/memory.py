"""Peak memory of one configuration, measured in a fresh interpreter (``python -m multijet.bench memory SPEC``).

The child measures the resident-set high-water mark of the operator call alone: on Linux the mark is reset
after a warm-up through ``/proc/self/clear_refs``; elsewhere ``ru_maxrss`` over a warm-up at N=1; on CUDA
also the allocator's peak.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

from .. import api
from ..timing import sync
from .env import enable_jax_x64
from .programs import make_input, make_operator, make_program

__all__ = ["MiB", "measure_memory", "memory_child", "peak_reset_supported"]

MiB = 1024.0 * 1024.0


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset this process's resident-set high-water mark (Linux ≥ 4.0); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _maxrss_kib() -> int:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss  # macOS reports bytes


def memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure the peak memory of one configuration at each size (runs inside the subprocess)."""
    backend, dtype, dim = spec["backend"], spec["dtype"], spec["dim"]
    if backend == "jax" and dtype == "float64":
        enable_jax_x64()
    diff = bool(spec.get("differentiable"))
    f = make_program(backend, dim, spec["widths"], dtype, spec.get("seed", 0), requires_grad=diff)
    op = make_operator(spec["operator"], dim, spec.get("seed", 0))
    ctx: Callable[[], Any] = contextlib.nullcontext
    if backend == "torch":
        import torch

        ctx = torch.enable_grad if diff else torch.no_grad
    resettable = _reset_peak()
    out = []
    built: dict[int | None, Any] = {}
    for size in spec["sizes"]:
        n, samples = (spec["batch"], size) if spec["vary"] == "samples" else (size, spec.get("samples"))
        x = make_input(backend, n, dim, dtype)
        if samples not in built:
            built[samples] = api.compile(
                op, f, x, backend=backend, method=spec["method"], samples=samples,
                distribution=spec.get("distribution"), seed=spec.get("seed", 0),
            )  # fmt: skip
        c = built[samples]
        cuda = backend == "torch" and getattr(x, "is_cuda", False)
        if cuda:
            import torch

        if resettable:
            with ctx():
                r = sync(c(x))  # warm-up at this size: tracing, compilation, first-touch pages
            del r
            _trim()
            if cuda:
                torch.cuda.reset_peak_memory_stats(x.device)
            _reset_peak()
            base = _status_kib("VmRSS") or 0
            with ctx():
                r = sync(c(x))
                peak = (_status_kib("VmHWM") or 0) - base
        else:
            with ctx():
                sync(c(make_input(backend, 1, dim, dtype) if spec["vary"] == "batch" else x))
            _trim()
            base = _maxrss_kib()
            with ctx():
                r = sync(c(x))
                peak = _maxrss_kib() - base
        row = {"size": size, "peak_mib": max(peak, 0) / 1024.0}
        if cuda:
            row["cuda_peak_mib"] = torch.cuda.max_memory_allocated(x.device) / MiB
        del r
        out.append(row)
    how = "VmHWM after reset (clear_refs)" if resettable else "ru_maxrss over a warm-up at N=1"
    return {"results": out, "how": how}


def measure_memory(spec: Mapping[str, Any], timeout: float = 900.0) -> dict[str, Any]:
    """Run :func:`memory_child` in a fresh interpreter; returns its JSON, or ``{"error": ...}``."""
    cmd = [sys.executable, "-m", "multijet.bench", "memory", json.dumps(dict(spec))]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"memory subprocess failed (exit {proc.returncode}): {tail}"}
    return json.loads(lines[-1])


def peak_reset_supported() -> bool:
    """Whether a child process can reset its peak-RSS mark (then one child measures all sizes)."""
    return os.path.exists("/proc/self/clear_refs") and os.access("/proc/self/clear_refs", os.W_OK)
