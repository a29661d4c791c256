"""Parent-side plumbing shared by the interleaved benchmarks that run one measurement per pinned child process
(``bilaplacian_routes.py``, ``vmc_wavefunctions.py``): run a child under a timeout, compare values, note the
machine's load, write the JSON/markdown/PNG triple."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def engine_helpers():
    sys.path.insert(0, str(HERE))
    import engine_old_vs_new as eng

    return eng


def child_env(with_src: bool = True) -> dict:
    """One thread per framework, CPU JAX, this repository's ``src`` on the path (unless ``with_src`` is off)."""
    from multijet.bench import thread_env

    env = {**thread_env(1), "JAX_PLATFORMS": "cpu", "PYTHONWARNINGS": "ignore"}
    if with_src:
        env["PYTHONPATH"] = str(REPO / "src")
    return env


def run_child(cmd: list[str], env: dict, cpu: int | None, timeout: float) -> dict:
    """Run ``cmd`` (pinned to ``cpu`` with ``taskset`` when available) under ``timeout``; its last stdout line is
    JSON. Returns ``{"result", "wall_s", "loadavg_start", "cpu_busy"}`` or ``{"error", "wall_s"}`` (a timeout
    is an error, never a hang)."""
    eng = engine_helpers()
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    before, load, t0 = eng._cpu_times(), os.getloadavg(), time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, cwd="/tmp", capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s", "wall_s": time.perf_counter() - t0}
    wall, busy = time.perf_counter() - t0, eng._busy(before, eng._cpu_times())
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:], "wall_s": wall}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"result": res, "wall_s": wall, "loadavg_start": [round(x, 2) for x in load], "cpu_busy": busy}


def rel_err(a: list[float], b: list[float]) -> float:
    """Largest ``|a − b|`` over ``max(1, max |b|)``."""
    scale = max(1.0, max(abs(x) for x in b))
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) / scale


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def write_outputs(res: dict, stem: Path, markdown: Callable[[dict], str], plot: Callable[[dict, Path], None]) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(res))
    plot(res, stem.with_suffix(".png"))
