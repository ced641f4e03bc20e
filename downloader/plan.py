"""What to fetch: filtering, path safety, skip/resume decisions, free space, range layout. Pure code.

Nothing here touches the network or the disk; callers pass in what was listed and what is on disk.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .errors import InsufficientSpaceError, UnsafePathError
from .layout import STATE_DIR_NAME
from .sources.base import RemoteFile
from .state import DoneRecord, LocalStat

_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f]")

MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096

# Files a model usually needs to load; dropping them by filter is almost always a mistake.
LOAD_CRITICAL_NAMES = ("tokenizer.model", "merges.txt", "vocab.txt", "vocab.json", "chat_template.json")
LOAD_CRITICAL_GLOBS = ("*.tiktoken", "*.jinja", "chat_template*", "tokenizer*.model")


# ------------------------------------------------------------------------------------------- filtering


def suffix_matches(rel_path: str, suffixes: Sequence[str]) -> bool:
    """True when the file name ends in '.<suffix>' for one of the suffixes ('py' never matches 'happy')."""
    name = posixpath.basename(rel_path)
    return any(name.endswith("." + s) and len(name) > len(s) + 1 for s in suffixes)


def pattern_matches(rel_path: str, pattern: str) -> bool:
    """fnmatch on the relative path, as huggingface_hub does; 'dir/' means everything under dir."""
    if pattern.endswith("/"):
        pattern += "*"
    return fnmatch.fnmatchcase(rel_path, pattern)


def is_selected(rel_path: str, suffixes: Sequence[str], include: Sequence[str], exclude: Sequence[str]) -> bool:
    if suffixes and not suffix_matches(rel_path, suffixes):
        return False
    if include and not any(pattern_matches(rel_path, p) for p in include):
        return False
    return not any(pattern_matches(rel_path, p) for p in exclude)


def select(
    files: Iterable[RemoteFile], suffixes: Sequence[str], include: Sequence[str], exclude: Sequence[str]
) -> tuple[list[RemoteFile], list[RemoteFile]]:
    selected: list[RemoteFile] = []
    dropped: list[RemoteFile] = []
    for f in files:
        (selected if is_selected(f.rel_path, suffixes, include, exclude) else dropped).append(f)
    return selected, dropped


def dropped_load_critical(dropped: Iterable[RemoteFile]) -> list[str]:
    out = []
    for f in dropped:
        name = posixpath.basename(f.rel_path)
        if name in LOAD_CRITICAL_NAMES or any(fnmatch.fnmatchcase(name, g) for g in LOAD_CRITICAL_GLOBS):
            out.append(f.rel_path)
    return out


# ------------------------------------------------------------------------------------------ path safety


def safe_parts(key: str, rel_path: str) -> tuple[str, ...]:
    """Split a relative path into components, refusing anything that could leave the model directory."""
    if not rel_path:
        raise UnsafePathError(key, "empty relative path")
    if "\x00" in rel_path:
        raise UnsafePathError(key, "contains a NUL byte")
    if "\\" in rel_path:
        raise UnsafePathError(key, "contains a backslash")
    if rel_path.startswith("/"):
        raise UnsafePathError(key, "is an absolute path")
    if len(rel_path.encode()) > MAX_PATH_BYTES:
        raise UnsafePathError(key, f"path longer than {MAX_PATH_BYTES} bytes")
    parts = tuple(rel_path.split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePathError(key, f"has a {part or 'empty'!r} path component")
        if len(part.encode()) > MAX_NAME_BYTES:
            raise UnsafePathError(key, f"a path component is longer than {MAX_NAME_BYTES} bytes")
        if _CONTROL_CHARACTER.search(part):
            raise UnsafePathError(key, "contains a control character")
    if parts[0] == STATE_DIR_NAME:
        raise UnsafePathError(key, f"would overwrite the downloader's own {STATE_DIR_NAME}/ directory")
    return parts


def check_layout(files: Sequence[RemoteFile]) -> list[str]:
    """Refuse unsafe keys and file/folder clashes; return warnings (names that differ only in case)."""
    files_by_path: dict[str, RemoteFile] = {}
    dirs: set[str] = set()
    for f in files:
        parts = safe_parts(f.key, f.rel_path)
        if f.rel_path in files_by_path:
            raise UnsafePathError(f.key, "two objects map to the same local path")
        files_by_path[f.rel_path] = f
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
    for d in sorted(dirs):
        if d in files_by_path:
            raise UnsafePathError(
                files_by_path[d].key, f"is both a file and a folder prefix ({d!r} and {d + '/...'!r})"
            )
    warnings = []
    seen: dict[str, str] = {}
    for path in files_by_path:
        folded = path.casefold()
        if folded in seen:
            warnings.append(
                f"{seen[folded]!r} and {path!r} differ only in case; "
                "on a case-insensitive filesystem one overwrites the other"
            )
        seen[folded] = path
    return warnings


# ------------------------------------------------------------------------------------------- skip rules


@dataclass(frozen=True)
class Plan:
    fetch: list[RemoteFile]
    skip: list[RemoteFile]

    @property
    def fetch_bytes(self) -> int:
        return sum(f.size for f in self.fetch)

    @property
    def skip_bytes(self) -> int:
        return sum(f.size for f in self.skip)


def is_complete_on_disk(f: RemoteFile, record: DoneRecord | None, local: LocalStat | None) -> bool:
    """A file is done when we recorded finishing this exact version and the local file still matches."""
    return (
        record is not None
        and local is not None
        and local.is_regular
        and record.version == f.version
        and record.size == f.size
        and local.size == f.size
        and local.mtime_ns == record.mtime_ns
    )


def plan_downloads(
    files: Sequence[RemoteFile],
    records: Mapping[str, DoneRecord],
    local: Mapping[str, LocalStat | None],
    *,
    force: bool,
) -> Plan:
    fetch: list[RemoteFile] = []
    skip: list[RemoteFile] = []
    for f in files:
        if not force and is_complete_on_disk(f, records.get(f.rel_path), local.get(f.rel_path)):
            skip.append(f)
        else:
            fetch.append(f)
    return Plan(fetch=fetch, skip=skip)


def check_free_space(path: str, needed: int, available: int, reserve: int) -> None:
    if needed + reserve > available:
        raise InsufficientSpaceError(path, needed, max(0, available - reserve), reserve)


# ----------------------------------------------------------------------------------------- range layout


@dataclass(frozen=True)
class ByteRange:
    index: int
    start: int
    end: int  # inclusive
    first_part: int = 0  # index of the first checksum part inside this range (composite checksums)

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def split_ranges(size: int, threshold: int, chunk: int, part_size: int | None = None) -> list[ByteRange]:
    """Byte ranges for one file.

    Below the threshold a file is one range. With a known checksum part size, every range covers whole
    parts (about `chunk` bytes each), so each part's digest is computed while its bytes stream past and
    no second read is needed.
    """
    if size == 0:
        return [ByteRange(0, 0, -1)]
    if size < threshold and part_size is None:
        return [ByteRange(0, 0, size - 1)]
    step = chunk
    parts_per_range = 1
    if part_size:
        parts_per_range = max(1, round(chunk / part_size))
        step = part_size * parts_per_range
    if size < threshold:
        step = max(step, size)
    out = []
    start = 0
    index = 0
    while start < size:
        end = min(size, start + step) - 1
        out.append(ByteRange(index, start, end, first_part=index * parts_per_range))
        start = end + 1
        index += 1
    return out
