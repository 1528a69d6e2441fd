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
