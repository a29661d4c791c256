"""``mj.local_kinetic_energy`` against exactly solvable systems (the local energy of an eigenstate is its
energy at every configuration) and against nested AD; bad input gets a clear error."""

from __future__ import annotations

import numpy as np
import pytest
from test_linalg import _within  # a deadline on calls that could block

import multijet as mj

RNG = np.random.default_rng(7)


def _namespace(backend):
    if backend == "numpy":
        return np
    if backend == "torch":
        torch = pytest.importorskip("torch")
        return torch
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    return jnp


def _array(backend, a):
    if backend == "torch":
        import torch

        return torch.tensor(a, dtype=torch.float64)
    if backend == "jax":
        import jax.numpy as jnp

        return jnp.asarray(a)
    return np.asarray(a)


def _host(a):
    return np.asarray(a.detach() if hasattr(a, "detach") else a)


BACKENDS = ["numpy", pytest.param("torch", marks=pytest.mark.torch), pytest.param("jax", marks=pytest.mark.jax)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hydrogen_ground_state(backend):
    """ψ = e^{−r}: E_L = −½(Δ log ψ + |∇ log ψ|²) − 1/r = −½ at every configuration."""
    xp = _namespace(backend)
    X = RNG.normal(size=(6, 3))

    def log_psi(x):
        return -xp.sqrt(xp.sum(x * x))

    kinetic = _host(mj.local_kinetic_energy(log_psi, _array(backend, X), backend=backend))
    energy = kinetic - 1 / np.linalg.norm(X, axis=1)
    np.testing.assert_allclose(energy, -0.5, rtol=1e-12, atol=1e-12)
    single = _host(mj.local_kinetic_energy(log_psi, _array(backend, X[0]), backend=backend))
    assert single.shape == ()
    np.testing.assert_allclose(single, kinetic[0], rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per", ["particle", "coordinate"])
def test_harmonic_oscillator_with_masses(backend, per):
    """Two particles in 3D, masses 1 and 4, ω = 1: ψ = exp(−Σ_p m_p |r_p|²/2), V = Σ_p m_p |r_p|²/2, E = 3."""
    xp = _namespace(backend)
    m = np.array([1.0, 4.0])
    mc = np.repeat(m, 3)
    X = RNG.normal(size=(5, 6))

    def log_psi(x):
        return -0.5 * xp.sum(_array(backend, mc) * x * x)

    masses = m if per == "particle" else mc
    kinetic = _host(mj.local_kinetic_energy(log_psi, _array(backend, X), masses, backend=backend))
    np.testing.assert_allclose(kinetic + 0.5 * np.sum(mc * X * X, axis=1), 3.0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("jax", marks=pytest.mark.jax)])
def test_complex_log_psi_angular_momentum(backend):
    """ψ = (x + iy) e^{−(x²+y²)/2} in 2D (m = 1, ω = 1, angular momentum 1): E_L = 2 at every configuration."""
    xp = _namespace(backend)
    X = RNG.normal(size=(6, 2))

    def log_psi(x):
        return xp.log(x[0] + 1j * x[1]) - 0.5 * xp.sum(x * x)

    for method in ("collapsed", "standard", "nested") if backend == "jax" else ("collapsed", "standard"):
        kinetic = _host(mj.local_kinetic_energy(log_psi, _array(backend, X), backend=backend, method=method))
        assert np.iscomplexobj(kinetic)
        np.testing.assert_allclose(kinetic + 0.5 * np.sum(X * X, axis=1), 2.0, rtol=1e-12, atol=1e-12)


@pytest.mark.jax
def test_determinant_wavefunction_against_nested_ad():
    import jax

    jnp = _namespace("jax")
    n = 4
    W = jnp.asarray(RNG.normal(size=(3, n)))
    phase = jnp.asarray(RNG.normal(size=3 * n))

    def log_abs_psi(x):
        r = jnp.reshape(x, (n, 3))
        orbitals = jnp.tanh(r @ W) * jnp.exp(-jnp.sum(r * r, axis=1, keepdims=True) / 4) + 2 * jnp.eye(n)
        return jnp.linalg.slogdet(orbitals)[1]

    def log_psi(x):  # complex: a smooth phase added
        return log_abs_psi(x) + 1j * jnp.sin(phase @ x)

    X = jnp.asarray(RNG.normal(size=(4, 3 * n)))
    masses = np.array([1.0, 2.0, 3.0, 4.0])
    w = jnp.asarray(np.repeat(1 / masses, 3))

    def reference(f):
        def one(x):
            re, im = (lambda y: jnp.real(f(y))), (lambda y: jnp.imag(f(y)))
            g = jax.grad(re)(x) + 1j * jax.grad(im)(x)
            lap = jnp.sum(w * jnp.diag(jax.hessian(re)(x))) + 1j * jnp.sum(w * jnp.diag(jax.hessian(im)(x)))
            return -0.5 * (lap + jnp.sum(w * g * g))

        return jax.vmap(one)(X)

    for f in (log_abs_psi, log_psi):  # deadlines: JAX's AD of slogdet runs LAPACK trsm (test_vmc_repeated)
        got = _within(mj.local_kinetic_energy, f, X, masses, backend="jax")
        np.testing.assert_allclose(np.asarray(got), np.asarray(_within(reference, f)), rtol=1e-10, atol=1e-10)
    jitted = jax.jit(lambda z: mj.local_kinetic_energy(log_psi, z, masses, backend="jax"))
    np.testing.assert_allclose(
        np.asarray(_within(jitted, X)), np.asarray(_within(reference, log_psi)), rtol=1e-10, atol=1e-10
    )


def test_bad_input():
    X = RNG.normal(size=(3, 6))
    with pytest.raises(ValueError, match="scalar per configuration"):
        mj.local_kinetic_energy(lambda x: x * x, X, backend="numpy")
    with pytest.raises(ValueError, match="one entry per coordinate"):
        mj.local_kinetic_energy(lambda x: np.sum(x * x), X, masses=[1.0, 2.0, 3.0, 4.0], backend="numpy")
    with pytest.raises(ValueError, match="positive"):
        mj.local_kinetic_energy(lambda x: np.sum(x * x), X, masses=[1.0, -2.0], backend="numpy")
    with pytest.raises(ValueError, match="positive"):
        mj.local_kinetic_energy(lambda x: np.sum(x * x), X, masses=[1.0, np.nan], backend="numpy")
    with pytest.raises(ValueError, match="configuration"):
        mj.local_kinetic_energy(lambda x: np.sum(x * x), np.zeros((2, 3, 4)), backend="numpy")


@pytest.mark.torch
def test_complex_log_psi_on_torch_is_refused():
    torch = _namespace("torch")

    def log_psi(x):
        return torch.log(torch.complex(x[0], x[1])) - 0.5 * (x * x).sum()

    with pytest.raises(TypeError, match="complex"):
        mj.local_kinetic_energy(log_psi, torch.tensor(RNG.normal(size=(3, 2))), backend="torch")
