"""The third set's per-row labels (LABELS.md, "Side and meta-labels" and
"barrier_grid") against the plain-loop oracles in ``oracle_grid``, the grid
against the single triple barrier it must equal exactly, chunk invariance
at random cuts, and every refused input."""

from __future__ import annotations

import numpy as np
import oracle
import oracle_grid
import pandas as pd
import pyarrow as pa
import pytest
from compare import TB_COLUMNS, assert_exact, assert_float_close, assert_tb, assert_weights, column, near_barrier_rows
from conftest import random_walk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import candles

from gpubackfill import compute_labels, resolve_labels
from gpubackfill.errors import InvalidInput
from gpubackfill.jobs.spec import make_spec
from gpubackfill.labels import halo, label_set_id

PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TB = "enhanced_triple_barrier"
GRID = "barrier_grid"
GRID_COLUMNS = {"grid_label": "tb_label", "grid_exit_bars": "tb_exit_bars",
                "grid_exit_return": "tb_exit_return", "grid_flags": "tb_flags"}

tb_draws = st.fixed_dictionaries({
    "horizon": st.integers(1, 30), "pt": st.sampled_from([0.5, 1.0, 2.0, 3.0]),
    "sl": st.sampled_from([0.5, 1.0, 1.5]), "tie": st.sampled_from(["sl", "tp", "skip"]),
    "vertical": st.sampled_from(["zero", "sign"]),
    "min_ret": st.sampled_from([0.0, 0.0, 1e-3]),
    "vol": st.sampled_from(["ewm", "rolling"]), "vol_span": st.integers(2, 20),
})


def side_column(n: int, seed: int, mix: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if mix == "long":
        return np.ones(n)
    if mix == "short":
        return -np.ones(n)
    return rng.choice(np.array([1.0, -1.0, 0.0, np.nan]), size=n, p=[0.4, 0.4, 0.1, 0.1])


def grid_column(table: pa.Table, name: str, g: int) -> np.ndarray:
    """A list column as an (n, G) float array, NaN for a NULL element."""
    col = table.column(name).combine_chunks()
    assert col.null_count == 0  # a list is never NULL
    assert (np.diff(col.offsets.to_numpy()) == g).all()
    values = col.flatten().cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
    return values.reshape(len(col), g)


# -- side and meta-labels ----------------------------------------------------------


@PROPERTY
@given(c=candles(max_size=200), p=tb_draws, seed=st.integers(0, 2**32 - 1),
       mix=st.sampled_from(["mixed", "mixed", "long", "short"]))
def test_side_and_meta_against_the_oracle(c, p, seed, mix):
    side = side_column(len(c["close"]), seed, mix)
    out = compute_labels(pd.DataFrame({**c, "side": side}), TB, {TB: {**p, "side": "column"}},
                         output="arrow")
    sig = oracle.sigma(c["close"], p["vol"], p["vol_span"])
    want = oracle_grid.triple_barrier_side(c["open"], c["high"], c["low"], c["close"], sig, side,
                                           p["horizon"], p["pt"], p["sl"], p["tie"], p["vertical"],
                                           p["min_ret"])
    # A short's barriers are the long's with pt and sl swapped: skip rows
    # sitting on either pair.
    near = (near_barrier_rows(c, sig, p["horizon"], p["pt"], p["sl"])
            | near_barrier_rows(c, sig, p["horizon"], p["sl"], p["pt"]))
    assert_tb(out, want, near, return_atol=4 * max(p["pt"], p["sl"]) * 1e-15)
    # tb_meta flips only where the return is a rounding away from zero.
    ret = want["tb_exit_return"]
    edge = near | (np.abs(np.nan_to_num(ret)) <= 1e-12)
    assert_exact("tb_meta", column(out, "tb_meta"), want["tb_meta"], skip=edge)


@PROPERTY
@given(c=candles(max_size=200), p=tb_draws)
def test_every_row_long_is_the_plain_triple_barrier(c, p):
    df = pd.DataFrame(c)
    plain = compute_labels(df, TB, {TB: p}, output="arrow")
    long = compute_labels(df.assign(side=1), TB, {TB: {**p, "side": "column"}}, output="arrow")
    for name in TB_COLUMNS:
        assert_exact(name, column(long, name), column(plain, name))
    ret = column(plain, "tb_exit_return")
    want = np.where(np.isnan(ret), np.nan, (ret > 0).astype(float))
    assert_exact("tb_meta", column(long, "tb_meta"), want)


def short_by_hand() -> tuple[pd.DataFrame, dict]:
    # sigma from a rolling window of 2 returns of +-1%: ~0.01414 from row 2.
    close = np.array([100.0, 101.0, 100.0, 100.0, 100.0, 100.0, 100.0])
    open_ = np.r_[100.0, close[:-1]]
    c = {"ts": np.arange(7) * 60_000, "open": open_, "high": np.maximum(open_, close),
         "low": np.minimum(open_, close), "close": close}
    return pd.DataFrame(c), {TB: {"vol": "rolling", "vol_span": 2, "horizon": 3, "pt": 1.0,
                                  "sl": 2.0, "side": "column"}}


def test_a_short_takes_profit_below_and_stops_above():
    df, p = short_by_hand()
    sig = float(np.std(np.log([101 / 100, 100 / 101]), ddof=1))
    # Row 2 (close 100): a short's target is 100 * (1 - 1 sigma) = 98.59,
    # its stop 100 * (1 + 2 sigma) = 102.83.
    df.loc[4, "low"] = 98.0                 # reaches the target on bar 4
    df.loc[3, "high"] = 102.0               # the long's 1-sigma target, not the short's stop
    out = compute_labels(df.assign(side=[0, 0, -1, 0, 0, 0, 0]), TB, p, output="arrow")
    row = {k: out.column(k).to_pylist()[2] for k in ("tb_label", "tb_barrier", "tb_exit_bars",
                                                     "tb_meta", "tb_flags")}
    assert row == {"tb_label": 1, "tb_barrier": -1, "tb_exit_bars": 2, "tb_meta": 1, "tb_flags": 0}
    assert out.column("tb_exit_return").to_pylist()[2] == pytest.approx(-sig, rel=1e-12)
    long = compute_labels(df.assign(side=[0, 0, 1, 0, 0, 0, 0]), TB, p, output="arrow")
    # The long: upper target 100 * (1 + sigma) = 101.41, reached on bar 3.
    assert [long.column(k).to_pylist()[2] for k in ("tb_label", "tb_barrier", "tb_exit_bars",
                                                    "tb_meta")] == [1, 1, 1, 1]


@pytest.mark.parametrize("tie, label, barrier", [("sl", -1, 1), ("tp", 1, -1), ("skip", 0, 0)])
def test_an_ambiguous_bar_of_a_short_follows_the_tie_rule_relative_to_the_side(tie, label, barrier):
    df, p = short_by_hand()
    df.loc[4, "low"], df.loc[4, "high"] = 90.0, 110.0    # both of row 2's barriers
    out = compute_labels(df.assign(side=[0, 0, -1, 0, 0, 0, 0]), TB, {TB: {**p[TB], "tie": tie}},
                         output="arrow")
    assert out.column("tb_label").to_pylist()[2] == label     # "sl": the stop (above) wins
    assert out.column("tb_barrier").to_pylist()[2] == barrier
    assert out.column("tb_flags").to_pylist()[2] == oracle.AMBIGUOUS


def test_a_short_resolved_from_finer_candles_is_labelled_relative_to_its_side():
    df, p = short_by_hand()
    df.loc[4, "low"], df.loc[4, "high"] = 90.0, 110.0
    m1 = 15_000
    finer = pd.DataFrame({"ts": [df.ts[4], df.ts[4] + m1], "open": [100.0, 100.0],
                          "high": [100.5, 110.0], "low": [90.0, 99.0], "close": [100.0, 100.0]})
    out = compute_labels(df.assign(side=[0, 0, -1, 0, 0, 0, 0]), TB,
                         {TB: {**p[TB], "resolve_with": "M1"}}, finer=finer, bar_ms=60_000,
                         output="arrow")
    row = {k: out.column(k).to_pylist()[2] for k in ("tb_label", "tb_barrier", "tb_flags", "tb_meta")}
    assert row == {"tb_label": 1, "tb_barrier": -1, "tb_flags": oracle.RESOLVED, "tb_meta": 1}


def test_rows_without_a_position_are_null_and_flagged_no_side():
    c = random_walk(300, seed=3)
    side = np.where(np.arange(300) % 3 == 0, 1.0, np.where(np.arange(300) % 3 == 1, 0.0, np.nan))
    table = pa.table({**c, "side": pa.array(side, from_pandas=True)})
    assert table.column("side").null_count == 100
    out = compute_labels(table, TB, {TB: {"side": "column", "vol_span": 10}}, output="arrow")
    none = np.arange(300) % 3 != 0
    flags = column(out, "tb_flags")
    assert (flags[none] == oracle_grid.NO_SIDE).all()
    for name in ("tb_label", "tb_barrier", "tb_exit_bars", "tb_exit_return", "tb_meta"):
        assert np.isnan(column(out, name)[none]).all(), name
    assert not np.isnan(column(out, "tb_label")[::3][20:-20]).any()


@PROPERTY
@given(c=candles(max_size=200), p=tb_draws, seed=st.integers(0, 2**32 - 1))
def test_weights_count_only_rows_with_a_position(c, p, seed):
    side = side_column(len(c["close"]), seed, "mixed")
    out = compute_labels(pd.DataFrame({**c, "side": side}), TB,
                         {TB: {**p, "side": "column", "weights": True}}, output="arrow")
    sig = oracle.sigma(c["close"], p["vol"], p["vol_span"])
    tb = oracle_grid.triple_barrier_side(c["open"], c["high"], c["low"], c["close"], sig, side,
                                         p["horizon"], p["pt"], p["sl"], p["tie"], p["vertical"],
                                         p["min_ret"])
    near = (near_barrier_rows(c, sig, p["horizon"], p["pt"], p["sl"])
            | near_barrier_rows(c, sig, p["horizon"], p["sl"], p["pt"]))
    assert_weights(out, tb, c, near, p["horizon"])


def test_no_side_keeps_the_label_set_ids_stored_before_sides_existed():
    # Ids computed by the code before this parameter existed.
    assert label_set_id(resolve_labels([TB])) == "2ee9dbe68c5b10d3"
    assert label_set_id(resolve_labels([TB, "vol_scaled_return", "mfe_mae"])) == "0b8cf9420353a730"
    assert label_set_id(resolve_labels([TB], {TB: {"side": ""}})) == "2ee9dbe68c5b10d3"
    assert label_set_id(resolve_labels([TB], {TB: {"side": "column"}})) != "2ee9dbe68c5b10d3"
    assert [n for n, _ in resolve_labels([TB])[0].outputs()] == list(TB_COLUMNS)
    assert "tb_meta" in [n for n, _ in resolve_labels([TB], {TB: {"side": "column"}})[0].outputs()]


# -- barrier_grid -----------------------------------------------------------------------


grid_draws = st.fixed_dictionaries({
    "pts": st.lists(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0, 0.25]), min_size=1, max_size=3,
                    unique=True),
    "sls": st.lists(st.sampled_from([0.5, 1.0, 2.0, 0.75]), min_size=1, max_size=3, unique=True),
    "horizons": st.lists(st.integers(1, 40), min_size=1, max_size=3, unique=True),
    "tie": st.sampled_from(["sl", "tp", "skip"]), "vertical": st.sampled_from(["zero", "sign"]),
    "min_ret": st.sampled_from([0.0, 1e-3]),
    "vol": st.sampled_from(["ewm", "rolling"]), "vol_span": st.integers(2, 20),
})


def grid_size(p: dict) -> int:
    return len(p["pts"]) * len(p["sls"]) * len(p["horizons"])


@PROPERTY
@given(c=candles(max_size=250), p=grid_draws)
def test_each_grid_element_is_exactly_the_triple_barrier_of_its_combination(c, p):
    df = pd.DataFrame(c)
    g = grid_size(p)
    out = compute_labels(df, GRID, {GRID: p}, output="arrow")
    got = {name: grid_column(out, name, g) for name in GRID_COLUMNS}
    shared = {k: p[k] for k in ("tie", "vertical", "min_ret", "vol", "vol_span")}
    for k, (pt, sl, hz) in enumerate(oracle_grid.combinations(p["pts"], p["sls"], p["horizons"])):
        tb = compute_labels(df, TB, {TB: {**shared, "pt": pt, "sl": sl, "horizon": hz}}, output="arrow")
        for name, single in GRID_COLUMNS.items():
            assert_exact(f"{name}[{k}]", got[name][:, k], column(tb, single).astype(float))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(c=candles(max_size=150), p=grid_draws)
def test_barrier_grid_against_the_oracle(c, p):
    g = grid_size(p)
    out = compute_labels(pd.DataFrame(c), GRID, {GRID: p}, output="arrow")
    sig = oracle.sigma(c["close"], p["vol"], p["vol_span"])
    want = oracle_grid.barrier_grid(c["open"], c["high"], c["low"], c["close"], sig, p["pts"],
                                    p["sls"], p["horizons"], p["tie"], p["vertical"], p["min_ret"])
    for k, (pt, sl, hz) in enumerate(oracle_grid.combinations(p["pts"], p["sls"], p["horizons"])):
        near = near_barrier_rows(c, sig, hz, pt, sl)
        for name in GRID_COLUMNS:
            gv, wv = grid_column(out, name, g)[:, k], want[name][:, k]
            if name == "grid_exit_return":
                assert_float_close(name, gv, wv, atol=4 * max(pt, sl) * 1e-15, skip=near)
            else:
                assert_exact(f"{name}[{k}]", gv, wv, skip=near)


@pytest.mark.parametrize("horizons", [[66, 3], [70, 400, 12]])
def test_grid_windows_past_the_walk_equal_the_single_runs(horizons):
    """Windows longer than the bars walked one by one (kernels.cpu.GRID_WALK_BARS)
    go on by a search: a scan when the rest is short ([66, 3]), the tables
    of run extremes when it is long; far levels keep rows searching."""
    c = random_walk(3_000, seed=11, vol=2e-3)
    p = {"pts": [6.0, 1.0, 12.0], "sls": [9.0, 0.5], "horizons": horizons, "vol_span": 10}
    g = len(p["pts"]) * len(p["sls"]) * len(horizons)
    out = compute_labels(pd.DataFrame(c), GRID, {GRID: p}, output="arrow")
    got = {name: grid_column(out, name, g) for name in GRID_COLUMNS}
    assert np.nanmax(got["grid_exit_bars"]) > 64
    for k, (pt, sl, hz) in enumerate(oracle_grid.combinations(p["pts"], p["sls"], horizons)):
        tb = compute_labels(pd.DataFrame(c), TB, {TB: {"pt": pt, "sl": sl, "horizon": hz,
                                                       "vol_span": 10}}, output="arrow")
        for name, single in GRID_COLUMNS.items():
            assert_exact(f"{name}[{k}]", got[name][:, k], column(tb, single).astype(float))


def test_grid_order_is_pts_then_sls_then_horizons_as_given():
    c = random_walk(400, seed=2, vol=2e-3)
    p = {"pts": [2.0, 0.5], "sls": [1.0, 3.0, 0.5], "horizons": [30, 5], "vol_span": 10}
    out = compute_labels(pd.DataFrame(c), GRID, {GRID: p}, output="arrow")
    assert out.column("grid_label").type == pa.list_(pa.int8())
    assert out.column("grid_exit_bars").type == pa.list_(pa.int32())
    assert out.column("grid_exit_return").type == pa.list_(pa.float64())
    assert out.column("grid_flags").type == pa.list_(pa.uint8())
    bars = grid_column(out, "grid_exit_bars", 12)
    assert np.nanmax(bars[:, 1::2]) == 5 and np.nanmax(bars[:, 0::2]) == 30  # horizons inner
    # g = (i_pt * 3 + i_sl) * 2 + i_h: pt=0.5, sl=3.0, h=30 is element 8.
    tb = compute_labels(pd.DataFrame(c), TB, {TB: {"pt": 0.5, "sl": 3.0, "horizon": 30,
                                                   "vol_span": 10}}, output="arrow")
    assert_exact("element 8", bars[:, 8], column(tb, "tb_exit_bars"))
    frame = compute_labels(pd.DataFrame(c), GRID, {GRID: p})
    assert list(frame.columns) == ["ts", *GRID_COLUMNS]
    assert len(frame["grid_label"].iloc[-1]) == 12 and frame["grid_label"].iloc[-1][0] is None


def test_grid_halo_follows_the_largest_horizon():
    r = resolve_labels([GRID], {GRID: {"horizons": [7, 90, 3], "vol": "rolling", "vol_span": 20}})
    assert halo(r) == (20, 90)


# -- chunk invariance ---------------------------------------------------------------


def chunked(df, labels, params, cuts):
    back, ahead = halo(resolve_labels(labels, params))
    n = len(df)
    bounds = [0, *cuts, n]
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        lo, hi = max(0, a - back), min(n, b + ahead)
        out = compute_labels(df.iloc[lo:hi], labels, params, output="arrow")
        parts.append(out.slice(a - lo, b - a))
    return pa.concat_tables(parts)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), ncuts=st.integers(1, 6), data=st.data())
def test_side_and_grid_at_random_cuts_equal_the_whole_series(seed, ncuts, data):
    n = 1_500
    c = random_walk(n, seed=seed % 1000, vol=2e-3)
    rng = np.random.default_rng(seed)
    wide = rng.random(n) < 0.1
    c["high"][wide] *= 1.004
    c["low"][wide] /= 1.004
    df = pd.DataFrame({**c, "side": side_column(n, seed, "mixed")})
    params = {TB: {"horizon": data.draw(st.integers(2, 30)), "vol": "rolling", "vol_span": 10,
                   "weights": True, "side": "column", "tie": data.draw(st.sampled_from(["sl", "skip"]))},
              GRID: {"pts": data.draw(grid_draws)["pts"], "sls": [1.0, 0.5],
                     "horizons": data.draw(st.lists(st.integers(1, 40), min_size=1, max_size=3,
                                                    unique=True)),
                     "vol": "rolling", "vol_span": 10}}
    labels = [TB, GRID]
    cuts = sorted(data.draw(st.sets(st.integers(1, n - 1), min_size=ncuts, max_size=ncuts)))
    whole = compute_labels(df, labels, params, output="arrow")
    parts = chunked(df, labels, params, cuts)
    g = grid_size(params[GRID])
    for name in whole.column_names:
        if name.startswith("grid_"):
            w, p_ = grid_column(whole, name, g), grid_column(parts, name, g)
            check = assert_float_close if name == "grid_exit_return" else assert_exact
            for k in range(g):
                check(f"{name}[{k}]", p_[:, k], w[:, k])
        elif name in ("tb_exit_return", "tb_uniqueness", "tb_attribution"):
            assert_float_close(name, column(parts, name), column(whole, name))
        else:
            assert_exact(name, column(parts, name), column(whole, name))


# -- refused input ----------------------------------------------------------------------


def test_a_side_column_of_text_is_refused():
    df = pd.DataFrame(random_walk(50)).assign(side=["buy", "sell"] * 25)
    words = r"\(\+1 long, -1 short, 0 or NULL no position\)"
    with pytest.raises(InvalidInput, match=rf"^column side must be numeric {words}, got (object|str)$"):
        compute_labels(df, TB, {TB: {"side": "column"}})
    with pytest.raises(InvalidInput, match=r"^column side must be numeric .*, got (large_)?string$"):
        compute_labels(pa.Table.from_pandas(df), TB, {TB: {"side": "column"}})
    # Without side="column" the column is not read.
    compute_labels(df, TB)


@pytest.mark.parametrize("bad", [2.0, 0.5, -3.0, np.inf])
def test_side_values_outside_minus_one_zero_one_are_refused(bad):
    side = np.ones(50)
    side[7] = bad
    side[9] = np.nan
    df = pd.DataFrame(random_walk(50)).assign(side=side)
    with pytest.raises(InvalidInput, match=r"^side at row 7 is .*: a side must be \+1 long, -1 short"):
        compute_labels(df, TB, {TB: {"side": "column"}})


def test_side_column_asked_for_but_missing_is_refused():
    with pytest.raises(InvalidInput, match=r"side='column' needs a side column beside the candles"):
        compute_labels(pd.DataFrame(random_walk(50)), TB, {TB: {"side": "column"}})


def test_an_empty_pts_list_is_refused():
    df = pd.DataFrame(random_walk(50))
    for empty in ([], ""):
        with pytest.raises(InvalidInput, match=r"^barrier_grid.pts must name at least one value$"):
            compute_labels(df, GRID, {GRID: {"pts": empty}})
    with pytest.raises(InvalidInput, match=r"^barrier_grid.sls must be >= 1e-12, got 0"):
        compute_labels(df, GRID, {GRID: {"sls": [1, 0]}})


def test_more_than_256_combinations_are_refused():
    p = {"pts": [1, 2, 3, 4, 5, 6, 7], "sls": [1, 2, 3, 4, 5, 6, 7], "horizons": [1, 2, 3, 4, 5, 6]}
    with pytest.raises(InvalidInput, match=r"^barrier_grid has 7 pts x 7 sls x 6 horizons = 294 "
                                           r"combinations; at most 256$"):
        compute_labels(pd.DataFrame(random_walk(50)), GRID, {GRID: p})
    ok = {**p, "horizons": [1, 2, 3, 4, 5]}  # 245
    assert resolve_labels([GRID], {GRID: ok})[0].outputs()


@pytest.mark.parametrize("labels, params", [
    (["barrier_grid"], {}),
    ([TB, "mfe_mae"], {TB: {"side": "column"}}),
])
def test_jobs_take_grids_and_sides(labels, params):
    spec = make_spec("EURUSD", "M1", "2024-01-01", "2024-01-02", labels, params, 1000, 1)
    plain = make_spec("EURUSD", "M1", "2024-01-01", "2024-01-02", [TB], {TB: {"side": ""}}, 1000, 1)
    assert spec.label_set != plain.label_set


def test_the_labels_command_lists_the_grid_and_the_side_parameter():
    import json

    from click.testing import CliRunner

    from gpubackfill.cli.main import main

    res = CliRunner().invoke(main, ["labels", "--format", "json"])
    assert res.exit_code == 0, res.output
    entries = {e["name"]: e for e in json.loads(res.output)}
    side = next(p for p in entries[TB]["params"] if p["name"] == "side")
    assert side["default"] == "" and side["choices"] == ["", "column"]
    tb_outputs = {o["name"]: o for o in entries[TB]["outputs"]}
    assert tb_outputs["tb_meta"]["type"] == "int8, nullable" and "32 NO_SIDE" in tb_outputs["tb_flags"]["meaning"]
    assert [p["name"] for p in entries[GRID]["params"]][:3] == ["pts", "sls", "horizons"]
    grid = {o["name"]: o for o in entries[GRID]["outputs"]}
    assert list(grid) == list(GRID_COLUMNS)
    assert grid["grid_exit_return"]["type"] == "list<double, nullable>"
    assert grid["grid_flags"]["type"] == "list<uint8>" and all(o["meaning"] for o in grid.values())
    table = CliRunner().invoke(main, ["labels"]).output
    assert "barrier_grid.pts=" in table and "enhanced_triple_barrier.side=" in table
