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
def test_torch_ddp_hooks_unused_parameters_and_in_place_edits():
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available():
        pytest.skip("torch built without torch.distributed")
    proc = subprocess.run([sys.executable, str(HERE / "ddp_worker.py"), "--hooks", str(_free_port())],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


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


@pytest.fixture(scope="module")
def sharded():
    """The checks of tests/sharding_worker.py, run once in a subprocess with 4 host devices."""
    pytest.importorskip("jax")
    import json
    import os

    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run(
        [sys.executable, str(HERE / "sharding_worker.py")], capture_output=True, text=True, timeout=900, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.jax
def test_jax_sharded_batch_same_numbers_and_stays_sharded(sharded):
    """laplacian / weighted / return_grad / randomised / bilaplacian / compile / chunked / local kinetic energy,
    eagerly and under jit, on Explicit and Auto meshes, and inside shard_map (slogdet, integer_pow, cond,
    fori_loop): the numbers of one device, the result sharded like the batch, no collective in the program."""
    assert sharded["devices"] == 4
    checks = {k: v for k, v in sharded.items() if isinstance(v, dict) and "err" in v}
    assert len(checks) >= 30
    assert checks["oracle: logpsi vs nested jax.hessian"]["err"] < 1e-10
    for name, c in checks.items():
        assert c["err"] < 1e-12, (name, c)
        assert c["kept"], (name, c)
        assert c.get("collectives", 0) == 0, (name, c)


@pytest.mark.jax
def test_jax_device_names_count_the_devices_a_batch_spans(sharded):
    names = sharded["device names"]
    assert names["sharded"] == "cpu: 4 host devices", names
    assert names["one"].startswith("cpu: ") and "host devices" not in names["one"], names


@pytest.mark.jax
def test_jax_sharding_bad_input_is_named(sharded):
    errors = sharded["errors"]
    assert "mesh axis 'data' does not exist" in errors["unknown axis"] and "('batch',)" in errors["unknown axis"]
    for key in ("indivisible", "indivisible compile"):
        assert errors[key].startswith("ValueError") and "6 points does not divide" in errors[key], errors[key]
    assert "there is no mesh" in errors["no mesh"]


@pytest.mark.torch
def test_mesh_keywords_on_torch_point_to_ddp():
    torch = pytest.importorskip("torch")
    import multijet as mj

    with pytest.raises(ValueError, match="DistributedDataParallel"):
        mj.laplacian(lambda x: (x**2).sum(), torch.ones(4, 2), batch_axis="batch")


@pytest.mark.jax
def test_sharded_jax_pinn_example_matches_one_device():
    """examples/poisson_pinn_sharded_jax.py on 4 host devices: the loss falls, the Laplacian stays sharded over
    the batch, and the final loss is one device's."""
    import os
    import re

    pytest.importorskip("jax")
    script = HERE.parent / "examples" / "poisson_pinn_sharded_jax.py"
    runs = {}
    for devices in (1, 4):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        proc = subprocess.run([sys.executable, str(script), "--steps", "60"], capture_output=True, text=True,
                              timeout=600, env=env)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"on {devices} device(s)" in proc.stdout and "sharded as P('batch',)" in proc.stdout, proc.stdout
        runs[devices] = [float(v) for v in re.search(r"loss (\S+) -> (\S+);", proc.stdout).groups()]
    assert runs[4][1] < 0.5 * runs[4][0], runs
    assert runs[4] == pytest.approx(runs[1], rel=2e-3), runs  # printed to 4 digits
