"""The kinds of equation the engine knows, each a record of the backend's native callables for one primitive.

A backend's primitive table maps a native primitive to one of these records. Callables named ``fn`` are
*lifted*: they take coefficient arrays in the propagation layout (``L`` leading axes of size 1 or full, then
the point shape; operands' leading axes may differ in size and the callable broadcasts them) and return a
list of outputs in that layout. ``point_fn`` callables take and return point-shaped arrays.

Only *what* a primitive is (its algebraic kind, which operands it is linear in, its derivative table, its
tie convention) and *how* to express it natively live here; the Taylor arithmetic of every kind is written
once in :mod:`multijet.engine.rules`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Linear",
    "Sum",
    "Elementwise",
    "Bilinear",
    "Divide",
    "Selection",
    "Linalg",
    "Zero",
    "Generic",
    "Call",
    "Scan",
    "While",
    "Cond",
    "TIES",
]

#: Tie conventions of selections, as the frameworks' own AD has them (``Selection.ties``):
#: ``split`` — tied operands share the derivative equally (max/min in torch and JAX, reductions);
#: ``inclusive`` — the clamped operand keeps its derivative on the boundary (torch's clamp);
#: ``exclusive`` — on the boundary nobody gets it (``lax.clamp``);
#: ``first`` — the first of tied operands gets it all (an index returned by the primal, e.g. argmax).
TIES = ("split", "inclusive", "exclusive", "first")


@dataclass(frozen=True, eq=False)
class Linear:
    """``y_k = fn(x_k for the operands in linear, x_0 for the others)``; ``y_0 = fn(x_0, …)``.

    ``linear`` lists the operands the map is jointly linear in (``None``: all). A structurally zero
    coefficient of a linear operand enters as zeros (the n-ary zero fill of concat, pad, select, updates).
    ``structure`` tells direction sparsity (:mod:`multijet.engine.sparsity`) how elements flow:
    ``pointwise`` (each output element from the operands' elements at its broadcast position: select),
    ``positive`` (a map with non-negative coefficients given the other operands: reshapes, slices, gathers,
    sums over axes, concatenation), ``opaque`` (anything else: taken as mixing every element). ``sums``
    marks a plain sum over point axes, which direction sparsity turns into one scatter-add where it goes dense.
    """

    fn: Callable
    linear: tuple[int, ...] | None = None
    structure: str = "opaque"
    sums: tuple[int, ...] | None = None  # the map sums its one linear operand over these point axes (no keepdims)
    kind: str = field(default="linear", init=False)


@dataclass(frozen=True, eq=False)
class Sum:
    """``y = Σ_i s_i x_i`` with broadcasting (add, sub, neg): ``y_k = Σ_i s_i x_{i,k}``, zeros skipped."""

    signs: tuple[float, ...]
    fn: Callable  # lifted primal, for y_0 (keeps the native dtype promotion)
    kind: str = field(default="sum", init=False)


@dataclass(frozen=True, eq=False)
class Elementwise:
    """``y = g(x)``: ``fn`` computes ``g(x_0)``; the shared table ``table`` gives ``g', …, g^{(K)}``.

    Operands after the first are constants baked into ``g`` (a power's exponent)."""

    fn: Callable
    table: str
    params: dict = field(default_factory=dict)
    kind: str = field(default="elementwise", init=False)


@dataclass(frozen=True, eq=False)
class Bilinear:
    """``z = B(a, b)``: ``fn(p, q)`` is ``B`` lifted (mul, matmul, dot_general, einsum, conv).

    ``broadcasting`` marks an elementwise product (operands are aligned to the output's rank first).
    ``identity(side, other_0)`` (optional) returns ``B(e_r, W)`` for all ``r`` with the direction axis in
    front, when operand ``side`` is the identity seed and the other a constant ``W`` (no matmul).
    ``unsum(side, axis)`` (optional) returns ``B`` lifted with the contracted point axis ``axis`` of operand
    ``side`` left unsummed, in front of the output's point axes: ``B(p, q) = Σ_j unsum(side, axis)(p, q)[j]``
    (None when ``axis`` is not contracted).
    """

    fn: Callable
    broadcasting: bool = False
    identity: Callable | None = None
    unsum: Callable | None = None
    kind: str = field(default="bilinear", init=False)


@dataclass(frozen=True, eq=False)
class Divide:
    """``z = a / b``: linear in ``a`` for a constant ``b``, else ``a · (1/b)`` (Leibniz and the 1/x table)."""

    fn: Callable
    kind: str = field(default="divide", init=False)


@dataclass(frozen=True, eq=False)
class Selection:
    """A piecewise-linear choice among operands: ``y_k = Σ_i s_i x_{i,k}``, the scales from the primal.

    ``rule``: ``max``/``min`` (two operands), ``clamp`` (``lo, x, hi``), ``reduce_max``/``reduce_min``
    (``reduce`` sums a lifted coefficient over the reduced axes, ``expand`` broadcasts the result back),
    ``sort`` (``take(c, index)`` gathers by the permutation ``argsort(x_0)``). ``ties`` is the backend's
    convention (:data:`TIES`). ``order`` gives the operand order of clamp as ``(lo, x, hi)`` indices.
    """

    rule: str
    ties: str
    fn: Callable
    reduce: Callable | None = None
    expand: Callable | None = None
    argsort: Callable | None = None
    take: Callable | None = None
    order: tuple[int, ...] = (0, 1, 2)
    kind: str = field(default="selection", init=False)


@dataclass(frozen=True, eq=False)
class Linalg:
    """Linear algebra through the shared Taylor rules: ``op`` in ``inv``, ``solve``, ``slogdet``, ``det``,
    ``cholesky``.

    ``fn`` computes the primal outputs; ``inv(a)`` the inverse; ``matmul(p, q)`` the lifted (batched)
    matrix product; ``trace(p, q)`` the lifted ``tr(p q)`` over the last two axes; ``apply(p, q)`` the
    lifted product ``p q`` of an inverse and the right-hand side (``solve``); ``slogdet(a)`` the lifted
    ``[sign, log|det|]`` (``det``); ``transpose(p)`` swaps the last two axes and ``phi(p)`` keeps the
    strictly lower triangle plus half the diagonal (``cholesky``, whose ``fn`` returns the lower factor).
    ``diag_product(p, q)`` (optional) is the lifted ``diag(p q)`` over the last two axes (``Σ_j p_ij q_ji``):
    the row-sparse ``slogdet`` of direction sparsity.
    """

    op: str
    fn: Callable
    inv: Callable
    matmul: Callable
    trace: Callable | None = None
    apply: Callable | None = None
    slogdet: Callable | None = None
    transpose: Callable | None = None
    phi: Callable | None = None
    diag_product: Callable | None = None
    kind: str = field(default="linalg", init=False)


@dataclass(frozen=True, eq=False)
class Zero:
    """A primitive whose derivatives vanish (almost everywhere): sign, floor, comparisons, argmax."""

    fn: Callable
    kind: str = field(default="zero", init=False)


@dataclass(frozen=True, eq=False)
class Generic:
    """Any other differentiable primitive, by the framework's nested forward-mode AD.

    ``point_fn(*args) -> list`` applies the primitive to point-shaped arrays; ``jvp(f, primals, tangents)
    -> (outs, tangent outs)`` is the framework's forward mode; ``map_lead(f, args, per_direction)`` maps
    ``f`` over the leading axes of ``args`` (``per_direction[i]``: argument i carries the direction axis;
    the others are primal or collapsed coefficients, whose direction axis has size 1 or is absent);
    ``run(g, *arrays)`` runs the shared computation ``g`` natively (eagerly, or as one opaque node of an
    emitted graph), returning ``g``'s list.
    """

    point_fn: Callable
    jvp: Callable
    map_lead: Callable
    run: Callable = staticmethod(lambda g, *arrays: g(*arrays))
    scalar_zero: Callable = staticmethod(lambda like: like.reshape(-1)[0] * 0)
    hint: str = "register a Taylor rule for it (see docs/ARCHITECTURE.md)"
    kind: str = field(default="generic", init=False)


@dataclass(frozen=True, eq=False)
class Call:
    """A call of a sub-program (jit, custom_vjp bodies, checkpoint): propagated in place."""

    program: Any
    kind: str = field(default="call", init=False)


@dataclass(frozen=True, eq=False)
class Scan:
    """``lax.scan``-like loop: ``body(consts, carry, x) -> (carry, y)``; ``loop(step, init, xs)`` is native.

    ``n_consts``/``n_carry`` split the operands. ``loop(step, init_flat, xs_flat, xs_dirs, ys_dirs) ->
    (carry_flat, ys_flat)``: the scanned axis is the first point axis of every ``xs``/``ys`` coefficient;
    ``xs_dirs``/``ys_dirs`` say which of them carry the direction axis.
    """

    body: Any
    n_consts: int
    n_carry: int
    loop: Callable
    kind: str = field(default="scan", init=False)


@dataclass(frozen=True, eq=False)
class While:
    """``while cond(carry): carry = body(carry)``; ``loop(cond, step, init_flat)`` is native."""

    cond: Any
    body: Any
    n_cond_consts: int
    n_body_consts: int
    loop: Callable
    kind: str = field(default="while", init=False)


@dataclass(frozen=True, eq=False)
class Cond:
    """``branches[index](*operands)``; ``switch(index, fns, flat)`` is native (operand 0 is the index)."""

    branches: Sequence[Any]
    switch: Callable
    kind: str = field(default="cond", init=False)


Impl = Any  # one of the records above
