"""Direction sparsity (issue 11): the schedule's per-element block patterns, and sparse = dense = nested AD.

Oracles: the dense propagation of the same engine (``sparsity=False``), JAX's and torch's own nested AD
(``jax.hessian``, ``torch.func.hessian``) and, for the NumPy reference, central finite differences. The
pattern annotations are checked against a dense propagation that records every value's per-direction
coefficients: a direction outside an element's block must give exactly zero there.
"""

from __future__ import annotations

import numpy as np
import pytest
from array_api_compat import array_namespace

import multijet as mj
from multijet import engine
from multijet.backends import numpy as mjnp
from multijet.backends.numpy_tracer import capture
from multijet.engine import sparsity
from multijet.engine.inline import inline_calls
from multijet.engine.program import Program


def _per_particle(xp, n, d, hidden, seed=0, pairs=True, det=True):
    """log|ψ|-like: a per-particle tanh stream with a residual, orbitals with envelopes, ``slogdet`` of the
    (n, n) orbital matrix, and (``pairs``) a Jastrow over r_i − r_j; the weights as NumPy arrays."""
    rng = np.random.default_rng(seed)
    W1, b1 = rng.standard_normal((d, hidden)) / np.sqrt(d), 0.1 * rng.standard_normal(hidden)
    W2 = rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)
    Wo = rng.standard_normal((hidden, n)) / np.sqrt(hidden)
    decay = 0.5 + rng.uniform(0.0, 1.0, n)
    iu, ju = np.triu_indices(n, 1)
    return W1, b1, W2, Wo, decay, iu, ju


def jax_log_psi(n, d=3, hidden=8, pairs=True, det=True):
    import jax.numpy as jnp

    W1, b1, W2, Wo, decay, iu, ju = _per_particle(np, n, d, hidden)

    def f(x):
        r = x.reshape(n, d)
        h = jnp.tanh(r @ W1 + b1)
        h = h + jnp.tanh(h @ W2)
        out = jnp.sum(jnp.cos(h))
        if det:
            norm = jnp.sqrt(jnp.sum(r * r, axis=-1) + 0.1)
            phi = (h @ Wo) * jnp.exp(-norm[:, None] * decay[None, :]) + 2.0 * np.eye(n)
            out = out + jnp.linalg.slogdet(phi)[1]
        if pairs:
            diff = r[iu] - r[ju]
            rij = jnp.sqrt(jnp.sum(diff * diff, axis=-1) + 0.1)
            out = out + jnp.sum(rij / (1.0 + rij))
        return out

    return f


def torch_log_psi(n, d=3, hidden=8, pairs=True, det=True):
    import torch

    W1, b1, W2, Wo, decay, iu, ju = (torch.as_tensor(a) for a in _per_particle(np, n, d, hidden))
    eye = torch.eye(n, dtype=torch.float64)

    def f(x):
        r = x.reshape(n, d)
        h = torch.tanh(r @ W1 + b1)
        h = h + torch.tanh(h @ W2)
        out = torch.cos(h).sum()
        if det:
            norm = torch.sqrt((r * r).sum(-1) + 0.1)
            phi = (h @ Wo) * torch.exp(-norm[:, None] * decay[None, :]) + 2.0 * eye
            out = out + torch.linalg.slogdet(phi)[1]
        if pairs:
            diff = r[iu] - r[ju]
            rij = torch.sqrt((diff * diff).sum(-1) + 0.1)
            out = out + (rij / (1.0 + rij)).sum()
        return out

    return f


def numpy_log_psi(n, d=3, hidden=8):
    W1, b1, W2, Wo, decay, _, _ = _per_particle(np, n, d, hidden)

    def f(x):
        xp = array_namespace(x)
        r = xp.reshape(x, (n, d))
        h = xp.tanh(r @ W1 + b1)
        h = h + xp.tanh(h @ W2)
        norm = xp.sqrt(xp.sum(r * r, axis=-1) + 0.1)
        phi = (h @ Wo) * xp.exp(-norm[:, None] * decay[None, :]) + 2.0 * np.eye(n)
        return xp.sum(xp.cos(h)) + xp.linalg.slogdet(phi)[1]

    return f


def _close(a, b, tol=1e-10):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    assert np.max(np.abs(a - b)) <= tol * max(1.0, np.max(np.abs(b))), (a, b)


# --- JAX -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pairs,det", [(True, True), (False, True), (False, False), (True, False)])
def test_jax_sparse_equals_dense_equals_nested(pairs, det):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    n = 5
    f = jax_log_psi(n, pairs=pairs, det=det)
    X = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3 * n)))
    nested = jax.vmap(lambda x: jnp.trace(jax.hessian(f)(x)))(X)
    sparse = mj.compile(mj.Laplacian(), f, X)
    dense = mj.compile(mj.Laplacian(), f, X, sparsity=False)
    _close(sparse(X), nested)
    _close(dense(X), nested)
    _close(mj.laplacian(f, X, backend="jax"), nested)  # the eager path (constants traced) agrees too
    text = sparse.schedule
    assert "direction sparsity: blocks of b=" in text, text
    assert "kept [slots]" in text
    if pairs:  # the pair features r_i − r_j carry the two particles' blocks: 6 slots
        assert "[6]" in text, text
    assert "direction sparsity" not in dense.schedule


def test_jax_sparse_return_grad_and_masses():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    n = 4
    f = jax_log_psi(n)
    X = jnp.asarray(np.random.default_rng(2).standard_normal((3, 3 * n)))
    v, g, lap = mj.laplacian(f, X, backend="jax", return_grad=True)
    vd, gd, lapd = mj.laplacian(f, X, backend="jax", return_grad=True, sparsity=False)
    _close(v, jax.vmap(f)(X))
    _close(g, jax.vmap(jax.grad(f))(X))
    _close(lap, lapd)
    _close(g, gd)
    masses = np.array([1.0, 2.0, 0.5, 3.0])  # one per particle: C = diag(1/m) is block diagonal
    e_sparse = mj.local_kinetic_energy(f, X, masses, backend="jax")
    e_dense = mj.local_kinetic_energy(f, X, masses, backend="jax", sparsity=False)
    w = np.repeat(1.0 / masses, 3)
    hess = jax.vmap(jax.hessian(f))(X)
    grad = jax.vmap(jax.grad(f))(X)
    expect = -0.5 * (jnp.einsum("nii,i->n", hess, w) + jnp.einsum("ni,ni,i->n", grad, grad, w))
    _close(e_sparse, expect)
    _close(e_dense, expect)


def test_jax_weighted_laplacian_block_diagonal_weights():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    n = 4
    f = jax_log_psi(n, pairs=False)
    X = jnp.asarray(np.random.default_rng(3).standard_normal((2, 3 * n)))
    C = np.diag(np.repeat([1.0, 0.25, 2.0, 0.5], 3))
    out = mj.weighted_laplacian(f, X, C, backend="jax")
    hess = jax.vmap(jax.hessian(f))(X)
    _close(out, jnp.einsum("nij,ij->n", hess, C))
    _close(out, mj.weighted_laplacian(f, X, C, backend="jax", sparsity=False))


# --- torch ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pairs", [True, False])
def test_torch_sparse_equals_dense_equals_nested(pairs):
    torch = pytest.importorskip("torch")
    n = 5
    f = torch_log_psi(n, pairs=pairs)
    X = torch.as_tensor(np.random.default_rng(1).standard_normal((3, 3 * n)))
    nested = torch.stack([torch.func.hessian(f)(x).trace() for x in X])
    sparse = mj.compile(mj.Laplacian(), f, X)
    _close(sparse(X).detach(), nested.detach())
    _close(mj.laplacian(f, X, sparsity=False).detach(), nested.detach())
    assert "direction sparsity: blocks of b=3" in sparse.schedule
    if pairs:  # indices written in f are known: the pair features keep two blocks (6 slots)
        assert "[6]" in sparse.schedule, sparse.schedule
    v, g, lap = mj.laplacian(f, X, return_grad=True)
    _close(g.detach(), torch.stack([torch.func.grad(f)(x) for x in X]).detach())
    _close(lap.detach(), nested.detach())


def test_torch_sparse_keeps_parameter_gradients():
    torch = pytest.importorskip("torch")
    n = 4
    net = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()

    def f(x):
        return net(x.reshape(n, 3)).sum()

    X = torch.as_tensor(np.random.default_rng(4).standard_normal((3, 3 * n)))
    grads = []
    for mode in (None, False):
        net.zero_grad()
        mj.laplacian(f, X, sparsity=mode).pow(2).sum().backward()
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads, strict=True):
        _close(a, b)
    assert any(g.abs().sum() > 0 for g in grads[0])



def test_torch_compiled_sparse_plan_follows_indices_edited_in_place():
    """A compiled program whose sparse plan follows a gather by an integer tensor of ``f``'s closure is
    rebuilt when that tensor is edited in place (the old plan would pair the wrong blocks)."""
    torch = pytest.importorskip("torch")
    n = 16
    idx = torch.arange(n).roll(1)
    W = torch.as_tensor(np.random.default_rng(5).standard_normal((3, 3)))

    def f(x):
        h = torch.tanh(x.reshape(n, 3) @ W.T)
        return (h * h[idx]).sum()

    X = torch.as_tensor(np.random.default_rng(6).standard_normal((3, 3 * n)))
    nested = lambda: torch.stack([torch.func.hessian(f)(x).trace() for x in X])  # noqa: E731
    lap = mj.compile(mj.Laplacian(), f, X)
    _close(lap(X), nested())
    assert "direction sparsity: blocks of b=3" in lap.schedule
    idx[:] = torch.arange(n)  # now h_i · h_i: the pairs' cross terms become one block's square terms
    _close(lap(X), nested())

# --- NumPy reference and the annotations -----------------------------------------------------------------------


def test_numpy_sparse_equals_dense_and_finite_differences():
    n = 4
    f = numpy_log_psi(n)
    X = np.random.default_rng(5).standard_normal((2, 3 * n))
    sparse = mj.laplacian(f, X, backend="numpy")
    _close(sparse, mj.laplacian(f, X, backend="numpy", sparsity=False))
    h = 1e-4
    for x, lap in zip(X, sparse, strict=True):
        fd = sum((f(x + h * e) - 2 * f(x) + f(x - h * e)) / h**2 for e in np.eye(x.size))
        assert abs(fd - lap) < 1e-5 * max(1.0, abs(lap))


def _all_values(program: Program) -> Program:
    """The program with every inexact value as an output (to read each one's jet)."""
    values = [v for e in program.eqns for v in e.outs if v.inexact]
    return Program(program.invars, values, program.eqns, program.consts)


@pytest.mark.parametrize("b", [2, 3])
def test_patterns_match_a_dense_evaluation(b):
    """Every element's per-direction coefficient is zero outside its set of blocks (NONE: zero everywhere)."""
    n, d = 6 // b, b  # particles of b coordinates
    rng = np.random.default_rng(6)
    W, M = rng.standard_normal((d, 5)), rng.standard_normal((5, 4))

    def f(x):
        r = np.reshape(x, (n, d))
        h = np.tanh(r @ W)
        g = np.sin(h @ M) * np.sum(r * r, axis=-1, keepdims=True)
        s = np.sum(g, axis=0)  # sums over particles: several blocks meet
        pair = np.sum((r[:, None, :] - r[None, :, :]) ** 2, axis=-1)  # (n, n): element (i, j) in {i, j}
        return np.sum(np.exp(s)) + np.sum(g[::-1] ** 2) + np.sum(np.exp(-pair))

    D = n * d
    X = rng.standard_normal((2, D))
    program = inline_calls(capture(f, X[:, None, :], X.dtype))
    layout = mjnp.Layout(2, D)
    sets = sparsity.BlockSets(D // b, cap=2)
    pats, _ = sparsity.analyse(program, np.arange(D) // b, layout.probe, layout.concrete, sets)
    full = _all_values(program)
    ctx = engine.Context(2, True, D, layout, lambda a: np.sum(a, axis=1, keepdims=True), backend="numpy")
    jets = engine.propagate(ctx, full, [[X[:, None, :], layout.eye(program.invars[0]), None]])
    blocks_seen = dense_seen = pairs_seen = 0
    for v, jet in zip(full.outvars, jets, strict=True):
        p, x1 = pats[v], jet[1]
        if x1 is None:
            assert (p == sparsity.NONE).all() or (p == sparsity.DENSE).all()
            continue
        x1 = np.broadcast_to(x1, (2, D) + v.shape)
        block_of_direction = np.arange(D) // b
        for e in np.ndindex(*v.shape):
            col = x1[(slice(None), slice(None)) + e]
            if p[e] == sparsity.NONE:
                assert not col.any()
            elif p[e] >= 0:
                blocks_seen += 1
                pairs_seen += len(sets.sets[p[e]]) == 2
                allowed = np.isin(block_of_direction, sets.sets[p[e]])
                assert not col[:, ~allowed].any(), (v, e, sets.sets[p[e]])
            else:
                dense_seen += 1
    assert blocks_seen > 0 and dense_seen > 0 and pairs_seen > 0  # the program has every kind of element


def test_sparse_plan_says_where_it_dropped():
    n = 4
    f = numpy_log_psi(n)
    X = np.random.default_rng(7).standard_normal((2, 3 * n))
    program = inline_calls(capture(f, X[:, None, :], X.dtype))
    layout = mjnp.Layout(2, 3 * n)
    plan = sparsity.sparse_plan(program, 3 * n, layout.probe, layout.concrete, 2)
    assert plan is not None and plan.b == 3
    text = plan.describe()
    assert "row-sparse slogdet" in text and "several blocks meet here" in text
    assert plan.cost < plan.dense_cost


def test_sparsity_argument_is_checked():
    for bad in ("yes", 0, -2, 1.5):
        with pytest.raises(ValueError, match="sparsity must be None"):
            mj.laplacian(lambda x: (x**2).sum(), np.ones((2, 3)), backend="numpy", sparsity=bad)


def test_sparsity_threshold_caps_the_blocks_per_element():
    """``sparsity=1``: an element may depend on one particle's directions only (folx's threshold, by blocks):
    the pair features go dense, the numbers stay."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    n = 5
    f = jax_log_psi(n)
    X = jnp.asarray(np.random.default_rng(8).standard_normal((2, 3 * n)))
    nested = jax.vmap(lambda x: jnp.trace(jax.hessian(f)(x)))(X)
    capped = mj.compile(mj.Laplacian(), f, X, sparsity=1)
    _close(capped(X), nested)
    assert "kept [slots]" in capped.schedule and "[6]" not in capped.schedule


def test_jax_sparse_under_grad_of_parameters():
    """A VMC training step differentiates the energy with respect to the wavefunction's parameters."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    n = 4
    rng = np.random.default_rng(9)
    W0 = jnp.asarray(rng.standard_normal((3, 6)) / np.sqrt(3))
    iu, ju = np.triu_indices(n, 1)
    X = jnp.asarray(rng.standard_normal((3, 3 * n)))

    def energy(W, sparsity):
        def log_psi(x):
            r = x.reshape(n, 3)
            d = r[iu] - r[ju]
            return jnp.sum(jnp.tanh(r @ W)) + jnp.sum(jnp.sqrt(jnp.sum(d * d, -1) + 0.1))

        return jnp.mean(mj.local_kinetic_energy(log_psi, X, backend="jax", sparsity=sparsity))

    g_sparse = jax.jit(jax.grad(energy), static_argnums=1)(W0, None)
    g_dense = jax.grad(energy)(W0, False)
    _close(g_sparse, g_dense)
    assert float(jnp.abs(g_sparse).max()) > 0


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_particles_seen_through_a_cast_and_a_scaling_of_x(backend):
    """``(2·x.astype(float64)).reshape(n, 3)``: the particle view comes after element-preserving ops on x; the
    sparsity analysis still finds it (it used to look only at ops applied to x itself)."""
    n = 5
    W1 = np.random.default_rng(0).normal(size=(3, 8))
    X = np.random.default_rng(1).standard_normal((3, 3 * n))
    if backend == "jax":
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
        jnp = jax.numpy

        def f(x):
            r = (2.0 * x.astype(jnp.float64)).reshape(n, 3)
            return jnp.cos(jnp.tanh(r @ W1)).sum() + jnp.sum(jnp.sqrt(jnp.sum(r * r, -1) + 0.1))

        X = jnp.asarray(X)
        nested = jax.vmap(lambda x: jnp.trace(jax.hessian(f)(x)))(X)
    else:
        torch = pytest.importorskip("torch")
        Wt = torch.as_tensor(W1)

        def f(x):
            r = (2.0 * x.to(torch.float64)).reshape(n, 3)
            return torch.cos(torch.tanh(r @ Wt)).sum() + torch.sqrt((r * r).sum(-1) + 0.1).sum()

        X = torch.as_tensor(X)
        nested = torch.func.vmap(lambda x: torch.func.hessian(f)(x).trace())(X)
    sparse = mj.compile(mj.Laplacian(), f, X)
    _close(np.asarray(sparse(X)), np.asarray(nested))
    assert "direction sparsity: blocks of b=3" in sparse.schedule, sparse.schedule


def test_cost_model_weighs_contractions_by_their_length():
    """A contraction of length K counts K/4 elementwise costs per output element (GEMM work, not its output
    size), a matrix function of n×n matrices about n/4 per matrix element, everything else one."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from multijet.backends.jax import _Capture, capture
    from multijet.engine.sparsity import CONTRACTION_RATE, _work

    W = np.ones((32, 32))

    def f(x):
        h = jnp.tanh(x.reshape(4, 32) @ W)
        return jnp.linalg.slogdet(h[:, :4] + jnp.eye(4))[1]

    closed = capture(f, jnp.zeros(128))
    program = _Capture().program(closed.jaxpr, list(closed.consts))
    by_prim = {}
    for eqn in program.eqns:
        by_prim.setdefault(eqn.prim, eqn)
    assert _work(by_prim["dot_general"]) == 32 / CONTRACTION_RATE  # K = sqrt(|a||b|/|out|) = 32
    assert _work(by_prim["tanh"]) == 1.0
    linalg = [e for e in program.eqns if e.kind == "linalg"]
    assert linalg and _work(linalg[0]) > 1.0
