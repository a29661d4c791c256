"""Order-2 direction sets: ``Σ_i c_i tr(C_i ∇²f)`` exact or randomised, with no D×D array at large D.

Up to ``DENSE_C_LIMIT`` variables the parts are merged into one matrix ``C`` and its eigenvectors are the
directions (rank(C) jets, the fewest). Above it each part keeps its structure: Laplacians and diagonal terms
are unit directions with weights ``d`` (symbolic, never an identity), a factor ``σ`` gives its columns, a
term ``c ∂_i∂_j`` (i ≠ j) is ``c/2 (f_2(e_i + e_j) − f_2(e_i) − f_2(e_j))``, and only a user's explicit ``C``
is decomposed (it is D×D already).
"""

from __future__ import annotations

import numpy as np

from .plan_group import JetGroup
from .spec import Laplacian, WeightedLaplacian

__all__ = ["order2_groups", "sample", "DENSE_C_LIMIT"]

#: the largest D at which mixed order-2 parts are merged into one dense C (D×D floats, O(D³) eigh)
DENSE_C_LIMIT = 2048


def order2_groups(atoms, dim: int, samples, distribution: str, rng) -> list[JetGroup]:
    """The jet groups of ``Σ c·atom`` (all of order 2)."""
    only_laplacians = all(isinstance(a, Laplacian) for _, a in atoms)
    single_factor = len(atoms) == 1 and isinstance(atoms[0][1], WeightedLaplacian) and atoms[0][1].factor is not None
    if samples is None:
        if only_laplacians:
            c = sum(c for c, _ in atoms)
            return [JetGroup(2, None, np.full(dim, c), "Laplacian", tuple(range(dim)), dim=dim)] if c else []
        if single_factor and atoms[0][0] > 0:
            c, atom = atoms[0]
            keep = np.any(atom.factor != 0.0, axis=0)
            if not keep.any():
                return []
            return [JetGroup(2, atom.factor[:, keep].T.copy(), np.full(int(keep.sum()), c), "columns of the factor σ")]
        if dim > DENSE_C_LIMIT:
            return _structured_exact(atoms, dim)
        return _dense_exact(_matrix(atoms, dim))
    if only_laplacians:  # σ = I: v = u, no identity is formed
        u = sample(rng, distribution, samples, dim)
        return [JetGroup(2, u, np.full(samples, sum(c for c, _ in atoms) / samples), "randomised Laplacian")]
    if single_factor and atoms[0][0] > 0:
        factors = [(atoms[0][0], atoms[0][1].factor, "σ u")]
    elif dim > DENSE_C_LIMIT:
        return _structured_random(atoms, dim, samples, distribution, rng)
    else:
        factors = _split_signs(_matrix(atoms, dim))
    return _random_group(factors, [], samples, distribution, rng)


def sample(rng, distribution: str, samples: int, dim: int) -> np.ndarray:
    """``samples`` i.i.d. vectors with ``E[u uᵀ] = I``: Rademacher ±1 or standard Gaussian."""
    if distribution == "rademacher":
        return rng.choice(np.array([-1.0, 1.0]), size=(samples, dim))
    return rng.standard_normal((samples, dim))


def _matrix(atoms, dim) -> np.ndarray:
    """Σ c_i C_i, with ``C_ii = c_{2e_i}``, ``C_ij = c_{e_i+e_j} / 2``."""
    C = np.zeros((dim, dim))
    for c, atom in atoms:
        if isinstance(atom, Laplacian):
            C[np.diag_indices(dim)] += c
        elif isinstance(atom, WeightedLaplacian):
            C += c * atom.matrix
        else:
            for alpha, v in atom.coefficients(dim).items():
                i, j = [i for i, k in enumerate(alpha) for _ in range(k)]
                C[i, j] += c * v / (1 if i == j else 2)
                if i != j:
                    C[j, i] += c * v / 2
    return C


def _dense_exact(C: np.ndarray) -> list[JetGroup]:
    dim = C.shape[0]
    diag = np.diag(C)
    if np.count_nonzero(C - np.diag(diag)) == 0:
        axes = tuple(int(i) for i in np.flatnonzero(diag))
        return [JetGroup(2, None, diag[list(axes)].copy(), "diagonal C", axes, dim=dim)] if axes else []
    lam, Q = np.linalg.eigh(C)
    keep = np.abs(lam) > 1e-12 * float(np.max(np.abs(lam)))  # relative: a tiny C is not a zero C
    if not keep.any():
        return []
    return [JetGroup(2, Q[:, keep].T.copy(), lam[keep].copy(), "eigenvectors of C (rank-revealing)")]


def _split_signs(C: np.ndarray) -> list[tuple[float, np.ndarray, str]]:
    """``C = σ₊σ₊ᵀ − σ₋σ₋ᵀ`` from its eigendecomposition."""
    lam, Q = np.linalg.eigh(C)
    tol = 1e-12 * float(np.max(np.abs(lam), initial=0.0))
    out = []
    pos, neg = lam > tol, lam < -tol
    if pos.any():
        out.append((1.0, Q[:, pos] * np.sqrt(lam[pos]), "σ₊ u, C₊ = σ₊σ₊ᵀ"))
    if neg.any():
        out.append((-1.0, Q[:, neg] * np.sqrt(-lam[neg]), "σ₋ u, C₋ = σ₋σ₋ᵀ"))
    return out


def _parts(atoms, dim: int):
    """Split into diagonal weights ``d`` (D floats), factors ``(c, σ)``, explicit matrices ``(c, C)`` and
    exact dense directions ``(V, w)`` for off-diagonal terms."""
    d = np.zeros(dim)
    factors, matrices, pair_dirs, pair_w = [], [], [], []
    for c, atom in atoms:
        if isinstance(atom, Laplacian):
            d += c
        elif isinstance(atom, WeightedLaplacian) and atom.factor is not None:
            factors.append((c, atom.factor))
        elif isinstance(atom, WeightedLaplacian):
            C = atom.matrix
            diag = np.diag(C)
            if np.count_nonzero(C - np.diag(diag)) == 0:
                d += c * diag
            else:
                matrices.append((c, C))
        else:
            for alpha, v in atom.coefficients(dim).items():
                i, j = [i for i, k in enumerate(alpha) for _ in range(k)]
                if i == j:
                    d[i] += c * v
                    continue
                d[i] -= c * v / 2  # c ∂_i∂_j f = c/2 (f_2(e_i + e_j) − f_2(e_i) − f_2(e_j))
                d[j] -= c * v / 2
                row = np.zeros(dim)
                row[[i, j]] = 1.0
                pair_dirs.append(row)
                pair_w.append(c * v / 2)
    pairs = (np.array(pair_dirs).reshape(-1, dim), np.array(pair_w, dtype=np.float64))
    return d, factors, matrices, pairs


def _structured_exact(atoms, dim: int) -> list[JetGroup]:
    d, factors, matrices, (V, w) = _parts(atoms, dim)
    dirs, weights = [V], [w]
    for c, sigma in factors:
        dirs.append(sigma.T)
        weights.append(np.full(sigma.shape[1], float(c)))
    for c, C in matrices:
        (group,) = _dense_exact(c * C) or [None]
        if group is not None:
            dirs.append(group.directions)
            weights.append(group.weights)
    groups = []
    axes = tuple(int(i) for i in np.flatnonzero(d))
    if axes:
        groups.append(JetGroup(2, None, d[list(axes)].copy(), "diagonal part", axes, dim=dim))
    V, w = np.concatenate(dirs), np.concatenate(weights)
    if w.size:
        groups.append(JetGroup(2, V, w, "factor columns, e_i + e_j pairs, eigenvectors of explicit C"))
    return groups


def _structured_random(atoms, dim: int, samples: int, distribution: str, rng) -> list[JetGroup]:
    """``v = s ⊙ u`` with ``s = √|d|`` per sign for the diagonal part, ``σ u`` per factor; pairs stay exact."""
    d, factors, matrices, exact = _parts(atoms, dim)
    scaled = []
    for sign in (1.0, -1.0):
        s = np.sqrt(np.maximum(sign * d, 0.0))
        if s.any():
            scaled.append((sign, s, ""))
    for c, sigma in factors:
        scaled.append((float(np.sign(c)), np.sqrt(abs(c)) * sigma, ""))
    for c, C in matrices:
        scaled.extend(_split_signs(c * C))
    return _random_group(scaled, [exact], samples, distribution, rng)


def _random_group(factors, exact, samples: int, distribution: str, rng) -> list[JetGroup]:
    """``E[Σ_s f_2(σ u_s)] / S = tr(σσᵀ ∇²f)`` per factor (a vector σ is a diagonal scaling), plus exact rows."""
    dirs, weights, labels = [], [], []
    for c, sigma, label in factors:
        if sigma.ndim == 1:
            dirs.append(sample(rng, distribution, samples, sigma.shape[0]) * sigma)
        else:
            dirs.append(sample(rng, distribution, samples, sigma.shape[1]) @ sigma.T)
        weights.append(np.full(samples, c / samples))
        labels.append(label or ("√|d| ⊙ u" if sigma.ndim == 1 else "σ u"))
    for V, w in exact:
        if w.size:
            dirs.append(V)
            weights.append(w)
            labels.append("exact e_i + e_j pairs")
    if not dirs:
        return []
    label = "randomised " + " and ".join(dict.fromkeys(labels))
    return [JetGroup(2, np.concatenate(dirs), np.concatenate(weights), label)]
