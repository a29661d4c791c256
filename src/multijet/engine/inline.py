"""Inlining: a :class:`Program` with every ``call`` equation replaced by its sub-program's equations.

A call propagates in place (its rule is the interpreter on the body), so the inlined program computes the
same jets. Analyses that follow values element by element (direction sparsity) then see one flat program.
Every inlined body gets fresh variables, so a sub-program called twice is inlined twice without clashes.
"""

from __future__ import annotations

from .program import Equation, Program, Var

__all__ = ["inline_calls"]


def inline_calls(program: Program) -> Program:
    """``program`` with its calls (recursively) inlined; the program itself when it has none (cached)."""
    cached = program.__dict__.get("_inlined")
    if cached is not None:
        return cached
    if not any(e.kind == "call" for e in program.eqns):
        program.__dict__["_inlined"] = program
        return program
    consts = dict(program.consts)
    eqns: list[Equation] = []
    _inline_into(program, {}, eqns, consts)
    out = Program(list(program.invars), list(program.outvars), eqns, consts)
    program.__dict__["_inlined"] = out
    return out


def _inline_into(program: Program, rename: dict, eqns: list[Equation], consts: dict) -> None:
    """Append ``program``'s equations (calls inlined) to ``eqns`` with its variables renamed by ``rename``."""

    def name(v: Var) -> Var:
        return rename.get(v, v)

    for eqn in program.eqns:
        if eqn.kind != "call":
            ins, outs = [name(v) for v in eqn.ins], [name(v) for v in eqn.outs]
            eqns.append(Equation(eqn.prim, ins, outs, eqn.impl, eqn.where))
            continue
        body: Program = eqn.impl.program
        inner: dict = {}
        for v, outer in zip(body.invars, eqn.ins, strict=True):
            inner[v] = name(outer)
        for v, value in body.consts.items():
            fresh = _fresh(v)
            inner[v] = fresh
            consts[fresh] = value
        made = {v for e in body.eqns for v in e.outs}
        for e in body.eqns:
            for v in e.outs:
                inner[v] = _fresh(v)
        copies = []
        for v_out, v_body in zip(eqn.outs, body.outvars, strict=True):
            if v_body in made and body.outvars.count(v_body) == 1:
                inner[v_body] = name(v_out)  # the body's equation writes the call's output directly
            else:
                copies.append((v_body, v_out))
        _inline_into(body, inner, eqns, consts)
        for v_body, v_out in copies:  # an input or constant passed through: a copy
            eqns.append(Equation("copy", [inner.get(v_body, v_body)], [name(v_out)], _COPY, eqn.where))


def _fresh(v: Var) -> Var:
    return Var(v.shape, v.dtype, v.inexact)


class _Copy:
    """The identity map (a call's output is its body's output): a linear, pointwise equation."""

    kind = "linear"
    linear = None
    structure = "pointwise"

    @staticmethod
    def fn(*args):
        return list(args)


_COPY = _Copy()
