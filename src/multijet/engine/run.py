"""From a plan to results: seed each jet group, propagate, read off value, weighted top sum and gradient.

The gradient policy lives here too: the gradient is the first-order coefficient of a group whose directions
are the unit vectors in order (any group of order ≥ 2 has it, or a standard order-1 group); otherwise one
more order-1 group along ``e_1 … e_D`` is propagated for it.

Mixed-order sharing (collapsed and standard): a group the plan marks ``served_by = (host, a)`` is not
propagated; its result ``Σ_r a_r f_k(v_r)`` is the served group's own weighted sum (weights ``a``, from the
backend's ``group_inputs``) of the host's per-direction output coefficient ``out[k]`` (``a_0 · f`` for k = 0).

Direction blocks (``direction_chunk_size``): ``Σ_r w_r f_K(v_r)`` is additive over subsets of directions, so
a group of ``size`` directions runs as ``blocks`` passes of ``R`` directions each (the backend's ``loop``
runs them: a Python loop, or ``lax.map``), summing the totals and joining the gradient's blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .. import taylor
from .context import Context, Identity
from .inline import inline_calls
from .program import Program
from .propagate import propagate
from .schedule import Schedule, make_schedule
from .sparse_run import SparseRun
from .sparsity import MAX_SET, SparsePlan, sparse_plan

__all__ = [
    "GroupSpec",
    "group_specs",
    "group_weights",
    "evaluate",
    "schedule_for",
    "schedule_text",
    "uses_sparsity",
    "block_sizes",
    "python_loop",
]


@dataclass(frozen=True)
class GroupSpec:
    """What is static about one jet group (the directions and weights themselves are arrays)."""

    order: int
    R: int  # directions per pass (per block when ``blocks > 1``)
    identity: bool  # directions are e_1 … e_D in order: the input seed is the identity
    ones: bool  # every weight is 1
    collapsed: bool
    gradient_only: bool = False  # an extra group propagated for the gradient alone
    served: bool = False  # read off another group's output (mixed-order sharing): not propagated
    reads: tuple[tuple[int, int], ...] = ()  # (served group j, its order k ≥ 1) read off this group's out[k]
    blocks: int = 1  # direction blocks of ``R`` directions; the last one may be partial (or padded)
    size: int = 0  # all directions of the group (``R`` when ``blocks == 1``)
    unit: bool = False  # unit directions on fewer than half the axes: the backend seeds Identity(R, axes)
    sparse: int = 0  # direction sparsity: the most particles (blocks) one element may depend on; 0: off
    part: int = 0  # the sample group whose total this group's result joins (return_std); 0: the only one


def block_sizes(size: int, chunk: int | None) -> tuple[int, int]:
    """``(R per block, number of blocks)`` for ``size`` directions in chunks of at most ``chunk``."""
    if chunk is None or size <= chunk:
        return size, 1
    return chunk, -(-size // chunk)


def group_specs(
    plan, method: str, return_grad: bool, direction_chunk: int | None = None, sparsity: bool | int | None = None
) -> tuple[GroupSpec, ...]:
    """The plan's groups (plus a gradient group when no group yields the gradient).

    ``method="nested"`` gives standard specs without sharing (nested AD runs every group itself). Unit
    directions on at least half the axes run as the identity seed over all D (zero weight on the others).
    ``sparsity``: None (or True) lets the cost model decide where direction sparsity pays (identity groups in
    one block), False turns it off, an int ``k ≥ 1`` also caps the blocks one element may depend on at ``k``.
    """
    collapsed = method == "collapsed"
    share = method != "nested"
    served = {j: g.served_by[0] for j, g in enumerate(plan.groups) if share and g.served_by is not None}
    hosts = {h: tuple((j, plan.groups[j].order) for j in served if served[j] == h and plan.groups[j].order)
             for h in set(served.values())}  # fmt: skip
    out = []
    for i, g in enumerate(plan.groups):
        if i in served:
            size = _seed_size(plan.groups[served[i]]) if g.order else 1
            kind = dict(served=True)
        else:
            size = _seed_size(g) if g.order else g.size
            kind = dict(reads=hosts.get(i, ()))
        R, n = block_sizes(size, direction_chunk) if g.order else (size, 1)
        ones = bool(np.all(_weights(plan, i, i in served) == 1.0))
        identity = i not in served and g.order > 0 and _embedded(g)
        unit = share and i not in served and g.order > 0 and g.unit_axes is not None and not identity
        part = plan.parts[i] if getattr(plan, "parts", ()) else 0
        out.append(GroupSpec(g.order, R, identity, ones, collapsed, blocks=n, size=size, unit=unit, part=part, **kind))
    if return_grad and _gradient_group(out) is None:
        R, n = block_sizes(plan.dim, direction_chunk)
        out.append(GroupSpec(1, R, True, True, False, gradient_only=True, blocks=n, size=plan.dim))
    if sparsity is not False and method != "nested":
        cap = MAX_SET if sparsity is None or sparsity is True else int(sparsity)
        out = [replace(s, sparse=cap) if _sparse_candidate(s) else s for s in out]
    return tuple(out)


def _sparse_candidate(s: GroupSpec) -> bool:
    """Unit directions in order, in one block, with per-direction coefficients to compress."""
    return s.identity and s.blocks == 1 and not s.served and (s.order >= 2 or (s.order == 1 and not s.collapsed))


def group_weights(plan, i: int, spec: GroupSpec):
    """Group ``i``'s weights over its ``spec.size`` directions: the served group's read-off ``a`` (over the
    host's directions), zeros where an identity seed covers axes the group does not use, ones for the
    gradient group."""
    if i >= len(plan.groups):
        return np.ones(spec.size)
    return _weights(plan, i, spec.served)


def _weights(plan, i: int, served: bool):
    g = plan.groups[i]
    if served:
        host, a = g.served_by
        return _scatter(plan.groups[host], a) if g.order else a
    return _scatter(g, g.weights)


def _embedded(g) -> bool:
    """Unit directions (all distinct) on at least half of the D axes: seeded as the identity."""
    return g.unit_axes is not None and 2 * g.size >= g.dim and len(set(g.unit_axes)) == g.size


def _seed_size(g) -> int:
    return g.dim if _embedded(g) else g.size


def _scatter(g, w):
    if g.order == 0 or not _embedded(g) or g.identity:
        return np.asarray(w)
    out = np.zeros(g.dim)
    out[list(g.unit_axes)] = w
    return out


def _gradient_group(specs) -> int | None:
    for i, s in enumerate(specs):
        if s.identity and not s.served and (s.order >= 2 or (s.order == 1 and not s.collapsed)):
            return i
    return None


def schedule_for(program: Program, spec: GroupSpec) -> Schedule:
    """The schedule of ``program`` for one group (cached on the program)."""
    cache = program.__dict__.setdefault("_schedules", {})
    key = (spec.order, spec.collapsed)
    if key not in cache:
        cache[key] = make_schedule(program, spec.order, spec.collapsed)
    return cache[key]


def schedule_text(program: Program, specs: tuple[GroupSpec, ...]) -> str:
    """The printed schedule of every propagated group (a served group is read off its host's, not propagated),
    with where direction sparsity was kept and dropped (for groups that have run)."""
    parts = []
    for s in specs:
        if s.served:
            continue
        if not s.sparse:
            parts.append(str(schedule_for(program, s)))
            continue
        inlined = inline_calls(program)
        plans = inlined.__dict__.get("_sparse_plans", {})
        plan = next((p for (R, order, _, cap), p in plans.items() if (R, order, cap) == (s.R, s.order, s.sparse)), "?")
        if plan == "?":
            parts.append(str(schedule_for(program, s)) + "\ndirection sparsity: not analysed yet (runs on first call)")
        elif plan is None:
            parts.append(str(schedule_for(program, s)) + "\ndirection sparsity: dropped (dense is as cheap)")
        else:
            parts.append(str(schedule_for(inlined, s)) + "\n" + plan.describe())
    return "\n".join(parts)


Loop = Callable[[Callable[..., tuple], GroupSpec], tuple]


def evaluate(
    program: Program,
    specs: tuple[GroupSpec, ...],
    return_grad: bool,
    group_inputs: Callable[..., tuple[Context, Any, Any]],
    loop: Loop | None = None,
) -> tuple[Any, Any, Any]:
    """``(value, Σ_groups Σ_r w_r f_K(v_r), gradient)`` in the propagation layout (``None`` where zero).

    ``group_inputs(i, spec)`` gives a group's context, the input point and its directions (``V`` is ignored
    when ``spec.identity`` and the group runs in one block); for a group of ``spec.blocks > 1`` it is called
    as ``group_inputs(i, spec, b)`` for block ``b`` (the unit rows of the block for an identity group), and
    ``loop(block, spec)`` runs ``block(b) -> (value, total, gradient part)`` over the blocks and returns the
    value, the summed total and the joined gradient. A served group's context carries its read-off weights
    ``a`` as ``wsum`` (``weight0`` for k = 0). The gradient has the direction axis of size D in front.
    With groups in several parts (``spec.part``: the sample groups of ``return_std``), the total is the list
    of the parts' totals; the primal is the same program in every group (the backends compute it once: XLA's
    common subexpressions, the torch emitter's shared nodes).
    """
    (xvar,) = program.invars
    value = grad = None
    totals: dict[int, Any] = {}
    grad_from = _gradient_group(specs) if return_grad else None
    for i, spec in enumerate(specs):
        if spec.served:
            continue

        def block(*b, i=i, spec=spec):
            ctx, x0, V = group_inputs(i, spec, *b)
            sp = _sparse(program, spec, ctx)
            if sp is None:
                jet = _seed(ctx, spec, x0, V, xvar)
                (out,) = propagate(ctx, program, [jet], schedule_for(program, spec))
            else:
                run = SparseRun(sp, ctx)
                seed = run.seed(x0, sp.program.invars[0])
                (out,) = propagate(ctx, sp.program, [seed], schedule_for(sp.program, spec), run)
            out = ctx.materialize(out, xvar)  # f = identity: the seed itself
            t = None if spec.gradient_only else _top_sum(ctx, out)
            for j, k in spec.reads:
                if out[k] is not None:
                    t = _add(t, group_inputs(j, specs[j], *b)[0].wsum(out[k]))
            return out[0], t, out[1] if i == grad_from else None

        if spec.blocks == 1:
            v, t, g = block()
        else:
            if loop is None:
                raise ValueError("this backend runs no direction blocks (direction_chunk_size)")
            v, t, g = loop(block, spec)
        value = v if value is None else value
        totals[spec.part] = _add(totals.get(spec.part), t)
        if i == grad_from:
            grad = g
    for j, spec in enumerate(specs):  # served order-0 groups: a_0 · f
        if spec.served and spec.order == 0:
            totals[spec.part] = _add(totals.get(spec.part), _top_sum(group_inputs(j, spec)[0], [value]))
    parts = 1 + max((s.part for s in specs), default=0)
    return value, (totals.get(0) if parts == 1 else [totals.get(p) for p in range(parts)]), grad


def uses_sparsity(program: Program) -> bool:
    """Whether a group of ``program`` has run under a sparse plan (whose patterns may rest on the values of
    integer constants: a compiled program must rebuild if those change)."""
    plans = inline_calls(program).__dict__.get("_sparse_plans", {})
    return any(p is not None for p in plans.values())


def _sparse(program: Program, spec: GroupSpec, ctx: Context) -> SparsePlan | None:
    """The group's sparse plan when its spec asks for one and the cost model finds it pays (else None)."""
    layout = ctx.layout
    if not spec.sparse or not hasattr(layout, "probe"):
        return None
    return sparse_plan(inline_calls(program), spec.R, layout.probe, layout.concrete, spec.order, cap=spec.sparse)


def python_loop(concat: Callable[[list], Any]) -> Loop:
    """A ``loop`` for eager or emitting backends: the blocks one after the other (each block's arrays are
    freed before the next forms), the gradient's blocks joined by ``concat`` along the direction axis."""

    def loop(block, spec: GroupSpec):
        value = total = None
        grads = []
        for b in range(spec.blocks):
            v, t, g = block(b)
            value = v if value is None else value
            total = _add(total, t)
            if g is not None:
                grads.append(g)
        return value, total, concat(grads) if grads else None

    return loop


def _add(a, b):
    return b if a is None else (a if b is None else a + b)


def _seed(ctx: Context, spec: GroupSpec, x0, V, xvar) -> list:
    K = spec.order
    jet = [x0] + [None] * K
    if K == 0:
        return jet
    if spec.identity and spec.blocks == 1:
        V = Identity(spec.R)
    if isinstance(V, Identity):  # unit directions (a backend gives blocks and axis subsets as Identity(R, rows))
        if ctx.per_direction(1):
            jet[1] = V
            return jet
        V = ctx.materialize([V], xvar)[0]
    return taylor.seed(x0, V, ctx.tctx)


def _top_sum(ctx: Context, out: list):
    if ctx.order == 0:  # a value group (R = 1, direction 0): w · f
        return ctx.wsum(out[0]) if ctx.weight0 is None else out[0] * ctx.weight0
    return taylor.top_sum(out, ctx.tctx)
