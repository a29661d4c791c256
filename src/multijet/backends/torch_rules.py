"""Taylor rules of the PyTorch executor: ATen op → shared rule *kind*, emitted into an fx graph.

The executor (:mod:`multijet.backends.torch`) captures ``f`` at one point with ``make_fx`` (functionalised
ATen ops) and walks the captured nodes once; for every node that depends on ``x`` it calls the rule
registered here for the node's op. A rule runs the shared Taylor arithmetic (:mod:`multijet.taylor`) on
:class:`Co` objects — coefficient handles whose arithmetic *emits* nodes into the new graph — so the
emitted graph contains exactly the operations the structural zeros leave.

Layout of every coefficient in the emitted graph: ``(N | 1, R | 1, *point_shape)`` — a batch axis (size 1
when the coefficient does not depend on the batch point, e.g. the first layer's ``Wᵀ`` for unit
directions), a direction axis (size 1 for ``x_0`` and a collapsed top), then the point's own shape. Rules
that take axis arguments shift them by two.

Rule kinds (one helper each): ``elementwise`` (a derivative table of :mod:`multijet.derivatives` + Faà di
Bruno), ``linear`` (apply the op to every coefficient), ``bilinear`` (Leibniz with a ``mul``), ``nondiff``
(derivative zero almost everywhere), ``composite`` (written with other ops) and ``generic`` (nested
forward-mode AD of the op, :func:`generic_call`), the fallback for every op without a hand-written rule.
"""

from __future__ import annotations

import math
import operator
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils._pytree as pytree

from .. import taylor
from ..derivatives import derivatives
from ..errors import UnsupportedPrimitiveError

aten = torch.ops.aten
prims = torch.ops.prims

__all__ = ["Co", "Cst", "Jet", "Emitter", "RULES", "register_rule", "generic_call", "STRICT"]

#: When True, an op without a hand-written rule raises instead of using the (slower) generic rule.
STRICT = False
_WARNED: set[str] = set()
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- values of the emitted program ------------------------------------------------------------------------


class Co:
    """One Taylor coefficient in the emitted graph: an fx node with layout ``(N|1, r, *shape)``.

    ``b`` says whether the batch axis has size N (else 1); ``r`` is the direction axis size (R or 1).
    Arithmetic emits nodes and broadcasts (point axes are aligned after the two leading axes).
    """

    __slots__ = ("E", "node", "b", "r", "shape")

    def __init__(self, E: Emitter, node, b: bool, r: int, shape):
        self.E, self.node, self.b, self.r, self.shape = E, node, bool(b), int(r), tuple(shape)
        if b:  # the largest per-point array decides how many points one pass takes (see JetProgram)
            E.max_point_elems = max(E.max_point_elems, self.r * math.prod(self.shape))

    def __repr__(self) -> str:
        return f"Co({self.node}, b={self.b}, r={self.r}, shape={self.shape})"

    def _bin(self, other, op, rev=False):
        E = self.E
        if isinstance(other, int | float | bool) and not isinstance(other, bool):
            if (op is operator.add and other == 0) or (op is operator.sub and other == 0 and not rev):
                return self
            if op is operator.mul and other == 1:
                return self
            if op is operator.mul and other == -1:
                return -self
        if isinstance(other, int | float | bool):
            args = (other, self.node) if rev else (self.node, other)
            return Co(E, E.call(op, *args), self.b, self.r, self.shape)
        if isinstance(other, Co):
            nd = max(len(self.shape), len(other.shape))
            a, o = E.align(self, nd), E.align(other, nd)
            args = (o.node, a.node) if rev else (a.node, o.node)
            shape = torch.broadcast_shapes(a.shape, o.shape)
            return Co(E, E.call(op, *args), a.b or o.b, max(a.r, o.r), shape)
        if isinstance(other, Cst):
            a = E.align(self, len(other.shape))
            args = (other.node, a.node) if rev else (a.node, other.node)
            return Co(E, E.call(op, *args), a.b, a.r, torch.broadcast_shapes(a.shape, other.shape))
        return NotImplemented

    def __add__(self, o):
        return self._bin(o, operator.add)

    def __radd__(self, o):
        return self._bin(o, operator.add, True)

    def __sub__(self, o):
        return self._bin(o, operator.sub)

    def __rsub__(self, o):
        return self._bin(o, operator.sub, True)

    def __mul__(self, o):
        return self._bin(o, operator.mul)

    def __rmul__(self, o):
        return self._bin(o, operator.mul, True)

    def __truediv__(self, o):
        return self._bin(o, operator.truediv)

    def __rtruediv__(self, o):
        return self._bin(o, operator.truediv, True)

    def __pow__(self, o):
        return self._bin(o, operator.pow)

    def __neg__(self):
        return Co(self.E, self.E.call(operator.neg, self.node), self.b, self.r, self.shape)

    def map(self, fn, *args, shape=None, **kwargs) -> Co:
        """``fn(self, *args)`` emitted, same leading axes; ``shape`` is the new point shape."""
        node = self.E.call(fn, self.node, *args, **kwargs)
        return Co(self.E, node, self.b, self.r, self.shape if shape is None else shape)


@dataclass
class Cst:
    """A tensor of the emitted graph that does not depend on ``x`` (parameters, constants): point layout."""

    node: Any
    shape: tuple
    dtype: Any


@dataclass
class Jet:
    """The jet of a value that depends on ``x``: coefficients ``[x_0, …, x_K]`` (``None`` = zero)."""

    c: list
    shape: tuple
    dtype: Any

    @property
    def derivfree(self) -> bool:
        return all(v is None for v in self.c[1:])


class _XP:
    """The ``xp`` namespace the shared derivative tables see: emits torch functions on :class:`Co`."""

    @staticmethod
    def exp(c):
        return c.map(torch.exp)

    @staticmethod
    def sin(c):
        return c.map(torch.sin)

    @staticmethod
    def cos(c):
        return c.map(torch.cos)

    @staticmethod
    def sign(c):
        return c.map(torch.sign)

    @staticmethod
    def tanh(c):
        return c.map(torch.tanh)


XP = _XP()


class Emitter:
    """Builds the jet program: the new fx graph, the JetContext, and helpers the rules share."""

    def __init__(
        self,
        graph: torch.fx.Graph,
        ctx: taylor.JetContext,
        R: int,
        N,
        device,
        weights_node,
        unit_weights: bool,
        wsum_total: float,
        equal_weight: float | None = None,
    ):
        self.graph, self.ctx, self.R, self.N, self.device = graph, ctx, R, N, device
        self._w = weights_node  # (R,) tensor node
        self._unit = unit_weights
        self._wtotal = wsum_total
        self._wequal = equal_weight is not None
        self._wfirst = equal_weight
        self._wviews: dict[int, Any] = {}
        self.max_point_elems = 1
        self.where = None  # user source line of the node being emitted

    @property
    def K(self) -> int:
        return self.ctx.order

    # --- emission ----------------------------------------------------------------------------------------
    def call(self, target, *args, **kwargs):
        def unwrap(a):
            if isinstance(a, Co | Cst):
                return a.node
            return a

        args = pytree.tree_map(unwrap, args, is_leaf=lambda a: isinstance(a, Co | Cst))
        kwargs = pytree.tree_map(unwrap, kwargs, is_leaf=lambda a: isinstance(a, Co | Cst))
        return self.graph.call_function(target, tuple(args), dict(kwargs))

    def lead(self, c: Co) -> list:
        return [self.N if c.b else 1, c.r]

    def align(self, c: Co, nd: int) -> Co:
        """Insert size-1 point axes after the leading two so that ``c`` has ``nd`` point axes."""
        if len(c.shape) >= nd:
            return c
        shape = (1,) * (nd - len(c.shape)) + c.shape
        return c.map(torch.reshape, self.lead(c) + list(shape), shape=shape)

    def fit(self, c: Co | None, shape) -> Co | None:
        """Broadcast ``c``'s point axes to ``shape`` (every coefficient of a jet has the jet's shape)."""
        if c is None or c.shape == tuple(shape):
            return c
        c = self.align(c, len(shape))
        return c.map(torch.Tensor.expand, [-1, -1, *shape], shape=tuple(shape))

    def jet(self, coeffs, shape, dtype) -> Jet:
        shape = tuple(shape)
        return Jet([self.fit(c, shape) for c in coeffs], shape, dtype)

    def lift(self, v, like_dtype=None) -> Co:
        """A constant as a coefficient with leading axes (1, 1)."""
        if isinstance(v, Cst):
            return Co(self, self.call(torch.reshape, v.node, [1, 1, *v.shape]), False, 1, v.shape)
        raise TypeError(v)

    def zeros(self, shape, dtype, b=False, r=1) -> Co:
        node = self.call(torch.zeros, [self.N if b else 1, r, *shape], dtype=dtype, device=self.device)
        return Co(self, node, b, r, shape)

    def expand_lead(self, c: Co, b: bool, r: int) -> Co:
        if c.b == b and c.r == r:
            return c
        return c.map(torch.Tensor.expand, [self.N if b else 1, r, *c.shape])

    def wsum(self, c: Co) -> Co:
        """``Σ_r w_r c[:, r]`` keeping a size-1 direction axis."""
        if c.r == 1:
            return c if self._wtotal == 1.0 else c * self._wtotal
        node = c.node
        if (
            (self._unit or self._wequal)
            and node.target is operator.mul
            and len(node.args) == 2
            and all(isinstance(a, torch.fx.Node) for a in node.args)
            and len(node.users) == 0
        ):
            # Σ_r w a_r b_r as one fused dot product over the direction axis: no (N, R, …) temporary (the
            # product node, now unused, is dropped by dead-code elimination)
            dot = self.call(torch.linalg.vecdot, node.args[0], node.args[1], dim=1)
            out = Co(self, self.call(torch.unsqueeze, dot, 1), c.b, 1, c.shape)
            return out if self._unit else out * self._wfirst
        if self._unit:
            return Co(self, self.call(torch.sum, c.node, 1, keepdim=True), c.b, 1, c.shape)
        nd = len(c.shape)
        if nd not in self._wviews:
            self._wviews[nd] = self.call(torch.reshape, self._w, [self.R] + [1] * nd)
        prod = self.call(operator.mul, c.node, self._wviews[nd])
        return Co(self, self.call(torch.sum, prod, 1, keepdim=True), c.b, 1, c.shape)


# --- rule table ---------------------------------------------------------------------------------------------

Rule = Callable[..., Any]
RULES: dict[Any, Rule] = {}


def register_rule(op, rule: Rule) -> None:
    """Register ``rule(E, *args, **kwargs)`` for an ATen op (``torch.ops.aten.foo`` or an overload).

    Arguments arrive as :class:`Jet` (depends on ``x``), :class:`Cst` (does not) or Python values; the rule
    returns a :class:`Jet` (or a tuple for multi-output ops). Use :mod:`multijet.taylor` for the maths.
    """
    RULES[op] = rule


def lookup(target) -> Rule | None:
    rule = RULES.get(target)
    if rule is None and hasattr(target, "overloadpacket"):
        rule = RULES.get(target.overloadpacket)
    return rule


def _defs(ops, rule):
    for op in ops:
        RULES[op] = rule


def _is_jet(a) -> bool:
    return isinstance(a, Jet)


def _shape(a) -> tuple:
    if isinstance(a, Jet | Cst):
        return a.shape
    if isinstance(a, torch.Tensor):
        return tuple(a.shape)
    return ()


def _dt(a, default=None):
    return getattr(a, "dtype", default)


def _nd(d: int, nd: int) -> int:
    """A point axis (possibly negative) → its layout axis."""
    if nd == 0:
        return 2
    return d % nd + 2


def _as_co(E: Emitter, a, K: int) -> list:
    """Coefficient list of an operand: a jet's own, a constant's ``[c, None, …]``."""
    if isinstance(a, Jet):
        return a.c
    return [a] + [None] * K


# --- kind: linear ---------------------------------------------------------------------------------------------


def linear(E: Emitter, x: Jet, fn, out_shape, dtype=None, primal_fn=None) -> Jet:
    """Apply a linear map ``fn: Co -> Co`` to every coefficient (``primal_fn`` on ``x_0``)."""
    return E.jet(taylor.linear(x.c, fn, primal_fn), out_shape, dtype or x.dtype)


def _layout_linear(build: Callable[[Jet, tuple], tuple[Callable, tuple]]):
    """A linear op with axis arguments: ``build(x, args) -> (fn on Co, out_shape)``."""

    def rule(E, x, *args, **kwargs):
        if not _is_jet(x):
            raise _generic_needed
        fn, shape = build(E, x, *args, **kwargs)
        return linear(E, x, fn, shape)

    return rule


class _GenericNeeded(Exception):
    pass


_generic_needed = _GenericNeeded()


def _meta_shape(target, *args, **kwargs):
    """Output shape(s) of ``target`` from meta tensors standing in for the jets and constants."""

    def to_meta(a):
        if isinstance(a, Jet | Cst):
            return torch.empty(a.shape, dtype=a.dtype, device="meta")
        return a

    margs = pytree.tree_map(to_meta, args, is_leaf=lambda a: isinstance(a, Jet | Cst))
    mkw = pytree.tree_map(to_meta, kwargs, is_leaf=lambda a: isinstance(a, Jet | Cst))
    return target(*margs, **mkw)


def _view(E, x, shape, *_, **__):
    shape = tuple(int(s) for s in shape)
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        shape = tuple(math.prod(x.shape) // known if s == -1 else s for s in shape)
    return (lambda c: c.map(torch.reshape, E.lead(c) + list(shape), shape=shape)), shape


def _unsqueeze(E, x, dim):
    nd = len(x.shape) + 1
    d = dim % nd
    shape = x.shape[:d] + (1,) + x.shape[d:]
    return (lambda c: c.map(torch.unsqueeze, d + 2, shape=shape)), shape


def _squeeze(E, x, dims=None):
    nd = len(x.shape)
    if dims is None:
        dims = [i for i, s in enumerate(x.shape) if s == 1]
    elif isinstance(dims, int):
        dims = [dims]
    dims = sorted({d % nd for d in dims if x.shape[d % nd] == 1}) if nd else []
    shape = tuple(s for i, s in enumerate(x.shape) if i not in dims)
    if not dims:
        return (lambda c: c), shape
    return (lambda c: c.map(torch.squeeze, tuple(d + 2 for d in dims), shape=shape)), shape


def _transpose(E, x, d0, d1):
    nd = len(x.shape)
    if nd < 2 and d0 in (0, -1) and d1 in (0, -1):
        return (lambda c: c), x.shape
    a, b = d0 % nd, d1 % nd
    shape = list(x.shape)
    shape[a], shape[b] = shape[b], shape[a]
    return (lambda c: c.map(torch.transpose, a + 2, b + 2, shape=tuple(shape))), tuple(shape)


def _t(E, x):
    if len(x.shape) < 2:
        return (lambda c: c), x.shape
    return _transpose(E, x, 0, 1)


def _permute(E, x, dims):
    nd = len(x.shape)
    dims = [d % nd for d in dims]
    shape = tuple(x.shape[d] for d in dims)
    return (lambda c: c.map(torch.permute, [0, 1] + [d + 2 for d in dims], shape=shape)), shape


def _expand(E, x, size, implicit=False):
    size = list(size)
    nd = len(size)
    src = (1,) * (nd - len(x.shape)) + x.shape
    shape = tuple(src[i] if s == -1 else int(s) for i, s in enumerate(size))

    def fn(c):
        c = E.align(c, nd)
        return c.map(torch.Tensor.expand, [-1, -1, *shape], shape=shape)

    return fn, shape


def _reduce_dims(x, dims):
    nd = len(x.shape)
    if dims is None or (isinstance(dims, list | tuple) and len(dims) == 0):
        return list(range(nd))
    if isinstance(dims, int):
        dims = [dims]
    return sorted({d % nd for d in dims}) if nd else []


def _reducer(torch_fn):
    def build(E, x, dims=None, keepdim=False, *, dtype=None):
        ds = _reduce_dims(x, dims)
        shape = (
            tuple(1 if i in ds else s for i, s in enumerate(x.shape))
            if keepdim
            else tuple(s for i, s in enumerate(x.shape) if i not in ds)
        )
        if not ds:
            return (lambda c: c), shape
        lay = tuple(d + 2 for d in ds)
        return (lambda c: c.map(torch_fn, lay, keepdim=keepdim, shape=shape)), shape

    return build


def _reducer_all(torch_fn):
    def build(E, x, *, dtype=None):
        return _reducer(torch_fn)(E, x, None, False)

    return build


def _prims_sum(E, x, dims, *, output_dtype=None):
    return _reducer(torch.sum)(E, x, list(dims), False)


def _select(E, x, dim, index):
    nd = len(x.shape)
    d = dim % nd
    shape = x.shape[:d] + x.shape[d + 1 :]
    return (lambda c: c.map(torch.select, d + 2, index, shape=shape)), shape


def _slice(E, x, dim=0, start=None, end=None, step=1):
    nd = len(x.shape)
    d = dim % nd
    shape = tuple(_meta_shape(aten.slice.Tensor, torch.empty(x.shape, device="meta"), dim, start, end, step).shape)
    return (lambda c: c.map(aten.slice.Tensor, d + 2, start, end, step, shape=shape)), shape


def _narrow(E, x, dim, start, length):
    return _slice(E, x, dim, start, start + length, 1)


def _cumsum(E, x, dim, *, dtype=None):
    d = _nd(dim, len(x.shape))
    return (lambda c: c.map(torch.cumsum, d)), x.shape


def _flip(E, x, dims):
    lay = [_nd(d, len(x.shape)) for d in dims]
    return (lambda c: c.map(torch.flip, lay)), x.shape


def _index_select(E, x, dim, index):
    if isinstance(index, Jet):
        raise _generic_needed
    d = dim % len(x.shape)
    shape = x.shape[:d] + (index.shape[0] if index.shape else 1,) + x.shape[d + 1 :]
    if not index.shape:
        shape = x.shape[:d] + (1,) + x.shape[d + 1 :]
    return (lambda c: c.map(torch.index_select, d + 2, index, shape=shape)), shape


def _diagonal(E, x, offset=0, dim1=0, dim2=1):
    nd = len(x.shape)
    shape = tuple(_meta_shape(aten.diagonal.default, torch.empty(x.shape, device="meta"), offset, dim1, dim2).shape)
    return (lambda c: c.map(torch.diagonal, offset, dim1 % nd + 2, dim2 % nd + 2, shape=shape)), shape


def _identity(E, x, *args, **kwargs):
    return (lambda c: c), x.shape


def _to_copy(E, x, *, dtype=None, **kwargs):
    if dtype is None or dtype == x.dtype:
        return (lambda c: c), x.shape
    return (lambda c: c.map(torch.Tensor.to, dtype)), x.shape


def _broadcast_in_dim(E, x, shape, bdims):
    shape = tuple(int(s) for s in shape)
    inter = [1] * len(shape)
    for j, d in enumerate(bdims):
        inter[d] = x.shape[j]
    inter = tuple(inter)

    def fn(c):
        c = c.map(torch.reshape, E.lead(c) + list(inter), shape=inter)
        return c.map(torch.Tensor.expand, [-1, -1, *shape], shape=shape)

    return fn, shape


for _ops, _build in [
    ((aten.view, aten._unsafe_view, aten.reshape, aten.view_copy), _view),
    ((aten.unsqueeze, aten.unsqueeze_, aten.unsqueeze_copy), _unsqueeze),
    ((aten.squeeze, aten.squeeze_, aten.squeeze_copy), _squeeze),
    ((aten.transpose, aten.transpose_, aten.transpose_copy), _transpose),
    ((aten.t, aten.t_, aten.t_copy), _t),
    ((aten.permute, aten.permute_copy), _permute),
    ((aten.expand, aten.expand_copy), _expand),
    ((aten.select, aten.select_copy), _select),
    ((aten.slice, aten.slice_copy), _slice),
    ((aten.narrow,), _narrow),
    ((aten.cumsum,), _cumsum),
    ((aten.flip,), _flip),
    ((aten.index_select,), _index_select),
    ((aten.diagonal, aten.diagonal_copy), _diagonal),
    ((aten.clone, aten.alias, aten.contiguous, aten.lift_fresh_copy, aten.alias_copy, aten.positive), _identity),
    ((aten._to_copy,), _to_copy),
    ((prims.broadcast_in_dim,), _broadcast_in_dim),
    ((prims.sum,), _prims_sum),
]:
    _defs(_ops, _layout_linear(_build))

def _copy(E, dst, src, non_blocking=False):
    """``dst.copy_(src)`` after functionalisation: the values of ``src`` broadcast to ``dst``'s shape."""
    if not _is_jet(src) or (dst.dtype is not None and src.dtype is not None and dst.dtype != src.dtype):
        raise _generic_needed
    fn, shape = _expand(E, src, _shape(dst))
    return linear(E, src, fn, shape)


RULES[aten.copy] = _copy
RULES[aten.sum.dim_IntList] = _layout_linear(_reducer(torch.sum))
RULES[aten.sum.default] = _layout_linear(_reducer_all(torch.sum))
RULES[aten.mean.dim] = _layout_linear(_reducer(torch.mean))
RULES[aten.mean.default] = _layout_linear(_reducer_all(torch.mean))


def _neg(E, x):
    return linear(E, x, lambda c: -c, x.shape)


RULES[aten.neg] = _neg


def _cat(E, tensors, dim=0):
    pieces = [t for t in tensors if not (isinstance(t, Cst | Jet) and t.shape == (0,))]
    nd = max(len(_shape(t)) for t in pieces)
    d = dim % nd
    shape = list(_shape(pieces[0]))
    shape[d] = sum(_shape(t)[d] for t in pieces)
    shape = tuple(shape)
    K = E.K
    cols = [_as_co(E, t, K) for t in pieces]
    out = []
    for k in range(K + 1):
        level = [col[k] for col in cols]
        if all(v is None for v in level):
            out.append(None)
            continue
        cos = [v for v in level if isinstance(v, Co)]
        b, r = any(c.b for c in cos), max(c.r for c in cos)
        parts = []
        for t, v in zip(pieces, level, strict=True):
            if v is None:
                parts.append(E.zeros(_shape(t), t.dtype, b, r))
            elif isinstance(v, Cst):
                parts.append(E.expand_lead(E.lift(v), b, r))
            else:
                parts.append(E.expand_lead(v, b, r))
        out.append(Co(E, E.call(torch.cat, [p.node for p in parts], d + 2), b, r, shape))
    return E.jet(out, shape, _dt(pieces[0]))


RULES[aten.cat] = _cat


def _stack(E, tensors, dim=0):
    nd = len(_shape(tensors[0])) + 1
    d = dim % nd
    ups = []
    for t in tensors:
        if isinstance(t, Jet):
            fn, shape = _unsqueeze(E, t, d)
            ups.append(linear(E, t, fn, shape))
        else:
            ups.append(Cst(E.call(torch.unsqueeze, t.node, d), t.shape[:d] + (1,) + t.shape[d:], t.dtype))
    return _cat(E, ups, d)


RULES[aten.stack] = _stack


def _split_like(target):
    def rule(E, x, *args, **kwargs):
        if not _is_jet(x):
            raise _generic_needed
        outs = _meta_shape(target, x, *args, **kwargs)
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        d = _nd(dim, len(x.shape))
        res = []
        starts = 0
        for o in outs:
            n = o.shape[d - 2]
            shape = tuple(o.shape)
            s0 = starts
            res.append(
                linear(
                    E,
                    x,
                    lambda c, s0=s0, n=n, shape=shape: c.map(aten.slice.Tensor, d, s0, s0 + n, 1, shape=shape),
                    shape,
                )
            )
            starts += n
        return tuple(res)

    return rule


RULES[aten.split.Tensor] = _split_like(aten.split.Tensor)
RULES[aten.split_with_sizes] = _split_like(aten.split_with_sizes.default)


def _unbind(E, x, dim=0):
    n = x.shape[dim % len(x.shape)]
    return tuple(linear(E, x, *_select(E, x, dim, i)) for i in range(n))


RULES[aten.unbind] = _unbind


def _index(E, x, indices):
    """``x[..., idx, ...]`` with constant index tensors: linear, when the advanced indices are adjacent."""
    if not _is_jet(x) or any(isinstance(i, Jet) for i in indices):
        raise _generic_needed
    pos = [i for i, v in enumerate(indices) if v is not None]
    if pos and pos != list(range(pos[0], pos[-1] + 1)):
        raise _generic_needed
    shape = tuple(_meta_shape(aten.index.Tensor, x, indices).shape)
    idx = [None, None] + list(indices)
    return linear(E, x, lambda c: c.map(aten.index.Tensor, idx, shape=shape), shape)


RULES[aten.index.Tensor] = _index


# --- kind: add / scale / where ----------------------------------------------------------------------------------


def _out_shape(*args):
    return tuple(torch.broadcast_shapes(*[_shape(a) for a in args]))


def _result_dtype(*args):
    dts = [a.dtype for a in args if isinstance(a, Jet | Cst)]
    return dts[0] if dts else torch.get_default_dtype()


def _add(E, a, b, *, alpha=1):
    shape, dtype = _out_shape(a, b), _result_dtype(a, b)
    if alpha != 1:
        b = _scale_any(E, b, alpha)
    if _is_jet(a) and _is_jet(b):
        return E.jet(taylor.add(a.c, b.c), shape, dtype)
    x, k = (a, b) if _is_jet(a) else (b, a)
    return E.jet(taylor.linear(x.c, lambda c: c, lambda c0: c0 + k), shape, dtype)


def _scale_any(E, v, s):
    if isinstance(v, Jet):
        return E.jet(taylor.scale(v.c, s), v.shape, v.dtype)
    if isinstance(v, Cst):
        return Cst(E.call(operator.mul, v.node, s), v.shape, v.dtype)
    return v * s


def _sub(E, a, b, *, alpha=1):
    return _add(E, a, b, alpha=-alpha)


def _rsub(E, a, b, *, alpha=1):
    return _add(E, b, a, alpha=1) if alpha == -1 else _add(E, _scale_any(E, a, -alpha), b)


def _mul(E, a, b):
    shape, dtype = _out_shape(a, b), _result_dtype(a, b)
    if _is_jet(a) and _is_jet(b):
        if a.derivfree:
            a, b = b, a
        if b.derivfree:
            return E.jet(taylor.scale(a.c, b.c[0]), shape, dtype)
        return E.jet(taylor.product(a.c, b.c, E.ctx), shape, dtype)
    x, k = (a, b) if _is_jet(a) else (b, a)
    return E.jet(taylor.scale(x.c, k), shape, dtype)


def _reciprocal(E, x):
    return _unary_apply(E, "reciprocal", torch.reciprocal, x)


def _div(E, a, b, rounding_mode=None):
    if rounding_mode is not None:
        return _nondiff_apply(E, torch.div, a, b, rounding_mode=rounding_mode)
    if not _is_jet(b) or b.derivfree:
        shape, dtype = _out_shape(a, b), _result_dtype(a, b)
        k = b.c[0] if _is_jet(b) else b
        return E.jet(taylor.linear(a.c, lambda c: c / k), shape, dtype)
    return _mul(E, a, _reciprocal(E, b))


def _where(E, cond, a, b):
    shape, dtype = _out_shape(cond, a, b), _result_dtype(a, b)
    cnd = cond.c[0] if isinstance(cond, Jet) else cond
    A, B = _as_co(E, a, E.K), _as_co(E, b, E.K)
    nd = len(shape)
    out = []
    for k in range(E.K + 1):
        x, y = A[k], B[k]
        if x is None and y is None:
            out.append(None)
            continue
        cos = [v for v in (x, y, cnd if k == 0 else None) if isinstance(v, Co)]
        bb, r = any(c.b for c in cos), max(c.r for c in cos)
        c = E.align(cnd, nd) if isinstance(cnd, Co) else cnd
        node = E.call(torch.where, c, _where_operand(E, x, nd), _where_operand(E, y, nd))
        out.append(Co(E, node, bb or (isinstance(c, Co) and c.b), r, shape))
    return E.jet(out, shape, dtype)


def _where_operand(E, v, nd):
    if v is None:
        return 0.0
    if isinstance(v, Co):
        return E.align(v, nd)
    return v  # Cst: broadcasts from the right


def _clamp(E, x, lo=None, hi=None):
    if not _is_jet(x):
        raise _generic_needed
    x0 = x.c[0]
    y0 = x0.map(torch.clamp, _node_or(lo), _node_or(hi))
    if x.derivfree:
        return E.jet([y0] + [None] * E.K, x.shape, x.dtype)
    mask = None
    if lo is not None:
        mask = x0.map(torch.ge, _node_or(lo))
    if hi is not None:
        m2 = x0.map(torch.le, _node_or(hi))
        mask = m2 if mask is None else mask.map(torch.logical_and, m2.node)
    if mask is None:
        return x
    maskf = mask.map(torch.Tensor.to, x.dtype)
    out = [y0] + [None if c is None else c * maskf for c in x.c[1:]]
    return E.jet(out, _out_shape(x, *(v for v in (lo, hi) if isinstance(v, Cst | Jet))), x.dtype)


def _node_or(v):
    if isinstance(v, Cst | Co):
        return v.node
    if isinstance(v, Jet):
        return v.c[0].node
    return v


def _clamp_min(E, x, lo):
    return _clamp(E, x, lo, None)


def _clamp_max(E, x, hi):
    return _clamp(E, x, None, hi)


def _hardtanh(E, x, lo=-1.0, hi=1.0):
    return _clamp(E, x, lo, hi)


def _maximum(E, a, b, flip=False):
    c0a, c0b = (a.c[0] if _is_jet(a) else a), (b.c[0] if _is_jet(b) else b)
    cmp = torch.le if flip else torch.ge
    if isinstance(c0a, Co):
        nd = len(_out_shape(a, b))
        an = E.align(c0a, nd)
        bn = E.align(c0b, nd) if isinstance(c0b, Co) else c0b
        cond = Co(E, E.call(cmp, an.node, _node_or(bn)), an.b or (isinstance(bn, Co) and bn.b), 1, _out_shape(a, b))
    else:
        bn = E.align(c0b, len(_out_shape(a, b)))
        cond = Co(E, E.call(cmp, _node_or(c0a), bn.node), bn.b, 1, _out_shape(a, b))
    return _where(E, Jet([cond] + [None] * E.K, cond.shape, torch.bool), a, b)


def _leaky_relu(E, x, slope=0.01):
    x0 = x.c[0]
    y0 = x0.map(torch.nn.functional.leaky_relu, slope)
    pos = x0.map(torch.gt, 0)
    fac = pos.map(torch.where, 1.0, slope).map(torch.Tensor.to, x.dtype)
    return E.jet([y0] + [None if c is None else c * fac for c in x.c[1:]], x.shape, x.dtype)


_defs([aten.add.Tensor, aten.add.Scalar, prims.add], _add)
_defs([aten.sub.Tensor, aten.sub.Scalar, prims.sub], _sub)
_defs([aten.rsub.Tensor, aten.rsub.Scalar], _rsub)
_defs([aten.mul.Tensor, aten.mul.Scalar, prims.mul], _mul)
_defs([aten.div.Tensor, aten.div.Scalar, aten.div.Tensor_mode, prims.div], _div)
_defs([aten.where.self, aten.where.ScalarSelf, aten.where.ScalarOther, aten.where.Scalar], _where)
_defs([aten.clamp.default, aten.clamp.Tensor], _clamp)
_defs([aten.clamp_min], _clamp_min)
_defs([aten.clamp_max], _clamp_max)
_defs([aten.hardtanh], _hardtanh)
RULES[aten.maximum] = _maximum
RULES[aten.minimum] = lambda E, a, b: _maximum(E, a, b, flip=True)
RULES[aten.leaky_relu] = _leaky_relu


# --- kind: elementwise (derivative tables) --------------------------------------------------------------------


def _unary_apply(E, name, torch_fn, x, *fn_args, **params):
    x0 = x.c[0]
    y0 = x0.map(torch_fn, *fn_args)
    if x.derivfree:
        return E.jet([y0] + [None] * E.K, x.shape, x.dtype)
    derivs = derivatives(name, XP, x0, y0, E.K, **params)
    return E.jet(taylor.elementwise(x.c, y0, derivs, E.ctx), x.shape, x.dtype)


def elementwise(name: str, torch_fn):
    """Rule for ``y = g(x)`` from the shared derivative table ``name`` (Faà di Bruno)."""

    def rule(E, x):
        return _unary_apply(E, name, torch_fn, x)

    return rule


for _op, _name, _fn in [
    (aten.tanh, "tanh", torch.tanh), (aten.sigmoid, "sigmoid", torch.sigmoid), (aten.sin, "sin", torch.sin),
    (aten.cos, "cos", torch.cos), (aten.tan, "tan", torch.tan), (aten.exp, "exp", torch.exp),
    (aten.expm1, "expm1", torch.expm1), (aten.log, "log", torch.log), (aten.log1p, "log1p", torch.log1p),
    (aten.sqrt, "sqrt", torch.sqrt), (aten.rsqrt, "rsqrt", torch.rsqrt),
    (aten.reciprocal, "reciprocal", torch.reciprocal),
    (aten.abs, "abs", torch.abs), (aten.relu, "relu", torch.relu), (aten.asin, "asin", torch.asin),
    (aten.acos, "acos", torch.acos), (aten.atan, "atan", torch.atan), (aten.asinh, "asinh", torch.asinh),
    (aten.acosh, "acosh", torch.acosh), (aten.atanh, "atanh", torch.atanh), (aten.sinh, "sinh", torch.sinh),
    (aten.cosh, "cosh", torch.cosh), (aten.erf, "erf", torch.erf), (aten.square, "square", torch.square),
    (prims.exp, "exp", torch.exp), (prims.tanh, "tanh", torch.tanh), (prims.rsqrt, "rsqrt", torch.rsqrt),
    (prims.sqrt, "sqrt", torch.sqrt), (prims.log, "log", torch.log),
]:  # fmt: skip
    RULES[_op] = elementwise(_name, _fn)


def _softplus(E, x, beta=1, threshold=20):
    if beta != 1:
        raise _generic_needed
    return _unary_apply(E, "softplus", torch.nn.functional.softplus, x)


RULES[aten.softplus] = _softplus


def _pow_scalar_exp(E, x, p):
    if not _is_jet(x):
        raise _generic_needed
    p = float(p) if not isinstance(p, bool) else float(int(p))
    if p == 1.0:
        return x
    if p == 0.0:
        return E.jet([x.c[0].map(torch.ones_like)] + [None] * E.K, x.shape, x.dtype)
    exponent = int(p) if p.is_integer() else p
    return _unary_apply(E, "pow", torch.pow, x, exponent, exponent=p)


def _pow(E, a, b):
    if isinstance(b, int | float):
        return _pow_scalar_exp(E, a, b)
    if isinstance(a, int | float):  # c^x = exp(x log c)
        return _unary_apply(E, "exp", torch.exp, _mul(E, b, math.log(a)))
    # a^b = exp(b log a)
    la = _unary_apply(E, "log", torch.log, a) if _is_jet(a) else Cst(E.call(torch.log, a.node), a.shape, a.dtype)
    return _unary_apply(E, "exp", torch.exp, _mul(E, b, la))


_defs([aten.pow.Tensor_Scalar, aten.pow.Tensor_Tensor, aten.pow.Scalar, prims.pow], _pow)


# --- kind: nondiff (derivative zero almost everywhere) -------------------------------------------------------


def _nondiff_apply(E, fn, *args, **kwargs):
    shape = tuple(torch.broadcast_shapes(*[_shape(a) for a in args if isinstance(a, Jet | Cst)]))
    nd = len(shape)
    cos = [a.c[0] for a in args if isinstance(a, Jet)]
    vals = [E.align(a.c[0], nd) if isinstance(a, Jet) else a for a in args]
    node = E.call(fn, *vals, **kwargs)
    c = Co(E, node, any(c.b for c in cos), 1, shape)
    return Jet([c] + [None] * E.K, shape, None)


def nondiff(fn):
    def rule(E, *args, **kwargs):
        return _nondiff_apply(E, fn, *args, **kwargs)

    return rule


for _op, _fn in [
    (aten.sign, torch.sign), (aten.floor, torch.floor), (aten.ceil, torch.ceil), (aten.round, torch.round),
    (aten.trunc, torch.trunc), (aten.gt, torch.gt), (aten.lt, torch.lt), (aten.ge, torch.ge), (aten.le, torch.le),
    (aten.eq, torch.eq), (aten.ne, torch.ne), (aten.logical_and, torch.logical_and),
    (aten.logical_or, torch.logical_or), (aten.logical_not, torch.logical_not), (aten.logical_xor, torch.logical_xor),
    (aten.isnan, torch.isnan), (aten.isinf, torch.isinf), (aten.isfinite, torch.isfinite),
    (aten.bitwise_and, torch.bitwise_and), (aten.bitwise_or, torch.bitwise_or), (aten.bitwise_not, torch.bitwise_not),
    (aten.heaviside, torch.heaviside),
]:  # fmt: skip
    RULES[_op] = nondiff(_fn)


def _detach(E, x):
    return Jet([x.c[0]] + [None] * E.K, x.shape, x.dtype)


_defs([aten.detach, aten.detach_copy], _detach)


def _argreduce(fn):
    def rule(E, x, dim=None, keepdim=False):
        if dim is None:
            flat = x.c[0].map(torch.reshape, E.lead(x.c[0]) + [-1], shape=(math.prod(x.shape),))
            node = E.call(fn, flat.node, 2, keepdim=False)
            shape = ()
        else:
            d = dim % len(x.shape)
            node = E.call(fn, x.c[0].node, d + 2, keepdim=keepdim)
            shape = _meta_shape(getattr(aten, fn.__name__).default, x, dim, keepdim).shape
        return Jet([Co(E, node, x.c[0].b, 1, tuple(shape))] + [None] * E.K, tuple(shape), torch.int64)

    return rule


RULES[aten.argmax] = _argreduce(torch.argmax)
RULES[aten.argmin] = _argreduce(torch.argmin)


# --- kind: bilinear ---------------------------------------------------------------------------------------------


def bilinear(E, a, b, mul, shape, dtype) -> Jet:
    """Leibniz for ``B(a, b)``; with one constant operand it is linear in the other."""
    if _is_jet(a) and _is_jet(b) and not (a.derivfree or b.derivfree):
        return E.jet(taylor.product(a.c, b.c, E.ctx, mul), shape, dtype)
    if _is_jet(a) and (not _is_jet(b) or b.derivfree):
        k = b.c[0] if _is_jet(b) else b
        return E.jet(taylor.linear(a.c, lambda c: mul(c, k)), shape, dtype)
    k = a.c[0] if _is_jet(a) else a
    return E.jet(taylor.linear(b.c, lambda c: mul(k, c)), shape, dtype)


def _mm_mul(E, shape):
    """Matrix product of layouts ``(…, m, k) @ (…, k, n)``; a constant left operand uses one GEMM."""

    def mul(x, y):
        if isinstance(x, Co) and isinstance(y, Co):
            return Co(E, E.call(torch.matmul, x.node, y.node), x.b or y.b, max(x.r, y.r), shape)
        if isinstance(x, Co):
            return x.map(torch.matmul, y.node, shape=shape)
        # (A @ c) = (cᵀ Aᵀ)ᵀ: one GEMM over the flattened leading axes when A is 2-D
        if len(x.shape) == 2:
            ct = y.map(torch.transpose, -1, -2)
            at = E.call(torch.transpose, x.node, 0, 1)
            return ct.map(torch.matmul, at).map(torch.transpose, -1, -2, shape=shape)
        return Co(E, E.call(torch.matmul, x.node, y.node), y.b, y.r, shape)

    return mul


def _mm(E, a, b):
    shape = tuple(_meta_shape(aten.matmul.default, a, b).shape)
    return bilinear(E, a, b, _mm_mul(E, shape), shape, _result_dtype(a, b))


def _mv(E, A, v):
    shape = (A.shape[0],)

    def mul(x, y):
        if isinstance(x, Co) and isinstance(y, Co):
            yy = y.map(torch.unsqueeze, -1, shape=y.shape + (1,))
            return Co(E, E.call(torch.matmul, x.node, yy.node), x.b or y.b, max(x.r, y.r), shape + (1,)).map(
                torch.squeeze, -1, shape=shape
            )
        if isinstance(x, Co):
            return x.map(torch.matmul, y.node, shape=shape)
        return y.map(torch.matmul, E.call(torch.transpose, x.node, 0, 1), shape=shape)

    return bilinear(E, A, v, mul, shape, _result_dtype(A, v))


def _dot(E, a, b):
    def mul(x, y):
        p = x * y
        return p.map(torch.sum, -1, shape=())

    return bilinear(E, a, b, mul, (), _result_dtype(a, b))


def _addmm(E, bias, a, b, *, beta=1, alpha=1):
    prod = _mm(E, a, b)
    if alpha != 1:
        prod = _scale_any(E, prod, alpha)
    return _add(E, _scale_any(E, bias, beta) if beta != 1 else bias, prod)


def _addmv(E, bias, A, v, *, beta=1, alpha=1):
    prod = _mv(E, A, v)
    if alpha != 1:
        prod = _scale_any(E, prod, alpha)
    return _add(E, _scale_any(E, bias, beta) if beta != 1 else bias, prod)


_defs([aten.mm, aten.bmm, aten.matmul], _mm)
RULES[aten.mv] = _mv
_defs([aten.dot, aten.vdot], _dot)
_defs([aten.addmm], _addmm)
_defs([aten.baddbmm], _addmm)
_defs([aten.addmv], _addmv)


def _convolution(E, x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    if not _is_jet(x) or _is_jet(w) or _is_jet(bias):
        raise _generic_needed
    out = tuple(
        _meta_shape(
            aten.convolution.default, x, w, bias, stride, padding, dilation, transposed, output_padding, groups
        ).shape
    )
    args = (stride, padding, dilation, transposed, output_padding, groups)

    def conv(c, with_bias):
        flat = c.map(torch.reshape, [-1, *x.shape[1:]], shape=x.shape)
        node = E.call(
            aten.convolution.default, flat.node, w.node, bias.node if (with_bias and bias is not None) else None, *args
        )
        return Co(E, E.call(torch.reshape, node, E.lead(c) + list(out)), c.b, c.r, out)

    return linear(E, x, lambda c: conv(c, False), out, primal_fn=lambda c: conv(c, True))


RULES[aten.convolution] = _convolution


# --- kind: composite ------------------------------------------------------------------------------------------


def _var(E, x, dims=None, correction=None, keepdim=False, *, unbiased=None):
    if correction is None:
        correction = 1 if unbiased is None or unbiased else 0
    ds = _reduce_dims(x, dims)
    n = math.prod(x.shape[d] for d in ds)
    fn, mshape = _reducer(torch.mean)(E, x, ds, True)
    m = linear(E, x, fn, mshape)
    d = _sub(E, x, m)
    sq = _mul(E, d, d)
    fn, shape = _reducer(torch.sum)(E, sq, ds, keepdim)
    s = linear(E, sq, fn, shape)
    return _scale_any(E, s, 1.0 / (n - correction))


def _prims_var(E, x, dims, correction=1, *, output_dtype=None):
    return _var(E, x, list(dims), correction, False)


def _var_mean(E, x, dims=None, *, correction=None, keepdim=False):
    v = _var(E, x, dims, correction, keepdim)
    fn, shape = _reducer(torch.mean)(E, x, dims, keepdim)
    return v, linear(E, x, fn, shape)


def _var_aten(E, x, dims=None, *, correction=None, keepdim=False):
    return _var(E, x, dims, correction, keepdim)


RULES[prims.var] = _prims_var
RULES[aten.var.correction] = _var_aten
RULES[aten.var_mean.correction] = _var_mean


def _std(E, x, dims=None, *, correction=None, keepdim=False):
    return _unary_apply(E, "sqrt", torch.sqrt, _var(E, x, dims, correction, keepdim))


RULES[aten.std.correction] = _std


# --- kind: generic (nested forward-mode AD of the op) -----------------------------------------------------


@dataclass
class GenericSpec:
    target: Any
    name: str
    where: str | None
    treedef: Any
    kinds: list  # per leaf: "jet", "const", "py"
    pyvals: list
    K: int
    R: int
    collapsed: bool
    float_out: list  # per output leaf: is floating
    out_tree: Any
    nouts: int


_GENERIC: list[GenericSpec] = []

_RANDOM_OPS = {
    "rand_like",
    "randn_like",
    "bernoulli",
    "dropout",
    "native_dropout",
    "randint_like",
    "multinomial",
    "normal",
}


def is_random_op(target) -> bool:
    """Whether ``target`` draws random numbers (dropout, ``randn_like``, …): no Taylor expansion exists."""
    name = getattr(target, "__name__", str(target))  # "bernoulli.p", "native_dropout.default", …
    return name.split(".")[0] in _RANDOM_OPS


def refuse_random_op(target, where) -> None:
    if is_random_op(target):
        raise UnsupportedPrimitiveError(
            _op_name(target),
            "torch",
            where,
            hint="random operations have no Taylor expansion (and would draw one sample for the whole batch); "
            "remove them, e.g. call net.eval() to turn dropout off.",
        )


def generic_rule(E, target, args, kwargs, out_meta, where):
    """The fallback: emit a call of :func:`generic_call`, nested ``torch.func.jvp`` of ``target``."""
    name = _op_name(target)
    refuse_random_op(target, where)
    if getattr(target, "namespace", None) == "prims":
        # prims ops carry no derivative formula: torch.func.jvp would return a zero tangent without complaint
        raise UnsupportedPrimitiveError(
            name,
            "torch",
            where,
            hint="torch's prims operations have no derivative formula, so no generic rule can differentiate them; "
            "use the corresponding torch.* / aten operation, or register a rule with "
            f"multijet.backends.torch.register_rule(torch.ops.{name}, rule).",
        )
    if STRICT:
        raise UnsupportedPrimitiveError(
            name,
            "torch",
            where,
            hint=f"no hand-written rule and multijet.backends.torch_rules.STRICT is set; register one with "
            f"multijet.backends.torch.register_rule(torch.ops.{name}, rule) or unset STRICT to use the generic rule.",
        )
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(
            f"multijet: no hand-written Taylor rule for {name}; using the generic rule (nested forward-mode AD of "
            "the op, exact but slower). Register one with multijet.backends.torch.register_rule.",
            stacklevel=2,
        )
    leaves, treedef = pytree.tree_flatten((args, kwargs), is_leaf=lambda a: isinstance(a, Jet | Cst))
    kinds, pyvals, flat_nodes = [], [], []
    b = False
    for leaf in leaves:
        if isinstance(leaf, Jet):
            kinds.append("jet")
            pyvals.append(None)
            flat_nodes.extend(c.node if c is not None else None for c in leaf.c)
            b = b or any(c.b for c in leaf.c if c is not None)
        elif isinstance(leaf, Cst):
            kinds.append("const")
            pyvals.append(None)
            flat_nodes.append(leaf.node)
        else:
            kinds.append("py")
            pyvals.append(leaf)
    out_leaves, out_tree = pytree.tree_flatten(out_meta)
    float_out = [isinstance(o, torch.Tensor) and o.is_floating_point() for o in out_leaves]
    has_dir = any(
        c is not None
        for leaf in leaves
        if isinstance(leaf, Jet) and leaf.dtype is not None and leaf.dtype.is_floating_point
        for c in leaf.c[1:]
    )
    spec = GenericSpec(
        target, name, where, treedef, kinds, pyvals, E.K, E.R, E.ctx.collapsed, float_out, out_tree, len(out_leaves)
    )
    _GENERIC.append(spec)
    key = len(_GENERIC) - 1
    call = E.graph.call_function(generic_call, (key, E._w, *flat_nodes))
    K = E.K
    results = []
    idx = 0
    for o, fl in zip(out_leaves, float_out, strict=True):
        shape = tuple(o.shape)
        coeffs = []
        for k in range(K + 1):
            if k > 0 and not (fl and has_dir):
                coeffs.append(None)
            else:
                r = 1 if k == 0 or (E.ctx.collapsed and k == K) else E.R
                coeffs.append(Co(E, E.graph.call_function(operator.getitem, (call, idx + k)), b, r, shape))
        idx += K + 1
        results.append(Jet(coeffs, shape, o.dtype))
    return pytree.tree_unflatten(results, out_tree)


def _op_name(target) -> str:
    name = getattr(target, "__name__", str(target))
    ns = getattr(target, "namespace", None)
    return f"{ns}.{name}" if ns else name


def generic_call(key: int, w, *flat):
    """Runtime of the generic rule: Taylor coefficients of ``op`` from nested ``torch.func.jvp``.

    Along each direction, the univariate polynomial ``x(t) = Σ_k x_k t^k / k!`` is pushed through the op and
    ``y_k = d^k/dt^k op(x(t))|₀`` read off by ``k`` nested jvps (exact at any order). Collapsed, the top is
    ``S_K(y) = J·S_K(x) + Σ_r w_r y_K^{(r)}|_{x_K = 0}``.
    """
    spec = _GENERIC[key]
    try:
        return _generic_eval(spec, w, flat)
    except UnsupportedPrimitiveError:
        raise
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as e:
        raise UnsupportedPrimitiveError(
            spec.name,
            "torch",
            spec.where,
            hint=f"the generic rule (nested torch.func.jvp under vmap) failed: {type(e).__name__}: {str(e)[:300]}. "
            f"Register a hand-written rule with multijet.backends.torch.register_rule(torch.ops.{spec.name}, rule).",
        ) from e


def _generic_eval(spec: GenericSpec, w, flat):
    K, R, collapsed = spec.K, spec.R, spec.collapsed
    it = iter(flat)
    jets, consts = [], []
    for kind in spec.kinds:
        if kind == "jet":
            jets.append([next(it) for _ in range(K + 1)])
        elif kind == "const":
            consts.append(next(it))
    Nb = max(c.shape[0] for j in jets for c in j if c is not None)
    floating = [j[0].is_floating_point() for j in jets]
    Kp = K - 1 if collapsed else K

    def rebuild(jet_vals, const_vals):
        ji, ci = iter(jet_vals), iter(const_vals)
        leaves = []
        for kind, pv in zip(spec.kinds, spec.pyvals, strict=True):
            leaves.append(next(ji) if kind == "jet" else next(ci) if kind == "const" else pv)
        args, kwargs = pytree.tree_unflatten(leaves, spec.treedef)
        return spec.target(*args, **kwargs)

    def flat_out(out):
        return pytree.tree_flatten(out)[0]

    def lanes(c, r):  # (b, r', *s) -> (Nb * r, *s)
        return c.expand(Nb, r, *c.shape[2:]).reshape(Nb * r, *c.shape[2:])

    has_dir = any(c is not None for j, fl in zip(jets, floating, strict=True) if fl for c in j[1:])
    nouts = spec.nouts
    results: list = [None] * (nouts * (K + 1))
    if not has_dir:
        x0s = [lanes(j[0], 1) for j in jets]
        outs = torch.func.vmap(lambda xs: tuple(flat_out(rebuild(xs, consts))))(x0s)
        for i, o in enumerate(outs):
            results[i * (K + 1)] = o.reshape(Nb, 1, *o.shape[1:])
        return tuple(results)

    fidx = [i for i, f in enumerate(spec.float_out) if f]
    x0s = [lanes(j[0], R) for j in jets]
    xks = [
        [lanes(j[k], R) if (fl and j[k] is not None and k <= Kp) else None for k in range(1, K + 1)]
        for j, fl in zip(jets, floating, strict=True)
    ]

    present = [[c is not None for c in xk] for xk in xks]
    xk_flat = [c for xk in xks for c in xk if c is not None]

    def point(x0s_, xk_flat_):
        it_k = iter(xk_flat_)
        xks_ = [[next(it_k) if p else None for p in pr] for pr in present]

        def at(t):
            vals = []
            for x0, xk in zip(x0s_, xks_, strict=True):
                v = x0
                for k, c in enumerate(xk, 1):
                    if c is not None:
                        v = v + c * (t**k / math.factorial(k))
                vals.append(v)
            out = flat_out(rebuild(vals, consts))
            return tuple(out[i] for i in fidx)

        fns = [at]
        for _ in range(K):
            prev = fns[-1]

            def nxt(t, prev=prev):
                p, tan = torch.func.jvp(prev, (t,), (torch.ones_like(t),))
                return tuple(p) + tuple(tan[-len(fidx) :])

            fns.append(nxt)
        t0 = torch.zeros(
            (), dtype=x0s_[0].dtype if x0s_[0].is_floating_point() else torch.float64, device=x0s_[0].device
        )
        for x0 in x0s_:
            if x0.is_floating_point():
                t0 = torch.zeros((), dtype=x0.dtype, device=x0.device)
                break
        return fns[K](t0)

    outs = torch.func.vmap(point)(x0s, xk_flat)  # (K+1) * nf tensors of (Nb*R, *s)
    nf = len(fidx)
    for k in range(K + 1):
        for j, i in enumerate(fidx):
            o = outs[k * nf + j]
            o = o.reshape(Nb, R, *o.shape[1:])
            results[i * (K + 1) + k] = o[:, :1] if k == 0 else o
    if collapsed:
        for i in fidx:
            top = results[i * (K + 1) + K]
            results[i * (K + 1) + K] = (
                (top * w.reshape(R, *[1] * (top.dim() - 2)).to(top.dtype)).sum(1, keepdim=True) if K > 1 else None
            )
        tops = [j[K] if fl else None for j, fl in zip(jets, floating, strict=True)]
        if any(t is not None for t in tops):
            p0 = [lanes(j[0], 1) for j in jets]
            tan = [
                lanes(t, 1) if t is not None else torch.zeros_like(p)
                for t, p in zip(tops, p0, strict=True)
                if p.is_floating_point()
            ]
            isf = [p.is_floating_point() for p in p0]

            def jvp_point(p0_, tan_):
                def fn(*fl_args):
                    it2 = iter(fl_args)
                    vals = [next(it2) if f_ else p for p, f_ in zip(p0_, isf, strict=True)]
                    out = flat_out(rebuild(vals, consts))
                    return tuple(out[i] for i in fidx)

                prim = tuple(p for p, f_ in zip(p0_, isf, strict=True) if f_)
                return torch.func.jvp(fn, prim, tuple(tan_))[1]

            jv = torch.func.vmap(jvp_point)(p0, tan)
            for j, i in enumerate(fidx):
                o = jv[j].reshape(Nb, 1, *jv[j].shape[1:])
                cur = results[i * (K + 1) + K]
                results[i * (K + 1) + K] = o if cur is None else cur + o
        for i in fidx:
            if results[i * (K + 1) + K] is None:
                ref = results[i * (K + 1)]
                results[i * (K + 1) + K] = torch.zeros_like(ref)
    # non-floating outputs: primal only
    nonf = [i for i, f in enumerate(spec.float_out) if not f]
    if nonf:
        x0p = [lanes(j[0], 1) for j in jets]
        outs0 = torch.func.vmap(lambda xs: tuple(flat_out(rebuild(xs, consts))))(x0p)
        for i in nonf:
            results[i * (K + 1)] = outs0[i].reshape(Nb, 1, *outs0[i].shape[1:])
    return tuple(results)


# decompositions applied while capturing: ops that compose from ops with rules
def decompositions():
    from torch._decomp import get_decompositions

    return get_decompositions(
        [
            aten.silu, aten.gelu, aten.elu, aten.celu, aten.selu, aten.mish, aten.hardswish, aten.hardsigmoid,
            aten.native_layer_norm, aten._softmax, aten._log_softmax, aten.logsumexp, aten.log_sigmoid_forward,
            aten.linalg_vector_norm, aten.logaddexp, aten.xlogy, aten.sigmoid_backward,
            aten.native_group_norm, aten.addcmul, aten.addcdiv, aten.lerp, aten.frac,
            aten.glu, aten.softplus_backward, aten.norm, aten.dist, aten.cosine_similarity,
        ]
    )  # fmt: skip


def _check_errors(E, info, api_name, *, is_matrix=True):
    """``_linalg_check_errors``: keep the check, on the batched ``info`` (layout axes in front)."""
    node = info.c[0].node if isinstance(info, Jet) else info.node
    E.graph.call_function(aten._linalg_check_errors.default, (node, api_name), {"is_matrix": False})
    return None


RULES[aten._linalg_check_errors] = _check_errors


# --- linear algebra: composites of the shared product rule --------------------------------------------------
# torch's forward-mode formulas of LU-based ops (slogdet, det, solve, inv) read their LU outputs, whose tangents
# are not tracked, so nested jvps of them are wrong beyond first order: these rules avoid the generic fallback.
# With M = A_0^{-1}(A − A_0) (no constant term): A^{-1} = Σ_j (−M)^j A_0^{-1}, log|det A| = log|det A_0| +
# Σ_{j≥1} (−1)^{j+1} tr(M^j) / j, both truncated at j = K — exact Taylor coefficients up to order K.


def _mat_mul(E, shape):
    def mul(x, y):
        if isinstance(x, Co) and isinstance(y, Co):
            return Co(E, E.call(torch.matmul, x.node, y.node), x.b or y.b, max(x.r, y.r), shape)
        return _mm_mul(E, shape)(x, y)

    return mul


def _trace(c: Co) -> Co:
    d = c.map(torch.diagonal, 0, -2, -1, shape=c.shape[:-2] + (c.shape[-1],))
    return d.map(torch.sum, -1, shape=c.shape[:-2])


def _series_M(E, A: Jet, inv0: Co) -> list:
    mul = _mat_mul(E, A.shape)
    return [None] + [None if c is None else mul(inv0, c) for c in A.c[1:]]


def _inverse_jet(E, A: Jet):
    """Jet of ``A^{-1}`` and the ``info`` of the inversion at ``x_0``."""
    A0 = A.c[0]
    res = E.call(torch.linalg.inv_ex, A0.node)
    inv0 = Co(E, E.call(operator.getitem, res, 0), A0.b, 1, A.shape)
    info = Co(E, E.call(operator.getitem, res, 1), A0.b, 1, A.shape[:-2])
    if A.derivfree:
        return Jet([inv0] + [None] * E.K, A.shape, A.dtype), info
    n = A.shape[-1]
    mul = _mat_mul(E, A.shape)
    negM = taylor.scale(_series_M(E, A, inv0), -1.0)
    eye = Co(
        E, E.call(torch.reshape, E.call(torch.eye, n, dtype=A.dtype, device=E.device), [1, 1, n, n]), False, 1, (n, n)
    )
    term = [eye] + [None] * E.K
    total = list(term)
    for _ in range(E.K):
        term = taylor.product(term, negM, E.ctx, mul)
        total = taylor.add(total, term)
    out = taylor.linear(total, lambda c: mul(c, inv0))
    return E.jet(out, A.shape, A.dtype), info


def _logabsdet_jet(E, A: Jet, lad0: Co) -> Jet:
    if A.derivfree:
        return Jet([lad0] + [None] * E.K, A.shape[:-2], A.dtype)
    inv0 = Co(E, E.call(torch.linalg.inv, A.c[0].node), A.c[0].b, 1, A.shape)
    M = _series_M(E, A, inv0)
    mul = _mat_mul(E, A.shape)
    P = M
    acc = [None] + [None if c is None else _trace(c) for c in P[1:]]
    for j in range(2, E.K + 1):
        P = taylor.product(P, M, E.ctx, mul)
        tr_ = [None] + [None if c is None else _trace(c) for c in P[1:]]
        acc = taylor.add(acc, taylor.scale(tr_, (-1.0) ** (j + 1) / j))
    acc[0] = lad0
    return E.jet(acc, A.shape[:-2], A.dtype)


def _slogdet(E, A):
    if not _is_jet(A) or len(A.shape) != 2:
        raise _generic_needed
    res = E.call(aten._linalg_slogdet.default, A.c[0].node)
    outs = []
    meta = _meta_shape(aten._linalg_slogdet.default, A)
    for i, m in enumerate(meta):
        c = Co(E, E.call(operator.getitem, res, i), A.c[0].b, 1, tuple(m.shape))
        outs.append(Jet([c] + [None] * E.K, tuple(m.shape), m.dtype))
    outs[1] = _logabsdet_jet(E, A, outs[1].c[0])
    return tuple(outs)


def _det(E, A):
    if not _is_jet(A) or len(A.shape) != 2:
        raise _generic_needed
    sign, lad, LU, piv = _slogdet(E, A)
    absdet = _unary_apply(E, "exp", torch.exp, lad)
    return _mul(E, absdet, sign), LU, piv


def _inv_ex(E, A, *, check_errors=False):
    if not _is_jet(A) or len(A.shape) != 2:
        raise _generic_needed
    inv, info = _inverse_jet(E, A)
    return inv, Jet([info] + [None] * E.K, (), torch.int32)


def _solve_ex(E, A, B, *, left=True, check_errors=False):
    if not _is_jet(A):
        raise _generic_needed
    if len(A.shape) != 2:
        raise _generic_needed
    inv, info = _inverse_jet(E, A)
    if left:
        X = _mv(E, inv, B) if len(_shape(B)) == 1 else _mm(E, inv, B)
    else:
        X = _mm(E, B, inv)
    meta = _meta_shape(aten._linalg_solve_ex.default, A, B, left=left)
    res = E.call(aten.linalg_lu_factor_ex.default, A.c[0].node)
    LU = Co(E, E.call(operator.getitem, res, 0), A.c[0].b, 1, tuple(meta[1].shape))
    piv = Co(E, E.call(operator.getitem, res, 1), A.c[0].b, 1, tuple(meta[2].shape))
    K = E.K
    return (
        X,
        Jet([LU] + [None] * K, tuple(meta[1].shape), A.dtype),
        Jet([piv] + [None] * K, tuple(meta[2].shape), torch.int32),
        Jet([info] + [None] * K, (), torch.int32),
    )


RULES[aten._linalg_slogdet] = _slogdet
RULES[aten._linalg_det] = _det
RULES[aten.linalg_inv_ex] = _inv_ex
RULES[aten._linalg_solve_ex] = _solve_ex
