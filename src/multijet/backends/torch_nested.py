"""The torch baseline and oracle, ``method="nested"``: ``torch.func`` nested first-order AD (Hessian trace or
forward-over-reverse over the plan's directions; nested jvps for higher orders) of the captured program.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx as fx

from ..chunking import by_points
from ..errors import BackendError, MultijetError
from ..plan import JetGroup, Plan
from .torch_capture import capture, capturing, check_param_dtypes, one_output

__all__ = ["nested_program", "run_nested"]


def _nested_total(f, X: torch.Tensor, group: JetGroup, value: torch.Tensor) -> torch.Tensor:
    from torch.func import hessian, jacrev, jvp, vmap

    K = group.order
    w = torch.as_tensor(group.weights, dtype=X.dtype, device=X.device)
    if K == 0:
        return value * w.sum()
    if group.unit_axes is not None and K == 2 and 2 * group.size >= group.dim:  # unit directions: Hessian diagonal
        diag = torch.diagonal(vmap(hessian(f))(X), dim1=-2, dim2=-1)  # (N, *out, D)
        return diag[..., list(group.unit_axes)] @ w
    V = _directions(group, X)
    R, D = V.shape
    if K == 1:
        b = w @ V
        return vmap(lambda x: jvp(f, (x,), (b,))[1])(X)
    if K == 2:
        if R >= D:  # the Hessian itself (forward-over-reverse over e_1..e_D), contracted with Vᵀ diag(w) V
            C = (V.T * w) @ V
            Hs = vmap(hessian(f))(X)  # (N, *out, D, D)
            return (Hs * C).sum((-1, -2))

        def one(x):
            def hvp(v):
                return jvp(jacrev(f), (x,), (v,))[1] @ v  # (*out)

            return torch.einsum("r,r...->...", w, vmap(hvp)(V))

        return vmap(one)(X)

    def kth(x, v):
        def g(t):
            return f(x + t * v)

        fns = [g]
        for _ in range(K):
            prev = fns[-1]
            fns.append(lambda t, prev=prev: jvp(prev, (t,), (torch.ones_like(t),))[1])
        return fns[K](torch.zeros((), dtype=x.dtype, device=x.device))

    def one(x):
        return torch.einsum("r,r...->...", w, vmap(lambda v: kth(x, v))(V))

    return vmap(one)(X)


def _directions(group: JetGroup, X: torch.Tensor) -> torch.Tensor:
    """The group's (R, D) directions; unit ones as rows of the identity built here (never the plan's dense V)."""
    if group.unit_axes is None:
        return torch.as_tensor(group.directions, dtype=X.dtype, device=X.device)
    axes = torch.as_tensor(group.unit_axes, dtype=torch.long, device=X.device)
    return (axes[:, None] == torch.arange(group.dim, device=X.device)).to(X.dtype)


#: Ops whose forward-mode AD torch gets wrong when the primal is batched by ``vmap`` (seen with torch 2.13:
#: ``vmap(hessian(det))`` differs from the per-point Hessian for every point but the first).
_VMAP_UNSAFE = ("linalg", "_linalg", "det", "logdet", "slogdet", "inverse", "cholesky", "lu", "triangular_solve")


class _NotCapturable(BackendError):
    """Raised inside an enclosing nested capture, so that it differentiates its function directly."""


def nested_program(f, x_point: torch.Tensor) -> tuple[Callable, bool]:
    """The function nested AD differentiates, and whether it may be vmapped over points.

    That is the captured ATen program (composite ops such as ``layer_norm`` decomposed, since torch's
    higher-order forward AD of some fused kernels is wrong), or ``f`` itself if it cannot be captured once
    (Python control flow on values).
    """
    check_param_dtypes(f, x_point.dtype)
    try:
        gm = capture(f, x_point.detach(), "nested")
    except BackendError:
        return one_output(f), True
    names = [getattr(n.target, "__name__", "") for n in gm.graph.nodes if n.op == "call_function"]
    return gm, not any(name.startswith(_VMAP_UNSAFE) for name in names)


def run_nested(plan: Plan, f, X: torch.Tensor, return_grad: bool, program=None):
    """Nested ``torch.func`` AD of the captured program (or of ``f`` where an op of it lacks forward AD).

    Inside a function that an enclosing ``method="nested"`` call is capturing (``mj.laplacian(lambda x:
    mj.laplacian(f, x, method="nested"), X, method="nested")``, the composition route with method="nested"),
    the transforms would be recorded into that graph, which torch.func cannot differentiate again (the traced
    transforms hold forward-AD bookkeeping ops without a functorch rule). So this refuses to be captured there
    (:class:`_NotCapturable`), and the enclosing call differentiates its function directly: torch.func of
    torch.func, with this program captured outside the enclosing transforms (exact).
    """
    if capturing() == "nested":
        raise _NotCapturable(
            "method='nested' runs torch.func transforms, which are not captured into the program of an enclosing "
            "method='nested' call (that call differentiates its function directly instead)"
        )
    g, batchable = program if program is not None else nested_program(f, X[0])
    try:
        try:
            return _nested_batch(plan, g, X, return_grad, batchable)
        except NotImplementedError:  # e.g. aten.copy from an in-place assignment has no forward-AD formula
            if not isinstance(g, fx.GraphModule):
                raise
            return _nested_batch(plan, one_output(f), X, return_grad, batchable)
    except Exception as e:
        if capturing() != "jet" or isinstance(e, MultijetError):
            raise
        raise BackendError(  # traced by an enclosing collapsed/standard call (e.g. its make_fx fails on them)
            "method='nested' runs torch.func transforms, and the enclosing multijet call (method='collapsed' or "
            f"'standard') could not capture them ({type(e).__name__}: {str(e).strip().splitlines()[0][:200]}); use "
            "method='nested' for the enclosing call too, or method='collapsed' or 'standard' for this inner one"
        ) from e


def _nested_batch(plan: Plan, g, X: torch.Tensor, return_grad: bool, batchable: bool):
    from torch.func import jacrev, vmap

    if not batchable:  # point by point: a batch of one is exact where vmap over points is not
        return by_points(lambda Xi: _nested_batch(plan, g, Xi, return_grad, True), X, 1, torch.cat)
    value = vmap(g)(X)
    total = None
    for group in plan.groups:
        t = _nested_total(g, X, group, value)
        total = t if total is None else total + t
    grad = vmap(jacrev(g))(X) if return_grad else None
    return value, total, grad
