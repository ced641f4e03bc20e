"""How long each step of a start took, from the first listing to the engine's first 200 on /health.

The download's steps come from the downloader's own record (progress.json: when each phase began); the later
ones from what the sidecar sees when it polls (so they are as precise as --poll-interval): when the Ray group
first had every member alive, and when the engine first answered /health with 200. Each step starts where the
one before it ended:

    listing       listing the source and choosing the files
    download      fetching (and, where another process holds the model's lock, waiting for it); checksums are
                  computed while the bytes stream
    verification  after the last byte: the last files' checks and flushes, and the manifest
    ray           the model is complete, until every expected Ray node is alive (when Ray is watched)
    engine        from there until the engine first answers /health with 200 (when the engine is watched)
    total         the first listing until the last of those
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Mapping

from downloader import Phase, Progress


class Step(str, enum.Enum):
    LISTING = "listing"
    DOWNLOAD = "download"
    VERIFICATION = "verification"
    RAY = "ray"
    ENGINE = "engine"
    TOTAL = "total"


class ColdStart:
    """Wall-clock moments of a start, and the durations between them. Thread-safe."""

    def __init__(self, *, watch_ray: bool, watch_engine: bool, clock: Callable[[], float] = time.time) -> None:
        self.watch_ray = watch_ray
        self.watch_engine = watch_engine
        self._clock = clock
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._model_seen: float | None = None  # when the sidecar first saw the model complete
        self._ray_at: float | None = None
        self._engine_at: float | None = None

    def observe(self, progress: Progress | None, model_ready: bool, ray_complete: bool, engine_up: bool) -> None:
        """One poll's view. Only the first time each thing is seen counts, and only in order: Ray after the model,
        the engine after both, so a step never ends before the one it follows."""
        now = self._clock()
        with self._lock:
            if progress is not None:
                self._progress = progress
            if not model_ready:
                return
            if self._model_seen is None:
                self._model_seen = now
            if self.watch_ray and self._ray_at is None:
                if not ray_complete:
                    return
                self._ray_at = now
            if self.watch_engine and self._engine_at is None and engine_up:
                self._engine_at = now

    def durations(self) -> dict[Step, float | None]:
        """Seconds per step; None for a step not reached (or not watched)."""
        with self._lock:
            progress, model_seen, ray_at, engine_at = self._progress, self._model_seen, self._ray_at, self._engine_at
        starts = progress.phase_started if progress is not None else {}
        out: dict[Step, float | None] = dict.fromkeys(Step)
        listing = starts.get(Phase.LISTING.value)
        listed = _first(starts, Phase.WAITING, Phase.DOWNLOADING, Phase.VERIFYING, Phase.READY)
        # The manifest lands a moment before progress.json says ready: the earlier of the two is when the model was
        # complete (and a sidecar started later, or with no record of the download, has only what it saw).
        ready = _earliest(starts.get(Phase.READY.value), model_seen)
        # A complete model has been fetched, even where the record read last is from before the fetch ended (it is
        # rewritten about once a second): the step then ends where the model was seen complete, until the record
        # says better.
        fetched = _earliest(_first(starts, Phase.VERIFYING, Phase.READY), ready)
        out[Step.LISTING] = _span(listing, listed)
        out[Step.DOWNLOAD] = _span(listed, fetched)
        out[Step.VERIFICATION] = _span(fetched, ready)
        after_model = ready
        if self.watch_ray:
            out[Step.RAY] = _span(ready, ray_at)
            after_model = ray_at
        end = after_model
        if self.watch_engine:
            out[Step.ENGINE] = _span(after_model, engine_at)
            end = engine_at
        out[Step.TOTAL] = _span(listing if listing is not None else ready, end)
        return out


def as_status(durations: Mapping[Step, float | None]) -> dict[str, float | bool | None]:
    """/status's `cold_start`: seconds per step (None until reached), and whether the whole start is done."""
    body: dict[str, float | bool | None] = {f"{step.value}_seconds": _round(durations.get(step)) for step in Step}
    body["complete"] = durations.get(Step.TOTAL) is not None
    return body


def _first(starts: dict[str, float], *phases: Phase) -> float | None:
    return _earliest(*(starts.get(p.value) for p in phases))


def _earliest(*times: float | None) -> float | None:
    known = [t for t in times if t is not None]
    return min(known) if known else None


def _span(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else max(0.0, end - start)


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)
