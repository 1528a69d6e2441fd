"""Settings: one typed object, read from the environment (and ``.env``).

The services and the batch have plain names (``REDIS_*``, ``CLICKHOUSE_*``,
``BATCH_*`` ...), the ones deployment files set; the rest are
``GPUBACKFILL_*``.  Without
``CLICKHOUSE_URL``/``CLICKHOUSE_HOST`` and ``REDIS_URL``/``REDIS_HOST`` the
embedded defaults are used: chDB and a bundled redis-server, both keeping
their data under ``GPUBACKFILL_HOME``.

pydantic-settings reads the environment and ``.env`` (the environment wins)
and pydantic validates; what they do not know is done here: the
``*_HOST``/``*_PORT`` form of the server URLs, secrets read from the file
named by ``NAME_FILE``, and one ``ConfigError`` line naming the variable in
place of a pydantic report.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import quote, urlsplit

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import InvalidInput

# Without BATCH_CHUNK_SIZE a job's chunk size is the largest of these whose
# chunks in flight (one per worker) fit the memory budget, BATCH_MEMORY_LIMIT
# or 2 GB: 1M candles on 2 workers.  Larger chunks make fewer, larger parts
# for ClickHouse to write and merge: 10M candles ran at 66% of chDB's own
# read-and-insert time with 100k chunks and 75% with 1M (bench/RESULTS.md,
# "The data path at chDB's floor").
AUTO_CHUNK_SIZES = (1_000_000, 250_000, 100_000)
AUTO_MEMORY_BUDGET = 2 * 10**9
# Peak resident memory per candle of a chunk in flight (load, kernels,
# Arrow output, insert): a budget with margin, ~380 B measured at 1M.
BYTES_PER_CANDLE = 1000


class ConfigError(InvalidInput):
    """A setting is missing, malformed or out of range."""


def _default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "gpubackfill"


def _stripped(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


Flag = Annotated[bool, BeforeValidator(_stripped)]  # pydantic's: 1/0, true/false, yes/no, on/off, t/f, y/n


def _env(name: str, default: Any = None, **constraints) -> Any:
    """A field read from the variable ``name``."""
    if callable(default):
        return Field(default_factory=default, validation_alias=name, **constraints)
    return Field(default, validation_alias=name, **constraints)


def _number(name: str, default: float, minimum: float = 0.0) -> Any:
    return Field(default, validation_alias=name, ge=minimum, allow_inf_nan=False)


# Names read that are not fields: the parts of a server URL, and the files
# holding secrets.
_URL_PARTS = ("CLICKHOUSE_HOST", "CLICKHOUSE_PORT", "CLICKHOUSE_SECURE",
              "REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD")
_SECRET_FILES = ("CLICKHOUSE_PASSWORD_FILE", "REDIS_PASSWORD_FILE", "GPUBACKFILL_API_TOKEN_FILE")


class Settings(BaseSettings):
    """Every setting, with the variable it is read from.  Frozen: derive a
    variant with ``settings.model_copy(update={...})``."""

    model_config = SettingsConfigDict(
        frozen=True, validate_by_name=True, case_sensitive=True, extra="ignore",
        env_file=".env", env_ignore_empty=True,  # an empty variable is an unset one
        validate_default=False, hide_input_in_errors=True)

    home: Path = _env("GPUBACKFILL_HOME", _default_home)
    clickhouse_url: str | None = _env("CLICKHOUSE_URL")  # None: embedded chDB under home
    clickhouse_database: str = _env("CLICKHOUSE_DATABASE", "gpubackfill")
    clickhouse_user: str = _env("CLICKHOUSE_USER", "default")
    clickhouse_password: str = _env("CLICKHOUSE_PASSWORD", "", repr=False)
    redis_url: str | None = _env("REDIS_URL")           # None: bundled redis-server under home
    redis_prefix: str = _env("GPUBACKFILL_REDIS_PREFIX", "gpubackfill")
    redis_ttl: int = _env("REDIS_TTL", 7 * 24 * 3600, ge=60)  # seconds a finished job stays in Redis
    # The bundled redis-server stops by itself after this many seconds with no
    # client (a laptop should not collect daemons); 0: it runs until `stop`.
    redis_idle_stop_s: float = _number("GPUBACKFILL_REDIS_IDLE_STOP_S", 1800.0)
    max_workers: int = _env("BATCH_MAX_WORKERS", lambda: os.cpu_count() or 1, ge=1)
    chunk_size: int | None = _env("BATCH_CHUNK_SIZE", None, ge=1)  # None: jobs.plan.chunk_size decides
    max_retries: int = _env("BATCH_MAX_RETRIES", 3, ge=0)
    cache_ttl_seconds: int = _env("CACHE_TTL_SECONDS", 3600, ge=0)  # validated, not used: nothing is cached
    metrics_enabled: Flag = _env("METRICS_ENABLED", True)
    prometheus_port: int = _env("PROMETHEUS_PORT", 9090, ge=1)    # validated, not used: /metrics is on the API port
    alert_webhooks: tuple[str, ...] = _env("ALERT_WEBHOOKS", ())  # comma-separated
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = _env("LOG_LEVEL", "INFO")
    dask_scheduler: str | None = _env("DASK_SCHEDULER_ADDRESS")
    # Where the local Dask clusters' scheduler, workers and dashboard listen:
    # loopback unless asked (the dashboard and the scheduler take no login).
    dask_host: str = _env("GPUBACKFILL_DASK_HOST", "127.0.0.1", min_length=1)
    dask_dashboard_port: int = _env("GPUBACKFILL_DASK_DASHBOARD_PORT", 0, ge=0, le=65535)  # 0: any free
    backend: Literal["cpu", "cuda", "auto"] = _env("GPUBACKFILL_BACKEND", "cpu")
    lease_seconds: int = _env("GPUBACKFILL_LEASE_SECONDS", 120, ge=1)
    rmm_pool_size: str | None = _env("GPUBACKFILL_RMM_POOL_SIZE")  # per GPU worker, e.g. "24GB"
    # The embedded engine's background merges run at this Linux nice value
    # (ClickHouse's os_threads_nice_value_merge_mutate), below the job's own
    # loads, inserts and kernels; 0: the same priority.
    chdb_merge_nice: int = _env("GPUBACKFILL_CHDB_MERGE_NICE", 10, ge=0, le=19)
    # Reliability (see storage/resilience.py): retry pacing, breakers, memory, shutdown.
    retry_base_seconds: float = _number("GPUBACKFILL_RETRY_BASE_SECONDS", 1.0)
    breaker_clickhouse_failures: int = _env("GPUBACKFILL_BREAKER_CLICKHOUSE_FAILURES", 5, ge=1)
    breaker_clickhouse_reset_seconds: float = _number("GPUBACKFILL_BREAKER_CLICKHOUSE_RESET_SECONDS",
                                                      60.0, 0.01)
    breaker_redis_failures: int = _env("GPUBACKFILL_BREAKER_REDIS_FAILURES", 3, ge=1)
    breaker_redis_reset_seconds: float = _number("GPUBACKFILL_BREAKER_REDIS_RESET_SECONDS", 30.0, 0.01)
    memory_limit_bytes: int | None = _env("BATCH_MEMORY_LIMIT")  # RSS a worker aims to stay under
    min_chunk_size: int = _env("GPUBACKFILL_MIN_CHUNK_SIZE", 1000, ge=1)  # chunks are not split below this
    # Chunks smaller than this run several to a Dask task (about this many
    # candles together, engine/driver.py's most_per_task): Dask's per-task
    # cost, a read, a kernel run, an insert and a part are paid once for
    # them.  At 50k, 10k chunks went five to a task, and the merges of their
    # small parts took a quarter of the job's CPU; at 250k (25) the merges
    # still cost twice those of a default job's 1M parts.
    task_candles: int = _env("GPUBACKFILL_TASK_CANDLES", 1_000_000, ge=1)
    shutdown_timeout: float = _number("GPUBACKFILL_SHUTDOWN_TIMEOUT", 30.0)  # grace after a signal
    # A chunk past its deadline is taken back (engine/watchdog.py).  0: automatic,
    # 10x the job's median chunk time and never under chunk_timeout_floor.
    chunk_timeout: float = _number("GPUBACKFILL_CHUNK_TIMEOUT", 0.0)
    chunk_timeout_floor: float = _number("GPUBACKFILL_CHUNK_TIMEOUT_FLOOR", 300.0, 1.0)
    # Service mode (gpubackfill serve) and observability.
    log_format: Literal["text", "json"] = _env("LOG_FORMAT", "text")
    api_host: str = _env("GPUBACKFILL_API_HOST", "127.0.0.1")
    api_port: int = _env("GPUBACKFILL_API_PORT", 8000, ge=1, le=65535)
    api_token: str = _env("GPUBACKFILL_API_TOKEN", "", repr=False)  # bearer token for mutating routes
    max_concurrent_jobs: int = _env("GPUBACKFILL_MAX_CONCURRENT_JOBS", 1, ge=1)  # jobs run at once
    scheduler_interval: float = _number("GPUBACKFILL_SCHEDULER_INTERVAL", 2.0, 0.05)  # s between passes
    alert_error_rate: float = _number("ALERT_ERROR_RATE", 0.05)             # share of chunk attempts failed
    alert_min_throughput: float = _number("ALERT_MIN_THROUGHPUT", 500_000)  # candles/min while a job runs
    alert_max_chunk_seconds: float = _number("ALERT_MAX_CHUNK_SECONDS", 1.0)  # median recent chunk time
    alert_max_queue: int = _env("ALERT_MAX_QUEUE", 5_000, ge=0)             # pending chunks, unfinished jobs

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_problem(exc)) from None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, dotenv: bool = True) -> Settings:
        """Read and validate settings; raise ConfigError naming the variable.

        ``env``: these variables instead of the environment (and no ``.env``)."""
        if env is None:
            return cls(_env_file=".env" if dotenv else None)
        try:
            return cls.model_validate({k: v for k, v in env.items() if v != ""})
        except ValidationError as exc:
            raise ConfigError(_problem(exc)) from None

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _Names(env_settings), _Names(dotenv_settings)

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_url is None

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None

    @property
    def chdb_path(self) -> Path:
        return self.home / "clickhouse"

    @property
    def redis_dir(self) -> Path:
        return self.home / "redis"

    def public(self) -> dict:
        """The settings as shown to users: secrets removed from URLs."""
        d = self.model_dump()
        d["home"] = str(self.home)
        d.pop("clickhouse_password")
        d["api_token"] = "***" if self.api_token else ""
        for key in ("clickhouse_url", "redis_url"):
            if d[key]:
                d[key] = redact_url(d[key])
        return d

    # -- what pydantic does not know -------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _url_parts_and_secrets(cls, data: Any) -> Any:
        """Server URLs from their host/port names and secrets from
        ``NAME_FILE``, unless given directly."""
        if not isinstance(data, Mapping):
            return data
        # One key per field, its variable's name; a value given by field name wins.
        fields = cls.model_fields
        data = {**{k: v for k, v in data.items() if k not in fields},
                **{fields[k].validation_alias: v for k, v in data.items() if k in fields}}
        out = {k: v for k, v in data.items() if k not in _URL_PARTS and k not in _SECRET_FILES}
        if data.get("CLICKHOUSE_PASSWORD_FILE"):
            out["CLICKHOUSE_PASSWORD"] = _read_secret(data, "CLICKHOUSE_PASSWORD")
        if data.get("GPUBACKFILL_API_TOKEN_FILE"):
            out["GPUBACKFILL_API_TOKEN"] = _read_secret(data, "GPUBACKFILL_API_TOKEN")
        if "CLICKHOUSE_URL" not in data and data.get("CLICKHOUSE_HOST"):
            port = _part(data, "CLICKHOUSE_PORT", 8123, 1)
            if port == 9000:
                # ClickHouse's native-protocol port, the one most configurations
                # name; clickhouse-connect speaks HTTP, whose default port is 8123.
                port = 8123
            secure = _part(data, "CLICKHOUSE_SECURE", port in (443, 8443))
            out["CLICKHOUSE_URL"] = f"{'https' if secure else 'http'}://{data['CLICKHOUSE_HOST']}:{port}"
        if "REDIS_URL" not in data and data.get("REDIS_HOST"):
            password = _read_secret(data, "REDIS_PASSWORD")
            auth = f":{quote(password, safe='')}@" if password else ""
            db = _part(data, "REDIS_DB", 0, 0)
            out["REDIS_URL"] = f"redis://{auth}{data['REDIS_HOST']}:{_part(data, 'REDIS_PORT', 6379, 1)}/{db}"
        return out

    @field_validator("home")
    @classmethod
    def _home(cls, home: Path) -> Path:
        return _check_home(home.expanduser())

    @field_validator("clickhouse_url")
    @classmethod
    def _clickhouse_url(cls, url: str | None) -> str | None:
        return url and _check_url("CLICKHOUSE_URL", url, ("http", "https", "chdb"))

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        return url and _check_url("REDIS_URL", url, ("redis", "rediss", "unix"))

    @field_validator("clickhouse_database")
    @classmethod
    def _database(cls, name: str) -> str:
        if not name.replace("_", "").isalnum():
            raise ConfigError(f"CLICKHOUSE_DATABASE must be letters, digits and _, got {name!r}")
        return name

    @field_validator("alert_webhooks", mode="before")
    @classmethod
    def _webhooks(cls, hooks: Any) -> Any:
        if isinstance(hooks, str):
            hooks = tuple(h.strip() for h in hooks.split(",") if h.strip())
        for h in hooks:
            if urlsplit(h).scheme not in ("http", "https"):
                raise ConfigError(f"ALERT_WEBHOOKS entries must be http(s) URLs, got {redact_url(h)!r}")
        return hooks

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, level: Any) -> Any:
        return level.upper() if isinstance(level, str) else level

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, fmt: Any) -> Any:
        return fmt.lower() if isinstance(fmt, str) else fmt

    @field_validator("memory_limit_bytes", mode="before")
    @classmethod
    def _bytes(cls, size: Any) -> Any:
        if not isinstance(size, str):
            return size
        from dask.utils import parse_bytes

        try:
            value = parse_bytes(size)
        except (ValueError, OverflowError):
            value = 0
        if value <= 0:
            raise ConfigError(f"BATCH_MEMORY_LIMIT must be a size such as 2GB or 512MiB, got {size!r}")
        return value


ENV_NAMES = frozenset({f.validation_alias for f in Settings.model_fields.values()}
                      | set(_URL_PARTS) | set(_SECRET_FILES))
"""Every variable the settings read."""


class _Names(PydanticBaseSettingsSource):
    """The variables the settings read, as text, from pydantic-settings'
    environment or ``.env`` source: the fields' own and the names that
    ``Settings._url_parts_and_secrets`` turns into fields."""

    def __init__(self, source: PydanticBaseSettingsSource):
        super().__init__(source.settings_cls)
        self.source: Any = source  # the env or dotenv source: both have env_vars

    def get_field_value(self, field, field_name):  # abstract; __call__ reads every name at once
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return {k: v for k, v in self.source.env_vars.items() if k in ENV_NAMES}


def _problem(exc: ValidationError) -> str:
    """The first error of ``exc`` as one line naming the variable."""
    err = exc.errors(include_url=False)[0]
    name = str(err["loc"][0]) if err["loc"] else ""
    field = next((f for f in Settings.model_fields.values() if f.validation_alias == name), None)
    return _message(err, name, field.annotation if field else None,
                    field.metadata if field else ())


def _message(err: Any, name: str, annotation: Any, metadata: Any) -> str:
    kind, raw, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "value_error":
        return str(ctx["error"])
    if kind.startswith("int_"):
        return f"{name} must be an integer, got {raw!r}"
    if kind.startswith("bool_"):
        return f"{name} must be true or false, got {raw!r}"
    if kind.startswith("float_"):
        return f"{name} must be a number, got {raw!r}"
    if kind == "literal_error":
        choices = get_args(annotation)
        return f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, got {raw!r}"
    if annotation is float and kind in ("greater_than_equal", "finite_number"):
        minimum = next(m.ge for m in metadata if hasattr(m, "ge"))
        return f"{name} must be a finite number >= {minimum}, got {raw!r}"
    if kind in ("greater_than_equal", "less_than_equal"):
        bound = f">= {ctx['ge']}" if "ge" in ctx else f"<= {ctx['le']}"
        return f"{name} must be {bound}, got {TypeAdapter(int).validate_python(raw)}"
    return f"{name}: {err['msg']}"


def _part(data: Mapping[str, Any], name: str, default: Any, minimum: int | None = None) -> Any:
    """One of a server URL's parts, validated as its default's type."""
    if data.get(name) in (None, ""):
        return default
    kind: Any = Flag if isinstance(default, bool) else Annotated[int, Field(ge=minimum)]
    try:
        return TypeAdapter(kind).validate_python(data[name])
    except ValidationError as exc:
        raise ConfigError(_message(exc.errors()[0], name, kind, ())) from None


def _read_secret(data: Mapping[str, Any], name: str) -> str:
    """A secret from the file named by NAME_FILE, else from NAME."""
    if data.get(f"{name}_FILE"):
        path = Path(data[f"{name}_FILE"])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    return data.get(name) or ""


def _userinfo(url: str) -> tuple[str, str, str, str] | None:
    """(scheme://, user, password, rest after the last '@') of a URL with
    credentials, or None.  Split by hand, not by urlsplit: a password with an
    unencoded '/', '?' or '#' ends urlsplit's netloc early and leaves the rest
    of the password in the path, where it would be printed."""
    scheme, sep, rest = url.partition("://")
    if not sep and "@" in url:  # no scheme: whatever comes before '@' may be a secret
        return "", "", "***", url.rpartition("@")[2]
    if not sep or "@" not in rest:
        return None
    creds, _, after = rest.rpartition("@")
    user, colon, password = creds.partition(":")
    if not colon:
        if "/" in creds or "?" in creds or "#" in creds:
            return None  # an '@' in the path or query, not credentials
        return scheme + sep, creds, "", after
    return scheme + sep, user, password, after


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***.  Never raises and never
    shows any part of a password, whatever the URL looks like."""
    try:
        text = str(url)
        parts = _userinfo(text)
        if parts is None:
            return text
        head, user, password, after = parts
        return f"{head}{user}:***@{after}" if password else f"{head}{user}@{after}"
    except Exception:  # pragma: no cover - str() of an odd object
        return "***"


def _check_url(name: str, url: str, schemes: tuple[str, ...]) -> str:
    """A server URL checked before anything prints or parses it further."""
    shown = redact_url(url)
    parts = _userinfo(url)
    if parts is not None and any(c in parts[2] for c in "/?#"):
        raise ConfigError(f"{name}: the password has an unencoded '/', '?' or '#'; percent-encode "
                          f"it (/ as %2F, ? as %3F, # as %23), in {shown!r}")
    try:
        split = urlsplit(url)
        _ = split.port  # raises on a port that is not a number in 0..65535
    except ValueError as exc:
        raise ConfigError(f"{name} is not a valid URL ({exc}): {shown!r}") from None
    if split.scheme not in schemes:
        raise ConfigError(f"{name} must be {', '.join(s + '://' for s in schemes[:-1])} or "
                          f"{schemes[-1]}://, got {shown!r}")
    return url


def _check_home(home: Path) -> Path:
    """GPUBACKFILL_HOME must be a folder, or creatable as one (it is created
    on first use).  Checked here so that a file or a read-only parent ends in
    one error naming the variable, not in an OSError deep in chDB or Redis."""
    probe = home
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe == home and not home.is_dir():
        raise ConfigError(f"GPUBACKFILL_HOME={str(home)!r} is not a folder")
    if probe != home:
        if not probe.is_dir():
            raise ConfigError(f"GPUBACKFILL_HOME={str(home)!r} cannot be created: "
                              f"{str(probe)!r} is not a folder")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise ConfigError(f"GPUBACKFILL_HOME={str(home)!r} cannot be created: "
                              f"{str(probe)!r} is not writable")
    return home
