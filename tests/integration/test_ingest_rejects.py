"""``gpubackfill ingest --max-rejects --rejects``: a file with rejected rows
is refused whole unless the limit allows them, every rejected row can be
listed in a file, and the summary says how many were dropped and where."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner
from test_cli import env_for

from gpubackfill.cli import main
from gpubackfill.storage.clickhouse_store import SeriesKey

KEY = SeriesKey("EURUSD", "M1")
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


@pytest.fixture
def cli(settings, monkeypatch):
    for k, v in env_for(settings).items():
        monkeypatch.setenv(k, v)
    runner = CliRunner()
    return lambda *args: runner.invoke(main, ["ingest", *args, "--instrument", "EURUSD",
                                              "--granularity", "M1"], catch_exceptions=False)


def stored(service) -> int:
    """count() of the series' candles, as the store holds them."""
    service.init()
    return service.store.rows(
        f"SELECT count() FROM {service.store.db}.candles WHERE instrument = 'EURUSD' "
        f"AND granularity = 'M1'")[0][0]


def minute(i: int) -> str:
    return f"2024-01-01T{i // 60:02d}:{i % 60:02d}:00Z"


def write_file(tmp_path, n: int, bad: set[int]):
    """``n`` M1 candles, those in ``bad`` with high below close."""
    lines = ["ts,open,high,low,close"]
    for i in range(n):
        lines.append(f"{minute(i)},1.1,{1.0 if i in bad else 1.2},1.0,1.15")
    path = tmp_path / "eurusd.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def one_error_line(r) -> str:
    assert r.exit_code == 2, r.output
    assert r.stdout == "" and r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.output
    return r.stderr


def test_a_file_with_a_rejected_row_is_refused_whole_by_default(cli, service, tmp_path):
    path = write_file(tmp_path, 10, {3})
    line = one_error_line(cli(str(path)))
    assert "1 of 10 rows rejected (10%), more than --max-rejects 0 allows: nothing written" in line
    assert "row 3, line 5 (ts 2024-01-01T00:03:00Z): high is below max(open, close)" in line
    assert "--rejects FILE lists them all" in line
    assert stored(service) == 0 and service.store.changes() == []


def test_under_the_limit_the_good_rows_are_stored_and_the_summary_counts_the_rest(cli, service, tmp_path):
    bad = {2, 5, 7}
    path = write_file(tmp_path, 10, bad)
    r = cli(str(path), "--max-rejects", "3")
    assert r.exit_code == 0, r.output
    assert "read 10 rows: 7 inserted, 0 updated, 0 already present, 3 rejected" in r.stdout
    assert [line.split(" (")[0] for line in r.stdout.splitlines()[1:]] == [
        "  rejected row 2", "  rejected row 5", "  rejected row 7"]
    assert stored(service) == 7


@pytest.mark.parametrize("limit,ok", [("3", True), ("2", False), ("30%", True), ("29.9%", False),
                                      ("100%", True), ("0%", False)])
def test_the_limit_is_a_count_or_a_share_of_the_rows_read(cli, service, tmp_path, limit, ok):
    path = write_file(tmp_path, 10, {2, 5, 7})
    r = cli(str(path), "--max-rejects", limit)
    if ok:
        assert r.exit_code == 0 and "3 rejected" in r.stdout, r.output
        assert stored(service) == 7
    else:
        assert f"3 of 10 rows rejected (30%), more than --max-rejects {limit} allows" in one_error_line(r)
        assert stored(service) == 0


def test_the_rejects_file_lists_every_rejected_row_with_its_line_and_reason(cli, service, tmp_path):
    bad = set(range(5, 65, 2))  # 30 rows, more than the 20 the summary would list
    path = write_file(tmp_path, 100, bad)
    rejects = tmp_path / "rejected.csv"
    r = cli(str(path), "--max-rejects", "30", "--rejects", str(rejects))
    assert r.exit_code == 0, r.output
    assert r.stdout == (f"read 100 rows: 70 inserted, 0 updated, 0 already present, 30 rejected "
                        f"(all listed in {rejects})\n")
    with open(rejects, newline="") as f:
        listed = list(csv.DictReader(f))
    assert [(int(x["row"]), int(x["line"]), x["ts"], x["high"], x["close"], x["reason"]) for x in listed] == [
        (i, i + 2, minute(i), "1", "1.15", "high is below max(open, close)") for i in sorted(bad)]
    assert stored(service) == 70


def test_over_the_limit_the_rejects_file_is_still_written_and_nothing_stored(cli, service, tmp_path):
    path = write_file(tmp_path, 50, set(range(0, 50, 2)))
    rejects = tmp_path / "rejected.csv"
    line = one_error_line(cli(str(path), "--max-rejects", "10%", "--rejects", str(rejects)))
    assert "25 of 50 rows rejected (50%)" in line and f"all listed in {rejects}" in line
    with open(rejects, newline="") as f:
        assert [int(x["line"]) for x in csv.DictReader(f)] == list(range(2, 52, 2))
    assert stored(service) == 0


def test_a_clean_file_with_a_rejects_file_gets_an_empty_list(cli, service, tmp_path):
    rejects = tmp_path / "rejected.csv"
    r = cli(str(write_file(tmp_path, 5, set())), "--rejects", str(rejects))
    assert r.exit_code == 0 and "5 inserted" in r.stdout and "0 rejected\n" in r.stdout, r.output
    assert rejects.read_text().splitlines() == [
        '"row","line","ts","open","high","low","close","volume","reason"']


@pytest.mark.parametrize("args,message", [
    (["--max-rejects", "lots"], "--max-rejects must be a number of rows (0, 25) or a percentage"),
    (["--max-rejects", "150%"], "--max-rejects must be a number of rows"),
    (["--max-rejects", "-1"], "--max-rejects must be a number of rows"),
    (["--rejects", "/no/such/folder/r.csv"], "--rejects /no/such/folder/r.csv: no folder"),
])
def test_bad_reject_options_are_one_error_line(cli, service, tmp_path, args, message):
    r = cli(str(write_file(tmp_path, 5, {1})), *args)
    assert message in one_error_line(r)
    assert stored(service) == 0


def test_the_rejects_file_cannot_be_the_input(cli, service, tmp_path):
    path = write_file(tmp_path, 5, {1})
    before = path.read_text()
    assert "is the file being ingested" in one_error_line(cli(str(path), "--rejects", str(path)))
    assert path.read_text() == before


def test_ingest_table_takes_the_same_limit(service, tmp_path):
    import pyarrow as pa

    from gpubackfill import InvalidCandles

    table = pa.table({"ts": pa.array([T0 + i * 60_000 for i in range(4)], pa.int64()),
                      "open": [1.1] * 4, "high": [1.2, 1.0, 1.2, 1.2], "low": [1.0] * 4,
                      "close": [1.15] * 4})
    service.init()
    with pytest.raises(InvalidCandles, match="1 of 4 rows rejected"):
        service.ingest_table(KEY, table)
    assert stored(service) == 0
    assert service.ingest_table(KEY, table, max_rejects=1).inserted == 3
