"""What the S3 backend asks of a transport, and the two shapes its answers come in.

Two transports speak S3 for the backend (s3.py): the REST client of this package (s3_rest.py, signed requests over
the standard library's HTTP client: the fast one) and boto3's client (s3_boto.py: every feature of the SDK, through
its public API). Both return raw HTTP answers: status, headers with lowercased names, a body to read. An answer the
backend must interpret (404, 403, 412, 503, ...) comes back as S3Error; a failure to connect or to read is a
RetryableError. The backend maps both onto the downloader's error tree, once (S3Source._error).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .base import Body


class S3Error(Exception):
    """A non-2xx answer: its status, the error document's Code and Message (empty for a HEAD), its headers."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status} {code}".strip() + (f" ({message})" if message else ""))
        self.status = status
        self.code = code
        self.message = message
        self.headers: Mapping[str, str] = headers or {}


@dataclass(frozen=True)
class ListPage:
    objects: list[tuple[str, int, str]]  # (key, size, ETag as served)
    next_token: str | None


@dataclass
class Answer:
    """A 2xx answer to a HEAD or GET: its headers (names lowercased) and, for a GET, its body."""

    status: int
    headers: Mapping[str, str]
    body: Body | None = field(default=None)


class S3Transport(Protocol):
    """S3 operations on one bucket. Thread-safe."""

    name: str  # for logs: "rest" or "boto3"

    def list_page(self, prefix: str, token: str | None) -> ListPage: ...

    def head(self, key: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str]) -> Answer: ...

    def get(self, key: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str]) -> Answer: ...

    def attributes(self, key: str, version_id: str | None) -> tuple[str | None, int | None]:
        """(ChecksumType, TotalPartsCount) from GetObjectAttributes; S3Error when the store refuses it."""
        ...

    def close(self) -> None: ...
