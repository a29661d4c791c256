"""Old against new: the package before the shared engine (commit 25225b1) against the current code, in one
interleaved run.

    git worktree add /tmp/mj_old 25225b1
    python benchmarks/engine_old_vs_new.py --old-src /tmp/mj_old/src            # about 20 minutes (4 rounds)
    python benchmarks/engine_old_vs_new.py --old-src /tmp/mj_old/src --quick    # a smoke run (a few minutes)
    git worktree remove --force /tmp/mj_old

``--new-src`` defaults to this repository's ``src``; to measure a commit rather than the working tree, export it
first (``git archive HEAD src | tar -x -C /tmp/mj_new``) and pass ``--new-src /tmp/mj_new/src``.

Every measurement runs in a fresh subprocess (``PYTHONPATH`` = the side's ``src``, a timeout on each) pinned to
one CPU (``taskset``) with one thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``, XLA's Eigen pool
off), float64. A round runs every kind of child once for each side, old first in even rounds and new first in
odd ones, so slow drift of the machine's load falls on both sides alike. Inside a child the methods of one
configuration are timed interleaved (order rotated each repetition); a child reports each method's minimum and
median over its repetitions. The summary uses, per side, the minimum over rounds of the per-round minima, and
the spread of the per-round ratios.

The network is the paper's MLP (D → 768 → 768 → 512 → 512 → 1, tanh) with weights ``W`` of shape (out, in),
written two ways with the same weights: ``x @ W.T + b`` (``nn.Linear`` style) and ``W @ x + b``.

- torch (N=32, 64, under ``torch.no_grad``): ``mj.compile`` collapsed, standard and nested, and
  ``vmap(torch.func.hessian)`` trace (framework only: the same code on both sides, a noise control).
- JAX (N=32, 64, 256): ``mj.compile`` collapsed and nested, the jitted trace of ``jax.hessian`` and folx's
  ``forward_laplacian`` (dense, ``sparsity_threshold=0``) under ``jax.vmap`` (both framework only).
- build: ``mj.compile`` of the Laplacian (D=50) and the bi-Laplacian (D=5) on fresh networks, after a
  warm-up build in the same process; JAX split into capture (``mj.compile``), trace + lowering and XLA compile,
  torch into ``mj.compile`` (``make_fx`` + emit) and the first call.

Writes ``benchmarks/results/engine_old_vs_new.json`` and ``.md`` (``--out`` changes the stem).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT = HERE / "results" / "engine_old_vs_new"
WIDTHS = (768, 768, 512, 512, 1)
FORMS = ("x @ W.T", "W @ x")
KINDS = ("torch", "jax", "build-torch", "build-jax")


# --- children: one measurement each, JSON on stdout -----------------------------------------------------------


def _weights(D: int, seed: int = 0):
    import numpy as np

    r = np.random.default_rng(seed)
    sizes = (D, *WIDTHS)
    return [
        (r.normal(size=(b, a)) / np.sqrt(a), r.normal(size=b) * 0.1) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
    ]


def _points(N: int, D: int, seed: int = 1):
    import numpy as np

    return np.random.default_rng(seed).normal(size=(N, D))


def _interleave(fns: dict, run, reps: int) -> dict:
    names = list(fns)
    times = {k: [] for k in names}
    for r in range(reps):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            run(fns[k])
            times[k].append(time.perf_counter() - t)
    return {
        k: {"min_ms": 1e3 * min(v), "median_ms": 1e3 * statistics.median(v), "reps": len(v)} for k, v in times.items()
    }


def _rel_err(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def _torch_net(D: int, form: str, seed: int = 0):
    import torch

    params = [(torch.tensor(W), torch.tensor(b)) for W, b in _weights(D, seed)]
    if form == "x @ W.T":
        layers: list[torch.nn.Module] = []
        for i, (W, b) in enumerate(params):
            lin = torch.nn.Linear(W.shape[1], W.shape[0]).double()
            with torch.no_grad():
                lin.weight.copy_(W)
                lin.bias.copy_(b)
            layers.append(lin)
            if i < len(params) - 1:
                layers.append(torch.nn.Tanh())
        return torch.nn.Sequential(*layers)

    class MatVec(torch.nn.Module):  # the same network written W @ x
        def __init__(self):
            super().__init__()
            self.Ws = torch.nn.ParameterList([torch.nn.Parameter(W.clone()) for W, _ in params])
            self.bs = torch.nn.ParameterList([torch.nn.Parameter(b.clone()) for _, b in params])

        def forward(self, x):
            n = len(self.Ws)
            for i in range(n):
                x = self.Ws[i] @ x + self.bs[i]
                if i < n - 1:
                    x = torch.tanh(x)
            return x

    return MatVec()


def _jax_fn(D: int, form: str, seed: int = 0):
    import jax.numpy as jnp

    params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in _weights(D, seed)]
    n = len(params)
    if form == "x @ W.T":

        def f(x):
            for i, (W, b) in enumerate(params):
                x = x @ W.T + b
                if i < n - 1:
                    x = jnp.tanh(x)
            return x[0]

    else:

        def f(x):
            for i, (W, b) in enumerate(params):
                x = W @ x + b
                if i < n - 1:
                    x = jnp.tanh(x)
            return x[0]

    return f


def child_torch(a: dict) -> dict:
    import torch
    from torch.func import hessian, vmap

    import multijet as mj

    torch.set_num_threads(1)
    out = {}
    for form in a["forms"]:
        net = _torch_net(50, form)
        for N in a["batches"]:
            X = torch.tensor(_points(N, 50))
            fns = {m: mj.compile(mj.Laplacian(), net, X, backend="torch", method=m) for m in a["torch_methods"]}
            fns["torch.func.hessian trace"] = lambda X, net=net: vmap(
                lambda x: torch.diagonal(hessian(net)(x), dim1=-2, dim2=-1).sum(-1)
            )(X)

            def run(fn, X=X):
                with torch.no_grad():
                    fn(X)

            with torch.no_grad():
                res = {k: fn(X) for k, fn in fns.items()}  # warm-up and check
            errs = {k: _rel_err(v.numpy(), res["torch.func.hessian trace"].numpy()) for k, v in res.items()}
            out[f"{form}|{N}"] = {"times": _interleave(fns, run, a["reps"]), "errors": errs}
    return out


def child_jax(a: dict) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import multijet as mj

    try:
        import folx
    except ImportError:
        folx = None
    out = {}
    for form in a["forms"]:
        f = _jax_fn(50, form)
        for N in a["batches"]:
            X = jnp.asarray(_points(N, 50))
            fns = {m: mj.compile(mj.Laplacian(), f, X, backend="jax", method=m) for m in a["jax_methods"]}
            fns["jax.hessian trace"] = jax.jit(jax.vmap(lambda x, f=f: jnp.trace(jax.hessian(f)(x))))
            if folx is not None:
                fl = folx.forward_laplacian(f, sparsity_threshold=0)
                fns["folx forward_laplacian"] = jax.jit(jax.vmap(lambda x, fl=fl: fl(x).laplacian))
            res = {k: jax.block_until_ready(fn(X)) for k, fn in fns.items()}  # compile and check
            errs = {k: _rel_err(v, res["jax.hessian trace"]) for k, v in res.items()}
            times = _interleave(fns, lambda fn, X=X: jax.block_until_ready(fn(X)), a["reps"])
            out[f"{form}|{N}"] = {"times": times, "errors": errs}
    return out


BUILDS = (  # (name, operator, D, N, route forced where the side has routes)
    ("laplacian D=50", "Laplacian", 50, 32, None),
    ("bilaplacian D=5, direction set", "Bilaplacian", 5, 16, "directions"),
    ("bilaplacian D=5, default route", "Bilaplacian", 5, 16, None),
)


def _route_kw(mj, route: str | None) -> dict:
    """``route=`` only where ``mj.compile`` has it (the old side has one route: the direction set)."""
    import inspect

    return {"route": route} if route and "route" in inspect.signature(mj.compile).parameters else {}


def _route_of(comp) -> str:
    return str(getattr(comp.plan, "route", None) or "directions")


def _min_records(runs: list[dict]) -> dict:
    out = {k: min(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], float)}
    out["route"] = runs[0]["route"]
    return out


def child_build_jax(a: dict) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import multijet as mj

    def split(op, D, N, form, seed, kw):
        """mj.compile, then lowering and XLA compile of the jitted program (where there is one to lower)."""
        f = _jax_fn(D, form, seed)
        X = jnp.asarray(_points(N, D))
        t0 = time.perf_counter()
        comp = mj.compile(op, f, X, backend="jax", **kw)
        t1 = time.perf_counter()
        rec = {"capture_s": t1 - t0, "route": _route_of(comp)}
        lower = getattr(comp._fn, "lower", None)  # noqa: SLF001 - the backend's jitted callable
        if lower is not None:  # a composition (Δ(Δf)) is no single jitted callable
            lowered = lower(X)
            t2 = time.perf_counter()
            lowered.compile()
            t3 = time.perf_counter()
            rec.update(trace_and_lower_s=t2 - t1, xla_compile_s=t3 - t2, beyond_xla_s=t2 - t0)
        return rec

    def total(op, D, N, form, seed, kw):
        """mj.compile and the first call (tracing, XLA compile, one evaluation): comparable on any route."""
        f = _jax_fn(D, form, seed)
        X = jnp.asarray(_points(N, D))
        t0 = time.perf_counter()
        comp = mj.compile(op, f, X, backend="jax", **kw)
        jax.block_until_ready(comp(X))
        return time.perf_counter() - t0

    split(mj.Laplacian(), 3, 2, "x @ W.T", 99, {})  # JAX's one-off warm-up, discarded
    total(mj.Laplacian(), 3, 2, "x @ W.T", 98, {})
    out = {}
    seed = 1000
    for name, opname, D, N, route in BUILDS:
        op, kw = getattr(mj, opname)(), _route_kw(mj, route)
        for form in a["forms"]:
            runs = []
            for _ in range(a["build_reps"]):
                seed += 2  # fresh networks each time: no cache hit on either side
                rec = split(op, D, N, form, seed, kw)
                rec["compile_and_first_call_s"] = total(op, D, N, form, seed + 1, kw)
                runs.append(rec)
            out[f"{name}|{form}"] = _min_records(runs)
    return out


def child_build_torch(a: dict) -> dict:
    import torch

    import multijet as mj

    torch.set_num_threads(1)

    def one(op, D, N, form, seed, kw):
        net = _torch_net(D, form, seed)
        X = torch.tensor(_points(N, D))
        t0 = time.perf_counter()
        comp = mj.compile(op, net, X, backend="torch", **kw)
        t1 = time.perf_counter()
        with torch.no_grad():
            comp(X)
        t2 = time.perf_counter()
        return {"compile_s": t1 - t0, "first_call_s": t2 - t1, "route": _route_of(comp)}

    first = one(mj.Laplacian(), 50, 32, "x @ W.T", 99, {})  # torch's one-off make_fx / fake-tensor warm-up
    out = {"first build in the process (laplacian D=50, x @ W.T)": _min_records([first])}
    seed = 1000
    for name, opname, D, N, route in BUILDS:
        op, kw = getattr(mj, opname)(), _route_kw(mj, route)
        for form in a["forms"]:
            runs = []
            for _ in range(a["build_reps"]):
                seed += 1
                runs.append(one(op, D, N, form, seed, kw))
            out[f"{name}|{form}"] = _min_records(runs)
    return out


CHILDREN = {"torch": child_torch, "jax": child_jax, "build-torch": child_build_torch, "build-jax": child_build_jax}


# --- parent: interleaved rounds ---------------------------------------------------------------------------------


def _cpu_times() -> dict[str, tuple[int, int]]:
    """``/proc/stat`` per CPU: (busy, total) jiffies; empty where unavailable."""
    out = {}
    try:
        with open("/proc/stat") as fh:
            for line in fh:
                if line.startswith("cpu") and line[3].isdigit():
                    name, *vals = line.split()
                    v = [int(x) for x in vals]
                    idle = v[3] + (v[4] if len(v) > 4 else 0)
                    out[name] = (sum(v) - idle, sum(v))
    except OSError:
        pass
    return out


def _busy(before: dict, after: dict) -> dict[str, float]:
    out = {}
    for k in before.keys() & after.keys():
        db, dt = after[k][0] - before[k][0], after[k][1] - before[k][1]
        out[k] = round(db / dt, 3) if dt > 0 else 0.0
    return out


def run_child(kind: str, src: Path, cfg: dict, cpu: int | None, timeout: float) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        "JAX_PLATFORMS": "cpu",
        "PYTHONWARNINGS": "ignore",
    }
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--child-config", json.dumps(cfg)]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    before, load, t0 = _cpu_times(), os.getloadavg(), time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd="/tmp", capture_output=True, text=True, timeout=timeout)
    wall, busy = time.perf_counter() - t0, _busy(before, _cpu_times())
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child ({src}) failed:\n{proc.stderr[-4000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"result": res, "wall_s": wall, "loadavg_start": load, "cpu_busy": busy}


def _spread(xs: list[float]) -> list[float]:
    return [min(xs), statistics.median(xs), max(xs)]


def summarise(rounds: list[dict], cfg: dict) -> dict:
    """Per side: min over rounds of per-round minima; per-round ratios and their spread."""
    summary: dict = {"torch": {}, "jax": {}, "build-torch": {}, "build-jax": {}}
    for kind in [k for k in ("torch", "jax") if k in rounds[0]["old"]]:
        ratio_defs = (
            {
                "collapsed/nested": ("collapsed", "nested"),
                "collapsed/standard": ("collapsed", "standard"),
                "collapsed/torch.func.hessian": ("collapsed", "torch.func.hessian trace"),
            }
            if kind == "torch"
            else {
                "collapsed/nested": ("collapsed", "nested"),
                "collapsed/jax.hessian": ("collapsed", "jax.hessian trace"),
                "collapsed/folx": ("collapsed", "folx forward_laplacian"),
            }
        )
        for key in rounds[0]["old"][kind]["result"]:
            entry: dict = {"min_ms": {}, "ratios": {}, "ratio_spread": {}, "new/old": {}, "max_rel_error": {}}
            for side in ("old", "new"):
                per_round = [r[side][kind]["result"][key] for r in rounds]
                methods = per_round[0]["times"]
                entry["min_ms"][side] = {m: min(p["times"][m]["min_ms"] for p in per_round) for m in methods}
                entry["max_rel_error"][side] = {m: max(p["errors"][m] for p in per_round) for m in methods}
                entry["ratios"][side], entry["ratio_spread"][side] = {}, {}
                for rn, (a, b) in ratio_defs.items():
                    if a in methods and b in methods:
                        entry["ratios"][side][rn] = entry["min_ms"][side][a] / entry["min_ms"][side][b]
                        entry["ratio_spread"][side][rn] = _spread(
                            [p["times"][a]["min_ms"] / p["times"][b]["min_ms"] for p in per_round]
                        )
            for m in entry["min_ms"]["new"]:
                if m in entry["min_ms"]["old"]:
                    entry["new/old"][m] = entry["min_ms"]["new"][m] / entry["min_ms"]["old"][m]
            summary[kind][key] = entry
    for kind in [k for k in ("build-torch", "build-jax") if k in rounds[0]["old"]]:
        for key in rounds[0]["old"][kind]["result"]:
            entry = {}
            for side in ("old", "new"):
                per_round = [r[side][kind]["result"][key] for r in rounds]
                entry[side] = {k: min(p[k] for p in per_round) for k in per_round[0] if k != "route"}
                entry[side]["route"] = per_round[0].get("route", "directions")
            summary[kind][key] = entry
    return summary


def _git(args: list[str], cwd: Path) -> str:
    try:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine(cpu: int | None) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    for mod in ("torch", "jax", "jaxlib", "folx", "numpy"):
        try:
            from importlib.metadata import version

            info[mod] = version(mod)
        except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
            info[mod] = None
    info["pinned_cpu"] = cpu if shutil.which("taskset") else None
    info["threads"] = 1
    return info


def _f(x: float, d: int = 2) -> str:
    return f"{x:.{d}f}"


def markdown(res: dict) -> str:
    s, cfg, m = res["summary"], res["config"], res["machine"]
    walls = [c["wall_s"] for r in res["rounds"] for side in ("old", "new") for c in r[side].values()]
    busy_other = [
        v
        for r in res["rounds"]
        for side in ("old", "new")
        for c in r[side].values()
        for k, v in c["cpu_busy"].items()
        if m.get("pinned_cpu") is None or k != f"cpu{m['pinned_cpu']}"
    ]
    L = [
        "# Old (before the shared engine) against new: one interleaved run",
        "",
        f"- Date: {res['date']}. Old: `{res['old']['rev']}` ({res['old']['describe']}). "
        f"New: `{res['new']['rev']}` ({res['new']['describe']}).",
        f"- Machine: {m.get('cpu_model', '?')}, {m['cpus']} CPUs, {m['platform']}; Python {m['python']}, "
        f"torch {m['torch']}, JAX {m['jax']} (jaxlib {m['jaxlib']}), folx {m['folx']}.",
        f"- Every measurement in a fresh subprocess pinned to CPU {m.get('pinned_cpu')} with one thread "
        "(`OMP_NUM_THREADS=1`, `torch.set_num_threads(1)`, XLA's Eigen pool off), float64. "
        f"{cfg['rounds']} rounds; each round runs every child once per side, old first in even rounds, new first "
        f"in odd ones; {cfg['reps']} timed repetitions per method inside a child (methods interleaved, order "
        f"rotated), after a warm-up. Times: minimum over rounds of each child's minimum. Ratio spread: "
        "[min, median, max] of the per-round ratios (each round's ratio from one process).",
        f"- Run: `{res['command']}`; {sum(walls) / 60:.1f} min of children. "
        f"Load average at the start {res['loadavg_start']}, at the end {res['loadavg_end']}; the other "
        f"CPU was busy {100 * min(busy_other, default=0):.0f}–{100 * max(busy_other, default=0):.0f}% "
        "(median "
        f"{100 * statistics.median(busy_other) if busy_other else 0:.0f}%) during the children (`/proc/stat`).",
        "- Network: the paper's MLP D=50 → 768 → 768 → 512 → 512 → 1, tanh, weights `W` (out, in), written "
        "`x @ W.T + b` (`nn.Linear` style) and `W @ x + b` with the same weights. `nested` is multijet's "
        '`method="nested"`; `torch.func.hessian`, `jax.hessian` and folx are the frameworks\' own code, the same '
        "on both sides, so their old/new time ratio measures the noise.",
        "",
        "## torch: Laplacian, D=50, float64, `torch.no_grad()`",
        "",
        "| form | N | collapsed/nested old → new (spread new) | collapsed/standard old → new "
        "| collapsed/torch.func.hessian old → new | collapsed new/old | nested new/old | hessian new/old "
        "(noise) | collapsed ms old / new |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, e in s["torch"].items():
        form, N = key.split("|")
        ro, rn, sp = e["ratios"]["old"], e["ratios"]["new"], e["ratio_spread"]["new"]
        no = e["new/old"]
        L.append(
            f"| `{form}` | {N} | {_f(ro['collapsed/nested'])} → **{_f(rn['collapsed/nested'])}** "
            f"({'–'.join(_f(x) for x in (sp['collapsed/nested'][0], sp['collapsed/nested'][2]))}) "
            f"| {_f(ro['collapsed/standard'])} → {_f(rn['collapsed/standard'])} "
            f"| {_f(ro['collapsed/torch.func.hessian'])} → {_f(rn['collapsed/torch.func.hessian'])} "
            f"| {_f(no['collapsed'])} | {_f(no['nested'])} | {_f(no['torch.func.hessian trace'])} "
            f"| {e['min_ms']['old']['collapsed']:.1f} / {e['min_ms']['new']['collapsed']:.1f} |"
        )
    L += [
        "",
        "## JAX: Laplacian, D=50, float64, jitted",
        "",
        "| form | N | collapsed/folx old → new (spread new) | collapsed/jax.hessian old → new "
        "| collapsed/nested old → new | collapsed new/old | folx new/old (noise) | jax.hessian new/old (noise) "
        "| collapsed ms old / new | folx ms old / new |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, e in s["jax"].items():
        form, N = key.split("|")
        ro, rn, sp = e["ratios"]["old"], e["ratios"]["new"], e["ratio_spread"]["new"]
        no = e["new/old"]
        folx_ok = "collapsed/folx" in rn
        L.append(
            f"| `{form}` | {N} | "
            + (
                f"{_f(ro['collapsed/folx'])} → **{_f(rn['collapsed/folx'])}** "
                f"({_f(sp['collapsed/folx'][0])}–{_f(sp['collapsed/folx'][2])})"
                if folx_ok
                else "n/a"
            )
            + f" | {_f(ro['collapsed/jax.hessian'])} → **{_f(rn['collapsed/jax.hessian'])}** "
            f"| {_f(ro['collapsed/nested'])} → {_f(rn['collapsed/nested'])} "
            f"| {_f(no['collapsed'])} | {_f(no['folx forward_laplacian']) if folx_ok else 'n/a'} "
            f"| {_f(no['jax.hessian trace'])} "
            f"| {e['min_ms']['old']['collapsed']:.1f} / {e['min_ms']['new']['collapsed']:.1f} "
            + (
                f"| {e['min_ms']['old']['folx forward_laplacian']:.1f} / "
                f"{e['min_ms']['new']['folx forward_laplacian']:.1f} |"
                if folx_ok
                else "| n/a |"
            )
        )
    L += [
        "",
        "### JAX: the two layer forms side by side (collapsed time `W @ x` ÷ `x @ W.T`, and new collapsed/jax.hessian)",
        "",
    ]
    L += ["| N | old: W@x ÷ x@W.T | new: W@x ÷ x@W.T | new collapsed/jax.hessian x@W.T, W@x |", "|---|---|---|---|"]
    for N in cfg["jax_batches"]:
        a, b = s["jax"].get(f"x @ W.T|{N}"), s["jax"].get(f"W @ x|{N}")
        if a and b:
            L.append(
                f"| {N} | {_f(b['min_ms']['old']['collapsed'] / a['min_ms']['old']['collapsed'])} "
                f"| {_f(b['min_ms']['new']['collapsed'] / a['min_ms']['new']['collapsed'])} "
                f"| {_f(a['ratios']['new']['collapsed/jax.hessian'])}, "
                f"{_f(b['ratios']['new']['collapsed/jax.hessian'])} |"
            )
    L += [
        "",
        "## Build time (`mj.compile`, fresh network, after a warm-up build in the same process; min over "
        f"{cfg['build_reps']} builds × {cfg['rounds']} rounds)",
        "",
        "| backend | operator | form | what | old | new | new/old | route old → new |",
        "|---|---|---|---|---|---|---|---|",
    ]
    parts = {
        "build-jax": (
            ("beyond_xla_s", "capture + trace + lowering"),
            ("xla_compile_s", "XLA compile"),
            ("compile_and_first_call_s", "mj.compile + first call"),
        ),
        "build-torch": (("compile_s", "mj.compile"), ("first_call_s", "first call")),
    }
    for kind, backend in (("build-jax", "JAX"), ("build-torch", "torch")):
        for key, e in s[kind].items():
            op, form = key.split("|") if "|" in key else (key, "")
            for part, label in parts[kind]:
                o, n = e["old"].get(part), e["new"].get(part)
                if o is None and n is None:
                    continue
                if "|" not in key and part != "compile_s":
                    continue
                cell = lambda v: "n/a" if v is None else f"{1e3 * v:.0f} ms"  # noqa: E731
                L.append(
                    f"| {backend} | {op} | {f'`{form}`' if form else ''} | {label} | {cell(o)} | {cell(n)} "
                    f"| {_f(n / o) if o and n else 'n/a'} | {e['old']['route']} → {e['new']['route']} |"
                )
    errs = [
        v
        for k in ("torch", "jax")
        for e in s[k].values()
        for side in ("old", "new")
        for v in e["max_rel_error"][side].values()
    ]
    if errs:
        L += [
            "",
            f"Largest relative disagreement with the framework's hessian trace, any method/side: {max(errs):.1e}.",
        ]
    if res.get("earlier_runs"):
        L += [
            "",
            "## Repeat runs of this script against other snapshots of the new side (same day, same settings)",
            "",
            "Key ratios, old → new; each row is one whole interleaved run (the JSON keeps every run's summary).",
            "",
            "| new side | rounds | torch collapsed/nested `x @ W.T` N=32, 64 | JAX collapsed/folx `x @ W.T` "
            "N=32, 64, 256 | JAX collapsed/folx `W @ x` N=32, 64, 256 | JAX new `W @ x` ÷ `x @ W.T` N=32, 64, 256 |",
            "|---|---|---|---|---|---|",
        ]
        for run in [*res["earlier_runs"], {"rev": res["new"]["rev"], "rounds": cfg["rounds"], "summary": s}]:
            L.append(_key_row(run))
    if res.get("notes"):
        L += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(L) + "\n"


def _key_row(run: dict) -> str:
    t, j = run["summary"]["torch"], run["summary"]["jax"]

    def pair(e: dict, k: str) -> str:
        return f"{_f(e['ratios']['old'][k])} → {_f(e['ratios']['new'][k])}"

    tc = ", ".join(pair(t[f"x @ W.T|{N}"], "collapsed/nested") for N in (32, 64))
    fx = {f: ", ".join(pair(j[f"{f}|{N}"], "collapsed/folx") for N in (32, 64, 256)) for f in FORMS}
    same = ", ".join(
        _f(j[f"W @ x|{N}"]["min_ms"]["new"]["collapsed"] / j[f"x @ W.T|{N}"]["min_ms"]["new"]["collapsed"])
        for N in (32, 64, 256)
    )
    return f"| `{run['rev']}` | {run['rounds']} | {tc} | {fx['x @ W.T']} | {fx['W @ x']} | {same} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--old-src", type=Path, default=Path("/tmp/mj_old/src"), help="old side's src (default: %(default)s)"
    )
    ap.add_argument("--new-src", type=Path, default=REPO / "src", help="new side's src (default: %(default)s)")
    ap.add_argument("--old-rev", default=None, help="label for the old side (default: git HEAD of --old-src)")
    ap.add_argument("--new-rev", default=None, help="label for the new side (default: git HEAD of --new-src)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 4, 1 with --quick)")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per method in a child (default 4)")
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin the children to (default: the last one)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per child before it is killed")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated children to run (default: all)")
    ap.add_argument("--quick", action="store_true", help="one round, 2 repetitions, fewer batches")
    ap.add_argument("--out", type=Path, default=OUT, help="output stem (.json and .md); default %(default)s")
    ap.add_argument("--note", action="append", default=[], help="a note for the markdown (repeatable)")
    ap.add_argument("--render", type=Path, help="re-render the markdown of this results JSON (with --note) and stop")
    ap.add_argument(
        "--earlier",
        type=Path,
        nargs="*",
        default=[],
        help="with --render: results JSONs of earlier runs whose key ratios are listed beside this one",
    )
    ap.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--child-config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](json.loads(args.child_config))))
        return
    if args.render:  # rewrite the markdown of a finished run (notes and earlier runs added), no measuring
        res = json.loads(args.render.read_text())
        res["notes"] = [*res.get("notes", []), *args.note]
        for path in args.earlier:
            e = json.loads(path.read_text())
            res.setdefault("earlier_runs", []).append(
                {"rev": e["new"]["rev"], "rounds": e["config"]["rounds"], "date": e["date"], "summary": e["summary"]}
            )
        args.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(markdown(res))
        return
    if bad := [k for k in args.kinds.split(",") if k.strip() and k.strip() not in KINDS]:
        ap.error(f"unknown --kinds {bad}; choose from {KINDS}")
    if not (args.old_src / "multijet").is_dir() or not (args.new_src / "multijet").is_dir():
        ap.error(f"--old-src and --new-src must each hold a multijet package ({args.old_src}, {args.new_src})")
    cfg = {
        "kinds": [k.strip() for k in args.kinds.split(",") if k.strip()],
        "rounds": args.rounds or (1 if args.quick else 4),
        "reps": args.reps or (2 if args.quick else 4),
        "build_reps": 2 if args.quick else 3,
        "forms": list(FORMS),
        "torch_batches": [32] if args.quick else [32, 64],
        "jax_batches": [64] if args.quick else [32, 64, 256],
        "torch_methods": ["collapsed", "standard", "nested"],
        "jax_methods": ["collapsed", "nested"],
    }
    cpu = args.cpu if args.cpu is not None else (os.cpu_count() or 1) - 1
    sides = {"old": args.old_src.resolve(), "new": args.new_src.resolve()}
    res: dict = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "config": cfg,
        "machine": machine(cpu),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "rounds": [],
        "notes": list(args.note),
    }
    for side, rev in (("old", args.old_rev), ("new", args.new_rev)):
        src = sides[side]
        res[side] = {
            "src": str(src),
            "rev": rev or _git(["rev-parse", "--short", "HEAD"], src),
            "describe": (
                _git(["log", "-1", "--format=%h %s"], src)
                if rev is None
                else _git(["log", "-1", "--format=%h %s", rev], REPO) or rev
            )[:100],
        }
    t_start = time.perf_counter()
    for r in range(cfg["rounds"]):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")
        rnd: dict = {"order": list(order), "old": {}, "new": {}}
        for kind in cfg["kinds"]:
            ccfg = {**cfg, "batches": cfg["torch_batches"] if kind == "torch" else cfg["jax_batches"]}
            for side in order:
                c = run_child(kind, sides[side], ccfg, cpu, args.timeout)
                rnd[side][kind] = c
                print(
                    f"round {r} {kind:<11} {side}: {c['wall_s']:5.1f} s, load {c['loadavg_start'][0]:.2f}, "
                    f"busy {c['cpu_busy']}",
                    flush=True,
                )
        res["rounds"].append(rnd)
        print(f"round {r} done after {(time.perf_counter() - t_start) / 60:.1f} min", flush=True)
    res["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    res["summary"] = summarise(res["rounds"], cfg)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
