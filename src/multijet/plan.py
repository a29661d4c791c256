"""The planner: operator spec + dimension (+ randomisation) → jet groups ``Σ_r w_r f_K(v_r)`` (docs/MATH.md §3–4).

Framework-free. Every exact plan is verified against the operator's dense coefficients before it is
returned: an inexact plan is never handed to an executor.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .errors import PlanError
from .spec import Alpha, Bilaplacian, Laplacian, LinearOperator, Operator, WeightedLaplacian

__all__ = ["JetGroup", "Plan", "make_plan", "DISTRIBUTIONS", "METHODS"]

DISTRIBUTIONS = ("rademacher", "gaussian")
METHODS = ("collapsed", "standard", "nested")


@dataclass(frozen=True, eq=False)
class JetGroup:
    """Jets of order ``order`` along the rows of ``directions`` (R, D), summed with ``weights`` (R,).

    The group contributes ``Σ_r weights[r] · f_K(directions[r])``. ``unit`` marks directions that are rows
    of the identity (``directions[r] = e_{axes[r]}``), which executors may exploit at the input.
    """

    order: int
    directions: np.ndarray
    weights: np.ndarray
    label: str
    unit_axes: tuple[int, ...] | None = None

    @property
    def size(self) -> int:
        return int(self.directions.shape[0])

    def arrays(self, method: str) -> int:
        """Coefficient arrays carried per node: standard ``1 + K·R``, collapsed ``1 + (K−1)·R + 1``."""
        K, R = self.order, self.size
        if K == 0:
            return 1
        if method == "collapsed":
            return 1 + (K - 1) * R + 1
        return 1 + K * R


@dataclass(frozen=True, eq=False)
class Plan:
    """A frozen, printable plan: the jet groups whose weighted top coefficients sum to ``P f``."""

    operator: Operator
    dim: int
    groups: tuple[JetGroup, ...]
    samples: int | None = None
    distribution: str | None = None
    seed: int | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def randomized(self) -> bool:
        return self.samples is not None

    @property
    def order(self) -> int:
        return max(g.order for g in self.groups)

    def arrays(self, method: str) -> int:
        return sum(g.arrays(method) for g in self.groups)

    def coefficients(self) -> dict[Alpha, float]:
        """The operator this plan computes, ``{α: Σ_r w_r K!/α! v_r^α}`` (for checks and tests)."""
        out: dict[Alpha, float] = defaultdict(float)
        for g in self.groups:
            for alpha in _multi_indices(self.dim, g.order):
                val = float(np.dot(g.weights, _moment(g.directions, alpha)))
                out[alpha] += val
        return {a: v for a, v in out.items()}

    def __str__(self) -> str:
        kind = (
            f"randomised, {self.samples} {self.distribution} samples, seed={self.seed}" if self.randomized else "exact"
        )
        lines = [f"Plan for {self.operator!r} at D={self.dim} ({kind})"]
        for i, g in enumerate(self.groups, 1):
            dirs = (
                f"unit directions e_i for i in {list(g.unit_axes)}"
                if g.unit_axes is not None
                else f"{g.size} direction(s)"
            )
            w = g.weights
            same = np.allclose(w, w[0], rtol=1e-12, atol=0.0)
            wtxt = f"weights {w[0]:.6g}" if same else f"weights in [{w.min():.6g}, {w.max():.6g}]"
            lines.append(f"  group {i}: order K={g.order}, R={g.size}, {g.label}; {dirs}; {wtxt}")
            if g.unit_axes is None and g.order > 0 and g.size <= 12 and self.dim <= 8:
                for v, wr in zip(g.directions, w, strict=True):
                    lines.append(f"    w={wr: .6g}  v=[{', '.join(f'{c:.4g}' for c in v)}]")
        c, s = self.arrays("collapsed"), self.arrays("standard")
        lines.append(
            f"  arrays per node: collapsed {c}, standard {s}; estimated cost ratio collapsed/standard {c / s:.2f}"
        )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    __repr__ = __str__


def make_plan(
    op: Operator,
    dim: int,
    *,
    samples: int | None = None,
    distribution: str = "rademacher",
    seed: int | None = None,
) -> Plan:
    """Plan ``op`` for functions of ``dim`` variables; exact when ``samples`` is None.

    Plans with a fixed seed (and exact plans) are cached.
    """
    if not isinstance(op, Operator):
        raise TypeError(f"expected an operator spec (e.g. mj.Laplacian()), got {type(op).__name__}")
    if not isinstance(dim, int | np.integer) or dim < 1:
        raise ValueError(f"the input dimension D must be a positive integer, got {dim!r}")
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; expected one of {DISTRIBUTIONS}")
    if samples is not None:
        if isinstance(samples, bool) or not isinstance(samples, int | np.integer) or samples < 1:
            raise ValueError(f"samples must be a positive integer or None (exact), got {samples!r}")
        samples = int(samples)
    op.check_dim(int(dim))
    if samples is not None and seed is None:
        return _plan(op, int(dim), samples, distribution, None)
    return _cached_plan(op, int(dim), samples, distribution if samples else None, seed)


@functools.lru_cache(maxsize=256)
def _cached_plan(op, dim, samples, distribution, seed) -> Plan:
    return _plan(op, dim, samples, distribution, seed)


def _plan(op: Operator, dim: int, samples, distribution, seed) -> Plan:
    by_order: dict[int, list[tuple[float, Operator]]] = defaultdict(list)
    for c, atom in op.parts():
        if isinstance(atom, LinearOperator):
            for K in atom.orders:
                sub = {a: v for a, v in atom.terms.items() if sum(a) == K}
                by_order[K].append((c, LinearOperator(sub)))
        else:
            by_order[atom.order].append((c, atom))
    rng = np.random.default_rng(seed) if samples is not None else None
    groups: list[JetGroup] = []
    notes: list[str] = []
    for K in sorted(by_order):
        atoms = [(c, a) for c, a in by_order[K] if c != 0.0]
        if not atoms:
            continue
        if K == 0:
            total = sum(c * next(iter(a.coefficients(dim).values())) for c, a in atoms)
            if total != 0.0:
                groups.append(JetGroup(0, np.zeros((1, dim)), np.array([total]), "value c·f"))
        elif K == 1:
            groups.extend(_plan_order1(atoms, dim))
        elif K == 2:
            groups.extend(_plan_order2(atoms, dim, samples, distribution, rng))
        else:
            groups.extend(_plan_higher(K, atoms, dim, samples, distribution, rng, notes))
    if not groups:
        groups.append(JetGroup(0, np.zeros((1, dim)), np.array([0.0]), "zero operator"))
    plan = Plan(op, dim, tuple(groups), samples, distribution if samples else None, seed, tuple(notes))
    if samples is None:
        _verify(plan, op)
    return plan


# --- order 1: Σ b_i ∂_i f = f_1(b), one direction ----------------------------------------------------


def _plan_order1(atoms, dim) -> list[JetGroup]:
    b = np.zeros(dim)
    for c, atom in atoms:
        for alpha, v in atom.coefficients(dim).items():
            b[alpha.index(1)] += c * v
    if not np.any(b):
        return []
    return [JetGroup(1, b[None, :], np.ones(1), "first order b·∇f")]


# --- order 2: tr(C ∇²f) ------------------------------------------------------------------------------


def _matrix(atoms, dim) -> np.ndarray:
    """Σ c_i C_i, with ``C_ii = c_{2e_i}``, ``C_ij = c_{e_i+e_j} / 2``."""
    C = np.zeros((dim, dim))
    for c, atom in atoms:
        if isinstance(atom, Laplacian):
            C += c * np.eye(dim)
        elif isinstance(atom, WeightedLaplacian):
            C += c * atom.matrix
        else:
            for alpha, v in atom.coefficients(dim).items():
                idx = [i for i, k in enumerate(alpha) for _ in range(k)]
                i, j = idx
                if i == j:
                    C[i, i] += c * v
                else:
                    C[i, j] += c * v / 2
                    C[j, i] += c * v / 2
    return C


def _plan_order2(atoms, dim, samples, distribution, rng) -> list[JetGroup]:
    only_laplacians = all(isinstance(a, Laplacian) for _, a in atoms)
    single_factor = len(atoms) == 1 and isinstance(atoms[0][1], WeightedLaplacian) and atoms[0][1].factor is not None
    if samples is None:
        if single_factor and atoms[0][0] > 0:
            c, atom = atoms[0]
            sigma = atom.factor
            keep = np.any(sigma != 0.0, axis=0)
            if not keep.any():
                return []
            return [JetGroup(2, sigma[:, keep].T.copy(), np.full(int(keep.sum()), c), "columns of the factor σ")]
        C = _matrix(atoms, dim)
        if only_laplacians or np.count_nonzero(C - np.diag(np.diag(C))) == 0:
            axes = tuple(int(i) for i in np.flatnonzero(np.diag(C)))
            if not axes:
                return []
            label = "Laplacian" if only_laplacians else "diagonal C"
            return [JetGroup(2, np.eye(dim)[list(axes)], np.diag(C)[list(axes)].copy(), label, axes)]
        lam, Q = np.linalg.eigh(C)
        keep = np.abs(lam) > 1e-12 * float(np.max(np.abs(lam)))  # relative: a tiny C is not a zero C
        if not keep.any():
            return []
        return [JetGroup(2, Q[:, keep].T.copy(), lam[keep].copy(), "eigenvectors of C (rank-revealing)")]
    # randomised: v = σ u with E[u uᵀ] = I, so E[f_2(v)] = tr(σσᵀ ∇²f); an indefinite C splits into ± parts.
    if only_laplacians:
        factors = [(sum(c for c, _ in atoms), np.eye(dim), "Laplacian")]
    elif single_factor and atoms[0][0] > 0:
        factors = [(atoms[0][0], atoms[0][1].factor, "σ u")]
    else:
        C = _matrix(atoms, dim)
        lam, Q = np.linalg.eigh(C)
        tol = 1e-12 * float(np.max(np.abs(lam)))
        factors = []
        pos, neg = lam > tol, lam < -tol
        if pos.any():
            factors.append((1.0, Q[:, pos] * np.sqrt(lam[pos]), "σ₊ u, C₊ = σ₊σ₊ᵀ"))
        if neg.any():
            factors.append((-1.0, Q[:, neg] * np.sqrt(-lam[neg]), "σ₋ u, C₋ = σ₋σ₋ᵀ"))
    groups = []
    for c, sigma, label in factors:
        u = _sample(rng, distribution, samples, sigma.shape[1])
        groups.append(JetGroup(2, u @ sigma.T, np.full(samples, c / samples), f"randomised {label}"))
    if len(groups) > 1:  # one jet group per order: merge the ± parts
        groups = [
            JetGroup(
                2,
                np.concatenate([g.directions for g in groups]),
                np.concatenate([g.weights for g in groups]),
                "randomised σ₊u and σ₋u (indefinite C)",
            )
        ]
    return groups


def _sample(rng, distribution: str, samples: int, dim: int) -> np.ndarray:
    if distribution == "rademacher":
        return rng.choice(np.array([-1.0, 1.0]), size=(samples, dim))
    return rng.standard_normal((samples, dim))


# --- order ≥ 3: bi-Laplacian set, or interpolation + solve --------------------------------------------


def bilaplacian_directions(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``Δ² = Σ_i (1 − (D−1)/3) ∂_{e_i}⁴ + Σ_{i<j} (∂_{e_i+e_j}⁴ + ∂_{e_i−e_j}⁴) / 6``: D² directions."""
    eye = np.eye(dim)
    dirs, weights = [], []
    w_unit = 1.0 - (dim - 1) / 3.0
    if w_unit != 0.0:
        dirs.extend(eye)
        weights.extend([w_unit] * dim)
    for i, j in itertools.combinations(range(dim), 2):
        dirs.extend([eye[i] + eye[j], eye[i] - eye[j]])
        weights.extend([1 / 6, 1 / 6])
    return np.array(dirs).reshape(-1, dim), np.array(weights)


def interpolation_directions(coefficients: dict[Alpha, float], order: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Directions ``j ≥ 0, |j| = K`` on the variables the α use; weights solve ``Σ_r w_r K!/α! v_r^α = c_α``."""
    support = sorted({i for a in coefficients for i, k in enumerate(a) if k})
    n = len(support)
    local = list(_multi_indices(n, order))
    # candidate directions are the same lattice points as the multi-indices
    cand = np.array(local, dtype=float)
    M = np.array([[_fact_ratio(order, a) * np.prod(cand[r] ** np.array(a)) for r in range(len(cand))] for a in local])
    rhs = np.array([coefficients.get(_embed(a, support, dim), 0.0) for a in local])
    w = np.linalg.solve(M, rhs)
    keep = np.abs(w) > 1e-13 * float(np.max(np.abs(w), initial=0.0))
    dirs = np.zeros((int(keep.sum()), dim))
    dirs[:, support] = cand[keep]
    return dirs, w[keep]


def _plan_higher(K, atoms, dim, samples, distribution, rng, notes) -> list[JetGroup]:
    only_bilap = K == 4 and all(isinstance(a, Bilaplacian) for _, a in atoms)
    if samples is not None:
        if not only_bilap:
            raise PlanError(
                f"no unbiased randomised estimator is implemented for this order-{K} operator; "
                "randomisation covers order-2 operators and the bi-Laplacian. Use samples=None (exact)."
            )
        if distribution == "rademacher":
            raise PlanError(
                "the Rademacher estimator is biased for order-4 operators (E[v⁴] ≠ 3); use "
                "distribution='gaussian' for a randomised bi-Laplacian (weight 1/(3S))"
            )
        c = sum(c for c, _ in atoms)
        u = _sample(rng, distribution, samples, dim)
        return [JetGroup(4, u, np.full(samples, c / (3 * samples)), "randomised Gaussian, E[f_4(v)] = 3Δ²f")]
    coeffs: dict[Alpha, float] = defaultdict(float)
    for c, atom in atoms:
        for a, v in atom.coefficients(dim).items():
            coeffs[a] += c * v
    coeffs = {a: v for a, v in coeffs.items() if v != 0.0}
    if not coeffs:
        return []
    candidates = []
    if only_bilap:
        d, w = bilaplacian_directions(dim)
        candidates.append((d, w * sum(c for c, _ in atoms), "bi-Laplacian set e_i, e_i ± e_j"))
    d, w = interpolation_directions(coeffs, K, dim)
    candidates.append((d, w, "interpolation directions j ≥ 0, |j| = K, solved weights"))
    d, w, label = min(candidates, key=lambda t: t[0].shape[0])
    return [JetGroup(K, d, w, label)]


# --- helpers -------------------------------------------------------------------------------------------


def _multi_indices(n: int, order: int):
    """All α ∈ N^n with |α| = order, in lexicographic order."""
    if n == 0:
        if order == 0:
            yield ()
        return
    for first in range(order, -1, -1):
        for rest in _multi_indices(n - 1, order - first):
            yield (first,) + rest


def _fact_ratio(order: int, alpha) -> float:
    return math.factorial(order) / math.prod(math.factorial(k) for k in alpha)


def _embed(a, support, dim) -> Alpha:
    full = [0] * dim
    for i, k in zip(support, a, strict=True):
        full[i] = k
    return tuple(full)


def _moment(directions: np.ndarray, alpha: Alpha) -> np.ndarray:
    """``K!/α! · v_r^α`` for every row ``v_r``."""
    K = sum(alpha)
    return _fact_ratio(K, alpha) * np.prod(directions ** np.array(alpha), axis=1)


def _verify(plan: Plan, op: Operator) -> None:
    """Check ``Σ_r w_r K!/α! v_r^α = c_α`` for every α (exactly when few, else on the polynomial identity
    ``Σ_r w_r (y·v_r)^K = Σ_α c_α y^α`` at random points ``y``, which the α-wise identity implies and, for
    generic ``y``, is implied by)."""
    want = op.coefficients(plan.dim)
    scale = max([abs(v) for v in want.values()], default=0.0) or 1.0  # relative to the operator's own size
    n_alpha = sum(math.comb(plan.dim + g.order - 1, g.order) * g.size for g in plan.groups)
    if n_alpha <= 200_000:
        got = plan.coefficients()
        keys = set(want) | set(got)
        err = max((abs(want.get(a, 0.0) - got.get(a, 0.0)) for a in keys), default=0.0)
    else:
        rng = np.random.default_rng(0)
        alphas = np.array(list(want), dtype=float).reshape(len(want), plan.dim)
        cs = np.array(list(want.values()))
        err = 0.0
        for _ in range(4):
            y = rng.uniform(-1.0, 1.0, plan.dim)
            lhs = sum(float(np.dot(g.weights, (g.directions @ y) ** g.order)) for g in plan.groups)
            rhs = float(np.dot(cs, np.prod(y**alphas, axis=1))) if len(cs) else 0.0
            err = max(err, abs(lhs - rhs))
        scale *= max(1.0, len(want))
    if err > 1e-9 * scale:
        raise PlanError(f"internal error: the plan for {op!r} reproduces its coefficients only to {err:.3g}")
