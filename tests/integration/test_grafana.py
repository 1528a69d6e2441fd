"""deploy/'s Grafana dashboard: provisioned by the compose file beside
Prometheus, and every query over series that a running serve exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families
from test_rest_api import BODY, START, Uvicorn, ingested  # noqa: F401 (a fixture)

from gpubackfill.candles.synthetic import generate
from gpubackfill.serve.api import create_app
from gpubackfill.storage.clickhouse_store import SeriesKey

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "gpubackfill.json"


def queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(t["expr"], t.get("legendFormat", "")) for p in panels for t in p["targets"]]


def test_compose_provisions_grafana_beside_prometheus():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    assert "prometheus" in compose["grafana"]["depends_on"]
    mounts = dict(v.split(":")[:2] for v in compose["grafana"]["volumes"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    dashboards = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/gpubackfill.yml").read_text())
    path = dashboards["providers"][0]["options"]["path"]
    assert mounts["./grafana/dashboards"] == path and DASHBOARD.parent.name == Path(path).name
    source = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    uid = source["datasources"][0]["uid"]
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert all(p["datasource"]["uid"] == uid for p in panels)
    assert len({p["id"] for p in panels}) == len(panels)


def test_every_query_names_a_metric_serve_exports(ingested):
    done = ingested.create_job(BODY["instrument"], BODY["granularity"], START, "2024-01-03", BODY["labels"],
                               chunk_size=300, workers=1)
    ingested.execute(done)
    ingested.ingest_table(SeriesKey("GBPUSD", "M5"), generate("GBPUSD", "M5", START, "2024-01-08"))
    ingested.create_job("GBPUSD", "M5", START, "2024-01-05", ["mfe_mae"])  # unfinished: the per-job series
    srv = Uvicorn(create_app(ingested))
    try:
        text = httpx.get(f"{srv.url}/metrics", timeout=30).text
    finally:
        srv.stop()
    exported: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(text):
        exported.setdefault(fam.name, set())
        for s in fam.samples:
            exported.setdefault(s.name, set()).update(s.labels)
    checked = 0
    for expr, legend in queries():
        names = set(re.findall(r"\bgpubackfill_\w+", expr))
        assert names and names <= set(exported), (expr, names - set(exported))
        labels = set().union(*(exported[n] for n in names))
        grouped = {w.strip() for g in re.findall(r"\b(?:by|on|group_left)\s*\(([^)]*)\)", expr)
                   for w in g.split(",") if w.strip()} - {"le"}
        if labels:  # a family with no sample now (an ETA before any chunk) has no labels to check
            assert grouped <= labels, (expr, grouped - labels)
            assert set(re.findall(r"{{(\w+)}}", legend)) <= labels, (legend, labels)
        checked += 1
    assert checked >= 10
