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

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ROOT = DEPLOY.parent


def settings_from(env: dict[str, str]) -> tuple[Settings, set[str]]:
    """The settings from ``env`` and the names of ``env`` that they read."""
    from gpubackfill.config import ENV_NAMES

    return Settings.from_env(env, dotenv=False), set(env) & ENV_NAMES


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
    served = _provided(_pip_installs(dockerfile.read_text()))
    assert {"fastapi", "uvicorn", "prometheus_client"} <= served  # the service runs in it
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
    from gpubackfill.serve.metrics import families

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


# -- the GPU image ------------------------------------------------------------

# What the RAPIDS base image ships for the GPU path (its import names); the
# project's own dependencies must come from what Dockerfile.cuda installs.
RAPIDS_BASE = {"cupy", "cudf", "rmm", "dask_cuda", "numba_cuda"}


def _pip_installs(dockerfile: str) -> list[list[str]]:
    """The arguments of every `pip install` in the Dockerfile's RUN lines."""
    text = re.sub(r"\\\n", " ", dockerfile)
    out = []
    for line in text.splitlines():
        if not line.strip().startswith("RUN"):
            continue
        for cmd in re.split(r"&&|;|\|", line):
            words = cmd.split()
            if "pip" in words and "install" in words:
                out.append(words[words.index("install") + 1:])
    return out


def _required_imports(root: Path) -> dict[str, str]:
    """Top-level third-party modules imported by gpubackfill/ and kernels/,
    except those under ``try: ... except ImportError`` (optional by design)."""
    import ast
    import sys

    found: dict[str, str] = {}
    for folder in ("gpubackfill", "kernels"):
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text())
            guarded: set[int] = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.Try) and any(
                        isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                        for h in node.handlers):
                    guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
            for node in ast.walk(tree):
                if id(node) in guarded:
                    continue
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in ("gpubackfill", "kernels"):
                        found.setdefault(top, str(path.relative_to(root)))
    return found


def _provided(installs: list[list[str]]) -> set[str]:
    """Import names the installs provide: the project's dependencies (with the
    extras named) when the project is installed with them, named packages,
    and everything those require in turn (from this environment's metadata)."""
    import tomllib
    from importlib.metadata import PackageNotFoundError, distribution, packages_distributions

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted: list[Requirement] = []
    for args in installs:
        no_deps = "--no-deps" in args
        for arg in args:
            if arg.startswith("-") or arg.startswith("/"):
                continue
            m = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", arg)
            if m:
                if no_deps:
                    continue  # the project alone: nothing it depends on
                wanted += [Requirement(r) for r in project["dependencies"]]
                for extra in (m.group(1) or "").split(","):
                    wanted += [Requirement(r) for r in project["optional-dependencies"].get(extra, [])]
            else:
                wanted.append(Requirement(arg))
    dists: set[str] = set()
    seen: set[tuple[str, frozenset]] = set()
    todo = [r for r in wanted if r.marker is None or r.marker.evaluate({"extra": ""})]
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        dists.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        extras = req.extras
        for r in map(Requirement, requires):
            if r.marker is None or r.marker.evaluate({"extra": ""}) or any(
                    r.marker.evaluate({"extra": e}) for e in extras):
                todo.append(r)
    modules = {m for m, owners in packages_distributions().items()
               if any(o.lower().replace("_", "-") in dists for o in owners)}
    return modules | RAPIDS_BASE


def test_the_gpu_image_installs_every_module_the_package_imports():
    installs = _pip_installs((ROOT / "Dockerfile.cuda").read_text())
    assert installs, "Dockerfile.cuda installs nothing with pip"
    provided = _provided(installs)
    missing = {m: where for m, where in _required_imports(ROOT).items() if m not in provided}
    assert not missing, f"Dockerfile.cuda would not install: {missing}"


def test_the_image_check_catches_a_hand_written_list():
    """The shape this replaced: a list without pybreaker and tenacity, then the
    project with --no-deps.  The check must see what it misses."""
    old = ("RUN pip install --no-cache-dir clickhouse-connect redis click rich psutil \\\n"
           "        prometheus-client fastapi uvicorn \\\n"
           " && pip install --no-cache-dir --no-deps . \\\n")
    provided = _provided(_pip_installs(old))
    missing = set(_required_imports(ROOT)) - provided
    assert {"pybreaker", "tenacity", "chdb"} <= missing
