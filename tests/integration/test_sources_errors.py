"""A bad source definition: one ``error:`` line naming the source and the
column, exit 2, nothing registered; no user text reaches SQL unchecked."""

from __future__ import annotations

import json

import pytest
from test_cli import cli  # noqa: F401 - the in-process CLI fixture

MAPS = ["--map", "instrument=symbol", "--map", "ts=time", "--map", "open=o", "--map", "high=h",
        "--map", "low=l", "--map", "close=c"]


@pytest.fixture
def table(service):
    service.init()
    db = service.store.db
    service.store.command(f"""
        CREATE TABLE {db}.ohlc (symbol String, time DateTime, o Float32, h Float64, l Decimal(18, 5),
            c Int32, tf String, label String, e Int64) ENGINE = MergeTree ORDER BY symbol""")
    service.store.command(f"INSERT INTO {db}.ohlc VALUES ('EURUSD', '2024-01-02 00:00:00', 1, 2, 0.5, 1, "
                          f"'M1', 'x', 0), ('EURUSD', '2024-01-02 00:01:00', 1, 2, 0.5, 1, 'H7', 'x', 0)")
    return f"{db}.ohlc"


def refused(cli, *args) -> str:  # noqa: F811
    res = cli("source", "add", *args)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    listed = cli("source", "list", "--format", "json")
    assert json.loads(listed.output) == []  # nothing registered
    return lines[0]


def test_an_unknown_table_is_refused(cli, table):  # noqa: F811
    line = refused(cli, "s1", "--from", table + "_nope", *MAPS, "--granularity", "M1")
    assert "source s1" in line and "cannot read" in line


def test_a_missing_column_is_named(cli, table):  # noqa: F811
    line = refused(cli, "s1", "--from", table, *MAPS, "--map", "volume=vol", "--granularity", "M1")
    assert "source s1" in line and "'vol'" in line and "volume=" in line


def test_a_column_of_the_wrong_type_is_named(cli, table):  # noqa: F811
    line = refused(cli, "s1", "--from", table, *MAPS[:-2], "--map", "close=label", "--granularity", "M1")
    assert "source s1" in line and "'label'" in line and "String" in line
    line = refused(cli, "s1", "--from", table, *MAPS[:2], "--map", "ts=e", *MAPS[4:], "--granularity", "M1")
    assert "'e'" in line and "--ts-unit" in line


def test_an_unknown_granularity_in_the_mapped_column_is_named(cli, table):  # noqa: F811
    line = refused(cli, "s1", "--from", table, *MAPS, "--map", "granularity=tf")
    assert "source s1" in line and "'tf'" in line and "'H7'" in line


@pytest.mark.parametrize("where,why", [
    ("symbol = ", "does not parse"),
    ("nosuch = 1", "does not parse"),
    ("1) UNION ALL (SELECT 1", "unbalanced"),
    ("1; DROP TABLE x", "no ';'"),
    ("1 -- )", "no comments"),
])
def test_a_where_that_is_not_one_expression_is_refused(cli, table, where, why):  # noqa: F811
    line = refused(cli, "s1", "--from", table, *MAPS, "--granularity", "M1", "--where", where)
    assert "source s1" in line and why in line


@pytest.mark.parametrize("relation,why", [
    ("x; DROP TABLE y", "give db.table"),
    ("system.one UNION ALL SELECT 1", "give db.table"),
    ("executable('rm -rf /', 'CSV', 'a Int8')", "not allowed"),
    ("file('/x.parquet', 'Parquet') ; SELECT 1", "give db.table"),
    ("file(concat('a', 'b'))", "literals"),
])
def test_a_relation_outside_the_allow_list_is_refused(cli, table, relation, why):  # noqa: F811
    line = refused(cli, "s1", "--from", relation, *MAPS, "--granularity", "M1")
    assert "source s1" in line and why in line


def test_a_good_source_is_listed_shown_checked_and_removed(cli, table):  # noqa: F811
    res = cli("source", "add", "s1", "--from", table, *MAPS, "--granularity", "M1",
              "--where", "symbol = 'EURUSD'")
    assert res.exit_code == 0, res.output
    assert "derives" in res.output and "H1" in res.output
    shown = json.loads(cli("source", "show", "s1").output)
    assert shown["columns"]["ts"] == "time" and shown["types"]["l"] == "Decimal(18, 5)"
    checked = cli("source", "check", "s1", "--format", "json")
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.output)[0]["candles"] == 2
    again = cli("source", "add", "s1", "--from", table, *MAPS, "--granularity", "M1")
    assert again.exit_code == 2 and "exists already" in again.output
    assert cli("source", "remove", "s1").exit_code == 0
    assert json.loads(cli("source", "list", "--format", "json").output) == []
