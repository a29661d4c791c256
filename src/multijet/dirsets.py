"""The planner's direction sets: ``Σ_r w_r (v_r·y)^K = Σ_α c_α y^α`` in closed form where one is known.

Framework-free and cheap at large D: closed forms for the bi-Laplacian and for products of two sets
(composition expanded into one set), the polarization box of a single ``α``, and interpolation solved
per connected support of the α (never the dense all-multi-index system). Directions that are parallel
are merged (``(s v·y)^K = s^K (v·y)^K``), so sums of operators share their directions.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterable

import numpy as np

from .plan_group import multi_indices

__all__ = [
    "DirectionSet",
    "bilaplacian",
    "box",
    "interpolation",
    "product",
    "components",
    "lattice_size",
    "INTERPOLATION_LIMIT",
]

#: the largest interpolation lattice solved densely, C(n+K−1, K) for one connected support
INTERPOLATION_LIMIT = 2000


class DirectionSet:
    """A sparse accumulator of ``Σ_r w_r (v_r·y)^K``: parallel directions are merged on insertion."""

    def __init__(self, order: int, dim: int):
        self.order, self.dim = order, dim
        self._terms: dict[tuple, list] = {}  # canonical sparse key -> [indices, values, weight]

    def add(self, indices: Iterable[int], values: Iterable[float], weight: float) -> None:
        """Add ``weight · (v·y)^K`` for the sparse direction ``v[indices] = values``."""
        idx = np.asarray(list(indices), dtype=np.int64)
        val = np.asarray(list(values), dtype=np.float64)
        nz = val != 0.0
        idx, val = idx[nz], val[nz]
        if idx.size == 0 or weight == 0.0:
            return
        order = np.argsort(idx)
        idx, val = idx[order], val[order]
        s = val[0]  # canonical: first nonzero entry is 1; (v·y)^K = s^K (u·y)^K
        u = val / s
        key = (tuple(idx.tolist()), tuple(np.round(u, 12).tolist()))
        w = weight * s**self.order
        entry = self._terms.get(key)
        if entry is None:
            self._terms[key] = [idx, u, w]
        else:
            entry[2] += w

    def add_dense(self, directions: np.ndarray, weights: np.ndarray) -> None:
        for v, w in zip(directions, weights, strict=True):
            nz = np.flatnonzero(v)
            self.add(nz, v[nz], float(w))

    def __len__(self) -> int:
        return len(self._terms)

    def arrays(self, tol: float = 1e-13) -> tuple[np.ndarray, np.ndarray]:
        """Dense ``(V (R, D), w (R,))``, dropping weights that cancelled (relative to the largest)."""
        entries = list(self._terms.values())
        w = np.array([e[2] for e in entries], dtype=np.float64)
        keep = np.abs(w) > tol * float(np.max(np.abs(w), initial=0.0))
        V = np.zeros((int(keep.sum()), self.dim))
        for row, e in enumerate(e for e, k in zip(entries, keep, strict=True) if k):
            V[row, e[0]] = e[1]
        return V, w[keep]


def bilaplacian(dim: int, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``|y|⁴ = Σ_i (1 − (D−1)/3) y_i⁴ + Σ_{i<j} ((y_i+y_j)⁴ + (y_i−y_j)⁴) / 6``: D² directions (D²−D at D=4)."""
    w_unit = 1.0 - (dim - 1) / 3.0
    i, j = np.triu_indices(dim, k=1)
    n_pairs = i.size
    rows = (dim if w_unit != 0.0 else 0) + 2 * n_pairs
    V = np.zeros((rows, dim))
    w = np.empty(rows)
    r0 = 0
    if w_unit != 0.0:
        V[np.arange(dim), np.arange(dim)] = 1.0
        w[:dim] = w_unit
        r0 = dim
    pr = r0 + 2 * np.arange(n_pairs)
    V[pr, i] = V[pr, j] = 1.0
    V[pr + 1, i], V[pr + 1, j] = 1.0, -1.0
    w[r0:] = 1.0 / 6.0
    return V, w * scale


def bilaplacian_size(dim: int) -> int:
    return dim * dim - (dim if dim == 4 else 0)


def box(alpha: dict[int, int], coefficient: float, out: DirectionSet) -> None:
    """Polarization: ``K! y^α = Σ_{0 ≤ j ≤ α} (−1)^{K−|j|} Π_i C(α_i, j_i) (j·y)^K`` (a mixed finite
    difference of the degree-K polynomial ``j ↦ (j·y)^K``), over the variables ``α`` uses."""
    idx = sorted(alpha)
    K = sum(alpha.values())
    scale = coefficient / math.factorial(K)
    for j in itertools.product(*(range(alpha[i] + 1) for i in idx)):
        if not any(j):
            continue
        sign = (-1) ** (K - sum(j))
        out.add(idx, j, scale * sign * math.prod(math.comb(alpha[i], k) for i, k in zip(idx, j, strict=True)))


def box_size(alpha: dict[int, int]) -> int:
    return math.prod(k + 1 for k in alpha.values()) - 1


def components(alphas: Iterable[dict[int, int]]) -> list[list[int]]:
    """Group the terms (by position) into connected supports: two terms connect if they share a variable."""
    alphas = list(alphas)
    parent = list(range(len(alphas)))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    owner: dict[int, int] = {}
    for t, a in enumerate(alphas):
        for i in a:
            if i in owner:
                parent[find(t)] = find(owner[i])
            else:
                owner[i] = t
    groups: dict[int, list[int]] = {}
    for t in range(len(alphas)):
        groups.setdefault(find(t), []).append(t)
    return list(groups.values())


def lattice_size(n: int, order: int) -> int:
    return math.comb(n + order - 1, order)


def interpolation(terms: dict[tuple, float], order: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Directions ``j ≥ 0, |j| = K`` on the variables the α use; weights solve ``Σ_r w_r K!/α! v_r^α = c_α``.

    ``terms`` maps dense multi-indices (length ``dim``) to coefficients. The square system over the lattice
    is unisolvent; it is built vectorised and solved once per support pattern (cached)."""
    support = sorted({i for a in terms for i, k in enumerate(a) if k})
    local = tuple(tuple(a[i] for i in support) for a in terms)
    coeffs = np.array(list(terms.values()), dtype=np.float64)
    lattice, inverse = _lattice_inverse(len(support), order)
    index = {a: r for r, a in enumerate(map(tuple, lattice.astype(int).tolist()))}
    rhs = np.zeros(len(lattice))
    for a, c in zip(local, coeffs, strict=True):
        rhs[index[a]] += c
    w = inverse @ rhs
    keep = np.abs(w) > 1e-13 * float(np.max(np.abs(w), initial=0.0))
    V = np.zeros((int(keep.sum()), dim))
    V[:, support] = lattice[keep]
    return V, w[keep]


@functools.lru_cache(maxsize=64)
def _lattice_inverse(n: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    """The lattice ``{j ∈ N^n : |j| = K}`` and the inverse of ``M[α, r] = K!/α! j_r^α`` over it."""
    lattice = np.array(list(multi_indices(n, order)), dtype=np.float64).reshape(-1, n)
    alphas = lattice.astype(np.int64)
    ratio = np.array([math.factorial(order) / math.prod(math.factorial(k) for k in a) for a in alphas.tolist()])
    M = np.ones((len(alphas), len(lattice)))
    for i in range(n):
        M *= lattice[None, :, i] ** alphas[:, None, i]
    M *= ratio[:, None]
    return lattice, np.linalg.inv(M)


def product(
    V1: np.ndarray, w1: np.ndarray, K1: int, V2: np.ndarray, w2: np.ndarray, K2: int, out: DirectionSet
) -> None:
    """``(Σ_r a_r (u_r·y)^{K1}) (Σ_s b_s (v_s·y)^{K2})`` as one order-``K1+K2`` set.

    Each product ``s^{K1} t^{K2}`` (``s = u·y``, ``t = v·y``) is ``Σ_c λ_c (s + c t)^K`` over ``K+1`` nodes
    ``c`` (``c = ∞`` standing for ``t^K``), the λ solving the binomial Vandermonde system; symmetric nodes
    make the odd-power ones vanish, and parallel directions merge across pairs."""
    nodes, lam = _binomial_nodes(K1, K2)
    for u, a in zip(V1, w1, strict=True):
        for v, b in zip(V2, w2, strict=True):
            for c, l_c in zip(nodes, lam, strict=True):
                if l_c == 0.0:
                    continue
                d = v if c is None else u + c * v
                nz = np.flatnonzero(d)
                out.add(nz, d[nz], a * b * l_c)


def product_size(R1: int, R2: int, K1: int, K2: int) -> int:
    """An upper bound on the merged size of :func:`product` (exact for unit directions of one axis set)."""
    nodes, lam = _binomial_nodes(K1, K2)
    mixed = sum(1 for c, l_c in zip(nodes, lam, strict=True) if c not in (0.0, None) and l_c != 0.0)
    return R1 + R2 + mixed * R1 * R2


@functools.lru_cache(maxsize=32)
def _binomial_nodes(K1: int, K2: int) -> tuple[tuple, tuple]:
    """Nodes ``0, ∞, 1, −1, 2, −2, …`` (K+1 of them) and ``λ`` with ``Σ_c λ_c (s + c t)^K = s^{K1} t^{K2}``."""
    K = K1 + K2
    finite = [0.0]
    k = 1
    while len(finite) < K:
        finite.extend([float(k), float(-k)])
        k += 1
    finite = finite[:K]
    # coefficient of s^{K−m} t^m in (s + c t)^K is C(K, m) c^m; the node ∞ contributes t^K only
    A = np.zeros((K + 1, K + 1))
    for col, c in enumerate(finite):
        A[:, col] = [math.comb(K, m) * c**m for m in range(K + 1)]
    A[K, K] = 1.0
    rhs = np.zeros(K + 1)
    rhs[K2] = 1.0
    lam = np.linalg.solve(A, rhs)
    lam[np.abs(lam) < 1e-14] = 0.0
    return tuple(finite) + (None,), tuple(float(x) for x in lam)
