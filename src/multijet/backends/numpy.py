"""The NumPy reference executor: an array-API tracer that carries jets through ``f`` eagerly.

``f`` is written against the array API (``xp = array_namespace(x)``); inside multijet ``x`` is a
:class:`Tracer`, whose namespace applies the shared Taylor rules (:mod:`multijet.taylor`) to every operation.
Array layout of every coefficient: ``(N, R or 1, *point_shape)`` — batch axis, direction axis, the point's
own shape — so that all rules broadcast (see :mod:`multijet.taylor`). Structural zeros are ``None``.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import taylor
from ..derivatives import derivatives
from ..errors import UnsupportedPrimitiveError
from ..plan import JetGroup, Plan

__all__ = ["Tracer", "run", "NAME", "register_rule"]

NAME = "numpy"
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EXTRA_RULES: dict[str, Callable] = {}


def register_rule(name: str, rule: Callable) -> None:
    """Add ``xp.<name>`` to the tracer namespace; ``rule(xp, *args, **kwargs)`` composes supported ops."""
    _EXTRA_RULES[name] = rule


class _PerPoint(Exception):
    """Raised when a batch needs per-point evaluation (data-dependent Python control flow)."""


def _user_frame() -> str | None:
    """``file:line`` of the innermost frame outside multijet (the user's code)."""
    f = sys._getframe(1)
    while f is not None:
        fname = os.path.abspath(f.f_code.co_filename)
        if not fname.startswith(_PKG_DIR) and "array_api_compat" not in fname:
            return f"{f.f_code.co_filename}:{f.f_lineno}"
        f = f.f_back
    return None


def _unsupported(name: str) -> UnsupportedPrimitiveError:
    return UnsupportedPrimitiveError(
        name,
        NAME,
        _user_frame(),
        hint=(
            "Write this step with supported array-API operations, or add it with "
            f"multijet.backends.numpy.register_rule({name!r}, rule) where rule(xp, *args) composes supported ops."
        ),
    )


@dataclass
class _Trace:
    ctx: taylor.JetContext
    batch: int


class Tracer:
    """An array of the traced program: the jet of one intermediate value, with the array API's surface."""

    __array_priority__ = 1000

    def __init__(self, jet: list, shape: tuple[int, ...], trace: _Trace):
        self._jet = jet
        self._shape = tuple(shape)
        self._trace = trace

    # --- array attributes -------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def size(self) -> int:
        return math.prod(self._shape)

    @property
    def dtype(self):
        return self._jet[0].dtype

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def T(self) -> Tracer:
        return _NS.permute_dims(self, tuple(reversed(range(self.ndim))))

    @property
    def mT(self) -> Tracer:
        return _NS.matrix_transpose(self)

    def __array_namespace__(self, api_version: str | None = None):
        return _NS

    def __repr__(self) -> str:
        return f"multijet.Tracer(shape={self._shape}, dtype={self.dtype})"

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of a 0-d traced array")
        return self._shape[0]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __bool__(self) -> bool:
        return bool(self._concrete("bool"))

    def __float__(self) -> float:
        return float(self._concrete("float"))

    def __int__(self) -> int:
        return int(self._concrete("int"))

    def __index__(self) -> int:
        return int(self._concrete("index"))

    def _concrete(self, what: str):
        if any(c is not None for c in self._jet[1:]):
            raise TypeError(
                f"{what}() of a value that depends differentiably on x would drop its derivatives; "
                "keep it an array (e.g. use xp.where instead of Python control flow)"
            )
        if self._trace.batch > 1:
            raise _PerPoint()
        return self._jet[0].reshape(self._shape)

    # --- operators ---------------------------------------------------------------------------------------
    def __add__(self, o):
        return _NS.add(self, o)

    def __radd__(self, o):
        return _NS.add(o, self)

    def __sub__(self, o):
        return _NS.subtract(self, o)

    def __rsub__(self, o):
        return _NS.subtract(o, self)

    def __mul__(self, o):
        return _NS.multiply(self, o)

    def __rmul__(self, o):
        return _NS.multiply(o, self)

    def __truediv__(self, o):
        return _NS.divide(self, o)

    def __rtruediv__(self, o):
        return _NS.divide(o, self)

    def __pow__(self, o):
        return _NS.pow(self, o)

    def __rpow__(self, o):
        return _NS.pow(o, self)

    def __matmul__(self, o):
        return _NS.matmul(self, o)

    def __rmatmul__(self, o):
        return _NS.matmul(o, self)

    def __neg__(self):
        return _NS.negative(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return _NS.abs(self)

    def __getitem__(self, key):
        return _NS._getitem(self, key)

    def __lt__(self, o):
        return _NS.less(self, o)

    def __le__(self, o):
        return _NS.less_equal(self, o)

    def __gt__(self, o):
        return _NS.greater(self, o)

    def __ge__(self, o):
        return _NS.greater_equal(self, o)

    def __eq__(self, o):  # type: ignore[override]
        return _NS.equal(self, o)

    def __ne__(self, o):  # type: ignore[override]
        return _NS.not_equal(self, o)

    def __and__(self, o):
        return _NS.logical_and(self, o)

    def __or__(self, o):
        return _NS.logical_or(self, o)

    def __invert__(self):
        return _NS.logical_not(self)

    __hash__ = object.__hash__

    # NumPy-style methods users often call
    def reshape(self, *shape):
        return _NS.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], tuple | list) else shape)

    def sum(self, axis=None, keepdims=False):
        return _NS.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return _NS.mean(self, axis=axis, keepdims=keepdims)

    def prod(self, axis=None, keepdims=False):
        return _NS.prod(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return _NS.max(self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, keepdims=False):
        return _NS.min(self, axis=axis, keepdims=keepdims)

    def transpose(self, *axes):
        if not axes:
            return self.T
        return _NS.permute_dims(self, axes[0] if len(axes) == 1 else axes)

    def dot(self, o):
        return _NS.matmul(self, o)

    def astype(self, dtype):
        return _NS.astype(self, dtype)

    def squeeze(self, axis=None):
        return _NS.squeeze(self, axis)

    def flatten(self):
        return _NS.reshape(self, (-1,))

    # --- NumPy interop: np.tanh(x), np.sum(x) on a tracer dispatch to the namespace ----------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        name = _UFUNCS.get(ufunc.__name__, ufunc.__name__)
        if method != "__call__" or kwargs.get("out") is not None or not hasattr(_NS, name):
            raise _unsupported(f"numpy.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}"))
        kwargs.pop("out", None)
        return getattr(_NS, name)(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        name = _FUNCTIONS.get(func.__name__, func.__name__)
        if not hasattr(_NS, name) or name.startswith("_"):
            raise _unsupported(f"numpy.{func.__name__}")
        return getattr(_NS, name)(*args, **kwargs)


_UFUNCS = {
    "true_divide": "divide",
    "arctan2": "atan2",
    "power": "pow",
    "absolute": "abs",
    "arcsin": "asin",
    "arccos": "acos",
    "arctan": "atan",
    "arcsinh": "asinh",
    "arccosh": "acosh",
    "arctanh": "atanh",
    "conjugate": "positive",
}
_FUNCTIONS = {
    "concatenate": "concat",
    "transpose": "_np_transpose",
    "cumsum": "cumulative_sum",
    "amax": "max",
    "amin": "min",
    "dot": "matmul",
    "arctan2": "atan2",
    "swapaxes": "_swapaxes",
    "moveaxis": "moveaxis",
}


# --- layout helpers -----------------------------------------------------------------------------------------


def _is_tracer(a) -> bool:
    return isinstance(a, Tracer)


def _shape_of(a) -> tuple[int, ...]:
    return a.shape if _is_tracer(a) else np.shape(a)


def _align(c, ndim: int):
    """Insert size-1 point axes after the two leading axes so a coefficient has ``ndim`` point axes."""
    missing = ndim - (c.ndim - 2)
    if missing <= 0:
        return c
    return c.reshape(c.shape[:2] + (1,) * missing + c.shape[2:])


def _lift(const, ndim: int):
    """A constant of the point's shape, in layout ``(1, 1, …)`` with ``ndim`` point axes."""
    if isinstance(const, int | float | bool):
        return const
    arr = np.asarray(const)
    return arr.reshape((1, 1) + (1,) * (ndim - arr.ndim) + arr.shape)


def _axes(axis, ndim: int) -> tuple[int, ...]:
    """Point axes → layout axes (shift by the two leading axes)."""
    if axis is None:
        return tuple(range(2, ndim + 2))
    if isinstance(axis, int | np.integer):
        axis = (axis,)
    out = []
    for a in axis:
        a = int(a)
        if not -ndim <= a < ndim:
            raise np.exceptions.AxisError(f"axis {a} is out of bounds for an array of dimension {ndim}")
        out.append(a % ndim + 2)
    return tuple(out)


def _point_shape(fn: Callable[[np.ndarray], np.ndarray], shape) -> tuple[int, ...]:
    """The point shape an operation produces (evaluated on a broadcast dummy array)."""
    return fn(np.broadcast_to(np.zeros((), dtype=np.int8), shape)).shape


class _Namespace:
    """The array-API namespace of :class:`Tracer`: every function applies a shared Taylor rule."""

    __name__ = "multijet.backends.numpy.tracer_namespace"

    # dtypes and constants
    float32, float64, int32, int64, bool = np.float32, np.float64, np.int32, np.int64, np.bool_
    int8, int16, uint8, complex64, complex128 = np.int8, np.int16, np.uint8, np.complex64, np.complex128
    e, pi, inf, nan, newaxis = math.e, math.pi, math.inf, math.nan, None

    def __getattr__(self, name: str):
        if name in _EXTRA_RULES:
            rule = _EXTRA_RULES[name]
            return lambda *a, **k: rule(self, *a, **k)
        target = getattr(np, name, None)
        if target is None:
            raise AttributeError(f"the multijet tracer namespace has no attribute {name!r}")
        if not callable(target) or isinstance(target, type):
            return target

        def constant_only(*args, **kwargs):
            if any(_is_tracer(a) for a in (*args, *kwargs.values())) or any(
                isinstance(a, list | tuple) and any(_is_tracer(b) for b in a) for a in args
            ):
                raise _unsupported(name)
            return target(*args, **kwargs)

        return constant_only

    # --- plumbing ----------------------------------------------------------------------------------------
    @staticmethod
    def _trace_of(*args) -> _Trace:
        for a in args:
            if _is_tracer(a):
                return a._trace
            if isinstance(a, list | tuple):
                for b in a:
                    if _is_tracer(b):
                        return b._trace
        raise AssertionError("no tracer among the arguments")

    @staticmethod
    def _coeffs(a, ndim: int, K: int) -> list:
        """Jet of an operand aligned to ``ndim`` point axes; a constant is ``[c, None, …]``."""
        if _is_tracer(a):
            return [None if c is None else _align(c, ndim) for c in a._jet]
        return [_lift(a, ndim)] + [None] * K

    @staticmethod
    def _const_tracer(value, shape, trace: _Trace) -> Tracer:
        """A value computed from x that has no derivative (comparisons, sign, floor, indices)."""
        return Tracer([value] + [None] * trace.ctx.order, shape, trace)

    def _map(self, x: Tracer, fn: Callable, shape=None) -> Tracer:
        """Apply a linear map to every coefficient."""
        jet = taylor.linear(x._jet, fn)
        return Tracer(jet, shape if shape is not None else jet[0].shape[2:], x._trace)

    def _unary(self, name: str, x, fn: Callable, **params) -> Tracer | Any:
        if not _is_tracer(x):
            return fn(np.asarray(x))
        ctx = x._trace.ctx
        y0 = fn(x._jet[0])
        derivs = derivatives(name, np, x._jet[0], y0, ctx.order, **params)
        return Tracer(taylor.elementwise(x._jet, y0, derivs, ctx), x.shape, x._trace)

    def _binary_shape(self, a, b) -> tuple[int, ...]:
        return tuple(np.broadcast_shapes(_shape_of(a), _shape_of(b)))

    # --- creation / conversion ----------------------------------------------------------------------------
    def asarray(self, obj, dtype=None, device=None, copy=None):
        if _is_tracer(obj):
            return obj if dtype is None else self.astype(obj, dtype)
        if isinstance(obj, list | tuple) and any(_is_tracer(o) for o in obj):
            return self.stack([self.asarray(o, dtype=dtype) for o in obj])
        return np.asarray(obj, dtype=dtype)

    def astype(self, x, dtype, copy=True):
        if not _is_tracer(x):
            return np.asarray(x).astype(dtype)
        if not np.issubdtype(np.dtype(dtype), np.floating):
            return self._const_tracer(x._jet[0].astype(dtype), x.shape, x._trace)
        return self._map(x, lambda c: c.astype(dtype), x.shape)

    def zeros_like(self, x, dtype=None):
        return np.zeros(_shape_of(x), dtype=dtype or x.dtype)

    def ones_like(self, x, dtype=None):
        return np.ones(_shape_of(x), dtype=dtype or x.dtype)

    def full_like(self, x, fill_value, dtype=None):
        return np.full(_shape_of(x), fill_value, dtype=dtype or x.dtype)

    def isdtype(self, dtype, kind):
        from array_api_compat import numpy as npc

        return npc.isdtype(dtype, kind)

    # --- linear operations -------------------------------------------------------------------------------
    def add(self, a, b):
        if not (_is_tracer(a) or _is_tracer(b)):
            return np.add(a, b)
        tr = self._trace_of(a, b)
        shape = self._binary_shape(a, b)
        K = tr.ctx.order
        A, B = self._coeffs(a, len(shape), K), self._coeffs(b, len(shape), K)
        return Tracer(taylor.add(A, B), shape, tr)

    def negative(self, x):
        return self._map(x, lambda c: -c) if _is_tracer(x) else np.negative(x)

    def positive(self, x):
        return x

    def subtract(self, a, b):
        return self.add(a, self.negative(b))

    def reshape(self, x, shape, copy=None):
        if not _is_tracer(x):
            return np.reshape(x, shape)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        new = _point_shape(lambda d: d.reshape(shape), x.shape)
        return self._map(x, lambda c: c.reshape(c.shape[:2] + new), new)

    def permute_dims(self, x, axes):
        if not _is_tracer(x):
            return np.transpose(x, axes)
        perm = (0, 1) + _axes(tuple(axes), x.ndim)
        return self._map(x, lambda c: c.transpose(perm))

    def _np_transpose(self, x, axes=None):
        return self.permute_dims(x, tuple(reversed(range(x.ndim))) if axes is None else axes)

    def matrix_transpose(self, x):
        return self._swapaxes(x, -1, -2)

    def _swapaxes(self, x, a, b):
        perm = list(range(x.ndim))
        perm[a], perm[b] = perm[b], perm[a]
        return self.permute_dims(x, perm)

    def moveaxis(self, x, source, destination):
        return self.permute_dims(x, tuple(np.moveaxis(np.arange(x.ndim), source, destination).argsort()))

    def expand_dims(self, x, axis=0):
        if not _is_tracer(x):
            return np.expand_dims(x, axis)
        ax = _axes(axis, x.ndim + 1)
        return self._map(x, lambda c: np.expand_dims(c, ax))

    def squeeze(self, x, axis=None):
        if not _is_tracer(x):
            return np.squeeze(x, axis)
        if axis is None:
            axis = tuple(i for i, s in enumerate(x.shape) if s == 1)
        ax = _axes(axis, x.ndim)
        for a in ax:
            if x.shape[a - 2] != 1:
                raise ValueError(f"cannot squeeze axis {a - 2} of size {x.shape[a - 2]}")

        def drop(c):
            return c.reshape(c.shape[:2] + tuple(s for i, s in enumerate(c.shape) if i >= 2 and i not in ax))

        return self._map(x, drop)

    def flip(self, x, axis=None):
        ax = _axes(axis, x.ndim)
        return self._map(x, lambda c: np.flip(c, ax))

    def roll(self, x, shift, axis=None):
        if axis is None:
            flat = self.reshape(x, (-1,))
            return self.reshape(self._map(flat, lambda c: np.roll(c, shift, axis=2)), x.shape)
        return self._map(x, lambda c: np.roll(c, shift, axis=_axes(axis, x.ndim)))

    def broadcast_to(self, x, shape):
        if not _is_tracer(x):
            return np.broadcast_to(x, shape)
        shape = tuple(shape)
        return self._map(x, lambda c: np.broadcast_to(_align(c, len(shape)), c.shape[:2] + shape), shape)

    def broadcast_arrays(self, *arrays):
        shape = np.broadcast_shapes(*[_shape_of(a) for a in arrays])
        return [self.broadcast_to(a, shape) for a in arrays]

    def _getitem(self, x: Tracer, key):
        if not isinstance(key, tuple):
            key = (key,)
        if any(_is_tracer(k) for k in key):
            key = tuple(np.asarray(k._concrete("index")) if _is_tracer(k) else k for k in key)
        new = _point_shape(lambda d: d[key], x.shape)
        full = (slice(None), slice(None)) + key
        out = self._map(x, lambda c: c[full], new)
        if out._jet[0].shape[2:] != new:
            raise _unsupported("getitem with advanced indices separated by slices")
        return out

    def take(self, x, indices, axis=None):
        if axis is None:
            return self.take(self.reshape(x, (-1,)), indices, axis=0)
        ax = _axes(axis, x.ndim)[0]
        return self._map(x, lambda c: np.take(c, np.asarray(indices), axis=ax))

    def sum(self, x, axis=None, dtype=None, keepdims=False):
        if not _is_tracer(x):
            return np.sum(x, axis=axis, keepdims=keepdims)
        ax = _axes(axis, x.ndim)
        return self._map(x, lambda c: np.sum(c, axis=ax, keepdims=keepdims))

    def mean(self, x, axis=None, keepdims=False):
        if not _is_tracer(x):
            return np.mean(x, axis=axis, keepdims=keepdims)
        ax = _axes(axis, x.ndim)
        return self._map(x, lambda c: np.mean(c, axis=ax, keepdims=keepdims))

    def cumulative_sum(self, x, axis=None, dtype=None, include_initial=False):
        if axis is None:
            if x.ndim != 1:
                raise ValueError("cumulative_sum needs `axis` for arrays with more than one dimension")
            axis = 0
        ax = _axes(axis, x.ndim)[0]
        out = self._map(x, lambda c: np.cumsum(c, axis=ax))
        if include_initial:
            zero = self.take(self.multiply(out, 0.0), [0], axis=axis)
            out = self.concat([zero, out], axis=axis)
        return out

    def concat(self, arrays, axis=0):
        arrays = list(arrays)
        if not any(_is_tracer(a) for a in arrays):
            return np.concatenate(arrays, axis=axis)
        tr = self._trace_of(arrays)
        K = tr.ctx.order
        if axis is None:
            arrays, axis = [self.reshape(a, (-1,)) if _is_tracer(a) else np.reshape(a, (-1,)) for a in arrays], 0
        nd = len(_shape_of(arrays[0]))
        ax = _axes(axis, nd)[0]
        jets = [self._coeffs(a, nd, K) for a in arrays]
        shapes = [_shape_of(a) for a in arrays]
        out = []
        for k in range(K + 1):
            cs = [j[k] for j in jets]
            present = [c for c in cs if c is not None and np.ndim(c) >= 2]
            if not present:
                out.append(None)
                continue
            lead = np.broadcast_shapes(*[c.shape[:2] for c in present])
            dtype = np.result_type(*present)
            parts = [
                np.zeros(lead + tuple(s), dtype) if c is None else np.broadcast_to(c, lead + tuple(s))
                for c, s in zip(cs, shapes, strict=True)
            ]
            out.append(np.concatenate(parts, axis=ax))
        return Tracer(out, out[0].shape[2:], tr)

    def stack(self, arrays, axis=0):
        arrays = list(arrays)
        return self.concat([self.expand_dims(a, axis) for a in arrays], axis=axis)

    def where(self, condition, x1, x2):
        if not any(_is_tracer(a) for a in (condition, x1, x2)):
            return np.where(condition, x1, x2)
        tr = self._trace_of(condition, x1, x2)
        K = tr.ctx.order
        shape = tuple(np.broadcast_shapes(_shape_of(condition), _shape_of(x1), _shape_of(x2)))
        nd = len(shape)
        cond = _align(condition._jet[0], nd) if _is_tracer(condition) else _lift(np.asarray(condition), nd)
        A, B = self._coeffs(x1, nd, K), self._coeffs(x2, nd, K)
        out = [np.where(cond, A[0], B[0])]
        for a, b in zip(A[1:], B[1:], strict=True):
            if a is None and b is None:
                out.append(None)
            else:
                out.append(np.where(cond, 0 if a is None else a, 0 if b is None else b))
        return Tracer(out, shape, tr)

    # --- products -----------------------------------------------------------------------------------------
    def multiply(self, a, b):
        if not (_is_tracer(a) or _is_tracer(b)):
            return np.multiply(a, b)
        tr = self._trace_of(a, b)
        shape = self._binary_shape(a, b)
        K = tr.ctx.order
        if not _is_tracer(b):
            return Tracer(taylor.scale(self._coeffs(a, len(shape), K), _lift(b, len(shape))), shape, tr)
        if not _is_tracer(a):
            return Tracer(taylor.scale(self._coeffs(b, len(shape), K), _lift(a, len(shape))), shape, tr)
        A, B = self._coeffs(a, len(shape), K), self._coeffs(b, len(shape), K)
        return Tracer(taylor.product(A, B, tr.ctx), shape, tr)

    def reciprocal(self, x):
        return self._unary("reciprocal", x, lambda v: 1 / v)

    def divide(self, a, b):
        if not (_is_tracer(a) or _is_tracer(b)):
            return np.divide(a, b)
        if not _is_tracer(b):
            return self.multiply(a, 1 / np.asarray(b) if not isinstance(b, int | float) else 1 / b)
        return self.multiply(a, self.reciprocal(b))

    def matmul(self, a, b):
        if not (_is_tracer(a) or _is_tracer(b)):
            return np.matmul(a, b)
        tr = self._trace_of(a, b)
        sa, sb = _shape_of(a), _shape_of(b)
        if len(sa) == 0 or len(sb) == 0:
            raise ValueError("matmul does not take 0-d arrays")
        new = np.matmul(np.zeros(sa, np.int8), np.zeros(sb, np.int8)).shape
        va, vb = len(sa) == 1, len(sb) == 1
        nd = max(len(sa) + va, len(sb) + vb)

        def prep(c, is_vec, left):
            if is_vec:
                c = c[..., None, :] if left else c[..., :, None]
            return _align(c, nd)

        def mm(x, y):
            out = np.matmul(prep(x, va, True), prep(y, vb, False))
            if vb:
                out = out[..., 0]
            if va:
                out = out[..., 0, :] if not vb else out[..., 0]
            return out

        if not _is_tracer(b):
            B = np.asarray(b).reshape((1, 1) + sb)
            return Tracer(taylor.linear(a._jet, lambda c: mm(c, B)), new, tr)
        if not _is_tracer(a):
            A = np.asarray(a).reshape((1, 1) + sa)
            return Tracer(taylor.linear(b._jet, lambda c: mm(A, c)), new, tr)
        return Tracer(taylor.product(a._jet, b._jet, tr.ctx, mul=mm), new, tr)

    def vecdot(self, x1, x2, axis=-1):
        return self.sum(self.multiply(x1, x2), axis=axis)

    def tensordot(self, x1, x2, axes=2):
        if _is_tracer(x1) and _is_tracer(x2):
            raise _unsupported("tensordot of two traced arrays")
        if isinstance(axes, int):
            axes = (list(range(-axes, 0)) if axes else [], list(range(axes)))
        a1, a2 = [list(np.atleast_1d(a)) for a in axes]
        if _is_tracer(x1):
            ax = [a % x1.ndim + 2 for a in a1]
            return self._map(x1, lambda c: np.tensordot(c, np.asarray(x2), axes=(ax, a2)))
        nd2 = x2.ndim
        keep = [i for i in range(nd2) if i not in [a % nd2 for a in a2]]
        perm = [a % nd2 for a in a2] + keep
        y = self.permute_dims(x2, perm)
        lead = np.asarray(x1)
        free1 = [i for i in range(lead.ndim) if i not in [a % lead.ndim for a in a1]]
        L = np.transpose(lead, free1 + [a % lead.ndim for a in a1])
        nfree, ncon = len(free1), len(a1)

        def apply(c):
            flat = c.reshape(c.shape[:2] + (-1,) + c.shape[2 + ncon :]) if ncon else c[:, :, None]
            Lm = L.reshape(L.shape[:nfree] + (-1,))
            return np.tensordot(flat, Lm, axes=([2], [nfree]))

        def reorder(c):
            out = apply(c)  # (n, r, *keep, *free1) → (n, r, *free1, *keep)
            k = len(keep)
            return np.moveaxis(out, list(range(2 + k, 2 + k + nfree)), list(range(2, 2 + nfree)))

        return self._map(y, reorder)

    def prod(self, x, axis=None, dtype=None, keepdims=False):
        if not _is_tracer(x):
            return np.prod(x, axis=axis, keepdims=keepdims)
        if axis is None:
            x, axis = self.reshape(x, (-1,)), 0
        axes = sorted(a - 2 for a in _axes(axis, x.ndim))
        y = x
        for a in reversed(axes):  # reduce one axis at a time, highest first
            n = y.shape[a]
            acc = self.take(y, [0], axis=a)
            for i in range(1, n):
                acc = self.multiply(acc, self.take(y, [i], axis=a))
            y = self.squeeze(acc, a) if n else acc
        if keepdims:
            for a in axes:
                y = self.expand_dims(y, a)
        return y

    # --- elementwise nonlinearities ------------------------------------------------------------------------
    def exp(self, x):
        return self._unary("exp", x, np.exp)

    def expm1(self, x):
        return self._unary("expm1", x, np.expm1)

    def log(self, x):
        return self._unary("log", x, np.log)

    def log1p(self, x):
        return self._unary("log1p", x, np.log1p)

    def log2(self, x):
        return self.multiply(self.log(x), 1 / math.log(2))

    def log10(self, x):
        return self.multiply(self.log(x), 1 / math.log(10))

    def exp2(self, x):
        return self.exp(self.multiply(x, math.log(2)))

    def sin(self, x):
        return self._unary("sin", x, np.sin)

    def cos(self, x):
        return self._unary("cos", x, np.cos)

    def tan(self, x):
        return self._unary("tan", x, np.tan)

    def sinh(self, x):
        return self._unary("sinh", x, np.sinh)

    def cosh(self, x):
        return self._unary("cosh", x, np.cosh)

    def tanh(self, x):
        return self._unary("tanh", x, np.tanh)

    def asin(self, x):
        return self._unary("asin", x, np.arcsin)

    def acos(self, x):
        return self._unary("acos", x, np.arccos)

    def atan(self, x):
        return self._unary("atan", x, np.arctan)

    def asinh(self, x):
        return self._unary("asinh", x, np.arcsinh)

    def acosh(self, x):
        return self._unary("acosh", x, np.arccosh)

    def atanh(self, x):
        return self._unary("atanh", x, np.arctanh)

    def sqrt(self, x):
        return self._unary("sqrt", x, np.sqrt)

    def rsqrt(self, x):
        return self._unary("rsqrt", x, lambda v: 1 / np.sqrt(v))

    def square(self, x):
        return self._unary("square", x, np.square)

    def abs(self, x):
        return self._unary("abs", x, np.abs)

    def relu(self, x):
        return self._unary("relu", x, lambda v: np.maximum(v, 0))

    def sigmoid(self, x):
        return self._unary("sigmoid", x, lambda v: (np.tanh(v / 2) + 1) / 2)

    def softplus(self, x):
        return self._unary("softplus", x, lambda v: np.maximum(v, 0) + np.log1p(np.exp(-np.abs(v))))

    def erf(self, x):
        from math import erf

        return self._unary("erf", x, np.vectorize(erf, otypes=[x.dtype if _is_tracer(x) else float]))

    def pow(self, a, b):
        if not (_is_tracer(a) or _is_tracer(b)):
            return np.power(a, b)
        if not _is_tracer(b) and np.ndim(b) == 0:
            p = float(b)
            if p == 0:
                return self.add(self.multiply(a, 0.0), 1.0)
            if p == 1:
                return a
            return self._unary("pow", a, lambda v: v**p if not float(p).is_integer() else v ** int(p), exponent=p)
        if not _is_tracer(a):  # c^x = exp(x log c)
            return self.exp(self.multiply(b, np.log(np.asarray(a))))
        return self.exp(self.multiply(b, self.log(a)))

    def hypot(self, a, b):
        return self.sqrt(self.add(self.square(a), self.square(b)))

    def logaddexp(self, a, b):
        m = self.maximum(a, b)
        return self.add(m, self.log1p(self.exp(self.negative(self.abs(self.subtract(a, b))))))

    def maximum(self, a, b):
        return self.where(self.greater_equal(a, b), a, b)

    def minimum(self, a, b):
        return self.where(self.less_equal(a, b), a, b)

    def clip(self, x, min=None, max=None):
        if min is not None:
            x = self.maximum(x, min)
        if max is not None:
            x = self.minimum(x, max)
        return x

    # --- reductions selecting an element ---------------------------------------------------------------------
    def _select_reduce(self, x, axis, keepdims, arg):
        if not _is_tracer(x):
            return (np.max if arg is np.argmax else np.min)(x, axis=axis, keepdims=keepdims)
        if axis is None:
            x, axis = self.reshape(x, (-1,)), 0
        if not isinstance(axis, int | np.integer):
            for a in sorted(((a % x.ndim) for a in axis), reverse=True):
                x = self._select_reduce(x, a, keepdims, arg)
            return x
        ax = _axes(axis, x.ndim)[0]
        idx = np.expand_dims(arg(x._jet[0], axis=ax), ax)

        def pick(c):  # fancy indexing broadcasts the batch and direction axes of c and idx
            sel = np.take_along_axis(c, idx, axis=ax)
            return sel if keepdims else np.squeeze(sel, ax)

        return self._map(x, pick)

    def sort(self, x, axis=-1, descending=False, stable=True):
        """Sorting permutes entries by the primal values; the permutation is applied to every coefficient."""
        if not _is_tracer(x):
            out = np.sort(x, axis=axis)
            return np.flip(out, axis=axis) if descending else out
        ax = _axes(axis, x.ndim)[0]
        idx = np.argsort(-x._jet[0] if descending else x._jet[0], axis=ax, kind="stable")
        return self._map(x, lambda c: np.take_along_axis(c, idx, axis=ax))

    def atan2(self, a, b):
        """``atan2(a, b)`` has the derivatives of ``atan(a / b)`` (they differ by a locally constant multiple of π)."""
        if not (_is_tracer(a) or _is_tracer(b)):
            return np.arctan2(a, b)
        jet = self.atan(self.divide(a, b))
        value = np.arctan2(*[_align(t._jet[0], jet.ndim) if _is_tracer(t) else _lift(t, jet.ndim) for t in (a, b)])
        return Tracer([np.broadcast_to(value, jet._jet[0].shape)] + jet._jet[1:], jet.shape, jet._trace)

    def max(self, x, axis=None, keepdims=False):
        return self._select_reduce(x, axis, keepdims, np.argmax)

    def min(self, x, axis=None, keepdims=False):
        return self._select_reduce(x, axis, keepdims, np.argmin)

    def var(self, x, axis=None, correction=0.0, keepdims=False):
        m = self.mean(x, axis=axis, keepdims=True)
        d = self.subtract(x, m)
        s = self.sum(self.multiply(d, d), axis=axis, keepdims=keepdims)
        n = math.prod(x.shape) if axis is None else math.prod(x.shape[a - 2] for a in _axes(axis, x.ndim))
        return self.divide(s, n - correction)

    def std(self, x, axis=None, correction=0.0, keepdims=False):
        return self.sqrt(self.var(x, axis=axis, correction=correction, keepdims=keepdims))

    # --- non-differentiable results (derivative zero almost everywhere) -----------------------------------------
    def _nondiff(self, fn, *args, **kwargs):
        tr = self._trace_of(*args)
        shapes = [_shape_of(a) for a in args]
        nd = len(np.broadcast_shapes(*shapes)) if len(args) > 1 else len(shapes[0])
        vals = [_align(a._jet[0], nd) if _is_tracer(a) else _lift(a, nd) for a in args]
        val = fn(*vals, **kwargs)
        return self._const_tracer(val, val.shape[2:], tr)

    def argmax(self, x, axis=None, keepdims=False):
        if axis is None:
            x, axis = self.reshape(x, (-1,)), 0
        return self._nondiff(lambda v: np.argmax(v, axis=_axes(axis, x.ndim)[0], keepdims=keepdims), x)

    def argmin(self, x, axis=None, keepdims=False):
        if axis is None:
            x, axis = self.reshape(x, (-1,)), 0
        return self._nondiff(lambda v: np.argmin(v, axis=_axes(axis, x.ndim)[0], keepdims=keepdims), x)


def _nondiff_method(np_fn):
    def method(self, *args, **kwargs):
        if not any(_is_tracer(a) for a in args):
            return np_fn(*args, **kwargs)
        return self._nondiff(np_fn, *args, **kwargs)

    method.__doc__ = f"``{np_fn.__name__}``: no derivative (zero almost everywhere)."
    return method


for _name, _fn in {
    "sign": np.sign, "floor": np.floor, "ceil": np.ceil, "round": np.round, "trunc": np.trunc,
    "isnan": np.isnan, "isinf": np.isinf, "isfinite": np.isfinite,
    "less": np.less, "less_equal": np.less_equal, "greater": np.greater, "greater_equal": np.greater_equal,
    "equal": np.equal, "not_equal": np.not_equal, "logical_and": np.logical_and,
    "logical_or": np.logical_or, "logical_not": np.logical_not, "logical_xor": np.logical_xor,
}.items():  # fmt: skip
    setattr(_Namespace, _name, _nondiff_method(_fn))


class _Linalg:
    """``xp.linalg``: the parts that compose from supported operations."""

    def matmul(self, a, b):
        return _NS.matmul(a, b)

    def vector_norm(self, x, axis=None, keepdims=False, ord=2):
        if ord != 2:
            raise _unsupported(f"linalg.vector_norm(ord={ord})")
        return _NS.sqrt(_NS.sum(_NS.multiply(x, x), axis=axis, keepdims=keepdims))

    def norm(self, x, ord=None, axis=None, keepdims=False):
        if ord not in (None, 2, "fro") or (ord == 2 and axis is None and x.ndim == 2):
            raise _unsupported(f"linalg.norm(ord={ord})")
        return self.vector_norm(x, axis=axis, keepdims=keepdims)

    def vecdot(self, a, b, axis=-1):
        return _NS.vecdot(a, b, axis=axis)

    def matrix_transpose(self, x):
        return _NS.matrix_transpose(x)

    def inv(self, x):
        if not _is_tracer(x):
            return np.linalg.inv(x)
        ctx = x._trace.ctx
        return Tracer(taylor.inverse(x._jet, np.linalg.inv(x._jet[0]), ctx, np.matmul), x.shape, x._trace)

    def solve(self, x1, x2):
        if not _is_tracer(x1):
            if not _is_tracer(x2):
                return np.linalg.solve(x1, x2)
            return _NS.matmul(np.linalg.inv(x1), x2)
        return _NS.matmul(self.inv(x1), x2)

    def slogdet(self, x):
        if not _is_tracer(x):
            return np.linalg.slogdet(x)
        ctx, a = x._trace.ctx, x._jet
        sign, l0 = np.linalg.slogdet(a[0])
        inv = taylor.inverse(a[: ctx.order] + [None], np.linalg.inv(a[0]), ctx, np.matmul)

        def trace_of_product(y, b):
            return np.einsum("...ij,...ji->...", y, b)

        jet = taylor.logdet(a, inv, l0, ctx, trace_of_product)
        shape = x.shape[:-2]
        return _SlogdetResult(_NS._const_tracer(sign, shape, x._trace), Tracer(jet, shape, x._trace))

    def det(self, x):
        if not _is_tracer(x):
            return np.linalg.det(x)
        sign, logabs = self.slogdet(x)
        return _NS.multiply(sign, _NS.exp(logabs))

    def __getattr__(self, name):
        def unsupported(*args, **kwargs):
            if any(_is_tracer(a) for a in args):
                raise _unsupported(f"linalg.{name}")
            return getattr(np.linalg, name)(*args, **kwargs)

        return unsupported


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


_Namespace.linalg = _Linalg()
_NS = _Namespace()


# --- executor --------------------------------------------------------------------------------------------------


def _wsum(weights: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``a ↦ Σ_r w_r a[:, r]`` keeping a size-1 direction axis."""

    def wsum(a: np.ndarray) -> np.ndarray:
        return np.expand_dims(np.tensordot(a, weights, axes=([1], [0])), 1)

    return wsum


@dataclass
class GroupResult:
    value: np.ndarray  # (N, *out)
    total: np.ndarray  # (N, *out): Σ_r w_r f_K(v_r)
    gradient: np.ndarray | None  # (N, *out, D) when the group's directions are e_1..e_D in order


def run_group(f: Callable, X: np.ndarray, group: JetGroup, method: str) -> GroupResult:
    """Push the group's jets through ``f`` at the points ``X`` (N, D) and form ``Σ_r w_r f_K(v_r)``."""
    N, D = X.shape
    dtype = X.dtype
    w = group.weights.astype(dtype)
    ctx = taylor.JetContext(group.order, method == "collapsed", _wsum(w))
    trace = _Trace(ctx, N)
    V = group.directions.astype(dtype)[None]  # (1, R, D)
    x0 = X[:, None, :]
    jet = taylor.seed(x0, V, ctx)
    out = f(Tracer(jet, (D,), trace))
    if isinstance(out, list | tuple) and any(_is_tracer(o) for o in out):
        out = _NS.stack(out)
    if not _is_tracer(out):
        val = np.asarray(out, dtype=dtype)
        val = np.broadcast_to(val, (N,) + val.shape)
        return GroupResult(val.copy(), np.zeros_like(val), None)
    shape = out.shape
    value = np.broadcast_to(out._jet[0], (N, 1) + shape)[:, 0]
    total = taylor.top_sum(out._jet, ctx)
    total = np.zeros((N,) + shape, dtype=value.dtype) if total is None else np.broadcast_to(total, (N, 1) + shape)[:, 0]
    grad = None
    if group.unit_axes == tuple(range(D)) and np.all(group.directions == np.eye(D)):
        if group.order >= 2 or (group.order == 1 and method == "standard"):
            g1 = out._jet[1]
            g1 = np.zeros((N, D) + shape, value.dtype) if g1 is None else np.broadcast_to(g1, (N, D) + shape)
            grad = np.moveaxis(g1, 1, -1)
    return GroupResult(np.array(value), np.array(total), None if grad is None else np.array(grad))


def run(plan: Plan, f: Callable, x, *, method: str = "collapsed", return_grad: bool = False):
    """Evaluate ``Σ_groups Σ_r w_r f_K(v_r)`` at ``x`` of shape (D,) or (N, D). Returns ``(value, result, grad)``."""
    if method == "nested":
        raise ValueError(
            "method='nested' needs a framework's automatic differentiation; the NumPy backend has none. "
            "Use method='collapsed' or 'standard', or backend='torch' / 'jax'."
        )
    X = np.asarray(x)
    batched = X.ndim == 2
    if not batched:
        X = X[None]
    try:
        value, total, grad = _run_batch(plan, f, X, method, return_grad)
    except _PerPoint:
        rows = [_run_batch(plan, f, X[i : i + 1], method, return_grad) for i in range(X.shape[0])]
        value, total = (np.concatenate([r[j] for r in rows]) for j in (0, 1))
        grad = np.concatenate([r[2] for r in rows]) if return_grad else None
    if not batched:
        value, total = value[0], total[0]
        grad = grad[0] if grad is not None else None
    return value, total, grad


def _run_batch(plan: Plan, f, X: np.ndarray, method: str, return_grad: bool):
    total, value, grad = None, None, None
    for group in plan.groups:
        res = run_group(f, X, group, method)
        value = res.value
        total = res.total if total is None else total + res.total
        grad = grad if grad is not None else res.gradient
    if return_grad and grad is None:
        D = X.shape[1]
        grad_group = JetGroup(1, np.eye(D), np.ones(D), "gradient", tuple(range(D)))
        grad = run_group(f, X, grad_group, "standard").gradient
    return value, total, grad


def namespace() -> Any:
    """The tracer namespace (what ``array_namespace(x)`` returns inside ``f``)."""
    return _NS


def trace_check(arrays: Sequence) -> bool:
    return any(_is_tracer(a) for a in arrays)
