"""Alerts: thresholds (the ``ALERT_*`` settings) over the Redis-wide metrics.

``evaluate`` is pure: the figures of ``BackfillService.metrics()`` and the
thresholds in, one ``Condition`` per alert out.  ``Alerter.check`` records a
crossing in Redis (``P:alerts``; ``HSETNX``, so among any number of service
processes exactly one fires each alert) and only then posts it to every
``ALERT_WEBHOOKS`` URL.  An alert stays firing, and is not sent again, until
its condition clears; the clearing is recorded in the history.

Webhooks are posted from background threads with retries, so a slow or
dead receiver never blocks a job or the scheduler.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import tenacity

from ..config import Settings
from ..storage.redis import now_ms
from ..storage.telemetry import Telemetry

log = logging.getLogger("gpubackfill.alerts")

WEBHOOK_ATTEMPTS = 4
WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_BACKOFF_S = 0.5      # doubled after each failed attempt
ALERT_NAMES = ("error_rate", "low_throughput", "chunk_latency", "circuit_breaker_open", "queue_backlog")


@dataclass(frozen=True)
class Condition:
    name: str
    firing: bool
    value: float
    threshold: float
    message: str


def evaluate(m: dict[str, Any], s: Settings) -> list[Condition]:
    """Every alert condition over the metrics ``m``."""
    measured = m.get("running_jobs_measured", 0) > 0
    rate = float(m.get("throughput_per_min", 0.0))
    latency = float(m.get("recent_chunk_seconds_p50", 0.0))
    err = float(m.get("running_error_rate", 0.0))
    backlog = int(m.get("chunks_pending", 0))
    open_ = list(m.get("breakers_open", []))
    return [
        Condition("error_rate", err > s.alert_error_rate, err, s.alert_error_rate,
                  f"{err:.1%} of chunk attempts in running jobs failed (threshold {s.alert_error_rate:.1%})"),
        Condition("low_throughput", measured and rate < s.alert_min_throughput, rate, s.alert_min_throughput,
                  f"running jobs process {rate:,.0f} candles/min (threshold {s.alert_min_throughput:,.0f})"),
        Condition("chunk_latency", latency > s.alert_max_chunk_seconds, latency, s.alert_max_chunk_seconds,
                  f"median recent chunk takes {latency:.2f} s (threshold {s.alert_max_chunk_seconds:g} s)"),
        Condition("circuit_breaker_open", bool(open_), float(len(open_)), 0.0,
                  f"circuit breaker open: {', '.join(open_)}" if open_ else "all circuit breakers closed"),
        Condition("queue_backlog", backlog > s.alert_max_queue, float(backlog), float(s.alert_max_queue),
                  f"{backlog:,} chunks pending (threshold {s.alert_max_queue:,})"),
    ]


class Alerter:
    """Fires and clears alerts in Redis; posts new ones to the webhooks."""

    def __init__(self, telemetry: Telemetry, settings: Settings):
        self.telemetry = telemetry
        self.settings = settings
        self._pending: list[threading.Thread] = []
        self._lock = threading.Lock()

    def check(self, metrics: dict[str, Any]) -> list[str]:
        """Apply one evaluation; returns the alerts this call fired."""
        fired = []
        for c in evaluate(metrics, self.settings):
            if c.firing:
                record = {"alert": c.name, "status": "firing", "value": c.value,
                          "threshold": c.threshold, "message": c.message, "since_ms": now_ms(),
                          "source": "gpubackfill", "host": socket.gethostname(),
                          "prefix": self.settings.redis_prefix}
                if self.telemetry.fire_alert(c.name, record):
                    log.warning("alert %s: %s", c.name, c.message,
                                extra={"alert": c.name, "event": "alert_firing"})
                    fired.append(c.name)
                    for url in self.settings.alert_webhooks:
                        self._send(url, record)
            elif self.telemetry.clear_alert(c.name):
                log.info("alert %s resolved: %s", c.name, c.message,
                         extra={"alert": c.name, "event": "alert_resolved"})
        return fired

    # -- webhooks --------------------------------------------------------------

    def _send(self, url: str, record: dict[str, Any]) -> None:
        # One short-lived thread per delivery: a dead receiver, retried with
        # backoff, delays neither the caller nor the other receivers.
        t = threading.Thread(target=self._deliver, args=(url, record), daemon=True,
                             name="gpubackfill-webhook")
        with self._lock:
            self._pending = [p for p in self._pending if p.is_alive()] + [t]
        t.start()

    def _deliver(self, url: str, record: dict[str, Any]) -> None:
        try:
            post_json(url, record)
        except Exception as exc:  # never let a receiver kill the sender
            log.error("webhook %s failed after %d attempts: %s", url, WEBHOOK_ATTEMPTS, exc,
                      extra={"alert": record.get("alert"), "event": "webhook_failed"})

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every webhook sent so far was delivered or given up."""
        deadline = time.monotonic() + timeout
        with self._lock:
            pending = list(self._pending)
        for t in pending:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in pending)


def _retryable(exc: BaseException) -> bool:
    """Connection errors and 5xx are worth another try; other HTTP errors are not."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500
    return isinstance(exc, OSError)  # URLError included


def post_json(url: str, body: dict[str, Any], attempts: int = WEBHOOK_ATTEMPTS) -> int:
    """POST ``body`` as JSON; retry connection errors and 5xx with backoff."""
    data = json.dumps(body).encode()

    def post() -> int:
        req = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "gpubackfill-alerts"})
        with urllib.request.urlopen(req, timeout=WEBHOOK_TIMEOUT_S) as resp:
            return resp.status

    return tenacity.Retrying(stop=tenacity.stop_after_attempt(attempts),
                             wait=tenacity.wait_exponential(multiplier=WEBHOOK_BACKOFF_S),
                             retry=tenacity.retry_if_exception(_retryable), reraise=True)(post)
