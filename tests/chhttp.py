"""A loopback stand-in for a ClickHouse server: ClickHouse's HTTP interface in front of chDB.

No ClickHouse server binary is available to the tests, and chDB allows one engine per data
folder per process, so code that talks to ClickHouse from several processes (Dask workers,
``multiprocessing``) needs a server process of its own.  This module is that server:

    python tests/chhttp.py --path DIR [--host 127.0.0.1] [--port 0] [--ready-file F]

and the helpers that run it from tests::

    with ClickHouseHTTPServer(path, tmp_dir) as srv:      # or srv.start() / srv.stop()
        client = clickhouse_connect.get_client(host=srv.host, port=srv.port)
        srv.stop(); srv.start()                            # an outage; same path, same port

    with start_server(path, tmp_dir) as (url, process):
        ...

Every request runs on ONE ``chdb.session.Session(path)``, serialised by a lock.

Supported subset of the HTTP interface (enough for clickhouse-connect's HTTP client, with or
without ``compress``):

* ``GET /ping`` and ``GET /`` (no query) answer ``Ok.\\n``.
* ``GET``/``POST`` on any other path run a query.  The SQL is the ``query`` URL parameter, the
  request body, or both (ClickHouse semantics: ``query`` parameter + newline + body).
  ``multipart/form-data`` bodies (clickhouse-connect sends those when bind parameters are
  large) are read for ``query`` and ``param_*`` fields; external-data file fields are refused.
* ``INSERT ... FORMAT X`` followed by data (inline in the body or after a ``query`` parameter)
  streams the data into chDB with ``send_insert`` (fallback: a temp file and ``FROM INFILE``).
  Any input format chDB knows works (Native, Arrow, Parquet, CSV, JSONEachRow, ...).
  ``INSERT ... VALUES`` and ``INSERT ... SELECT`` run as ordinary queries.
* Request bodies with ``Content-Encoding`` gzip, deflate, lz4 (frames), zstd or br are
  decompressed.  Responses are never compressed (``Accept-Encoding`` /
  ``enable_http_compression`` are ignored), which HTTP clients handle transparently.
  ClickHouse's own block compression (``decompress=1`` / ``compress=1``) is not supported.
* ``database`` selects the default database (``USE db`` before the statement; ``default``
  when absent).
* ``param_NAME=value`` become chDB query parameters for ``{NAME:Type}`` placeholders (values
  in ClickHouse's escaped text form, exactly as clickhouse-connect sends them).
* ``default_format`` sets the output format (else TabSeparated, as ClickHouse); a ``FORMAT``
  clause in the query wins.
* Other URL parameters that name a ClickHouse setting (``output_format_*``, ``mutations_sync``,
  ``date_time_input_format`` ...) are applied to the session with ``SET`` for that request
  and reset (``SET x = DEFAULT``) when a later request no longer sends them; HTTP-only
  parameters (session_id, query_id, wait_end_of_query, send_progress_in_http_headers,
  enable_http_compression, http_*, client_protocol_version, ...) and unknown names are ignored.
  Caveat: a ``SET``/``USE`` sent *as a statement* sticks to the one shared session until the
  next request overrides it (there are no per-client HTTP sessions).
* Errors answer HTTP 500 with ``Code: N. DB::Exception: ... (NAME) (version V)`` and the
  header ``X-ClickHouse-Exception-Code: N``; clickhouse-connect raises ``DatabaseError``.
* Users (``--users JSON``, ``ClickHouseHTTPServer(users=...)``): ``{"NAME": {"password": "P",
  "readonly": 1}}``.  Credentials come as ClickHouse takes them: HTTP basic auth, the
  ``X-ClickHouse-User``/``X-ClickHouse-Key`` headers, or ``user``/``password`` URL parameters;
  none is ``default``, which keeps full access unless it is listed.  A wrong password or an
  unknown user answers 516 (AUTHENTICATION_FAILED).  A user with ``readonly`` runs every
  statement on a chDB connection of its own on which ``SET readonly = N`` was run first, so
  chDB itself refuses what ClickHouse refuses such a user: any write, DDL or settings change
  (code 164, READONLY).
* ``CHHTTP_QUERY_LOG=FILE`` in the environment appends each request's statement to FILE
  (a JSON string a line; an insert without its data).
* Response headers: ``X-ClickHouse-Summary`` (read/written rows and bytes),
  ``X-ClickHouse-Format`` (for result-producing statements), ``X-ClickHouse-Timezone``,
  ``X-ClickHouse-Query-Id``, ``X-ClickHouse-Server-Display-Name``.  Results are buffered and
  sent with a Content-Length; connections are HTTP/1.1 keep-alive.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

__all__ = ["ClickHouseHTTPServer", "ServerError", "serve", "start_server"]

DISPLAY_NAME = "chdb-http"
# Where each request's statement is appended (a JSON string a line), when set:
# a test's proof of what a client sent.
_QUERY_LOG = os.environ.get("CHHTTP_QUERY_LOG")

# URL parameters that belong to the HTTP interface or the client, never applied as settings.
_HTTP_ONLY_PARAMS = frozenset({
    "query", "database", "default_format", "user", "password", "quota_key", "query_id",
    "session_id", "session_timeout", "session_check", "wait_end_of_query", "buffer_size",
    "compress", "decompress", "client_protocol_version", "role", "enable_http_compression",
    "send_progress_in_http_headers", "cancel_http_readonly_queries_on_client_close",
    "readonly", "max_query_size", "add_http_cors_header", "stacktrace",
})
_HTTP_ONLY_PREFIXES = ("http_", "param_")

_RESULT_KEYWORDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "CHECK"})

_CONTENT_TYPES = {
    "tabseparated": "text/tab-separated-values; charset=UTF-8",
    "tsv": "text/tab-separated-values; charset=UTF-8",
    "csv": "text/csv; charset=UTF-8; header=absent",
    "json": "application/json; charset=UTF-8",
    "jsoncompact": "application/json; charset=UTF-8",
    "jsoneachrow": "application/x-ndjson; charset=UTF-8",
}

_CODE_RE = re.compile(r"Code:\s*(\d+)")
_TRAILING_FORMAT_RE = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE)


class ServerError(RuntimeError):
    """The server process did not come up."""


class QueryError(Exception):
    """An error reported to the client as a ClickHouse exception."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        match = _CODE_RE.search(message)
        if code is None:
            code = int(match.group(1)) if match else 1001
        if not match:
            message = f"Code: {code}. DB::Exception: {message}"
        else:
            # chDB wraps engine errors ("Streaming insert append failed: Code: 27. ...")
            message = message[match.start():]
        self.code = code
        self.message = message


# --------------------------------------------------------------------------------------------
# SQL text helpers
# --------------------------------------------------------------------------------------------

def _skip_trivia(sql: bytes, i: int) -> int:
    """Index of the next byte after whitespace and comments."""
    n = len(sql)
    while i < n:
        c = sql[i]
        if c in b" \t\r\n\f\v":
            i += 1
        elif sql.startswith(b"--", i) or sql.startswith(b"#!", i) or sql.startswith(b"# ", i):
            j = sql.find(b"\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith(b"/*", i):
            j = sql.find(b"*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            break
    return i


def _first_keyword(sql: str) -> str:
    raw = sql.encode()
    i = _skip_trivia(raw, 0)
    while i < len(raw) and raw[i:i + 1] == b"(":
        i = _skip_trivia(raw, i + 1)
    m = re.match(rb"[A-Za-z_]+", raw[i:])
    return m.group(0).decode().upper() if m else ""


def _split_insert(text: bytes) -> tuple[str, str, int] | None:
    """For ``INSERT ... FORMAT X<data>`` return (statement without FORMAT, X, data offset).

    None when ``text`` is not an INSERT with a FORMAT clause (INSERT VALUES / SELECT, other
    statements).  Quoted names, strings and comments are skipped; data starts after the
    first newline following the format name, or after the whitespace if there is none.
    """
    n = len(text)
    i = _skip_trivia(text, 0)
    if text[i:i + 6].upper() != b"INSERT":
        return None
    depth = 0
    while i < n:
        c = text[i]
        if c > 0x7F:  # binary data before a FORMAT keyword: not an INSERT ... FORMAT header
            return None
        if c in b"'\"`":
            j = i + 1
            while j < n:
                if text[j] == 0x5C:  # backslash
                    j += 2
                    continue
                if text[j] == c:
                    if j + 1 < n and text[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
            continue
        if c in b"-/#" and _skip_trivia(text, i) != i:
            i = _skip_trivia(text, i)
            continue
        if c == 0x28:
            depth += 1
            i += 1
            continue
        if c == 0x29:
            depth -= 1
            i += 1
            continue
        if chr(c).isalpha() or c == 0x5F:
            j = i
            while j < n and (chr(text[j]).isalnum() or text[j] == 0x5F):
                j += 1
            word = text[i:j].upper()
            if depth == 0 and word in (b"VALUES", b"SELECT", b"WITH"):
                return None
            if depth == 0 and word == b"FORMAT":
                k = j
                while k < n and text[k] in b" \t\r\n":
                    k += 1
                m = re.match(rb"[A-Za-z0-9_]+", text[k:k + 256])
                if not m:
                    return None
                fmt = m.group(0).decode()
                d = k + len(fmt)
                while d < n and text[d] in b" \t\r\n":
                    d += 1
                    if text[d - 1] == 0x0A:
                        break
                return text[:i].decode().rstrip(), fmt, d
            i = j
            continue
        i += 1
    return None


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# --------------------------------------------------------------------------------------------
# Body decoding
# --------------------------------------------------------------------------------------------

def _decompress(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if not data or encoding in ("", "identity"):
        return data
    if encoding in ("gzip", "x-gzip"):
        out, d = [], data
        while d:  # concatenated gzip members
            z = zlib.decompressobj(wbits=31)
            out.append(z.decompress(d))
            d = z.unused_data
        return b"".join(out)
    if encoding == "deflate":
        try:
            return zlib.decompress(data)
        except zlib.error:
            return zlib.decompress(data, wbits=-15)
    if encoding == "lz4":
        import lz4.frame
        out, d = [], data
        while d:  # clickhouse-connect writes one frame per block
            dec = lz4.frame.LZ4FrameDecompressor()
            out.append(dec.decompress(d))
            d = dec.unused_data if dec.eof else b""
        return b"".join(out)
    if encoding == "zstd":
        try:
            from compression import zstd  # Python 3.14+
        except ImportError:
            try:
                from backports import zstd
            except ImportError:
                import zstandard
                return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        return zstd.decompress(data)
    if encoding == "br":
        import brotli
        return brotli.decompress(data)
    raise QueryError(f"Unknown Content-Encoding: {encoding}", 73)


def _multipart_fields(content_type: str, body: bytes) -> dict[str, bytes]:
    from email.parser import BytesParser
    from email.policy import HTTP
    msg = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields: dict[str, bytes] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if part.get_param("filename", header="content-disposition") is not None:
            raise QueryError("External data (file fields) is not supported by chhttp", 48)
        if name:
            fields[name] = part.get_payload(decode=True) or b""
    return fields


# --------------------------------------------------------------------------------------------
# The engine: one chDB session, one lock
# --------------------------------------------------------------------------------------------

class _Conn:
    """One chDB connection and the session state this server set on it."""

    def __init__(self, query, send_insert=None):
        self.query = query
        self.send_insert = send_insert
        self.database: str | None = None
        self.applied: dict[str, str] = {}


class Engine:
    def __init__(self, path: str, users: dict[str, dict] | None = None):
        import chdb
        import chdb.session

        self.path = os.path.abspath(path)
        os.makedirs(self.path, exist_ok=True)
        self.session = chdb.session.Session(self.path)
        self.lock = threading.Lock()
        self.users = dict(users or {})
        self._conns: dict[str, _Conn] = {
            "": _Conn(self.session.query, getattr(self.session, "send_insert", None))}
        self._raw: list = []
        self.version = self._text("SELECT version()")
        self.timezone = self._text("SELECT timezone()")
        self.settings_names = set(self._text("SELECT name FROM system.settings").split("\n"))
        self.chdb_version = getattr(chdb, "__version__", "?")

    def _text(self, sql: str) -> str:
        return self.session.query(sql, "TabSeparated").bytes().decode().rstrip("\n")

    def close(self) -> None:
        if self.lock.acquire(timeout=30):
            try:
                for conn in self._raw:
                    conn.close()
                self.session.close()
            finally:
                self.lock.release()

    # -- users -------------------------------------------------------------------------

    def authenticate(self, user: str | None, password: str | None) -> str:
        """The user a request runs as (``default`` without credentials)."""
        name = user or "default"
        if name == "default" and "default" not in self.users:
            return name
        known = self.users.get(name)
        if known is None or not hmac.compare_digest(str(known.get("password", "")), password or ""):
            raise QueryError(f"{name}: Authentication failed: password is incorrect, or there is no "
                             f"user with such name. (AUTHENTICATION_FAILED)", 516)
        return name

    def _conn(self, user: str) -> _Conn:
        """The connection ``user``'s statements run on: the shared session, or
        for a read-only user a connection of its own, made read-only once."""
        level = int(self.users.get(user, {}).get("readonly", 0))
        if not level:
            return self._conns[""]
        if user not in self._conns:
            import chdb

            raw = chdb.connect(self.path)
            raw.query(f"SET readonly = {level}", "TabSeparated")
            self._raw.append(raw)
            self._conns[user] = _Conn(raw.query)
        return self._conns[user]

    # -- per-request session state -------------------------------------------------------

    @staticmethod
    def _prepare(conn: _Conn, database: str, settings: dict[str, str]) -> None:
        if database != conn.database:
            conn.database = None
            conn.query(f"USE `{database.replace('`', '``')}`", "TabSeparated")
            conn.database = database
        changes = []
        for name in conn.applied:
            if name not in settings:
                changes.append(f"{name} = DEFAULT")
        for name, value in settings.items():
            if conn.applied.get(name) != value:
                changes.append(f"{name} = {_quote(value)}")
        if changes:
            # if SET fails half-way, make the next request reset or re-set every name involved
            unknown = {k: "\0" for k in (*conn.applied, *settings)}
            conn.applied = unknown
            conn.query("SET " + ", ".join(changes), "TabSeparated")
            conn.applied = dict(settings)

    @staticmethod
    def _forget_state_after(conn: _Conn, sql: str) -> None:
        kw = _first_keyword(sql)
        if kw == "USE":
            conn.database = None
        elif kw == "SET":
            conn.applied = {k: "\0" for k in conn.applied}  # force re-apply
            conn.database = None

    # -- execution ---------------------------------------------------------------------

    def execute(self, text: bytes, database: str, params: dict[str, str],
                settings: dict[str, str], default_format: str, user: str = "default"
                ) -> tuple[bytes, dict]:
        """Run one request as ``user`` (authenticated).  Returns (body, headers)."""
        split = _split_insert(text)
        if _QUERY_LOG:
            with open(_QUERY_LOG, "a") as log:
                log.write(json.dumps(text[:split[2] if split else None].decode("utf-8", "replace")) + "\n")
        with self.lock:
            conn = self._conn(user)
            try:
                self._prepare(conn, database, settings)
                if split is not None:
                    sql, fmt, offset = split
                    rows, nbytes = self._insert(conn, sql, fmt, memoryview(text)[offset:])
                    return b"", {"summary": {"written_rows": rows, "written_bytes": nbytes}}
                sql = text.decode("utf-8", errors="surrogateescape")
                if params:
                    res = conn.query(sql, default_format, params=params)
                else:
                    res = conn.query(sql, default_format)
                self._forget_state_after(conn, sql)
            except QueryError:
                raise
            except Exception as ex:  # chdb raises ChdbError / RuntimeError with CH messages
                conn.database = None
                raise QueryError(str(ex)) from None
        body = res.bytes()
        headers: dict = {"summary": {
            "read_rows": res.rows_read(), "read_bytes": res.bytes_read(),
            "written_rows": _safe(res, "rows_written"), "written_bytes": _safe(res, "bytes_written"),
            "elapsed_ns": int(res.elapsed() * 1e9)}}
        if _first_keyword(sql) in _RESULT_KEYWORDS:
            m = _TRAILING_FORMAT_RE.search(sql[-300:])
            headers["format"] = m.group(1) if m else default_format
        return body, headers

    def _insert(self, conn: _Conn, sql: str, fmt: str, data: memoryview) -> tuple[int, int]:
        """Stream ``data`` (in format ``fmt``) into ``sql`` (INSERT without FORMAT)."""
        send_insert = conn.send_insert
        if send_insert is not None:
            with send_insert(sql, fmt) as ins:
                if len(data):
                    ins.append(data)
                done = ins.finish()
                return done.rows_written, done.bytes_written
        with tempfile.NamedTemporaryFile(suffix="." + fmt, delete=False) as f:
            f.write(data)
        try:
            before = f"{sql} FROM INFILE {_quote(f.name)} FORMAT {fmt}"
            res = conn.query(before, "TabSeparated")
            return _safe(res, "rows_written"), _safe(res, "bytes_written")
        finally:
            os.unlink(f.name)


def _safe(res, name: str) -> int:
    try:
        return int(getattr(res, name)())
    except Exception:
        return 0


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "chhttp"
    engine: Engine  # set on the subclass made by make_server

    def log_message(self, format, *args):  # noqa: A002 - quiet by default
        if os.environ.get("CHHTTP_LOG"):
            super().log_message(format, *args)

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def do_HEAD(self):
        self._send(200, b"", {"Content-Type": "text/html; charset=UTF-8"}, head=True)

    # -- plumbing ----------------------------------------------------------------------

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: dict, head: bool = False) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-ClickHouse-Server-Display-Name", DISPLAY_NAME)
        self.send_header("Keep-Alive", "timeout=10")
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    # -- request ----------------------------------------------------------------------

    def _handle(self):
        url = urlsplit(self.path)
        args = dict(parse_qsl(url.query, keep_blank_values=True))
        try:
            body = self._read_body()
        except Exception as ex:  # broken client: answer and drop the connection
            self.close_connection = True
            return self._error(QueryError(f"Cannot read request body: {ex}", 33), None)
        route = url.path.rstrip("/")
        if route == "/ping" or (route == "" and self.command == "GET" and "query" not in args and not body):
            return self._send(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
        if route not in ("", "/query"):
            return self._error(QueryError(f"There is no handle {url.path}", 0), None, status=404)
        query_id = args.get("query_id") or str(uuid.uuid4())
        try:
            body = _decompress(body, self.headers.get("Content-Encoding", ""))
            ctype = self.headers.get("Content-Type", "")
            if ctype.lower().startswith("multipart/form-data"):
                for name, value in _multipart_fields(ctype, body).items():
                    args[name] = value.decode("utf-8", errors="surrogateescape")
                body = b""
            query = args.get("query", "")
            if query and body:
                text = query.encode("utf-8", errors="surrogateescape") + b"\n" + body
            elif query:
                text = query.encode("utf-8", errors="surrogateescape")
            else:
                text = body
            if not text.strip():
                raise QueryError("Empty query", 62)
            params = {k[6:]: v for k, v in args.items() if k.startswith("param_")}
            settings = {k: v for k, v in args.items()
                        if k not in _HTTP_ONLY_PARAMS and not k.startswith(_HTTP_ONLY_PREFIXES)
                        and k in self.engine.settings_names}
            database = args.get("database") or "default"
            default_format = args.get("default_format") or "TabSeparated"
            user = self.engine.authenticate(*self._credentials(args))
            result, info = self.engine.execute(text, database, params, settings, default_format, user)
        except QueryError as ex:
            return self._error(ex, query_id)
        except Exception as ex:  # bug here, not in the query: still answer like ClickHouse
            return self._error(QueryError(f"chhttp internal error: {type(ex).__name__}: {ex}", 1001), query_id)
        summary = {"read_rows": "0", "read_bytes": "0", "written_rows": "0", "written_bytes": "0",
                   "total_rows_to_read": "0", "result_rows": "0", "result_bytes": str(len(result)),
                   "elapsed_ns": "0"}
        summary.update({k: str(v) for k, v in info.get("summary", {}).items()})
        headers = {"X-ClickHouse-Query-Id": query_id,
                   "X-ClickHouse-Timezone": self.engine.timezone,
                   "X-ClickHouse-Summary": json.dumps(summary, separators=(",", ":")),
                   "Content-Type": "text/plain; charset=UTF-8"}
        if "format" in info:
            fmt = info["format"]
            headers["X-ClickHouse-Format"] = fmt
            headers["Content-Type"] = _CONTENT_TYPES.get(fmt.lower(), "application/octet-stream")
        self._send(200, result, headers)

    def _credentials(self, args: dict[str, str]) -> tuple[str | None, str | None]:
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except Exception:
                raise QueryError("Malformed Authorization header", 516) from None
            return user, password
        if self.headers.get("X-ClickHouse-User"):
            return self.headers["X-ClickHouse-User"], self.headers.get("X-ClickHouse-Key", "")
        return args.get("user"), args.get("password")

    def _error(self, ex: QueryError, query_id: str | None, status: int = 500) -> None:
        name = "" if re.search(r"\([A-Z_]+\)\s*$", ex.message) else " (UNKNOWN_EXCEPTION)"
        text = f"{ex.message}{name} (version {self.engine.version})\n"
        headers = {"X-ClickHouse-Exception-Code": str(ex.code),
                   "Content-Type": "text/plain; charset=UTF-8"}
        if query_id:
            headers["X-ClickHouse-Query-Id"] = query_id
        self._send(status, text.encode("utf-8", errors="replace"), headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def make_server(path: str, host: str = "127.0.0.1", port: int = 0,
                users: dict[str, dict] | None = None) -> tuple[_Server, Engine]:
    """Open the chDB session at ``path`` and bind (not yet serve) an HTTP server to it."""
    engine = Engine(path, users)
    handler = type("Handler", (_Handler,), {"engine": engine})
    try:
        server = _Server((host, port), handler)
    except Exception:
        engine.close()
        raise
    return server, engine


def serve(path: str, host: str = "127.0.0.1", port: int = 0, ready_file: str | None = None,
          users: dict[str, dict] | None = None) -> None:
    """Serve ClickHouse's HTTP interface over chDB at ``path`` until SIGTERM/SIGINT.

    When listening, the bound port is written to ``ready_file`` (atomically) if given.
    """
    server, engine = make_server(path, host, port, users)
    stop = threading.Event()

    def _on_signal(signum, frame):
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="chhttp", daemon=True)
    thread.start()
    bound = server.server_address[1]
    if ready_file:
        tmp = f"{ready_file}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(str(bound))
        os.replace(tmp, ready_file)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        engine.close()


# --------------------------------------------------------------------------------------------
# Test helpers: run the server as a subprocess
# --------------------------------------------------------------------------------------------

_LIVE: set[subprocess.Popen] = set()


@atexit.register
def _stop_leftovers() -> None:
    """Servers a test forgot to stop must not outlive the test run."""
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


class ClickHouseHTTPServer:
    """A chhttp server subprocess over the chDB folder ``path``.

    ``start()`` launches it and waits until it listens; ``stop()`` terminates it (then kills);
    ``start()`` again reopens the same path on the same port, so client URLs stay valid across
    a simulated outage.  Usable as a context manager (start on enter, stop on exit).
    """

    def __init__(self, path: str, tmp_dir: str | None = None, host: str = "127.0.0.1",
                 port: int = 0, timeout: float = 30.0, env: dict[str, str] | None = None,
                 tz: str | None = "UTC", users: dict[str, dict] | None = None):
        self.path = os.path.abspath(str(path))
        self.tmp_dir = str(tmp_dir) if tmp_dir is not None else tempfile.mkdtemp(prefix="chhttp-")
        self.host = host
        self.port = port
        self.timeout = timeout
        self.env = dict(env or {})
        if tz:
            self.env.setdefault("TZ", tz)
        self.users = dict(users or {})
        self.process: subprocess.Popen | None = None
        self._starts = 0

    @property
    def url(self) -> str:
        if not self.port:
            raise ServerError("server not started yet")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> str:
        if self.running:
            return self.url
        self._starts += 1
        os.makedirs(self.tmp_dir, exist_ok=True)
        ready = os.path.join(self.tmp_dir, f"chhttp-{os.getpid()}-{id(self)}-{self._starts}.port")
        log_path = os.path.join(self.tmp_dir, f"chhttp-{os.getpid()}-{id(self)}.log")
        if os.path.exists(ready):
            os.unlink(ready)
        cmd = [sys.executable, os.path.abspath(__file__), "--path", self.path,
               "--host", self.host, "--port", str(self.port), "--ready-file", ready]
        if self.users:
            cmd += ["--users", json.dumps(self.users)]
        env = {**os.environ, **self.env}
        deadline = time.monotonic() + self.timeout
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            stdin=subprocess.DEVNULL)
        _LIVE.add(self.process)
        while True:
            if os.path.exists(ready):
                with open(ready) as f:
                    self.port = int(f.read().strip())
                return self.url
            if self.process.poll() is not None:
                rc = self.process.returncode
                self.process = None
                raise ServerError(f"chhttp exited with {rc} before listening:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"chhttp did not listen within {self.timeout}s:\n{_tail(log_path)}")
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        _LIVE.discard(proc)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """Stop abruptly (SIGKILL): no flush, no clean session close."""
        proc, self.process = self.process, None
        _LIVE.discard(proc)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> str:
        self.stop()
        return self.start()

    def __enter__(self) -> ClickHouseHTTPServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()



@contextlib.contextmanager
def start_server(path: str, tmp_dir: str | None = None, **kwargs):
    """Run a chhttp subprocess over ``path`` for the duration of a ``with`` block.

    ``with start_server(path, tmp_dir) as (url, process):`` -- ``url`` is
    ``"http://127.0.0.1:PORT"``, ``process`` the ``subprocess.Popen``.  On exit the process is
    terminated (then killed).  Keyword arguments go to :class:`ClickHouseHTTPServer`.
    """
    server = ClickHouseHTTPServer(path, tmp_dir, **kwargs)
    server.start()
    try:
        yield server.url, server.process
    finally:
        server.stop()


def _tail(path: str, n: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--path", required=True, help="chDB data folder")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--ready-file", default=None, help="write the bound port here when listening")
    ap.add_argument("--users", default=None,
                    help='JSON: {"NAME": {"password": "P", "readonly": 1}}; default keeps full access')
    a = ap.parse_args(argv)
    serve(a.path, a.host, a.port, a.ready_file, json.loads(a.users) if a.users else None)


if __name__ == "__main__":
    main()
