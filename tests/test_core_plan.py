"""Operator specs and the planner: every exact plan reproduces the operator; randomised plans are unbiased."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import multijet as mj
from multijet.plan import make_plan
from multijet.spec import Bilaplacian, LinearOperator, WeightedLaplacian


def _random_operator(rng, dim: int, orders, n_terms: int) -> mj.LinearOperator:
    terms = {}
    for _ in range(n_terms):
        K = int(rng.choice(orders))
        idx = rng.integers(0, dim, size=K)
        alpha = tuple(int(np.sum(idx == i)) for i in range(dim))
        terms[alpha] = float(rng.normal())
    return mj.LinearOperator(terms)


def _apply_to_exponential(plan, y: np.ndarray) -> float:
    """Σ_groups Σ_r w_r (y·v_r)^K: the plan applied to e^{y·x} at x = 0 (independent of the α-moments)."""
    return sum(float(np.dot(g.weights, (g.directions @ y) ** g.order)) for g in plan.groups)


def _operator_on_exponential(coefficients: dict, y: np.ndarray) -> float:
    """P e^{y·x} at x = 0 is Σ_α c_α y^α."""
    return sum(c * math.prod(y[i] ** k for i, k in enumerate(a)) for a, c in coefficients.items())


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
@pytest.mark.parametrize("orders", [(2,), (3,), (4,), (0, 1, 2), (1, 3, 4), (2, 4)])
def test_plan_reproduces_random_operators(dim, orders, rng):
    for _ in range(3):
        op = _random_operator(rng, dim, orders, n_terms=6)
        plan = make_plan(op, dim)
        for _ in range(5):
            y = rng.normal(size=dim)
            want = _operator_on_exponential(op.coefficients(dim), y)
            got = _apply_to_exponential(plan, y)
            assert got == pytest.approx(want, rel=1e-9, abs=1e-9), (op, plan)
        # one jet group per order, each order present in the operator
        assert sorted(g.order for g in plan.groups) == sorted({sum(a) for a in op.terms})


@pytest.mark.parametrize("dim", [1, 2, 3, 4, 6])
def test_bilaplacian_uses_d_squared_directions(dim):
    plan = make_plan(mj.Bilaplacian(), dim, route="directions")
    (group,) = plan.groups
    assert group.order == 4
    expected = dim * dim - (dim if dim == 4 else 0)  # weight 1 − (D−1)/3 of e_i vanishes at D = 4
    assert group.size == expected
    assert group.size <= math.comb(dim + 3, 4) or dim <= 2
    for y in np.random.default_rng(0).normal(size=(4, dim)):
        assert _apply_to_exponential(plan, y) == pytest.approx(float(np.dot(y, y)) ** 2, rel=1e-12)


def test_laplacian_plan_is_unit_directions():
    plan = make_plan(mj.Laplacian(), 4)
    (g,) = plan.groups
    assert g.unit_axes == (0, 1, 2, 3)
    np.testing.assert_array_equal(g.directions, np.eye(4))
    np.testing.assert_array_equal(g.weights, np.ones(4))
    assert g.arrays("collapsed") == 4 + 2 and g.arrays("standard") == 2 * 4 + 1


@pytest.mark.parametrize("kind", ["psd", "indefinite", "low_rank", "diagonal"])
def test_weighted_laplacian_plan(kind, rng):
    D = 5
    A = rng.normal(size=(D, D))
    C = {
        "psd": A @ A.T,
        "indefinite": A + A.T,
        "low_rank": np.outer(A[0], A[0]) - 2 * np.outer(A[1], A[1]),
        "diagonal": np.diag([1.0, 0.0, -2.0, 3.0, 0.5]),
    }[kind]
    plan = make_plan(mj.WeightedLaplacian(C), D)
    (g,) = plan.groups
    np.testing.assert_allclose((g.directions.T * g.weights) @ g.directions, C, atol=1e-12)
    if kind == "low_rank":
        assert g.size == 2  # rank-revealing
    if kind == "diagonal":
        assert g.unit_axes == (0, 2, 3, 4)


def test_factor_plan_uses_columns(rng):
    sigma = rng.normal(size=(4, 2))
    plan = make_plan(mj.WeightedLaplacian(factor=sigma), 4)
    (g,) = plan.groups
    np.testing.assert_array_equal(g.directions, sigma.T)
    np.testing.assert_array_equal(g.weights, np.ones(2))


def test_sums_and_scalars_combine():
    D = 3
    helmholtz = mj.Laplacian() + 4.0 * mj.LinearOperator({(0, 0, 0): 1.0})
    coeffs = helmholtz.coefficients(D)
    assert coeffs[(0, 0, 0)] == 4.0 and coeffs[(2, 0, 0)] == 1.0
    plan = make_plan(helmholtz, D)
    assert [g.order for g in plan.groups] == [0, 2]
    op = 2 * mj.Laplacian() - mj.Laplacian()
    assert make_plan(op, D).coefficients()[(0, 2, 0)] == pytest.approx(1.0)
    assert (mj.Laplacian() + mj.Bilaplacian()).order == 4
    assert hash(mj.Laplacian()) == hash(mj.Laplacian())
    assert mj.WeightedLaplacian(np.eye(2)) == mj.WeightedLaplacian([[1.0, 0.0], [0.0, 1.0]])


def test_plan_prints_cost_summary():
    text = str(make_plan(mj.Laplacian(), 10))
    assert "K=2" in text and "R=10" in text
    assert "collapsed 12" in text and "standard 21" in text
    assert "0.57" in text  # 12 / 21
    assert "Bilaplacian" in str(mj.plan(mj.Bilaplacian(), 3))


def test_plans_are_cached_and_seeded():
    assert make_plan(mj.Laplacian(), 7) is make_plan(mj.Laplacian(), 7)
    a = make_plan(mj.Laplacian(), 5, samples=8, seed=3)
    b = make_plan(mj.Laplacian(), 5, samples=8, seed=3)
    c = make_plan(mj.Laplacian(), 5, samples=8, seed=4)
    np.testing.assert_array_equal(a.groups[0].directions, b.groups[0].directions)
    assert not np.array_equal(a.groups[0].directions, c.groups[0].directions)
    assert set(np.unique(a.groups[0].directions)) <= {-1.0, 1.0}
    assert "randomised" in str(a)


@pytest.mark.parametrize(
    "op, distribution, third",
    [
        (mj.Laplacian(), "rademacher", 1.0),
        (mj.Laplacian(), "gaussian", 1.0),
        (mj.WeightedLaplacian(np.array([[2.0, 0.5, 0], [0.5, -1.0, 0.3], [0, 0.3, 0.7]])), "gaussian", 1.0),
        (mj.WeightedLaplacian(factor=np.array([[1.0, 0.2], [0.0, 1.0], [0.5, -0.3]])), "rademacher", 1.0),
        (mj.Bilaplacian(), "gaussian", 1.0),
    ],
)
def test_randomised_plans_are_unbiased(op, distribution, third):
    """The mean over seeds of Σ_r w_r (y·v_r)^K matches P e^{y·x}|₀ within a few standard errors."""
    D = 3
    y = np.array([0.7, -0.4, 1.1])
    want = _operator_on_exponential(op.coefficients(D), y)
    vals = np.array(
        [_apply_to_exponential(make_plan(op, D, samples=4, distribution=distribution, seed=s), y) for s in range(4000)]
    )
    se = vals.std(ddof=1) / np.sqrt(vals.size)
    assert abs(vals.mean() - want) < 4 * se + 1e-12, (vals.mean(), want, se)
    assert vals.std() > 0  # genuinely random


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: mj.WeightedLaplacian(np.array([[1.0, 2.0], [0.0, 1.0]])), "symmetric"),
        (lambda: mj.WeightedLaplacian(np.ones((2, 3))), "square"),
        (lambda: mj.WeightedLaplacian(np.ones(3)), "2-D"),
        (lambda: mj.WeightedLaplacian(), "exactly one"),
        (lambda: mj.LinearOperator({(1, 0): 1.0, (1, 0, 0): 2.0}), "same length"),
        (lambda: mj.LinearOperator({(-1, 0): 1.0}), "non-negative"),
        (lambda: mj.LinearOperator({}), "non-empty"),
    ],
)
def test_spec_errors(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_plan_errors():
    with pytest.raises(ValueError, match="dimension D=3"):
        make_plan(mj.LinearOperator({(2, 0): 1.0}), 3)
    with pytest.raises(ValueError, match="3 rows but x has dimension D=2"):
        make_plan(mj.WeightedLaplacian(np.eye(3)), 2)
    with pytest.raises(mj.PlanError, match="gaussian"):
        make_plan(mj.Bilaplacian(), 3, samples=4, distribution="rademacher", route="directions")
    # Rademacher is unbiased at each order-2 level of the composition Δ(Δf), so that route is taken
    assert make_plan(mj.Bilaplacian(), 3, samples=4, distribution="rademacher").route == "composition"
    with pytest.raises(mj.PlanError, match="exact"):
        make_plan(mj.LinearOperator({(3, 0): 1.0}), 2, samples=4, distribution="gaussian")
    with pytest.raises(ValueError, match="unknown distribution"):
        make_plan(mj.Laplacian(), 3, samples=4, distribution="uniform")
    with pytest.raises(ValueError, match="samples"):
        make_plan(mj.Laplacian(), 3, samples=0)


def test_every_candidate_direction_set_is_unisolvent():
    """The interpolation set j ≥ 0, |j| = K gives a square, invertible system for every K, n."""
    from multijet.plan import interpolation_directions

    for n, K in itertools.product(range(1, 5), range(1, 5)):
        coeffs = {a: 1.0 for a in _all(n, K)}
        d, w = interpolation_directions(coeffs, K, n)
        y = np.linspace(0.3, 1.1, n)
        assert float(np.dot(w, (d @ y) ** K)) == pytest.approx(sum(np.prod(y ** np.array(a)) for a in coeffs))


def _all(n, K):
    for combo in itertools.combinations_with_replacement(range(n), K):
        yield tuple(combo.count(i) for i in range(n))


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is in the test extra
    given = None

if given is not None:

    @st.composite
    def _operators(draw):
        dim = draw(st.integers(1, 5))
        order = st.integers(0, 4)
        alphas = draw(
            st.lists(
                order.flatmap(lambda K: st.lists(st.integers(0, dim - 1), min_size=K, max_size=K)),
                min_size=1,
                max_size=6,
            )
        )
        coeffs = draw(
            st.lists(
                st.floats(-3, 3, allow_nan=False).filter(lambda c: abs(c) > 1e-3),
                min_size=len(alphas),
                max_size=len(alphas),
            )
        )
        terms = {tuple(idx.count(i) for i in range(dim)): c for idx, c in zip(alphas, coeffs, strict=True)}
        return dim, mj.LinearOperator(terms)

    @settings(max_examples=60, deadline=None)
    @given(_operators(), st.integers(0, 2**31 - 1))
    def test_plan_exact_property(case, seed):
        """Property: for any operator up to order 4 in up to 5 variables, the plan reproduces P e^{y·x}."""
        dim, op = case
        plan = make_plan(op, dim)
        y = np.random.default_rng(seed).uniform(-1.5, 1.5, dim)
        want = _operator_on_exponential(op.coefficients(dim), y)
        assert _apply_to_exponential(plan, y) == pytest.approx(want, rel=1e-8, abs=1e-8)


@pytest.mark.parametrize(
    "op",
    [
        LinearOperator({(0, 1, 1): 1e-13}),
        1e-13 * LinearOperator({(1, 1, 1): 1.0}),
        WeightedLaplacian(1e-13 * np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 0.0]])),
        1e-14 * Bilaplacian(),
    ],
)
def test_tiny_coefficients_are_kept_not_dropped(op):
    """Tolerances are relative to the operator's own scale: a small operator is not a zero operator."""
    plan = make_plan(op, 3)
    want, got = op.coefficients(3), plan.coefficients()
    for a, c in want.items():
        assert abs(got.get(a, 0.0) - c) <= 1e-9 * abs(c), (a, c, got.get(a))
    assert "direction" in str(plan)  # prints, and lists its directions


def test_zero_operator_prints():
    assert "zero operator" in str(make_plan(WeightedLaplacian(np.zeros((3, 3))), 3))
