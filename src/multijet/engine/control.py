"""Calls and control flow (scan, while, cond): the zero-pattern fixed point and the flattened carries.

The schedule side (:data:`TRANSFER`) grows a loop carry's pattern until the body maps it into itself and
unites the branches of a cond. The propagation side (:func:`make_rules`) runs the body on jets whose carry
holds exactly the fixed-point coefficients (absent ones filled with zeros), flattened to a list of arrays
so the backend's native loop (``lax.scan``, ``lax.while_loop``, ``lax.switch``) can carry them.
"""

from __future__ import annotations

from collections.abc import Callable

from .patterns import pattern_union

__all__ = ["TRANSFER", "make_rules"]


# --- schedule transfer functions ----------------------------------------------------------------------------


def _call_transfer(eqn, ins, K, collapsed, make):
    sub = make(eqn.impl.program, K, collapsed, ins)
    return [sub.pattern(v) for v in eqn.impl.program.outvars], False, (sub,)


def _loop_fixed_point(body, fixed: list, carry: list, after: list, n_carry: int, K, collapsed, make):
    """The carry pattern, grown until the body maps it into itself; the body's schedule at that pattern."""
    for _ in range(len(carry) * (K + 1) + 2):
        sub = make(body, K, collapsed, fixed + carry + after)
        out = [sub.pattern(v) for v in body.outvars[:n_carry]]
        grown = [pattern_union(c, o) for c, o in zip(carry, out, strict=True)]
        if grown == carry:
            return carry, sub
        carry = grown
    raise AssertionError("the loop carry's zero pattern did not converge")  # pragma: no cover


def _scan_transfer(eqn, ins, K, collapsed, make):
    impl = eqn.impl
    nc, ncar = impl.n_consts, impl.n_carry
    carry, sub = _loop_fixed_point(
        impl.body, ins[:nc], ins[nc : nc + ncar], ins[nc + ncar :], ncar, K, collapsed, make
    )
    ys = [sub.pattern(v) for v in impl.body.outvars[ncar:]]
    return carry + ys, False, (sub,)


def _while_transfer(eqn, ins, K, collapsed, make):
    impl = eqn.impl
    nb = impl.n_cond_consts + impl.n_body_consts
    carry = ins[nb:]
    carry, sub = _loop_fixed_point(
        impl.body, ins[impl.n_cond_consts : nb], carry, [], len(carry), K, collapsed, make
    )
    return carry, False, (sub,)


def _cond_transfer(eqn, ins, K, collapsed, make):
    subs = tuple(make(br, K, collapsed, ins[1:]) for br in eqn.impl.branches)
    outs = None
    for sub, br in zip(subs, eqn.impl.branches, strict=True):
        pats = [sub.pattern(v) for v in br.outvars]
        outs = pats if outs is None else [pattern_union(a, b) for a, b in zip(outs, pats, strict=True)]
    return outs, False, subs


TRANSFER = {"call": _call_transfer, "scan": _scan_transfer, "while": _while_transfer, "cond": _cond_transfer}


# --- propagation ----------------------------------------------------------------------------------------------


def _dirs(ctx, patterns) -> list[bool]:
    """Which of the flattened coefficients carry the direction axis."""
    return [ctx.per_direction(k) for pat in patterns for k, present in enumerate(pat) if present]


def _flatten(ctx, jets, vars_, patterns) -> list:
    """The present coefficients (by ``patterns``) at full leading shape, zeros where a jet has none."""
    out = []
    for jet, v, pat in zip(jets, vars_, patterns, strict=True):
        for k, present in enumerate(pat):
            if present:
                out.append(ctx.layout.canonical(jet[k], v, ctx.per_direction(k)))
    return out


def _unflatten(flat, patterns) -> list[list]:
    it = iter(flat)
    return [[next(it) if present else None for present in pat] for pat in patterns]


def make_rules(propagate: Callable) -> dict:
    """The propagation rules of the sub-program kinds, closed over the interpreter loop."""

    def call(ctx, eqn, ins, subs):
        return propagate(ctx, eqn.impl.program, ins, subs[0])

    def scan(ctx, eqn, ins, subs):
        (sub,) = subs
        impl, body = eqn.impl, eqn.impl.body
        nc, ncar = impl.n_consts, impl.n_carry
        ins = [ctx.materialize(j, v) for j, v in zip(ins, eqn.ins, strict=True)]
        consts = ins[:nc]
        carry_vars, xs_vars = body.invars[nc : nc + ncar], body.invars[nc + ncar :]
        carry_pat = [sub.pattern(v) for v in carry_vars]
        xs_pat = [sub.pattern(v) for v in xs_vars]
        ys_vars = body.outvars[ncar:]
        ys_pat = [sub.pattern(v) for v in ys_vars]

        def step(carry_flat, x_flat):
            outs = propagate(ctx, body, consts + _unflatten(carry_flat, carry_pat) + _unflatten(x_flat, xs_pat), sub)
            return _flatten(ctx, outs[:ncar], carry_vars, carry_pat), _flatten(ctx, outs[ncar:], ys_vars, ys_pat)

        init = _flatten(ctx, ins[nc : nc + ncar], carry_vars, carry_pat)
        xs = _flatten(ctx, ins[nc + ncar :], eqn.ins[nc + ncar :], xs_pat)
        carry_out, ys = impl.loop(step, init, xs, _dirs(ctx, xs_pat), _dirs(ctx, ys_pat))
        return _unflatten(carry_out, carry_pat) + _unflatten(ys, ys_pat)

    def while_(ctx, eqn, ins, subs):
        (sub,) = subs
        impl, body = eqn.impl, eqn.impl.body
        ncc, nbc = impl.n_cond_consts, impl.n_body_consts
        ins = [ctx.materialize(j, v) for j, v in zip(ins, eqn.ins, strict=True)]
        cond_consts, body_consts = ins[:ncc], ins[ncc : ncc + nbc]
        carry_vars = body.invars[nbc:]
        carry_pat = [sub.pattern(v) for v in carry_vars]
        K = ctx.order

        def cond(carry_flat):
            primal = [[j[0]] + [None] * K for j in _unflatten(carry_flat, carry_pat)]
            consts = [[j[0]] + [None] * K for j in cond_consts]
            return propagate(ctx, impl.cond, consts + primal)[0][0]

        def step(carry_flat):
            outs = propagate(ctx, body, body_consts + _unflatten(carry_flat, carry_pat), sub)
            return _flatten(ctx, outs, carry_vars, carry_pat)

        out = impl.loop(cond, step, _flatten(ctx, ins[ncc + nbc :], carry_vars, carry_pat))
        return _unflatten(out, carry_pat)

    def cond(ctx, eqn, ins, subs):
        impl = eqn.impl
        ins = [ctx.materialize(j, v) for j, v in zip(ins, eqn.ins, strict=True)]
        ops, op_vars = ins[1:], eqn.ins[1:]
        in_pat = [tuple(c is not None for c in j) for j in ops]
        out_pat = None
        for sub, br in zip(subs, impl.branches, strict=True):
            pats = [sub.pattern(v) for v in br.outvars]
            out_pat = pats if out_pat is None else [pattern_union(a, b) for a, b in zip(out_pat, pats, strict=True)]

        def branch_fn(sub, br):
            def fn(flat):
                outs = propagate(ctx, br, _unflatten(flat, in_pat), sub)
                return _flatten(ctx, outs, br.outvars, out_pat)

            return fn

        flat = _flatten(ctx, ops, op_vars, in_pat)
        fns = [branch_fn(s, b) for s, b in zip(subs, impl.branches, strict=True)]
        return _unflatten(impl.switch(ins[0][0], fns, flat), out_pat)

    return {"call": call, "scan": scan, "while": while_, "cond": cond}
