"""Shared Taylor arithmetic (docs/MATH.md §1–2), written once against whatever arrays the executor passes.

A jet of order K is a list ``[x_0, x_1, …, x_K]`` of derivative-normalised coefficients; ``None`` marks a
coefficient that is structurally zero, and every rule skips the terms it would multiply. The layout
contract with the executors:

* ``x_0`` has a size-1 direction axis; ``x_1 … x_{K−1}`` have the direction axis of size R;
* ``x_K`` has the direction axis (``standard``) or is the collapsed sum ``S_K = Σ_r w_r x_K^{(r)}`` with a
  size-1 axis (``collapsed``);
* all coefficients of operands of one rule broadcast against each other; ``ctx.wsum`` forms the weighted
  direction sum (keeping the size-1 axis).

Rules use only Python arithmetic on the arrays (``+``, ``*``) and functions passed in, so the same code runs
on NumPy arrays, torch tensors, fx proxies and JAX tracers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Array = Any
Coeffs = list  # list[Array | None], length K + 1

__all__ = [
    "JetContext",
    "fdb_partitions",
    "add",
    "linear",
    "scale",
    "elementwise",
    "product",
    "top_sum",
    "inverse",
    "logdet",
    "cholesky",
]


@dataclass(frozen=True)
class JetContext:
    """What a rule needs to know besides its operands: the order, the mode, the direction sum."""

    order: int
    collapsed: bool
    wsum: Callable[[Array], Array]
    wdot: Callable[[Array, Array], Array] | None = None  # Σ_r w_r a_r b_r without the product (optional)


# --- combinatorics ---------------------------------------------------------------------------------------


@functools.cache
def fdb_partitions(k: int) -> tuple[tuple[int, tuple[tuple[int, tuple[int, ...]], ...]], ...]:
    """Faà di Bruno terms of ``y_k``, grouped by the number of blocks ``m``.

    Returns ``((m, ((count, parts), …)), …)``: ``y_k = Σ_m g^{(m)} Σ count · Π_{p∈parts} x_p``, where
    ``parts`` runs over integer partitions of ``k`` into ``m`` parts and ``count = k! / Π_i (i!^{n_i} n_i!)``
    is the number of set partitions with that block-size multiset (``n_i`` parts of size ``i``).
    """
    by_m: dict[int, list[tuple[int, tuple[int, ...]]]] = {}
    for parts in _integer_partitions(k, k):
        count = math.factorial(k)
        for size in set(parts):
            n = parts.count(size)
            count //= math.factorial(size) ** n * math.factorial(n)
        by_m.setdefault(len(parts), []).append((count, parts))
    return tuple((m, tuple(by_m[m])) for m in sorted(by_m))


def _integer_partitions(n: int, largest: int):
    if n == 0:
        yield ()
        return
    for first in range(min(n, largest), 0, -1):
        for rest in _integer_partitions(n - first, first):
            yield (first,) + rest


# --- None-aware arithmetic -------------------------------------------------------------------------------


def _add(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a + b


def _mul_const(c: float, a):
    return a if c == 1 else c * a


def add(*jets: Coeffs) -> Coeffs:
    """Sum of jets: ``(a + b)_k = a_k + b_k``."""
    out = list(jets[0])
    for jet in jets[1:]:
        out = [_add(x, y) for x, y in zip(out, jet, strict=True)]
    return out


def linear(jet: Coeffs, fn: Callable[[Array], Array], primal_fn: Callable[[Array], Array] | None = None) -> Coeffs:
    """A linear primitive ``L`` acts on every coefficient: ``L(x)_k = L(x_k)``; zeros stay zero.

    ``primal_fn`` (default ``fn``) is used on ``x_0``, e.g. to add a bias there only.
    """
    head = (primal_fn or fn)(jet[0])
    return [head] + [None if c is None else fn(c) for c in jet[1:]]


def scale(jet: Coeffs, c: Array) -> Coeffs:
    """Multiplication by a constant array ``c``: ``(c x)_k = c x_k``."""
    return [None if x is None else x * c for x in jet]


# --- nonlinear rules -------------------------------------------------------------------------------------


def elementwise(x: Coeffs, y0: Array, derivs: Sequence[Array | None], ctx: JetContext) -> Coeffs:
    """Faà di Bruno for ``y = g(x)``: ``y_k = Σ_{partitions π of {1..k}} g^{(|π|)}(x_0) Π_{B∈π} x_{|B|}``.

    ``derivs[m − 1] = g^{(m)}(x_0)`` for ``m = 1..K`` (``None`` where it is identically zero). Collapsed,
    the top coefficient is ``S_K(y) = g' S_K(x) + Σ_{m≥2} g^{(m)} Σ_r w_r [Π …]^{(r)}`` (docs/MATH.md §2).
    """
    K = ctx.order
    out: Coeffs = [y0] + [None] * K
    for k in range(1, K + 1):
        top = ctx.collapsed and k == K
        total = None
        for m, terms in fdb_partitions(k):
            g = derivs[m - 1]
            if g is None:
                continue
            if top and m >= 2 and ctx.wdot is not None:
                inner = _summed_products(x, terms, ctx)
            else:
                inner = None
                for count, parts in terms:
                    prod = _product_of(x, parts)
                    if prod is not None:
                        inner = _add(inner, _mul_const(count, prod))
                if inner is not None and top and m >= 2:
                    inner = ctx.wsum(inner)
            if inner is None:
                continue
            total = _add(total, g * inner)
        out[k] = total
    return out


def _summed_products(x: Coeffs, terms, ctx: JetContext):
    """``Σ_r w_r Σ count · Π x_p`` with each product's last factor folded into ``ctx.wdot``."""
    out = None
    for count, parts in terms:
        if any(x[p] is None for p in parts):
            continue
        head = _product_of(x, parts[:-1])
        out = _add(out, _mul_const(count, ctx.wdot(head, x[parts[-1]])))
    return out


def _product_of(x: Coeffs, parts: tuple[int, ...]):
    """``Π_{p∈parts} x_p`` or None when a factor is structurally zero."""
    prod = None
    for p in parts:
        if x[p] is None:
            return None
        prod = x[p] if prod is None else prod * x[p]
    return prod


def product(a: Coeffs, b: Coeffs, ctx: JetContext, mul: Callable[[Array, Array], Array] | None = None) -> Coeffs:
    """Leibniz for a bilinear ``z = B(a, b)`` (``*``, matmul, …): ``z_k = Σ_j C(k, j) B(a_j, b_{k−j})``.

    Collapsed: ``S_K(z) = B(a_0, S_K b) + B(S_K a, b_0) + Σ_r w_r Σ_{0<j<K} C(K, j) B(a_j, b_{K−j})^{(r)}``.
    """
    mul = mul or _times
    K = ctx.order
    out: Coeffs = [None] * (K + 1)
    for k in range(K + 1):
        top = ctx.collapsed and k == K and K > 0
        total, mixed = None, None
        for j in range(k + 1):
            aj, bj = a[j], b[k - j]
            if aj is None or bj is None:
                continue
            if not (top and 0 < j < k):
                total = _add(total, _mul_const(math.comb(k, j), mul(aj, bj)))
            elif ctx.wdot is not None and mul is _times:  # Σ_r w_r a_r b_r fused, the constant after the sum
                total = _add(total, _mul_const(math.comb(k, j), ctx.wdot(aj, bj)))
            else:  # the mixed terms summed first: one Σ_r w_r for all of them
                mixed = _add(mixed, _mul_const(math.comb(k, j), mul(aj, bj)))
        if mixed is not None:
            total = _add(total, ctx.wsum(mixed))
        out[k] = total
    return out


def _times(a, b):
    return a * b


def top_sum(jet: Coeffs, ctx: JetContext) -> Array | None:
    """``Σ_r w_r f_K(v_r)`` from an output jet: ``S_K`` collapsed, the weighted sum of ``x_K`` standard.

    An order-0 group has one (zero) direction and gives ``w · f``."""
    top = jet[ctx.order]
    if ctx.order == 0:  # a value group (R = 1, direction 0): w · f
        return ctx.wsum(top)
    if top is None or ctx.collapsed:
        return top
    return ctx.wsum(top)


def seed(x0: Array, directions: Array, ctx: JetContext, top_direction: Array | None = None) -> Coeffs:
    """The input jet ``(x_0, v, 0, …, 0)``; a collapsed K=1 jet carries ``Σ_r w_r v_r`` instead."""
    K = ctx.order
    jet: Coeffs = [x0] + [None] * K
    if K == 1 and ctx.collapsed:
        jet[1] = top_direction if top_direction is not None else ctx.wsum(directions)
    elif K >= 1:
        jet[1] = directions
    return jet


def inverse(a: Coeffs, y0: Array, ctx: JetContext, mul: Callable[[Array, Array], Array]) -> Coeffs:
    """Matrix inverse ``Y = A⁻¹`` from ``A Y = I`` and Leibniz: ``Y_k = −Y_0 Σ_{j=1..k} C(k, j) A_j Y_{k−j}``.

    ``y0 = A_0⁻¹`` is computed natively by the executor; ``mul`` is the (batched) matmul. Collapsed, the top
    ``S_K(Y) = −Y_0 [S_K(A) Y_0 + Σ_r w_r Σ_{0<j<K} C(K, j) (A_j Y_{K−j})^{(r)}]``.
    """
    K = ctx.order
    out: Coeffs = [y0] + [None] * K
    for k in range(1, K + 1):
        top = ctx.collapsed and k == K
        total, mixed = None, None
        for j in range(1, k + 1):
            aj, yk = a[j], out[k - j]
            if aj is None or yk is None:
                continue
            term = _mul_const(math.comb(k, j), mul(aj, yk))
            if top and j < k:
                mixed = _add(mixed, term)
            else:
                total = _add(total, term)
        if mixed is not None:
            total = _add(total, ctx.wsum(mixed))
        out[k] = None if total is None else -mul(y0, total)
    return out


def logdet(a: Coeffs, inv: Coeffs, l0: Array, ctx: JetContext, trace_of_product: Callable) -> Coeffs:
    """``L = log|det A|`` from ``L' = tr(A⁻¹ A')``: ``L_k = Σ_{j=0..k−1} C(k−1, j) tr(Y_j A_{k−j})``.

    ``inv`` is the jet of ``Y = A⁻¹`` (from :func:`inverse`, one order lower suffices) and
    ``trace_of_product(Y, A) = tr(Y A)``. Collapsed, only the ``j = 0`` term holds the top ``S_K(A)``.
    """
    K = ctx.order
    out: Coeffs = [l0] + [None] * K
    for k in range(1, K + 1):
        top = ctx.collapsed and k == K
        total, mixed = None, None
        for j in range(k):
            yj, ak = inv[j], a[k - j]
            if yj is None or ak is None:
                continue
            term = _mul_const(math.comb(k - 1, j), trace_of_product(yj, ak))
            if top and j > 0:
                mixed = _add(mixed, term)
            else:
                total = _add(total, term)
        if mixed is not None:
            total = _add(total, ctx.wsum(mixed))
        out[k] = total
    return out


def cholesky(
    a: Coeffs,
    l0: Array,
    l0_inv: Array,
    ctx: JetContext,
    mul: Callable[[Array, Array], Array],
    transpose: Callable[[Array], Array],
    phi: Callable[[Array], Array],
) -> Coeffs:
    """Cholesky factor ``A = L Lᵀ``: Leibniz gives ``L_0 L_kᵀ + L_k L_0ᵀ = M_k := A_k − Σ_{0<i<k} C(k, i) L_i
    L_{k−i}ᵀ``, and since ``L_0⁻¹ L_k`` is lower triangular, ``L_k = L_0 Φ(L_0⁻¹ M_k L_0⁻ᵀ)`` with ``Φ`` the
    strictly lower part plus half the diagonal.

    ``l0_inv = L_0⁻¹``; ``transpose`` swaps the last two axes, ``phi`` is ``Φ``. The sum over ``i`` pairs
    ``i`` with ``k − i`` (``P + Pᵀ``). Collapsed, ``M_K`` enters linearly: ``S_K(M) = S_K(A) − Σ_r w_r [Σ …]``.
    """
    K = ctx.order
    out: Coeffs = [l0] + [None] * K
    inv_t = transpose(l0_inv) if K >= 1 else None
    for k in range(1, K + 1):
        mixed = None
        for i in range(1, k // 2 + 1):
            li, lj = out[i], out[k - i]
            if li is None or lj is None:
                continue
            p = mul(li, transpose(lj))
            term = p if 2 * i == k else p + transpose(p)
            mixed = _add(mixed, _mul_const(math.comb(k, i), term))
        if mixed is not None and ctx.collapsed and k == K:
            mixed = ctx.wsum(mixed)
        m = a[k] if mixed is None else (-mixed if a[k] is None else a[k] - mixed)
        if m is not None:
            out[k] = mul(l0, phi(mul(mul(l0_inv, m), inv_t)))
    return out
