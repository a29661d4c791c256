"""Linear algebra (inv, solve, det, slogdet, cholesky) through the shared Taylor rules, on every backend.

Each program is written once against the array API. Collapsed and standard run in strict mode (a generic
fallback would raise) and are checked against the framework's nested AD and against the NumPy reference;
the NumPy reference against finite differences. A FermiNet-like log|ψ| checks the determinant path of
variational Monte Carlo in JAX, eagerly, under ``jax.jit`` and compiled, with a deadline on every call.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from array_api_compat import array_namespace
from conftest import fd_hessian

import multijet as mj

D = 6
_rng = np.random.default_rng(11)
P = _rng.normal(size=(16, D)) / np.sqrt(D)
Q = _rng.normal(size=(8, D)) / np.sqrt(D)
POINT = _rng.normal(size=D) * 0.7
BATCH = _rng.normal(size=(3, D)) * 0.7


def _matrix(x, shift=0.0):
    """A well-conditioned, non-symmetric 4×4 matrix built from x."""
    xp = array_namespace(x)
    a = xp.reshape(xp.asarray(P, dtype=x.dtype) @ x + shift, (4, 4))
    return 3.0 * xp.eye(4, dtype=x.dtype) + 0.5 * xp.tanh(a) + 0.2 * a * a


def _spd(x, shift=0.0):
    xp = array_namespace(x)
    a = _matrix(x, shift)
    return a @ xp.matrix_transpose(a) + xp.eye(4, dtype=x.dtype)


def _inv(x):
    xp = array_namespace(x)
    return xp.sum(xp.sin(xp.linalg.inv(_matrix(x))))


def _solve_vector(x):
    xp = array_namespace(x)
    return xp.sum(xp.linalg.solve(_matrix(x), xp.sin(x[:4])) ** 2)


def _solve_matrix(x):
    xp = array_namespace(x)
    return xp.sum(xp.tanh(xp.linalg.solve(_matrix(x), xp.reshape(xp.asarray(Q, dtype=x.dtype) @ x, (4, 2)))))


def _det(x):
    return array_namespace(x).linalg.det(_matrix(x))


def _slogdet(x):
    return array_namespace(x).linalg.slogdet(_matrix(x))[1]


def _cholesky(x):
    xp = array_namespace(x)
    return xp.sum(xp.sin(xp.linalg.cholesky(_spd(x))))


def _logdet_cholesky(x):
    """log det S = 2 Σ_i log L_ii (the diagonal as a masked row sum)."""
    xp = array_namespace(x)
    factor = xp.linalg.cholesky(_spd(x))
    return 2.0 * xp.sum(xp.log(xp.sum(factor * xp.eye(4, dtype=x.dtype), axis=-1)))


def _batched(x):
    """The ops over a leading batch axis inside f."""
    xp = array_namespace(x)
    a = xp.stack([_matrix(x), _matrix(x, 0.3)])
    s = xp.stack([_spd(x), _spd(x, -0.2)])
    return (
        xp.sum(xp.linalg.slogdet(a)[1])
        + xp.sum(xp.linalg.det(a))
        + xp.sum(xp.linalg.inv(a) ** 2)
        + xp.sum(xp.sin(xp.linalg.cholesky(s)))
    )


PROGRAMS = {
    "inv": _inv,
    "solve_vector": _solve_vector,
    "solve_matrix": _solve_matrix,
    "det": _det,
    "slogdet": _slogdet,
    "cholesky": _cholesky,
    "logdet_cholesky": _logdet_cholesky,
    "batched": _batched,
}
METHODS = ("collapsed", "standard")
BACKENDS = [
    pytest.param("numpy", marks=pytest.mark.numpy),
    pytest.param("torch", marks=pytest.mark.torch),
    pytest.param("jax", marks=pytest.mark.jax),
]


def _framework(backend):
    if backend == "torch":
        torch = pytest.importorskip("torch")
        return lambda a: torch.asarray(np.asarray(a), dtype=torch.float64), lambda t: t.detach().numpy()
    if backend == "jax":
        jax = pytest.importorskip("jax")
        jax.config.update("jax_enable_x64", True)
        return lambda a: jax.numpy.asarray(np.asarray(a, dtype=np.float64)), np.asarray
    return lambda a: np.asarray(a, dtype=np.float64), np.asarray


def torch_einsum(spec, t):
    import torch

    return torch.einsum(spec, t)


def _strict(fn, *args, **kwargs):
    mj.set_strict(True)
    try:
        return fn(*args, **kwargs)
    finally:
        mj.set_strict(False)


@pytest.mark.parametrize("x", [POINT, BATCH], ids=["point", "batch"])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_laplacian_through_shared_rules(backend, name, x):
    f = PROGRAMS[name]
    to, back = _framework(backend)
    reference = _strict(mj.laplacian, f, x, backend="numpy")
    if backend == "numpy":
        for point, got in zip(np.atleast_2d(x), np.atleast_1d(reference), strict=True):
            np.testing.assert_allclose(got, np.trace(fd_hessian(f, point)), rtol=1e-6, atol=1e-6)
        nested = reference
    else:
        nested = back(mj.laplacian(f, to(x), backend=backend, method="nested"))
        np.testing.assert_allclose(nested, reference, rtol=1e-10, atol=1e-10)
    for method in METHODS:
        got = back(_strict(mj.laplacian, f, to(x), backend=backend, method=method))
        np.testing.assert_allclose(got, nested, rtol=1e-10, atol=1e-10, err_msg=method)
        np.testing.assert_allclose(got, reference, rtol=1e-10, atol=1e-10, err_msg=method)


@pytest.mark.parametrize("name", ["inv", "solve_vector", "slogdet", "det", "cholesky"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bilaplacian_through_shared_rules(backend, name):
    """Order 4: every lower coefficient of the rules (the Cholesky pairs i, k − i included)."""
    f = PROGRAMS[name]
    to, back = _framework(backend)
    reference = mj.bilaplacian(f, POINT, backend="numpy")
    if backend == "numpy":  # Δ(Δf) by the jet program captured again
        np.testing.assert_allclose(mj.laplacian(lambda z: mj.laplacian(f, z), POINT), reference, rtol=1e-9)
        return
    if backend == "jax" or name in ("inv", "cholesky"):
        want = back(mj.bilaplacian(f, to(POINT), backend=backend, method="nested"))
        np.testing.assert_allclose(reference, want, rtol=1e-8, atol=1e-8)
    elif name != "det":  # torch's forward-mode formulas of solve/slogdet are wrong beyond first order (and
        from torch.func import jacrev  # its 4th derivatives of det, either way): four reverse passes

        want = back(torch_einsum("iijj->", jacrev(jacrev(jacrev(jacrev(f))))(to(POINT))))
        np.testing.assert_allclose(reference, want, rtol=1e-8, atol=1e-8)
    for method in METHODS:
        got = back(_strict(mj.bilaplacian, f, to(POINT), backend=backend, method=method))
        np.testing.assert_allclose(got, reference, rtol=1e-8, atol=1e-8, err_msg=method)


# --- JAX: recognising the jitted jnp.linalg functions -------------------------------------------------------------


@pytest.fixture
def jnp():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax.numpy


@pytest.mark.jax
def test_jax_slogdet_program_has_no_generic_rule(jnp):
    x = jnp.asarray(POINT)
    compiled = _strict(mj.compile, mj.Laplacian(), _slogdet, x, backend="jax")
    assert "jit[linalg]" in compiled.schedule
    cholesky = _strict(mj.compile, mj.Laplacian(), _logdet_cholesky, x, backend="jax").schedule
    assert "cholesky[linalg]" in cholesky
    for line in (compiled.schedule + cholesky).splitlines():  # only constants (iota of jnp.eye) may be generic
        assert "[generic]" not in line or "coeffs {0} dirs none" in line, line


@pytest.mark.jax
def test_jax_user_function_named_like_linalg_is_inlined(jnp):
    """A user's jitted ``inv`` is not ``jnp.linalg.inv``: it is inlined, not taken as a matrix inverse."""
    import jax

    @jax.jit
    def inv(a):
        return a * a + 1.0

    def f(x):
        return jnp.sum(jnp.sin(inv(_matrix(x))))

    x = jnp.asarray(POINT)
    compiled = mj.compile(mj.Laplacian(), f, x, backend="jax")
    assert "[linalg]" not in compiled.schedule
    np.testing.assert_allclose(compiled(x), mj.laplacian(f, x, backend="jax", method="nested"), rtol=1e-10)


@pytest.mark.jax
def test_jax_complex_linalg(jnp):
    """Complex inverse and solve use the shared rules (holomorphic); complex determinants keep JAX's rules."""

    def z(x):
        return _matrix(x) + 1j * _matrix(x, 0.5)

    programs = {
        "inv": lambda x: jnp.real(jnp.sum(jnp.linalg.inv(z(x)) * z(x).T)),
        "solve": lambda x: jnp.imag(jnp.sum(jnp.linalg.solve(z(x), x[:4] * (1.0 + 0.5j)))),
        "slogdet": lambda x: jnp.linalg.slogdet(z(x))[1] + jnp.real(jnp.linalg.slogdet(z(x))[0]),
        "det": lambda x: jnp.imag(jnp.linalg.det(z(x))),
    }
    x = jnp.asarray(BATCH)
    for name, f in programs.items():
        want = mj.laplacian(f, x, backend="jax", method="nested")
        run = _strict if name in ("inv", "solve") else (lambda fn, *a, **k: fn(*a, **k))
        for method in METHODS:
            got = run(mj.laplacian, f, x, backend="jax", method=method)
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10, err_msg=f"{name} {method}")


# --- JAX: a FermiNet-like determinant wavefunction ----------------------------------------------------------------

DEADLINE = 300.0  # seconds per call: a hang (reported for compiled programs called repeatedly) fails, not blocks


def _within(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a thread with a deadline (JAX releases the GIL while XLA runs)."""
    box: dict = {}

    def run():
        try:
            box["out"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            box["err"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    if thread.is_alive():
        pytest.fail(f"call did not finish within {DEADLINE:.0f}s")
    if "err" in box:
        raise box["err"]
    return box["out"]


def ferminet_log_psi(n: int, jnp, hidden: int = 16, seed: int = 0):
    """log|ψ| = log|det Φ(x)| + J(x): per-electron tanh features (with the mean over electrons mixed in) →
    an n×n orbital matrix with exponential envelopes → slogdet; a smooth pair Jastrow term. ``x`` is (3n,)."""
    rng = np.random.default_rng(seed)
    w1, b1 = jnp.asarray(rng.normal(size=(3, hidden))), jnp.asarray(rng.normal(size=hidden) * 0.1)
    w2 = jnp.asarray(rng.normal(size=(2 * hidden, hidden)) / np.sqrt(2 * hidden))
    wo = jnp.asarray(rng.normal(size=(hidden, n)) / np.sqrt(hidden))
    decay = jnp.asarray(rng.uniform(0.5, 1.0, size=n))

    def log_psi(x):
        r = jnp.reshape(x, (n, 3))
        h = jnp.tanh(r @ w1 + b1)
        h = jnp.tanh(jnp.concatenate([h, jnp.broadcast_to(jnp.mean(h, axis=0, keepdims=True), h.shape)], 1) @ w2)
        envelope = jnp.exp(-jnp.sqrt(jnp.sum(r * r, axis=1, keepdims=True) + 0.1) * decay)
        _, logabs = jnp.linalg.slogdet((h @ wo) * envelope)
        d = r[:, None, :] - r[None, :, :]
        rij = jnp.sqrt(jnp.sum(d * d, axis=-1) + 0.1)
        return logabs + 0.5 * jnp.sum(jnp.triu(rij / (1.0 + rij), 1))

    return log_psi


@pytest.mark.jax
@pytest.mark.parametrize("n", [4, 5, 6, 7, 8])
def test_jax_ferminet_laplacian(jnp, n):
    import jax

    f = ferminet_log_psi(n, jnp)
    X = jnp.asarray(np.random.default_rng(n).normal(size=(3, 3 * n)))
    oracle = jax.jit(jax.vmap(lambda x: (f(x), jax.grad(f)(x), jnp.trace(jax.hessian(f)(x)))))
    value, grad, lap = oracle(X)
    close = lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)  # noqa: E731
    for method in METHODS:
        close(_within(_strict, mj.laplacian, f, X, backend="jax", method=method), lap)
        v, g, r = _within(_strict, mj.laplacian, f, X, backend="jax", method=method, return_grad=True)
        close(v, value), close(g, grad), close(r, lap)
    jitted = jax.jit(lambda z: mj.laplacian(f, z, backend="jax"))
    close(_within(jitted, X), lap)
    compiled = mj.compile(mj.Laplacian(), f, X, backend="jax")
    compiled_grad = mj.compile(mj.Laplacian(), f, X, backend="jax", return_grad=True)
    for i in range(4):  # repeated calls of the compiled programs, at new points
        Xi = X + 0.05 * i
        _, _, lap_i = oracle(Xi)
        close(_within(compiled, Xi), lap_i)
        close(_within(compiled_grad, Xi)[2], lap_i)
