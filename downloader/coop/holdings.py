"""What a member holds of its model, for its peers: read-only, from the model directory the downloader writes.

Bytes are served only from files the downloader selected for this model, at the version it fetched, and only where
they are finished: a verified file under its name (in the manifest or done.jsonl, still as recorded), or the ranges
a file's journal records as finished, from its temporary file. Paths are checked as the downloader checks them
(downloader.plan.safe_parts: nothing outside the model directory, not its .aibrix/ directory), and every file is
opened by walking from the model directory without following a symlink (O_NOFOLLOW at every step).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from dataclasses import dataclass

from ..errors import UnsafePathError
from ..jobs import same_version
from ..layout import DONE_NAME, MANIFEST_NAME, TEMP_SUFFIX, FileKey, file_key, state_dir
from ..plan import safe_parts
from ..state import DoneRecord, Journal, StateDir

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True)
class Piece:
    """Where the bytes asked for can be read: `name` in the directory of the file `parts`, `size` bytes long; for a
    verified file, with the modification time it was recorded with."""

    parts: tuple[str, ...]
    name: str
    size: int
    version: str
    mtime_ns: int | None = None


@dataclass(frozen=True)
class Lookup:
    """The answer to "have you these bytes": the piece to read them from; else whether the file is one of the model
    (`known`) and, when this member has it at another version, that version."""

    piece: Piece | None = None
    known: bool = False
    other_version: str | None = None
    grid: tuple[int, int] | None = None  # (size, range step) of the file, from a journal of the version asked for


class Holdings:
    """The model directory's records and journals as last read; `refresh` reads again what changed. Thread-safe."""

    def __init__(self, model_dir: str) -> None:
        self.model_dir = model_dir
        self._state = StateDir(model_dir)
        self._lock = threading.Lock()
        self._records_key: tuple[FileKey | None, FileKey | None] = (None, None)
        self._records: dict[str, DoneRecord] = {}
        self._journal_keys: dict[str, FileKey] = {}
        self._journals: dict[str, Journal] = {}  # token -> journal

    def refresh(self) -> None:
        """Read again the records and the journals that changed since the last refresh."""
        sdir = state_dir(self.model_dir)
        key = (file_key(os.path.join(sdir, MANIFEST_NAME)), file_key(os.path.join(sdir, DONE_NAME)))
        records = self._state.read_done() if key != self._records_key else None
        try:
            names = [n[: -len(".jsonl")] for n in os.listdir(self._state.journal_path) if n.endswith(".jsonl")]
        except OSError:
            names = []
        journal = self._state.journal_path
        keys = {token: k for token in names if (k := file_key(os.path.join(journal, token + ".jsonl")))}
        with self._lock:
            stale = [t for t, k in keys.items() if self._journal_keys.get(t) != k]
        loaded = {t: j for t in stale if (j := self._state.load_journal(t)) is not None}
        with self._lock:
            if records is not None:
                self._records, self._records_key = records, key
            self._journals = {t: loaded.get(t) or self._journals[t] for t in keys if t in loaded or t in self._journals}
            self._journal_keys = {t: keys[t] for t in self._journals}

    def lookup(self, rel_path: str, version: str, start: int, end: int) -> Lookup:
        """Where bytes [start, end] of `rel_path` at `version` can be read, if this member has them. `rel_path` must
        have passed `check_path`."""
        parts = tuple(rel_path.split("/"))
        with self._lock:
            record = self._records.get(rel_path)
            journals = [j for j in self._journals.values() if j.header.rel_path == rel_path]
        other = None
        if record is not None:
            if same_version(record.version, version):
                local = _lstat(self.model_dir, parts)
                if local is not None and local == (record.mtime_ns, record.size) and end < record.size:
                    return Lookup(Piece(parts, parts[-1], record.size, record.version, record.mtime_ns), True)
            else:
                other = record.version
        grid = None
        for j in journals:
            h = j.header
            if not same_version(h.version, version):
                other = other or h.version
                continue
            step = _step(h.layout)
            grid = (h.size, step) if step else grid
            if step and end < h.size and _temp_name_ok(h.temp) and all(i in j.done for i in _indexes(start, end, step)):
                return Lookup(Piece(parts, h.temp, h.size, h.version), True, grid=grid)
        known = record is not None or bool(journals)
        other = other if other is not None and not _has_version(record, journals, version) else None
        return Lookup(None, known, other, grid)


def check_path(rel_path: str) -> tuple[str, ...]:
    """The path's components when it is a safe path of a model file; UnsafePathError otherwise."""
    return safe_parts(rel_path, rel_path)


def open_piece(model_dir: str, piece: Piece) -> int:
    """A descriptor for reading `piece`, opened without following a symlink anywhere below the model directory, and
    still the file it was found to be (a regular file of its size; a verified file with its recorded mtime).
    OSError (FileNotFoundError when it moved meanwhile: a temporary file renamed once verified) otherwise."""
    parent = _directory(model_dir, piece.parts[:-1])
    try:
        fd = os.open(piece.name, _FILE_FLAGS, dir_fd=parent)
    finally:
        os.close(parent)
    st = os.fstat(fd)
    if (
        not stat.S_ISREG(st.st_mode)
        or st.st_size != piece.size
        or (piece.mtime_ns is not None and st.st_mtime_ns != piece.mtime_ns)
    ):
        os.close(fd)
        raise FileNotFoundError(f"{'/'.join(piece.parts)} changed")
    return fd


def _directory(model_dir: str, parts: tuple[str, ...]) -> int:
    """A descriptor of the directory <model_dir>/<parts>, reached without following a symlink."""
    parent = os.open(model_dir, _DIR_FLAGS)
    for name in parts:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        finally:
            os.close(parent)
        parent = fd
    return parent


def _lstat(model_dir: str, parts: tuple[str, ...]) -> tuple[int, int] | None:
    """(mtime_ns, size) of a regular file at `parts`, walking without following symlinks; None otherwise."""
    try:
        parent = _directory(model_dir, parts[:-1])
    except OSError:
        return None
    try:
        st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
    except OSError:
        return None
    finally:
        os.close(parent)
    return (st.st_mtime_ns, st.st_size) if stat.S_ISREG(st.st_mode) else None


def _step(layout: str) -> int:
    """The range step a journal's layout names ("v1 step=<bytes> ..."); 0 when it names none."""
    for word in layout.split():
        if word.startswith("step="):
            with contextlib.suppress(ValueError):
                return int(word[len("step=") :])
    return 0


def _indexes(start: int, end: int, step: int) -> range:
    return range(start // step, end // step + 1)


def _temp_name_ok(name: str) -> bool:
    """A temporary file's name as the downloader makes them: one hidden name in the file's own directory."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX) and "/" not in name and "\x00" not in name


def _has_version(record: DoneRecord | None, journals: list[Journal], version: str) -> bool:
    return (record is not None and same_version(record.version, version)) or any(
        same_version(j.header.version, version) for j in journals
    )


__all__ = ["Holdings", "Lookup", "Piece", "UnsafePathError", "check_path", "open_piece"]
