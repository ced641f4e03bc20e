"""What the sidecar knows at one moment, as one immutable value, and every verdict read from it.

The monitor builds a `Snapshot` on each poll (and, between polls, when a probe's stat shows that the manifest or
progress.json changed, or a download child exits), and publishes it whole. Readiness, liveness, /status and the
metrics are all computed from one snapshot: nothing here reads a file, takes a lock or asks the network, so an
answer can never mix two moments, and a rendered answer stays valid exactly as long as its snapshot is current.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import Any

from downloader import Manifest, Progress
from downloader import Phase as DownloadPhase
from downloader.inventory import CacheInventory
from downloader.layout import FileKey

from .coldstart import Step, as_status
from .config import SidecarSettings


class Phase(str, Enum):
    """The model's phase, as /readyz, /status and the aibrix_download_phase metric name it: the download's own
    phase (downloader.Phase) where it is the same thing, and what only the sidecar can tell."""

    PENDING = DownloadPhase.PENDING.value  # nothing downloaded yet, or a download not started (or listing, waiting)
    DOWNLOADING = DownloadPhase.DOWNLOADING.value
    VERIFYING = DownloadPhase.VERIFYING.value
    READY = DownloadPhase.READY.value  # the manifest says complete and every file it lists is in place
    INCOMPLETE = "incomplete"  # a manifest is there, but a file it lists is missing or changed since
    FAILED = DownloadPhase.FAILED.value  # the last download failed


# The download's phases that the model's phase repeats as they are (the others: see Snapshot.phase).
_SHOWN_AS_IS = {p.value: Phase(p.value) for p in (DownloadPhase.DOWNLOADING, DownloadPhase.VERIFYING)}
_STALLABLE = (Phase.DOWNLOADING, Phase.VERIFYING)  # phases in which no progress for --stall-timeout fails liveness
_FINISHED = (DownloadPhase.READY, DownloadPhase.FAILED, DownloadPhase.INTERRUPTED)  # a run that no longer moves


@dataclass(frozen=True)
class Verdict:
    ok: bool
    phase: Phase | None  # None when no model is watched
    reason: str


@dataclass(frozen=True)
class ModelCheck:
    """The manifest and the files it lists, as last checked."""

    key: FileKey | None  # the manifest file's identity; None when there is none
    manifest: Manifest | None  # None when absent, unreadable, or not complete
    damaged: tuple[str, ...] = ()  # files the manifest lists that are missing or changed

    @property
    def ready(self) -> bool:
        return self.manifest is not None and not self.damaged


NO_MANIFEST = ModelCheck(None, None)


@dataclass(frozen=True)
class EngineState:
    up: bool | None  # None: not asked yet
    detail: str


@dataclass(frozen=True)
class RayState:
    alive: int | None  # None: the dashboard did not answer (or not asked yet)
    detail: str


@dataclass(frozen=True)
class ChildState:
    """Native-sidecar mode: the download process."""

    pid: int
    exit_code: int | None = None
    failed: str | None = None  # the message, when it failed (not when the sidecar stopped it)
    cause: str | None = None  # why, from its last error line or progress.json (redacted)


@dataclass(frozen=True)
class Snapshot:
    settings: SidecarSettings
    model: ModelCheck | None  # None: no model directory is watched
    progress: Progress | None = None
    progress_key: FileKey | None = None  # identity of the progress.json `progress` was read from
    last_change: float = 0.0  # on the monitor's clock: when bytes_done last changed
    engine: EngineState | None = None  # None: no engine configured
    ray: RayState | None = None  # None: Ray not watched
    child: ChildState | None = None  # None: not running the download
    cold_start: Mapping[Step, float | None] | None = None  # None: no model watched
    cache: CacheInventory | None = None  # the node cache's inventory, as last read; None: no cache root
    lease: bool | None = None  # whether the sidecar holds a lease on its model; None: no model watched

    # ------------------------------------------------------------------------------------------ verdicts
    @cached_property
    def phase(self) -> Phase | None:
        model = self.model
        if model is None:
            return None
        if self.child is not None and self.child.failed:
            return Phase.FAILED
        if model.ready:
            return Phase.READY
        p = self.progress
        if p is not None:
            if p.phase == DownloadPhase.FAILED:
                return Phase.FAILED
            shown = _SHOWN_AS_IS.get(p.phase)
            if shown is not None:
                return shown
        if model.manifest is not None:
            return Phase.INCOMPLETE  # complete once; something removed or changed a file since
        return Phase.PENDING

    @cached_property
    def readiness(self) -> Verdict:
        phase, model, settings = self.phase, self.model, self.settings
        if model is not None and not model.ready:
            return Verdict(False, phase, self._not_ready_reason(model))
        engine = self.engine
        if engine is not None and not engine.up:
            return Verdict(False, phase, "engine not answering" if engine.up is None else engine.detail)
        expected = settings.expected_ray_nodes
        alive = self.ray.alive if self.ray is not None else None
        if expected and (alive is None or alive < expected):
            return Verdict(False, phase, f"ray: {'?' if alive is None else alive} of {expected} nodes")
        return Verdict(True, phase, "ready")

    def _not_ready_reason(self, model: ModelCheck) -> str:
        p, child, phase = self.progress, self.child, self.phase
        if child is not None and child.failed:
            return f"download failed: {child.failed}"
        if p is not None and p.phase == DownloadPhase.FAILED:
            return f"download failed: {self.settings.redact(p.last_error or 'see its log')}"
        if p is not None and phase in _STALLABLE:
            return describe_download(p)
        if phase == Phase.INCOMPLETE and model.manifest is not None:
            damaged = model.damaged
            shown = ", ".join(damaged[:3]) + (f" and {len(damaged) - 3} more" if len(damaged) > 3 else "")
            return (
                f"model incomplete: {len(damaged)} of {len(model.manifest.files)} files missing or changed since it "
                f"was downloaded ({shown}); the next aibrix-download run fetches them again"
            )
        return "model not downloaded yet"

    @property
    def stall_deadline(self) -> float:
        """When (on the monitor's clock) liveness turns 503 for a stall, if no progress is seen until then."""
        return self.last_change + self.settings.stall_timeout

    def liveness(self, now: float) -> Verdict:
        """`now` on the monitor's clock: a download that makes no progress fails liveness by time alone."""
        phase, child, p = self.phase, self.child, self.progress
        if child is not None and child.failed:
            return Verdict(False, phase, f"download failed: {child.failed}")
        idle = now - self.last_change
        if phase in _STALLABLE and idle > self.settings.stall_timeout:
            return Verdict(False, phase, f"no download progress for {idle:.0f}s")
        if p is not None and p.phase == DownloadPhase.FAILED and phase != Phase.READY:
            return Verdict(False, phase, f"download failed: {self.settings.redact(p.last_error or 'see its log')}")
        return Verdict(True, phase, "ok")

    def live_until(self, now: float) -> float:
        """Until when (on the monitor's clock) `liveness(now)` stays what it is now, if nothing else changes: a
        download not stalled yet stalls at the deadline; every other answer stands."""
        if self.phase in _STALLABLE and now - self.last_change <= self.settings.stall_timeout:
            return self.stall_deadline
        return float("inf")

    # ------------------------------------------------------------------------------------------ figures
    @property
    def cache_budget(self) -> int | None:
        """The budget of the node cache: the download's own --cache-max-size, else the one its last admission
        applied."""
        if self.settings.cache_budget is not None:
            return self.settings.cache_budget
        return self.cache.budget if self.cache is not None else None

    @property
    def download_running(self) -> bool:
        p = self.progress
        return p is not None and p.phase not in _FINISHED

    def status(self) -> dict[str, Any]:
        """The /status body."""
        verdict, settings = self.readiness, self.settings
        body: dict[str, Any] = {"phase": verdict.phase, "ready": verdict.ok, "reason": verdict.reason}
        model = self.model
        if model is None:
            body["model"] = "none watched: no model directory was given (--model-dir / SIDECAR_MODEL_DIR); " + (
                readiness_follows(settings)
            )
        else:
            body.update(model_path=settings.model_dir, model_complete=model.ready)
        engine, ray = self.engine, self.ray
        body["engine"] = (
            None if engine is None else {"url": settings.engine_url, "up": engine.up, "detail": engine.detail}
        )
        body["ray"] = None if ray is None else {"expected_nodes": settings.expected_ray_nodes, "alive_nodes": ray.alive}
        if self.cache is not None:
            body["cache"] = cache_status(self.cache, self.cache_budget)
        if model is None:
            return body
        body["lease_held"] = self.lease
        child = self.child
        body["download_process"] = (
            None
            if child is None
            else {"pid": child.pid, "exit_code": child.exit_code, "failed": child.failed, "cause": child.cause}
        )
        body["damaged_files"] = list(model.damaged) if model.manifest is not None and not model.ready else []
        body["cold_start"] = as_status(self.cold_start or {})
        p = self.progress
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
                last_error=settings.redact(p.last_error) if p.last_error else None,
                started_at=p.started_at,
                updated_at=p.updated_at,
                files=p.active_files,
            )
            if p.cooperation is not None:  # a cooperative download: its share, bytes by source, peers' states
                body["cooperation"] = p.cooperation
        if body.get("last_error") is None and child is not None and child.cause:
            body["last_error"] = child.cause  # it failed before it wrote any progress (a missing bucket)
        manifest = model.manifest
        if manifest is not None:
            body["manifest"] = {
                "source": manifest.source,
                "files": len(manifest.files),
                "bytes": manifest.total_bytes,
                "created_at": manifest.created_at,
            }
            body.setdefault("source", manifest.source)
        return body


def cache_status(inventory: CacheInventory, budget: int | None) -> dict[str, Any]:
    """/status `cache`: the node's inventory (a model's per-file versions left out; `cache ls --json` has them)."""
    body = inventory.as_json(versions=False)
    body["budget_bytes"] = budget
    return body


def readiness_follows(settings: SidecarSettings) -> str:
    """What readiness follows when no model is watched: the engine, Ray, or both."""
    watched = [f"the engine at {settings.engine_url}"] if settings.engine_url else []
    if settings.expected_ray_nodes:
        n = settings.expected_ray_nodes
        watched.append(f"{n} Ray node" + ("s" if n != 1 else ""))
    return "readiness follows " + " and ".join(watched)


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
