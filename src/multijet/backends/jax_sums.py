"""Sums over the leading direction axis for the JAX layout: ``Σ_r w_r c_r`` and ``Σ_r w_r a_r b_r``.

Up to :data:`UNROLL` directions into an output of at least :data:`MIN_OUTPUT_BYTES` per point they are a
chain of adds of the slices (one elementwise loop, the product never formed whole): XLA's CPU reduce over a
leading axis into a large output runs several times slower than those adds (measured: 20 directions of
(20, 768) per point, 16 points, 36 ms against 7 ms; the composed bi-Laplacian of the paper's MLP in float64,
about 10 % faster at D = 5…20). Into a small output (a layer's width: (20, 768) → (768,)) the reduce is as fast,
and with many directions it is faster; it also compiles in constant time. In float32 at (5, 768) per point the
two measured the same, hence a threshold in bytes.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

__all__ = ["UNROLL", "MIN_OUTPUT_BYTES", "lead_sum", "lead_dot"]

#: the most directions summed by unrolled adds
UNROLL = 32
#: the fewest output bytes per point for which the adds are unrolled
MIN_OUTPUT_BYTES = 16 * 1024


def _unrolled(R: int, point_shape, dtype) -> bool:
    return R <= UNROLL and math.prod(point_shape) * jnp.dtype(dtype).itemsize >= MIN_OUTPUT_BYTES


def lead_sum(c, w=None):
    """``Σ_r w_r c_r`` (``w`` None: every weight 1)."""
    R = c.shape[0]
    if not _unrolled(R, c.shape[1:], c.dtype):
        return jnp.sum(c, axis=0) if w is None else jnp.tensordot(w, c, axes=1)
    return _adds([c[r] for r in range(R)], w)


def lead_dot(a, b, w=None):
    """``Σ_r w_r a_r b_r`` of two per-direction arrays whose point shapes broadcast (a leading axis of 1 is
    the same for every direction)."""
    R = max(a.shape[0], b.shape[0])
    if not _unrolled(R, jnp.broadcast_shapes(a.shape[1:], b.shape[1:]), jnp.result_type(a, b)):
        return lead_sum(a * b, w)
    return _adds([a[min(r, a.shape[0] - 1)] * b[min(r, b.shape[0] - 1)] for r in range(R)], w)


def _adds(terms: list, w):
    """``Σ_r w_r t_r`` as a chain of adds."""
    out = None
    for r, t in enumerate(terms):
        t = t if w is None else w[r] * t
        out = t if out is None else out + t
    return out
