"""Eager against ``torch.compile`` (inductor) of multijet's emitted torch program (issue 13): the exact
Laplacian of the paper's MLP (D → 768 → 768 → 512 → 512 → 1, tanh), float64, one thread.

    python benchmarks/torch_compile.py                 # D=16, N=32, 30 interleaved repetitions
    python benchmarks/torch_compile.py --dim 50 --n 8  # another size
    # writes benchmarks/results/torch_compile.{json,md} (--out changes the stem)

Two calls, each eager and compiled: the forward Laplacian under ``torch.no_grad()``, and a training step
(mean(Δu²) and ``backward()``). Compiled = ``torch.compile`` of a function calling the ``mj.compile``d operator;
the compile time (first call) is reported apart. Repetitions alternate eager and compiled; min and median.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "torch_compile"
WIDTHS = (768, 768, 512, 512)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy as np
    import torch

    import multijet as mj
    from multijet.bench import machine_info, make_program

    torch.set_num_threads(1)
    net = make_program("torch", args.dim, WIDTHS, "float64", 0, requires_grad=True)
    X = torch.as_tensor(np.random.default_rng(1).standard_normal((args.n, args.dim)))
    op = mj.compile(mj.Laplacian(), net, X)

    def forward(X):
        with torch.no_grad():
            return op(X)

    def loss(X):
        return op(X).pow(2).mean()

    def step(loss_fn):
        def run():
            net.zero_grad(set_to_none=True)
            loss_fn(X).backward()

        return run

    compiled_forward, compiled_loss = torch.compile(forward), torch.compile(loss)
    build = {}
    for name, fn in (("forward", lambda: compiled_forward(X)), ("train step", step(compiled_loss))):
        t0 = time.perf_counter()
        fn()
        build[name] = time.perf_counter() - t0
    ref = forward(X)
    err = float((compiled_forward(X) - ref).abs().max() / ref.abs().max())
    cands = {
        ("forward", "eager"): lambda: forward(X), ("forward", "compiled"): lambda: compiled_forward(X),
        ("train step", "eager"): step(loss), ("train step", "compiled"): step(compiled_loss),
    }  # fmt: skip
    times: dict = {k: [] for k in cands}
    for fn in cands.values():
        fn()  # warm
    for _ in range(args.reps):
        for k, fn in cands.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    rows = []
    for what in ("forward", "train step"):
        e, c = times[what, "eager"], times[what, "compiled"]
        rows.append({"call": what, "eager_ms": 1e3 * min(e), "compiled_ms": 1e3 * min(c),
                     "eager_median_ms": 1e3 * statistics.median(e), "compiled_median_ms": 1e3 * statistics.median(c),
                     "ratio": min(c) / min(e), "compile_s": build[what]})  # fmt: skip
    info = machine_info()
    res = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "dim": args.dim, "n": args.n,
           "reps": args.reps, "rows": rows, "max_rel_diff": err, "torch": info["versions"].get("torch"),
           "cpu": info["cpu"]}  # fmt: skip
    lines = [
        "# torch.compile (inductor) of multijet's emitted program against eager",
        "",
        f"- {res['date']}; paper MLP D={args.dim} → {' → '.join(map(str, WIDTHS))} → 1, tanh, float64, N={args.n}; "
        f"torch {res['torch']}, {res['cpu']}, one thread; {args.reps} alternating repetitions.",
        f"- Compiled equals eager to {err:.1e} (relative).",
        "",
        "| call | eager ms (median) | compiled ms (median) | compiled ÷ eager (min) | compile time [s] |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['call']} | {r['eager_ms']:.1f} ({r['eager_median_ms']:.1f}) | {r['compiled_ms']:.1f} "
                     f"({r['compiled_median_ms']:.1f}) | {r['ratio']:.2f} | {r['compile_s']:.1f} |")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
