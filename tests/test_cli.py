"""The ``multijet`` command line: every command on tiny sizes writes its files; plots are valid PNGs; bad
arguments give the usage and exit code 2, never a traceback. Also the Table 1 script's quick mode."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from multijet.backends import available_backends
from multijet.cli import main

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--dim", "3", "--widths", "8,8", "--repeats", "2", "--warmup", "1", "--budget", "1"]


def _check_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    matplotlib_image = pytest.importorskip("matplotlib.image")
    img = matplotlib_image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_entry_point_is_declared():
    eps = importlib.metadata.entry_points(group="console_scripts")
    assert any(ep.name == "multijet" and ep.value == "multijet.cli:main" for ep in eps)
    out = subprocess.run([sys.executable, "-m", "multijet.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "multijet" in out.stdout


def test_python_dash_m_multijet_runs_the_command_line():
    out = subprocess.run([sys.executable, "-m", "multijet", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: multijet") and "autotune" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "multijet", "frobnicate"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_run_all_benchmarks_help():
    script = ROOT / "benchmarks" / "run_all.py"
    out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--quick" in out.stdout and "--timeout" in out.stdout


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "backends" in out and "numpy" in out
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backends"] == available_backends()
    assert set(info["devices"]) == set(available_backends())
    assert info["versions"]["numpy"] and info["autotune_cache"].endswith("autotune.json")


def test_bench_numpy_with_memory_writes_json_and_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "bench"
    rc = main(["bench", *TINY, "--batch-sizes", "1,2,3", "--backends", "numpy", "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "laplacian-D3.json").read_text())
    _check_png(out / "laplacian-D3.png")
    assert {(f["backend"], f["method"]) for f in result["fits"]} == {("numpy", "collapsed"), ("numpy", "standard")}
    assert all(f["time_ms_per_unit"] is not None for f in result["fits"])
    assert len(result["rows"]) == 6 and all(r["time_min_ms"] > 0 for r in result["rows"])
    sizes = sorted({m["size"] for m in result["memory"]})
    assert sizes == [1, 2, 3] and all(m["peak_mib"] >= 0 for m in result["memory"])
    assert result["machine"]["cpu"] and not result["errors"]
    assert "ms/datum" in capsys.readouterr().out


def test_bench_randomised_every_backend(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "rand"
    rc = main(["bench", *TINY, "--operator", "bilaplacian", "--samples", "1,2", "--batch", "2", "--no-memory",
               "--out", str(out), "--name", "r"])  # fmt: skip
    assert rc == 0
    result = json.loads((out / "r.json").read_text())
    _check_png(out / "r.png")
    assert result["config"]["vary"] == "samples" and result["config"]["unit"] == "sample"
    ran = {(f["backend"], f["method"]) for f in result["fits"] if f["time_ms_per_unit"] is not None}
    for b in available_backends():
        assert (b, "collapsed") in ran, result["errors"]


def test_compare_writes_report_and_exit_code(tmp_path, capsys, monkeypatch):
    path = tmp_path / "report.json"
    args = ["compare", "--dim", "2", "--batch", "2", "--width", "4", "--backends", "numpy", "--out", str(path)]
    assert main(args) == 0
    report = json.loads(path.read_text())
    assert report["passed"] and {c["method"] for c in report["candidates"]} == {"collapsed", "standard"}
    assert "PASS" in capsys.readouterr().out

    import multijet.backends.numpy as nb

    original = nb.run

    def planted(plan, f, x, *, method, return_grad=False):
        v, r, g = original(plan, f, x, method=method, return_grad=return_grad)
        return v, (r * 1.001 if method == "standard" else r), g

    monkeypatch.setattr(nb, "run", planted)
    assert main([*args, "--pairs"]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert not json.loads(path.read_text())["passed"]


def test_autotune_command_uses_env_cache(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MULTIJET_CACHE_DIR", str(tmp_path / "c"))
    args = ["autotune", "--dim", "3", "--widths", "8", "--batch", "2", "--backends", "numpy", "--repeats", "3",
            "--budget", "0.5"]  # fmt: skip
    assert main(args) == 0
    assert "fastest" in capsys.readouterr().out
    assert (tmp_path / "c" / "autotune.json").is_file()
    assert main(args) == 0
    assert "from the cache" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["bench", "--dim", "0"],
        ["bench", "--backends", "nope"],
        ["bench", "--methods", "fastest"],
        ["bench", "--batch-sizes", "a,b"],
        ["bench", "--widths", "-3"],
        ["bench", "--batch-sizes", "1", "--samples", "2"],
        ["bench", "--operator", "curl"],
        ["compare", "--dtype", "float16"],
        ["compare", "--batch", "x"],
        ["autotune", "--samples", "0"],
    ],
)
def test_bad_arguments_give_usage_and_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err


def test_invalid_combination_gives_usage_not_traceback(capsys, tmp_path):
    rc = main(["bench", *TINY, "--backends", "numpy", "--methods", "nested", "--out", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "no backend × method" in err and "Traceback" not in err


def test_table1_quick_smoke(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "t1"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "table1.py"), "--quick", "--backends", "numpy", "--no-memory",
         "--rows", "laplacian,bilaplacian-randomised", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    payload = json.loads((out / "table1-quick.json").read_text())
    assert [r["config"]["label"] for r in payload["rows"]] == ["laplacian", "bilaplacian-randomised"]
    md = (out / "table1-quick.md").read_text()
    assert "| Laplacian |" in md and "randomised bi-Laplacian" in md and "n/a" in md
    _check_png(out / "table1-quick-laplacian.png")
    assert np.isfinite(payload["seconds"])


def test_bench_threads_reruns_with_thread_limits(tmp_path):
    out = tmp_path / "th"
    rc = main(["bench", *TINY, "--batch-sizes", "1,2", "--backends", "numpy", "--no-memory", "--no-plot",
               "--threads", "1", "--out", str(out)])  # fmt: skip
    assert rc == 0
    result = json.loads((out / "laplacian-D3.json").read_text())
    assert result["machine"]["threads"] == "1"


def test_tools_import_no_framework():
    code = (
        "import sys, multijet, multijet.cli, multijet.compare, multijet.autotune, multijet.bench; "
        "print([m for m in ('torch', 'jax', 'matplotlib', 'rich') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
