"""The node cache's machinery: admission of a download against the budget and the free space, eviction of models
not in use (least recently used first), `cache gc` and `cache rm`. What a reader sees is downloader/layout.py; the
leases that mark a model in use are downloader/lease.py.

Who evicts: whoever needs room, holding the root's lock (<root>/.aibrix-cache/lock) while it measures, evicts and
records its reservation, so that two downloads do not both count the same free bytes. Correctness does not rest on
that lock: each model is evicted only under its own eviction lock, which no lease may be held beside (a running
download holds a lease from before it fetches anything, and its model's download lock, which the eviction also
takes). Without the root's lock (a filesystem that ignores flock) two admissions may evict more than needed or run
out of disk later (exit 6); neither ever evicts a model in use.

An eviction, step by step, each step one filesystem operation, so that a crash between any two leaves the model
either complete and whole or not complete (absent, or partial, which the next download resumes or fetches again):

    1. the eviction lock on the lease file, and the model's download lock: no lease, no download
    2. the manifest removed, and that made durable: from here on the model is not complete
    3. the model directory renamed into <root>/.aibrix-cache/trash/: absent from its path, lease file and all
    4. the eviction recorded (evictions.jsonl)
    5. the renamed tree deleted, file by file (a crash leaves trash, deleted by the next admission, gc or rm)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .errors import CacheFullError, ConfigError, Interrupted, LocalStorageError, ModelInUseError, size_text
from .inventory import (
    BUDGET_NAME,
    CACHE_LOCK_NAME,
    EVICTIONS_NAME,
    RESERVATION_NAME,
    TRASH_DIR,
    CachedModel,
    CacheInventory,
    cache_dir,
    find_models,
    read_inventory,
    read_model,
)
from .layout import LOCK_NAME, MANIFEST_NAME, state_dir
from .lease import lock_for_eviction

log = logging.getLogger(__name__)

ROOT_LOCK_POLL = 0.1  # seconds between tries of the root's lock, so that a signal ends the wait


@dataclass(frozen=True)
class Evicted:
    name: str
    bytes: int
    last_used: float


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_json(directory: str, name: str, obj: dict[str, object]) -> None:
    """Replace directory/name atomically (written beside it, then renamed over it)."""
    final = os.path.join(directory, name)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh)
        os.rename(tmp, final)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise LocalStorageError(final, exc.strerror or str(exc)) from exc


class CacheRoot:
    """The root (`--local-dir`) that many models share."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.dir = cache_dir(self.root)
        self.trash = os.path.join(self.dir, TRASH_DIR)

    # -- the root's lock
    @contextlib.contextmanager
    def locked(self, cancel: threading.Event | None = None) -> Iterator[None]:
        """One admission or eviction at a time on this root (see the module's docstring for what rests on it)."""
        path = os.path.join(self.dir, CACHE_LOCK_NAME)
        try:
            os.makedirs(self.trash, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LocalStorageError(path, exc.strerror or str(exc)) from exc
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if cancel is not None and cancel.wait(ROOT_LOCK_POLL):
                        raise Interrupted("signal", 130) from None
                    if cancel is None:
                        time.sleep(ROOT_LOCK_POLL)
                except OSError as exc:
                    if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP):
                        break  # no flock here: the leases still keep every model in use out of reach
                    raise LocalStorageError(path, exc.strerror or str(exc)) from exc
            yield
        finally:
            os.close(fd)

    # -- what the root holds
    def inventory(self) -> CacheInventory:
        return read_inventory(self.root)

    def name_of(self, model_dir: str) -> str:
        return os.path.relpath(os.path.abspath(model_dir), self.root).replace(os.sep, "/")

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def record_budget(self, max_size: int) -> None:
        _write_json(self.dir, BUDGET_NAME, {"max_size": max_size, "at": time.time()})

    def empty_trash(self) -> None:
        """Delete what evictions left in the trash (a crash mid-deletion)."""
        try:
            names = os.listdir(self.trash)
        except OSError:
            return
        for name in names:
            for _ in remove_tree(os.path.join(self.trash, name)):
                pass

    def _record_eviction(self, model: CachedModel, reason: str) -> None:
        line = json.dumps(
            {"name": model.name, "bytes": model.bytes, "at": time.time(), "reason": reason}, separators=(",", ":")
        )
        path = os.path.join(self.dir, EVICTIONS_NAME)
        with contextlib.suppress(OSError):  # the record is for people and metrics; the eviction stands without it
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, (line + "\n").encode())  # one write(2) with O_APPEND: lines never interleave
            finally:
                os.close(fd)

    # -- eviction
    def eviction(self, model: CachedModel, reason: str) -> Iterator[str]:
        """Evict `model`, one filesystem operation per step, each step named as it is done (the module's docstring
        lists them). Yields nothing, and changes nothing, when the model is in use: check `is_gone` afterwards."""
        lease_fd = lock_for_eviction(model.path)
        if lease_fd is None:
            return
        download_fd: int | None = None
        try:
            download_fd = os.open(
                os.path.join(state_dir(model.path), LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            )
            fcntl.flock(download_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if download_fd is not None:
                os.close(download_fd)
            os.close(lease_fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP):
                log.warning("%s: no download lock on this filesystem; not evicting it", model.path)
            return  # being downloaded (by a downloader from before leases, if it holds no lease)
        yield "locked"
        in_place = False
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(state_dir(model.path), MANIFEST_NAME))
            yield "manifest removed"
            _fsync_dir(state_dir(model.path))
            yield "manifest removal durable"
            target = os.path.join(self.trash, f"{os.getpid()}-{time.time_ns()}")
            try:
                os.rename(model.path, target)
            except OSError as exc:  # EXDEV: the model is a mount point of its own; delete it where it is
                log.warning("%s: cannot move it into %s (%s); deleting it in place", model.path, self.trash, exc)
                target, in_place = model.path, True
            else:
                yield "renamed into the trash"
            if in_place:  # holding both locks throughout, so that no lease or download starts in a half-deleted tree
                self._record_eviction(model, reason)
                yield from remove_tree(target)
                return
        finally:
            os.close(download_fd)
            os.close(lease_fd)  # anyone waiting for a lease finds the path gone and looks again
        _fsync_dir(os.path.dirname(model.path))
        _fsync_dir(self.trash)
        yield "rename durable"
        self._record_eviction(model, reason)
        yield "recorded"
        yield from remove_tree(target)

    def evict(self, model: CachedModel, reason: str) -> bool:
        """Evict `model` whole; False (nothing changed) when it is in use."""
        steps = list(self.eviction(model, reason))
        return bool(steps)

    # -- admission, gc, rm
    def admit(self, model_dir: str, needed: int, max_size: int, reserve: int, cancel: threading.Event) -> list[Evicted]:
        """Make room for a download into `model_dir` that must still allocate `needed` bytes: within `max_size` for
        every model together, and within the free space less `reserve`. Evicts models not in use, least recently
        used first, only as many as needed; raises CacheFullError (having evicted nothing) when even all of them
        would not be enough. Records the model's reservation. The caller holds a lease on `model_dir`."""
        with self.locked(cancel):
            self.empty_trash()
            self.record_budget(max_size)
            name = self.name_of(model_dir)
            target = read_model(self.root, name)
            peak = target.bytes + needed  # old files being replaced stay until their new version is renamed over them
            others = [read_model(self.root, n) for n in find_models(self.root) if n != name]
            room = _Room(
                used=sum(m.charged for m in others),
                free=self.free_bytes(),
                outstanding=sum(m.outstanding for m in others),
            )

            def fits(r: _Room) -> bool:
                return r.used + peak <= max_size and needed + reserve + r.outstanding <= r.free

            candidates = sorted((m for m in others if not m.leases.in_use), key=lambda m: (m.last_used, m.name))
            if not fits(room.without(candidates)):
                raise self._full(_needs(name, peak, needed + reserve), others, room, max_size)
            evicted: list[Evicted] = []
            for model in candidates:
                if fits(room):
                    break
                if self.evict(model, f"to admit {name}"):
                    evicted.append(Evicted(model.name, model.bytes, model.last_used))
                    room = room.without([model]).with_free(self.free_bytes())
            if not fits(room):  # a model became used after we looked
                remaining = [m for m in others if m.name not in {e.name for e in evicted}]
                raise self._full(
                    _needs(name, peak, needed + reserve),
                    remaining,
                    room,
                    max_size,
                    tuple(e.name for e in evicted),
                )
            _write_json(state_dir(model_dir), RESERVATION_NAME, {"bytes": peak, "at": time.time(), "pid": os.getpid()})
            return evicted

    def gc(self, max_size: int) -> list[Evicted]:
        """Evict models not in use, least recently used first, until every model together holds at most `max_size`
        bytes; CacheFullError when the models in use alone hold more (having evicted what it could)."""
        with self.locked():
            self.empty_trash()
            models = list(self.inventory().models)
            used = sum(m.charged for m in models)
            evicted: list[Evicted] = []
            for model in sorted((m for m in models if not m.leases.in_use), key=lambda m: (m.last_used, m.name)):
                if used <= max_size:
                    break
                if self.evict(model, "cache gc"):
                    evicted.append(Evicted(model.name, model.bytes, model.last_used))
                    used -= model.charged
            if used > max_size:
                remaining = [m for m in models if m.name not in {e.name for e in evicted}]
                raise self._full(
                    f"cache gc cannot bring the models under {size_text(max_size)}",
                    remaining,
                    _Room(used, self.free_bytes(), 0),
                    max_size,
                    tuple(e.name for e in evicted),
                )
            return evicted

    def remove(self, name: str) -> Evicted:
        """`cache rm`: evict the named model; ModelInUseError when it is in use."""
        with self.locked():
            self.empty_trash()
            names = find_models(self.root)
            if name not in names:
                known = ", ".join(names) if names else "none"
                raise ConfigError("NAME", name, f"no model of that name in {self.root} (models: {known})")
            model = read_model(self.root, name)
            if not self.evict(model, "cache rm"):
                raise ModelInUseError(self.root, name, read_model(self.root, name).leases.holders)
            return Evicted(model.name, model.bytes, model.last_used)

    def _full(
        self, goal: str, models: Sequence[CachedModel], room: _Room, budget: int, evicted: tuple[str, ...] = ()
    ) -> CacheFullError:
        in_use = tuple((m.name, m.charged, m.leases.holders) for m in models if m.leases.in_use)
        return CacheFullError(
            self.root, goal, budget=budget, used=room.used, free=room.free, in_use=in_use, evicted=evicted
        )


@dataclass(frozen=True)
class _Room:
    """What the other models take: `used` against the budget, `outstanding` of the free space (reserved by their
    downloads, not allocated yet), and the free space."""

    used: int
    free: int
    outstanding: int

    def without(self, models: Sequence[CachedModel]) -> _Room:
        """The room with `models` evicted (their bytes come back as free space)."""
        return _Room(
            self.used - sum(m.charged for m in models),
            self.free + sum(m.bytes for m in models),
            self.outstanding - sum(m.outstanding for m in models),
        )

    def with_free(self, free: int) -> _Room:
        return _Room(self.used, free, self.outstanding)


def _needs(name: str, peak: int, free: int) -> str:
    return (
        f"cannot make room for {name}, nothing was fetched: it needs {size_text(peak)} within the budget and "
        f"{size_text(free)} of free space"
    )


def drop_reservation(model_dir: str) -> None:
    """The model is complete: its bytes are what it holds."""
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(state_dir(model_dir), RESERVATION_NAME))


def remove_tree(path: str) -> Iterator[str]:
    """Delete a directory tree bottom up, one unlink or rmdir per step, never following a symlink."""
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(dirpath, name))
            yield f"unlink {name}"
        for name in dirnames:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError, OSError):
                os.rmdir(os.path.join(dirpath, name))
    with contextlib.suppress(FileNotFoundError, OSError):
        os.rmdir(path)
    yield "rmdir"
