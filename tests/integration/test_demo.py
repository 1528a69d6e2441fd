"""`gpubackfill demo` next to a user's own data, run again, and skipped work in summaries."""

from __future__ import annotations

import json

from test_cli import cli, csv_file  # noqa: F401 - fixtures


def test_a_run_that_skips_every_chunk_reports_them_as_skipped(cli, csv_file):  # noqa: F811
    path, n = csv_file
    cli("ingest", str(path), "--instrument", "EURUSD", "--granularity", "M15")
    args = ("start", "--instrument", "EURUSD", "--granularity", "M15", "--start-date", "2024-01-01",
            "--end-date", "2024-02-29", "--labels", "mfe_mae", "--chunk-size", "1000")
    r = cli(*args)
    assert r.exit_code == 0 and f"{n:,} candles computed" in r.output and "skipped" not in r.output
    r = cli(*args)
    assert r.exit_code == 0, r.output
    job = r.output.split()[1]
    s = json.loads(cli("status", job, "--format", "json").output)
    assert s["candles_done"] == s["candles_skipped"] == n and s["throughput_per_min"] == 0
    assert s["chunks_total"] > 1
    assert "nothing to compute, 0 label rows written" in r.output and "candles/min" not in r.output
    assert f"{n:,} candles skipped in {s['chunks_total']} chunks" in r.output
