"""Every shared Taylor rule and derivative table against high-precision derivatives (mpmath)."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from multijet import taylor
from multijet.derivatives import TABLE, derivatives

mpmath.mp.dps = 40

# name -> (mpmath function, numpy function, sample points inside the domain)
FUNCTIONS = {
    "tanh": (mpmath.tanh, np.tanh, [-1.3, 0.2, 0.9]),
    "sigmoid": (lambda x: 1 / (1 + mpmath.exp(-x)), lambda x: 1 / (1 + np.exp(-x)), [-2.0, 0.1, 1.5]),
    "sin": (mpmath.sin, np.sin, [-1.0, 0.3, 2.5]),
    "cos": (mpmath.cos, np.cos, [-1.0, 0.3, 2.5]),
    "tan": (mpmath.tan, np.tan, [-0.7, 0.2, 1.1]),
    "exp": (mpmath.exp, np.exp, [-1.0, 0.5]),
    "expm1": (mpmath.expm1, np.expm1, [-1.0, 0.5]),
    "log": (mpmath.log, np.log, [0.3, 1.7]),
    "log1p": (lambda x: mpmath.log(1 + x), np.log1p, [-0.5, 0.8]),
    "sqrt": (mpmath.sqrt, np.sqrt, [0.4, 2.3]),
    "rsqrt": (lambda x: 1 / mpmath.sqrt(x), lambda x: 1 / np.sqrt(x), [0.4, 2.3]),
    "reciprocal": (lambda x: 1 / x, lambda x: 1 / x, [-1.5, 0.7]),
    "square": (lambda x: x * x, np.square, [-1.5, 0.7]),
    "softplus": (lambda x: mpmath.log(1 + mpmath.exp(x)), lambda x: np.log1p(np.exp(x)), [-2.0, 0.3, 3.0]),
    "erf": (mpmath.erf, np.vectorize(math.erf), [-1.2, 0.0, 0.8]),
    "asin": (mpmath.asin, np.arcsin, [-0.6, 0.1, 0.8]),
    "acos": (mpmath.acos, np.arccos, [-0.6, 0.1, 0.8]),
    "atan": (mpmath.atan, np.arctan, [-2.0, 0.1, 0.8]),
    "asinh": (mpmath.asinh, np.arcsinh, [-2.0, 0.1, 0.8]),
    "acosh": (mpmath.acosh, np.arccosh, [1.3, 2.5]),
    "atanh": (mpmath.atanh, np.arctanh, [-0.6, 0.1, 0.8]),
    "sinh": (mpmath.sinh, np.sinh, [-1.0, 0.4]),
    "cosh": (mpmath.cosh, np.cosh, [-1.0, 0.4]),
}

K = 5


def _check_table(name, mp_fn, x0, **params):
    y0 = float(mp_fn(x0))
    table = derivatives(name, np, np.array(x0), np.array(y0), K, **params)
    for k, got in enumerate(table, start=1):
        want = float(mpmath.diff(mp_fn, x0, k))
        got = 0.0 if got is None else float(got)
        assert got == pytest.approx(want, rel=1e-10, abs=1e-10), (name, x0, k)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_derivative_table(name):
    mp_fn, _, points = FUNCTIONS[name]
    for x0 in points:
        _check_table(name, mp_fn, x0)


@pytest.mark.parametrize("p", [2.0, 3.0, 0.5, -1.0, -2.5, 1.7])
def test_power_table(p):
    _check_table("pow", lambda x: x**p, 1.3, exponent=p)


def test_power_table_marks_structural_zeros():
    table = derivatives("pow", np, np.array(2.0), np.array(4.0), 4, exponent=2.0)
    assert table[2] is None and table[3] is None
    assert float(table[0]) == 4.0 and float(table[1]) == 2.0


@pytest.mark.parametrize("name", ["relu", "abs"])
def test_piecewise_linear_tables(name):
    x0 = np.array([-1.5, 0.7])
    y0 = np.maximum(x0, 0) if name == "relu" else np.abs(x0)
    table = derivatives(name, np, x0, y0, 3)
    np.testing.assert_array_equal(table[0], np.array([0.0, 1.0]) if name == "relu" else np.array([-1.0, 1.0]))
    assert table[1] is None and table[2] is None


def test_every_table_is_tested():
    aliases = {"logistic": "sigmoid", "arcsin": "asin", "arccos": "acos", "arctan": "atan"}
    aliases |= {"arcsinh": "asinh", "arccosh": "acosh", "arctanh": "atanh"}
    for alias, name in aliases.items():
        assert TABLE[alias] is TABLE[name]
    assert set(TABLE) <= set(FUNCTIONS) | {"pow", "relu", "abs"} | set(aliases)


def test_faa_di_bruno_partition_counts():
    """The number of set partitions of {1..k} is the Bell number; the counts group them by block sizes."""
    bell = [1, 1, 2, 5, 15, 52, 203, 877]
    for k in range(1, 8):
        total = sum(count for _, terms in taylor.fdb_partitions(k) for count, _ in terms)
        assert total == bell[k]


def _univariate_ctx(order):
    return taylor.JetContext(order=order, collapsed=False, wsum=lambda a: a)


@pytest.mark.parametrize("name", ["tanh", "exp", "sin", "log", "atan", "erf"])
def test_faa_di_bruno_composition(name):
    """y = g(u(t)) with u a polynomial in t: the elementwise rule gives d^k/dt^k y at t = 0."""
    mp_fn, np_fn, points = FUNCTIONS[name]
    u = [0.4, 0.7, -0.3, 0.5, 0.2, -0.1]  # derivative-normalised coefficients of u at t=0
    u_mp = lambda t: sum(c * t**k / math.factorial(k) for k, c in enumerate(u))  # noqa: E731
    x = [np.array(c) for c in u]
    y0 = np_fn(x[0])
    out = taylor.elementwise(x, y0, derivatives(name, np, x[0], y0, K), _univariate_ctx(K))
    for k in range(K + 1):
        want = float(mpmath.diff(lambda t: mp_fn(u_mp(t)), 0, k))
        assert float(out[k]) == pytest.approx(want, rel=1e-10, abs=1e-10), (name, k)


def test_leibniz_product():
    a = [np.array(c) for c in [0.3, -1.2, 0.5, 2.0, -0.7]]
    b = [np.array(c) for c in [1.1, 0.4, -0.6, 0.2, 0.9]]
    poly = lambda c, t: sum(ci * t**k / math.factorial(k) for k, ci in enumerate(c))  # noqa: E731
    out = taylor.product(a, b, _univariate_ctx(4))
    for k in range(5):
        want = float(mpmath.diff(lambda t: poly(a, t) * poly(b, t), 0, k))
        assert float(out[k]) == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_structural_zeros_are_skipped():
    """With x = (x0, v, 0, 0): no term that multiplies a zero is formed, and zeros propagate as None."""
    ctx = _univariate_ctx(3)
    x = [np.array(0.5), np.array(1.0), None, None]
    lin = taylor.linear(x, lambda c: 2 * c)
    assert lin[2] is None and lin[3] is None
    y = taylor.elementwise(x, np.tanh(x[0]), [None, None, None], ctx)  # g with zero derivatives
    assert y[1:] == [None, None, None]
    z = taylor.product([np.array(2.0), None, None, None], x, ctx)
    assert z[2] is None and float(z[1]) == 2.0


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_collapsed_equals_standard(order, rng):
    """S_K of the collapsed rules equals Σ_r w_r y_K^{(r)} of the standard rules, for all rule kinds."""
    R, n = 5, 3
    w = rng.normal(size=R)

    def wsum(a):
        return np.tensordot(w, a, axes=([0], [0]))[None]

    std = taylor.JetContext(order, False, wsum)
    col = taylor.JetContext(order, True, wsum)
    x0 = rng.normal(size=(1, n))
    lower = [rng.normal(size=(R, n)) for _ in range(order)]
    x_std = [x0] + lower
    x_col = [x0] + lower[:-1] + [wsum(lower[-1])]
    if order == 1:
        x_col = [x0, wsum(lower[0])]
    b_std = [x0 * 0.5 + 1] + [rng.normal(size=(R, n)) for _ in range(order)]
    b_col = b_std[:-1] + [wsum(b_std[-1])]

    def check(s, c):
        np.testing.assert_allclose(taylor.top_sum(c, col), taylor.top_sum(s, std), rtol=1e-12, atol=1e-12)

    t0 = np.tanh(x0)
    derivs = derivatives("tanh", np, x0, t0, order)
    check(taylor.elementwise(x_std, t0, derivs, std), taylor.elementwise(x_col, t0, derivs, col))
    check(taylor.product(x_std, b_std, std), taylor.product(x_col, b_col, col))
    check(taylor.add(x_std, b_std), taylor.add(x_col, b_col))
    check(taylor.linear(x_std, lambda c: 3 * c), taylor.linear(x_col, lambda c: 3 * c))


def _tril_half(m):
    n = m.shape[-1]
    return m * (np.tril(np.ones((n, n))) - 0.5 * np.eye(n))


def test_cholesky_rule():
    """``L(t) = chol(A(t))`` with ``A`` a matrix polynomial in t: the rule gives d^k/dt^k L at t = 0 (mpmath)."""
    rng = np.random.default_rng(5)
    n, order = 3, 4
    B = rng.normal(size=(order + 1, n, n))
    a = [B[0] @ B[0].T + n * np.eye(n)] + [B[k] + B[k].T for k in range(1, order + 1)]

    def A(t):
        return mpmath.matrix([[sum(c[i, j] * t**k / math.factorial(k) for k, c in enumerate(a)) for j in range(n)]
                              for i in range(n)])  # fmt: skip

    l0 = np.linalg.cholesky(a[0])
    ctx = _univariate_ctx(order)
    out = taylor.cholesky(a, l0, np.linalg.inv(l0), ctx, np.matmul, lambda p: np.swapaxes(p, -1, -2), _tril_half)
    for k in range(order + 1):
        for i in range(n):
            for j in range(i + 1):
                want = float(mpmath.diff(lambda t, i=i, j=j: mpmath.cholesky(A(t))[i, j], 0, k))
                assert out[k][i, j] == pytest.approx(want, rel=1e-10, abs=1e-10), (k, i, j)
        assert np.all(np.triu(out[k], 1) == 0)
