"""JAX backend benchmarks: collapsed Taylor mode against nested AD, standard Taylor mode,
folx and ``jax.experimental.jet`` on the paper's network; randomised Laplacian; bi-Laplacian at D=5;
trace-plus-compile time; peak memory in separate processes.

    python benchmarks/jax_bench.py            # full run (about 10 minutes on 2 cores), writes
                                              # benchmarks/results/jax.json and the "## JAX" section of
                                              # benchmarks/README.md
    python benchmarks/jax_bench.py --quick    # fewer repetitions, batch 64 only
    python benchmarks/jax_bench.py --quick --out /tmp/jax.json --no-readme   # leave the stored results alone

Timing: every function is jitted and warmed up, then all methods of one configuration are timed in an
interleaved loop (method order rotated each round) with ``jax.block_until_ready``; we report the minimum and
the median over rounds. Ratios use the minima. Memory: each method runs once in a fresh process that reports
its maximum resident set size (``resource.getrusage``), minus the same process's RSS after importing JAX and
building the inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("XLA_FLAGS", "")
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import multijet as mj  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "jax.json"
README = HERE / "README.md"
DIMS = (768, 768, 512, 512, 1)


# --- the paper's network --------------------------------------------------------------------------------------


def make_mlp(D: int, dtype, seed: int = 0, dims=DIMS):
    r = np.random.default_rng(seed)
    sizes = (D,) + tuple(dims)
    params = [
        (jnp.asarray(r.normal(size=(a, b)) / np.sqrt(a), dtype), jnp.asarray(r.normal(size=b) * 0.1, dtype))
        for a, b in zip(sizes[:-1], sizes[1:], strict=True)
    ]

    def f(x):
        for i, (W, b) in enumerate(params):
            x = x @ W + b
            if i < len(params) - 1:
                x = jnp.tanh(x)
        return x[0]

    return f


def points(N: int, D: int, dtype, seed: int = 1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(N, D)), dtype)


# --- methods ------------------------------------------------------------------------------------------------


def laplacian_methods(f, X, *, samples=None, with_peers=True):
    """name -> jitted batched function X -> Laplacian (or its randomised estimate)."""
    D = X.shape[1]
    out = {}
    kw = dict(samples=samples, seed=0) if samples else {}
    for m in ("collapsed", "standard", "nested"):
        out[m if m != "nested" else "nested (fwd-over-rev, plan directions)"] = mj.compile(
            mj.Laplacian(), f, X, backend="jax", method=m, **kw
        )
    if samples:
        return out
    out["nested (trace of jax.hessian)"] = jax.jit(jax.vmap(lambda x: jnp.trace(jax.hessian(f)(x))))
    if not with_peers:
        return out
    from jax.experimental import jet

    eye = jnp.eye(D, dtype=X.dtype)

    def jet_lap(x):
        def along(v):
            _, (_, y2) = jet.jet(f, (x,), ((v, jnp.zeros_like(v)),))
            return y2

        return jnp.sum(jax.vmap(along)(eye))

    out["jax.experimental.jet (per direction, summed)"] = jax.jit(jax.vmap(jet_lap))
    try:
        import folx

        fl = folx.forward_laplacian(f, sparsity_threshold=0)
        out["folx forward_laplacian"] = jax.jit(jax.vmap(lambda x: fl(x).laplacian))
    except ImportError:
        print("folx is not installed: pip install folx", file=sys.stderr)
    return out


def bilaplacian_methods(f, X):
    out = {m: mj.compile(mj.Bilaplacian(), f, X, backend="jax", method=m) for m in ("collapsed", "standard", "nested")}

    def nested_hessians(x):  # Δ²f = tr ∇²(tr ∇² f) by nested jax.hessian
        return jnp.trace(jax.hessian(lambda z: jnp.trace(jax.hessian(f)(z)))(x))

    out["nested (jax.hessian of jax.hessian trace)"] = jax.jit(jax.vmap(nested_hessians))
    return out


# --- timing -------------------------------------------------------------------------------------------------


def interleaved(fns: dict, X, rounds: int) -> dict:
    outs = {k: jax.block_until_ready(fn(X)) for k, fn in fns.items()}  # warm-up (compiles)
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for k in order:
            t = time.perf_counter()
            jax.block_until_ready(fns[k](X))
            times[k].append(time.perf_counter() - t)
    return {
        k: {"min_ms": 1e3 * min(v), "median_ms": 1e3 * statistics.median(v), "rounds": len(v)} for k, v in times.items()
    }, outs


def check(outs: dict, ref_key: str, rtol: float) -> dict:
    ref = np.asarray(outs[ref_key], dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(ref))))
    return {k: float(np.max(np.abs(np.asarray(v, np.float64) - ref)) / scale) for k, v in outs.items()}


def best_nested(res: dict) -> float:
    return min(v["min_ms"] for k, v in res.items() if k.startswith("nested"))


def compile_time(f, X, method: str) -> dict:
    """Trace (make_jaxpr + multijet's interpretation + lowering to StableHLO) vs XLA's compile, fresh."""
    from multijet.backends import jax as mjax

    mjax._RUNNERS.clear()  # noqa: SLF001 - force a fresh trace (the backend caches jitted runners)
    t0 = time.perf_counter()
    comp = mj.compile(mj.Laplacian(), f, X, backend="jax", method=method)
    t1 = time.perf_counter()
    lowered = comp._fn.lower(X)  # noqa: SLF001 - the backend's jitted callable
    t2 = time.perf_counter()
    lowered.compile()
    t3 = time.perf_counter()
    return {"capture_s": t1 - t0, "trace_and_lower_s": t2 - t1, "xla_compile_s": t3 - t2, "beyond_xla_s": t2 - t0}


def compile_time_hessian(f, X) -> dict:
    fn = jax.jit(jax.vmap(lambda x: jnp.trace(jax.hessian(f)(x))))
    t1 = time.perf_counter()
    lowered = fn.lower(X)
    t2 = time.perf_counter()
    lowered.compile()
    t3 = time.perf_counter()
    return {"capture_s": 0.0, "trace_and_lower_s": t2 - t1, "xla_compile_s": t3 - t2, "beyond_xla_s": t2 - t1}


def coverage() -> dict:
    """Which of the test suite's constructs each tool differentiates correctly (Laplacian vs jax.hessian)."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    import test_jax_backend as T  # noqa: E402 - the constructs of the unit tests
    from jax.experimental import jet

    x = T.X0
    eye = jnp.eye(x.shape[0], dtype=x.dtype)

    def via_jet(f):
        return jnp.sum(jax.vmap(lambda v: jet.jet(f, (x,), ((v, jnp.zeros_like(v)),))[1][1])(eye), axis=0)

    tools = {"multijet collapsed": lambda f: mj.laplacian(f, x, backend="jax"), "jax.experimental.jet": via_jet}
    try:
        import folx

        tools["folx"] = lambda f: folx.forward_laplacian(f, sparsity_threshold=0)(x).laplacian
    except ImportError:
        pass
    out = {t: {} for t in tools}
    for name, f in T.CONSTRUCTS.items():
        want = np.asarray(T.lap_oracle(T.ORACLE_FN.get(name, f), x))
        for t, fn in tools.items():
            try:
                got = np.asarray(fn(f))
                ok = got.shape == want.shape and np.allclose(got, want, rtol=1e-7, atol=1e-7)
                out[t][name] = "ok" if ok else "wrong"
            except Exception as e:  # noqa: BLE001 - record any failure
                out[t][name] = f"error: {type(e).__name__}"
    return out


def _vm_hwm_mb() -> float:
    """Peak resident set size of this process (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(method: str, dtype: str, N: int, D: int) -> None:
    f = make_mlp(D, dtype)
    X = points(N, D, dtype)
    fns = laplacian_methods(f, X)
    key = next(k for k in fns if k.startswith(method))
    fn = fns[key]
    compiled = (fn.lower(X) if hasattr(fn, "lower") else fn._fn.lower(X)).compile()  # noqa: SLF001
    base = _vm_hwm_mb()
    jax.block_until_ready(compiled(X))
    peak = _vm_hwm_mb()
    print(json.dumps({"method": key, "peak_rss_mb": peak, "above_baseline_mb": peak - base}))


def memory(dtype: str, N: int, D: int) -> dict:
    out = {}
    for m in ("collapsed", "standard", "nested (fwd", "nested (trace", "jax.experimental", "folx"):
        proc = subprocess.run(
            [sys.executable, __file__, "--memory-child", m, dtype, str(N), str(D)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            continue
        rec = json.loads(proc.stdout.strip().splitlines()[-1])
        out[rec["method"]] = {"peak_rss_mb": rec["peak_rss_mb"], "above_baseline_mb": rec["above_baseline_mb"]}
    return out


# --- report -------------------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = open("/proc/loadavg").read().split()[:3]
    except OSError:
        load = []
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "platform": platform.platform(),
        "loadavg_at_start": load,
    }


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        "## JAX",
        "",
        f"Machine: {m['cpu']}, {m['cores']} CPU cores, JAX {m['jax']}, Python {m['python']} "
        f"(load average at start {' '.join(m['loadavg_at_start'])}; the machine was shared with other jobs, so "
        "absolute times are noisy; ratios come from one interleaved run). Command: "
        "`python benchmarks/jax_bench.py`; raw numbers in `benchmarks/results/jax.json`. Times are per batch, "
        "minimum over interleaved rounds (median in the JSON).",
        "",
        "### Summary: collapsed Laplacian, ratios of minimum times (targets: ≤ 0.55 × best nested, "
        "≤ 0.55 × standard, ≤ 1 × folx)",
        "",
        "| dtype | N | × best nested | × standard | × folx | × jet (per direction) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for cfg in res["laplacian"]:
        t = cfg["times"]
        c = t["collapsed"]["min_ms"]
        fx = t.get("folx forward_laplacian", {}).get("min_ms")
        jt = t.get("jax.experimental.jet (per direction, summed)", {}).get("min_ms")
        lines.append(
            f"| {cfg['dtype']} | {cfg['N']} | {c / best_nested(t):.2f} | {c / t['standard']['min_ms']:.2f} | "
            f"{(c / fx) if fx else float('nan'):.2f} | {(c / jt) if jt else float('nan'):.2f} |"
        )
    lines += [
        "",
        "### Laplacian of the paper's MLP (tanh, D=50 → 768 → 768 → 512 → 512 → 1)",
        "",
        "| dtype | N | method | time [ms] | × best nested | × standard | max rel. error |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for cfg in res["laplacian"]:
        t = cfg["times"]
        bn = best_nested(t)
        st = t["standard"]["min_ms"]
        for k, v in t.items():
            lines.append(
                f"| {cfg['dtype']} | {cfg['N']} | {k} | {v['min_ms']:.1f} | {v['min_ms'] / bn:.2f} | "
                f"{v['min_ms'] / st:.2f} | {cfg['errors'][k]:.1e} |"
            )
    lines += [
        "",
        "### Randomised Laplacian (16 Rademacher directions, float64)",
        "",
        "| N | method | time [ms] | × standard |",
        "| --- | --- | --- | --- |",
    ]
    for cfg in res["randomised"]:
        st = cfg["times"]["standard"]["min_ms"]
        for k, v in cfg["times"].items():
            lines.append(f"| {cfg['N']} | {k} | {v['min_ms']:.1f} | {v['min_ms'] / st:.2f} |")
    lines += [
        "",
        f"### Bi-Laplacian, D=5 (same widths, float64, N={res['bilaplacian']['N']})",
        "",
        "| method | time [ms] | × standard | × best nested |",
        "| --- | --- | --- | --- |",
    ]
    bt = res["bilaplacian"]["times"]
    bn = best_nested(bt)
    for k, v in bt.items():
        lines.append(
            f"| {k} | {v['min_ms']:.1f} | {v['min_ms'] / bt['standard']['min_ms']:.2f} | {v['min_ms'] / bn:.2f} |"
        )
    lines += [
        "",
        "### Trace + compile (Laplacian, float64, N=32, fresh process state)",
        "",
        "| method | capture [s] | multijet trace + lowering [s] | XLA compile [s] | beyond XLA [s] |",
        "| --- | --- | --- | --- | --- |",
    ]
    for k, v in res["compile"].items():
        lines.append(
            f"| {k} | {v['capture_s']:.3f} | {v['trace_and_lower_s']:.3f} | {v['xla_compile_s']:.3f} | "
            f"{v['beyond_xla_s']:.3f} |"
        )
    if res.get("memory"):
        mm = res["memory"]
        lines += [
            "",
            f"### Peak memory (Laplacian, {mm['dtype']}, N={mm['N']}, one process per method)",
            "",
            "| method | peak RSS [MB] | run's peak above the compiled baseline [MB] |",
            "| --- | --- | --- |",
        ]
        for k, v in mm["methods"].items():
            lines.append(f"| {k} | {v['peak_rss_mb']:.0f} | {v['above_baseline_mb']:.0f} |")
    if res.get("coverage"):
        cov = res["coverage"]
        tools = list(cov)
        names = list(cov[tools[0]])
        lines += [
            "",
            "### Construct coverage (the unit tests' constructs, Laplacian at one point vs jax.hessian)",
            "",
            "| construct | " + " | ".join(tools) + " |",
            "| --- |" + " --- |" * len(tools),
        ]
        for n in names:
            lines.append(f"| {n} | " + " | ".join(cov[t][n] for t in tools) + " |")
        lines.append(
            "| **correct** | "
            + " | ".join(f"{sum(v == 'ok' for v in cov[t].values())}/{len(names)}" for t in tools)
            + " |"
        )
    if res.get("notes"):
        lines += [""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def write_readme(section: str) -> None:
    text = README.read_text() if README.exists() else "# Benchmarks\n\n"
    start = text.find("## JAX")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + 1)
        text = text[:start] + section + ("" if nxt < 0 else text[nxt:])
    README.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-child", nargs=4, metavar=("METHOD", "DTYPE", "N", "D"))
    ap.add_argument("--out", type=Path, default=RESULTS, help="results JSON (default: %(default)s)")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite the JAX section of the README")
    args = ap.parse_args()
    if args.memory_child:
        m, dt, N, D = args.memory_child
        memory_child(m, dt, int(N), int(D))
        return
    rounds = args.rounds or (3 if args.quick else 10)
    res = {"machine": machine(), "laplacian": [], "randomised": [], "notes": []}
    D = 50
    try:
        import folx  # noqa: F401

        res["notes"].append(
            f"folx {folx.__version__ if hasattr(folx, '__version__') else ''} installed with `pip install folx`; "
            "used as forward_laplacian(f, sparsity_threshold=0) under jax.vmap."
        )
    except ImportError:
        res["notes"].append("folx is not installed (pip install folx): not compared.")
    batches = (64,) if args.quick else (64, 256)
    for dtype in ("float64", "float32"):
        f = make_mlp(D, dtype)
        for N in batches:
            X = points(N, D, dtype)
            fns = laplacian_methods(f, X)
            times, outs = interleaved(fns, X, rounds)
            errs = check(outs, "nested (trace of jax.hessian)", 1e-6)
            res["laplacian"].append({"dtype": dtype, "N": N, "times": times, "errors": errs})
            print(dtype, N, {k: round(v["min_ms"], 1) for k, v in times.items()}, flush=True)
    f = make_mlp(D, "float64")
    for N in batches:
        X = points(N, D, "float64")
        times, outs = interleaved(laplacian_methods(f, X, samples=16), X, rounds)
        res["randomised"].append(
            {
                "N": N,
                "samples": 16,
                "times": times,
                "errors": check(outs, "nested (fwd-over-rev, plan directions)", 1e-6),
            }
        )
        print("randomised", N, {k: round(v["min_ms"], 1) for k, v in times.items()}, flush=True)
    f5 = make_mlp(5, "float64")
    X5 = points(64, 5, "float64")
    times, outs = interleaved(bilaplacian_methods(f5, X5), X5, rounds)
    res["bilaplacian"] = {
        "D": 5,
        "N": 64,
        "times": times,
        "errors": check(outs, "nested (jax.hessian of jax.hessian trace)", 1e-6),
    }
    print("bilaplacian", {k: round(v["min_ms"], 1) for k, v in times.items()}, flush=True)
    res["compile"] = {}
    for m in ("collapsed", "standard", "nested"):
        fresh = make_mlp(D, "float64", seed=123 + len(res["compile"]))
        res["compile"][m] = compile_time(fresh, points(32, D, "float64"), m)
    res["compile"]["trace of jax.hessian (JAX alone)"] = compile_time_hessian(
        make_mlp(D, "float64", seed=99), points(32, D, "float64")
    )
    print("compile", res["compile"], flush=True)
    res["coverage"] = coverage()
    print("coverage", {t: sum(v == "ok" for v in c.values()) for t, c in res["coverage"].items()}, flush=True)
    if not args.no_memory:
        res["memory"] = {"dtype": "float64", "N": 256, "methods": memory("float64", 256, D)}
        print("memory", res["memory"], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    if not args.no_readme:
        write_readme(markdown(res))
    print(markdown(res))


if __name__ == "__main__":
    main()
