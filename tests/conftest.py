"""Shared fixtures and float64 oracles: finite differences and local polynomial fits."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest


def pytest_collection_modifyitems(config, items):
    """Mark tests by backend from their module name, so `pytest -m torch` selects one backend."""
    for item in items:
        if any(item.get_closest_marker(b) for b in ("numpy", "torch", "jax")):
            continue  # marked by the test itself (a module that covers several backends)
        name = Path(str(item.fspath)).name
        for backend in ("torch", "jax"):
            if name.startswith(f"test_{backend}"):
                item.add_marker(getattr(pytest.mark, backend))
                break
        else:
            item.add_marker(pytest.mark.numpy)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def fd_hessian(fn, x: np.ndarray, h: float = 1e-3) -> np.ndarray:
    """Fourth-order central differences of a scalar float64 function; error O(h⁴) + O(ε/h²)."""
    D = x.size
    H = np.zeros((D, D))
    E = np.eye(D)
    for i in range(D):
        for j in range(i, D):

            def g(a, b, i=i, j=j):
                return fn(x + a * h * E[i] + b * h * E[j])

            if i == j:
                val = (-g(2, 0) + 16 * g(1, 0) - 30 * g(0, 0) + 16 * g(-1, 0) - g(-2, 0)) / (12 * h * h)
            else:
                val = (
                    8 * (g(1, -2) + g(2, -1) + g(-2, 1) + g(-1, 2))
                    - 8 * (g(-1, -2) + g(-2, -1) + g(1, 2) + g(2, 1))
                    - (g(2, -2) + g(-2, 2) - g(-2, -2) - g(2, 2))
                    + 64 * (g(-1, -1) + g(1, 1) - g(1, -1) - g(-1, 1))
                ) / (144 * h * h)
            H[i, j] = H[j, i] = val
    return H


def taylor_fit(fn, x: np.ndarray, degree: int = 8, radius: float = 0.15, seed: int = 0) -> dict:
    """All partial derivatives ∂^α f(x), |α| ≤ degree − 4, from a least-squares polynomial fit in a ball.

    Independent of multijet's planner and rules: it only evaluates ``fn`` (float64) at sample points.
    """
    D = x.size
    alphas = [a for k in range(degree + 1) for a in _multi(D, k)]
    rng = np.random.default_rng(seed)
    n = 3 * len(alphas)
    U = rng.uniform(-1.0, 1.0, size=(n, D))
    A = np.stack([np.prod(U ** np.array(a), axis=1) for a in alphas], axis=1)
    y = np.array([fn(x + radius * u) for u in U])
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    scale = [math.prod(math.factorial(k) for k in a) / radius ** sum(a) for a in alphas]
    return {a: c * s for a, c, s in zip(alphas, coef, scale, strict=True)}


def _multi(D, k):
    for combo in itertools.combinations_with_replacement(range(D), k):
        a = [0] * D
        for i in combo:
            a[i] += 1
        yield tuple(a)


def apply_coefficients(derivs: dict, coefficients: dict) -> float:
    return sum(c * derivs[a] for a, c in coefficients.items())
