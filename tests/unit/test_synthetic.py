"""Synthetic candles (gpubackfill.candles.synthetic) and name parsing (gpubackfill.common.granularity)."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from gpubackfill import InvalidInput
from gpubackfill.candles.frames import defect_codes, to_series, validate
from gpubackfill.candles.synthetic import (
    INSTRUMENTS,
    SCHEMA,
    fx_open_mask,
    generate,
    generate_many,
    instrument_spec,
)
from gpubackfill.common.granularity import (
    GRANULARITIES,
    INSTRUMENT_RE,
    parse_granularity,
    parse_instrument,
)

DAY = 86_400_000
HOUR = 3_600_000


def abs_return_autocorr(table: pa.Table, lags: int) -> np.ndarray:
    r = np.log(table["close"].to_numpy() / table["open"].to_numpy())
    a = np.abs(r) - np.abs(r).mean()
    return np.array([(a[:-k] * a[k:]).mean() / (a * a).mean() for k in range(1, lags + 1)])


def in_fx_weekend(ts: np.ndarray) -> np.ndarray:
    """Independent of the module: pandas weekdays and hours."""
    t = pd.to_datetime(ts, unit="ms", utc=True)
    wd, hour = t.day_of_week, t.hour
    return ((wd == 4) & (hour >= 22)) | (wd == 5) | ((wd == 6) & (hour < 22))


# --------------------------------------------------------------------------
# granularity and instrument names


def test_granularities_and_lengths():
    assert list(GRANULARITIES) == ["S5", "S10", "S15", "S30", "M1", "M2", "M4", "M5", "M10",
                                   "M15", "M30", "H1", "H2", "H3", "H4", "H6", "H8", "H12",
                                   "D1", "W1"]
    assert GRANULARITIES["S5"] == 5_000
    assert GRANULARITIES["M1"] == 60_000
    assert GRANULARITIES["M4"] == 240_000
    assert GRANULARITIES["H3"] == 3 * HOUR
    assert GRANULARITIES["D1"] == DAY
    assert GRANULARITIES["W1"] == 7 * DAY


@pytest.mark.parametrize("text, name", [("m1", "M1"), ("M1", "M1"), ("h4", "H4"), ("d1", "D1"),
                                        ("W1", "W1"), ("s5", "S5"), (" m15 ", "M15")])
def test_parse_granularity(text, name):
    assert parse_granularity(text) == name


@pytest.mark.parametrize("text", ["M3", "1m", "", "H24", "minute", None, 60_000])
def test_parse_granularity_refuses(text):
    with pytest.raises(InvalidInput) as err:
        parse_granularity(text)
    assert "M1" in str(err.value) and "W1" in str(err.value)  # lists the valid names


@pytest.mark.parametrize("text, name", [("eurusd", "EURUSD"), ("EUR_USD", "EUR_USD"),
                                        ("eur/usd", "EUR/USD"), ("BRK.B", "BRK.B"),
                                        ("es-2024", "ES-2024"), ("X" * 32, "X" * 32)])
def test_parse_instrument(text, name):
    assert parse_instrument(text) == name
    assert INSTRUMENT_RE.fullmatch(name)


@pytest.mark.parametrize("text", ["EURUSD'; DROP TABLE x", "EUR USD", "", "X" * 33, "EUR'USD",
                                  'EUR"USD', "EURUSD;", "EURUSD\n", "eurußd", "EUR*", None, 1])
def test_parse_instrument_refuses(text):
    with pytest.raises(InvalidInput) as err:
        parse_instrument(text)
    assert repr(text) in str(err.value)


def test_generate_refuses_injection_and_bad_names():
    with pytest.raises(InvalidInput, match="DROP TABLE"):
        generate("EURUSD'; DROP TABLE x", "M1", "2024-01-01", "2024-01-02")
    with pytest.raises(InvalidInput, match="M7"):
        generate("EURUSD", "M7", "2024-01-01", "2024-01-02")


# --------------------------------------------------------------------------
# validity and shape

CASES = [
    ("EURUSD", "S5", "2024-01-05 20:00", "2024-01-08 02:00"),
    ("EURUSD", "M1", "2024-01-01", "2024-01-20"),
    ("GBPUSD", "M4", "2024-02-01", "2024-03-01"),
    ("USDJPY", "M5", "2024-01-01", "2024-03-01"),
    ("XAUUSD", "H1", "2023-01-01", "2024-01-01"),
    ("XAUUSD", "H3", "2023-01-01", "2024-01-01"),
    ("BTCUSD", "M15", "2024-01-01", "2024-03-01"),
    ("ETHUSD", "H4", "2023-01-01", "2024-01-01"),
    ("EUR_USD", "H12", "2020-01-01", "2024-01-01"),
    ("AUDUSD", "D1", "2015-01-01", "2024-01-01"),
    ("EURUSD", "W1", "2000-01-01", "2024-01-01"),
    ("SOMETHING.NEW", "M30", "2024-01-01", "2024-02-01"),
    ("CADJPY", "M10", "2024-01-01", "2024-02-01"),
]


@pytest.mark.parametrize("instrument, gran, start, end", CASES)
def test_valid_aligned_and_in_range(instrument, gran, start, end):
    table = generate(instrument, gran, start, end)
    assert table.schema == SCHEMA
    assert len(table) > 10
    series = to_series(table)
    validate(series)  # raises on the first bad row
    assert not defect_codes(series).any()
    step = GRANULARITIES[gran]
    ts = series.ts
    assert (ts % step == 0).all()
    assert (np.diff(ts) > 0).all()
    lo = pd.Timestamp(start, tz="UTC").value // 10**6
    hi = pd.Timestamp(end, tz="UTC").value // 10**6
    assert ts[0] >= lo and ts[-1] < hi
    # starts at the first open bar at or after start
    first = -(-lo // step) * step
    while not instrument_spec(instrument).always_open and in_fx_weekend(np.array([first]))[0]:
        first += step
    assert ts[0] == first
    volume = table["volume"].to_numpy()
    assert (volume > 0).all() and np.isfinite(volume).all()


def test_ohlc_invariants_exact_with_many_bars():
    table = generate("XAUUSD", "S5", "2024-01-02", "2024-01-09")
    o, h, lo, c = (table[k].to_numpy() for k in ("open", "high", "low", "close"))
    assert (h >= np.maximum(o, c)).all()
    assert (lo <= np.minimum(o, c)).all()
    assert (lo > 0).all()
    # and high/low are real excursions, not just max/min of open and close
    assert (h > np.maximum(o, c)).mean() > 0.3
    assert (lo < np.minimum(o, c)).mean() > 0.3


@pytest.mark.parametrize("instrument, decimals", [("EURUSD", 5), ("GBPUSD", 5), ("USDJPY", 3),
                                                  ("EURJPY", 3), ("XAUUSD", 2), ("BTCUSD", 2)])
def test_prices_on_tick(instrument, decimals):
    table = generate(instrument, "M5", "2024-01-01", "2024-02-01")
    scale = 10.0**decimals
    for k in ("open", "high", "low", "close"):
        x = table[k].to_numpy() * scale
        assert np.abs(x - np.round(x)).max() < 1e-6, k
    assert instrument_spec(instrument).decimals == decimals


def test_start_prices_and_names():
    for name, price in [("EURUSD", 1.10), ("GBPUSD", 1.27), ("USDJPY", 150.0),
                        ("XAUUSD", 2000.0), ("BTCUSD", 40_000.0)]:
        first_open = generate(name, "H1", "2024-01-02", "2024-01-03")["open"][0].as_py()
        assert first_open == pytest.approx(price, rel=1e-3)
    # separators and case do not matter for known instruments
    assert instrument_spec("eur/usd") == INSTRUMENTS["EURUSD"]
    assert instrument_spec("EUR_USD") == INSTRUMENTS["EURUSD"]


def test_unknown_instrument_price_from_name_hash():
    a = instrument_spec("ACME")
    assert a == instrument_spec("acme")  # deterministic, case-insensitive
    assert a != instrument_spec("ACMF")
    for name in ("ACME", "ZZZ", "FOO_BAR", "X1", "QQQ.US"):
        spec = instrument_spec(name)
        assert 0.05 <= spec.price <= 2000 and 0.01 < spec.annual_vol < 1.0
    assert instrument_spec("CADJPY").decimals == 3
    assert instrument_spec("ETHBTC").always_open


def test_empty_and_bad_ranges():
    empty = generate("EURUSD", "M1", "2024-01-06", "2024-01-07")  # a Saturday
    assert len(empty) == 0 and empty.schema == SCHEMA
    assert len(generate("BTCUSD", "M1", "2024-01-06", "2024-01-06")) == 0
    with pytest.raises(InvalidInput, match="before start"):
        generate("EURUSD", "M1", "2024-02-01", "2024-01-01")
    with pytest.raises(InvalidInput, match="start"):
        generate("EURUSD", "M1", "not a date", "2024-01-01")
    with pytest.raises(InvalidInput, match="seed"):
        generate("EURUSD", "M1", "2024-01-01", "2024-01-02", seed=-1)


def test_start_end_types():
    ref = generate("EURUSD", "M15", "2024-01-02", "2024-01-05")
    as_dt = generate("EURUSD", "M15", datetime(2024, 1, 2), datetime(2024, 1, 5))
    cet = timezone(timedelta(hours=1))
    as_aware = generate("EURUSD", "M15", datetime(2024, 1, 2, 1, tzinfo=cet),
                        datetime(2024, 1, 5, 1, tzinfo=cet))
    as_ms = generate("EURUSD", "M15", 1_704_153_600_000, 1_704_412_800_000)
    assert ref.equals(as_dt) and ref.equals(as_aware) and ref.equals(as_ms)


# --------------------------------------------------------------------------
# determinism


def test_deterministic():
    a = generate("EURUSD", "M1", "2024-01-01", "2024-01-10")
    b = generate("eurusd", "m1", "2024-01-01", "2024-01-10")
    assert a.equals(b)
    assert generate("EURUSD", "M1", "2024-01-01", "2024-01-10", seed=7).equals(
        generate("EURUSD", "M1", "2024-01-01", "2024-01-10", seed=7))
    c = generate("EURUSD", "M1", "2024-01-01", "2024-01-10", seed=8)
    assert not a.equals(c)
    assert not c["close"].equals(generate("EURUSD", "M1", "2024-01-01", "2024-01-10", seed=7)["close"])


def test_generate_many():
    out = generate_many(["eurusd", "GBPUSD", "BTCUSD"], "H1", "2024-01-01", "2024-02-01", seed=3)
    assert list(out) == ["EURUSD", "GBPUSD", "BTCUSD"]
    assert out["EURUSD"].equals(generate("EURUSD", "H1", "2024-01-01", "2024-02-01", seed=3))
    # one seed, still a path of its own per instrument
    r_eur = np.diff(np.log(out["EURUSD"]["close"].to_numpy()))
    r_gbp = np.diff(np.log(out["GBPUSD"]["close"].to_numpy()))
    assert abs(np.corrcoef(r_eur, r_gbp)[0, 1]) < 0.2
    for table in out.values():
        validate(to_series(table))


# --------------------------------------------------------------------------
# sessions and gaps


def test_fx_weekend_gap():
    table = generate("EURUSD", "M1", "2024-01-01", "2024-03-01")
    ts = table["ts"].to_numpy()
    assert not in_fx_weekend(ts).any()
    every_minute = np.arange(ts[0], ts[-1], 60_000)
    assert (fx_open_mask(every_minute) == ~in_fx_weekend(every_minute)).all()
    t = pd.to_datetime(ts, unit="ms", utc=True)
    jumps = np.flatnonzero(np.diff(ts) > 60_000)
    assert len(jumps) == 8  # 8 weekends, and no other holes
    for j in jumps:
        assert (t[j].weekday(), t[j].hour, t[j].minute) == (4, 21, 59)      # Friday 21:59
        assert (t[j + 1].weekday(), t[j + 1].hour, t[j + 1].minute) == (6, 22, 0)  # Sunday 22:00
    o, c = table["open"].to_numpy(), table["close"].to_numpy()
    # the Sunday open gaps from Friday's close
    assert (o[jumps + 1] != c[jumps]).mean() >= 0.75
    # elsewhere open is the previous close, bar a few tiny gaps
    cont = np.ones(len(ts) - 1, bool)
    cont[jumps] = False
    same = o[1:][cont] == c[:-1][cont]
    assert 0.99 < same.mean() < 1.0


def test_fx_coarse_bars_skip_weekend():
    d1 = generate("EURUSD", "D1", "2024-01-01", "2024-07-01")
    days = pd.to_datetime(d1["ts"].to_numpy(), unit="ms", utc=True).day_of_week
    assert set(days) == {0, 1, 2, 3, 4}
    h4 = generate("EURUSD", "H4", "2024-01-01", "2024-07-01")
    assert not in_fx_weekend(h4["ts"].to_numpy()).any()


def test_crypto_trades_all_week():
    table = generate("BTCUSD", "M5", "2024-01-01", "2024-02-01")
    ts = table["ts"].to_numpy()
    assert (np.diff(ts) == 300_000).all()
    assert len(ts) == 31 * 288
    assert in_fx_weekend(ts).any()
    o, c = table["open"].to_numpy(), table["close"].to_numpy()
    assert (o[1:] == c[:-1]).mean() > 0.99


# --------------------------------------------------------------------------
# statistics


@pytest.mark.parametrize("instrument, gran, start, end", [
    ("EURUSD", "H1", "2023-01-01", "2024-01-01"),
    ("EURUSD", "D1", "2014-01-01", "2024-01-01"),
    ("BTCUSD", "H4", "2022-01-01", "2024-01-01"),
])
def test_volatility_clusters(instrument, gran, start, end):
    table = generate(instrument, gran, start, end)
    ac = abs_return_autocorr(table, 10)
    assert ac[0] > 0.07 and ac.mean() > 0.04
    # a shuffled series has none
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(table))
    shuffled = pa.table({"open": table["open"].take(idx), "close": table["close"].take(idx)})
    assert abs(abs_return_autocorr(shuffled, 10).mean()) < 0.03


@pytest.mark.parametrize("instrument, gran, start, end, lo, hi", [
    ("EURUSD", "H1", "2021-01-01", "2024-01-01", 0.04, 0.11),
    ("USDJPY", "M15", "2023-01-01", "2024-01-01", 0.05, 0.14),
    ("XAUUSD", "H4", "2020-01-01", "2024-01-01", 0.09, 0.24),
    ("BTCUSD", "D1", "2018-01-01", "2024-01-01", 0.40, 0.90),
])
def test_annualised_volatility_plausible(instrument, gran, start, end, lo, hi):
    table = generate(instrument, gran, start, end)
    c = table["close"].to_numpy()
    r = np.diff(np.log(c))
    year_bars = len(table) / ((pd.Timestamp(end) - pd.Timestamp(start)).days / 365.25)
    vol = r.std() * np.sqrt(year_bars)
    assert lo < vol < hi


def test_intraday_seasonality():
    table = generate("EURUSD", "M5", "2024-01-01", "2024-04-01")
    r = np.abs(np.log(table["close"].to_numpy() / table["open"].to_numpy()))
    v = table["volume"].to_numpy()
    hour = pd.to_datetime(table["ts"].to_numpy(), unit="ms", utc=True).hour
    busy = (hour >= 12) & (hour < 16)
    quiet = (hour >= 19) & (hour < 22)
    assert r[busy].mean() > 1.5 * r[quiet].mean()
    assert v[busy].mean() > 1.5 * v[quiet].mean()
    assert (v == np.round(v)).all()  # FX tick volume


def test_two_years_of_24_7_minute_bars():
    # Speed is measured in bench/, not asserted here.
    table = generate("BTCUSD", "M1", "2022-01-01", "2024-01-01")
    assert len(table) == 730 * 1440
