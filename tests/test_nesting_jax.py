"""Nesting on JAX: the jet program is JAX primitives, so mj.laplacian inside f is captured again and
Δ(Δf) equals the bi-Laplacian to round-off — eagerly, under jax.jit and under jax.grad."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import multijet as mj  # noqa: E402

pytestmark = pytest.mark.jax

R = np.random.default_rng(11)
W1, B1 = jnp.asarray(R.normal(size=(3, 8)) / 2), jnp.asarray(R.normal(size=8) / 4)
W2 = jnp.asarray(R.normal(size=8))
X = jnp.asarray(R.normal(size=(4, 3)))


def mlp(W):
    return lambda x: jnp.dot(jnp.tanh(x @ W + B1), W2)


def products(x):
    return jnp.exp(x[0] * x[1]) / (1.5 + jnp.sin(x[2]) ** 2) + jnp.sum(x**3) * x[1]


@pytest.mark.parametrize("f", [mlp(W1), products], ids=["mlp", "products"])
def test_laplacian_of_laplacian_is_the_bilaplacian(f):
    nested = mj.laplacian(lambda x: mj.laplacian(f, x), X)
    np.testing.assert_allclose(nested, mj.bilaplacian(f, X), rtol=1e-11, atol=1e-10)
    jitted = jax.jit(lambda X: mj.laplacian(lambda x: mj.laplacian(f, x, method="standard"), X))(X)
    np.testing.assert_allclose(jitted, mj.bilaplacian(f, X, method="nested"), rtol=1e-10, atol=1e-10)


def test_gradient_through_the_nested_laplacian():
    def loss(W, nested):
        f = mlp(W)
        out = mj.laplacian(lambda x: mj.laplacian(f, x), X) if nested else mj.bilaplacian(f, X)
        return jnp.mean(out**2)

    np.testing.assert_allclose(jax.grad(loss)(W1, True), jax.grad(loss)(W1, False), rtol=1e-10, atol=1e-10)


def test_operator_of_a_weighted_laplacian():
    """Δ(tr(C ∇²f)) = Σ_ij C_ij ∂_i∂_j Δf: the weighted inner operator through the outer Laplacian."""
    C = jnp.asarray([[2.0, 0.3, 0.0], [0.3, 1.0, 0.1], [0.0, 0.1, 0.5]])
    f = mlp(W1)
    nested = mj.laplacian(lambda x: mj.weighted_laplacian(f, x, C), X)
    swapped = mj.weighted_laplacian(lambda x: mj.laplacian(f, x), X, C)
    np.testing.assert_allclose(nested, swapped, rtol=1e-10, atol=1e-10)
