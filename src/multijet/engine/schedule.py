"""The schedule: per value, which Taylor coefficients are structurally zero and which directions it depends
on; per equation, where the weighted direction sum forms. Computed once per (program, order, mode).

The analysis is an abstract interpretation of the program over coefficient *patterns* (``present[k]``:
coefficient ``k`` may be non-zero), with one transfer function per kind mirroring its Taylor rule, and a
fixed point for loop carries. It is conservative: a coefficient marked zero is zero in every propagation;
one marked present may still turn out zero (e.g. ``x − x``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from .. import taylor
from ..derivatives import derivatives
from .control import TRANSFER
from .patterns import ALL, NONE, DirSet, Pattern, const_pattern, input_pattern
from .program import Equation, Program, Var

__all__ = ["DirSet", "ValueInfo", "Schedule", "make_schedule", "input_pattern"]

@dataclass(frozen=True)
class ValueInfo:
    present: Pattern
    directions: DirSet

    def zero(self, k: int) -> bool:
        return not self.present[k]


@dataclass
class Schedule:
    """The annotations of one program for jets of order ``order`` (collapsed or standard)."""

    program: Program
    order: int
    collapsed: bool
    values: dict[Var, ValueInfo] = field(default_factory=dict)
    collapses: dict[int, bool] = field(default_factory=dict)  # equation index → the Σ_r w_r forms there
    subs: dict[int, tuple[Schedule, ...]] = field(default_factory=dict)

    def info(self, var: Var) -> ValueInfo:
        return self.values[var]

    def pattern(self, var: Var) -> Pattern:
        return self.values[var].present

    def per_direction(self, k: int) -> bool:
        K = self.order
        return 1 <= k < K or (k == K and k >= 1 and not self.collapsed)

    def __str__(self) -> str:
        mode = "collapsed" if self.collapsed else "standard"
        lines = [f"schedule: order K={self.order}, {mode}"]
        lines += [f"  in  {self._describe(v)}" for v in self.program.invars]
        for i, eqn in enumerate(self.program.eqns):
            outs = "; ".join(self._describe(v) for v in eqn.outs)
            mark = "   Σ_r w_r forms here" if self.collapses.get(i) else ""
            lines.append(f"  {eqn.prim}[{eqn.kind}] -> {outs}{mark}")
            for sub in self.subs.get(i, ()):
                lines.extend("    " + line for line in str(sub).splitlines()[1:])
        lines.append(f"  out {', '.join(v.name for v in self.program.outvars)}")
        return "\n".join(lines)

    def _describe(self, v: Var) -> str:
        info = self.values.get(v)
        if info is None:
            return f"{v!r}: unused"
        ks = [str(k) for k, p in enumerate(info.present) if p]
        top = self.order
        if self.collapsed and top >= 1 and info.present[top]:
            ks[-1] = f"S{top}"
        return f"{v!r} coeffs {{{','.join(ks)}}} dirs {info.directions}"


def make_schedule(program: Program, order: int, collapsed: bool, in_patterns: list[Pattern] | None = None) -> Schedule:
    """Annotate ``program`` for order-``order`` jets whose inputs have ``in_patterns`` (default: the seed)."""
    sched = Schedule(program, order, collapsed)
    if in_patterns is None:
        in_patterns = [input_pattern(order)] * len(program.invars)
    for v, p in zip(program.invars, in_patterns, strict=True):
        p = tuple(p) if v.inexact else const_pattern(order)
        sched.values[v] = ValueInfo(p, ALL if any(p[1:]) else NONE)
    for v in program.consts:
        sched.values[v] = ValueInfo(const_pattern(order), NONE)
    for i, eqn in enumerate(program.eqns):
        ins = [sched.values[v] for v in eqn.ins]
        outs, collapses, subs = _transfer(eqn, [x.present for x in ins], order, collapsed)
        dirs = NONE
        for x in ins:
            if any(x.present[1:]):
                dirs = dirs | x.directions
        for v, p in zip(eqn.outs, outs, strict=True):
            if not v.inexact:
                p = const_pattern(order)
            sched.values[v] = ValueInfo(p, dirs if any(p[1:]) else NONE)
        sched.collapses[i] = collapses
        if subs:
            sched.subs[i] = subs
    return sched


# --- transfer functions by kind ------------------------------------------------------------------------------


def _any(patterns, k) -> bool:
    return any(p[k] for p in patterns)


def _transfer(eqn: Equation, ins: list[Pattern], K: int, collapsed: bool):
    """``(output patterns, collapses here, sub-schedules)`` for one equation."""
    kind = eqn.kind
    n_out = len(eqn.outs)
    if all(not any(p[1:]) for p in ins) and kind not in ("call", "scan", "while", "cond"):
        return [const_pattern(K)] * n_out, False, ()
    if kind == "elementwise":
        ins = ins[:1]
    if kind in ("linear", "sum", "selection"):
        lin = getattr(eqn.impl, "linear", None)
        use = ins if lin is None else [ins[i] for i in lin]
        if kind == "selection" and eqn.impl.rule in ("reduce_max", "reduce_min", "sort"):
            use = ins[:1]
        p = (True,) + tuple(_any(use, k) for k in range(1, K + 1))
        return [p] * n_out if kind != "selection" else [p] + [const_pattern(K)] * (n_out - 1), False, ()
    if kind == "zero":
        return [const_pattern(K)] * n_out, False, ()
    if kind == "elementwise":
        g = _table_pattern(eqn.impl.table, tuple(sorted(eqn.impl.params.items())), K)
        return _faa_di_bruno(ins[0], g, K, collapsed) + ((),)
    if kind == "bilinear":
        p, c = _leibniz(ins[0], ins[1], K, collapsed)
        return [p], c, ()
    if kind == "divide":
        a, b = ins
        if not any(b[1:]):
            return [a], False, ()
        (rb,), c1 = _faa_di_bruno(b, (True,) * K, K, collapsed)
        p, c2 = _leibniz(a, rb, K, collapsed)
        return [p], c1 or c2, ()
    if kind == "linalg":
        return _linalg(eqn, ins, K, collapsed)
    if kind == "generic":
        first = min((k for k in range(1, K + 1) if _any(ins, k)), default=K + 1)
        p = tuple(k == 0 or k >= first for k in range(K + 1))
        top_n = K - 1 if collapsed else K
        per_dir = any(_any(ins, k) for k in range(1, top_n + 1))
        return [p] * n_out, collapsed and per_dir, ()
    return TRANSFER[kind](eqn, ins, K, collapsed, make_schedule)


def _faa_di_bruno(x: Pattern, g: tuple[bool, ...], K: int, collapsed: bool):
    out, collapses = [True], False
    for k in range(1, K + 1):
        present = False
        for m, terms in taylor.fdb_partitions(k):
            if not g[m - 1]:
                continue
            if any(all(x[p] for p in parts) for _, parts in terms):
                present = True
                if collapsed and k == K and m >= 2:
                    collapses = True
        out.append(present)
    return [tuple(out)], collapses


def _leibniz(a: Pattern, b: Pattern, K: int, collapsed: bool):
    out, collapses = [True], False
    for k in range(1, K + 1):
        terms = [j for j in range(k + 1) if a[j] and b[k - j]]
        out.append(bool(terms))
        if collapsed and k == K and any(0 < j < k for j in terms):
            collapses = True
    return tuple(out), collapses


def _linalg(eqn: Equation, ins: list[Pattern], K: int, collapsed: bool):
    a = ins[0]
    inv = [True]
    for k in range(1, K + 1):
        inv.append(any(a[j] and inv[k - j] for j in range(1, k + 1)))
    inv_p = tuple(inv)
    op = eqn.impl.op
    if op == "cholesky":  # L_k from A_k and L_i L_{k−i}ᵀ, 0 < i < k
        fac = [True]
        for k in range(1, K + 1):
            fac.append(a[k] or any(fac[i] and fac[k - i] for i in range(1, k)))
        return [tuple(fac)], collapsed and any(fac[i] and fac[K - i] for i in range(1, K)), ()
    if op == "inv":
        return [inv_p], collapsed and any(a[j] and inv[K - j] for j in range(1, K)), ()
    if op == "solve":
        p, c = _leibniz(inv_p, ins[1], K, collapsed)
        return [p], c, ()
    logdet = (True,) + tuple(any(inv[j] and a[k - j] for j in range(k)) for k in range(1, K + 1))
    if op == "slogdet":
        return [const_pattern(K), logdet], collapsed and any(inv[j] and a[K - j] for j in range(1, K)), ()
    (p,), c = _faa_di_bruno(logdet, (True,) * K, K, collapsed)
    return [p], c, ()


@functools.lru_cache(maxsize=512)
def _table_pattern(table: str, params: tuple, K: int) -> tuple[bool, ...]:
    """Which derivatives ``g^{(m)}`` of a table are not identically zero (``None`` in the table)."""
    if K == 0:
        return ()
    try:
        with np.errstate(all="ignore"):
            x = np.float64(0.3)
            derivs = derivatives(table, np, x, x, K, **dict(params))
        return tuple(d is not None for d in derivs)
    except Exception:  # a table that needs real inputs: assume every derivative may be non-zero
        return (True,) * K
