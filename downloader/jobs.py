"""What the transfer engine keeps per file and per attempt, and the choices it makes from an object's facts:
which checksum to verify and how (Strategy), and how many whole-file GETs to have in flight."""

from __future__ import annotations

import contextlib
import enum
import os
import threading
from dataclasses import dataclass, field

from . import verify
from .config import VerifyMode
from .plan import ByteRange
from .sources.base import Checksum, ObjectDetail, RemoteFile
from .state import clear_direct

# When every file comes whole through a native client (see Engine.run, whole_concurrency): the most GETs a worker
# sends at once; the GETs in flight per connection (the client queues those beyond its connection cap); the
# bodies in flight, counted in read buffers (each GET holds a buffer of ours from its start and, while it arrives,
# the client's copy of the body as well): a budget that does not grow with the connection count, so neither does
# peak memory; and the fewest workers (one writes while the GETs of the others are in flight).
WHOLE_DEPTH = 16
WHOLE_PER_CONNECTION = 3
WHOLE_BUDGET_BUFFERS = 24
WHOLE_MIN_WORKERS = 3


class Strategy(str, enum.Enum):
    """How a file's checksum is verified."""

    STREAM = "stream"  # part digests computed while the bytes stream, combined as the source did
    COMBINE = "combine"  # one CRC per range while streaming, combined mathematically at the end
    REREAD = "reread"  # a full second read of the file at the end
    SIZE = "size"  # no checksum to verify: the size only

    @property
    def while_streaming(self) -> bool:
        return self in (Strategy.STREAM, Strategy.COMBINE)


@dataclass
class Attempt:
    """One try at one file: its temp file, its ranges and which of them are done."""

    token: str
    temp: str
    fd: int
    ranges: list[ByteRange]
    journaled: bool
    done: dict[int, list[str]] = field(default_factory=dict)
    inflight: int = 0
    abandoned: bool = False
    closed: bool = False
    dfd: int = -1  # the same file opened with O_DIRECT, while `direct`; `fd` itself for a one-range file
    direct: bool = False
    mtime_ns: int | None = None  # after the last write, from the descriptor
    page_cache_writes: threading.Lock = field(default_factory=threading.Lock)  # see _write

    def buffered_fd(self) -> int:
        """`fd`, for what needs the page cache (an unaligned write, an in-kernel copy, a read): a one-range file's
        only descriptor has O_DIRECT taken off it first, for good."""
        if self.dfd == self.fd and self.direct:
            clear_direct(self.fd)
            self.direct = False
        return self.fd

    def close(self) -> None:
        for fd in (self.fd, self.dfd) if self.dfd != self.fd else (self.fd,):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


@dataclass
class Cursor:
    """Where a range's transfer stands: the next offset to write, and the digest of the bytes before it."""

    pos: int
    hasher: verify.RangeHasher | None


@dataclass
class Finished:
    """A verified file waiting for its name."""

    job: Job
    attempt: Attempt
    verified: str
    checksum: str | None


@dataclass
class Job:
    f: RemoteFile
    parts: tuple[str, ...]
    detail: ObjectDetail | None = None
    checksum: Checksum | None = None
    strategy: Strategy = Strategy.SIZE
    attempt: Attempt | None = None
    restarts: int = 0
    integrity_failures: int = 0
    mismatch: str | None = None  # what the first check computed over the bytes of a fetch that failed it
    resumed: bool = False


def same_version(a: str, b: str) -> bool:
    """Whether two version strings name one version (ETags come quoted from some answers and bare from others)."""
    return a.strip('"') == b.strip('"')


def usable_checksums(detail: ObjectDetail, mode: VerifyMode) -> list[Checksum]:
    """The published checksums --verify lets count and this build can compute, most preferred first."""
    if mode is VerifyMode.SIZE:
        return []
    return [
        c for c in detail.checksums if verify.supported(c.algorithm) and not (mode is VerifyMode.ETAG and c.additional)
    ]


def choose_checksum(
    detail: ObjectDetail, multi_range: bool, mode: VerifyMode = VerifyMode.STRICT
) -> tuple[Checksum | None, Strategy]:
    """Pick the checksum to verify and how: prefer one computed while streaming over a second full read."""
    usable = usable_checksums(detail, mode)
    if not usable:
        return None, Strategy.SIZE
    if not multi_range:
        return usable[0], Strategy.STREAM
    for c in usable:  # cheapest first
        if c.part_size:
            return c, Strategy.STREAM  # per-part digests while streaming, combined as the source did
        if c.algorithm in verify.COMBINABLE:
            return c, Strategy.COMBINE  # one CRC per range while streaming, combined mathematically
    return usable[0], Strategy.REREAD


def whole_concurrency(connections: int, slot: int, budget: int) -> tuple[int, int]:
    """(GETs each worker sends at once, workers) for whole-file GETs of up to `slot` bytes over `connections`
    connections: up to WHOLE_PER_CONNECTION GETs per connection, with our `slot` per GET in flight plus the
    client's copy of each body arriving (one per busy connection) within `budget` bytes, but at least one GET;
    and at least WHOLE_MIN_WORKERS workers where there are that many GETs, so that one writes while the GETs of
    the others are in flight."""
    bodies = budget // slot
    gets = max(1, min(WHOLE_PER_CONNECTION * connections, max(bodies - connections, bodies // 2)))
    workers = max(min(WHOLE_MIN_WORKERS, gets), -(-gets // WHOLE_DEPTH))
    return gets // workers, workers
