"""Settings: one typed object, read from the environment (and ``.env``).

Names follow the original product spec (``REDIS_*``, ``CLICKHOUSE_*``,
``BATCH_*`` ...) plus ``GPUBACKFILL_*`` for what it did not name.  Without
``CLICKHOUSE_URL``/``CLICKHOUSE_HOST`` and ``REDIS_URL``/``REDIS_HOST`` the
embedded defaults are used: chDB and a bundled redis-server, both keeping
their data under ``GPUBACKFILL_HOME``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Mapping
from urllib.parse import quote, urlsplit

from .errors import InvalidInput

DEFAULT_CHUNK_SIZE = 100_000  # bench/RESULTS.md (backfill): 1M is faster but needs ~0.4 GB per worker


class ConfigError(InvalidInput):
    """A setting is missing, malformed or out of range."""


def _default_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "gpubackfill"


@dataclass(frozen=True)
class Settings:
    home: Path = field(default_factory=_default_home)
    clickhouse_url: str | None = None      # None: embedded chDB under home
    clickhouse_database: str = "gpubackfill"
    clickhouse_user: str = "default"
    clickhouse_password: str = field(default="", repr=False)
    redis_url: str | None = None           # None: bundled redis-server under home
    redis_prefix: str = "gpubackfill"
    redis_ttl: int = 7 * 24 * 3600         # seconds a finished job stays in Redis
    max_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_retries: int = 3
    cache_ttl_seconds: int = 3600
    metrics_enabled: bool = True
    prometheus_port: int = 9090
    alert_webhooks: tuple[str, ...] = ()
    log_level: str = "INFO"
    dask_scheduler: str | None = None
    backend: str = "cpu"
    lease_seconds: int = 120
    rmm_pool_size: str | None = None       # per GPU worker, e.g. "24GB"
    # Reliability (see resilience.py): retry pacing, breakers, memory, shutdown.
    retry_base_seconds: float = 1.0
    breaker_clickhouse_failures: int = 5
    breaker_clickhouse_reset_seconds: float = 60.0
    breaker_redis_failures: int = 3
    breaker_redis_reset_seconds: float = 30.0
    memory_limit_bytes: int | None = None  # RSS a worker process aims to stay under
    min_chunk_size: int = 1000             # chunks are not split below this
    shutdown_timeout: float = 30.0         # seconds running chunks get after a signal
    # A chunk past its deadline is taken back (watchdog.py).  0: automatic,
    # 10x the job's median chunk time and never under chunk_timeout_floor.
    chunk_timeout: float = 0.0
    chunk_timeout_floor: float = 300.0
    # Service mode (gpubackfill serve) and observability.
    log_format: str = "text"               # text | json
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_token: str = field(default="", repr=False)  # bearer token for mutating routes
    max_concurrent_jobs: int = 1           # jobs the scheduler runs at once
    scheduler_interval: float = 2.0        # seconds between scheduler/alert passes
    alert_error_rate: float = 0.05         # fraction of chunk attempts that failed
    alert_min_throughput: float = 500_000  # candles/min while a job runs
    alert_max_chunk_seconds: float = 1.0   # median recent chunk duration
    alert_max_queue: int = 5_000           # pending chunks over unfinished jobs

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

    def with_overrides(self, **changes) -> "Settings":
        return replace(self, **changes)

    def public(self) -> dict:
        """The settings as shown to users: secrets removed from URLs."""
        d = asdict(self)
        d["home"] = str(self.home)
        d.pop("clickhouse_password")
        d["api_token"] = "***" if self.api_token else ""
        for key in ("clickhouse_url", "redis_url"):
            if d[key]:
                d[key] = redact_url(d[key])
        return d

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, dotenv: bool = True) -> "Settings":
        """Read and validate settings; raise ConfigError naming the variable."""
        values = dict(_read_dotenv(Path.cwd() / ".env")) if dotenv and env is None else {}
        values.update(os.environ if env is None else env)
        return cls(**_parse(values))


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
        split.port  # raises on a port that is not a number in 0..65535
    except ValueError as exc:
        raise ConfigError(f"{name} is not a valid URL ({exc}): {shown!r}") from None
    if split.scheme not in schemes:
        raise ConfigError(f"{name} must be {', '.join(s + '://' for s in schemes[:-1])} or "
                          f"{schemes[-1]}://, got {shown!r}")
    return url


def _read_dotenv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        out[key.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return out


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(raw: str, name: str) -> int:
    """Bytes from '2GB', '512MiB', '1.5 gb' or a plain number of bytes."""
    text = raw.strip().upper().replace(" ", "")
    digits = text.rstrip("KMGTIB")
    unit = text[len(digits):]
    try:
        value = float(digits)
    except ValueError:
        value = -1.0
    if unit not in _SIZE_UNITS or value <= 0:
        raise ConfigError(f"{name} must be a size such as 2GB or 512MiB, got {raw!r}")
    return int(value * _SIZE_UNITS[unit])


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not value >= minimum or value == float("inf"):
        raise ConfigError(f"{name} must be a finite number >= {minimum}, got {raw!r}")
    return value


def _secret(env: Mapping[str, str], name: str) -> str:
    """A password from NAME, or from the file named by NAME_FILE."""
    if env.get(f"{name}_FILE"):
        path = Path(env[f"{name}_FILE"])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    return env.get(name, "")


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


def _parse(env: Mapping[str, str]) -> dict:
    out: dict = {}
    if env.get("GPUBACKFILL_HOME"):
        out["home"] = _check_home(Path(env["GPUBACKFILL_HOME"]).expanduser())
    out["clickhouse_database"] = env.get("CLICKHOUSE_DATABASE") or "gpubackfill"
    if not out["clickhouse_database"].replace("_", "").isalnum():
        raise ConfigError(f"CLICKHOUSE_DATABASE must be letters, digits and _, got "
                          f"{out['clickhouse_database']!r}")
    out["clickhouse_user"] = env.get("CLICKHOUSE_USER") or "default"
    out["clickhouse_password"] = _secret(env, "CLICKHOUSE_PASSWORD")
    url = env.get("CLICKHOUSE_URL")
    if not url and env.get("CLICKHOUSE_HOST"):
        port = _int(env, "CLICKHOUSE_PORT", 8123, 1)
        if port == 9000:
            # The native protocol port of the original spec; clickhouse-connect
            # speaks HTTP, whose default port is 8123.
            port = 8123
        scheme = "https" if _bool(env, "CLICKHOUSE_SECURE", port in (443, 8443)) else "http"
        url = f"{scheme}://{env['CLICKHOUSE_HOST']}:{port}"
    if url:
        out["clickhouse_url"] = _check_url("CLICKHOUSE_URL", url, ("http", "https", "chdb"))
    rurl = env.get("REDIS_URL")
    if not rurl and env.get("REDIS_HOST"):
        password = _secret(env, "REDIS_PASSWORD")
        auth = f":{quote(password, safe='')}@" if password else ""
        db = _int(env, "REDIS_DB", 0)
        rurl = f"redis://{auth}{env['REDIS_HOST']}:{_int(env, 'REDIS_PORT', 6379, 1)}/{db}"
    if rurl:
        out["redis_url"] = _check_url("REDIS_URL", rurl, ("redis", "rediss", "unix"))
    out["redis_prefix"] = env.get("GPUBACKFILL_REDIS_PREFIX") or "gpubackfill"
    out["redis_ttl"] = _int(env, "REDIS_TTL", 7 * 24 * 3600, 60)
    out["max_workers"] = _int(env, "BATCH_MAX_WORKERS", os.cpu_count() or 1, 1)
    out["chunk_size"] = _int(env, "BATCH_CHUNK_SIZE", DEFAULT_CHUNK_SIZE, 1)
    out["max_retries"] = _int(env, "BATCH_MAX_RETRIES", 3, 0)
    out["cache_ttl_seconds"] = _int(env, "CACHE_TTL_SECONDS", 3600, 0)
    out["metrics_enabled"] = _bool(env, "METRICS_ENABLED", True)
    out["prometheus_port"] = _int(env, "PROMETHEUS_PORT", 9090, 1)
    hooks = [h.strip() for h in env.get("ALERT_WEBHOOKS", "").split(",") if h.strip()]
    for h in hooks:
        if urlsplit(h).scheme not in ("http", "https"):
            raise ConfigError(f"ALERT_WEBHOOKS entries must be http(s) URLs, got {redact_url(h)!r}")
    out["alert_webhooks"] = tuple(hooks)
    level = (env.get("LOG_LEVEL") or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {level!r}")
    out["log_level"] = level
    out["dask_scheduler"] = env.get("DASK_SCHEDULER_ADDRESS") or None
    backend = env.get("GPUBACKFILL_BACKEND") or "cpu"
    if backend not in ("cpu", "cuda", "auto"):
        raise ConfigError(f"GPUBACKFILL_BACKEND must be cpu, cuda or auto, got {backend!r}")
    out["backend"] = backend
    out["lease_seconds"] = _int(env, "GPUBACKFILL_LEASE_SECONDS", 120, 1)
    out["rmm_pool_size"] = env.get("GPUBACKFILL_RMM_POOL_SIZE") or None
    out["retry_base_seconds"] = _float(env, "GPUBACKFILL_RETRY_BASE_SECONDS", 1.0)
    for dep, failures, reset in (("clickhouse", 5, 60.0), ("redis", 3, 30.0)):
        out[f"breaker_{dep}_failures"] = _int(env, f"GPUBACKFILL_BREAKER_{dep.upper()}_FAILURES",
                                              failures, 1)
        out[f"breaker_{dep}_reset_seconds"] = _float(
            env, f"GPUBACKFILL_BREAKER_{dep.upper()}_RESET_SECONDS", reset, 0.01)
    if env.get("BATCH_MEMORY_LIMIT"):
        out["memory_limit_bytes"] = parse_size(env["BATCH_MEMORY_LIMIT"], "BATCH_MEMORY_LIMIT")
    out["min_chunk_size"] = _int(env, "GPUBACKFILL_MIN_CHUNK_SIZE", 1000, 1)
    out["shutdown_timeout"] = _float(env, "GPUBACKFILL_SHUTDOWN_TIMEOUT", 30.0)
    out["chunk_timeout"] = _float(env, "GPUBACKFILL_CHUNK_TIMEOUT", 0.0)
    out["chunk_timeout_floor"] = _float(env, "GPUBACKFILL_CHUNK_TIMEOUT_FLOOR", 300.0, 1.0)
    fmt = (env.get("LOG_FORMAT") or "text").lower()
    if fmt not in ("text", "json"):
        raise ConfigError(f"LOG_FORMAT must be text or json, got {fmt!r}")
    out["log_format"] = fmt
    out["api_host"] = env.get("GPUBACKFILL_API_HOST") or "127.0.0.1"
    out["api_port"] = _int(env, "GPUBACKFILL_API_PORT", 8000, 1)
    if out["api_port"] > 65535:
        raise ConfigError(f"GPUBACKFILL_API_PORT must be <= 65535, got {out['api_port']}")
    out["api_token"] = _secret(env, "GPUBACKFILL_API_TOKEN")
    out["max_concurrent_jobs"] = _int(env, "GPUBACKFILL_MAX_CONCURRENT_JOBS", 1, 1)
    out["scheduler_interval"] = _float(env, "GPUBACKFILL_SCHEDULER_INTERVAL", 2.0, 0.05)
    out["alert_error_rate"] = _float(env, "ALERT_ERROR_RATE", 0.05)
    out["alert_min_throughput"] = _float(env, "ALERT_MIN_THROUGHPUT", 500_000)
    out["alert_max_chunk_seconds"] = _float(env, "ALERT_MAX_CHUNK_SECONDS", 1.0)
    out["alert_max_queue"] = _int(env, "ALERT_MAX_QUEUE", 5_000)
    return out
