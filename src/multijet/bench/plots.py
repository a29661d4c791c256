"""The PNG of one benchmark panel: time and peak memory against batch size (or samples), one line per backend ×
method, with the fitted slopes in the legend (the paper's Fig. 5). Needs matplotlib (the ``bench`` extra)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_bench"]

_METHOD_COLOURS = {"nested": "tab:red", "standard": "tab:blue", "collapsed": "tab:green"}
_BACKEND_MARKERS = {"numpy": "s", "torch": "o", "jax": "^"}


def plot_bench(result: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a PNG: time (min of the repetitions) and peak memory against batch size (or samples), one line
    per backend × method, with the fitted slope in the legend. Needs matplotlib (the ``bench`` extra)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'multijet[bench]'") from exc
    cfg = result["config"]
    unit = cfg.get("unit", "datum")
    xlabel = "random samples S" if cfg["vary"] == "samples" else "batch size N"
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    ax_t, ax_m = fig.subplots(1, 2)
    fits = {(f["backend"], f["method"]): f for f in result["fits"]}
    for (b, m), fit in fits.items():
        colour, marker = _METHOD_COLOURS.get(m, "k"), _BACKEND_MARKERS.get(b, "x")
        pts = sorted((r["size"], r["time_min_ms"]) for r in result["rows"] if (r["backend"], r["method"]) == (b, m)
                     and "error" not in r)  # fmt: skip
        if pts:
            xs, ys = np.array(pts).T
            slope = fit.get("time_ms_per_unit")
            lab = f"{b} {m}" + (f": {slope:.3g} ms/{unit}" if slope is not None else "")
            ax_t.plot(xs, ys, marker=marker, color=colour, linestyle="none", label=lab)
            if slope is not None:
                ax_t.plot(xs, slope * xs + fit["time_intercept_ms"], color=colour, alpha=0.6)
        for mode, style in (("nondifferentiable", "-"), ("differentiable", "--")):
            mp = sorted((r["size"], r["peak_mib"]) for r in result["memory"]
                        if (r["backend"], r["method"], r["mode"]) == (b, m, mode))  # fmt: skip
            if not mp:
                continue
            xs, ys = np.array(mp).T
            slope = fit.get(f"mem_{mode}_mib_per_unit")
            tag = "" if mode == "nondifferentiable" else " (diff.)"
            lab = f"{b} {m}{tag}" + (f": {slope:.3g} MiB/{unit}" if slope is not None else "")
            ax_m.plot(xs, ys, marker=marker, color=colour, linestyle=style, label=lab)
    if not result["memory"]:
        ax_m.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax_m.transAxes, color="grey")
    ax_t.set(xlabel=xlabel, ylabel="time [ms] (min of repetitions)", title="runtime")
    ax_m.set(xlabel=xlabel, ylabel="peak memory [MiB] above baseline", title="peak memory")
    for ax in (ax_t, ax_m):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    widths = "→".join(str(w) for w in cfg["widths"])
    fig.suptitle(
        f"{cfg['operator']} ({'randomised' if cfg['vary'] == 'samples' else 'exact'}), D={cfg['dim']}, "
        f"tanh MLP {cfg['dim']}→{widths}→1, {cfg['dtype']} — {result['machine']['cpu']}",
        fontsize=10,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
