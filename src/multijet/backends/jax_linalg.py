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
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import source_info_util

from .. import engine
from ..engine import kinds
from .jax_table import _JAX_DIR, _call, bind_fn, lift, register_rule, vary_like

__all__ = ["linalg_call", "LINALG_CALLS"]

_THIS_FILE = os.path.abspath(__file__)

#: the jitted JAX functions recognised by name (``jnp.linalg`` and ``jax.scipy.linalg`` share them)
LINALG_CALLS = ("inv", "solve", "slogdet", "det")


def _matmul(p, q):
    return [jnp.matmul(p, q)]


def _unit_tril_inverse(s):
    """``(I + S)⁻¹`` for a strictly lower-triangular ``S``, row by row in one loop:
    ``X_i = e_i − S_i X`` (rows ``k ≥ i`` of ``X`` meet zeros of ``S_i``)."""
    n = s.shape[-1]
    eye = vary_like(jnp.broadcast_to(jnp.eye(n, dtype=s.dtype), s.shape), s)

    def row(i, x):
        s_i = lax.dynamic_index_in_dim(s, i, axis=-2, keepdims=True)
        e_i = lax.dynamic_index_in_dim(eye, i, axis=-2, keepdims=True)
        return lax.dynamic_update_index_in_dim(x, e_i - jnp.matmul(s_i, x), i, axis=-2)

    return lax.fori_loop(1, n, row, eye)


@partial(jax.jit, inline=False)
def inv(a):
    """``A⁻¹ = U⁻¹ L⁻¹ P`` from ``P A = L U`` (``lax.linalg.lu``), the triangular inverses in a loop.

    Not ``jnp.linalg.inv``: on CPU its batched LAPACK ``trsm`` kernel (jaxlib 0.10) can block forever when a
    program holds several of them, as the jet programs of determinant wavefunctions do (issue 11)."""
    lu, _, perm = lax.linalg.lu(a)
    n = a.shape[-1]
    d = jnp.diagonal(lu, axis1=-2, axis2=-1)  # U = D (I + D⁻¹ N): U⁻¹ = (I + D⁻¹ N)⁻¹ D⁻¹
    n_t = _transpose(jnp.triu(lu, 1) / d[..., :, None])[0]
    l_inv, u_inv_t = _unit_tril_inverse(jnp.stack([jnp.tril(lu, -1), n_t]))  # both in one loop
    u_inv = _transpose(u_inv_t)[0] / d[..., None, :]
    p = (perm[..., :, None] == jnp.arange(n)).astype(a.dtype)  # P[k, j] = 1 where perm[k] = j
    return jnp.matmul(jnp.matmul(u_inv, l_inv), p)


@partial(jax.jit, inline=False)
def cholesky(a):
    """The lower Cholesky factor of ``A`` (its lower triangle read), column by column in one loop:
    ``v = A_{:,j} − L L_{j,:}ᵀ``, ``L_{:,j} = v / √v_j`` on rows ``i ≥ j``. Not LAPACK's ``potrf``, whose
    batched kernel blocks like ``trsm`` (see :func:`inv`)."""
    n = a.shape[-1]
    below = jnp.arange(n)

    def column(j, lower):
        row_j = lax.dynamic_index_in_dim(lower, j, axis=-2, keepdims=False)
        v = lax.dynamic_index_in_dim(a, j, axis=-1, keepdims=False) - jnp.einsum("...ik,...k->...i", lower, row_j)
        col = jnp.where(below >= j, v / jnp.sqrt(lax.dynamic_index_in_dim(v, j, axis=-1)), 0)
        return lax.dynamic_update_index_in_dim(lower, col[..., :, None], j, axis=-1)

    return lax.fori_loop(0, n, column, vary_like(jnp.zeros_like(a), a))


def _inv(a):
    """:func:`inv` as a named ``jit`` call, so that a jet program captured again (nesting) takes it as ``inv``."""
    return [inv(a)]


def _trace(p, q):
    """``tr(p q)`` over the last two axes without the product: ``Σ_ij p_ij q_ji``."""
    return [jnp.sum(p * jnp.swapaxes(q, -1, -2), axis=(-2, -1))]


def _diag_product(p, q):
    """``diag(p q)`` over the last two axes without the product: ``Σ_j p_ij q_ji``."""
    return [jnp.sum(p * jnp.swapaxes(q, -1, -2), axis=-1)]


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


def _source(eqn) -> str:
    """The file defining a ``jit`` call's function ('' if unknown)."""
    inner = eqn.params.get("jaxpr")
    info = getattr(getattr(inner, "jaxpr", inner), "debug_info", None)
    src = getattr(info, "func_src_info", None) or ""
    return os.path.abspath(src.rsplit(" at ", 1)[1].rsplit(":", 1)[0]) if " at " in src else ""


def _this_module(eqn) -> bool:
    return _source(eqn) == _THIS_FILE


def _jax_function(eqn) -> bool:
    """Whether a ``jit`` call's function is JAX's own (not a user's), or this module's ``inv`` (nesting)."""
    path = _source(eqn)
    return bool(path) and (path.startswith(_JAX_DIR) or path == _THIS_FILE)


def _square(shape) -> bool:
    return len(shape) >= 2 and shape[-1] == shape[-2]


def linalg_call(eqn) -> kinds.Linalg | None:
    """The ``kinds.Linalg`` record of a ``jit`` call of ``jnp.linalg.inv/solve/det/slogdet``, or None."""
    name = eqn.params.get("name")
    if name == "cholesky" and _this_module(eqn) and _real([v.aval for v in eqn.invars]):
        return _cholesky_record()  # this module's own (a nested jet program)
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
        return kinds.Linalg("inv", _inv, _inv, _matmul, _trace)  # no trsm in the jet program (see _inv)
    if name == "slogdet" and len(ins) == 1 and [tuple(o.shape) for o in outs] == [a[:-2]] * 2:
        return kinds.Linalg("slogdet", fn, _inv, _matmul, _trace, diag_product=_diag_product)
    if name == "det" and len(ins) == 1 and len(outs) == 1 and tuple(outs[0].shape) == a[:-2] and a[-1] > 3:
        return kinds.Linalg("det", fn, _inv, _matmul, _trace, slogdet=_slogdet)  # n ≤ 3: JAX's polynomial
    if name == "solve" and len(ins) == 2 and len(outs) == 1:
        return _solve(a, tuple(ins[1].shape), tuple(outs[0].shape))
    return None


def _solve(a: tuple, b: tuple, out: tuple) -> kinds.Linalg | None:
    """``A⁻¹ b`` for ``b`` of shape ``(n,)`` (result ``(…, n)``) or ``(…, n, k)`` (batch axes broadcast); the
    primal too goes through ``_inv`` (no trsm in the jet program)."""
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

    def primal(p, q):
        return point(_inv(p)[0], q)

    return kinds.Linalg("solve", primal, _inv, _matmul, _trace, apply=lift(point, (len(a), len(b))))


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
    return _cholesky_record()


def _cholesky_record() -> kinds.Linalg:
    return kinds.Linalg("cholesky", lambda x: [cholesky(x)], _inv, _matmul, transpose=_transpose, phi=_phi)


for _name in ("jit", "pjit"):
    register_rule(_name, _jit, "call")
register_rule("cholesky", _cholesky, "linalg")
