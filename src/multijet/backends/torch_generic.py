"""The torch side of the engine's generic rule: ``torch.func`` forward mode, ``vmap`` over the two leading
axes, and ONE opaque node of the emitted graph that runs the shared computation eagerly at run time.

The node's output shapes (which of them carry the batch and direction axes) are found at build time by
running the same computation on meta tensors; the executor also runs the emitted module once on the
example point when it holds such nodes, so a failure surfaces while building.
"""

from __future__ import annotations

import operator

import torch
import torch.utils._pytree as pytree

from ..engine import kinds
from ..errors import UnsupportedPrimitiveError
from .torch_emit import Co

__all__ = ["generic_call", "map_lead", "make_generic", "is_generic_node"]

_GENERIC: list = []  # key → (computation, op name, user line)


def generic_call(key: int, *tensors):
    """Run time of a generic node: the engine's nested-jvp computation on real tensors."""
    g, name, where = _GENERIC[key]
    try:
        return tuple(g(*tensors))
    except UnsupportedPrimitiveError:
        raise
    except (RuntimeError, NotImplementedError, TypeError, ValueError) as e:
        raise UnsupportedPrimitiveError(
            name,
            "torch",
            where,
            hint=f"the generic rule (nested torch.func.jvp under vmap) failed: {type(e).__name__}: {str(e)[:300]}. "
            f"Register a rule with multijet.backends.torch.register_rule(torch.ops.{name}, builder).",
        ) from e


def is_generic_node(node) -> bool:
    return node.op == "call_function" and node.target is generic_call


def map_lead(fn, args, per_direction=None) -> list:
    """``fn`` (point shapes → list) mapped over the two leading axes of ``args`` (size-1 ones broadcast; the
    layout keeps a size-1 direction axis, so ``per_direction`` is implied by the shapes)."""
    args = list(args)
    nb = max(a.shape[0] for a in args)
    rb = max(a.shape[1] for a in args)
    if nb * rb == 1:
        return [o[None, None] for o in fn(*[a[0, 0] for a in args])]
    dims, flat = [], []
    for a in args:
        if a.shape[0] * a.shape[1] == 1:
            dims.append(None)
            flat.append(a[0, 0])
        else:
            dims.append(0)
            flat.append(a.expand(nb, rb, *a.shape[2:]).reshape(nb * rb, *a.shape[2:]))
    outs = torch.func.vmap(lambda *xs: tuple(fn(*xs)), in_dims=tuple(dims))(*flat)
    return [o.reshape(nb, rb, *o.shape[1:]) for o in outs]


def make_generic(n, display: str) -> kinds.Generic:
    """The generic record of a captured node (:class:`~multijet.backends.torch_table.NodeInfo`)."""
    from .torch_node import In

    target, name, where = n.target, display, n.where
    in_dtypes = [v.dtype for v in n.ins]
    coeff_dtype = next((v.dtype for v in n.ins if v.inexact), None)

    def point_fn(*tensors):
        sub = lambda t: pytree.tree_map(  # noqa: E731
            lambda a: tensors[a.index] if isinstance(a, In) else a, t, is_leaf=lambda a: isinstance(a, In)
        )
        out = target(*sub(n.args), **sub(n.kwargs))
        return [o for o in pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]

    def run(g, *cos):
        E = cos[0].E
        big = max(c.r for c in cos) + 2  # a batch size that no direction axis has: tells the axes apart
        metas = [
            torch.empty(
                (big if c.b else 1, c.r, *c.shape),
                dtype=in_dtypes[i] if i < len(in_dtypes) else coeff_dtype,
                device="meta",
            )
            for i, c in enumerate(cos)
        ]
        probe = g(*metas)
        _GENERIC.append((g, name, where))
        node = E.call(generic_call, len(_GENERIC) - 1, *[c.node for c in cos])
        return [
            Co(E, E.call(operator.getitem, node, j), o.shape[0] == big, o.shape[1], tuple(o.shape[2:]))
            for j, o in enumerate(probe)
        ]

    hint = f"register a rule with multijet.backends.torch.register_rule(torch.ops.{name}, builder)"
    return kinds.Generic(point_fn=point_fn, jvp=torch.func.jvp, map_lead=map_lead, run=run, hint=hint)
