"""Operator specs: pure data describing a linear differential operator ``P f = Σ c_α ∂^α f``.

Specs know no array framework. Matrices given by the user (``C``, ``σ``) are copied into float64 NumPy
arrays, so a spec is hashable by value and a plan can be cached on it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from numbers import Real

import numpy as np

Alpha = tuple[int, ...]

__all__ = [
    "Operator",
    "Laplacian",
    "WeightedLaplacian",
    "Bilaplacian",
    "LinearOperator",
    "SumOperator",
    "Composed",
    "as_matrix",
]


_CONCRETE = (
    "operator specs are planned in Python, so their coefficients must be concrete numbers, not values traced "
    "under jax.jit / jax.grad; build the operator outside the traced function"
)


def _concrete_float(value) -> float:
    try:
        return float(value)
    except Exception as err:  # a JAX tracer raises a ConcretizationTypeError here
        if "Tracer" in type(value).__name__ or "Concretization" in type(err).__name__:
            raise TypeError(f"{_CONCRETE} (got {type(value).__name__})") from err
        raise TypeError(f"an operator can be scaled by a real number, got {type(value).__name__}") from err


def as_matrix(value, name: str) -> np.ndarray:
    """Copy a user's matrix (NumPy, torch, JAX, nested lists) into a float64 NumPy array."""
    if hasattr(value, "detach"):  # torch tensors, without importing torch
        value = value.detach().cpu().numpy()
    if "Tracer" in type(value).__name__:
        raise TypeError(f"{name}: {_CONCRETE} (got {type(value).__name__})")
    if np.iscomplexobj(value):
        raise TypeError(f"{name} must be real, got complex entries")
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a real 2-D array, got {type(value).__name__}") from err
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite entries")
    arr.setflags(write=False)
    return arr


class Operator:
    """Base class of operator specs. Combine with ``+``, ``-`` and scalar ``*``."""

    #: highest derivative order appearing in the operator
    order: int

    def parts(self) -> tuple[tuple[float, Operator], ...]:
        """The operator as a flat sum ``Σ c_i · atom_i`` of atomic specs."""
        return ((1.0, self),)

    def coefficients(self, dim: int) -> dict[Alpha, float]:
        """Dense form ``{α: c_α}`` in ``dim`` variables (zero coefficients dropped)."""
        raise NotImplementedError

    def check_dim(self, dim: int) -> None:
        """Raise ``ValueError`` if the spec cannot act on functions of ``dim`` variables."""

    def symbol(self, y: np.ndarray) -> np.ndarray:
        """``Σ_α c_α y^α`` at the rows of ``y`` (M, D): ``P e^{y·x}`` at ``x = 0``, for checking plans."""
        y = np.atleast_2d(np.asarray(y, dtype=np.float64))
        coeffs = self.coefficients(y.shape[1])
        if not coeffs:
            return np.zeros(y.shape[0])
        alphas = np.array(list(coeffs), dtype=np.float64)
        return np.prod(y[:, None, :] ** alphas[None], axis=2) @ np.array(list(coeffs.values()))

    def factors(self) -> tuple[Operator, Operator] | None:
        """``(outer, inner)`` with ``self = outer ∘ inner`` when the operator has a composition route."""
        return None

    def _key(self) -> tuple:
        raise NotImplementedError

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Operator) and self._key() == other._key()

    def __add__(self, other: Operator) -> Operator:
        if not isinstance(other, Operator):
            return NotImplemented
        return SumOperator(self.parts() + other.parts())

    def __sub__(self, other: Operator) -> Operator:
        if not isinstance(other, Operator):
            return NotImplemented
        return self + (-1.0) * other

    def __neg__(self) -> Operator:
        return (-1.0) * self

    def __mul__(self, scalar: float) -> Operator:
        if isinstance(scalar, Operator):
            return NotImplemented
        if not isinstance(scalar, Real | np.number):
            if getattr(scalar, "shape", None) != ():  # a 0-d array of any framework is a scalar too
                return NotImplemented
            scalar = _concrete_float(scalar)
        return SumOperator(tuple((float(scalar) * c, atom) for c, atom in self.parts()))

    __rmul__ = __mul__

    def __matmul__(self, other: Operator) -> Operator:
        """``(P @ Q) f = P (Q f)``: ``Laplacian() @ Laplacian()`` is the bi-Laplacian."""
        if not isinstance(other, Operator):
            raise TypeError(
                f"`@` composes two operator specs (P @ Q applies P to Q f), got {type(self).__name__} @ "
                f"{type(other).__name__}; to apply an operator to a function use mj.apply(op, f, x)"
            )
        return Composed(self, other)

    def __rmatmul__(self, other) -> Operator:
        raise TypeError(
            f"`@` composes two operator specs (P @ Q applies P to Q f), got {type(other).__name__} @ "
            f"{type(self).__name__}; to apply an operator to a function use mj.apply(op, f, x)"
        )


class Laplacian(Operator):
    """``Δf = Σ_i ∂_i² f``."""

    order = 2

    def coefficients(self, dim: int) -> dict[Alpha, float]:
        return {_unit(dim, i, 2): 1.0 for i in range(dim)}

    def symbol(self, y: np.ndarray) -> np.ndarray:
        return np.sum(np.atleast_2d(y) ** 2, axis=1)

    def _key(self) -> tuple:
        return ("Laplacian",)

    def __repr__(self) -> str:
        return "Laplacian()"


class Bilaplacian(Operator):
    """``Δ²f = Σ_{i,j} ∂_i² ∂_j² f``."""

    order = 4

    def coefficients(self, dim: int) -> dict[Alpha, float]:
        out: dict[Alpha, float] = {}
        for i in range(dim):
            for j in range(dim):
                alpha = tuple(2 * (k == i) + 2 * (k == j) for k in range(dim))
                out[alpha] = out.get(alpha, 0.0) + 1.0
        return out

    def symbol(self, y: np.ndarray) -> np.ndarray:
        return np.sum(np.atleast_2d(y) ** 2, axis=1) ** 2

    def factors(self) -> tuple[Operator, Operator]:
        return Laplacian(), Laplacian()

    def _key(self) -> tuple:
        return ("Bilaplacian",)

    def __repr__(self) -> str:
        return "Bilaplacian()"


class WeightedLaplacian(Operator):
    """``tr(C ∇²f) = Σ_{ij} C_ij ∂_i ∂_j f`` for a symmetric ``C``, or ``C = σσᵀ`` given ``factor=σ``."""

    order = 2

    def __init__(self, coefficients=None, *, factor=None, atol: float = 1e-10):
        if (coefficients is None) == (factor is None):
            raise TypeError("WeightedLaplacian needs exactly one of `coefficients` (C) or `factor` (σ, C = σσᵀ)")
        if factor is not None:
            self.factor: np.ndarray | None = as_matrix(factor, "factor σ")
            self._matrix: np.ndarray | None = None  # σσᵀ is D×D: formed only when asked (small D)
        else:
            C = as_matrix(coefficients, "coefficient matrix C")
            if C.shape[0] != C.shape[1]:
                raise ValueError(f"coefficient matrix C must be square, got shape {C.shape}")
            asym = float(np.max(np.abs(C - C.T))) if C.size else 0.0
            scale = max(1.0, float(np.max(np.abs(C)))) if C.size else 1.0
            if asym > atol * scale:
                raise ValueError(
                    f"coefficient matrix C must be symmetric: max |C - Cᵀ| = {asym:.3g}. "
                    "tr(C ∇²f) only sees the symmetric part; pass (C + C.T) / 2 if that is what you mean."
                )
            self.factor = None
            self._matrix = C
        self.dim = (self.factor if self.factor is not None else self._matrix).shape[0]

    @property
    def matrix(self) -> np.ndarray:
        """``C`` (for ``factor=σ``: ``σσᵀ``, built on first use; the planner never needs it at large D)."""
        if self._matrix is None:
            self._matrix = self.factor @ self.factor.T
            self._matrix.setflags(write=False)
        return self._matrix

    def check_dim(self, dim: int) -> None:
        if self.dim != dim:
            what = "factor σ has" if self.factor is not None else "coefficient matrix C has"
            raise ValueError(f"{what} {self.dim} rows but x has dimension D={dim}; expected {dim} rows")

    def coefficients(self, dim: int) -> dict[Alpha, float]:
        self.check_dim(dim)
        C = self.matrix
        out: dict[Alpha, float] = {}
        for i in range(dim):
            for j in range(i, dim):
                c = C[i, i] if i == j else 2.0 * C[i, j]
                if c != 0.0:
                    out[tuple((k == i) + (k == j) for k in range(dim))] = float(c)
        return out

    def symbol(self, y: np.ndarray) -> np.ndarray:
        y = np.atleast_2d(y)
        self.check_dim(y.shape[1])
        if self.factor is not None:
            return np.sum((y @ self.factor) ** 2, axis=1)
        return np.einsum("mi,ij,mj->m", y, self.matrix, y)

    def _key(self) -> tuple:
        data = self.factor if self.factor is not None else self.matrix
        return ("WeightedLaplacian", self.factor is not None, data.shape, data.tobytes())

    def __repr__(self) -> str:
        if self.factor is not None:
            return f"WeightedLaplacian(factor=<{self.factor.shape[0]}x{self.factor.shape[1]}>)"
        return f"WeightedLaplacian(<{self.dim}x{self.dim}>)"


class LinearOperator(Operator):
    """``Σ_α c_α ∂^α f`` for multi-indices ``α`` of any orders (mixed orders allowed).

    ``LinearOperator({(2, 0): 1.0, (0, 2): 1.0})`` is the Laplacian in two variables; ``(0, 0)`` is the
    identity, so ``Laplacian() + k**2 * LinearOperator({(0, 0): 1.0})`` is the Helmholtz operator.
    """

    def __init__(self, coefficients: Mapping[Iterable[int], float]):
        if not isinstance(coefficients, Mapping) or not coefficients:
            raise TypeError("LinearOperator needs a non-empty mapping {alpha: coefficient}")
        terms: dict[Alpha, float] = {}
        lengths = set()
        for alpha, c in coefficients.items():
            a = tuple(alpha) if not isinstance(alpha, int) else (alpha,)
            if not all(isinstance(k, int | np.integer) and k >= 0 for k in a):
                raise ValueError(f"multi-index {alpha!r} must contain non-negative integers")
            if not isinstance(c, Real | np.number) or not math.isfinite(float(c)):
                raise ValueError(f"coefficient of {alpha!r} must be a finite real number, got {c!r}")
            lengths.add(len(a))
            a = tuple(int(k) for k in a)
            terms[a] = terms.get(a, 0.0) + float(c)
        if len(lengths) != 1:
            raise ValueError(
                f"all multi-indices must have the same length (the dimension D), got lengths {sorted(lengths)}"
            )
        self.dim = lengths.pop()
        self.terms = {a: c for a, c in sorted(terms.items()) if c != 0.0}
        self.order = max((sum(a) for a in self.terms), default=0)

    @property
    def orders(self) -> tuple[int, ...]:
        return tuple(sorted({sum(a) for a in self.terms}))

    def check_dim(self, dim: int) -> None:
        if self.dim != dim:
            raise ValueError(
                f"multi-indices of LinearOperator have length {self.dim} but x has dimension D={dim}; "
                f"expected multi-indices of length {dim}"
            )

    def coefficients(self, dim: int) -> dict[Alpha, float]:
        self.check_dim(dim)
        return dict(self.terms)

    def _key(self) -> tuple:
        return ("LinearOperator", tuple(self.terms.items()))

    def __repr__(self) -> str:
        if self.dim <= 8 and len(self.terms) <= 8:
            return f"LinearOperator({self.terms!r})"
        return f"LinearOperator(<{len(self.terms)} terms of orders {self.orders} in D={self.dim}>)"


class SumOperator(Operator):
    """``Σ_i c_i P_i``; built by ``+``, ``-`` and scalar ``*`` on specs."""

    def __init__(self, parts: tuple[tuple[float, Operator], ...]):
        flat: list[tuple[float, Operator]] = []
        for c, atom in parts:
            for c2, a2 in atom.parts():
                flat.append((float(c) * c2, a2))
        self._parts = tuple(flat)
        self.order = max(atom.order for _, atom in flat)

    def parts(self) -> tuple[tuple[float, Operator], ...]:
        return self._parts

    def check_dim(self, dim: int) -> None:
        for _, atom in self._parts:
            atom.check_dim(dim)

    def symbol(self, y: np.ndarray) -> np.ndarray:
        y = np.atleast_2d(np.asarray(y, dtype=np.float64))
        return sum((c * atom.symbol(y) for c, atom in self._parts), np.zeros(y.shape[0]))

    def coefficients(self, dim: int) -> dict[Alpha, float]:
        out: dict[Alpha, float] = {}
        for c, atom in self._parts:
            for a, v in atom.coefficients(dim).items():
                out[a] = out.get(a, 0.0) + c * v
        return {a: v for a, v in out.items() if v != 0.0}

    def _key(self) -> tuple:
        return ("Sum",) + tuple((c, atom._key()) for c, atom in self._parts)

    def __repr__(self) -> str:
        return " + ".join(f"{c:g} * {atom!r}" if c != 1.0 else repr(atom) for c, atom in self._parts)


class Composed(Operator):
    """``(outer ∘ inner) f = outer(inner f)``; built by ``outer @ inner``.

    Constant-coefficient operators commute and compose by multiplying their symbols, so the planner can run
    it either as one direction set or by composition (the engine applied to its own output).
    """

    def __init__(self, outer: Operator, inner: Operator):
        self.outer, self.inner = outer, inner
        self.order = outer.order + inner.order

    def factors(self) -> tuple[Operator, Operator]:
        return self.outer, self.inner

    def check_dim(self, dim: int) -> None:
        self.outer.check_dim(dim)
        self.inner.check_dim(dim)

    def symbol(self, y: np.ndarray) -> np.ndarray:
        return self.outer.symbol(y) * self.inner.symbol(y)

    def coefficients(self, dim: int) -> dict[Alpha, float]:
        out: dict[Alpha, float] = {}
        inner = self.inner.coefficients(dim)
        for a, ca in self.outer.coefficients(dim).items():
            for b, cb in inner.items():
                ab = tuple(i + j for i, j in zip(a, b, strict=True))
                out[ab] = out.get(ab, 0.0) + ca * cb
        return {a: v for a, v in out.items() if v != 0.0}

    def _key(self) -> tuple:
        return ("Composed", self.outer._key(), self.inner._key())

    def __repr__(self) -> str:
        return f"({self.outer!r}) @ ({self.inner!r})"


def _unit(dim: int, i: int, k: int) -> Alpha:
    return tuple(k * (j == i) for j in range(dim))
