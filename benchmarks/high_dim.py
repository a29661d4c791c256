"""High-dimensional randomised Laplacian (issue 10): multijet's collapsed Hutchinson estimate against the
"STDE way" (one second-order jet per random direction) and nested Hutchinson (forward-over-reverse HVPs).

(a) ``Δ̂f(x) = Σ_s w_s v_sᵀ ∇²f(x) v_s`` with S = 16 Rademacher directions (w_s = 1/S) of a tanh MLP
D → 128 → 128 → 1 at N = 8 points, float32, D = 10² … 10⁶, on torch and JAX, by

* ``mj-collapsed``: ``mj.compile(mj.Laplacian(), f, x, samples=16, seed=0)`` (collapsed Taylor mode),
* ``mj-standard``: the same with ``method="standard"`` (one 2-jet per direction: the STDE estimator),
* ``jvp-jvp``: the STDE way written in the framework: ``vᵀHv`` by ``jvp`` of ``jvp`` per point and direction
  (``torch.func.jvp`` / ``jax.jvp``, vmapped over directions and points),
* ``hvp``: nested Hutchinson, ``vᵀ(Hv)`` with ``Hv`` by forward-over-reverse (``jvp`` of ``grad``).

Every method gets the same directions: the framework versions read them off ``mj.plan(mj.Laplacian(), D,
samples=16, seed=0)``, the plan the multijet calls use, and the results are compared.

(b) One training step of a PINN for the heat equation ``u_t = Δ_x u + g`` in D = 10⁵ space dimensions: the
network ``u(z)``, ``z = (x, t)`` of dimension D + 1, loss ``mean_n (u_t − Δ_x u − g)²``. multijet's randomised
Laplacian acts on all D + 1 inputs, so ``Δ_x u = Δ̂_z u − ∂_t²u`` with ``∂_t u`` and ``∂_t² u`` exact from one
jvp-of-jvp along ``e_t`` (the same in every variant; the estimate stays unbiased for ``Δ_x u``). One SGD step
with the backward pass through the estimate (torch: ``loss.backward()``; JAX: ``jax.value_and_grad`` under
``jax.jit``), multijet collapsed / standard against nested Hutchinson, same directions, losses compared.

Each cell runs in its own interpreter pinned to one CPU (``taskset``) with one thread, under a timeout and an
RSS watchdog (a cell is skipped beyond ``--max-gib`` or ``--timeout``; larger D of the same method are then
skipped too). A child builds (compile + first call: the build time), makes one warm-up call, resets the
resident-set high-water mark (``/proc/self/clear_refs``) and measures one call's peak above the resident set
before it (as ``chunk_memory.py``), then times repeated calls. Cells are interleaved: each round runs every
cell once, and the reported time is the minimum over rounds of each child's minimum.

    python benchmarks/high_dim.py                  # writes benchmarks/results/high_dim.{json,md,png}
    python benchmarks/high_dim.py --dims 100,1000 --rounds 1 --pinn-dim 1000   # a quick smoke run
    python benchmarks/high_dim.py --report         # rewrite .md and .png from the .json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIMS = (100, 1_000, 10_000, 100_000, 1_000_000)
N, WIDTHS, S, SEED, DTYPE = 8, (128, 128), 16, 0, "float32"
PINN_DIM, LR = 100_000, 1e-3
BACKENDS = ("torch", "jax")
METHODS = {
    "mj-collapsed": "multijet collapsed (randomised, S=16)",
    "mj-standard": "multijet standard (STDE: one 2-jet per direction)",
    "jvp-jvp": "framework jvp-of-jvp per direction (STDE, plain)",
    "hvp": "nested Hutchinson: jvp of grad (forward-over-reverse)",
}
PINN_METHODS = ("mj-collapsed", "mj-standard", "hvp")
RESULTS = Path(__file__).resolve().parent / "results"
TIMEOUT, MAX_GIB, REPS, CALL_BUDGET = 240.0, 8.0, 20, 10.0


# --- the child: one cell -----------------------------------------------------------------------------------


def _directions(dim: int):
    """The plan's random directions (S, D) and weights (S,): the ones every multijet call with seed=SEED uses."""
    import multijet as mj

    p = mj.plan(mj.Laplacian(), dim, samples=S, seed=SEED)
    (g,) = p.groups
    return g.directions.astype(DTYPE), g.weights.astype(DTYPE)


def _torch_estimators(f1, V, w):
    """``x ↦ Σ_s w_s v_sᵀ∇²f(x)v_s`` for a batch, by jvp-of-jvp and by jvp-of-grad (torch.func)."""
    import torch
    from torch.func import grad, jvp, vmap

    def vhv_jet(x, v):
        return jvp(lambda y: jvp(f1, (y,), (v,))[1], (x,), (v,))[1]

    def vhv_hvp(x, v):
        return torch.dot(v, jvp(grad(f1), (x,), (v,))[1])

    def batched(vhv):
        return vmap(lambda x: vmap(lambda v: vhv(x, v))(V) @ w)

    return {"jvp-jvp": batched(vhv_jet), "hvp": batched(vhv_hvp)}


def _jax_estimators(f1, V, w):
    import jax
    import jax.numpy as jnp

    def vhv_jet(x, v):
        return jax.jvp(lambda y: jax.jvp(f1, (y,), (v,))[1], (x,), (v,))[1]

    def vhv_hvp(x, v):
        return jnp.dot(v, jax.jvp(jax.grad(f1), (x,), (v,))[1])

    def batched(vhv):
        return jax.vmap(lambda x: jax.vmap(lambda v: vhv(x, v))(V) @ w)

    return {"jvp-jvp": batched(vhv_jet), "hvp": batched(vhv_hvp)}


def _laplacian_cell(backend: str, method: str, dim: int):
    """``(call, seconds to build it)``: ``call()`` returns the estimate as NumPy (N,)."""
    import multijet as mj
    from multijet.bench import make_input, make_program

    f = make_program(backend, dim, WIDTHS, DTYPE)
    x = make_input(backend, N, dim, DTYPE)
    V, w = _directions(dim)
    if backend == "torch":
        import torch

        torch.set_num_threads(1)
        t0 = time.perf_counter()
        if method.startswith("mj-"):
            fn = mj.compile(mj.Laplacian(), f, x, backend="torch", method=method[3:], samples=S, seed=SEED)
        else:
            fn = _torch_estimators(lambda y: f(y)[0], torch.as_tensor(V), torch.as_tensor(w))[method]
        built = time.perf_counter() - t0

        def call():
            with torch.no_grad():
                return fn(x).reshape(N).numpy()

        return call, built
    import jax
    import jax.numpy as jnp

    t0 = time.perf_counter()
    if method.startswith("mj-"):
        fn = mj.compile(mj.Laplacian(), f, x, backend="jax", method=method[3:], samples=S, seed=SEED)
    else:
        Vj, wj = jnp.asarray(V), jnp.asarray(w)  # jit arguments, not constants folded into the program
        est = jax.jit(lambda x, V, w: _jax_estimators(lambda y: f(y)[0], V, w)[method](x))
        fn = lambda x: est(x, Vj, wj)  # noqa: E731
    built = time.perf_counter() - t0
    return (lambda: np.asarray(fn(x).block_until_ready()).reshape(N)), built


def _heat_data(dim: int):
    """Points ``z = (x, t)`` (N, D+1) and the source ``g`` of the manufactured solution ``e^{−t}|x|²/D``."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, dim)).astype(DTYPE)
    t = rng.uniform(0.0, 1.0, (N, 1)).astype(DTYPE)
    g = (-np.exp(-t[:, 0]) * (np.sum(x.astype(np.float64) ** 2, axis=1) / dim + 2.0)).astype(DTYPE)
    return np.concatenate([x, t], axis=1), g


def _pinn_cell(backend: str, method: str, dim: int):
    """``(step, seconds to build it)``: ``step()`` does one SGD step of the heat PINN and returns ``[loss
    before the step, ‖∇_θ loss‖]``."""
    import multijet as mj
    from multijet.bench import make_program, mlp_layers

    Zn, gn = _heat_data(dim)
    V, w = _directions(dim + 1)
    et = np.zeros(dim + 1, dtype=DTYPE)
    et[-1] = 1.0
    if backend == "torch":
        import torch
        from torch.func import jvp, vmap

        torch.set_num_threads(1)
        net = make_program("torch", dim + 1, WIDTHS, DTYPE, requires_grad=True)
        Z, g, e = torch.as_tensor(Zn), torch.as_tensor(gn), torch.as_tensor(et)
        f1 = lambda z: net(z)[0]  # noqa: E731
        t0 = time.perf_counter()
        if method.startswith("mj-"):
            lap = mj.compile(mj.Laplacian(), net, Z, backend="torch", method=method[3:], samples=S, seed=SEED)
        else:
            lap = _torch_estimators(f1, torch.as_tensor(V), torch.as_tensor(w))[method]
        built = time.perf_counter() - t0
        time_derivs = vmap(lambda z: jvp(lambda y: jvp(f1, (y,), (e,)), (z,), (e,)))
        opt = torch.optim.SGD(net.parameters(), lr=LR)

        def step():
            opt.zero_grad()
            (_, ut), (_, utt) = time_derivs(Z)
            residual = ut - (lap(Z).reshape(N) - utt) - g
            loss = residual.pow(2).mean()
            loss.backward()
            gnorm = torch.sqrt(sum(p.grad.pow(2).sum() for p in net.parameters() if p.grad is not None))
            opt.step()
            return np.array([loss.item(), gnorm.item()])

        return step, built
    import jax
    import jax.numpy as jnp

    params = [(jnp.asarray(W, dtype=DTYPE), jnp.asarray(b, dtype=DTYPE)) for W, b in mlp_layers(dim + 1, WIDTHS)]
    Z, g, e, Vj, wj = (jnp.asarray(a) for a in (Zn, gn, et, V, w))

    def u(params, z):
        h = z
        for i, (W, b) in enumerate(params):
            h = W @ h + b
            if i < len(params) - 1:
                h = jnp.tanh(h)
        return h[0]

    def loss_fn(params):
        f1 = lambda z: u(params, z)  # noqa: E731
        if method.startswith("mj-"):
            lap = mj.laplacian(f1, Z, backend="jax", method=method[3:], samples=S, seed=SEED)
        else:
            lap = _jax_estimators(f1, Vj, wj)[method](Z)
        ut, utt = jax.vmap(lambda z: jax.jvp(lambda y: jax.jvp(f1, (y,), (e,)), (z,), (e,)))(Z)
        residual = ut[1] - (lap - utt[1]) - g
        return jnp.mean(residual**2)

    @jax.jit
    def jstep(params):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        gnorm = jnp.sqrt(sum(jnp.sum(a**2) for a in jax.tree_util.tree_leaves(grads)))
        return jax.tree_util.tree_map(lambda p, d: p - LR * d, params, grads), jnp.stack([loss, gnorm])

    state = {"params": params}

    def step():
        state["params"], out = jstep(state["params"])
        return np.asarray(out.block_until_ready())

    return step, 0.0  # traced and compiled at the first call


def child(kind: str, backend: str, method: str, dim: int, out_path: str) -> None:
    """Build, warm up, measure one call's peak memory, time repeated calls; print one JSON line."""
    from multijet.bench.memory import _reset_peak, _status_kib, _trim

    t0 = time.perf_counter()
    call, built = (_laplacian_cell if kind == "laplacian" else _pinn_cell)(backend, method, dim)
    setup = time.perf_counter() - t0 - built
    t0 = time.perf_counter()
    first = call()  # tracing / compilation + the first call
    build = built + time.perf_counter() - t0
    t0 = time.perf_counter()
    call()  # warm-up: first-touch pages, allocator arenas
    warm = time.perf_counter() - t0
    _trim()
    resettable = _reset_peak()
    base = _status_kib("VmRSS") or 0
    t0 = time.perf_counter()
    call()
    times = [time.perf_counter() - t0]
    peak = (_status_kib("VmHWM") or 0) - base if resettable else None
    process_peak = _status_kib("VmHWM")
    while len(times) < REPS and (len(times) < 3 or sum(times) < CALL_BUDGET) and times[-1] < CALL_BUDGET:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    np.save(out_path, first)
    print(json.dumps({
        "setup_s": setup, "build_s": build, "warm_s": warm, "times_s": times,
        "peak_mib": None if peak is None else max(peak, 0) / 1024, "base_mib": base / 1024,
        "process_peak_mib": None if process_peak is None else process_peak / 1024,
    }))  # fmt: skip


# --- the parent: interleaved rounds of subprocesses --------------------------------------------------------


def _rss_gib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0


def _run_child(cmd: list[str], env: dict, timeout: float, max_gib: float) -> dict:
    """Run one cell; ``{"skipped": reason}`` on timeout or when its RSS passes ``max_gib``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t0, peak = time.perf_counter(), 0.0
    while proc.poll() is None:
        peak = max(peak, _rss_gib(proc.pid))
        elapsed = time.perf_counter() - t0
        if peak > max_gib or elapsed > timeout:
            proc.kill()
            proc.communicate()
            why = f"RSS above {max_gib:g} GiB" if peak > max_gib else f"over {timeout:.0f} s"
            return {"skipped": f"{why} (killed after {elapsed:.0f} s at {peak:.1f} GiB)"}
        time.sleep(0.05)
    out, err = proc.communicate()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (err.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def _cells(dims, pinn_dim):
    cells = [("laplacian", b, m, d) for d in dims for b in BACKENDS for m in METHODS]
    if pinn_dim:
        cells += [("pinn", b, m, pinn_dim) for b in BACKENDS for m in PINN_METHODS]
    return cells


def measure(args) -> dict:
    from multijet.bench import machine_info, thread_env

    env = thread_env(1)
    uptime0 = _uptime()
    print(uptime0, flush=True)
    tmp = RESULTS / "_high_dim_tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    cells = _cells(args.dims, args.pinn_dim)
    rows = {c: {"kind": c[0], "backend": c[1], "method": c[2], "D": c[3], "runs": []} for c in cells}
    dead: dict[tuple, str] = {}  # (kind, backend, method) -> reason, from the D where it was skipped
    values: dict[tuple, np.ndarray] = {}
    rounds_log = []
    for rnd in range(args.rounds):
        rounds_log.append({"round": rnd, "uptime_start": _uptime()})
        for cell in cells:
            kind, backend, method, dim = cell
            key = (kind, backend, method)
            if key in dead and dead[key][0] <= dim:
                if not rows[cell]["runs"]:
                    rows[cell]["skipped"] = f"skipped: larger than D={dead[key][0]}, where {dead[key][1]}"
                continue
            out = tmp / f"{kind}-{backend}-{method}-{dim}.npy"
            cmd = ["taskset", "-c", str(args.cpu), sys.executable, __file__, "--child", kind, backend, method,
                   str(dim), str(out)]  # fmt: skip
            res = _run_child(cmd, env, args.timeout, args.max_gib)
            res["round"] = rnd
            print(json.dumps({"cell": list(cell), **res}), flush=True)
            if "skipped" in res or "error" in res:
                reason = res.get("skipped") or res["error"]
                if not rows[cell]["runs"]:
                    rows[cell]["skipped"] = "skipped: " + reason if "skipped" in res else "error: " + reason
                    dead[key] = (dim, reason)
                continue
            rows[cell]["runs"].append(res)
            values.setdefault(cell, np.load(out))
        rounds_log[-1]["uptime_end"] = _uptime()
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()
    _summarise(rows, values)
    uptime1 = _uptime()
    print(uptime1, flush=True)
    import multijet

    return {
        "config": {
            "N": N,
            "widths": WIDTHS,
            "samples": S,
            "seed": SEED,
            "dtype": DTYPE,
            "dims": list(args.dims),
            "pinn_dim": args.pinn_dim,
            "lr": LR,
            "rounds": args.rounds,
            "cpu": args.cpu,
            "timeout_s": args.timeout,
            "max_gib": args.max_gib,
            "reps_per_child": REPS,
            "call_budget_s": CALL_BUDGET,
        },  # fmt: skip
        "machine": {
            **machine_info(),
            "threads": 1,
            "uptime_start": uptime0,
            "uptime_end": uptime1,
            "multijet_source": str(Path(multijet.__file__).resolve().parent),
            "source_commit": args.source_commit,
        },  # fmt: skip
        "rounds": rounds_log,
        "rows": list(rows.values()),
    }


def _summarise(rows: dict, values: dict) -> None:
    """Per row: min / median time over rounds, memory, build; the result's deviation from the reference
    (torch mj-collapsed of the same kind and D; for the PINN the loss before the step)."""
    for cell, row in rows.items():
        runs = row["runs"]
        if not runs:
            continue
        best = [min(r["times_s"]) for r in runs]
        row["time_s"] = min(best)
        row["time_median_s"] = float(np.median([t for r in runs for t in r["times_s"]]))
        row["build_s"] = min(r["build_s"] for r in runs)
        row["peak_mib"] = min(r["peak_mib"] for r in runs if r["peak_mib"] is not None)
        row["process_peak_mib"] = min(r["process_peak_mib"] for r in runs)
        kind, _, _, dim = cell
        ref = values.get((kind, "torch", "mj-collapsed", dim))
        val = values.get(cell)
        if ref is not None and val is not None:
            if kind == "pinn":
                row["loss"], row["grad_norm"] = float(val[0]), float(val[1])
                row["rel_diff"] = float(abs(val[0] - ref[0]) / abs(ref[0]))
                row["grad_norm_rel_diff"] = float(abs(val[1] - ref[1]) / abs(ref[1]))
            else:
                row["estimate"] = [float(v) for v in val]
                row["rel_diff"] = float(np.max(np.abs(val - ref)) / np.max(np.abs(ref)))


# --- report --------------------------------------------------------------------------------------------------


def _fmt_t(s) -> str:
    if s is None:
        return ""
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def _spread(r) -> str:
    """Each round's minimum time: how much the shared machine's load moved the figure."""
    return " / ".join(_fmt_t(min(run["times_s"])) for run in r["runs"])


def _row(rows, kind, backend, method, dim):
    for r in rows:
        if (r["kind"], r["backend"], r["method"], r["D"]) == (kind, backend, method, dim):
            return r
    return None


def _ratio(a, b) -> str:
    if a is None or b is None or "time_s" not in a or "time_s" not in b:
        return "–"
    return f"{a['time_s'] / b['time_s']:.2f}"


def _mem_ratio(a, b) -> str:
    if a is None or b is None or not a.get("peak_mib") or not b.get("peak_mib"):
        return "–"
    return f"{a['peak_mib'] / b['peak_mib']:.2f}"


def report(data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "high_dim.json").write_text(json.dumps(data, indent=1) + "\n")
    cfg, mach, rows = data["config"], data["machine"], data["rows"]
    widths = " → ".join(map(str, cfg["widths"]))
    lines = [
        "# High-dimensional randomised Laplacian (issue 10)",
        "",
        f"Hutchinson estimate of Δf with S={cfg['samples']} Rademacher directions (seed {cfg['seed']}) of a tanh "
        f"MLP D → {widths} → 1 at N={cfg['N']} points, {cfg['dtype']}. Every cell in its own interpreter, pinned "
        f"to CPU {cfg['cpu']} with one thread; {cfg['rounds']} interleaved rounds; time = minimum over rounds of "
        f"each child's minimum over up to {cfg['reps_per_child']} calls after a warm-up (at least 3; fewer once they "
        "add up to 10 s); build = compile + first "
        "call (JAX: trace + XLA compile; torch multijet: capture + emit; torch.func: the first eager call). "
        "Peak = resident-set high-water mark of one call above the resident set before it (after the warm-up), "
        "minimum over rounds; process peak = the child's whole high-water mark (weights included). A cell is "
        f"skipped when its process passes {cfg['max_gib']:g} GiB or {cfg['timeout_s']:.0f} s "
        "(then larger D of that method are not tried). Command: `python benchmarks/high_dim.py`.",
        "",
        f"Machine: {mach['cpu']}, {mach['cores']} cores shared with other sessions' jobs (times are noisy; ratios "
        f"come from one interleaved run). `uptime` before: `{mach['uptime_start']}`; after: "
        f"`{mach['uptime_end']}`. multijet source: commit `{mach.get('source_commit')}`.",
        "",
        "Same directions everywhere: the framework versions take the directions and weights of "
        "`mj.plan(mj.Laplacian(), D, samples=16, seed=0)`, the plan of every multijet call here; *rel. diff* is "
        "max |estimate − reference| / max |reference| over the N points, reference = torch mj-collapsed.",
        "",
        "## (a) Randomised Laplacian: time per call, peak memory",
        "",
        "| D | backend | method | time / call | each round's min | build | peak [MiB] | process [MiB] | rel. diff |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    dims = sorted({r["D"] for r in rows if r["kind"] == "laplacian"})
    for r in rows:
        if r["kind"] != "laplacian":
            continue
        head = f"| {r['D']:.0e} | {r['backend']} | {r['method']} |"
        if "time_s" not in r:
            lines.append(f"{head} {r.get('skipped', 'not run')} | | | | | |")
            continue
        rd = f"{r['rel_diff']:.1e}" if "rel_diff" in r else ""
        lines.append(f"{head} {_fmt_t(r['time_s'])} | {_spread(r)} | {_fmt_t(r['build_s'])} | {r['peak_mib']:.0f} | "
                     f"{r['process_peak_mib']:.0f} | {rd} |")  # fmt: skip
    lines += [
        "",
        "### Ratios (time; peak memory in brackets): multijet collapsed ÷ the others",
        "",
        "| D | backend | ÷ mj-standard (STDE) | ÷ jvp-jvp (STDE, plain) | ÷ hvp (nested Hutchinson) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for d in dims:
        for b in BACKENDS:
            c = _row(rows, "laplacian", b, "mj-collapsed", d)
            cols = []
            for m in ("mj-standard", "jvp-jvp", "hvp"):
                o = _row(rows, "laplacian", b, m, d)
                cols.append(f"{_ratio(c, o)} ({_mem_ratio(c, o)})")
            lines.append(f"| {d:.0e} | {b} | " + " | ".join(cols) + " |")
    pinn = [r for r in rows if r["kind"] == "pinn"]
    if pinn:
        pd = pinn[0]["D"]
        lines += [
            "",
            f"## (b) Heat-equation PINN, one SGD step, D = {pd:.0e} space dimensions (+ t)",
            "",
            "Loss `mean (u_t − (Δ̂_z u − u_tt) − g)²` at N points, `Δ̂_z` the S=16 Hutchinson estimate over all "
            "D+1 inputs, `u_t`, `u_tt` exact (jvp-of-jvp along e_t, the same code in every row); forward + "
            "backward + SGD update. *loss rel. diff* compares the loss before the step (the same initial "
            "weights and directions) with torch mj-collapsed; *‖∇θ‖ rel. diff* the parameter gradient's norm.",
            "",
            "| backend | method | time / step | each round's min | build | peak [MiB] | process peak [MiB] | loss | "
            "loss rel. diff | ‖∇θ‖ rel. diff | collapsed ÷ this (time) | (memory) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in pinn:
            head = f"| {r['backend']} | {r['method']} |"
            if "time_s" not in r:
                lines.append(f"{head} {r.get('skipped', 'not run')} | | | | | | | | | |")
                continue
            c = _row(rows, "pinn", r["backend"], "mj-collapsed", pd)
            lines.append(
                f"{head} {_fmt_t(r['time_s'])} | {_spread(r)} | {_fmt_t(r['build_s'])} | {r['peak_mib']:.0f} | "
                f"{r['process_peak_mib']:.0f} | {r.get('loss', float('nan')):.6g} | "
                f"{r.get('rel_diff', float('nan')):.1e} | "
                f"{r.get('grad_norm_rel_diff', float('nan')):.1e} | {_ratio(c, r)} | {_mem_ratio(c, r)} |"
            )
    lines += [
        "",
        "Reading: the ratios are of the minimum over rounds; where the rounds' minima differ by more than the "
        "ratio's distance from 1 (see the spread columns; the load average rose from about 1 to 7 during the "
        "run), a ratio is noise. Peak memories of a few MiB or less are at the allocators' floor (the warm-up "
        "call's arenas are reused), so memory ratios against them say nothing beyond 'about zero'.",
    ]
    (RESULTS / "high_dim.md").write_text("\n".join(lines) + "\n")
    _plot(data)


_COLOURS = {"mj-collapsed": "tab:green", "mj-standard": "tab:blue", "jvp-jvp": "tab:purple", "hvp": "tab:red"}
_MARKERS = {"torch": ("o", "-"), "jax": ("^", "--")}


def _plot(data: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 4.6))
    for b in BACKENDS:
        for m in METHODS:
            rs = [r for r in data["rows"] if (r["kind"], r["backend"], r["method"]) == ("laplacian", b, m)]
            rs = [r for r in rs if "time_s" in r]
            if not rs:
                continue
            marker, style = _MARKERS[b]
            kw = {"marker": marker, "linestyle": style, "color": _COLOURS[m], "label": f"{b} {m}"}
            ax_t.plot([r["D"] for r in rs], [r["time_s"] * 1e3 for r in rs], **kw)
            ax_m.plot([r["D"] for r in rs], [max(r["peak_mib"], 0.1) for r in rs], **kw)
    for ax, label in ((ax_t, "time per call [ms]"), (ax_m, "peak memory of one call [MiB]")):
        ax.set(xscale="log", yscale="log", xlabel="input dimension D", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
    ax_m.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    cfg = data["config"]
    fig.suptitle(
        f"Randomised Laplacian (S={cfg['samples']}), tanh MLP D→{'→'.join(map(str, cfg['widths']))}→1, "
        f"N={cfg['N']}, {cfg['dtype']}, one thread"
    )
    fig.tight_layout()
    fig.savefig(RESULTS / "high_dim.png", dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", type=lambda s: tuple(int(float(v)) for v in s.split(",")), default=DIMS)
    p.add_argument("--pinn-dim", type=int, default=PINN_DIM, help="0: no PINN rows")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cpu", type=int, default=1, help="the CPU every child is pinned to (taskset)")
    p.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds per child (build and all calls)")
    p.add_argument("--max-gib", type=float, default=MAX_GIB, help="kill a child whose RSS passes this")
    p.add_argument("--source-commit", default=None, help="recorded in the results: the commit of the source")
    p.add_argument("--report", action="store_true", help="rewrite the .md and .png from the saved .json")
    p.add_argument("--child", nargs=5, metavar=("KIND", "BACKEND", "METHOD", "D", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, backend, method, dim, out = args.child
        child(kind, backend, method, int(dim), out)
        return
    if args.report:
        report(json.loads((RESULTS / "high_dim.json").read_text()))
        return
    report(measure(args))


if __name__ == "__main__":
    main()
