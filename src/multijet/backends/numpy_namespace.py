"""The array-API namespace of the NumPy backend's :class:`~.numpy_tracer.Tracer` (what ``array_namespace(x)``
returns inside ``f``).

Each function checks its arguments, works out the static parameters (point shapes, axes shifted past the two
leading axes) and records one equation with its kind record from :mod:`.numpy_table`; composite functions
(statistics, norms, ``logaddexp``, ``hypot``, ``prod``, ``tensordot``, …) record several equations
through the others. On arguments without tracers every function is plain NumPy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .. import extend
from . import numpy_table as T
from .numpy_composite import Composites, Linalg
from .numpy_tracer import Tracer, is_tracer, record1, unsupported

__all__ = ["NS", "EXTRA_RULES"]

#: ``xp.<name>`` added by :func:`multijet.backends.numpy.register_rule`: ``rule(xp, *args, **kwargs)``
EXTRA_RULES: dict[str, Callable] = {}

_UNARY = ("exp", "expm1", "log", "log1p", "sin", "cos", "tan", "sinh", "cosh", "tanh", "asin", "acos", "atan",
          "asinh", "acosh", "atanh", "sqrt", "rsqrt", "square", "abs", "relu", "sigmoid", "softplus", "erf",
          "reciprocal")  # fmt: skip
_ZERO = ("sign", "floor", "ceil", "round", "trunc", "isnan", "isinf", "isfinite", "less", "less_equal", "greater",
         "greater_equal", "equal", "not_equal", "logical_and", "logical_or", "logical_not", "logical_xor")  # fmt: skip


def _point_shape(fn: Callable, shape) -> tuple[int, ...]:
    """The point shape an operation produces (evaluated on a broadcast dummy array)."""
    return tuple(fn(np.broadcast_to(np.zeros((), dtype=np.int8), tuple(shape))).shape)


def _index(k):
    return np.asarray(k._concrete("index")) if is_tracer(k) else k


def _bound(value, sign: int, dtype):
    """A clip bound: ``None`` or an infinite scalar becomes the dtype's largest finite value."""
    if value is None or (isinstance(value, int | float) and math.isinf(value)):
        info = np.finfo(dtype) if np.issubdtype(dtype, np.inexact) else np.iinfo(dtype)
        return sign * info.max if value is None else math.copysign(info.max, value)
    return value


class _Namespace(Composites):
    """The tracer namespace: every function records an equation (see the module docstring)."""

    __name__ = "multijet.backends.numpy.tracer_namespace"

    float32, float64, int32, int64, bool = np.float32, np.float64, np.int32, np.int64, np.bool_
    int8, int16, uint8, complex64, complex128 = np.int8, np.int16, np.uint8, np.complex64, np.complex128
    e, pi, inf, nan, newaxis = math.e, math.pi, math.inf, math.nan, None

    def __getattr__(self, name: str):
        if name in EXTRA_RULES:
            rule = EXTRA_RULES[name]
            return lambda *a, **k: rule(self, *a, **k)
        target = getattr(np, name, None)
        if target is None:
            raise AttributeError(f"the multijet tracer namespace has no attribute {name!r}")
        if not callable(target) or isinstance(target, type):
            return target

        def constant_only(*args, **kwargs):
            if T.traced(*args, *kwargs.values()):
                raise unsupported(name)
            return target(*args, **kwargs)

        return constant_only

    # --- plumbing ----------------------------------------------------------------------------------------------
    def _nary(self, kind: str, name: str, *args, differentiable: bool = True):
        if not T.traced(*args):
            return getattr(np, name)(*args)
        nd = len(np.broadcast_shapes(*[T.shape_of(a) for a in args]))
        return record1(name, T.nary(kind, name, nd), *args, differentiable=differentiable)

    def _linear(self, prim: str, x, g: Callable, *others, lin=(0,)):
        return record1(prim, T.linear(g, lin), x, *others)

    # --- creation / conversion -----------------------------------------------------------------------------------
    def asarray(self, obj, dtype=None, device=None, copy=None):
        if is_tracer(obj):
            return obj if dtype is None or np.dtype(dtype) == obj.dtype else self.astype(obj, dtype)
        if isinstance(obj, list | tuple) and T.traced(obj):
            return self.stack([self.asarray(o, dtype=dtype) for o in obj])
        return np.asarray(obj, dtype=dtype)

    def astype(self, x, dtype, copy=True, device=None):
        if not is_tracer(x):
            return np.asarray(x).astype(dtype)
        if np.dtype(dtype) == x.dtype:
            return x
        if not np.issubdtype(np.dtype(dtype), np.inexact):
            return record1("astype", T.zero(lambda xp, c: xp.astype(c, dtype)), x, differentiable=False)
        return self._linear("astype", x, lambda xp, c: xp.astype(c, dtype))

    def zeros_like(self, x, dtype=None, device=None):
        return np.zeros(T.shape_of(x), dtype=dtype or x.dtype)

    def ones_like(self, x, dtype=None, device=None):
        return np.ones(T.shape_of(x), dtype=dtype or x.dtype)

    def full_like(self, x, fill_value, dtype=None, device=None):
        return np.full(T.shape_of(x), fill_value, dtype=dtype or x.dtype)

    def isdtype(self, dtype, kind):
        from array_api_compat import numpy as npc

        return npc.isdtype(dtype, kind)

    # --- sums, shapes, indexing ----------------------------------------------------------------------------------
    def add(self, a, b):
        return self._nary("add", "add", a, b)

    def subtract(self, a, b):
        return self._nary("subtract", "subtract", a, b)

    def negative(self, x):
        return self._nary("negative", "negative", x)

    def positive(self, x):
        return x

    def reshape(self, x, shape, copy=None):
        if not is_tracer(x):
            return np.reshape(x, shape)
        shape = (shape,) if isinstance(shape, int | np.integer) else tuple(int(s) for s in shape)
        new = _point_shape(lambda d: d.reshape(shape), x.shape)
        if new == x.shape:
            return x
        return self._linear("reshape", x, lambda xp, c: xp.reshape(c, tuple(c.shape[:2]) + new))

    def permute_dims(self, x, axes):
        if not is_tracer(x):
            return np.transpose(x, axes)
        perm = (0, 1) + T.shift(T.norm_axes(tuple(axes), x.ndim))
        if perm == tuple(range(x.ndim + 2)):
            return x
        return self._linear("permute_dims", x, lambda xp, c: xp.permute_dims(c, perm))

    def expand_dims(self, x, axis=0):
        if not is_tracer(x):
            return np.expand_dims(x, axis)
        n = 1 if isinstance(axis, int | np.integer) else len(axis)
        ax = T.shift(T.norm_axes(axis, x.ndim + n))
        return self._linear("expand_dims", x, lambda xp, c: xp.expand_dims(c, axis=ax))

    def squeeze(self, x, axis=None):
        if not is_tracer(x):
            return np.squeeze(x, axis)
        ax = tuple(i for i, s in enumerate(x.shape) if s == 1) if axis is None else T.norm_axes(axis, x.ndim)
        for a in ax:
            if x.shape[a] != 1:
                raise ValueError(f"cannot squeeze axis {a} of size {x.shape[a]}")
        return self.reshape(x, tuple(s for i, s in enumerate(x.shape) if i not in ax))

    def flip(self, x, axis=None):
        if not is_tracer(x):
            return np.flip(x, axis)
        ax = T.shift(T.norm_axes(axis, x.ndim))
        return self._linear("flip", x, lambda xp, c: xp.flip(c, axis=ax))

    def roll(self, x, shift, axis=None):
        if not is_tracer(x):
            return np.roll(x, shift, axis)
        if axis is None:
            return self.reshape(self.roll(self.reshape(x, (-1,)), shift, axis=0), x.shape)
        ax = T.shift(T.norm_axes(axis, x.ndim))
        return self._linear("roll", x, lambda xp, c: xp.roll(c, shift, axis=ax))

    def broadcast_to(self, x, shape):
        if not is_tracer(x):
            return np.broadcast_to(x, shape)
        shape = tuple(shape)
        if shape == x.shape:
            return x
        np.broadcast_shapes(x.shape, shape)  # the error NumPy gives for incompatible shapes
        return self._linear(
            "broadcast_to", x, lambda xp, c: xp.broadcast_to(T.align(c, len(shape)), c.shape[:2] + shape)
        )

    def getitem(self, x, key):
        key = tuple(_index(k) for k in (key if isinstance(key, tuple) else (key,)))
        full = (slice(None), slice(None)) + key
        new = _point_shape(lambda d: d[key], x.shape)
        if _point_shape(lambda d: d[full], (1, 1) + x.shape)[2:] != new:
            raise unsupported("getitem with advanced indices separated by slices")
        return self._linear("getitem", x, lambda xp, c: c[full])

    def take(self, x, indices, axis=None):
        if not is_tracer(x):
            return np.take(x, _index(indices), axis=axis)
        if axis is None:
            return self.take(self.reshape(x, (-1,)), indices, axis=0)
        ax, idx = T.shift(T.norm_axes(axis, x.ndim))[0], np.asarray(_index(indices))
        return self._linear("take", x, lambda xp, c: xp.take(c, idx, axis=ax))

    def take_along_axis(self, x, indices, axis=-1):
        if not T.traced(x, indices):
            return np.take_along_axis(x, indices, axis=axis)
        ax = T.shift(T.norm_axes(axis, len(T.shape_of(x))))[0]
        return self._linear("take_along_axis", x, lambda xp, c, i: xp.take_along_axis(c, i, axis=ax), indices)

    def sum(self, x, axis=None, dtype=None, keepdims=False):
        if not is_tracer(x):
            return np.sum(x, axis=axis, dtype=dtype, keepdims=keepdims)
        ax = T.shift(T.norm_axes(axis, x.ndim))
        return self._linear("sum", x, lambda xp, c: xp.sum(c, axis=ax, keepdims=keepdims))

    def mean(self, x, axis=None, keepdims=False):
        if not is_tracer(x):
            return np.mean(x, axis=axis, keepdims=keepdims)
        ax = T.shift(T.norm_axes(axis, x.ndim))
        return self._linear("mean", x, lambda xp, c: xp.mean(c, axis=ax, keepdims=keepdims))

    def cumulative_sum(self, x, axis=None, dtype=None, include_initial=False):
        if not is_tracer(x):
            return np.cumulative_sum(x, axis=axis, dtype=dtype, include_initial=include_initial)
        if axis is None:
            if x.ndim != 1:
                raise ValueError("cumulative_sum needs `axis` for arrays with more than one dimension")
            axis = 0
        ax = T.shift(T.norm_axes(axis, x.ndim))[0]
        return self._linear(
            "cumulative_sum", x, lambda xp, c: xp.cumulative_sum(c, axis=ax, include_initial=include_initial)
        )

    def concat(self, arrays, axis=0):
        arrays = list(arrays)
        if not T.traced(arrays):
            return np.concat(arrays, axis=axis)
        if axis is None:
            arrays, axis = [self.reshape(a, (-1,)) for a in arrays], 0
        ax = T.shift(T.norm_axes(axis, len(T.shape_of(arrays[0]))))[0]
        np.concat([np.zeros(T.shape_of(a), np.int8) for a in arrays], axis=ax - 2)  # NumPy's shape errors
        return record1("concat", T.concat(ax), *arrays)

    def where(self, condition, x1, x2):
        return self._nary("where", "where", condition, x1, x2)

    # --- products --------------------------------------------------------------------------------------------------
    def multiply(self, a, b):
        return self._nary("multiply", "multiply", a, b)

    def divide(self, a, b):
        return self._nary("divide", "divide", a, b)

    def matmul(self, a, b):
        if not T.traced(a, b):
            return np.matmul(a, b)
        sa, sb = T.shape_of(a), T.shape_of(b)
        if not sa or not sb:
            raise ValueError("matmul does not take 0-d arrays")
        np.matmul(np.zeros(sa, np.int8), np.zeros(sb, np.int8))  # NumPy's shape errors
        return record1("matmul", T.matmul(sa, sb), a, b)

    # --- elementwise -------------------------------------------------------------------------------------------
    def pow(self, a, b):
        if not T.traced(a, b):
            return np.power(a, b)
        if not is_tracer(b) and np.ndim(b) == 0:
            p = float(b)
            if p == 0:
                return self.add(self.multiply(a, 0.0), 1.0)
            return a if p == 1 else record1("pow", T.power(p), a)
        if not is_tracer(a):  # c^x = exp(x log c)
            return self.exp(self.multiply(b, np.log(np.asarray(a))))
        return self.exp(self.multiply(b, self.log(a)))

    # --- selections ----------------------------------------------------------------------------------------------
    def maximum(self, a, b):
        return self._nary("max", "maximum", a, b)

    def minimum(self, a, b):
        return self._nary("min", "minimum", a, b)

    def clip(self, x, min=None, max=None):
        if min is None and max is None:
            return x
        if not T.traced(x, min, max):
            return np.clip(x, min, max)
        dtype = np.result_type(*[a.dtype if is_tracer(a) else a for a in (x, min, max) if a is not None])
        return self._nary("clamp", "clip", x, _bound(min, -1, dtype), _bound(max, 1, dtype))

    def _choose(self, rule: str, x, axis, keepdims):
        if not is_tracer(x):
            return (np.max if rule == "reduce_max" else np.min)(x, axis=axis, keepdims=keepdims)
        ax = T.shift(T.norm_axes(axis, x.ndim))
        return record1(rule, T.reduce_choice(rule, ax, keepdims, x.shape), x)

    def max(self, x, axis=None, keepdims=False):
        return self._choose("reduce_max", x, axis, keepdims)

    def min(self, x, axis=None, keepdims=False):
        return self._choose("reduce_min", x, axis, keepdims)

    def sort(self, x, axis=-1, descending=False, stable=True):
        if not is_tracer(x):
            out = np.sort(x, axis=axis, stable=True)
            return np.flip(out, axis=axis) if descending else out
        return record1("sort", T.sort(T.shift(T.norm_axes(axis, x.ndim))[0], descending), x)

    def argsort(self, x, axis=-1, descending=False, stable=True):
        if not is_tracer(x):
            return np.argsort(-np.asarray(x) if descending else x, axis=axis, stable=True)
        ax = T.shift(T.norm_axes(axis, x.ndim))[0]

        def g(xp, c):
            return xp.argsort(-c if descending else c, axis=ax, stable=True)

        return record1("argsort", T.zero(g), x, differentiable=False)

    def _arg(self, name: str, x, axis, keepdims):
        if not is_tracer(x):
            return getattr(np, name)(x, axis=axis, keepdims=keepdims)
        if axis is None:
            out = self._arg(name, self.reshape(x, (-1,)), 0, False)
            return self.reshape(out, (1,) * x.ndim) if keepdims else out
        ax = T.shift(T.norm_axes(axis, x.ndim))[0]

        def g(xp, c):
            return getattr(xp, name)(c, axis=ax, keepdims=keepdims)

        return record1(name, T.zero(g), x, differentiable=False)

    def argmax(self, x, axis=None, keepdims=False):
        return self._arg("argmax", x, axis, keepdims)

    def argmin(self, x, axis=None, keepdims=False):
        return self._arg("argmin", x, axis, keepdims)


def _unary_method(name: str):
    np_fn = T._NP_UNARY.get(name) or getattr(np, name)

    def method(self, x):
        return record1(name, T.elementwise(name), x) if is_tracer(x) else np_fn(np.asarray(x))

    method.__name__ = name
    return method


def _zero_method(name: str):
    def method(self, *args):
        return self._nary("zero", name, *args, differentiable=False)

    method.__name__ = name
    method.__doc__ = f"``{name}``: no derivative (zero almost everywhere)."
    return method


def _registered_elementwise(name: str, native: Callable) -> Callable[[], None]:
    """``multijet.register_elementwise(name, table, numpy=native)``: the namespace gains ``xp.<name>``;
    returns the undo."""
    previous_native, previous_method = T._NP_UNARY.get(name), _Namespace.__dict__.get(name)
    T.register_unary(name, native)
    setattr(_Namespace, name, _unary_method(name))

    def undo() -> None:
        if previous_native is None:
            T._NP_UNARY.pop(name, None)
            T.elementwise.cache_clear()
        else:
            T.register_unary(name, previous_native)
        if previous_method is None:
            delattr(_Namespace, name)
        else:
            setattr(_Namespace, name, previous_method)

    return undo


for _n in _UNARY:
    setattr(_Namespace, _n, _unary_method(_n))
for _n in _ZERO:
    setattr(_Namespace, _n, _zero_method(_n))


_Namespace.linalg = Linalg()
NS = _Namespace()
Tracer.ns = NS
extend.on_register("numpy", _registered_elementwise)
