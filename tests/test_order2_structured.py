"""Order-2 operators above ``DENSE_C_LIMIT``: each part keeps its structure (no D×D merge), same numbers.

The structured path is forced at small D by lowering the limit, then checked coefficient-wise against the
operator and numerically against the dense (merged C) path on the NumPy reference; a large-D case checks
that no D×D array is formed (a D×D float64 at D=20000 is 3.2 GB; the test's budget is far below it).
"""

from __future__ import annotations

import importlib
import tracemalloc

import numpy as np
import pytest

import multijet as mj

order2 = importlib.import_module("multijet.plan_order2")
plan_mod = importlib.import_module("multijet.plan")

D = 6


def alpha(*axes: int, dim: int = D) -> tuple[int, ...]:
    """The dense multi-index with one count per listed axis, e.g. ``alpha(0, 1)`` is ∂_0∂_1."""
    return tuple(sum(a == i for a in axes) for i in range(dim))


rng = np.random.default_rng(3)
SIGMA = rng.standard_normal((D, 2))
C_EXPLICIT = (lambda A: A + A.T)(rng.standard_normal((D, D)))
OPERATORS = {
    "Δ + σ-weighted": mj.Laplacian() + mj.WeightedLaplacian(factor=SIGMA),
    "Δ − 2 σ-weighted": mj.Laplacian() - 2.0 * mj.WeightedLaplacian(factor=SIGMA),
    "explicit C + off-diagonal terms": mj.WeightedLaplacian(C_EXPLICIT)
    + mj.LinearOperator({alpha(0, 1): 1.5, alpha(2, 2): -0.5, alpha(3, 5): 2.0}),
    "diagonal + pairs": 0.5 * mj.Laplacian() + mj.LinearOperator({alpha(1, 4): 3.0, alpha(2, 3): -1.0}),
}


def f(x):
    return np.sin(x @ np.arange(1.0, D + 1)) + np.prod(np.cos(x[:3])) + np.sum(x**4) * x[5]


@pytest.fixture
def structured(monkeypatch):
    monkeypatch.setattr(order2, "DENSE_C_LIMIT", 1)


def _coefficient_error(op, plan) -> float:
    want, got = op.coefficients(D), plan.coefficients()
    return max(abs(got.get(a, 0.0) - c) for a, c in want.items()) + max(
        (abs(v) for a, v in got.items() if a not in want), default=0.0
    )


@pytest.mark.parametrize("name", OPERATORS)
def test_structured_exact_plan_is_the_operator(structured, name):
    op = OPERATORS[name]
    plan = plan_mod.make_plan(op, D)
    assert _coefficient_error(op, plan) < 1e-10
    assert all(g.label != "eigenvectors of C (rank-revealing)" for g in plan.groups)


@pytest.mark.parametrize("name", OPERATORS)
def test_structured_exact_matches_dense_path(name, monkeypatch):
    op = OPERATORS[name]
    X = rng.standard_normal((3, D))
    dense = mj.apply(op, f, X, backend="numpy")
    monkeypatch.setattr(order2, "DENSE_C_LIMIT", 1)
    got = mj.apply(op, f, X, backend="numpy")
    np.testing.assert_allclose(got, dense, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["Δ − 2 σ-weighted", "diagonal + pairs", "explicit C + off-diagonal terms"])
def test_structured_randomised_is_unbiased(structured, name):
    """The mean over many seeds approaches the exact value within a few standard errors."""
    op = OPERATORS[name]
    x = rng.standard_normal(D)
    exact = float(mj.apply(op, f, x, backend="numpy"))
    draws = np.array([float(mj.apply(op, f, x, backend="numpy", samples=8, seed=s)) for s in range(300)])
    stderr = draws.std(ddof=1) / np.sqrt(draws.size)
    assert abs(draws.mean() - exact) < 5 * stderr + 1e-9, (draws.mean(), exact, stderr)


def test_large_dimension_builds_no_dense_matrix():
    """Δ + σ-weighted Laplacian + one cross term at D=20000: plans in a few MiB (a D×D would be 3.2 GB)."""
    dim = 20_000
    sigma = np.zeros((dim, 2))
    sigma[:5, 0], sigma[5:9, 1] = 1.0, 2.0
    op = mj.Laplacian() + mj.WeightedLaplacian(factor=sigma) + mj.LinearOperator({alpha(0, 7, dim=dim): 1.0})
    tracemalloc.start()
    try:
        exact = plan_mod.make_plan(op, dim)
        random = plan_mod.make_plan(op, dim, samples=4, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20, peak
    assert sum(g.size for g in exact.groups) == dim + 2 + 1
    assert random.groups[0].directions.shape[1] == dim
