"""The HTTP surface: probes, status, metrics. Read-only: nothing here writes files or starts work.

The probe paths (/healthz, /readyz, /ready, /status) are answered by a small ASGI layer in front of FastAPI:
no routing, no Request object, no JSON encoding per request. Their answers are rendered once and reused
until something they depend on changes (`ProbeAnswers`), so a probe costs little more than uvicorn's own
floor, which matters when the download beside the sidecar needs every core. Everything else (/metrics,
other methods, unknown paths) goes to FastAPI.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, NamedTuple

import httpx
from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request

from .metrics import make_registry, render
from .monitor import Monitor, Verdict

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Answer(NamedTuple):
    status: int
    body: bytes


def _encode(body: dict[str, Any], status: int = 200) -> Answer:
    return Answer(status, json.dumps(body).encode())


def _verdict(verdict: Verdict) -> Answer:
    return _encode({"ok": verdict.ok, "phase": verdict.phase, "reason": verdict.reason}, 200 if verdict.ok else 503)


class ProbeAnswers:
    """Rendered probe answers, each kept until what it was computed from changes.

    Not a time-based cache: nothing is served stale. Each call still stats the manifest (Monitor.model(), so
    readiness turns true the moment the manifest lands) and, for /status, progress.json (the downloader
    replaces it by a rename every ~0.5 s, so its stat identity changes whenever its content does); the monitor's
    version covers the polled progress, engine, Ray and the download child; liveness is also recomputed when
    the stall deadline passes. Used from the event loop thread only.
    """

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self._live: tuple[int, float, Answer] | None = None  # (version, valid until on monitor.clock(), answer)
        self._ready: tuple[int, Answer] | None = None
        self._status: tuple[int, tuple[int, int, int] | None, Answer] | None = None

    def liveness(self) -> Answer:
        m = self.monitor
        m.model()
        version, now = m.version, m.clock()
        cached = self._live
        if cached is not None and cached[0] == version and now < cached[1]:
            return cached[2]
        verdict = m.liveness()
        deadline = m.stall_deadline()
        answer = _verdict(verdict)
        self._live = (version, deadline if verdict.ok and deadline > now else math.inf, answer)
        return answer

    def readiness(self) -> Answer:
        m = self.monitor
        m.model()
        version = m.version
        cached = self._ready
        if cached is not None and cached[0] == version:
            return cached[1]
        answer = _verdict(m.readiness())
        self._ready = (version, answer)
        return answer

    def status(self) -> Answer:
        m = self.monitor
        m.model()
        version = m.version
        key = m.progress_key()  # before status() reads the file: a rewrite in between only costs a re-render
        cached = self._status
        if cached is not None and cached[0] == version and cached[1] == key:
            return cached[2]
        answer = _encode(m.status())
        self._status = (version, key, answer)
        return answer


class ProbeFastPath:
    """ASGI layer answering GET on the probe paths directly; everything else goes to the wrapped app."""

    def __init__(self, answers: ProbeAnswers, app: ASGIApp) -> None:
        self.answers = answers
        self.app = app
        self.routes: dict[str, Callable[[], Answer]] = {
            "/healthz": answers.liveness,
            "/readyz": answers.readiness,
            "/ready": answers.readiness,  # AIBrix's runtime path, kept for its manifests
            "/status": answers.status,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "GET" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        status, body = route()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def create_app(monitor: Monitor) -> ProbeFastPath:
    app = FastAPI(title="aibrix-sidecar", openapi_url=None, docs_url=None, redoc_url=None)
    registry = make_registry(monitor)
    answers = ProbeAnswers(monitor)

    # GET on these paths never gets here (ProbeFastPath answers it); the routes stay for HEAD and for the
    # 405 that other methods get.
    def route(answer: Callable[[], Answer]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(_request: Request) -> Response:
            status, body = answer()
            return Response(body, status_code=status, media_type="application/json")

        return endpoint

    for path, answer in (
        ("/healthz", answers.liveness),
        ("/readyz", answers.readiness),
        ("/ready", answers.readiness),
        ("/status", answers.status),
    ):
        app.router.add_route(path, route(answer), methods=["GET"])

    @app.get("/metrics")  # asks the engine for its metrics: runs in the thread pool
    def metrics() -> Response:
        return Response(render(monitor, registry), media_type=CONTENT_TYPE_LATEST)

    engine_url = monitor.settings.engine_url
    engine = httpx.Client(timeout=monitor.settings.engine_timeout, follow_redirects=False, trust_env=False)

    @app.get("/v1/models")  # AIBrix's runtime sidecar answers this from the engine; runs in the thread pool
    def models() -> Response:
        """The engine's own answer (status, body and type passed through), or 503 with an OpenAI-style error
        body when no engine is configured or it does not answer: never a 404 that looks like "no models"."""
        if not engine_url:
            return _unavailable("no inference engine configured (--engine-url / INFERENCE_ENGINE_ENDPOINT)")
        try:
            r = engine.get(engine_url + "/v1/models")
        except httpx.HTTPError as exc:
            return _unavailable(f"inference engine {engine_url} not answering ({type(exc).__name__})")
        return Response(r.content, status_code=r.status_code, media_type=r.headers.get("content-type"))

    return ProbeFastPath(answers, app)


def _unavailable(message: str) -> Response:
    body = {"object": "error", "message": message, "type": "ServiceUnavailableError", "param": None, "code": 503}
    return Response(json.dumps(body), status_code=503, media_type="application/json")
