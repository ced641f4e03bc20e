"""What the probes answer from: the model's manifest and progress (through the downloader's public state API),
the engine's /health, Ray's membership, and, in native-sidecar mode, the download child process.

Engine and Ray are polled in the background, so a probe never waits on them and probing at a high rate
costs the download nothing. The manifest is checked on every readiness request (one stat(2), a re-parse
only when the file changed), so readiness turns true exactly when the manifest lands.

Every change to something a probe answer depends on (the manifest's verdict, the polled progress, engine,
Ray, the download child) bumps `version`, so the HTTP layer can keep a rendered answer until it changes.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import httpx

from downloader import Manifest, Progress, damaged_files, read_manifest, read_progress
from downloader.errors import PERMANENT_EXIT_CODES
from downloader.layout import MANIFEST_NAME, PROGRESS_NAME, state_dir

from .coldstart import ColdStart
from .config import SidecarSettings

log = logging.getLogger(__name__)

MANIFEST_RECHECK_SECONDS = 5.0  # how often files listed in an unchanged manifest are stat'ed again
STDERR_TAIL_LINES = 40  # lines of the download child's stderr kept to tell /status why it failed


class Phase(str, Enum):
    """The model's phase, as /readyz, /status and the aibrix_download_phase metric name it."""

    PENDING = "pending"  # nothing downloaded yet, or a download not started
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    READY = "ready"  # the manifest says complete and every file it lists is in place
    INCOMPLETE = "incomplete"  # a manifest is there, but a file it lists is missing or changed since
    FAILED = "failed"  # the last download failed


@dataclass(frozen=True)
class Verdict:
    ok: bool
    phase: str
    reason: str


def _gb(n: float) -> str:
    return f"{n / 1e9:.0f}" if n >= 10e9 else f"{n / 1e9:.1f}"


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m" if s >= 60 else f"{s}s")


def describe_download(p: Progress) -> str:
    pct = 100.0 * p.bytes_done / p.bytes_total if p.bytes_total else 0.0
    return (
        f"downloading {pct:.0f}% ({_gb(p.bytes_done)}/{_gb(p.bytes_total)} GB, "
        f"{p.rate_bps / 1e9:.1f} GB/s, ETA {_eta(p.eta_seconds)})"
    )


class Monitor:
    def __init__(self, settings: SidecarSettings, clock: Callable[[], float] = time.monotonic) -> None:
        assert settings.model_dir is not None
        self.settings = settings
        self.model_dir = settings.model_dir
        self._clock = clock
        self._lock = threading.Lock()
        self._manifest_path = os.path.join(state_dir(self.model_dir), MANIFEST_NAME)
        self._progress_path = os.path.join(state_dir(self.model_dir), PROGRESS_NAME)
        self._version = 0  # bumped (under the lock) whenever anything a verdict or status depends on changes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http = httpx.Client(timeout=settings.engine_timeout, follow_redirects=False, trust_env=False)
        # download progress and stall tracking
        self._progress: Progress | None = None
        self._last_bytes = -1
        self._last_change = clock()
        # manifest cache
        self._manifest_key: tuple[int, int, int] | None = None
        self._manifest: Manifest | None = None
        self._manifest_ready = False
        self._damaged: list[str] = []  # files the manifest lists that are missing or changed
        self._checked_at = 0.0
        # engine and Ray
        self.engine_up: bool | None = None
        self.engine_detail = "not configured"
        self.ray_alive: int | None = None
        self.ray_detail = "not configured"
        # native-sidecar mode: the download child
        self._child: subprocess.Popen[bytes] | None = None
        self._relay: threading.Thread | None = None
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.download_failed = threading.Event()  # set when the download child failed (native-sidecar mode)
        self.child_failed: str | None = None
        self.child_cause: str | None = None  # why it failed, from its last error line or progress.json
        self.child_exit: int | None = None
        self.coldstart = ColdStart(watch_ray=bool(settings.expected_ray_nodes), watch_engine=bool(settings.engine_url))

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.settings.download_args:
            self._start_download()
        self.poll_once()
        self._thread = threading.Thread(target=self._run, name="sidecar-poll", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.poll_interval):
            try:
                self.poll_once()
            except Exception:
                log.exception("poll failed")

    def stop(self) -> None:
        self._stop.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # the downloader keeps finished ranges and exits 143
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._http.close()

    def _start_download(self) -> None:
        cmd = [sys.executable, "-m", "downloader", *self.settings.download_args]
        log.info("starting the download: aibrix-download %s", " ".join(self.settings.download_args))
        # Its stderr comes through us (passed on line by line) so that the cause of a failure reaches /status.
        self._child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._relay = threading.Thread(target=self._relay_stderr, name="download-stderr", daemon=True)
        self._relay.start()
        threading.Thread(target=self._wait_child, name="download-child", daemon=True).start()

    def _relay_stderr(self) -> None:
        assert self._child is not None and self._child.stderr is not None
        out = getattr(sys.stderr, "buffer", None)
        for raw in self._child.stderr:
            if out is not None:
                try:
                    out.write(raw)
                    out.flush()
                except (OSError, ValueError):
                    out = None  # our own stderr is gone; keep reading so that the child never blocks
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                with self._lock:
                    self._stderr_tail.append(line)

    def _wait_child(self) -> None:
        assert self._child is not None
        code = self._child.wait()
        if self._relay is not None:
            self._relay.join(timeout=5)  # its last lines, which say why
        cause = self._failure_cause() if code != 0 else None
        with self._lock:
            self._version += 1
            self.child_exit = code
            if code != 0 and not self._stop.is_set():
                self.child_cause = cause
                self.child_failed = f"aibrix-download exited with code {code}" + (f": {cause}" if cause else "")
        if code == 0:
            log.info("download finished")
        elif not self._stop.is_set():
            if code in PERMANENT_EXIT_CODES:
                log.error(
                    "download failed (exit code %d): %s; a restart fails the same way until that is fixed",
                    code,
                    cause or "see the lines above",
                )
            else:
                log.error(
                    "download failed (exit code %d): %s; the next start of this container resumes it",
                    code,
                    cause or "see the lines above",
                )
            self.download_failed.set()

    def _failure_cause(self) -> str | None:
        """The download's own last word on why it failed: its last ERROR line, else progress.json's last error."""
        with self._lock:
            tail = list(self._stderr_tail)
        errors = [line.split(" ERROR ", 1)[1] for line in tail if " ERROR " in line]
        if errors:
            return self.redact(errors[-1])
        p = read_progress(self.model_dir)
        return self.redact(p.last_error) if p is not None and p.last_error else None

    def redact(self, text: str) -> str:
        """`text` without any credential the sidecar knows of (the downloader prints none; this makes sure)."""
        for secret in self.settings.secrets:
            text = text.replace(secret.reveal(), "***")
        return text

    # ---------------------------------------------------------------------------------------- polls
    def poll_once(self) -> None:
        progress = read_progress(self.model_dir)
        now = self._clock()
        with self._lock:
            if progress != self._progress:
                self._version += 1
            self._progress = progress
            done = progress.bytes_done if progress else -1
            if done != self._last_bytes:
                self._last_bytes = done
                self._last_change = now
        if self.settings.engine_url:
            self._poll_engine()
        if self.settings.expected_ray_nodes:
            self._poll_ray()
        self._observe_start(progress, self.model()[0])

    def _observe_start(self, progress: Progress | None, ready: bool) -> None:
        with self._lock:
            expected, alive, engine_up = self.settings.expected_ray_nodes, self.ray_alive, self.engine_up
        ray_complete = bool(expected and alive is not None and alive >= expected)
        self.coldstart.observe(progress, ready, ray_complete, bool(engine_up))

    def _poll_engine(self) -> None:
        assert self.settings.engine_url is not None
        try:
            r = self._http.get(self.settings.engine_url + "/health")
            up, detail = r.status_code == 200, f"/health answered {r.status_code}"
        except httpx.HTTPError as exc:
            up, detail = False, f"engine not answering ({type(exc).__name__})"
        with self._lock:
            if (up, detail) != (self.engine_up, self.engine_detail):
                self._version += 1
            self.engine_up, self.engine_detail = up, detail

    def _poll_ray(self) -> None:
        try:
            r = self._http.get(self.settings.ray_dashboard_url + "/api/v0/nodes", params={"limit": 10000})
            r.raise_for_status()
            alive = count_alive_nodes(r.json())
            detail = f"{alive} of {self.settings.expected_ray_nodes} nodes alive"
        except (httpx.HTTPError, ValueError) as exc:
            alive, detail = None, f"Ray dashboard not answering ({type(exc).__name__})"
        with self._lock:
            if (alive, detail) != (self.ray_alive, self.ray_detail):
                self._version += 1
            self.ray_alive, self.ray_detail = alive, detail

    def engine_metrics(self) -> str | None:
        if not self.settings.engine_url:
            return None
        try:
            r = self._http.get(self.settings.engine_url + self.settings.engine_metrics_path)
        except httpx.HTTPError:
            return None
        return r.text if r.status_code == 200 else None

    # ------------------------------------------------------------------------------------- verdicts
    @property
    def version(self) -> int:
        """Changes whenever a verdict or the status may have changed; call model() first (it checks the manifest)."""
        return self._version

    def clock(self) -> float:
        return self._clock()

    def stall_deadline(self) -> float:
        """When (on clock()) liveness turns 503 for a stall if the download makes no progress until then."""
        with self._lock:
            return self._last_change + self.settings.stall_timeout

    def progress_key(self) -> tuple[int, int, int] | None:
        """Identity of progress.json as it is now (the downloader replaces it by a rename each time it writes)."""
        try:
            st = os.stat(self._progress_path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def model(self) -> tuple[bool, Manifest | None]:
        """Is the model complete and verified? Cheap enough for every probe."""
        try:
            st = os.stat(self._manifest_path)
        except OSError:
            with self._lock:
                if self._manifest_key is not None or self._manifest_ready:
                    self._version += 1
                self._manifest_key, self._manifest, self._manifest_ready = None, None, False
            return False, None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        now = self._clock()
        with self._lock:
            if key == self._manifest_key and now - self._checked_at < MANIFEST_RECHECK_SECONDS:
                return self._manifest_ready, self._manifest
        manifest = read_manifest(self.model_dir)
        damaged = damaged_files(self.model_dir, manifest) if manifest is not None else []
        ready = manifest is not None and not damaged
        with self._lock:
            if (key, ready) != (self._manifest_key, self._manifest_ready) or manifest != self._manifest:
                self._version += 1
            self._manifest_key, self._manifest, self._manifest_ready, self._checked_at = key, manifest, ready, now
            self._damaged = damaged
        return ready, manifest

    def phase(self) -> str:
        ready, manifest = self.model()
        with self._lock:
            if self.child_failed:
                return Phase.FAILED.value
            if ready:
                return Phase.READY.value
            p = self._progress
        if p is not None and p.phase in (Phase.DOWNLOADING, Phase.VERIFYING, Phase.FAILED):
            return Phase(p.phase).value
        if manifest is not None:
            return Phase.INCOMPLETE.value  # complete once; something removed or changed a file since
        return Phase.PENDING.value

    def readiness(self) -> Verdict:
        ready, manifest = self.model()
        phase = self.phase()
        if not ready:
            with self._lock:
                p, failed, damaged = self._progress, self.child_failed, list(self._damaged)
            if failed:
                return Verdict(False, phase, f"download failed: {failed}")
            if p is not None and p.phase == Phase.FAILED:
                return Verdict(False, phase, f"download failed: {self.redact(p.last_error or 'see its log')}")
            if p is not None and phase in (Phase.DOWNLOADING, Phase.VERIFYING):
                return Verdict(False, phase, describe_download(p))
            if phase == Phase.INCOMPLETE and manifest is not None:
                shown = ", ".join(damaged[:3]) + (f" and {len(damaged) - 3} more" if len(damaged) > 3 else "")
                return Verdict(
                    False,
                    phase,
                    f"model incomplete: {len(damaged)} of {len(manifest.files)} files missing or changed since it "
                    f"was downloaded ({shown}); the next aibrix-download run fetches them again",
                )
            return Verdict(False, phase, "model not downloaded yet")
        with self._lock:
            engine_up, engine_detail = self.engine_up, self.engine_detail
            ray_alive = self.ray_alive
        if self.settings.engine_url and not engine_up:
            return Verdict(False, phase, "engine not answering" if engine_up is None else engine_detail)
        expected = self.settings.expected_ray_nodes
        if expected and (ray_alive is None or ray_alive < expected):
            shown = "?" if ray_alive is None else str(ray_alive)
            return Verdict(False, phase, f"ray: {shown} of {expected} nodes")
        return Verdict(True, phase, "ready")

    def liveness(self) -> Verdict:
        phase = self.phase()
        with self._lock:
            failed = self.child_failed
            p = self._progress
            idle = self._clock() - self._last_change
        if failed:
            return Verdict(False, phase, f"download failed: {failed}")
        if phase in ("downloading", "verifying") and idle > self.settings.stall_timeout:
            return Verdict(False, phase, f"no download progress for {idle:.0f}s")
        if p is not None and p.phase == "failed" and phase != "ready":
            return Verdict(False, phase, f"download failed: {p.last_error}")
        return Verdict(True, phase, "ok")

    def status(self) -> dict[str, Any]:
        ready, manifest = self.model()
        verdict = self.readiness()
        p = read_progress(self.model_dir)  # fresh, not the last poll: status is read by people
        self._observe_start(p, ready)
        with self._lock:
            body: dict[str, Any] = {
                "phase": verdict.phase,
                "ready": verdict.ok,
                "reason": verdict.reason,
                "model_path": self.model_dir,
                "model_complete": ready,
                "engine": None
                if not self.settings.engine_url
                else {"url": self.settings.engine_url, "up": self.engine_up, "detail": self.engine_detail},
                "ray": None
                if not self.settings.expected_ray_nodes
                else {"expected_nodes": self.settings.expected_ray_nodes, "alive_nodes": self.ray_alive},
                "download_process": None
                if self._child is None
                else {
                    "pid": self._child.pid,
                    "exit_code": self.child_exit,
                    "failed": self.child_failed,
                    "cause": self.child_cause,
                },
                "damaged_files": list(self._damaged) if manifest is not None and not ready else [],
                "cold_start": self.coldstart.as_status(),
            }
        if p is not None:
            body.update(
                source=p.source,
                bytes_total=p.bytes_total,
                bytes_done=p.bytes_done,
                bytes_fetched=p.bytes_fetched,
                percent=round(100.0 * p.bytes_done / p.bytes_total, 2) if p.bytes_total else None,
                files_total=p.files_total,
                files_done=p.files_done,
                rate_bytes_per_second=p.rate_bps,
                eta_seconds=p.eta_seconds,
                retries=p.retries,
                errors_by_kind=p.errors_by_kind,
                object_changes=p.object_changes,
                last_error=self.redact(p.last_error) if p.last_error else None,
                started_at=p.started_at,
                updated_at=p.updated_at,
                files=p.active_files,
            )
        if body.get("last_error") is None and self.child_cause:
            body["last_error"] = self.child_cause  # it failed before it wrote any progress (a missing bucket)
        if manifest is not None:
            body["manifest"] = {
                "source": manifest.source,
                "files": len(manifest.files),
                "bytes": manifest.total_bytes,
                "created_at": manifest.created_at,
            }
            body.setdefault("source", manifest.source)
        return body

    def snapshot(self) -> tuple[Progress | None, bool, Manifest | None, Verdict]:
        """For a metrics scrape: fresh progress, so the counters agree with the manifest they sit beside."""
        ready, manifest = self.model()
        verdict = self.readiness()
        return read_progress(self.model_dir), ready, manifest, verdict


def count_alive_nodes(payload: Any) -> int:
    """Alive nodes in Ray's state API answer (GET /api/v0/nodes); dead nodes stay listed, so filter."""
    nodes: Any = payload.get("data", payload) if isinstance(payload, dict) else payload
    # Ray's state API nests the list twice: {"data": {"result": {"total": N, "result": [node, ...]}}}
    while isinstance(nodes, dict) and "result" in nodes:
        nodes = nodes["result"]
    if not isinstance(nodes, list):
        raise ValueError("unexpected answer from the Ray dashboard")
    return sum(1 for n in nodes if isinstance(n, dict) and n.get("state") == "ALIVE")
