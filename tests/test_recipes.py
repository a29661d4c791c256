"""docs/ARCHITECTURE.md's recipes, each exercised by adding a toy one: a new elementwise function
(registered once, checked on every backend against nested AD), a new operator (one subclass, every backend),
and a new backend (a toy tracer on the shared engine, checked against the NumPy reference)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

import multijet as mj
from multijet import derivatives, extend
from multijet.backends import BACKENDS, register_backend

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
X = np.array([[0.3, -0.4, 0.7], [0.1, 0.5, -0.6]])


# --- a new elementwise function: erfc, registered once ---------------------------------------------------------


_TABLE_CALLS = [0]


def _erfc_table(xp, x0, y0, K):
    """``erfc^{(k)} = −erf^{(k)}``; counts its calls, so a test sees that this table ran."""
    _TABLE_CALLS[0] += 1
    return [None if d is None else -d for d in derivatives.TABLE["erf"](xp, x0, y0, K)]


@pytest.fixture(scope="module")
def erfc_registered():
    natives = {"numpy": np.vectorize(math.erfc, otypes=[np.float64])}
    if HAS_TORCH:
        natives["torch"] = "erfc"  # the ATen op torch.ops.aten.erfc
    if HAS_JAX:
        natives["jax"] = "erfc"  # the primitive lax.erfc_p
    with extend.register_elementwise("erfc", _erfc_table, **natives) as registration:
        yield registration
    assert "erfc" not in derivatives.TABLE and "erfc" not in extend.registered()


def _erfc_program(backend: str):
    """``f(x) = Σ_i erfc(x_i) x_i + erfc(x_0 x_1)`` in the backend's own functions, and the points."""
    if backend == "numpy":
        from array_api_compat import array_namespace

        def erfc(v):
            return array_namespace(v).erfc(v)

        def total(v):
            return array_namespace(v).sum(v)

        x = X
    elif backend == "torch":
        import torch

        erfc, total, x = torch.erfc, torch.sum, torch.as_tensor(X)
    else:
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        from jax import lax

        erfc, total, x = lax.erfc, jnp.sum, jnp.asarray(X)
    return (lambda x: total(erfc(x) * x) + erfc(x[0] * x[1])), x


def _erfc_laplacian(x):
    """``Δf`` by hand: ``(x erfc x)'' = 4/√π e^{−x²}(x² − 1)``, ``erfc''(t) = 4t/√π e^{−t²}``."""
    t = x[:, 0] * x[:, 1]
    c = 4 / math.sqrt(math.pi)
    return (c * np.exp(-(x**2)) * (x**2 - 1)).sum(1) + c * t * np.exp(-(t**2)) * (x[:, 0] ** 2 + x[:, 1] ** 2)


@pytest.mark.parametrize(
    "backend",
    [
        "numpy",
        pytest.param("torch", marks=pytest.mark.skipif(not HAS_TORCH, reason="needs torch")),
        pytest.param("jax", marks=pytest.mark.skipif(not HAS_JAX, reason="needs jax")),
    ],
)
def test_toy_elementwise_on_every_backend(erfc_registered, backend):
    f, x = _erfc_program(backend)
    want = _erfc_laplacian(X)
    mj.set_strict(True)  # a generic fallback raises: what runs is the registered table
    try:
        for method in ("collapsed", "standard"):
            calls = _TABLE_CALLS[0]
            got = mj.laplacian(f, x, method=method)
            assert _TABLE_CALLS[0] > calls, f"{backend}/{method} did not use the registered table"
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)
            if backend == "numpy":  # no framework AD: the hand-written Laplacian is the reference
                continue
            np.testing.assert_allclose(np.asarray(got), np.asarray(mj.laplacian(f, x, method="nested")), rtol=1e-12)
            np.testing.assert_allclose(
                np.asarray(mj.bilaplacian(f, x, method=method)),
                np.asarray(mj.bilaplacian(f, x, method="nested")),
                rtol=1e-9,
            )
    finally:
        mj.set_strict(False)


def test_unregister_elementwise_restores_the_tables():
    from array_api_compat import array_namespace

    def f(x):
        xp = array_namespace(x)
        return xp.sum(xp.toy_erfc(x))

    with mj.register_elementwise("toy_erfc", _erfc_table, numpy=np.vectorize(math.erfc, otypes=[np.float64])) as r:
        assert extend.registered()["toy_erfc"] == ("numpy",)
        assert np.isfinite(mj.laplacian(f, X)).all()
    assert "toy_erfc" not in derivatives.TABLE and "toy_erfc" not in extend.registered()
    with pytest.raises(AttributeError):
        mj.laplacian(f, X)
    r.remove()  # removing twice is a no-op


@pytest.mark.jax
def test_unregister_restores_the_jax_table():
    """Removing a JAX registration restores what the primitive meant before (here: the generic rule)."""
    pytest.importorskip("jax")
    import jax.numpy as jnp
    from jax import lax

    from multijet.backends import jax_table

    before = (jax_table.RULES.pop("erfc", None), jax_table.KINDS.pop("erfc", None))  # as if never registered
    try:
        with mj.register_elementwise("toy_erfc_jax", _erfc_table, jax="erfc"):
            assert jax_table.KINDS["erfc"] == "elementwise"
        assert "erfc" not in jax_table.RULES and "erfc" not in jax_table.KINDS
        x = jnp.asarray(X)
        want = mj.laplacian(lambda v: jnp.sum(lax.erfc(v)), x, method="nested")
        with pytest.warns(mj.GenericRuleWarning, match="erfc"):
            got = mj.laplacian(lambda v: jnp.sum(lax.erfc(v)) * 1.0, x)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5)
    finally:
        if before[0] is not None:
            jax_table.RULES["erfc"], jax_table.KINDS["erfc"] = before


# --- a new operator: Σ_i a_i ∂_i⁴ as one subclass --------------------------------------------------------------


class AxialFourth(mj.Operator):
    """``Σ_i a_i ∂_i⁴ f``: a toy fourth-order operator without mixed terms."""

    order = 4

    def __init__(self, a):
        self.a = tuple(float(v) for v in a)

    def coefficients(self, dim):
        return {tuple(4 if j == i else 0 for j in range(dim)): c for i, c in enumerate(self.a) if c}

    def check_dim(self, dim):
        if dim != len(self.a):
            raise ValueError(f"AxialFourth has {len(self.a)} coefficients, the input has dimension {dim}")

    def _key(self):
        return ("AxialFourth", self.a)


OP = AxialFourth([1.0, 2.0, 0.5])


def _axial_oracle(point_fn, x):
    """``Σ a_i ∂_i⁴ f`` by finite differences of a 1-D polynomial fit in float64 along each axis."""
    h = 0.05
    ts = np.linspace(-4, 4, 17) * h
    total = 0.0
    for i, a in enumerate(OP.a):
        e = np.eye(3)[i]
        vals = np.array([point_fn(x + t * e) for t in ts])
        coef = np.polynomial.polynomial.polyfit(ts, vals, 10)
        total += a * coef[4] * math.factorial(4)
    return total


def _np_f(xp):
    return lambda x: xp.sin(x[0] * x[1]) + xp.exp(x[2]) * x[0] ** 2


def test_toy_operator_on_numpy():
    f = _np_f(np)
    got = mj.apply(OP, f, X, backend="numpy")
    want = [_axial_oracle(f, x) for x in X]
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.skipif(not HAS_JAX, reason="needs jax")
def test_toy_operator_on_jax():
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    f = _np_f(jnp)
    x = jnp.asarray(X)
    for method in ("collapsed", "standard"):
        np.testing.assert_allclose(mj.apply(OP, f, x, method=method), mj.apply(OP, f, x, method="nested"), rtol=1e-10)
    np.testing.assert_allclose(mj.apply(OP, f, x), mj.apply(OP, _np_f(np), X, backend="numpy"), rtol=1e-10)


@pytest.mark.skipif(not HAS_TORCH, reason="needs torch")
def test_toy_operator_on_torch():
    import torch

    f = _np_f(torch)
    x = torch.as_tensor(X)
    for method in ("collapsed", "standard"):
        torch.testing.assert_close(mj.apply(OP, f, x, method=method), mj.apply(OP, f, x, method="nested"))
    np.testing.assert_allclose(mj.apply(OP, f, x).numpy(), mj.apply(OP, _np_f(np), X, backend="numpy"), rtol=1e-10)


# --- a new backend: the toy tracer of tests/toy_backend.py ----------------------------------------------------


@pytest.fixture(scope="module")
def toy():
    register_backend("toy", "toy_backend", "numpy")
    yield
    BACKENDS.pop("toy", None)


def _toy_mlp(ns):
    r = np.random.default_rng(3)
    W1, b1, W2 = r.normal(size=(3, 6)), r.normal(size=6), r.normal(size=6)

    def f(x):
        h = ns.tanh(x @ W1 + b1)
        return ns.sum(ns.sin(h * h) * W2) - ns.sum(x * x)

    return f


MIXED = mj.Laplacian() + mj.LinearOperator({(1, 0, 0): 2.0, (0, 0, 1): -1.0, (0, 0, 0): 0.5})  # served by Δ's group


@pytest.mark.parametrize(
    "op", [mj.Laplacian(), mj.Bilaplacian(), OP, mj.WeightedLaplacian(np.diag([1.0, 2.0, 3.0])), MIXED]
)
def test_toy_backend_matches_the_numpy_reference(toy, op):
    import toy_backend

    assert "toy" in mj.available_backends()
    want = mj.apply(op, _toy_mlp(np), X, backend="numpy")
    for method in ("collapsed", "standard"):
        got = mj.apply(op, _toy_mlp(toy_backend), X, backend="toy", method=method)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_toy_backend_gradient(toy):
    import toy_backend

    value, grad, lap = mj.laplacian(_toy_mlp(toy_backend), X, backend="toy", return_grad=True)
    v2, g2, l2 = mj.laplacian(_toy_mlp(np), X, backend="numpy", return_grad=True)
    np.testing.assert_allclose(value, v2, rtol=1e-12)
    np.testing.assert_allclose(grad, g2, rtol=1e-10)
    np.testing.assert_allclose(lap, l2, rtol=1e-10)
