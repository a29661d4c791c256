"""Running a :class:`~multijet.engine.sparsity.SparsePlan`: the slots' context of a compressed equation and
the expansion of compressed coefficients where propagation turns dense.

The backend's layout supplies ``direction_sum`` (``Σ`` over the direction axis), ``gather_weights(w, index)``
(``w[index]``, index ``len(w)`` a zero weight), ``expand(c, index, var)`` (slots to directions) and
``per_direction_const`` (a NumPy array as a per-direction coefficient).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import taylor
from .context import Context
from .program import Equation, Var
from .sparsity import SparsePlan, Split, pointwise, row_slogdet, summed

__all__ = ["SparseRun"]


class _OnSlots:
    """A per-direction coefficient of a split contraction's operand, for ``taylor.product``'s ``mul`` to see."""

    def __init__(self, c):
        self.c = c


class SparseRun:
    """One group's propagation over a sparse plan (``ctx``: the group's dense context)."""

    def __init__(self, plan: SparsePlan, ctx: Context):
        self.plan, self.ctx = plan, ctx
        self._contexts: dict = {}
        self._dense: dict[Var, list] = {}

    def seed(self, x0, xvar: Var) -> list:
        """The compressed input jet ``(x_0, slots of e_1 … e_R, 0, …)``."""
        jet: list[Any] = [x0] + [None] * self.ctx.order
        jet[1] = self.ctx.layout.per_direction_const(self.plan.seed(xvar), xvar)
        return jet

    def context_for(self, eqn: Equation) -> Context:
        """The slots' context when ``eqn``'s outputs are compressed (``Σ_s w_{βb+s}`` per element), else the
        group's."""
        outs = [v for v in eqn.outs if self.plan.is_compressed(v)]
        if not outs:
            return self.ctx
        return self._slot_context(self.plan.patterns[outs[0]])

    def _slot_context(self, p) -> Context:
        """The context of compressed values of pattern ``p`` (one per pattern when the weights differ)."""
        key = None if self.ctx.weights is None else (p.shape, p.tobytes())
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = self._new_slot_context(p)
        return ctx

    def _new_slot_context(self, p) -> Context:
        layout, g = self.ctx.layout, self.ctx
        wdot = None
        if g.weights is None:
            wsum = layout.direction_sum
            wdot = getattr(layout, "direction_dot", None)  # Σ_s a_s b_s without the product (optional)
        else:
            W = layout.gather_weights(g.weights, self.plan.weight_index(p))

            def wsum(c, W=W):
                return layout.direction_sum(c * W)

        return Context(g.order, g.collapsed, self.plan.slots(p), layout, wsum, wdot, g.backend)

    def align(self, eqn: Equation, ins: list[list]) -> list[list]:
        """The operands of a compressed equation in its output's slot layout: a pointwise equation gathers
        each operand's slots where its sets (or slot count) differ from the output's; any other reads only
        elements of the output's own sets, so an operand is cut or zero-padded to the output's slot count."""
        out = next(v for v in eqn.outs if self.plan.is_compressed(v))
        p_out, k_out = self.plan.patterns[out], self.plan.slots(out)
        layout, ctx = self.ctx.layout, self.ctx
        point = pointwise(eqn)
        res = []
        for jet, v in zip(ins, eqn.ins, strict=True):
            if not self.plan.is_compressed(v) or all(c is None for c in jet[1:]):
                res.append(jet)
                continue
            if point:
                p_in = np.broadcast_to(self.plan.patterns[v], p_out.shape)
                index = self.plan.align_index(p_in, p_out)
                if index is None:
                    res.append(jet)
                    continue
                full = Var(out.shape, v.dtype)
                flat = index.reshape(index.shape[0], -1)
                uniform = bool((flat == flat[:, :1]).all())  # the same slot map at every element: whole slabs
                k_in = self.plan.slots(v)

                def move(c, v=v, index=index, full=full, uniform=uniform, k_in=k_in):
                    if v.ndim < full.ndim:
                        c = layout.align(c, v.ndim, full.ndim)
                    if uniform:
                        return layout.take_slots(c, index.reshape(index.shape[0], -1)[:, 0], k_in, full)
                    return layout.expand(c, index, full)

            else:
                if self.plan.slots(v) == k_out:
                    res.append(jet)
                    continue

                def move(c, v=v):
                    return layout.resize_slots(c, k_out, v)

            res.append([c if c is None or k == 0 or not ctx.per_direction(k) else move(c) for k, c in enumerate(jet)])
        return res

    def structured(self, eqn: Equation, ins: list[list]) -> list[list] | None:
        """A dense-output equation with a structured rule on its compressed operands, or None.

        ``slogdet`` of a matrix whose rows each lie in one block (a determinant of per-particle orbitals),
        collapsed order 2: with ``Y_0 = A_0⁻¹`` and ``ℓ_r = diag(A_{1,r} Y_0)`` (one row per direction),
        ``L_{1,r} = Σ_i ℓ_{r,i}`` and, since ``A_{1,r}`` has one non-zero row, ``tr(Y_0 A_{1,r} Y_0 A_{1,r}) =
        Σ_i ℓ_{r,i}²``, so ``S_2(L) = tr(Y_0 S_2(A)) − Σ_r w_r Σ_i ℓ_{r,i}²``: ``b`` slots per row, never R×n×n."""
        ctx = self.ctx
        if summed(eqn):
            return self._summed(eqn, ins)
        split = self.plan.splits.get(eqn)
        if split is not None:
            return self._split(eqn, ins, split)
        if not (ctx.collapsed and row_slogdet(eqn, ctx.order)):
            return None
        avar = eqn.ins[0]
        rows = self.plan.row_blocks(avar)
        if rows is None:
            return None
        impl, layout = eqn.impl, ctx.layout
        a0, a1, a2 = ins[0]
        sign, l0 = impl.fn(a0)
        if a1 is None:
            return None
        y0 = impl.inv(a0)[0]
        ell = impl.diag_product(a1, y0)[0]  # (b, …, n): slot s of row i is direction β_i b + s
        flat, size, shape = self.plan.sum_index(rows, (rows.ndim - 1,))
        l1 = layout.scatter_sum(ell, flat, size, Var(rows.shape, avar.dtype), shape)
        mixed = layout.sum_last(self._slot_context(rows).wsum(ell * ell))
        l2 = -mixed if a2 is None else impl.trace(y0, a2)[0] - mixed
        return [[sign, None, None], [l0, l1, l2]]

    def _split(self, eqn: Equation, ins: list[list], split: Split) -> list[list] | None:
        """A contraction run term by term (:class:`~.sparsity.Split`), collapsed order 2 or order 1: the shared
        Leibniz rule (``taylor.product``) with the products it asks for taken on slots — ``B(a_1, b_0)`` on the
        compressed operand's slots and placed at the R directions after the contraction (expanded, or with an
        axis unsummed, scattered), ``B(a_{1,r}, b_{1,r})`` slot by slot (where the pairs share a block, or with a
        dense operand's directions taken at its partners' slots) and summed over the slots."""
        ctx = self.ctx
        if not ((ctx.collapsed and ctx.order == 2) or ctx.order == 1):
            return None

        def mul(p, q):
            if isinstance(p, _OnSlots) and isinstance(q, _OnSlots):
                return self._mixed(eqn, p.c, q.c, split)
            if isinstance(p, _OnSlots) or isinstance(q, _OnSlots):
                side = 0 if isinstance(p, _OnSlots) else 1
                return self._term(eqn, split, side, p.c if side == 0 else p, q.c if side == 1 else q)
            return eqn.impl.fn(p, q)[0]

        a, b = ([_OnSlots(c) if k and c is not None and ctx.per_direction(k) else c for k, c in enumerate(jet)]
                for jet in ins)  # fmt: skip
        slots = taylor.JetContext(ctx.order, ctx.collapsed, ctx.layout.direction_sum)  # weights are in _mixed
        return [taylor.product(a, b, slots, mul=mul)]

    def _term(self, eqn: Equation, split: Split, side: int, p, q):
        """``B(p, q)`` where operand ``side`` is a per-direction coefficient (slots, or all R if it is dense), at
        the R directions."""
        axis, pattern = split.axes[side], split.sides[side]
        fn = eqn.impl.fn if axis is None else eqn.impl.unsum(side, axis)
        term = fn(p, q)[0]
        return term if pattern is None else self._directions(term, pattern, axis, eqn.outs[0])

    def _directions(self, term, pattern: np.ndarray, axis: int | None, out: Var):
        """A term on slots (of ``pattern``'s sets) at the R directions: expanded, or summed over the unsummed
        axis in front by a scatter."""
        layout, plan = self.ctx.layout, self.plan
        var = out if axis is None else Var(pattern.shape, out.dtype)
        term = layout.resize_slots(term, plan.slots(pattern), var)
        if axis is None:
            return layout.expand(term, plan.expand_index(pattern), out)
        flat, size, shape = plan.sum_index(pattern, (0,))
        return layout.scatter_sum(term, flat, size, var, shape)

    def _mixed(self, eqn: Equation, a1, b1, split: Split):
        """``w_s B(a_{1,s}, b_{1,s})`` on slots (both operands' slots in one layout per pair, the weight of each
        slot's direction folded into ``a``), for ``Σ_s`` to sum."""
        layout, plan, ctx = self.ctx.layout, self.plan, self.ctx
        coeffs = [a1, b1]
        if split.partners is not None:  # the dense operand's directions at its partners' slots
            d = split.dense.index(True)
            coeffs[d] = layout.take_directions(coeffs[d], plan.weight_index(split.partners), eqn.ins[d])
            patterns = [split.partners if i == d else plan.patterns[v] for i, v in enumerate(eqn.ins)]
        else:
            patterns = [plan.patterns[v] for v in eqn.ins]
        k = max(plan.slots(p) for p in patterns)
        coeffs = [layout.resize_slots(c, k, v) for c, v in zip(coeffs, eqn.ins, strict=True)]
        if ctx.weights is not None:  # w of each slot's direction, on a's elements (a pair shares it)
            coeffs[0] = coeffs[0] * layout.gather_weights(ctx.weights, plan.weight_index(patterns[0], k))
        product = eqn.impl.fn(coeffs[0], coeffs[1])[0]
        if split.mixed is not None:
            product = product * layout.per_direction_const(split.mixed[None].astype(np.float64), eqn.outs[0])
        return product

    def _summed(self, eqn: Equation, ins: list[list]) -> list[list] | None:
        """``Σ`` over point axes of a compressed operand into a dense output: one scatter-add of the slots into
        the R directions (never the R-wide operand)."""
        (xv,), layout, ctx = eqn.ins, self.ctx.layout, self.ctx
        if not self.plan.is_compressed(xv) or not hasattr(layout, "scatter_sum"):
            return None
        flat, size, shape = self.plan.sum_index(self.plan.patterns[xv], eqn.impl.sums)
        out = []
        for k, c in enumerate(ins[0]):
            if c is None:
                out.append(None)
            elif k and ctx.per_direction(k):
                out.append(layout.scatter_sum(c, flat, size, xv, shape))
            else:
                out.append(eqn.impl.fn(c)[0])
        return [out]

    def dense(self, jet: list, var: Var) -> list:
        """``jet`` with its compressed per-direction coefficients expanded to all R directions (once per value)."""
        if not self.plan.is_compressed(var):
            return jet
        out = self._dense.get(var)
        if out is None:
            index = self.plan.expand_index(var)
            layout, ctx = self.ctx.layout, self.ctx
            out = [
                c if c is None or not ctx.per_direction(k) else layout.expand(c, index, var) for k, c in enumerate(jet)
            ]
            self._dense[var] = out
        return out

    def trim(self, jet: list, var: Var) -> list:
        """``jet`` without per-direction coefficients when no direction reaches ``var`` (they are zero)."""
        p = self.plan.patterns.get(var)
        if p is None or not (p == -1).all():
            return jet
        return [c if k == 0 or not self.ctx.per_direction(k) else None for k, c in enumerate(jet)]

    def forget(self, var: Var) -> None:
        self._dense.pop(var, None)
