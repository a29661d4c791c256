"""Quantum Monte Carlo wavefunctions (issue 11): the Laplacian of log|ψ| of a FermiNet-like, a Psiformer-like and
a per-electron-stream wavefunction (``multijet.bench.wavefunctions``) by multijet (direction-sparse and dense)
against folx (sparse and dense) and nested jax.hessian, JAX jitted, float64, for n = 8, 16, 32 electrons (x of
dimension 3n), N configurations.

    python benchmarks/vmc_wavefunctions.py                 # full run (3 rounds), about 12 minutes on 2 cores
    python benchmarks/vmc_wavefunctions.py --quick         # smoke run: n=8 only, one round, 2 repetitions
    python benchmarks/vmc_wavefunctions.py --reps 3 --timeout 300      # fewer repetitions, per-child timeout
    python benchmarks/vmc_wavefunctions.py --render benchmarks/results/vmc_wavefunctions.json   # md + png only
    # writes benchmarks/results/vmc_wavefunctions.{json,md,png} (--out changes the stem)

Methods (each ``x ↦ Δ log|ψ|(x)`` on a batch X of shape (N, 3n)):

- ``multijet sparse``: ``mj.compile(mj.Laplacian(), log_psi, X, backend="jax")`` (build: compile + first call),
  direction sparsity where the cost model finds it pays (the default);
- ``multijet dense``: the same with ``sparsity=False``;
- ``folx sparse``: ``jax.jit(jax.vmap(lambda x: folx.forward_laplacian(log_psi, sparsity_threshold=6)(x)
  .laplacian))`` (FermiNet's setting), the comparison method;
- ``folx dense``: the same with ``sparsity_threshold=0``;
- ``folx sparse, XLA options as multijet``: folx sparse jitted with the XLA compiler options multijet gives its
  own programs (``multijet.backends.jax_options``: YNNPACK kept to single dots), to show what of the difference
  is XLA's fusion choice;
- ``nested``: ``jax.jit(jax.vmap(lambda x: jnp.trace(jax.hessian(log_psi)(x))))``, the reference.

Every child is a fresh process pinned to one CPU (``taskset -c``, default CPU 1) with one thread
(``OMP_NUM_THREADS=1``, XLA's Eigen pool off), under a subprocess timeout. A round runs, for every wavefunction
and n, one child with the multijet and folx methods (built, then timed interleaved) and one child with nested
(kept apart: jaxlib 0.10.2's batched LAPACK triangular solve can hang jax.hessian of slogdet programs; a child
past ``--timeout`` is recorded as "timeout", and if the shared child times out each of its methods is retried
alone). Before the real builds each child builds its methods once for a 2-electron wavefunction (the one-off
first-trace costs), discarded. Values are compared with nested (with folx dense where nested timed out).
Time per configuration: the child's min over repetitions of one batch call / N; ratios to folx sparse per round.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

import child_runs  # noqa: E402 - beside this script
from child_runs import child_env, engine_helpers, uptime  # noqa: E402
from child_runs import rel_err as _rel_err  # noqa: E402

OUT = HERE / "results" / "vmc_wavefunctions"
WAVEFUNCTIONS = ("ferminet_like", "psiformer_like", "per_electron_like")
BASE, REF, ALT_REF = "folx sparse", "nested", "folx dense"
OPTS = "folx sparse, XLA options as multijet"  # folx under multijet's compiler options (jax_options), for reference
SHARED = ("multijet sparse", "multijet dense", "folx sparse", "folx dense", OPTS)  # timed interleaved in one child
METHODS = (*SHARED, REF)
TOL = 1e-8


# --- children: one measurement each, JSON on stdout -----------------------------------------------------------


def _makers(log_psi, X) -> dict:
    """name → () -> batched Laplacian function."""
    import folx
    import jax
    import jax.numpy as jnp

    import multijet as mj
    from multijet.backends.jax_options import compiler_options

    def folx_lap(threshold, options=None):
        return lambda: jax.jit(
            jax.vmap(lambda x: folx.forward_laplacian(log_psi, sparsity_threshold=threshold)(x).laplacian),
            compiler_options=options,
        )

    return {
        "multijet sparse": lambda: mj.compile(mj.Laplacian(), log_psi, X, backend="jax"),
        "multijet dense": lambda: mj.compile(mj.Laplacian(), log_psi, X, backend="jax", sparsity=False),
        "folx sparse": folx_lap(6),
        "folx dense": folx_lap(0),
        OPTS: folx_lap(6, compiler_options()),
        "nested": lambda: jax.jit(jax.vmap(lambda x: jnp.trace(jax.hessian(log_psi)(x)))),
    }


def child_jax(a: dict) -> dict:
    from multijet.bench import enable_jax_x64

    enable_jax_x64()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from multijet.bench import wavefunctions

    sys.path.insert(0, str(HERE))
    from engine_old_vs_new import _interleave

    make_wf = getattr(wavefunctions, a["wf"])
    methods = a["methods"]
    # one-off warm-up (first trace/compile in the process, imports), 2 electrons, discarded
    x2 = jnp.asarray(np.random.default_rng(9).standard_normal((2, 6)))
    for name in methods:
        jax.block_until_ready(_makers(make_wf(2, seed=9), x2)[name]()(x2))
    log_psi = make_wf(a["n"], seed=0)
    X = jnp.asarray(np.random.default_rng(1).standard_normal((a["N"], 3 * a["n"])))
    builds, fns, vals = {}, {}, {}
    for name, make in _makers(log_psi, X).items():
        if name not in methods:
            continue
        t = time.perf_counter()
        fn = make()
        vals[name] = np.asarray(jax.block_until_ready(fn(X))).ravel().tolist()
        builds[name], fns[name] = time.perf_counter() - t, fn
    # at least `reps` repetitions, more for fast calls (about `budget_s` of timed calls in all, at most 200)
    t = time.perf_counter()
    for fn in fns.values():
        jax.block_until_ready(fn(X))
    one = max(time.perf_counter() - t, 1e-6)
    reps = int(min(200, max(a["reps"], a.get("budget_s", 0.0) / one)))
    times = _interleave(fns, lambda fn: jax.block_until_ready(fn(X)), reps)
    return {"times": times, "build_s": builds, "values": vals}


# --- parent ------------------------------------------------------------------------------------------------------


def run_child(cfg: dict, cpu: int | None, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "jax", "--child-config", json.dumps(cfg)]
    return child_runs.run_child(cmd, child_env(), cpu, timeout)


def measure_cell(wf: str, n: int, cfg: dict, cpu: int | None, timeout: float, eng, log: list) -> dict:
    """One round of one (wavefunction, n): the shared child, then nested; per method times, builds, values or
    a status ("timeout" / "error")."""
    cell: dict = {"times": {}, "build_s": {}, "values": {}, "status": {}}
    groups = [list(SHARED), [REF]]
    while groups:
        methods = groups.pop(0)
        ccfg = {"wf": wf, "n": n, "N": cfg["N"], "reps": cfg["reps"], "budget_s": cfg["budget_s"], "methods": methods}
        c = run_child(ccfg, cpu, timeout)
        log.append({"wf": wf, "n": n, "methods": methods, **{k: v for k, v in c.items() if k != "result"}})
        print(f"  {wf} n={n:<3} {'+'.join(methods):<40} {c['wall_s']:6.1f} s {c.get('error', 'ok')[:200]}", flush=True)
        if "error" in c and len(methods) > 1:
            groups = [[m] for m in methods] + groups  # find out which method blocks or fails
            continue
        for m in methods:
            if "error" in c:
                cell["status"][m] = "timeout" if c["error"] == "timeout" else "error"
            else:
                for part in ("times", "build_s", "values"):
                    cell[part][m] = c["result"][part][m]
    v = cell["values"]
    ref = REF if REF in v else ALT_REF if ALT_REF in v else None
    cell["reference"] = ref
    cell["errors"] = {m: _rel_err(x, v[ref]) for m, x in v.items()} if ref else {}
    return cell


def summarise(rounds: list[dict], cfg: dict, eng) -> dict:
    """Per (wavefunction, n, method): ms per configuration (min over rounds of the child's min; median over
    rounds), build (median, min), ratio to folx sparse per round (min/min) with median and spread."""
    out: dict = {}
    N = cfg["N"]
    for wf in cfg["wavefunctions"]:
        for n in cfg["electrons"]:
            cells = [r[f"{wf}|{n}"] for r in rounds if f"{wf}|{n}" in r]
            e: dict = {"methods": {}, "reference": [c["reference"] for c in cells]}
            for m in METHODS:
                per = [c for c in cells if m in c["times"]]
                if not per:
                    stat = [c["status"].get(m) for c in cells if m in c["status"]]
                    e["methods"][m] = {"status": stat[0] if stat else "n/a"}
                    continue
                row = {
                    "ms_per_x_min": min(c["times"][m]["min_ms"] for c in per) / N,
                    "ms_per_x_median": statistics.median(c["times"][m]["min_ms"] for c in per) / N,
                    "build_s_median": statistics.median(c["build_s"][m] for c in per),
                    "build_s_min": min(c["build_s"][m] for c in per),
                    "rounds": len(per),
                    "timeouts": sum(c["status"].get(m) == "timeout" for c in cells),
                    "max_rel_error": max((c["errors"][m] for c in per if m in c["errors"]), default=None),
                }
                ratios = [c["times"][m]["min_ms"] / c["times"][BASE]["min_ms"] for c in per if BASE in c["times"]]
                if ratios:
                    row["ratio_to_base"] = statistics.median(ratios)
                    row["ratio_spread"] = eng._spread(ratios)
                builds = [c["build_s"][m] / c["build_s"][BASE] for c in per if BASE in c["build_s"]]
                if builds:
                    row["build_ratio_to_base"] = statistics.median(builds)
                e["methods"][m] = row
            out[f"{wf}|{n}"] = e
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, 1 with --quick)")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions per method inside a child")
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of timed calls per child for fast calls")
    ap.add_argument("--N", type=int, default=16, help="configurations per batch (default %(default)s)")
    ap.add_argument("--electrons", default="8,16,32")
    ap.add_argument("--wavefunctions", default=",".join(WAVEFUNCTIONS))
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin the children to (default: the last one)")
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per child before it is killed")
    ap.add_argument("--quick", action="store_true", help="n=8 only, one round, 2 repetitions")
    ap.add_argument("--out", type=Path, default=OUT, help="output stem (.json, .md, .png); default %(default)s")
    ap.add_argument("--note", action="append", default=[], help="a note for the markdown (repeatable)")
    ap.add_argument("--render", type=Path, help="re-render the markdown and plot of this results JSON and stop")
    ap.add_argument("--child", choices=["jax"], help=argparse.SUPPRESS)
    ap.add_argument("--child-config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_jax(json.loads(args.child_config))))
        return
    if args.render:
        res = json.loads(args.render.read_text())
        res["notes"] = [*res.get("notes", []), *args.note]
        write_outputs(res, args.out)
        return
    eng = engine_helpers()
    cfg = {
        "rounds": args.rounds or (1 if args.quick else 3),
        "reps": 2 if args.quick else args.reps,
        "budget_s": 1.0 if args.quick else args.budget,
        "N": args.N,
        "electrons": [8] if args.quick else [int(x) for x in args.electrons.split(",") if x.strip()],
        "wavefunctions": [w for w in args.wavefunctions.split(",") if w.strip()],
        "wavefunction_kwargs": "defaults (hidden=32; ferminet_like and per_electron_like ndet=1; psiformer_like "
        "heads=2, layers=2), seed 0",
        "inputs": "standard normal, numpy default_rng(1), shape (N, 3n)",
        "dtype": "float64",
        "threads": 1,
        "timeout_s": args.timeout,
        "tolerance": TOL,
    }
    cpu = args.cpu if args.cpu is not None else (os.cpu_count() or 1) - 1
    from multijet.bench import machine_info

    res: dict = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "rev": eng._git(["rev-parse", "--short", "HEAD"], REPO),
        "config": cfg,
        "machine": {**machine_info(), "pinned_cpu": cpu if shutil.which("taskset") else None},
        "uptime_start": uptime(),
        "rounds": [],
        "children": [],
        "notes": list(args.note),
    }
    print(res["uptime_start"], flush=True)
    t_start = time.perf_counter()
    for r in range(cfg["rounds"]):
        rnd: dict = {}
        for wf in cfg["wavefunctions"]:
            for n in cfg["electrons"]:
                log: list = []
                rnd[f"{wf}|{n}"] = measure_cell(wf, n, cfg, cpu, args.timeout, eng, log)
                res["children"] += [{"round": r, **c} for c in log]
        res["rounds"].append(rnd)
        print(f"round {r} done after {(time.perf_counter() - t_start) / 60:.1f} min", flush=True)
    res["total_min"] = (time.perf_counter() - t_start) / 60
    res["uptime_end"] = uptime()
    res["summary"] = summarise(res["rounds"], cfg, eng)
    write_outputs(res, args.out)
    print(args.out.with_suffix(".md").read_text())


# --- output ------------------------------------------------------------------------------------------------------


def _fmt_row(n: str, m: str, row: dict) -> str:
    if "status" in row:
        return f"| {n} | {m} | {row['status']} | | | |"
    ratio = (
        f"{row['ratio_to_base']:.2f} [{row['ratio_spread'][0]:.2f}–{row['ratio_spread'][2]:.2f}]"
        if "ratio_to_base" in row
        else "n/a"
    )
    bratio = f" ({row['build_ratio_to_base']:.2f}×)" if "build_ratio_to_base" in row else ""
    err = row["max_rel_error"]
    err_s = "n/a" if err is None else f"{err:.1e}" + (" **> 1e-8**" if err > TOL else "")
    if row.get("timeouts"):
        err_s += f" ({row['timeouts']} timeout(s))"
    return (
        f"| {n} | {m} | {row['ms_per_x_min']:.3f} ({row['ms_per_x_median']:.3f}) | {ratio} "
        f"| {row['build_s_median']:.2f}{bratio} | {err_s} |"
    )


def markdown(res: dict) -> str:
    cfg, m, s = res["config"], res["machine"], res["summary"]
    v = m.get("versions", {})
    walls = [c["wall_s"] for c in res["children"]]
    timeouts = [c for c in res["children"] if c.get("error") == "timeout"]
    L = [
        "# Quantum Monte Carlo wavefunctions (issue 11): Laplacian of log|ψ|, multijet against folx and nested "
        "jax.hessian",
        "",
        f"- Date: {res['date']}, commit `{res['rev']}`; `{res['command']}`; {sum(walls) / 60:.1f} min of children "
        f"({res.get('total_min', 0):.1f} min wall).",
        f"- Machine: {m.get('cpu')}, {m.get('cores')} CPUs; Python {m.get('python')}, JAX {v.get('jax')}, "
        f"folx {_version('folx')}. Load: `{res['uptime_start']}` at the start, `{res['uptime_end']}` at the end "
        "(the cores are shared with other sessions, so absolute times are noisy; ratios come from one process).",
        f"- Settings: JAX jitted, {cfg['dtype']}, every child a fresh process pinned to CPU {m.get('pinned_cpu')} "
        f"with one thread, timeout {cfg['timeout_s']:.0f} s per child; N = {cfg['N']} configurations per batch "
        f"({cfg['inputs']}); wavefunctions from `multijet.bench.wavefunctions` with {cfg['wavefunction_kwargs']}; "
        f"x of dimension 3n. {cfg['rounds']} rounds; in each child at least {cfg['reps']} interleaved repetitions per "
        f"method (more for fast calls: about {cfg.get('budget_s', 0):g} s of timed calls, at most 200) after the build "
        "(multijet sparse and dense, folx sparse and dense share one child; nested has its own).",
        "- ms per configuration: one batch call / N, min over the child's repetitions; min over rounds (median "
        "over rounds in parentheses). × folx sparse: median over rounds of the per-round ratio of minima "
        "[min–max]. Build: construction + jit compile + first call, median over rounds (ratio to folx sparse's).",
        "- Agreement: largest relative difference (max |a − b| / max(1, max |b|)) with nested jax.hessian "
        "(folx dense where nested timed out); required ≤ 1e-8.",
        "",
    ]
    for wf in cfg["wavefunctions"]:
        L += [
            f"## {wf}",
            "",
            "| n | method | ms per configuration | × folx sparse [spread] | build [s] | max rel. diff. |",
            "|---|---|---|---|---|---|",
        ]
        for key, e in s.items():
            if key.split("|")[0] == wf:
                L += [_fmt_row(key.split("|")[1], meth, row) for meth, row in e["methods"].items()]
        L.append("")
    L += [
        "## Target (issue 11)",
        "",
        "multijet sparse ≤ 0.8× folx sparse per configuration at ≥ 16 electrons, and its compile time ≤ folx "
        "sparse's:",
        "",
    ]
    for key, e in s.items():
        d = e["methods"].get("multijet sparse", {})
        if int(key.split("|")[1]) >= 16 and "ratio_to_base" in d:
            met = d["ratio_to_base"] <= 0.8 and d.get("build_ratio_to_base", 2.0) <= 1.0
            L.append(
                f"- {key.replace('|', ', n=')}: multijet sparse / folx sparse = {d['ratio_to_base']:.2f} (time), "
                f"{d.get('build_ratio_to_base', float('nan')):.2f} (build): {'met' if met else '**not met**'}."
            )
    if timeouts:
        L += ["", "## Timeouts", ""] + [
            f"- round {c['round']}: {c['wf']} n={c['n']} {'+'.join(c['methods'])} (after {c['wall_s']:.0f} s)"
            for c in timeouts
        ]
    if res.get("notes"):
        L += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(L) + "\n"


def _version(pkg: str) -> str:
    try:
        from importlib.metadata import version

        return version(pkg)
    except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
        return "n/a"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, wfs = res["summary"], res["config"]["wavefunctions"]
    fig, axes = plt.subplots(1, len(wfs), figsize=(6 * len(wfs), 4.5), squeeze=False)
    for ax, wf in zip(axes[0], wfs, strict=True):
        keys = [k for k in s if k.split("|")[0] == wf]
        for meth in METHODS:
            pts = sorted(
                (int(k.split("|")[1]), s[k]["methods"][meth]["ms_per_x_min"])
                for k in keys
                if "ms_per_x_min" in s[k]["methods"].get(meth, {})
            )
            if pts:
                style = "-" if meth.startswith("multijet") else "--"
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=meth)
        ax.set_yscale("log")
        ax.set_xscale("log", base=2)
        ax.set_xticks(res["config"]["electrons"], [str(n) for n in res["config"]["electrons"]])
        ax.set_xlabel("electrons n (x of dimension 3n)")
        ax.set_ylabel("time per configuration [ms]")
        ax.set_title(f"Δ log|ψ|, {wf}, JAX jit, float64, one thread")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_outputs(res: dict, stem: Path) -> None:
    child_runs.write_outputs(res, stem, markdown, plot)


if __name__ == "__main__":
    main()
