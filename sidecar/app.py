"""The HTTP surface: probes, status, metrics. Read-only: nothing here writes files or starts work."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request

from .metrics import make_registry, render
from .monitor import Monitor, Verdict


def _json(body: dict[str, Any], status_code: int = 200) -> Response:
    return Response(json.dumps(body).encode(), status_code=status_code, media_type="application/json")


def _answer(verdict: Verdict) -> Response:
    body: dict[str, Any] = {"ok": verdict.ok, "phase": verdict.phase, "reason": verdict.reason}
    return _json(body, 200 if verdict.ok else 503)


def create_app(monitor: Monitor) -> FastAPI:
    app = FastAPI(title="aibrix-sidecar", openapi_url=None, docs_url=None, redoc_url=None)
    registry = make_registry(monitor)

    # Probes are cheap and never block (engine and Ray are polled in the background), so they run on the
    # event loop as plain Starlette routes: no FastAPI request parsing or response validation per probe,
    # which keeps a probe at a fraction of a millisecond of CPU while the download needs the cores.
    async def healthz(_request: Request) -> Response:
        return _answer(monitor.liveness())

    async def readyz(_request: Request) -> Response:
        return _answer(monitor.readiness())

    async def status(_request: Request) -> Response:
        return _json(monitor.status())

    app.router.add_route("/healthz", healthz, methods=["GET"])
    app.router.add_route("/readyz", readyz, methods=["GET"])
    app.router.add_route("/ready", readyz, methods=["GET"])  # AIBrix's runtime path, kept for its manifests
    app.router.add_route("/status", status, methods=["GET"])

    @app.get("/metrics")  # asks the engine for its metrics: runs in the thread pool
    def metrics() -> Response:
        return Response(render(monitor, registry), media_type=CONTENT_TYPE_LATEST)

    return app
