"""Split contractions: ``B(a, b)`` whose output mixes particles while each term keeps one particle per element
(attention scores ``q_i · k_j``) runs term by term on slots and is expanded after the contraction; checked
against dense propagation and nested AD on JAX, torch and NumPy, and the annotation against a dense
evaluation."""

from __future__ import annotations

import numpy as np
import pytest

import multijet as mj
from multijet import engine
from multijet.backends import numpy as mjnp
from multijet.backends.numpy_tracer import capture
from multijet.engine import sparsity
from multijet.engine.inline import inline_calls


def _weights(n, d, hidden, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) / np.sqrt(s[0]) for s in [(d, hidden), (hidden, hidden), (hidden, hidden),
                                                                (hidden, hidden), (hidden, 1)]]  # fmt: skip


def jax_attention(n, d=3, hidden=6, einsum=True, seed=0):
    """Self-attention over particles: scores ``q_i · k_j`` (einsum or ``q @ k.T``), softmax, values."""
    import jax
    import jax.numpy as jnp

    W0, Wq, Wk, Wv, Wo = _weights(n, d, hidden, seed)

    def f(x):
        r = x.reshape(n, d)
        h = jnp.tanh(r @ W0)
        q, k, v = h @ Wq, h @ Wk, h @ Wv
        s = jnp.einsum("ia,ja->ij", q, k) if einsum else q @ k.T
        a = jax.nn.softmax(s, axis=-1)
        return jnp.sum(jnp.tanh(a @ v) @ Wo) + jnp.sum(r * r)

    return f


@pytest.fixture(autouse=True)
def _sparsity_always_pays(monkeypatch):
    """Small programs (fast tests): sparsity kept even where the cost model finds dense as cheap."""
    monkeypatch.setattr(sparsity, "PAYS", 10.0)


def _close(a, b, tol=1e-10):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    assert np.max(np.abs(a - b)) <= tol * max(1.0, np.max(np.abs(b))), (a, b)


@pytest.mark.parametrize("einsum", [True, False])
def test_jax_split_scores_equal_dense_and_nested(einsum):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    n = 5
    f = jax_attention(n, einsum=einsum)
    X = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3 * n)))
    sparse = mj.compile(mj.Laplacian(), f, X)
    got = sparse(X)
    _close(got, jax.vmap(lambda x: jnp.trace(jax.hessian(f)(x)))(X))
    _close(got, mj.laplacian(f, X, backend="jax", sparsity=False))
    assert sparse.schedule.count("(split: each term on slots") == 2, sparse.schedule  # q·k and a @ v

    v, g, lap = mj.laplacian(f, X, backend="jax", return_grad=True)
    _close(g, jax.vmap(jax.grad(f))(X))
    _close(lap, got)

    masses = np.array([1.0, 2.0, 0.5, 3.0, 1.5])  # C = diag(1/m) per particle: weights inside the mixed term
    w = np.repeat(1.0 / masses, 3)
    hess, grad = jax.vmap(jax.hessian(f))(X), jax.vmap(jax.grad(f))(X)
    expect = -0.5 * (jnp.einsum("nii,i->n", hess, w) + jnp.einsum("ni,ni,i->n", grad, grad, w))
    _close(mj.local_kinetic_energy(f, X, masses, backend="jax"), expect)
    _close(mj.weighted_laplacian(f, X, np.diag(w), backend="jax"), jnp.einsum("nii,i->n", hess, w))


def test_jax_split_refused_where_a_term_mixes_particles():
    """``Σ_{i,j} T_{ija} W_{ijc}`` over pair features ``T_{ij} = q_i + q_j``: the term of ``T`` sums several
    particles into each element even with ``i`` or ``j`` left unsummed, so the contraction stays dense."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    n, hidden = 4, 3
    W0, Wq, _, _, _ = _weights(n, 3, hidden, seed=2)
    W = np.random.default_rng(3).standard_normal((n, n, 2))

    def f(x):
        r = x.reshape(n, 3)
        q = jnp.tanh(r @ W0) @ Wq
        T = q[:, None, :] + q[None, :, :]
        return jnp.sum(jnp.sin(jnp.tensordot(T, W, axes=([0, 1], [0, 1]))))

    X = jnp.asarray(np.random.default_rng(4).standard_normal((2, 3 * n)))
    sparse = mj.compile(mj.Laplacian(), f, X)
    _close(sparse(X), jax.vmap(lambda x: jnp.trace(jax.hessian(f)(x)))(X))
    assert "kept [slots]" in sparse.schedule and "[6]" in sparse.schedule, sparse.schedule  # T: pairs
    assert "(split" not in sparse.schedule, sparse.schedule


def test_torch_split_scores_equal_dense_and_nested():
    torch = pytest.importorskip("torch")
    n, d = 5, 3
    W0, Wq, Wk, Wv, Wo = (torch.as_tensor(w) for w in _weights(n, d, 6, seed=1))

    def f(x):
        r = x.reshape(n, d)
        h = torch.tanh(r @ W0)
        q, k, v = h @ Wq, h @ Wk, h @ Wv
        a = torch.softmax(q @ k.T, dim=-1)
        return (torch.tanh(a @ v) @ Wo).sum() + (r * r).sum()

    X = torch.as_tensor(np.random.default_rng(2).standard_normal((3, 3 * n)))
    sparse = mj.compile(mj.Laplacian(), f, X)
    nested = torch.stack([torch.func.hessian(f)(x).trace() for x in X])
    _close(sparse(X).detach(), nested.detach())
    _close(mj.laplacian(f, X, sparsity=False).detach(), nested.detach())
    assert sparse.schedule.count("(split: each term on slots") == 2, sparse.schedule  # q @ k.T and a @ v
    masses = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5], dtype=torch.float64)
    w = (1.0 / masses).repeat_interleave(3)
    hess = torch.stack([torch.func.hessian(f)(x) for x in X])
    grad = torch.stack([torch.func.grad(f)(x) for x in X])
    expect = -0.5 * (torch.einsum("nii,i->n", hess, w) + torch.einsum("ni,ni,i->n", grad, grad, w))
    _close(mj.local_kinetic_energy(f, X, masses).detach(), expect.detach())


def _numpy_attention(n, d, hidden, seed=3):
    W0, Wq, Wk, Wv, Wo = _weights(n, d, hidden, seed)

    def f(x):
        r = np.reshape(x, (n, d))
        h = np.tanh(r @ W0)
        q, k, v = h @ Wq, h @ Wk, h @ Wv
        s = q @ k.T
        e = np.exp(s - np.max(s, axis=-1, keepdims=True))
        a = e / np.sum(e, axis=-1, keepdims=True)
        return np.sum(np.tanh(a @ v) @ Wo)

    return f


def test_numpy_split_equals_dense_and_finite_differences():
    n = 4
    f = _numpy_attention(n, 3, 5)
    X = np.random.default_rng(5).standard_normal((2, 3 * n))
    sparse = mj.laplacian(f, X, backend="numpy")
    _close(sparse, mj.laplacian(f, X, backend="numpy", sparsity=False))
    fd = [np.trace(_fd_hessian(f, x)) for x in X]  # central differences, float64
    np.testing.assert_allclose(sparse, fd, rtol=1e-5, atol=1e-5)


def _fd_hessian(f, x, h=1e-4):
    E = np.eye(x.size) * h
    return np.array([[(f(x + a + b) - f(x + a - b) - f(x - a + b) + f(x - a - b)) / (4 * h * h) for b in E] for a in E])


@pytest.mark.parametrize("b", [2, 3])
def test_split_annotation_matches_a_dense_evaluation(b):
    """For each split contraction of the attention (scores ``q @ k.T``: both operands compressed; ``a @ v``:
    ``a`` dense, ``v``'s term with the particle axis unsummed), on a dense evaluation of all directions: each
    compressed operand's term (unsummed where the split says) is zero outside its side's sets; the mixed
    term ``Σ_r B(a_{1,r}, b_{1,r})`` is zero outside the mixed mask, or, with a dense operand, equals the
    slot-wise sum over its partners' directions."""
    n, d = 8 // b, b
    f = _numpy_attention(n, d, 4)
    D = n * d
    X = np.random.default_rng(6).standard_normal((2, D))
    program = inline_calls(capture(f, X[:, None, :], X.dtype))
    layout = mjnp.Layout(2, D)
    sets = sparsity.BlockSets(D // b, cap=2)
    splits: dict = {}
    pats, _ = sparsity.analyse(program, np.arange(D) // b, layout.probe, layout.concrete, sets, splits)
    plan = sparsity.SparsePlan(program, b, D, pats, sets)
    values = [v for e in program.eqns for v in e.ins + e.outs if v.inexact and v not in program.consts]
    full = engine.Program(program.invars, list(dict.fromkeys(values)), program.eqns, program.consts)
    ctx = engine.Context(2, True, D, layout, lambda a: np.sum(a, axis=1, keepdims=True), backend="numpy")
    jets = dict(zip(full.outvars, engine.propagate(ctx, full, [[X[:, None, :], layout.eye(program.invars[0]), None]]),
                    strict=True))  # fmt: skip
    blocks = np.arange(D) // b
    kinds_seen = set()
    for i, split in splits.items():
        eqn = program.eqns[i]
        (ja, jb), out = (jets[v] for v in eqn.ins), eqn.outs[0]
        for side, pattern in enumerate(split.sides):
            if pattern is None:
                continue
            axis = split.axes[side]
            fn = eqn.impl.fn if axis is None else eqn.impl.unsum(side, axis)
            kinds_seen.add("unsummed" if axis is not None else "plain")
            term = fn(ja[1], jb[0])[0] if side == 0 else fn(ja[0], jb[1])[0]
            term = np.broadcast_to(term, (2, D) + pattern.shape)
            if axis is not None:  # the unsummed terms add up to the term
                _close(term.sum(axis=2), eqn.impl.fn(ja[1], jb[0])[0] if side == 0 else eqn.impl.fn(ja[0], jb[1])[0])
            for e in np.ndindex(*pattern.shape):
                allowed = np.isin(blocks, sets.sets[pattern[e]]) if pattern[e] >= 0 else np.zeros(D, bool)
                assert not term[(slice(None), ~allowed) + e].any(), (e, pattern[e])
        both = np.broadcast_to(eqn.impl.fn(ja[1], jb[1])[0], (2, D) + out.shape)
        if split.mixed is not None:
            kinds_seen.add("mixed")
            assert split.mixed.any() and not split.mixed.all()
            assert not both[(slice(None), slice(None)) + (~split.mixed).nonzero()].any()
        if split.partners is not None:
            kinds_seen.add("partners")
            dense = split.dense.index(True)
            slots = [layout.take_directions(c, plan.weight_index(p, b), v)
                     for c, p, v in zip((ja[1], jb[1]), (pats[eqn.ins[0]], pats[eqn.ins[1]]), eqn.ins, strict=True)]
            slots[dense] = layout.take_directions((ja[1], jb[1])[dense], plan.weight_index(split.partners, b),
                                                  eqn.ins[dense])  # fmt: skip
            _close(eqn.impl.fn(*slots)[0].sum(axis=1), both.sum(axis=1))
    assert kinds_seen == {"plain", "unsummed", "mixed", "partners"}, kinds_seen


@pytest.mark.parametrize("order", ["identity", "reversed", "not a permutation"])
def test_jax_scatter_of_particles_onto_their_blocks(order):
    """``scatter_sum`` of ``(b, n, K)`` slots whose row ``j`` lies in one block: a transpose when the rows map to
    the blocks one to one (in any order), the general scatter-add otherwise; both equal ``np.add.at``."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    from multijet.backends import jax_sparse
    from multijet.engine.program import Var

    b, n, K = 3, 5, 4
    blocks = {"identity": np.arange(n), "reversed": np.arange(n)[::-1], "not a permutation": np.array([0, 0, 2, 3, 4])}
    pattern = np.broadcast_to(blocks[order][:, None], (n, K)).copy()
    plan = sparsity.SparsePlan(None, b, b * n, {}, sparsity.BlockSets(n, cap=2))
    flat, size, shape = plan.sum_index(pattern, (0,))
    assert (jax_sparse._block_transpose(flat, size, (n, K)) is None) == (order == "not a permutation")
    c = np.random.default_rng(0).standard_normal((b, n, K))
    expect = np.zeros(size + 1)
    np.add.at(expect, flat.reshape(-1), c.reshape(-1))
    got = jax_sparse.SparseOps.scatter_sum(c, flat, size, Var((n, K), np.dtype("float64")), shape)
    _close(got, expect[:size].reshape(shape))
