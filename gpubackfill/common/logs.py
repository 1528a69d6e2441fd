"""Structured logging: one line per job state change and per chunk failure.

Records carry ``job_id`` (and ``chunk`` for chunk events) as fields; the
text format appends them as ``key=value``, ``LOG_FORMAT=json`` writes one
JSON object per line with the same keys.
"""

from __future__ import annotations

import json
import logging
import sys
import time

log = logging.getLogger("gpubackfill")

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        out.update(_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        base = super().format(record)
        return f"{base} {extra}" if extra else base


def configure(level: str = "INFO", fmt: str = "text", stream=None) -> None:
    """Route gpubackfill's records to ``stream`` (stderr) in the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def job_event(job_id: str, status: str, event: str, note: str = "", **fields) -> None:
    """A job changed state (``status`` is the new one)."""
    log.info("job %s %s: %s%s", job_id, event, status, f" ({note})" if note else "",
             extra={"job_id": job_id, "event": event, "status": status, **fields})


def chunk_failed(job_id: str, chunk: int, error: str, retry: bool, **fields) -> None:
    log.warning("job %s chunk %s failed%s: %s", job_id, chunk, " (will retry)" if retry else "",
                error.splitlines()[0][:500] if error else "",
                extra={"job_id": job_id, "chunk": chunk, "retry": retry, "event": "chunk_failed", **fields})
