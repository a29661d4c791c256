"""Planning time at high dimension and order (issue 10 targets: Δ² at D=1000 and a 6-term order-4 operator on
40 variables, each in under 1 s). Cold plans (the cache is cleared before every run); min over repeats.

    python benchmarks/plan_speed.py [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import platform
import time

import numpy as np

import multijet as mj
from multijet import dirsets

planner = importlib.import_module("multijet.plan")  # the module (mj.plan is the function)


def _clear() -> None:
    planner._cached_plan.cache_clear()
    dirsets._lattice_inverse.cache_clear()


def _order4(dim: int, n_terms: int, seed: int = 0) -> mj.LinearOperator:
    rng = np.random.default_rng(seed)
    terms = {}
    for _ in range(n_terms):
        a = [0] * dim
        for i in rng.choice(dim, size=4):
            a[int(i)] += 1
        terms[tuple(a)] = float(rng.normal())
    return mj.LinearOperator(terms)


def _time(make, repeats: int = 3) -> tuple[float, object]:
    best, p = float("inf"), None
    for _ in range(repeats):
        _clear()
        t = time.perf_counter()
        p = make()
        best = min(best, time.perf_counter() - t)
    return best, p


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    args = ap.parse_args()
    cases = [
        ("bi-Laplacian", 10, lambda: mj.plan(mj.Bilaplacian(), 10)),
        ("bi-Laplacian", 20, lambda: mj.plan(mj.Bilaplacian(), 20)),
        ("bi-Laplacian", 100, lambda: mj.plan(mj.Bilaplacian(), 100)),
        ("bi-Laplacian", 1000, lambda: mj.plan(mj.Bilaplacian(), 1000)),
        ("bi-Laplacian, direction set forced", 100, lambda: mj.plan(mj.Bilaplacian(), 100, route="directions")),
        ("6-term order-4 operator", 40, lambda: mj.plan(_order4(40, 6), 40)),
        ("20-term order-4 operator", 200, lambda: mj.plan(_order4(200, 20), 200)),
        ("Laplacian, randomised S=16", 1_000_000, lambda: mj.plan(mj.Laplacian(), 1_000_000, samples=16, seed=0)),
    ]
    rows = []
    for name, dim, make in cases:
        seconds, p = _time(make)
        rows.append({"operator": name, "D": dim, "seconds": seconds, "route": p.route,
                     "arrays_collapsed": p.arrays("collapsed")})  # fmt: skip
        print(f"{name:40s} D={dim:>8d}  {seconds * 1e3:9.2f} ms  route={p.route}")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(), "python": platform.python_version()}
    (out / "plan_speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# Planning time (cold, min of 3)",
        "",
        f"{meta['date']}, {meta['machine']}. Targets: Δ² at D=1000 and the 6-term order-4 operator on 40 variables "
        "under 1 s each.",
        "",
        "| operator | D | time | route | arrays per node (collapsed) |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    lines += [
        f"| {r['operator']} | {r['D']} | {r['seconds'] * 1e3:.1f} ms | {r['route']} | {r['arrays_collapsed']} |"
        for r in rows
    ]
    (out / "plan_speed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
