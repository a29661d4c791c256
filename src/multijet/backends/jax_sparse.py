"""JAX's operations for direction sparsity (:mod:`multijet.engine.sparsity`): eager probes of the captured
primitives, compressed seeds and weights, and the expansion of ``b`` slots to all ``R`` directions.

Per-direction coefficients are ``(R, *shape)`` per point (points are vmapped outside), compressed ones
``(b, *shape)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..engine.program import Var
from .jax_sums import lead_dot, lead_sum

__all__ = ["SparseOps"]

#: slot counts up to which slots are expanded to directions by selects rather than a gather
SELECT_SLOTS = 24


class SparseOps:
    """Mixed into the JAX :class:`~multijet.backends.jax.Layout`."""

    @staticmethod
    def probe(fn, arrays: list, lead: list[bool]) -> list[np.ndarray]:
        """``fn`` evaluated now (also inside a trace) on NumPy arrays; a leading probe axis rides as the
        direction axis (the lifted callables map over it)."""
        with jax.ensure_compile_time_eval():
            out = fn(*[jnp.asarray(a) for a in arrays])
            return [np.asarray(o) for o in out]

    @staticmethod
    def concrete(value):
        """A constant's value as a NumPy array, or None for a traced one (a parameter under ``jax.grad``)."""
        try:
            return np.asarray(value)
        except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError, TypeError):
            return None

    @staticmethod
    def per_direction_const(a: np.ndarray, var: Var):
        return jnp.asarray(a, dtype=var.dtype)

    @staticmethod
    def direction_sum(c):
        return lead_sum(c)

    @staticmethod
    def direction_dot(a, b):
        """``Σ_s a_s b_s`` over the slot axis (:func:`.jax_sums.lead_dot`)."""
        return lead_dot(a, b)

    @staticmethod
    def sum_last(c):
        """``Σ`` over the last point axis."""
        return jnp.sum(c, axis=-1)

    @staticmethod
    def gather_weights(w, index: np.ndarray):
        """``w[index]`` with index ``len(w)`` a zero weight."""
        return jnp.take(jnp.concatenate([w, jnp.zeros((1,), w.dtype)]), jnp.asarray(index), axis=0)

    @staticmethod
    def resize_slots(c, k: int, var: Var):
        """The first ``k`` slots of ``c`` (zeros appended when it has fewer)."""
        n = c.shape[0]
        if n >= k:
            return c[:k]
        return jnp.concatenate([c, jnp.zeros((k - n,) + c.shape[1:], c.dtype)], axis=0)

    @staticmethod
    def scatter_sum(c, flat: np.ndarray, size: int, var: Var, out_shape: tuple):
        """``out[flat[t, e]] += c[t, e]`` into ``size`` entries (index ``size``: dropped), shaped ``out_shape``."""
        c = jnp.broadcast_to(c, (c.shape[0],) + var.shape)
        order = _block_transpose(flat, size, var.shape)
        if order is not None:  # each particle's slots land on its own block of directions: a transpose
            c = jnp.moveaxis(c, 0, 1)
            if not (order == np.arange(len(order))).all():
                c = jnp.take(c, jnp.asarray(order), axis=0)
            return c.reshape(out_shape)
        out = jnp.zeros((size + 1,), c.dtype).at[jnp.asarray(flat.reshape(-1))].add(c.reshape(-1))
        return out[:size].reshape(out_shape)

    @staticmethod
    def take_directions(c, index: np.ndarray, var: Var):
        """``out[s, e] = c[index[s, e], e]`` with ``index = R`` a zero: directions picked into slots."""
        c = jnp.broadcast_to(c, (c.shape[0],) + var.shape)
        padded = jnp.concatenate([c, jnp.zeros((1,) + var.shape, c.dtype)], axis=0)
        return jnp.take_along_axis(padded, jnp.asarray(index), axis=0)

    @staticmethod
    def take_slots(c, slots: np.ndarray, k: int, var: Var):
        """Slots ``slots`` of ``c``'s ``k`` (index ``k``: a zero slot), whole slabs, broadcast to ``var``."""
        c = jnp.broadcast_to(c, (c.shape[0],) + var.shape)
        parts = [c[i : i + 1] if i < k else jnp.zeros((1,) + var.shape, c.dtype) for i in slots.tolist()]
        return jnp.concatenate(parts, axis=0)

    @staticmethod
    def expand(c, index: np.ndarray, var: Var):
        """``out[r, e] = c[index[r, e], e]`` with ``index = b`` a zero: the compressed slots at their directions."""
        k = c.shape[0]
        if k <= SELECT_SLOTS:  # computed once: XLA would otherwise fuse the selects into every consumer
            return jax.lax.optimization_barrier(_select_slots(c, index, var))
        c = jnp.broadcast_to(c, (k,) + var.shape)
        padded = jnp.concatenate([c, jnp.zeros((1,) + var.shape, c.dtype)], axis=0)
        return jnp.take_along_axis(padded, jnp.asarray(index), axis=0)


def _select_slots(c, index: np.ndarray, var: Var):
    """``out[r, e] = c[index[r, e], e]`` (0 where ``index = k``) as a chain of selects against the constant
    index: elementwise, so XLA fuses it into its consumers (its gather is several times slower on CPU)."""
    k = c.shape[0]
    index = _smallest(index)
    idx = jnp.asarray(index.astype(np.int8 if k < 127 else np.int32))
    out = jnp.zeros((), c.dtype)
    for j in range(k):
        out = jnp.where(idx == j, c[j], out)
    return jnp.broadcast_to(out, (index.shape[0],) + var.shape)


def _smallest(index: np.ndarray) -> np.ndarray:
    """``index`` with every point axis along which it is constant kept at size 1 (it broadcasts back): a
    per-particle pattern over ``(n, features)`` needs an ``(R, n, 1)`` constant, not ``(R, n, features)``."""
    for axis in range(1, index.ndim):
        if index.shape[axis] > 1:
            first = np.take(index, [0], axis=axis)
            if (index == first).all():
                index = first
    return index


def _block_transpose(flat: np.ndarray, size: int, shape: tuple) -> np.ndarray | None:
    """For a scatter of ``(k, n, *rest)`` slots into ``R·K`` entries that puts slot ``s`` of row ``j`` at
    direction ``block_j·k + s`` (``block`` a permutation of the rows): ``order = block⁻¹``, so that ``out =
    c.moveaxis(0, 1)[order]`` reshaped; None for any other scatter."""
    if not shape or flat.ndim < 2:
        return None
    k, n = flat.shape[0], shape[0]
    K = int(np.prod(shape[1:], dtype=np.int64))
    if n * k * K != size:
        return None
    grid = flat.reshape(k, n, K)
    block = grid[0, :, 0] // (K * k)
    if sorted(block.tolist()) != list(range(n)):
        return None
    expect = (block[None, :, None] * k + np.arange(k)[:, None, None]) * K + np.arange(K)[None, None, :]
    if not (grid == expect).all():
        return None
    return np.argsort(block)
