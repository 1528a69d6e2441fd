"""The benchmark script keeps working (its numbers are not asserted: timed
assertions do not belong in tests)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_kernel_benchmark_quick_run_agrees_with_pandas_reference():
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "labels_speed.py"), "--quick"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for section in ("1. Throughput", "2. Horizon scaling", "3. pandas reference", "4. Targets"):
        assert section in out
    # The pandas reference and compute_labels must agree on every sampled event.
    assert "unexplained                                     0" in out
    assert "pandas agreement: unexplained mismatches" in out and "PASS" in out


def test_backfill_benchmark_quick_run_passes_its_own_correctness_check():
    """The end-to-end benchmark runs (two rounds, the floor with threads) and
    the job it measured wrote every candle's labels exactly once."""
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "backfill.py"), "--quick", "--rounds", "2"],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    for section in ("1. Setup", "2. Backfill jobs", "2b. Every round", "3. Where the time goes",
                    "3b. The floor", "4. Correctness", "5. Targets"):
        assert section in out
    assert "N threads" in out.split("3b. The floor")[1].split("4. Correctness")[0]
    # The headline is the job against chDB's sequential floor, and the
    # job's budget comes from its own stage record: one line of each per
    # chunk size, with numbers.
    headline = out.split("2a. Headline and budget")[1].split("3. Where the time goes")[0]
    for size in ("10k", "100k"):
        assert re.search(rf"headline at {size}: the job at \d+% of chDB's sequential floor "
                         rf"\(plan \+ execute [\d.]+ s against read [\d.]+ s \+ insert [\d.]+ s", headline)
        budget = re.search(rf"budget at {size}: read ([\d.]+) s .*compute ([\d.]+) s .*insert ([\d.]+) s "
                           rf".*record ([\d.]+) s .*idle ([\d.]+) s", headline)
        assert budget, headline
        read, compute, insert, record, idle = map(float, budget.groups())
        # Each is what the job recorded: every chunk read, computed, wrote
        # and was recorded.
        assert read > 0 and compute > 0 and insert > 0 and record > 0
    assert "3c. The sequential floor" in out
    # The floor's read is taken twice, the faster counting.
    seq = out.split("3c. The sequential floor")[1]
    assert "read: query Arrow, read in place " in seq and "read: query Arrow, read in place, again" in seq
    assert "headline: share of the sequential floor" in out.split("5. Targets")[1]
    correctness = out.split("4. Correctness")[1].split("5. Targets")[0]
    assert "300,000" in correctness
    assert [ln.split()[-1] for ln in correctness.splitlines() if ln.startswith("result")] == ["PASS"]


def test_cluster_benchmark_quick_run_checks_every_mode():
    """The cluster benchmark runs its three modes (in-process, threads and
    worker processes over HTTP), one and two jobs each, and every run wrote
    each candle's labels exactly once (it fails otherwise)."""
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "cluster.py"), "--candles", "2e5",
                          "--repeats", "1"], capture_output=True, text=True, timeout=110)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    rows = [ln.split() for ln in out.splitlines() if ln.startswith(("in-process ", "threads/HTTP ", "processes/HTTP "))
            and ("job " in ln or "jobs " in ln)]
    assert sorted((r[0], r[1] + " " + r[2]) for r in rows) == sorted(
        (m, s) for m in ("in-process", "threads/HTTP", "processes/HTTP") for s in ("1 job", "2 jobs"))
    # Over HTTP the server's query log counts each chunk's statements.
    assert all(float(r[10]) >= 2 for r in rows if r[0] != "in-process")
    assert "every run's label rows == candles == distinct keys (no FINAL): PASS" in out
    assert re.search(r"labels [\d.]+ bytes a row compressed", out)


def test_merge_cost_benchmark_writes_every_row_under_both_merge_policies():
    """bench/merge_cost.py writes its chunks under the engine's merge policy
    and ClickHouse's default, side by side; it checks every row is there
    after the final merge (and fails when one is not)."""
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "merge_cost.py"), "--chunks", "4",
                          "--rows", "20000", "--repeats", "1"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [ln for ln in res.stdout.splitlines() if re.match(r"(engine|ClickHouse default)", ln)]
    assert [ln.split("  ")[0] for ln in rows] == ["engine (merge at ten parts)", "ClickHouse default selector"]
    for ln in rows:
        # run, 2 x (s, CPU s), parts left, final merge s and CPU s, two per-row costs
        assert len(re.findall(r"\b\d+(?:\.\d+)?\b", ln)) >= 10, ln
