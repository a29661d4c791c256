"""The direction-set route: one jet group per order, its cost estimated without building it, and mixed-order
sharing (a lower-order part read off a higher group's per-direction coefficients)."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from . import dirsets
from .errors import PlanError
from .plan_group import JetGroup, multi_indices
from .plan_order2 import order2_groups, sample
from .spec import Bilaplacian, Composed, Laplacian, LinearOperator, Operator, WeightedLaplacian

__all__ = [
    "directions_cost",
    "direction_groups",
    "share_lower_orders",
    "bilaplacian_directions",
    "interpolation_directions",
    "MAX_ENTRIES",
]

#: the largest dense direction array (R × D entries) the direction route builds
MAX_ENTRIES = 50_000_000


def bilaplacian_directions(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``Δ² = Σ_i (1 − (D−1)/3) ∂_{e_i}⁴ + Σ_{i<j} (∂_{e_i+e_j}⁴ + ∂_{e_i−e_j}⁴) / 6``: D² directions."""
    return dirsets.bilaplacian(dim)


def interpolation_directions(coefficients: dict, order: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Directions ``j ≥ 0, |j| = K`` on the variables the α use; weights solve ``Σ_r w_r K!/α! v_r^α = c_α``."""
    return dirsets.interpolation(coefficients, order, dim)


# --- splitting an operator into homogeneous parts ---------------------------------------------------------


def _orders(op: Operator) -> set[int]:
    out: set[int] = set()
    for _, atom in op.parts():
        if isinstance(atom, LinearOperator):
            out |= set(atom.orders)
        elif isinstance(atom, Composed):
            out |= {a + b for a in _orders(atom.outer) for b in _orders(atom.inner)}
        else:
            out.add(atom.order)
    return out


def _by_order(parts, dim: int) -> dict[int, list[tuple[float, Operator]]]:
    """Homogeneous parts by order (a mixed-order LinearOperator or composition is split by its coefficients)."""
    by_order: dict[int, list] = defaultdict(list)
    for c, atom in parts:
        orders = _orders(atom)
        if len(orders) == 1:
            by_order[orders.pop()].append((c, atom))
            continue
        terms = atom.terms if isinstance(atom, LinearOperator) else atom.coefficients(dim)
        for K in sorted(orders):
            sub = {a: v for a, v in terms.items() if sum(a) == K}
            if sub:
                by_order[K].append((c, LinearOperator(sub)))
    return by_order


# --- cost estimate -------------------------------------------------------------------------------------------


def _arrays(K: int, R: int) -> int:
    return 1 if K == 0 else 1 + (K - 1) * R + 1


def directions_cost(parts, dim: int, samples, distribution) -> tuple[int | None, str]:
    """Collapsed arrays per node of the direction route (an estimate; nothing is built), or None and why."""
    total = 0
    for K, atoms in _by_order(parts, dim).items():
        try:
            total += _arrays(K, _estimate(K, atoms, dim, samples, distribution))
        except PlanError as err:
            return None, str(err)
    return total, ""


def _estimate(K: int, atoms, dim: int, samples, distribution) -> int:
    if K <= 1:
        return 1
    if samples is not None:
        if K >= 3:
            _check_random_higher(K, atoms, distribution)
        return samples * (2 if K == 2 and not all(isinstance(a, Laplacian) for _, a in atoms) else 1)
    R = 0
    for _, atom in atoms:
        R += _estimate_atom(K, atom, dim)
    return R


def _estimate_atom(K: int, atom: Operator, dim: int) -> int:
    if isinstance(atom, Laplacian):
        return dim
    if isinstance(atom, WeightedLaplacian):
        return atom.factor.shape[1] if atom.factor is not None else dim
    if isinstance(atom, Bilaplacian):
        return dirsets.bilaplacian_size(dim)
    if isinstance(atom, Composed):
        (K1,), (K2,) = _orders(atom.outer), _orders(atom.inner)
        R1 = sum(_estimate_atom(K1, a, dim) for _, a in atom.outer.parts())
        R2 = sum(_estimate_atom(K2, a, dim) for _, a in atom.inner.parts())
        return dirsets.product_size(R1, R2, K1, K2)
    terms = atom.terms if isinstance(atom, LinearOperator) else atom.coefficients(dim)
    if K == 2:
        return len({i for a in terms for i, k in enumerate(a) if k})
    return _component_sizes(terms, K)


def _component_sizes(terms: dict, K: int) -> int:
    sparse = [{i: k for i, k in enumerate(a) if k} for a in terms]
    total = 0
    for comp in dirsets.components(sparse):
        n = len({i for t in comp for i in sparse[t]})
        box = sum(dirsets.box_size(sparse[t]) for t in comp)
        lattice = dirsets.lattice_size(n, K)
        total += min(box, lattice) if lattice <= dirsets.INTERPOLATION_LIMIT else box
    return total


def _check_random_higher(K: int, atoms, distribution) -> None:
    if not (K == 4 and all(isinstance(a, Bilaplacian) for _, a in atoms)):
        raise PlanError(
            f"no unbiased randomised direction set is implemented for this order-{K} operator; randomisation "
            "covers order-2 operators, the bi-Laplacian, and compositions of those (route='composition'). "
            "Use samples=None (exact)."
        )
    if distribution == "rademacher":
        raise PlanError(
            "the Rademacher estimator is biased for order-4 direction sets (E[v⁴] ≠ 3); use "
            "distribution='gaussian' for a randomised bi-Laplacian (weight 1/(3S)), or route='composition' "
            "(Rademacher at each order-2 level)"
        )


# --- building the groups ---------------------------------------------------------------------------------------


def direction_groups(parts, dim: int, samples, distribution, rng) -> tuple[tuple[JetGroup, ...], tuple[str, ...]]:
    """One jet group per order present (randomised where ``samples`` is set)."""
    groups: list[JetGroup] = []
    for K, atoms in sorted(_by_order(parts, dim).items()):
        if K == 0:
            y0 = np.zeros((1, dim))
            total = float(sum(c * a.symbol(y0)[0] for c, a in atoms))
            if total != 0.0:
                groups.append(JetGroup(0, np.zeros((1, dim)), np.array([total]), "value c·f"))
        elif K == 1:
            groups.extend(_order1(atoms, dim))
        elif K == 2:
            groups.extend(order2_groups(atoms, dim, samples, distribution or "rademacher", rng))
        else:
            groups.extend(_higher(K, atoms, dim, samples, distribution, rng))
    if not groups:
        groups.append(JetGroup(0, np.zeros((1, dim)), np.array([0.0]), "zero operator"))
    return tuple(groups), ()


def _order1(atoms, dim) -> list[JetGroup]:
    b = np.zeros(dim)
    for c, atom in atoms:
        for alpha, v in atom.coefficients(dim).items():
            b[alpha.index(1)] += c * v
    if not np.any(b):
        return []
    return [JetGroup(1, b[None, :], np.ones(1), "first order b·∇f")]


def _higher(K, atoms, dim, samples, distribution, rng) -> list[JetGroup]:
    if samples is not None:
        _check_random_higher(K, atoms, distribution)
        c = sum(c for c, _ in atoms)
        u = sample(rng, "gaussian", samples, dim)
        return [JetGroup(4, u, np.full(samples, c / (3 * samples)), "randomised Gaussian, E[f_4(v)] = 3Δ²f")]
    R = sum(_estimate_atom(K, a, dim) for _, a in atoms)
    if R * dim > MAX_ENTRIES:
        raise PlanError(
            f"the order-{K} direction set has about {R} directions in D={dim} ({R * dim:.3g} entries); "
            "use route='composition' where the operator is a composition (e.g. the bi-Laplacian), or chunk D"
        )
    if all(isinstance(a, Bilaplacian) for _, a in atoms):  # closed form, no merging needed
        V, w = dirsets.bilaplacian(dim, sum(c for c, _ in atoms))
        return [JetGroup(K, V, w, "bi-Laplacian set e_i, e_i ± e_j")]
    acc = dirsets.DirectionSet(K, dim)
    labels = []
    terms: dict = defaultdict(float)
    for c, atom in atoms:
        if isinstance(atom, Bilaplacian):
            acc.add_dense(*_scaled(dirsets.bilaplacian(dim), c))
            labels.append("bi-Laplacian set")
        elif isinstance(atom, Composed):
            for g1 in direction_groups(atom.outer.parts(), dim, None, None, None)[0]:
                for g2 in direction_groups(atom.inner.parts(), dim, None, None, None)[0]:
                    dirsets.product(g1.directions, c * g1.weights, g1.order, g2.directions, g2.weights, g2.order, acc)
            labels.append("product of the factors' sets")
        else:
            for a, v in atom.coefficients(dim).items():
                terms[a] += c * v
    terms = {a: v for a, v in terms.items() if v != 0.0}
    if terms:
        _add_terms(terms, K, dim, acc)
        labels.append("polarization boxes / interpolation per connected support")
    V, w = acc.arrays()
    if not w.size:
        return []
    return [JetGroup(K, V, w, "; ".join(dict.fromkeys(labels)))]


def _scaled(Vw, c):
    return Vw[0], Vw[1] * c


def _add_terms(terms: dict, K: int, dim: int, acc: dirsets.DirectionSet) -> None:
    """Per connected support: the smaller of the merged polarization boxes and the interpolation lattice."""
    alphas = list(terms)
    sparse = [{i: k for i, k in enumerate(a) if k} for a in alphas]
    for comp in dirsets.components(sparse):
        boxes = dirsets.DirectionSet(K, dim)
        for t in comp:
            dirsets.box(sparse[t], terms[alphas[t]], boxes)
        n = len({i for t in comp for i in sparse[t]})
        if dirsets.lattice_size(n, K) <= min(len(boxes), dirsets.INTERPOLATION_LIMIT) - 1:
            acc.add_dense(*dirsets.interpolation({alphas[t]: terms[alphas[t]] for t in comp}, K, dim))
        else:
            for key, (idx, val, w) in boxes._terms.items():
                del key
                acc.add(idx, val, w)


# --- mixed-order sharing ------------------------------------------------------------------------------------


def share_lower_orders(groups: tuple[JetGroup, ...], dim: int) -> tuple[JetGroup, ...]:
    """Serve lower-order groups from the highest-order group: ``Σ_s w_s f_k(u_s) = Σ_r a_r f_k(v_r)``.

    Order 0 always (``f`` is every group's ``x_0``); order ``k ≥ 1`` when the host is exact and its
    directions span the part: closed form for ``b·∇`` over unit directions, else a small least-squares
    solve whose residual must vanish."""
    if len(groups) < 2:
        return groups
    host = max(range(len(groups)), key=lambda i: groups[i].order)
    H = groups[host]
    out = list(groups)
    for i, g in enumerate(groups):
        if i == host or g.order >= H.order or g.served_by is not None or g.size == 0:
            continue
        a = _read_off(g, H, dim)
        if a is not None:
            out[i] = g.with_served_by(host, a)
    return tuple(out)


def _read_off(g: JetGroup, H: JetGroup, dim: int) -> np.ndarray | None:
    if g.order == 0:
        return g.weights.copy()
    if H.label.startswith("randomised"):
        return None
    if g.order == 1 and H.unit_axes is not None:
        b = g.weights @ g.directions
        a = b[list(H.unit_axes)]
        return a if np.allclose(np.delete(b, list(H.unit_axes)), 0.0, atol=0.0) else None
    n_alpha = math.comb(dim + g.order - 1, g.order)
    if H.size * n_alpha > 1_000_000 or g.size * n_alpha > 1_000_000:
        return None
    alphas = np.array(list(multi_indices(dim, g.order)), dtype=np.float64)

    def moments(V):  # M[α, r] = v_r^α (the K!/α! factor is common to both sides)
        return np.prod(V[None, :, :] ** alphas[:, None, :], axis=2)

    target = moments(g.directions) @ g.weights
    M = moments(H.directions)
    a, *_ = np.linalg.lstsq(M, target, rcond=None)
    scale = float(np.max(np.abs(target), initial=0.0)) or 1.0
    return a if float(np.max(np.abs(M @ a - target), initial=0.0)) <= 1e-10 * scale else None
