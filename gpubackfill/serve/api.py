"""The REST API (FastAPI): parse, call BackfillService, render.

Routes: ``POST /jobs`` (queue a job; the scheduler runs it), ``GET /jobs``,
``GET /jobs/{id}``, ``POST /jobs/{id}/pause|resume|cancel``, ``GET /metrics``
(Prometheus), ``GET /health`` (200 or 503 with the reasons).  The OpenAPI
schema is at ``/openapi.json`` and browsable at ``/docs``.

Errors: a malformed request is 422 with the field errors (FastAPI's own
validation); a request the engine refuses is 422 too (``InvalidInput``:
unknown label, no candles...), an unknown job 404, a transition the job's
state does not allow 409, an unreachable Redis or ClickHouse 503.  With
``GPUBACKFILL_API_TOKEN`` set, mutating routes need ``Authorization:
Bearer <token>`` (compared in constant time), else 401.  A body over
``MAX_BODY_BYTES`` is refused with 413 before it is read whole, and a 422
names the fields at fault without echoing what was sent.
"""

from __future__ import annotations

import hmac
import os
import time
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from ..engine import views
from ..errors import DependencyError, GpubackfillError, InvalidInput, InvalidTransition, JobNotFound
from ..jobs.machine import JOB_STATES
from . import metrics as metrics_mod
from .requests import JobRequest

if TYPE_CHECKING:
    from ..service import BackfillService
    from .scheduler import Scheduler

JOB_ID = Path(pattern=r"^[0-9a-f]{12}$", description="a job id, as returned by POST /jobs")
MAX_BODY_BYTES = 64 * 1024  # a job request is a few hundred bytes
SWAGGER_DIR = os.path.join(os.path.dirname(__file__), "static", "swagger")


class Created(BaseModel):
    job_id: str
    status: str


class Transitioned(BaseModel):
    job_id: str
    status: str


class _BodyLimit:
    """ASGI middleware: refuse bodies over ``limit`` bytes with 413, by their
    Content-Length or, without one, as soon as the stream passes the limit."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            response = JSONResponse({"detail": f"request body over {self.limit} bytes"}, 413)
            return await response(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                # Raised inside the route's body read: FastAPI passes an
                # HTTPException through, and it becomes the response.
                raise HTTPException(413, f"request body over {self.limit} bytes")
            return message

        await self.app(scope, limited, send)


def create_app(service: BackfillService, scheduler: Scheduler | None = None) -> FastAPI:
    settings = service.settings
    registry = metrics_mod.registry(service) if settings.metrics_enabled else None
    bearer = HTTPBearer(auto_error=False, description="GPUBACKFILL_API_TOKEN, when set")
    gpu = _gpu_presence()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if scheduler is not None:
            scheduler.start()
        yield
        if scheduler is not None:
            scheduler.shutdown()

    # /docs with Swagger UI's files from the package (gpubackfill/serve/static/swagger),
    # not FastAPI's default CDN, whose page is blank on an offline host.
    # ReDoc has no offline copy here, so it is off rather than blank.
    app = FastAPI(title="gpubackfill", version=_version(), lifespan=lifespan,
                  docs_url=None, redoc_url=None,
                  description="Backfill ML labels over OHLC candles: jobs, metrics, health.")
    app.mount("/static/swagger", StaticFiles(directory=SWAGGER_DIR), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title="gpubackfill API",
                                   swagger_js_url="/static/swagger/swagger-ui-bundle.js",
                                   swagger_css_url="/static/swagger/swagger-ui.css",
                                   swagger_favicon_url="/static/swagger/favicon-32x32.png")

    def authorised(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        token = settings.api_token
        if not token:
            return
        given = creds.credentials if creds is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})

    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES)

    from .ui import mount as mount_console

    mount_console(app, service, authorised, scheduler)  # the web console (/ui/), actions behind the same token

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes each bad input back (all of a large body),
        # and a non-finite number in it (Infinity) cannot be written as JSON: a 500.
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                   "type": str(e.get("type", ""))} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(GpubackfillError)
    async def engine_error(request: Request, exc: GpubackfillError) -> JSONResponse:
        if isinstance(exc, JobNotFound):
            code = 404
        elif isinstance(exc, InvalidTransition):
            code = 409
        elif isinstance(exc, InvalidInput):
            code = 422
        elif isinstance(exc, DependencyError):
            code = 503
        else:
            code = 500
        return JSONResponse({"detail": str(exc)}, status_code=code)

    @app.post("/jobs", status_code=201, response_model=Created, dependencies=[Depends(authorised)],
              responses={401: {}, 422: {}, 503: {}})
    def create_job(req: JobRequest) -> Created:
        """Plan a job and queue it; the scheduler runs it by priority."""
        job_id = service.create_job(**req.job_args())
        return Created(job_id=job_id, status=service.job(job_id).status)

    @app.get("/jobs", responses={503: {}})
    def list_jobs(status: Literal[JOB_STATES] | None = Query(default=None),  # type: ignore[valid-type]
                  series_limit: int = Query(default=views.SERIES_PAGE, ge=0, le=views.SERIES_MAX,
                                            description="how many of each job's series to list at "
                                                        "most (series_count: how many it has)")
                  ) -> list[views.JobStatus]:
        """Every job in Redis (optionally of one status), oldest first."""
        return service.jobs(status, series_limit)

    @app.get("/jobs/{job_id}", responses={404: {}, 503: {}})
    def get_job(job_id: str = JOB_ID,
                series_offset: int = Query(default=0, ge=0, description="the first series listed"),
                series_limit: int = Query(default=views.SERIES_PAGE, ge=0, le=views.SERIES_MAX,
                                          description="how many series to list at most "
                                                      "(series_count: how many the job has)")
                ) -> views.JobStatus:
        """One job: status, progress per series (a page of them), throughput, ETA with its interval
        and confidence."""
        return service.job(job_id, series_offset, series_limit)

    def transition(name: str):
        def handler(job_id: str = JOB_ID) -> Transitioned:
            return Transitioned(job_id=job_id, status=getattr(service, name)(job_id))

        handler.__name__ = f"{name}_job"
        handler.__doc__ = f"{name.capitalize()} a job."
        app.post(f"/jobs/{{job_id}}/{name}", response_model=Transitioned,
                 dependencies=[Depends(authorised)], responses={401: {}, 404: {}, 409: {}, 503: {}})(handler)

    for name in ("pause", "resume", "cancel"):
        transition(name)

    @app.get("/metrics", response_class=Response, responses={404: {}})
    def prometheus() -> Response:
        """Prometheus text exposition (every process's work, read from Redis)."""
        if registry is None:
            raise HTTPException(404, "metrics are disabled (METRICS_ENABLED=false)")
        return Response(metrics_mod.exposition(registry), media_type=metrics_mod.CONTENT_TYPE)

    @app.get("/health", responses={503: {"description": "not ready; the reasons are in the body"}})
    def health(probe: Literal["ready", "live"] = Query(
            default="ready", description="ready (default): 503 unless every dependency is usable; "
                                         "live: 200 while the process answers (the checks are "
                                         "still reported)")) -> JSONResponse:
        """Liveness and readiness: Redis, ClickHouse, circuit breakers, scheduler, GPU."""
        body = check_health(service, scheduler, gpu)
        ok = body["ready"] or probe == "live"
        return JSONResponse(body, status_code=200 if ok else 503)

    return app


def check_dependencies(service: BackfillService) -> tuple[dict[str, Any], list[str]]:
    """Redis, ClickHouse and the circuit breakers: (checks, reasons it is not ready)."""
    checks: dict[str, Any] = {}
    reasons: list[str] = []
    try:
        service.state.ping()
        checks["redis"] = {"ok": True, "where": service.state.where}
    except DependencyError as exc:
        checks["redis"] = {"ok": False, "error": str(exc)}
        reasons.append(f"redis: {exc}")
    try:
        service.store.rows("SELECT 1")
        checks["clickhouse"] = {"ok": True}
    except GpubackfillError as exc:
        checks["clickhouse"] = {"ok": False, "error": str(exc)}
        reasons.append(f"clickhouse: {exc}")
    if checks["redis"]["ok"]:
        try:
            breakers = service.telemetry.breakers()
            open_ = sorted(n for n, b in breakers.items() if b["state"] == "open")
            checks["breakers"] = {"ok": not open_, "states": {n: b["state"] for n, b in breakers.items()}}
            if open_:
                reasons.append(f"circuit breaker open: {', '.join(open_)}")
        except GpubackfillError as exc:
            checks["breakers"] = {"ok": False, "error": str(exc)}
            reasons.append(f"breakers: {exc}")
    return checks, reasons


def check_health(service: BackfillService, scheduler: Scheduler | None,
                 gpu: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    checks, reasons = check_dependencies(service)
    dashboards: list[str] = []
    if checks["redis"]["ok"]:
        try:
            dashboards = sorted({j.dashboard for j in service.jobs("running", 0) if j.dashboard})
        except GpubackfillError as exc:
            reasons.append(f"jobs: {exc}")
    from ..engine.cluster import cluster_summary

    clusters = cluster_summary()
    checks["workers"] = {"ok": True, "dask_clusters": clusters}
    if scheduler is not None:
        ok = scheduler.alive
        checks["workers"].update(ok=ok, scheduler="running" if ok else "stopped",
                                 jobs_running=scheduler.running(), max_concurrent_jobs=scheduler.max_jobs,
                                 last_error=scheduler.last_error)
        if not ok:
            reasons.append("the scheduler is not running")
    dashboards = sorted(set(dashboards) | {c["dashboard"] for c in clusters if c["dashboard"]})
    checks["gpu"] = {"ok": gpu["present"] or service.settings.backend != "cuda", **gpu}
    if not checks["gpu"]["ok"]:
        reasons.append(f"GPUBACKFILL_BACKEND=cuda but no GPU: {gpu['reason']}")
    ready = not reasons
    return {"status": "ok" if ready else "unavailable", "live": True, "ready": ready,
            "reasons": reasons, "checks": checks, "dask_dashboards": dashboards,
            "seconds": round(time.perf_counter() - t0, 4)}


def _gpu_presence() -> dict[str, Any]:
    """Whether CUDA kernels can run here (asked once: it initialises the driver)."""
    from ..compute.backends import cuda_unavailable_reason

    try:
        why = cuda_unavailable_reason()
    except Exception as exc:  # a broken driver install must not stop the API
        why = f"{type(exc).__name__}: {exc}"
    return {"present": why is None, "reason": why or "a CUDA device is present"}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gpubackfill")
    except PackageNotFoundError:
        return "0"


def loopback(host: str) -> bool | None:
    """Whether every address ``host`` names is a loopback one; None for a
    name that does not resolve (``listen`` says so)."""
    import ipaddress
    import socket

    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return None
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def listen(host: str, port: int):
    """A bound listening socket, or InvalidInput saying why not.

    Bound before anything is printed or started, so a busy port is one
    error line rather than "serving on ..." followed by uvicorn's own error."""
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind(addr)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = " (is another serve running? choose one with --port)" if exc.errno == 98 else ""
        raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None
    sock.set_inheritable(True)
    return sock


def serve(service: BackfillService, host: str, port: int, max_jobs: int | None = None,
          sock=None) -> None:
    """Run the API and the scheduler until interrupted (SIGINT/SIGTERM), then
    return: a signal is how a service is asked to stop, not an error."""
    import signal
    import threading

    import uvicorn

    from .alerts import Alerter
    from .scheduler import Scheduler

    sock = sock or listen(host, port)
    scheduler = Scheduler(service, max_jobs, alerter=Alerter(service.telemetry, service.settings))
    app = create_app(service, scheduler)
    config = uvicorn.Config(app, host=host, port=port, log_level=service.settings.log_level.lower(),
                            access_log=service.settings.log_level == "DEBUG")
    server = uvicorn.Server(config)
    received: list[int] = []

    def stop(signum, frame) -> None:
        received.append(signum)
        server.should_exit = True

    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal
    # again for the handlers it found: Python's own would make that
    # KeyboardInterrupt ("Aborted!", exit 1) or death by SIGTERM.  These take
    # it instead (and a signal before uvicorn's handlers are in place).
    handled = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
    previous = {sig: signal.signal(sig, stop) for sig in handled}
    try:
        server.run(sockets=[sock])
    finally:
        for sig in handled:
            # After a signal the process is on its way out: later ones must
            # not raise in the unwinding.
            signal.signal(sig, signal.SIG_IGN if received else previous[sig])
