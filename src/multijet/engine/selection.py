"""Selections, written once: max, min, clamp, reduce_max/min, sort — ``y_k = Σ_i s_i x_{i,k}``.

A selection is piecewise linear: away from ties the primal picks an operand and every Taylor coefficient
follows it. At an exact tie the frameworks' own AD differ, so the scales there come from the backend's tie
convention (:data:`multijet.engine.kinds.TIES`): with it, collapsed, standard and that framework's nested AD
agree at ties too. The scales are constants of the primal, so the same ``s_i`` holds at every order.
"""

from __future__ import annotations

from .context import Context
from .program import Equation
from .rules import aligned, const_jet

__all__ = ["selection", "tie_scales"]


def _indicator(xp, cond, like):
    """``1.0`` where ``cond`` holds, else ``0.0``, in ``like``'s dtype and device."""
    zero = like * 0
    return xp.where(cond, zero + 1, zero)


def tie_scales(xp, rule: str, ties: str, x0s: list, y0=None) -> list:
    """The scales ``s_i`` of the operands of a two-operand ``max``/``min`` or of ``clamp(lo, x, hi)``."""
    if rule in ("max", "min"):
        a0, b0 = x0s
        wins = xp.greater(a0, b0) if rule == "max" else xp.less(a0, b0)
        s_a = _indicator(xp, wins, a0 + b0 * 0)
        if ties in ("split", "first"):
            tie = _indicator(xp, xp.equal(a0, b0), s_a)
            s_a = s_a + tie * (0.5 if ties == "split" else 1.0)
        return [s_a, 1 - s_a]
    if rule == "clamp":
        lo, x, hi = x0s
        like = x + lo * 0 + hi * 0
        if ties == "inclusive":  # torch: x keeps its derivative on the boundary
            s_x = _indicator(xp, xp.logical_and(xp.greater_equal(x, lo), xp.less_equal(x, hi)), like)
            s_lo = _indicator(xp, xp.less(x, lo), like)
            s_hi = _indicator(xp, xp.greater(x, hi), like) * (1 - s_lo)
        elif ties == "exclusive":  # lax.clamp: nobody on the boundary
            s_x = _indicator(xp, xp.logical_and(xp.greater(x, lo), xp.less(x, hi)), like)
            s_lo = _indicator(xp, xp.logical_and(xp.greater(lo, x), xp.less(lo, hi)), like)
            s_hi = _indicator(xp, xp.less(hi, x), like)
        else:
            raise ValueError(f"clamp has no tie convention {ties!r}; expected 'inclusive' or 'exclusive'")
        return [s_lo, s_x, s_hi]
    raise ValueError(f"no tie scales for the selection {rule!r}")


def _combine(jets: list[list], scales: list, y0, K: int) -> list:
    out = [y0]
    for k in range(1, K + 1):
        total = None
        for jet, s in zip(jets, scales, strict=True):
            if jet[k] is not None:
                term = jet[k] * s
                total = term if total is None else total + term
        out.append(total)
    return out


def selection(ctx: Context, eqn: Equation, ins: list[list]) -> list[list]:
    """``y_k = Σ_i s_i x_{i,k}`` with the scales of the primal's choice and the backend's tie convention."""
    impl = eqn.impl
    K, xp = ctx.order, ctx.xp
    ins = [ctx.materialize(j, v) for j, v in zip(ins, eqn.ins, strict=True)]
    x0s = [j[0] for j in ins]
    outs0 = impl.fn(*x0s)
    y0 = outs0[0]
    if impl.rule in ("max", "min", "clamp"):
        jets = aligned(ctx, eqn, ins)
        if impl.rule == "clamp":
            jets = [jets[i] for i in impl.order]
        scales = tie_scales(xp, impl.rule, impl.ties, [j[0] for j in jets], y0)
        return [_combine(jets, scales, y0, K)] + [const_jet(o, K) for o in outs0[1:]]
    if impl.rule in ("reduce_max", "reduce_min"):
        (x,) = ins
        if impl.ties != "split":
            raise ValueError(f"reductions support the 'split' tie convention, got {impl.ties!r}")
        mask = _indicator(xp, xp.equal(x[0], impl.expand(y0)[0]), x[0])
        count = impl.reduce(mask)[0]
        out = [y0] + [None if c is None else impl.reduce(c * mask)[0] / count for c in x[1:]]
        return [out] + [const_jet(o, K) for o in outs0[1:]]
    if impl.rule == "sort":
        (x,) = ins
        index = impl.argsort(x[0])[0]
        out = [y0] + [None if c is None else impl.take(c, index)[0] for c in x[1:]]
        return [out] + [const_jet(o, K) for o in outs0[1:]]
    raise ValueError(f"unknown selection rule {impl.rule!r}")
