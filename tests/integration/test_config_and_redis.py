"""Settings from the environment, and the embedded Redis server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpubackfill.config import ConfigError, Settings
from gpubackfill.engine.submit import chunk_size
from gpubackfill.storage.redis_server import server_pid, stop_server


def test_embedded_defaults(tmp_path):
    s = Settings.from_env({"GPUBACKFILL_HOME": str(tmp_path)}, dotenv=False)
    assert s.embedded_clickhouse and s.embedded_redis
    assert s.chdb_path == tmp_path / "clickhouse" and s.redis_dir == tmp_path / "redis"
    assert s.chunk_size is None and s.redis_ttl == 7 * 24 * 3600
    # Unset, the chunk size follows the workers: chunks in flight within 2 GB.
    assert [chunk_size(s, None, w) for w in (1, 2, 3, 8, 20, 64)] == [
        1_000_000, 1_000_000, 250_000, 250_000, 100_000, 100_000]
    # ... and gives every worker two chunks of the job, down to 100k.
    assert [chunk_size(s, None, 2, n) for n in (10**7, 4 * 10**6, 10**6, 10**5)] == [
        1_000_000, 1_000_000, 250_000, 100_000]
    limited = s.model_copy(update={"memory_limit_bytes": 500_000_000})
    assert chunk_size(limited, None, 2) == 250_000


def test_original_spec_names_build_server_urls(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    s = Settings.from_env({"REDIS_HOST": "redis.internal", "REDIS_PORT": "6380",
                           "REDIS_PASSWORD": "p@ss", "REDIS_DB": "2",
                           "CLICKHOUSE_HOST": "ch.internal", "CLICKHOUSE_PORT": "9000",
                           "CLICKHOUSE_USER": "bf", "CLICKHOUSE_PASSWORD_FILE": str(secret),
                           "CLICKHOUSE_DATABASE": "quantx", "BATCH_MAX_WORKERS": "16",
                           "BATCH_CHUNK_SIZE": "10000", "BATCH_MAX_RETRIES": "5",
                           "ALERT_WEBHOOKS": "https://a.example/x, https://b.example/y",
                           "METRICS_ENABLED": "false", "LOG_LEVEL": "debug"}, dotenv=False)
    assert s.redis_url == "redis://:p%40ss@redis.internal:6380/2"
    assert s.clickhouse_url == "http://ch.internal:8123"  # HTTP port for clickhouse-connect
    assert (s.clickhouse_user, s.clickhouse_password, s.clickhouse_database) == ("bf", "from-file", "quantx")
    assert (s.max_workers, s.chunk_size, s.max_retries) == (16, 10_000, 5)
    assert s.alert_webhooks == ("https://a.example/x", "https://b.example/y")
    assert not s.metrics_enabled and s.log_level == "DEBUG"
    shown = str(s.public())
    assert "p@ss" not in shown and "p%40ss" not in shown and "from-file" not in shown
    assert "redis://:***@redis.internal:6380/2" in shown
    assert "from-file" not in repr(s)


def test_tls_urls_are_accepted():
    s = Settings.from_env({"REDIS_URL": "rediss://h:6380/0", "CLICKHOUSE_URL": "https://h:8443"},
                          dotenv=False)
    assert s.redis_url.startswith("rediss://") and s.clickhouse_url.startswith("https://")


@pytest.mark.parametrize("env,words", [
    ({"BATCH_MAX_WORKERS": "0"}, "BATCH_MAX_WORKERS must be >= 1"),
    ({"BATCH_CHUNK_SIZE": "10k"}, "BATCH_CHUNK_SIZE must be an integer"),
    ({"GPUBACKFILL_CHDB_MERGE_NICE": "20"}, "GPUBACKFILL_CHDB_MERGE_NICE must be <= 19"),
    ({"GPUBACKFILL_CHDB_MERGE_NICE": "-5"}, "GPUBACKFILL_CHDB_MERGE_NICE must be >= 0"),
    ({"METRICS_ENABLED": "maybe"}, "METRICS_ENABLED must be true or false"),
    ({"REDIS_URL": "http://x"}, "REDIS_URL must be redis://"),
    ({"CLICKHOUSE_URL": "tcp://x:9000"}, "CLICKHOUSE_URL must be http://"),
    ({"CLICKHOUSE_DATABASE": "a;b"}, "CLICKHOUSE_DATABASE must be letters"),
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL must be"),
    ({"ALERT_WEBHOOKS": "ftp://x"}, "ALERT_WEBHOOKS entries must be http"),
    ({"CLICKHOUSE_HOST": "h", "CLICKHOUSE_PASSWORD_FILE": "/no/such/file"}, "cannot read"),
])
def test_bad_settings_name_the_variable(env, words):
    with pytest.raises(ConfigError, match=words):
        Settings.from_env(env, dotenv=False)


def test_dotenv_file_is_read(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("# comment\nexport BATCH_CHUNK_SIZE=1234\nREDIS_TTL='600'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BATCH_CHUNK_SIZE", raising=False)
    monkeypatch.delenv("REDIS_TTL", raising=False)
    s = Settings.from_env()
    assert s.chunk_size == 1234 and s.redis_ttl == 600


def test_secrets_from_files_in_the_environment_or_dotenv(tmp_path, monkeypatch):
    """NAME_FILE names a file holding the secret (Docker and Kubernetes
    secrets) and wins over NAME; the environment wins over .env."""
    from gpubackfill.config import ENV_NAMES

    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "redis-pw").write_text("r@dis pw\n")
    (tmp_path / "token").write_text("tok3n\n")
    (tmp_path / ".env").write_text(
        f"REDIS_HOST=redis.internal\nREDIS_PASSWORD=not-this\nREDIS_PASSWORD_FILE={tmp_path / 'redis-pw'}\n"
        f"GPUBACKFILL_API_TOKEN_FILE={tmp_path / 'token'}\nBATCH_CHUNK_SIZE=10\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BATCH_CHUNK_SIZE", "20")
    s = Settings.from_env()
    assert s.redis_url == "redis://:r%40dis%20pw@redis.internal:6379/0"
    assert s.api_token == "tok3n" and s.chunk_size == 20
    assert "tok3n" not in repr(s) and "dis pw" not in str(s.public())
    bare = Settings.from_env(dotenv=False)
    assert bare.redis_url is None and bare.api_token == "" and bare.chunk_size == 20
    monkeypatch.setenv("GPUBACKFILL_API_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="GPUBACKFILL_API_TOKEN_FILE: cannot read"):
        Settings.from_env()


def test_settings_survive_a_json_round_trip(tmp_path):
    """What the store holder does with a caller's settings."""
    import json

    s = Settings.from_env({"GPUBACKFILL_HOME": str(tmp_path), "CLICKHOUSE_HOST": "ch",
                           "ALERT_WEBHOOKS": "https://a.example/x", "BATCH_MEMORY_LIMIT": "1GB"},
                          dotenv=False)
    again = Settings.model_validate(json.loads(json.dumps(s.model_dump(), default=str)))
    assert again == s and hash(again) == hash(s)
    assert s.model_copy(update={"chunk_size": 5}).chunk_size == 5 and s.chunk_size is None


START_RACE = """
import sys
from pathlib import Path
from gpubackfill.storage.redis_server import ensure_server, server_pid
sock = ensure_server(Path(sys.argv[1]))
print(server_pid(Path(sys.argv[1])))
"""


def test_processes_starting_the_embedded_server_at_once_share_one(tmp_path):
    d = tmp_path / "redis"
    procs = [subprocess.Popen([sys.executable, "-c", START_RACE, str(d)], stdout=subprocess.PIPE,
                              text=True) for _ in range(4)]
    try:
        pids = {p.communicate(timeout=60)[0].strip() for p in procs}
        assert len(pids) == 1 and pids != {"None"}
        assert str(server_pid(d)) in pids
    finally:
        stop_server(d)


def test_embedded_server_keeps_data_across_restarts(tmp_path):
    import redis as redis_py

    from gpubackfill.storage.redis_server import ensure_server

    d = tmp_path / "redis"
    sock = ensure_server(d)
    redis_py.Redis(unix_socket_path=str(sock)).set("k", "v")
    stop_server(d)
    sock = ensure_server(d)
    try:
        assert redis_py.Redis(unix_socket_path=str(sock)).get("k") == b"v"
        assert (d / "appendonlydir").exists() or (d / "appendonly.aof").exists()
    finally:
        stop_server(d)
