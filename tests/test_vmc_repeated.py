"""Compiled JAX jet programs of determinant wavefunctions, called many times (issue 11): they never block and
never retrace.

The hang reported at 12 electrons came from jaxlib 0.10's batched LAPACK ``trsm`` kernel on CPU, which can
block forever inside a program that holds several batched triangular solves (a plain ``jax.jit`` of seven
batched ``lax.linalg.triangular_solve`` calls on 576 12×12 matrices blocks within 200 calls on 2 cores; the
pre-engine jet program solved per direction, N·D matrices at a time). The JAX linear-algebra rule now inverts
through ``lax.linalg.lu`` and a loop of row updates (a Cholesky factor by a loop over columns: LAPACK's
batched ``potrf`` blocks the same way), so the jet program holds neither.
The repeated calls run in a subprocess under a timeout: a blocked XLA call cannot be interrupted in-process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import multijet as mj

pytestmark = pytest.mark.jax

#: a FermiNet-like log|ψ|: per-electron tanh stream with a residual, spin-up and spin-down orbital blocks with
#: exponential envelopes, ``ndet`` determinants combined by log-sum-exp, and an electron–electron Jastrow
WAVEFUNCTION = textwrap.dedent(
    """
    import numpy as np
    import jax.numpy as jnp

    def make_log_psi(n, ndet=2, hidden=16, seed=0):
        rng = np.random.default_rng(seed)
        w1 = jnp.asarray(rng.normal(size=(3, hidden)))
        w2 = jnp.asarray(rng.normal(size=(hidden, hidden)) / np.sqrt(hidden))
        wo = jnp.asarray(rng.normal(size=(ndet, hidden, n)) / np.sqrt(hidden))
        up = n // 2

        def log_psi(x):
            r = jnp.reshape(x, (n, 3))
            h = jnp.tanh(r @ w1)
            h = h + jnp.tanh(h @ w2)
            envelope = jnp.exp(-jnp.sqrt(jnp.sum(r * r, axis=1, keepdims=True) + 0.1))
            logs = []
            for k in range(ndet):
                phi = (h @ wo[k]) * envelope + 2.0 * jnp.eye(n)  # away from nodes: a sharp FD oracle
                logs.append(jnp.linalg.slogdet(phi[:up, :up])[1] + jnp.linalg.slogdet(phi[up:, up:])[1])
            d = r[:, None, :] - r[None, :, :]
            rij = jnp.sqrt(jnp.sum(d * d, axis=-1) + 0.1)
            return jnp.log(jnp.sum(jnp.exp(jnp.stack(logs)))) + 0.5 * jnp.sum(jnp.triu(rij / (1.0 + rij), 1))

        return log_psi
    """
)

CHILD = WAVEFUNCTION + textwrap.dedent(
    """
    import json, sys, time
    import jax
    jax.config.update("jax_enable_x64", True)
    import multijet as mj

    n, ndet, N, calls = (int(a) for a in sys.argv[1:5])
    f = make_log_psi(n, ndet)
    X = jnp.asarray(np.random.default_rng(n).normal(size=(N, 3 * n)))
    compiled = mj.compile(mj.Laplacian(), f, X, backend="jax")
    # oracle: second differences of f in float64, Richardson-extrapolated (O(h⁴)); JAX's own AD of slogdet
    # solves with the same trsm kernel, and its jax.hessian program is the one that blocks (2nd call, 16 electrons)
    value = jax.jit(jax.vmap(jax.vmap(f)))

    def differences(Z, h):
        s = h * jnp.eye(3 * n)
        return (jnp.sum(value(Z[:, None, :] + s) + value(Z[:, None, :] - s), axis=1)
                - 2 * (3 * n) * value(Z[:, None, :])[:, 0]) / h**2

    def oracle(Z):
        return (4 * differences(Z, 1e-3) - differences(Z, 2e-3)) / 3

    worst = 0.0
    for i in range(calls):
        Xi = X + 0.01 * i
        got = jax.block_until_ready(compiled(Xi))
        if i % 10 == 0:
            want = oracle(Xi)
            worst = max(worst, float(jnp.max(jnp.abs(got - want) / jnp.maximum(1.0, jnp.abs(want)))))
    print(json.dumps({"calls": calls, "worst": worst, "traces": compiled._fn._fn._cache_size(),
                      "trsm": "triangular_solve" in compiled.code}))
    """
)


def _run_child(n: int, ndet: int, N: int, calls: int, timeout: float = 420.0) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(n), str(ndet), str(N), str(calls)],
            capture_output=True, text=True, timeout=timeout, env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{calls} calls of the compiled Laplacian at {n} electrons did not finish within {timeout:.0f}s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("n, ndet, N, calls", [(12, 1, 16, 60), (16, 2, 64, 40)])
def test_compiled_determinant_laplacian_called_repeatedly(n, ndet, N, calls):
    out = _run_child(n, ndet, N, calls)
    assert out["calls"] == calls
    assert out["worst"] < 1e-5, out  # the oracle's truncation error is O(h⁴)
    assert out["traces"] == 1, "the compiled program retraced on new inputs of the same shape"
    assert not out["trsm"], "the jet program holds a LAPACK triangular solve"


def test_jet_program_of_inv_solve_and_cholesky_has_no_lapack_solve():
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    namespace: dict = {}
    exec(WAVEFUNCTION, namespace)  # noqa: S102 - the module's own source text
    rng = np.random.default_rng(0)
    B = jnp.asarray(rng.normal(size=(4, 2)))

    def f(x):
        a = jnp.reshape(x, (4, 4)) + 4 * jnp.eye(4)
        spd = a @ a.T + jnp.eye(4)
        chol = jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(spd))))
        return jnp.sum(jnp.linalg.inv(a)) + jnp.sum(jnp.linalg.solve(a, B) ** 2) + chol + namespace["make_log_psi"](4)(
            x[:12]
        )

    X = jnp.asarray(rng.normal(size=(3, 16)) * 0.3)
    compiled = mj.compile(mj.Laplacian(), f, X, backend="jax")
    assert "triangular_solve" not in compiled.code
    assert re.search(r"= cholesky[\[ ]", compiled.code) is None  # LAPACK potrf blocks like trsm
    want = jax.vmap(lambda x: jnp.trace(jax.hessian(f)(x)))(X)
    np.testing.assert_allclose(compiled(X), want, rtol=1e-9, atol=1e-9)
    v, g, lap = mj.laplacian(f, X, backend="jax", return_grad=True)
    np.testing.assert_allclose(v, jax.vmap(f)(X), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g, jax.vmap(jax.grad(f))(X), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(lap, want, rtol=1e-9, atol=1e-9)
