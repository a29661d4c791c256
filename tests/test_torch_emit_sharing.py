"""The emitted torch program computes what does not depend on the directions once (``SharedGraph``)."""

import operator

import pytest

torch = pytest.importorskip("torch")
import torch.fx as fx  # noqa: E402

import multijet as mj  # noqa: E402
from multijet.backends.torch_emit import SharedGraph  # noqa: E402


def _count(gm, name):
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and name in getattr(n.target, "__name__", ""))


def test_direction_blocks_share_primal_and_first_layer_transpose():
    torch.manual_seed(0)
    D = 6
    net = torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh(),
                              torch.nn.Linear(8, 1)).double()  # fmt: skip
    X = torch.randn(5, D, dtype=torch.float64)
    f = lambda x: net(x).squeeze(-1)  # noqa: E731
    blocks = mj.compile(mj.Laplacian(), f, X, backend="torch", direction_chunk_size=2)  # 3 blocks
    gm = blocks.graph_module
    assert _count(gm, "contiguous") == 1  # contiguous(Wᵀ) once, its rows taken per block
    assert _count(gm, "index_select") == 3
    assert _count(gm, "tanh") == 2  # the primal pass once, not once per block
    whole = mj.compile(mj.Laplacian(), f, X, backend="torch")
    torch.testing.assert_close(blocks(X), whole(X), rtol=1e-12, atol=1e-12)


def test_shared_graph_keeps_in_place_calls_and_distinguishes_arguments():
    g = SharedGraph(fx.Graph())
    x = g.placeholder("x")
    assert g.call_function(torch.mul, (x, 2.0)) is g.call_function(torch.mul, (x, 2.0))
    assert g.call_function(torch.mul, (x, 2.0)) is not g.call_function(torch.mul, (x, 2))
    assert g.call_function(operator.mul, (x, 0.0)) is not g.call_function(operator.mul, (x, -0.0))
    assert g.call_function(torch.Tensor.add_, (x, 1.0)) is not g.call_function(torch.Tensor.add_, (x, 1.0))
    aten_add_ = torch.ops.aten.add_.Tensor
    assert g.call_function(aten_add_, (x, x)) is not g.call_function(aten_add_, (x, x))
    s = slice(0, 2)  # unhashable (Python < 3.12): not shared, still emitted
    assert g.call_function(operator.getitem, (x, s)) is not None
