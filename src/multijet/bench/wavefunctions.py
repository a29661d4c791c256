"""Small FermiNet- and Psiformer-like log|ψ| functions for the quantum Monte Carlo benchmark (issue 11).

The builders return a JAX function ``log_psi(x) -> scalar`` of ``x`` of shape ``(3n,)`` (n electrons in 3-D,
float64 under ``jax_enable_x64``). They have the structure that matters for a Laplacian: per-electron streams
mixed by a symmetric function (mean / attention), orbitals with exponential envelopes, one ``slogdet`` per spin
block and a smooth electron–electron Jastrow. The weights are random (NumPy ``default_rng(seed)``, scaled
``1/sqrt(fan_in)``); no nucleus, no training. JAX is imported inside the builders, so importing this module
(or :mod:`multijet.bench`) does not import JAX.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["ferminet_like", "psiformer_like", "per_electron_like"]

LogPsi = Callable[[Any], Any]


def _dense(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    return rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)


def _spins(n: int) -> tuple[int, int]:
    if n < 2:
        raise ValueError(f"need at least 2 electrons (one per spin block), got {n}")
    return n // 2, n - n // 2


def _jastrow(r):
    """``Σ_{i<j} r_ij / (1 + r_ij)`` with the smooth distance ``r_ij = sqrt(|r_i - r_j|² + 0.1)``."""
    import jax.numpy as jnp

    n = r.shape[0]
    iu, ju = np.triu_indices(n, k=1)
    d = r[iu] - r[ju]
    rij = jnp.sqrt(jnp.sum(d * d, axis=-1) + 0.1)
    return jnp.sum(rij / (1.0 + rij))


def _orbital_head(rng: np.random.Generator, hidden: int, n: int, ndet: int) -> dict[str, list[np.ndarray]]:
    """Per spin block: orbital weights (hidden, ndet·n_s) and envelope decay rates (ndet·n_s,) > 0."""
    head: dict[str, list[np.ndarray]] = {"W": [], "decay": []}
    for ns in _spins(n):
        head["W"].append(_dense(rng, hidden, ndet * ns))
        head["decay"].append(0.5 + rng.uniform(0.0, 1.0, ndet * ns))
    return head


def _log_det(h, r, head: dict[str, list[np.ndarray]], n: int, ndet: int):
    """log|Σ_k det_up,k · det_down,k| from features ``h`` (n, hidden) and positions ``r`` (n, 3)."""
    import jax.numpy as jnp
    from jax.scipy.special import logsumexp

    norm = jnp.sqrt(jnp.sum(r * r, axis=-1) + 1e-12)  # |r_i| (the offset keeps it smooth at 0)
    start, sign, logabs = 0, jnp.ones(ndet), jnp.zeros(ndet)
    for ns, W, decay in zip(_spins(n), head["W"], head["decay"], strict=True):
        hs, ds = h[start : start + ns], norm[start : start + ns]
        phi = (hs @ W) * jnp.exp(-ds[:, None] * decay[None, :])  # (ns, ndet·ns)
        phi = phi.reshape(ns, ndet, ns).transpose(1, 0, 2)  # (ndet, ns, ns): electrons × orbitals
        s, la = jnp.linalg.slogdet(phi)
        sign, logabs, start = sign * s, logabs + la, start + ns
    if ndet == 1:
        return logabs[0]
    return logsumexp(logabs, b=sign, return_sign=True)[0]


def ferminet_like(n: int, *, hidden: int = 32, ndet: int = 1, seed: int = 0) -> LogPsi:
    """A FermiNet-like log|ψ|: one-electron stream ``h_i = tanh(r_i W1 + b1)``, one residual layer
    ``h_i + tanh([h_i, mean_j h_j] W2)``, spin-up (n//2) and spin-down (n - n//2) orbitals with exponential
    envelopes, ``slogdet`` per block (``ndet`` determinants combined by log-sum-exp), plus the Jastrow."""
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    W1, b1 = _dense(rng, 3, hidden), 0.1 * rng.standard_normal(hidden)
    W2 = _dense(rng, 2 * hidden, hidden)
    head = _orbital_head(rng, hidden, n, ndet)

    def log_psi(x):
        r = x.reshape(n, 3)
        h = jnp.tanh(r @ W1 + b1)
        g = jnp.broadcast_to(jnp.mean(h, axis=0), h.shape)
        h = h + jnp.tanh(jnp.concatenate([h, g], axis=-1) @ W2)
        return _log_det(h, r, head, n, ndet) + _jastrow(r)

    return log_psi


def psiformer_like(n: int, *, hidden: int = 32, heads: int = 2, layers: int = 2, seed: int = 0) -> LogPsi:
    """A Psiformer-like log|ψ|: per-electron embedding of ``(r_i, |r_i|)``, ``layers`` self-attention layers
    over the electrons (softmax, ``heads`` heads, residual, then a residual tanh MLP), orbitals with envelopes
    from the final features, ``slogdet`` per spin block, plus the Jastrow."""
    import jax
    import jax.numpy as jnp

    if hidden % heads:
        raise ValueError(f"hidden={hidden} must be a multiple of heads={heads}")
    rng = np.random.default_rng(seed)
    dh = hidden // heads
    W0 = _dense(rng, 4, hidden)
    blocks = [
        {k: _dense(rng, hidden, hidden) for k in ("q", "k", "v", "o", "mlp")} | {"b": 0.1 * rng.standard_normal(hidden)}
        for _ in range(layers)
    ]
    head = _orbital_head(rng, hidden, n, 1)

    def log_psi(x):
        r = x.reshape(n, 3)
        norm = jnp.sqrt(jnp.sum(r * r, axis=-1, keepdims=True) + 1e-12)
        h = jnp.concatenate([r, norm], axis=-1) @ W0
        for p in blocks:
            q, k, v = ((h @ p[c]).reshape(n, heads, dh) for c in ("q", "k", "v"))
            a = jax.nn.softmax(jnp.einsum("ihd,jhd->hij", q, k) / np.sqrt(dh), axis=-1)
            h = h + jnp.einsum("hij,jhd->ihd", a, v).reshape(n, hidden) @ p["o"]
            h = h + jnp.tanh(h @ p["mlp"] + p["b"])
        return _log_det(h, r, head, n, 1) + _jastrow(r)

    return log_psi


def per_electron_like(n: int, *, hidden: int = 32, ndet: int = 1, seed: int = 0) -> LogPsi:
    """The log|ψ| of issue 11's measurement: a per-electron tanh stream with a residual (``h_i = tanh(r_i W1 +
    b1)``, ``h_i + tanh(h_i W2)``, no mixing between electrons), spin-up and spin-down orbitals with exponential
    envelopes, ``slogdet`` per block, plus the Jastrow. Electrons meet only in the determinants and the
    Jastrow, so the Jacobian with respect to the unit directions stays block-sparse up to there."""
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    W1, b1 = _dense(rng, 3, hidden), 0.1 * rng.standard_normal(hidden)
    W2 = _dense(rng, hidden, hidden)
    head = _orbital_head(rng, hidden, n, ndet)

    def log_psi(x):
        r = x.reshape(n, 3)
        h = jnp.tanh(r @ W1 + b1)
        h = h + jnp.tanh(h @ W2)
        return _log_det(h, r, head, n, ndet) + _jastrow(r)

    return log_psi
