"""What the propagation needs from a backend (its layout operations) and from the plan (order, mode, sums).

The propagation layout: every Taylor coefficient is a native array with ``L`` leading axes (the backend
chooses ``L``: JAX propagates one point at a time under ``vmap`` with one direction axis; NumPy and torch
carry a batch axis and a direction axis), each of size 1 or full, then the value's point shape. ``x_0``
and the collapsed top ``S_K`` have direction-axis size 1 (or, at the backend's choice, no direction axis:
JAX drops it, so constants enter unchanged); ``x_1 … x_{K−1}`` (and ``x_K`` in standard mode) have size
R. Structural zeros are ``None``. The engine never inspects array shapes: it uses the point shapes of the
program's variables and asks the backend's :class:`Layout` for the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .. import taylor
from .program import Var

__all__ = ["Layout", "Context", "Identity", "is_identity"]


class Layout(Protocol):
    """The backend's array operations in the propagation layout."""

    xp: Any  # namespace for derivative tables and selections: exp, sin, cos, tanh, sign, where, greater, …

    def lift(self, value, var: Var) -> Any:
        """A point-shaped native array (a constant of the program) with size-1 leading axes."""

    def align(self, c, nd_from: int, nd_to: int) -> Any:
        """Insert ``nd_to − nd_from`` unit point axes right after the leading axes (for broadcasting)."""

    def zeros(self, var: Var) -> Any:
        """A zero coefficient of ``var`` with size-1 leading axes."""

    def eye(self, var: Var) -> Any:
        """The identity seed ``x_1 = I`` of the input ``var`` (D,), direction axis of size D."""

    def unit_rows(self, var: Var, seed: Identity) -> Any:
        """Rows ``e_a`` for ``a`` in ``seed.rows`` of the identity (a zero row where ``a ≥ D``), direction axis
        of size ``seed.size`` (only for backends that seed unit rows: blocks, axis subsets)."""

    def take(self, c, seed: Identity) -> Any:
        """Rows ``seed.rows`` of ``c``'s direction axis of size D (zero where ``a ≥ D``)."""

    def fit(self, c, var: Var, per_direction: bool) -> Any:
        """``c`` with its point axes broadcast to ``var.shape`` and cast to ``var.dtype`` (rules may return
        a broadcastable coefficient, e.g. a scalar's term in a sum with a vector)."""

    def canonical(self, c, var: Var, per_direction: bool) -> Any:
        """``c`` (or zeros when ``c`` is None) broadcast to full leading axes (fixed shapes for loops)."""


@dataclass(frozen=True, eq=False)
class Identity:
    """The symbolic input seed ``x_1 = I`` (directions ``e_1 … e_D`` in order), or with ``rows`` (the
    backend's index array) the unit directions ``e_a``, ``a ∈ rows``: a block of the identity or a subset
    of axes. A bilinear primitive with a constant ``W`` gives ``B(e_r, W)`` without a product (the first
    matmul is skipped; for rows, the rows of that are taken), so no (size × D) array is formed."""

    size: int
    rows: Any = None


def is_identity(c) -> bool:
    return isinstance(c, Identity)


@dataclass
class Context:
    """One jet group's propagation: order ``K``, collapsed or standard, R directions, the backend layout."""

    order: int
    collapsed: bool
    R: int
    layout: Layout
    wsum: Callable[[Any], Any]
    wdot: Callable[[Any, Any], Any] | None = None
    backend: str = "?"
    weight0: Any = None  # an order-0 group's weight w (its total is w · f); None: ``wsum`` of the value
    weights: Any = None  # the native weight vector (R,) behind ``wsum``; None: every weight is 1

    def __post_init__(self):
        self.tctx = taylor.JetContext(self.order, self.collapsed, self.wsum, self.wdot)

    @property
    def xp(self):
        return self.layout.xp

    def per_direction(self, k: int) -> bool:
        """Whether coefficient ``k`` carries the direction axis (``x_0`` and the collapsed top do not)."""
        K = self.order
        return 1 <= k < K or (k == K and k >= 1 and not self.collapsed)

    def materialize(self, jet: list, var: Var) -> list:
        """The jet with a symbolic identity seed replaced by the array."""
        return [_dense(self.layout, c, var) if is_identity(c) else c for c in jet]


def _dense(layout: Layout, seed: Identity, var: Var):
    return layout.eye(var) if seed.rows is None else layout.unit_rows(var, seed)
