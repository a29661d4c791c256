"""JAX's primitive table: jaxpr primitive → the engine's kind, with the native callables lifted.

Layout (see :mod:`multijet.engine.context`): a per-direction coefficient is ``(R, *shape)``; the primal
and the collapsed top have no direction axis (``shape``), so constants enter unchanged; points are
vmapped outside. A primitive is *lifted* by ``jax.vmap`` over the direction axis of the operands that
have one (known from the operands' point ranks); ``dot_general`` is lifted by hand so the direction axis
becomes a free or batch dimension of one ``dot_general`` whose output has it in front (no transposes,
whichever way the user wrote the product).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from .. import extend
from ..engine import kinds

__all__ = ["RULES", "KINDS", "bind_fn", "lift", "map_lead", "register_rule", "vary_like"]

#: primitive name → builder(eqn, cap) -> kind record
RULES: dict[str, Callable] = {}
#: primitive name → kind name (for printing and tests)
KINDS: dict[str, str] = {}


def register_rule(name, builder: Callable, kind: str) -> None:
    """Register ``builder(eqn, cap) -> record`` of :mod:`multijet.engine.kinds` for the primitive ``name``."""
    name = getattr(name, "name", name)
    RULES[name] = builder
    KINDS[name] = kind


def bind_fn(eqn) -> Callable:
    """``*args -> list of outputs`` applying ``eqn``'s primitive with its parameters (point shapes)."""
    bound = eqn.primitive.get_bind_params(eqn.params)
    subfuns, params = bound if isinstance(bound, tuple) else ((), bound)
    prim = eqn.primitive

    def fn(*args):
        out = prim.bind(*subfuns, *_same_varying(args), **params)
        return list(out) if prim.multiple_results else [out]

    return fn


def _varying(a) -> frozenset:
    """The manual mesh axes ``a`` (an array or a ``ShapeDtypeStruct``) varies over: its type's
    ``mat.varying`` (``vma`` in older JAX)."""
    if isinstance(a, jax.ShapeDtypeStruct):
        return frozenset(getattr(getattr(a, "manual_axis_type", None), "varying", None) or ())
    aval = jax.typeof(a)
    mat = getattr(aval, "mat", None)
    found = getattr(mat, "varying", None) if mat is not None else getattr(aval, "vma", None)
    return frozenset(found or ())


def vary_like(x, *refs):
    """``x`` cast to vary over the manual mesh axes ``refs`` vary over (inside ``shard_map``: a loop's initial
    carry built from constants must have its body's type); ``x`` itself elsewhere."""
    want = frozenset().union(*(_varying(r) for r in refs)) - _varying(x)
    return lax.pcast(x, tuple(sorted(want)), to="varying") if want else x


def _same_varying(args):
    """Inside ``shard_map`` the operands of one primitive vary over the same manual mesh axes: ``lax.add`` and
    the other wrappers cast a replicated operand (``pcast(…, to="varying")``); a direct ``bind`` must too."""
    vmas = [_varying(a) for a in args]
    union = frozenset().union(*vmas)
    if not union or all(v == union for v in vmas):
        return args
    return [a if v == union else lax.pcast(a, tuple(sorted(union - v)), to="varying") for a, v in zip(args, vmas,
                                                                                                  strict=True)]


def map_lead(fn: Callable, args, per_direction) -> list:
    """``fn`` (point shapes → list) mapped over the direction axis of the ``args`` flagged per-direction."""
    if not any(per_direction):
        return list(fn(*args))
    in_axes = tuple(0 if d else None for d in per_direction)
    return list(jax.vmap(lambda *a: list(fn(*a)), in_axes=in_axes)(*args))


def lift(fn: Callable, ndims) -> Callable:
    """``fn`` lifted for operands of point ranks ``ndims``: one with an extra axis carries the directions."""
    ndims = tuple(ndims)
    return lambda *args: map_lead(fn, args, [a.ndim > nd for a, nd in zip(args, ndims, strict=True)])


def _ndims(vars_) -> tuple[int, ...]:
    return tuple(len(v.aval.shape) for v in vars_)


def _lifted(eqn) -> Callable:
    return lift(bind_fn(eqn), _ndims(eqn.invars))


# --- dot_general with the direction axis placed by hand ------------------------------------------------------


def _dot_lifted(eqn, dimension_numbers=None) -> Callable:
    (lc, rc), (lb, rb) = dimension_numbers or eqn.params["dimension_numbers"]
    extra = {k: eqn.params[k] for k in ("precision", "preferred_element_type") if k in eqn.params}
    out_dtype = eqn.outvars[0].aval.dtype

    def shift(dims):
        return tuple(d + 1 for d in dims)

    nd_p, nd_q = _ndims(eqn.invars)

    def fn(p, q):
        rp, rq = p.ndim > nd_p, q.ndim > nd_q
        if rp and rq:  # the direction axis is a batch dimension: output (R, batch…, free…)
            dn = ((shift(lc), shift(rc)), ((0,) + shift(lb), (0,) + shift(rb)))
            out = lax.dot_general(p, q, dn, **extra)
            return [out.astype(out_dtype)]
        if not rp and not rq:
            return [lax.dot_general(p, q, ((lc, rc), (lb, rb)), **extra).astype(out_dtype)]
        # one operand carries the directions: make it the lhs so its free axis R comes first among the free
        lead, other = (p, q) if rp else (q, p)
        lcon, ocon = (shift(lc), rc) if rp else (shift(rc), lc)
        lbat, obat = (shift(lb), rb) if rp else (shift(rb), lb)
        out = lax.dot_general(lead, other, ((lcon, ocon), (lbat, obat)), **extra)
        nb = len(lb)
        n_lead_free = lead.ndim - 1 - len(lcon) - len(lbat)  # point free axes of the lead operand
        # out axes: batch…, R, lead free…, other free…; wanted: R, batch…, p free…, q free…
        perm = [nb] + list(range(nb))
        lead_free = list(range(nb + 1, nb + 1 + n_lead_free))
        other_free = list(range(nb + 1 + n_lead_free, out.ndim))
        perm += lead_free + other_free if rp else other_free + lead_free
        if perm != list(range(out.ndim)):
            out = jnp.transpose(out, perm)
        return [out.astype(out_dtype)]

    return fn


def _dot_identity(eqn, side: int, w):
    """``dot_general(e_r, W)`` for every r when operand ``side`` is the seed ``x`` (D,) and ``W`` constant:
    ``W`` with the contracted axis moved to the front (the first matmul is skipped)."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    contract = (lc, rc) if side == 0 else (rc, lc)
    if lb or rb or len(eqn.invars[side].aval.shape) != 1 or tuple(contract[0]) != (0,):
        return None
    return jnp.moveaxis(jnp.asarray(w), contract[1][0], 0).astype(eqn.outvars[0].aval.dtype)


def _dot_unsum(eqn, side: int, axis: int) -> Callable | None:
    """``dot_general`` with the contracted ``axis`` of operand ``side`` (and its partner) made the first batch
    dimension: the output gains that axis in front, unsummed."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    mine = tuple(lc if side == 0 else rc)
    if axis not in mine:
        return None
    partner = (rc if side == 0 else lc)[mine.index(axis)]
    pa, pb = (axis, partner) if side == 0 else (partner, axis)
    keep = [i for i in range(len(lc)) if lc[i] != pa]
    dn = ((tuple(lc[i] for i in keep), tuple(rc[i] for i in keep)), ((pa, *lb), (pb, *rb)))
    return _dot_lifted(eqn, dn)


def _dot_rule(eqn, cap):
    return kinds.Bilinear(
        fn=_dot_lifted(eqn),
        identity=lambda side, w: _dot_identity(eqn, side, w),
        unsum=lambda side, axis: _dot_unsum(eqn, side, axis),
    )


# --- table ---------------------------------------------------------------------------------------------------


def _elementwise(table: str | None = None, **params_from):
    def build(eqn, cap):
        params = {k: eqn.params[v] for k, v in params_from.items()}
        if "exponent" in params:
            params["exponent"] = float(params["exponent"])
        return kinds.Elementwise(_lifted(eqn), table or eqn.primitive.name, params)

    return build


def _linear(lin: tuple[int, ...] | None, structure: str = "positive"):
    return lambda eqn, cap: kinds.Linear(_lifted(eqn), lin, structure)


def _sum(*signs: float):
    return lambda eqn, cap: kinds.Sum(signs, _lifted(eqn))


def _zero(eqn, cap):
    return kinds.Zero(_lifted(eqn))


def _select_n(eqn, cap):
    return kinds.Linear(_lifted(eqn), tuple(range(1, len(eqn.invars))), "pointwise")


def _max_min(eqn, cap):
    return kinds.Selection(eqn.primitive.name, "split", _lifted(eqn))


def _clamp(eqn, cap):
    return kinds.Selection("clamp", "exclusive", _lifted(eqn))


def _reduce_chooser(eqn, cap):
    axes = tuple(eqn.params["axes"])
    shape = eqn.invars[0].aval.shape
    kept = tuple(i for i in range(len(shape)) if i not in axes)
    name = "reduce_max" if eqn.primitive.name == "reduce_max" else "reduce_min"
    return kinds.Selection(
        name,
        "split",
        _lifted(eqn),
        reduce=lift(lambda c: [jnp.sum(c, axis=axes)], (len(shape),)),
        expand=lift(lambda y: [lax.broadcast_in_dim(y, shape, kept)], (len(kept),)),
    )


def _pow(eqn, cap):
    """``x ** y`` with a constant scalar ``y``: the shared power table; otherwise the generic rule."""
    y = cap.const(eqn, 1)
    if y is None or jnp.ndim(y) != 0:
        return None
    try:
        p = float(y)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, TypeError):
        return None  # a traced exponent (e.g. a parameter under jax.grad)
    return kinds.Elementwise(_lifted(eqn), "pow", {"exponent": p})


def _sort(eqn, cap):
    if len(eqn.invars) != 1:
        return None
    dim = eqn.params["dimension"]

    def argsort(x):
        iota = lax.broadcasted_iota(jnp.int32, x.shape, dim)
        return [lax.sort((x, iota), dimension=dim, is_stable=True, num_keys=1)[1]]

    return kinds.Selection(
        "sort",
        "first",
        _lifted(eqn),
        argsort=lift(argsort, _ndims(eqn.invars)),
        take=lift(lambda c, i: [jnp.take_along_axis(c, i, axis=dim)], _ndims(eqn.invars) * 2),
    )


def _call(eqn, cap):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        inner = eqn.params.get(key)
        if inner is not None:
            return kinds.Call(cap.sub(inner))
    return None


_JAX_DIR = os.path.dirname(os.path.abspath(jax.__file__))


def defined_in_jax(eqn) -> bool:
    """Whether a ``custom_jvp_call``'s function is JAX's own (``jax.nn.relu``, ``logaddexp``, …)."""
    info = getattr(getattr(eqn.params.get("call_jaxpr"), "jaxpr", None), "debug_info", None)
    src = getattr(info, "func_src_info", None) or ""
    return " at " in src and os.path.abspath(src.rsplit(" at ", 1)[1].rsplit(":", 1)[0]).startswith(_JAX_DIR)


#: JAX's own custom_jvp functions whose rule is a derivative table (their kink convention included)
_OWN_ELEMENTWISE = {"relu": "relu"}  # relu'(0) = 0, as jax.nn.relu's rule


def _custom_jvp(eqn, cap):
    """JAX's own custom_jvp functions (relu, logaddexp, …) keep their body with the fast rules (equal away
    from kinks; relu by its table, so also at 0); a user's custom_jvp rule is honoured as nested AD honours
    it, by the generic rule."""
    if not defined_in_jax(eqn):
        return None
    info = getattr(eqn.params["call_jaxpr"].jaxpr, "debug_info", None)
    table = _OWN_ELEMENTWISE.get(getattr(info, "func_name", None))
    if table is not None and len(eqn.invars) == 1:
        return kinds.Elementwise(_lifted(eqn), table)
    return _call(eqn, cap)


def _scan(eqn, cap):
    p = eqn.params

    def loop(step, init, xs, xs_dirs, ys_dirs):
        xs = [jnp.moveaxis(c, 1, 0) if d else c for c, d in zip(xs, xs_dirs, strict=True)]  # scanned axis first
        carry, ys = lax.scan(lambda c, x: step(c, x), init, xs, length=p["length"], reverse=p["reverse"],
                             unroll=p["unroll"])  # fmt: skip
        return carry, [jnp.moveaxis(c, 0, 1) if d else c for c, d in zip(ys, ys_dirs, strict=True)]

    return kinds.Scan(cap.sub(p["jaxpr"]), p["num_consts"], p["num_carry"], loop)


def _while(eqn, cap):
    p = eqn.params

    def loop(cond, step, init):
        return lax.while_loop(lambda c: jnp.reshape(cond(c), ()), step, init)

    return kinds.While(cap.sub(p["cond_jaxpr"]), cap.sub(p["body_jaxpr"]), p["cond_nconsts"], p["body_nconsts"], loop)


def _cond(eqn, cap):
    def switch(index, fns, flat):
        return lax.switch(jnp.reshape(index, ()), fns, flat)

    return kinds.Cond([cap.sub(b) for b in eqn.params["branches"]], switch)


for _n in ("tanh", "logistic", "sin", "cos", "tan", "asin", "acos", "atan", "asinh", "acosh", "atanh", "sinh",
           "cosh", "exp", "expm1", "log", "log1p", "sqrt", "rsqrt", "square", "abs", "erf"):  # fmt: skip
    register_rule(_n, _elementwise(), "elementwise")
register_rule("abs", lambda eqn, cap: kinds.Elementwise(_lifted(eqn), "abs", {"at_zero": 1.0}), "elementwise")
register_rule("pow", _pow, "elementwise")
register_rule("integer_pow", _elementwise("pow", exponent="y"), "elementwise")
for _n in ("sign", "floor", "ceil", "round", "stop_gradient", "nextafter", "is_finite", "iota"):
    register_rule(_n, _zero, "zero")
register_rule("add", _sum(1.0, 1.0), "sum")
register_rule("add_any", _sum(1.0, 1.0), "sum")
register_rule("sub", _sum(1.0, -1.0), "sum")
register_rule("neg", _sum(-1.0), "sum")
for _n in ("reshape", "broadcast_in_dim", "transpose", "squeeze", "expand_dims", "rev", "slice",
           "cumsum", "convert_element_type", "copy", "copy_p", "reduce_precision", "dynamic_slice", "gather",
           "split", "sharding_constraint", "tile"):  # fmt: skip
    register_rule(_n, _linear((0,)), "linear")
register_rule("optimization_barrier", _linear(None), "linear")  # identity on every operand
register_rule(
    "reduce_sum", lambda eqn, cap: kinds.Linear(_lifted(eqn), (0,), "positive", tuple(eqn.params["axes"])), "linear"
)
for _n in ("real", "imag", "conj"):
    register_rule(_n, _linear((0,), "opaque"), "linear")
for _n in ("concatenate", "stack"):
    register_rule(_n, _linear(None), "linear")
register_rule("pad", _linear((0, 1)), "linear")
register_rule("dynamic_update_slice", _linear((0, 1)), "linear")
for _n in ("scatter-add", "scatter_add", "scatter"):
    register_rule(_n, _linear((0, 2)), "linear")
register_rule("select_n", _select_n, "linear")
register_rule("mul", lambda eqn, cap: kinds.Bilinear(_lifted(eqn), broadcasting=True), "bilinear")
register_rule("div", lambda eqn, cap: kinds.Divide(_lifted(eqn)), "divide")
register_rule("dot_general", _dot_rule, "bilinear")
register_rule("conv_general_dilated", lambda eqn, cap: kinds.Bilinear(_lifted(eqn)), "bilinear")
register_rule("max", _max_min, "selection")
register_rule("min", _max_min, "selection")
register_rule("clamp", _clamp, "selection")
register_rule("reduce_max", _reduce_chooser, "selection")
register_rule("reduce_min", _reduce_chooser, "selection")
register_rule("sort", _sort, "selection")
for _n in ("jit", "pjit", "closed_call", "core_call", "custom_vjp_call",
           "custom_vjp_call_jaxpr", "checkpoint", "remat", "remat2"):  # fmt: skip
    register_rule(_n, _call, "call")
register_rule("custom_jvp_call", _custom_jvp, "call")
register_rule("cond", _cond, "cond")
register_rule("scan", _scan, "scan")
register_rule("while", _while, "while")


def _registered_elementwise(name: str, prim) -> Callable[[], None]:
    """A function registered with :func:`multijet.extend.register_elementwise` for JAX; returns its undo."""
    key = getattr(prim, "name", prim)
    before = (RULES.get(key), KINDS.get(key))
    register_rule(key, _elementwise(name), "elementwise")

    def undo() -> None:
        if before[0] is None:
            RULES.pop(key, None)
            KINDS.pop(key, None)
        else:
            RULES[key], KINDS[key] = before

    return undo


extend.on_register("jax", _registered_elementwise)
