"""compute_labels' input handling: frames it accepts, and every kind of bad
input rejected with a ValueError that names the problem."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import random_walk

from gpubackfill import BackendUnavailable, InvalidCandles, InvalidLabelSpec, compute_labels
from gpubackfill.candles.frames import defect_codes, describe, to_series

L = ["mfe_mae"]


@pytest.fixture
def c():
    return random_walk(200, seed=2)


def test_pandas_arrow_and_datetime_index_give_the_same_table(c):
    df = pd.DataFrame(c)
    a = compute_labels(df, L, output="arrow")
    b = compute_labels(pa.Table.from_pandas(df, preserve_index=False), L, output="arrow")
    idx = df.drop(columns="ts").set_index(pd.to_datetime(df["ts"], unit="ms", utc=True))
    d = compute_labels(idx.rename(columns=str.upper), L, output="arrow")  # names match case-insensitively
    assert a.equals(b) and a.equals(d)
    assert a.column("ts").type == pa.int64()


def test_timestamp_columns_are_converted_to_ms():
    c = random_walk(50, seed=3)
    df = pd.DataFrame(c)
    df["ts"] = pd.to_datetime(df["ts"], unit="ms").dt.tz_localize("Europe/Zurich")
    out = compute_labels(df, L, output="arrow")
    # Local wall times are converted to UTC milliseconds.
    assert out.column("ts")[0].as_py() == c["ts"][0] - 3_600_000 * 2


@pytest.mark.parametrize("mutate,row,words", [
    (lambda c: c["high"].__setitem__(17, c["close"][17] * 0.9), 17, "high is below"),
    (lambda c: c["low"].__setitem__(30, c["open"][30] * 1.1), 30, "low is above"),
    (lambda c: c["close"].__setitem__(5, np.nan), 5, "NaN"),
    (lambda c: c["open"].__setitem__(9, np.inf), 9, "infinite"),
    (lambda c: (c["low"].__setitem__(40, -1.0)), 40, "zero or negative"),
    (lambda c: c["ts"].__setitem__(60, c["ts"][59]), 60, "duplicate"),
    (lambda c: c["ts"].__setitem__(80, c["ts"][10]), 80, "unsorted"),
    (lambda c: c["volume"].__setitem__(12, -5.0), 12, "volume"),
])
def test_malformed_candles_raise_naming_the_first_bad_row(c, mutate, row, words):
    mutate(c)
    with pytest.raises(ValueError, match=rf"row {row}\b.*{words}") as err:
        compute_labels(pd.DataFrame(c), L)
    assert isinstance(err.value, InvalidCandles) and err.value.row == row


def test_drop_mode_drops_exactly_the_bad_rows(c):
    c["high"][17] = c["close"][17] * 0.9
    c["ts"][60] = c["ts"][59]
    out = compute_labels(pd.DataFrame(c), L, on_invalid="drop", output="arrow")
    assert out.num_rows == 198
    kept = out.column("ts").to_numpy()
    assert c["ts"][17] not in kept and np.all(np.diff(kept) > 0)


def test_defect_codes_report_every_bad_row_with_reasons(c):
    c["high"][3] = c["close"][3] * 0.5
    c["close"][4] = 0.0
    s = to_series(pd.DataFrame(c))
    codes = defect_codes(s)
    assert list(np.flatnonzero(codes)) == [3, 4]
    assert "high is below" in describe(codes[3])
    assert describe(codes[4]) == "a price is zero or negative; low is above min(open, close)"


@pytest.mark.parametrize("candles,words", [
    (pd.DataFrame({"ts": [1, 2], "open": [1.0, 1.0], "high": [1.0, 1.0], "low": [1.0, 1.0]}),
     "lack column.*close"),
    (pd.DataFrame({"open": [1.0], "high": [1.0], "low": [1.0], "close": [1.0]}), "'ts' column"),
    (pd.DataFrame({"ts": [1], "open": ["x"], "high": [1.0], "low": [1.0], "close": [1.0]}),
     "open must be numeric"),
    ([1, 2, 3], "DataFrame or a pyarrow Table"),
])
def test_unusable_frames_are_rejected(candles, words):
    with pytest.raises(InvalidCandles, match=words):
        compute_labels(candles, L)


@pytest.mark.parametrize("labels,params,words", [
    (["triple_barrier"], None, "unknown label 'triple_barrier'.*enhanced_triple_barrier"),
    ([], None, "no labels"),
    (["mfe_mae", "mfe_mae"], None, "twice"),
    (["mfe_mae"], {"mfe_mae": {"window": 5}}, r"unknown parameter\(s\) for mfe_mae: window"),
    (["mfe_mae"], {"vol_scaled_return": {}}, "not requested"),
    (["mfe_mae"], {"mfe_mae": {"horizon": 0}}, "mfe_mae.horizon must be >= 1"),
    (["mfe_mae"], {"mfe_mae": {"horizon": 2.5}}, "must be an integer"),
    (["mfe_mae"], {"mfe_mae": {"horizon": True}}, "must be an integer"),
    (["enhanced_triple_barrier"], {"enhanced_triple_barrier": {"tie": "both"}}, "tie must be one of"),
    (["enhanced_triple_barrier"], {"enhanced_triple_barrier": {"pt": -1}}, "pt must be >="),
    (["enhanced_triple_barrier"], {"enhanced_triple_barrier": {"sl": float("nan")}}, "finite"),
    (["enhanced_triple_barrier"], {"enhanced_triple_barrier": {"vol_span": 1}}, "vol_span must be >= 2"),
    (["vol_scaled_return"], {"vol_scaled_return": {"horizons": []}}, "at least one"),
    (["vol_scaled_return"], {"vol_scaled_return": {"horizons": [5, 5]}}, "repeated"),
])
def test_bad_label_requests_raise_value_error(c, labels, params, words):
    with pytest.raises(InvalidLabelSpec, match=words):
        compute_labels(pd.DataFrame(c), labels, params)


def test_parameters_given_as_text_are_accepted(c):
    df = pd.DataFrame(c)
    a = compute_labels(df, ["vol_scaled_return"], {"vol_scaled_return": {"horizons": "20,1", "vol_span": "30"}},
                       output="arrow")
    b = compute_labels(df, ["vol_scaled_return"], {"vol_scaled_return": {"horizons": [1, 20], "vol_span": 30}},
                       output="arrow")
    assert a.equals(b) and a.column_names == ["ts", "vsr_1", "vsr_20", "sigma"]


def test_cuda_backend_fails_clearly_and_unknown_backend_too(c):
    with pytest.raises(BackendUnavailable, match="backend 'cuda' is not available"):
        compute_labels(pd.DataFrame(c), L, backend="cuda")
    with pytest.raises(BackendUnavailable, match="unknown backend 'gpu'"):
        compute_labels(pd.DataFrame(c), L, backend="gpu")
    assert compute_labels(pd.DataFrame(c), L, backend="auto").equals(compute_labels(pd.DataFrame(c), L))


def test_empty_and_one_row_series(c):
    one = pd.DataFrame({k: v[:1] for k, v in c.items()})
    out = compute_labels(one, ["enhanced_triple_barrier", "vol_scaled_return", "mfe_mae"], output="arrow")
    assert out.num_rows == 1 and out.column("tb_flags")[0].as_py() == 8
    empty = pd.DataFrame({k: v[:0] for k, v in c.items()})
    assert compute_labels(empty, ["enhanced_triple_barrier", "mfe_mae"], output="arrow").num_rows == 0


@pytest.mark.parametrize("kwargs,words", [
    ({"on_invalid": "ignore"}, "on_invalid must be 'raise' or 'drop'"),
    ({"params": [1]}, "params must map label names"),
    ({"labels": 5}, "labels must be a name or a list of names"),
])
def test_every_caller_mistake_is_an_invalid_input(c, kwargs, words):
    from gpubackfill import InvalidInput

    args = {"labels": L, **kwargs}
    with pytest.raises(InvalidInput, match=words):
        compute_labels(pd.DataFrame(c), args.pop("labels"), **args)
