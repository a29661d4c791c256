"""The torch executor's arrays: coefficient handles that *emit* fx nodes, and the engine's torch layout.

The shared engine (:mod:`multijet.engine`) runs its propagation over :class:`Co` handles: every arithmetic
operation on them appends a node to the fx graph being built, so the emitted ``GraphModule`` holds exactly
the operations the schedule's structural zeros leave. Layout of every coefficient: ``(N | 1, R | 1,
*point_shape)`` — a batch axis (size 1 when the value does not depend on the batch point, e.g. the first
layer's ``Wᵀ`` for unit directions), a direction axis (size 1 for ``x_0`` and a collapsed top), then the
point's own shape.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree

from ..engine.program import Var

__all__ = ["Co", "Cst", "Emitter", "Layout", "SharedGraph", "XP", "broadcast_call"]


@dataclass(eq=False)
class Cst:
    """A tensor of the emitted graph that does not depend on ``x`` (parameters, folded constants): point layout."""

    node: Any
    shape: tuple
    dtype: Any
    value: Any = None  # the tensor itself for an integer constant of the traced function (indices), else None


class Co:
    """One Taylor coefficient in the emitted graph: an fx node with layout ``(N|1, r, *shape)``.

    ``b``: the batch axis has size N (else 1); ``r``: the direction axis size (R or 1). ``point`` is the
    point-shaped node of a lifted constant (so a product with a parameter can use the 2-D tensor itself).
    """

    __slots__ = ("E", "node", "b", "r", "shape", "point")

    def __init__(self, E: Emitter, node, b: bool, r: int, shape, point=None):
        self.E, self.node, self.b, self.r, self.shape, self.point = E, node, bool(b), int(r), tuple(shape), point
        if b:  # the largest per-point array decides how many points one pass takes (see JetProgram)
            E.max_point_elems = max(E.max_point_elems, self.r * math.prod(self.shape))

    def __repr__(self) -> str:
        return f"Co({self.node}, b={self.b}, r={self.r}, shape={self.shape})"

    def _bin(self, other, op, rev=False):
        E = self.E
        if isinstance(other, int | float) and not isinstance(other, bool):
            if (op is operator.add and other == 0) or (op is operator.sub and other == 0 and not rev):
                return self
            if op is operator.mul and other == 1:
                return self
            if op is operator.mul and other == -1:
                return -self
            args = (other, self.node) if rev else (self.node, other)
            return Co(E, E.call(op, *args), self.b, self.r, self.shape)
        if isinstance(other, Co):
            nd = max(len(self.shape), len(other.shape))
            a, o = E.align(self, nd), E.align(other, nd)
            args = (o.node, a.node) if rev else (a.node, o.node)
            shape = torch.broadcast_shapes(a.shape, o.shape)
            return Co(E, E.call(op, *args), a.b or o.b, max(a.r, o.r), shape)
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

    def point_node(self):
        """The point-shaped node of a batch- and direction-independent coefficient (a lifted constant)."""
        if self.point is not None:
            return self.point
        assert not self.b and self.r == 1, self
        self.point = self.E.call(torch.reshape, self.node, list(self.shape))
        return self.point

    @property
    def const(self) -> bool:
        return not self.b and self.r == 1


def broadcast_call(target, cos: list, *extra, nd: int | None = None, **kwargs) -> Co:
    """``target(*cos, *extra)`` on coefficients (or Python scalars) aligned to a common point rank."""
    handles = [c for c in cos if isinstance(c, Co)]
    E = handles[0].E
    nd = max(len(c.shape) for c in handles) if nd is None else nd
    args = [E.align(c, nd) if isinstance(c, Co) else c for c in cos]
    shape = torch.broadcast_shapes(*[a.shape for a in args if isinstance(a, Co)])
    node = E.call(target, *[a.node if isinstance(a, Co) else a for a in args], *extra, **kwargs)
    return Co(E, node, any(a.b for a in handles), max(a.r for a in handles), shape)


class _XP:
    """The ``xp`` namespace the shared derivative tables and selections see: torch functions on :class:`Co`."""

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

    @staticmethod
    def where(cond, a, b):
        return broadcast_call(torch.where, [cond, a, b])


for _name, _fn in [("greater", torch.gt), ("less", torch.lt), ("equal", torch.eq), ("greater_equal", torch.ge),
                   ("less_equal", torch.le), ("logical_and", torch.logical_and)]:  # fmt: skip
    setattr(_XP, _name, staticmethod(lambda a, b, _fn=_fn: broadcast_call(_fn, [a, b])))

XP = _XP()


class SharedGraph:
    """An ``fx.Graph`` whose ``call_function`` returns the existing node for a call it has already emitted
    (same function, same arguments) unless the function mutates its input: what does not depend on the
    directions (the primal pass, the derivative tables' coefficients, a first layer's ``contiguous(Wᵀ)``) is
    emitted once, not once per direction block or jet group. Everything else is the wrapped graph's."""

    def __init__(self, graph: fx.Graph):
        self._graph = graph
        self._emitted: dict = {}

    def __getattr__(self, name):
        return getattr(self._graph, name)

    def call_function(self, target, args=(), kwargs=None):
        kwargs = kwargs or {}
        key = _call_key(target, args, kwargs)
        node = self._emitted.get(key) if key is not None else None
        if node is None:
            node = self._graph.call_function(target, args, kwargs)
            if key is not None:
                self._emitted[key] = node
        return node


def _call_key(target, args, kwargs):
    """A hashable key of a call, or None when it may not be shared (an in-place op, an unhashable argument)."""
    if _mutates(target):
        return None
    leaves, spec = pytree.tree_flatten((args, kwargs))
    key = (target, str(spec), tuple((type(a), repr(a) if isinstance(a, float) else a) for a in leaves))
    try:
        hash(key)
    except TypeError:
        return None
    return key


_IN_PLACE = {operator.setitem, operator.delitem, operator.iadd, operator.isub, operator.imul, operator.itruediv}


def _mutates(target) -> bool:
    if target in _IN_PLACE:
        return True
    schema = getattr(target, "_schema", None)
    if schema is not None:
        return schema.is_mutable
    name = getattr(target, "__name__", "")
    return name.endswith("_") and not name.endswith("__")


class Emitter:
    """The graph being built and what every coefficient handle shares: the batch size and device nodes."""

    def __init__(self, graph: fx.Graph, N, device_node):
        self.graph, self.N, self.device = SharedGraph(graph), N, device_node
        self.max_point_elems = 1
        self._lifted: dict[int, Co] = {}

    def call(self, target, *args, **kwargs):
        def unwrap(a):
            return a.node if isinstance(a, Co | Cst) else a

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

    def fit(self, c: Co, shape) -> Co:
        """Broadcast ``c``'s point axes to ``shape``."""
        if c.shape == tuple(shape):
            return c
        c = self.align(c, len(shape))
        return c.map(torch.Tensor.expand, [-1, -1, *shape], shape=tuple(shape))

    def lift(self, v: Cst) -> Co:
        """A constant as a coefficient with leading axes (1, 1) (one reshape node per constant)."""
        co = self._lifted.get(id(v))
        if co is None:
            node = self.call(torch.reshape, v.node, [1, 1, *v.shape])
            co = Co(self, node, False, 1, v.shape, point=v.node)
            self._lifted[id(v)] = co
        return co

    def zeros(self, shape, dtype, b=False, r=1) -> Co:
        node = self.call(torch.zeros, [self.N if b else 1, r, *shape], dtype=dtype, device=self.device)
        return Co(self, node, b, r, shape)

    def expand_lead(self, c: Co, b: bool, r: int) -> Co:
        if c.b == b and c.r == r:
            return c
        return Co(self, self.call(torch.Tensor.expand, c.node, [self.N if b else 1, r, *c.shape]), b, r, c.shape)


class Layout:
    """The engine's layout operations for one jet group (``R`` directions)."""

    xp = XP

    def __init__(self, E: Emitter, R: int):
        self.E, self.R = E, R

    def lift(self, value, var: Var):
        return self.E.lift(value)

    def align(self, c, nd_from: int, nd_to: int):
        return self.E.align(c, nd_to)

    def zeros(self, var: Var):
        return self.E.zeros(var.shape, var.dtype)

    def eye(self, var: Var):
        (n,) = var.shape
        eye = self.E.call(torch.eye, n, dtype=var.dtype, device=self.E.device)
        return Co(self.E, self.E.call(torch.unsqueeze, eye, 0), False, n, (n,))

    def unit_rows(self, var: Var, seed):
        """Rows ``e_a``, ``a ∈ seed.rows`` (an index node), compared with ``arange(D)`` (``one_hot`` checks its
        indices, which a capture cannot)."""
        (n,) = var.shape
        E = self.E
        rows = E.call(torch.eq, E.call(torch.unsqueeze, seed.rows, 1), E.call(torch.arange, n, device=E.device))
        return Co(E, E.call(torch.unsqueeze, E.call(torch.Tensor.to, rows, var.dtype), 0), False, seed.size, (n,))

    def take(self, c: Co, seed) -> Co:
        return Co(self.E, self.E.call(torch.index_select, c.node, 1, seed.rows), c.b, seed.size, c.shape)

    def fit(self, c, var: Var, per_direction: bool):
        return self.E.fit(c, var.shape)

    def canonical(self, c, var: Var, per_direction: bool):
        r = self.R if per_direction else 1
        if c is None:
            return self.E.zeros(var.shape, var.dtype, True, r)
        return self.E.expand_lead(self.E.fit(c, var.shape), True, r)


class GroupSums:
    """``Σ_r w_r`` of one jet group: ``wsum(c)`` and the fused ``wdot(a, b) = Σ_r w_r a_r b_r``.

    With equal weights the product and the sum are one ``linalg.vecdot`` over the direction axis, so no
    ``(N, R, …)`` temporary is formed.
    """

    def __init__(self, E: Emitter, R: int, w_node, weights):
        self.E, self.R, self._w = E, R, w_node
        self._total = float(sum(weights))
        self._unit = all(w == 1.0 for w in weights)
        first = float(weights[0]) if len(weights) else 1.0
        self._equal = first if all(w == first for w in weights) and first > 0 else None
        self._wviews: dict[int, Any] = {}

    def _weighted(self, c: Co) -> Co:
        E = self.E
        nd = len(c.shape)
        if nd not in self._wviews:
            self._wviews[nd] = E.call(torch.reshape, self._w, [self.R] + [1] * nd)
        prod = E.call(operator.mul, c.node, self._wviews[nd])
        return Co(E, E.call(torch.sum, prod, 1, keepdim=True), c.b, 1, c.shape)

    def wsum(self, c: Co) -> Co:
        E = self.E
        if c.r == 1:
            return c if self._total == 1.0 else c * self._total
        node = c.node
        if (
            self._equal is not None
            and node.target is operator.mul
            and len(node.args) == 2
            and all(isinstance(a, fx.Node) for a in node.args)
            and len(node.users) == 0
        ):  # Σ_r w a_r b_r of a product just formed: one fused dot (the product node is dead code then)
            dot = E.call(torch.linalg.vecdot, node.args[0], node.args[1], dim=1)
            out = Co(E, E.call(torch.unsqueeze, dot, 1), c.b, 1, c.shape)
            return out if self._unit else out * self._equal
        if self._unit:
            return Co(E, E.call(torch.sum, c.node, 1, keepdim=True), c.b, 1, c.shape)
        return self._weighted(c)

    def wdot(self, a: Co, b: Co) -> Co:
        if self._equal is None or (a.r == 1 and b.r == 1):
            return self.wsum(a * b)
        E = self.E
        nd = max(len(a.shape), len(b.shape))
        a, b = E.align(a, nd), E.align(b, nd)
        shape = torch.broadcast_shapes(a.shape, b.shape)
        dot = E.call(torch.linalg.vecdot, a.node, b.node, dim=1)
        out = Co(E, E.call(torch.unsqueeze, dot, 1), a.b or b.b, 1, shape)
        return out if self._unit else out * self._equal
