"""The normalised program every capture produces: variables, equations by *kind*, constants, sub-programs.

A backend's capture turns its native graph (a jaxpr, an fx graph, the NumPy tracer's record) into a
:class:`Program`. Each :class:`Equation` carries its kind and a kind-specific *implementation* record
(:mod:`multijet.engine.kinds`) holding the backend's native callables for that primitive. Shapes are the
point shapes of the captured function (no batch or direction axes); the propagation adds those.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Var", "Equation", "Program"]

_ids = itertools.count()


@dataclass(eq=False)
class Var:
    """A value of the program: its point shape, native dtype, and whether it carries derivatives."""

    shape: tuple[int, ...]
    dtype: Any
    inexact: bool = True
    name: str = field(default_factory=lambda: f"v{next(_ids)}")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"{self.name}:{_dtype_name(self.dtype)}{list(self.shape)}"


def _dtype_name(dtype) -> str:
    text = str(dtype)
    return text.rsplit(".", 1)[-1].replace("'>", "").replace("<class '", "")


@dataclass(eq=False)
class Equation:
    """``outs = prim(*ins)``: ``impl`` is the kind's record (see :mod:`multijet.engine.kinds`)."""

    prim: str
    ins: list[Var]
    outs: list[Var]
    impl: Any
    where: str | None = None

    @property
    def kind(self) -> str:
        return self.impl.kind

    def __repr__(self) -> str:
        outs = ", ".join(map(repr, self.outs))
        ins = ", ".join(v.name for v in self.ins)
        return f"{outs} = {self.prim}[{self.kind}]({ins})"


@dataclass(eq=False)
class Program:
    """Equations in order over ``invars``; ``consts`` maps constant variables to native point-shaped arrays."""

    invars: list[Var]
    outvars: list[Var]
    eqns: list[Equation]
    consts: dict[Var, Any] = field(default_factory=dict)

    def __post_init__(self):
        self._check()

    def _check(self) -> None:
        """Every equation reads only variables that are inputs, constants or earlier outputs."""
        known = set(self.invars) | set(self.consts)
        for eqn in self.eqns:
            for v in eqn.ins:
                if v not in known:
                    raise ValueError(f"equation {eqn!r} reads {v!r} before it is defined")
            known.update(eqn.outs)
        for v in self.outvars:
            if v not in known:
                raise ValueError(f"program output {v!r} is never defined")

    def __repr__(self) -> str:
        head = f"program({', '.join(map(repr, self.invars))})"
        lines = [head] + [f"  {e!r}" for e in self.eqns] + [f"  return {', '.join(v.name for v in self.outvars)}"]
        return "\n".join(lines)


def const_var(value, shape: Sequence[int], dtype, inexact: bool) -> tuple[Var, Any]:
    """A fresh constant variable for ``value`` (used by captures for literals)."""
    return Var(tuple(shape), dtype, inexact, name=f"c{next(_ids)}"), value
