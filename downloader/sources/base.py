"""The one small interface every storage backend implements: list, stat, open.

A backend lists the objects under a URI, states one object's current version and integrity facts, and opens a
body: a byte range or the whole of exactly the version seen at listing. Only backend modules import SDKs, and each
translates its SDK's failures once, into `downloader.errors` (chained with `from`): permanent ones (NotFoundError,
AccessDeniedError, ...), RetryableError (the engine retries) and ObjectChangedError (the file starts over). What a
backend does to be fast (a native client, requests signed by hand, several answers in flight) stays inside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Protocol


@dataclass(frozen=True)
class Checksum:
    """A checksum the source publishes for an object, read one way.

    `algorithm` is one of md5, sha1, sha256, crc32, crc32c, crc64nvme, git-sha1. `value` is the encoded digest as
    the source gives it (hex for S3 ETags, base64 for S3 additional checksums), without any `-N` part count. When
    `part_size` is set the value is read as a composite: the digest of the concatenated per-part digests, over
    parts of that size (the last one shorter), `parts` of them, the way S3 builds multipart ETags and COMPOSITE
    checksums; otherwise as the digest of the whole object.

    `declared` says whether that reading is the store's own word (an `x-amz-checksum-type` header, a `-N` part
    count, GetObjectAttributes, an algorithm with a single form, a single-part object) or only this program's
    guess (a bare value on a multipart object, a multipart ETag): a declared value that the bytes contradict fails
    the file; a guessed one that they contradict is a value this program cannot interpret (see verify.settle).
    `additional` marks S3's additional checksums (x-amz-checksum-*), which `--verify etag` leaves out.
    """

    algorithm: str
    value: str
    encoding: str  # "hex" or "base64"
    part_size: int | None = None
    parts: int | None = None
    declared: bool = True
    additional: bool = False

    @property
    def label(self) -> str:
        kind = f"composite of {self.parts} parts" if self.part_size else "full object"
        return f"{self.algorithm} ({kind})"

    @property
    def shown(self) -> str:
        """The value as the source published it, for messages and records."""
        return self.value + (f"-{self.parts}" if self.parts else "")


@dataclass(frozen=True)
class RemoteFile:
    """One object as listed. `version` pins every later read (ETag for S3)."""

    key: str
    rel_path: str
    size: int
    version: str  # ETag (quoted as served) or generation / commit
    version_id: str | None = None
    # The object's integrity facts when the listing carried them (GCS), so no stat() is needed for them.
    detail: ObjectDetail | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ObjectDetail:
    """What a HEAD-like call adds: the exact version to pin and the checksum to verify."""

    size: int
    version: str
    version_id: str | None
    checksums: tuple[Checksum, ...]  # every verifiable checksum published, most preferred first
    unverifiable: str | None = None  # why no checksum can be verified, for the manifest and logs
    # Published values this program cannot read (an unknown part size, a value of the wrong length, ...), each
    # named: the engine warns about them once per file and verifies with the next check.
    uninterpreted: tuple[str, ...] = ()


@dataclass(frozen=True)
class Span:
    """Bytes [start, end] of an object (inclusive)."""

    start: int
    end: int


class Body:
    """An open answer: the bytes asked for, read in order. `detail` is set when the answer itself carried the
    object's integrity facts (a whole-object GET), at the latest once the first bytes are read."""

    detail: ObjectDetail | None = None
    # Set when the source wrote the bytes into the caller's file itself (`landing_fd` of Source.open): what readinto
    # gives back is then read from that file, at the place the caller would have written it, for the caller to check
    # and count, not to write again.
    in_file: bool = False

    def readinto(self, buf: memoryview) -> int:  # pragma: no cover - interface
        """Bytes into `buf`; 0 at the end. RetryableError when the transfer breaks (what arrived is kept)."""
        raise NotImplementedError

    def copy_into(self, fd: int, offset: int, count: int) -> int | None:
        """Copy up to `count` bytes straight into `fd` at `offset` in the kernel; the number copied, or None when
        this body cannot (the engine then reads it). Asked only when no checksum has to see the bytes."""
        return None

    def close(self) -> None:  # pragma: no cover - interface
        """Done with it, read or not (a connection is kept or dropped accordingly)."""


def parse_retry_after(raw: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None when absent or bad."""
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class Source(Protocol):
    """A storage backend. Safe to call from many threads at once."""

    display_uri: str
    # How many whole-object bodies one worker may have open before it reads the first: more than 1 only where
    # open() returns before the answer is in (a native client with its own event loop), 1 where open() waits.
    open_ahead: int

    def list(self, cancel: threading.Event) -> Iterator[RemoteFile]:
        """Every object under the URI, with its path relative to the URI's prefix."""
        ...

    def stat(self, f: RemoteFile) -> ObjectDetail:
        """The object's current version and integrity facts (NotFoundError when it is gone). A version other than
        the listed one means the object changed since."""
        ...

    def open(
        self,
        f: RemoteFile,
        detail: ObjectDetail | None,
        span: Span | None,
        buffer: memoryview | None,
        landing_fd: int | None = None,
    ) -> Body:
        """Bytes `span` (None: the whole object) of exactly the listed version of `f` (ObjectChangedError when it
        changed). `buffer`, when given, is where the caller will read the body into: a backend that receives a
        whole answer at once may land it there. `landing_fd`, when given with a whole object, is the caller's file
        for it (open for reading and writing, through the page cache, written from offset 0): a backend whose native
        client writes a whole answer into a file itself may have it written there (Body.in_file)."""
        ...

    def close(self) -> None: ...
