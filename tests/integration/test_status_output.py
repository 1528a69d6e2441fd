"""What `status`, `series` and a run's summary say: the truth about a stopped
job, every label's NULL tail, counts that read right."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_cli import env_for

from gpubackfill.candles.synthetic import generate
from gpubackfill.cli import main
from gpubackfill.storage.clickhouse_store import SeriesKey


@pytest.fixture
def cli(settings, monkeypatch):
    for k, v in env_for(settings).items():
        monkeypatch.setenv(k, v)
    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return run


def _trailing_null_rows(table, columns) -> int:
    """Rows at the end of the labels in which some label column is NULL."""
    rows = table.select(columns).to_pylist()
    n = 0
    for row in reversed(rows):
        if all(v is not None for v in row.values()):
            break
        n += 1
    return n


def test_series_counts_every_labels_null_tail(service, cli, tmp_path):
    # No triple barrier: its flags were the only NULLs counted.
    service.ingest_table(SeriesKey("EURUSD", "H1"), generate("EURUSD", "H1", "2024-01-01", "2024-03-01"))
    r = cli("start", "--instrument", "EURUSD", "--granularity", "H1", "--start-date", "2024-01-01",
            "--end-date", "2024-03-01", "--labels", "mfe_mae", "fixed_horizon",
            "--param", "mfe_mae.horizon=30", "--param", "fixed_horizon.horizon=10", "--chunk-size", "250")
    assert r.exit_code == 0, r.output
    out = tmp_path / "labels.parquet"
    assert cli("export", "--instrument", "EURUSD", "--granularity", "H1", "-o", str(out)).exit_code == 0
    labels = pq.read_table(out)
    tail = _trailing_null_rows(labels, [c for c in labels.column_names if c != "ts"])
    assert tail >= 30  # mfe_mae's horizon
    rows = json.loads(cli("series", "--format", "json").output)
    assert rows[0]["sets"][0]["incomplete"] == tail
    assert f"{tail:,}" in cli("series").output
