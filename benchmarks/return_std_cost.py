"""What ``return_std=True`` costs (issue 13): the randomised Laplacian of the paper's MLP (D → 768 → 768 → 512 →
512 → 1, tanh), ``mj.compile``d, float64, one thread, on JAX and torch, without an error bar, with the G sample
groups in one pass (the default), and with the groups run one after the other (the previous implementation).

    python benchmarks/return_std_cost.py                      # D=50, N=16, S=16 and 64, 15 interleaved repetitions
    python benchmarks/return_std_cost.py --samples 32 --n 8   # other sizes
    # writes benchmarks/results/return_std_cost.{json,md} (--out changes the stem)

Arrays per node of a collapsed Laplacian: ``S + 2`` without an error bar, ``S + 1 + G`` with the groups in one
pass (the primal shared), ``S + 2G`` apart (G = min(S, 8)). Repetitions alternate the three; min over them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "return_std_cost"
WIDTHS = (768, 768, 512, 512)
MODES = ("no error bar", "return_std, one pass", "return_std, groups apart")


def _compiled(mj, api, f, X, samples: int, mode: str):
    """``mj.compile`` in one of the three modes (apart: the joining switched off while it builds)."""
    if mode == "no error bar":
        return mj.compile(mj.Laplacian(), f, X, samples=samples, seed=0)
    join = api.join_plans
    if mode == "return_std, groups apart":
        api.join_plans = lambda plans: None
    try:
        return mj.compile(mj.Laplacian(), f, X, samples=samples, seed=0, return_std=True)
    finally:
        api.join_plans = join


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=50)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--samples", default="16,64")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    import jax
    import numpy as np
    import torch

    import multijet as mj
    from multijet import api
    from multijet.bench import enable_jax_x64, machine_info, make_program

    enable_jax_x64()
    torch.set_num_threads(1)
    X = np.random.default_rng(1).standard_normal((args.n, args.dim))
    programs = {
        "jax": (make_program("jax", args.dim, WIDTHS, "float64", 0), jax.numpy.asarray(X)),
        "torch": (make_program("torch", args.dim, WIDTHS, "float64", 0), torch.as_tensor(X)),
    }
    rows = []
    for S in (int(s) for s in args.samples.split(",")):
        for backend, (f, x) in programs.items():
            fns = {m: _compiled(mj, api, f, x, S, m) for m in MODES}
            for fn in fns.values():  # compile, and check the modes agree
                jax.block_until_ready(fn(x)) if backend == "jax" else fn(x)
            one, apart = fns["return_std, one pass"](x), fns["return_std, groups apart"](x)
            diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(one, apart, strict=True))
            times: dict[str, list[float]] = {m: [] for m in MODES}
            with torch.no_grad():
                for _ in range(args.reps):
                    for m, fn in fns.items():
                        t = time.perf_counter()
                        out = fn(x)
                        if backend == "jax":
                            jax.block_until_ready(out)
                        times[m].append(time.perf_counter() - t)
            base = min(times["no error bar"])
            for m in MODES:
                G = min(S, 8)
                arrays = {"no error bar": S + 2, "return_std, one pass": S + 1 + G,
                          "return_std, groups apart": S + 2 * G}[m]  # fmt: skip
                rows.append({"backend": backend, "samples": S, "mode": m, "ms": 1e3 * min(times[m]),
                             "ratio": min(times[m]) / base, "arrays_per_node": arrays, "one_vs_apart_diff": diff})
            print(f"S={S} {backend}: " + ", ".join(f"{r['mode']} {r['ms']:.2f} ms" for r in rows[-3:]), flush=True)
    result = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "config": vars(args) | {"out": str(args.out)}, "machine": machine_info(), "rows": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    lines = [
        "# What return_std costs (issue 13)", "",
        f"- Date {result['date']}; `return_std_cost.py --dim {args.dim} --n {args.n} --samples {args.samples} "
        f"--reps {args.reps}`; the paper's MLP (tanh, {' → '.join(map(str, WIDTHS))} → 1), float64, one thread, "
        "`mj.compile`d randomised Laplacian (Rademacher), min over interleaved repetitions.",
        "- One pass: the G = min(S, 8) sample groups in one program, the primal shared, each group collapsed into "
        "its own top sum; apart: the groups as G programs. Both give the same numbers (largest difference below).",
        "", "| S | backend | mode | ms per batch | × no error bar | arrays per node | one pass − apart |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['samples']} | {r['backend']} | {r['mode']} | {r['ms']:.2f} | {r['ratio']:.2f} | "
                     f"{r['arrays_per_node']} | {r['one_vs_apart_diff']:.1e} |")  # fmt: skip
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
