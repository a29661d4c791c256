"""The NumPy reference backend: every operator × method on MLPs and non-MLP programs, against float64
oracles that never touch multijet (finite differences, polynomial fits, closed forms)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import apply_coefficients, fd_hessian, taylor_fit
from programs import EXTRA_PROGRAMS, POINTS, SCALAR_PROGRAMS, vector_output

import multijet as mj

METHODS = ["collapsed", "standard"]
C_INDEF = np.array([[1.0, 0.4, -0.3], [0.4, -0.5, 0.2], [-0.3, 0.2, 2.0]])
SIGMA = np.array([[1.0, 0.3], [-0.2, 0.8], [0.5, 0.0]])


ALL_PROGRAMS = {**SCALAR_PROGRAMS, **EXTRA_PROGRAMS}


@pytest.fixture(scope="module")
def fits():
    """Derivatives up to order 4 of every program at every point, from local polynomial fits."""
    return {
        (name, i): taylor_fit(lambda z, f=f: float(f(z)), POINTS[i], degree=8, radius=0.1)
        for name, f in ALL_PROGRAMS.items()
        for i in range(len(POINTS))
    }


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(ALL_PROGRAMS))
def test_second_order_operators_against_finite_differences(name, method):
    f = ALL_PROGRAMS[name]
    H = np.stack([fd_hessian(lambda z: float(f(z)), p) for p in POINTS])
    lap = mj.laplacian(f, POINTS, method=method)
    assert isinstance(lap, np.ndarray) and lap.shape == (2,) and lap.dtype == np.float64
    np.testing.assert_allclose(lap, np.trace(H, axis1=1, axis2=2), rtol=1e-6, atol=1e-6)
    wl = mj.weighted_laplacian(f, POINTS, C_INDEF, method=method)
    np.testing.assert_allclose(wl, np.einsum("ij,nij->n", C_INDEF, H), rtol=1e-6, atol=1e-6)
    wf = mj.weighted_laplacian(f, POINTS, factor=SIGMA, method=method)
    np.testing.assert_allclose(wf, np.einsum("ij,nij->n", SIGMA @ SIGMA.T, H), rtol=1e-6, atol=1e-6)
    single = mj.laplacian(f, POINTS[1], method=method)
    assert np.ndim(single) == 0 and float(single) == pytest.approx(lap[1], rel=1e-12, abs=1e-12)


OPERATORS = {
    "bilaplacian": mj.Bilaplacian(),
    "mixed_order": mj.LinearOperator({(1, 1, 1): 0.5, (0, 2, 1): -1.0, (1, 0, 0): 2.0, (0, 0, 0): 0.3, (3, 0, 0): 0.7}),
    "order4_sparse": mj.LinearOperator({(4, 0, 0): 1.0, (2, 2, 0): 2.0, (0, 1, 3): -0.5}),
    "helmholtz": mj.Laplacian() + 4.0 * mj.LinearOperator({(0, 0, 0): 1.0}),
    "lap_plus_bilap": mj.Laplacian() - 0.1 * mj.Bilaplacian(),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("opname", sorted(OPERATORS))
@pytest.mark.parametrize("name", sorted(ALL_PROGRAMS))
def test_higher_order_operators_against_polynomial_fit(name, opname, method, fits):
    op = OPERATORS[opname]
    got = mj.apply(op, ALL_PROGRAMS[name], POINTS, method=method)
    want = [apply_coefficients(fits[(name, i)], op.coefficients(3)) for i in range(len(POINTS))]
    scale = 1 + max(abs(v) for v in want)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * scale)


@pytest.mark.parametrize("method", METHODS)
def test_exact_closed_form_any_operator(method, rng):
    """P e^{a·x} = (Σ_α c_α a^α) e^{a·x} for random operators up to order 4 in up to 5 variables."""
    from array_api_compat import array_namespace
    from test_core_plan import _random_operator

    for dim in (1, 2, 5):
        a = rng.normal(size=dim)

        def f(x, a=a):
            xp = array_namespace(x)
            return xp.exp(xp.sum(xp.asarray(a) * x))

        for _ in range(3):
            op = _random_operator(rng, dim, (0, 1, 2, 3, 4), 5)
            x = rng.normal(size=(2, dim)) * 0.3
            factor = sum(c * np.prod(a ** np.array(al)) for al, c in op.coefficients(dim).items())
            np.testing.assert_allclose(mj.apply(op, f, x, method=method), factor * np.exp(x @ a), rtol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_vector_valued_output(method):
    got = mj.laplacian(vector_output, POINTS, method=method)
    assert got.shape == (2, 3)
    for i, p in enumerate(POINTS):
        for k in range(3):
            H = fd_hessian(lambda z, k=k: float(vector_output(z)[k]), p)
            assert got[i, k] == pytest.approx(np.trace(H), rel=1e-6, abs=1e-6)


def test_return_grad_gives_value_gradient_laplacian():
    f = SCALAR_PROGRAMS["mlp_tanh"]
    value, grad, lap = mj.laplacian(f, POINTS, return_grad=True)
    np.testing.assert_allclose(value, [f(p) for p in POINTS], rtol=1e-14)
    eps = 1e-6
    fd = np.array([[(f(p + eps * e) - f(p - eps * e)) / (2 * eps) for e in np.eye(3)] for p in POINTS])
    np.testing.assert_allclose(grad, fd, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(lap, mj.laplacian(f, POINTS), rtol=1e-14)
    # also for operators whose plan has no unit directions (an extra first-order pass)
    _, g2, _ = mj.bilaplacian(f, POINTS, return_grad=True)
    np.testing.assert_allclose(g2, grad, rtol=1e-12)


def test_float32_keeps_dtype():
    f = SCALAR_PROGRAMS["mlp_tanh"]
    x32 = POINTS.astype(np.float32)
    got = mj.laplacian(f, x32)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, mj.laplacian(f, POINTS), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_randomised_laplacian_unbiased_and_reproducible(distribution):
    f = SCALAR_PROGRAMS["mlp_tanh"]
    exact = mj.laplacian(f, POINTS[0])
    runs = np.array([mj.laplacian(f, POINTS[0], samples=3, distribution=distribution, seed=s) for s in range(600)])
    se = runs.std(ddof=1) / np.sqrt(runs.size)
    assert abs(runs.mean() - exact) < 4 * se
    assert runs.std() > 0
    a = mj.laplacian(f, POINTS, samples=5, seed=11, distribution=distribution)
    b = mj.laplacian(f, POINTS, samples=5, seed=11, distribution=distribution)
    np.testing.assert_array_equal(a, b)
    col = mj.laplacian(f, POINTS, samples=5, seed=11, distribution=distribution, method="standard")
    np.testing.assert_allclose(a, col, rtol=1e-12)


def test_randomised_bilaplacian_unbiased():
    f = SCALAR_PROGRAMS["exp_log"]
    exact = mj.bilaplacian(f, POINTS[0])
    runs = np.array([mj.bilaplacian(f, POINTS[0], samples=4, seed=s) for s in range(1500)])
    se = runs.std(ddof=1) / np.sqrt(runs.size)
    assert abs(runs.mean() - exact) < 4 * se


def test_randomised_weighted_laplacian_indefinite_unbiased():
    f = SCALAR_PROGRAMS["mlp_sin"]
    exact = mj.weighted_laplacian(f, POINTS[0], C_INDEF)
    runs = np.array([mj.weighted_laplacian(f, POINTS[0], C_INDEF, samples=3, seed=s) for s in range(800)])
    se = runs.std(ddof=1) / np.sqrt(runs.size)
    assert abs(runs.mean() - exact) < 4 * se


def test_compile_reuses_plan():
    f = SCALAR_PROGRAMS["residual"]
    comp = mj.compile(mj.Laplacian(), f, POINTS)
    np.testing.assert_allclose(comp(POINTS), mj.laplacian(f, POINTS), rtol=1e-14)
    np.testing.assert_allclose(comp(POINTS[0]), mj.laplacian(f, POINTS[0]), rtol=1e-14)
    assert "Laplacian" in repr(comp)
    with pytest.raises(ValueError, match="compiled for D=3"):
        comp(np.zeros(4))


def test_numpy_functions_on_the_tracer():
    """Programs written with np.* directly (ufuncs, np.sum) trace too."""
    W = np.array([[0.5, -0.2, 0.1], [0.3, 0.7, -0.4]])

    def f(x):
        return np.sum(np.tanh(W @ x) ** 2) + np.exp(x[0]) * np.cos(x[1])

    H = fd_hessian(f, POINTS[0])
    assert mj.laplacian(f, POINTS[0]) == pytest.approx(np.trace(H), rel=1e-6)


def test_data_dependent_control_flow_falls_back_per_point():
    def f(x):
        return x[0] ** 3 if x[1] > 0 else x[0] ** 2

    x = np.array([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0]])
    np.testing.assert_allclose(mj.laplacian(f, x), [6.0, 2.0])


def test_constant_function_and_linear_function():
    np.testing.assert_array_equal(mj.laplacian(lambda x: 3.0, POINTS), [0.0, 0.0])
    np.testing.assert_array_equal(mj.laplacian(lambda x: 2 * x[0] + x[1], POINTS), [0.0, 0.0])
    first = mj.LinearOperator({(1, 0, 0): 1.0})
    np.testing.assert_allclose(mj.apply(first, lambda x: 2 * x[0] + x[1], POINTS), [2.0, 2.0])


def test_import_pulls_in_no_framework():
    import subprocess

    code = "import sys, multijet; assert 'torch' not in sys.modules and 'jax' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- errors ------------------------------------------------------------------------------------------------------


def test_unknown_backend_lists_installed():
    with pytest.raises(mj.BackendError, match=r"unknown backend 'tensorflow'; installed backends: \[.*'numpy'"):
        mj.laplacian(SCALAR_PROGRAMS["mlp_tanh"], POINTS, backend="tensorflow")


def test_bad_arguments():
    f = SCALAR_PROGRAMS["mlp_tanh"]
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        mj.laplacian(f, POINTS, method="fast")
    with pytest.raises(ValueError, match="nested.*NumPy backend has none"):
        mj.laplacian(f, POINTS, method="nested")
    with pytest.raises(ValueError, match="unknown distribution"):
        mj.laplacian(f, POINTS, samples=3, distribution="sobol")
    with pytest.raises(mj.PlanError, match="Rademacher"):
        mj.bilaplacian(f, POINTS, samples=3, distribution="rademacher", route="directions")
    with pytest.raises(ValueError, match=r"shape \(D,\) or \(N, D\)"):
        mj.laplacian(f, np.zeros((2, 2, 3)))
    with pytest.raises(TypeError, match="floating-point"):
        mj.laplacian(f, np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="symmetric"):
        mj.weighted_laplacian(f, POINTS, np.array([[1.0, 1.0, 0], [0, 1.0, 0], [0, 0, 1.0]]))
    with pytest.raises(ValueError, match="D=3"):
        mj.weighted_laplacian(f, POINTS, np.eye(2))
    with pytest.raises(ValueError, match="length 2 but x has dimension D=3"):
        mj.apply(mj.LinearOperator({(2, 0): 1.0}), f, POINTS)
    with pytest.raises(TypeError, match="operator spec"):
        mj.apply("laplacian", f, POINTS)


def test_unsupported_primitive_names_op_backend_and_line():
    def f(x):
        return np.linalg.det(np.reshape(x[:2] * x[1:], (1, 2)) @ np.ones((2, 1)))

    with pytest.raises(mj.UnsupportedPrimitiveError) as info:
        mj.laplacian(f, POINTS)
    msg = str(info.value)
    assert "'numpy'" in msg and "det" in msg and "test_numpy_backend.py" in msg and "register_rule" in msg
    assert isinstance(info.value, NotImplementedError)


def test_register_rule_extends_the_namespace():
    from array_api_compat import array_namespace

    from multijet.backends import numpy as npb

    npb.register_rule("silu", lambda xp, x: x * xp.sigmoid(x))

    def f(x):
        xp = array_namespace(x)
        return xp.sum(xp.silu(x))

    def ref(z):
        return float(np.sum(z / (1 + np.exp(-z))))

    assert mj.laplacian(f, POINTS[0]) == pytest.approx(np.trace(fd_hessian(ref, POINTS[0])), rel=1e-6)


# --- non-smooth points: the tie conventions documented in multijet.backends.numpy ---------------------------------


def _xp(x):
    from array_api_compat import array_namespace

    return array_namespace(x)


#: name -> (f, x, Laplacian, gradient), each hand-computed from the convention at an exact tie
TIES = {
    # maximum/minimum split ties: y_1 = (v_0 + v_1)/2, so Δ(y²) = 2 (1/4 + 1/4)
    "maximum_split": (lambda x: _xp(x).maximum(x[0], x[1]) ** 2, [0.5, 0.5, -1.0], 1.0, [0.5, 0.5, 0.0]),
    "minimum_split": (lambda x: _xp(x).minimum(x[0], x[1]) ** 2, [0.5, 0.5, 2.0], 1.0, [0.5, 0.5, 0.0]),
    # the max reduction splits among all tied entries: y_1 = Σ v_i / 3
    "max_reduction_split": (lambda x: _xp(x).max(x) ** 2, [0.5, 0.5, 0.5], 2 / 3, [1 / 3, 1 / 3, 1 / 3]),
    "min_reduction_split": (lambda x: _xp(x).min(x) ** 2, [0.5, 0.5, 0.7], 1.0, [0.5, 0.5, 0.0]),
    # clip is inclusive: on a bound x keeps its derivative (torch's clamp)
    "clip_inclusive": (lambda x: _xp(x).sum(_xp(x).clip(x, -1.0, 0.5) ** 2), [0.5, 0.5, -1.0], 6.0, [1.0, 1.0, -2.0]),
    "clip_one_sided": (lambda x: _xp(x).sum(_xp(x).clip(x, max=0.5) ** 2), [0.5, 0.5, -1.0], 6.0, [1.0, 1.0, -2.0]),
    # where follows the branch its predicate picks at x_0
    "where_branch": (lambda x: _xp(x).sum(_xp(x).where(x >= 0.5, x**2, 3 * x**3)), [0.5, 0.5, -1.0], -14.0, [1, 1, 9]),
    # |x|' = sign(x) = 0 at 0: Δ (|x_0| + x_1)² = 2 (0² + 1²)
    "abs_zero_at_zero": (lambda x: (_xp(x).abs(x[0]) + x[1]) ** 2, [0.0, 1.0, 0.0], 2.0, [0.0, 2.0, 0.0]),
    # a stable sort keeps tied entries in order, ascending and descending: sort(x)[0] = x_0
    "sort_stable": (lambda x: _xp(x).sort(x)[0] * x[0], [0.5, 0.5, 0.5], 2.0, [1.0, 0.0, 0.0]),
    "sort_descending": (lambda x: _xp(x).sort(x, descending=True)[0] * x[0], [0.5, 0.5, 0.5], 2.0, [1.0, 0.0, 0.0]),
    # argmax has no derivative and returns the first maximum
    "argmax_first": (lambda x: x[_xp(x).argmax(x)] * x[0], [0.5, 0.5, 0.5], 2.0, [1.0, 0.0, 0.0]),
}


@pytest.mark.parametrize("name", sorted(TIES))
def test_exact_ties_follow_the_documented_convention(name):
    f, x, lap, grad = TIES[name]
    x = np.array(x)
    got = {m: mj.laplacian(f, x, method=m, return_grad=True) for m in METHODS}
    for method, (_, g, result) in got.items():
        assert float(result) == pytest.approx(lap, abs=1e-12), method
        np.testing.assert_allclose(g, grad, atol=1e-12, err_msg=method)
    assert float(got["collapsed"][2]) == float(got["standard"][2])


# --- the jet program can be captured again: Δ(Δf) = Δ²f ------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["mlp_tanh", "products_quotients", "piecewise", "linalg_sort"])
def test_laplacian_of_laplacian_is_bilaplacian(name, method):
    f = ALL_PROGRAMS[name]

    def lap(x):
        return mj.laplacian(f, x, backend="numpy", method=method)

    nested = mj.laplacian(lap, POINTS, backend="numpy", method=method)
    assert isinstance(nested, np.ndarray) and nested.shape == (2,)
    np.testing.assert_allclose(nested, mj.bilaplacian(f, POINTS, backend="numpy"), rtol=1e-12, atol=1e-12)


def test_nested_operators_with_control_flow_and_gradient():
    def f(x):
        return x[0] ** 4 if x[1] > 0 else x[0] ** 2 * x[2] ** 2

    x = np.array([[1.0, 1.0, 0.3], [1.0, -1.0, 0.3]])
    np.testing.assert_allclose(mj.laplacian(lambda z: mj.laplacian(f, z), x), [24.0, 8.0], rtol=1e-12)

    def sum_of_gradient(z):  # Σ_i ∂_i Σ_j x_j³ = 3 Σ x_i², whose Laplacian is 18
        _, grad, _ = mj.laplacian(lambda y: _xp(y).sum(y**3), z, return_grad=True)
        return _xp(grad).sum(grad)

    np.testing.assert_allclose(mj.laplacian(sum_of_gradient, POINTS), [18.0, 18.0], rtol=1e-12)


@pytest.fixture
def erfc_np():
    import math

    from multijet.derivatives import TABLE

    def erfc_table(xp, x0, y0, K):
        return [None if d is None else -d for d in TABLE["erf"](xp, x0, y0, K)]

    with mj.register_elementwise("erfc_np", erfc_table, numpy=np.vectorize(math.erfc, otypes=[np.float64])):
        yield  # removed again afterwards


def test_register_elementwise_gives_the_namespace_a_function(erfc_np):
    import math

    def f(x):
        xp = _xp(x)
        return xp.sum(xp.erfc_np(x) * x) + xp.erfc_np(x[0] * x[1])

    def ref(z):
        return float(sum(math.erfc(v) * v for v in z) + math.erfc(z[0] * z[1]))

    want = [np.trace(fd_hessian(ref, p)) for p in POINTS]
    for method in METHODS:
        np.testing.assert_allclose(mj.laplacian(f, POINTS, method=method), want, rtol=1e-6, atol=1e-6)
    nested = mj.laplacian(lambda x: mj.laplacian(f, x), POINTS)
    np.testing.assert_allclose(nested, mj.bilaplacian(f, POINTS), rtol=1e-10)
