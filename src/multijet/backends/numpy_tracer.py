"""The NumPy backend's capture: a recording array-API tracer that turns one call of ``f`` into a Program.

A :class:`Tracer` carries an engine :class:`~multijet.engine.program.Var` and its primal value ``x_0`` in the
propagation layout ``(N | 1, 1, *point_shape)`` (so ``bool()``, ``float()`` and shapes work). Every namespace
function (:mod:`.numpy_namespace`) computes its primal with the same lifted callable it records
(:func:`record`). Recorders nest: a tracer of an enclosing capture (``mj.laplacian`` called inside ``f``) is a
constant of the inner capture, so the jet program of one operator can be captured again by another.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import sys

import numpy as np

from ..engine.outputs import stack_outputs
from ..engine.program import Equation, Program, Var
from ..engine.source import PACKAGE_DIR
from ..errors import UnsupportedPrimitiveError

__all__ = ["Tracer", "Recorder", "PerPoint", "record", "xp_of", "is_tracer", "unsupported", "capture", "NAME"]

NAME = "numpy"
_STACK: list[Recorder] = []


class PerPoint(Exception):
    """Raised when a batch needs per-point evaluation (data-dependent Python control flow)."""


def _skip_dirs() -> tuple[str, ...]:
    spec = importlib.util.find_spec("array_api_compat")
    return (os.path.dirname(os.path.abspath(spec.origin)),) if spec is not None and spec.origin else ()


_SKIP = _skip_dirs()


@functools.lru_cache(maxsize=1024)
def _outside(fname: str) -> bool:
    path = os.path.abspath(fname)
    return not path.startswith(PACKAGE_DIR) and not any(path.startswith(d) for d in _SKIP) and fname[:1] != "<"


def where() -> str | None:
    """``file:line`` of the user's code (outside multijet and array_api_compat)."""
    f = sys._getframe(1)
    while f is not None:
        if _outside(f.f_code.co_filename):
            return f"{f.f_code.co_filename}:{f.f_lineno}"
        f = f.f_back
    return None


def unsupported(name: str) -> UnsupportedPrimitiveError:
    return UnsupportedPrimitiveError(
        name,
        NAME,
        where(),
        hint=(
            "Write this step with supported array-API operations, or add it with "
            f"multijet.backends.numpy.register_rule({name!r}, rule) where rule(xp, *args) composes supported ops."
        ),
    )


def is_tracer(a) -> bool:
    return isinstance(a, Tracer)


def xp_of(*arrays):
    """The tracer namespace when any argument is a tracer, else NumPy (lifted callables dispatch on this)."""
    for a in arrays:
        if isinstance(a, Tracer):
            return Tracer.ns
    return np


def _inexact(dtype) -> bool:
    return bool(np.issubdtype(dtype, np.inexact))


class Recorder:
    """The equations and constants of one capture (``depth``: how many captures enclose it)."""

    def __init__(self):
        self.depth = len(_STACK)
        self.eqns: list[Equation] = []
        self.consts: dict[Var, object] = {}
        self._known: dict[int, tuple[Var, object, object]] = {}

    def const(self, value, hint) -> tuple[Var, object]:
        """A program constant for ``value``; returns its variable and its value in the layout."""
        known = self._known.get(id(value))
        if known is not None and known[2] is value:
            return known[0], known[1]
        if isinstance(value, Tracer):  # a value of an enclosing capture: a constant here
            var = Var(value.shape, value.dtype, _inexact(value.dtype))
            self.consts[var], x0 = value, value._x0
        else:
            if isinstance(value, bool | int | float | complex) and hint is not None:
                arr = np.asarray(value, dtype=np.result_type(hint, value))
            else:
                arr = np.asarray(value)
            var = Var(arr.shape, arr.dtype, _inexact(arr.dtype))
            self.consts[var], x0 = arr, arr.reshape((1, 1) + arr.shape)
        if not isinstance(value, bool | int | float | complex):
            self._known[id(value)] = (var, x0, value)
        return var, x0


def record(prim: str, impl, args, *, differentiable: bool = True) -> list[Tracer]:
    """Append ``outs = prim(*args)`` to the innermost capture among the tracer arguments; returns the outputs.

    The primal outputs are ``impl.fn`` at the operands' primal values (constants lifted to ``(1, 1, …)``)."""
    rec = None
    for a in args:
        if isinstance(a, Tracer) and (rec is None or a._rec.depth > rec.depth):
            rec = a._rec
    hint = next(a.dtype for a in args if isinstance(a, Tracer) and a._rec is rec)
    ins, x0s, dep = [], [], False
    for a in args:
        if isinstance(a, Tracer) and a._rec is rec:
            ins.append(a._var)
            x0s.append(a._x0)
            dep = dep or a._dep
        else:
            v, x0 = rec.const(a, hint)
            ins.append(v)
            x0s.append(x0)
    outs0 = impl.fn(*x0s)
    outs = [Var(tuple(o.shape[2:]), o.dtype, _inexact(o.dtype)) for o in outs0]
    rec.eqns.append(Equation(prim, ins, outs, impl, where()))
    dep = dep and differentiable
    return [Tracer(o0, v, rec, dep and v.inexact) for o0, v in zip(outs0, outs, strict=True)]


def record1(prim: str, impl, *args, differentiable: bool = True) -> Tracer:
    return record(prim, impl, args, differentiable=differentiable)[0]


def capture(f, x0: np.ndarray, dtype) -> Program:
    """Call ``f`` once on a tracer with primal ``x0`` (N, 1, D); returns the recorded program."""
    rec = Recorder()
    xvar = Var((x0.shape[-1],), np.dtype(dtype), True)
    _STACK.append(rec)
    try:
        out = stack_outputs(f, Tracer.ns.asarray, Tracer.ns.stack)(Tracer(x0, xvar, rec, True))
    finally:
        _STACK.pop()
    if isinstance(out, Tracer) and out._rec is rec:
        outvar = out._var
    else:  # a constant (or a value of an enclosing capture)
        outvar = rec.const(out if isinstance(out, Tracer) else np.asarray(out, dtype=dtype), None)[0]
    return Program([xvar], [outvar], *_live(rec, outvar))


def _live(rec: Recorder, outvar: Var):
    """The equations and constants the output needs (dead code dropped)."""
    needed, keep = {outvar}, []
    for eqn in reversed(rec.eqns):
        if any(v in needed for v in eqn.outs):
            keep.append(eqn)
            needed.update(eqn.ins)
    return keep[::-1], {v: c for v, c in rec.consts.items() if v in needed}


class Tracer:
    """A value of the traced program: a program variable, its primal value, and the array API's surface."""

    __array_priority__ = 1000
    __slots__ = ("_x0", "_var", "_rec", "_dep")
    ns = None  # the tracer namespace (set by multijet.backends.numpy_namespace)

    def __init__(self, x0, var: Var, rec: Recorder, dep: bool):
        self._x0, self._var, self._rec, self._dep = x0, var, rec, dep

    @property
    def shape(self) -> tuple[int, ...]:
        return self._var.shape

    @property
    def ndim(self) -> int:
        return len(self._var.shape)

    @property
    def size(self) -> int:
        return math.prod(self._var.shape)

    @property
    def dtype(self):
        return self._var.dtype

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def T(self) -> Tracer:
        return self.ns.permute_dims(self, tuple(reversed(range(self.ndim))))

    @property
    def mT(self) -> Tracer:
        return self.ns.matrix_transpose(self)

    def __array_namespace__(self, api_version: str | None = None):
        return self.ns

    def __repr__(self) -> str:
        return f"multijet.Tracer(shape={self.shape}, dtype={self.dtype})"

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d traced array")
        return self.shape[0]

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
        if self._dep:
            raise TypeError(
                f"{what}() of a value that depends differentiably on x would drop its derivatives; "
                "keep it an array (e.g. use xp.where instead of Python control flow)"
            )
        if self._x0.shape[0] > 1:
            raise PerPoint()
        return self._x0.reshape(self.shape)

    # --- operators -----------------------------------------------------------------------------------------
    def __add__(self, o):
        return self.ns.add(self, o)

    def __radd__(self, o):
        return self.ns.add(o, self)

    def __sub__(self, o):
        return self.ns.subtract(self, o)

    def __rsub__(self, o):
        return self.ns.subtract(o, self)

    def __mul__(self, o):
        return self.ns.multiply(self, o)

    def __rmul__(self, o):
        return self.ns.multiply(o, self)

    def __truediv__(self, o):
        return self.ns.divide(self, o)

    def __rtruediv__(self, o):
        return self.ns.divide(o, self)

    def __pow__(self, o):
        return self.ns.pow(self, o)

    def __rpow__(self, o):
        return self.ns.pow(o, self)

    def __matmul__(self, o):
        return self.ns.matmul(self, o)

    def __rmatmul__(self, o):
        return self.ns.matmul(o, self)

    def __neg__(self):
        return self.ns.negative(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return self.ns.abs(self)

    def __getitem__(self, key):
        return self.ns.getitem(self, key)

    def __lt__(self, o):
        return self.ns.less(self, o)

    def __le__(self, o):
        return self.ns.less_equal(self, o)

    def __gt__(self, o):
        return self.ns.greater(self, o)

    def __ge__(self, o):
        return self.ns.greater_equal(self, o)

    def __eq__(self, o):  # type: ignore[override]
        return self.ns.equal(self, o)

    def __ne__(self, o):  # type: ignore[override]
        return self.ns.not_equal(self, o)

    def __and__(self, o):
        return self.ns.logical_and(self, o)

    def __or__(self, o):
        return self.ns.logical_or(self, o)

    def __invert__(self):
        return self.ns.logical_not(self)

    __hash__ = object.__hash__

    # NumPy-style methods users often call
    def reshape(self, *shape):
        return self.ns.reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], tuple | list) else shape)

    def sum(self, axis=None, keepdims=False):
        return self.ns.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return self.ns.mean(self, axis=axis, keepdims=keepdims)

    def prod(self, axis=None, keepdims=False):
        return self.ns.prod(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return self.ns.max(self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, keepdims=False):
        return self.ns.min(self, axis=axis, keepdims=keepdims)

    def transpose(self, *axes):
        if not axes:
            return self.T
        return self.ns.permute_dims(self, axes[0] if len(axes) == 1 else axes)

    def dot(self, o):
        return self.ns.matmul(self, o)

    def astype(self, dtype, copy=True):
        return self.ns.astype(self, dtype)

    def squeeze(self, axis=None):
        return self.ns.squeeze(self, axis)

    def flatten(self):
        return self.ns.reshape(self, (-1,))

    # --- NumPy interop: np.tanh(x), np.sum(x) on a tracer dispatch to the namespace ----------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        name = _UFUNCS.get(ufunc.__name__, ufunc.__name__)
        if method != "__call__" or kwargs.get("out") is not None or not hasattr(self.ns, name):
            raise unsupported(f"numpy.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}"))
        kwargs.pop("out", None)
        return getattr(self.ns, name)(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        name = _FUNCTIONS.get(func.__name__, func.__name__)
        if name.startswith("_") or not hasattr(self.ns, name):
            raise unsupported(f"numpy.{func.__name__}")
        return getattr(self.ns, name)(*args, **kwargs)


_UFUNCS = {
    "true_divide": "divide", "arctan2": "atan2", "power": "pow", "absolute": "abs", "arcsin": "asin",
    "arccos": "acos", "arctan": "atan", "arcsinh": "asinh", "arccosh": "acosh", "arctanh": "atanh",
    "conjugate": "positive",
}  # fmt: skip
_FUNCTIONS = {
    "concatenate": "concat", "transpose": "np_transpose", "cumsum": "cumulative_sum", "amax": "max",
    "amin": "min", "dot": "matmul", "arctan2": "atan2", "swapaxes": "swapaxes",
}  # fmt: skip
