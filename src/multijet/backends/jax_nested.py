"""The JAX backend's ``method="nested"``: the framework's own nested AD along the plan's directions (the
baseline and oracle), run per point under ``vmap``; direction blocks under ``lax.map``."""

from __future__ import annotations

import dataclasses
import logging
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jcore

from .. import engine
from ..engine.generic import taylor_derivatives

__all__ = ["nested_point", "unit_rows"]

_log = logging.getLogger("multijet.backends.jax")


def unit_rows(rows, D: int, dtype):
    """Rows ``e_a``, ``a ∈ rows`` of the identity (a zero row where ``a ≥ D``), ``rows`` possibly traced: the
    JAX backend's only unit directions (its ``Layout.unit_rows`` and the nested AD here)."""
    return (rows[:, None] == jnp.arange(D)[None, :]).astype(dtype)


def _nested_group(fun, x, spec: engine.GroupSpec, V, w):
    """The framework's own nested AD along the plan's directions: forward-over-reverse for a scalar K=2,
    nested ``jax.jvp`` otherwise (also for order 4)."""
    K = spec.order
    if spec.identity:
        V = jnp.eye(spec.R, dtype=x.dtype)
    y = fun(x)
    if K == 0:
        return y, w[0] * y, None
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
            return y, jnp.dot(w, q), g[0] if spec.identity else None

    def along(v):
        return taylor_derivatives(jax.jvp, lambda t: [fun(x + t * v)], K, jnp.zeros((), x.dtype))[K][0]

    q = jax.vmap(along)(V)
    return y, jnp.tensordot(w, q, axes=1), None


def _nested_blocks(fun, x, spec: engine.GroupSpec, rows, V, w):
    """``_nested_group`` over the direction blocks under ``lax.map``."""
    one = dataclasses.replace(spec, identity=False, blocks=1)

    def block(b):
        Vb = unit_rows(rows[b], x.shape[0], x.dtype) if rows is not None else V[b]
        return _nested_group(fun, x, one, Vb, w[b])[1]

    return None, jnp.sum(lax.map(block, jnp.arange(spec.blocks)), axis=0), None


def nested_point(jaxpr, specs, return_grad, consts, x, arrays):
    fun = partial(_apply_jaxpr, jaxpr, consts)
    value = total = grad = None
    for spec, (rows, V, w) in zip(specs, arrays, strict=True):
        if spec.gradient_only:  # nested AD takes the gradient from jacrev below
            continue
        if spec.blocks > 1:
            v, t, g = _nested_blocks(fun, x, spec, rows, V, w)
        else:
            v, t, g = _nested_group(fun, x, spec, V if rows is None else unit_rows(rows, x.shape[0], x.dtype), w)
        value = v if v is not None else value
        total = t if total is None else total + t
        grad = grad if grad is not None else g
    if not return_grad:
        return None, total, None
    if value is None:
        value = fun(x)
    if grad is None:
        try:
            grad = jax.jacrev(fun)(x)
        except (ValueError, TypeError):  # no reverse mode through f: forward mode gives the same Jacobian
            grad = jax.jacfwd(fun)(x)
    return value, total, grad


def _apply_jaxpr(jaxpr, consts, x):
    return jcore.jaxpr_as_fun(jcore.ClosedJaxpr(jaxpr, consts))(x)[0]
