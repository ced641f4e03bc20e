"""The HTTP surface: probes, status, metrics. Read-only: nothing here writes files or starts work."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from .metrics import make_registry, render
from .monitor import Monitor, Verdict


def _answer(verdict: Verdict) -> JSONResponse:
    body: dict[str, Any] = {"ok": verdict.ok, "phase": verdict.phase, "reason": verdict.reason}
    return JSONResponse(body, status_code=200 if verdict.ok else 503)


def create_app(monitor: Monitor) -> FastAPI:
    app = FastAPI(title="aibrix-sidecar", openapi_url=None, docs_url=None, redoc_url=None)
    registry = make_registry(monitor)

    # Probes are cheap and never block (engine and Ray are polled in the background), so they run on the
    # event loop; only /metrics, which asks the engine for its metrics, runs in the thread pool.
    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return _answer(monitor.liveness())

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        return _answer(monitor.readiness())

    @app.get("/ready")  # AIBrix's runtime path, kept for its manifests
    async def ready() -> JSONResponse:
        return _answer(monitor.readiness())

    @app.get("/status")
    async def status() -> JSONResponse:
        return JSONResponse(monitor.status())

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(render(monitor, registry), media_type=CONTENT_TYPE_LATEST)

    return app
