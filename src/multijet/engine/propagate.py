"""The interpreter loop: one pass over a :class:`Program`, the shared rule of each equation's kind.

Every backend runs this same loop, over its own arrays: NumPy eagerly, JAX under ``jax.jit``, torch while
recording an fx graph. The loop checks each result against the schedule (a coefficient the schedule marks
zero must come out ``None``) and fits coefficients to their variable's shape and dtype.
"""

from __future__ import annotations

from .context import Context
from .control import make_rules
from .generic import generic
from .patterns import const_pattern
from .program import Equation, Program
from .rules import RULES as _ALGEBRAIC
from .rules import const_jet, is_const
from .schedule import Schedule, make_schedule
from .selection import selection

__all__ = ["propagate", "primal", "RULES"]

_SUBPROGRAM_KINDS = ("call", "scan", "while", "cond")


def primal(ctx: Context, eqn: Equation, x0s: list) -> list:
    """The equation's outputs at the primal point (no derivatives)."""
    impl = eqn.impl
    if eqn.kind == "generic":
        return impl.run(lambda *a: list(impl.map_lead(impl.point_fn, list(a), [False] * len(a))), *x0s)
    return impl.fn(*x0s)


def propagate(
    ctx: Context, program: Program, in_jets: list[list], schedule: Schedule | None = None, sparse=None
) -> list[list]:
    """Push the input jets through ``program``; returns the output jets.

    ``sparse`` (a :class:`~multijet.engine.sparse_run.SparseRun`): values its plan compresses carry ``b``
    slots; an equation producing them runs in the slots' context, any other sees its operands expanded."""
    K = ctx.order
    if schedule is None:
        pats = [
            tuple(c is not None for c in j) if v.inexact else const_pattern(K)
            for j, v in zip(in_jets, program.invars, strict=True)
        ]
        schedule = make_schedule(program, K, ctx.collapsed, pats)
    env: dict = {}
    for v, value in program.consts.items():
        env[v] = const_jet(ctx.layout.lift(value, v), K)
    for v, jet in zip(program.invars, in_jets, strict=True):
        env[v] = jet
    dead = _dead_after(program)
    for i, eqn in enumerate(program.eqns):
        ins = [env[v] for v in eqn.ins]
        kind = eqn.kind
        rctx, outs = ctx, None
        if sparse is not None:
            rctx = sparse.context_for(eqn)
            if rctx is not ctx:
                ins = sparse.align(eqn, ins)
            else:
                outs = sparse.structured(eqn, ins)
                if outs is None:
                    ins = [sparse.dense(j, v) for j, v in zip(ins, eqn.ins, strict=True)]
        if outs is not None:
            outs = [_fit(ctx, o, v) for o, v in zip(outs, eqn.outs, strict=True)]
        elif kind in _SUBPROGRAM_KINDS:
            outs = RULES[kind](ctx, eqn, ins, schedule.subs[i])
        elif all(is_const(j) for j in ins) or not any(v.inexact for v in eqn.outs):
            outs = [const_jet(o, K) for o in primal(ctx, eqn, [j[0] for j in ins])]
        else:
            outs = RULES[kind](rctx, eqn, ins)
            outs = [_fit(rctx, o, v) for o, v in zip(outs, eqn.outs, strict=True)]
        if sparse is not None:  # a value no particle reaches carries no per-direction coefficient in any width
            outs = [sparse.trim(j, v) for j, v in zip(outs, eqn.outs, strict=True)]
        for v, jet in zip(eqn.outs, outs, strict=True):
            _check(eqn, v, jet, schedule)
            env[v] = jet
        for v in dead[i]:  # drop coefficients nothing reads any more (eager backends free them now)
            env.pop(v, None)
            if sparse is not None:
                sparse.forget(v)
    if sparse is not None:
        return [sparse.dense(env[v], v) for v in program.outvars]
    return [env[v] for v in program.outvars]


def _dead_after(program: Program) -> list[tuple]:
    """For each equation, the values last read by it (never the program's outputs); cached on the program."""
    cached = program.__dict__.get("_dead_after")
    if cached is None:
        last: dict = {}
        for i, eqn in enumerate(program.eqns):
            for v in eqn.ins:
                last[v] = i
            for v in eqn.outs:
                last.setdefault(v, i)  # an output nobody reads dies where it is made
        keep = set(program.outvars)
        cached = [[] for _ in program.eqns]
        for v, i in last.items():
            if v not in keep:
                cached[i].append(v)
        cached = [tuple(d) for d in cached]
        program.__dict__["_dead_after"] = cached
    return cached


def _fit(ctx: Context, jet: list, var) -> list:
    if not var.inexact:
        return [jet[0]] + [None] * ctx.order
    return [c if c is None or k == 0 else ctx.layout.fit(c, var, ctx.per_direction(k)) for k, c in enumerate(jet)]


def _check(eqn: Equation, var, jet: list, schedule: Schedule) -> None:
    present = schedule.pattern(var)
    for k, c in enumerate(jet[1:], start=1):
        if c is not None and not present[k]:
            raise AssertionError(
                f"internal error: {eqn!r} produced coefficient {k} of {var!r}, which the schedule marks zero"
            )


RULES = dict(_ALGEBRAIC)
RULES["selection"] = selection
RULES["generic"] = generic
RULES.update(make_rules(propagate))
