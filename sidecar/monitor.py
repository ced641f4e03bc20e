"""Keeps the current `Snapshot`: the model's manifest and progress (through the downloader's public state API), the
engine's /health, Ray's membership (through the runtime's dashboard reader) and, in native-sidecar mode, the
download child process.

Engine and Ray are polled in the background, so a probe never waits on them and probing at a high rate costs the
download nothing. Each poll builds one snapshot and publishes it whole (a new object only when something in it
changed). Between polls, `snapshot()` still stats the manifest on every call (one stat(2); a re-read only when the
file changed, or every MANIFEST_RECHECK_SECONDS to see whether a listed file went missing), so readiness turns true
exactly when the manifest lands; with `fresh_progress` it also stats progress.json (the downloader replaces it by a
rename, so its identity changes whenever its content does), so /status and the metrics show every write at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx

from downloader import damaged_files, read_manifest, read_progress
from downloader.inventory import cache_dir, read_inventory
from downloader.layout import MANIFEST_NAME, PROGRESS_NAME, file_key, state_dir
from downloader.lease import Lease
from runtime.cluster import Dashboard

from .coldstart import ColdStart
from .config import SidecarSettings
from .download import DownloadChild
from .engine import Engine
from .snapshot import NO_MANIFEST, ChildState, EngineState, ModelCheck, RayState, Snapshot

log = logging.getLogger(__name__)

_NOT_ASKED_ENGINE = EngineState(None, "not asked yet")
_NOT_ASKED_RAY = RayState(None, "not asked yet")

MANIFEST_RECHECK_SECONDS = 5.0  # how often files listed in an unchanged manifest are stat'ed again
INVENTORY_SECONDS = 5.0  # how often the node cache's inventory is read again (a stat of every file of every model)


class ModelFiles:
    """The watched model directory and its two state files."""

    def __init__(self, model_dir: str) -> None:
        self.model_dir = model_dir
        self.manifest = os.path.join(state_dir(model_dir), MANIFEST_NAME)
        self.progress = os.path.join(state_dir(model_dir), PROGRESS_NAME)

    def read_progress(self) -> dict[str, Any]:
        """progress.json as snapshot fields. Its identity is taken before the read: a rewrite in between only
        costs one more read later."""
        key = file_key(self.progress)
        return {"progress_key": key, "progress": read_progress(self.model_dir)}


class Monitor:
    def __init__(self, settings: SidecarSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.model_dir = settings.model_dir
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.engine = (
            Engine(settings.engine_url, settings.engine_metrics_path, settings.engine_timeout)
            if settings.engine_url
            else None
        )
        self._dashboard = (
            Dashboard(settings.ray_dashboard_url, settings.engine_timeout) if settings.expected_ray_nodes else None
        )
        self._lock = threading.Lock()  # held while a new snapshot is built from the current one
        model_dir = self.model_dir
        self._files = ModelFiles(model_dir) if model_dir is not None else None
        self._model_checked_at = 0.0
        self._coldstart = (
            ColdStart(watch_ray=bool(settings.expected_ray_nodes), watch_engine=bool(settings.engine_url))
            if model_dir is not None
            else None
        )
        self._download = (
            DownloadChild(settings.download_args, model_dir, settings.redact, self._child_changed)
            if settings.download_args and model_dir is not None
            else None
        )
        self.download_failed = self._download.failed if self._download is not None else threading.Event()
        # The model is in use for as long as the sidecar lives: its lease keeps evictions away. Native mode makes
        # the model's directory (its download is about to); otherwise the lease waits for the lease file the
        # download creates, and is taken on the first poll that finds it.
        self._lease = Lease(model_dir) if model_dir is not None else None
        self._inventory_read_at = -INVENTORY_SECONDS
        self._snapshot = Snapshot(
            settings,
            model=NO_MANIFEST if model_dir is not None else None,
            last_change=clock(),
            engine=_NOT_ASKED_ENGINE if self.engine is not None else None,
            ray=_NOT_ASKED_RAY if self._dashboard is not None else None,
            cold_start=self._coldstart.durations() if self._coldstart is not None else None,
        )

    # ------------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._hold_lease()
        if self._download is not None:
            self._download.start()
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
        if self._download is not None:
            self._download.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.engine is not None:
            self.engine.close()
        if self._dashboard is not None:
            self._dashboard.close()
        if self._lease is not None:
            self._lease.release()

    def _hold_lease(self) -> bool | None:
        """Take the model's lease if it is not held yet; whether it is held (None: no model watched)."""
        lease = self._lease
        if lease is None:
            return None
        was_held = lease.held
        held = lease.acquire(create=bool(self.settings.download_args))
        if held and not was_held:
            log.info("holding a lease on %s: it is in use, and not evicted, while the sidecar runs", lease.model_dir)
        return held

    def _cache_root(self) -> str | None:
        """The node cache to show: the one configured (or the native download's root), else the model directory's
        parent once a budgeted download or `cache` command has made it one (a parent that is not a cache, such as
        /, is never walked)."""
        if self.settings.cache_root is not None or self.settings.model_dir is None:
            return self.settings.cache_root
        parent = os.path.dirname(os.path.abspath(self.settings.model_dir))
        return parent if os.path.isdir(cache_dir(parent)) else None

    def redact(self, text: str) -> str:
        """`text` without any credential the sidecar knows of (the downloader prints none; this makes sure)."""
        return self.settings.redact(text)

    def clock(self) -> float:
        return self._clock()

    # ---------------------------------------------------------------------------------------- polls
    def poll_once(self) -> None:
        """One poll: progress, engine and Ray (network I/O outside the lock), then one new snapshot."""
        changes: dict[str, Any] = self._files.read_progress() if self._files is not None else {}
        if self._lease is not None:
            changes["lease"] = self._hold_lease()
        root = self._cache_root()
        if root is not None and self._clock() - self._inventory_read_at >= INVENTORY_SECONDS:
            self._inventory_read_at = self._clock()
            changes["cache"] = read_inventory(root)
        if self.engine is not None:
            changes["engine"] = self.engine.health()
        if self._dashboard is not None:
            changes["ray"] = self._poll_ray(self._dashboard)
        with self._lock:
            self._publish(self._check_model(), **changes)

    def _poll_ray(self, dashboard: Dashboard) -> RayState:
        expected = self.settings.expected_ray_nodes
        try:
            alive = sum(1 for n in dashboard.nodes() if n.alive)  # dead nodes stay listed: only ALIVE counts
        except (httpx.HTTPError, ValueError) as exc:
            return RayState(None, f"Ray dashboard not answering ({type(exc).__name__})")
        return RayState(alive, f"{alive} of {expected} nodes alive")

    def download_running(self) -> bool:
        """Native mode: whether the download child is running now."""
        child = self._snapshot.child
        return child is not None and child.exit_code is None

    def _child_changed(self, state: ChildState) -> None:
        with self._lock:
            self._publish(self._snapshot.model, child=state)

    # ------------------------------------------------------------------------------------ snapshots
    def snapshot(self, *, fresh_progress: bool = False) -> Snapshot:
        """The current snapshot, after a stat of the manifest (and, with `fresh_progress`, of progress.json): a
        change to either since the last snapshot shows in the one returned. Cheap enough for every probe."""
        snap, files = self._snapshot, self._files
        if files is None or snap.model is None:
            return snap  # no model watched: only the poll changes anything
        key = file_key(files.manifest)
        if (
            key == snap.model.key
            and (key is None or self._clock() - self._model_checked_at < MANIFEST_RECHECK_SECONDS)
            and not (fresh_progress and file_key(files.progress) != snap.progress_key)
        ):
            return snap
        with self._lock:
            changes: dict[str, Any] = {}
            if fresh_progress and file_key(files.progress) != self._snapshot.progress_key:
                changes = files.read_progress()
            return self._publish(self._check_model(), **changes)

    def _check_model(self) -> ModelCheck | None:
        """The manifest's verdict now: the current one while the file is unchanged and its recheck is not due.
        Called with the lock held."""
        current, files = self._snapshot.model, self._files
        if files is None or current is None:
            return None
        key = file_key(files.manifest)
        if key is None:
            return NO_MANIFEST
        now = self._clock()
        if key == current.key and now - self._model_checked_at < MANIFEST_RECHECK_SECONDS:
            return current
        manifest = read_manifest(files.model_dir)
        damaged = tuple(damaged_files(files.model_dir, manifest)) if manifest is not None else ()
        self._model_checked_at = now
        return ModelCheck(key, manifest, damaged)

    def _publish(self, model: ModelCheck | None, **changes: Any) -> Snapshot:
        """The current snapshot with `model` and `changes`, made current; the same object when nothing changed.
        Called with the lock held."""
        old = self._snapshot
        progress = changes.get("progress", old.progress)
        done = progress.bytes_done if progress is not None else -1
        old_done = old.progress.bytes_done if old.progress is not None else -1
        if done != old_done:
            changes["last_change"] = self._clock()
        if self._coldstart is not None and model is not None:
            engine, ray = changes.get("engine", old.engine), changes.get("ray", old.ray)
            expected = self.settings.expected_ray_nodes
            ray_complete = bool(expected and ray is not None and ray.alive is not None and ray.alive >= expected)
            self._coldstart.observe(progress, model.ready, ray_complete, bool(engine is not None and engine.up))
            changes["cold_start"] = self._coldstart.durations()
        new = replace(old, model=model, **changes)
        if new == old:
            return old
        self._snapshot = new
        return new
