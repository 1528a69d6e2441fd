"""What every part of the state shares: the client, key names, and the
call that runs a Redis command or script through the breaker."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pybreaker
import redis
from redis.commands.core import Script

from ...errors import DependencyError
from ..resilience import BREAKERS
from .scripts import source


def now_ms() -> int:
    return int(time.time() * 1000)


class StateBase:
    """The client and its key space.  Every call raises DependencyError
    naming the server when Redis cannot be reached."""

    def __init__(self, client: redis.Redis, prefix: str, ttl: int, where: str,
                 breaker: pybreaker.CircuitBreaker | None = None):
        self.client = client
        self.prefix = prefix
        self.ttl = ttl
        self.where = where
        self.breaker = breaker
        self._scripts: dict[str, Script] = {}

    def key(self, job: str, part: str = "") -> str:
        """A key of one job: its hash, or the part named (``P:job:J:part``)."""
        return f"{self.prefix}:job:{job}" + (f":{part}" if part else "")

    def shared_key(self, name: str) -> str:
        """A key of the whole deployment (``P:name``)."""
        return f"{self.prefix}:{name}"

    def call(self, fn, *args, **kwargs):
        """Run a redis-py call through the breaker, mapping errors to DependencyError."""
        if self.breaker is None:
            return self._raw(fn, *args, **kwargs)
        return BREAKERS.call(self.breaker, self._raw, fn, *args, **kwargs)

    def _raw(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except redis.exceptions.ConnectionError as exc:
            raise DependencyError(f"cannot reach Redis at {self.where}: {exc}", "redis") from None
        except redis.exceptions.RedisError as exc:
            raise DependencyError(f"Redis at {self.where} failed: {exc}", "redis") from None

    def run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run the Lua script ``lua/<script>.lua`` (registered with this
        client on first use; Redis caches it by its digest)."""
        return self.call(self._script(script), keys=keys, args=args)

    def run_many(self, script: str, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """``run`` for each (keys, args) of ``calls``, in one round trip: a
        pipeline, not a transaction (each script is atomic on its own, as
        when run one by one)."""
        if len(calls) == 1:  # a pipeline of scripts costs a SCRIPT EXISTS round trip first
            return [self.run(script, *calls[0])]
        fn = self._script(script)

        def send() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for keys, args in calls:
                fn(keys=keys, args=args, client=pipe)
            return pipe.execute()

        return self.call(send) if calls else []

    def _script(self, script: str) -> Script:
        fn = self._scripts.get(script)
        if fn is None:
            fn = self._scripts[script] = self.client.register_script(source(script))
        return fn

    def ping(self) -> None:
        self.call(self.client.ping)
