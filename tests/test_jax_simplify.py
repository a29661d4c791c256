"""Contractions distributed over concatenations and broadcasts (JAX capture): the rewritten program computes
the same function, the concatenation is gone where the identity applies, and the Laplacian through it equals
nested AD (dense and with direction sparsity)."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import multijet as mj  # noqa: E402
from multijet.backends import jax_sparse  # noqa: E402
from multijet.backends.jax_simplify import distribute_contractions  # noqa: E402
from multijet.engine.program import Var  # noqa: E402

n, H = 5, 4


def _weights(seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, H)), rng.standard_normal((2 * H, 3)), rng.standard_normal((2, 3 * H))


def mean_field(x, seed=0):  # FermiNet's [h_i, mean_j h_j] @ W
    W1, W2, _ = _weights(seed)
    h = jnp.tanh(x.reshape(n, 3) @ W1)
    g = jnp.broadcast_to(h.mean(0), h.shape)
    return jnp.sum(jnp.tanh(jnp.concatenate([h, g], -1) @ W2))


def transposed_weights(x, seed=1):  # concat @ W.T, three pieces, one of them a broadcast
    _, _, V = _weights(seed)
    h = jnp.sin(x.reshape(n, 3))
    c = jnp.concatenate([jnp.broadcast_to(h.sum(0), h.shape), h * h, jnp.tile(h, (1, H - 2))], -1)
    return jnp.sum(jnp.cos(c @ V.T))


def weights_first(x, seed=2):  # W @ concat, the concatenation contracted on its first axis
    rng = np.random.default_rng(seed)
    h = jnp.tanh(x.reshape(3, n))
    c = jnp.concatenate([h, jnp.broadcast_to(h[:, :1], (3, 2))], axis=1)  # (3, n + 2)
    return jnp.sum(jnp.exp(0.3 * rng.standard_normal((4, n + 2)) @ c.T))


def batched_einsum(x, seed=3):
    rng = np.random.default_rng(seed)
    h = jnp.tanh(x.reshape(n, 3))
    g = jnp.broadcast_to(h.sum(0), (2, n, 3))
    return jnp.sum(jnp.einsum("bnk,bkm->bnm", g + h, rng.standard_normal((2, 3, 4))) ** 2)


def inside_jit(x):
    h = x.reshape(n, 3)

    @jax.jit
    def layer(h, g):
        return jnp.concatenate([h, g], axis=-1) @ jnp.linspace(-1.0, 1.0, 12).reshape(6, 2)

    return jnp.sum(jnp.tanh(layer(h, jnp.broadcast_to(jnp.sin(h[0]), h.shape))))


PROGRAMS = [mean_field, transposed_weights, weights_first, batched_einsum, inside_jit]


def _names(closed):
    return [e.primitive.name for e in closed.jaxpr.eqns]


@pytest.mark.parametrize("f", PROGRAMS, ids=lambda f: f.__name__)
def test_rewrite_keeps_the_function(f):
    jax.config.update("jax_enable_x64", True)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(3 * n))
    before = jax.make_jaxpr(f)(x)
    after = distribute_contractions(before)
    v0 = jax.core.eval_jaxpr(before.jaxpr, before.consts, x)[0]
    v1 = jax.core.eval_jaxpr(after.jaxpr, after.consts, x)[0]
    np.testing.assert_allclose(v1, v0, rtol=1e-12)


def test_mean_field_concatenation_is_split_and_broadcast_hoisted():
    jax.config.update("jax_enable_x64", True)
    after = distribute_contractions(jax.make_jaxpr(mean_field)(jnp.zeros(3 * n)))
    names = _names(after)
    assert "concatenate" not in names
    dots = [e for e in after.jaxpr.eqns if e.primitive.name == "dot_general"]
    # the mean-field piece is contracted once, as (H,) @ (H, 3), not once per particle
    assert any(tuple(e.invars[0].aval.shape) == (H,) for e in dots), [e.invars[0].aval.shape for e in dots]


def test_program_without_a_site_is_unchanged():
    """No re-trace where no identity applies: constant weights, weights broadcast from a scalar (``jnp.ones``),
    a broadcast along the contracted axis."""
    jax.config.update("jax_enable_x64", True)
    programs = [
        lambda x: jnp.sum(jnp.tanh(x.reshape(n, 3) @ np.ones((3, 2)))),
        lambda x: jnp.sum(jnp.tanh(x.reshape(n, 3) @ jnp.ones((3, 2)))),
        lambda x: jnp.sum(jnp.broadcast_to(x[:1], (3,)) @ x.reshape(3, n)),
    ]
    for f in programs:
        closed = jax.make_jaxpr(f)(jnp.zeros(3 * n))
        assert distribute_contractions(closed) is closed


@pytest.mark.parametrize("sparsity", [None, False])
@pytest.mark.parametrize("f", PROGRAMS, ids=lambda f: f.__name__)
def test_laplacian_through_the_rewrite_equals_nested(f, sparsity):
    jax.config.update("jax_enable_x64", True)
    X = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3 * n)))
    got = mj.laplacian(f, X, backend="jax", sparsity=sparsity)
    expect = mj.laplacian(f, X, backend="jax", method="nested")
    np.testing.assert_allclose(np.asarray(got), np.asarray(expect), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k", [2, jax_sparse.SELECT_SLOTS, jax_sparse.SELECT_SLOTS + 3])
def test_expand_by_selects_or_gather_equals_indexing(k):
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(k)
    R, shape = 7, (3, 4)
    c = rng.standard_normal((k, 1, 4))  # broadcasts over the point's first axis
    index = rng.integers(0, k + 1, (R,) + shape)  # k: a zero
    full = np.concatenate([np.broadcast_to(c, (k,) + shape), np.zeros((1,) + shape)])
    expect = np.take_along_axis(full, index, axis=0)
    got = jax_sparse.SparseOps.expand(jnp.asarray(c), index, Var(shape, np.float64))
    np.testing.assert_array_equal(np.asarray(got), expect)


def test_grad_of_parameters_through_a_split_concatenation():
    """Traced weights (a training step) are sliced by the rewrite in the trace; the parameter gradient of a
    mean-field Laplacian equals nested AD's, with and without direction sparsity."""
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(5)
    W1, W2 = jnp.asarray(rng.standard_normal((3, H))), jnp.asarray(rng.standard_normal((2 * H, 2)))
    X = jnp.asarray(rng.standard_normal((3, 3 * n)))

    def loss(W2, method, sparsity=None):
        def f(x):
            h = jnp.tanh(x.reshape(n, 3) @ W1)
            c = jnp.concatenate([h, jnp.broadcast_to(h.mean(0), h.shape)], -1)
            return jnp.sum(jnp.sin(c @ W2))

        return jnp.sum(mj.laplacian(f, X, backend="jax", method=method, sparsity=sparsity) ** 2)

    expect = jax.grad(loss)(W2, "nested")
    for sparsity in (None, False):
        got = jax.jit(jax.grad(loss), static_argnums=(1, 2))(W2, "collapsed", sparsity)
        np.testing.assert_allclose(np.asarray(got), np.asarray(expect), rtol=1e-9, atol=1e-9)


def test_complex_log_psi_with_a_split_concatenation():
    """The kinetic energy of a complex log ψ (complex orbitals' determinant) whose features concatenate a
    per-electron and a mean-field piece equals nested AD's."""
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(6)
    W1 = rng.standard_normal((3, H))
    Wr, Wi = rng.standard_normal((2 * H, n)), rng.standard_normal((2 * H, n))

    def log_psi(x):
        h = jnp.tanh(x.reshape(n, 3) @ W1)
        c = jnp.concatenate([h, jnp.broadcast_to(h.mean(0), h.shape)], -1)
        phi = (c @ Wr + 1j * (c @ Wi)) * jnp.exp(-jnp.sum(x.reshape(n, 3) ** 2, -1))[:, None]
        sign, logdet = jnp.linalg.slogdet(phi)
        return logdet + jnp.log(sign)

    X = jnp.asarray(rng.standard_normal((2, 3 * n)) * 0.5)
    got = mj.local_kinetic_energy(log_psi, X, backend="jax")
    expect = mj.local_kinetic_energy(log_psi, X, backend="jax", method="nested")
    np.testing.assert_allclose(np.asarray(got), np.asarray(expect), rtol=1e-9, atol=1e-9)


def test_concatenation_along_a_free_axis_is_left_alone():
    """Only a contracted axis splits; stacking rows (a free axis) keeps the concatenation."""
    jax.config.update("jax_enable_x64", True)

    def f(x):
        h = x.reshape(n, 3)
        return jnp.sum(jnp.concatenate([h, jnp.sin(h)], axis=0) @ np.ones((3, 2)))

    after = distribute_contractions(jax.make_jaxpr(f)(jnp.zeros(3 * n)))
    assert "concatenate" in _names(after)
    x = jnp.asarray(np.random.default_rng(2).standard_normal(3 * n))
    np.testing.assert_allclose(jax.core.eval_jaxpr(after.jaxpr, after.consts, x)[0], f(x), rtol=1e-12)
