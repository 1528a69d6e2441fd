"""The training-set tools against plain oracles written from the contract
(LABELS.md, "Event end and purged cross-validation"): ``event_end``,
``PurgedKFold`` (also inside scikit-learn's searches) and
``sequential_bootstrap`` (the AFML indicator-matrix algorithm, and exact
rational arithmetic to arbitrate)."""

from __future__ import annotations

import re

import numpy as np
import oracle_training as oracle
import pandas as pd
import pyarrow as pa
import pytest
from conftest import random_walk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpubackfill import InvalidInput, PurgedKFold, compute_labels, event_end, sequential_bootstrap

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MINUTE = 60_000


# ---------------------------------------------------------------- event_end


@st.composite
def exits(draw):
    """(ts int64 ms with gaps, exit bars as floats with NaN for NULL)."""
    n = draw(st.integers(0, 40))
    steps = draw(st.lists(st.sampled_from([1, 1, 1, 2, 60]), min_size=n, max_size=n))
    ts = 1_700_000_000_000 + np.cumsum(np.array(steps, dtype=np.int64)) * MINUTE
    bars = [draw(st.one_of(st.none(), st.integers(0, n - 1 - t))) for t in range(n)]
    return ts, np.array([np.nan if b is None else b for b in bars], dtype=np.float64)


def _nulls(values) -> list:
    return [None if pd.isna(v) else v for v in values]


@PROPERTY
@given(exits())
def test_event_end_equals_the_oracle_for_every_input_type(case):
    ts, bars = case
    want = oracle.event_end(ts.tolist(), bars.tolist())
    valid = np.array([w is not None for w in want], dtype=bool)
    as_ms = [None if w is None else int(w) for w in want]
    stamps = [None if w is None else pd.Timestamp(w, unit="ms", tz="UTC") for w in want]
    int32_bars = pa.array(bars, from_pandas=True).cast(pa.int32())

    got = event_end(ts, bars)  # numpy integers: a masked int64 array
    assert isinstance(got, np.ma.MaskedArray) and got.dtype == np.int64
    assert np.array_equal(np.ma.getmaskarray(got), ~valid)
    assert got.compressed().tolist() == [w for w in as_ms if w is not None]

    got = event_end(ts.astype("datetime64[ms]"), bars)
    assert got.dtype == np.dtype("datetime64[ms]")
    assert [None if np.isnat(v) else int(v.astype("int64")) for v in got] == as_ms

    got = event_end(pd.Series(ts, index=ts + 7), pd.Series(bars).astype("Int32"))
    assert str(got.dtype) == "Int64" and (got.index == ts + 7).all()
    assert _nulls(got.tolist()) == as_ms

    series = pd.Series(pd.to_datetime(ts, unit="ms", utc=True), name="ts")
    got = event_end(series, bars)
    assert got.dtype == series.dtype and got.name == "ts"
    assert _nulls(got.tolist()) == stamps

    got = event_end(pa.array(ts), int32_bars)
    assert isinstance(got, pa.Array) and got.type == pa.int64() and got.to_pylist() == as_ms

    typed = pa.chunked_array([pa.array(ts).cast(pa.timestamp("ms", tz="UTC"))])
    got = event_end(typed, pa.chunked_array([int32_bars]))
    assert isinstance(got, pa.ChunkedArray) and got.type == typed.type
    assert got.cast(pa.int64()).to_pylist() == as_ms


def test_event_end_of_compute_labels_output_is_the_exit_bars_timestamp():
    c = random_walk(600, seed=3, vol=2e-3)
    ts = 1_700_000_000_000 + np.arange(600, dtype=np.int64) * MINUTE
    ts[300:] += 2 * 24 * 3600 * 1000  # a weekend: t1 is the exit bar's own ts, not t0 + bars
    candles = pd.DataFrame({"ts": ts, **{k: c[k] for k in ("open", "high", "low", "close")}})
    params = {"enhanced_triple_barrier": {"vol_span": 20, "horizon": 24}}
    table = compute_labels(candles, ["enhanced_triple_barrier"], params, output="arrow")
    bars = table["tb_exit_bars"].to_pylist()
    got = event_end(table["ts"], table["tb_exit_bars"]).to_pylist()
    assert got == oracle.event_end(ts.tolist(), bars)
    # The notebook form: a pandas frame in, nullable Int32 exit bars out.
    frame = compute_labels(candles, ["enhanced_triple_barrier"], params)
    t1 = event_end(frame["ts"], frame["tb_exit_bars"])
    assert [None if pd.isna(v) else int(v) for v in t1] == got
    assert any(b is None for b in bars) and any(b is not None for b in bars)
    crossing = [t for t in range(290, 300) if bars[t] is not None and t + bars[t] >= 300]
    assert crossing and all(got[t] - ts[t] > bars[t] * MINUTE for t in crossing)


@pytest.mark.parametrize("ts, bars, message", [
    (np.arange(5), np.ones(4), "ts has 5 rows but tb_exit_bars has 4"),
    (np.arange(5), [1, 1, 1, 1, 1], "tb_exit_bars is 1 at row 4, past the end of ts (5 rows)"),
    (np.arange(5), [1, 9, np.nan, 1, np.nan], "tb_exit_bars is 9 at row 1, past the end"),
    (np.arange(5), [1, -1, 1, 1, np.nan], "tb_exit_bars is -1 at row 1: an exit cannot come before its row"),
    (np.arange(5), [1, 1.5, 1, 1, np.nan], "tb_exit_bars must be whole numbers: row 1 is 1.5"),
    (np.arange(5), ["1", "a", "1", "1", None], "tb_exit_bars must be integers"),
    (np.arange(5), pd.Series([True] * 5), "tb_exit_bars must be integers, got dtype bool"),
    (np.arange(5), pa.array(["x"] * 5), "tb_exit_bars must be integers, got Arrow type string"),
    (np.arange(5.0), [1, 1, 1, 1, np.nan], "ts must be int64 epoch milliseconds or timestamps, got float64"),
    (pa.array([0, None, 2]), [1, 1, np.nan], "ts is NULL at row 1"),
    (np.array(["2024-01-01", "NaT"], dtype="datetime64[ms]"), [np.nan, np.nan], "ts is NULL at row 1"),
    (np.zeros((2, 2), dtype=np.int64), [1, 1], "ts must be one-dimensional"),
])
def test_event_end_rejects_bad_input(ts, bars, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        event_end(ts, bars)


# -------------------------------------------------------------- PurgedKFold


@st.composite
def spans(draw):
    """(t0 sorted with ties, t1 >= t0, n_splits, embargo)."""
    n = draw(st.integers(2, 50))
    t0 = np.cumsum(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))).astype(np.int64)
    t1 = t0 + np.array(draw(st.lists(st.integers(0, 12), min_size=n, max_size=n)), dtype=np.int64)
    n_splits = draw(st.integers(2, n))
    embargo = draw(st.one_of(st.just(0.0), st.floats(0.0, 0.99)))
    return t0, t1, n_splits, embargo


def _splits(cv, n) -> list[tuple[list[int], list[int]]]:
    out = []
    for train, test in cv.split(np.zeros((n, 2))):
        assert train.dtype == np.int64 and test.dtype == np.int64
        out.append((train.tolist(), test.tolist()))
    return out


@PROPERTY
@given(spans())
def test_purged_kfold_equals_the_oracle(case):
    t0, t1, n_splits, embargo = case
    cv = PurgedKFold(n_splits, t1=pd.Series(t1, index=t0), embargo=embargo)
    assert cv.get_n_splits() == n_splits
    assert _splits(cv, len(t0)) == oracle.purged_kfold(t0.tolist(), t1.tolist(), n_splits, embargo)


@pytest.mark.parametrize("tz", [None, "UTC", "America/New_York"])
def test_purged_kfold_on_timestamps_equals_it_on_their_milliseconds(tz):
    rng = np.random.default_rng(7)
    ms = 1_700_000_000_000 + np.cumsum(rng.integers(0, 3, 300)) * MINUTE
    end = ms + rng.integers(0, 30, 300) * MINUTE
    t0 = pd.to_datetime(ms, unit="ms", utc=tz is not None)
    t1 = pd.to_datetime(end, unit="ms", utc=tz is not None)
    if tz is not None:
        t0, t1 = t0.tz_convert(tz), t1.tz_convert(tz)
    got = _splits(PurgedKFold(7, t1=pd.Series(t1, index=t0), embargo=0.02), 300)
    assert got == oracle.purged_kfold(ms.tolist(), end.tolist(), 7, 0.02)


def _dataset(n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = (X[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
    t0 = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")
    t1 = pd.Series(t0[np.minimum(np.arange(n) + rng.integers(1, 12, n), n - 1)], index=t0)
    return X, y, t1


def test_purged_kfold_in_cross_val_score_uses_the_purged_splits():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    X, y, t1 = _dataset()
    cv = PurgedKFold(n_splits=5, t1=t1, embargo=0.01)
    scores = cross_val_score(LogisticRegression(), X, y, cv=cv)
    want = []
    for train, test in oracle.purged_kfold(t1.index.asi8.tolist(), pd.DatetimeIndex(t1).asi8.tolist(),
                                           5, 0.01):
        assert len(train) < len(X) - len(test)  # something was purged
        model = LogisticRegression().fit(X[train], y[train])
        want.append(model.score(X[test], y[test]))
    assert scores.tolist() == want


def test_purged_kfold_in_grid_search_cv():
    from sklearn.model_selection import GridSearchCV
    from sklearn.tree import DecisionTreeClassifier

    X, y, t1 = _dataset(seed=1)
    search = GridSearchCV(DecisionTreeClassifier(random_state=0), {"max_depth": [1, 2, 4]},
                          cv=PurgedKFold(n_splits=4, t1=t1, embargo=0.02))
    search.fit(pd.DataFrame(X), pd.Series(y))
    folds = oracle.purged_kfold(t1.index.asi8.tolist(), pd.DatetimeIndex(t1).asi8.tolist(), 4, 0.02)
    for depth_i, depth in enumerate([1, 2, 4]):
        for k, (train, test) in enumerate(folds):
            model = DecisionTreeClassifier(random_state=0, max_depth=depth).fit(X[train], y[train])
            assert search.cv_results_[f"split{k}_test_score"][depth_i] == model.score(X[test], y[test])
    assert search.best_params_["max_depth"] in (1, 2, 4)


def _series(t0, t1):
    return pd.Series(t1, index=t0)


@pytest.mark.parametrize("kwargs, message", [
    ({"t1": _series([0, 1, 2], [1.0, np.nan, 3.0])}, "t1 is NULL at row 1 (t0 = 1)"),
    ({"t1": _series([0, 1, 2], [1, 0, 3])}, "t1 is before its t0 at row 1: t0 = 1, t1 = 0"),
    ({"t1": _series([0, 2, 1], [1, 3, 3])}, "t1's index (t0) must be sorted: row 2 (1) comes before row 1 (2)"),
    ({"t1": _series([0.0, np.nan, 2.0], [1, 3, 3])}, "t1's index (t0) is NULL at row 1"),
    ({"t1": _series([0, 1, 2], [1, 2, 3]), "embargo": 1.0}, "embargo must be a fraction of the rows in [0, 1)"),
    ({"t1": _series([0, 1, 2], [1, 2, 3]), "embargo": -0.1}, "embargo must be a fraction"),
    ({"t1": _series([0, 1, 2], [1, 2, 3]), "n_splits": 1}, "n_splits must be at least 2, got 1"),
    ({"t1": _series([0, 1, 2], [1, 2, 3]), "n_splits": 2.5}, "n_splits must be an integer"),
    ({"t1": [1, 2, 3]}, "t1 must be a pandas Series"),
    ({}, "PurgedKFold needs t1="),
    ({"t1": _series([0, 1, 2], pd.to_datetime([1, 2, 3], unit="s"))}, "t1 and its index t0 must be of one kind"),
    ({"t1": _series(pd.to_datetime([1, 2, 3], unit="s"), pd.to_datetime([1, 2, 3], unit="s", utc=True))},
     "t1 and its index t0 must be of one kind"),
    ({"t1": _series([0, 1, 2], ["a", "b", "c"])}, "t1 must be timestamps or numbers"),
])
def test_purged_kfold_rejects_bad_input(kwargs, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        PurgedKFold(**kwargs)


@pytest.mark.parametrize("n_splits, rows, message", [
    (2, 4, "X has 4 rows but t1 has 3: give t1 one entry per row of X"),
    (4, 3, "n_splits=4 is more than the 3 rows"),
])
def test_purged_kfold_split_rejects_bad_input(n_splits, rows, message):
    cv = PurgedKFold(n_splits, t1=_series([0, 1, 2], [1, 2, 3]))
    with pytest.raises(InvalidInput, match=re.escape(message)):
        cv.split(np.zeros((rows, 1)))  # raised at the call, before any fold


# ---------------------------------------------------- sequential_bootstrap


def _events(seed: int, n: int, horizon: int = 24):
    """Triple-barrier events: row t covers t + 1 .. t + exit bars."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return t + 1, t + rng.integers(1, horizon + 1, n)


@pytest.mark.parametrize("seed, n, horizon", [(0, 1, 5), (1, 2, 1), (2, 30, 5), (3, 80, 24), (4, 120, 24),
                                              (5, 150, 3), (6, 60, 60)])
def test_sequential_bootstrap_equals_the_afml_indicator_matrix_algorithm(seed, n, horizon):
    starts, ends = _events(seed, n, horizon)
    got = sequential_bootstrap(starts, ends, random_state=seed)
    assert got.dtype == np.int64 and len(got) == n
    assert got.tolist() == oracle.sequential_bootstrap(starts, ends, random_state=seed)


@st.composite
def event_sets(draw):
    """Any events: unsorted, overlapping, nested, with gaps, negative bars."""
    n = draw(st.integers(1, 25))
    starts = np.array(draw(st.lists(st.integers(-20, 60), min_size=n, max_size=n)), dtype=np.int64)
    lengths = np.array(draw(st.lists(st.integers(0, 15), min_size=n, max_size=n)), dtype=np.int64)
    return starts, starts + lengths, draw(st.integers(0, 3 * n)), draw(st.integers(0, 2**32))


@PROPERTY
@given(event_sets())
def test_sequential_bootstrap_equals_the_oracles_on_any_events(case):
    starts, ends, n_draws, seed = case
    got = sequential_bootstrap(starts, ends, n_draws, random_state=seed).tolist()
    assert got == oracle.sequential_bootstrap(starts, ends, n_draws, random_state=seed)
    if n_draws <= 20:
        assert got == oracle.sequential_bootstrap_exact(starts, ends, n_draws, random_state=seed)


def test_sequential_bootstrap_on_many_seeds_draws_what_the_plain_algorithm_draws():
    starts, ends = _events(11, 40, 12)
    for seed in range(40):
        got = sequential_bootstrap(starts, ends, 60, random_state=seed).tolist()
        assert got == oracle.sequential_bootstrap(starts, ends, 60, random_state=seed), seed


def test_sequential_bootstrap_is_reproducible_and_follows_the_generator():
    starts, ends = _events(0, 500)
    first = sequential_bootstrap(starts, ends, random_state=42)
    assert first.tolist() == sequential_bootstrap(starts, ends, random_state=42).tolist()
    assert first.tolist() != sequential_bootstrap(starts, ends, random_state=43).tolist()
    # a Generator is used as given: the same stream from the same seed
    again = sequential_bootstrap(starts, ends, random_state=np.random.default_rng(42))
    assert again.tolist() == first.tolist()
    assert sequential_bootstrap(starts, ends, 0, random_state=1).tolist() == []
    # Rarely drawn twice: the draws favour unique events more than uniform sampling would.
    uniform = np.random.default_rng(42).integers(0, 500, 500)
    assert len(set(first.tolist())) > len(set(uniform.tolist()))


def test_sequential_bootstrap_takes_pandas_and_arrow_columns():
    starts, ends = _events(5, 50)
    want = sequential_bootstrap(starts, ends, random_state=5).tolist()
    assert sequential_bootstrap(pd.Series(starts).astype("Int32"), pa.array(ends), random_state=5).tolist() == want
    assert sequential_bootstrap(starts.astype(float).tolist(), ends.astype(float), random_state=5).tolist() == want


@pytest.mark.parametrize("starts, ends, kwargs, message", [
    ([0, 1, 2], [1, 2], {}, "starts has 3 events but ends has 2"),
    ([], [], {}, "needs at least one event"),
    ([0, 5, 2], [1, 4, 3], {}, "event 1 ends before it starts: starts = 5, ends = 4"),
    ([0, np.nan], [1, 2], {}, "starts is NULL at row 1: drop the rows without an event first"),
    ([0, 1], pa.array([1, None]), {}, "ends is NULL at row 1"),
    ([0, 1.5], [1, 2], {}, "starts must be whole numbers: row 1 is 1.5"),
    ([0, 1], [1, 2], {"n_draws": -1}, "n_draws must be a whole number >= 0, got -1"),
    ([0, 1], [1, 2], {"n_draws": 2.0}, "n_draws must be a whole number"),
    ([0, 1], [1, 2], {"random_state": "x"}, "random_state must be what numpy.random.default_rng takes"),
])
def test_sequential_bootstrap_rejects_bad_input(starts, ends, kwargs, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        sequential_bootstrap(starts, ends, **kwargs)
