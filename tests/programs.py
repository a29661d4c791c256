"""Test programs written against the array API: MLPs and programs that are not MLPs.

Each takes one point ``x`` of shape (D,) and uses ``xp = array_namespace(x)``, so it runs on plain NumPy
arrays (the finite-difference oracle), on multijet's tracer, and on torch or JAX arrays.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace

D = 3
_rng = np.random.default_rng(7)
W1 = _rng.normal(size=(5, D)) / np.sqrt(D)
B1 = _rng.normal(size=5)
W2 = _rng.normal(size=(4, 5)) / np.sqrt(5)
B2 = _rng.normal(size=4)
W3 = _rng.normal(size=(1, 4))
WSQ = _rng.normal(size=(D, D)) / D
A = np.array([0.3, -0.5, 0.8])


def _c(xp, x, a):
    """A constant in the namespace and dtype of x (so torch and JAX programs see their own arrays)."""
    return xp.asarray(a, dtype=x.dtype)


def _mlp(act):
    def f(x):
        xp = array_namespace(x)
        h = act(xp, _c(xp, x, W1) @ x + _c(xp, x, B1))
        h = act(xp, _c(xp, x, W2) @ h + _c(xp, x, B2))
        return xp.sum(_c(xp, x, W3) @ h)

    return f


mlp_tanh = _mlp(lambda xp, h: xp.tanh(h))
mlp_sigmoid = _mlp(lambda xp, h: 1 / (1 + xp.exp(-h)))
mlp_sin = _mlp(lambda xp, h: xp.sin(h))


def products_quotients(x):
    xp = array_namespace(x)
    return x[0] * x[1] * x[2] + x[0] / (1.0 + x[1] * x[1]) - (x[2] * x[0]) / (2.0 + xp.cos(x[1]))


def exp_log(x):
    xp = array_namespace(x)
    a = _c(xp, x, A)
    return xp.log(1.0 + xp.exp(xp.sum(a * x))) + xp.exp(-xp.sum(x * x) / 2) + xp.log1p(x[0] ** 2)


def powers(x):
    xp = array_namespace(x)
    r2 = xp.sum(x * x) + 1.0
    return r2**1.5 + xp.sum(x**3) - r2 ** (-0.5) + xp.sqrt(r2) * x[1] ** 2 + (x[0] + 2.0) ** x[1]


def axes_broadcasting(x):
    xp = array_namespace(x)
    col = xp.reshape(x, (3, 1))
    outer = col * xp.reshape(x, (1, 3))  # (3, 3) by broadcasting
    s0 = xp.sum(xp.tanh(outer), axis=0)  # (3,)
    m1 = xp.mean(outer * outer, axis=1, keepdims=True)  # (3, 1)
    return xp.sum(s0 * x) + xp.sum(m1) + xp.sum(xp.sin(outer + _c(xp, x, A)))


def several_inputs(x):
    xp = array_namespace(x)
    u = xp.concat([x, x**2, xp.stack([x[0] * x[1], xp.sin(x[2])])])
    w = xp.reshape(xp.linspace(-1.0, 1.0, 8, dtype=x.dtype), (8,))
    return xp.sum(u * w) + x[0] * xp.sin(x[1]) * xp.exp(x[2] / 3)


def residual(x):
    xp = array_namespace(x)
    h = x + xp.tanh(_c(xp, x, WSQ) @ x)
    h = h + xp.tanh(_c(xp, x, WSQ).T @ h)
    return xp.sum(h * h) / 2


def matrix_program(x):
    xp = array_namespace(x)
    M = xp.reshape(xp.concat([x, x[:1]]), (2, 2))
    P = M @ xp.matrix_transpose(M) + xp.eye(2, dtype=x.dtype)
    return xp.sum(P * P) + xp.linalg.vector_norm(x) + xp.max(xp.tanh(x * _c(xp, x, [0.1, 0.2, 1.0])))


def vector_output(x):
    """f: R^3 → R^3 (the result has f's output shape)."""
    xp = array_namespace(x)
    return xp.stack([xp.tanh(x[0] * x[1]), xp.sin(x[2]) * x[0], xp.exp(x[1] - x[2])])


def piecewise(x):
    xp = array_namespace(x)
    y = xp.where(x > 0.0, x**3, xp.sin(x))
    return xp.sum(y) + xp.sum(xp.maximum(x, 0.1 * x) ** 2) + xp.sum(xp.abs(x) * x) + xp.sum(xp.clip(x, -2.0, 2.0))


SCALAR_PROGRAMS = {
    "mlp_tanh": mlp_tanh,
    "mlp_sigmoid": mlp_sigmoid,
    "mlp_sin": mlp_sin,
    "products_quotients": products_quotients,
    "exp_log": exp_log,
    "powers": powers,
    "axes_broadcasting": axes_broadcasting,
    "several_inputs": several_inputs,
    "residual": residual,
    "matrix_program": matrix_program,
    "piecewise": piecewise,
}

POINTS = np.array([[0.3, -0.4, 0.5], [-0.6, 0.2, 0.9]])


def linalg_sort(x):
    """Linear algebra (slogdet, solve, det), sorting and atan2: beyond elementwise and matmul."""
    xp = array_namespace(x)
    A = xp.reshape(xp.concat([x, x[:1] * x[1]]), (2, 2)) + 2.0 * xp.eye(2, dtype=x.dtype)
    _, logabs = xp.linalg.slogdet(A)
    b = xp.linalg.solve(A, x[1:])
    weights = xp.asarray([1.0, 2.0, 3.0], dtype=x.dtype)
    return logabs + xp.sum(b * b) + xp.linalg.det(A) + xp.sum(xp.sort(xp.sin(x)) * weights) + xp.atan2(x[0], x[2] - 2)


#: programs beyond the core set (linear algebra, sorting), for backends that claim them
EXTRA_PROGRAMS = {"linalg_sort": linalg_sort}
