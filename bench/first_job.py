"""The first job in a process against the next ones.

Three identical jobs in one process (``--candles`` BTCUSD M1 candles, 1M
chunks, 2 workers, all three labels), after setup and a small warm-up job,
the label tables emptied before each.  For each it prints wall time, the
process's user and system CPU, its minor page faults and CPU per thread
group (chDB's query threads, Dask's workers, merges).  Run from the
repository root::

    python bench/first_job.py --candles 1e7
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import profile_job as pj  # noqa: E402  (bench/profile_job.py: thread groups, dates)

import gpubackfill  # noqa: E402
from gpubackfill.config import Settings  # noqa: E402
from gpubackfill.labels import DEFAULT_LABELS  # noqa: E402
from gpubackfill.service import BackfillService  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candles", default="1e7")
    p.add_argument("--jobs", type=int, default=3)
    args = p.parse_args()
    n = int(float(args.candles))
    gpubackfill.keep_freed_memory()
    svc = BackfillService(Settings.from_env({"GPUBACKFILL_HOME": tempfile.mkdtemp()}, dotenv=False))
    store = svc.store
    labels = list(DEFAULT_LABELS)
    set_id = pj.setup(svc, n, labels, 2)
    print(f"command: {' '.join(sys.argv)}")
    for k in range(args.jobs):
        pj.empty_labels(store, set_id)
        os.sync()
        before = pj._threads()
        cpu0, wall0 = os.times(), time.perf_counter()
        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        job = svc.create_job("BTCUSD", "M1", pj._dt(pj.START_MS), pj._dt(pj.START_MS + n * pj.STEP_MS),
                             labels, chunk_size=1_000_000, workers=2)
        status = svc.execute(job).status
        wall = time.perf_counter() - wall0
        cpu1 = os.times()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
        after = pj._threads()
        names = {th.native_id: th.name for th in threading.enumerate()}
        groups: dict[str, float] = defaultdict(float)
        for tid, (name, secs) in after.items():
            was = before.get(tid)
            spent = secs - (was[1] if was and was[0] == name else 0.0)
            if spent > 0.005:
                groups[pj._group(names[tid].rstrip("0123456789-_") if tid in names else name)] += spent
        top = ", ".join(f"{g} {v:.2f}" for g, v in sorted(groups.items(), key=lambda kv: -kv[1])[:4])
        print(f"job {k + 1} ({status}): wall {wall:.2f} s; CPU user {cpu1.user - cpu0.user:.2f} s, "
              f"system {cpu1.system - cpu0.system:.2f} s; minor page faults {faults:,}; {top}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
