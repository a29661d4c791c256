"""The NumPy reference's operations for direction sparsity (:mod:`multijet.engine.sparsity`): eager probes,
compressed seeds and weights, and the expansion of ``b`` slots to all ``R`` directions.

Coefficients are ``(N | 1, R | 1, *shape)``; compressed per-direction ones ``(N | 1, b, *shape)``.
"""

from __future__ import annotations

import numpy as np

from ..engine.program import Var
from .numpy_tracer import is_tracer

__all__ = ["SparseOps"]


class SparseOps:
    """Mixed into the NumPy :class:`~multijet.backends.numpy.Layout`."""

    @staticmethod
    def probe(fn, arrays: list, lead: list[bool]) -> list[np.ndarray]:
        """``fn`` on NumPy arrays given leading axes ``(1, probe)`` or ``(1, 1)``; returns them without."""
        outs = fn(*[np.asarray(a)[None] if d else np.asarray(a)[None, None] for a, d in zip(arrays, lead, strict=True)])
        return [np.asarray(o)[0] if any(lead) else np.asarray(o)[0, 0] for o in outs]

    @staticmethod
    def concrete(value):
        return None if is_tracer(value) else np.asarray(value)

    @staticmethod
    def per_direction_const(a: np.ndarray, var: Var):
        return np.asarray(a, dtype=var.dtype)[None]

    @staticmethod
    def direction_sum(c):
        return np.sum(c, axis=1, keepdims=True)

    @staticmethod
    def sum_last(c):
        """``Σ`` over the last point axis."""
        return np.sum(c, axis=-1)

    @staticmethod
    def gather_weights(w, index: np.ndarray):
        return np.concatenate([np.asarray(w), np.zeros(1, np.asarray(w).dtype)])[index][None]

    @staticmethod
    def resize_slots(c, k: int, var: Var):
        """The first ``k`` slots of ``c`` (zeros appended when it has fewer)."""
        n = c.shape[1]
        if n >= k:
            return c[:, :k]
        return np.concatenate([c, np.zeros((c.shape[0], k - n) + c.shape[2:], c.dtype)], axis=1)

    @staticmethod
    def scatter_sum(c, flat: np.ndarray, size: int, var: Var, out_shape: tuple):
        """``out[flat[t, e]] += c[t, e]`` into ``size`` entries (index ``size``: dropped), shaped ``out_shape``."""
        c = np.broadcast_to(c, c.shape[:2] + var.shape)
        N = c.shape[0]
        out = np.zeros((N, size + 1), c.dtype)
        np.add.at(out, (np.arange(N)[:, None], flat.reshape(1, -1)), c.reshape(N, -1))
        return out[:, :size].reshape((N,) + out_shape)

    @staticmethod
    def take_directions(c, index: np.ndarray, var: Var):
        """``out[s, e] = c[index[s, e], e]`` with ``index = R`` a zero: directions picked into slots."""
        return SparseOps.expand(c, index, var)  # the same gather along the direction axis

    @staticmethod
    def take_slots(c, slots: np.ndarray, k: int, var: Var):
        """Slots ``slots`` of ``c``'s ``k`` (index ``k``: a zero slot), whole slabs, broadcast to ``var``."""
        c = np.broadcast_to(c, c.shape[:2] + var.shape)
        padded = np.concatenate([c, np.zeros((c.shape[0], 1) + var.shape, c.dtype)], axis=1)
        return padded[:, slots]

    @staticmethod
    def expand(c, index: np.ndarray, var: Var):
        c = np.broadcast_to(c, c.shape[:2] + var.shape)
        padded = np.concatenate([c, np.zeros((c.shape[0], 1) + var.shape, c.dtype)], axis=1)
        idx = np.broadcast_to(index[None], (c.shape[0],) + index.shape)
        return np.take_along_axis(padded, idx, axis=1)
