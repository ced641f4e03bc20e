"""The one small interface every storage backend implements.

A backend lists objects, describes one object's integrity facts, and opens a byte range pinned to the
version seen at listing time. Only backend modules import SDKs; they translate SDK exceptions into
`downloader.errors` (permanent) or `RetryableError` / `ObjectChangedError` (handled by the engine).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Protocol


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


@dataclass
class RangeReader:
    """An open response body for bytes [start, end] of one object version."""

    start: int
    end: int  # inclusive
    detail: ObjectDetail | None = None  # filled when the response itself carries integrity facts
    _closed: bool = field(default=False, repr=False)

    def readinto(self, buf: memoryview) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def copy_into(self, fd: int, offset: int, count: int) -> int | None:
        """Copy up to `count` bytes straight into `fd` at `offset` in the kernel (copy_file_range).

        Returns the number of bytes copied, or None when this reader cannot (the engine then uses readinto).
        Used only when no checksum has to see the bytes.
        """
        return None

    def close(self) -> None:  # pragma: no cover - interface
        self._closed = True


def direct_body(resp: Any) -> http.client.HTTPResponse | None:
    """The stdlib response under a urllib3 one, to read a body straight into the engine's buffer.

    urllib3's readinto() reads into a fresh bytes object and copies it out: two copies and an allocation per
    chunk, a large share of the client's CPU on a fast link. The stdlib response reads from the socket into the
    caller's buffer. urllib3 still sends the request and owns the connection: a reader that used this must call
    the urllib3 response's release_conn() once the body is read to its end. None when there is no such
    response, or when urllib3 would decode the body (a content-encoding), so the bytes would differ.
    """
    fp = getattr(resp, "_fp", None)
    if not isinstance(fp, http.client.HTTPResponse) or not callable(getattr(resp, "release_conn", None)):
        return None
    headers = getattr(resp, "headers", None)
    encoding = headers.get("content-encoding", "") if headers is not None else ""
    return fp if encoding.strip().lower() in ("", "identity") else None


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


# One object of Source.fetch_whole: (its detail, its length), the failure to retry or act on, or None.
Whole = tuple[ObjectDetail, int] | Exception | None
Wholes = Generator[Whole, None, None]  # what Source.fetch_whole yields, one per object asked for


class NoNativeWhole:
    """Source.fetch_whole for a source without a native client: it declines every object, so every read goes
    through open_range."""

    native_whole = False

    def fetch_whole(self, items: Sequence[tuple[RemoteFile, memoryview]], halt: threading.Event) -> Wholes:
        yield from [None] * len(items)


class Source(Protocol):
    """A storage backend. Implementations must be safe to call from many threads at once."""

    display_uri: str

    def list(self, cancel: threading.Event) -> Iterator[RemoteFile]:
        """Every object under the URI, with its path relative to the URI's prefix."""
        ...

    def describe(self, f: RemoteFile) -> ObjectDetail:
        """Integrity facts of one object, pinned to the listed version."""
        ...

    def refresh(self, f: RemoteFile) -> RemoteFile | None:
        """The object's current version (after it changed under us), or None if it is gone."""
        ...

    def open_range(self, f: RemoteFile, detail: ObjectDetail | None, start: int, end: int) -> RangeReader:
        """Bytes [start, end] (inclusive) of exactly the listed version of `f`."""
        ...

    @property
    def native_whole(self) -> bool:
        """Whether fetch_whole has a path of its own (a native client) for objects that fit in a buffer."""
        ...

    def fetch_whole(self, items: Sequence[tuple[RemoteFile, memoryview]], halt: threading.Event) -> Wholes:
        """Each listed object version, whole, into the start of its buffer, in one request of the source's own
        (a native client), all of them in flight at once; the answers come in the order of `items`, each as soon
        as it is in (closing the generator early cancels the rest and waits for them). Per item: what the
        response says about the object and the number of bytes (its size); the exception open_range would have
        raised (RetryableError, ObjectChangedError); or None, with nothing fetched, when the source has no such
        path for that object (the caller then reads it through open_range). Other failures raise.
        """
        ...

    def close(self) -> None: ...
