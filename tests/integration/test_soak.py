"""Soak: hundreds of chunks through the in-process Dask cluster, in a fresh
process, on this machine's Python, with Dask's profiler at the engine's
setting (off).  On CPython 3.11 before 3.11.12 the profiler's
``sys._current_frames()`` calls deadlock such a run now and then
(gh-106883); ``SOAK_DASK_PROFILER=on`` leaves the profiler on, to see this
test fail on an affected Python.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import make_settings
from test_cli import env_for

pytestmark = [pytest.mark.slow, pytest.mark.integration]

_SOAK = r"""
import json, os, sys
from gpubackfill.engine import cluster as executor
from gpubackfill.service import BackfillService
from gpubackfill.storage.clickhouse_store import SeriesKey
from gpubackfill.candles.synthetic import generate

if os.environ.get("SOAK_DASK_PROFILER") == "on":
    import dask
    # Dask's default, sampling every 10 ms, or faster to see the hang sooner.
    interval = os.environ.get("SOAK_DASK_PROFILER_INTERVAL", "10ms")
    executor.disable_profiler = lambda: dask.config.set({executor.PROFILER_SETTING: True,
                                                         "distributed.worker.profile.interval": interval})
svc = BackfillService()
key = SeriesKey("EURUSD", "M1")
svc.ingest_table(key, generate("EURUSD", "M1", "2024-01-01", "2024-02-01"))
job = svc.create_job("EURUSD", "M1", "2024-01-01", "2024-02-01", chunk_size=100, workers=8)
result = svc.execute(job)
s = svc.job(job).model_dump()
n, uniq = svc.store.label_counts(key, s["label_set"])
print(json.dumps({"status": result.status, "chunks": s["chunks"]["done"], "total": s["candles_total"],
                  "done": s["candles_done"], "rows": n, "unique": uniq,
                  "profiler": executor._worker_facts()[1]}))
"""

# Far above the run's own time here (25 s warm); a hang ends there, inside the 120 s per test.
LIMIT_S = 85


def test_hundreds_of_chunks_in_process_finish_with_exact_rows(tmp_path, redis_socket):
    settings = make_settings(tmp_path / "home", redis_socket)
    env = {**os.environ, **env_for(settings), "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _SOAK], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        # faulthandler answers SIGABRT from C: the stacks come even from a
        # process whose interpreter is deadlocked.
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate(timeout=15)
        pytest.fail(f"the soak run hung for {LIMIT_S} s; its threads:\n{err[-20000:]}")
    assert proc.returncode == 0, err[-5000:]
    got = json.loads(out.strip().splitlines()[-1])
    assert got["status"] == "completed"
    assert got["chunks"] >= 300
    assert got["rows"] == got["unique"] == got["done"] == got["total"] > 0
    assert got["profiler"] is (os.environ.get("SOAK_DASK_PROFILER") == "on")
