"""A data-parallel Poisson PINN: ``DistributedDataParallel`` around the network, the Laplacian from ``mj.compile``.

    −Δu = f on (0, 1)^d, u = 0 on the boundary, f = dπ² Π sin(πx_i) (exact u = Π sin(πx_i)).

Every process draws the same global batch and trains on its own slice; DDP all-reduces the gradients, so
the run is the same as one process on the whole batch. Run on 2 processes of this machine (gloo; NCCL on
GPUs, one per process):

    torchrun --nproc-per-node 2 examples/poisson_pinn_ddp_torch.py --steps 300

Without torchrun it runs as one process (world size 1).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
import torch.distributed as dist

import multijet as mj


def batch(n: int, d: int, rank: int, world: int, dtype, device):
    """The same global points on every rank (one seed); this rank's interior and boundary slices."""
    g = torch.Generator().manual_seed(0)
    interior = torch.rand(n, d, generator=g, dtype=dtype)
    boundary = torch.rand(n // 2, d, generator=g, dtype=dtype)
    side = torch.randint(0, d, (n // 2,), generator=g)
    boundary[torch.arange(n // 2), side] = torch.randint(0, 2, (n // 2,), generator=g).to(dtype)
    return interior.chunk(world)[rank].to(device), boundary.chunk(world)[rank].to(device)


def main(steps: int = 300, dim: int = 2, points: int = 256, seed: int = 0) -> list[float]:
    distributed = "RANK" in os.environ  # set by torchrun
    use_cuda = torch.cuda.is_available()
    if distributed:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu")
    torch.manual_seed(seed)  # the same initial network on every rank (DDP also broadcasts rank 0's)
    dtype = torch.float64
    net = torch.nn.Sequential(
        torch.nn.Linear(dim, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)
    ).to(dtype=dtype, device=device)
    model = torch.nn.parallel.DistributedDataParallel(net) if distributed else net
    interior, boundary = batch(points, dim, rank, world, dtype, device)
    rhs = dim * math.pi**2 * torch.sin(math.pi * interior).prod(-1, keepdim=True)

    laplacian = mj.compile(mj.Laplacian(), model, interior)  # evaluated through DDP: gradients all-reduced
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    t0 = time.perf_counter()
    for step in range(steps + 1):
        opt.zero_grad()
        loss = (-laplacian(interior) - rhs).pow(2).mean() + 10 * model(boundary).pow(2).mean()
        loss.backward()
        opt.step()
        global_loss = loss.detach().clone()
        if distributed:  # the whole batch's loss: the mean of the ranks' (equal-sized slices)
            dist.all_reduce(global_loss)
            global_loss /= world
        losses.append(global_loss.item())
        if rank == 0 and step % 50 == 0:
            print(f"step {step:4d}  loss {losses[-1]:.4e}")
    if rank == 0:
        print(f"{steps} steps on {world} process(es) in {time.perf_counter() - t0:.1f} s; "
              f"loss {losses[0]:.3e} -> {losses[-1]:.3e}")  # fmt: skip
    if distributed:
        dist.destroy_process_group()
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--points", type=int, default=256, help="global interior batch (divisible by the world)")
    args = parser.parse_args()
    main(args.steps, args.dim, args.points)
