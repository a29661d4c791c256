"""The paper's Table 1 on this machine: time and peak memory added per datum (exact) or per sample (randomised).

Rows: exact Laplacian and weighted Laplacian at D=50, bi-Laplacian at D=5, and their randomised versions; methods
nested / standard / collapsed; every installed backend. Network: the paper's tanh MLP D→768→768→512→512→1.
For each row the operator is timed at several batch sizes (or sample counts at a fixed batch) with interleaved
repetitions, peak memory is measured in one subprocess per configuration, and straight lines are fitted
(multijet.bench). Frameworks run with one thread each by default (``--threads``), so that other jobs on the
machine do not turn spin-waiting thread pools into noise. Writes ``table1.json``, ``table1.md`` and one PNG
per row into ``--out``.

    python benchmarks/table1.py                 # the full table (CPU-sized; about 5 minutes on 2 cores)
    python benchmarks/table1.py --quick         # a tiny smoke run of every row (a few minutes)
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

from multijet.bench import PAPER_WIDTHS, BenchConfig, machine_info, plot_bench, rerun_with_threads, run_bench
from multijet.timing import slope_resolved

HERE = Path(__file__).resolve().parent

# The paper's GPU figures (NVIDIA RTX 6000, PyTorch), only the few cells whose values are known here; every other
# cell is "n/a" rather than a guess. Keys: (row, backend, method) → {metric: value}.
PAPER: dict[tuple[str, str, str], dict[str, float]] = {
    # the differentiable peak memory of the exact Laplacian on the paper's network, collapsed vs nested:
    # 2.06 vs 4.42 MiB per datum on a GPU.
    ("laplacian", "torch", "collapsed"): {"mem_differentiable": 2.06},
    ("laplacian", "torch", "nested"): {"mem_differentiable": 4.42},
    # the exact bi-Laplacian at D=5 with collapsed Taylor mode (the paper's interpolation scheme) in PyTorch.
    ("bilaplacian", "torch", "collapsed"): {"time": 0.686},
}
PAPER_NOTES = [
    "Paper figures are from an NVIDIA RTX 6000 GPU (24 GiB); only the few known here are shown, every other "
    "paper cell is n/a.",
    "2.06 / 4.42 MiB per datum: differentiable peak memory of the exact Laplacian, collapsed vs nested.",
    "0.686 ms per datum: exact bi-Laplacian at D=5, collapsed interpolation in PyTorch; the paper reports "
    "0.289 ms per datum for nested forward Laplacians Δ(Δf) in JAX, a route not in this table.",
]


def rows(quick: bool) -> list[tuple[str, str, BenchConfig]]:
    """(key, title, config) of each row of Table 1. Quick: a tiny network and two sizes."""
    if quick:
        net = {"widths": (16, 16), "repeats": 3, "warmup": 1, "budget": 2.0}
        d_lap, d_bi = 4, 3
        exact, rand = (1, 2), (1, 2)
        batch_rand = 2
        bi_exact, bi_rand = (1, 2), (1, 2)
    else:
        net = {"widths": PAPER_WIDTHS, "repeats": 20, "warmup": 2, "budget": 8.0}
        d_lap, d_bi = 50, 5
        exact, rand = (4, 8, 16), (2, 4, 8, 16)
        batch_rand = 8
        bi_exact, bi_rand = (1, 2, 4), (2, 4, 8, 16)
    spec = [
        ("laplacian", "Laplacian", "laplacian", d_lap, "batch", exact, 1),
        ("weighted-laplacian", "weighted Laplacian", "weighted-laplacian", d_lap, "batch", exact, 1),
        ("bilaplacian", "bi-Laplacian", "bilaplacian", d_bi, "batch", bi_exact, 1),
        ("laplacian-randomised", "randomised Laplacian", "laplacian", d_lap, "samples", rand, batch_rand),
        ("weighted-laplacian-randomised", "randomised weighted Laplacian", "weighted-laplacian", d_lap, "samples",
         rand, batch_rand),
        ("bilaplacian-randomised", "randomised bi-Laplacian", "bilaplacian", d_bi, "samples", bi_rand,
         2 if quick else 4),
    ]  # fmt: skip
    return [
        (key, title, BenchConfig(operator=op, dim=d, sizes=sizes, vary=vary, batch=batch, label=key, **net))
        for key, title, op, d, vary, sizes, batch in spec
    ]


def fmt(v: float | None, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if abs(v) < 10 ** (-digits - 3):
        return "0"
    return f"{v:.{digits}g}"


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b for two slopes; None (shown as n/a) when either is not positive: below the measurement's resolution."""
    return a / b if a is not None and b is not None and a > 0 and b > 0 else None


def markdown(results: list[dict[str, Any]], machine: dict[str, Any], quick: bool, seconds: float) -> str:
    """The markdown table: our slopes, their ratio to the same backend's nested AD, the paper's GPU figures."""
    lines = [
        "# Table 1 of the paper, reproduced on this machine" + (" (quick smoke run: tiny network)" if quick else ""),
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, no GPU; Python {machine['python']}; "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
        + f". Threads per framework: {machine.get('threads', 'framework defaults')}. "
        f"Total run time {seconds / 60:.1f} min.",
        "",
        "Cost added per datum (exact rows: slope over batch sizes N) or per sample (randomised rows: slope over "
        "sample counts S at a fixed batch N). Time: min of the interleaved repetitions at each size, then a "
        "least-squares line (a slope that is not positive or has R² < 0.9 is printed as noise, not as a cost). "
        "Peak memory: resident-set high-water mark of the operator call "
        "alone, one subprocess per configuration; no-grad = forward only (under torch.no_grad for torch); "
        "grad = parameters requiring gradients, under torch.enable_grad (torch only). × nested: the ratio to the "
        "same backend's nested AD (time, and differentiable memory).",
        "",
        "| operator | D | per | backend | method | time [ms] | × nested | paper time [ms] (GPU) "
        "| mem no-grad [MiB] | mem grad [MiB] | × nested | paper mem grad [MiB] (GPU) | paper × nested |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        cfg = res["config"]
        base_key = cfg["label"].removesuffix("-randomised")
        randomised = cfg["vary"] == "samples"
        nested = {f["backend"]: f for f in res["fits"] if f["method"] == "nested"}
        for f in res["fits"]:
            paper = {} if randomised or quick else PAPER.get((base_key, f["backend"], f["method"]), {})
            paper_nested = {} if randomised or quick else PAPER.get((base_key, f["backend"], "nested"), {})
            n = nested.get(f["backend"], {})
            t_ratio = _ratio(f["time_ms_per_unit"], n.get("time_ms_per_unit"))
            m_ratio = _ratio(f["mem_differentiable_mib_per_unit"], n.get("mem_differentiable_mib_per_unit"))
            p_ratio = _ratio(paper.get("mem_differentiable"), paper_nested.get("mem_differentiable"))
            r2 = f.get("time_r2")
            dagger = ""
            if f["time_ms_per_unit"] is not None and not slope_resolved(f["time_ms_per_unit"], r2):
                f = {**f, "time_ms_per_unit": None}  # noise, not a cost: say so below instead of a number
                t_ratio, dagger = None, f" noise (R² {r2:.2f})"
            unit = cfg["unit"] + (f" (N={cfg['batch']})" if randomised else "")
            lines.append(
                f"| {res['title']} | {cfg['dim']} | {unit} | {f['backend']} | {f['method']} "
                f"| {fmt(f['time_ms_per_unit'])}{dagger} | {fmt(t_ratio, 2)} | {fmt(paper.get('time'))} "
                f"| {fmt(f['mem_nondifferentiable_mib_per_unit'])} | {fmt(f['mem_differentiable_mib_per_unit'])} "
                f"| {fmt(m_ratio, 2)} | {fmt(paper.get('mem_differentiable'))} | {fmt(p_ratio, 2)} |"
            )
    est = [(r["title"], e) for r in results for e in r.get("estimates", []) if "error" not in e]
    if est:
        lines += ["", "Randomised rows: the estimate at one point with its standard error (`return_std=True`, the "
                  "largest S), beside the exact value:", ""]  # fmt: skip
        lines += [f"- {t}, {e['backend']}, S={e['samples']}: {e['estimate']:.6g} ± {e['std']:.2g} "
                  f"(exact {e['exact']:.6g})" for t, e in est]  # fmt: skip
    errs = [(r["title"], k, v) for r in results for k, v in r["errors"].items()]
    lines += ["", "Notes:", ""] + [f"- {n}" for n in PAPER_NOTES]
    lines.append(
        '- Memory slopes on a CPU include allocator slack; small or negative values mean "below the resolution '
        "of the measurement\". Every measured point and the fits' R² are in the JSON file; plots: "
        + ", ".join(f"`{r['plot']}`" for r in results if r.get("plot"))
        + "."
    )
    if errs:
        lines += ["", "Configurations that could not run:", ""]
        lines += [f"- {t}, {k}: {v.splitlines()[0] if v else ''}" for t, k, v in errs]
    return "\n".join(lines) + "\n"


def _progress(t0: float, what: str, done: int, total: int) -> None:
    print(f"    {time.perf_counter() - t0:6.0f} s  {done}/{total} {what}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny network and sizes: a smoke run of every row")
    p.add_argument("--backends", default=None, help="comma-separated (default: every installed backend)")
    p.add_argument("--methods", default=None, help="comma-separated among nested,standard,collapsed")
    p.add_argument("--rows", default=None, help="comma-separated row keys (default: all six)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--jobs", type=int, default=2, help="memory subprocesses in parallel (default: 2)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads per framework (BLAS, OpenMP, XLA); 0 keeps the frameworks' defaults (default: 1)",
    )
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default: benchmarks/results; --quick: results/quick, ignored by git)")
    p.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="JSON",
        help="only rewrite the markdown next to an earlier run's JSON file (no measuring)",
    )
    args = p.parse_args(argv)
    if args.render is not None:
        payload = json.loads(args.render.read_text())
        md = markdown(payload["rows"], payload["machine"], payload["quick"], payload["seconds"])
        args.render.with_suffix(".md").write_text(md)
        print(md)
        return 0
    rc = rerun_with_threads(args.threads, [sys.executable, __file__, *(sys.argv[1:] if argv is None else argv)])
    if rc is not None:
        return rc

    from multijet.backends import available_backends

    backends = tuple(args.backends.split(",")) if args.backends else None
    if backends and (bad := [b for b in backends if b not in available_backends()]):
        p.error(f"backend(s) {bad} not installed; installed: {available_backends()}")
    methods = tuple(args.methods.split(",")) if args.methods else None
    if methods and (bad := [m for m in methods if m not in ("nested", "standard", "collapsed")]):
        p.error(f"unknown method(s) {bad}")
    table = rows(args.quick)
    if args.rows:
        wanted = args.rows.split(",")
        if bad := [w for w in wanted if w not in {k for k, _, _ in table}]:
            p.error(f"unknown row(s) {bad}; rows: {[k for k, _, _ in table]}")
        table = [r for r in table if r[0] in wanted]
    stem = "table1-quick" if args.quick else "table1"
    if args.out is None:  # a smoke run never leaves files among the tracked results
        args.out = HERE / "results" / ("quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = []
    for i, (key, title, cfg) in enumerate(table, 1):
        cfg.backends, cfg.methods, cfg.dtype = backends, methods, args.dtype
        cfg.memory, cfg.jobs = not args.no_memory, args.jobs
        print(f"[{i}/{len(table)}] {title}: D={cfg.dim}, {cfg.vary} {list(cfg.sizes)}", flush=True)
        res = run_bench(cfg, progress=lambda what, done, total: _progress(t0, what, done, total))
        res["title"] = title
        try:
            res["plot"] = plot_bench(res, args.out / f"{stem}-{key}.png").name
        except ImportError as exc:
            print(f"    no plot: {exc}", file=sys.stderr)
        results.append(res)
    seconds = time.perf_counter() - t0
    machine = machine_info()
    payload = {
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "seconds": seconds,
        "machine": machine,
        "paper": [{"row": k[0], "backend": k[1], "method": k[2], **v} for k, v in PAPER.items()],
        "paper_notes": PAPER_NOTES,
        "rows": results,
    }
    (args.out / f"{stem}.json").write_text(json.dumps(payload, indent=1))
    md = markdown(results, machine, args.quick, seconds)
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    print(f"wrote {args.out / (stem + '.json')}, {args.out / (stem + '.md')} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
