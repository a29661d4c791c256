"""Linear algebra through the shared Taylor rules (``kinds.Linalg``): inverse, solve, determinants, Cholesky.

No LU-based forward formulas and no series: each op's record holds the native op and the products, traces
and transposes the shared rule of :mod:`multijet.taylor` needs, emitted on :class:`~.torch_emit.Co` handles
in the layout ``(N|1, R|1, *point)``.
"""

from __future__ import annotations

import operator

import torch

from ..engine import kinds
from .torch_emit import Co
from .torch_node import COMPOSED, In
from .torch_table_linear import matmul_fn, mv_fn

__all__ = ["LINALG"]

#: op key → builder (merged into :data:`multijet.backends.torch_table.TABLE`)
LINALG: dict = {}
TABLE = LINALG


def _trace(p, q):
    """``tr(p q)`` over the last two axes, without the product: ``Σ_ij p_ij q_ji``."""
    return [(p * q.map(torch.transpose, -1, -2)).map(torch.sum, (-2, -1), shape=p.shape[:-2])]


def _diag_product(p, q):
    """``diag(p q)`` over the last two axes, without the product: ``Σ_j p_ij q_ji``."""
    return [(p * q.map(torch.transpose, -1, -2)).map(torch.sum, -1, shape=p.shape[:-1])]


def _mm(p, q):
    lead = tuple(torch.broadcast_shapes(p.shape[:-2], q.shape[:-2]))
    return matmul_fn(lead + (p.shape[-2], q.shape[-1]))(p, q)


def _inv(a):
    return [a.map(torch.linalg.inv)]


def _slogdet(a):
    res = a.E.call(torch.linalg.slogdet, a.node)
    return [Co(a.E, a.E.call(operator.getitem, res, i), a.b, a.r, a.shape[:-2]) for i in (0, 1)]


def _linalg(op, outputs, extra=None):
    def build(n):
        A = n.args[0]
        if not isinstance(A, In) or len(A.shape) < 2 or any(n.cap.used(v) for v in n.outs[outputs:]):
            return None
        impl = extra(n) if extra is not None else {}
        if impl is None:
            return None
        fn = impl.pop("fn")
        ins = [v.var for v in n.args if isinstance(v, In)]
        n.cap.eqn(n.name, kinds.Linalg(op, fn, _inv, _mm, _trace, **impl), ins, n.outs[:outputs])
        return COMPOSED

    return build


def _solve_parts(n):
    """``A⁻¹ B`` (``B A⁻¹`` for ``left=False``) with torch's rule for a vector right-hand side (``B`` of shape
    ``(n,)``, or ``A``'s shape without its last axis) and batch axes of ``A`` and ``B`` broadcast.

    In the layout both operands carry two more leading axes, which would change torch's reading of ``B``
    (vector or matrix) and the alignment of the batch axes; so ``B`` is made a matrix (a trailing axis of
    size 1) and both are aligned to the product's rank before ``solve`` and the products of the rule.
    """
    left = n.kwargs.get("left", True)
    A, B = n.args[0], n.args[1]
    if not isinstance(A, In) or not isinstance(B, In) or len(A.shape) < 2:
        return None
    vec = len(B.shape) == 1 or (len(B.shape) == len(A.shape) - 1 and tuple(B.shape) == tuple(A.shape[:-1]))
    if vec and not left:  # torch refuses it
        return None
    shape = n.outs[0].shape
    mshape = shape + ((1,) if vec else ())  # the result as matrices
    nd = len(mshape)

    def as_matrix(b):
        return b.map(torch.unsqueeze, -1, shape=b.shape + (1,)) if vec else b

    def result(c):
        return c.map(torch.squeeze, -1, shape=shape) if vec else c

    def fn(a, b):
        E = a.E
        p, q = E.align(a, nd), E.align(as_matrix(b), nd)  # equal ranks: torch reads q as matrices
        res = E.call(torch.linalg.solve, p.node, q.node, left=left)
        return [result(Co(E, res, a.b or b.b, max(a.r, b.r), mshape))]

    if len(A.shape) == 2 and len(B.shape) <= 2:  # one matrix: the products may use a constant operand's GEMM

        def apply(inv, rhs):
            if vec:
                return mv_fn(shape)(inv, rhs)
            return _mm(inv, rhs) if left else _mm(rhs, inv)

        return {"fn": fn, "apply": apply}

    def apply_batched(inv, rhs):
        E = inv.E
        p, q = E.align(inv, nd), E.align(as_matrix(rhs), nd)
        if not left:
            p, q = q, p
        return [result(Co(E, E.call(torch.matmul, p.node, q.node), p.b or q.b, max(p.r, q.r), mshape))]

    return {"fn": fn, "apply": apply_batched}


def _solve(n):
    parts = _solve_parts(n)
    if parts is None:
        return None
    return _linalg("solve", 1, lambda n: parts)(n)


def _transpose(p):
    return [p.map(torch.transpose, -1, -2)]


def _phi(p):
    """The strictly lower triangle plus half the diagonal."""
    diag = p.map(torch.diagonal, dim1=-2, dim2=-1, shape=p.shape[:-1]).map(torch.diag_embed, shape=p.shape)
    return [p.map(torch.tril, -1) + diag * 0.5]


def _cholesky_parts(n):
    if n.arg(1, "upper", False):
        return None
    return {"fn": lambda a: [a.map(torch.linalg.cholesky)], "transpose": _transpose, "phi": _phi}


TABLE["linalg_cholesky_ex"] = _linalg("cholesky", 1, _cholesky_parts)
TABLE["cholesky"] = _linalg("cholesky", 1, _cholesky_parts)
TABLE["linalg_inv_ex"] = _linalg("inv", 1, lambda n: {"fn": _inv})
TABLE["_linalg_slogdet"] = _linalg("slogdet", 2, lambda n: {"fn": _slogdet, "diag_product": _diag_product})
TABLE["_linalg_det"] = _linalg("det", 1, lambda n: {"fn": lambda a: [a.map(torch.linalg.det)], "slogdet": _slogdet})
TABLE["_linalg_solve_ex"] = _solve
