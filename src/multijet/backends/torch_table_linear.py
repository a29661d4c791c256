"""The torch table's layout-linear ops: views, reductions, indexing, concatenation, products, convolution.

Every callable here is *lifted* (see :mod:`multijet.engine.kinds`): it takes :class:`Co` handles in the
layout ``(N|1, R|1, *point)`` and emits the native op with its point axes shifted by the two leading ones.
Builders take the captured node (:class:`~multijet.backends.torch_table.NodeInfo`) and return a kind record.
"""

from __future__ import annotations

import torch

from ..engine import kinds
from .torch_emit import Co
from .torch_node import In

aten = torch.ops.aten

__all__ = ["LINEAR", "matmul_fn", "mv_fn", "vecmat_rule", "common_lead"]


def _ax(d: int, nd: int) -> int:
    """A point axis (possibly negative) → its layout axis."""
    return 2 if nd == 0 else d % nd + 2


def common_lead(cos):
    """The coefficients expanded to one common pair of leading sizes."""
    b, r = any(c.b for c in cos), max(c.r for c in cos)
    return [c.E.expand_lead(c, b, r) for c in cos]


def _lin(fn, lin=(0,)):
    """Views, slices, gathers, reductions (sum, mean), cumsum, copies: maps with non-negative coefficients."""
    return kinds.Linear(fn, lin, "positive")


def _reshape(n):
    shape = n.outs[0].shape
    return _lin(lambda c: [c.map(torch.reshape, c.E.lead(c) + list(shape), shape=shape)])


def _same(n):
    return _lin(lambda c: [c])


def _transpose(n):
    x, shape = n.ins[0], n.outs[0].shape
    nd = len(x.shape)
    if nd < 2:
        return _same(n)
    d0, d1 = (n.arg(1, "dim0", 0), n.arg(2, "dim1", 1)) if n.name != "t" else (0, 1)
    return _lin(lambda c: [c.map(torch.transpose, _ax(d0, nd), _ax(d1, nd), shape=shape)])


def _permute(n):
    nd, shape = len(n.ins[0].shape), n.outs[0].shape
    dims = [0, 1] + [_ax(d, nd) for d in n.arg(1, "dims")]
    return _lin(lambda c: [c.map(torch.permute, dims, shape=shape)])


def _expand(n):
    shape = n.outs[0].shape
    return _lin(lambda c: [c.E.fit(c, shape)])


def _select(n):
    nd, shape = len(n.ins[0].shape), n.outs[0].shape
    d, i = _ax(n.arg(1, "dim"), nd), n.arg(2, "index")
    return _lin(lambda c: [c.map(torch.select, d, i, shape=shape)])


def _slice(n):
    nd, shape = len(n.ins[0].shape), n.outs[0].shape
    d = _ax(n.arg(1, "dim", 0), nd)
    start, end, step = n.arg(2, "start", None), n.arg(3, "end", None), n.arg(4, "step", 1)
    return _lin(lambda c: [c.map(aten.slice.Tensor, d, start, end, step, shape=shape)])


def _narrow(n):
    nd, shape = len(n.ins[0].shape), n.outs[0].shape
    d, start, length = _ax(n.arg(1, "dim"), nd), n.arg(2, "start"), n.arg(3, "length")
    return _lin(lambda c: [c.map(aten.slice.Tensor, d, start, start + length, 1, shape=shape)])


def _along(fn, *names):
    def build(n):
        nd = len(n.ins[0].shape)
        d = _ax(n.arg(1, names[0]), nd)
        return _lin(lambda c: [c.map(fn, d)])

    return build


def _flip(n):
    nd = len(n.ins[0].shape)
    dims = [_ax(d, nd) for d in n.arg(1, "dims")]
    return _lin(lambda c: [c.map(torch.flip, dims)])


def _reduce(fn):
    def build(n):
        x, shape = n.ins[0], n.outs[0].shape
        nd = len(x.shape)
        dims = n.arg(1, "dim", None) if n.name not in ("sum.default", "mean.default") else None
        keep = bool(n.arg(2, "keepdim", False)) if dims is not None else False
        if isinstance(dims, int):
            dims = [dims]
        ds = tuple(sorted({_ax(d, nd) for d in dims})) if dims else tuple(range(2, nd + 2))
        if not ds:
            return _same(n)
        sums = tuple(d - 2 for d in ds) if fn is torch.sum and not keep else None
        return kinds.Linear(lambda c: [c.map(fn, ds, keepdim=keep, shape=shape)], (0,), "positive", sums)

    return build


def _to_copy(n):
    dtype = n.kwargs.get("dtype")
    if dtype is None or dtype == n.ins[0].dtype:
        return _same(n)
    return _lin(lambda c: [c.map(torch.Tensor.to, dtype)])


def _diagonal(n):
    nd, shape = len(n.ins[0].shape), n.outs[0].shape
    off, d1, d2 = n.arg(1, "offset", 0), n.arg(2, "dim1", 0), n.arg(3, "dim2", 1)
    return _lin(lambda c: [c.map(torch.diagonal, off, _ax(d1, nd), _ax(d2, nd), shape=shape)])


def _diag_embed(n):
    nd, shape = len(n.outs[0].shape), n.outs[0].shape
    off, d1, d2 = n.arg(1, "offset", 0), n.arg(2, "dim1", -2), n.arg(3, "dim2", -1)
    return _lin(lambda c: [c.map(torch.diag_embed, off, _ax(d1, nd), _ax(d2, nd), shape=shape)])


def _triangle(fn):
    """``tril``/``triu``: a mask on the last two (point) axes, so the same op on every coefficient."""
    return lambda n: _lin(lambda c: [c.map(fn, n.arg(1, "diagonal", 0))])


def _broadcast_in_dim(n):
    shape, bdims = n.outs[0].shape, n.arg(2, "broadcast_dimensions")
    inter = [1] * len(shape)
    for j, d in enumerate(bdims):
        inter[d] = n.ins[0].shape[j]
    inter = tuple(inter)

    def fn(c):
        c = c.map(torch.reshape, c.E.lead(c) + list(inter), shape=inter)
        return [c.map(torch.Tensor.expand, [-1, -1, *shape], shape=shape)]

    return _lin(fn)


def _copy(n):
    """``dst.copy_(src)`` after functionalisation: ``src`` broadcast to ``dst``'s shape (linear in ``src``)."""
    dst, src = n.ins
    if dst.dtype != src.dtype:
        return None
    shape = dst.shape
    return _lin(lambda d, s: [s.E.fit(s, shape)], (1,))


def _scatter(target):
    def build(n):
        nd, shape = len(n.ins[0].shape), n.outs[0].shape
        rest = list(n.args[2:]) or [0]
        rest[0] = _ax(rest[0], nd)  # dim

        def fn(a, b):
            a, b = common_lead([a, b])
            return [Co(a.E, a.E.call(target, a.node, b.node, *rest), a.b, a.r, shape)]

        return _lin(fn, (0, 1))

    return build


def _index_const(n):
    """``x[..., idx, ...]`` with constant index tensors: linear when the advanced indices are adjacent."""
    idx = list(n.args[1])
    if any(i is not None and i.cst is None for i in idx):
        return None
    pos = [k for k, v in enumerate(idx) if v is not None]
    if pos and pos != list(range(pos[0], pos[-1] + 1)):
        return None
    shape = n.outs[0].shape
    slots = [None if i is None else i.index for i in idx]

    def fn(c, *cos):
        nodes = [None, None] + [None if s is None else cos[s - 1].point_node() for s in slots]
        return [c.map(aten.index.Tensor, nodes, shape=shape)]

    return _lin(fn)


def _gather(n):
    """``gather(x, dim, index)``: linear in ``x`` for a fixed index (e.g. the indices a sort returned)."""
    x, index = n.args[0], n.args[2]
    if not isinstance(x, In) or not isinstance(index, In) or not x.shape:
        return None
    nd, shape = len(x.shape), n.outs[0].shape
    d = _ax(n.arg(1, "dim"), nd)

    def fn(c, i):
        c, i = common_lead([c, i])
        return [Co(c.E, c.E.call(torch.gather, c.node, d, i.node), c.b, c.r, shape)]

    return kinds.Linear(fn, (0,), "positive")


def _index_select(n):
    if n.args[2].cst is None:
        return None
    nd, shape = len(n.ins[0].shape), n.outs[0].shape
    d = _ax(n.arg(1, "dim"), nd)
    return _lin(lambda c, i: [c.map(torch.index_select, d, i.point_node(), shape=shape)])


def _cat(n):
    tensors = n.arg(0, "tensors")
    shape = n.outs[0].shape
    nd = len(shape)
    d = _ax(n.arg(1, "dim", 0), nd)
    keep = [t.index for t in tensors if t.shape != (0,)]

    def fn(*cos):
        parts = common_lead([cos[i] for i in keep])
        p0 = parts[0]
        return [Co(p0.E, p0.E.call(torch.cat, [p.node for p in parts], d), p0.b, p0.r, shape)]

    return kinds.Linear(fn, None, "positive")


def _stack(n):
    shape = n.outs[0].shape
    d = _ax(n.arg(1, "dim", 0), len(shape))
    one = shape[: d - 2] + (1,) + shape[d - 1 :]

    def fn(*cos):
        parts = common_lead([c.map(torch.reshape, c.E.lead(c) + list(one), shape=one) for c in cos])
        p0 = parts[0]
        return [Co(p0.E, p0.E.call(torch.cat, [p.node for p in parts], d), p0.b, p0.r, shape)]

    return kinds.Linear(fn, None, "positive")


def _split(n):
    nd = len(n.ins[0].shape)
    d = _ax(n.arg(2, "dim", 0), nd)
    outs, starts, s = [], [], 0
    for v in n.outs:
        outs.append(v.shape)
        starts.append(s)
        s += v.shape[d - 2]

    def fn(c):
        return [
            c.map(aten.slice.Tensor, d, s0, s0 + sh[d - 2], 1, shape=sh) for s0, sh in zip(starts, outs, strict=True)
        ]

    return _lin(fn)


def _unbind(n):
    nd = len(n.ins[0].shape)
    d = _ax(n.arg(1, "dim", 0), nd)
    return _lin(lambda c: [c.map(torch.select, d, i, shape=v.shape) for i, v in enumerate(n.outs)])


# --- products ---------------------------------------------------------------------------------------------------


def matmul_fn(shape):
    """Lifted ``x @ y`` (``(…, m, k) @ (…, k, n)``); a constant 2-D left operand uses one GEMM."""

    def fn(x, y):
        E = x.E
        if x.const and len(x.shape) == 2 and not y.const:  # A @ c = (cᵀ Aᵀ)ᵀ over the flattened leading axes
            at = E.call(torch.transpose, x.point_node(), 0, 1)
            ct = y.map(torch.transpose, -1, -2)
            return [ct.map(torch.matmul, at).map(torch.transpose, -1, -2, shape=shape)]
        if y.const and not x.const:
            return [x.map(torch.matmul, y.point_node(), shape=shape)]
        return [Co(E, E.call(torch.matmul, x.node, y.node), x.b or y.b, max(x.r, y.r), shape)]

    return fn


def mv_fn(shape):
    def fn(A, v):
        E = A.E
        if A.const and not v.const:
            return [v.map(torch.matmul, E.call(torch.t, A.point_node()), shape=shape)]
        if v.const and not A.const:
            return [A.map(torch.matmul, v.point_node(), shape=shape)]
        vv = v.map(torch.unsqueeze, -1, shape=v.shape + (1,))
        out = Co(E, E.call(torch.matmul, A.node, vv.node), A.b or v.b, max(A.r, v.r), shape + (1,))
        return [out.map(torch.squeeze, -1, shape=shape)]

    return fn


def _mv_identity(side, A):
    """``A e_r`` for every r (operand 1 is the seed ``x``): the columns of ``A``, i.e. ``Aᵀ`` (no matmul)."""
    if side != 1 or len(A.shape) != 2:
        return None
    E = A.E
    at = E.call(torch.Tensor.contiguous, E.call(torch.t, A.point_node()))  # (D, m), once per call, not per point
    return Co(E, E.call(torch.unsqueeze, at, 0), False, A.shape[1], (A.shape[0],))


def _mv(n):
    fn = mv_fn(n.outs[0].shape)
    return kinds.Bilinear(fn, identity=_mv_identity)


def vecmat_rule(shape):
    """``x @ B`` for a vector ``x`` (captured as unsqueeze → mm → squeeze); the seed gives ``B`` itself."""

    def fn(x, B):
        E = x.E
        if B.const and not x.const:
            return [x.map(torch.matmul, B.point_node(), shape=shape)]
        xx = x.map(torch.unsqueeze, -2, shape=(1,) + x.shape)
        out = Co(E, E.call(torch.matmul, xx.node, B.node), x.b or B.b, max(x.r, B.r), (1,) + shape)
        return [out.map(torch.squeeze, -2, shape=shape)]

    def identity(side, B):
        if side != 0 or len(B.shape) != 2:
            return None
        E = B.E
        b = E.call(torch.Tensor.contiguous, B.point_node())  # Wᵀ of a linear layer is a transposed view
        return Co(E, E.call(torch.unsqueeze, b, 0), False, B.shape[0], (B.shape[1],))

    return kinds.Bilinear(fn, identity=identity)


def _mm(n):
    return kinds.Bilinear(matmul_fn(n.outs[0].shape), unsum=_matmul_unsum(n.ins[0].shape, n.ins[1].shape,
                                                                          n.outs[0].shape))  # fmt: skip


def _matmul_unsum(sa: tuple, sb: tuple, shape: tuple):
    """``unsum(side, axis)``: ``x @ y`` with the contracted axis (``x``'s last, ``y``'s second to last) unsummed,
    in front of the point axes: ``out[k, …, m, n] = x[…, m, k] y[…, k, n]`` (matrices on both sides)."""
    sa, sb = tuple(sa), tuple(sb)

    def unsum(side: int, axis: int):
        if len(sa) < 2 or len(sb) < 2 or axis != (len(sa) - 1 if side == 0 else len(sb) - 2):
            return None
        nd = max(len(sa), len(sb))

        def fn(x, y):
            E = x.E
            x, y = (E.align(c if isinstance(c, Co) else E.lift(c), nd) for c in (x, y))
            terms = E.call(torch.mul, E.call(torch.unsqueeze, x.node, -1), E.call(torch.unsqueeze, y.node, -3))
            node = E.call(torch.movedim, terms, -2, 2)
            return [Co(E, node, x.b or y.b, max(x.r, y.r), (sa[-1],) + tuple(shape))]

        return fn

    return unsum


def _dot(n):
    def fn(a, b):
        return [(a * b).map(torch.sum, -1, shape=())]

    return kinds.Bilinear(fn)


LINEAR = {
    "view": _reshape, "_unsafe_view": _reshape, "reshape": _reshape, "view_copy": _reshape,
    "unsqueeze": _reshape, "unsqueeze_": _reshape, "unsqueeze_copy": _reshape,
    "squeeze": _reshape, "squeeze_": _reshape, "squeeze_copy": _reshape,
    "transpose": _transpose, "transpose_": _transpose, "transpose_copy": _transpose,
    "t": _transpose, "t_": _transpose, "t_copy": _transpose,
    "permute": _permute, "permute_copy": _permute, "expand": _expand, "expand_copy": _expand,
    "select": _select, "select_copy": _select, "slice": _slice, "slice_copy": _slice, "narrow": _narrow,
    "cumsum": _along(torch.cumsum, "dim"), "flip": _flip, "index_select": _index_select, "gather": _gather,
    "diagonal": _diagonal, "diagonal_copy": _diagonal, "diag_embed": _diag_embed,
    "tril": _triangle(torch.tril), "triu": _triangle(torch.triu),
    "clone": _same, "alias": _same, "contiguous": _same, "lift_fresh_copy": _same, "alias_copy": _same,
    "positive": _same, "_to_copy": _to_copy, "copy": _copy,
    "prims.broadcast_in_dim": _broadcast_in_dim, "prims.sum": _reduce(torch.sum),
    "sum": _reduce(torch.sum), "mean": _reduce(torch.mean),
    "slice_scatter": _scatter(aten.slice_scatter.default), "select_scatter": _scatter(aten.select_scatter.default),
    "index.Tensor": _index_const, "cat": _cat, "stack": _stack,
    "split": _split, "split_with_sizes": _split, "unbind": _unbind,
    "mm": _mm, "bmm": _mm, "matmul": _mm, "mv": _mv, "dot": _dot, "vdot": _dot,
}  # fmt: skip
