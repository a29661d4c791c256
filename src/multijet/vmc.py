"""Variational Monte Carlo: the local kinetic energy of a wavefunction from one jet pass.

For ``Ĥ = −Σ_i ∂_i²/(2 m_i) + V`` (atomic units) and ``ψ = exp(log ψ)``,
``(Ĥψ)/ψ = −½ Σ_i (1/m_i) (∂_i² log ψ + (∂_i log ψ)²) + V``: the kinetic part needs the value, the gradient and
the (mass-weighted) Laplacian of ``log ψ``, which one collapsed Taylor pass gives together (``return_grad``).
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Real

import numpy as np

from .api import apply
from .backends.interop import interop, owner, to_numpy
from .spec import Laplacian, LinearOperator

__all__ = ["local_kinetic_energy"]

def local_kinetic_energy(
    logpsi: Callable,
    x,
    masses=None,
    *,
    backend: str | None = None,
    method: str = "collapsed",
    chunk_size: int | None = None,
    direction_chunk_size: int | None = None,
    sparsity: bool | int | None = None,
):
    """``−½ Σ_i (1/m_i) (∂_i² log ψ + (∂_i log ψ)²)`` at ``x`` of shape (D,) or (N, D).

    ``logpsi`` maps one configuration (D,) to a scalar: ``log|ψ|`` (real) or ``log ψ`` (complex, e.g.
    ``log|det Φ| + i·phase``; JAX and NumPy, while torch refuses complex programs). ``masses``: None (all 1),
    one per coordinate (D,), or one per particle (P,) with ``D = P·d`` (each repeated over the particle's ``d``
    coordinates). The value, gradient and Laplacian come from one pass; the other keywords are
    :func:`multijet.apply`'s.
    """
    D = _dimension(x)
    weights = _inverse_masses(masses, D)
    op = Laplacian() if weights is None else LinearOperator({_unit2(i, D): float(w) for i, w in enumerate(weights)})
    out = apply(
        op, _scalar_checked(logpsi), x, backend=backend, method=method, return_grad=True, chunk_size=chunk_size,
        direction_chunk_size=direction_chunk_size, sparsity=sparsity,
    )  # fmt: skip
    _, grad, lap = out
    name = owner(grad)
    squares = grad * grad  # (∂_i log ψ)², complex for a complex log ψ (no conjugate: it is ψ's own derivative)
    if weights is not None:
        squares = squares * interop(name).like(weights, _real_part(grad))
    return -0.5 * (lap + squares.sum(-1))


def _dimension(x) -> int:
    shape = tuple(getattr(x, "shape", np.shape(x)))
    if len(shape) not in (1, 2) or shape[-1] < 1:
        raise ValueError(f"x must be one configuration (D,) or a batch (N, D), got shape {shape}")
    return int(shape[-1])


def _inverse_masses(masses, D: int) -> np.ndarray | None:
    """``1/m`` per coordinate, or None for unit masses."""
    if masses is None:
        return None
    if isinstance(masses, Real):
        masses = [masses]
    m = np.asarray(to_numpy(masses), dtype=np.float64).ravel()
    if m.size == 0 or D % m.size != 0:
        raise ValueError(
            f"masses must have one entry per coordinate ({D}) or per particle (a divisor of {D}), got {m.size}"
        )
    if not np.all(np.isfinite(m)) or np.any(m <= 0):
        raise ValueError(f"masses must be positive and finite, got {m.tolist()}")
    return np.repeat(1.0 / m, D // m.size)


def _unit2(i: int, D: int) -> tuple[int, ...]:
    alpha = [0] * D
    alpha[i] = 2
    return tuple(alpha)


def _scalar_checked(logpsi: Callable) -> Callable:
    """``logpsi`` with a check that it returns a scalar per configuration."""

    def f(x):
        y = logpsi(x)
        shape = tuple(getattr(y, "shape", ()))
        if shape not in ((), (1,)):
            raise ValueError(
                f"logpsi must return a scalar per configuration (log|ψ| or log ψ), got an output of shape {shape}"
            )
        return y

    return f


def _is_complex(a) -> bool:
    is_complex = getattr(a, "is_complex", None)  # torch
    return bool(is_complex()) if callable(is_complex) else bool(np.iscomplexobj(a))


def _real_part(a):
    return a.real if _is_complex(a) else a
