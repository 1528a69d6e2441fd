"""This process's connections to ClickHouse and Redis, made once per settings.

Shared by the service (the CLI, the API) and the chunks a worker runs; it
loads no compute code, so commands that only read job state start fast.
"""

from __future__ import annotations

import threading

from ..config import Settings
from .clickhouse_store import Store
from .redis import RedisState
from .redis_server import connect as redis_connect
from .resilience import BREAKERS

_shared: dict[tuple, tuple[Store, RedisState]] = {}
_shared_lock = threading.Lock()


def connections(settings: Settings) -> tuple[Store, RedisState]:
    """Store and state for this process (created once per settings)."""
    key = (settings.clickhouse_url, str(settings.home), settings.redis_url, settings.redis_prefix)
    with _shared_lock:
        if key not in _shared:
            client, where = redis_connect(settings)
            breaker = BREAKERS.get("redis", where, settings.breaker_redis_failures,
                                   settings.breaker_redis_reset_seconds)
            state = RedisState(client, settings.redis_prefix, settings.redis_ttl, where, breaker)
            # Breaker changes in this process are published where every
            # process (metrics, health) reads them.
            BREAKERS.publisher = state.publish_breaker
            _shared[key] = (Store(settings), state)
        return _shared[key]


def clickhouse_breaker(settings: Settings):
    target = settings.clickhouse_url or f"chdb://{settings.chdb_path}"
    return BREAKERS.get("clickhouse", target, settings.breaker_clickhouse_failures,
                        settings.breaker_clickhouse_reset_seconds)
