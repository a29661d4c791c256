"""Run by ``test_distributed.py`` (not collected): data-parallel PINN steps on ``world`` gloo processes.

``python tests/ddp_worker.py OUT PORT WORLD``: every rank trains its own slice of one global batch with the
operator evaluated through ``DistributedDataParallel`` and writes its losses and final parameters to
``OUT/rank{r}.pt``; the test compares them with one process on the whole batch.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import multijet as mj

N, D, STEPS = 8, 3, 3


class PINN(torch.nn.Module):
    """A module written as users write them: ``x @ W.T`` in forward, a parameter used in two places."""

    def __init__(self):
        super().__init__()
        self.W1 = torch.nn.Parameter(torch.randn(16, D, dtype=torch.float64) / D**0.5)
        self.b1 = torch.nn.Parameter(torch.zeros(16, dtype=torch.float64))
        self.out = torch.nn.Linear(16, 1, dtype=torch.float64)

    def forward(self, x):
        h = torch.tanh(x @ self.W1.T + self.b1)
        return self.out(h * torch.sigmoid(h)) + 0.1 * (x**2).sum(-1, keepdim=True)


def data():
    g = torch.Generator().manual_seed(1)
    return torch.rand(N, D, generator=g, dtype=torch.float64)


def source(X):
    return torch.sin(X).prod(-1, keepdim=True)


def train(model, X, mode: str):
    """STEPS SGD steps of mean((Δu − s)²) + 0.1·mean(u²): the operator from mj.compile, mj.laplacian or
    method='nested' (mj.apply with return_grad, so the value comes from the same pass)."""
    params = model.module.parameters() if hasattr(model, "module") else model.parameters()
    opt = torch.optim.SGD(params, lr=0.05)
    op = mj.compile(mj.Laplacian(), model, X, return_grad=True) if mode == "compile" else None
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        if mode == "compile":
            u, _, lap = op(X)
        elif mode == "apply":
            u, _, lap = mj.apply(mj.Laplacian(), model, X, return_grad=True)
        else:
            lap, u = mj.laplacian(model, X, method="nested"), model(X)
        loss = ((lap - source(X)) ** 2).mean() + 0.1 * (u**2).mean()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def worker(rank: int, world: int, out: str, port: int):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    X = data().chunk(world)[rank]
    result = {}
    for mode in ("compile", "apply", "nested"):
        torch.manual_seed(0)
        net = PINN()
        ddp = torch.nn.parallel.DistributedDataParallel(net)
        losses = train(ddp, X, mode)
        result[mode] = {"losses": losses, "params": {k: v.detach().clone() for k, v in net.named_parameters()}}
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def single_process() -> dict:
    """The reference: one process, the whole batch, no DDP."""
    result = {}
    for mode in ("compile", "apply", "nested"):
        torch.manual_seed(0)
        net = PINN()
        losses = train(net, data(), mode)
        result[mode] = {"losses": losses, "params": {k: v.detach().clone() for k, v in net.named_parameters()}}
    return result


def hooks_and_flags(port: int) -> None:
    """One process: forward pre-hooks apply once (as in the captured program), find_unused_parameters=True with a
    second DDP forward before backward, and in-place edits of the result, all work."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.manual_seed(0)
    net = PINN()
    net.unused = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    net.register_forward_pre_hook(lambda m, i: (2 * i[0],))
    X = data()
    ref = mj.laplacian(net, X)
    for flag in (False, True):
        ddp = torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=flag)
        for _ in range(2):
            lap = mj.laplacian(ddp, X)
            (lap.sum() + ddp(X).sum()).backward()
        got = mj.laplacian(ddp, X)
        assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12), (flag, (got - ref).abs().max())
        got += 1  # an ordinary tensor
    dist.destroy_process_group()
    print("ok")


if __name__ == "__main__":
    if sys.argv[1] == "--hooks":
        hooks_and_flags(int(sys.argv[2]))
        sys.exit(0)
    out, port, world = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    mp.spawn(worker, args=(world, out, port), nprocs=world, join=True)
