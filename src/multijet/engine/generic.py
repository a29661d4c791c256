"""The generic rule: exact Taylor coefficients of any differentiable primitive by nested forward-mode AD.

Per direction, ``y_k = d^k/dt^k p(Σ_j x_j t^j / j!)`` at ``t = 0`` (nested jvp of the primitive along the
univariate Taylor polynomial of its inputs). Collapsed, the top enters linearly (docs/MATH.md §2):
``S_K(y) = J S_K(x) + Σ_r w_r [y_K^{(r)} with x_K = 0]``. The backend supplies its forward mode (``jvp``),
a map over the leading axes, and how to run the computation natively (:class:`multijet.engine.kinds.Generic`).
"""

from __future__ import annotations

import math

from ..errors import UnsupportedPrimitiveError
from .context import Context
from .program import Equation
from .rules import is_const

__all__ = ["generic", "taylor_derivatives"]


def taylor_derivatives(jvp, fn, K: int, t0) -> list:
    """``[fn(t0), fn'(t0), …, fn^{(K)}(t0)]`` (each a list over ``fn``'s outputs) by nested ``jvp``."""

    def level(k):
        if k == 0:
            return lambda t: [list(fn(t))]
        lower = level(k - 1)

        def g(t):
            vals, tans = jvp(lower, (t,), (t * 0 + 1,))
            return list(vals) + [tans[-1]]

        return g

    return level(K)(t0)


def generic(ctx: Context, eqn: Equation, ins: list[list]) -> list[list]:
    impl = eqn.impl
    K = ctx.order
    ins = [ctx.materialize(j, v) for j, v in zip(ins, eqn.ins, strict=True)]
    primals = [j[0] for j in ins]
    diff = [i for i, (j, v) in enumerate(zip(ins, eqn.ins, strict=True)) if v.inexact and not is_const(j)]
    out_ix = [i for i, v in enumerate(eqn.outs) if v.inexact]
    top_n = K - 1 if ctx.collapsed else K
    present = [[ins[i][k] is not None for k in range(1, top_n + 1)] for i in diff]
    flat_dir = [ins[i][k] for i in diff for k in range(1, top_n + 1) if ins[i][k] is not None]
    need_top = ctx.collapsed and K >= 1 and any(ins[i][K] is not None for i in diff)
    tops = [ins[i][K] if ins[i][K] is not None else ctx.layout.zeros(eqn.ins[i]) for i in diff] if need_top else []
    n_p, n_d = len(primals), len(flat_dir)
    n_out = len(eqn.outs)

    def sub(prims, args):
        full = list(prims)
        for i, a in zip(diff, args, strict=True):
            full[i] = a
        res = impl.point_fn(*full)
        return [res[i] for i in out_ix]

    def per_direction(*arrays):
        prims, coeffs = arrays[:n_p], iter(arrays[n_p:])
        cs = [[next(coeffs) if p else None for p in ps] for ps in present]

        def poly(t):
            args = []
            for i, c_i in zip(diff, cs, strict=True):
                a = prims[i]
                for k, c in enumerate(c_i, start=1):
                    if c is not None:
                        a = a + (t**k / math.factorial(k)) * c
                args.append(a)
            return sub(prims, args)

        t0 = impl.scalar_zero(prims[diff[0]])
        levels = taylor_derivatives(impl.jvp, poly, K, t0)[1:]
        return [c for level in levels for c in level]

    def linear_top(*arrays):
        prims, tans = arrays[:n_p], arrays[n_p:]
        return list(impl.jvp(lambda *a: sub(prims, a), tuple(prims[i] for i in diff), tuple(tans))[1])

    def compute(*arrays):
        prims, dirs, tps = arrays[:n_p], arrays[n_p : n_p + n_d], arrays[n_p + n_d :]
        out = list(impl.map_lead(impl.point_fn, prims, [False] * n_p))
        if n_d:
            out += impl.map_lead(per_direction, list(prims) + list(dirs), [False] * n_p + [True] * n_d)
        if tps:
            out += impl.map_lead(linear_top, list(prims) + list(tps), [False] * (n_p + len(tps)))
        return out

    try:
        res = impl.run(compute, *primals, *flat_dir, *tops)
    except (NotImplementedError, TypeError, ValueError, RuntimeError) as e:
        raise UnsupportedPrimitiveError(
            eqn.prim,
            ctx.backend,
            eqn.where,
            hint=f"the generic rule (nested forward-mode AD) failed: the framework cannot differentiate it "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}); "
            f"{impl.hint}.",
        ) from e
    outs = [[o] + [None] * K for o in res[:n_out]]
    per_dir = res[n_out : n_out + (K * len(out_ix) if n_d else 0)]
    lin_top = res[n_out + len(per_dir) :]
    for n, i in enumerate(out_ix):
        for k in range(1, K + 1):
            c = per_dir[(k - 1) * len(out_ix) + n] if per_dir else None
            if ctx.collapsed and k == K:
                c = None if c is None else ctx.wsum(c)
                if lin_top:
                    c = lin_top[n] if c is None else c + lin_top[n]
            outs[i][k] = c
    return outs
