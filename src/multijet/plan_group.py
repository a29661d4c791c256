"""A jet group of a plan: ``Σ_r w_r f_K(v_r)``, with unit directions kept symbolic (never a D×D identity)."""

from __future__ import annotations

import numpy as np

__all__ = ["JetGroup", "multi_indices"]


class JetGroup:
    """Jets of order ``order`` along ``R`` directions, summed with ``weights`` (R,).

    ``unit_axes`` marks directions that are rows of the identity (``v_r = e_{axes[r]}``); they are then not
    stored, and ``directions`` builds the dense (R, D) array only when asked. ``served_by = (host, a)`` says
    that the group's result is read off group ``host``'s per-direction coefficients of this order,
    ``Σ_r a_r f_k(v_r^{host})``, so executors that can (collapsed and standard) skip propagating it.
    """

    def __init__(
        self,
        order: int,
        directions: np.ndarray | None,
        weights: np.ndarray,
        label: str,
        unit_axes: tuple[int, ...] | None = None,
        *,
        dim: int | None = None,
        served_by: tuple[int, np.ndarray] | None = None,
    ):
        self.order = int(order)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.label = label
        self.unit_axes = None if unit_axes is None else tuple(int(i) for i in unit_axes)
        if directions is None:
            if self.unit_axes is None or dim is None:
                raise ValueError("a jet group without explicit directions needs unit_axes and dim")
            self.dim = int(dim)
            self._directions = None
        else:
            self._directions = np.asarray(directions, dtype=np.float64)
            self.dim = int(self._directions.shape[1])
        self.served_by = served_by

    @property
    def size(self) -> int:
        return int(self.weights.shape[0])

    @property
    def directions(self) -> np.ndarray:
        """The dense (R, D) directions (built on demand for unit directions)."""
        if self._directions is None:
            V = np.zeros((self.size, self.dim))
            V[np.arange(self.size), list(self.unit_axes)] = 1.0
            return V
        return self._directions

    @property
    def identity(self) -> bool:
        """The directions are ``e_1 … e_D`` in order: the input seed is the identity."""
        return self.unit_axes is not None and self.unit_axes == tuple(range(self.dim))

    def project(self, y: np.ndarray) -> np.ndarray:
        """``y @ Vᵀ`` for rows ``y`` (M, D) → (M, R), without forming V for unit directions."""
        y = np.atleast_2d(y)
        if self._directions is None:
            return y[:, list(self.unit_axes)]
        return y @ self._directions.T

    def arrays(self, method: str) -> int:
        """Coefficient arrays carried per node: standard ``1 + K·R``, collapsed ``1 + (K−1)·R + 1``."""
        K, R = self.order, self.size
        if K == 0:
            return 1
        if method == "collapsed":
            return 1 + (K - 1) * R + 1
        return 1 + K * R

    def with_served_by(self, host: int, weights: np.ndarray) -> JetGroup:
        return JetGroup(
            self.order, self._directions, self.weights, self.label, self.unit_axes, dim=self.dim,
            served_by=(host, np.asarray(weights, dtype=np.float64)),
        )  # fmt: skip

    def describe(self, i: int, dim: int) -> list[str]:
        """Lines of the printed plan for group number ``i``."""
        dirs = f"unit directions e_i for i in {_axes_text(self.unit_axes)}" if self.unit_axes is not None else (
            f"{self.size} direction(s)"
        )
        w = self.weights
        same = self.size > 0 and np.allclose(w, w[0], rtol=1e-12, atol=0.0)
        wtxt = f"weights {w[0]:.6g}" if same else f"weights in [{w.min():.6g}, {w.max():.6g}]"
        lines = [f"  group {i}: order K={self.order}, R={self.size}, {self.label}; {dirs}; {wtxt}"]
        if self.served_by is not None:
            lines.append(
                f"    shared: read off group {self.served_by[0] + 1}'s order-{self.order} coefficients "
                "(not propagated, collapsed/standard)"
            )
        if self.unit_axes is None and self.order > 0 and self.size <= 12 and dim <= 8:
            for v, wr in zip(self.directions, w, strict=True):
                lines.append(f"    w={wr: .6g}  v=[{', '.join(f'{c:.4g}' for c in v)}]")
        return lines


def _axes_text(axes: tuple[int, ...]) -> str:
    if len(axes) > 12:
        return f"[{', '.join(map(str, axes[:4]))}, …, {axes[-1]}] ({len(axes)} axes)"
    return str(list(axes))


def multi_indices(n: int, order: int):
    """All α ∈ N^n with |α| = order, in lexicographic order."""
    if n == 0:
        if order == 0:
            yield ()
        return
    for first in range(order, -1, -1):
        for rest in multi_indices(n - 1, order - first):
            yield (first,) + rest
