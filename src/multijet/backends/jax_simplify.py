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
import math
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


def distribute_contractions(closed):
    """``closed`` (a ClosedJaxpr of one point argument) with the two identities applied wherever they hold."""
    if not _sites(closed.jaxpr, {}):
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


# --- where an identity applies (the same test for finding sites and for rewriting) ------------------------------


def _made_by(eqn) -> tuple | None:
    """How ``eqn``'s output was made, if it may feed an identity: ``("concatenate", axis)`` or ``("broadcast",
    operand shape, broadcast dimensions)``."""
    name = eqn.primitive.name
    if name == "concatenate":
        return ("concatenate", eqn.params["dimension"])
    if name == "broadcast_in_dim" and len(eqn.invars) == 1:
        return ("broadcast", tuple(eqn.invars[0].aval.shape), tuple(eqn.params["broadcast_dimensions"]))
    return None


def _applies(made: tuple, a_shape: tuple, dimension_numbers, side: int) -> bool:
    """Whether an identity rewrites ``dot_general`` whose operand ``side`` (of shape ``a_shape``) was ``made``:
    a concatenation along a contracted axis, or a broadcast that keeps every contracted and batch axis at full
    size and is larger than its operand."""
    (contract, batch) = dimension_numbers
    if made[0] == "concatenate":
        return made[1] in contract[side]
    _, g_shape, dims = made
    if math.prod(g_shape) >= math.prod(a_shape):
        return False
    kept = list(contract[side]) + list(batch[side])
    return all(d in dims and g_shape[dims.index(d)] == a_shape[d] for d in kept)


def _sites(jaxpr, made: dict) -> bool:
    """A ``dot_general`` of ``jaxpr`` (calls included) that an identity rewrites; ``made``: its inputs' origins."""
    made = dict(made)
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            dn = eqn.params["dimension_numbers"]
            for side, v in enumerate(eqn.invars[:2]):
                how = made.get(v) if _is_var(v) else None
                if how is not None and _applies(how, tuple(v.aval.shape), dn, side):
                    return True
        how = _made_by(eqn)
        if how is not None:
            made[eqn.outvars[0]] = how
        inner = _call_body(eqn)
        if inner is not None:
            inside = {iv: made[ov] for iv, ov in zip(inner.jaxpr.invars, eqn.invars, strict=True)
                      if _is_var(ov) and ov in made}  # fmt: skip
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
        self.origin: dict[int, tuple] = {}  # id(value) → (how made, concatenated pieces or broadcast operand)
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
            with _user_context(eqn):  # the re-traced equations keep the user's source lines (warnings, errors)
                outs = self._eqn(eqn, ins)
            for v, o in zip(eqn.outvars, outs, strict=True):
                env[v] = o
        return [read(v) for v in jaxpr.outvars]

    def _eqn(self, eqn, ins: list) -> list:
        inner = _call_body(eqn)
        if inner is not None:
            made = {v: self.origin[id(a)][0] for v, a in zip(inner.jaxpr.invars, ins, strict=True)
                    if id(a) in self.origin}  # fmt: skip
            if _sites(inner.jaxpr, made):
                return self.run(inner.jaxpr, inner.consts, ins)
        if eqn.primitive.name == "dot_general":
            out = self._dot(ins[0], ins[1], eqn.params)
            if out is not None:
                return [out]
        outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
        outs = list(outs) if eqn.primitive.multiple_results else [outs]
        how = _made_by(eqn)
        if how is not None:
            self.origin[id(outs[0])] = (how, list(ins) if how[0] == "concatenate" else ins[0])
            self._keep.append(outs[0])
        return outs

    def _dot(self, lhs, rhs, params):
        """``dot_general(lhs, rhs)`` by an identity when one applies to an operand, else None."""
        for side in (0, 1):
            a = (lhs, rhs)[side]
            origin = self.origin.get(id(a))
            if origin is None or not _applies(origin[0], np.shape(a), params["dimension_numbers"], side):
                continue
            how, made_of = origin
            if how[0] == "concatenate":
                return self._split(side, made_of, how[1], lhs, rhs, params)
            return _hoist(side, made_of, how[2], lhs, rhs, params)
        return None

    def _split(self, side: int, pieces: list, axis: int, lhs, rhs, params):
        """``B(concat(a_i; k), W) = Σ_i B(a_i, W[slice_i])`` for a contracted axis ``k``."""
        contract = params["dimension_numbers"][0]
        other = (lhs, rhs)[1 - side]
        k_other = contract[1 - side][list(contract[side]).index(axis)]
        total, start = None, 0
        for piece in pieces:
            size = np.shape(piece)[axis]
            part = _slice(other, start, start + size, k_other)
            start += size
            pair = (piece, part) if side == 0 else (part, piece)
            term = self._dot(*pair, params)  # a piece may itself be a broadcast
            term = _bind_dot(*pair, params) if term is None else term
            total = term if total is None else total + term
        return total


def _hoist(side: int, g, dims: tuple, lhs, rhs, params):
    """``B(broadcast(g), W) = broadcast(B(g, W))`` (contracted and batch axes come from ``g`` unstretched)."""
    (contract, batch) = params["dimension_numbers"]
    a_shape = np.shape((lhs, rhs)[side])
    kept = list(contract[side]) + list(batch[side])
    g_contract = tuple(dims.index(d) for d in contract[side])
    g_batch = tuple(dims.index(d) for d in batch[side])
    if side == 0:
        small = _bind_dot(g, rhs, params, ((g_contract, contract[1]), (g_batch, batch[1])))
    else:
        small = _bind_dot(lhs, g, params, ((contract[0], g_contract), (batch[0], g_batch)))
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


def _user_context(eqn):
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
