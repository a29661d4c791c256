"""The torch executor's operations for direction sparsity (:mod:`multijet.engine.sparsity`): eager probes
of the table's callables, compressed seeds and weights as buffers, and the expansion of ``b`` slots to all
``R`` directions, all emitted into the fx graph.

Coefficients are ``(N | 1, R | 1, *shape)`` :class:`~multijet.backends.torch_emit.Co` handles; compressed
per-direction ones ``(N | 1, b, *shape)``.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from ..engine.program import Var
from .torch_emit import Co, Emitter, Layout

__all__ = ["SparseOps", "SparseLayout"]

_names = itertools.count()


class _Eager:
    """A stand-in graph whose ``call_function`` runs the call now (the probes of the table's callables)."""

    @staticmethod
    def call_function(target, args=(), kwargs=None):
        return target(*args, **(kwargs or {}))


def _eager_emitter() -> Emitter:
    E = Emitter.__new__(Emitter)
    E.graph, E.N, E.device = _Eager(), 1, torch.device("cpu")
    E.max_point_elems = 1
    E._lifted = {}
    return E


class SparseOps:
    """Mixed into the torch :class:`~multijet.backends.torch_emit.Layout` (which holds ``E``, ``R``, ``root``)."""

    @staticmethod
    def probe(fn, arrays: list, lead: list[bool]) -> list[np.ndarray]:
        E = _eager_emitter()
        cos = []
        for a, d in zip(arrays, lead, strict=True):
            t = torch.as_tensor(np.asarray(a))
            lead_t, r, shape = (t[None], t.shape[0], t.shape[1:]) if d else (t[None, None], 1, t.shape)
            cos.append(Co(E, lead_t, False, r, shape))
        outs = fn(*cos)
        return [o.node.detach().numpy()[0] if any(lead) else o.node.detach().numpy()[0, 0] for o in outs]

    @staticmethod
    def concrete(value):
        """An integer constant written in ``f`` (indices) as a NumPy array; None for anything else (parameters
        and buffers are read live by the emitted graph, so their values at build time are not relied on)."""
        v = getattr(value, "value", None)
        return None if v is None else v.cpu().numpy()

    def _buffer(self, tensor: torch.Tensor):
        name = f"sparse{next(_names)}"
        self.root.register_buffer(name, tensor)
        return self.E.graph.get_attr(name)

    def per_direction_const(self, a: np.ndarray, var: Var):
        node = self._buffer(torch.as_tensor(a[None], dtype=var.dtype, device=self.device))
        return Co(self.E, node, False, a.shape[0], var.shape)

    def direction_sum(self, c: Co) -> Co:
        return Co(self.E, self.E.call(torch.sum, c.node, 1, keepdim=True), c.b, 1, c.shape)

    def sum_last(self, c: Co) -> Co:
        """``Σ`` over the last point axis."""
        return c.map(torch.sum, -1, shape=c.shape[:-1])

    def gather_weights(self, w, index: np.ndarray) -> Co:
        E = self.E
        idx = self._buffer(torch.as_tensor(index, dtype=torch.long, device=self.device))
        zero = E.call(torch.zeros, 1, dtype=self.dtype, device=E.device)
        node = E.call(torch.take, E.call(torch.cat, [w, zero]), idx)
        return Co(E, E.call(torch.unsqueeze, node, 0), False, index.shape[0], index.shape[1:])

    def resize_slots(self, c: Co, k: int, var: Var) -> Co:
        """The first ``k`` slots of ``c`` (zeros appended when it has fewer)."""
        E = self.E
        if c.r >= k:
            return Co(E, E.call(torch.narrow, c.node, 1, 0, k), c.b, k, c.shape)
        zeros = E.call(torch.zeros, [E.N if c.b else 1, k - c.r, *c.shape], dtype=var.dtype, device=E.device)
        return Co(E, E.call(torch.cat, [c.node, zeros], 1), c.b, k, c.shape)

    def scatter_sum(self, c: Co, flat: np.ndarray, size: int, var: Var, out_shape: tuple) -> Co:
        """``out[flat[t, e]] += c[t, e]`` into ``size`` entries (index ``size``: dropped), shaped ``out_shape``."""
        E = self.E
        c = E.fit(c, var.shape)
        lead0 = E.N if c.b else 1
        src = E.call(torch.reshape, c.node, [lead0, -1])
        idx = self._buffer(torch.as_tensor(flat.reshape(-1), dtype=torch.long, device=self.device))
        zeros = E.call(torch.zeros, [lead0, size + 1], dtype=var.dtype, device=E.device)
        out = E.call(torch.index_add, zeros, 1, idx, src)
        out = E.call(torch.narrow, out, 1, 0, size)
        return Co(E, E.call(torch.reshape, out, [lead0, *out_shape]), c.b, out_shape[0], tuple(out_shape[1:]))

    def take_directions(self, c: Co, index: np.ndarray, var: Var) -> Co:
        """``out[s, e] = c[index[s, e], e]`` with ``index = R`` a zero: directions picked into slots."""
        return self.expand(c, index, var)  # the same gather along the direction axis

    def take_slots(self, c: Co, slots: np.ndarray, k: int, var: Var) -> Co:
        """Slots ``slots`` of ``c``'s ``k`` (index ``k``: a zero slot), whole slabs, broadcast to ``var``."""
        E = self.E
        c = E.fit(c, var.shape)
        lead0 = E.N if c.b else 1
        zeros = E.call(torch.zeros, [lead0, 1, *var.shape], dtype=var.dtype, device=E.device)
        padded = E.call(torch.cat, [c.node, zeros], 1)
        idx = self._buffer(torch.as_tensor(slots, dtype=torch.long, device=self.device))
        return Co(E, E.call(torch.index_select, padded, 1, idx), c.b, len(slots), var.shape)

    def expand(self, c: Co, index: np.ndarray, var: Var) -> Co:
        E = self.E
        c = E.fit(c, var.shape)
        lead0 = E.N if c.b else 1
        zeros = E.call(torch.zeros, [lead0, 1, *var.shape], dtype=var.dtype, device=E.device)
        padded = E.call(torch.cat, [c.node, zeros], 1)
        idx = self._buffer(torch.as_tensor(index[None], dtype=torch.long, device=self.device))
        idx = E.call(torch.Tensor.expand, idx, [lead0, index.shape[0], *var.shape])
        return Co(E, E.call(torch.gather, padded, 1, idx), c.b, index.shape[0], var.shape)


class SparseLayout(SparseOps, Layout):
    """The torch layout with the sparsity operations; ``root`` holds the buffers they register."""

    def __init__(self, E: Emitter, R: int, root: torch.nn.Module, dtype, device):
        super().__init__(E, R)
        self.root, self.dtype, self.device = root, dtype, device
