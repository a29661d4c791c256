"""No D×D array for unit directions (issue 10 part 2): executors seed identity groups symbolically (or as
blocks of unit rows), never through ``JetGroup.directions``; a randomised Laplacian at D = 10⁶ runs in a few
hundred MiB on every backend."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
from array_api_compat import array_namespace

import multijet as mj
from multijet.plan_group import JetGroup

BACKENDS = [
    pytest.param("numpy", marks=pytest.mark.numpy),
    pytest.param("torch", marks=pytest.mark.torch),
    pytest.param("jax", marks=pytest.mark.jax),
]
D = 100
_rng = np.random.default_rng(5)
A = _rng.normal(size=(4, D)) / np.sqrt(D)


def f(x):
    xp = array_namespace(x)
    return xp.sum(xp.tanh(xp.asarray(A, dtype=x.dtype) @ x)) + x[0] * x[1]


def _x(backend, n=3):
    x = _rng.normal(size=(n, D))
    if backend == "torch":
        import torch

        return torch.tensor(x)
    if backend == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        return jnp.asarray(x)
    return x


@pytest.fixture
def no_dense_identity(monkeypatch):
    """Call it to make ``JetGroup.directions`` raise for unit directions (after planning: the planner's own
    exact check may enumerate a small group's directions)."""
    dense = JetGroup.directions.fget

    def guarded(self):
        if self.unit_axes is not None:
            raise AssertionError(f"the dense {self.size}×{self.dim} identity was asked for")
        return dense(self)

    return lambda: monkeypatch.setattr(JetGroup, "directions", property(guarded))


@pytest.mark.parametrize("backend", BACKENDS)
def test_identity_groups_never_densified(backend, no_dense_identity):
    x = _x(backend)
    mixed = mj.Laplacian() + mj.LinearOperator({tuple(int(i == j) for j in range(D)): 1.0 + i for i in range(3)})
    subset = mj.WeightedLaplacian(np.diag(np.r_[0.0, np.ones(D - 1)]))  # Δ over x_1 … x_{D−1} (a heat equation)
    few = mj.WeightedLaplacian(np.diag(np.r_[np.zeros(D - 10), np.arange(1.0, 11.0)]))  # on 10 axes: seeded by rows
    methods = ("collapsed", "standard") if backend == "numpy" else ("collapsed", "standard", "nested")
    for op in (mj.Laplacian(), mixed, subset, few):
        for route in (None, "directions"):
            mj.plan(op, D, route=route)  # exact plans are cached
    no_dense_identity()
    for method in methods:
        for op in (mj.Laplacian(), mixed, subset, few):
            for chunks in ({}, {"direction_chunk_size": 32}):
                out = mj.apply(op, f, x, backend=backend, method=method, return_grad=True, **chunks)
                assert np.all(np.isfinite(np.asarray(out[2].detach() if hasattr(out[2], "detach") else out[2])))
        comp = mj.compile(mj.Laplacian(), f, x, backend=backend, method=method, direction_chunk_size=40)
        comp(x)


@pytest.mark.numpy
def test_exact_laplacian_allocates_no_dxd_numpy():
    """At D = 3000 a D×D float64 array is 72 MB; the exact Laplacian of a width-4 layer peaks far below."""
    n = 3000
    B = np.random.default_rng(0).normal(size=(4, n)) / np.sqrt(n)

    def g(x):
        return np.sum(np.tanh(B @ x))

    x = np.random.default_rng(1).normal(size=(2, n))
    mj.plan(mj.Laplacian(), n)  # planned (and cached) outside the measurement
    tracemalloc.start()
    out = mj.laplacian(g, x, backend="numpy")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 * n * n / 8, peak  # an eighth of one D×D array
    h = np.tanh(B @ x[0])
    np.testing.assert_allclose(out[0], np.sum(-2 * h * (1 - h**2) * np.sum(B**2, axis=1)), rtol=1e-10)


_MILLION = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    import multijet as mj

    backend, D, N = sys.argv[1], 1_000_000, 2
    rng = np.random.default_rng(0)
    W = rng.standard_normal((8, D)) / np.sqrt(D)
    X = rng.standard_normal((N, D))
    if backend == "torch":
        import torch
        Wb, Xb, act = torch.tensor(W), torch.tensor(X), torch.tanh
    elif backend == "jax":
        import jax, jax.numpy as jnp
        jax.config.update("jax_enable_x64", True)
        Wb, Xb, act = jnp.asarray(W), jnp.asarray(X), jnp.tanh
    else:
        Wb, Xb, act = W, X, np.tanh
    f = lambda x: act(Wb @ x).sum()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = mj.laplacian(f, Xb, samples=16, seed=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    V = mj.plan(mj.Laplacian(), D, samples=16, seed=0).groups[0].directions
    h = np.tanh(X @ W.T)  # Δ̂ = (1/S) Σ_s Σ_j -2 h_j (1 - h_j²) (w_j · v_s)²
    want = (-2 * h * (1 - h**2)) @ ((W @ V.T) ** 2).mean(axis=1)
    print((peak - base) / 1024, float(np.max(np.abs(np.asarray(out) - want))))
    """
)


@pytest.mark.parametrize("backend", BACKENDS)
def test_million_dimensional_randomised_laplacian_memory(backend):
    """D = 10⁶, S = 16, N = 2: the increment of peak RSS over the imports and inputs stays within 600 MiB
    (the 16 directions alone are 122 MiB in float64; a D×D identity would be 7.3 TiB)."""
    out = subprocess.run(
        [sys.executable, "-c", _MILLION, backend], capture_output=True, text=True, timeout=300, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    mib, err = map(float, out.stdout.split())
    assert err < 1e-10, err
    assert mib < 600, f"{backend}: peak grew by {mib:.0f} MiB"


@pytest.mark.parametrize("backend", BACKENDS)
def test_laplacian_on_some_axes_is_exact(backend):
    """Unit directions on few axes (rows of Wᵀ taken, no R×D seed) and on most axes (the identity seed with
    zero weights elsewhere), chunked or not: ``Σ_i c_i ∂_i² f`` in closed form."""
    x = _x(backend)
    X = np.asarray(x.detach() if hasattr(x, "detach") else x)
    h = np.tanh(X @ A.T)
    methods = ("collapsed", "standard") if backend == "numpy" else ("collapsed", "standard", "nested")
    for c in (np.r_[np.zeros(D - 10), np.arange(1.0, 11.0)], np.r_[0.0, 0.0, np.ones(D - 2)]):
        want = (-2 * h * (1 - h**2)) @ (A**2 @ c)
        for method in methods:
            for chunks in ({}, {"direction_chunk_size": 7}):
                got = mj.apply(mj.WeightedLaplacian(np.diag(c)), f, x, backend=backend, method=method, **chunks)
                got = np.asarray(got.detach() if hasattr(got, "detach") else got)
                np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=f"{method} {chunks}")
