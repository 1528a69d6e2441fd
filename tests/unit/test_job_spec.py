"""The job's spec, built once from a request and read back from its Redis
record; and the planning rules in ``jobs/plan.py``."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpubackfill import labels as registry
from gpubackfill.errors import InvalidInput
from gpubackfill.jobs import plan
from gpubackfill.jobs.spec import EVER, JobSpec, make_spec
from gpubackfill.storage.redis.jobs import _enc, decode_fields

TB = "enhanced_triple_barrier"


def _through_redis(record: dict) -> dict:
    """What the state stores and reads back (every field as text in a hash)."""
    return decode_fields({k: _enc(v) for k, v in record.items()})


def test_a_spec_survives_its_record_and_redis_unchanged():
    spec = make_spec("EURUSD,GBPUSD", ["M5", "H1"], "2024-01-01", "2024-02-01",
                     [TB, "mfe_mae", "trend_scanning"],
                     {TB: {"horizon": 12, "pt": "2.5"}, "trend_scanning": {"min_window": 6, "max_window": 30}},
                     500, 4, "high", True, "cuda", 2)
    spec = replace(spec, kind="update")
    back = JobSpec.from_record(_through_redis(spec.to_record()))
    assert back == spec
    assert back.resolved == spec.resolved and back.params[TB]["horizon"] == 12
    assert back.label_set == registry.label_set_id(back.resolved)


def test_a_record_from_before_a_field_existed_reads_as_its_default():
    spec = make_spec("EURUSD", "M5", "2024-01-01", "2024-01-02", None, None, 100, 3)
    record = _through_redis(spec.to_record())
    for name in ("min_workers", "kind", "instruments", "granularities", "series"):
        del record[name]
    old = JobSpec.from_record(record)
    assert old.series == (("EURUSD", "M5"),) and old.kind == "backfill" and old.min_workers == 3
    assert old == spec


def test_a_stored_spec_is_taken_as_stored_and_an_unknown_label_keeps_why(monkeypatch):
    spec = make_spec("EURUSD", "M5", "2024-01-01", "2024-01-02", [TB], {TB: {"horizon": 7}}, 100, 1)
    calls = []
    real = registry.LabelSpec.resolve
    monkeypatch.setattr(registry.LabelSpec, "resolve", lambda self, given: calls.append(1) or real(self, given))
    record = _through_redis(spec.to_record())
    assert JobSpec.from_record(record) == spec and calls == []   # resolved when made, not again
    del record["params"][TB]["pt"]                # stored before the label had pt: its default
    assert JobSpec.from_record(record).params[TB]["pt"] == registry.get(TB).resolve({})["pt"]
    record["labels"] = [TB, "no_such_label"]      # a label since removed: every chunk fails with why
    bad = JobSpec.from_record(record)
    assert "no_such_label" in bad.invalid and "invalid" not in bad.to_record()


def test_typed_parameters_and_their_text_make_the_same_spec():
    typed = make_spec("EURUSD", "M5", None, None, [TB], {TB: {"pt": 2.5, "horizon": 12}}, None, 1)
    text = make_spec("EURUSD", "M5", None, None, [TB], {TB: {"pt": "2.5", "horizon": "12"}}, None, 1)
    assert typed == text and (typed.start_ms, typed.end_ms) == EVER and typed.chunk_size == 0


def test_one_chunk_size_rule():
    # asked > BATCH_CHUNK_SIZE > the largest automatic size within the memory
    # budget that gives each worker two chunks of the job's candles
    assert plan.chunk_size(700, 8, 10**9, fixed=5_000) == 700
    assert plan.chunk_size(None, 8, 10**9, fixed=5_000) == 5_000
    assert plan.chunk_size(None, 1, None) == 1_000_000
    assert plan.chunk_size(None, 2, 10**6) == 250_000           # 1M each would idle a worker
    assert plan.chunk_size(None, 2, 10**5) == 100_000           # the floor
    assert plan.chunk_size(None, 8, None, memory_limit=10**9) == 100_000
    with pytest.raises(InvalidInput, match="chunk size"):
        make_spec("EURUSD", "M5", None, None, None, None, 0 - 1, 1)


def test_runs_from_the_marked_rows():
    # 10 candles at ts 100, 200, ..., 1000; runs of 4 with a halo of 1 back, 2 ahead
    ts_at = {i: i * 100 for i in range(1, 11)}
    runs = plan.series_runs(10, ts_at, 4, 1, 2, 1001)
    assert runs == [(100, 500, 4, 0, 600), (500, 900, 4, 400, 1000), (900, 1001, 2, 800, 0)]
    assert plan.series_runs(3, {1: 100}, 4, 1, 2, 1001) == [(100, 1001, 3, 0, 0)]  # one chunk


def test_a_backfill_skips_the_series_without_runs():
    spec = make_spec("EURUSD,GBPUSD", "M5", None, None, None, None, 10, 1)
    planned = plan.backfill(spec, list(spec.series), {("GBPUSD", "M5"): [(0, 5, 5)]})
    assert planned.spec.series == (("GBPUSD", "M5"),) and planned.skipped == ["EURUSD M5"]
    assert plan.backfill(spec, list(spec.series), {}) is None
    assert "none of EURUSD M5, GBPUSD M5 has candles" in plan.no_candles(spec, list(spec.series))
