"""The planner at high dimension and high order: closed forms, routes, sharing, checked by the polynomial identity.

A plan computes ``P e^{y·x}`` at ``x = 0`` as ``Σ_r w_r (y·v_r)^K``; the operator gives ``Σ_α c_α y^α``. Equality
at random ``y`` is the exactness check that scales (a nonzero polynomial vanishes at random points with
probability zero).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import multijet as mj
from multijet.plan import make_plan

pytestmark = pytest.mark.numpy


def _symbol_matches(plan, op, rng, n: int = 6) -> None:
    y = rng.uniform(-1.0, 1.0, (n, plan.dim))
    np.testing.assert_allclose(plan.symbol(y), op.symbol(y), rtol=1e-10, atol=1e-10)


def _random_order4(rng, dim: int, n_terms: int, width: int = 4) -> mj.LinearOperator:
    terms = {}
    for _ in range(n_terms):
        a = [0] * dim
        for i in rng.choice(dim, size=width):
            a[int(i)] += 1
        terms[tuple(a)] = float(rng.normal())
    return mj.LinearOperator(terms)


@pytest.mark.parametrize("dim", [50, 1000])
def test_bilaplacian_plans_fast_at_large_d(dim, rng):
    t = time.perf_counter()
    plan = make_plan(mj.Bilaplacian(), dim)
    assert time.perf_counter() - t < 5.0  # the benchmark target is 1 s; generous here for loaded CI machines
    assert plan.route == "composition"
    assert "route directions: estimated cost" in str(plan) and "route composition: cost" in str(plan)
    _symbol_matches(plan, mj.Bilaplacian(), rng)


def test_order4_operator_on_40_variables(rng):
    op = _random_order4(rng, 40, 6)
    t = time.perf_counter()
    plan = make_plan(op, 40)
    assert time.perf_counter() - t < 5.0
    (g,) = plan.groups
    assert g.order == 4 and g.size <= 6 * 15  # at most a polarization box of 15 directions per term
    _symbol_matches(plan, op, rng)
    small = _random_order4(rng, 8, 6)  # and α by α, against the dense coefficients, where that is cheap
    got = make_plan(small, 8).coefficients()
    for a, c in small.coefficients(8).items():
        assert got[a] == pytest.approx(c, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("dim", [2, 3, 5, 12])
def test_composition_expanded_to_directions(dim, rng):
    """``P @ Q`` planned as one direction set (product of the factors' sets) reproduces the product symbol."""
    A = rng.normal(size=(dim, dim))
    for op in [
        mj.Laplacian() @ mj.Laplacian(),
        mj.WeightedLaplacian(A @ A.T) @ mj.Laplacian(),
        mj.LinearOperator({tuple(int(i == 0) for i in range(dim)): 1.5}) @ mj.Laplacian(),
        (mj.Laplacian() + 2.0 * mj.LinearOperator({(0,) * dim: 1.0})) @ mj.Laplacian(),
    ]:
        for route in ("directions", "composition"):
            plan = make_plan(op, dim, route=route)
            assert plan.route == route
            _symbol_matches(plan, op, rng)


def test_laplacian_composed_is_the_bilaplacian_set():
    plan = make_plan(mj.Laplacian() @ mj.Laplacian(), 6, route="directions")
    (g,) = plan.groups
    assert g.size == 36  # the D² set: e_i, e_i ± e_j


def test_unit_directions_are_not_materialised():
    plan = make_plan(mj.Laplacian(), 1_000_000)
    (g,) = plan.groups
    assert g.identity and g._directions is None
    y = np.ones((1, 1_000_000))
    assert plan.symbol(y)[0] == pytest.approx(1e6)


def test_randomised_laplacian_at_a_million_dimensions():
    plan = make_plan(mj.Laplacian(), 1_000_000, samples=16, seed=0)
    (g,) = plan.groups
    assert g.directions.shape == (16, 1_000_000)
    assert set(np.unique(g.directions[:, :100])) <= {-1.0, 1.0}


def test_mixed_order_sharing_is_exact_and_printed(rng):
    D = 4
    b = rng.normal(size=D)
    op = mj.Laplacian() + mj.LinearOperator({tuple(int(i == j) for i in range(D)): float(b[j]) for j in range(D)})
    op = op + 0.5 * mj.LinearOperator({(0,) * D: 1.0})
    plan = make_plan(op, D)
    served = [g for g in plan.groups if g.served_by is not None]
    assert sorted(g.order for g in served) == [0, 1]
    assert plan.arrays("collapsed") == D + 2  # one Laplacian group carries Δ, b·∇ and c·f
    assert plan.arrays("nested") > plan.arrays("collapsed") - 1
    assert "shared" in str(plan)
    _symbol_matches(plan, op, rng)
    for g in served:  # the read-off reproduces the served group's own symbol
        host, a = g.served_by
        H = plan.groups[host]
        y = rng.normal(size=(5, D))
        if g.order == 0:  # the value: a[0] · f
            assert a[0] == g.weights[0]
            continue
        np.testing.assert_allclose((H.project(y) ** g.order) @ a, (g.project(y) ** g.order) @ g.weights, rtol=1e-12)


def test_order2_part_served_by_an_order4_group(rng):
    D = 3
    op = mj.Bilaplacian() + 2.0 * mj.Laplacian()
    plan = make_plan(op, D, route="directions")
    assert [g.order for g in plan.groups] == [2, 4]
    assert plan.groups[0].served_by is not None
    _symbol_matches(plan, op, rng)


def test_route_errors():
    with pytest.raises(ValueError, match="unknown route"):
        make_plan(mj.Laplacian(), 3, route="nonsense")
    with pytest.raises(mj.PlanError, match="does not exist"):
        make_plan(mj.Laplacian(), 3, route="composition")
    with pytest.raises(TypeError, match="@"):
        mj.Laplacian() @ (lambda x: x)
    with pytest.raises(mj.PlanError, match="composition.*cannot be planned"):  # a level with no unbiased estimator
        make_plan(mj.LinearOperator({(3, 0): 1.0}) @ mj.Laplacian(), 2, samples=4, route="composition")


def test_randomised_composition_is_unbiased():
    """Independent Rademacher samples per level: E[P̂(Q̂ e^{y·x})] = |y|⁴ (each level is unbiased at order 2)."""
    D = 3
    y = np.array([[0.7, -0.4, 1.1]])
    want = float(mj.Bilaplacian().symbol(y)[0])
    kw = dict(samples=3, distribution="rademacher", route="composition")
    vals = np.array([make_plan(mj.Bilaplacian(), D, seed=s, **kw).symbol(y)[0] for s in range(1500)])
    se = vals.std(ddof=1) / np.sqrt(vals.size)
    assert abs(vals.mean() - want) < 4 * se and vals.std() > 0


def test_route_choice_follows_the_cost_model():
    assert make_plan(mj.Bilaplacian(), 2).route == "directions"  # 14 arrays against (2+2)² = 16
    assert make_plan(mj.Bilaplacian(), 5).route == "composition"  # 77 against 49
    assert make_plan(mj.Bilaplacian(), 5, samples=8).route == "directions"  # Gaussian set: 26 against 100
