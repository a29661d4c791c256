"""The PyTorch executor: the shared engine recorded into an fx ``GraphModule``.

1. **Capture** (:mod:`.torch_capture`): ``make_fx`` of ``f`` at one point, then the fx graph → the engine's
   :class:`~multijet.engine.Program`, with the primitive table of :mod:`.torch_table`. Parameters stay live.
2. **Propagate**: :func:`multijet.engine.evaluate` runs the plan's jet groups over coefficient handles
   (:mod:`.torch_emit`) that emit nodes — structural zeros are decided in Python, so the emitted graph holds
   only the needed ops. Layout of a coefficient: ``(N | 1, R | 1, *point_shape)``.
3. **Run**: the emitted module maps a batch ``X`` (N, D) to ``(value, Σ_groups Σ_r w_r f_K(v_r), grad)``.
   It is an ordinary differentiable torch program (parameter gradients for PINN training; under
   ``torch.no_grad()`` it keeps no activations), readable with ``.code``; being made of ATen/torch ops it can
   itself be captured again, so operators nest (``mj.laplacian(lambda x: mj.laplacian(f, x), X)``).

``method="nested"`` is the baseline and oracle (:mod:`.torch_nested`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.fx as fx

from .. import engine
from ..chunking import by_points, split_directions
from ..plan import Plan
from .torch_capture import capture, enclosed, outside_trace, raise_if_data_dependent, to_program
from .torch_distributed import through, unwrap
from .torch_emit import Co, Emitter, GroupSums
from .torch_generic import is_generic_node
from .torch_nested import nested_program, run_nested
from .torch_sparse import SparseLayout
from .torch_table import TABLE, register_rule

__all__ = ["NAME", "run", "compile", "seed_from", "register_rule", "build", "capture", "JetProgram", "TABLE"]

NAME = "torch"
#: the jet program can be captured again (nesting), so composition routes run here
NESTS = True
set_strict = engine.set_strict

#: Largest per-pass coefficient array in bytes: bigger batches are split into chunks of points. (CPU
#: allocations above glibc's mmap threshold, 32 MiB at most, are returned to the OS and page-faulted anew on
#: every call; keeping arrays below it makes a batch of 256 cost 4× a batch of 64, not 14×.)
CHUNK_BYTES = 16 * 2**20


def seed_from(generator) -> int:
    """An integer seed for the planner drawn from a ``torch.Generator``."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"seed must be an int, a numpy or torch Generator, or None; got {type(generator).__name__}")
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


class JetProgram:
    """The emitted program: ``X (N, D) -> (value, result, grad)``; ``.code`` shows the generated Python.

    ``chunk`` points go through the graph per pass (per-point semantics make chunks independent).
    """

    def __init__(self, gm: fx.GraphModule, captured: fx.GraphModule, program, build_seconds: float, chunk: int, specs):
        self.graph_module = gm
        # a sparse plan may follow gathers by integer tensors written in f: their values now, to spot in-place edits
        self.literals = _literal_snapshots(captured) if engine.uses_sparsity(program) else []
        self.captured = captured
        self.program = program
        self.specs = specs  # the group specs the program was emitted for (``.schedule``)
        self.build_seconds = build_seconds
        self.chunk = max(1, int(chunk))

    @property
    def code(self) -> str:
        return self.graph_module.code

    def __call__(self, X):
        return by_points(self.graph_module, X, self.chunk, torch.cat)

    def stale(self) -> bool:
        """Whether an integer constant the sparse plan relied on was changed in place since the build."""
        return any(live.shape != seen.shape or not torch.equal(live, seen) for live, seen in self.literals)


def _literal_snapshots(gm: fx.GraphModule) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(live tensor, copy)`` for each integer tensor constant of the captured graph (indices written in f)."""
    out = []
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target.startswith("_tensor_constant"):
            t = getattr(gm, node.target)
            if isinstance(t, torch.Tensor) and not t.is_floating_point() and not t.is_complex():
                out.append((t, t.detach().clone()))
    return out


def build(
    plan: Plan,
    f: Callable,
    x_example: torch.Tensor,
    *,
    method: str,
    return_grad: bool,
    chunk_size: int | None = None,
    direction_chunk_size: int | None = None,
    sparsity: bool | int | None = None,
) -> JetProgram:
    """Capture ``f`` at one point of ``x_example``'s dtype/device and emit the jet program for ``plan``.

    ``direction_chunk_size`` directions per block: the blocks are emitted one after the other, and the
    module frees each value after its last use, so one block is live at a time. ``chunk_size`` points per
    pass (default: by :data:`CHUNK_BYTES`). ``sparsity``: direction sparsity where the cost model finds it
    pays (None) or never (False)."""
    t0 = time.perf_counter()
    xp = (x_example[0] if x_example.dim() == 2 else x_example).detach()
    gm = capture(f, xp)
    graph, root = fx.Graph(), torch.nn.Module()
    X = graph.placeholder("x")
    E = Emitter(graph, graph.call_method("size", (X, 0)), graph.call_function(getattr, (X, "device")))
    x0 = Co(E, graph.call_method("unsqueeze", (X, 1)), True, 1, (plan.dim,))
    try:
        program = to_program(gm, E, root)
        _refuse_complex(program)
        specs = engine.group_specs(plan, method, return_grad, direction_chunk_size, sparsity)
        loop = engine.python_loop(partial(_join, E))
        value, total, grad = engine.evaluate(program, specs, return_grad, _group_inputs(plan, E, root, x0, xp), loop)
    except Exception as e:
        raise_if_data_dependent(e)
        raise
    (out,) = program.outvars
    graph.output(_results(E, out, value, total, grad if return_grad else None, plan.dim, return_grad))
    graph.eliminate_dead_code()
    new = fx.GraphModule(root, graph, class_name="JetProgram")
    if any(is_generic_node(n) for n in graph.nodes):
        with torch.no_grad():  # the generic rule runs eagerly at run time: once now, so errors surface while building
            new(x_example[:1] if x_example.dim() == 2 else x_example[None])
    chunk = chunk_size or CHUNK_BYTES // (E.max_point_elems * xp.element_size())
    return JetProgram(new, gm, program, time.perf_counter() - t0, chunk, specs)


def _group_inputs(plan: Plan, E: Emitter, root: torch.nn.Module, x0: Co, xp: torch.Tensor):
    def inputs(i: int, spec: engine.GroupSpec, b: int = 0):
        blk = engine.block_inputs(plan, i, spec, b)
        tag = f"{i}" if spec.blocks == 1 else f"{i}_{b}"
        root.register_buffer(f"w{tag}", torch.as_tensor(blk.weights, dtype=xp.dtype, device=xp.device))
        sums = GroupSums(E, blk.R, E.graph.get_attr(f"w{tag}"), [float(w) for w in blk.weights])
        V = None
        if blk.rows is not None:  # unit directions e_a: symbolic, rows by index
            root.register_buffer(f"axes{tag}", torch.as_tensor(blk.rows, dtype=torch.long, device=xp.device))
            V = engine.Identity(blk.R, E.graph.get_attr(f"axes{tag}"))
        elif blk.directions is not None:
            root.register_buffer(f"V{tag}", torch.as_tensor(blk.directions, dtype=xp.dtype, device=xp.device)[None])
            V = Co(E, E.graph.get_attr(f"V{tag}"), False, blk.R, (plan.dim,))
        layout = SparseLayout(E, blk.R, root, xp.dtype, xp.device)
        weights = None if spec.ones else E.graph.get_attr(f"w{tag}")
        ctx = engine.Context(spec.order, spec.collapsed, blk.R, layout, sums.wsum, sums.wdot, backend=NAME,
                             weights=weights)  # fmt: skip
        return ctx, x0, V

    return inputs


def _join(E: Emitter, blocks: list[Co]) -> Co:
    """Gradient blocks joined along the direction axis."""
    b = any(c.b for c in blocks)
    blocks = [E.expand_lead(c, b, c.r) for c in blocks]
    return Co(E, E.call(torch.cat, [c.node for c in blocks], 1), b, sum(c.r for c in blocks), blocks[0].shape)


def _results(E: Emitter, out, value, total, grad, D: int, return_grad: bool):
    """The layout's ``(N|1, 1, *shape)`` value and total and ``(N|1, D, *shape)`` gradient as result tensors."""
    g, shape = E.graph, list(out.shape)

    def first(c):
        c = E.fit(c, out.shape)
        return g.call_function(torch.select, (c.map(torch.Tensor.expand, [E.N, 1, *shape]).node, 1, 0))

    def zeros(extra=()):
        return g.call_function(torch.zeros, ([E.N, *shape, *extra],), {"dtype": out.dtype, "device": E.device})

    if isinstance(total, list):  # the parts of return_std: (N, P, *shape)
        parts = [zeros() if t is None else first(t) for t in total]
        res_total = g.call_function(torch.stack, (parts, 1))
    else:
        res_total = zeros() if total is None else first(total)
    res_grad = None
    if return_grad:
        if grad is None:
            res_grad = zeros((D,))
        else:
            full = E.fit(grad, out.shape).map(torch.Tensor.expand, [E.N, D, *shape])
            res_grad = g.call_function(torch.movedim, (full.node, 1, -1))
    return first(value), res_total, res_grad


# --- public executor interface -----------------------------------------------------------------------------


def _as_batch(x) -> tuple[torch.Tensor, bool]:
    if not isinstance(x, torch.Tensor):
        from ..errors import BackendError

        raise BackendError(f"the torch backend needs x as a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 1:
        return x[None], False
    return x, True


def _unbatch(res, batched):
    if batched:
        return res
    value, total, grad = res
    return value[0], total[0], None if grad is None else grad[0]


def _check(method: str):
    if method not in ("collapsed", "standard", "nested"):
        raise ValueError(f"unknown method {method!r}; expected 'collapsed', 'standard' or 'nested'")


def _build_for(plan, f, X, method, return_grad, **chunks) -> JetProgram:
    if not enclosed(X):
        return build(plan, f, X, method=method, return_grad=return_grad, **chunks)
    # nested: build the inner jet program at a real point outside the outer trace, then *call* it on the traced
    # input so that its ops are recorded into the outer graph
    with outside_trace():
        example = torch.zeros(X.shape[-1], dtype=X.dtype, device=X.device)
        return build(plan, f, example, method=method, return_grad=return_grad, **chunks)


def run(
    plan: Plan,
    f: Callable,
    x,
    *,
    method: str = "collapsed",
    return_grad: bool = False,
    chunk_size: int | None = None,
    direction_chunk_size: int | None = None,
    sparsity: bool | int | None = None,
):
    """Evaluate ``Σ_groups Σ_r w_r f_K(v_r)`` at ``x`` (D,) or (N, D): ``(value, result, grad)``; ``chunk_size``
    points and ``direction_chunk_size`` directions per pass; ``sparsity`` as in :func:`build`."""
    _check(method)
    X, batched = _as_batch(x)
    f, ddp = unwrap(f)  # DistributedDataParallel: capture its module, evaluate through it (gradients averaged)
    if method == "nested":
        p = split_directions(plan, direction_chunk_size)
        fn = lambda Xc: run_nested(p, f, Xc, return_grad)  # noqa: E731
        return _unbatch(through(ddp, lambda X_: by_points(fn, X_, chunk_size, torch.cat), X), batched)
    prog = _build_for(
        plan, f, X, method, return_grad, chunk_size=chunk_size, direction_chunk_size=direction_chunk_size,
        sparsity=sparsity,
    )  # fmt: skip
    return _unbatch(through(ddp, prog, X), batched)


class CompiledTorch:
    """``compile``'s callable: builds the jet program once per dtype/device and reuses it."""

    def __init__(self, plan: Plan, f: Callable, x_example, method: str, return_grad: bool, **chunks):
        _check(method)
        f, self.ddp = unwrap(f)  # DistributedDataParallel: capture its module, evaluate through it
        self.plan, self.f, self.method, self.return_grad = plan, f, method, return_grad
        self.chunks = chunks
        self._nested_plan = split_directions(plan, chunks.get("direction_chunk_size"))
        self._programs: dict[Any, JetProgram] = {}
        self._nested: dict[Any, tuple[Callable, bool]] = {}
        X, _ = _as_batch(x_example)
        if method == "nested":
            self.nested_program(X)
        else:
            self.program(X)

    def nested_program(self, X: torch.Tensor) -> tuple[Callable, bool]:
        key = (X.dtype, X.device)
        if key not in self._nested:
            self._nested[key] = nested_program(self.f, X[0])
        return self._nested[key]

    def program(self, X: torch.Tensor) -> JetProgram:
        key = (X.dtype, X.device)
        prog = self._programs.get(key)
        if prog is None or prog.stale():  # rebuilt when indices the sparse plan follows were edited in place
            prog = _build_for(self.plan, self.f, X, self.method, self.return_grad, **self.chunks)
            self._programs[key] = prog
        return prog

    @property
    def code(self) -> str:
        if self.method == "nested":
            return "# method='nested' runs torch.func transforms of f directly; there is no emitted program."
        return next(iter(self._programs.values())).code

    @property
    def graph_module(self) -> fx.GraphModule | None:
        return next(iter(self._programs.values())).graph_module if self._programs else None

    @property
    def schedule(self) -> str:
        """The engine's schedule of each jet group (structural zeros, directions, where Σ_r w_r forms)."""
        if self.method == "nested":
            return "# method='nested' runs torch.func transforms of f directly; there is no jet program."
        prog = next(iter(self._programs.values()))
        return engine.schedule_text(prog.program, prog.specs)

    def __call__(self, x):
        X, batched = _as_batch(x)
        if self.method == "nested":
            program, p = self.nested_program(X), self._nested_plan
            fn = lambda Xc: run_nested(p, self.f, Xc, self.return_grad, program)  # noqa: E731
            chunk = self.chunks.get("chunk_size")
            return _unbatch(through(self.ddp, lambda X_: by_points(fn, X_, chunk, torch.cat), X), batched)
        return _unbatch(through(self.ddp, self.program(X), X), batched)


def compile(plan: Plan, f: Callable, x_example, *, method: str = "collapsed", return_grad: bool = False, **chunks):
    """Capture, plan and emit once; the callable reads parameters live (training loops do not rebuild).
    ``chunks``: ``chunk_size``, ``direction_chunk_size`` (as in :func:`run`)."""
    return CompiledTorch(plan, f, x_example, method, return_grad, **chunks)


def _refuse_complex(program) -> None:
    """The torch tables are written for real arithmetic (``torch.complex``, ``.real`` have no rules yet)."""
    values = [v for e in program.eqns for v in e.outs] + list(program.outvars)
    if any(getattr(v.dtype, "is_complex", False) for v in values):
        raise TypeError(
            "f computes complex values, which the torch backend does not propagate yet: use backend='jax' "
            "(complex log ψ, complex orbitals), or write f with real and imaginary parts as separate real outputs"
        )
