"""NumPy's primitive table: the lifted callables and kind records (:mod:`multijet.engine.kinds`) of the tracer
namespace's primitives.

Layout (``L = 2``): every coefficient is ``(N | 1, R | 1, *point_shape)`` — batch axis, direction axis, the
point's own shape. A lifted callable receives operands whose leading axes are of size 1 or full and broadcasts
them; axis arguments are shifted by 2. Each callable dispatches on its arguments (:func:`xp_of`): on NumPy
arrays it calls NumPy; on tracers of an enclosing capture (when the jet program is captured again, e.g.
``Δ(Δf)``) it calls the tracer namespace, which records.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from ..engine import kinds
from .numpy_tracer import Tracer, is_tracer, xp_of

__all__ = ["shape_of", "traced", "norm_axes", "align", "shift", "elementwise", "power", "broadcast", "nary",
           "linear", "zero", "matmul", "concat", "reduce_choice", "sort", "linalg", "register_unary"]  # fmt: skip


def align(c, nd: int):
    """Insert unit point axes after the two leading axes so that ``c`` has ``nd`` point axes."""
    missing = nd - (c.ndim - 2)
    return c if missing <= 0 else c.reshape(tuple(c.shape[:2]) + (1,) * missing + tuple(c.shape[2:]))


def shape_of(a) -> tuple[int, ...]:
    return tuple(a.shape) if is_tracer(a) else np.shape(a)


def traced(*args) -> bool:
    return any(is_tracer(a) or (isinstance(a, list | tuple) and any(is_tracer(b) for b in a)) for a in args)


def norm_axes(axis, ndim: int) -> tuple[int, ...]:
    """Point axes, normalised (``None``: all)."""
    if axis is None:
        return tuple(range(ndim))
    out = []
    for a in (axis,) if isinstance(axis, int | np.integer) else axis:
        a = int(a)
        if not -ndim <= a < ndim:
            raise np.exceptions.AxisError(f"axis {a} is out of bounds for an array of dimension {ndim}")
        out.append(a % ndim)
    return tuple(out)


def shift(axes) -> tuple[int, ...]:
    return tuple(a + 2 for a in axes)


def _lead(*cs) -> tuple[int, ...]:
    return tuple(np.broadcast_shapes(*[tuple(c.shape[:2]) for c in cs]))


# --- elementwise nonlinearities -------------------------------------------------------------------------------


def _erf(v):
    return np.vectorize(math.erf, otypes=[v.dtype])(v)


_NP_UNARY: dict[str, Callable] = {
    "relu": lambda v: np.maximum(v, 0),
    "sigmoid": lambda v: (np.tanh(v / 2) + 1) / 2,
    "softplus": lambda v: np.maximum(v, 0) + np.log1p(np.exp(-np.abs(v))),
    "erf": _erf,
    "rsqrt": lambda v: 1 / np.sqrt(v),
    "reciprocal": lambda v: 1 / v,
}


def register_unary(name: str, native: Callable) -> None:
    """A new elementwise function (``multijet.register_elementwise``): ``native`` computes it on NumPy arrays."""
    _NP_UNARY[name] = native
    elementwise.cache_clear()


@functools.cache
def elementwise(name: str) -> kinds.Elementwise:
    """``y = g(x)`` with the shared derivative table ``name``."""
    np_fn = _NP_UNARY.get(name) or getattr(np, name)

    def fn(c):
        return [getattr(Tracer.ns, name)(c)] if is_tracer(c) else [np_fn(c)]

    return kinds.Elementwise(fn, name)


@functools.cache
def power(p: float) -> kinds.Elementwise:
    """``x ** p`` for a constant scalar ``p`` (baked in)."""
    e = int(p) if float(p).is_integer() else p
    return kinds.Elementwise(lambda c: [c**e], "pow", {"exponent": float(p)})


# --- broadcasting n-ary primitives ------------------------------------------------------------------------------


@functools.cache
def broadcast(name: str, nd: int) -> Callable:
    """``name(*operands)`` with the operands' point axes aligned to ``nd`` (NumPy broadcasting)."""

    def fn(*cs):
        return [getattr(xp_of(*cs), name)(*[align(c, nd) for c in cs])]

    return fn


@functools.cache
def nary(kind: str, name: str, nd: int):
    """The record of a broadcasting primitive ``name`` of ``nd`` point axes: ``kind`` is ``add``/``subtract``/
    ``negative`` (sums), ``multiply``, ``divide``, ``zero``, ``where`` (linear in the branches, the predicate
    fixed), ``max``/``min`` (split ties) or ``clamp`` (operands ``x, lo, hi``; inclusive ties)."""
    fn = broadcast(name, nd)
    if kind in _SIGNS:
        return kinds.Sum(_SIGNS[kind], fn)
    if kind == "multiply":
        return kinds.Bilinear(fn, broadcasting=True)
    if kind == "divide":
        return kinds.Divide(fn)
    if kind == "zero":
        return kinds.Zero(fn)
    if kind == "where":
        return kinds.Linear(fn, (1, 2), "pointwise")
    if kind in ("max", "min"):
        return kinds.Selection(kind, "split", fn)
    if kind == "clamp":
        return kinds.Selection("clamp", "inclusive", fn, order=(1, 0, 2))
    raise ValueError(f"unknown broadcasting kind {kind!r}")


_SIGNS = {"add": (1.0, 1.0), "subtract": (1.0, -1.0), "negative": (-1.0,)}


def linear(g: Callable, lin: tuple[int, ...] | None = (0,), structure: str = "positive") -> kinds.Linear:
    """A primitive linear in the operands ``lin``: ``g(xp, *operands)`` in the layout. The namespace's linear
    functions move, copy, sum or average elements (``positive``, see :class:`multijet.engine.kinds.Linear`)."""
    return kinds.Linear(lambda *cs: [g(xp_of(*cs), *cs)], lin, structure)


def zero(g: Callable) -> kinds.Zero:
    """A primitive with vanishing derivatives: ``g(xp, *operands)`` in the layout."""
    return kinds.Zero(lambda *cs: [g(xp_of(*cs), *cs)])


def concat(ax: int) -> kinds.Linear:
    """``concat`` along layout axis ``ax``: leading axes broadcast first (zero fill enters as size 1)."""

    def g(xp, *cs):
        lead = _lead(*cs)
        return xp.concat([xp.broadcast_to(c, lead + tuple(c.shape[2:])) for c in cs], axis=ax)

    return linear(g, None)


# --- matmul -----------------------------------------------------------------------------------------------------


def _matmul_fn(sa: tuple, sb: tuple) -> Callable:
    va, vb = len(sa) == 1, len(sb) == 1
    nd = max(len(sa) + va, len(sb) + vb)

    def mm(p, q):
        xp = xp_of(p, q)
        if va:
            p = xp.expand_dims(p, axis=-2)
        if vb:
            q = xp.expand_dims(q, axis=-1)
        out = xp.matmul(align(p, nd), align(q, nd))
        if vb:
            out = xp.squeeze(out, axis=-1)
        if va:
            out = xp.squeeze(out, axis=-1 if vb else -2)
        return out

    return mm


def matmul(sa: tuple, sb: tuple) -> kinds.Bilinear:
    """``a @ b`` (1-D operands as in the array API); the identity seed against a constant skips the product."""
    mm = _matmul_fn(sa, sb)

    def identity(side: int, w):
        """``B(e_r, W)`` for every r, the direction axis in front, when operand ``side`` is the seed (D,)."""
        if is_tracer(w) or len((sa, sb)[side]) != 1 or np.ndim(w) < 3:
            return None
        W = np.asarray(w)[0, 0]  # e_r @ W = W[..., r, :];  W @ e_r = W[..., r]
        return np.ascontiguousarray(np.moveaxis(W, -1 if side == 1 or W.ndim == 1 else -2, 0)[None])

    def unsum(side: int, axis: int):
        """``a @ b`` with the contracted axis (``a``'s last, ``b``'s second to last) unsummed, in front:
        ``out[k, …, m, n] = a[…, m, k] b[…, k, n]`` (matrices on both sides only)."""
        if len(sa) < 2 or len(sb) < 2 or axis != (len(sa) - 1 if side == 0 else len(sb) - 2):
            return None
        nd = max(len(sa), len(sb))

        def fn(p, q):
            xp = xp_of(p, q)
            terms = xp.expand_dims(align(p, nd), axis=-1) * xp.expand_dims(align(q, nd), axis=-3)  # (…, m, k, n)
            axes = list(range(terms.ndim))
            axes.insert(2, axes.pop(-2))
            return [xp.permute_dims(terms, tuple(axes))]

        return fn

    return kinds.Bilinear(lambda p, q: [mm(p, q)], identity=identity, unsum=unsum)


# --- selections ----------------------------------------------------------------------------------------------------


def reduce_choice(rule: str, ax: tuple[int, ...], keepdims: bool, in_shape: tuple) -> kinds.Selection:
    """``max``/``min`` over the layout axes ``ax``: tied entries share the derivative equally ("split")."""
    name = "max" if rule == "reduce_max" else "min"

    def fn(c):
        return [getattr(xp_of(c), name)(c, axis=ax, keepdims=keepdims)]

    def reduce(c):
        return [xp_of(c).sum(c, axis=ax, keepdims=keepdims)]

    def expand(y):
        xp = xp_of(y)
        y = y if keepdims else xp.expand_dims(y, axis=ax)
        return [xp.broadcast_to(y, tuple(y.shape[:2]) + tuple(in_shape))]

    return kinds.Selection(rule, "split", fn, reduce=reduce, expand=expand)


def sort(ax: int, descending: bool) -> kinds.Selection:
    """Sorting permutes entries by the primal values (a stable sort: tied entries keep their order)."""

    def fn(c):
        xp = xp_of(c)
        out = xp.sort(c, axis=ax)
        return [xp.flip(out, axis=ax) if descending else out]

    def argsort(c):
        xp = xp_of(c)
        return [xp.argsort(-c if descending else c, axis=ax, stable=True)]

    def take(c, index):
        return [xp_of(c, index).take_along_axis(c, index, axis=ax)]

    return kinds.Selection("sort", "first", fn, argsort=argsort, take=take)


# --- linear algebra ----------------------------------------------------------------------------------------------


def _inv(a):
    return [xp_of(a).linalg.inv(a)]


def _mm(p, q):
    return [xp_of(p, q).matmul(p, q)]


def _slogdet(a):
    return list(xp_of(a).linalg.slogdet(a))


def _trace(p, q):
    if is_tracer(p) or is_tracer(q):
        xp = xp_of(p, q)
        return [xp.sum(p * xp.matrix_transpose(q), axis=(-2, -1))]
    return [np.einsum("...ij,...ji->...", p, q)]


def _diag_product(p, q):
    """``diag(p q)`` over the last two axes: ``Σ_j p_ij q_ji``."""
    xp = xp_of(p, q)
    return [xp.sum(p * xp.swapaxes(q, -1, -2), axis=-1)]


def _transpose(c):
    return [xp_of(c).swapaxes(c, -1, -2)]


def _phi(c):
    """The strictly lower triangle plus half the diagonal (a product with a constant mask)."""
    n = c.shape[-1]
    return [c * (np.tril(np.ones((n, n), dtype=c.dtype)) - 0.5 * np.eye(n, dtype=c.dtype))]


def linalg(op: str, sa: tuple = (), sb: tuple = ()) -> kinds.Linalg:
    """``inv``, ``solve`` (``sa``, ``sb``: point shapes of ``A`` and ``b``), ``slogdet``, ``det`` or ``cholesky``."""
    if op == "cholesky":
        chol = lambda a: [xp_of(a).linalg.cholesky(a)]  # noqa: E731
        return kinds.Linalg("cholesky", chol, _inv, _mm, transpose=_transpose, phi=_phi)
    if op == "inv":
        return kinds.Linalg("inv", _inv, _inv, _mm, _trace)
    if op == "slogdet":
        return kinds.Linalg("slogdet", _slogdet, _inv, _mm, _trace, diag_product=_diag_product)
    if op == "det":
        return kinds.Linalg("det", lambda a: [xp_of(a).linalg.det(a)], _inv, _mm, _trace, slogdet=_slogdet)
    if op != "solve":
        raise ValueError(f"unknown linear-algebra op {op!r}")
    vector = len(sb) == 1
    nd = len(sa) if vector else max(len(sa), len(sb))
    mm = _matmul_fn(sa, sb)

    def solve(a, b):
        xp = xp_of(a, b)
        if vector:
            return [xp.squeeze(xp.linalg.solve(a, align(xp.expand_dims(b, axis=-1), nd)), axis=-1)]
        return [xp.linalg.solve(align(a, nd), align(b, nd))]

    return kinds.Linalg("solve", solve, _inv, _mm, _trace, apply=lambda p, q: [mm(p, q)])
