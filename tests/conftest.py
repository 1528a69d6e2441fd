import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# Test helpers (oracle, strategies, compare) are plain modules beside the tests.
sys.path.insert(0, str(Path(__file__).parent))


def random_walk(n: int, seed: int = 0, vol: float = 1e-3) -> dict:
    """A valid candle series as a dict of numpy arrays."""
    rng = np.random.default_rng(seed)
    close = 1.1 * np.exp(np.cumsum(rng.normal(0, vol, n)))
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, vol / 2, n)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, vol / 2, n)))
    ts = 1_600_000_000_000 + np.arange(n, dtype=np.int64) * 60_000
    return {"ts": ts, "open": open_, "high": high, "low": low, "close": close,
            "volume": rng.uniform(1, 100, n)}


@pytest.fixture
def walk():
    return random_walk(5_000, seed=7)


def frame(c: dict) -> pd.DataFrame:
    return pd.DataFrame(c)
