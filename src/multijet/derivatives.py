"""Derivative tables ``g', g'', …, g^{(K)}`` at ``x_0`` for elementwise functions, shared by every executor.

Each entry is ``fn(xp, x0, y0, K, **params) -> [g^{(1)}, …, g^{(K)}]`` with ``y0 = g(x0)`` computed by the
executor natively; ``None`` marks a derivative that is identically zero. Only arithmetic and the functions
``xp.exp, xp.sin, xp.cos, xp.sign`` are used, so ``xp`` may be numpy, torch or jax.numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from . import taylor

__all__ = ["TABLE", "derivatives", "register"]

Table = Callable[..., list]
TABLE: dict[str, Table] = {}


def register(*names: str):
    """Decorator adding a derivative table under one or more names."""

    def deco(fn: Table) -> Table:
        for n in names:
            TABLE[n] = fn
        return fn

    return deco


def derivatives(name: str, xp, x0, y0, K: int, **params) -> list:
    """``[g^{(1)}(x0), …, g^{(K)}(x0)]`` for the function ``name``."""
    if K == 0:
        return []
    return TABLE[name](xp, x0, y0, K, **params)


# --- polynomial recurrences: g' = Q(g), so g^{(k)} = P_k(g) with P_{k+1} = P_k' · Q ------------------


def _poly_derivs(q: list[float], K: int) -> list[list[float]]:
    """Coefficient lists (lowest first) of ``P_1 … P_K`` for ``g' = Q(g)`` with ``P_1 = Q``."""

    def deriv(p):
        return [i * c for i, c in enumerate(p)][1:] or [0.0]

    def mul(p, r):
        out = [0.0] * (len(p) + len(r) - 1)
        for i, a in enumerate(p):
            for j, b in enumerate(r):
                out[i + j] += a * b
        return out

    polys = [list(q)]
    for _ in range(K - 1):
        polys.append(mul(deriv(polys[-1]), q))
    return polys


def _horner(p: list[float], t):
    out = None
    for c in reversed(p):
        out = c if out is None else out * t + c
    if not hasattr(out, "shape"):
        return t * 0 + out
    return out


def _from_poly(q: list[float]):
    def table(xp, x0, y0, K, **_):
        return [_horner(p, y0) for p in _poly_derivs(q, K)]

    return table


TABLE["tanh"] = _from_poly([1.0, 0.0, -1.0])  # tanh' = 1 − tanh²
TABLE["sigmoid"] = TABLE["logistic"] = _from_poly([0.0, 1.0, -1.0])  # σ' = σ − σ²
TABLE["tan"] = _from_poly([1.0, 0.0, 1.0])  # tan' = 1 + tan²


@register("exp")
def _exp(xp, x0, y0, K, **_):
    return [y0] * K


@register("expm1")
def _expm1(xp, x0, y0, K, **_):
    return [y0 + 1] * K


@register("sin")
def _sin(xp, x0, y0, K, **_):
    c = xp.cos(x0)
    cycle = [c, -y0, -c, y0]
    return [cycle[k % 4] for k in range(K)]


@register("cos")
def _cos(xp, x0, y0, K, **_):
    s = xp.sin(x0)
    cycle = [-s, -y0, s, y0]
    return [cycle[k % 4] for k in range(K)]


@register("sinh")
def _sinh(xp, x0, y0, K, **_):
    c = (xp.exp(x0) + xp.exp(-x0)) / 2
    return [c if k % 2 == 0 else y0 for k in range(K)]


@register("cosh")
def _cosh(xp, x0, y0, K, **_):
    s = (xp.exp(x0) - xp.exp(-x0)) / 2
    return [s if k % 2 == 0 else y0 for k in range(K)]


def _log_like(shift: float):
    def table(xp, x0, y0, K, **_):
        inv = 1 / (x0 + shift) if shift else 1 / x0
        out, p = [], inv
        for k in range(1, K + 1):  # (−1)^{k−1} (k−1)! / x^k
            out.append(((-1) ** (k - 1) * math.factorial(k - 1)) * p)
            p = p * inv
        return out

    return table


TABLE["log"] = _log_like(0.0)
TABLE["log1p"] = _log_like(1.0)


@register("pow")
def _pow(xp, x0, y0, K, *, exponent: float, **_):
    """``(x^p)^{(k)} = p (p−1) ⋯ (p−k+1) x^{p−k}``; zero for ``k > p`` when ``p`` is a natural number."""
    p = float(exponent)
    natural = p.is_integer() and p >= 0
    out, c = [], 1.0
    inv = power = None
    for k in range(1, K + 1):
        c *= p - k + 1
        if natural and k > p:
            out.append(None)
        elif p - k == 0:
            out.append(x0 * 0 + c)
        elif natural:
            out.append(c * x0 ** int(p - k))
        else:  # x^{p−k} = y0 · x^{−k}: one division, no pow (pow is slow, e.g. for sqrt and rsqrt)
            inv = 1 / x0 if inv is None else inv
            power = y0 * inv if power is None else power * inv
            out.append(c * power)
    return out


@register("sqrt")
def _sqrt(xp, x0, y0, K, **_):
    return _pow(xp, x0, y0, K, exponent=0.5)


@register("rsqrt")
def _rsqrt(xp, x0, y0, K, **_):
    return _pow(xp, x0, y0, K, exponent=-0.5)


@register("reciprocal")
def _reciprocal(xp, x0, y0, K, **_):
    """``(1/x)^{(k)} = (−1)^k k! / x^{k+1}``."""
    out, p = [], y0
    for k in range(1, K + 1):
        p = p * y0
        out.append(((-1) ** k * math.factorial(k)) * p)
    return out


@register("square")
def _square(xp, x0, y0, K, **_):
    return _pow(xp, x0, y0, K, exponent=2.0)


@register("abs")
def _abs(xp, x0, y0, K, *, at_zero: float = 0.0, **_):
    """``|x|' = sign x`` (``at_zero`` at the kink: 0 in torch, 1 in JAX's own AD); higher derivatives vanish
    almost everywhere."""
    s = xp.sign(x0)
    if at_zero:
        s = s + (s == 0) * at_zero
    return [s] + [None] * (K - 1)


@register("relu")
def _relu(xp, x0, y0, K, **_):
    """``relu' = 1[x > 0] = sign(relu x)``; higher derivatives vanish almost everywhere."""
    return [xp.sign(y0)] + [None] * (K - 1)


@register("softplus")
def _softplus(xp, x0, y0, K, **_):
    """``softplus' = σ``, so ``softplus^{(k+1)} = σ^{(k)}``."""
    s = (xp.tanh(x0 / 2) + 1) / 2
    return [s] + TABLE["sigmoid"](xp, x0, s, K - 1)


@register("erf")
def _erf(xp, x0, y0, K, **_):
    """``erf^{(k+1)} = 2/√π · (−1)^k H_k(x) e^{−x²}`` with physicists' Hermite ``H_{n+1} = 2x H_n − 2n H_{n−1}``."""
    base = (2.0 / math.sqrt(math.pi)) * xp.exp(-(x0 * x0))
    out, h_prev, h = [], None, x0 * 0 + 1.0
    for k in range(K):
        out.append(((-1) ** k) * h * base)
        h_prev, h = h, 2 * x0 * h - (2 * k * h_prev if h_prev is not None else 0)
    return out


def _derivative_is_power(inner: Callable, exponent: float, scale: float = 1.0):
    """Tables for ``g' = scale · u(x)^p`` with ``u`` a quadratic: push the univariate jet of ``u`` through
    the power rule, ``g^{(k+1)} = scale · (u^p)^{(k)}``."""

    def table(xp, x0, y0, K, **_):
        u = inner(x0, K)  # [u_0, u_1, …, u_{K−1}] as a jet in x along direction 1
        if K == 1:
            return [scale * u[0] ** exponent]
        ctx = taylor.JetContext(order=K - 1, collapsed=False, wsum=lambda a: a)
        u0p = u[0] ** exponent
        jet = taylor.elementwise(u, u0p, _pow(xp, u[0], u0p, K - 1, exponent=exponent), ctx)
        return [scale * c if c is not None else None for c in jet]

    return table


def _quadratic(a: float, b: float):
    """Univariate jet of ``u(x) = a + b x²`` at ``x0``: ``(u, 2b x0, 2b, 0, …)``."""

    def jet(x0, K):
        out = [a + b * (x0 * x0), (2 * b) * x0, x0 * 0 + 2 * b] + [None] * K
        return out[:K]

    return jet


TABLE["arcsin"] = TABLE["asin"] = _derivative_is_power(_quadratic(1.0, -1.0), -0.5)
TABLE["arccos"] = TABLE["acos"] = _derivative_is_power(_quadratic(1.0, -1.0), -0.5, -1.0)
TABLE["arctan"] = TABLE["atan"] = _derivative_is_power(_quadratic(1.0, 1.0), -1.0)
TABLE["arcsinh"] = TABLE["asinh"] = _derivative_is_power(_quadratic(1.0, 1.0), -0.5)
TABLE["arccosh"] = TABLE["acosh"] = _derivative_is_power(_quadratic(-1.0, 1.0), -0.5)
TABLE["arctanh"] = TABLE["atanh"] = _derivative_is_power(_quadratic(1.0, -1.0), -1.0)
