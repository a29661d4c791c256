"""Bi-Laplacian routes (issue 10, "Composition"): multijet's direction-set and composition routes and its default
against folx∘folx and jax.hessian∘jax.hessian on JAX, and against the paper's package (``jet-for-pytorch``) on
torch, in one interleaved run.

    ~/.pyenv/versions/3.12.1/bin/python -m venv /tmp/venv312           # the paper's package needs Python ≥ 3.12
    /tmp/venv312/bin/pip install jet-for-pytorch                       # torch from PyPI (a CPU wheel if reachable)
    python benchmarks/bilaplacian_routes.py                            # about 15 minutes on a loaded 2-core machine
    python benchmarks/bilaplacian_routes.py --quick                    # a smoke run (D=5 only, one round)
    python benchmarks/bilaplacian_routes.py --render benchmarks/results/bilaplacian_routes.json   # md + png only

Without ``--paper-python`` (default ``/tmp/venv312/bin/python``) present, the torch comparison with the paper's
package is left out.

Every measurement runs in a fresh subprocess pinned to one CPU (``taskset``) with one thread (``OMP_NUM_THREADS=1``,
``torch.set_num_threads(1)``, XLA's Eigen pool off), float64, N points, the paper's MLP (D → 768 → 768 → 512 → 512
→ 1, tanh; ``multijet.bench.make_program``, weights seed 0, inputs seed 1). A round runs, for every D, one JAX
child (builds every method, checks that all agree with jax.hessian∘jax.hessian, times them interleaved) and,
for the torch D's, a multijet torch child and a paper-package child (same weights and inputs from one .npz,
order alternating between rounds). The build time is ``mj.compile`` (or folx's/the paper's construction) plus
the first call, one per child and so one per round, after a discarded warm-up build on a tiny network in the
same process (the frameworks' one-off first-trace costs). Ratios are per round (each round's two times come from
processes run back to back); the summary gives their median and [min, max] over rounds.

- JAX: ``mj.compile(mj.Bilaplacian(), f, X, backend="jax", route=...)`` for ``"directions"``, ``"composition"``
  and the default (the route the planner picks is recorded), folx∘folx (``folx.forward_laplacian`` of a function
  returning folx's Laplacian, ``sparsity_threshold=0``, under ``jax.jit(jax.vmap(...))``), and the jitted trace of
  ``jax.hessian`` of the trace of ``jax.hessian`` (the reference; timed in the first round only).
- torch (``torch.no_grad()``): ``mj.compile`` with each route, against the paper's collapsed bi-Laplacian exactly
  as its own benchmark builds it (the lines of ``bilaplacian_function`` in
  ``jet/exp/exp01_benchmark_laplacian/execute.py`` with strategy ``"jet_simplified"``: ``jet.bilaplacian(collapsed=
  True)``, ``capture_graph``, common-subexpression elimination, ``torch.vmap``), run by ``--paper-python``.

Writes ``benchmarks/results/bilaplacian_routes.{json,md,png}`` (``--out`` changes the stem).
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

OUT = HERE / "results" / "bilaplacian_routes"
NPZ = Path("/tmp/bilaplacian_routes_inputs.npz")
ROUTES = ("directions", "composition", "default")
JAX_REF = "jax.hessian∘jax.hessian"
FOLX = "folx∘folx"
PAPER = "paper jet-for-pytorch"


# --- children: one measurement each, JSON on stdout -----------------------------------------------------------


def _loop(fns: dict, run, reps: int) -> dict:
    """engine_old_vs_new's interleaved loop (plain Python, so the paper's venv can run it too)."""
    return engine_helpers()._interleave(fns, run, reps)


def _mj_kw(route: str) -> dict:
    return {} if route == "default" else {"route": route}


def child_jax(a: dict) -> dict:
    import jax

    from multijet.bench import enable_jax_x64

    enable_jax_x64()
    import folx
    import jax.numpy as jnp
    import numpy as np

    import multijet as mj
    from multijet.bench import PAPER_WIDTHS, make_input, make_program

    D = a["D"]
    f1 = make_program("jax", D, PAPER_WIDTHS, "float64")
    X = make_input("jax", a["N"], D, "float64")

    def f(x):
        return f1(x)[0]

    # one-off warm-up (JAX's first trace/compile in a process, multijet's and folx's imports), discarded
    g = make_program("jax", 2, (4,), "float64", seed=9)
    x2 = make_input("jax", 2, 2, "float64")
    jax.block_until_ready(mj.compile(mj.Bilaplacian(), lambda x: g(x)[0], x2, backend="jax")(x2))
    jax.block_until_ready(jax.vmap(lambda x: folx.forward_laplacian(lambda y: g(y)[0])(x).laplacian)(x2))
    builds, fns, vals, routes = {}, {}, {}, {}

    def build(name, make):
        t = time.perf_counter()
        fn = make()
        vals[name] = np.asarray(jax.block_until_ready(fn(X))).ravel().tolist()
        builds[name] = time.perf_counter() - t
        fns[name] = fn
        return fn

    for route in ROUTES:
        comp = build(
            f"multijet {route}", lambda r=route: mj.compile(mj.Bilaplacian(), f, X, backend="jax", **_mj_kw(r))
        )
        routes[f"multijet {route}"] = str(getattr(comp.plan, "route", None) or "directions")

    def folx_folx():
        inner = folx.forward_laplacian(f, sparsity_threshold=0)
        outer = folx.forward_laplacian(lambda x: inner(x).laplacian, sparsity_threshold=0)
        return jax.jit(jax.vmap(lambda x: outer(x).laplacian))

    build(FOLX, folx_folx)
    if a["reference"]:

        def lap(x):
            return jnp.trace(jax.hessian(f)(x))

        build(JAX_REF, lambda: jax.jit(jax.vmap(lambda x: jnp.trace(jax.hessian(lap)(x)))))
    timed = {k: v for k, v in fns.items() if k != JAX_REF}
    times = _loop(timed, lambda fn: jax.block_until_ready(fn(X)), a["reps"])
    if a["reference"]:
        times.update(_loop({JAX_REF: fns[JAX_REF]}, lambda fn: jax.block_until_ready(fn(X)), 1))
    return {"times": times, "build_s": builds, "values": vals, "routes": routes}


def _torch_layers(D: int):
    import numpy as np
    import torch

    z = np.load(NPZ)
    mods: list = []
    for i in range(5):
        W, b = z[f"D{D}_W{i}"], z[f"D{D}_b{i}"]
        lin = torch.nn.Linear(W.shape[1], W.shape[0]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W))
            lin.bias.copy_(torch.from_numpy(b))
        mods.append(lin)
        if i < 4:
            mods.append(torch.nn.Tanh())
    return torch.nn.Sequential(*mods), torch.from_numpy(z[f"D{D}_X"])


def _torch_child(a: dict, makers: dict) -> dict:
    """Build (construction + first call), then time interleaved under ``torch.no_grad()``. The first maker is
    first run on a tiny network (torch's one-off make_fx / fake-tensor warm-up), discarded."""
    import torch

    torch.set_num_threads(1)
    tiny = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    x2 = torch.zeros(2, 2, dtype=torch.float64)
    with torch.no_grad():
        next(iter(makers.values()))(tiny, x2)[0](x2)
    net, X = _torch_layers(a["D"])
    builds, fns, vals, routes = {}, {}, {}, {}
    for name, make in makers.items():
        t = time.perf_counter()
        fn, route = make(net, X)
        with torch.no_grad():
            vals[name] = fn(X).reshape(-1).tolist()
        builds[name], fns[name], routes[name] = time.perf_counter() - t, fn, route

    def run(fn):
        with torch.no_grad():
            fn(X)

    return {"times": _loop(fns, run, a["reps"]), "build_s": builds, "values": vals, "routes": routes}


def child_torch(a: dict) -> dict:
    import multijet as mj

    def maker(route):
        def make(net, X):
            comp = mj.compile(mj.Bilaplacian(), net, X, backend="torch", **_mj_kw(route))
            return comp, str(getattr(comp.plan, "route", None) or "directions")

        return make

    return _torch_child(a, {f"multijet {r}": maker(r) for r in ROUTES})


def child_paper(a: dict) -> dict:
    import torch
    from jet import bilaplacian, common_subexpression_elimination
    from jet.tracing import capture_graph

    def make(net, X):
        """The lines of ``bilaplacian_function(net, X, "jet_simplified")`` in the package's own benchmark
        (``jet/exp/exp01_benchmark_laplacian/execute.py``, whose module imports jax and einops at the top)."""
        dummy_x = X[0]
        bilap_fn = bilaplacian(net, (dummy_x,), randomization=None, collapsed=True)
        bilap_fn, _ = capture_graph(bilap_fn, (dummy_x,))
        common_subexpression_elimination(bilap_fn.graph)
        bilap_fn.recompile()
        return torch.vmap(bilap_fn, randomness="error"), "1.5·D² interpolation set, collapsed"

    out = _torch_child(a, {PAPER: make})
    out["torch"] = torch.__version__
    return out


CHILDREN = {"jax": child_jax, "torch": child_torch, "paper": child_paper}


# --- parent ------------------------------------------------------------------------------------------------------


def write_inputs(Ds: list[int], N: int) -> None:
    import numpy as np

    from multijet.bench import PAPER_WIDTHS, make_input, mlp_layers

    arrays = {}
    for D in Ds:
        for i, (W, b) in enumerate(mlp_layers(D, PAPER_WIDTHS, 0)):
            arrays[f"D{D}_W{i}"], arrays[f"D{D}_b{i}"] = W.astype("float64"), b.astype("float64")
        arrays[f"D{D}_X"] = make_input("numpy", N, D, "float64")
    np.savez(NPZ, **arrays)


def run_child(kind: str, cfg: dict, python: str, cpu: int | None, timeout: float) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--child", kind, "--child-config", json.dumps(cfg)]
    return child_runs.run_child(cmd, child_env(with_src=kind != "paper"), cpu, timeout)


def check(res: dict, ref: str) -> dict[str, float]:
    """Largest relative disagreement of every method with ``ref``; raises beyond round-off (1e-9, float64)."""
    v = res["values"]
    errs = {k: _rel_err(x, v[ref]) for k, x in v.items()}
    if bad := {k: e for k, e in errs.items() if e > 1e-9}:
        raise AssertionError(f"methods disagree with {ref}: {bad}")
    return errs


def summarise(rounds: list[dict], cfg: dict, eng) -> dict:
    """Per (backend, D, method): min over rounds of the child's min, median over rounds of the child's median,
    build time (min, median); ratios to the comparison method per round, their median and spread."""
    out: dict = {}
    for backend, base in (("jax", FOLX), ("torch", PAPER)):
        for D in cfg["jax_dims"] if backend == "jax" else cfg["torch_dims"]:
            recs = [r[f"{backend}|{D}"] for r in rounds if f"{backend}|{D}" in r]
            if not recs:
                continue
            methods = list(recs[0]["times"])
            for r in recs[1:]:
                methods += [m for m in r["times"] if m not in methods]
            e: dict = {"base": base, "methods": {}, "routes": recs[0].get("routes", {})}
            for m in methods:
                per = [r for r in recs if m in r["times"]]
                row = {
                    "min_ms": min(r["times"][m]["min_ms"] for r in per),
                    "median_ms": statistics.median(r["times"][m]["median_ms"] for r in per),
                    "build_s_min": min(r["build_s"][m] for r in per if m in r["build_s"]),
                    "build_s_median": statistics.median(r["build_s"][m] for r in per if m in r["build_s"]),
                    "rounds": len(per),
                    "max_rel_error": max(r["errors"][m] for r in per),
                }
                ratios = [r["times"][m]["median_ms"] / r["times"][base]["median_ms"] for r in per if base in r["times"]]
                if ratios:
                    row["ratio_to_base"] = statistics.median(ratios)
                    row["ratio_spread"] = eng._spread(ratios)
                e["methods"][m] = row
            out[f"{backend}|{D}"] = e
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, 1 with --quick)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per method inside a child")
    ap.add_argument("--N", type=int, default=16, help="batch size (default %(default)s)")
    ap.add_argument("--jax-dims", default="5,10,20")
    ap.add_argument("--torch-dims", default="5,10")
    ap.add_argument("--paper-python", default="/tmp/venv312/bin/python", help="Python with jet-for-pytorch")
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin the children to (default: the last one)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per child before it is killed")
    ap.add_argument("--quick", action="store_true", help="D=5 only, one round, 2 repetitions")
    ap.add_argument("--out", type=Path, default=OUT, help="output stem (.json, .md, .png); default %(default)s")
    ap.add_argument("--note", action="append", default=[], help="a note for the markdown (repeatable)")
    ap.add_argument("--render", type=Path, help="re-render the markdown and plot of this results JSON and stop")
    ap.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--child-config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](json.loads(args.child_config))))
        return
    if args.render:
        res = json.loads(args.render.read_text())
        res["notes"] = [*res.get("notes", []), *args.note]
        write_outputs(res, args.out)
        return
    eng = engine_helpers()
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    cfg = {
        "rounds": args.rounds or (1 if args.quick else 3),
        "reps": 2 if args.quick else args.reps,
        "N": args.N,
        "jax_dims": [5] if args.quick else ints(args.jax_dims),
        "torch_dims": [5] if args.quick else ints(args.torch_dims),
        "dtype": "float64",
        "threads": 1,
    }
    paper = Path(args.paper_python).exists()
    cpu = args.cpu if args.cpu is not None else (os.cpu_count() or 1) - 1
    write_inputs(sorted(set(cfg["torch_dims"])), cfg["N"])
    from multijet.bench import machine_info

    res: dict = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "rev": eng._git(["rev-parse", "--short", "HEAD"], REPO),
        "config": cfg,
        "machine": {**machine_info(), "pinned_cpu": cpu if shutil.which("taskset") else None},
        "uptime_start": uptime(),
        "paper_python": args.paper_python if paper else None,
        "rounds": [],
        "children": [],
        "notes": list(args.note),
    }
    print(res["uptime_start"], flush=True)
    t_start = time.perf_counter()
    for r in range(cfg["rounds"]):
        rnd: dict = {}
        jobs = [("jax", D, sys.executable) for D in cfg["jax_dims"]]
        for D in cfg["torch_dims"]:
            pair = [("torch", D, sys.executable)] + ([("paper", D, args.paper_python)] if paper else [])
            jobs += pair if r % 2 == 0 else pair[::-1]
        for kind, D, python in jobs:
            ccfg = {"D": D, "N": cfg["N"], "reps": cfg["reps"], "reference": r == 0}
            c = run_child(kind, ccfg, python, cpu, args.timeout)
            res["children"].append({"round": r, "kind": kind, "D": D, **{k: v for k, v in c.items() if k != "result"}})
            print(f"round {r} {kind:<6} D={D:<3} {c['wall_s']:6.1f} s, load {c.get('loadavg_start')}", flush=True)
            if "error" in c:
                print(f"  failed: {c['error'][-1500:]}", flush=True)
                continue
            key = f"{'jax' if kind == 'jax' else 'torch'}|{D}"
            if kind == "jax":
                ref = JAX_REF if JAX_REF in c["result"]["values"] else FOLX
                c["result"]["errors"] = check(c["result"], ref)
                rnd[key] = c["result"]
            else:
                slot = rnd.setdefault(key, {"times": {}, "build_s": {}, "values": {}, "routes": {}})
                for part in ("times", "build_s", "values", "routes"):
                    slot[part].update(c["result"][part])
                if "torch" in c["result"]:
                    res["paper_torch"] = c["result"]["torch"]
        for key, slot in rnd.items():
            if key.startswith("torch"):
                slot["errors"] = check(slot, "multijet directions")
        res["rounds"].append(rnd)
        print(f"round {r} done after {(time.perf_counter() - t_start) / 60:.1f} min", flush=True)
    res["uptime_end"] = uptime()
    res["summary"] = summarise(res["rounds"], cfg, eng)
    write_outputs(res, args.out)
    print(args.out.with_suffix(".md").read_text())


# --- output ------------------------------------------------------------------------------------------------------


def markdown(res: dict) -> str:
    cfg, m, s = res["config"], res["machine"], res["summary"]
    v = m.get("versions", {})
    walls = [c["wall_s"] for c in res["children"]]
    L = [
        "# Bi-Laplacian routes: multijet's direction set, composition and default against folx∘folx and the paper's "
        "package",
        "",
        f"- Date: {res['date']}, commit `{res['rev']}`; `{res['command']}`; {sum(walls) / 60:.1f} min of children.",
        f"- Machine: {m.get('cpu')}, {m.get('cores')} CPUs; Python {m.get('python')}, torch {v.get('torch')}, "
        f"JAX {v.get('jax')}; paper package `jet-for-pytorch` 1.0.0 in a Python 3.12 venv with torch "
        f"{res.get('paper_torch', 'n/a')}.",
        f"- Load: `{res['uptime_start']}` at the start, `{res['uptime_end']}` at the end. The 2 cores are shared "
        "with other sessions' test runs and benchmarks, so absolute times are inflated and noisy; the ratios come "
        "from processes run back to back in the same round.",
        f"- Every child a fresh process pinned to CPU {m.get('pinned_cpu')}, one thread, {cfg['dtype']}, N = "
        f"{cfg['N']} points, the paper's MLP (D → 768 → 768 → 512 → 512 → 1, tanh). {cfg['rounds']} rounds; in "
        f"each child {cfg['reps']} interleaved repetitions per method after the build (construction + first call). "
        "ms: median over rounds of each child's median (min in parentheses). Ratio: median over rounds of the "
        "per-round ratio of medians, [min–max] over rounds. Build: median over rounds.",
        "- All values agree with the reference before timing (asserted, relative 1e-9): JAX with the jitted "
        "jax.hessian∘jax.hessian trace (first round) or folx∘folx, torch with multijet's direction set; the largest "
        "relative difference is in the last column.",
        "",
        "## JAX (jitted, float64): ratio to folx∘folx",
        "",
        "| D | method (route) | ms | × folx∘folx [spread] | build [s] | max rel. diff. |",
        "|---|---|---|---|---|---|",
    ]
    for backend in ("jax", "torch"):
        if backend == "torch":
            L += [
                "",
                "## torch (`torch.no_grad()`, float64, one thread): ratio to the paper's package",
                "",
                "| D | method (route) | ms | × paper package [spread] | build [s] | max rel. diff. |",
                "|---|---|---|---|---|---|",
            ]
        for key, e in s.items():
            if not key.startswith(backend):
                continue
            D = key.split("|")[1]
            for meth, row in e["methods"].items():
                route = e["routes"].get(meth)
                label = f"{meth} ({route})" if route and meth.startswith("multijet") else meth
                ratio = (
                    f"{row['ratio_to_base']:.2f} [{row['ratio_spread'][0]:.2f}–{row['ratio_spread'][2]:.2f}]"
                    if "ratio_to_base" in row
                    else "n/a"
                )
                if meth == JAX_REF:
                    ratio += " (first round only)"
                L.append(
                    f"| {D} | {label} | {row['median_ms']:.1f} ({row['min_ms']:.1f}) | {ratio} "
                    f"| {row['build_s_median']:.2f} | {row['max_rel_error']:.1e} |"
                )
    L += ["", "## Targets", ""]
    for key, e in s.items():
        D, d = key.split("|")[1], e["methods"].get("multijet default")
        if not d or "ratio_to_base" not in d:
            continue
        if key.startswith("jax"):
            ok = d["ratio_to_base"] <= 1.0
            L.append(
                f"- JAX D={D}: default route ({e['routes'].get('multijet default')}) / folx∘folx = "
                f"{d['ratio_to_base']:.2f} (target ≤ 1): {'met' if ok else 'not met'}."
            )
        else:
            best = min(
                (row["ratio_to_base"], meth) for meth, row in e["methods"].items() if meth.startswith("multijet")
            )
            L.append(
                f"- torch D={D}: multijet default ({e['routes'].get('multijet default')}) / paper package = "
                f"{d['ratio_to_base']:.2f}, best route ({best[1]}) {best[0]:.2f} (target ≤ 0.5 at D=5): "
                f"{'met' if d['ratio_to_base'] <= 0.5 else 'not met'}."
            )
    if res.get("notes"):
        L += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    return "\n".join(L) + "\n"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["summary"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, backend, title in (
        (axes[0], "jax", "JAX, jitted"),
        (axes[1], "torch", "torch, no_grad"),
    ):
        keys = [k for k in s if k.startswith(backend)]
        methods: list[str] = []
        for k in keys:
            methods += [m for m in s[k]["methods"] if m not in methods]
        for meth in methods:
            pts = [(int(k.split("|")[1]), s[k]["methods"][meth]["median_ms"]) for k in keys if meth in s[k]["methods"]]
            pts.sort()
            style = "--" if not meth.startswith("multijet") else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=meth)
        ax.set_yscale("log")
        ax.set_xlabel("input dimension D")
        ax.set_ylabel(f"time per batch of N={res['config']['N']} [ms]")
        ax.set_title(f"bi-Laplacian, {title}, float64, one thread")
        ax.set_xticks(sorted({int(k.split("|")[1]) for k in keys}))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.15), ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_outputs(res: dict, stem: Path) -> None:
    child_runs.write_outputs(res, stem, markdown, plot)


if __name__ == "__main__":
    main()
