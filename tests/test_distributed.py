"""Scale-out: torch ``DistributedDataParallel`` on 2 gloo processes, and JAX batches sharded over host devices.

Both run in subprocesses under a timeout (a stuck collective is a failure, not a hang), so the main test
process keeps its one device and its own torch/jax state.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.torch
def test_torch_ddp_pinn_steps_equal_one_process_on_the_whole_batch(tmp_path):
    """mj.compile / mj.apply / method='nested' through DDP on 2 processes: the losses (averaged over ranks) and
    the parameters after 3 SGD steps equal one process's on the whole batch (gradients are all-reduced)."""
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available():
        pytest.skip("torch built without torch.distributed")
    proc = subprocess.run(
        [sys.executable, str(HERE / "ddp_worker.py"), str(tmp_path), str(_free_port()), "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    sys.path.insert(0, str(HERE))
    try:
        import ddp_worker
    finally:
        sys.path.remove(str(HERE))
    ref = ddp_worker.single_process()
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for mode, want in ref.items():
        got_losses = np.mean([r[mode]["losses"] for r in ranks], axis=0)
        np.testing.assert_allclose(got_losses, want["losses"], rtol=1e-10, err_msg=mode)
        assert want["losses"][-1] < want["losses"][0], mode  # the step trains (a check that can fail)
        for r in ranks:
            for name, p in want["params"].items():
                torch.testing.assert_close(r[mode]["params"][name], p, rtol=1e-10, atol=1e-12, msg=f"{mode} {name}")


@pytest.mark.torch
def test_torchrun_pinn_example_matches_one_process():
    """examples/poisson_pinn_ddp_torch.py under torchrun on 2 processes: the loss falls, and its final value is
    the single-process run's on the same global batch."""
    import importlib.util
    import re

    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available():
        pytest.skip("torch built without torch.distributed")
    script = HERE.parent / "examples" / "poisson_pinn_ddp_torch.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
           str(_free_port()), str(script), "--steps", "60"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**_env(), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, last = (float(v) for v in re.search(r"loss (\S+) -> (\S+)", proc.stdout).groups())
    assert last < 0.5 * first, proc.stdout
    spec = importlib.util.spec_from_file_location("pinn_ddp", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    one = module.main(steps=60)
    assert abs(last - one[-1]) <= 2e-3 * abs(one[-1]), (proc.stdout, one[-1])  # printed to 4 digits


def _env() -> dict:
    import os

    return dict(os.environ)
