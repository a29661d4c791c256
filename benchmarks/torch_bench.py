"""PyTorch backend benchmarks: collapsed vs standard Taylor mode vs nested torch.func AD.

The paper's network: tanh MLP D → 768 → 768 → 512 → 512 → 1, float64, CPU. All methods of one table run
interleaved (round-robin, medians), so machine load affects them alike. Peak memory is the growth of the
maximum resident set size of a fresh subprocess that runs one differentiable evaluation (graph kept).
The paper's own code (torch-jet) cannot be fetched here, so there is no comparison with it.

    python benchmarks/torch_bench.py [--quick] [--out benchmarks/results/torch.json]   # --quick: fewer
                                                                                       # repetitions, N=64 only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from torch.func import hessian, jacrev, jvp, vmap

import multijet as mj

HERE = os.path.dirname(os.path.abspath(__file__))


def paper_mlp(D: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    widths = [D, 768, 768, 512, 512, 1]
    layers: list[torch.nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(torch.nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers).double()


def nested_hessian_trace(net):
    return lambda X: vmap(lambda x: torch.diagonal(hessian(net)(x), dim1=-2, dim2=-1).sum(-1))(X)


def nested_hvp(net, D):
    E = torch.eye(D, dtype=torch.float64)

    def one(x):
        return vmap(lambda v: jvp(jacrev(net), (x,), (v,))[1] @ v)(E).sum(0)

    return lambda X: vmap(one)(X)


def interleaved(fns: dict, X, reps: int, grad: bool = False) -> dict:
    times = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            if grad:
                with torch.enable_grad():
                    fn(X).sum().backward()
            else:
                with torch.no_grad():
                    fn(X)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v[1:] if len(v) > 2 else v) for k, v in times.items()}


def laplacian_table(N: int, reps: int) -> dict:
    D = 50
    net = paper_mlp(D)
    X = torch.randn(N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    fns = {
        "collapsed": mj.compile(mj.Laplacian(), net, X, backend="torch"),
        "standard": mj.compile(mj.Laplacian(), net, X, backend="torch", method="standard"),
        "nested (torch.func.hessian trace)": nested_hessian_trace(net),
        "nested (forward-over-reverse HVPs)": nested_hvp(net, D),
    }
    ref = fns["nested (torch.func.hessian trace)"](X[:4])
    assert torch.allclose(fns["collapsed"](X[:4]), ref, rtol=1e-8, atol=1e-9)
    t = interleaved(fns, X, reps)
    best_nested = min(v for k, v in t.items() if k.startswith("nested"))
    return {
        "N": N,
        "D": D,
        "seconds": t,
        "collapsed/best_nested": t["collapsed"] / best_nested,
        "collapsed/standard": t["collapsed"] / t["standard"],
    }


def bilaplacian_table(N: int, reps: int) -> dict:
    D = 5
    net = paper_mlp(D)
    X = torch.randn(N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    fns = {
        "collapsed": mj.compile(mj.Bilaplacian(), net, X, backend="torch"),
        "standard": mj.compile(mj.Bilaplacian(), net, X, backend="torch", method="standard"),
        "nested (4 nested jvps per direction)": mj.compile(mj.Bilaplacian(), net, X, backend="torch", method="nested"),
    }
    t = interleaved(fns, X, reps)
    plan = fns["collapsed"].plan  # the plan the timed program runs (torch keeps the direction-set route)
    if not plan.groups:  # a composition route has no direction set of its own: describe the direction set
        plan = mj.plan(mj.Bilaplacian(), D, route="directions")
    R = plan.groups[0].size
    return {
        "N": N,
        "D": D,
        "seconds": t,
        "collapsed/nested": t["collapsed"] / t["nested (4 nested jvps per direction)"],
        "collapsed/standard": t["collapsed"] / t["standard"],
        "directions": R,
        "paper_interpolation_directions": 1.5 * D * D,
        "arrays_collapsed": plan.arrays("collapsed"),
        "arrays_standard": plan.arrays("standard"),
        "arrays_collapsed_paper_set": 1 + 3 * 1.5 * D * D + 1,
    }


def randomised_table(reps: int, samples_list) -> list:
    rows = []
    for op, D, N in [("laplacian", 50, 64), ("bilaplacian", 5, 16)]:
        net = paper_mlp(D)
        X = torch.randn(N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        spec = mj.Laplacian() if op == "laplacian" else mj.Bilaplacian()
        exact = mj.compile(spec, net, X, backend="torch")
        with torch.no_grad():
            ex = exact(X)
        for S in samples_list:
            fns = {
                m: mj.compile(spec, net, X, backend="torch", method=m, samples=S, seed=0)
                for m in ("collapsed", "standard", "nested")
            }
            t = interleaved(fns, X, reps)
            with torch.no_grad():
                est = torch.stack([mj.apply(spec, net, X[:4], backend="torch", samples=S, seed=s) for s in range(8)])
            rel = ((est - ex[:4]).pow(2).mean().sqrt() / ex[:4].abs().mean()).item()
            rows.append({"operator": op, "D": D, "N": N, "samples": S, "seconds": t, "rel_rms_error": rel})
    return rows


def build_times() -> dict:
    out = {}
    for name, spec, D in [("laplacian_D50", mj.Laplacian(), 50), ("bilaplacian_D5", mj.Bilaplacian(), 5)]:
        net = paper_mlp(D)
        X = torch.randn(4, D, dtype=torch.float64)
        samples = []
        for _ in range(4):
            t0 = time.perf_counter()
            mj.compile(spec, net, X, backend="torch")
            samples.append(time.perf_counter() - t0)
        out[name] = {"first_in_process": samples[0], "warm_median": statistics.median(samples[1:])}
    return out


def _memory_child(method: str, N: int) -> None:
    D = 50
    net = paper_mlp(D)
    X = torch.randn(N, D, dtype=torch.float64)
    fn = (
        nested_hessian_trace(net)
        if method == "nested"
        else mj.compile(mj.Laplacian(), net, X, backend="torch", method=method)
    )
    with torch.no_grad():
        fn(X[:2])  # warm up code paths
    import threading

    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * page

    base, peak, done = rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.0005)

    th = threading.Thread(target=sample)
    th.start()
    out = fn(X)  # differentiable: the graph (activations) is kept
    peak[0] = max(peak[0], rss())
    done.set()
    th.join()
    print(json.dumps({"kib": (peak[0] - base) / 1024, "ok": bool(out.requires_grad)}))


def memory_table(N: int) -> dict:
    res = {}
    for method in ("collapsed", "standard", "nested"):
        p = subprocess.run(
            [sys.executable, __file__, "--memory-child", method, str(N)], capture_output=True, text=True, check=True
        )
        kib = json.loads(p.stdout.strip().splitlines()[-1])["kib"]
        res[method] = {"MiB_per_datum": kib / 1024 / N}
    res["collapsed/nested"] = res["collapsed"]["MiB_per_datum"] / res["nested"]["MiB_per_datum"]
    return res


def markdown(results: dict) -> str:
    lines = [
        "| table | N | collapsed | standard | best nested | collapsed/nested | collapsed/standard |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["laplacian"]:
        t = row["seconds"]
        best = min(v for k, v in t.items() if k.startswith("nested"))
        lines.append(
            f"| Laplacian D=50 | {row['N']} | {t['collapsed'] * 1e3:.0f} ms | {t['standard'] * 1e3:.0f} ms | "
            f"{best * 1e3:.0f} ms | {row['collapsed/best_nested']:.2f} | {row['collapsed/standard']:.2f} |"
        )
    b = results["bilaplacian"]
    t = b["seconds"]
    lines.append(
        f"| bi-Laplacian D=5 | {b['N']} | {t['collapsed'] * 1e3:.0f} ms | {t['standard'] * 1e3:.0f} ms | "
        f"{t['nested (4 nested jvps per direction)'] * 1e3:.0f} ms | {b['collapsed/nested']:.2f} | "
        f"{b['collapsed/standard']:.2f} |"
    )
    lines += [
        "",
        "| randomised | D | N | S | collapsed | standard | nested | rel. RMS error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["randomised"]:
        t = r["seconds"]
        lines.append(
            f"| {r['operator']} | {r['D']} | {r['N']} | {r['samples']} | {t['collapsed'] * 1e3:.1f} ms | "
            f"{t['standard'] * 1e3:.1f} ms | {t['nested'] * 1e3:.1f} ms | {r['rel_rms_error']:.2f} |"
        )
    m = results.get("memory")
    if m:
        lines += [
            "",
            f"Differentiable peak memory (Laplacian, N={results['memory_N']}), MiB per datum: collapsed "
            f"{m['collapsed']['MiB_per_datum']:.2f}, standard {m['standard']['MiB_per_datum']:.2f}, nested "
            f"{m['nested']['MiB_per_datum']:.2f} (collapsed/nested {m['collapsed/nested']:.2f}).",
        ]
    bt = results["build"]
    lines += [
        "",
        f"Build (capture + emit): collapsed Laplacian D=50 {bt['laplacian_D50']['warm_median'] * 1e3:.0f} ms "
        f"(first in a process {bt['laplacian_D50']['first_in_process']:.2f} s, torch's one-off make_fx warm-up); "
        f"bi-Laplacian D=5 {bt['bilaplacian_D5']['warm_median'] * 1e3:.0f} ms.",
        f"Bi-Laplacian directions at D=5: {b['directions']} (multijet's D² set) vs "
        f"{b['paper_interpolation_directions']:.1f} "
        f"(the paper's 1.5·D² interpolation set); collapsed arrays per node {b['arrays_collapsed']} vs "
        f"{b['arrays_collapsed_paper_set']:.0f}.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "torch.json"))
    ap.add_argument("--memory-child", nargs=2)
    ap.add_argument("--only", help="comma-separated tables to re-run, merged into an existing --out JSON")
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    if args.memory_child:
        _memory_child(args.memory_child[0], int(args.memory_child[1]))
        return
    reps = 3 if args.quick else 7
    batches = (64,) if args.quick else (64, 256)
    results: dict = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "load_average_at_start": os.getloadavg(),
        },
        "note": "interleaved medians on a shared 2-core CPU; torch-jet (the paper's code) could not be fetched.",
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    steps = [
        ("build", build_times),
        ("laplacian", lambda: [laplacian_table(N, reps if N == 64 else max(3, reps - 2)) for N in batches]),
        ("bilaplacian", lambda: bilaplacian_table(16, reps)),
        ("memory", lambda: memory_table(64)),
        ("randomised", lambda: randomised_table(max(3, reps - 2), (4, 16) if args.quick else (4, 16, 64))),
    ]
    results["memory_N"] = 64
    if args.only:
        with open(args.out) as fh:
            old = json.load(fh)
        old["machine"], old["note"] = results["machine"], results["note"]
        results = old
        steps = [(k, fn) for k, fn in steps if k in args.only.split(",")]
    for key, fn in steps:
        results[key] = fn()
        print(key, json.dumps(results[key], default=float)[:800], flush=True)
        with open(args.out, "w") as fh:  # written after every table, so a partial run leaves results
            json.dump(results, fh, indent=2)
    print(markdown(results))


if __name__ == "__main__":
    main()
