"""PyTorch's primitive table: ATen op → the engine's kind record, with the native callables lifted.

A builder takes the captured node (:class:`NodeInfo`: its tensor operands as :class:`In` leaves in the
node's arguments, its output variables) and returns a record of :mod:`multijet.engine.kinds` whose callables
emit torch ops on :class:`~multijet.backends.torch_emit.Co` handles in the layout ``(N|1, R|1, *point)``;
``None`` sends the op to the generic rule. Composite ops (addmm, var, softplus, clamp, sort, …) add several
equations themselves through ``NodeInfo.cap`` (:mod:`.torch_table_composite`) and return :data:`COMPOSED`;
linear algebra (inv, solve, det, slogdet, Cholesky) is in :mod:`.torch_table_linalg`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..engine import kinds
from ..extend import on_register
from .torch_emit import Co
from .torch_node import COMPOSED, In, NodeInfo, bcast, op_name
from .torch_table_composite import COMPOSITE
from .torch_table_linalg import LINALG
from .torch_table_linear import LINEAR

aten = torch.ops.aten

__all__ = ["TABLE", "register_rule", "lookup", "key_of", "node_name", "decompositions", "In", "NodeInfo", "COMPOSED"]


# --- builders ------------------------------------------------------------------------------------------------


def _elementwise(table: str):
    return lambda n: kinds.Elementwise(bcast(n), table)


def _zero(n):
    return kinds.Zero(bcast(n))


def _sum(signs_of: Callable):
    return lambda n: kinds.Sum(tuple(signs_of(n)), bcast(n))


def _add_signs(n):
    alpha = n.kwargs.get("alpha", 1)
    return [1.0, float(alpha)][: len(n.ins)] if isinstance(n.args[0], In) else [float(alpha)]


def _sub_signs(n):
    alpha = n.kwargs.get("alpha", 1)
    return [1.0, -float(alpha)][: len(n.ins)] if isinstance(n.args[0], In) else [-float(alpha)]


def _rsub_signs(n):  # rsub(a, b, alpha) = b − alpha · a
    alpha = float(n.kwargs.get("alpha", 1))
    out = []
    if isinstance(n.args[0], In):
        out.append(-alpha)
    if len(n.args) > 1 and isinstance(n.args[1], In):
        out.append(1.0)
    return out


def _mul(n):
    if len(n.ins) == 2:
        return kinds.Bilinear(bcast(n), broadcasting=True)
    return kinds.Linear(bcast(n), structure="pointwise")


def _div(n):
    if len(n.ins) == 2:
        return kinds.Divide(bcast(n))
    if isinstance(n.args[0], In):
        return kinds.Linear(bcast(n), structure="pointwise")
    return None


def _pow_scalar(n):
    p = n.arg(1, "exponent")
    if isinstance(p, In):
        return None
    pf = float(p)
    if pf == 1.0:
        return kinds.Linear(lambda c: [c], structure="pointwise")
    if pf == 0.0:
        return kinds.Zero(lambda c: [c.map(torch.ones_like)])
    return kinds.Elementwise(bcast(n), "pow", {"exponent": pf})


def _max_min(n):
    return kinds.Selection("max" if n.packet == "maximum" else "min", "split", bcast(n))


def _reduce_select(n):
    x, out = n.ins[0], n.outs[0].shape
    nd = len(x.shape)
    if nd == 0:
        return kinds.Linear(lambda c: [c], structure="pointwise")
    if n.name in ("max.default", "min.default"):
        dims, keep = [], False
    else:
        dims, keep = n.arg(1, "dim", []), bool(n.arg(2, "keepdim", False))
    dims = [dims] if isinstance(dims, int) else list(dims)
    ds = tuple(sorted({d % nd + 2 for d in dims})) if dims else tuple(range(2, nd + 2))
    kshape = tuple(1 if i + 2 in ds else s for i, s in enumerate(x.shape))
    big = n.packet in ("amax", "max")
    red = torch.amax if big else torch.amin

    def expand(y):
        y = y.map(torch.reshape, y.E.lead(y) + list(kshape), shape=kshape)
        return [y.map(torch.Tensor.expand, [-1, -1, *x.shape], shape=x.shape)]

    return kinds.Selection(
        "reduce_max" if big else "reduce_min",
        "split",
        lambda c: [c.map(red, ds, keepdim=keep, shape=out)],
        reduce=lambda c: [c.map(torch.sum, ds, keepdim=keep, shape=out)],
        expand=expand,
    )


def _argreduce(fn):
    def build(n):
        x, out = n.ins[0], n.outs[0].shape
        dim, keep = n.arg(1, "dim", None), bool(n.arg(2, "keepdim", False))

        def lifted(c):
            if dim is None:
                flat = c.map(torch.reshape, c.E.lead(c) + [-1], shape=(math.prod(x.shape),))
                return [Co(c.E, c.E.call(fn, flat.node, 2), c.b, c.r, out)]
            return [Co(c.E, c.E.call(fn, c.node, dim % max(1, len(x.shape)) + 2, keepdim=keep), c.b, c.r, out)]

        return kinds.Zero(lifted)

    return build


def _remainder(n):
    """``x mod c`` with a constant ``c``: ``x − c·⌊x/c⌋`` (or trunc) is ``x`` plus a piecewise constant, so
    ``y_k = x_k``. A divisor that is not a program constant goes to the generic rule."""
    x, c = n.args[0], n.args[1]
    if not isinstance(x, In) or (isinstance(c, In) and c.cst is None):
        return None
    return kinds.Sum((1.0, 0.0)[: len(n.ins)], bcast(n))


def _detach(n):
    return kinds.Zero(lambda c: [c.map(torch.detach)])


# --- the table -------------------------------------------------------------------------------------------------

#: op key ("packet.overload", "packet" or "prims.packet") → builder(NodeInfo) -> record | COMPOSED | None
TABLE: dict[str, Callable] = {}


def register_rule(op, builder: Callable) -> None:
    """Register ``builder(node_info) -> record`` of :mod:`multijet.engine.kinds` for an ATen op
    (``torch.ops.aten.foo``, an overload such as ``torch.ops.aten.foo.default``, or its name)."""
    TABLE[_key(op)] = builder


def key_of(op) -> str:
    """The table key of an op: ``packet.overload`` for aten, ``ns.packet.overload`` otherwise."""
    return _key(op)


def _key(op) -> str:
    if isinstance(op, str):
        return op
    if isinstance(op, torch._ops.OpOverload):
        packet, ns = op.overloadpacket.__name__, op.namespace
        base = f"{packet}.{op._overloadname}"
    else:
        packet, ns = op.__name__, getattr(op, "_qualified_op_name", "aten::").split("::")[0]
        base = packet
    return base if ns == "aten" else f"{ns}.{base}"


def lookup(target) -> Callable | None:
    if not isinstance(target, torch._ops.OpOverload):
        return None
    name = _key(target)
    rule = TABLE.get(name)
    if rule is None:
        rule = TABLE.get(name.rsplit(".", 1)[0])
    return rule


def node_name(target) -> str:
    """The op's name in messages and printed programs: ``aten.tanh.default``, ``prims.cbrt.default``."""
    if isinstance(target, torch._ops.OpOverload):
        key = _key(target)
        return key if target.namespace != "aten" else f"aten.{key}"
    return op_name(target)


_TABLES = "tanh sigmoid sin cos tan exp expm1 log log1p sqrt rsqrt reciprocal abs relu asin acos atan asinh acosh atanh"
for _n in _TABLES.split() + ["sinh", "cosh", "erf", "square"]:
    TABLE[_n] = _elementwise(_n)
for _n in ("exp", "tanh", "rsqrt", "sqrt", "log", "sin", "cos"):
    TABLE[f"prims.{_n}"] = _elementwise(_n)
for _n in ("sign", "floor", "ceil", "round", "trunc", "gt", "lt", "ge", "le", "eq", "ne", "logical_and",
           "logical_or", "logical_not", "logical_xor", "isnan", "isinf", "isfinite", "bitwise_and", "bitwise_or",
           "bitwise_not", "heaviside", "div.Tensor_mode"):  # fmt: skip
    TABLE[_n] = _zero
TABLE["remainder"] = TABLE["fmod"] = _remainder
TABLE["detach"] = TABLE["detach_copy"] = _detach
TABLE["argmax"] = _argreduce(torch.argmax)
TABLE["argmin"] = _argreduce(torch.argmin)
TABLE["add"] = TABLE["prims.add"] = _sum(_add_signs)
TABLE["sub"] = TABLE["prims.sub"] = _sum(_sub_signs)
TABLE["rsub"] = _sum(_rsub_signs)
TABLE["neg"] = TABLE["prims.neg"] = _sum(lambda n: [-1.0])
TABLE["mul"] = TABLE["prims.mul"] = _mul
TABLE["div.Tensor"] = TABLE["div.Scalar"] = TABLE["prims.div"] = _div
TABLE["pow.Tensor_Scalar"] = _pow_scalar
TABLE["maximum"] = TABLE["minimum"] = _max_min
for _n in ("amax", "amin", "max.default", "min.default"):
    TABLE[_n] = _reduce_select
TABLE.update(LINEAR)
TABLE.update(COMPOSITE)
TABLE.update(LINALG)


def decompositions():
    """Decompositions applied while capturing: ops that compose from ops with rules."""
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


def _native_key(native) -> str:
    """The table key of ``register_elementwise(…, torch=native)``: an ATen op (packet or overload), its name
    (``"erfc"``), or a torch function recording one ATen op (``torch.special.erfc`` records ``aten.erfc``)."""
    if isinstance(native, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        return _key(native)
    if isinstance(native, str):
        if "." not in native and not hasattr(aten, native):
            raise ValueError(f"torch.ops.aten has no op {native!r} (torch= names the ATen op the capture records)")
        return native
    if not callable(native):
        raise TypeError(f"torch= takes an ATen op, its name or a torch function, got {native!r}")
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(lambda t: native(t), decomposition_table=decompositions())(torch.zeros((), dtype=torch.float64))
    ops = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    if len(ops) != 1 or not isinstance(ops[0], torch._ops.OpOverload):
        raise ValueError(f"torch={native!r} records {[node_name(o) for o in ops]}, not one ATen op")
    return _key(ops[0].overloadpacket)


def _on_elementwise(name: str, native) -> Callable[[], None]:
    """``mj.register_elementwise(name, table, torch=op)``: the ATen op gets the shared table; returns the undo."""
    key = _native_key(native)
    previous = TABLE.get(key)
    TABLE[key] = _elementwise(name)

    def undo() -> None:
        if previous is None:
            TABLE.pop(key, None)
        else:
            TABLE[key] = previous

    return undo


on_register("torch", _on_elementwise)
