"""The PNG of one benchmark panel: time and peak memory against batch size (or samples), one line per backend ×
method, with the fitted slopes in the legend (the paper's Fig. 5). Needs matplotlib (the ``bench`` extra)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..timing import slope_resolved

__all__ = ["plot_bench", "bench_figure", "spans_decades"]

_METHOD_COLOURS = {"nested": "tab:red", "standard": "tab:blue", "collapsed": "tab:green"}
_BACKEND_MARKERS = {"numpy": "s", "torch": "o", "jax": "^"}


def spans_decades(values, ratio: float = 30.0) -> bool:
    """Whether positive ``values`` span at least ``ratio`` (1.5 decades by default): a log axis then shows them."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x) and x > 0], dtype=float)
    return v.size >= 2 and v.max() / v.min() >= ratio


def plot_bench(result: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a PNG: time (min of the repetitions) and peak memory against batch size (or samples), one line
    per backend × method, with the fitted slope in the legend. Needs matplotlib (the ``bench`` extra)."""
    fig = bench_figure(result)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def bench_figure(result: Mapping[str, Any]):
    """The figure :func:`plot_bench` writes: log axes where the values span decades (one slow line does not
    squash the others onto zero), the legend below the panels, slopes that are noise said to be."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'multijet[bench]'") from exc
    cfg = result["config"]
    unit = cfg.get("unit", "datum")
    xlabel = "random samples S" if cfg["vary"] == "samples" else "batch size N"
    fig = Figure(figsize=(12, 6.2), layout="constrained")
    ax_t, ax_m = fig.subplots(1, 2)
    fits = {(f["backend"], f["method"]): f for f in result["fits"]}
    times: list[float] = []
    mems: list[float] = []
    for (b, m), fit in fits.items():
        colour, marker = _METHOD_COLOURS.get(m, "k"), _BACKEND_MARKERS.get(b, "x")
        pts = sorted((r["size"], r["time_min_ms"]) for r in result["rows"] if (r["backend"], r["method"]) == (b, m)
                     and "error" not in r)  # fmt: skip
        if pts:
            xs, ys = np.array(pts).T
            slope, r2 = fit.get("time_ms_per_unit"), fit.get("time_r2")
            if slope is None:
                lab = f"{b} {m}"
            elif slope_resolved(slope, r2):
                lab = f"{b} {m}: {slope:.3g} ms/{unit}"
            else:  # a negative slope or a line that explains nothing is noise, not a cost
                lab = f"{b} {m}: slope not resolved (R² {r2:.2f})"
            ax_t.plot(xs, ys, marker=marker, color=colour, linestyle=":", label=lab)
            if slope_resolved(slope, r2):
                ax_t.plot(xs, slope * xs + fit["time_intercept_ms"], color=colour, alpha=0.6)
            times.extend(ys)
        for mode, style in (("nondifferentiable", "-"), ("differentiable", "--")):
            mp = sorted((r["size"], r["peak_mib"]) for r in result["memory"]
                        if (r["backend"], r["method"], r["mode"]) == (b, m, mode))  # fmt: skip
            if not mp:
                continue
            xs, ys = np.array(mp).T
            mems.extend(ys)
            slope = fit.get(f"mem_{mode}_mib_per_unit")
            tag = "" if mode == "nondifferentiable" else " (diff.)"
            lab = f"{b} {m}{tag}" + (f": {slope:.3g} MiB/{unit}" if slope is not None else "")
            ax_m.plot(xs, ys, marker=marker, color=colour, linestyle=style, label=lab)
    if not result["memory"]:
        ax_m.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax_m.transAxes, color="grey")
    ax_t.set(xlabel=xlabel, ylabel="time [ms] (min of repetitions)", title="runtime")
    ax_m.set(xlabel=xlabel, ylabel="peak memory [MiB] above baseline", title="peak memory")
    sizes = [r["size"] for r in result["rows"]]
    for ax, values in ((ax_t, times), (ax_m, mems)):
        ax.grid(alpha=0.3, which="both")
        if spans_decades(values):  # one slow line must not squash the others onto zero
            ax.set_yscale("log")
        if spans_decades(sizes, 8.0):
            ax.set_xscale("log", base=2)
            ticks = sorted(set(sizes))
            ax.set_xticks(ticks, [str(t) for t in ticks])
        if ax.get_legend_handles_labels()[0]:  # beside the data, never over it
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=2, frameon=False)
    widths = "→".join(str(w) for w in cfg["widths"])
    fig.suptitle(
        f"{cfg['operator']} ({'randomised' if cfg['vary'] == 'samples' else 'exact'}), D={cfg['dim']}, "
        f"tanh MLP {cfg['dim']}→{widths}→1, {cfg['dtype']} — {result['machine']['cpu']}",
        fontsize=10,
    )
    return fig
