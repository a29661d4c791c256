"""Direction sparsity: which block of input directions each element of a value can depend on.

The input directions are grouped into blocks of ``b`` consecutive directions; block ``β`` is seeded only on
the input elements ``β·b … β·b + b − 1`` (unit directions ``e_1 … e_D`` grouped by particle: ``b = 3`` for
positions in 3-D). The *pattern* of a value is an integer array over its point shape: ``NONE`` (−1, no
direction reaches the element), the id of a *set* of blocks (ids ``0 … B−1`` are the single blocks, unions
get new ids: a pair feature ``r_i − r_j`` lies in ``{i, j}``), or ``DENSE`` (−2, more blocks than pay). It is
computed once per program by abstract interpretation, from the kinds:

* pointwise kinds (sums, elementwise functions, broadcasting products, ``where``) unite their operands'
  sets position by position;
* maps with non-negative coefficients (reshapes, transposes, slices, gathers by known indices, sums over
  axes, and ``B(·, 1)`` of a contraction) are *applied* to probes of the pattern: with ``c = [id ≥ 0]``,
  ``m₁ = (id+1)·c``, ``m₂ = (id+1)²·c`` pushed through the map, the elements reaching an output element share
  one set exactly when ``m₂·c = m₁²`` (equality in Cauchy–Schwarz), the set being ``m₁/c − 1``; else ``DENSE``;
* everything else (linear algebra, generic rules, loops) is ``DENSE`` wherever an operand has a direction.

A value whose pattern has no ``DENSE`` element is stored *compressed*: its per-direction coefficients carry
``m·b`` slots instead of ``R`` directions (``m``: its largest set), slot ``j·b + s`` of an element with set
``(β_0 < β_1 < …)`` standing for direction ``β_j·b + s`` (zero past the set, and on ``NONE`` elements). A
pointwise equation first gathers each operand's slots into the output's layout (where they differ); any
other compressed equation reads elements of the output's own set, so the shared rules run unchanged on the
slots; the weighted sum ``Σ_r w_r`` becomes ``Σ_t w_{β_j b + s}`` per element. Where the pattern fills up,
the operands are expanded to all ``R`` directions (a gather) and propagation continues densely.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .program import Equation, Program, Var

__all__ = [
    "NONE", "DENSE", "BlockSets", "SparsePlan", "sparse_plan", "analyse", "unite", "pointwise", "summed",
    "row_blocks", "BLOCK_CANDIDATES", "MAX_SET", "Split", "contraction", "PARTNER_PROBE",
]  # fmt: skip

NONE, DENSE = -1, -2

#: block sizes tried for unit directions (directions per particle); the cost model picks among them
BLOCK_CANDIDATES = (2, 3, 4, 5, 6, 8)
#: the most blocks one element's set may hold before it counts as dense (also at most half the directions)
MAX_SET = 8
#: the cost of a gathered element (expanding slots to directions, aligning operands) against a computed one
GATHER_COST = 3.0
#: multiply-adds of a contraction (a GEMM) that cost as much as one elementwise output element
CONTRACTION_RATE = 4.0
#: sparsity is used when its cost is below this fraction of the dense propagation's
PAYS = 0.9

Probe = Callable[..., list]  # probe(fn, arrays, lead) -> numpy arrays (the backend's eager evaluation)


class BlockSets:
    """Sets of blocks by id: ``0 … B−1`` the single blocks, unions appended; sets larger than ``cap`` are
    ``DENSE`` (their slots would cost as much as the directions)."""

    def __init__(self, B: int, cap: int):
        self.B, self.cap = B, cap
        self.sets: list[tuple[int, ...]] = [(b,) for b in range(B)]
        self._ids: dict[tuple[int, ...], int] = {s: i for i, s in enumerate(self.sets)}

    def union(self, a: int, b: int) -> int:
        u = tuple(sorted(set(self.sets[a]) | set(self.sets[b])))
        if len(u) > self.cap:
            return DENSE
        i = self._ids.get(u)
        if i is None:
            i = self._ids[u] = len(self.sets)
            self.sets.append(u)
        return i

    def unite(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Position by position: ``NONE`` ∪ p = p, ``DENSE`` ∪ p = ``DENSE``, else the union's id."""
        out = np.where(a == NONE, b, np.where(b == NONE, a, np.where(a == b, a, DENSE)))
        mix = (a >= 0) & (b >= 0) & (a != b)
        if mix.any():
            pairs, inverse = np.unique(np.stack([a[mix], b[mix]], axis=1), axis=0, return_inverse=True)
            ids = np.array([self.union(int(x), int(y)) for x, y in pairs], dtype=np.int64)
            out[mix] = ids[inverse.reshape(-1)]
        return out

    def members(self, p: np.ndarray, m: int) -> np.ndarray:
        """``(m, *shape)``: the blocks of each element's set in order, −1 past its end."""
        table = np.full((len(self.sets) + 1, m), -1, dtype=np.int64)  # the last row: NONE
        for i, st in enumerate(self.sets):
            table[i, : min(len(st), m)] = st[:m]
        return np.moveaxis(table[np.where(p >= 0, p, len(self.sets))], -1, 0)

    def size(self, p: np.ndarray) -> int:
        """The largest set among the elements (1 when there is none)."""
        ids = np.unique(p[p >= 0])
        return max([len(self.sets[i]) for i in ids], default=1)


def unite(patterns: list[np.ndarray], shape: tuple[int, ...], sets: BlockSets) -> np.ndarray:
    """Position by position (broadcasting) union of the operands' sets."""
    out = np.full(shape, NONE, dtype=np.int64)
    for p in patterns:
        out = sets.unite(out, np.broadcast_to(p, shape))
    return out


def _stats(p: np.ndarray) -> np.ndarray:
    """The probes ``[c, m₁, m₂, dense]`` of a pattern, stacked on a leading axis of size 4."""
    has = p >= 0
    m1 = np.where(has, p + 1, 0).astype(np.float64)
    return np.stack([has.astype(np.float64), m1, m1 * m1, (p == DENSE).astype(np.float64)])


def _from_stats(st: np.ndarray) -> np.ndarray:
    """The pattern of an output from its pushed probes (see the module doc)."""
    st = np.real(np.asarray(st)).astype(np.float64)  # (a complex-valued map of real probes: imaginary part 0)
    c, m1, m2, dense = st
    out = np.full(c.shape, NONE, dtype=np.int64)
    has = c > 0
    one = has & (np.abs(m2 * c - m1 * m1) <= 1e-9 * m1 * m1) & (c < 2.0**40)
    block = np.rint(np.divide(m1, c, out=np.ones_like(m1), where=has)) - 1
    out[one] = block[one].astype(np.int64)
    out[has & ~one] = DENSE
    out[(dense != 0) | ~np.isfinite(dense) | (c < 0)] = DENSE
    return out


@dataclass
class _Why:
    """Where sparsity was dropped: the equation and why."""

    eqn: Equation
    reason: str


@dataclass
class Split:
    """A contraction ``z = B(a, b)`` whose output mixes blocks while each of its terms keeps one set per element,
    run term by term: ``B(a_1, b_0)`` lies in ``sides[0]``'s sets and ``B(a_0, b_1)`` in ``sides[1]``'s (None:
    that operand carries no direction, or all R of them, ``dense[side]``); with ``axes[side]`` set, the term is
    taken with that contracted axis of its operand unsummed (``Bilinear.unsum``, pattern over ``(n, *out)``)
    and summed into the directions by a scatter. The mixed term ``Σ_r B(a_{1,r}, b_{1,r})`` is slot-wise:
    where ``mixed`` (both operands compressed) marks output elements whose pairs share their block (zero
    elsewhere), or with ``partners`` (one operand dense), the set of each dense element's partners, whose
    directions are taken from it.
    """

    sides: tuple
    mixed: np.ndarray | None = None
    axes: tuple = (None, None)
    dense: tuple = (False, False)
    partners: np.ndarray | None = None

    def terms(self) -> int:
        """Per-direction products of the dense Leibniz rule: one per operand with directions, and the mixed."""
        n = sum(1 for s, d in zip(self.sides, self.dense, strict=True) if s is not None or d)
        return n + (n == 2)


@dataclass
class SparsePlan:
    """The direction-sparsity annotation of one (inlined) program for blocks of ``b`` of ``R`` directions."""

    program: Program
    b: int
    R: int
    patterns: dict[Var, np.ndarray]
    sets: BlockSets
    compressed: set = field(default_factory=set)  # values stored with slots
    dropped: list[_Why] = field(default_factory=list)
    splits: dict = field(default_factory=dict)  # Equation -> Split: contractions run term by term on slots
    cost: float = 0.0  # per-direction array elements propagated (gathers included)
    dense_cost: float = 0.0

    def is_compressed(self, v: Var) -> bool:
        return v in self.compressed

    def slots(self, v: Var | np.ndarray) -> int:
        """``m·b`` slots of a compressed value (``m``: its largest set)."""
        p = self.patterns[v] if isinstance(v, Var) else v
        return self.b * self.sets.size(p)

    def expand_index(self, p: Var | np.ndarray) -> np.ndarray:
        """``(R, *shape)``: the slot holding direction ``r`` at each element (``slots``: none, a zero)."""
        p = self.patterns[p] if isinstance(p, Var) else p
        k = self.slots(p)
        members = self.sets.members(p, k // self.b)  # (m, *shape)
        r = np.arange(self.R).reshape((self.R, 1) + (1,) * p.ndim)
        hit = members[None] == r // self.b  # (R, m, *shape)
        j = np.argmax(hit, axis=1)
        return np.where(hit.any(axis=1), j * self.b + r[:, 0] % self.b, k)

    def weight_index(self, p: Var | np.ndarray, slots: int | None = None) -> np.ndarray:
        """``(slots, *shape)``: the direction of each slot (``R``, a zero weight, past the element's set); the
        pattern's own slot count unless ``slots`` (a multiple of ``b``) is given."""
        p = self.patterns[p] if isinstance(p, Var) else p
        k = self.slots(p) if slots is None else slots
        members = np.repeat(self.sets.members(p, k // self.b), self.b, axis=0)  # (k, *shape)
        s = (np.arange(k) % self.b).reshape((k,) + (1,) * p.ndim)
        return np.where(members >= 0, members * self.b + s, self.R)

    def align_index(self, p_in: np.ndarray, p_out: np.ndarray) -> np.ndarray | None:
        """``(slots of p_out, *shape)``: the operand slot (of pattern ``p_in``, broadcast to ``p_out``'s shape)
        holding each output slot's direction (``slots of p_in``: a zero); None when the layouts already agree."""
        k_in, k_out = self.slots(p_in), self.slots(p_out)
        if k_in == k_out and ((p_in == p_out) | (p_in == NONE)).all():
            return None
        m_in, m_out = k_in // self.b, k_out // self.b
        mi, mo = self.sets.members(p_in, m_in), self.sets.members(p_out, m_out)  # (m, *shape)
        hit = (mo[:, None] == mi[None]) & (mo[:, None] >= 0)  # (m_out, m_in, *shape)
        j_in = np.argmax(hit, axis=1)
        blocks = np.where(hit.any(axis=1), j_in, -1)  # (m_out, *shape)
        blocks = np.repeat(blocks, self.b, axis=0)  # (k_out, *shape)
        s = (np.arange(k_out) % self.b).reshape((k_out,) + (1,) * p_out.ndim)
        return np.where(blocks >= 0, blocks * self.b + s, k_in)

    def sum_index(self, p: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, int, tuple]:
        """For ``Σ`` over point ``axes`` of a compressed value of pattern ``p`` into all R directions: the flat
        target ``r·K + (kept position)`` of each slot (``R·K``: none), the size ``R·K`` and the output shape."""
        dirs = self.weight_index(p)  # (k, *shape), R where a slot holds no direction
        keep = [i for i in range(p.ndim) if i not in axes]
        keep_shape = tuple(p.shape[i] for i in keep)
        K = int(np.prod(keep_shape, dtype=np.int64))
        grids = np.indices(p.shape)
        pos = np.ravel_multi_index([grids[i] for i in keep], keep_shape) if keep else np.zeros(p.shape, np.int64)
        return np.where(dirs < self.R, dirs * K + pos[None], self.R * K), self.R * K, (self.R,) + keep_shape

    def row_blocks(self, v: Var) -> np.ndarray | None:
        """For a compressed matrix (batch) whose rows each lie in one block, distinct within a matrix: the
        rows' blocks ``(…, n)``; else None."""
        return row_blocks(self.patterns[v], self.sets.B) if v in self.compressed else None

    def seed(self, v: Var) -> np.ndarray:
        """The compressed unit seed ``(b, D)``: slot ``s`` of element ``a`` is 1 where ``s = a mod b``."""
        (D,) = v.shape
        return (np.arange(self.b)[:, None] == (np.arange(D) % self.b)[None, :]).astype(np.float64)

    def describe(self) -> str:
        n_vals = sum(1 for v, p in self.patterns.items() if (p != NONE).any())
        lines = [
            f"direction sparsity: blocks of b={self.b} of R={self.R} directions; {len(self.compressed)} of "
            f"{n_vals} values with directions carried compressed (m·b slots for sets of m blocks, not R); "
            f"cost {self.cost:.3g} against {self.dense_cost:.3g} dense (per-direction array elements)"
        ]
        kept = [f"{v.name}[{self.slots(v)}]" for v in self.patterns if v in self.compressed]
        if kept:
            lines.append(f"  kept [slots]: {', '.join(kept)}")
        for why in self.dropped:
            outs = ", ".join(v.name for v in why.eqn.outs)
            lines.append(f"  dense from {why.eqn.prim} -> {outs}: {why.reason}")
        return "\n".join(lines)


def row_blocks(p: np.ndarray, B: int) -> np.ndarray | None:
    """The blocks of the rows of a pattern of matrices ``(…, n, m)`` when every row lies in one single block
    (or none) and no two rows of a matrix share one (a determinant's rows, one per particle); else None."""
    if p.ndim < 2 or p.shape[-1] == 0 or not (p == p[..., :1]).all() or (p >= B).any() or (p == DENSE).any():
        return None
    rows = p[..., 0]
    flat = rows.reshape(-1, rows.shape[-1])
    for r in flat:
        r = r[r >= 0]
        if len(np.unique(r)) != len(r):
            return None
    return rows


def _size(v: Var) -> int:
    return int(np.prod(v.shape, dtype=np.int64))


def _work(eqn: Equation) -> float:
    """Work per output element, in units of an elementwise one: a contraction of length ``K`` does ``K``
    multiply-adds per element, at ``CONTRACTION_RATE`` of them per elementwise cost (they run as GEMMs);
    ``K = sqrt(|a||b|/|out|)`` (exact for ``x @ W``, an over-estimate with batch axes); a matrix function of
    ``n × n`` matrices does about ``n`` products of them per output element of the matrices."""
    if eqn.kind == "bilinear" and not eqn.impl.broadcasting and len(eqn.ins) == 2:
        a, b = (_size(v) for v in eqn.ins)
        out = max(_size(eqn.outs[0]), 1)
        return max(1.0, float(np.sqrt(a * b / out)) / CONTRACTION_RATE)
    if eqn.kind == "linalg" and eqn.ins and eqn.ins[0].ndim >= 2:
        a = eqn.ins[0]
        out = max(sum(_size(v) for v in eqn.outs), 1)
        return max(1.0, _size(a) * a.shape[-1] / out / CONTRACTION_RATE)
    return 1.0


def analyse(program: Program, in_pattern: np.ndarray, probe: Probe, concrete: Callable[[Any], Any], sets: BlockSets,
            splits: dict | None = None):  # fmt: skip
    """The pattern of every value of ``program`` (calls inlined), its input having ``in_pattern``.

    ``probe(fn, arrays, lead)`` evaluates a kind's native callable eagerly on NumPy arrays (``lead[i]``:
    array ``i`` has a leading probe axis) and returns NumPy arrays; ``concrete(value)`` is a constant's
    value as a NumPy array, or None when it is not known (a traced parameter); ``sets`` holds the sets of
    blocks (it grows). Returns the patterns and, by equation index, why an equation's output went dense;
    ``splits`` (optional) receives, by equation index, the :class:`Split` of contractions whose output went
    dense but whose terms did not."""
    (xvar,) = program.invars
    pats: dict[Var, np.ndarray] = {xvar: np.asarray(in_pattern, dtype=np.int64)}
    known = _Known(program, probe, concrete)
    for v in program.consts:
        pats[v] = np.full(v.shape, NONE, dtype=np.int64)
    why: dict[int, str] = {}
    for i, eqn in enumerate(program.eqns):
        ins = [pats[v] for v in eqn.ins]
        if all((p == NONE).all() for p in ins):
            outs = [np.full(v.shape, NONE, dtype=np.int64) for v in eqn.outs]
        elif all((p == DENSE).all() or (p == NONE).all() for p in ins):  # dense in, dense out: nothing to probe
            outs = [np.full(v.shape, DENSE if v.inexact else NONE, dtype=np.int64) for v in eqn.outs]
        else:
            try:
                outs, reason = _transfer(eqn, ins, known, probe, sets)
            except Exception as e:  # a probe the native callable refuses (e.g. complex-only ops): dense
                outs, reason = None, f"not analysed ({type(e).__name__})"
            if outs is None:
                outs = [np.full(v.shape, DENSE, dtype=np.int64) for v in eqn.outs]
            if reason:
                why[i] = reason
            if splits is not None and contraction(eqn) and (outs[0] == DENSE).any():
                split = _split(eqn, ins, probe, sets)
                if split is not None:
                    splits[i] = split
        for v, p in zip(eqn.outs, outs, strict=True):
            pats[v] = np.broadcast_to(p, v.shape) if v.inexact else np.full(v.shape, NONE, dtype=np.int64)
    return pats, why


class _Known:
    """Values known before the input (constants, and what is computed from them alone, e.g. indices),
    evaluated on demand: ``get(v)`` is the value as a NumPy array, or None."""

    def __init__(self, program: Program, probe: Probe, concrete: Callable):
        self.program, self.probe, self.concrete = program, probe, concrete
        self.values: dict[Var, Any] = {}
        self.producer = {v: e for e in program.eqns for v in e.outs}

    def get(self, v: Var, depth: int = 0):
        if v in self.values:
            return self.values[v]
        value = None
        if v in self.program.consts:
            value = self.concrete(self.program.consts[v])
        elif v in self.producer and depth < 64:
            eqn = self.producer[v]
            ok = eqn.kind not in ("generic", "scan", "while", "cond", "call") and sum(map(_size, eqn.outs)) <= 1 << 20
            args = [self.get(u, depth + 1) for u in eqn.ins] if ok else [None]
            if all(a is not None for a in args):
                try:
                    res = self.probe(eqn.impl.fn, args, [False] * len(args))
                    for u, r in zip(eqn.outs, res, strict=True):
                        self.values[u] = np.asarray(r)
                except Exception:  # noqa: BLE001 - an unknown value only makes the pattern dense
                    pass
            value = self.values.get(v)
        self.values[v] = value
        return value


def pointwise(eqn: Equation) -> bool:
    """Each output element is computed from the operands' elements at its (broadcast) position."""
    kind, impl = eqn.kind, eqn.impl
    return (
        kind in ("sum", "divide", "elementwise", "zero")
        or (kind == "bilinear" and impl.broadcasting)
        or (kind == "selection" and impl.rule in ("max", "min", "clamp"))
        or (kind == "linear" and getattr(impl, "structure", "opaque") == "pointwise")
    )


def _transfer(eqn: Equation, ins: list[np.ndarray], known: _Known, probe: Probe, sets: BlockSets):
    """``(output patterns or None for all-dense, reason it went dense or "")``."""
    kind = eqn.kind
    impl = eqn.impl
    outs = eqn.outs
    shape = outs[0].shape
    if kind == "zero":
        return [np.full(v.shape, NONE, dtype=np.int64) for v in outs], ""
    if kind in ("sum", "divide") or (kind == "bilinear" and impl.broadcasting):
        return _checked([unite(ins, shape, sets)], "")
    if kind == "elementwise":
        return _checked([unite(ins[:1], shape, sets)], "")
    if kind == "selection":
        rest = [np.full(v.shape, NONE, dtype=np.int64) for v in outs[1:]]
        if impl.rule in ("max", "min", "clamp"):
            return _checked([unite(ins, shape, sets)] + rest, "")
        if impl.rule in ("reduce_max", "reduce_min") and impl.reduce is not None:
            (st,) = probe(impl.reduce, [_stats(ins[0])], [True])
            return _checked([_from_stats(st)] + rest, "")
        return None, f"{impl.rule} moves elements by the data"
    if kind == "linear":
        lin = list(range(len(ins))) if impl.linear is None else list(impl.linear)
        structure = getattr(impl, "structure", "opaque")
        if structure == "pointwise":
            return _checked([unite([ins[i] for i in lin], v.shape, sets) for v in outs], "")
        if structure != "positive":
            return None, "a linear map whose structure is not known"
        args, lead = [], []
        for i, (v, p) in enumerate(zip(eqn.ins, ins, strict=True)):
            if i in lin:
                args.append(_stats(p))
                lead.append(True)
            elif known.get(v) is not None:
                args.append(known.get(v))
                lead.append(False)
            else:
                return None, "its indices are computed from the input"
        res = probe(impl.fn, args, lead)
        return _checked([_from_stats(np.broadcast_to(r, (4,) + v.shape)) for r, v in zip(res, outs, strict=True)], "")
    if kind == "bilinear":  # a contraction: B(p, 1) + B(1, q) has the support of B(a, b)
        total = 0.0
        for r in _side_stats(eqn, ins, probe):
            if r is not None:
                total = total + r
        return _checked([_from_stats(total)], "")
    names = {"linalg": "linear algebra", "generic": "the generic rule", "scan": "a loop", "while": "a loop",
             "cond": "a branch", "call": "a call"}  # fmt: skip
    return None, f"{names.get(kind, kind)} mixes its operand's elements"


def _side_stats(eqn: Equation, ins: list[np.ndarray], probe: Probe) -> list[np.ndarray | None]:
    """The probes of ``B(p, 1)`` and ``B(1, q)`` of a contraction (None: that operand has no direction)."""
    shape = eqn.outs[0].shape
    out: list[np.ndarray | None] = []
    for side in (0, 1):
        if (ins[side] == NONE).all():
            out.append(None)
            continue
        ones = np.ones(eqn.ins[1 - side].shape)
        args = [_stats(ins[0]), ones] if side == 0 else [ones, _stats(ins[1])]
        (r,) = probe(eqn.impl.fn, args, [side == 0, side == 1])
        out.append(np.broadcast_to(np.asarray(r, dtype=np.float64), (4,) + shape))
    return out


def contraction(eqn: Equation) -> bool:
    """A bilinear primitive that sums over pairs of elements (not an elementwise product)."""
    return eqn.kind == "bilinear" and not eqn.impl.broadcasting and len(eqn.ins) == 2


def _split(eqn: Equation, ins: list[np.ndarray], probe: Probe, sets: BlockSets) -> Split | None:
    """The :class:`Split` of a contraction whose output went dense, or None when a compressed operand's term
    mixes blocks (also with each contracted axis unsummed), when both operands are dense, or when the mixed
    term has no slot-wise form: both compressed, operands of single blocks only (sets of several could
    overlap without being equal) whose pairs are compared by one probe per block, ``M = Σ_β B([p = β],
    [q = β])`` against the count ``C = B([p ≥ 0], [q ≥ 0])`` of pairs both carrying a direction (all or none
    per output element); one dense, the set of each dense element's partners must be single."""
    has = [not (p == NONE).all() for p in ins]
    dense = tuple(h and bool((p == DENSE).any()) for h, p in zip(has, ins, strict=True))
    if all(dense) or not any(h and not d for h, d in zip(has, dense, strict=True)):
        return None
    sides: list = [None, None]
    axes: list = [None, None]
    for side, r in enumerate(_side_stats(eqn, ins, probe)):
        if r is None or dense[side]:
            continue
        p = _from_stats(r)
        if (p == DENSE).any():
            p, axes[side] = _unsummed(eqn, ins, side, probe)
            if p is None:
                return None
        sides[side] = p
    split = Split(tuple(sides), axes=tuple(axes), dense=dense)
    if not all(has):
        return split
    if any(dense):
        d = dense.index(True)
        split.partners = _partners(eqn, ins, d, probe)
        return None if split.partners is None else split
    p, q = ins
    if (p >= sets.B).any() or (q >= sets.B).any():
        return None
    blocks = np.arange(sets.B).reshape((-1,) + (1,) * p.ndim)
    (match,) = probe(eqn.impl.fn, [(p == blocks).astype(np.float64), (q == blocks.reshape((-1,) + (1,) * q.ndim))
                                   .astype(np.float64)], [True, True])  # fmt: skip
    (count,) = probe(eqn.impl.fn, [(p >= 0).astype(np.float64), (q >= 0).astype(np.float64)], [False, False])
    match = np.sum(np.asarray(match, dtype=np.float64), axis=0)
    count = np.asarray(count, dtype=np.float64)
    if not np.all((np.abs(match - count) < 0.5) | (match < 0.5)):
        return None
    split.mixed = np.broadcast_to(match > 0.5, eqn.outs[0].shape)
    return split


def _unsummed(eqn: Equation, ins: list[np.ndarray], side: int, probe: Probe):
    """``(pattern over (n, *out), axis)`` of the term of operand ``side`` with one contracted axis unsummed,
    the first axis for which it keeps one set per element; ``(None, None)`` if none does."""
    unsum = getattr(eqn.impl, "unsum", None)
    if unsum is None:
        return None, None
    ones = np.ones(eqn.ins[1 - side].shape)
    for axis in range(ins[side].ndim):
        fn = unsum(side, axis)
        if fn is None:
            continue
        args = [_stats(ins[0]), ones] if side == 0 else [ones, _stats(ins[1])]
        (r,) = probe(fn, args, [side == 0, side == 1])
        p = _from_stats(np.asarray(r, dtype=np.float64))
        if not (p == DENSE).any():
            return p, axis
    return None, None


#: the most ``|operand| × max(|operand|, |output|)`` entries the partners probe builds (in chunks of rows)
PARTNER_PROBE = 1 << 28
_PARTNER_CHUNK = 1 << 22


def _partners(eqn: Equation, ins: list[np.ndarray], side: int, probe: Probe) -> np.ndarray | None:
    """The set of the other operand's elements each element ``α`` of operand ``side`` is paired with (``Σ_γ
    B(e_α, stats)``, probed with rows of the identity, in chunks), or None when some element's partners span
    several sets (or the operand is too large to probe)."""
    shape, other = eqn.ins[side].shape, ins[1 - side]
    size = _size(eqn.ins[side])
    width = max(size, _size(eqn.outs[0]), 1)
    if size * width > PARTNER_PROBE:
        return None
    stats = _stats(other)
    rows = np.zeros((4, size))
    step = max(1, _PARTNER_CHUNK // width)
    for lo in range(0, size, step):
        hi = min(size, lo + step)
        eye = np.zeros((hi - lo, size))
        eye[np.arange(hi - lo), np.arange(lo, hi)] = 1.0
        eye = eye.reshape((hi - lo,) + shape)
        for t, st in enumerate(stats):
            args = [eye, st] if side == 0 else [st, eye]
            (r,) = probe(eqn.impl.fn, args, [side == 0, side == 1])
            rows[t, lo:hi] = np.asarray(r, dtype=np.float64).reshape(hi - lo, -1).sum(axis=1)
    q = _from_stats(rows).reshape(shape)
    return None if (q == DENSE).any() else q


def _checked(outs: list[np.ndarray], reason: str):
    if reason == "" and any((p == DENSE).any() for p in outs):
        return outs, "several blocks meet here"
    return outs, reason


def summed(eqn: Equation) -> bool:
    """A plain sum over point axes of one operand (``Linear.sums``)."""
    return eqn.kind == "linear" and getattr(eqn.impl, "sums", None) is not None and len(eqn.ins) == 1


def row_slogdet(eqn: Equation, order: int) -> bool:
    """A ``slogdet`` the row-sparse rule serves (collapsed order 2, the backend gives ``diag(p q)``)."""
    return (
        eqn.kind == "linalg" and eqn.impl.op == "slogdet" and order == 2
        and getattr(eqn.impl, "diag_product", None) is not None
    )  # fmt: skip


# --- the plan: which values are compressed, for which block size ------------------------------------------------


def sparse_plan(program: Program, R: int, probe: Probe, concrete: Callable, order: int,
                candidates: tuple[int, ...] = BLOCK_CANDIDATES, cap: int = MAX_SET) -> SparsePlan | None:  # fmt: skip
    """The cheapest block size for unit directions ``e_1 … e_R`` on ``program``'s input (None: dense is as
    cheap), with at most ``cap`` blocks per element. ``program`` must have its calls inlined. Cached on the
    program per ``(R, order, candidates, cap)``."""
    cache = program.__dict__.setdefault("_sparse_plans", {})
    key = (R, order, candidates, cap)
    if key in cache:
        return cache[key]
    (xvar,) = program.invars
    best = None
    for b in _candidates(program, R, candidates):
        if b >= R or R % b or xvar.shape != (R,):
            continue
        sets = BlockSets(R // b, cap=max(1, min(cap, R // (2 * b))))
        splits: dict = {}
        pats, why = analyse(program, np.arange(R) // b, probe, concrete, sets, splits)
        plan = _choose(program, pats, why, sets, b, R, order, splits)
        if best is None or plan.cost < best.cost:
            best = plan
    if best is not None and not best.cost < PAYS * best.dense_cost:
        best = None
    cache[key] = best
    return best


def _split_fits(plan: SparsePlan, split: Split, eqn: Equation) -> bool:
    """The operands the split takes as compressed are, and those it takes as dense are not."""
    for v, side, d in zip(eqn.ins, split.sides, split.dense, strict=True):
        if side is not None and v not in plan.compressed:
            return False
        if d and v in plan.compressed:
            return False
    return True


def _split_cost(plan: SparsePlan, split: Split, eqn: Equation, size: float, per_dir: int) -> float:
    """A split contraction, against ``R·size`` for all its per-direction products dense: a dense operand's term
    at its share of that, each compressed term at its slots' share and its expansion (or scatter) to the
    ``R`` directions of the output, the mixed term at the slots' share (and the gather of a dense operand's
    partner directions)."""
    R, out = plan.R, _size(eqn.outs[0])
    unit = R * size / split.terms()
    cost = 0.0
    for v, side, d in zip(eqn.ins, split.sides, split.dense, strict=True):
        if d:
            cost += unit
        elif side is not None:
            cost += unit * plan.slots(v) / R + GATHER_COST * R * out * per_dir
    if split.mixed is not None or split.partners is not None:
        k = max(plan.slots(v) for v, side in zip(eqn.ins, split.sides, strict=True) if side is not None)
        cost += unit * k / R
        if split.partners is not None:
            cost += GATHER_COST * k * _size(eqn.ins[split.dense.index(True)]) * per_dir
    return cost


def _candidates(program: Program, R: int, candidates: tuple[int, ...]) -> tuple[int, ...]:
    """The block sizes worth analysing: the last axis of the input reshaped to particles ``(…, d)`` (positions
    in d dimensions), among ``candidates``; none when the program never views its input as particles (an MLP
    on ``x``: its first product mixes every direction, and the analysis would only cost build time)."""
    (xvar,) = program.invars
    views = {xvar}  # x and flat arrays of its R elements one to one: a dtype cast, a negation, a scaling, x·x
    found = []
    for eqn in program.eqns:
        if not any(v in views for v in eqn.ins):
            continue
        for v in eqn.outs:
            if _size(v) != R:
                continue
            d = v.shape[-1] if v.ndim >= 2 else 0
            if d in candidates and d < R and R % d == 0 and d not in found:
                found.append(d)
            if eqn.kind in ("linear", "elementwise", "sum", "bilinear", "divide") and v.ndim <= 1:
                views.add(v)
    return tuple(found)


def _choose(
    program: Program, pats: dict, why: dict, sets: BlockSets, b: int, R: int, order: int, splits: dict | None = None
) -> SparsePlan:
    """Compress every value whose pattern has no ``DENSE`` element and whose equation's operands are
    compressed (or carry no direction); split a contraction into terms on slots where that costs less than
    expanding its compressed operands; count the cost in per-direction array elements."""
    splits = splits or {}
    plan = SparsePlan(program, b, R, pats, sets)
    (xvar,) = program.invars
    plan.compressed.add(xvar)
    per_dir = max(order - 1, 1)  # per-direction coefficients x_1 … x_{K−1} of a collapsed jet
    cost = dense = b * _size(xvar) * per_dir
    dense += R * _size(xvar) * per_dir
    expanded: set = set()
    for i, eqn in enumerate(program.eqns):
        outs = [v for v in eqn.outs if v.inexact and (pats[v] != NONE).any()]
        if not outs:
            continue
        ins = [v for v in eqn.ins if (pats[v] != NONE).any()]
        ok = (
            eqn.kind not in ("scan", "while", "cond", "call", "generic", "linalg")
            and all((pats[v] != DENSE).all() for v in outs)
            and all(v in plan.compressed for v in ins)
            and all(np.array_equal(pats[v], pats[outs[0]]) for v in outs[1:])
        )
        size = sum(_size(v) for v in outs) * per_dir * _work(eqn)
        dense += R * size
        if ok:
            plan.compressed.update(outs)
            k_out = plan.slots(outs[0])
            cost += k_out * size
            if pointwise(eqn):  # operands gathered into the output's layout where it differs
                p_out = pats[outs[0]]
                for v in ins:
                    p_in = np.broadcast_to(pats[v], p_out.shape)
                    if plan.slots(v) != k_out or not ((p_in == p_out) | (p_in == NONE)).all():
                        cost += GATHER_COST * k_out * _size(outs[0]) * per_dir
            continue
        split = splits.get(i)
        if split is not None and order <= 2 and _split_fits(plan, split, eqn):
            fresh = [v for v in ins if v in plan.compressed and v not in expanded]
            kept = _split_cost(plan, split, eqn, size, per_dir)
            if kept < R * size + GATHER_COST * R * per_dir * sum(_size(v) for v in fresh):
                plan.splits[eqn] = split
                cost += kept
                plan.dropped.append(_Why(eqn, (why.get(i) or "an operand is dense") + " (split: each term on slots, "
                                         "expanded after the contraction)"))  # fmt: skip
                continue
        cost += R * size
        if row_slogdet(eqn, order) and plan.row_blocks(eqn.ins[0]) is not None:
            cost += (GATHER_COST + 1) * b * _size(eqn.ins[0]) // max(eqn.ins[0].shape[-1], 1) * per_dir  # per row
            plan.dropped.append(_Why(eqn, "several blocks meet here (row-sparse slogdet: one row per block)"))
            continue
        if summed(eqn) and eqn.ins[0] in plan.compressed:  # one scatter-add of the slots
            cost += GATHER_COST * plan.slots(eqn.ins[0]) * _size(eqn.ins[0]) * per_dir
            plan.dropped.append(_Why(eqn, (why.get(i) or "an operand is dense") + " (summed by a scatter)"))
            continue
        for v in ins:
            if v in plan.compressed and v not in expanded:
                expanded.add(v)
                cost += GATHER_COST * R * _size(v) * per_dir
        if any(v in plan.compressed for v in ins):
            plan.dropped.append(_Why(eqn, why.get(i) or "an operand is dense"))
    plan.cost, plan.dense_cost = float(cost), float(dense)
    return plan
