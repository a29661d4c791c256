"""The tracer namespace's composite functions: written through the namespace's own primitives, so each
records several equations (transposes, ``tensordot``, ``prod``, statistics, ``logaddexp``, ``hypot``,
``atan2``, norms) — and ``xp.linalg``, whose ``inv``/``solve``/``slogdet``/``det``/``cholesky`` are the
engine's linear-algebra kinds.
"""

from __future__ import annotations

import math

import numpy as np

from . import numpy_table as T
from .numpy_tracer import Tracer, is_tracer, record, record1, unsupported

__all__ = ["Composites", "Linalg"]


class Composites:
    """Namespace methods composed of other namespace methods (mixed into the tracer namespace)."""

    def np_transpose(self, x, axes=None):
        return self.permute_dims(x, tuple(reversed(range(len(T.shape_of(x))))) if axes is None else axes)

    def matrix_transpose(self, x):
        return self.swapaxes(x, -1, -2)

    def swapaxes(self, x, a, b):
        perm = list(range(len(T.shape_of(x))))
        perm[a], perm[b] = perm[b], perm[a]
        return self.permute_dims(x, perm)

    def moveaxis(self, x, source, destination):
        sizes = tuple(range(2, len(T.shape_of(x)) + 2))  # distinct sizes name the axes
        moved = np.moveaxis(np.broadcast_to(np.zeros((), np.int8), sizes), source, destination).shape
        return self.permute_dims(x, tuple(s - 2 for s in moved))

    def broadcast_arrays(self, *arrays):
        shape = np.broadcast_shapes(*[T.shape_of(a) for a in arrays])
        return [self.broadcast_to(a, shape) for a in arrays]

    def stack(self, arrays, axis=0):
        return self.concat([self.expand_dims(a, axis) for a in arrays], axis=axis)

    def vecdot(self, x1, x2, axis=-1):
        return self.sum(self.multiply(x1, x2), axis=axis)

    def tensordot(self, x1, x2, axes=2):
        if not T.traced(x1, x2):
            return np.tensordot(x1, x2, axes=axes)
        s1, s2 = T.shape_of(x1), T.shape_of(x2)
        if isinstance(axes, int | np.integer):
            a1, a2 = tuple(range(len(s1) - axes, len(s1))), tuple(range(axes))
        else:
            a1, a2 = (T.norm_axes(tuple(np.atleast_1d(a)), len(s)) for a, s in zip(axes, (s1, s2), strict=True))
        f1 = [i for i in range(len(s1)) if i not in a1]
        f2 = [i for i in range(len(s2)) if i not in a2]
        k = math.prod(s1[i] for i in a1)
        p = self.reshape(self.permute_dims(x1, f1 + list(a1)), (math.prod(s1[i] for i in f1), k))
        q = self.reshape(self.permute_dims(x2, list(a2) + f2), (k, math.prod(s2[i] for i in f2)))
        return self.reshape(self.matmul(p, q), tuple(s1[i] for i in f1) + tuple(s2[i] for i in f2))

    def prod(self, x, axis=None, dtype=None, keepdims=False):
        if not is_tracer(x):
            return np.prod(x, axis=axis, keepdims=keepdims)
        if axis is None:
            out = self.prod(self.reshape(x, (-1,)), axis=0)
            return self.reshape(out, (1,) * x.ndim) if keepdims else out
        axes = sorted(T.norm_axes(axis, x.ndim))
        y = x
        for a in reversed(axes):  # one axis at a time, highest first
            n = y.shape[a]
            if n == 0:
                y = self.add(self.sum(y, axis=a), 1.0)
                continue
            acc = self.take(y, [0], axis=a)
            for i in range(1, n):
                acc = self.multiply(acc, self.take(y, [i], axis=a))
            y = self.squeeze(acc, a)
        for a in axes if keepdims else ():
            y = self.expand_dims(y, a)
        return y

    def log2(self, x):
        return self.multiply(self.log(x), 1 / math.log(2))

    def log10(self, x):
        return self.multiply(self.log(x), 1 / math.log(10))

    def exp2(self, x):
        return self.exp(self.multiply(x, math.log(2)))

    def hypot(self, a, b):
        return self.sqrt(self.add(self.square(a), self.square(b)))

    def logaddexp(self, a, b):
        """``a + softplus(b − a)``: smooth, so exact at ``a = b`` too."""
        return self.add(a, self.softplus(self.subtract(b, a)))

    def atan2(self, a, b):
        """``atan(a / b)`` plus the locally constant multiple of π that makes it ``atan2`` (no derivative)."""
        if not T.traced(a, b):
            return np.arctan2(a, b)
        base = self.atan(self.divide(a, b))
        nd = len(np.broadcast_shapes(T.shape_of(a), T.shape_of(b)))

        def branch(xp, p, q):
            p, q = T.align(p, nd), T.align(q, nd)
            return xp.atan2(p, q) - xp.atan(p / q)

        turn = record1("atan2_branch", T.zero(branch), a, b, differentiable=False)
        return self.add(base, turn)

    def var(self, x, axis=None, correction=0.0, keepdims=False):
        d = self.subtract(x, self.mean(x, axis=axis, keepdims=True))
        n = math.prod(T.shape_of(x)[a] for a in T.norm_axes(axis, len(T.shape_of(x))))
        return self.divide(self.sum(self.multiply(d, d), axis=axis, keepdims=keepdims), n - correction)

    def std(self, x, axis=None, correction=0.0, keepdims=False):
        return self.sqrt(self.var(x, axis=axis, correction=correction, keepdims=keepdims))


class _SlogdetResult(tuple):
    """``(sign, logabsdet)`` with attribute access, as the array API's ``slogdet`` returns."""

    def __new__(cls, sign, logabsdet):
        return super().__new__(cls, (sign, logabsdet))

    @property
    def sign(self):
        return self[0]

    @property
    def logabsdet(self):
        return self[1]


class Linalg:
    """``xp.linalg``: inverse, solve, determinants, Cholesky (the engine's linear-algebra rules) and norms."""

    def matmul(self, a, b):
        return Tracer.ns.matmul(a, b)

    def matrix_transpose(self, x):
        return Tracer.ns.matrix_transpose(x)

    def vecdot(self, a, b, axis=-1):
        return Tracer.ns.vecdot(a, b, axis=axis)

    def vector_norm(self, x, axis=None, keepdims=False, ord=2):
        ns = Tracer.ns
        if ord == 2:
            return ns.sqrt(ns.sum(ns.multiply(x, x), axis=axis, keepdims=keepdims))
        if ord == 1:
            return ns.sum(ns.abs(x), axis=axis, keepdims=keepdims)
        if ord == math.inf:
            return ns.max(ns.abs(x), axis=axis, keepdims=keepdims)
        raise unsupported(f"linalg.vector_norm(ord={ord})")

    def norm(self, x, ord=None, axis=None, keepdims=False):
        if ord not in (None, 2, "fro") or (ord == 2 and axis is None and len(T.shape_of(x)) == 2):
            raise unsupported(f"linalg.norm(ord={ord})")
        return self.vector_norm(x, axis=axis, keepdims=keepdims)

    def inv(self, x):
        return record1("inv", T.linalg("inv"), x) if is_tracer(x) else np.linalg.inv(x)

    def solve(self, x1, x2):
        if not T.traced(x1, x2):
            return np.linalg.solve(x1, x2)
        return record1("solve", T.linalg("solve", T.shape_of(x1), T.shape_of(x2)), x1, x2)

    def slogdet(self, x):
        if not is_tracer(x):
            return np.linalg.slogdet(x)
        sign, logabs = record("slogdet", T.linalg("slogdet"), [x])
        sign._dep = False
        return _SlogdetResult(sign, logabs)

    def det(self, x):
        return record1("det", T.linalg("det"), x) if is_tracer(x) else np.linalg.det(x)

    def cholesky(self, x, upper=False):
        if not is_tracer(x):  # ``upper=`` of np.linalg.cholesky needs NumPy ≥ 2: the conjugate transpose instead
            factor = np.linalg.cholesky(x)
            return np.conj(np.swapaxes(factor, -1, -2)) if upper else factor
        factor = record1("cholesky", T.linalg("cholesky"), x)
        return Tracer.ns.matrix_transpose(factor) if upper else factor

    def __getattr__(self, name):
        def constant_only(*args, **kwargs):
            if T.traced(*args, *kwargs.values()):
                raise unsupported(f"linalg.{name}")
            return getattr(np.linalg, name)(*args, **kwargs)

        return constant_only
