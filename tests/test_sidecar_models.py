"""`GET /v1/models` on the sidecar: AIBrix's runtime sidecar answers it from the engine, and so does ours, started
through both its names (`aibrix-sidecar` and AIBrix's `aibrix_runtime`), as a real process on 127.0.0.1 in front
of a stand-in engine on 127.0.0.1."""

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

from tests.conftest import REPO

MODELS = {"object": "list", "data": [{"id": "deepseek-r1-671b", "object": "model", "owned_by": "vllm"}]}


class _Engine(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = json.dumps(MODELS if type(self).status == 200 else {"error": "engine says no"}).encode()
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
    with_engine = Running([*base, "--engine-url", engine_url, "--engine-timeout", "1"])
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
