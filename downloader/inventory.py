"""The node cache as a reader sees it: many models under one root (`--local-dir`, the node's NVMe), their leases,
states and bytes, the budget and the evictions so far. Per model, and per root:

    <model dir>/.aibrix/lease             leases: one locked byte per process serving the model (below)
    <model dir>/.aibrix/reservation.json  while the model is partial: the bytes its download was admitted for
    <root>/.aibrix-cache/lock             flock(2): one admission or eviction at a time on the root
    <root>/.aibrix-cache/budget.json      the budget (--cache-max-size) the last admission applied
    <root>/.aibrix-cache/evictions.jsonl  one line per model evicted
    <root>/.aibrix-cache/trash/<token>/   a model renamed away by an eviction, being deleted

Like downloader/layout.py, this module reads only (counting leases takes no lock) and is what the sidecar imports;
the write side is downloader/lease.py (leases, the eviction lock) and downloader/cache.py (admission, eviction).
"""

from __future__ import annotations

import enum
import fcntl
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from .layout import (
    MANIFEST_NAME,
    PROGRESS_NAME,
    STATE_DIR_NAME,
    _read_json,
    damaged_files,
    read_manifest,
    read_progress,
    state_dir,
)

LEASE_NAME = "lease"
RESERVATION_NAME = "reservation.json"
CACHE_DIR_NAME = ".aibrix-cache"
CACHE_LOCK_NAME = "lock"
BUDGET_NAME = "budget.json"
EVICTIONS_NAME = "evictions.jsonl"
TRASH_DIR = "trash"
MAX_MODEL_DEPTH = 8  # how deep below the root a model directory is looked for (--model-name may hold '/')

# A lease is an open file description lock (fcntl F_OFD_SETLK) on one byte of the lease file, its "slot": a byte
# per holder, so that the kernel can say how many there are (F_OFD_GETLK, which takes no lock) and ends each one
# when its holder's descriptor closes, however the process ends. An eviction write-locks the whole file: it gets
# the lock only when no slot is held, and while it holds it no slot can be taken. downloader/lease.py takes them.
LEASE_SLOTS = 1 << 20
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid


def lock_request(kind: int, start: int, length: int) -> bytes:
    """A struct flock for fcntl: `kind` (F_RDLCK, F_WRLCK, F_UNLCK) over [start, start + length); length 0: to
    the end of any file."""
    return _FLOCK.pack(kind, os.SEEK_SET, start, length, 0)


@dataclass(frozen=True)
class HeldLock:
    """A lock some other open file holds, as F_OFD_GETLK reports it."""

    kind: int  # F_RDLCK or F_WRLCK
    start: int
    length: int  # 0: to the end of the file

    @property
    def evicting(self) -> bool:
        """The eviction lock (the whole file, for writing), not a lease's slot."""
        return self.kind == fcntl.F_WRLCK and self.length == 0


def held_lock(fd: int, start: int, length: int) -> HeldLock | None:
    """A lock another open file holds that overlaps [start, start + length), or None when there is none."""
    kind, _, lock_start, lock_length, _ = _FLOCK.unpack(
        fcntl.fcntl(fd, fcntl.F_OFD_GETLK, lock_request(fcntl.F_WRLCK, start, length))
    )
    return None if kind == fcntl.F_UNLCK else HeldLock(kind, lock_start, lock_length)


@dataclass(frozen=True)
class Leases:
    holders: int  # processes holding a lease (two holders that may only read the file can count as one)
    evicting: bool = False  # an eviction holds the model right now
    supported: bool = True  # False: the filesystem refuses the locks, so nobody can tell (nothing is evicted)

    @property
    def in_use(self) -> bool:
        return self.holders > 0 or self.evicting or not self.supported


def read_leases(model_dir: str) -> Leases:
    """How many processes hold a lease on the model now. Takes no lock: asking never gets in anyone's way."""
    try:
        fd = os.open(os.path.join(state_dir(model_dir), LEASE_NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return Leases(0)  # never leased (a model from before leases, or one whose download has not started)
    except OSError:
        return Leases(0, supported=False)
    try:
        holders = 0
        pending = [(0, LEASE_SLOTS)]  # each answer names one held slot: look again on either side of it
        while pending:
            lo, hi = pending.pop()
            if lo >= hi:
                continue
            held = held_lock(fd, lo, hi - lo)
            if held is None:
                continue
            if held.length != 1:
                return Leases(holders, evicting=held.evicting)
            holders += 1
            pending += [(lo, held.start), (held.start + 1, hi)]
        return Leases(holders)
    except OSError:  # ENOLCK, EINVAL: no such locks here
        return Leases(0, supported=False)
    finally:
        os.close(fd)


class ModelState(str, enum.Enum):
    """A cached model's state, as `aibrix-download cache ls` and the sidecar's inventory name it."""

    COMPLETE = "complete"  # the manifest, and every file it lists in place
    INCOMPLETE = "incomplete"  # a manifest, but a file it lists is missing or changed since
    PARTIAL = "partial"  # no manifest: being downloaded, interrupted, or being evicted


@dataclass(frozen=True)
class CachedModel:
    name: str  # its directory relative to the root (--model-name)
    path: str
    state: ModelState
    source: str | None  # the URI it came from (credentials stripped), when known
    revision: str | None  # the one revision every file came from (a Hugging Face commit), when there is one
    versions: tuple[tuple[str, str], ...]  # (path, version) of each file the manifest lists: ETags, generations
    content_id: str | None  # a digest of `versions`: equal ids, equal files
    bytes: int  # regular files below the model directory, its state files included
    reserved: int  # while partial: the bytes its download was admitted for (0 when none)
    leases: Leases
    last_used: float  # when a lease was last taken or released (else when the model was written)

    @property
    def charged(self) -> int:
        """What it counts against the budget: its bytes, or while partial what its download may still grow to."""
        return max(self.bytes, self.reserved) if self.state is ModelState.PARTIAL else self.bytes

    @property
    def outstanding(self) -> int:
        """Bytes its download was admitted for and has not allocated yet."""
        return max(0, self.reserved - self.bytes) if self.state is ModelState.PARTIAL else 0

    def as_json(self, *, versions: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "path": self.path,
            "state": self.state.value,
            "source": self.source,
            "revision": self.revision,
            "content_id": self.content_id,
            "bytes": self.bytes,
            "reserved_bytes": self.reserved,
            "in_use": self.leases.in_use,
            "leases": self.leases.holders,
            "evicting": self.leases.evicting,
            "last_used": self.last_used,
        }
        if versions:
            body["versions"] = dict(self.versions)
        return body


@dataclass(frozen=True)
class Eviction:
    """One line of evictions.jsonl."""

    name: str
    bytes: int
    at: float
    reason: str  # "to admit <model>", "cache gc", "cache rm"


@dataclass(frozen=True)
class CacheInventory:
    root: str
    models: tuple[CachedModel, ...]
    budget: int | None  # the budget the last admission applied; None when none has
    evictions: int  # models evicted from this root so far
    evicted_bytes: int
    trash_bytes: int  # models evicted whose bytes are still being deleted

    @property
    def bytes_used(self) -> int:
        return sum(m.bytes for m in self.models)

    def as_json(self, *, versions: bool = True) -> dict[str, Any]:
        """`aibrix-download cache ls --json`, and the sidecar's /status `cache` (there without `versions`)."""
        return {
            "root": self.root,
            "bytes_used": self.bytes_used,
            "budget_bytes": self.budget,
            "trash_bytes": self.trash_bytes,
            "evictions": self.evictions,
            "evicted_bytes": self.evicted_bytes,
            "models": [m.as_json(versions=versions) for m in self.models],
        }


def cache_dir(root: str) -> str:
    return os.path.join(root, CACHE_DIR_NAME)


def find_models(root: str) -> list[str]:
    """Names (relative paths) of the model directories below the root: those holding a state directory."""
    found: list[str] = []

    def walk(rel: str, depth: int) -> None:
        try:
            entries = sorted(os.scandir(os.path.join(root, rel) if rel else root), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False) or entry.name == STATE_DIR_NAME:
                continue
            if not rel and entry.name == CACHE_DIR_NAME:
                continue
            name = f"{rel}/{entry.name}" if rel else entry.name
            if os.path.isdir(os.path.join(entry.path, STATE_DIR_NAME)) and not os.path.islink(
                os.path.join(entry.path, STATE_DIR_NAME)
            ):
                found.append(name)
            elif depth < MAX_MODEL_DEPTH:
                walk(name, depth + 1)

    walk("", 1)
    return found


def tree_bytes(path: str) -> int:
    """Bytes of the regular files below `path`, symlinks neither followed nor counted."""
    total = 0
    try:
        entries = list(os.scandir(path))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                total += tree_bytes(entry.path)
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue  # removed while we looked
    return total


def read_model(root: str, name: str) -> CachedModel:
    path = os.path.join(root, name)
    sdir = state_dir(path)
    manifest = read_manifest(path)
    progress = read_progress(path) if manifest is None else None
    versions: tuple[tuple[str, str], ...] = ()
    revision = content_id = None
    if manifest is None:
        state = ModelState.PARTIAL
    else:
        state = ModelState.INCOMPLETE if damaged_files(path, manifest, first_only=True) else ModelState.COMPLETE
        versions = tuple(sorted((f.path, f.version) for f in manifest.files))
        content_id = hashlib.sha256("".join(f"{p}\0{v}\n" for p, v in versions).encode()).hexdigest()[:16]
        revisions = {f.version_id for f in manifest.files}
        revision = revisions.pop() if len(revisions) == 1 else None
    reservation = _read_json(os.path.join(sdir, RESERVATION_NAME)) if manifest is None else None
    reserved = reservation.get("bytes") if isinstance(reservation, dict) else None
    last_used = 0.0
    for candidate in (LEASE_NAME, MANIFEST_NAME, PROGRESS_NAME):
        try:
            last_used = os.stat(os.path.join(sdir, candidate)).st_mtime
            break
        except OSError:
            continue
    return CachedModel(
        name=name,
        path=path,
        state=state,
        source=manifest.source if manifest is not None else (progress.source if progress is not None else None),
        revision=revision,
        versions=versions,
        content_id=content_id,
        bytes=tree_bytes(path),
        reserved=reserved if isinstance(reserved, int) and not isinstance(reserved, bool) else 0,
        leases=read_leases(path),
        last_used=last_used,
    )


def read_evictions(root: str) -> list[Eviction]:
    out: list[Eviction] = []
    try:
        with open(os.path.join(cache_dir(root), EVICTIONS_NAME), "rb") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            out.append(Eviction(**json.loads(line)))
        except (ValueError, TypeError):
            continue  # a torn last line
    return out


def read_inventory(root: str) -> CacheInventory:
    """Every model below the root, with its state, bytes and leases; the budget; the evictions so far."""
    root = os.path.abspath(root)
    budget = _read_json(os.path.join(cache_dir(root), BUDGET_NAME))
    max_size = budget.get("max_size") if isinstance(budget, dict) else None
    evictions = read_evictions(root)
    return CacheInventory(
        root=root,
        models=tuple(read_model(root, name) for name in find_models(root)),
        budget=max_size if isinstance(max_size, int) and not isinstance(max_size, bool) else None,
        evictions=len(evictions),
        evicted_bytes=sum(e.bytes for e in evictions),
        trash_bytes=tree_bytes(os.path.join(cache_dir(root), TRASH_DIR)),
    )
