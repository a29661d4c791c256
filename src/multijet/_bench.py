"""The benchmark harness shared by ``multijet bench``, :mod:`multijet.autotune` and ``benchmarks/table1.py``.

* timing: warm-up, then *interleaved* repetitions (every candidate once per round, in a shuffled order), each
  sample long enough for the clock (an inner loop, like ``timeit``), devices synchronised; min, median, spread;
* peak memory: one subprocess per configuration (``python -m multijet._bench memory SPEC``), measuring the
  resident-set high-water mark of the operator call alone (Linux: the mark is reset after a warm-up through
  ``/proc/self/clear_refs``; elsewhere ``ru_maxrss`` over a warm-up at N=1), or the CUDA allocator's peak;
* the paper's network (tanh MLP D→768→768→512→512→1) built natively for each backend from one NumPy seed;
* straight-line fits of time and memory against batch size or sample count (cost per datum / per sample);
* the PNG plot of time and memory against batch size, one line per backend × method (the paper's Fig. 5).

Frameworks are imported only when a configuration uses them.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PAPER_WIDTHS",
    "OPERATORS",
    "Timing",
    "BenchConfig",
    "time_interleaved",
    "sync",
    "machine_info",
    "device_name",
    "make_operator",
    "make_program",
    "make_input",
    "fit_line",
    "measure_memory",
    "run_bench",
    "plot_bench",
    "backend_methods",
    "to_numpy",
]

#: hidden widths of the paper's network (D → 768 → 768 → 512 → 512 → 1, tanh)
PAPER_WIDTHS: tuple[int, ...] = (768, 768, 512, 512)
#: operator names understood by :func:`make_operator` (the CLI's ``--operator``)
OPERATORS: tuple[str, ...] = ("laplacian", "weighted-laplacian", "bilaplacian")
MiB = 1024.0 * 1024.0


# --- versions, devices ---------------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
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
    mod = type(x).__module__.split(".")[0] if x is not None else "numpy"
    if mod == "torch" and getattr(x, "is_cuda", False):
        import torch

        return f"cuda: {torch.cuda.get_device_name(x.device)}"
    if mod in ("jax", "jaxlib"):
        devices = getattr(x, "devices", None)
        dev = next(iter(devices())) if callable(devices) else None
        if dev is not None and dev.platform != "cpu":
            return f"{dev.platform}: {dev.device_kind}"
    return f"cpu: {cpu_model()} ({os.cpu_count()} cores)"


def versions() -> dict[str, str | None]:
    """Versions of multijet and the frameworks, read from package metadata (no framework is imported)."""
    return {name: _version(name) for name in ("multijet", "numpy", "torch", "jax", "jaxlib")}


def machine_info() -> dict[str, Any]:
    """Python, platform, CPU, versions and installed backends: the header of every result file."""
    from .backends import available_backends

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "versions": versions(),
        "backends": available_backends(),
        "threads": os.environ.get(THREADS_ENV, "framework defaults"),
    }


def backend_methods(name: str) -> tuple[str, ...]:
    """The methods a backend offers: its ``METHODS`` attribute if it has one, else all but nested for NumPy."""
    from .backends import get_backend
    from .plan import METHODS

    module = get_backend(name)
    methods = getattr(module, "METHODS", None)
    if methods is not None:
        return tuple(m for m in METHODS if m in methods)
    return tuple(m for m in METHODS if not (name == "numpy" and m == "nested"))


def to_numpy(a: Any) -> np.ndarray:
    """Any backend's result as a NumPy array (torch tensors are detached and moved to the CPU)."""
    if type(a).__module__.split(".")[0] == "torch":
        return a.detach().cpu().numpy()
    return np.asarray(a)


def sync(obj: Any) -> Any:
    """Wait for asynchronous device work behind ``obj`` (JAX arrays, CUDA tensors); returns ``obj``."""
    if isinstance(obj, tuple | list):
        for o in obj:
            sync(o)
        return obj
    mod = type(obj).__module__.split(".")[0]
    if mod in ("jax", "jaxlib"):
        obj.block_until_ready()
    elif mod == "torch" and getattr(obj, "is_cuda", False):
        import torch

        torch.cuda.synchronize(obj.device)
    return obj


THREADS_ENV = "MULTIJET_BENCH_THREADS"


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


# --- the benchmark network, inputs and operators ---------------------------------------------------------------


def mlp_layers(dim: int, widths: Sequence[int], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Weights ``(W, b)`` of a tanh MLP ``dim → widths… → 1`` (PyTorch's default uniform initialisation)."""
    rng = np.random.default_rng(seed)
    sizes = [dim, *widths, 1]
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        bound = 1.0 / np.sqrt(fan_in)
        layers.append((rng.uniform(-bound, bound, (fan_out, fan_in)), rng.uniform(-bound, bound, fan_out)))
    return layers


def make_program(
    backend: str, dim: int, widths: Sequence[int], dtype: str = "float32", seed: int = 0, requires_grad: bool = False
) -> Callable:
    """The tanh MLP as its backend's users write it: an array-API function of NumPy weights (numpy), an
    ``nn.Sequential`` (torch) or a function closing over ``jnp`` arrays (jax). Output shape ``(1,)``."""
    layers = mlp_layers(dim, widths, seed)
    if backend == "torch":
        import torch

        mods: list = []
        for i, (W, b) in enumerate(layers):
            lin = torch.nn.Linear(W.shape[1], W.shape[0], dtype=getattr(torch, dtype))
            with torch.no_grad():
                lin.weight.copy_(torch.as_tensor(W))
                lin.bias.copy_(torch.as_tensor(b))
            mods.append(lin)
            if i < len(layers) - 1:
                mods.append(torch.nn.Tanh())
        net = torch.nn.Sequential(*mods)
        net.requires_grad_(requires_grad)
        return net
    if backend == "jax":
        import jax.numpy as jnp

        jl = [(jnp.asarray(W, dtype=dtype), jnp.asarray(b, dtype=dtype)) for W, b in layers]

        def f_jax(x):
            h = x
            for i, (W, b) in enumerate(jl):
                h = W @ h + b
                if i < len(jl) - 1:
                    h = jnp.tanh(h)
            return h

        return f_jax
    nl = [(W.astype(dtype), b.astype(dtype)) for W, b in layers]

    def f(x):
        from array_api_compat import array_namespace

        xp = array_namespace(x)
        h = x
        for i, (W, b) in enumerate(nl):
            h = xp.asarray(W) @ h + xp.asarray(b)
            if i < len(nl) - 1:
                h = xp.tanh(h)
        return h

    return f


def make_input(backend: str, n: int | None, dim: int, dtype: str = "float32", seed: int = 1):
    """Standard-normal points ``(n, dim)`` (or one point ``(dim,)`` for ``n=None``) as the backend's array."""
    shape = (dim,) if n is None else (n, dim)
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    if backend == "torch":
        import torch

        return torch.as_tensor(x)
    if backend == "jax":
        import jax.numpy as jnp

        return jnp.asarray(x)
    return x


def make_operator(name: str, dim: int, seed: int = 0):
    """``laplacian``, ``weighted-laplacian`` (``C = σσᵀ`` with a fixed random full-rank ``σ``) or ``bilaplacian``."""
    from .spec import Bilaplacian, Laplacian, WeightedLaplacian

    key = name.replace("_", "-").lower()
    if key == "laplacian":
        return Laplacian()
    if key == "weighted-laplacian":
        sigma = np.random.default_rng(seed + 1000).standard_normal((dim, dim)) / np.sqrt(dim)
        return WeightedLaplacian(factor=sigma)
    if key == "bilaplacian":
        return Bilaplacian()
    raise ValueError(f"unknown operator {name!r}; expected one of {OPERATORS}")


def enable_jax_x64() -> None:
    """Turn on JAX's float64 for this process (benchmark processes only; the library never does this)."""
    import jax

    jax.config.update("jax_enable_x64", True)


# --- fits ------------------------------------------------------------------------------------------------------


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


# --- peak memory, in a subprocess ------------------------------------------------------------------------------


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


def _memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure the peak memory of one configuration at each size (runs inside the subprocess)."""
    import contextlib

    from . import api

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
    """Run :func:`_memory_child` in a fresh interpreter; returns its JSON, or ``{"error": ...}``."""
    cmd = [sys.executable, "-m", "multijet._bench", "memory", json.dumps(dict(spec))]
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


# --- the benchmark ---------------------------------------------------------------------------------------------


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
        from .backends import available_backends

        names = list(self.backends) if self.backends else available_backends()
        out = []
        for b in names:
            try:
                offered = backend_methods(b)
            except Exception:  # noqa: BLE001 - an uninstalled or broken backend is skipped here, reported by run
                offered = ()
            out.extend((b, m) for m in (self.methods or offered) if m in offered)
        return out


def run_bench(
    config: BenchConfig, progress: Callable[[str, int, int], None] | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Time every backend × method at every size (interleaved per size), then measure peak memory in
    subprocesses, and fit per-datum (per-sample) slopes. Returns a JSON-serialisable dict."""
    from . import api
    from .backends import available_backends

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
        "machine": machine_info(),
        "rows": rows,
        "memory": memory,
        "fits": _fits(cands, rows, memory),
        "errors": errors,
    }


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
        entry["time_median_ms_per_unit"] = t_med["slope"] if t_med else None
        for mode in ("nondifferentiable", "differentiable"):
            pts = [r for r in memory if r["backend"] == b and r["method"] == m and r["mode"] == mode]
            fit = fit_line([r["size"] for r in pts], [r["peak_mib"] for r in pts])
            entry[f"mem_{mode}_mib_per_unit"] = fit["slope"] if fit else None
        out.append(entry)
    return out


# --- plot ------------------------------------------------------------------------------------------------------

_METHOD_COLOURS = {"nested": "tab:red", "standard": "tab:blue", "collapsed": "tab:green"}
_BACKEND_MARKERS = {"numpy": "s", "torch": "o", "jax": "^"}


def plot_bench(result: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a PNG: time (min of the repetitions) and peak memory against batch size (or samples), one line
    per backend × method, with the fitted slope in the legend. Needs matplotlib (the ``bench`` extra)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'multijet[bench]'") from exc
    cfg = result["config"]
    unit = cfg.get("unit", "datum")
    xlabel = "random samples S" if cfg["vary"] == "samples" else "batch size N"
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    ax_t, ax_m = fig.subplots(1, 2)
    fits = {(f["backend"], f["method"]): f for f in result["fits"]}
    for (b, m), fit in fits.items():
        colour, marker = _METHOD_COLOURS.get(m, "k"), _BACKEND_MARKERS.get(b, "x")
        pts = sorted((r["size"], r["time_min_ms"]) for r in result["rows"] if (r["backend"], r["method"]) == (b, m)
                     and "error" not in r)  # fmt: skip
        if pts:
            xs, ys = np.array(pts).T
            slope = fit.get("time_ms_per_unit")
            lab = f"{b} {m}" + (f": {slope:.3g} ms/{unit}" if slope is not None else "")
            ax_t.plot(xs, ys, marker=marker, color=colour, linestyle="none", label=lab)
            if slope is not None:
                ax_t.plot(xs, slope * xs + fit["time_intercept_ms"], color=colour, alpha=0.6)
        for mode, style in (("nondifferentiable", "-"), ("differentiable", "--")):
            mp = sorted((r["size"], r["peak_mib"]) for r in result["memory"]
                        if (r["backend"], r["method"], r["mode"]) == (b, m, mode))  # fmt: skip
            if not mp:
                continue
            xs, ys = np.array(mp).T
            slope = fit.get(f"mem_{mode}_mib_per_unit")
            tag = "" if mode == "nondifferentiable" else " (diff.)"
            lab = f"{b} {m}{tag}" + (f": {slope:.3g} MiB/{unit}" if slope is not None else "")
            ax_m.plot(xs, ys, marker=marker, color=colour, linestyle=style, label=lab)
    if not result["memory"]:
        ax_m.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax_m.transAxes, color="grey")
    ax_t.set(xlabel=xlabel, ylabel="time [ms] (min of repetitions)", title="runtime")
    ax_m.set(xlabel=xlabel, ylabel="peak memory [MiB] above baseline", title="peak memory")
    for ax in (ax_t, ax_m):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    widths = "→".join(str(w) for w in cfg["widths"])
    fig.suptitle(
        f"{cfg['operator']} ({'randomised' if cfg['vary'] == 'samples' else 'exact'}), D={cfg['dim']}, "
        f"tanh MLP {cfg['dim']}→{widths}→1, {cfg['dtype']} — {result['machine']['cpu']}",
        fontsize=10,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m multijet._bench memory '<json spec>'``: the memory subprocess (prints one JSON line)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "memory":
        print("usage: python -m multijet._bench memory '<json spec>'", file=sys.stderr)
        return 2
    print(json.dumps(_memory_child(json.loads(args[1]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
