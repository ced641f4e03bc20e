"""S3 and S3-compatible stores (tos://, MinIO, SeaweedFS, Ceph, R2, ...): list, stat and open over one transport.

The transport is this package's REST client (s3_rest.py: requests signed with SigV4 over the standard library's HTTP
client, no botocore on the way) or, with fast paths off, through a proxy, or for an S3 Express bucket, boto3's client
(s3_boto.py). Whole small objects may go through the AWS CRT's native client instead (s3_crt.py), several in flight
per worker. Every GET carries If-Match with the ETag seen at listing (and versionId when pinned), Content-Range and
Content-Length are checked, and a file that is one range is asked for whole, without a Range header: stores send
the object's checksum only then, and a CRC costs a fraction of the ETag's MD5 (s3_checksums.py reads them).

Failures are mapped once (`_error`): an S3 answer the engine acts on (412/416: the object changed; 429/5xx: retry)
and permanent ones (missing bucket or key, access denied) onto the downloader's error tree, chained to the cause.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

from .. import __version__
from ..config import S3Settings, VerifyMode
from ..errors import (
    AccessDeniedError,
    LocalStorageError,
    NotFoundError,
    ObjectChangedError,
    RetryableError,
    SourceError,
    TransferError,
)
from ..retry import backoff_delay
from ..uri import ModelUri
from .base import Body, ObjectDetail, RemoteFile, Span, parse_retry_after
from .s3_checksums import ChecksumType, Lookups, parts_count, read_detail
from .s3_crt import CrtGet, CrtGetter
from .s3_rest import error_fields
from .s3_transport import S3Error, S3Transport
from .sigv4 import Credentials

log = logging.getLogger(__name__)
T = TypeVar("T")

# GETs of small whole objects a worker has in flight through the CRT before it reads the first (the engine bounds
# the bytes they hold: transfer.whole_concurrency).
CRT_OPEN_AHEAD = 16
_THROTTLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "RequestThrottled",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
}
_NOT_UNDERSTOOD = {400, 405, 411, 501}  # statuses that speak of the request's form, not of the object
_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
_NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from a Secret, "
    "or give the pod a role (IRSA / pod identity / instance profile)"
)
USER_AGENT = f"aibrix-download rest/{__version__}"  # the REST transport's (the CRT's names the CRT)


class S3Source:
    def __init__(
        self,
        uri: ModelUri,
        s3: S3Settings,
        *,
        connections: int,
        stall_timeout: float,
        max_attempts: int,
        verify: VerifyMode,
        fast_paths: bool,
        cancel: threading.Event,
    ) -> None:
        self.uri = uri
        self.bucket = uri.bucket
        self.display_uri = uri.display
        self._verify = verify
        self._max_attempts = max_attempts
        self._cancel = cancel
        self._lock = threading.Lock()
        self._part_sizes: dict[tuple[str, str], int | None] = {}
        self._attributes: dict[tuple[str, str], tuple[ChecksumType | None, int | None]] = {}
        self._lookups = Lookups(self._part_size, self._object_attributes)
        self._crt: CrtGetter | None = None
        self._landing = True  # whether the CRT may write bodies into the engine's files (see _stop_landing)
        self.transport: S3Transport
        static = (
            Credentials(
                s3.access_key.reveal(), s3.secret_key.reveal(), s3.session_token.reveal() if s3.session_token else None
            )
            if s3.access_key and s3.secret_key
            else None
        )
        connect_timeout = min(10.0, stall_timeout)
        why_not = _why_not_rest(self.bucket, s3, fast_paths)
        if why_not is None:
            self.transport = self._rest_transport(s3, static, connect_timeout, stall_timeout, connections)
        else:
            log.debug("S3 through boto3's client: %s", why_not)
            from .s3_boto import BotoTransport  # botocore is imported only when it is used

            self.transport = self._translated(
                "setting up the S3 client",
                None,
                lambda: BotoTransport(
                    self.bucket,
                    endpoint_url=s3.endpoint_url,
                    region=s3.region or ("us-east-1" if s3.endpoint_url else None),
                    credentials=static,
                    addressing_style=s3.addressing_style,
                    connections=connections,
                    connect_timeout=connect_timeout,
                    read_timeout=stall_timeout,
                ),
            )
        self.open_ahead = CRT_OPEN_AHEAD if self._crt is not None else 1

    def _rest_transport(
        self, s3: S3Settings, static: Credentials | None, connect_timeout: float, stall_timeout: float, connections: int
    ) -> S3Transport:
        from .s3_rest import S3Rest, build_endpoint

        region = s3.region
        credentials: Callable[[], Credentials] | None = (lambda: static) if static is not None else None
        if credentials is None or region is None:
            # What only botocore knows: its credential chain (web identity, profiles, container and instance
            # credentials) and the region of the shared config file.
            from .s3_boto import botocore_session, chain_credentials, configured_region

            session = botocore_session(region)
            if credentials is None:
                credentials = chain_credentials(session) or _no_credentials(self.display_uri)
            region = region or configured_region(session)
        region = region or "us-east-1"
        endpoint = build_endpoint(self.bucket, s3.endpoint_url, region, s3.addressing_style)
        rest = S3Rest(
            endpoint,
            credentials,
            connect_timeout=connect_timeout,
            read_timeout=stall_timeout,
            ca_bundle=s3.ca_bundle,
            user_agent=USER_AGENT,
        )
        if s3.crt:
            self._crt = CrtGetter.create(
                endpoint.base_url,
                region,
                credentials,
                ca_bundle=s3.ca_bundle,
                connections=connections,
                stall_timeout=stall_timeout,
            )
        return rest

    # ---------------------------------------------------------------------------------------- listing
    def list(self, cancel: threading.Event) -> Iterator[RemoteFile]:
        prefix = self.uri.prefix
        dir_prefix = prefix.rstrip("/") + "/" if prefix else ""
        found = False
        token: str | None = None
        while True:
            page = self._control("listing", None, lambda t=token: self.transport.list_page(dir_prefix, t))  # type: ignore[misc]
            for key, size, etag in page.objects:
                if key.endswith("/") and size == 0:
                    continue  # folder marker
                found = True
                yield RemoteFile(key=key, rel_path=key[len(dir_prefix) :], size=size, version=etag)
            if cancel.is_set() or page.next_token is None:
                break
            token = page.next_token
        if found or not prefix or prefix.endswith("/") or cancel.is_set():
            return
        # s3://bucket/path/file.json names a single object.
        try:
            answer = self._control("HEAD", prefix, lambda: self.transport.head(prefix, (), {}))
        except NotFoundError:
            return
        yield RemoteFile(
            key=prefix,
            rel_path=prefix.rsplit("/", 1)[-1],
            size=int(answer.headers.get("content-length", "0")),
            version=answer.headers.get("etag", ""),
        )

    def _control(self, what: str, key: str | None, fn: Callable[[], T]) -> T:
        """A listing page or a lookup around it, retried here (--max-attempts in all, the first one included)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._translated(what, key, fn)
            except RetryableError as exc:
                if attempt >= self._max_attempts:
                    subject = ("prefix", self.display_uri) if key is None else ("object", key)
                    raise TransferError(
                        subject[1], f"{what} failed: {exc}", attempts=attempt, subject=subject[0]
                    ) from exc
                delay = backoff_delay(attempt, exc.retry_after, exc.kind)
                log.warning("%s of %s failed (%s); retrying in %.1fs", what, key or self.display_uri, exc, delay)
                if self._cancel.wait(delay):
                    raise
            except ObjectChangedError as exc:
                raise SourceError(self.display_uri, f"{what}: {exc}", key=key) from exc

    def _translated(self, what: str, key: str | None, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except S3Error as exc:
            raise self._error(exc, key, what) from exc

    # ------------------------------------------------------------------------------------- integrity
    def stat(self, f: RemoteFile) -> ObjectDetail:
        query = [("versionId", f.version_id)] if f.version_id else []
        answer = self._translated(
            "HEAD", f.key, lambda: self.transport.head(f.key, query, {"x-amz-checksum-mode": "ENABLED"})
        )
        return read_detail(f, answer.headers, self._verify, self._lookups)

    def _part_size(self, f: RemoteFile, parts: int | None) -> int | None:
        """Size of part 1 from HEAD ?partNumber=1, when all parts but the last have that size."""
        cache_key = (f.key, f.version)
        with self._lock:
            if cache_key in self._part_sizes:
                return self._part_sizes[cache_key]
        part_size: int | None = None
        try:
            # No If-Match here: some S3-compatible servers compare it with the part's ETag. The version is pinned on
            # every GET anyway; a wrong part size only makes verification fail, never pass.
            answer = self.transport.head(f.key, [("partNumber", "1")], {})
            size1 = int(answer.headers.get("content-length", "0"))
            count = int(answer.headers.get("x-amz-mp-parts-count") or parts or 0)
            if size1 > 0 and count and count == parts_count(f.size, size1):
                part_size = size1
        except (S3Error, RetryableError, ValueError) as exc:
            log.debug("%s: no part size (%s)", f.key, exc)
        with self._lock:
            self._part_sizes[cache_key] = part_size
        return part_size

    def _object_attributes(self, f: RemoteFile) -> tuple[ChecksumType | None, int | None]:
        """(ChecksumType, parts) from GetObjectAttributes; (None, None) when the store does not answer it (not every
        S3-compatible store has it, and a role may lack s3:GetObjectAttributes): the value then stays a guess."""
        cache_key = (f.key, f.version)
        with self._lock:
            if cache_key in self._attributes:
                return self._attributes[cache_key]
        try:
            kind, parts = self.transport.attributes(f.key, f.version_id)
            found = (ChecksumType(kind.upper()) if kind else None, parts)
        except (S3Error, RetryableError, ValueError) as exc:
            log.debug("%s: no object attributes (%s)", f.key, exc)
            found = (None, None)
        with self._lock:
            self._attributes[cache_key] = found
        return found

    # ---------------------------------------------------------------------------------------- reading
    def open(
        self,
        f: RemoteFile,
        detail: ObjectDetail | None,
        span: Span | None,
        buffer: memoryview | None,
        landing_fd: int | None = None,
    ) -> Body:
        size = detail.size if detail else f.size
        whole = span is None or (span.start == 0 and span.end == size - 1)
        start, end = (0, size - 1) if span is None else (span.start, span.end)
        version = detail.version if detail else f.version
        version_id = detail.version_id if detail else f.version_id
        query = [("versionId", version_id)] if version_id else []
        crt = self._crt
        if crt is not None and whole and buffer is not None and 0 < size <= len(buffer):
            landing_fd = landing_fd if self._landing else None
            try:
                get = crt.start(
                    f.key, query, {"If-Match": version, "x-amz-checksum-mode": "ENABLED"}, buffer, landing_fd
                )
            except Exception as exc:  # awscrt's own error types: the request was not taken
                if landing_fd is not None:
                    self._stop_landing(f"the CRT could not open the file ({exc})")
                raise RetryableError("connection", f"the CRT did not take the request: {exc}") from exc
            return _CrtBody(self, crt, f, get, buffer, landing_fd if get.in_file else None)
        headers = {"If-Match": version}
        if whole:
            headers["x-amz-checksum-mode"] = "ENABLED"
        elif size > 0:
            headers["Range"] = f"bytes={start}-{end}"
        answer = self._translated("GET", f.key, lambda: self.transport.get(f.key, query, headers))
        assert answer.body is not None
        problem = _body_mismatch(answer.headers, start, end, size)
        if problem is not None:
            answer.body.close()
            raise problem
        if whole and detail is None:
            answer.body.detail = read_detail(f, answer.headers, self._verify, self._lookups)
        return answer.body

    def _crt_answer(
        self, crt: CrtGetter, f: RemoteFile, get: CrtGet, landing_fd: int | None
    ) -> tuple[int, ObjectDetail]:
        """A CRT GET's outcome: its length and what its headers say of the object once it is in and checked, or the
        failure it stands for. `landing_fd`: the file the CRT wrote the body into, if it did."""
        try:
            resp = crt.finish(get, self._cancel)
        except RetryableError as exc:
            if exc.kind == "landing":
                self._stop_landing(str(exc))
            if exc.kind == "tls" and self._crt is crt:
                self._crt = None  # a TLS setup the CRT's does not have: the REST transport's from now on
                log.info("the CRT's TLS failed (%s); every GET goes through the REST transport", exc)
            raise
        if resp.status != 200:
            code, message = error_fields(resp.error_body)
            failure = self._error(S3Error(resp.status, code, message, resp.headers), f.key, "GET")
            if resp.status in _NOT_UNDERSTOOD:
                # An answer to how the CRT formed the request (a store that takes the REST transport's requests but
                # not the CRT's): every later GET goes through the REST transport, starting with this one's retry.
                if self._crt is crt:
                    self._crt = None
                    log.info(
                        "the CRT's GET got HTTP %d (%s); every GET goes through the REST transport",
                        resp.status,
                        failure,
                    )
                raise RetryableError("crt-declined", f"HTTP {resp.status} to the CRT's request") from failure
            raise failure
        problem = _body_mismatch(resp.headers, 0, f.size - 1, f.size)
        length = resp.length if landing_fd is None else _file_size(landing_fd, f)
        if problem is None and length != f.size:
            problem = RetryableError("bad-length", f"{length} bytes for {f.size}")
            if landing_fd is not None:
                # The store said the size it should; the file has another (a write the CRT could not finish).
                self._stop_landing(f"the file the CRT wrote has {length} bytes for {f.size}")
        if problem is not None:
            raise problem
        return f.size, read_detail(f, resp.headers, self._verify, self._lookups)

    def _stop_landing(self, why: str) -> None:
        """Bodies go into the engine's buffers from now on, where the engine's own writes say what the disk does."""
        if self._landing:
            self._landing = False
            log.info("%s; the CRT's bodies go through memory from now on", why)

    def close(self) -> None:
        if self._crt is not None:
            self._crt.close()
        self.transport.close()

    # ---------------------------------------------------------------------------------------- errors
    def _error(self, exc: S3Error, key: str | None, what: str) -> Exception:
        status, code = exc.status, exc.code
        reason = f"{what}: {code or status}" + (f" ({exc.message})" if exc.message else "")
        if code == "NoCredentials":
            return AccessDeniedError(self.display_uri, _NO_CREDENTIALS, key=key)
        if status == 412 or code == "PreconditionFailed":
            return ObjectChangedError(key or self.display_uri, "ETag no longer matches (If-Match failed)")
        if status == 416 or code == "InvalidRange":
            return ObjectChangedError(key or self.display_uri, "requested range is no longer valid")
        if status in (429, 500, 502, 503, 504) or code in _THROTTLE_CODES:
            kind = (
                "throttled"
                if status in (429, 503) or code in ("SlowDown", "Throttling", "TooManyRequests")
                else "server-error"
            )
            return RetryableError(
                kind, f"HTTP {status} {code}".strip(), retry_after=parse_retry_after(exc.headers.get("retry-after"))
            )
        if code == "NoSuchBucket":
            return NotFoundError(self.display_uri, f"bucket {self.bucket!r} does not exist")
        if status == 404 or code in ("NoSuchKey", "NotFound"):
            return NotFoundError(self.display_uri, reason, key=key)
        if status in (401, 403) or code in _AUTH_CODES:
            if code == "SignatureDoesNotMatch":
                reason += "; check the secret key (a store that takes boto3's requests but not these: --fast-paths off)"
            return AccessDeniedError(self.display_uri, reason, key=key)
        return SourceError(self.display_uri, reason, key=key)


def _why_not_rest(bucket: str, s3: S3Settings, fast_paths: bool) -> str | None:
    """Why the REST transport cannot carry this source (boto3's does), or None when it can."""
    if not fast_paths:
        return "--fast-paths off"
    if s3.proxied:
        return "a proxy is set (HTTPS_PROXY, HTTP_PROXY or ALL_PROXY)"
    if bucket.endswith("--x-s3"):
        return "an S3 Express bucket (sessions of its own)"
    return None


def _no_credentials(uri: str) -> Callable[[], Credentials]:
    def missing() -> Credentials:
        raise AccessDeniedError(uri, _NO_CREDENTIALS)

    return missing


class _CrtBody(Body):
    """A whole small object through the CRT: in flight from open() on; the first read waits for it. The CRT puts the
    body into the caller's buffer, or into the caller's file (`landing_fd`), from where reads take it back."""

    def __init__(
        self, source: S3Source, crt: CrtGetter, f: RemoteFile, get: CrtGet, landing: memoryview, landing_fd: int | None
    ) -> None:
        self._source = source
        self._crt = crt
        self._f = f
        self._get: CrtGet | None = get
        self._landing = landing
        self._landing_fd = landing_fd
        self.in_file = landing_fd is not None
        self._length: int | None = None
        self._pos = 0

    def readinto(self, buf: memoryview) -> int:
        if self._length is None:
            get, self._get = self._get, None
            assert get is not None
            self._length, self.detail = self._source._crt_answer(self._crt, self._f, get, self._landing_fd)
        n = min(len(buf), self._length - self._pos)
        if n <= 0:
            return 0
        if self._landing_fd is not None:
            try:
                n = os.preadv(self._landing_fd, [buf[:n]], self._pos)
            except OSError as exc:
                raise LocalStorageError(self._f.rel_path, f"reading back what the CRT wrote: {exc.strerror}") from exc
            if n <= 0:
                raise RetryableError("truncated", f"the file ends at byte {self._pos} of {self._length}")
        else:
            buf[:n] = self._landing[self._pos : self._pos + n]  # the same memory when the caller reads into `landing`
        self._pos += n
        return n

    def close(self) -> None:
        get, self._get = self._get, None
        if get is not None:
            self._crt.abandon(get)  # never read: nothing may write into the buffer or the file after this


def _file_size(fd: int, f: RemoteFile) -> int:
    try:
        return os.fstat(fd).st_size
    except OSError as exc:
        raise LocalStorageError(f.rel_path, f"the file the CRT wrote: {exc.strerror}") from exc


def _body_mismatch(headers: Mapping[str, str], start: int, end: int, size: int) -> RetryableError | None:
    """Why the answer to a GET of bytes [start, end] does not carry exactly those bytes; None when it does.

    A whole object is asked for without a Range (stores send its checksum only then): 200, and either no
    Content-Range or the full one. A range must come back as exactly that range.
    """
    expected = f"bytes {start}-{end}/{size}"
    whole = start == 0 and end == size - 1
    content_range = headers.get("content-range")
    if size > 0 and content_range != expected and not (whole and content_range is None):
        return RetryableError("bad-content-range", f"asked for {expected}, server sent {content_range!r}")
    length = headers.get("content-length")
    if length is None or not length.isdigit() or int(length) != end - start + 1:
        return RetryableError("bad-length", f"Content-Length {length} for {end - start + 1} bytes")
    return None
