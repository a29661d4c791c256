"""Contractions distributed over concatenations and broadcasts, before the jaxpr becomes a :class:`Program`.

Two identities of a contraction ``B(a, W)`` (``dot_general``) that is linear in ``a``:

* ``B(concat(a_1, …, a_m; axis k), W) = Σ_i B(a_i, W[k-slice i])`` when axis ``k`` of ``a`` is contracted:
  the pieces keep their own structure (a per-particle feature next to a mean-field one, as FermiNet's
  ``[h_i, mean_j h_j] @ W``), and no concatenated coefficient of D directions is ever formed;
* ``B(broadcast(g), W) = broadcast(B(g, W))`` when the broadcast only adds or stretches free axes of ``a``:
  the contraction runs once, not once per copy (the mean-field term, the same for every particle).

Both are exact rewrites of the program (the sums differ from the original only in round-off), applied by
re-tracing the jaxpr through a small interpreter; a program with no such site is returned unchanged.
Calls (``pjit``) that contain a site are inlined so that sites crossing their boundary are found too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import jax
import numpy as np
from jax import lax

try:  # the jaxpr types (public in jax.extend, private before)
    from jax.extend import core as jcore
except ImportError:  # pragma: no cover
    from jax import core as jcore

__all__ = ["distribute_contractions"]

_CALLS = ("pjit", "jit", "closed_call", "core_call")
_SOURCES = ("concatenate", "broadcast_in_dim")


def distribute_contractions(closed):
    """``closed`` (a ClosedJaxpr of one point argument) with the two identities applied wherever they hold."""
    if not _has_site(closed.jaxpr):
        return closed
    (x,) = closed.jaxpr.invars
    aval = jax.ShapeDtypeStruct(x.aval.shape, x.aval.dtype)
    out = jax.make_jaxpr(lambda v: _Interpreter().run(closed.jaxpr, closed.consts, [v]))(aval)
    return out.replace(jaxpr=_dead_code_removed(out.jaxpr))


def _dead_code_removed(jaxpr):
    """``jaxpr`` without the equations no output needs (the concatenations and broadcasts now unread)."""
    live = {v for v in jaxpr.outvars if _is_var(v)}
    kept = []
    for eqn in reversed(jaxpr.eqns):
        if eqn.effects or any(v in live for v in eqn.outvars):
            kept.append(eqn)
            live.update(v for v in eqn.invars if _is_var(v))
    return jaxpr.replace(eqns=kept[::-1])


def _has_site(jaxpr) -> bool:
    """A ``dot_general`` reading a concatenation or broadcast made in the same (inlined) program."""
    return _sites(jaxpr, set())


def _sites(jaxpr, made: set) -> bool:
    made = set(made)
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general" and any(_is_var(v) and v in made for v in eqn.invars):
            return True
        if name in _SOURCES:
            made.update(eqn.outvars)
        inner = _call_body(eqn)
        if inner is not None:
            inside = {iv for iv, ov in zip(inner.jaxpr.invars, eqn.invars, strict=True) if _is_var(ov) and ov in made}
            if _sites(inner.jaxpr, inside):
                return True
    return False


def _is_var(v) -> bool:
    return not isinstance(v, jcore.Literal)


def _call_body(eqn):
    if eqn.primitive.name in _CALLS and isinstance(eqn.params.get("jaxpr"), jcore.ClosedJaxpr):
        return eqn.params["jaxpr"]
    return None


class _Interpreter:
    """Evaluates a jaxpr under a trace, remembering how concatenations and broadcasts were made."""

    def __init__(self):
        self.origin: dict[int, tuple] = {}  # id(value) → ("concatenate", pieces, axis) | ("broadcast", g, dims)
        self._keep: list = []  # the values whose ids are keys (so the ids stay unique)

    def run(self, jaxpr, consts: Sequence, args: Sequence) -> list:
        env: dict = {}

        def read(v):
            return v.val if isinstance(v, jcore.Literal) else env[v]

        for v, c in zip(jaxpr.constvars, consts, strict=True):
            env[v] = c
        for v, a in zip(jaxpr.invars, args, strict=True):
            env[v] = a
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            with _source(eqn):  # the re-traced equations keep the user's source lines (for warnings, errors)
                outs = self._eqn(eqn, ins)
            for v, o in zip(eqn.outvars, outs, strict=True):
                env[v] = o
        return [read(v) for v in jaxpr.outvars]

    def _eqn(self, eqn, ins: list) -> list:
        name = eqn.primitive.name
        inner = _call_body(eqn)
        if inner is not None and _sites(inner.jaxpr, self._made(inner.jaxpr, ins)):
            return self.run(inner.jaxpr, inner.consts, ins)
        if name == "dot_general":
            out = self._dot(ins[0], ins[1], eqn.params)
            if out is not None:
                return [out]
        outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
        outs = list(outs) if eqn.primitive.multiple_results else [outs]
        if name == "concatenate":
            self._note(outs[0], ("concatenate", list(ins), eqn.params["dimension"]))
        elif name == "broadcast_in_dim" and len(ins) == 1:
            self._note(outs[0], ("broadcast", ins[0], tuple(eqn.params["broadcast_dimensions"])))
        return outs

    def _made(self, jaxpr, ins: list) -> set:
        return {v for v, a in zip(jaxpr.invars, ins, strict=True) if id(a) in self.origin}

    def _note(self, value, how: tuple) -> None:
        self.origin[id(value)] = how
        self._keep.append(value)

    def _dot(self, lhs, rhs, params):
        """``dot_general(lhs, rhs)`` by the identities when one applies to an operand, else None."""
        for side in (0, 1):
            how = self.origin.get(id((lhs, rhs)[side]))
            if how is None:
                continue
            out = (self._split if how[0] == "concatenate" else self._hoist)(side, how, lhs, rhs, params)
            if out is not None:
                return out
        return None

    def _split(self, side: int, how: tuple, lhs, rhs, params):
        """``B(concat(a_i; k), W) = Σ_i B(a_i, W[slice_i])`` for a contracted axis ``k``."""
        _, pieces, axis = how
        (contract, batch) = params["dimension_numbers"]
        mine, other_axes = contract[side], contract[1 - side]
        if axis not in mine:
            return None
        other = (lhs, rhs)[1 - side]
        k_other = other_axes[list(mine).index(axis)]
        total, start = None, 0
        for piece in pieces:
            size = np.shape(piece)[axis]
            part = _slice(other, start, start + size, k_other)
            start += size
            pair = (piece, part) if side == 0 else (part, piece)
            term = self._dot(*pair, params)
            term = _bind_dot(*pair, params) if term is None else term
            total = term if total is None else total + term
        return total

    def _hoist(self, side: int, how: tuple, lhs, rhs, params):
        """``B(broadcast(g), W) = broadcast(B(g, W))`` when contracted and batch axes come from ``g`` unstretched."""
        _, g, dims = how
        (contract, batch) = params["dimension_numbers"]
        a = (lhs, rhs)[side]
        a_shape, g_shape = np.shape(a), np.shape(g)
        if int(np.prod(g_shape)) >= int(np.prod(a_shape)):
            return None
        kept = list(contract[side]) + list(batch[side])
        if any(d not in dims or g_shape[dims.index(d)] != a_shape[d] for d in kept):
            return None
        g_contract = tuple(dims.index(d) for d in contract[side])
        g_batch = tuple(dims.index(d) for d in batch[side])
        if side == 0:
            dn = ((g_contract, contract[1]), (g_batch, batch[1]))
            small = _bind_dot(g, rhs, params, dn)
        else:
            dn = ((contract[0], g_contract), (batch[0], g_batch))
            small = _bind_dot(lhs, g, params, dn)
        # the output's axes are (batch, lhs free, rhs free); ``small`` lacks the free axes the broadcast added
        nb, free_a = len(batch[0]), [d for d in range(len(a_shape)) if d not in kept]
        g_free = [nb + free_a.index(d) for d in dims if d in free_a]  # g's free axes among a's, in order
        o_free = np.ndim((lhs, rhs)[1 - side]) - len(contract[1 - side]) - len(batch[1 - side])
        if side == 0:
            out_dims = list(range(nb)) + g_free + list(range(nb + len(free_a), nb + len(free_a) + o_free))
        else:
            out_dims = list(range(nb + o_free)) + [d + o_free for d in g_free]
        shape = _out_shape(np.shape(lhs), np.shape(rhs), params["dimension_numbers"])
        return lax.broadcast_in_dim(small, shape, tuple(out_dims))


def _source(eqn):
    """The context that gives equations traced inside it ``eqn``'s source location (JAX internals; a no-op
    where they differ)."""
    try:
        from jax._src import source_info_util

        return source_info_util.user_context(eqn.source_info.traceback, name_stack=eqn.source_info.name_stack)
    except (ImportError, AttributeError):  # pragma: no cover
        return contextlib.nullcontext()


def _slice(w, start: int, stop: int, axis: int):
    """``w[start:stop]`` along ``axis``: a new constant when ``w`` is concrete, else a traced slice."""
    if not isinstance(w, jax.core.Tracer):
        index = [slice(None)] * np.ndim(w)
        index[axis] = slice(start, stop)
        return np.asarray(w)[tuple(index)]
    return lax.slice_in_dim(w, start, stop, axis=axis)


def _out_shape(lhs_shape, rhs_shape, dimension_numbers) -> tuple[int, ...]:
    """``dot_general``'s output shape: batch axes, then the free axes of ``lhs``, then of ``rhs``."""
    (lc, rc), (lb, rb) = dimension_numbers
    lfree = [lhs_shape[d] for d in range(len(lhs_shape)) if d not in lc and d not in lb]
    rfree = [rhs_shape[d] for d in range(len(rhs_shape)) if d not in rc and d not in rb]
    return tuple(lhs_shape[d] for d in lb) + tuple(lfree) + tuple(rfree)


def _bind_dot(lhs, rhs, params, dimension_numbers=None):
    dn = params["dimension_numbers"] if dimension_numbers is None else dimension_numbers
    extra = {k: v for k, v in params.items() if k != "dimension_numbers"}
    return lax.dot_general_p.bind(lhs, rhs, dimension_numbers=dn, **extra)
