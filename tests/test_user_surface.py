"""What a new user meets (issue 13): errors that say how x was read, and command-line tables readable at 80
columns."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import multijet as mj
from multijet import api

HINT = "x of shape (5,) is read as one point of dimension D=5; for 5 points in one dimension pass shape (5, 1)"


def _bad_numpy(x):
    return np.sin(x) @ np.ones(2)  # written for points of dimension 2; given one point of dimension 5


def test_one_point_reading_is_named_when_f_fails_numpy():
    with pytest.raises(ValueError) as info:
        mj.laplacian(_bad_numpy, np.linspace(0.0, 1.0, 5))
    assert HINT in str(info.value)
    with pytest.raises(ValueError) as info:  # a batch (N, D) is not given the hint: it is not the slip
        mj.laplacian(_bad_numpy, np.linspace(0.0, 1.0, 10).reshape(2, 5))
    assert "read as one point" not in str(info.value)


@pytest.mark.torch
def test_one_point_reading_is_named_when_f_fails_torch():
    torch = pytest.importorskip("torch")
    x = torch.linspace(0, 1, 5, dtype=torch.float64)
    for call in (lambda: mj.laplacian(lambda y: torch.sin(y) @ torch.ones(2, dtype=torch.float64), x),
                 lambda: mj.compile(mj.Laplacian(), lambda y: torch.sin(y) @ torch.ones(2, dtype=torch.float64), x)):
        with pytest.raises(mj.errors.BackendError) as info:
            call()
        assert HINT in str(info.value)


@pytest.mark.jax
def test_one_point_reading_is_named_when_f_fails_jax():
    jnp = pytest.importorskip("jax.numpy")
    with pytest.raises(TypeError) as info:
        mj.laplacian(lambda y: jnp.sin(y) @ jnp.ones(2), jnp.linspace(0.0, 1.0, 5))
    assert HINT in str(info.value)


def _cli(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "80", "LINES": "50"}
    proc = subprocess.run([sys.executable, "-m", "multijet", *args], capture_output=True, text=True, timeout=300,
                          env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("info",),
        ("compare", "--operator", "laplacian", "--dim", "3", "--backends", "numpy"),
        ("autotune", "--operator", "laplacian", "--dim", "3", "--widths", "4", "--batch", "2", "--repeats", "2",
         "--budget", "1", "--no-cache", "--backends", "numpy"),
    ],
    ids=["info", "compare", "autotune"],
)
def test_cli_tables_fit_80_columns_without_cut_values(args):
    """Piped at COLUMNS=80: every line fits, tables are closed on the right, and no value is cut off with an
    ellipsis (long values wrap onto the next line)."""
    out = _cli(*args)
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert "…" not in out, out
    for line in lines:
        if line.startswith(("┏", "┃", "┡", "│", "└")):
            assert line.rstrip()[-1] in "┓┃┩│┘", line  # the table's right border is there: nothing cropped


def _bench_result(noisy: bool):
    rows, fits = [], []
    for b in ("torch", "jax"):
        for m, c in (("nested", 50.0), ("collapsed", 1.0)):
            for n in (1, 2, 4, 8, 16):
                rows.append({"backend": b, "method": m, "size": n, "time_min_ms": c * n + 0.1})
            bad = noisy and (b, m) == ("jax", "collapsed")
            fits.append({"backend": b, "method": m, "time_ms_per_unit": -0.00238 if bad else c,
                         "time_intercept_ms": 0.1, "time_r2": 0.006 if bad else 0.99,
                         "mem_nondifferentiable_mib_per_unit": None,
                         "mem_differentiable_mib_per_unit": None})  # fmt: skip
    config = {"unit": "datum", "vary": "batch", "widths": [8], "operator": "laplacian", "dim": 10, "dtype": "float64"}
    return {"config": config, "rows": rows, "memory": [], "fits": fits, "machine": {"cpu": "test"}}


def test_bench_plot_uses_log_axes_when_values_span_decades_and_names_noise(tmp_path):
    pytest.importorskip("matplotlib")
    from multijet.bench.plots import bench_figure, plot_bench

    fig = bench_figure(_bench_result(noisy=True))
    ax_t = fig.axes[0]
    assert ax_t.get_yscale() == "log" and ax_t.get_xscale() == "log"  # 1.1 … 800 ms over N = 1 … 16
    labels = ax_t.get_legend().get_texts()
    assert any("slope not resolved (R² 0.01)" in t.get_text() for t in labels)
    assert not any("-0.00238" in t.get_text() for t in labels)
    assert plot_bench(_bench_result(noisy=False), tmp_path / "p.png").stat().st_size > 0


def test_bench_table_says_noise_instead_of_a_slope():
    from multijet._cli_output import fits_table
    from multijet.timing import slope_resolved

    assert not slope_resolved(-0.00238, 0.006) and not slope_resolved(1.0, 0.5) and slope_resolved(1.0, 0.95)
    Console = pytest.importorskip("rich.console").Console

    console = Console(width=100, record=True)
    console.print(fits_table(_bench_result(noisy=True)))
    text = console.export_text()
    assert "noise" in text and "-0.00238" not in text and "R² < 0.9" in text


@pytest.mark.torch
def test_autotune_records_threads_and_keeps_settings_apart(tmp_path, monkeypatch):
    """A ranking measured with 1 torch thread is not served for 2 (and says which it was measured with)."""
    pytest.importorskip("torch")
    monkeypatch.setenv("MULTIJET_CACHE_DIR", str(tmp_path))
    x = np.random.default_rng(0).standard_normal((2, 3))
    kw = {"backends": ["torch"], "methods": ["collapsed"], "repeats": 1, "warmup": 1, "budget": 0.2}
    one = mj.autotune(mj.Laplacian(), _mlp, x, threads=1, **kw)
    assert not one.cached and one.key["threads"]["torch_threads"] == 1
    assert mj.autotune(mj.Laplacian(), _mlp, x, threads=1, **kw).cached
    two = mj.autotune(mj.Laplacian(), _mlp, x, threads=2, **kw)
    assert not two.cached and two.key["threads"]["torch_threads"] == 2
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        mj.autotune(mj.Laplacian(), _mlp, x, threads=0, **kw)


def _mlp(x):  # an array-API program: any backend runs it
    from array_api_compat import array_namespace

    xp = array_namespace(x)
    W = xp.asarray(np.linspace(-1.0, 1.0, 12).reshape(4, 3), dtype=x.dtype)
    return xp.sum(xp.tanh(W @ x))


def test_info_warns_when_the_machine_is_oversubscribed(monkeypatch):
    from multijet import timing

    monkeypatch.setattr(timing.os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    assert "oversubscribed" in timing.oversubscribed()
    monkeypatch.setattr(timing.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert timing.oversubscribed() is None


# --- return_std ----------------------------------------------------------------------------------------------

_W1 = np.random.default_rng(0).normal(size=(16, 5)) / 2
_W2 = np.random.default_rng(1).normal(size=16)
_X = np.random.default_rng(2).normal(size=(3, 5))


def _f(x):
    return np.tanh(_W1 @ x) @ _W2


def test_return_std_is_calibrated():
    """Over many seeds about 68 % of |estimate − exact| fall below the standard error (batch means over G = 8
    groups: a t-distribution with 7 degrees of freedom gives 65 %); the estimates are unbiased."""
    exact = mj.laplacian(_f, _X)
    hits, ests = [], []
    for seed in range(300):
        est, std = mj.laplacian(_f, _X, samples=16, seed=seed, return_std=True)
        hits.append(np.abs(est - exact) < std)
        ests.append(est)
    coverage = float(np.mean(hits))
    assert 0.58 < coverage < 0.76, coverage  # 900 draws: sampling error of the coverage about 0.016
    ests = np.array(ests)
    np.testing.assert_array_less(np.abs(ests.mean(0) - exact), 4 * ests.std(0) / np.sqrt(len(ests)))


def test_return_std_of_the_bilaplacian_is_calibrated():
    def g(x):
        return np.tanh(_W1[:, :3] @ x) @ _W2

    X = _X[:, :3]
    exact = mj.bilaplacian(g, X)
    hits = []
    for seed in range(120):
        est, std = mj.bilaplacian(g, X, samples=16, seed=seed, return_std=True)
        hits.append(np.abs(est - exact) < std)
    assert 0.5 < float(np.mean(hits)) < 0.82


def test_return_std_shapes_exact_zero_compile_and_errors():
    est, std = mj.laplacian(_f, _X, samples=8, seed=3, return_std=True)
    assert est.shape == std.shape == (3,) and np.all(std > 0)
    value, grad, lap, std2 = mj.apply(mj.Laplacian(), _f, _X, samples=8, seed=3, return_grad=True, return_std=True)
    np.testing.assert_allclose(lap, est, rtol=1e-12)
    np.testing.assert_allclose(std2, std, rtol=1e-12)
    assert value.shape == (3,) and grad.shape == (3, 5)
    compiled = mj.compile(mj.Laplacian(), _f, _X, samples=8, seed=3, return_std=True)
    c_est, c_std = compiled(_X)
    np.testing.assert_allclose(c_est, est, rtol=1e-12)
    np.testing.assert_allclose(c_std, std, rtol=1e-12)
    exact, zero = mj.laplacian(_f, _X, return_std=True)
    np.testing.assert_allclose(exact, mj.laplacian(_f, _X), rtol=1e-12)
    assert np.all(zero == 0)
    with pytest.raises(ValueError, match="samples >= 2"):
        mj.laplacian(_f, _X, samples=1, return_std=True)


@pytest.mark.torch
@pytest.mark.jax
def test_return_std_is_the_same_on_every_backend():
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    ref = mj.laplacian(_f, _X, samples=8, seed=5, return_std=True)
    W1t, W2t = torch.tensor(_W1), torch.tensor(_W2)
    got_t = mj.laplacian(lambda x: torch.tanh(W1t @ x) @ W2t, torch.tensor(_X), samples=8, seed=5, return_std=True)
    got_j = jax.jit(lambda X: mj.laplacian(lambda x: jnp.tanh(_W1 @ x) @ _W2, X, samples=8, seed=5,
                                           return_std=True))(jnp.asarray(_X))  # fmt: skip
    for got in (got_t, got_j):
        for a, b in zip(got, ref, strict=True):
            np.testing.assert_allclose(np.asarray(a), b, rtol=1e-10)


def _groups_apart(monkeypatch):
    """Run the sample groups one after the other (the joined pass switched off), as the reference."""
    monkeypatch.setattr(api, "join_plans", lambda plans: None)


@pytest.mark.parametrize("op,samples", [(mj.Laplacian(), 12), (mj.Bilaplacian(), 10),
                                         (mj.Laplacian() + mj.WeightedLaplacian(np.diag([1.0, 2, 0, 1, 3])), 9)])
def test_return_std_groups_in_one_pass_equal_the_groups_apart(op, samples, monkeypatch):
    """The joined pass (one program, each sample group collapsed into its own top sum) gives the numbers of
    the G separate runs, for the exact result of each group; a single point and a batch."""
    for x in (_X, _X[0]):
        one = mj.apply(op, _f, x, samples=samples, seed=11, return_std=True)
        compiled = mj.compile(op, _f, x, samples=samples, seed=11, return_std=True)(x)
        with monkeypatch.context() as m:
            _groups_apart(m)
            apart = mj.apply(op, _f, x, samples=samples, seed=11, return_std=True)
        for a, b, c in zip(one, compiled, apart, strict=True):
            assert np.shape(a) == np.shape(c)
            np.testing.assert_allclose(a, c, rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(b, c, rtol=1e-10, atol=1e-12)


@pytest.mark.torch
def test_return_std_torch_program_computes_the_primal_once():
    torch = pytest.importorskip("torch")
    W1t, W2t = torch.tensor(_W1), torch.tensor(_W2)

    def g(x):
        return torch.tanh(W1t @ torch.tanh(x)) @ W2t

    X = torch.tensor(_X)
    compiled = mj.compile(mj.Laplacian(), g, X, samples=16, seed=2, return_std=True)
    text = compiled.code
    assert text.count("aten.tanh.default(") == 2, text  # the primal's two tanh once, not once per sample group
    est, std = compiled(X)
    apart = [mj.laplacian(g, X, samples=p.samples, seed=p.seed) for p in compiled.plans]
    mean = sum(p.samples * a.numpy() for p, a in zip(compiled.plans, apart, strict=True)) / 16
    np.testing.assert_allclose(est.numpy(), mean, rtol=1e-10)
    assert "8 sample groups in one pass" in str(compiled.plan) and "randomised, 16 " in str(compiled.plan)


@pytest.mark.jax
def test_return_std_jax_program_computes_the_primal_once():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy

    def g(x):
        return jnp.tanh(_W1 @ jnp.tanh(x)) @ _W2

    X = jnp.asarray(_X)
    compiled = mj.compile(mj.Laplacian(), g, X, samples=16, seed=2, return_std=True)
    hlo = compiled._fns[0].lower(X).compile().as_text()
    assert len(compiled._fns) == 1 and hlo.count(" tanh(") == 2, hlo  # one program; XLA merged the primals
    est, std = compiled(X)
    assert est.shape == std.shape == (3,) and bool(jnp.all(std > 0))


def test_bench_with_samples_reports_estimate_and_error(tmp_path):
    from multijet.cli import main

    rc = main(["bench", "--dim", "3", "--widths", "8", "--repeats", "2", "--warmup", "1", "--budget", "1",
               "--samples", "2,4", "--batch", "1", "--no-memory", "--backends", "numpy", "--no-plot",
               "--out", str(tmp_path)])  # fmt: skip
    assert rc == 0
    import json

    (path,) = tmp_path.glob("*.json")
    (est,) = json.loads(path.read_text())["estimates"]
    assert est["samples"] == 4 and est["std"] > 0
    assert abs(est["estimate"] - est["exact"]) < 6 * est["std"]


def test_return_std_of_a_composition_runs_its_groups_apart():
    """The Rademacher bi-Laplacian is estimated by composition ``Δ̂(Δ̂f)``: its sample groups cannot share one
    top sum and run one after the other; the standard error is still there, and the estimate unbiased."""
    def g(x):
        return np.tanh(_W1[:, :3] @ x) @ _W2

    X = _X[:, :3]
    plans = api._plans(mj.Bilaplacian(), 3, 8, "rademacher", 1, None, True)
    assert plans[0].compositions and api._runs(plans, "collapsed") == plans
    est, std = mj.bilaplacian(g, X, samples=8, seed=1, distribution="rademacher", return_std=True)
    assert est.shape == std.shape == (3,) and np.all(std > 0)
    ests = [mj.bilaplacian(g, X, samples=8, seed=s, distribution="rademacher") for s in range(200)]
    np.testing.assert_array_less(np.abs(np.mean(ests, 0) - mj.bilaplacian(g, X)), 4 * np.std(ests, 0) / np.sqrt(200))
