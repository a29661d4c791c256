"""The JAX layout's direction sums (unrolled adds or XLA's reduce) equal the plain sums, weighted or not, with
broadcasting operands, on both sides of the unrolling thresholds."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from multijet.backends import jax_sums  # noqa: E402


@pytest.mark.parametrize("R", [1, 3, 20, 33])
@pytest.mark.parametrize("point", [(4,), (3, 700), (1, 2100)])
@pytest.mark.parametrize("weighted", [False, True])
def test_lead_sums_equal_plain_sums(R, point, weighted):
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(R)
    a = rng.standard_normal((R,) + point)
    b = rng.standard_normal((R,) + (1,) * (len(point) - 1) + point[-1:])  # broadcast over the point's first axes
    w = rng.uniform(0.5, 2.0, R) if weighted else None
    wv = np.ones(R) if w is None else w
    expect_sum = np.tensordot(wv, a, axes=1)
    expect_dot = np.tensordot(wv, a * b, axes=1)
    wj = None if w is None else jnp.asarray(w)
    np.testing.assert_allclose(jax_sums.lead_sum(jnp.asarray(a), wj), expect_sum, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(jax_sums.lead_dot(jnp.asarray(a), jnp.asarray(b), wj), expect_dot, rtol=1e-12,
                               atol=1e-12)  # fmt: skip
    # a direction-independent operand (leading axis 1) broadcasts over the directions
    np.testing.assert_allclose(jax_sums.lead_dot(jnp.asarray(a), jnp.asarray(b[:1]), wj),
                               np.tensordot(wv, a * b[:1], axes=1), rtol=1e-12, atol=1e-12)  # fmt: skip


def test_unrolling_thresholds_are_both_exercised():
    assert jax_sums._unrolled(20, (3, 700), np.float64)  # 16.8 kB out, 20 directions: unrolled
    assert not jax_sums._unrolled(20, (3, 700), np.float32)  # 8.4 kB: XLA's reduce
    assert not jax_sums._unrolled(20, (4,), np.float64)  # small output: XLA's reduce
    assert not jax_sums._unrolled(33, (3, 700), np.float64)  # many directions: XLA's reduce
