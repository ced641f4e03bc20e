"""`GET /v1/models` on the sidecar: AIBrix's runtime sidecar answers it from the engine, and so does ours, started
through both its names (`aibrix-sidecar` and AIBrix's `aibrix_runtime`), as a real process on 127.0.0.1 in front
of a stand-in engine on 127.0.0.1; and AIBrix's own invocation of its runtime sidecar, with no model directory."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO

MODELS = {"object": "list", "data": [{"id": "deepseek-r1-671b", "object": "model", "owned_by": "vllm"}]}


class _Engine(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = json.dumps(MODELS if type(self).status == 200 else {"error": "engine says no"}).encode()
        if self.path == "/metrics":
            body = b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 3.0\n"
        self.send_response(type(self).status if self.path == "/v1/models" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def engine() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Engine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    _Engine.status = 200
    server.shutdown()


def console_script(name: str) -> str:
    path = Path(sys.executable).parent / name
    assert os.access(path, os.X_OK), f"{name} is not installed next to {sys.executable} (pyproject [project.scripts])"
    return str(path)


class Running:
    """A sidecar process started with `argv`; its URL read from its log line."""

    def __init__(self, argv: list[str], **env: str) -> None:
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, "PYTHONPATH": REPO, **env},
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
        )
        assert self.proc.stderr is not None
        deadline, lines = time.monotonic() + 30, []
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
        else:
            raise AssertionError("".join(lines))
        assert getattr(self, "url", ""), "".join(lines)
        self.startup_log = "".join(lines)
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def models(self) -> httpx.Response:
        return httpx.get(self.url + "/v1/models", timeout=10, trust_env=False)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def test_models_come_from_the_engine_and_are_a_clear_503_without_one(
    engine: ThreadingHTTPServer, tmp_path: Path
) -> None:
    engine_url = f"http://127.0.0.1:{engine.server_address[1]}"
    base = [console_script("aibrix-sidecar"), "--host", "127.0.0.1", "--port", "0", "--model-dir", str(tmp_path)]
    with_engine = Running([*base, "--engine-url", engine_url, "--engine-timeout", "10"])  # a refused port is at once
    without = Running(base)
    try:
        r = with_engine.models()
        assert r.status_code == 200 and r.json() == MODELS
        _Engine.status = 500  # the engine's own error, passed through as it is
        r = with_engine.models()
        assert r.status_code == 500 and r.json() == {"error": "engine says no"}
        engine.shutdown()
        engine.server_close()  # nothing listens on the engine's port any more
        r = with_engine.models()
        assert r.status_code == 503 and r.headers["content-type"] == "application/json"
        assert r.json()["object"] == "error" and r.json()["code"] == 503
        assert r.json()["message"] == f"inference engine {engine_url} not answering (ConnectError)"
        r = without.models()
        assert r.status_code == 503
        assert r.json()["message"] == "no inference engine configured (--engine-url / INFERENCE_ENGINE_ENDPOINT)"
        assert httpx.post(without.url + "/v1/models", trust_env=False).status_code == 405
    finally:
        with_engine.close()
        without.close()


def test_aibrix_runtime_is_the_sidecar_under_aibrixs_name(engine: ThreadingHTTPServer, tmp_path: Path) -> None:
    """AIBrix's manifests run `aibrix_runtime --port 8080` with the engine in INFERENCE_ENGINE_ENDPOINT."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runtime = Running(
        [console_script("aibrix_runtime"), "--host", "127.0.0.1", "--port", str(port)],
        INFERENCE_ENGINE="vllm",
        INFERENCE_ENGINE_ENDPOINT=f"http://127.0.0.1:{engine.server_address[1]}",
        SIDECAR_MODEL_DIR=str(tmp_path),
    )
    try:
        assert runtime.url == f"http://127.0.0.1:{port}"
        r = runtime.models()
        assert r.status_code == 200 and r.json() == MODELS
    finally:
        runtime.close()


def test_aibrixs_own_invocation_watches_the_engine_without_a_model_directory(
    engine: ThreadingHTTPServer, tmp_path: Path
) -> None:
    """AIBrix's webhook and samples start its runtime sidecar as `aibrix_runtime --port 8080` with INFERENCE_ENGINE
    and INFERENCE_ENGINE_ENDPOINT and no model directory. Ours then watches no model, says so at start-up and in
    /status, follows the engine for readiness, passes /v1/models and the engine's metrics through, and names the
    AIBrix settings it accepts without acting on them (--enable-fastapi-docs, INFERENCE_ENGINE_VERSION)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine_url = f"http://127.0.0.1:{engine.server_address[1]}"
    runtime = Running(
        [console_script("aibrix_runtime"), "--port", str(port), "--enable-fastapi-docs"],
        SIDECAR_HOST="127.0.0.1",  # AIBrix binds 0.0.0.0; the test stays on loopback
        SIDECAR_POLL_INTERVAL="0.2",
        INFERENCE_ENGINE="vllm",
        INFERENCE_ENGINE_ENDPOINT=engine_url,
        INFERENCE_ENGINE_VERSION="0.6.1",
    )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False)
    try:
        assert "no model is watched; readiness follows the engine at " + engine_url in runtime.startup_log
        assert "--enable-fastapi-docs (AIBrix's runtime flag) ignored" in runtime.startup_log
        assert "INFERENCE_ENGINE_VERSION (AIBrix's runtime setting) ignored" in runtime.startup_log
        r = http.get("/ready")
        assert r.status_code == 200 and r.json() == {"ok": True, "phase": None, "reason": "ready"}
        assert http.get("/healthz").json() == {"ok": True, "phase": None, "reason": "ok"}
        status = http.get("/status").json()
        assert status["model"].startswith("none watched: no model directory was given"), status
        assert status["engine"] == {"url": engine_url, "up": True, "detail": "/health answered 200"}
        assert not {"model_path", "model_complete", "damaged_files", "cold_start", "manifest"} & set(status)
        assert runtime.models().json() == MODELS
        families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
        assert families["vllm:num_requests_running"].samples[0].value == 3.0  # the engine's, passed through
        assert families["aibrix_ready"].samples[0].value == 1.0
        assert families["aibrix_engine_up"].samples[0].value == 1.0
        assert not [name for name in families if name.startswith(("aibrix_download", "aibrix_model"))]
        assert http.get("/docs").status_code == 404  # accepted, not served
        engine.shutdown()
        engine.server_close()  # the engine goes away: readiness follows it
        r = wait_for(lambda: (x := http.get("/ready")).status_code == 503 and x)
        body = r.json()  # (how the engine's absence shows depends on the poll's kept-alive connection)
        assert (body["ok"], body["phase"]) == (False, None) and body["reason"].startswith("engine not answering ("), (
            body
        )
        assert http.get("/healthz").status_code == 200  # nothing of the sidecar's own is wrong
    finally:
        http.close()
        runtime.close()
    bare_env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "INFERENCE_"))}
    p = subprocess.run([console_script("aibrix_runtime"), "--port", "0"], capture_output=True, text=True, env=bare_env)
    assert p.returncode == 2 and "nothing to watch" in p.stderr  # neither a model nor an engine


def wait_for(predicate, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")
