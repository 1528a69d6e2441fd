"""The deployment examples: parsed and checked for their wiring (no Docker
engine or cluster runs here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gpubackfill.config import Settings

DEPLOY = Path(__file__).parent.parent / "deploy"
ROOT = DEPLOY.parent


class Recording(dict):
    """An environment that remembers which names the settings read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def settings_from(env: dict[str, str]) -> tuple[Settings, set[str]]:
    from gpubackfill.config import _parse

    rec = Recording(env)
    settings = Settings(**_parse(rec))  # what Settings.from_env(env) does, recording the reads
    assert settings == Settings.from_env(env, dotenv=False)
    return settings, rec.read


def interpolate(value: str) -> str:
    """Compose's ${NAME:?msg} / ${NAME:-default}, with a stand-in secret."""
    def sub(m):
        if m.group(2) and m.group(2).startswith(":-"):
            return m.group(2)[2:]
        return f"test-{m.group(1).lower()}"

    return re.sub(r"\$\{(\w+)(:[?-][^}]*)?\}", sub, str(value))


def test_compose_wiring():
    c = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    svc = c["services"]
    app, redis, ch = svc["gpubackfill"], svc["redis"], svc["clickhouse"]
    assert redis["image"].startswith("redis:")
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert ch["image"].startswith("clickhouse/clickhouse-server:")
    dockerfile = ROOT / app["build"]["dockerfile"]
    base = re.search(r"ARG RAPIDS_IMAGE=(\S+)", dockerfile.read_text()).group(1)
    assert "cuda" in base  # the service image is a CUDA one
    for dep in ("fastapi", "uvicorn", "prometheus-client"):
        assert dep in dockerfile.read_text()
    assert all("healthcheck" in s for name, s in svc.items() if name != "prometheus")
    assert "/health" in " ".join(app["healthcheck"]["test"])
    assert app["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    env = {k: interpolate(v) for k, v in app["environment"].items()}
    s, read = settings_from(env)
    assert set(env) <= read, f"names the settings never read: {set(env) - read}"
    # the URLs point at the compose services, on the ports they serve
    assert s.redis_url == "redis://:test-redis_password@redis:6379/0"
    assert s.clickhouse_url == "http://clickhouse:8123" and s.clickhouse_password == "test-clickhouse_password"
    assert env["CLICKHOUSE_USER"] == ch["environment"]["CLICKHOUSE_USER"]
    assert env["CLICKHOUSE_DATABASE"] == ch["environment"]["CLICKHOUSE_DB"]
    assert "8123" in " ".join(ch["healthcheck"]["test"])
    port = app["command"][app["command"].index("--port") + 1]
    assert f"{port}:{port}" in app["ports"] and s.api_token
    assert "--host" in app["command"] and "0.0.0.0" in app["command"]
    prom = svc["prometheus"]
    assert any(v.startswith("./prometheus.yml:") for v in prom["volumes"])
    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == [f"gpubackfill:{port}"]


def test_kubernetes_wiring(tmp_path):
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text())}
    assert set(docs) == {"ConfigMap", "Secret", "Deployment", "Service"}
    dep = docs["Deployment"]["spec"]
    pod = dep["template"]["spec"]
    (ctr,) = pod["containers"]
    assert dep["selector"]["matchLabels"].items() <= dep["template"]["metadata"]["labels"].items()
    assert docs["Service"]["spec"]["selector"].items() <= dep["template"]["metadata"]["labels"].items()
    assert ctr["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert ctr["resources"]["requests"]["nvidia.com/gpu"] == 1
    refs = {next(iter(e.values()))["name"] for e in ctr["envFrom"]}
    assert refs == {docs["ConfigMap"]["metadata"]["name"], docs["Secret"]["metadata"]["name"]}
    (port,) = ctr["ports"]
    for probe in ("livenessProbe", "readinessProbe"):
        get = ctr[probe]["httpGet"]
        assert get["path"].startswith("/health") and get["port"] == port["name"]
    assert ctr["livenessProbe"]["httpGet"]["path"] == "/health?probe=live"
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] == port["name"]
    env = {**docs["ConfigMap"]["data"], **docs["Secret"]["stringData"]}
    s, read = settings_from(env)
    assert set(env) <= read, f"names the settings never read: {set(env) - read}"
    assert s.api_port == port["containerPort"] and s.api_host == "0.0.0.0"
    assert s.backend == "cuda" and s.redis_url.startswith("redis://:change-me@redis.")
    assert "change-me" not in str(s.public())


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_prometheus_config_and_rules_pass_promtool():
    res = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "8 rules found" in res.stdout


def test_alert_rules_use_series_the_service_exposes():
    from gpubackfill.metrics import families

    rules = yaml.safe_load((DEPLOY / "alert-rules.yml").read_text())["groups"][0]["rules"]
    used = {n for r in rules for n in re.findall(r"gpubackfill_\w+", r["expr"])}
    m = {"totals": {"candles": 0, "chunks": 0, "rows": 0, "cache_hits": 0, "chunk_failures": 0,
                    "labels": {}, "instruments": {}, "chunk_seconds": {"buckets": {}, "sum": 0, "count": 0}},
         "reliability": {"retries": {}, "errors": {}}, "throughput_per_min": 0, "cache_hit_rate": 0,
         "error_rate": 0, "running_error_rate": 0, "active_workers": 0, "active_chunks": 0, "chunks_pending": 0,
         "jobs_by_status": {}, "breakers": {}, "dead_letters": 0, "alerts": {}}
    exposed = set()
    for fam in families(m, []):
        exposed |= {s.name for s in fam.samples} | {fam.name}
    exposed |= {"gpubackfill_redis_up"}
    assert used and used <= exposed, used - exposed
