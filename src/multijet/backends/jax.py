"""The JAX executor: a jaxpr interpreter that carries collapsed (or standard) Taylor jets, under ``jax.jit``.

``f`` is captured once per call with ``jax.make_jaxpr`` at one point; :func:`_eval_jaxpr` walks its equations
and applies, per primitive, one of the shared rules of :mod:`multijet.taylor` chosen by the primitive's
*kind* (the rule table :data:`RULES`, keyed by primitive name):

* ``linear`` in some operands (reshape, slice, gather, concatenate, reduce_sum, select_n, …): every Taylor
  coefficient is pushed through the primitive itself (vmapped over the direction axis);
* ``elementwise`` ``g`` (tanh, exp, integer_pow, …): the shared derivative table + Faà di Bruno;
* ``bilinear`` (mul, dot_general): Leibniz with the primitive as the product (a constant operand skips terms);
* ``generic``: any other differentiable primitive, by nested ``jax.jvp`` of the primitive along the
  univariate Taylor polynomial of its inputs (exact at every order);
* call-like and control-flow primitives (jit, custom_vjp_call, checkpoint, cond, scan,
  while) are interpreted recursively.

Layout of a jet (``taylor``'s contract, specialised): a list ``[x_0, …, x_K]`` with ``None`` for structural
zeros; ``x_0`` has the value's own shape; ``x_1 … x_{K−1}`` (and ``x_K`` in ``standard`` mode) carry a leading
direction axis of size R; the collapsed top ``S_K`` has the value's own shape. Free arrays broadcast against
per-direction ones, so the shared rules apply unchanged. Batches are handled by ``jax.vmap`` over points,
which keeps everything that does not depend on the point (e.g. ``V Wᵀ`` of the first layer when ``V = I``)
unbatched.
"""

from __future__ import annotations

import collections
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jcore
from jax.extend import source_info_util

from .. import taylor
from ..derivatives import derivatives
from ..errors import UnsupportedPrimitiveError
from ..plan import Plan

__all__ = [
    "NAME",
    "run",
    "compile",
    "seed_from",
    "register_rule",
    "register_linear",
    "register_elementwise",
    "register_generic",
    "RULES",
    "jet_eval",
    "set_strict",
]

NAME = "jax"
_log = logging.getLogger(__name__)

Jet = list  # [x_0, x_1, …, x_K], None = structural zero
Rule = Callable[["RuleContext", Any, list], list]

#: primitive name → rule(ctx, eqn, in_jets) -> out_jets
RULES: dict[str, Rule] = {}
#: primitive name → kind (for printing and tests)
KINDS: dict[str, str] = {}
_STRICT = [False]


def set_strict(strict: bool = True) -> None:
    """In strict mode a primitive without a hand-written rule raises instead of using the generic rule."""
    _STRICT[0] = bool(strict)


# --- the context every rule receives ---------------------------------------------------------------------


@dataclass(frozen=True)
class RuleContext:
    """Order, mode and direction count of the jets being propagated, plus the shared ``JetContext``."""

    order: int
    collapsed: bool
    R: int
    tctx: taylor.JetContext

    def dirs(self, k: int) -> bool:
        """Whether coefficient ``k`` carries the direction axis (``x_0`` and the collapsed top do not)."""
        return 1 <= k < self.order or (k == self.order and k >= 1 and not self.collapsed)

    def zeros(self, k: int, aval) -> jax.Array:
        shape = ((self.R,) if self.dirs(k) else ()) + tuple(aval.shape)
        return jnp.zeros(shape, aval.dtype)


def _make_context(order: int, collapsed: bool, weights, R: int, ones: bool) -> RuleContext:
    if ones:

        def wsum(a):
            return jnp.sum(a, axis=0)

    else:

        def wsum(a):
            return jnp.tensordot(weights, a, axes=1)

    return RuleContext(order, collapsed, R, taylor.JetContext(order, collapsed, wsum))


# --- small helpers ---------------------------------------------------------------------------------------


def _inexact(aval) -> bool:
    return jnp.issubdtype(aval.dtype, jnp.inexact)


def _is_const(jet: Jet) -> bool:
    return all(c is None for c in jet[1:])


def _const_jet(value, K: int) -> Jet:
    return [value] + [None] * K


def _where(eqn) -> str | None:
    try:
        return source_info_util.summarize(eqn.source_info)
    except Exception:  # pragma: no cover - depends on JAX internals
        return None


def _is_complex(aval) -> bool:
    return jnp.issubdtype(getattr(aval, "dtype", jnp.float32), jnp.complexfloating)


def _bind_fn(eqn) -> Callable:
    """``*args -> list of outputs`` applying ``eqn``'s primitive with its parameters."""
    bound = eqn.primitive.get_bind_params(eqn.params)
    subfuns, params = bound if isinstance(bound, tuple) else ((), bound)  # older JAX returns (subfuns, params)
    prim = eqn.primitive

    def fn(*args):
        out = prim.bind(*subfuns, *args, **params)
        return list(out) if prim.multiple_results else [out]

    return fn


def _dirmap(fn: Callable, args: Sequence, flags: Sequence[bool]):
    """Apply ``fn`` to arrays of which those with ``flags`` carry a leading direction axis."""
    if not any(flags):
        return fn(*args)
    return jax.vmap(fn, in_axes=tuple(0 if f else None for f in flags))(*args)


def _align(jet: Jet, ndim_in: int, ndim_out: int, ctx: RuleContext) -> Jet:
    """Insert unit point axes into per-direction coefficients of a lower-rank (scalar) operand."""
    if ndim_in >= ndim_out:
        return jet
    out = list(jet)
    for k, c in enumerate(jet):
        if c is not None and ctx.dirs(k):
            out[k] = jnp.reshape(c, c.shape[:1] + (1,) * (ndim_out - ndim_in) + c.shape[1:])
    return out


def _fix(jet: Jet, aval, ctx: RuleContext) -> Jet:
    """Broadcast every coefficient to its layout shape and dtype (a rule may return a broadcastable one)."""
    out = []
    for k, c in enumerate(_materialize(jet)):
        if c is None:
            out.append(None)
            continue
        shape = ((ctx.R,) if ctx.dirs(k) else ()) + tuple(aval.shape)
        c = jnp.asarray(c)
        if c.dtype != aval.dtype and _inexact(aval):
            c = c.astype(aval.dtype)
        if c.shape != shape:
            c = jnp.broadcast_to(c, shape)
        out.append(c)
    return out


class _Identity:
    """The input seed ``x_1 = I`` (directions ``e_1 … e_D`` in order), kept symbolic so that the first
    ``dot_general`` with a constant (``x @ W``) gives its per-direction coefficient ``Wᵀ`` without a matmul."""

    def __init__(self, D: int, dtype):
        self.D, self.dtype = D, dtype
        self.shape, self.ndim = (D, D), 2

    def materialize(self) -> jax.Array:
        return jnp.eye(self.D, dtype=self.dtype)


def _materialize(jet: Jet) -> Jet:
    return [c.materialize() if isinstance(c, _Identity) else c for c in jet]


def _dot_identity(ctx: RuleContext, eqn, ins: list[Jet]) -> list[Jet] | None:
    """``dot_general(x, W)`` or ``dot_general(W, x)`` with ``x``'s jet ``(x_0, I, 0, …)`` and ``W`` constant:
    the per-direction coefficient ``e_r · W`` is ``W`` with the contracted axis moved to the front."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    if lb or rb or len(ins) != 2:
        return None
    for seed_i, other_i, contract in ((0, 1, (lc, rc)), (1, 0, (rc, lc))):
        seed, other = ins[seed_i], ins[other_i]
        if (
            isinstance(seed[1], _Identity)
            and all(c is None for c in seed[2:])
            and _is_const(other)
            and len(eqn.invars[seed_i].aval.shape) == 1
            and tuple(contract[0]) == (0,)
        ):
            y0 = _bind_fn(eqn)(ins[0][0], ins[1][0])[0]
            c = contract[1][0]
            y1 = jnp.moveaxis(jnp.asarray(other[0]), c, 0).astype(eqn.outvars[0].aval.dtype)
            return [[y0, y1] + [None] * (ctx.order - 1)]
    return None


# --- registration helpers (rules registered by kind) -----------------------------------------------------


def register_rule(name, rule: Rule, kind: str = "custom") -> None:
    """Register ``rule(ctx, eqn, in_jets) -> out_jets`` for the primitive ``name`` (a name or a Primitive)."""
    name = getattr(name, "name", name)
    RULES[name] = rule
    KINDS[name] = kind


def register_linear(name, linear_args: Sequence[int] | None = (0,)) -> None:
    """A primitive linear in the operands ``linear_args`` jointly (``None``: all); the others are held fixed."""

    def rule(ctx, eqn, ins):
        lin = range(len(ins)) if linear_args is None else linear_args
        return _joint_linear(ctx, eqn, ins, set(lin))

    register_rule(name, rule, "linear")


def register_elementwise(name, table: str | None = None, **table_params) -> None:
    """An elementwise ``y = g(x)`` with the shared derivative table ``table`` (default: the primitive name)."""
    table = table or getattr(name, "name", name)

    def rule(ctx, eqn, ins):
        (x,) = ins
        y0 = _bind_fn(eqn)(x[0])[0]
        params = {k: eqn.params[v] for k, v in table_params.items()}
        derivs = derivatives(table, jnp, x[0], y0, ctx.order, **params)
        return [taylor.elementwise(x, y0, derivs, ctx.tctx)]

    register_rule(name, rule, "elementwise")


def register_zero(name) -> None:
    """A primitive whose derivative vanishes (almost everywhere): sign, floor, round, stop_gradient, …"""

    def rule(ctx, eqn, ins):
        return [_const_jet(o, ctx.order) for o in _bind_fn(eqn)(*[j[0] for j in ins])]

    register_rule(name, rule, "zero")


def register_generic(name) -> None:
    """Force the generic nested-jvp rule for ``name`` (the default for unregistered primitives)."""
    register_rule(name, _generic_rule, "generic")


# --- the interpreter -------------------------------------------------------------------------------------


def jet_eval(ctx: RuleContext, jaxpr, consts: Sequence, in_jets: Sequence[Jet]) -> list[Jet]:
    """Propagate ``in_jets`` through an open ``jaxpr`` (with ``consts`` for its constvars)."""
    K = ctx.order
    env: dict = {}

    def read(v):
        if isinstance(v, jcore.Literal):
            return _const_jet(jnp.asarray(v.val, dtype=v.aval.dtype), K)
        return env[v]

    for v, c in zip(jaxpr.constvars, consts, strict=True):
        env[v] = _const_jet(c, K)
    for v, j in zip(jaxpr.invars, in_jets, strict=True):
        env[v] = j
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        outs = _eval_eqn(ctx, eqn, ins)
        for v, o in zip(eqn.outvars, outs, strict=True):
            if not isinstance(v, jcore.DropVar):
                env[v] = o
    return [read(v) for v in jaxpr.outvars]


def _eval_closed(ctx: RuleContext, closed, in_jets) -> list[Jet]:
    return jet_eval(ctx, closed.jaxpr, closed.consts, in_jets)


def _eval_eqn(ctx: RuleContext, eqn, ins: list[Jet]) -> list[Jet]:
    K = ctx.order
    name = eqn.primitive.name
    if all(_is_const(j) for j in ins) or not any(_inexact(v.aval) for v in eqn.outvars):
        return [_const_jet(o, K) for o in _bind_fn(eqn)(*[j[0] for j in ins])]
    rule = RULES.get(name)
    if any(isinstance(c, _Identity) for j in ins for c in j[1:2]):
        if name == "dot_general":
            outs = _dot_identity(ctx, eqn, ins)
            if outs is not None:
                return [_fix(o, v.aval, ctx) for o, v in zip(outs, eqn.outvars, strict=True)]
        if KINDS.get(name) != "call":  # call-like primitives pass the symbolic seed on to their body
            ins = [_materialize(j) for j in ins]
    if rule is not None and KINDS.get(name) == "elementwise" and any(_is_complex(v.aval) for v in eqn.invars):
        rule = None  # the derivative tables are real (|z| is not holomorphic): nested jvp is exact for complex z
    if rule is None:
        if _STRICT[0]:
            raise UnsupportedPrimitiveError(
                name,
                NAME,
                _where(eqn),
                hint=f"strict mode is on (multijet.backends.jax.set_strict); register a rule with "
                f"multijet.backends.jax.register_rule({name!r}, rule) or call set_strict(False) to use the "
                "generic nested-jvp rule.",
            )
        _log.debug("multijet: generic nested-jvp rule for primitive %r", name)
        rule = _generic_rule
    outs = rule(ctx, eqn, ins)
    return [_fix(o, v.aval, ctx) for o, v in zip(outs, eqn.outvars, strict=True)]


# --- linear ----------------------------------------------------------------------------------------------


def _joint_linear(ctx: RuleContext, eqn, ins: list[Jet], lin: set[int]) -> list[Jet]:
    """``y_k = p(x_k for the linear operands, x_0 for the others)``; a zero operand enters as zeros."""
    fn = _bind_fn(eqn)
    avals = [v.aval for v in eqn.invars]
    n_out = len(eqn.outvars)
    outs = [[o] for o in fn(*[j[0] for j in ins])]
    for k in range(1, ctx.order + 1):
        if all(ins[i][k] is None for i in lin):
            for o in outs:
                o.append(None)
            continue
        args, flags = [], []
        for i, j in enumerate(ins):
            if i in lin:
                c = j[k]
                args.append(c if c is not None else jnp.zeros(avals[i].shape, avals[i].dtype))
                flags.append(c is not None and ctx.dirs(k))
            else:
                args.append(j[0])
                flags.append(False)
        res = _dirmap(fn, args, flags)
        for o, r in zip(outs, res, strict=True):
            o.append(r)
    assert len(outs) == n_out
    return outs


def _add_rule(ctx, eqn, ins):
    nd = len(eqn.outvars[0].aval.shape)
    a, b = (_align(j, len(v.aval.shape), nd, ctx) for j, v in zip(ins, eqn.invars, strict=True))
    return [taylor.add(a, b)]


def _sub_rule(ctx, eqn, ins):
    nd = len(eqn.outvars[0].aval.shape)
    a, b = (_align(j, len(v.aval.shape), nd, ctx) for j, v in zip(ins, eqn.invars, strict=True))
    return [taylor.add(a, taylor.linear(b, jnp.negative))]


def _neg_rule(ctx, eqn, ins):
    return [taylor.linear(ins[0], jnp.negative)]


# --- products --------------------------------------------------------------------------------------------


def _mul_rule(ctx, eqn, ins):
    nd = len(eqn.outvars[0].aval.shape)
    a, b = (_align(j, len(v.aval.shape), nd, ctx) for j, v in zip(ins, eqn.invars, strict=True))
    return [taylor.product(a, b, ctx.tctx)]


def _div_rule(ctx, eqn, ins):
    nd = len(eqn.outvars[0].aval.shape)
    a, b = (_align(j, len(v.aval.shape), nd, ctx) for j, v in zip(ins, eqn.invars, strict=True))
    if _is_const(b):  # linear in a
        return [[None if c is None else c / b[0] for c in a]]
    r0 = 1 / b[0]
    rb = taylor.elementwise(b, r0, derivatives("reciprocal", jnp, b[0], r0, ctx.order), ctx.tctx)
    return [taylor.product(a, rb, ctx.tctx)]


def _bilinear_rule(ctx, eqn, ins):
    """Leibniz with the primitive itself as the product (dot_general, conv, …)."""
    fn = _bind_fn(eqn)
    avals = [v.aval for v in eqn.invars]

    def mul(p, q):
        flags = (p.ndim == len(avals[0].shape) + 1, q.ndim == len(avals[1].shape) + 1)
        return _dirmap(lambda u, v: fn(u, v)[0], (p, q), flags)

    return [taylor.product(ins[0], ins[1], ctx.tctx, mul=mul)]


# --- selections (piecewise linear, derivative from the primal's choice) ----------------------------------


def _select_scales(jets: Sequence[Jet], scales: Sequence, y0) -> Jet:
    """``y_k = Σ_i s_i x_k^{(i)}`` with constant scales ``s_i`` (the primal picks the branch)."""
    out = [y0]
    for k in range(1, len(jets[0])):
        total = None
        for j, s in zip(jets, scales, strict=True):
            if j[k] is not None:
                term = j[k] * s
                total = term if total is None else total + term
        out.append(total)
    return out


def _max_min_rule(ctx, eqn, ins):
    """``max``/``min``: the chosen operand's coefficients; ties split 1/2–1/2 as in JAX's own jvp."""
    nd = len(eqn.outvars[0].aval.shape)
    a, b = (_align(j, len(v.aval.shape), nd, ctx) for j, v in zip(ins, eqn.invars, strict=True))
    a0, b0 = ins[0][0], ins[1][0]
    y0 = _bind_fn(eqn)(a0, b0)[0]
    dt = eqn.outvars[0].aval.dtype
    wins = (a0 > b0) if eqn.primitive.name == "max" else (a0 < b0)
    sa = jnp.where(a0 == b0, jnp.asarray(0.5, dt), wins.astype(dt))
    return [_select_scales([a, b], [sa, 1 - sa], y0)]


def _clamp_rule(ctx, eqn, ins):
    """``clamp(lo, x, hi)`` with JAX's own jvp masks."""
    nd = len(eqn.outvars[0].aval.shape)
    lo, x, hi = (_align(j, len(v.aval.shape), nd, ctx) for j, v in zip(ins, eqn.invars, strict=True))
    l0, x0, h0 = ins[0][0], ins[1][0], ins[2][0]
    dt = eqn.outvars[0].aval.dtype
    y0 = _bind_fn(eqn)(l0, x0, h0)[0]
    s_x = ((x0 > l0) & (x0 < h0)).astype(dt)
    s_lo = ((l0 > x0) & (l0 < h0)).astype(dt)
    s_hi = (h0 < x0).astype(dt)
    return [_select_scales([lo, x, hi], [s_lo, s_x, s_hi], y0)]


def _reduce_chooser_rule(ctx, eqn, ins):
    """``reduce_max``/``reduce_min``: mean of the coefficients at the chosen locations (JAX's convention)."""
    (x,) = ins
    axes = tuple(eqn.params["axes"])
    aval = eqn.invars[0].aval
    y0 = _bind_fn(eqn)(x[0])[0]
    kept = tuple(i for i in range(len(aval.shape)) if i not in axes)
    mask = (x[0] == lax.broadcast_in_dim(y0, aval.shape, kept)).astype(aval.dtype)
    count = jnp.sum(mask, axis=axes)
    out = [y0]
    for k in range(1, ctx.order + 1):
        c = x[k]
        if c is None:
            out.append(None)
            continue
        ax = tuple(a + 1 for a in axes) if ctx.dirs(k) else axes
        out.append(jnp.sum(c * mask, axis=ax) / count)
    return [out]


def _pow_rule(ctx, eqn, ins):
    """``x ** y``: the shared power table for a constant scalar exponent, else the generic rule."""
    x, y = ins
    if _is_const(y) and np.ndim(y[0]) == 0:
        try:
            p = float(y[0])
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, TypeError):
            p = None  # a traced exponent (e.g. a parameter under jax.grad)
        if p is not None:
            y0 = _bind_fn(eqn)(x[0], y[0])[0]
            derivs = derivatives("pow", jnp, x[0], y0, ctx.order, exponent=p)
            return [taylor.elementwise(x, y0, derivs, ctx.tctx)]
    return _generic_rule(ctx, eqn, ins)


def _integer_pow_rule(ctx, eqn, ins):
    (x,) = ins
    y0 = _bind_fn(eqn)(x[0])[0]
    derivs = derivatives("pow", jnp, x[0], y0, ctx.order, exponent=float(eqn.params["y"]))
    return [taylor.elementwise(x, y0, derivs, ctx.tctx)]


# --- generic rule: nested jax.jvp of the primitive -------------------------------------------------------


def _taylor_derivatives(fn: Callable, K: int, t0):
    """``[fn(t0), fn'(t0), …, fn^{(K)}(t0)]`` for ``fn`` of a scalar ``t``, by nested ``jax.jvp``."""

    def level(k):
        if k == 0:
            return lambda t: [fn(t)]
        lower = level(k - 1)

        def g(t):
            vals, tans = jax.jvp(lower, (t,), (jnp.ones_like(t),))
            return vals + [tans[-1]]

        return g

    return level(K)(t0)


def _generic_rule(ctx: RuleContext, eqn, ins: list[Jet]) -> list[Jet]:
    """Exact Taylor coefficients of any differentiable primitive ``p``.

    Per direction, ``y_k = d^k/dt^k p(Σ_j x_j t^j / j!)`` at ``t = 0`` by nested jvp. Collapsed, the top is
    ``S_K(y) = J S_K(x) + Σ_r w_r [y_K^{(r)} with x_K = 0]`` (the top enters linearly, MATH.md §2).
    """
    K = ctx.order
    fn = _bind_fn(eqn)
    avals = [v.aval for v in eqn.invars]
    out_avals = [v.aval for v in eqn.outvars]
    primals = [j[0] for j in ins]
    diff = [i for i, j in enumerate(ins) if _inexact(avals[i]) and not _is_const(j)]
    out_ix = [i for i, a in enumerate(out_avals) if _inexact(a)]
    try:
        outs0 = fn(*primals)
        top_n = K - 1 if ctx.collapsed else K  # per-direction coefficients 1..top_n are propagated per direction

        def sub(*args):
            full = list(primals)
            for i, a in zip(diff, args, strict=True):
                full[i] = a
            res = fn(*full)
            return [res[i] for i in out_ix]

        # per-direction part (coefficients 1..top_n; the collapsed top is zero here)
        per_dir = None
        if any(ins[i][k] is not None for i in diff for k in range(1, top_n + 1)):
            coeffs = [[ins[i][k] for k in range(1, top_n + 1)] for i in diff]
            flat = [c for cs in coeffs for c in cs if c is not None]
            where = [[c is not None for c in cs] for cs in coeffs]

            def per_direction(*flat_c):
                it = iter(flat_c)
                cs = [[next(it) if w else None for w in ws] for ws in where]
                dt = avals[diff[0]].dtype

                def poly(t):
                    args = []
                    for i, c_i in zip(diff, cs, strict=True):
                        a = primals[i]
                        for k, c in enumerate(c_i, start=1):
                            if c is not None:
                                a = a + (t**k / math.factorial(k)) * c
                        args.append(a)
                    return sub(*args)

                return _taylor_derivatives(poly, K, jnp.zeros((), dt))[1:]

            per_dir = jax.vmap(per_direction)(*flat)  # [order 1..K][output]
        # collapsed top: the linear part J S_K(x)
        lin_top = None
        if ctx.collapsed and any(ins[i][K] is not None for i in diff):
            tans = [ins[i][K] if ins[i][K] is not None else jnp.zeros(avals[i].shape, avals[i].dtype) for i in diff]
            lin_top = jax.jvp(sub, [primals[i] for i in diff], tans)[1]
    except (NotImplementedError, TypeError, ValueError) as e:  # JAX could not take the nested jvp of it
        raise UnsupportedPrimitiveError(
            eqn.primitive.name,
            NAME,
            _where(eqn),
            hint=f"the generic rule (nested jax.jvp) failed: JAX cannot differentiate it "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0][:300]}). Register a Taylor rule with "
            f"multijet.backends.jax.register_rule({eqn.primitive.name!r}, rule).",
        ) from e
    outs = [[o] + [None] * K for o in outs0]
    for n, i in enumerate(out_ix):
        for k in range(1, K + 1):
            c = per_dir[k - 1][n] if per_dir is not None else None
            if ctx.collapsed and k == K:
                c = None if c is None else ctx.tctx.wsum(c)
                if lin_top is not None:
                    c = lin_top[n] if c is None else c + lin_top[n]
            outs[i][k] = c
    return outs


# --- call-like primitives and control flow ---------------------------------------------------------------


def _call_rule(ctx, eqn, ins):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        sub = eqn.params.get(key)
        if sub is None:
            continue
        if isinstance(sub, jcore.ClosedJaxpr):
            return _eval_closed(ctx, sub, ins)
        if isinstance(sub, jcore.Jaxpr):
            return jet_eval(ctx, sub, [], ins)
    raise UnsupportedPrimitiveError(
        eqn.primitive.name, NAME, _where(eqn), hint="no inner jaxpr found in its parameters."
    )


def _struct(jets) -> tuple:
    return tuple(tuple(c is not None for c in j) for j in jets)


def _union(a: tuple, b: tuple) -> tuple:
    return tuple(tuple(x or y for x, y in zip(p, q, strict=True)) for p, q in zip(a, b, strict=True))


def _flatten(jets) -> list:
    return [c for j in jets for c in j if c is not None]


def _unflatten(flat, struct) -> list[Jet]:
    it = iter(flat)
    return [[next(it) if present else None for present in s] for s in struct]


def _densify(jets, struct, avals, ctx: RuleContext) -> list[Jet]:
    out = []
    for j, s, aval in zip(jets, struct, avals, strict=True):
        out.append(
            [
                (c if c is not None else ctx.zeros(k, aval)) if present else None
                for k, (c, present) in enumerate(zip(j, s, strict=True))
            ]
        )
    return out


def _shape_struct(tree) -> tuple:
    return tuple(tuple(c is not None for c in j) for j in tree)


def _cond_rule(ctx, eqn, ins):
    branches = eqn.params["branches"]
    index = ins[0][0]
    ops = ins[1:]
    in_struct = _struct(ops)
    out_avals = [v.aval for v in eqn.outvars]

    def run_branch(br, flat):
        return _eval_closed(ctx, br, _unflatten(flat, in_struct))

    flat = _flatten(ops)
    structs = [_shape_struct(jax.eval_shape(partial(run_branch, br), flat)) for br in branches]
    out_struct = structs[0]
    for s in structs[1:]:
        out_struct = _union(out_struct, s)

    def branch_fn(br):
        def fn(flat):
            return _flatten(_densify(run_branch(br, flat), out_struct, out_avals, ctx))

        return fn

    out_flat = lax.switch(index, [branch_fn(br) for br in branches], flat)
    return _unflatten(out_flat, out_struct)


def _shapes(struct, avals, ctx: RuleContext) -> list:
    """Abstract arrays of the present coefficients of a structure (for ``jax.eval_shape``)."""
    return [
        jax.ShapeDtypeStruct(((ctx.R,) if ctx.dirs(k) else ()) + tuple(a.shape), a.dtype)
        for s, a in zip(struct, avals, strict=True)
        for k, present in enumerate(s)
        if present
    ]


def _carry_fixed_point(ctx, body: Callable, carry: list[Jet], avals, extra) -> tuple:
    """The carry's structural-zero pattern, grown until the body maps it into itself."""
    struct = _struct(carry)
    for _ in range(len(carry) * (ctx.order + 1) + 1):
        out = jax.eval_shape(
            lambda cf, xf, st=struct: body(_unflatten(cf, st), xf)[0], _shapes(struct, avals, ctx), extra
        )
        new = _union(struct, _shape_struct(out))
        if new == struct:
            return struct
        struct = new
    raise AssertionError("carry structure did not converge")  # pragma: no cover


def _scan_rule(ctx, eqn, ins):
    p = eqn.params
    nc, ncar = p["num_consts"], p["num_carry"]
    body_jaxpr = p["jaxpr"]
    consts, carry, xs = ins[:nc], ins[nc : nc + ncar], ins[nc + ncar :]
    carry_avals = [v.aval for v in eqn.invars[nc : nc + ncar]]
    xs_struct = _struct(xs)
    # scanned coefficients: move the scanned axis in front of the direction axis
    xs_flat = []
    for j in xs:
        for k, c in enumerate(j):
            if c is not None:
                xs_flat.append(jnp.moveaxis(c, 1, 0) if ctx.dirs(k) else c)
    ys_struct: list = [None]

    def body(carry_j, x_flat):
        outs = _eval_closed(ctx, body_jaxpr, list(consts) + list(carry_j) + _unflatten(x_flat, xs_struct))
        return outs[:ncar], outs[ncar:]

    x_shapes = [jax.ShapeDtypeStruct(c.shape[1:], c.dtype) for c in xs_flat]
    struct = _carry_fixed_point(ctx, body, carry, carry_avals, x_shapes)

    def step(carry_flat, x_flat):
        c_out, ys = body(_unflatten(carry_flat, struct), x_flat)
        ys_struct[0] = _struct(ys)
        return _flatten(_densify(c_out, struct, carry_avals, ctx)), _flatten(ys)

    init = _flatten(_densify(carry, struct, carry_avals, ctx))
    carry_out, ys_flat = lax.scan(step, init, xs_flat, length=p["length"], reverse=p["reverse"], unroll=p["unroll"])
    ys = _unflatten(ys_flat, ys_struct[0])
    ys = [[None if c is None else (jnp.moveaxis(c, 0, 1) if ctx.dirs(k) else c) for k, c in enumerate(j)] for j in ys]
    return _unflatten(carry_out, struct) + ys


def _while_rule(ctx, eqn, ins):
    p = eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    cond_consts, body_consts, carry = ins[:cn], ins[cn : cn + bn], ins[cn + bn :]
    carry_avals = [v.aval for v in eqn.invars[cn + bn :]]
    cond_fun = jcore.jaxpr_as_fun(p["cond_jaxpr"])
    cond_primals = [j[0] for j in cond_consts]

    def body(carry_j, _):
        return _eval_closed(ctx, p["body_jaxpr"], list(body_consts) + list(carry_j)), None

    struct = _carry_fixed_point(ctx, body, carry, carry_avals, [])

    def cond(carry_flat):
        primal = [j[0] for j in _unflatten(carry_flat, struct)]
        return cond_fun(*cond_primals, *primal)[0]

    def step(carry_flat):
        out, _ = body(_unflatten(carry_flat, struct), None)
        return _flatten(_densify(out, struct, carry_avals, ctx))

    init = _flatten(_densify(carry, struct, carry_avals, ctx))
    return _unflatten(lax.while_loop(cond, step, init), struct)


# --- the rule table --------------------------------------------------------------------------------------

for _n in ("tanh", "logistic", "sin", "cos", "tan", "asin", "acos", "atan", "asinh", "acosh", "atanh", "sinh",
           "cosh", "exp", "expm1", "log", "log1p", "sqrt", "rsqrt", "square", "abs", "erf"):  # fmt: skip
    register_elementwise(_n)
register_rule("integer_pow", _integer_pow_rule, "elementwise")
register_rule("pow", _pow_rule, "elementwise")
for _n in ("sign", "floor", "ceil", "round", "stop_gradient", "nextafter", "is_finite"):
    register_zero(_n)
register_rule("add", _add_rule, "linear")
register_rule("add_any", _add_rule, "linear")
register_rule("sub", _sub_rule, "linear")
register_rule("neg", _neg_rule, "linear")
for _n in ("reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "rev", "slice", "reduce_sum",
           "cumsum", "convert_element_type", "copy", "copy_p", "reduce_precision", "real", "imag", "conj",
           "dynamic_slice", "gather", "split", "sharding_constraint", "optimization_barrier"):  # fmt: skip
    register_linear(_n, (0,))
register_linear("concatenate", None)
register_linear("pad", (0, 1))
register_linear("dynamic_update_slice", (0, 1))
register_linear("scatter-add", (0, 2))
register_linear("scatter_add", (0, 2))
register_linear("scatter", (0, 2))
register_rule("select_n", lambda ctx, eqn, ins: _joint_linear(ctx, eqn, ins, set(range(1, len(ins)))), "linear")
register_rule("mul", _mul_rule, "bilinear")
register_rule("div", _div_rule, "bilinear")
register_rule("dot_general", _bilinear_rule, "bilinear")
register_rule("conv_general_dilated", _bilinear_rule, "bilinear")
register_rule("max", _max_min_rule, "selection")
register_rule("min", _max_min_rule, "selection")
register_rule("clamp", _clamp_rule, "selection")
register_rule("reduce_max", _reduce_chooser_rule, "selection")
register_rule("reduce_min", _reduce_chooser_rule, "selection")
for _n in ("jit", "pjit", "closed_call", "core_call", "custom_vjp_call",
           "custom_vjp_call_jaxpr", "checkpoint", "remat", "remat2"):  # fmt: skip
    register_rule(_n, _call_rule, "call")
_JAX_DIR = os.path.dirname(os.path.abspath(jax.__file__))


def _defined_in_jax(eqn) -> bool:
    """Whether a ``custom_jvp_call``'s function is JAX's own (``jax.nn.relu``, ``logaddexp``, …)."""
    info = getattr(getattr(eqn.params.get("call_jaxpr"), "jaxpr", None), "debug_info", None)
    src = getattr(info, "func_src_info", None) or ""
    return " at " in src and os.path.abspath(src.rsplit(" at ", 1)[1].rsplit(":", 1)[0]).startswith(_JAX_DIR)


def _custom_jvp_rule(ctx, eqn, ins):
    """A user's ``custom_jvp`` rule is honoured, as nested AD honours it (its body may compute another
    derivative: an unrolled fixed-point solve, a callback), by the generic nested-jvp rule. JAX's own
    ``custom_jvp`` functions (relu, softplus's logaddexp, …) define their rule for numerical stability or a
    kink's value; their body is differentiated with the fast hand-written rules (equal away from kinks)."""
    if _defined_in_jax(eqn):
        return _call_rule(ctx, eqn, ins)
    return _generic_rule(ctx, eqn, [_materialize(j) for j in ins])


register_rule("custom_jvp_call", _custom_jvp_rule, "call")
register_rule("cond", _cond_rule, "control flow")
register_rule("scan", _scan_rule, "control flow")
register_rule("while", _while_rule, "control flow")


# --- groups, points, batches -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _GroupSpec:
    """What is static about a jet group (the arrays V, w are passed to the jitted function)."""

    order: int
    R: int
    identity: bool  # directions == I_D in order (the input seed is the identity; the gradient is free)
    ones: bool  # all weights are 1


def _specs(plan: Plan) -> tuple[_GroupSpec, ...]:
    out = []
    for g in plan.groups:
        D = g.directions.shape[1]
        identity = g.directions.shape[0] == D and bool(np.array_equal(g.directions, np.eye(D)))
        out.append(_GroupSpec(g.order, g.size, identity, bool(np.all(g.weights == 1.0))))
    return tuple(out)


def _arrays(plan: Plan, dtype) -> tuple:
    return tuple((jnp.asarray(g.directions, dtype), jnp.asarray(g.weights, dtype)) for g in plan.groups)


def _jet_group(jaxpr, consts, x, spec: _GroupSpec, V, w, collapsed: bool):
    K = spec.order
    out_aval = jaxpr.outvars[0].aval
    if K == 0:
        (y,) = jet_eval(_make_context(0, collapsed, w, 1, True), jaxpr, consts, [[x]])
        y = jnp.broadcast_to(jnp.asarray(y[0], out_aval.dtype), out_aval.shape)
        return y, w[0] * y, None
    ctx = _make_context(K, collapsed, w, spec.R, spec.ones)
    seed = taylor.seed(x, V, ctx.tctx)
    if spec.identity and ctx.dirs(1):
        seed[1] = _Identity(spec.R, x.dtype)
    (out,) = jet_eval(ctx, jaxpr, consts, [seed])
    out = _fix(out, out_aval, ctx)
    value = jnp.broadcast_to(jnp.asarray(out[0], out_aval.dtype), out_aval.shape)
    total = taylor.top_sum(out, ctx.tctx)
    total = jnp.zeros(out_aval.shape, out_aval.dtype) if total is None else total
    grad = None
    if spec.identity and ctx.dirs(1):
        g1 = out[1] if out[1] is not None else ctx.zeros(1, out_aval)
        grad = jnp.moveaxis(g1, 0, -1)
    return value, total, grad


def _nested_group(fun, x, spec: _GroupSpec, V, w):
    """The framework's own nested AD along the plan's directions: forward-over-reverse for a scalar K=2,
    nested ``jax.jvp`` otherwise (also for order 4)."""
    K = spec.order
    if spec.identity:
        V = jnp.eye(spec.R, dtype=x.dtype)
    if K == 0:
        y = fun(x)
        return y, w[0] * y, None
    y = fun(x)
    if K == 2 and jnp.ndim(y) == 0:
        grad_f = jax.grad(fun)

        def hvp(v):
            g, hv = jax.jvp(grad_f, (x,), (v,))
            return g, jnp.vdot(hv, v)

        try:
            g, q = jax.vmap(hvp)(V)
        except (ValueError, TypeError) as e:  # no reverse mode (lax.while_loop, custom_vjp …): nested jvp below
            _log.debug("multijet: nested AD falls back to forward-over-forward (%s)", e)
        else:
            grad = g[0] if spec.identity else None
            return y, jnp.dot(w, q), grad

    def along(v):
        return _taylor_derivatives(lambda t: fun(x + t * v), K, jnp.zeros((), x.dtype))[K]

    q = jax.vmap(along)(V)
    return y, jnp.tensordot(w, q, axes=1), None


def _point(jaxpr, specs, method, return_grad, consts, x, arrays):
    """``(value, Σ_groups Σ_r w_r f_K(v_r), gradient or None)`` at one point ``x`` (D,)."""
    fun = partial(_apply_jaxpr, jaxpr, consts)
    value, total, grad = None, None, None
    for spec, (V, w) in zip(specs, arrays, strict=True):
        if method == "nested":
            v, t, g = _nested_group(fun, x, spec, V, w)
        else:
            v, t, g = _jet_group(jaxpr, consts, x, spec, V, w, method == "collapsed")
        value = v
        total = t if total is None else total + t
        grad = grad if grad is not None else g
    if return_grad and grad is None:
        if method == "nested":
            try:
                grad = jax.jacrev(fun)(x)
            except (ValueError, TypeError):  # no reverse mode through f: forward mode gives the same Jacobian
                grad = jax.jacfwd(fun)(x)
        else:
            D = x.shape[0]
            spec = _GroupSpec(1, D, True, True)
            _, _, grad = _jet_group(jaxpr, consts, x, spec, None, jnp.ones(D, x.dtype), False)
    if not return_grad:  # the value is not part of the result: let XLA drop the primal output
        return None, total, None
    return value, total, grad


def _apply_jaxpr(jaxpr, consts, x):
    return jcore.jaxpr_as_fun(jcore.ClosedJaxpr(jaxpr, consts))(x)[0]


def _evaluate(jaxpr, specs, method, return_grad, consts, X, arrays):
    point = partial(_point, jaxpr, specs, method, return_grad)
    if X.ndim == 1:
        return point(consts, X, arrays)
    return jax.vmap(point, in_axes=(None, 0, None))(consts, X, arrays)


_RUNNERS: collections.OrderedDict = collections.OrderedDict()
_MAX_RUNNERS = 64


def _runner(jaxpr, specs, method, return_grad) -> Callable:
    """A jitted ``(consts, X, arrays) -> (value, result, grad)``, cached on the program's text and the plan's
    static structure (so repeated eager calls, with new parameters or new random directions, reuse it)."""
    key = (str(jaxpr), specs, method, return_grad, _STRICT[0], frozenset(RULES.items()))
    fn = _RUNNERS.get(key)
    if fn is None:
        fn = jax.jit(partial(_evaluate, jaxpr, specs, method, return_grad))
        _RUNNERS[key] = fn
        if len(_RUNNERS) > _MAX_RUNNERS:
            _RUNNERS.popitem(last=False)
    else:
        _RUNNERS.move_to_end(key)
    return fn


_DICT_OUTPUT = "f returned a dict; return one array (or a tuple/list of equally shaped arrays, which are stacked)"


def _stacked_output(f: Callable) -> Callable:
    """``f`` with a tuple/list of equally shaped outputs stacked into one array (as every backend does)."""

    def g(x):
        out = f(x)
        if isinstance(out, dict):
            raise TypeError(_DICT_OUTPUT)
        if isinstance(out, tuple | list):
            parts = [jnp.asarray(o) for o in out]
            if len({p.shape for p in parts}) > 1:
                raise TypeError(
                    "f returned a tuple/list of arrays of shapes "
                    f"{[tuple(p.shape) for p in parts]}; multijet stacks such outputs, so they must share a shape"
                )
            out = jnp.stack(parts)
        return out

    return g


def _capture(f: Callable, x):
    """``jax.make_jaxpr`` of ``f`` at one point of ``x``'s dimension and dtype."""
    D = x.shape[-1]
    dtype = x.dtype
    closed = jax.make_jaxpr(_stacked_output(f))(jax.ShapeDtypeStruct((D,), dtype))
    if len(closed.jaxpr.outvars) != 1:
        raise TypeError(
            f"f must return one array, got {len(closed.jaxpr.outvars)} outputs; apply the operator to each output "
            "separately or stack them into one array"
        )
    return closed


def _as_array(x):
    return x if isinstance(x, jax.Array) else jnp.asarray(x)


def run(plan: Plan, f: Callable, x, *, method: str = "collapsed", return_grad: bool = False):
    """Evaluate the plan on ``f`` at ``x`` (D,) or (N, D); returns ``(value, result, grad)``."""
    x = _as_array(x)
    closed = _capture(f, x)
    fn = _runner(closed.jaxpr, _specs(plan), method, return_grad)
    return fn(list(closed.consts), x, _arrays(plan, x.dtype))


def compile(plan: Plan, f: Callable, x_example, *, method: str = "collapsed", return_grad: bool = False):
    """Trace ``f`` once at ``x_example`` and return the jitted ``x -> (value, result, grad)``.

    The arrays ``f`` closes over (e.g. network parameters) and the plan's directions are captured now and
    compiled in as constants (XLA can then pre-pack the weights). To differentiate with respect to changing
    parameters, call ``mj.laplacian`` inside your own ``jax.jit``/``jax.grad`` instead.
    """
    x_example = _as_array(x_example)
    closed = _capture(f, x_example)
    jaxpr, consts = closed.jaxpr, list(closed.consts)
    specs, arrays = _specs(plan), _arrays(plan, x_example.dtype)
    fn = jax.jit(lambda x: _evaluate(jaxpr, specs, method, return_grad, consts, x, arrays))

    return CompiledJax(fn, x_example)


class CompiledJax:
    """``compile``'s callable: the jitted jet program; ``.code`` prints its jaxpr, ``.lower`` lowers it."""

    def __init__(self, fn, x_example):
        self._fn, self._x_example = fn, x_example
        self.lower = fn.lower

    def __call__(self, x):
        x = _as_array(x)
        if x.dtype != self._x_example.dtype:
            raise TypeError(f"compiled for dtype {self._x_example.dtype}, got x of dtype {x.dtype}")
        return self._fn(x)

    @property
    def code(self) -> str:
        """The jaxpr of the jet program at ``x_example``'s shape (what XLA compiles)."""
        return str(jax.make_jaxpr(self._fn)(self._x_example))


def seed_from(key) -> int:
    """An integer seed for the planner from a ``jax.random`` key (typed or raw ``uint32[2]``)."""
    try:
        bits = jax.random.bits(key, (2,), dtype=jnp.uint32)
        hi, lo = (int(b) for b in np.asarray(bits))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError) as e:
        raise TypeError(
            "a traced jax.random key cannot choose the directions (the plan is built in Python); "
            "pass a concrete key or an int seed, or use mj.compile once outside jit"
        ) from e
    except Exception as e:
        raise TypeError(f"seed must be an int, a numpy Generator or a jax.random key, got {type(key).__name__}") from e
    return (hi << 32) | lo
