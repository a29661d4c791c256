"""``DistributedDataParallel`` around the user's module: capture the module, run the jet program *through* DDP.

DDP averages gradients over processes from hooks on the parameters, but only after its own ``forward`` ran:
that call prepares the reducer for the coming backward pass. A jet program that reads the module's
parameters directly (as the capture does) would leave every process with its local gradient, silently.
So the program is captured from ``ddp.module``, and each evaluation goes through ``ddp(...)`` with the
module's ``forward`` standing in for the jet program for that one call: DDP syncs buffers, prepares the
reducer, and its hooks average the parameters' gradients in ``backward`` as for any forward pass.

An operator need not depend on every parameter (the Laplacian of an MLP never reads the last bias), and DDP
without ``find_unused_parameters=True`` fails on the next step when a parameter got no gradient. Every
trainable parameter is therefore attached to the outputs by :class:`_Touch`, which contributes an exact zero
gradient: ``∂(result)/∂p = 0`` for a parameter the result does not depend on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["unwrap", "through"]


def _ddp_type():
    try:
        from torch.nn.parallel import DistributedDataParallel
    except ImportError:  # pragma: no cover - torch built without distributed support
        return None
    return DistributedDataParallel


def unwrap(f: Callable) -> tuple[Callable, Any]:
    """``(module, ddp)`` for a ``DistributedDataParallel`` ``f``; ``(f, None)`` for anything else."""
    ddp = _ddp_type()
    if ddp is not None and isinstance(f, ddp):
        return f.module, f
    return f, None


class _Touch(torch.autograd.Function):
    """Outputs unchanged; each parameter gets a zero gradient (so DDP's hook on it fires)."""

    @staticmethod
    def forward(ctx, n_out: int, *tensors):
        ctx.n_out = n_out
        ctx.params = [(p.shape, p.dtype, p.device) for p in tensors[n_out:]]
        return tuple(t.view_as(t) for t in tensors[:n_out])

    @staticmethod
    def backward(ctx, *grads):
        zeros = [torch.zeros(s, dtype=dt, device=dev) for s, dt, dev in ctx.params]
        return (None, *grads, *zeros)


def _touch_all(ddp, result: tuple) -> tuple:
    params = [p for p in ddp.module.parameters() if p.requires_grad]
    slots = [i for i, r in enumerate(result) if isinstance(r, torch.Tensor) and r.is_floating_point()]
    if not torch.is_grad_enabled() or not params or not slots:
        return result
    touched = _Touch.apply(len(slots), *(result[i] for i in slots), *params)
    out = list(result)
    for i, t in zip(slots, touched, strict=True):
        out[i] = t
    return tuple(out)


def through(ddp, fn: Callable, X: torch.Tensor):
    """``fn(X)`` evaluated as ``ddp``'s forward pass (the module's ``forward`` replaced for this one call)."""
    if ddp is None:
        return fn(X)
    module = ddp.module
    had = "forward" in module.__dict__
    saved = module.__dict__.get("forward")

    def restore():
        if had:
            module.forward = saved
        elif "forward" in module.__dict__:
            del module.forward

    def jet_forward(X_):
        restore()  # f itself may call the module (method="nested" does): its own forward from here on
        return _touch_all(ddp, tuple(fn(X_)))

    module.forward = jet_forward
    try:
        return ddp(X)
    finally:
        restore()
