"""From a plan to results: seed each jet group, propagate, read off value, weighted top sum and gradient.

The gradient policy lives here too: the gradient is the first-order coefficient of a group whose directions
are the unit vectors in order (any group of order ≥ 2 has it, or a standard order-1 group); otherwise one
more order-1 group along ``e_1 … e_D`` is propagated for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import taylor
from .context import Context, Identity
from .program import Program
from .propagate import propagate
from .schedule import Schedule, make_schedule

__all__ = ["GroupSpec", "group_specs", "evaluate", "schedule_for"]


@dataclass(frozen=True)
class GroupSpec:
    """What is static about one jet group (the directions and weights themselves are arrays)."""

    order: int
    R: int
    identity: bool  # directions are e_1 … e_D in order: the input seed is the identity
    ones: bool  # every weight is 1
    collapsed: bool
    gradient_only: bool = False  # an extra group propagated for the gradient alone


def group_specs(plan, method: str, return_grad: bool) -> tuple[GroupSpec, ...]:
    """The plan's groups (plus a gradient group when no group yields the gradient)."""
    collapsed = method == "collapsed"
    out = []
    for g in plan.groups:
        D = g.directions.shape[1]
        identity = g.directions.shape[0] == D and bool(np.array_equal(g.directions, np.eye(D)))
        out.append(GroupSpec(g.order, g.size, identity, bool(np.all(g.weights == 1.0)), collapsed))
    if return_grad and _gradient_group(out) is None:
        out.append(GroupSpec(1, plan.dim, True, True, False, gradient_only=True))
    return tuple(out)


def _gradient_group(specs) -> int | None:
    for i, s in enumerate(specs):
        if s.identity and (s.order >= 2 or (s.order == 1 and not s.collapsed)):
            return i
    return None


def schedule_for(program: Program, spec: GroupSpec) -> Schedule:
    """The schedule of ``program`` for one group (cached on the program)."""
    cache = program.__dict__.setdefault("_schedules", {})
    key = (spec.order, spec.collapsed)
    if key not in cache:
        cache[key] = make_schedule(program, spec.order, spec.collapsed)
    return cache[key]


def evaluate(
    program: Program,
    specs: tuple[GroupSpec, ...],
    return_grad: bool,
    group_inputs: Callable[[int, GroupSpec], tuple[Context, Any, Any]],
) -> tuple[Any, Any, Any]:
    """``(value, Σ_groups Σ_r w_r f_K(v_r), gradient)`` in the propagation layout (``None`` where zero).

    ``group_inputs(i, spec) -> (ctx, x0, V)`` gives a group's context, the input point and its directions
    (``V`` is ignored when ``spec.identity``). The gradient has the direction axis of size D in front.
    """
    (xvar,) = program.invars
    value = total = grad = None
    grad_from = _gradient_group(specs) if return_grad else None
    for i, spec in enumerate(specs):
        ctx, x0, V = group_inputs(i, spec)
        jet = _seed(ctx, spec, x0, V, xvar)
        (out,) = propagate(ctx, program, [jet], schedule_for(program, spec))
        out = ctx.materialize(out, xvar)  # f = identity: the seed itself
        if value is None:
            value = out[0]
        if not spec.gradient_only:
            t = _top_sum(ctx, out)
            total = t if total is None else (total if t is None else total + t)
        if i == grad_from:
            grad = out[1]
    return value, total, grad


def _seed(ctx: Context, spec: GroupSpec, x0, V, xvar) -> list:
    K = spec.order
    jet = [x0] + [None] * K
    if K == 0:
        return jet
    if spec.identity and ctx.per_direction(1):
        jet[1] = Identity(spec.R)
        return jet
    if spec.identity:
        V = ctx.layout.eye(xvar)
    return taylor.seed(x0, V, ctx.tctx)


def _top_sum(ctx: Context, out: list):
    if ctx.order == 0:  # a value group (R = 1, direction 0): w · f
        return ctx.wsum(out[0]) if ctx.weight0 is None else out[0] * ctx.weight0
    return taylor.top_sum(out, ctx.tctx)
