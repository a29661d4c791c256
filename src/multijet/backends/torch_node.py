"""A captured ATen node as the torch table's builders see it (:class:`NodeInfo`, its tensor operands :class:`In`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.utils._pytree as pytree

from ..engine.program import Var
from .torch_emit import Co, Cst

__all__ = ["In", "NodeInfo", "COMPOSED", "bcast", "op_name"]

COMPOSED = object()  # a builder's answer when it has added the node's equations itself
_REQUIRED = object()


@dataclass(eq=False)
class In:
    """A tensor operand of a captured node: its position among the equation's inputs, its variable, and its
    value when it is a constant of the program."""

    index: int
    var: Var
    cst: Cst | None

    @property
    def shape(self):
        return self.var.shape

    @property
    def dtype(self):
        return self.var.dtype


@dataclass(eq=False)
class NodeInfo:
    target: Any
    name: str  # "packet.overload" (aten) or "prims.packet.overload"
    args: tuple  # the node's arguments, tensors replaced by In
    kwargs: dict
    ins: list[Var]
    outs: list[Var]
    where: str | None
    cap: Any  # the capture, for composites: cap.var, cap.scalar, cap.eqn

    @property
    def packet(self) -> str:
        return self.name.split(".")[-2] if self.name.startswith("prims.") else self.name.split(".")[0]

    def arg(self, i: int, key: str, default=_REQUIRED):
        if len(self.args) > i:
            return self.args[i]
        if key in self.kwargs:
            return self.kwargs[key]
        if default is _REQUIRED:
            raise KeyError(f"{self.name}: argument {key!r} missing")
        return default


def op_name(target) -> str:
    name = getattr(target, "__name__", str(target))
    ns = getattr(target, "namespace", None)
    return f"{ns}.{name}" if ns else name


def _subst(tree, cos):
    return pytree.tree_map(
        lambda a: cos[a.index].node if isinstance(a, In) else a, tree, is_leaf=lambda a: isinstance(a, In)
    )


def bcast(n: NodeInfo, target=None) -> Callable:
    """The node's own (elementwise, broadcasting) op applied to coefficients aligned to the output's rank."""
    target = target or n.target
    shape = n.outs[0].shape
    nd = len(shape)

    def fn(*cos):
        E = cos[0].E
        al = [E.align(c, nd) for c in cos]
        node = E.graph.call_function(target, tuple(_subst(n.args, al)), dict(_subst(n.kwargs, al)))
        return [Co(E, node, any(c.b for c in cos), max(c.r for c in cos), shape)]

    return fn
