"""The Taylor rules of the algebraic kinds (docs/MATH.md §1–2), written once.

Each rule is ``rule(ctx, eqn, ins) -> outs``: ``ins`` are the operands' jets ``[x_0, …, x_K]`` in the
propagation layout (``None`` = structurally zero), ``outs`` one jet per output. The native work is done by
the callables of the equation's kind record (:mod:`multijet.engine.kinds`); the arithmetic here is plain
``+``/``*`` and :mod:`multijet.taylor`, so it runs on NumPy arrays, JAX tracers and emitted torch nodes.
"""

from __future__ import annotations

from .. import taylor
from ..derivatives import derivatives
from .context import Context, is_identity
from .program import Equation

__all__ = ["RULES", "is_const", "const_jet", "aligned"]


def is_const(jet: list) -> bool:
    return all(c is None for c in jet[1:])


def const_jet(value, K: int) -> list:
    return [value] + [None] * K


def aligned(ctx: Context, eqn: Equation, ins: list[list]) -> list[list]:
    """Operands' coefficients with unit point axes inserted up to the output's rank (for broadcasting)."""
    nd = eqn.outs[0].ndim
    out = []
    for jet, var in zip(ins, eqn.ins, strict=True):
        if var.ndim < nd:
            jet = [None if c is None else ctx.layout.align(c, var.ndim, nd) for c in jet]
        out.append(jet)
    return out


# --- linear ------------------------------------------------------------------------------------------------


def linear(ctx: Context, eqn: Equation, ins: list[list]) -> list[list]:
    """``y_k = p(x_k of the linear operands, x_0 of the others)``; a zero linear operand enters as zeros."""
    impl = eqn.impl
    lin = range(len(ins)) if impl.linear is None else impl.linear
    ins = [ctx.materialize(j, v) for j, v in zip(ins, eqn.ins, strict=True)]
    outs = [[o] for o in impl.fn(*[j[0] for j in ins])]
    for k in range(1, ctx.order + 1):
        if all(ins[i][k] is None for i in lin):
            for o in outs:
                o.append(None)
            continue
        args = [j[0] for j in ins]
        for i in lin:
            c = ins[i][k]
            args[i] = c if c is not None else ctx.layout.zeros(eqn.ins[i])
        for o, r in zip(outs, impl.fn(*args), strict=True):
            o.append(r)
    return outs


def sum_rule(ctx: Context, eqn: Equation, ins: list[list]) -> list[list]:
    """``y = Σ_i s_i x_i``: ``y_k = Σ_i s_i x_{i,k}`` (broadcasting); zero terms skipped."""
    ins = [ctx.materialize(j, v) for j, v in zip(ins, eqn.ins, strict=True)]
    y0 = eqn.impl.fn(*[j[0] for j in ins])[0]
    ins = aligned(ctx, eqn, ins)
    out = [y0]
    for k in range(1, ctx.order + 1):
        total = None
        for jet, s in zip(ins, eqn.impl.signs, strict=True):
            c = jet[k]
            if c is None:
                continue
            term = c if s == 1 else (-c if s == -1 else c * s)
            total = term if total is None else total + term
        out.append(total)
    return [out]


def zero(ctx: Context, eqn: Equation, ins: list[list]) -> list[list]:
    """Derivatives vanish (almost everywhere): only the primal."""
    return [const_jet(o, ctx.order) for o in eqn.impl.fn(*[j[0] for j in ins])]


# --- elementwise, products, division -------------------------------------------------------------------------


def elementwise(ctx: Context, eqn: Equation, ins: list[list]) -> list[list]:
    """Faà di Bruno with the shared derivative table: ``y_k = Σ_π g^{(|π|)}(x_0) Π_{B∈π} x_{|B|}``."""
    x = ctx.materialize(ins[0], eqn.ins[0])  # further operands are constants (a power's exponent)
    impl = eqn.impl
    y0 = impl.fn(*[j[0] for j in ins])[0]
    derivs = derivatives(impl.table, ctx.xp, x[0], y0, ctx.order, **impl.params)
    return [taylor.elementwise(x, y0, derivs, ctx.tctx)]


def bilinear(ctx: Context, eqn: Equation, ins: list[list]) -> list[list]:
    """Leibniz ``z_k = Σ_j C(k, j) B(a_j, b_{k−j})``; a constant operand skips its terms, and the identity
    seed against a constant gives ``B(e_r, W)`` directly."""
    impl = eqn.impl
    a, b = ins
    for side, (seed, other) in enumerate(((a, b), (b, a))):
        if impl.identity is not None and is_identity(seed[1]) and is_const(other) and is_const(seed[2:] + [None]):
            y1 = impl.identity(side, other[0])
            if y1 is not None and seed[1].rows is not None:  # a block or subset of the unit directions
                y1 = ctx.layout.take(y1, seed[1])
            if y1 is not None:
                y0 = impl.fn(a[0], b[0])[0]
                return [[y0, y1] + [None] * (ctx.order - 1)]
    a, b = ctx.materialize(a, eqn.ins[0]), ctx.materialize(b, eqn.ins[1])
    if impl.broadcasting:
        a, b = aligned(ctx, eqn, [a, b])
        return [taylor.product(a, b, ctx.tctx)]

    def mul(p, q):
        return impl.fn(p, q)[0]

    return [taylor.product(a, b, ctx.tctx, mul=mul)]


def divide(ctx: Context, eqn: Equation, ins: list[list]) -> list[list]:
    """``a / b``: ``(a/b)_k = a_k / b_0`` for a constant ``b``, else Leibniz of ``a · (1/b)``."""
    a, b = aligned(ctx, eqn, [ctx.materialize(j, v) for j, v in zip(ins, eqn.ins, strict=True)])
    y0 = eqn.impl.fn(ins[0][0], ins[1][0])[0]
    if is_const(b):
        return [[y0] + [None if c is None else c / b[0] for c in a[1:]]]
    r0 = 1 / b[0]
    rb = taylor.elementwise(b, r0, derivatives("reciprocal", ctx.xp, b[0], r0, ctx.order), ctx.tctx)
    out = taylor.product(a, rb, ctx.tctx)
    out[0] = y0
    return [out]


# --- linear algebra ----------------------------------------------------------------------------------------------


def linalg(ctx: Context, eqn: Equation, ins: list[list]) -> list[list]:
    """``inv``: ``Y_k = −Y_0 Σ_j C(k,j) A_j Y_{k−j}``; ``solve``: ``A⁻¹ B`` by Leibniz; ``slogdet``:
    ``L_k = Σ_j C(k−1, j) tr(Y_j A_{k−j})``; ``det = sign · exp(L)``; ``cholesky``: ``L_k = L_0 Φ(L_0⁻¹ M_k L_0⁻ᵀ)``."""
    impl = eqn.impl
    ins = [ctx.materialize(j, v) for j, v in zip(ins, eqn.ins, strict=True)]
    a = ins[0]
    primal = impl.fn(*[j[0] for j in ins])
    K = ctx.order

    def mm(p, q):
        return impl.matmul(p, q)[0]

    if impl.op == "inv":
        return [taylor.inverse(a, primal[0], ctx.tctx, mm)]
    if impl.op == "cholesky":
        l0 = primal[0]
        tr, phi = (lambda p: impl.transpose(p)[0]), (lambda p: impl.phi(p)[0])
        return [taylor.cholesky(a, l0, impl.inv(l0)[0], ctx.tctx, mm, tr, phi)]
    if impl.op == "solve":
        inv = taylor.inverse(a, impl.inv(a[0])[0], ctx.tctx, mm)
        out = taylor.product(inv, ins[1], ctx.tctx, mul=lambda p, q: impl.apply(p, q)[0])
        out[0] = primal[0]
        return [out]
    lower = taylor.JetContext(max(K - 1, 0), False, ctx.wsum)
    inv = taylor.inverse(a[:K], impl.inv(a[0])[0], lower, mm) if K >= 1 else []
    trace = impl.trace
    if impl.op == "slogdet":
        sign, l0 = primal
        return [const_jet(sign, K), taylor.logdet(a, inv, l0, ctx.tctx, lambda p, q: trace(p, q)[0])]
    if impl.op == "det":
        sign, l0 = impl.slogdet(a[0])
        L = taylor.logdet(a, inv, l0, ctx.tctx, lambda p, q: trace(p, q)[0])
        e0 = ctx.xp.exp(l0)
        out = taylor.elementwise(L, e0, derivatives("exp", ctx.xp, l0, e0, K), ctx.tctx)
        return [[primal[0]] + [None if c is None else c * sign for c in out[1:]]]
    raise ValueError(f"unknown linear-algebra rule {impl.op!r}")


RULES = {
    "linear": linear,
    "sum": sum_rule,
    "zero": zero,
    "elementwise": elementwise,
    "bilinear": bilinear,
    "divide": divide,
    "linalg": linalg,
}
