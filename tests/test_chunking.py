"""Chunking (issue 10 part 4): ``chunk_size`` points and ``direction_chunk_size`` directions per pass give the
unchunked result to round-off on every backend and method, for every kind of operator, under ``jax.jit`` /
``jax.grad`` / ``torch.no_grad`` / torch training (parameter gradients); bad chunk sizes are named."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from array_api_compat import array_namespace

import multijet as mj

D = 5
_rng = np.random.default_rng(3)
W1 = _rng.normal(size=(6, D)) / np.sqrt(D)
W2 = _rng.normal(size=(1, 6))
X = _rng.normal(size=(7, D))

BACKENDS = [
    pytest.param("numpy", marks=pytest.mark.numpy),
    pytest.param("torch", marks=pytest.mark.torch),
    pytest.param("jax", marks=pytest.mark.jax),
]
ALL = ("collapsed", "standard", "nested")
METHODS = {"numpy": ("collapsed", "standard"), "torch": ALL, "jax": ALL}


def f(x):
    xp = array_namespace(x)
    h = xp.tanh(xp.asarray(W1, dtype=x.dtype) @ x)
    return xp.sum(xp.asarray(W2, dtype=x.dtype) @ h) ** 2 + x[0] * x[1] ** 2


def _x(backend):
    if backend == "torch":
        import torch

        return torch.tensor(X)
    if backend == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        return jnp.asarray(X)
    return X


def _np(a):
    return np.asarray(a.detach() if hasattr(a, "detach") else a)


OPERATORS = {
    "laplacian": (mj.Laplacian(), {}),
    "randomised laplacian": (mj.Laplacian(), {"samples": 7, "seed": 1}),
    "weighted": (mj.WeightedLaplacian(np.diag([1.0, 2.0, 0.5, 3.0, 1.5]) + 0.1), {}),
    "mixed": (
        mj.Laplacian() + mj.LinearOperator({(1, 0, 0, 0, 0): 2.0, (0, 0, 0, 1, 0): -1.0, (0,) * D: 0.5}),
        {},
    ),
    "bilaplacian": (mj.Bilaplacian(), {"route": "directions"}),
    "laplacian on 4 of 5 axes": (mj.WeightedLaplacian(np.diag([1.0, 0.0, 2.0, 1.0, 3.0])), {}),
    "laplacian on 2 of 5 axes + b·∇": (
        mj.WeightedLaplacian(np.diag([0.0, 0.0, 2.0, 0.0, 3.0])) + mj.LinearOperator({(0, 0, 1, 0, 0): 1.0}),
        {},
    ),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPERATORS))
def test_chunked_equals_unchunked(backend, name):
    op, kw = OPERATORS[name]
    x = _x(backend)
    for method in METHODS[backend]:
        v0, g0, r0 = mj.apply(op, f, x, backend=backend, method=method, return_grad=True, **kw)
        for chunks in ({"direction_chunk_size": 2}, {"chunk_size": 3}, {"chunk_size": 4, "direction_chunk_size": 3}):
            v, g, r = mj.apply(op, f, x, backend=backend, method=method, return_grad=True, **kw, **chunks)
            scale = 1 + np.abs(_np(r0)).max()
            np.testing.assert_allclose(_np(r), _np(r0), rtol=0, atol=1e-11 * scale, err_msg=f"{method} {chunks}")
            np.testing.assert_allclose(_np(g), _np(g0), rtol=0, atol=1e-12, err_msg=f"{method} {chunks}")
            np.testing.assert_allclose(_np(v), _np(v0), rtol=0, atol=1e-12, err_msg=f"{method} {chunks}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_compiled_and_single_point(backend):
    x = _x(backend)
    ref = _np(mj.laplacian(f, x, backend=backend))
    comp = mj.compile(mj.Laplacian(), f, x, backend=backend, chunk_size=2, direction_chunk_size=3)
    np.testing.assert_allclose(_np(comp(x)), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(mj.laplacian(f, x[0], backend=backend, direction_chunk_size=2)), ref[0], rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunked_composition(backend):
    """The bi-Laplacian by composition, Δ(Δf): the direction chunk reaches both levels."""
    x = _x(backend)[:3]
    ref = _np(mj.bilaplacian(f, x, backend=backend, route="composition"))
    got = mj.bilaplacian(f, x, backend=backend, route="composition", direction_chunk_size=2, chunk_size=2)
    np.testing.assert_allclose(_np(got), ref, rtol=1e-10, atol=1e-10)
    comp = mj.compile(mj.Bilaplacian(), f, x, backend=backend, route="composition", direction_chunk_size=2)
    np.testing.assert_allclose(_np(comp(x)), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.torch
@pytest.mark.parametrize("method", ["collapsed", "standard", "nested"])
def test_torch_parameter_gradients_chunked(method):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()

    def g(x):
        return net(x).squeeze(-1) ** 2

    x = torch.tensor(X)
    grads = []
    for chunks in ({}, {"direction_chunk_size": 2, "chunk_size": 3}):
        net.zero_grad()
        mj.laplacian(g, x, method=method, **chunks).pow(2).sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    comp = mj.compile(mj.Laplacian(), g, x, method=method, direction_chunk_size=2)
    net.zero_grad()
    comp(x).pow(2).sum().backward()
    for a, p in zip(grads[0], net.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        out = mj.laplacian(g, x, method=method, direction_chunk_size=2)
    torch.testing.assert_close(out, mj.laplacian(g, x, method=method).detach())


@pytest.mark.jax
@pytest.mark.parametrize("method", ["collapsed", "standard", "nested"])
def test_jax_parameter_gradients_chunked(method):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    params = (jnp.asarray(W1), jnp.asarray(W2))
    x = jnp.asarray(X)

    def loss(p, **chunks):
        def g(y):
            return jnp.sum(p[1] @ jnp.tanh(p[0] @ y)) ** 2

        return jnp.sum(mj.laplacian(g, x, method=method, **chunks) ** 2)

    ref = jax.grad(loss)(params)
    got = jax.jit(jax.grad(lambda p: loss(p, direction_chunk_size=2, chunk_size=3)))(params)
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-10, atol=1e-12)


@pytest.mark.jax
def test_jax_chunks_run_under_lax_map():
    """Each chunk kind is one ``lax.map`` (a scan) in the jitted program, so XLA keeps one chunk live."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    comp = mj.compile(mj.Laplacian(), f, jnp.asarray(X), direction_chunk_size=2, chunk_size=3)
    assert comp.code.count("scan[") >= 2


@pytest.mark.numpy
def test_numpy_peak_memory_follows_the_direction_chunk():
    D_, N_ = 300, 16
    rng = np.random.default_rng(0)
    A = rng.normal(size=(64, D_)) / np.sqrt(D_)
    x = rng.normal(size=(N_, D_))

    def g(y):
        return np.sum(np.tanh(A @ y))

    def peak(**chunks):
        tracemalloc.start()
        out = mj.laplacian(g, x, backend="numpy", **chunks)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return out, top

    full, p_full = peak()
    chunked, p_chunk = peak(direction_chunk_size=30)
    np.testing.assert_allclose(chunked, full, rtol=1e-12)
    assert p_chunk < p_full / 3, (p_chunk, p_full)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "4", np.float64(3.0)])
@pytest.mark.parametrize("key", ["chunk_size", "direction_chunk_size"])
def test_bad_chunk_sizes_are_named(bad, key):
    with pytest.raises(ValueError, match=key):
        mj.laplacian(f, X, backend="numpy", **{key: bad})
    with pytest.raises(ValueError, match=key):
        mj.compile(mj.Laplacian(), f, X, backend="numpy", **{key: bad})
