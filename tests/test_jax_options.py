"""multijet's own jitted JAX programs carry XLA compiler options (jax_options); inside a user's jit they must
not (JAX refuses options on nested jits), and an XLA that rejects an option gets none."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import multijet as mj  # noqa: E402
from multijet.backends import jax_options  # noqa: E402


def f(x):
    W = jnp.linspace(-1.0, 1.0, 3 * x.shape[-1]).reshape(x.shape[-1], 3)
    return jnp.sum(jnp.tanh(x @ W) ** 2)


def test_compiled_and_eager_inside_and_outside_a_users_jit():
    jax.config.update("jax_enable_x64", True)
    X = jnp.asarray(np.random.default_rng(0).standard_normal((4, 5)))
    expect = np.asarray(mj.laplacian(f, X, backend="jax", method="nested"))
    comp = mj.compile(mj.Laplacian(), f, X, backend="jax")
    np.testing.assert_allclose(np.asarray(comp(X)), expect, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(jax.jit(comp)(X)), expect, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(mj.laplacian(f, X, backend="jax")), expect, rtol=1e-10)
    inside = jax.jit(lambda x: mj.laplacian(f, x, backend="jax"))(X)
    np.testing.assert_allclose(np.asarray(inside), expect, rtol=1e-10)
    assert "dot_general" in comp.code


def test_unknown_option_falls_back_to_xla_defaults(monkeypatch):
    jax.config.update("jax_enable_x64", True)
    monkeypatch.setattr(jax_options, "COMPILER_OPTIONS", {"xla_no_such_option_for_multijet": "1"})
    assert jax_options.compiler_options() is None
    X = jnp.asarray(np.random.default_rng(1).standard_normal((3, 4)))
    got = mj.compile(mj.Laplacian(), f, X, backend="jax")(X)
    np.testing.assert_allclose(np.asarray(got), np.asarray(mj.laplacian(f, X, backend="jax", method="nested")),
                               rtol=1e-10)  # fmt: skip


def test_default_options_are_accepted_on_cpu():
    if jax.default_backend() != "cpu":
        pytest.skip("the options are for XLA:CPU")
    assert jax_options.compiler_options() == jax_options.COMPILER_OPTIONS
