"""The write machinery of a model directory: its tree, temporary files, journals, records and syncs.

The downloader's alone. What it writes, and what a reader may rely on, is the contract in downloader/layout.py,
which other packages import instead of this module.

Every path below the model directory is opened relative to directory file descriptors with O_NOFOLLOW, so
a symlink planted inside the target (even mid-download) is never followed out of it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import random
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .errors import Interrupted, LocalStorageError, UnsafePathError
from .layout import (
    DONE_NAME,
    JOURNAL_DIR,
    LOCK_NAME,
    MANIFEST_NAME,
    PROGRESS_NAME,
    TEMP_SUFFIX,
    Manifest,
    Progress,
    read_manifest,
    state_dir,
)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_DIRECT: int = getattr(os, "O_DIRECT", 0)  # Linux; 0 where there is none


# ---------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class LocalStat:
    size: int
    mtime_ns: int
    is_regular: bool


@dataclass(frozen=True)
class DoneRecord:
    """A file we finished and verified: its version, size and the mtime it had when we renamed it."""

    rel_path: str
    version: str
    version_id: str | None
    size: int
    mtime_ns: int
    checksum: str | None  # "algorithm:value" that was verified, or None
    verified: str  # what was checked, in words


# ------------------------------------------------------------------------------------ the model tree


class ModelTree:
    """File operations below one model directory, never following symlinks out of it."""

    def __init__(self, model_dir: str) -> None:
        self.model_dir = model_dir
        self._dirs: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()

    # -- directories
    def open_root(self, *, create: bool) -> None:
        try:
            if create:
                os.makedirs(self.model_dir, exist_ok=True)
            fd = os.open(self.model_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise LocalStorageError(self.model_dir, _os_reason(exc)) from exc
        with self._lock:
            self._dirs[()] = fd

    def dir_fd(self, parts: Sequence[str], *, create: bool) -> int:
        """Descriptor of the directory <model dir>/<parts...>, created when asked, symlinks refused."""
        key = tuple(parts)
        with self._lock:
            fd = self._dirs.get(key)
            if fd is not None:
                return fd
        parent = self.dir_fd(key[:-1], create=create)
        name = key[-1]
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=parent)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePathError(
                    "/".join(key), "a symlink or file stands where a directory should be; refusing to follow it"
                ) from exc
            raise LocalStorageError(os.path.join(self.model_dir, *key), _os_reason(exc)) from exc
        with self._lock:
            existing = self._dirs.get(key)
            if existing is not None:
                os.close(fd)
                return existing
            self._dirs[key] = fd
        return fd

    def close(self) -> None:
        with self._lock:
            for fd in self._dirs.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._dirs.clear()

    # -- files
    def lstat(self, parts: Sequence[str]) -> LocalStat | None:
        try:
            parent = self.dir_fd(parts[:-1], create=False)
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError, UnsafePathError):
            return None
        except OSError:
            return None
        return LocalStat(st.st_size, st.st_mtime_ns, stat.S_ISREG(st.st_mode))

    def lstat_fresh(self, parts: Sequence[str], dirs: dict[tuple[str, ...], int]) -> LocalStat | None:
        """Like lstat, but walking the path again now instead of through the descriptors opened earlier.

        A directory renamed away and replaced (by a symlink or anything else) after we opened it leaves our
        descriptors pointing at the moved directory; only a fresh walk sees what a reader of the path will see.
        `dirs` caches this walk's descriptors; the caller closes them.
        """
        parent = self.dir_fd((), create=False)
        key: tuple[str, ...] = ()
        try:
            for name in parts[:-1]:
                key = (*key, name)
                fd = dirs.get(key)
                if fd is None:
                    fd = dirs[key] = os.open(name, _DIR_FLAGS, dir_fd=parent)
                parent = fd
            st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except OSError:
            return None
        return LocalStat(st.st_size, st.st_mtime_ns, stat.S_ISREG(st.st_mode))

    def create_temp(
        self, parts: Sequence[str], token: str, size: int, *, preallocate_blocks: bool = True, direct: bool = False
    ) -> tuple[str, int, bool]:
        """Create (and preallocate) the temp file for `parts`; returns (temp name, fd open for writing, whether the
        fd is open with O_DIRECT: asked for with `direct`, and only where the filesystem takes it).

        Preallocation is for files written in ranges, out of order and over minutes; a small file written in
        one go gets its blocks from that write (fallocate would cost a syscall and an extent conversion).
        """
        parent = self.dir_fd(parts[:-1], create=True)
        name = temp_name(parts[-1], token)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        direct = direct and bool(_O_DIRECT)
        try:
            try:
                fd = os.open(name, flags | (_O_DIRECT if direct else 0), 0o644, dir_fd=parent)
            except OSError as exc:
                if not direct or exc.errno != errno.EINVAL:
                    raise
                direct = False  # this filesystem refuses O_DIRECT (tmpfs): the page cache it is
                fd = os.open(name, flags, 0o644, dir_fd=parent)
        except OSError as exc:
            raise LocalStorageError(os.path.join(self.model_dir, *parts[:-1], name), _os_reason(exc)) from exc
        try:
            if preallocate_blocks:
                preallocate(fd, size)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=parent)
            raise LocalStorageError(os.path.join(self.model_dir, *parts), _os_reason(exc)) from exc
        return name, fd, direct

    def open_temp(self, parts: Sequence[str], name: str, size: int) -> int | None:
        """Reopen an existing temp file for resuming; None if it is gone or not what we expect."""
        try:
            parent = self.dir_fd(parts[:-1], create=False)
            fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        except (OSError, UnsafePathError):
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            os.close(fd)
            return None
        return fd

    def remove_temp(self, parts: Sequence[str], name: str) -> None:
        with contextlib.suppress(OSError, UnsafePathError):
            parent = self.dir_fd(parts[:-1], create=False)
            os.unlink(name, dir_fd=parent)

    def commit(
        self, parts: Sequence[str], name: str, *, durable: bool = True, mtime_ns: int | None = None
    ) -> int | None:
        """Atomically move the finished temp file onto its final name; returns the final mtime_ns.

        rename(2) replaces whatever is at the target, including a symlink, without following it. Returns
        None when the temp file is gone: another process (that did not respect the lock) finished it.
        With durable=False the directory is not flushed: the caller makes a batch durable with sync().
        `mtime_ns`, when the caller has it from the descriptor after its last write, spares a stat (a rename
        leaves the modification time as it is).
        """
        parent = self.dir_fd(parts[:-1], create=False)
        try:
            os.rename(name, parts[-1], src_dir_fd=parent, dst_dir_fd=parent)
        except FileNotFoundError:
            return None
        except IsADirectoryError as exc:
            raise UnsafePathError("/".join(parts), "a directory stands where the file should go") from exc
        except OSError as exc:
            raise LocalStorageError(os.path.join(self.model_dir, *parts), _os_reason(exc)) from exc
        try:
            if durable:
                os.fsync(parent)
            if mtime_ns is None:
                mtime_ns = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False).st_mtime_ns
        except OSError as exc:
            raise LocalStorageError(os.path.join(self.model_dir, *parts), _os_reason(exc)) from exc
        return mtime_ns

    def sync(self) -> None:
        """Make everything written under the model directory durable: data, new names, new directories.

        One syncfs(2) of the filesystem: for a batch of small files, one flush instead of an fdatasync and a
        directory fsync per file (Linux reports writeback errors through it since 5.8).
        """
        try:
            sync_filesystem(self.dir_fd((), create=False))
        except OSError as exc:
            raise LocalStorageError(self.model_dir, _os_reason(exc)) from exc

    def sync_dirs(self, dirs: set[tuple[str, ...]]) -> None:
        """fsync each of these directories (under the model directory): names renamed into them are durable."""
        for d in sorted(dirs):
            try:
                os.fsync(self.dir_fd(d, create=False))
            except OSError as exc:
                raise LocalStorageError(os.path.join(self.model_dir, *d), _os_reason(exc)) from exc

    def link(self, parts: Sequence[str], target: str) -> None:
        """Atomically place a symlink to `target` at <model dir>/<parts> (used-in-place local files)."""
        parent = self.dir_fd(parts[:-1], create=True)
        tmp = temp_name(parts[-1], new_token())
        try:
            os.symlink(target, tmp, dir_fd=parent)
            os.rename(tmp, parts[-1], src_dir_fd=parent, dst_dir_fd=parent)
        except IsADirectoryError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent)
            raise UnsafePathError("/".join(parts), "a directory stands where the link should go") from exc
        except OSError as exc:
            raise LocalStorageError(os.path.join(self.model_dir, *parts), _os_reason(exc)) from exc

    def free_bytes(self) -> int:
        st = os.statvfs(self.model_dir)
        return st.f_bavail * st.f_frsize

    def stale_temps(self, dir_parts: set[tuple[str, ...]]) -> Iterator[tuple[tuple[str, ...], str]]:
        """Our temp files left in the given directories (call once every journal has been resolved)."""
        for d in sorted(dir_parts):
            try:
                fd = self.dir_fd(d, create=False)
                names = os.listdir(fd)
            except (OSError, UnsafePathError):
                continue
            for name in names:
                if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                    yield d, name


def temp_name(final_name: str, token: str) -> str:
    # Keep the temp name within NAME_MAX even for long final names.
    stem = final_name if len(final_name.encode()) <= 200 else final_name.encode()[:200].decode(errors="ignore")
    return f".{stem}.{token}{TEMP_SUFFIX}"


class _Tokens:
    """Names for temp files and journals, unique among every process that writes into a model directory.

    secrets.token_hex would cost a getrandom(2) per file; a generator seeded once from the OS (and again in a
    forked child, which would otherwise repeat its parent's names) draws from the same 2**64 space for free."""

    def __init__(self) -> None:
        self._rng = random.Random(secrets.randbits(128))
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._rng.seed(secrets.randbits(128))

    def new(self) -> str:
        return f"{self._rng.getrandbits(64):016x}"


_tokens = _Tokens()


def new_token() -> str:
    return _tokens.new()


def preallocate(fd: int, size: int) -> None:
    """Reserve the blocks up front (fewer surprises mid-download); fall back where fallocate is unsupported."""
    if size <= 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            os.ftruncate(fd, size)
        else:
            raise


def _sync_file_range() -> Callable[[int, int, int], None]:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return lambda fd, offset, length: None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int

    def start(fd: int, offset: int, length: int) -> None:
        fn(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE: queue the writes, do not wait for them

    return start


def open_direct(fd: int) -> int | None:
    """A second descriptor on the file open as `fd`, for O_DIRECT writes; None where the filesystem refuses.

    Reopened through /proc/self/fd, so it is the same inode whatever happened to the name meanwhile.
    """
    if not _O_DIRECT:
        return None
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | _O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return None


def clear_direct(fd: int) -> None:
    """Take O_DIRECT off a descriptor: its next writes and reads go through the page cache."""
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_DIRECT)


def _syncfs() -> Callable[[int], None]:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return lambda fd: os.sync()  # no syncfs here: sync(2) flushes every filesystem, this one included
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int

    def run(fd: int) -> None:
        if fn(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return run


sync_filesystem = _syncfs()


# Writeback of a finished range starts at once instead of when the kernel's dirty limits are reached, so the
# disk works while the network does and the fdatasync that makes a finished file durable has little left to
# wait for. Advisory: a failure here changes nothing, fdatasync still decides (Linux only; a no-op elsewhere).
start_writeback = _sync_file_range()


# One write(2) per call with O_APPEND: lines written concurrently, by threads or by other processes, never
# interleave, so journal lines need no lock. (done.jsonl's writes do take one: it guards the descriptor that
# stays open for the run, and is taken once per batch of small files, not once per file.)
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC


def _json_line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def _write_all(fd: int, data: bytes, path: str) -> None:
    try:
        written = os.write(fd, data)
    except OSError as exc:
        raise LocalStorageError(path, _os_reason(exc)) from exc
    if written != len(data):  # a full disk mid-line: the torn line is skipped when read back
        raise LocalStorageError(path, "short write (no space left on device?)")


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    return exc.strerror or str(exc)


# ------------------------------------------------------------------------------------ state directory


@dataclass(frozen=True)
class JournalHeader:
    rel_path: str
    key: str
    version: str
    version_id: str | None
    size: int
    temp: str
    layout: str  # describes range boundaries; a journal is only reusable with the same layout


@dataclass
class Journal:
    token: str
    header: JournalHeader
    done: dict[int, list[str]]  # range index -> per-part digests (hex) computed while streaming
    # The file's done record, written just before its temp file is renamed into place: where a process dies between
    # that rename and the record's line in done.jsonl, the next run finds the file here (run._placed).
    placed: DoneRecord | None = None


class StateDir:
    """Bookkeeping files under <model dir>/.aibrix/."""

    def __init__(self, model_dir: str) -> None:
        self.model_dir = model_dir
        self.path = state_dir(model_dir)
        self.journal_path = os.path.join(self.path, JOURNAL_DIR)
        self._lock_fd: int | None = None
        self._done_fd: int | None = None
        self._done_lock = threading.Lock()

    def ensure(self) -> None:
        try:
            for p in (self.path, self.journal_path):
                os.makedirs(p, exist_ok=True)
                if os.path.islink(p) or not os.path.isdir(p):
                    raise UnsafePathError(p, "state directory is not a plain directory")
        except OSError as exc:
            raise LocalStorageError(self.path, _os_reason(exc)) from exc

    # -- lock
    def acquire_lock(
        self,
        cancel: threading.Event,
        timeout: float,
        on_wait: Callable[[float, str], None],
    ) -> None:
        """Hold the node-wide lock for this model. Waits while another process holds it.

        A lost lock (a filesystem that ignores flock) is safe: temp names are unique, files appear by
        atomic rename, and the manifest is written only after every file is verified.
        """
        path = os.path.join(self.path, LOCK_NAME)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LocalStorageError(path, _os_reason(exc)) from exc
        started = time.monotonic()
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as held:
                waited = time.monotonic() - started
                if timeout and waited > timeout:
                    os.close(fd)
                    raise LocalStorageError(
                        path, f"another download of this model held the lock for over {timeout:.0f}s"
                    ) from held
                on_wait(waited, self._owner_text(fd))
                if cancel.wait(0.5):
                    os.close(fd)
                    raise Interrupted("signal", 130) from held
            except OSError as exc:
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP):
                    break  # a filesystem without locks: proceed, correctness does not depend on it
                raise LocalStorageError(path, _os_reason(exc)) from exc
        owner = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, owner, 0)
        self._lock_fd = fd

    def _owner_text(self, fd: int) -> str:
        try:
            data = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f"pid {data.get('pid')} on {data.get('host')}"
        except (OSError, ValueError):
            return "another process"

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    # -- done records
    def read_done(self) -> dict[str, DoneRecord]:
        records: dict[str, DoneRecord] = {}
        manifest = read_manifest(self.model_dir)
        if manifest is not None:
            for f in manifest.files:
                records[f.path] = DoneRecord(
                    f.path, f.version, f.version_id, f.size, f.mtime_ns, f.checksum, f.verified
                )
        try:
            with open(os.path.join(self.path, DONE_NAME), "rb") as fh:
                for line in fh:
                    try:
                        rec = DoneRecord(**json.loads(line))
                    except (ValueError, TypeError):
                        continue  # a torn last line after a crash
                    records[rec.rel_path] = rec
        except OSError:
            pass
        return records

    def append_done(self, records: Sequence[DoneRecord]) -> None:
        """Record finished files: one write(2) for the batch, through a descriptor kept open for the run."""
        if not records:
            return
        data = b"".join(_json_line(vars(r)) for r in records)  # flat records: no asdict() deep copy
        path = os.path.join(self.path, DONE_NAME)
        with self._done_lock:
            if self._done_fd is None:
                try:
                    self._done_fd = os.open(path, _APPEND_FLAGS | os.O_CREAT, 0o644)
                except OSError as exc:
                    raise LocalStorageError(path, _os_reason(exc)) from exc
            _write_all(self._done_fd, data, path)

    def close(self) -> None:
        with self._done_lock:
            if self._done_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._done_fd)
                self._done_fd = None

    def _append(self, path: str, obj: dict[str, Any], *, create: bool = True) -> None:
        try:
            fd = os.open(path, _APPEND_FLAGS | (os.O_CREAT if create else 0), 0o644)
        except FileNotFoundError:
            if create:
                raise
            return  # the journal was dropped (its file finished elsewhere); nothing to record
        except OSError as exc:
            raise LocalStorageError(path, _os_reason(exc)) from exc
        try:
            _write_all(fd, _json_line(obj), path)
        finally:
            os.close(fd)

    # -- journals
    def journals(self) -> list[Journal]:
        out = []
        try:
            names = sorted(os.listdir(self.journal_path))
        except OSError:
            return []
        for name in names:
            if not name.endswith(".jsonl"):
                continue
            token = name[: -len(".jsonl")]
            journal = self.load_journal(token)
            if journal is not None:
                out.append(journal)
        return out

    def load_journal(self, token: str) -> Journal | None:
        """One journal by its token; None when it is gone or its header is unreadable."""
        try:
            with open(os.path.join(self.journal_path, token + ".jsonl"), "rb") as fh:
                lines = fh.read().splitlines()
        except OSError:
            return None
        if not lines:
            return None
        try:
            header = JournalHeader(**json.loads(lines[0]))
        except (ValueError, TypeError):
            return None
        done: dict[int, list[str]] = {}
        placed = None
        for line in lines[1:]:
            try:
                entry = json.loads(line)
                if "placed" in entry:
                    placed = DoneRecord(**entry["placed"])
                else:
                    done[int(entry["r"])] = [str(d) for d in entry.get("d", [])]
            except (ValueError, TypeError, KeyError):
                continue  # a torn last line after a crash
        return Journal(token, header, done, placed)

    def start_journal(self, token: str, header: JournalHeader) -> Journal:
        path = os.path.join(self.journal_path, token + ".jsonl")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._append(path, asdict(header))
        return Journal(token, header, {})

    def record_range(self, token: str, index: int, digests: list[str]) -> None:
        self._append(os.path.join(self.journal_path, token + ".jsonl"), {"r": index, "d": digests}, create=False)

    def record_placing(self, token: str, record: DoneRecord) -> None:
        """The file's done record, into its journal before its temp file is renamed into place (Journal.placed). Not
        flushed: after a power cut either line may be gone, and the file is then fetched again (run._placed)."""
        self._append(os.path.join(self.journal_path, token + ".jsonl"), {"placed": vars(record)}, create=False)

    def drop_journal(self, token: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.journal_path, token + ".jsonl"))

    # -- manifest and progress
    def write_manifest(self, manifest: Manifest) -> None:
        head = {k: v for k, v in vars(manifest).items() if k != "files"}
        head["total_bytes"] = manifest.total_bytes
        head["file_count"] = len(manifest.files)
        # One file per line, each through json's C encoder: asdict() and an indented dump (pure-Python encoder)
        # cost about a second per 10,000 files.
        files = ",\n".join(json.dumps(vars(f)) for f in manifest.files)
        text = json.dumps(head)[:-1] + ',\n"files": [\n' + files + "\n]}\n"
        self._write_atomic(MANIFEST_NAME, text.encode(), durable=True)

    def remove_manifest(self) -> None:
        path = os.path.join(self.path, MANIFEST_NAME)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise LocalStorageError(path, _os_reason(exc)) from exc
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            os.fsync(fd)
            os.close(fd)

    def write_progress(self, progress: Progress) -> None:
        with contextlib.suppress(OSError):
            # Its fields are plain values, lists and dicts: vars(), not asdict()'s deep copy (twice a second)
            self._write_atomic(PROGRESS_NAME, json.dumps(vars(progress)).encode(), durable=False)

    def _write_atomic(self, name: str, data: bytes, *, durable: bool) -> None:
        final = os.path.join(self.path, name)
        tmp = os.path.join(self.path, f".{name}.{new_token()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, data)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            if durable:
                dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise LocalStorageError(final, _os_reason(exc)) from exc
