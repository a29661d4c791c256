"""Mixed-order sharing in the executors (issue 10 part 5): a lower-order group the plan marks ``served_by`` is
not propagated (collapsed, standard); its part ``Σ_r a_r f_k(v_r)`` is read off the host group's output jet.
The result equals the parts computed separately, on every backend and method (nested runs every group)."""

from __future__ import annotations

import numpy as np
import pytest
from array_api_compat import array_namespace

import multijet as mj
from multijet.engine import run as engine_run

_rng = np.random.default_rng(11)
W = _rng.normal(size=(4, 4)) / 2
X = _rng.normal(size=(6, 4))

BACKENDS = [
    pytest.param("numpy", marks=pytest.mark.numpy),
    pytest.param("torch", marks=pytest.mark.torch),
    pytest.param("jax", marks=pytest.mark.jax),
]
METHODS = {"numpy": ("collapsed", "standard")}


def f(x):
    xp = array_namespace(x)
    D = x.shape[0]
    h = xp.tanh(xp.asarray(W[:, :D], dtype=x.dtype) @ x)
    return xp.sum(h * h) + x[0] * x[1] * x[-1] + xp.sin(x[1]) ** 3


def _x(backend, D):
    x = X[:, :D]
    if backend == "torch":
        import torch

        return torch.tensor(x)
    if backend == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        return jnp.asarray(x)
    return x


def _np(a):
    return np.asarray(a.detach() if hasattr(a, "detach") else a)


def _first_order(b, c0):
    D = len(b)
    terms = {tuple(int(i == j) for j in range(D)): v for i, v in enumerate(b)}
    terms[(0,) * D] = c0
    return mj.LinearOperator(terms)


CASES = {  # name: (dimension, shared operator, its parts computed separately)
    "laplacian + b·∇ + c": (4, lambda: [mj.Laplacian(), _first_order([0.5, -1.0, 2.0, 0.25], 1.5)]),
    "bilaplacian + 2Δ + b·∇ + c": (
        3,
        lambda: [mj.Bilaplacian(), 2.0 * mj.Laplacian(), _first_order([1.0, 0, -2], 0.5)],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_plan_says_shared(case):
    D, parts = CASES[case]
    op = sum(parts()[1:], parts()[0])
    text = str(mj.plan(op, D, route="directions"))
    assert "shared" in text
    groups = mj.plan(op, D, route="directions").groups
    assert sum(g.served_by is not None for g in groups) == len(groups) - 1  # all but the highest-order group


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_shared_equals_parts(backend, case):
    D, parts = CASES[case]
    ops = parts()
    op = sum(ops[1:], ops[0])
    x = _x(backend, D)
    for method in METHODS.get(backend, ("collapsed", "standard", "nested")):
        for chunks in ({}, {"direction_chunk_size": 2}):
            kw = {"backend": backend, "method": method, "route": "directions", **chunks}
            v, g, got = mj.apply(op, f, x, return_grad=True, **kw)
            want = sum(_np(mj.apply(p, f, x, backend=backend, method=method, route="directions")) for p in ops)
            np.testing.assert_allclose(_np(got), want, rtol=1e-12, atol=1e-11, err_msg=f"{method} {chunks}")
            v0, g0, _ = mj.apply(mj.Laplacian(), f, x, return_grad=True, backend=backend, method=method)
            np.testing.assert_allclose(_np(g), _np(g0), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(_np(v), _np(v0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS[:2])
@pytest.mark.parametrize("case", list(CASES))
def test_served_groups_are_not_propagated(backend, case, monkeypatch):
    D, parts = CASES[case]
    ops = parts()
    op = sum(ops[1:], ops[0])
    orders = []
    original = engine_run.propagate

    def counting(ctx, *args, **kwargs):
        orders.append(ctx.order)
        return original(ctx, *args, **kwargs)

    monkeypatch.setattr(engine_run, "propagate", counting)
    for method in ("collapsed", "standard"):
        orders.clear()
        mj.apply(op, f, _x(backend, D), backend=backend, method=method, route="directions")
        assert orders == [max(o.order for o in ops)], (method, orders)
