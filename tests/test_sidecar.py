"""The sidecar as a real process on 127.0.0.1, driving or watching a real download."""

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

from downloader.layout import Manifest, ManifestFile, Progress
from downloader.state import StateDir
from tests.conftest import REPO, ClosingServer, S3Server, cli_env, read_tree, run_cli
from tests.faultproxy import Delay, FaultProxy, Rule, Stall
from tests.synthetic import MiB, random_bytes, upload

SECRET = "testing-secret-key"  # conftest's AWS_SECRET_ACCESS_KEY: must never be echoed
RANGED = ["--part-threshold", "2MiB", "--part-chunksize", "1MiB", "--num-threads", "4"]


class Sidecar:
    def __init__(self, args: list[str], endpoint: str, **env: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "--host", "127.0.0.1", "--port", "0", "--poll-interval", "0.2", *args],
            env=cli_env(endpoint, **env),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
        )
        self.log: list[str] = []
        deadline = time.monotonic() + 30
        self.url = ""
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
        assert self.url, "".join(self.log)
        threading.Thread(target=self._drain, daemon=True).start()
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def close(self) -> int:
        self.http.close()
        self.proc.terminate()
        return self.proc.wait(timeout=30)


@pytest.fixture
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    with FaultProxy(s3_server.host, s3_server.port) as p:
        yield p


@pytest.fixture
def model(s3: object, bucket: str) -> tuple[str, dict[str, bytes]]:
    files = {
        "model-00001-of-00002.safetensors": random_bytes(6 * MiB, 1),
        "model-00002-of-00002.safetensors": random_bytes(6 * MiB, 2),
        "config.json": b'{"model_type": "demo"}',
    }
    upload(s3, bucket, "m", files)
    return bucket, files


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


@pytest.mark.slow
def test_native_sidecar_runs_the_download_and_turns_ready_when_the_manifest_lands(
    proxy: FaultProxy, model, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bucket, files = model
    proxy.add_rule(Rule(Delay(0.3), match_method="GET", only_ranged=True, times=-1))
    manifest = tmp_path / "m" / ".aibrix" / "manifest.json"
    sidecar = Sidecar(["--", "--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path), *RANGED], proxy.url)
    try:
        seen_503 = False
        percents: list[float] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            before = manifest.exists()
            r = sidecar.get("/readyz")
            after = manifest.exists()
            status = sidecar.get("/status").json()
            if status.get("percent") is not None:
                percents.append(status["percent"])
            if r.status_code == 200:
                assert after  # never ready before the manifest exists
                break
            assert r.status_code == 503
            assert not before  # a manifest that already existed must have made this 200
            seen_503 = True
            assert sidecar.get("/healthz").status_code == 200  # alive while the download makes progress
            body = r.json()
            assert body["ok"] is False and body["phase"] in ("pending", "downloading", "verifying")
            if body["phase"] == "downloading":
                assert re.match(r"downloading \d+% \(\S+/\S+ GB, \S+ GB/s, ETA \S+\)", body["reason"]), body
            time.sleep(0.05)
        else:
            raise AssertionError("never became ready:\n" + "".join(sidecar.log))
        percents.append(sidecar.get("/status").json()["percent"])
        assert seen_503
        assert percents == sorted(percents) and percents[-1] == 100.0  # monotonic progress to 100 %
        assert sidecar.get("/ready").status_code == 200
        assert sidecar.get("/healthz").status_code == 200
        status = sidecar.get("/status").json()
        assert status["phase"] == "ready" and status["model_path"] == str(tmp_path / "m")
        assert status["source"] == f"s3://{bucket}/m/"
        assert read_tree(str(tmp_path / "m")) == files

        families = {f.name: f for f in text_string_to_metric_families(sidecar.get("/metrics").text)}
        on_disk = sum(os.path.getsize(tmp_path / "m" / name) for name in files)
        assert families["aibrix_download_bytes_done"].samples[0].value == on_disk
        assert families["aibrix_download_bytes_total"].samples[0].value == on_disk
        assert families["aibrix_download_files_done"].samples[0].value == len(files)
        assert families["aibrix_ready"].samples[0].value == 1.0
        phases = {s.labels["phase"]: s.value for s in families["aibrix_download_phase"].samples}
        assert phases["ready"] == 1.0 and phases["downloading"] == 0.0
        for path in ("/status", "/metrics", "/readyz", "/healthz"):
            assert SECRET not in sidecar.get(path).text
    finally:
        assert sidecar.close() == 143  # SIGTERM: a graceful stop


@pytest.mark.slow
def test_a_stalled_download_fails_liveness(proxy: FaultProxy, model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bucket, _ = model
    proxy.add_rule(Rule(Stall(seconds=120, after_bytes=64 * 1024), match_method="GET", only_ranged=True, times=-1))
    sidecar = Sidecar(
        ["--stall-timeout", "2", "--", "--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path), *RANGED],
        proxy.url,
        DOWNLOADER_STALL_TIMEOUT="600",
    )
    try:
        assert wait_for(lambda: sidecar.get("/status").json().get("phase") == "downloading", timeout=30)
        # (liveness while bytes arrive is 200: test_native_sidecar_runs_the_download_and_turns_ready...)
        r = wait_for(lambda: (resp := sidecar.get("/healthz")).status_code == 503 and resp, timeout=60)
        assert "no download progress" in r.json()["reason"]
        assert sidecar.get("/readyz").status_code == 503
    finally:
        proxy.stop()
        sidecar.close()


def _running(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (a zombie waiting for its reaper has exited)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return False


@pytest.mark.slow
def test_a_killed_sidecar_leaves_no_download_behind(proxy: FaultProxy, model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The download child is supervised as the runtime's children are (runtime.supervise.Child): in its own process
    group, and stopped when the sidecar dies without a chance to stop it (SIGKILL, the OOM killer), so that no
    orphaned download holds the model's lock."""
    bucket, _ = model
    proxy.add_rule(Rule(Stall(seconds=120, after_bytes=64 * 1024), match_method="GET", only_ranged=True, times=-1))
    sidecar = Sidecar(
        ["--", "--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path), *RANGED],
        proxy.url,
        DOWNLOADER_STALL_TIMEOUT="600",
    )
    try:
        status = wait_for(lambda: (x := sidecar.get("/status").json())["phase"] == "downloading" and x, timeout=30)
        pid = status["download_process"]["pid"]
        assert _running(pid) and os.getpgid(pid) == pid  # its own process group
        sidecar.proc.kill()
        sidecar.proc.wait(timeout=30)
        assert wait_for(lambda: not _running(pid), timeout=60)
    finally:
        proxy.stop()
        sidecar.http.close()
        if sidecar.proc.poll() is None:
            sidecar.proc.kill()


class _Engine(BaseHTTPRequestHandler):
    healthy = True

    def do_GET(self) -> None:
        if self.path == "/health":
            code, body = (200, b"") if type(self).healthy else (503, b"unhealthy")
        elif self.path == "/metrics":
            code, body = 200, b"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 3.0\n"
        else:
            code, body = 404, b""
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Dashboard(BaseHTTPRequestHandler):
    states = ["ALIVE"]

    def do_GET(self) -> None:
        nodes = [{"node_id": f"n{i}", "state": s} for i, s in enumerate(type(self).states)]
        body = json.dumps({"result": True, "msg": "", "data": {"result": {"total": len(nodes), "result": nodes}}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(handler: type[BaseHTTPRequestHandler], port: int = 0) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_readiness_waits_for_the_engine_and_the_ray_cluster(s3_server: S3Server, model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bucket, _ = model
    r = run_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path)], s3_server.url)
    assert r.returncode == 0, r.stderr
    # an engine address where nothing listens yet: bound (so no one else gets the port) but not listening
    placeholder = socket.socket()
    placeholder.bind(("127.0.0.1", 0))
    engine_port = placeholder.getsockname()[1]
    _Dashboard.states = ["ALIVE", "DEAD"]
    dashboard = serve(_Dashboard)
    sidecar = Sidecar(
        ["--model-dir", str(tmp_path / "m"), "--engine-url", f"http://127.0.0.1:{engine_port}",
         "--expected-ray-nodes", "2", "--ray-dashboard-url", f"http://127.0.0.1:{dashboard.server_address[1]}"],
        s3_server.url,
    )  # fmt: skip
    engine = None
    try:
        r = sidecar.get("/readyz")
        assert r.status_code == 503 and r.json()["reason"].startswith("engine not answering"), r.json()
        assert r.json()["phase"] == "ready"  # the model itself is complete
        placeholder.close()
        engine = serve(_Engine, engine_port)
        r = wait_for(lambda: (x := sidecar.get("/readyz")).json()["reason"].startswith("ray") and x)
        assert r.status_code == 503 and r.json()["reason"] == "ray: 1 of 2 nodes"  # dead nodes do not count
        _Dashboard.states = ["ALIVE", "ALIVE"]
        assert wait_for(lambda: sidecar.get("/readyz").status_code == 200)
        text = sidecar.get("/metrics").text
        assert "vllm:num_requests_running 3.0" in text  # the engine's metrics, names unchanged
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["aibrix_engine_up"].samples[0].value == 1.0
        assert families["aibrix_ray_alive_nodes"].samples[0].value == 2.0
        _Engine.healthy = False
        r = wait_for(lambda: (x := sidecar.get("/readyz")).status_code == 503 and x)
        assert "503" in r.json()["reason"]
    finally:
        _Engine.healthy = True
        sidecar.close()
        dashboard.shutdown()
        if engine is not None:
            engine.shutdown()


@pytest.mark.slow
def test_cold_start_steps_from_the_first_listing_to_the_engines_first_200(
    proxy: FaultProxy, model, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """/status and /metrics give the seconds of each step of a start: the download's from its own record, Ray's
    and the engine's from what the sidecar sees; a step not reached yet is None (absent from the metrics)."""
    bucket, _ = model
    proxy.add_rule(Rule(Delay(0.3), match_method="GET", only_ranged=True, times=-1))  # the download takes >= 0.3 s
    placeholder = socket.socket()  # the engine's port, not listening yet
    placeholder.bind(("127.0.0.1", 0))
    engine_port = placeholder.getsockname()[1]
    _Dashboard.states = ["ALIVE"]
    dashboard = serve(_Dashboard)
    sidecar = Sidecar(
        ["--engine-url", f"http://127.0.0.1:{engine_port}", "--expected-ray-nodes", "2",
         "--ray-dashboard-url", f"http://127.0.0.1:{dashboard.server_address[1]}",
         "--", "--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path), *RANGED],
        proxy.url,
    )  # fmt: skip
    engine = None
    try:
        status = wait_for(lambda: (s := sidecar.get("/status").json())["model_complete"] and s, timeout=90)
        steps = status["cold_start"]
        assert steps["download_seconds"] >= 0.3 and steps["listing_seconds"] >= 0
        assert steps["verification_seconds"] >= 0
        assert (steps["ray_seconds"], steps["engine_seconds"], steps["total_seconds"]) == (None, None, None)
        assert steps["complete"] is False
        families = {f.name: f for f in text_string_to_metric_families(sidecar.get("/metrics").text)}
        labelled = {s.labels["step"] for s in families["aibrix_cold_start_step_seconds"].samples}
        assert labelled == {"listing", "download", "verification"}

        _Dashboard.states = ["ALIVE", "ALIVE"]
        wait_for(lambda: sidecar.get("/status").json()["cold_start"]["ray_seconds"] is not None)
        placeholder.close()
        engine = serve(_Engine, engine_port)
        assert wait_for(lambda: sidecar.get("/readyz").status_code == 200)
        steps = wait_for(lambda: (c := sidecar.get("/status").json()["cold_start"])["complete"] and c)
        parts = ("listing", "download", "verification", "ray", "engine")
        assert all(steps[f"{p}_seconds"] >= 0 for p in parts), steps
        # the steps follow one another: together they are the total (each is rounded to the millisecond)
        assert abs(sum(steps[f"{p}_seconds"] for p in parts) - steps["total_seconds"]) < 0.01, steps
        families = {f.name: f for f in text_string_to_metric_families(sidecar.get("/metrics").text)}
        samples = {s.labels["step"]: s.value for s in families["aibrix_cold_start_step_seconds"].samples}
        assert set(samples) == {*parts, "total"} and samples["total"] >= samples["download"] >= 0.3
    finally:
        _Dashboard.states = ["ALIVE"]
        sidecar.close()
        dashboard.shutdown()
        if engine is not None:
            engine.shutdown()


def test_read_only_surface_and_config_errors(tmp_path: Path, s3_server: S3Server) -> None:
    sidecar = Sidecar(["--model-dir", str(tmp_path / "nothing")], s3_server.url)
    try:
        r = sidecar.get("/readyz")
        assert r.status_code == 503 and r.json() == {
            "ok": False,
            "phase": "pending",
            "reason": "model not downloaded yet",
        }
        assert sidecar.get("/healthz").status_code == 200
        assert sidecar.http.post("/readyz").status_code == 405
        assert sidecar.http.put("/status").status_code == 405
        assert sidecar.get("/docs").status_code == 404 and sidecar.get("/openapi.json").status_code == 404
        assert sidecar.get("/../../etc/passwd").status_code == 404
    finally:
        sidecar.close()
    p = subprocess.run(
        [sys.executable, "-m", "sidecar", "--port", "99999", "--model-dir", "/x"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert p.returncode == 2 and "--port" in p.stderr
    p = subprocess.run([sys.executable, "-m", "sidecar"], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2 and "--model-dir" in p.stderr


def test_a_failed_download_tells_status_why_and_the_log_promises_no_resume_it_cannot_keep(
    s3_server: S3Server, tmp_path: Path
) -> None:
    """A missing bucket is permanent: /status carries the downloader's own reason (it failed before any progress
    was written), and the log says a restart fails the same way instead of promising a resume."""
    args = ["--", "--model-uri", "s3://no-such-bucket-xyz/m/", "--local-dir", str(tmp_path)]
    sidecar = Sidecar(["--exit-on-failure-after", "-1", *args], s3_server.url)
    try:
        r = wait_for(lambda: (x := sidecar.get("/healthz")).status_code == 503 and x, timeout=60)
        cause = "s3://no-such-bucket-xyz/m/: bucket 'no-such-bucket-xyz' does not exist"
        assert r.json()["reason"] == f"download failed: aibrix-download exited with code 3: {cause}", r.json()
        status = sidecar.get("/status").json()
        assert status["phase"] == "failed" and status["last_error"] == cause, status
        assert status["download_process"]["exit_code"] == 3 and status["download_process"]["cause"] == cause
        for path in ("/status", "/readyz", "/healthz", "/metrics"):
            assert SECRET not in sidecar.get(path).text
    finally:
        assert sidecar.close() == 143
    log = "".join(sidecar.log)
    assert f"download failed (exit code 3): {cause}; a restart fails the same way until that is fixed" in log
    assert "resumes" not in log


def test_native_sidecar_exits_when_its_download_fails_and_a_transient_failure_promises_a_resume(
    closing: ClosingServer, tmp_path: Path
) -> None:
    """An endpoint that never answers (exit 4) may answer after a restart: exit 1 so that Kubernetes restarts the
    container, saying the next start resumes the download."""
    args = ["--", "--model-uri", "s3://bkt/m/", "--local-dir", str(tmp_path), "--max-attempts", "1"]
    sidecar = Sidecar(["--exit-on-failure-after", "0", *args], closing.url)
    assert sidecar.proc.wait(timeout=60) == 1  # so that Kubernetes restarts the container
    sidecar.http.close()
    log = "".join(sidecar.log)
    assert "download failed (exit code 4): prefix 's3://bkt/m/': giving up after 1 attempt(s)" in log, log
    assert "the next start of this container resumes it" in log


def test_a_file_deleted_from_a_complete_model_is_reported_as_incomplete(
    s3_server: S3Server, model, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bucket, files = model
    r = run_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path)], s3_server.url)
    assert r.returncode == 0, r.stderr
    sidecar = Sidecar(["--model-dir", str(tmp_path / "m")], s3_server.url)
    try:
        assert sidecar.get("/readyz").status_code == 200
        (tmp_path / "m" / "config.json").unlink()
        r = wait_for(lambda: (x := sidecar.get("/readyz")).status_code == 503 and x)  # the next manifest recheck
        assert r.json() == {
            "ok": False,
            "phase": "incomplete",
            "reason": f"model incomplete: 1 of {len(files)} files missing or changed since it was downloaded "
            "(config.json); the next aibrix-download run fetches them again",
        }
        status = sidecar.get("/status").json()
        assert status["phase"] == "incomplete" and status["damaged_files"] == ["config.json"], status
        families = {f.name: f for f in text_string_to_metric_families(sidecar.get("/metrics").text)}
        phases = {s.labels["phase"]: s.value for s in families["aibrix_download_phase"].samples}
        assert phases["incomplete"] == 1.0 and phases["pending"] == 0.0 and phases["ready"] == 0.0
    finally:
        sidecar.close()


def test_credentials_are_cut_from_what_the_sidecar_repeats() -> None:
    from sidecar.config import load_settings
    from sidecar.monitor import Monitor

    env = {"AWS_SECRET_ACCESS_KEY": "abcd1234secret", "HF_TOKEN": "hf_tok_123456", "PATH": "/usr/bin"}
    settings = load_settings(["--model-dir", "/nonexistent/m"], env)
    monitor = Monitor(settings)
    try:
        assert (
            monitor.redact("denied for abcd1234secret (hf_tok_123456) on /usr/bin")
            == "denied for *** (***) on /usr/bin"
        )
    finally:
        monitor.stop()


# ------------------------------------------------------------------------------ probes on the socket, answers


def _write_progress(model_dir: Path, **fields: object) -> None:
    """progress.json as the downloader writes it (its own writer: a rename, like every ~0.5 s in a download)."""
    state = StateDir(str(model_dir))
    state.ensure()
    now = time.time()
    base: dict[str, object] = dict(
        phase="downloading", source="s3://b/m/", model_dir=str(model_dir), pid=os.getpid(), host="test",
        started_at=now - 10, updated_at=now, bytes_total=4 * MiB, files_total=1,
    )  # fmt: skip
    state.write_progress(Progress(**{**base, **fields}))  # type: ignore[arg-type]


def _read_response(sock: socket.socket, buf: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response (status, lower-cased headers, body) from sock; bytes after it stay in buf."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, f"connection closed mid-response: {bytes(buf)!r}"
        buf += data
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers["content-length"])
    while len(buf) < end + 4 + length:
        data = sock.recv(65536)
        assert data, "connection closed mid-body"
        buf += data
    body = bytes(buf[end + 4 : end + 4 + length])
    del buf[: end + 4 + length]
    return int(lines[0].split()[1]), headers, body


def _closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_probe_answers_are_never_stale(tmp_path: Path) -> None:
    """The sidecar keeps rendered answers, but every change shows in the very next answer, with no poll between."""
    model = tmp_path / "m"
    _write_progress(model, bytes_done=1 * MiB)
    sidecar = Sidecar(
        ["--model-dir", str(model), "--poll-interval", "60", "--stall-timeout", "3"], "http://127.0.0.1:9"
    )
    try:
        r = sidecar.get("/readyz")
        assert r.status_code == 503 and r.json()["phase"] == "downloading", r.json()
        for i in range(2, 6):  # progress.json rewritten: the next /status shows it
            assert sidecar.get("/status").json()["bytes_done"] == (i - 1) * MiB
            _write_progress(model, bytes_done=i * MiB)
            assert sidecar.get("/status").json()["bytes_done"] == i * MiB
        # nothing changes, yet liveness must turn 503 once the stall timeout has passed since the last progress
        r = wait_for(lambda: (x := sidecar.get("/healthz")).status_code == 503 and x, timeout=60, interval=0.05)
        assert "no download progress" in r.json()["reason"]
        # the manifest lands: the next probe says so (no poll runs in between: --poll-interval 60)
        (model / "config.json").write_bytes(b"{}")
        st = os.stat(model / "config.json")
        StateDir(str(model)).write_manifest(
            Manifest(
                source="s3://b/m/", model_dir=str(model), created_at=time.time(), tool="test",
                files=(ManifestFile("config.json", 2, "etag", None, None, "size", st.st_mtime_ns),),
            )
        )  # fmt: skip
        r = sidecar.get("/readyz")
        assert r.status_code == 200 and r.json() == {"ok": True, "phase": "ready", "reason": "ready"}
        assert sidecar.get("/healthz").status_code == 200
        status = sidecar.get("/status").json()
        assert status["phase"] == "ready" and status["model_complete"] is True and status["manifest"]["files"] == 1
        (model / "config.json").unlink()  # a file gone from an unchanged manifest: noticed at the next recheck
        assert wait_for(lambda: sidecar.get("/readyz").status_code == 503, timeout=15, interval=0.2)
    finally:
        assert sidecar.close() == 143


def test_probes_on_raw_connections(tmp_path: Path) -> None:
    """Probe requests are answered on the socket; anything else on the same connection still reaches the app."""
    _write_progress(tmp_path / "m", bytes_done=1 * MiB)
    sidecar = Sidecar(["--model-dir", str(tmp_path / "m")], "http://127.0.0.1:9")
    host, port = sidecar.url.removeprefix("http://").split(":")
    ready = sidecar.get("/readyz").json()

    def connect() -> socket.socket:
        return socket.create_connection((host, int(port)), timeout=10)

    try:
        with connect() as s:
            buf = bytearray()
            # pipelined in one write: GET, HEAD, a query string, and the AIBrix path
            s.sendall(
                b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\nHEAD /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /status?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            code, headers, body = _read_response(s, buf)
            assert code == 503 and headers["content-type"] == "application/json" and json.loads(body) == ready
            # HEAD: the headers of the GET, no body
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            end = buf.index(b"\r\n\r\n")
            head = bytes(buf[:end]).decode().lower()
            del buf[: end + 4]
            assert head.startswith("http/1.1 503") and f"content-length: {len(json.dumps(ready))}" in head
            code, _, body = _read_response(s, buf)
            assert code == 200 and json.loads(body)["bytes_done"] == MiB
            code, _, body = _read_response(s, buf)
            assert code == 503 and json.loads(body) == ready
            # /metrics goes to the app; the probe pipelined behind it is answered after it, in order
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            code, headers, body = _read_response(s, buf)
            assert code == 200 and headers["content-type"].startswith("text/plain") and b"aibrix_ready 0.0" in body
            code, _, body = _read_response(s, buf)
            assert code == 200 and json.loads(body) == {"ok": True, "phase": "downloading", "reason": "ok"}
            s.sendall(
                b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\nPOST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
            )
            assert _read_response(s, buf)[0] == 503
            assert _read_response(s, buf)[0] == 405
        # a request with a body, an unknown path and an unparseable request are the app's and uvicorn's business
        with connect() as s:
            buf = bytearray()
            s.sendall(
                b"GET /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            code, _, body = _read_response(s, buf)
            assert code == 503 and json.loads(body) == ready
            assert _read_response(s, buf)[0] == 404
        with connect() as s:
            s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            assert _read_response(s, bytearray())[0] == 400
        # Connection: close (what the kubelet sends) and HTTP/1.0: answered, then closed by the sidecar
        for request in (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Close\r\nUser-Agent: kube-probe/1.30\r\n\r\n",
            b"GET /healthz HTTP/1.0\r\n\r\n",
        ):
            with connect() as s:
                s.sendall(request)
                code, headers, _ = _read_response(s, bytearray())
                assert code == 200 and headers.get("connection") == "close"
                assert _closed(s)
        # an idle keep-alive connection is closed after uvicorn's keep-alive timeout (5 s), not kept forever
        with connect() as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_response(s, bytearray())[0] == 200
            s.settimeout(60)  # uvicorn's keep-alive timeout is 5 s: closed by the sidecar well before this
            assert s.recv(1) == b""
        # a connection kept open across a graceful stop does not hold it up
        lingering = connect()
        lingering.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(lingering, bytearray())[0] == 200
        assert sidecar.close() == 143  # within Sidecar.close's wait: the open connection did not hold it up
        assert _closed(lingering)
        lingering.close()
    finally:
        if sidecar.proc.poll() is None:
            sidecar.close()


# ------------------------------------------------------------------------------- verdicts from one snapshot


def test_with_no_model_readiness_follows_the_engine_and_ray() -> None:
    """No model directory (AIBrix's aibrix_runtime): no phase, liveness always ok, readiness from the engine and Ray,
    and /status says that no model is watched instead of giving model fields."""
    from sidecar.config import load_settings
    from sidecar.snapshot import EngineState, RayState, Snapshot

    settings = load_settings(["--engine-url", "http://127.0.0.1:9", "--expected-ray-nodes", "2"], {})
    assert settings.model_dir is None
    up, down = EngineState(True, "/health answered 200"), EngineState(False, "/health answered 503")
    snap = Snapshot(settings, model=None, engine=up, ray=RayState(1, "1 of 2 nodes alive"))
    assert (snap.phase, snap.readiness.ok, snap.readiness.reason) == (None, False, "ray: 1 of 2 nodes")
    assert snap.liveness(now=1e9).ok
    snap = Snapshot(settings, model=None, engine=up, ray=RayState(2, "2 of 2 nodes alive"))
    assert snap.readiness.ok and snap.readiness.reason == "ready"
    snap = Snapshot(settings, model=None, engine=down, ray=RayState(2, "2 of 2 nodes alive"))
    assert snap.readiness.reason == "/health answered 503"
    status = snap.status()
    assert status["model"].startswith("none watched") and status["model"].endswith(
        "readiness follows the engine at http://127.0.0.1:9 and 2 Ray nodes"
    )
    assert status["ray"] == {"expected_nodes": 2, "alive_nodes": 2} and "model_path" not in status
    ray_only = Snapshot(load_settings(["--expected-ray-nodes", "1"], {}), model=None, ray=RayState(1, ""))
    assert ray_only.readiness.ok and ray_only.status()["model"].endswith("readiness follows 1 Ray node")


def test_the_models_phase_is_the_downloads_where_they_are_the_same_thing(tmp_path: Path) -> None:
    from downloader import Phase as DownloadPhase
    from sidecar.config import load_settings
    from sidecar.snapshot import NO_MANIFEST, Phase, Snapshot

    shared = {p.value for p in Phase} & {p.value for p in DownloadPhase}
    assert shared == {"pending", "downloading", "verifying", "ready", "failed"}
    settings = load_settings(["--model-dir", str(tmp_path)], {})
    now = time.time()
    for download, phase in [
        (DownloadPhase.LISTING, Phase.PENDING),
        (DownloadPhase.WAITING, Phase.PENDING),
        (DownloadPhase.DOWNLOADING, Phase.DOWNLOADING),
        (DownloadPhase.VERIFYING, Phase.VERIFYING),
        (DownloadPhase.FAILED, Phase.FAILED),
        (DownloadPhase.INTERRUPTED, Phase.PENDING),
    ]:
        progress = Progress(phase=download.value, source="s3://b/m/", model_dir=str(tmp_path), pid=1, host="h",
                            started_at=now, updated_at=now, bytes_total=10, last_error="boom")  # fmt: skip
        snap = Snapshot(settings, model=NO_MANIFEST, progress=progress)
        assert snap.phase is phase, download
        assert json.loads(json.dumps(snap.status()))["phase"] == phase.value


def test_cold_start_of_a_complete_model_whose_record_still_says_downloading() -> None:
    """progress.json is rewritten about once a second, so the sidecar can find the manifest before the record that
    says the fetch ended: the download step then ends where the model was seen complete (never None), and the
    record's own moments take over once it is read."""
    from downloader import Phase as DownloadPhase
    from sidecar.coldstart import ColdStart, Step

    clock = [1000.0]
    cold = ColdStart(watch_ray=False, watch_engine=False, clock=lambda: clock[0])
    base = {"source": "s3://b/m/", "model_dir": "/m", "pid": 1, "host": "h", "started_at": 990.0, "updated_at": 999.0}
    downloading = Progress(phase=DownloadPhase.DOWNLOADING.value, **base,  # type: ignore[arg-type]
                           phase_started={"listing": 990.0, "downloading": 991.0})  # fmt: skip
    cold.observe(downloading, model_ready=False, ray_complete=False, engine_up=False)
    assert cold.durations()[Step.DOWNLOAD] is None  # not complete, not fetched

    cold.observe(None, model_ready=True, ray_complete=False, engine_up=False)  # the manifest, the old record
    steps = cold.durations()
    assert (steps[Step.LISTING], steps[Step.DOWNLOAD], steps[Step.VERIFICATION]) == (1.0, 9.0, 0.0)
    assert steps[Step.TOTAL] == 10.0

    clock[0] = 1001.0
    ready = Progress(
        phase=DownloadPhase.READY.value,
        **base,  # type: ignore[arg-type]
        phase_started={"listing": 990.0, "downloading": 991.0, "verifying": 998.5, "ready": 999.5},
    )
    cold.observe(ready, model_ready=True, ray_complete=False, engine_up=False)
    steps = cold.durations()
    assert (steps[Step.LISTING], steps[Step.DOWNLOAD], steps[Step.VERIFICATION]) == (1.0, 7.5, 1.0)
    assert steps[Step.TOTAL] == 9.5
