"""The sidecar's one route table: every path it serves, and how each is answered.

Both servers read it: the probe fast path on the socket (sidecar/fastpath.py) answers GET/HEAD of every route that
never waits (`blocking` False) straight from the bytes, and the ASGI app (sidecar/app.py) serves every route for
everything else (other methods, requests with a body, connections uvicorn serves). The probe answers are rendered
once per snapshot (`ProbeAnswers`) and reused until the snapshot changes: a probe costs a stat, not a JSON
encoding.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import httpx
from prometheus_client import CONTENT_TYPE_LATEST

from .metrics import make_registry, render
from .monitor import Monitor
from .peers import PeerRoute
from .snapshot import Snapshot, Verdict

JSON = "application/json"


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str | None = JSON  # None: no content-type (an engine answer that had none)

    @cached_property
    def headers(self) -> bytes:
        """Its content-length and content-type header lines, encoded once (the fast path writes them as they are)."""
        lines = f"content-length: {len(self.body)}\r\n"
        if self.content_type is not None:
            lines += f"content-type: {self.content_type}\r\n"
        return lines.encode("latin-1")


@dataclass(frozen=True)
class Route:
    answer: Callable[[], Answer]
    blocking: bool = False  # waits on the engine: served from the thread pool, never from the event loop


def _encode(body: dict[str, Any], status: int = 200) -> Answer:
    return Answer(status, json.dumps(body).encode())


def _verdict(verdict: Verdict) -> Answer:
    return _encode({"ok": verdict.ok, "phase": verdict.phase, "reason": verdict.reason}, 200 if verdict.ok else 503)


class ProbeAnswers:
    """Rendered probe answers, each kept while the snapshot it was rendered from is current.

    Not a time-based cache: nothing is served stale. Each call asks the monitor for the current snapshot (a stat of
    the manifest, and for /status of progress.json: see Monitor.snapshot); liveness is also recomputed when the
    stall deadline passes. Used from the event loop thread only."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self._live: tuple[Snapshot, float, Answer] | None = None  # (snapshot, valid until on monitor.clock())
        self._ready: tuple[Snapshot, Answer] | None = None
        self._status: tuple[Snapshot, Answer] | None = None

    def liveness(self) -> Answer:
        snap = self.monitor.snapshot()
        now = self.monitor.clock()
        cached = self._live
        if cached is not None and cached[0] is snap and now < cached[1]:
            return cached[2]
        answer = _verdict(snap.liveness(now))
        self._live = (snap, snap.live_until(now), answer)
        return answer

    def readiness(self) -> Answer:
        snap = self.monitor.snapshot()
        cached = self._ready
        if cached is not None and cached[0] is snap:
            return cached[1]
        answer = _verdict(snap.readiness)
        self._ready = (snap, answer)
        return answer

    def status(self) -> Answer:
        snap = self.monitor.snapshot(fresh_progress=True)  # status is read by people: every progress write shows
        cached = self._status
        if cached is not None and cached[0] is snap:
            return cached[1]
        answer = _encode(snap.status())
        self._status = (snap, answer)
        return answer


def route_table(monitor: Monitor, peers: PeerRoute | None = None) -> dict[str, Route]:
    answers = ProbeAnswers(monitor)
    registry = make_registry(monitor, peers)
    engine = monitor.engine

    def metrics() -> Answer:  # asks the engine for its metrics
        return Answer(200, render(monitor, registry), CONTENT_TYPE_LATEST)

    def models() -> Answer:
        """The engine's own answer (status, body and type passed through), or 503 with an OpenAI-style error body
        when no engine is configured or it does not answer: never a 404 that looks like "no models"."""
        if engine is None:
            return _unavailable("no inference engine configured (--engine-url / INFERENCE_ENGINE_ENDPOINT)")
        try:
            r = engine.models()
        except httpx.HTTPError as exc:
            return _unavailable(f"inference engine {engine.url} not answering ({type(exc).__name__})")
        return Answer(r.status_code, r.content, r.headers.get("content-type"))

    return {
        "/healthz": Route(answers.liveness),
        "/readyz": Route(answers.readiness),
        "/ready": Route(answers.readiness),  # AIBrix's runtime path, kept for its manifests
        "/status": Route(answers.status),
        "/metrics": Route(metrics, blocking=True),
        "/v1/models": Route(models, blocking=True),  # AIBrix's runtime sidecar answers this from the engine
    }


def _unavailable(message: str) -> Answer:
    body = {"object": "error", "message": message, "type": "ServiceUnavailableError", "param": None, "code": 503}
    return _encode(body, 503)
