"""The label registry: parameter schemas, outputs, halos and set ids."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pytest

from gpubackfill import LABELS, label_set_id, resolve_labels
from gpubackfill.labels import halo
from gpubackfill.labels.volatility import sigma_lookback


def test_every_label_declares_params_outputs_and_halo():
    assert set(LABELS) == {"enhanced_triple_barrier", "vol_scaled_return", "mfe_mae",
                           "fixed_horizon", "trend_scanning", "barrier_grid"}
    for spec in LABELS.values():
        params = spec.resolve({})
        assert all(p.doc for p in spec.params)
        outs = spec.outputs(params)
        assert outs and all(isinstance(t, pa.DataType) for _, t in outs)
        back, ahead = spec.halo(params)
        assert back >= 0 and ahead >= 1


def test_defaults_are_those_of_the_contract():
    tb = LABELS["enhanced_triple_barrier"].resolve({})
    assert tb == {"horizon": 24, "pt": 1.0, "sl": 1.0, "tie": "sl", "vertical": "zero",
                  "min_ret": 0.0, "vol": "ewm", "vol_span": 100, "resolve_with": "",
                  "weights": False, "side": ""}
    assert LABELS["barrier_grid"].resolve({}) == {"pts": [1.0, 2.0], "sls": [1.0, 2.0],
                                                  "horizons": [12, 24, 48], "tie": "sl",
                                                  "vertical": "zero", "min_ret": 0.0, "vol": "ewm",
                                                  "vol_span": 100}
    assert LABELS["fixed_horizon"].resolve({}) == {"horizon": 24, "threshold": 0.0, "vol": "ewm",
                                                   "vol_span": 100}
    assert LABELS["trend_scanning"].resolve({}) == {"min_window": 5, "max_window": 20}
    assert LABELS["vol_scaled_return"].resolve({})["horizons"] == [1, 5, 20]
    assert LABELS["mfe_mae"].resolve({}) == {"horizon": 24}


def test_halo_covers_every_label_of_a_request():
    r = resolve_labels(["mfe_mae", "vol_scaled_return"],
                       {"mfe_mae": {"horizon": 90}, "vol_scaled_return": {"horizons": [3, 250],
                                                                          "vol": "rolling",
                                                                          "vol_span": 40}})
    assert halo(r) == (40, 250)


def test_halos_of_the_second_set():
    tb = {"vol": "rolling", "vol_span": 30, "horizon": 12}
    assert halo(resolve_labels(["enhanced_triple_barrier"], {"enhanced_triple_barrier": tb})) == (30, 12)
    # Weights look at other rows' exits: H more back, 2H ahead.
    weighted = {**tb, "weights": "true"}
    assert halo(resolve_labels(["enhanced_triple_barrier"],
                               {"enhanced_triple_barrier": weighted})) == (42, 24)
    assert halo(resolve_labels(["fixed_horizon"], {"fixed_horizon": {"horizon": 9}})) == (0, 9)
    assert halo(resolve_labels(["fixed_horizon"], {"fixed_horizon": {
        "horizon": 9, "threshold": 1, "vol": "rolling", "vol_span": 30}})) == (30, 9)
    assert halo(resolve_labels(["trend_scanning"], {"trend_scanning": {"max_window": 50}})) == (0, 49)


def test_ewm_lookback_makes_the_unseen_weight_negligible():
    for span in (2, 100, 1000):
        back = sigma_lookback({"vol": "ewm", "vol_span": span})
        alpha = 2 / (span + 1)
        assert (1 - alpha) ** (back - span) <= 1e-18 < (1 - alpha) ** (back - span - 2)


def test_label_set_id_is_stable_and_depends_on_every_parameter():
    a = label_set_id(resolve_labels(["mfe_mae", "enhanced_triple_barrier"]))
    b = label_set_id(resolve_labels(["enhanced_triple_barrier", "mfe_mae"],
                                    {"mfe_mae": {"horizon": 24}}))
    assert a == b and len(a) == 16
    c = label_set_id(resolve_labels(["enhanced_triple_barrier", "mfe_mae"],
                                    {"enhanced_triple_barrier": {"pt": 1.5}}))
    assert c != a


def test_label_set_id_is_the_same_in_another_process():
    """Stored label rows are keyed by this id: it must not depend on hash seeds."""
    code = ("from gpubackfill import label_set_id, resolve_labels; "
            "print(label_set_id(resolve_labels(['vol_scaled_return', 'mfe_mae'])))")
    ids = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
        for seed in ("1", "2")
    }
    assert ids == {label_set_id(resolve_labels(["mfe_mae", "vol_scaled_return"]))}


def test_vsr_outputs_follow_the_horizons():
    r = resolve_labels(["vol_scaled_return"], {"vol_scaled_return": {"horizons": [10, 2]}})
    assert [n for n, _ in r[0].outputs()] == ["vsr_2", "vsr_10", "sigma"]


@pytest.mark.parametrize("value", ["7", 7, 7.0])
def test_int_params_accept_text_and_integral_numbers(value):
    assert LABELS["mfe_mae"].resolve({"horizon": value}) == {"horizon": 7}


def test_the_triple_barrier_declares_its_finer_candles_and_counters():
    from gpubackfill.labels import counts, finer_candles

    tb = "enhanced_triple_barrier"
    plain = resolve_labels([tb, "mfe_mae"])
    asking = resolve_labels(["mfe_mae", tb], {tb: {"resolve_with": "M5"}})
    assert finer_candles(plain) is None
    need = finer_candles(asking)
    assert need is not None and (need.granularity, need.param) == ("M5", "resolve_with")
    # bits: 2 AMBIGUOUS (left to the tie rule), 16 RESOLVED, 17 = GAP | RESOLVED
    rows = pa.table({"tb_flags": pa.array([0, 2, 16, 17, 2, 4], pa.uint8())})
    assert counts(asking, rows) == {"tb_resolved": 2, "tb_ambiguous": 2}
    # Without finer candles every ambiguous bar is the tie rule's by design: not counted.
    assert counts(plain, rows) == {"tb_resolved": 0, "tb_ambiguous": 0}


def test_the_status_schema_declares_the_built_in_labels_counters():
    from gpubackfill.engine.views import JobStatus
    from gpubackfill.labels import counters

    assert {c.status for c in counters()} == {"bars_resolved", "bars_ambiguous"}
    assert {c.status for c in counters()} <= set(JobStatus.model_fields)


def test_the_engine_and_the_job_state_name_no_label():
    """What they must know of a label they ask the registry (the behaviour is
    tests/integration/test_label_hooks.py's: a label they never heard of)."""
    from pathlib import Path

    import gpubackfill

    root = Path(gpubackfill.__file__).parent
    files = [*(root / "engine").glob("*.py"), *(root / "jobs").glob("*.py"),
             *(root / "storage" / "redis").glob("*.py"), *(root / "storage" / "redis").glob("*/*.lua"),
             root / "service.py"]
    assert len(files) > 30
    words = ("tb_flags", "resolve_with", "tb_resolved", "tb_ambiguous", "FLAG_RESOLVED",
             "FLAG_AMBIGUOUS", "triple_barrier")
    found = [f"{f.relative_to(root)}: {w}" for f in files for w in words
             if w in f.read_text(encoding="utf-8")]
    assert found == []
