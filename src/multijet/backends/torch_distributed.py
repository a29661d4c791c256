"""``DistributedDataParallel`` around the user's module: capture the module, run the jet program *through* DDP.

DDP averages gradients over processes from hooks on the parameters, but only after its own ``forward`` ran:
that call prepares the reducer for the coming backward pass. A jet program that reads the module's
parameters directly (as the capture does) would leave every process with its local gradient, silently.
So the program is captured from ``ddp.module``, and each evaluation goes through ``ddp(...)`` with the
module's ``forward`` standing in for the jet program for that one call: DDP syncs buffers, prepares the
reducer, and its hooks average the parameters' gradients in ``backward`` as for any forward pass.

An operator need not depend on every parameter (the Laplacian of an MLP never reads the last bias), and DDP
without ``find_unused_parameters=True`` fails on the next step when a parameter got no gradient. Every
trainable parameter is therefore attached to the outputs by :class:`_Zero`, which contributes an exact zero
gradient: ``∂(result)/∂p = 0`` for a parameter the result does not depend on. The module's forward hooks are
off during the call: the captured program already applied them.
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


class _Zero(torch.autograd.Function):
    """A zero scalar that depends on the parameters: each gets an exact zero gradient (so DDP's hook on it
    fires); added out of place, the results stay ordinary tensors (in-place edits allowed)."""

    @staticmethod
    def forward(ctx, dtype_of: torch.Tensor, *params):
        ctx.params = [(p.shape, p.dtype, p.device) for p in params]
        return torch.zeros((), dtype=dtype_of.dtype, device=dtype_of.device)

    @staticmethod
    def backward(ctx, grad):
        return (None, *[torch.zeros(s, dtype=dt, device=dev) for s, dt, dev in ctx.params])


def _touch_all(ddp, result: tuple) -> tuple:
    """Every trainable parameter in the results' graph, with a zero gradient; not with
    ``find_unused_parameters=True``, where DDP itself marks the unused ones (a touch would mark them twice)."""
    if getattr(ddp, "find_unused_parameters", False) or not torch.is_grad_enabled():
        return result
    params = [p for p in ddp.module.parameters() if p.requires_grad]
    slots = [i for i, r in enumerate(result) if isinstance(r, torch.Tensor) and r.is_floating_point()]
    if not params or not slots:
        return result
    zero = _Zero.apply(result[slots[0]].detach(), *params)
    return tuple(r + zero if i in slots else r for i, r in enumerate(result))


_HOOKS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
          "_forward_pre_hooks_with_kwargs")  # fmt: skip


def through(ddp, fn: Callable, X: torch.Tensor):
    """``fn(X)`` evaluated as ``ddp``'s forward pass (the module's ``forward`` replaced for this one call)."""
    if ddp is None:
        return fn(X)
    module = ddp.module
    had = "forward" in module.__dict__
    saved = module.__dict__.get("forward")
    hooks = {name: getattr(module, name) for name in _HOOKS if hasattr(module, name)}
    for name, table in hooks.items():  # the captured program already holds the module's hooks: not twice
        object.__setattr__(module, name, type(table)())

    def restore():
        for name, table in hooks.items():
            object.__setattr__(module, name, table)
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
