"""Exact ties on JAX: collapsed = standard = JAX's own nested AD (the tie convention comes from the table)."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

import multijet as mj  # noqa: E402

pytestmark = pytest.mark.jax

W = jnp.asarray([0.7, -1.3, 2.1])

CASES = {
    "maximum-const": (lambda x: jnp.sum(jnp.maximum(x, 0.1) ** 2), [0.1, 0.3, -0.2]),
    "maximum-both": (lambda x: jnp.maximum(x[0] ** 2, x[1] * x[2]) ** 2, [1.0, 0.5, 2.0]),
    "minimum": (lambda x: jnp.sum(jnp.minimum(x, 0.2) ** 3), [0.2, -0.4, 0.9]),
    "clip": (lambda x: jnp.sum(jnp.clip(x, -0.5, 0.5) ** 2), [0.5, 0.1, -0.5]),
    "lax.clamp": (lambda x: jnp.sum(lax.clamp(-0.5, x, 0.5) ** 2 * jnp.exp(x)), [0.5, 0.1, -0.5]),
    "where": (lambda x: jnp.sum(jnp.where(x > 0.1, x**2, jnp.sin(x))), [0.1, 0.3, -0.2]),
    "relu": (lambda x: jnp.sum(jax.nn.relu(x) ** 2 + jax.nn.relu(x) * jnp.sin(x)), [0.0, 0.4, -0.3]),
    "abs": (lambda x: jnp.sum(jnp.abs(x) * x + jnp.abs(x) * jnp.cos(x)), [0.0, 0.4, -0.3]),
    "sort": (lambda x: jnp.sum(W * jnp.sort(x) ** 2), [0.3, 0.1, 0.3]),
    "reduce_max": (lambda x: jnp.max(x**2) + jnp.min(x**3), [0.3, -0.3, 0.3]),
}


def _lap(f, x):
    return jnp.trace(jax.hessian(f)(x))


@pytest.mark.parametrize("name", sorted(CASES))
def test_ties_collapsed_standard_nested_agree(name):
    f, x = CASES[name]
    x = jnp.asarray(x)
    oracle = float(_lap(f, x))
    for method in ("collapsed", "standard", "nested"):
        got = float(mj.laplacian(f, x, backend="jax", method=method))
        assert got == pytest.approx(oracle, rel=1e-10, abs=1e-12), (name, method, got, oracle)
    bi = float(_lap(lambda y: _lap(f, y), x))
    for method in ("collapsed", "standard"):
        got = float(mj.bilaplacian(f, x, backend="jax", method=method))
        assert got == pytest.approx(bi, rel=1e-8, abs=1e-10), (name, method, got, bi)


def test_clip_tie_values_are_jax_s():
    """The issue's data point: Δ Σ clip(x, −½, ½)² at x = (½, 0.1, −½) is 3 under JAX (2 + ½ + ½)."""
    f, x = CASES["clip"]
    assert float(mj.laplacian(f, jnp.asarray(x))) == pytest.approx(3.0)
    f2, _ = CASES["lax.clamp"]
    assert np.isfinite(float(mj.laplacian(f2, jnp.asarray(x))))
