"""The CUDA path without a GPU: simulator parity, PTX compilation, and the
promise that nothing touches CUDA unless asked.  Tests that need a real
device are marked ``gpu`` and skipped with the reason when there is none."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import simulator

HERE = Path(__file__).resolve().parents[1]  # tests/
ROOT = HERE.parent


def run(args, env=None, timeout=900):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("name", simulator.names("sim_parity"))
def test_cuda_kernels_match_cpu_under_the_simulator(name):
    res = simulator.run("sim_parity", name)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "failed" not in res.stdout


def test_every_cuda_kernel_compiles_to_ptx_for_sm_90():
    res = run([str(HERE / "cuda" / "ptx_check.py")])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "compiled 22 kernels" in res.stdout


def test_importing_and_cpu_work_never_touch_cuda():
    code = ("import sys, numpy as np, pandas as pd\n"
            "import gpubackfill, gpubackfill.cli, gpubackfill.service\n"
            "from gpubackfill import compute_labels\n"
            "c = np.linspace(1, 2, 50)\n"
            "compute_labels(pd.DataFrame(dict(ts=np.arange(50), open=c, high=c, low=c, close=c)), 'mfe_mae')\n"
            "print(sorted(m for m in sys.modules if m.startswith('numba.cuda') or m == 'kernels.cuda'))\n")
    res = run(["-c", code])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_asking_for_cuda_without_a_device_names_what_is_missing():
    from gpubackfill.compute.backends import cuda_unavailable_reason, select

    why = cuda_unavailable_reason()
    if why is None:
        pytest.skip("a CUDA device is present")
    from gpubackfill import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="backend 'cuda' is not available: .*(driver|device|numba-cuda)"):
        select("cuda")
    auto = select("auto")
    assert auto.name == "cpu" and auto.reason.startswith("auto chose cpu: ")


def _no_gpu_reason() -> str | None:
    from gpubackfill.compute.backends import cuda_unavailable_reason

    return cuda_unavailable_reason()


gpu = pytest.mark.skipif(_no_gpu_reason() is not None, reason=f"needs a CUDA device: {_no_gpu_reason()}")


@pytest.mark.gpu
@gpu
def test_cupy_arrays_go_straight_into_the_kernels():
    cp = pytest.importorskip("cupy")
    from kernels import cpu
    from kernels import cuda as gk

    rng = np.random.default_rng(0)
    close = np.exp(np.cumsum(rng.normal(0, 1e-3, 100_000)))
    got = gk.to_host(gk.ewm_sigma(cp.asarray(close), 100))
    np.testing.assert_allclose(got, cpu.ewm_sigma(close, 100), rtol=1e-12, equal_nan=True)


@pytest.mark.gpu
@gpu
def test_cudf_from_arrow_columns_feed_the_kernels():
    cudf = pytest.importorskip("cudf")
    from gpubackfill.candles.synthetic import generate
    from kernels import cpu
    from kernels import cuda as gk

    table = generate("EURUSD", "M1", "2024-01-01", "2024-02-01")
    df = cudf.DataFrame.from_arrow(table)
    got = gk.to_host(gk.rolling_sigma(df["close"].values, 20))
    np.testing.assert_allclose(got, cpu.rolling_sigma(table.column("close").to_numpy(), 20),
                               rtol=1e-12, equal_nan=True)


def test_gpu_check_script_runs_end_to_end_under_the_simulator():
    """The H200 check's logic (correctness table, timings, summary) on tiny
    inputs; the simulator's timings are meaningless, its correctness is not."""
    res = run([str(ROOT / "bench" / "gpu_check.py"), "--simulate"], env={"NUMBA_ENABLE_CUDASIM": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "1. CUDA vs CPU" in out and "2. Kernel throughput" in out and "SUMMARY" in out
    row = next(line for line in out.splitlines() if line.startswith("label mismatches vs CPU"))
    assert row.split()[-1] == "0"
    assert "7. The staging path" in out
    assert any(line.startswith("compute_labels cuda vs its pinned copy") for line in out.splitlines())
    # The dask job's tasks are descriptors (each worker reads its own rows), not the frame.
    row = next(line for line in out.splitlines() if line.startswith("dask job (CPU LocalCluster)"))
    assert row.split()[-1] == "True"
    row = next(line for line in out.splitlines() if line.startswith("dask job: bytes a task"))
    assert int(row.split()[-1].replace(",", "")) < 4 << 10  # the frame alone is 60 KB
