"""Composite ATen ops written once from primitive records (linear algebra: :mod:`.torch_table_linalg`).

A composite builder adds several equations for one captured node through ``n.cap`` (``var`` for a fresh
intermediate, ``scalar`` for a constant operand made from a Python number, ``eqn`` to append an equation,
``used`` to ask whether an output is read later) and returns :data:`~.torch_table.COMPOSED`.

Tie conventions are those of torch's own AD (measured at exact ties, see the tests): ``clamp`` keeps the
derivative of ``x`` on the boundary (inclusive), ``hardtanh``/``relu6`` give it to nobody there (exclusive),
``leaky_relu`` takes the slope at 0, ``max.dim``/``sort``/``topk`` follow the indices they return.
"""

from __future__ import annotations

import math
import operator

import torch

from ..engine import kinds
from .torch_emit import Co, broadcast_call
from .torch_node import COMPOSED, In, NodeInfo, bcast
from .torch_table_linear import common_lead, matmul_fn, mv_fn

__all__ = ["COMPOSITE"]

#: op key → composite builder (merged into :data:`multijet.backends.torch_table.TABLE`)
COMPOSITE: dict = {}
TABLE = COMPOSITE



def _positive(fn) -> kinds.Linear:
    """A sum or mean over axes: a linear map with non-negative coefficients (for direction sparsity)."""
    return kinds.Linear(fn, structure="positive")

def _var(n: NodeInfo, a, dtype=None):
    """An operand as a program variable: a tensor's own, a Python number as a constant."""
    if isinstance(a, In):
        return a.var
    return n.cap.scalar(a, dtype or n.outs[0].dtype)


def _eq(n, impl, ins, outs=None, suffix=""):
    n.cap.eqn(n.name + suffix, impl, ins, n.outs if outs is None else outs)


def _tmp(n, shape=None, dtype=None):
    return n.cap.var(n.outs[0].shape if shape is None else shape, dtype or n.outs[0].dtype)


def _scaled(n, v, s, suffix):
    """``s · v`` as an equation (or ``v`` itself when ``s == 1``)."""
    if s == 1:
        return v
    out = n.cap.var(v.shape, v.dtype)
    _eq(n, kinds.Linear(lambda c: [c * s], structure="pointwise"), [v], [out], suffix)
    return out


# --- selections with constant bounds -----------------------------------------------------------------------


def _clamp(ties: str, lo_key="min", hi_key="max", lo_default=None, hi_default=None, one=None):
    def build(n):
        x = n.args[0]
        if not isinstance(x, In):
            return None
        if one == "lo":
            lo, hi = n.arg(1, lo_key), None
        elif one == "hi":
            lo, hi = None, n.arg(1, hi_key)
        else:
            lo, hi = n.arg(1, lo_key, lo_default), n.arg(2, hi_key, hi_default)
        dt = n.outs[0].dtype
        big = torch.finfo(dt).max  # not ±inf: the tie scales multiply the bounds by 0
        lo_v = _var(n, -big if lo is None else lo, dt)
        hi_v = _var(n, big if hi is None else hi, dt)
        fn = lambda c, lo_c, hi_c: [broadcast_call(torch.clamp, [c, lo_c, hi_c])]  # noqa: E731
        _eq(n, kinds.Selection("clamp", ties, fn, order=(1, 0, 2)), [x.var, lo_v, hi_v])
        return COMPOSED

    return build


TABLE["clamp"] = _clamp("inclusive")
TABLE["clamp_min"] = _clamp("inclusive", one="lo")
TABLE["clamp_max"] = _clamp("inclusive", one="hi")
TABLE["hardtanh"] = _clamp("exclusive", "min_val", "max_val", -1.0, 1.0)


def _where(n):
    cond, a, b = n.args[0], n.arg(1, "self"), n.arg(2, "other")
    dt = n.outs[0].dtype
    fn = lambda c, p, q: [broadcast_call(torch.where, [c, p, q])]  # noqa: E731
    _eq(n, kinds.Linear(fn, (1, 2), "pointwise"), [_var(n, cond), _var(n, a, dt), _var(n, b, dt)])
    return COMPOSED


def _masked_fill(n):
    x, mask, v = n.args[0], n.args[1], n.arg(2, "value")
    fn = lambda c, m, p: [broadcast_call(torch.where, [m, p, c])]  # noqa: E731
    _eq(n, kinds.Linear(fn, (0, 2), "pointwise"), [x.var, mask.var, _var(n, v, n.outs[0].dtype)])
    return COMPOSED


TABLE["where"] = _where
TABLE["masked_fill"] = _masked_fill


def _leaky_relu(n):
    """``where(x > 0, x, a x)``: the slope ``a`` at 0, as torch's AD has it."""
    x, a = n.args[0], float(n.arg(1, "negative_slope", 0.01))
    cond, ax = _tmp(n, dtype=torch.bool), _tmp(n)
    _eq(n, kinds.Zero(lambda c: [c.map(torch.gt, 0)]), [x.var], [cond], "[x>0]")
    _eq(n, kinds.Linear(lambda c: [c * a], structure="pointwise"), [x.var], [ax], "[a·x]")
    fn = lambda c, p, q: [broadcast_call(torch.where, [c, p, q])]  # noqa: E731
    _eq(n, kinds.Linear(fn, (1, 2), "pointwise"), [cond, x.var, ax])
    return COMPOSED


def _softplus(n):
    x, beta = n.args[0], float(n.arg(1, "beta", 1))
    thr = n.arg(2, "threshold", 20)
    if beta == 1:
        return kinds.Elementwise(bcast(n), "softplus")
    bx, sp = _tmp(n), _tmp(n)  # softplus(β x) / β
    _eq(n, kinds.Linear(lambda c: [c * beta], structure="pointwise"), [x.var], [bx], "[β·x]")
    sp_fn = lambda c: [c.map(torch.nn.functional.softplus, 1, thr)]  # noqa: E731
    _eq(n, kinds.Elementwise(sp_fn, "softplus"), [bx], [sp], "[softplus]")
    _eq(n, kinds.Linear(lambda c: [c * (1.0 / beta)], structure="pointwise"), [sp])
    return COMPOSED


TABLE["leaky_relu"] = _leaky_relu
TABLE["softplus"] = _softplus


def _pow_tensor(n):
    """``a ** b = exp(b · log a)``; ``c ** x = exp(x · log c)``."""
    a, b = n.args[0], n.args[1]
    t = _tmp(n)
    if isinstance(a, In):
        la = n.cap.var(a.shape, a.dtype)
        _eq(n, kinds.Elementwise(lambda c: [c.map(torch.log)], "log"), [a.var], [la], "[log a]")
        _eq(n, kinds.Bilinear(lambda p, q: [p * q], broadcasting=True), [b.var, la], [t], "[b·log a]")
    else:
        lc = math.log(a)
        _eq(n, kinds.Linear(lambda c: [c * lc], structure="pointwise"), [b.var], [t], "[x·log c]")
    _eq(n, kinds.Elementwise(lambda c: [c.map(torch.exp)], "exp"), [t])
    return COMPOSED


TABLE["pow.Tensor_Tensor"] = TABLE["pow.Scalar"] = _pow_tensor


# --- reductions by returned indices: max.dim, min.dim, sort, topk -------------------------------------------


def _by_index(index_of, squeeze: bool):
    """``values = gather(x, dim, indices)`` with the indices the op returns (linear in x, index fixed)."""

    def build(n):
        x = n.args[0]
        nd = len(x.shape)
        d, keep = index_of(n)
        d = d % max(nd, 1) + 2
        values, indices = n.outs[:2]

        def index_fn(c):
            target, args, kw = _index_call(n, d)
            res = c.E.call(target, c.node, *args, **kw)
            return [Co(c.E, c.E.call(operator.getitem, res, 1), c.b, c.r, indices.shape)]

        def take(c, i):
            c, i = common_lead([c, i])
            if squeeze and not keep:
                i = i.map(torch.unsqueeze, d)
            out = c.map(torch.gather, d, i.node, shape=values.shape if keep or not squeeze else i.shape)
            return [out.map(torch.squeeze, d, shape=values.shape) if squeeze and not keep else out]

        _eq(n, kinds.Zero(index_fn), [x.var], [indices], "[indices]")
        _eq(n, kinds.Linear(take, (0,), "positive"), [x.var, indices], [values])
        return COMPOSED

    return build


def _index_call(n, d):
    if n.packet in ("max", "min"):
        return n.target, (d, bool(n.arg(2, "keepdim", False))), {}
    if n.packet == "topk":
        return n.target, (n.arg(1, "k"), d, bool(n.arg(3, "largest", True)), bool(n.arg(4, "sorted", True))), {}
    desc = n.kwargs.get("descending", False) if n.name == "sort.stable" else n.arg(2, "descending", False)
    return torch.sort, (), {"dim": d, "descending": bool(desc), "stable": True}  # ties in index order


TABLE["max.dim"] = TABLE["min.dim"] = _by_index(lambda n: (n.arg(1, "dim"), bool(n.arg(2, "keepdim", False))), True)
TABLE["sort.default"] = _by_index(lambda n: (n.arg(1, "dim", -1), True), False)
TABLE["sort.stable"] = _by_index(lambda n: (n.kwargs.get("dim", -1), True), False)
TABLE["topk"] = _by_index(lambda n: (n.arg(2, "dim", -1), True), False)


# --- statistics and fused products ------------------------------------------------------------------------------


def _var_of(n, dims, correction, keepdim, out=None, suffix=""):
    """``Σ (x − mean)² / (n − correction)`` over ``dims`` as mean, sub, mul, sum, scale equations."""
    x = n.args[0]
    nd = len(x.shape)
    ds = sorted({d % nd for d in ([dims] if isinstance(dims, int) else dims)}) if dims else list(range(nd))
    count = math.prod(x.shape[d] for d in ds)
    lay = tuple(d + 2 for d in ds)
    kshape = tuple(1 if i in ds else s for i, s in enumerate(x.shape))
    rshape = kshape if keepdim else tuple(s for i, s in enumerate(x.shape) if i not in ds)
    m, dev, sq, s = n.cap.var(kshape, x.dtype), n.cap.var(x.shape, x.dtype), n.cap.var(x.shape, x.dtype), None
    s = n.cap.var(rshape, x.dtype)
    _eq(
        n, _positive(lambda c: [c.map(torch.mean, lay, keepdim=True, shape=kshape)]), [x.var], [m], suffix + "[mean]"
    )
    _eq(n, kinds.Sum((1.0, -1.0), lambda a, b: [a - b]), [x.var, m], [dev], suffix + "[x−mean]")
    _eq(n, kinds.Bilinear(lambda p, q: [p * q], broadcasting=True), [dev, dev], [sq], suffix + "[²]")
    _eq(n, _positive(lambda c: [c.map(torch.sum, lay, keepdim=keepdim, shape=rshape)]), [sq], [s], suffix + "[Σ]")
    scale = 1.0 / (count - correction)
    out = out if out is not None else n.cap.var(rshape, x.dtype)
    _eq(n, kinds.Linear(lambda c: [c * scale], structure="pointwise"), [s], [out], suffix)
    return out


def _correction(n):
    c = n.kwargs.get("correction")
    return 1 if c is None else c


def _var_rule(n):
    _var_of(n, n.arg(1, "dim", None), _correction(n), bool(n.kwargs.get("keepdim", False)), n.outs[0])
    return COMPOSED


def _std_rule(n):
    v = _var_of(n, n.arg(1, "dim", None), _correction(n), bool(n.kwargs.get("keepdim", False)), suffix="[var]")
    _eq(n, kinds.Elementwise(lambda c: [c.map(torch.sqrt)], "sqrt"), [v])
    return COMPOSED


def _var_mean_rule(n):
    dims, keep = n.arg(1, "dim", None), bool(n.kwargs.get("keepdim", False))
    _var_of(n, dims, _correction(n), keep, n.outs[0])
    x = n.args[0]
    nd = len(x.shape)
    ds = sorted({d % nd for d in ([dims] if isinstance(dims, int) else dims)}) if dims else list(range(nd))
    lay, shape = tuple(d + 2 for d in ds), n.outs[1].shape
    _eq(n, _positive(lambda c: [c.map(torch.mean, lay, keepdim=keep, shape=shape)]), [x.var], [n.outs[1]], "[mean]")
    return COMPOSED


def _prims_var(n):
    _var_of(n, list(n.arg(1, "dims")), n.arg(2, "correction", 1), False, n.outs[0])
    return COMPOSED


TABLE["var.correction"] = _var_rule
TABLE["std.correction"] = _std_rule
TABLE["var_mean.correction"] = _var_mean_rule
TABLE["prims.var"] = _prims_var


def _add_product(product):
    """``beta · bias + alpha · (a ⊗ b)`` (addmm, addmv, baddbmm) from the product, scales and a sum."""

    def build(n):
        bias, a, b = n.args[:3]
        beta, alpha = n.kwargs.get("beta", 1), n.kwargs.get("alpha", 1)
        p = _tmp(n)
        fn = (mv_fn if product == "mv" else matmul_fn)(n.outs[0].shape)
        _eq(n, kinds.Bilinear(fn), [a.var, b.var], [p], f"[{product}]")
        p = _scaled(n, p, alpha, "[α·]")
        bv = _scaled(n, bias.var, beta, "[β·]")
        _eq(n, kinds.Sum((1.0, 1.0), lambda u, v: [u + v]), [bv, p])
        return COMPOSED

    return build


TABLE["addmm"] = TABLE["baddbmm"] = _add_product("mm")
TABLE["addmv"] = _add_product("mv")


def _convolution(n):
    """``conv(x, w) + bias``: linear in ``x`` for constant weights; the bias is added to ``x_0`` only."""
    x, w, bias = n.args[:3]
    if not isinstance(w, In) or w.cst is None or (isinstance(bias, In) and bias.cst is None):
        return None
    rest = n.args[3:]
    out = n.outs[0].shape

    def conv(c, wc):
        flat = c.map(torch.reshape, [-1, *x.shape[1:]], shape=x.shape)
        node = c.E.call(torch.ops.aten.convolution.default, flat.node, wc.point_node(), None, *rest)
        return [Co(c.E, c.E.call(torch.reshape, node, c.E.lead(c) + list(out)), c.b, c.r, out)]

    if bias is None:
        return kinds.Linear(conv, (0,))
    y = _tmp(n)
    _eq(n, kinds.Linear(conv, (0,)), [x.var, w.var], [y], "[no bias]")
    bshape = [1, 1, 1, out[1]] + [1] * (len(out) - 2)  # (layout, conv batch, channels, spatial…)

    def add_bias(yc, bc):
        bv = bc.E.call(torch.reshape, bc.point_node(), bshape)
        return [Co(yc.E, yc.E.call(torch.add, yc.node, bv), yc.b, yc.r, out)]

    _eq(n, kinds.Sum((1.0, 0.0), add_bias), [y, bias.var])
    return COMPOSED


TABLE["convolution"] = _convolution
