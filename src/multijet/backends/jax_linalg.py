"""JAX linear algebra through the shared Taylor rules (``kinds.Linalg``).

A jaxpr holds ``jnp.linalg.inv/solve/det/slogdet`` as ``jit`` calls named after the function, whose bodies
hold ``lu``, ``triangular_solve`` and ``custom_linear_solve`` (which only the generic rule could
differentiate). A call is taken as the linear-algebra op when its name is one of these, the function is
JAX's own, and the operand and result shapes are what the op means; otherwise it is inlined as before.
The ``cholesky`` primitive (inside ``jnp.linalg.cholesky``, ``lax.linalg.cholesky``) has its own record.

Layout: a per-direction coefficient is ``(R, *shape)``, the primal and the collapsed top ``shape``; matrix
products, traces, transposes and ``Φ`` broadcast over the leading axes (operands of one product have the
same point rank), the product of an inverse with a right-hand side of another rank is lifted by ``vmap``.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from jax.extend import source_info_util

from .. import engine
from ..engine import kinds
from .jax_table import _JAX_DIR, _call, bind_fn, lift, register_rule

__all__ = ["linalg_call", "LINALG_CALLS"]

#: the jitted JAX functions recognised by name (``jnp.linalg`` and ``jax.scipy.linalg`` share them)
LINALG_CALLS = ("inv", "solve", "slogdet", "det")


def _matmul(p, q):
    return [jnp.matmul(p, q)]


def _inv(a):
    return [jnp.linalg.inv(a)]


def _trace(p, q):
    """``tr(p q)`` over the last two axes without the product: ``Σ_ij p_ij q_ji``."""
    return [jnp.sum(p * jnp.swapaxes(q, -1, -2), axis=(-2, -1))]


def _slogdet(a):
    return list(jnp.linalg.slogdet(a))


def _transpose(p):
    return [jnp.swapaxes(p, -1, -2)]


def _phi(p):
    """The strictly lower triangle plus half the diagonal (a product with a constant mask)."""
    n = p.shape[-1]
    return [p * jnp.asarray(np.tril(np.ones((n, n))) - 0.5 * np.eye(n), dtype=p.dtype)]


def _real(avals) -> bool:
    return all(jnp.issubdtype(a.dtype, jnp.floating) for a in avals)


def _jax_function(eqn) -> bool:
    """Whether a ``jit`` call's function is defined inside the JAX package (not a user's function)."""
    inner = eqn.params.get("jaxpr")
    info = getattr(getattr(inner, "jaxpr", inner), "debug_info", None)
    src = getattr(info, "func_src_info", None) or ""
    if " at " not in src:
        return False
    path = src.rsplit(" at ", 1)[1].rsplit(":", 1)[0]
    return os.path.abspath(path).startswith(_JAX_DIR)


def _square(shape) -> bool:
    return len(shape) >= 2 and shape[-1] == shape[-2]


def linalg_call(eqn) -> kinds.Linalg | None:
    """The ``kinds.Linalg`` record of a ``jit`` call of ``jnp.linalg.inv/solve/det/slogdet``, or None."""
    name = eqn.params.get("name")
    if name not in LINALG_CALLS or not _jax_function(eqn):
        return None
    ins = [v.aval for v in eqn.invars]
    outs = [v.aval for v in eqn.outvars]
    if not ins or not _square(ins[0].shape) or any(a.dtype != ins[0].dtype for a in ins + outs):
        return None
    a = tuple(ins[0].shape)
    fn = bind_fn(eqn)
    complex_ok = _real(ins + outs) or (jnp.issubdtype(ins[0].dtype, jnp.complexfloating) and name in ("inv", "solve"))
    if not complex_ok:  # log|det| is not holomorphic: complex determinants keep JAX's own rules
        return None
    if name == "inv" and len(ins) == 1 and len(outs) == 1 and tuple(outs[0].shape) == a:
        return kinds.Linalg("inv", fn, _inv, _matmul, _trace)
    if name == "slogdet" and len(ins) == 1 and [tuple(o.shape) for o in outs] == [a[:-2]] * 2:
        return kinds.Linalg("slogdet", fn, _inv, _matmul, _trace)
    if name == "det" and len(ins) == 1 and len(outs) == 1 and tuple(outs[0].shape) == a[:-2] and a[-1] > 3:
        return kinds.Linalg("det", fn, _inv, _matmul, _trace, slogdet=_slogdet)  # n ≤ 3: JAX's polynomial
    if name == "solve" and len(ins) == 2 and len(outs) == 1:
        return _solve(fn, a, tuple(ins[1].shape), tuple(outs[0].shape))
    return None


def _solve(fn, a: tuple, b: tuple, out: tuple) -> kinds.Linalg | None:
    """``A⁻¹ b`` for ``b`` of shape ``(n,)`` (result ``(…, n)``) or ``(…, n, k)`` (batch axes broadcast)."""
    n = a[-1]
    if len(b) == 1:
        if b != (n,) or out != a[:-1]:
            return None

        def point(p, q):
            return [jnp.matmul(p, q[..., None])[..., 0]]

    else:
        try:
            batch = tuple(np.broadcast_shapes(a[:-2], b[:-2]))
        except ValueError:
            return None
        if b[-2] != n or out != batch + b[-2:]:
            return None

        def point(p, q):
            return [jnp.matmul(p, q)]

    return kinds.Linalg("solve", fn, _inv, _matmul, _trace, apply=lift(point, (len(a), len(b))))


def _jit(eqn, cap):
    """A ``jit`` call: a linear-algebra op of :data:`LINALG_CALLS`, else inlined."""
    impl = linalg_call(eqn)
    return impl if impl is not None else _call(eqn, cap)


def _cholesky(eqn, cap):
    """The ``cholesky`` primitive (it reads the lower triangle; its callers take ``tril`` of the result)."""
    (aval,) = [v.aval for v in eqn.invars]
    if not _square(aval.shape) or not _real([aval]):
        hint = "complex Cholesky factors have no shared rule; register one with multijet.backends.jax.register_rule"
        engine.config.generic_fallback("cholesky", "jax", source_info_util.summarize(eqn.source_info), hint)
        return None
    prim = bind_fn(eqn)
    return kinds.Linalg("cholesky", lambda x: [jnp.tril(prim(x)[0])], _inv, _matmul, transpose=_transpose, phi=_phi)


for _name in ("jit", "pjit"):
    register_rule(_name, _jit, "call")
register_rule("cholesky", _cholesky, "linalg")
