"""The process that holds the embedded store, and how other processes reach it.

chDB lets one process open a data folder.  So that ``export`` (or ``ingest``,
``sets``, ``start --detach``) works from a second terminal while a backfill
runs, the long-running commands that open the embedded store (``serve``,
``start``, ``execute``, ``demo``) also listen on 127.0.0.1, on a port the OS
picks, and record it in ``<GPUBACKFILL_HOME>/clickhouse.holder.json`` (mode
0600: pid, process start time, port, a random token, the command), removed
when they exit.  A CLI command that finds that file, naming a live process,
sends its operation there instead of opening chDB: the holder runs the same
``BackfillService`` method, with the caller's settings (its database, Redis
prefix, defaults), on the engine it already has open.  Each operation runs on
a thread of its own, with its own chDB handle
(``storage.clickhouse_client.EmbeddedClient``), beside the running chunks'
loads and writes, so a busy holder still answers.

- ``ingest`` sends the file's path (same machine), not its bytes.
- ``export`` streams: the holder sends the label set as an Arrow IPC stream,
  one batch per query (``export.BATCH_ROWS`` rows), and the caller writes
  each to the file as it arrives (``export.write``), so neither process holds
  the whole set; the socket's flow control paces the holder.
- A record whose pid is gone, or belongs to a process started after the
  record was written (a reused pid), is stale and ignored; a holder that does
  not answer is skipped too, and the command opens chDB itself.

Wire format, one connection per operation: the holder greets with a JSON line
(``{"gpubackfill": 1, "pid": N}``); the caller sends one JSON line (token,
operation, its settings, arguments); the holder answers one JSON line
(``{"ok": true, "result": ...}`` or ``{"ok": false, "error": class name,
"message": ...}``).  An export's answer is followed by the Arrow stream and
a closing JSON line (an error midway is reported there, and the caller's
temporary file is removed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import json
import logging
import os
import secrets
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import errors
from ..config import Settings
from ..errors import DependencyError, GpubackfillError

if TYPE_CHECKING:
    from ..service import BackfillService

log = logging.getLogger(__name__)

PROTOCOL = 1
HELLO_TIMEOUT_S = 5.0  # a live pid that is not a holder (reused) must not hang a command
# The operations a holder runs for others: what needs ClickHouse and is
# quick or streams.  Running jobs stays with ``execute``/``serve``.
OPERATIONS = ("init", "ingest", "create_job", "plan_update", "series_overview", "label_sets",
              "export_parts")
_ERRORS = {cls.__name__: cls for cls in (
    errors.InvalidInput, errors.InvalidCandles, errors.InvalidLabelSpec, errors.BackendUnavailable,
    errors.JobNotFound, errors.InvalidTransition, errors.DependencyError, errors.TransientError,
    errors.ResourceError, errors.PersistentError, errors.GpubackfillError)}


def record_path(settings: Settings) -> Path:
    """Beside the chDB folder it is about: one holder per folder."""
    return settings.chdb_path.with_name(settings.chdb_path.name + ".holder.json")


# -- the holder's side ---------------------------------------------------------


@contextlib.contextmanager
def sharing(svc: BackfillService, command: str, required: bool = True) -> Iterator[None]:
    """Open the embedded store now and serve it to other processes until the block ends.

    With a ClickHouse server there is nothing to share.  When another process
    holds the store: raise (``required``, as the command needs it) with what
    the holder can do instead, or carry on without sharing (``serve``, whose
    jobs then report the store as they would have)."""
    settings = svc.settings
    if not settings.embedded_clickhouse:
        yield
        return
    try:
        _ = svc.store.client  # the open that another process's lock refuses
    except DependencyError as exc:
        if required:
            raise DependencyError(_held_hint(settings, str(exc), command), "clickhouse") from None
        log.warning("%s", exc)
        yield
        return
    endpoint = Endpoint(svc, command)
    try:
        yield
    finally:
        endpoint.close()


class Endpoint:
    """The listening side: a thread per connection, each one operation."""

    def __init__(self, svc: BackfillService, command: str):
        self.svc, self.command = svc, command
        self.token = secrets.token_hex(16)
        self.path = record_path(svc.settings)
        self._services: dict[str, BackfillService] = {}
        self._lock = threading.Lock()
        endpoint = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                endpoint._handle(self.rfile, self.wfile)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="store-holder",
                                       daemon=True)
        self.thread.start()
        self._write_record()

    def _write_record(self) -> None:
        import psutil

        me = psutil.Process()
        body = json.dumps({"pid": me.pid, "started": me.create_time(), "port": self.port,
                           "token": self.token, "command": self.command,
                           "chdb": str(self.svc.settings.chdb_path)})
        tmp = self.path.with_name(f".{self.path.name}.{me.pid}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the token is a secret
        with os.fdopen(fd, "w") as f:
            f.write(body)
        os.replace(tmp, self.path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        # Only our own record: a holder that started after us wrote its own.
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.path.read_text()).get("token") == self.token:
                self.path.unlink()

    def _service(self, fields: dict) -> BackfillService:
        """A service for the caller's settings (its database, Redis, defaults)
        on this process's engine: the engine is per folder, not per settings."""
        from ..service import BackfillService

        settings = Settings.model_validate(fields)
        if settings.chdb_path != self.svc.settings.chdb_path or not settings.embedded_clickhouse:
            raise errors.InvalidInput("that request is for another store")
        key = json.dumps(fields, sort_keys=True, default=str)
        with self._lock:
            if key not in self._services:
                self._services[key] = (self.svc if settings == self.svc.settings
                                       else BackfillService(settings))
            return self._services[key]

    def _handle(self, rfile, wfile) -> None:
        _send(wfile, {"gpubackfill": PROTOCOL, "pid": os.getpid()})
        try:
            request = json.loads(rfile.readline() or b"{}")
            if not hmac.compare_digest(str(request.get("token", "")), self.token):
                raise errors.InvalidInput("not authorised: the token does not match this holder's")
            op = request.get("op")
            if op not in OPERATIONS:
                raise errors.InvalidInput(f"unknown operation {op!r}")
            svc = self._service(request["settings"])
            result = getattr(svc, op)(*request.get("args", ()), **request.get("kwargs", {}))
            if op == "export_parts":
                self._stream(wfile, *result)
                return
            _send(wfile, {"ok": True, "result": _plain(result)})
        except (BrokenPipeError, ConnectionResetError):
            return  # the caller went away (Ctrl-C): nothing to answer
        except Exception as exc:  # every failure goes back to the caller as its one line
            with contextlib.suppress(OSError):
                _send(wfile, _failure(exc))

    def _stream(self, wfile, parts, meta: dict[bytes, bytes], chosen) -> None:
        import pyarrow as pa

        parts = iter(parts)
        first = next(parts)  # "no labels in that range" is raised here, answered as the reply
        _send(wfile, {"ok": True, "result": {"set_id": chosen.set_id},
                      "meta": {k.decode(): v.decode() for k, v in meta.items()}})
        closing: dict[str, Any] = {"ok": True}
        writer = pa.ipc.new_stream(wfile, first.schema)
        writer.write_table(first)
        try:
            for part in parts:
                writer.write_table(part)
        except OSError:
            raise  # the caller went away (or the socket broke): no one to tell
        except Exception as exc:
            closing = _failure(exc)  # told after the end of the stream
        writer.close()  # the end-of-stream marker
        _send(wfile, closing)


def _failure(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, GpubackfillError):
        name = type(exc).__name__ if type(exc).__name__ in _ERRORS else (
            "DependencyError" if isinstance(exc, DependencyError) else "GpubackfillError")
        return {"ok": False, "error": name, "message": str(exc)}
    log.exception("store holder: the operation failed")
    return {"ok": False, "error": "GpubackfillError",
            "message": f"the process holding the store failed: {type(exc).__name__}: {exc}"}


def _plain(value: Any) -> Any:
    """JSON for a service result (IngestReport, LabelSet: dataclasses)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _send(wfile, message: dict) -> None:
    wfile.write(json.dumps(message).encode() + b"\n")
    wfile.flush()


# -- the caller's side -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Holder:
    """A live holder as its record describes it."""

    pid: int
    port: int
    token: str
    command: str


def find(settings: Settings) -> Holder | None:
    """The live process holding this embedded store, or None (no record, a
    stale one, a ClickHouse server, or this very process)."""
    if not settings.embedded_clickhouse:
        return None
    try:
        record = json.loads(record_path(settings).read_text())
        pid, started = int(record["pid"]), float(record["started"])
        holder = Holder(pid, int(record["port"]), str(record["token"]), str(record["command"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid == os.getpid():
        return None
    import psutil

    try:
        # A pid reused by a later process is not the holder (1 s: clock rounding).
        if psutil.Process(pid).create_time() > started + 1.0:
            return None
    except psutil.Error:
        return None  # gone
    return holder


def remote(settings: Settings) -> Remote | None:
    """A ``Remote`` for the holder of this store when one answers, else None."""
    holder = find(settings)
    if holder is None:
        return None
    service = Remote(settings, holder)
    try:
        service._connect().close()
    except DependencyError:
        return None  # exiting, or not a holder after all: open the store here
    return service


class Remote:
    """The ``BackfillService`` store operations, run in the holder process.

    Same names and arguments as the service, so the CLI calls either."""

    def __init__(self, settings: Settings, holder: Holder):
        self.settings, self.holder = settings, holder

    def describe(self) -> str:
        return f"`gpubackfill {self.holder.command}` (pid {self.holder.pid})"

    def init(self) -> None:
        self._call("init")

    def ingest(self, path: str | Path, *args, **kwargs):
        from ..storage.clickhouse_store import IngestReport

        # The holder reads the file itself: an absolute path means the same file there.
        if kwargs.get("rejects") is not None:
            kwargs["rejects"] = str(Path(kwargs["rejects"]).absolute())
        r = self._call("ingest", str(Path(path).absolute()), *args, **kwargs)
        return IngestReport(**{**r, "rejected": [tuple(x) for x in r["rejected"]]})

    def create_job(self, *args, **kwargs) -> str:
        return self._call("create_job", *args, **kwargs)

    def plan_update(self, *args, **kwargs) -> list[dict]:
        return self._call("plan_update", *args, **kwargs)

    def series_overview(self, *args, **kwargs) -> list[dict]:
        """As dicts (``coverage.SeriesCoverage`` as JSON)."""
        return self._call("series_overview", *args, **kwargs)

    def label_sets(self, *args, **kwargs) -> list:
        from ..storage.export import LabelSet

        return [LabelSet(**{**s, "series": tuple(s["series"]), "span": tuple(s["span"])})
                for s in self._call("label_sets", *args, **kwargs)]

    def export_file(self, path: str | Path, *args, **kwargs) -> tuple[int, int, str]:
        """As ``BackfillService.export_file``: written here, batch by batch, as the holder sends them."""
        import pyarrow as pa

        from ..storage import export as export_mod

        with self._connect() as conn:
            head = conn.request("export_parts", args, kwargs)
            meta = {k.encode(): v.encode() for k, v in head["meta"].items()}

            def parts() -> Iterator[pa.Table]:
                try:
                    reader = pa.ipc.open_stream(conn.rfile)
                    for batch in reader:
                        yield pa.Table.from_batches([batch], reader.schema)
                except (OSError, pa.ArrowInvalid) as exc:
                    raise conn.lost(exc) from None
                conn.answer()  # an error after the last batch raises here: no file is left

            rows, cols = export_mod.write(path, parts(), meta)
            return rows, cols, head["result"]["set_id"]

    def _call(self, op: str, *args, **kwargs) -> Any:
        with self._connect() as conn:
            return conn.request(op, args, kwargs)["result"]

    def _connect(self) -> _Connection:
        return _Connection(self)


class _Connection:
    def __init__(self, remote: Remote):
        self.remote = remote
        h = remote.holder
        try:
            self.sock = socket.create_connection(("127.0.0.1", h.port), timeout=HELLO_TIMEOUT_S)
            self.rfile = self.sock.makefile("rb")
            hello = json.loads(self.rfile.readline() or b"{}")
        except (OSError, ValueError) as exc:
            self.close()
            raise DependencyError(f"the process holding the store ({remote.describe()}) did not "
                                  f"answer: {exc}", "clickhouse") from None
        if hello.get("gpubackfill") != PROTOCOL or hello.get("pid") != h.pid:
            self.close()
            raise DependencyError(f"port {h.port} is not {remote.describe()}", "clickhouse")
        self.sock.settimeout(None)  # an ingest or an export may take minutes

    def request(self, op: str, args, kwargs) -> dict:
        settings = self.remote.settings.model_dump()
        message = {"token": self.remote.holder.token, "op": op, "args": list(args),
                   "kwargs": kwargs, "settings": json.loads(json.dumps(settings, default=str))}
        try:
            self.sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as exc:
            raise self.lost(exc) from None
        return self.answer()

    def answer(self) -> dict:
        try:
            line = self.rfile.readline()
        except OSError as exc:
            raise self.lost(exc) from None
        if not line:
            raise self.lost(EOFError("connection closed"))
        reply = json.loads(line)
        if not reply.get("ok"):
            cls = _ERRORS.get(reply.get("error"), GpubackfillError)
            raise cls(reply.get("message", "the process holding the store refused the request"))
        return reply

    def lost(self, exc: BaseException) -> DependencyError:
        return DependencyError(f"lost the process holding the store ({self.remote.describe()}) "
                               f"midway: {exc}", "clickhouse")

    def close(self) -> None:
        for f in (getattr(self, "rfile", None), getattr(self, "sock", None)):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _held_hint(settings: Settings, refused: str, command: str) -> str:
    """The lock error, plus what the holder can do for this command instead."""
    holder = find(settings)
    if holder is None:
        return refused
    what = ("`start --detach` queues a job there and its scheduler runs it"
            if holder.command == "serve" else
            "queue this one with `start --detach` and `execute` it once that process ends")
    return (f"the embedded ClickHouse at {settings.chdb_path} is open in another process, "
            f"`gpubackfill {holder.command}` (pid {holder.pid}), so `{command}` cannot run here; "
            f"ingest, export and sets go through that process, and {what}")
