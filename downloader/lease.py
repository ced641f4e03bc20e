"""Leases on a model, and the lock an eviction takes instead: the write side of the lease file (downloader/layout.py
says what it is and counts holders).

A process that serves a model (the sidecar, the runtime, `aibrix-download --hold`, a running download) holds a
`Lease` for as long as it lives: a lock on one byte of <model dir>/.aibrix/lease, owned by its open file
description, so the kernel drops it when the descriptor closes, however the process ends (kill -9 included).
An eviction takes `lock_for_eviction`: a write lock on the whole file, granted only while no lease is held, and
blocking every new lease until the eviction has renamed the model away. The lease file goes with the model: a
holder that waited out an eviction finds the file gone (or a new one) and looks again, so no lease is ever held
on a model directory that is no longer there.

A holder that may only read the lease file (a read-only mount) holds a read lock: it still keeps evictions out.
Where the filesystem refuses these locks, no lease can be held and no eviction can prove a model unused: nothing
there is evicted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time

from .inventory import LEASE_NAME, LEASE_SLOTS, held_lock, lock_request
from .layout import state_dir

log = logging.getLogger(__name__)

EVICTION_WAIT = 0.05  # seconds between looks while an eviction holds the model (it holds it for a rename)
_BUSY = (errno.EAGAIN, errno.EACCES)  # F_OFD_SETLK: another open file holds a conflicting lock
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LocksUnsupported(Exception):
    """The filesystem refuses open file description locks (ENOLCK, EINVAL, EOPNOTSUPP)."""


def _open_lease_file(model_dir: str, *, create: bool, make_dirs: bool) -> tuple[int, bool] | None:
    """The lease file, open for reading and writing where allowed (else for reading), and whether it is writable;
    None when it does not exist and may not be created. `make_dirs`: the state directory too."""
    sdir = state_dir(model_dir)
    if make_dirs:
        with contextlib.suppress(OSError):  # read-only, or not ours: the file may be there all the same
            os.makedirs(sdir, exist_ok=True)
    try:
        dir_fd = os.open(sdir, _DIR_FLAGS)  # a symlink in place of the state directory is refused
    except OSError:
        return None
    try:
        for flags, writable in ((os.O_RDWR | (os.O_CREAT if create else 0), True), (os.O_RDONLY, False)):
            try:
                return os.open(LEASE_NAME, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd), writable
            except OSError as exc:
                if exc.errno not in _READ_ONLY:
                    return None
        return None
    finally:
        os.close(dir_fd)


def _is_current(path: str, fd: int) -> bool:
    """The file open as `fd` is still the one at `path` (an eviction renames the model away, lease file and all)."""
    try:
        at_path, opened = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except OSError:
        return False
    return (at_path.st_dev, at_path.st_ino) == (opened.st_dev, opened.st_ino)


def _set_lock(fd: int, kind: int, start: int, length: int) -> bool:
    """Take the lock without waiting; False when another open file holds a conflicting one."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock_request(kind, start, length))
    except OSError as exc:
        if exc.errno in _BUSY:
            return False
        raise LocksUnsupported(os.strerror(exc.errno or 0)) from exc
    return True


def _take_slot(fd: int, writable: bool) -> bool:
    """Lock the first free slot; False when an eviction holds the whole file."""
    kind = fcntl.F_WRLCK if writable else fcntl.F_RDLCK
    slot = 0
    while slot < LEASE_SLOTS:
        try:
            held = held_lock(fd, slot, 1)
        except OSError as exc:
            raise LocksUnsupported(os.strerror(exc.errno or 0)) from exc
        if held is not None:
            if held.length != 1:
                return False  # the eviction lock (or a stray lock over many slots): wait it out
            slot += 1
            continue
        if _set_lock(fd, kind, slot, 1):
            return True
        # taken between the look and the lock: look at it again
    raise LocksUnsupported(f"all {LEASE_SLOTS} lease slots are held")


class Lease:
    """A lease on one model, held from `acquire` until `release` or the end of the process.

    Last use is recorded when it is taken and when it is released: the lease file's modification time (where this
    process may write the file), which the cache's least-recently-used order reads."""

    def __init__(self, model_dir: str) -> None:
        self.model_dir = model_dir
        self.path = os.path.join(state_dir(model_dir), LEASE_NAME)
        self.unsupported: str | None = None  # why no lease can be held here, once that is known
        self._fd: int | None = None
        self._writable = False
        self._lock = threading.Lock()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, create: bool) -> bool:
        """Hold the lease (waiting out an eviction in progress, which is brief); True when held. Without `create`
        nothing is made: no lease file (a model not there yet, on a read-only mount) means no lease, for now. With
        it, the model's state directory and lease file are created: a lease taken before a download protects it."""
        with self._lock:
            if self._fd is not None:
                if _is_current(self.path, self._fd):
                    return True
                self._close()  # the model was removed by hand under us: hold the new one, if there is one
            if self.unsupported is not None:
                return False
            while True:
                opened = _open_lease_file(self.model_dir, create=create, make_dirs=create)
                if opened is None:
                    return False
                fd, writable = opened
                try:
                    taken = _take_slot(fd, writable)
                except LocksUnsupported as exc:
                    os.close(fd)
                    self.unsupported = str(exc)
                    log.warning("cannot hold a lease on %s (%s): it is not protected from eviction", self.path, exc)
                    return False
                if taken and _is_current(self.path, fd):
                    self._fd, self._writable = fd, writable
                    self._touch()
                    return True
                os.close(fd)  # an eviction holds it, or has just renamed it away: look again
                if not taken:
                    time.sleep(EVICTION_WAIT)

    def release(self) -> None:
        with self._lock:
            if self._fd is not None:
                self._touch()
                self._close()

    def _touch(self) -> None:
        if self._fd is not None and self._writable:
            with contextlib.suppress(OSError):  # last use orders evictions; never a reason to fail
                os.utime(self._fd)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the lock goes with the open file
            self._fd = None


def lock_for_eviction(model_dir: str) -> int | None:
    """The model's lease file, write-locked whole, as an open descriptor: the model may be evicted while it stays
    open (close it once the model is renamed away). None when a lease is held, the model is already gone, or the
    filesystem cannot say (what cannot be proved unused is in use)."""
    # A model from before leases gets its lease file now; a model already gone gets nothing back.
    opened = _open_lease_file(model_dir, create=True, make_dirs=False)
    if opened is None:
        return None
    fd, writable = opened
    path = os.path.join(state_dir(model_dir), LEASE_NAME)
    try:
        if writable and _set_lock(fd, fcntl.F_WRLCK, 0, 0) and _is_current(path, fd):
            return fd
    except LocksUnsupported:
        pass
    os.close(fd)
    return None
