"""Timing and machine identity for :mod:`multijet.autotune` (and the benchmark harness, :mod:`multijet.bench`).

* :func:`time_interleaved`: warm-up, then *interleaved* repetitions (every candidate once per round, in a
  shuffled order), each sample long enough for the clock (an inner loop, like ``timeit``), devices
  synchronised (:func:`sync`); :class:`Timing` holds the samples and their min, median and spread;
* :func:`device_name`, :func:`cpu_model`, :func:`versions`: what a timing is only valid for (the autotune
  cache key, the header of benchmark results), read without importing any framework.

Part of the core: it imports nothing from the benchmark harness. Frameworks are imported only when an
array of theirs is passed in.
"""

from __future__ import annotations

import gc
import importlib.metadata
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends.interop import interop, owner, sync

__all__ = [
    "Timing", "time_interleaved", "sync", "cpu_model", "device_name", "versions", "dist_version", "slope_resolved",
    "MIN_R2", "thread_settings", "oversubscribed",
]  # fmt: skip


# --- versions, devices ---------------------------------------------------------------------------------------


def dist_version(dist: str) -> str | None:
    """The installed version of the distribution ``dist`` (from its metadata), or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(x: Any = None) -> str:
    """A stable name of the device ``x`` lives on: ``"cpu: <model> (<n> cores)"``, or the GPU's name."""
    accelerator = interop(owner(x)).device_name(x) if x is not None else None
    return accelerator or f"cpu: {cpu_model()} ({os.cpu_count()} cores)"


def versions() -> dict[str, str | None]:
    """Versions of multijet and the frameworks, read from package metadata (no framework is imported)."""
    return {name: dist_version(name) for name in ("multijet", "numpy", "torch", "jax", "jaxlib")}


# --- timing ----------------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Seconds per call of one candidate: every interleaved sample, and its summaries."""

    samples: list[float]
    number: int = 1  # calls per sample (inner loop)

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def min(self) -> float:
        return float(np.min(self.samples))

    @property
    def median(self) -> float:
        return float(np.median(self.samples))

    @property
    def iqr(self) -> float:
        """Interquartile range: the spread reported beside the median."""
        q1, q3 = np.percentile(self.samples, [25, 75])
        return float(q3 - q1)

    def summary(self) -> dict[str, float | int]:
        return {"median": self.median, "min": self.min, "iqr": self.iqr, "n": self.n, "number": self.number}


def time_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    warmup: int = 2,
    repeats: int = 15,
    budget: float | None = None,
    min_sample: float = 2e-3,
    seed: int = 0,
    on_round: Callable[[int, int], None] | None = None,
) -> dict[str, Timing | BaseException]:
    """Time each zero-argument callable: ``warmup`` calls, then ``repeats`` rounds of one sample per candidate.

    Rounds visit the candidates in a fresh random order, so drift (turbo, thermal, other load) hits all of
    them alike. A sample repeats a fast call until it lasts ``min_sample`` seconds. ``budget`` (seconds, for
    all candidates) lowers ``repeats`` (never below 3) when calls are slow. A candidate that raises during the
    warm-up is returned as its exception and not timed further.
    """
    out: dict[str, Timing | BaseException] = {}
    numbers: dict[str, int] = {}
    one_call: dict[str, float] = {}
    for name, fn in fns.items():
        try:
            t = 0.0
            for _ in range(max(1, warmup)):
                t0 = time.perf_counter()
                sync(fn())
                t = time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - reported per candidate
            out[name] = exc
            continue
        one_call[name] = t
        numbers[name] = max(1, int(np.ceil(min_sample / max(t, 1e-9)))) if t < min_sample else 1
    live = list(numbers)
    if budget is not None and live:
        per_round = sum(one_call[n] * numbers[n] for n in live)
        repeats = int(max(3, min(repeats, budget // max(per_round, 1e-9))))
    samples: dict[str, list[float]] = {n: [] for n in live}
    rng = np.random.default_rng(seed)
    gc_was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(repeats):
            for i in rng.permutation(len(live)):
                name = live[i]
                fn, number = fns[name], numbers[name]
                t0 = time.perf_counter()
                for _ in range(number):
                    sync(fn())
                samples[name].append((time.perf_counter() - t0) / number)
            if on_round is not None:
                on_round(r + 1, repeats)
    finally:
        if gc_was:
            gc.enable()
    for name in live:
        out[name] = Timing(samples[name], numbers[name])
    return out


#: a fitted time slope below this R² (or not positive) is noise, reported as such rather than as a cost
MIN_R2 = 0.9


def slope_resolved(slope: float | None, r2: float | None) -> bool:
    """Whether a fitted cost per datum/sample is a measurement: positive, and the line explains the points
    (R² ≥ :data:`MIN_R2`). A negative slope, or R² 0.006 at small sizes, is timing noise."""
    return slope is not None and slope > 0 and (r2 is None or r2 >= MIN_R2)


def thread_settings(torch: bool = True) -> dict[str, Any]:
    """The thread limits timings depend on: torch's intra-op threads (when torch is loaded and ``torch``: it
    times a torch candidate), the OpenMP/BLAS variables, XLA's Eigen pool flag, and a limit set by
    ``--threads`` (part of autotune's cache key)."""
    torch = sys.modules.get("torch") if torch else None
    flags = os.environ.get("XLA_FLAGS", "")
    return {
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "omp": os.environ.get("OMP_NUM_THREADS"),
        "blas": os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"),
        "xla_eigen": "off" if "--xla_cpu_multi_thread_eigen=false" in flags else "on",
        "limit": os.environ.get("MULTIJET_BENCH_THREADS"),
    }


def oversubscribed() -> str | None:
    """A warning when the machine is busier than its cores (1-minute load average above the CPU count)."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on every platform
        return None
    cores = os.cpu_count() or 1
    if load <= cores:
        return None
    return (f"load average {load:.1f} on {cores} cores: the machine is oversubscribed, so timings are skewed "
            "(thread pools spin-wait); limit threads (--threads 1) or wait for a quieter machine")  # fmt: skip
