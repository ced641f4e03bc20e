"""The on-disk contract of a model directory: what the downloader promises every reader.

    <model dir>/                      files appear here only complete and verified (atomic rename)
    <model dir>/<sub>/.<name>.<token>.aibrix-tmp   a temporary file being filled (never a reader's business)
    <model dir>/.aibrix/manifest.json  written last, atomically: THE readiness signal
    <model dir>/.aibrix/done.jsonl     one line per verified file (resume without a manifest)
    <model dir>/.aibrix/journal/<token>.jsonl  per temp file: header, one line per finished range, then the done
                                       record, just before the rename
    <model dir>/.aibrix/progress.json  live progress, rewritten about once a second
    <model dir>/.aibrix/lock           flock(2): one download per node; correctness never depends on it

This module is what other packages (the sidecar, the runtime) import: the names above, the records a reader
sees (Manifest, Progress, Phase) and their readers. It reads only, and imports nothing of the write machinery
(downloader/state.py), which the downloader alone uses.
"""

from __future__ import annotations

import enum
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any

STATE_DIR_NAME = ".aibrix"
MANIFEST_NAME = "manifest.json"
PROGRESS_NAME = "progress.json"
DONE_NAME = "done.jsonl"
JOURNAL_DIR = "journal"
LOCK_NAME = "lock"
TEMP_SUFFIX = ".aibrix-tmp"
MANIFEST_FORMAT = "aibrix-model-manifest/1"


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int
    version: str
    version_id: str | None
    checksum: str | None
    verified: str
    mtime_ns: int
    linked: bool = False  # a symlink to the source file, used in place (file:// sources, --local-mode link)


@dataclass(frozen=True)
class Manifest:
    source: str
    model_dir: str
    created_at: float
    tool: str
    files: tuple[ManifestFile, ...]
    complete: bool = True
    format: str = MANIFEST_FORMAT

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


class Phase(str, enum.Enum):
    """A download's phase, as progress.json names it."""

    PENDING = "pending"
    LISTING = "listing"  # listing the source and choosing the files
    WAITING = "waiting"  # for another process that holds the model's lock
    DOWNLOADING = "downloading"  # fetching; checksums are computed while the bytes stream
    VERIFYING = "verifying"  # the last byte is in: last checks and flushes, the manifest
    READY = "ready"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


@dataclass
class Progress:
    """Live progress of a download, as the downloader last wrote it."""

    phase: str  # a Phase value
    source: str
    model_dir: str
    pid: int
    host: str
    started_at: float
    updated_at: float
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_fetched: int = 0  # bytes received from the network in this run (includes refetches)
    files_total: int = 0
    files_done: int = 0
    rate_bps: float = 0.0
    eta_seconds: float | None = None
    retries: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    object_changes: int = 0
    last_error: str | None = None
    active_files: dict[str, dict[str, int]] = field(default_factory=dict)
    phase_started: dict[str, float] = field(default_factory=dict)  # Phase value -> when it was first entered
    # A cooperative download's share, bytes by where they came from and its peers' states: a
    # downloader.coop.report.CoopReport as a dict (CoopReport.from_dict reads it); None when not cooperating.
    cooperation: dict[str, Any] | None = None


# ------------------------------------------------------------------------------------- public reading

FileKey = tuple[int, int, int]  # (mtime_ns, size, inode): a file's identity; the downloader replaces by rename


def file_key(path: str) -> FileKey | None:
    """The identity of the file at `path` (it changes whenever the file is replaced or rewritten); None when there
    is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def state_dir(model_dir: str) -> str:
    return os.path.join(model_dir, STATE_DIR_NAME)


def read_manifest(model_dir: str) -> Manifest | None:
    """The model manifest if the model is complete; None when absent or unreadable."""
    data = _read_json(os.path.join(state_dir(model_dir), MANIFEST_NAME))
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or data.get("complete") is not True:
        return None
    try:
        files = tuple(ManifestFile(**f) for f in data["files"])
        return Manifest(
            source=data["source"],
            model_dir=data["model_dir"],
            created_at=float(data["created_at"]),
            tool=data["tool"],
            files=files,
            complete=True,
        )
    except (KeyError, TypeError, ValueError):
        return None


_PROGRESS_FIELDS = frozenset(Progress.__dataclass_fields__)


def read_progress(model_dir: str) -> Progress | None:
    data = _read_json(os.path.join(state_dir(model_dir), PROGRESS_NAME))
    if not isinstance(data, dict):
        return None
    try:
        # Fields a newer downloader added are left out: a sidecar of an older release still reads the rest.
        return Progress(**{k: v for k, v in data.items() if k in _PROGRESS_FIELDS})
    except TypeError:
        return None


def is_ready(model_dir: str) -> bool:
    """True when the manifest says complete and every listed file is present with its recorded size."""
    manifest = read_manifest(model_dir)
    return manifest is not None and not damaged_files(model_dir, manifest, first_only=True)


def damaged_files(model_dir: str, manifest: Manifest, *, first_only: bool = False) -> list[str]:
    """Files the manifest lists that are no longer there as a regular file of their recorded size (all of them,
    or the first one found)."""
    damaged: list[str] = []
    for f in manifest.files:
        try:
            path = os.path.join(model_dir, f.path)
            st = os.stat(path) if f.linked else os.lstat(path)
            intact = stat.S_ISREG(st.st_mode) and st.st_size == f.size
        except OSError:
            intact = False
        if not intact:
            damaged.append(f.path)
            if first_only:
                break
    return damaged


def _read_json(path: str) -> Any:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            return json.loads(fh.read())
    except (OSError, ValueError):
        return None
