"""``mj.compare``: agreement passes, a planted disagreement on any backend is caught, native programs are checked
against their framework's nested AD, errors are reported, tolerances scale with dtype and order."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
from programs import POINTS, mlp_tanh, products_quotients

import multijet as mj
from multijet.backends import available_backends
from multijet.compare import CompareReport, tolerance


def _need(name: str):
    if name not in available_backends():
        pytest.skip(f"backend {name!r} is not installed here")
    try:
        return importlib.import_module(f"multijet.backends.{name}")
    except Exception as exc:  # noqa: BLE001 - a broken backend skips its tests, it does not pass them
        pytest.skip(f"backend {name!r} does not import: {exc}")


def _plant(monkeypatch, module, method: str, rel: float = 1e-6) -> None:
    """Make ``module.run`` return a perturbed result for ``method`` (works on NumPy, torch and JAX arrays)."""
    original = module.run

    def perturbed(plan, f, x, *, method_=None, **kwargs):
        value, result, grad = original(plan, f, x, **kwargs)
        if kwargs.get("method") == method:
            result = result + rel * (1.0 + abs(result))
        return value, result, grad

    monkeypatch.setattr(module, "run", lambda plan, f, x, **kw: perturbed(plan, f, x, **kw))


def test_numpy_methods_agree_and_report_prints():
    rep = mj.compare(mj.Laplacian(), products_quotients, POINTS, backends=["numpy"])
    assert isinstance(rep, CompareReport)
    assert rep.passed and bool(rep)
    assert {c.name for c in rep.results} == {"numpy/collapsed", "numpy/standard"}
    assert rep.reference == "numpy/collapsed"
    assert len(rep.pairs) == 1 and rep.pairs[0].max_abs <= rep.pairs[0].tol
    assert rep.values["numpy/standard"].shape == (2,) and rep.values["numpy/standard"].dtype == np.float64
    text = str(rep)
    assert "numpy" in text and "standard" in text and text.strip().splitlines()[-1].startswith("PASS")
    assert "FAIL" in rep.table(pairs=True) or "pass" in rep.table(pairs=True)
    json.dumps(rep.to_dict())  # serialisable


def test_every_installed_backend_agrees():
    rep = mj.compare(mj.Bilaplacian(), mlp_tanh, POINTS)
    names = {c.name for c in rep.results}
    assert rep.passed, str(rep)
    assert not rep.errors, rep.errors
    for b in available_backends():
        assert f"{b}/collapsed" in names and f"{b}/standard" in names
        if b != "numpy":
            assert f"{b}/nested" in names
    assert len(rep.pairs) == len(names) * (len(names) - 1) // 2


def test_randomised_compare_uses_the_same_directions():
    rep = mj.compare(mj.Laplacian(), mlp_tanh, POINTS, backends=["numpy"], samples=3, seed=5)
    assert rep.passed and rep.samples == 3


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_planted_disagreement_is_caught(monkeypatch, backend):
    module = _need(backend)
    _plant(monkeypatch, module, "standard")
    rep = mj.compare(mj.Laplacian(), mlp_tanh, POINTS, backends=["numpy", backend] if backend != "numpy" else None)
    assert not rep.passed and not bool(rep)
    bad = {n for p in rep.failures for n in (p.a, p.b)}
    assert f"{backend}/standard" in bad
    assert all(f"{backend}/standard" in (p.a, p.b) for p in rep.failures)  # only pairs with the planted one fail
    assert "FAIL" in str(rep) and "DISAGREES" in str(rep)
    with pytest.raises(AssertionError, match="FAIL"):
        rep.assert_passed()


def test_planted_disagreement_in_float32_is_caught(monkeypatch):
    module = _need("numpy")
    _plant(monkeypatch, module, "collapsed", rel=1e-2)
    rep = mj.compare(mj.Laplacian(), mlp_tanh, POINTS, backends=["numpy"], dtype="float32")
    assert rep.dtype == "float32" and not rep.passed


def test_errors_are_reported_not_fatal(monkeypatch):
    module = _need("numpy")

    def broken(plan, f, x, *, method, return_grad=False):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(module, "run", broken)
    rep = mj.compare(mj.Laplacian(), mlp_tanh, POINTS, backends=["numpy", "nonexistent"])
    assert "planted failure" in rep.errors["numpy/collapsed"]
    assert "not installed" in rep.errors["nonexistent/*"]
    assert not rep.passed and "INCONCLUSIVE" in rep.verdict()


def test_tolerance_scales_with_dtype_and_order():
    r64_2, a64 = tolerance("float64", 2)
    r64_4, _ = tolerance(np.float64, 4)
    r32_2, a32 = tolerance("float32", 2)
    assert r64_2 < r64_4 < r32_2 and a64 < a32
    assert 1e-12 < r64_2 < 1e-8 and 1e-5 < r32_2 < 1e-2


def test_compare_is_callable_after_submodule_import():
    import multijet.compare  # noqa: F401 - rebinding the package attribute must not break mj.compare(...)

    assert mj.compare(mj.Laplacian(), mlp_tanh, POINTS[0], backends=["numpy"]).passed


def test_torch_module_is_checked_against_its_nested_ad():
    _need("torch")
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    rep = mj.compare(mj.Laplacian(), net, POINTS)
    assert rep.native == "torch" and rep.reference == "torch/nested"
    assert {c.backend for c in rep.candidates} == {"torch"}
    assert rep.passed, str(rep)
    net32 = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    rep32 = mj.compare(mj.Laplacian(), net32, POINTS)  # NumPy input follows the module's float32
    assert rep32.dtype == "float32" and rep32.passed, str(rep32)


def test_jax_function_with_jax_input_float32():
    _need("jax")
    import jax.numpy as jnp

    W = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), dtype=jnp.float32)

    def f(x):
        return jnp.sum(jnp.tanh(W @ x))

    rep = mj.compare(mj.Laplacian(), f, jnp.asarray(POINTS, dtype=jnp.float32))
    assert rep.native == "jax" and rep.dtype == "float32" and rep.reference == "jax/nested"
    assert rep.passed, str(rep)


def test_operator_and_input_errors_are_raised_once():
    with pytest.raises(mj.PlanError, match="randomised"):
        mj.compare(mj.LinearOperator({(1, 1, 1): 1.0}), mlp_tanh, POINTS, backends=["numpy"], samples=4)
    with pytest.raises(ValueError, match="shape"):
        mj.compare(mj.Laplacian(), mlp_tanh, np.ones((2, 2, 3)), backends=["numpy"])
    with pytest.raises(ValueError, match="unknown method"):
        mj.compare(mj.Laplacian(), mlp_tanh, POINTS, methods=["fastest"])
    with pytest.raises(TypeError, match="operator spec"):
        mj.compare("laplacian", mlp_tanh, POINTS)


def test_nans_in_the_same_places_agree():
    _need("numpy")

    def f(x):
        from array_api_compat import array_namespace

        xp = array_namespace(x)
        return xp.sum(xp.sqrt(x))

    x = np.array([[1.0, 2.0], [-1.0, 2.0]])
    rep = mj.compare(mj.Laplacian(), f, x, backends=["numpy"])
    assert np.isnan(rep.values["numpy/collapsed"][1]) and rep.passed, str(rep)


def test_a_candidate_that_raises_fails_unless_allowed(monkeypatch):
    module = _need("numpy")
    original = module.run

    def broken(plan, f, x, *, method, return_grad=False):
        if method == "standard":
            raise RuntimeError("planted failure")
        return original(plan, f, x, method=method, return_grad=return_grad)

    monkeypatch.setattr(module, "run", broken)
    backends = [b for b in available_backends() if b != "numpy"][:1] + ["numpy"]
    if len(backends) < 2:
        pytest.skip("needs a second backend")
    rep = mj.compare(mj.Laplacian(), mlp_tanh, POINTS, backends=backends)
    assert not rep.passed and "numpy/standard" in rep.verdict() and "raised" in rep.verdict()
    assert mj.compare(mj.Laplacian(), mlp_tanh, POINTS, backends=backends, allow_errors=True).passed


@pytest.mark.skipif(not {"torch", "jax"} <= set(available_backends()), reason="needs torch and jax")
def test_exact_tie_is_reported_as_a_convention_not_a_failure():
    """At x = (½, 0.1, −½), Δ Σ clip(x, −½, ½)² is 6 under torch's convention and 3 under JAX's: compare says
    the pairs differ only at an exact tie (they agree beside x) instead of failing."""

    from array_api_compat import array_namespace

    def f(x):
        xp = array_namespace(x)
        return xp.sum(xp.clip(x, -0.5, 0.5) ** 2)

    report = mj.compare(mj.Laplacian(), f, np.array([0.5, 0.1, -0.5]), backends=["torch", "jax"])
    assert report.passed and report.ties
    assert all({p.a.split("/")[0], p.b.split("/")[0]} == {"torch", "jax"} for p in report.ties)
    assert "exact tie" in report.verdict() and "tie" in report.table()
    away = mj.compare(mj.Laplacian(), f, np.array([0.45, 0.1, -0.3]), backends=["torch", "jax"])
    assert away.passed and not away.ties


def test_planted_disagreement_beside_the_point_is_not_a_tie(monkeypatch):
    """A wrong result everywhere (not only at x) still fails."""
    import multijet.backends.numpy as nb

    original = nb.run

    def wrong(plan, f, x, *, method="collapsed", return_grad=False):
        value, result, grad = original(plan, f, x, method=method, return_grad=return_grad)
        return value, (result * 1.01 if method == "standard" else result), grad

    monkeypatch.setattr(nb, "run", wrong)
    report = mj.compare(mj.Laplacian(), mlp_tanh, POINTS[:2], backends=["numpy"])
    assert not report.passed and not report.ties
