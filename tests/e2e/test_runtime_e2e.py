"""aibrix-runtime end to end, through the CLIs: a tiny random Llama built here and served from a local S3 server,
`aibrix-runtime head` and `aibrix-runtime worker` as two Ray nodes on this machine (loopback addresses 127.0.0.11
and 127.0.0.12), each downloading the model into its own directory, vLLM's CPU build with tensor parallel 2 over
Ray, and `aibrix-sidecar` readiness watching the engine and the Ray membership.

Four vLLM launches cover everything: (1) late worker + chat + readiness + raylet killed; (2) worker frozen;
(3) head killed; (4) vLLM's API server frozen after it served.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, S3Server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

HEAD_IP, WORKER_IP = "127.0.0.11", "127.0.0.12"
HEAD_LOST_TIMEOUT = 20  # the worker's --head-lost-timeout
# How fast a loss is noticed is printed, and measured in the README's figures: a busy machine may take longer, so
# the tests assert what happens (exit codes, readiness 503, the lost node named), never how soon. WAIT is only the
# deadline after which a test gives up waiting for something that never came.
WAIT = 120.0
ENGINE_ARGS = [
    "--enforce-eager",
    "--max-model-len",
    "256",
    "--kv-cache-memory-bytes",
    str(64 * 2**20),
    "--dtype",
    "bfloat16",
    "--max-num-seqs",
    "4",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tagged_pids(tag: str) -> list[int]:
    """Every process started under this tag (our runtimes and everything below them: Ray's daemons and workers,
    vLLM): they inherit AIBRIX_E2E_TAG through their environment."""
    needle = f"AIBRIX_E2E_TAG={tag}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def signal_tag(tag: str, sig: int) -> int:
    count = 0
    for pid in tagged_pids(tag):
        try:
            os.kill(pid, sig)
            count += 1
        except ProcessLookupError:
            pass
    return count


def left_running(tag: str, grace: float = WAIT) -> list[str]:
    """The command lines of processes under this tag still running after up to `grace` seconds."""
    deadline = time.monotonic() + grace
    while tagged_pids(tag) and time.monotonic() < deadline:
        time.sleep(0.25)
    return [cmdline(p) for p in tagged_pids(tag)]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    tag: str
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def start(self) -> Proc:
        self.log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            env={**self.env, "AIBRIX_E2E_TAG": self.tag},
            cwd=REPO,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def runtime_lines(self) -> list[str]:
        return [line for line in self.log().splitlines() if "aibrix-runtime:" in line]

    def tail(self, n: int = 60) -> str:
        return f"--- {self.name} ({self.log_path}) ---\n" + "\n".join(self.log().splitlines()[-n:])

    def wait_line(self, pattern: str, timeout: float, also: Callable[[], str] = lambda: "") -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, "\n".join(self.runtime_lines()))
            if m:
                return m
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited {self.proc.returncode} before {pattern!r}\n{self.tail()}\n{also()}"
                )
            time.sleep(0.25)
        raise AssertionError(f"{pattern!r} not seen in {timeout:.0f}s\n{self.tail()}\n{also()}")

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM (the runtime stops vLLM, then Ray), then SIGKILL of everything carrying our tag."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        for _ in range(3):
            if not signal_tag(self.tag, signal.SIGKILL):
                break
            signal_tag(self.tag, signal.SIGCONT)  # frozen processes die only once they run again
            time.sleep(0.5)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self.log_file.close()


@dataclass
class Sample:
    t: float
    ready: int | None  # the sidecar's /readyz status
    reason: str
    engine: int | None  # vLLM's own /health status


@dataclass
class Watcher:
    """Samples the sidecar's readiness and the engine's /health every 0.25 s, in the background."""

    sidecar_url: str
    engine_url: str
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Watcher:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        with httpx.Client(timeout=1.0, trust_env=False) as http:
            while not self._stop.wait(0.25):
                t = time.monotonic()
                ready: int | None = None
                reason = ""
                engine: int | None = None
                try:
                    r = http.get(self.sidecar_url + "/readyz")
                    ready, reason = r.status_code, r.json().get("reason", "")
                except (httpx.HTTPError, ValueError):
                    pass
                with contextlib.suppress(httpx.HTTPError):
                    engine = http.get(self.engine_url + "/health").status_code
                self.samples.append(Sample(t, ready, reason, engine))

    def stop(self) -> None:
        self._stop.set()

    def first(self, predicate: Callable[[Sample], bool], after: float = 0.0) -> Sample | None:
        return next((s for s in list(self.samples) if s.t >= after and predicate(s)), None)

    def wait(self, predicate: Callable[[Sample], bool], timeout: float, after: float = 0.0) -> Sample:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.first(predicate, after)
            if s is not None:
                return s
            time.sleep(0.1)
        raise AssertionError(f"condition not met in {timeout:.0f}s; last samples: {self.samples[-5:]}")


@pytest.fixture(scope="session")
def model_uri(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> str:
    from tests.e2e.tinymodel import build_tiny_llama
    from tests.synthetic import upload

    files = build_tiny_llama(str(tmp_path_factory.mktemp("tiny-llama")))
    client = s3_server.client()
    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    upload(client, bucket, "models/tiny-llama", files)
    return f"s3://{bucket}/models/tiny-llama/"


class Group:
    """One head, one worker and a sidecar, with their ports and logs; everything is stopped at the end."""

    def __init__(self, tmp: Path, s3: S3Server, model_uri: str, head_args: tuple[str, ...] = ()) -> None:
        self.tmp = tmp
        self.tag = uuid.uuid4().hex[:12]
        self.gcs_port, self.dashboard_port, self.engine_port = free_port(), free_port(), free_port()
        venv_bin = os.path.dirname(sys.executable)
        self.env = {
            **os.environ,
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PYTHONPATH": REPO,
            "AWS_ENDPOINT_URL": s3.url,
            "RAY_USAGE_STATS_ENABLED": "0",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "GLOO_SOCKET_IFNAME": "lo",  # passed through untouched by the runtime
            "TOKENIZERS_PARALLELISM": "false",
        }
        for name in [k for k in self.env if k.startswith(("RUNTIME_", "SIDECAR_", "KUBERAY_", "RAY_ADDRESS"))]:
            self.env.pop(name)
        common = [
            "--model-uri",
            model_uri,
            "--num-gpus",
            "1",
            "--num-cpus",
            "2",
            "--log-interval",
            "5",
            "--poll-interval",
            "0.5",
        ]
        self.head_model_dir = tmp / "head-models" / "tiny-llama"
        self.head = Proc(
            "head",
            [
                sys.executable,
                "-m",
                "runtime",
                "head",
                *common,
                "--local-dir",
                str(tmp / "head-models"),
                "--node-ip",
                HEAD_IP,
                "--ray-port",
                str(self.gcs_port),
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(self.dashboard_port),
                "--tensor-parallel-size",
                "2",
                "--expected-nodes",
                "2",
                "--cluster-wait-timeout",
                "300",
                f"--ray-start-args=--ray-client-server-port={free_port()} --dashboard-agent-listen-port={free_port()}",
                *head_args,
                "--",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.engine_port),
                *ENGINE_ARGS,
            ],
            self.env,
            tmp / "head.log",
            self.tag + "-head",
        )
        self.worker = Proc(
            "worker",
            [
                sys.executable,
                "-m",
                "runtime",
                "worker",
                *common,
                "--local-dir",
                str(tmp / "worker-models"),
                "--node-ip",
                WORKER_IP,
                "--head-address",
                f"{HEAD_IP}:{self.gcs_port}",
                "--head-lost-timeout",
                str(HEAD_LOST_TIMEOUT),
                f"--ray-start-args=--dashboard-agent-listen-port={free_port()}",
            ],
            self.env,
            tmp / "worker.log",
            self.tag + "-worker",
        )
        self.sidecar_port = free_port()
        self.sidecar = Proc(
            "sidecar",
            [
                sys.executable,
                "-m",
                "sidecar",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.sidecar_port),
                "--poll-interval",
                "0.2",
                "--model-dir",
                str(self.head_model_dir),
                "--engine-url",
                f"http://127.0.0.1:{self.engine_port}",
                "--expected-ray-nodes",
                "2",
                "--ray-dashboard-url",
                f"http://127.0.0.1:{self.dashboard_port}",
            ],
            self.env,
            tmp / "sidecar.log",
            self.tag + "-sidecar",
        )
        self.engine_url = f"http://127.0.0.1:{self.engine_port}"
        self.watcher = Watcher(f"http://127.0.0.1:{self.sidecar_port}", self.engine_url)

    def logs(self) -> str:
        return "\n".join(p.tail() for p in (self.head, self.worker, self.sidecar))

    def chat(self) -> dict[str, Any]:
        body = {
            "model": "tiny-llama",
            "messages": [{"role": "user", "content": "hello, who are you?"}],
            "max_tokens": 8,
            "temperature": 0,
        }
        r = httpx.post(self.engine_url + "/v1/chat/completions", json=body, timeout=180, trust_env=False)
        assert r.status_code == 200, f"{r.status_code} {r.text}\n{self.logs()}"
        answer: dict[str, Any] = r.json()
        return answer

    def close(self) -> None:
        self.watcher.stop()
        for p in (self.head, self.worker, self.sidecar):
            if p.proc is not None:
                p.stop(grace=30)
        leftovers = [pid for suffix in ("-head", "-worker", "-sidecar") for pid in tagged_pids(self.tag + suffix)]
        assert not leftovers, [cmdline(p) for p in leftovers]


@pytest.fixture
def group(tmp_path: Path, s3_server: S3Server, model_uri: str) -> Iterator[Group]:
    g = Group(tmp_path, s3_server, model_uri)
    try:
        yield g
    finally:
        g.close()
        print(f"logs kept in {tmp_path}")


def raylet_of(tag: str) -> int:
    pids = [p for p in tagged_pids(tag) if "raylet/raylet" in cmdline(p)]
    assert len(pids) == 1, [cmdline(p) for p in tagged_pids(tag)]
    return pids[0]


def assert_head_fails_fast(g: Group, failed_at: float, what: str) -> None:
    assert g.head.proc is not None
    try:
        code = g.head.proc.wait(timeout=WAIT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the head did not exit after {what}\n{g.logs()}") from None
    exited_after = time.monotonic() - failed_at
    not_ready = g.watcher.wait(lambda s: s.ready == 503, timeout=WAIT, after=failed_at)
    lost = [line for line in g.head.runtime_lines() if "Ray node lost" in line]
    print(
        f"{what}: head exited {code} after {exited_after:.1f}s, readiness 503 after {not_ready.t - failed_at:.1f}s"
        f" ({not_ready.reason}); {lost}"
    )
    assert code not in (0, None) and code == 14, f"head exit code {code}\n{g.logs()}"
    assert lost and f"{WORKER_IP} [1 GPU] is DEAD" in lost[0]


def test_late_worker_chat_readiness_then_raylet_killed(group: Group) -> None:
    g = group
    g.sidecar.start()
    g.watcher.start()
    g.head.start()
    # The head downloads its copy, starts Ray, and waits for the worker that is not there yet.
    g.head.wait_line(r"missing: 1 node, 1 GPU", timeout=120)
    time.sleep(max(0.0, 30 - (time.monotonic() - g.head.started_at)))  # the worker comes 30 s after the head
    assert not any("started vLLM" in line for line in g.head.runtime_lines()), g.logs()
    waiting = [line for line in g.head.runtime_lines() if "waiting for the cluster" in line]
    assert waiting and f"present: {HEAD_IP} [head, 1 GPU]; missing: 1 node, 1 GPU" in waiting[-1], g.logs()
    worker_started = time.monotonic()
    g.worker.start()
    g.worker.wait_line(r"the head's GCS answers at", timeout=120, also=g.logs)
    g.head.wait_line(r"cluster complete after \d+s: 2 of 2 nodes, 2 of 2 GPU present", timeout=120, also=g.logs)
    g.head.wait_line(r"vLLM is serving", timeout=400, also=g.logs)

    answer = g.chat()
    content = answer["choices"][0]["message"]["content"]
    assert isinstance(content, str) and answer["usage"]["completion_tokens"] > 0, answer

    # Readiness: 503 while waiting for the worker and for vLLM, 200 only once vLLM answered (the watcher's own probe
    # of vLLM may lag the sidecar's: only the sidecar's answers are compared in time).
    ready = g.watcher.wait(lambda s: s.ready == 200, timeout=WAIT)
    assert g.watcher.first(lambda s: s.engine == 200) is not None
    before = [s for s in g.watcher.samples if s.t < worker_started and s.ready is not None]
    assert before and all(s.ready == 503 for s in before), before[-3:]
    assert all(s.ready == 503 for s in g.watcher.samples if s.t < ready.t and s.ready is not None)
    assert any("engine not answering" in s.reason or "ray: 1 of 2" in s.reason for s in before)

    # The worker's raylet dies: the head exits non-zero (never 0) and readiness turns 503.
    raylet = raylet_of(g.worker.tag)
    killed_at = time.monotonic()
    os.kill(raylet, signal.SIGKILL)
    assert_head_fails_fast(g, killed_at, "the worker's raylet was killed")
    assert g.worker.proc is not None and g.worker.proc.wait(timeout=60) == 15, g.worker.tail()


def start_serving(g: Group) -> None:
    """The whole group at once: sidecar, head and worker; returns once vLLM answers a chat and readiness is 200."""
    g.sidecar.start()
    g.watcher.start()
    g.head.start()
    g.worker.start()
    g.head.wait_line(r"vLLM is serving", timeout=500, also=g.logs)
    assert g.chat()["usage"]["completion_tokens"] > 0
    g.watcher.wait(lambda s: s.ready == 200, timeout=WAIT)
    record_cold_start(g)


COLD_START_STEPS = ("listing", "download", "verification", "ray", "engine")


def record_cold_start(g: Group) -> None:
    """The sidecar's account of this start, step by step (BENCHMARKS.md shows it): every step reached, none
    negative, and together they are the total."""
    with httpx.Client(timeout=10) as http:
        steps = http.get(f"http://127.0.0.1:{g.sidecar_port}/status").json()["cold_start"]
    assert steps["complete"], steps
    seconds = {step: steps[f"{step}_seconds"] for step in (*COLD_START_STEPS, "total")}
    assert all(v is not None and v >= 0 for v in seconds.values()), steps
    assert abs(sum(seconds[s] for s in COLD_START_STEPS) - seconds["total"]) < 0.01, steps
    print("cold start, tiny model, 2 nodes: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()))


def test_frozen_worker_is_detected(group: Group) -> None:
    g = group
    start_serving(g)

    # SIGSTOP on every process of the worker node: vLLM alone keeps answering /health for about a minute.
    frozen_at = time.monotonic()
    assert signal_tag(g.worker.tag, signal.SIGSTOP) >= 3
    assert_head_fails_fast(g, frozen_at, "the worker was frozen")


def test_head_killed_worker_exits_and_readiness_drops(group: Group) -> None:
    g = group
    start_serving(g)

    # The head pod dies at once: its runtime, Ray head (GCS, raylet, workers) and vLLM, all SIGKILL.
    killed_at = time.monotonic()
    assert signal_tag(g.head.tag, signal.SIGKILL) >= 3
    not_ready = g.watcher.wait(lambda s: s.ready == 503, timeout=WAIT, after=killed_at)
    assert g.worker.proc is not None
    try:
        code = g.worker.proc.wait(timeout=HEAD_LOST_TIMEOUT + WAIT)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker did not exit after the head was killed\n{g.logs()}") from None
    exited_after = time.monotonic() - killed_at
    left = left_running(g.worker.tag)  # the worker stopped its own Ray node on the way out
    print(
        f"head killed: readiness 503 after {not_ready.t - killed_at:.1f}s ({not_ready.reason}); "
        f"worker exited {code} after {exited_after:.1f}s; left running: {left}"
    )
    assert code in (13, 15), f"worker exit code {code}\n{g.worker.tail()}"
    assert not left, left


ENGINE_LOST_TIMEOUT = 20  # the head's --engine-lost-timeout in the test below


def test_frozen_vllm_api_server_makes_the_head_exit(tmp_path: Path, s3_server: S3Server, model_uri: str) -> None:
    """vLLM's API server stops (SIGSTOP) after it served: its process and GPUs stay, /health never answers. The
    head exits 18 within --engine-lost-timeout + 10 s, and nothing of the head is left running."""
    head_args = ("--engine-lost-timeout", str(ENGINE_LOST_TIMEOUT), "--stop-timeout", "3")
    g = Group(tmp_path, s3_server, model_uri, head_args)
    try:
        start_serving(g)
        assert g.head.proc is not None
        api_servers = [
            p
            for p in tagged_pids(g.head.tag)
            if " serve " in cmdline(p) and "vllm" in cmdline(p) and parent_of(p) == g.head.proc.pid
        ]
        assert len(api_servers) == 1, [cmdline(p) for p in tagged_pids(g.head.tag)]
        os.kill(api_servers[0], signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            code = g.head.proc.wait(timeout=ENGINE_LOST_TIMEOUT + 60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the head did not exit after vLLM froze\n{g.logs()}") from None
        exited_after = time.monotonic() - frozen_at
        left = left_running(g.head.tag)
        lost = [line for line in g.head.runtime_lines() if "has not answered 200" in line]
        print(f"vLLM frozen: head exited {code} after {exited_after:.1f}s; {lost}; left running: {left}")
        assert code == 18, f"head exit code {code}\n{g.logs()}"
        assert exited_after < ENGINE_LOST_TIMEOUT + 10, f"head exited {exited_after:.1f}s after vLLM froze\n{g.logs()}"
        assert lost and "(not answering) after it had served" in lost[0], g.logs()
        assert not left, left
        g.watcher.wait(lambda s: s.ready == 503, timeout=10, after=frozen_at)
    finally:
        g.close()
        print(f"logs kept in {tmp_path}")


def parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1
