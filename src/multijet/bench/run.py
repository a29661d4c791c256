"""One benchmark panel (the paper's Fig. 5): time every backend × method at every size, interleaved per size,
then peak memory in subprocesses, and straight-line fits of both (cost per datum or per sample)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .. import api
from .._dispatch import backend_methods
from ..backends import available_backends
from ..timing import device_name, slope_resolved, time_interleaved
from .env import enable_jax_x64, machine_info
from .memory import measure_memory, peak_reset_supported
from .programs import OPERATORS, PAPER_WIDTHS, make_input, make_operator, make_program

__all__ = ["BenchConfig", "run_bench", "fit_line"]


@dataclass
class BenchConfig:
    """One panel of the paper's Fig. 5: an operator at a fixed D, swept over batch sizes or sample counts."""

    operator: str = "laplacian"
    dim: int = 50
    widths: tuple[int, ...] = PAPER_WIDTHS
    sizes: tuple[int, ...] = (1, 2, 4, 8)
    vary: str = "batch"  # "batch": sizes are batch sizes (exact); "samples": sample counts at a fixed batch
    batch: int = 1  # the fixed batch size when vary == "samples"
    distribution: str | None = None
    backends: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    dtype: str = "float32"
    warmup: int = 2
    repeats: int = 20
    budget: float | None = 30.0  # seconds of timing per size, all candidates together
    memory: bool = True
    differentiable: bool = True  # also the differentiable peak memory (torch.enable_grad)
    jobs: int = 1  # memory subprocesses in parallel
    seed: int = 0
    label: str = ""

    def __post_init__(self) -> None:
        if self.vary not in ("batch", "samples"):
            raise ValueError(f"vary must be 'batch' or 'samples', got {self.vary!r}")
        if self.operator.replace("_", "-").lower() not in OPERATORS:
            raise ValueError(f"unknown operator {self.operator!r}; expected one of {OPERATORS}")
        if not self.sizes or any(int(s) < 1 for s in self.sizes):
            raise ValueError(f"sizes must be positive integers, got {self.sizes!r}")
        if self.dim < 1 or any(w < 1 for w in self.widths):
            raise ValueError("dim and widths must be positive")
        self.sizes = tuple(sorted({int(s) for s in self.sizes}))
        self.widths = tuple(int(w) for w in self.widths)

    @property
    def unit(self) -> str:
        return "sample" if self.vary == "samples" else "datum"

    def candidates(self) -> list[tuple[str, str]]:
        """(backend, method) pairs to run: the chosen backends that are installed, with the methods each has."""
        names = list(self.backends) if self.backends else available_backends()
        out = []
        for b in names:
            try:
                offered = backend_methods(b)
            except Exception:  # noqa: BLE001 - an uninstalled or broken backend is skipped here, reported by run
                offered = ()
            out.extend((b, m) for m in (self.methods or offered) if m in offered)
        return out


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> dict[str, float] | None:
    """Least-squares ``y = slope·x + intercept`` with its R²; None without two distinct finite points."""
    pts = [(float(a), float(b)) for a, b in zip(xs, ys, strict=True) if b is not None and np.isfinite(b)]
    if len({a for a, _ in pts}) < 2:
        return None
    X, Y = np.array(pts).T
    slope, intercept = np.polyfit(X, Y, 1)
    resid = Y - (slope * X + intercept)
    ss = float(np.sum((Y - Y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss if ss > 0 else 1.0
    return {"slope": float(slope), "intercept": float(intercept), "r2": r2}


def run_bench(
    config: BenchConfig, progress: Callable[[str, int, int], None] | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Time every backend × method at every size (interleaved per size), then measure peak memory in
    subprocesses, and fit per-datum (per-sample) slopes. Returns a JSON-serialisable dict."""
    cands = config.candidates()
    skipped = [b for b in (config.backends or ()) if b not in available_backends()]
    mem_jobs = _memory_jobs(config, cands) if config.memory else []
    total = len(config.sizes) + len(mem_jobs)
    step = 0

    def tick(what: str) -> None:
        nonlocal step
        step += 1
        if progress is not None:
            progress(what, step, total)

    if config.dtype == "float64" and any(b == "jax" for b, _ in cands):
        enable_jax_x64()
    programs: dict[str, Any] = {}
    errors: dict[str, str] = {f"{b}/*": "backend not installed" for b in skipped}
    for b in {b for b, _ in cands}:
        try:
            programs[b] = make_program(b, config.dim, config.widths, config.dtype, config.seed)
        except Exception as exc:  # noqa: BLE001
            errors[f"{b}/*"] = f"{type(exc).__name__}: {exc}"
    op = make_operator(config.operator, config.dim, config.seed)
    rows: list[dict[str, Any]] = []
    compiled: dict[tuple[str, str, int | None], Any] = {}  # built once per plan; a compiled operator takes any N
    for size in config.sizes:
        n, samples = (config.batch, size) if config.vary == "samples" else (size, None)
        fns: dict[str, Callable[[], Any]] = {}
        for b, m in cands:
            if b not in programs:
                continue
            try:
                x = make_input(b, n, config.dim, config.dtype)
                if (b, m, samples) not in compiled:
                    compiled[b, m, samples] = api.compile(
                        op, programs[b], x, backend=b, method=m, samples=samples,
                        distribution=config.distribution, seed=config.seed,
                    )  # fmt: skip
                fns[f"{b}/{m}"] = lambda c=compiled[b, m, samples], x=x: c(x)
            except Exception as exc:  # noqa: BLE001
                errors[f"{b}/{m}"] = f"{type(exc).__name__}: {exc}"
        timings = time_interleaved(fns, warmup=config.warmup, repeats=config.repeats, budget=config.budget)
        for name, t in timings.items():
            b, m = name.split("/")
            row: dict[str, Any] = {"backend": b, "method": m, "size": size}
            if isinstance(t, BaseException):
                row["error"] = f"{type(t).__name__}: {t}"
                errors.setdefault(name, row["error"])
            else:
                row.update({f"time_{k}_ms": v * 1e3 for k, v in t.summary().items() if k in ("median", "min", "iqr")})
                row["repeats"] = t.n
            rows.append(row)
        tick(f"timed {config.vary} {size}")
    memory: list[dict[str, Any]] = []
    failed = {(r["backend"], r["method"]) for r in rows if "error" in r}
    jobs = [j for j in mem_jobs if (j["backend"], j["method"]) not in failed]
    for j in mem_jobs:
        if j not in jobs:
            tick("skipped memory")
    for spec, res in _run_memory_jobs(jobs, config.jobs):
        mode = "differentiable" if spec["differentiable"] else "nondifferentiable"
        if "error" in res:
            errors[f"{spec['backend']}/{spec['method']} memory ({mode})"] = res["error"]
        for r in res.get("results", []):
            memory.append({"backend": spec["backend"], "method": spec["method"], "mode": mode, **r, "how": res["how"]})
        tick(f"memory {spec['backend']}/{spec['method']} ({mode})")
    return {
        "config": {**asdict(config), "unit": config.unit},
        "estimates": _estimates(config, programs, op) if config.vary == "samples" else [],
        "machine": machine_info(),
        "devices": {b: _device_of(b, config) for b in programs},
        "rows": rows,
        "memory": memory,
        "fits": _fits(cands, rows, memory),
        "errors": errors,
    }


def _estimates(config: BenchConfig, programs: dict[str, Any], op) -> list[dict[str, Any]]:
    """A randomised panel's estimate ± standard error at one point, per backend, at the largest sample count
    (at least 2), beside the exact value: what the timed estimator gives, and how far it may be off."""
    S = max(2, max(config.sizes))
    out = []
    for b, f in programs.items():
        try:
            x = make_input(b, None, config.dim, config.dtype)
            est, std = api.apply(op, f, x, backend=b, samples=S, distribution=config.distribution,
                                 seed=config.seed, return_std=True)  # fmt: skip
            exact = api.apply(op, f, x, backend=b)
            out.append({"backend": b, "samples": S, "estimate": _scalar(est), "std": _scalar(std),
                        "exact": _scalar(exact)})  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a report, never a failure of the timing run
            out.append({"backend": b, "samples": S, "error": f"{type(exc).__name__}: {exc}"})
    return out


def _scalar(a) -> float:
    return float(np.asarray(a.detach().cpu() if hasattr(a, "detach") else a).ravel()[0])


def _device_of(backend: str, config: BenchConfig) -> str:
    """Where ``backend`` ran: the accelerator's name, or the CPU's."""
    try:
        return device_name(make_input(backend, 1, config.dim, config.dtype))
    except Exception as exc:  # noqa: BLE001 - a report, never a failure
        return f"unknown ({type(exc).__name__})"


def _memory_jobs(config: BenchConfig, cands: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    base = {
        "operator": config.operator, "dim": config.dim, "widths": list(config.widths), "dtype": config.dtype,
        "vary": config.vary, "batch": config.batch, "distribution": config.distribution, "seed": config.seed,
    }  # fmt: skip
    size_groups = [list(config.sizes)] if peak_reset_supported() else [[s] for s in config.sizes]
    jobs = []
    for b, m in cands:
        modes = [False, True] if (config.differentiable and b == "torch") else [False]
        for diff in modes:
            for sizes in size_groups:
                jobs.append({**base, "backend": b, "method": m, "differentiable": diff, "sizes": sizes})
    return jobs


def _run_memory_jobs(jobs: list[dict[str, Any]], workers: int):
    if workers <= 1:
        for j in jobs:
            yield j, measure_memory(j)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from zip(jobs, pool.map(measure_memory, jobs), strict=True)


def _fits(cands, rows, memory) -> list[dict[str, Any]]:
    out = []
    for b, m in cands:
        mine = [r for r in rows if r["backend"] == b and r["method"] == m and "error" not in r]
        entry: dict[str, Any] = {"backend": b, "method": m}
        t_min = fit_line([r["size"] for r in mine], [r["time_min_ms"] for r in mine])
        t_med = fit_line([r["size"] for r in mine], [r["time_median_ms"] for r in mine])
        entry["time_ms_per_unit"] = t_min["slope"] if t_min else None
        entry["time_intercept_ms"] = t_min["intercept"] if t_min else None
        entry["time_r2"] = t_min["r2"] if t_min else None
        entry["time_resolved"] = slope_resolved(entry["time_ms_per_unit"], entry["time_r2"])
        entry["time_median_ms_per_unit"] = t_med["slope"] if t_med else None
        for mode in ("nondifferentiable", "differentiable"):
            pts = [r for r in memory if r["backend"] == b and r["method"] == m and r["mode"] == mode]
            fit = fit_line([r["size"] for r in pts], [r["peak_mib"] for r in pts])
            entry[f"mem_{mode}_mib_per_unit"] = fit["slope"] if fit else None
        out.append(entry)
    return out
