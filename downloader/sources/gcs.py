"""Google Cloud Storage (gs://) through google-cloud-storage.

The storage client is the control plane: credentials (google-auth's Application Default Credentials, or
anonymous access to an emulator), listing with pagination, object metadata. Reads are streaming GETs of the
JSON API media URL through the client's own authorized session (requests), one per range, pinned to the
object generation seen at listing, so bytes go from the socket into the engine's buffer and memory stays
bounded whatever the object size. Content-Range, Content-Length and x-goog-generation are checked on every
response. The SDK's own download helpers are not used for data: they write into a file object and retry on
their own, while the engine needs a reader it can drain into its buffer, and retries and resumes each range
itself.

No google, requests or urllib3 exception leaves this module: everything is translated into
`downloader.errors` (permanent) or `RetryableError` / `ObjectChangedError` (handled by the engine).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

import google.auth.exceptions as gauth_exc
import requests
import requests.adapters
import urllib3.exceptions
from google.api_core import exceptions as gapi_exc
from google.api_core import retry as gapi_retry
from google.auth.credentials import AnonymousCredentials as _AnonymousCredentials
from google.cloud import storage

from ..config import GcsSettings
from ..errors import (
    AccessDeniedError,
    DownloaderError,
    NotFoundError,
    ObjectChangedError,
    RetryableError,
    SourceError,
    TransferError,
)
from ..uri import ModelUri
from .base import Body, Checksum, ObjectDetail, RemoteFile, Span, parse_retry_after

log = logging.getLogger(__name__)

T = TypeVar("T")
_ANONYMOUS: Any = _AnonymousCredentials

# Only these fields are fetched when listing: a 100k-object bucket lists in a fraction of the full payload.
_LIST_FIELDS = "items(name,size,generation,crc32c,md5Hash,contentEncoding),nextPageToken"
_PAGE_SIZE = 1000
_CONTROL_RETRY_SECONDS = 60.0
_CONTROL_ATTEMPTS = 6  # listing and metadata calls, like botocore's standard mode for S3
_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
_NO_CREDENTIALS = (
    "no Google Cloud credentials found: use workload identity, or set GOOGLE_APPLICATION_CREDENTIALS to a "
    "service-account key file mounted from a Secret (or STORAGE_EMULATOR_HOST for an emulator)"
)


class GcsSource:
    open_ahead = 1

    def __init__(self, uri: ModelUri, gcs: GcsSettings, *, connections: int, stall_timeout: float) -> None:
        self.uri = uri
        self.bucket = uri.bucket
        self.display_uri = uri.display
        self._emulator = bool(gcs.emulator_host)
        self._read_timeout = stall_timeout  # a socket read idle this long = a stalled range
        self._connect_timeout = min(10.0, stall_timeout)
        self._control_timeout = (self._connect_timeout, max(30.0, stall_timeout))
        options: dict[str, Any] = {}
        credentials: Any = None
        if gcs.emulator_host:
            endpoint = gcs.emulator_host.strip().rstrip("/")
            if "://" not in endpoint:
                endpoint = "http://" + endpoint  # the Go SDK and gsutil accept host:port
            options["api_endpoint"] = endpoint
            credentials = _ANONYMOUS()
        try:
            self._client: Any = storage.Client(
                project=gcs.project, credentials=credentials, client_options=options or None
            )
            # google-cloud-storage 3.x looks bucket metadata up (buckets.get) in a background thread on the first
            # list/get, for its tracing attributes. A reader that only holds objects.get/list would see a 403 land
            # in the audit log for nothing; without the cache the client skips the lookup.
            if getattr(self._client, "_bucket_metadata_cache", None) is not None:
                self._client._bucket_metadata_cache = None
            session: Any = self._client._http  # the client's requests-based AuthorizedSession
            connection: Any = self._client._connection
            base = getattr(connection, "get_api_base_url_for_mtls", None)
            self._base_url = str(base() if base is not None else connection.API_BASE_URL).rstrip("/")
        except gauth_exc.DefaultCredentialsError as exc:
            raise _credentials_error(self.display_uri, exc, None) from None
        except (gauth_exc.GoogleAuthError, ValueError, TypeError, OSError) as exc:
            raise SourceError(self.display_uri, f"cannot set up the GCS client: {_short(exc)}") from None
        if not getattr(session, "is_mtls", False):
            # One pool big enough for every range in flight (requests' default keeps 10 and discards the rest).
            # The engine retries each range itself: no retries in the transport.
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=connections + 4, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        self._session: Any = session
        self._bucket: Any = self._client.bucket(self.bucket)
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------------- listing
    def list(self, cancel: threading.Event) -> Iterator[RemoteFile]:
        prefix = self.uri.prefix
        dir_prefix = prefix.rstrip("/") + "/" if prefix else ""
        found = False
        attempts = _Attempts()
        pages = self._control(
            "listing",
            None,
            attempts,
            lambda: (
                self._client.list_blobs(
                    self._bucket,
                    prefix=dir_prefix or None,
                    fields=_LIST_FIELDS,
                    page_size=_PAGE_SIZE,
                    timeout=self._control_timeout,
                    retry=self._list_retry(attempts),
                ).pages
            ),
        )
        while True:
            page = self._control("listing", None, attempts, lambda: next(pages, None))
            if page is None:
                break
            for blob in self._control("listing", None, attempts, functools.partial(_page_items, page)):
                name = str(blob.name)
                if name.endswith("/"):
                    continue  # a folder placeholder (console "create folder", gcsfuse, ...)
                found = True
                yield self._remember(blob, rel_path=name[len(dir_prefix) :])
            if cancel.is_set():
                return
        if found or not prefix or prefix.endswith("/"):
            return
        # gs://bucket/path/file.json names a single object.
        blob = self._control("reading metadata", prefix, attempts, lambda: self._get_blob(prefix, retrying=True))
        if blob is not None:
            yield self._remember(blob, rel_path=prefix.rsplit("/", 1)[-1])

    def _remember(self, blob: Any, rel_path: str) -> RemoteFile:
        detail = _detail_from_blob(blob)
        if "gzip" in str(blob.content_encoding or "").lower():
            log.warning(
                "%s is stored gzip-compressed (Content-Encoding: gzip); it is fetched as stored, still compressed",
                blob.name,
            )
        # A generation's bytes and checksums never change: the listing's facts serve the engine, no stat() needed.
        return RemoteFile(
            key=str(blob.name), rel_path=rel_path, size=detail.size, version=detail.version, detail=detail
        )

    def _list_retry(self, attempts: _Attempts) -> Any:
        def on_error(exc: BaseException) -> None:
            if attempts.count >= _CONTROL_ATTEMPTS:
                raise exc  # the S3 control plane's budget too: give up now, not after a minute of retries
            attempts.count += 1
            log.warning("%s: %s; retrying (attempt %d)", self.display_uri, _brief(exc), attempts.count)

        return gapi_retry.Retry(
            predicate=_control_retryable,
            initial=0.5,
            maximum=10.0,
            multiplier=2.0,
            timeout=_CONTROL_RETRY_SECONDS,
            on_error=on_error,
        )

    # ------------------------------------------------------------------------------------- integrity
    def stat(self, f: RemoteFile) -> ObjectDetail:
        blob = self._call(f.key, lambda: self._get_blob(f.key))
        if blob is None:
            if not self._bucket_exists(f.key):
                raise NotFoundError(self.display_uri, f"bucket {self.bucket!r} does not exist")
            raise NotFoundError(self.display_uri, "no such object", key=f.key)
        return _detail_from_blob(blob)

    def _get_blob(self, name: str, *, generation: int | None = None, retrying: bool = False) -> Any:
        """Object metadata, or None when the object (or that generation, or the bucket) does not exist."""
        return self._bucket.get_blob(
            name,
            generation=generation,
            timeout=self._control_timeout,
            retry=self._list_retry(_Attempts()) if retrying else None,
        )

    def _raise_missing(self, f: RemoteFile, generation: int) -> NoReturn:
        """A 404 for the pinned generation: the object was replaced or deleted, or the bucket is gone."""
        current = self._call(f.key, lambda: self._get_blob(f.key))
        if current is not None:
            now = str(current.generation)
            if now != str(generation):
                raise ObjectChangedError(f.key, f"generation {generation} is gone; the object is now generation {now}")
            raise RetryableError("server-error", f"HTTP 404 for generation {generation}, which still exists")
        if not self._bucket_exists(f.key):
            raise NotFoundError(self.display_uri, f"bucket {self.bucket!r} does not exist")
        raise ObjectChangedError(f.key, f"generation {generation} is gone; the object was deleted")

    def _bucket_exists(self, key: str) -> bool:
        """Asked with objects.list (which listing needed anyway), not buckets.get (which readers may lack)."""

        def probe() -> bool:
            try:
                blobs = self._client.list_blobs(
                    self._bucket, max_results=1, fields="items(name)", timeout=self._control_timeout, retry=None
                )
                for _ in blobs:
                    break
            except gapi_exc.NotFound:
                return False
            return True

        return self._call(key, probe)

    # ---------------------------------------------------------------------------------------- reading
    def open(self, f: RemoteFile, detail: ObjectDetail | None, span: Span | None, buffer: memoryview | None) -> Body:
        size = detail.size if detail else f.size
        pinned = detail.version if detail else f.version
        generation = _generation(self.display_uri, f, pinned)
        start, end = (0, size - 1) if span is None else (span.start, span.end)
        whole = start == 0 and end == size - 1
        url = (
            f"{self._base_url}/download/storage/v1/b/{quote(self.bucket, safe='')}/o/{quote(f.key, safe='')}"
            f"?alt=media&generation={generation}"
        )
        # Accept-Encoding: gzip turns off decompressive transcoding: the stored bytes arrive as stored, so their
        # size and CRC32C are the ones published, and Range applies to them.
        headers = {"Accept-Encoding": "gzip"}
        if size > 0:
            headers["Range"] = f"bytes={start}-{end}"
        try:
            resp: Any = self._session.request(
                "GET", url, headers=headers, stream=True, timeout=(self._connect_timeout, self._read_timeout)
            )
        except Exception as exc:
            self._raise_transport(exc, f.key, "GET")
        try:
            status = int(resp.status_code)
            if status not in (200, 206):
                self._raise_status(status, resp.headers, _read_error_body(resp), f.key, "GET")
            expected_len = end - start + 1 if size > 0 else 0
            content_range = resp.headers.get("Content-Range")
            want_range = f"bytes {start}-{end}/{size}"
            if size > 0 and status == 206 and content_range != want_range:
                raise RetryableError("bad-content-range", f"asked for {want_range}, server sent {content_range!r}")
            if size > 0 and status == 200 and not whole:
                raise RetryableError("bad-content-range", f"asked for {want_range}, server sent the whole object")
            length = resp.headers.get("Content-Length")
            if length is not None and _int_or(length, -1) != expected_len:
                raise RetryableError("bad-length", f"Content-Length {length} for {expected_len} bytes")
            encoding = str(resp.headers.get("Content-Encoding") or "").lower()
            stored = str(resp.headers.get("x-goog-stored-content-encoding") or encoding).lower()
            if "gzip" in encoding and "gzip" not in stored:
                raise SourceError(
                    self.display_uri, "the response was gzip-compressed in transit; cannot store its bytes", key=f.key
                )
            served = resp.headers.get("x-goog-generation")
            if served is not None and served.strip() != str(generation):
                raise ObjectChangedError(f.key, f"asked for generation {generation}, server sent {served.strip()}")
            got_detail = _detail_from_headers(resp.headers, size, str(generation)) if whole and not detail else None
        except BaseException as exc:
            with contextlib.suppress(Exception):
                resp.close()
            if isinstance(exc, _Missing):
                self._raise_missing(f, generation)
            raise
        body = _GcsBody(resp, expected_len, self._read_timeout)
        body.detail = got_detail
        return body

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()

    # ---------------------------------------------------------------------------------------- errors
    def _call(self, key: str, fn: Callable[[], T]) -> T:
        """A control-plane call made for the engine, which retries RetryableError itself."""
        try:
            return fn()
        except gapi_exc.GoogleAPICallError as exc:
            self._raise_api(exc, key, "metadata")
        except (DownloaderError, RetryableError, ObjectChangedError):
            raise
        except Exception as exc:
            self._raise_transport(exc, key, "metadata")

    def _control(self, what: str, key: str | None, attempts: _Attempts, fn: Callable[[], T]) -> T:
        """A control-plane call the SDK retries (listing): anything still retryable afterwards is final."""
        try:
            return fn()
        except Exception as exc:
            self._raise_control(exc, what, key, attempts)

    def _raise_control(self, exc: BaseException, what: str, key: str | None, attempts: _Attempts) -> NoReturn:
        if isinstance(exc, gapi_exc.RetryError) and isinstance(exc.cause, BaseException):
            exc = exc.cause  # the SDK's retries ran out: report what kept failing
        try:
            if isinstance(exc, gapi_exc.NotFound) and key is None:
                raise NotFoundError(self.display_uri, f"bucket {self.bucket!r} does not exist")
            if isinstance(exc, gapi_exc.GoogleAPICallError):
                self._raise_api(exc, key, what)
            self._raise_transport(exc, key, what)
        except RetryableError as final:
            raise TransferError(key or self.display_uri, final.detail, attempts=attempts.count) from None

    def _raise_api(self, exc: gapi_exc.GoogleAPICallError, key: str | None, what: str) -> NoReturn:
        resp = getattr(exc, "response", None)
        status = int(exc.code or 0) if isinstance(exc.code, int) else 0
        headers: Mapping[str, str] = getattr(resp, "headers", None) or {}
        body = ""
        if resp is not None:
            with contextlib.suppress(Exception):
                body = str(resp.text)
        if not body:
            body = str(getattr(exc, "message", "") or "")
        self._raise_status(status, headers, body, key, what)

    def _raise_status(self, status: int, headers: Mapping[str, str], body: str, key: str | None, what: str) -> NoReturn:
        reason = f"{what}: HTTP {status}" + (f" ({r})" if (r := _reason(body)) else "")
        if status == 412:
            raise ObjectChangedError(key or "", "generation precondition failed (HTTP 412)")
        if status == 416:
            raise ObjectChangedError(key or "", "requested range is no longer valid (HTTP 416)")
        if status in _RETRYABLE_STATUS:
            kind = "throttled" if status in (429, 503) else "timeout" if status == 408 else "server-error"
            raise RetryableError(
                kind, reason, retry_after=parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"))
            )
        if status in (401, 403):
            raise AccessDeniedError(self.display_uri, reason, key=key)
        if status == 404:
            if what == "GET" and key is not None:
                raise _Missing()
            raise NotFoundError(self.display_uri, reason, key=key)
        raise SourceError(self.display_uri, reason, key=key)

    def _raise_transport(self, exc: BaseException, key: str | None, what: str) -> NoReturn:
        if isinstance(exc, (DownloaderError, RetryableError, ObjectChangedError)):
            raise exc
        if self._emulator and isinstance(exc, gauth_exc.InvalidOperation):
            # a 401 answered to anonymous (emulator) credentials, which cannot be refreshed
            raise AccessDeniedError(
                self.display_uri, f"{what}: the server refused anonymous access (HTTP 401)", key=key
            ) from None
        if isinstance(exc, gauth_exc.DefaultCredentialsError):
            raise _credentials_error(self.display_uri, exc, key) from None
        if isinstance(exc, gauth_exc.RefreshError):
            if getattr(exc, "retryable", False):
                raise RetryableError("connection", f"{what}: refreshing the access token failed: {_short(exc)}")
            raise AccessDeniedError(
                self.display_uri, f"{what}: could not obtain an access token: {_short(exc)}", key=key
            ) from None
        if isinstance(exc, (gauth_exc.TransportError, gauth_exc.TimeoutError)):
            raise RetryableError("connection", f"{what}: {_short(exc)}") from None
        if isinstance(exc, gauth_exc.GoogleAuthError):
            raise AccessDeniedError(
                self.display_uri, f"{what}: authentication failed: {_short(exc)}", key=key
            ) from None
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            raise RetryableError("timeout", f"{what}: connecting timed out") from None
        if isinstance(exc, requests.exceptions.ReadTimeout):
            raise RetryableError("stall", f"{what}: no answer within the stall timeout") from None
        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)):
            inner = exc.args[0] if exc.args else None
            kind = "reset" if isinstance(inner, urllib3.exceptions.ProtocolError) else "connection"
            raise RetryableError(kind, f"{what}: {_describe(exc)}") from None
        if isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)):
            raise RetryableError("connection", f"{what}: {_describe(exc)}") from None
        if isinstance(exc, requests.exceptions.RequestException):
            raise SourceError(self.display_uri, f"{what}: {_describe(exc)}", key=key) from None
        if isinstance(exc, OSError):
            raise RetryableError("connection", f"{what}: {_describe(exc)}") from None
        if type(exc).__module__.split(".")[0] in ("google", "requests", "urllib3", "http"):
            raise SourceError(self.display_uri, f"{what}: {_describe(exc)}", key=key) from None
        raise exc


class _Attempts:
    """How many requests a control-plane call made, counting the SDK's retries."""

    def __init__(self) -> None:
        self.count = 1


class _Missing(Exception):
    """Internal: a media GET answered 404; open_range finds out why."""


class _GcsBody(Body):
    """A media GET's body, read through urllib3's public readinto."""

    def __init__(self, resp: Any, remaining: int, stall: float) -> None:
        self._resp = resp
        self._raw: Any = resp.raw
        self._remaining = remaining
        self._stall = stall

    def readinto(self, buf: memoryview) -> int:
        if self._remaining <= 0:
            return 0
        want = min(len(buf), self._remaining)
        try:
            n = int(self._raw.readinto(buf[:want]))
        except http.client.IncompleteRead as exc:
            raise RetryableError("truncated", _describe(exc)) from exc
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise RetryableError("stall", f"no bytes for {self._stall:g}s (the stall timeout)") from exc
        except urllib3.exceptions.ProtocolError as exc:
            kind = "truncated" if "IncompleteRead" in str(exc) else "reset"
            raise RetryableError(kind, _describe(exc)) from exc
        except TimeoutError as exc:
            raise RetryableError("stall", f"no bytes for {self._stall:g}s (the stall timeout)") from exc
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError, ValueError) as exc:
            raise RetryableError("reset", _describe(exc)) from exc
        self._remaining -= n
        return n

    def close(self) -> None:
        # A body read to its end has already gone back to the pool; closing one read part-way drops the socket.
        with contextlib.suppress(Exception):
            self._resp.close()


# ------------------------------------------------------------------------------------------- helpers
def _credentials_error(uri: str, exc: BaseException, key: str | None) -> AccessDeniedError:
    text = _short(exc)
    if "default credentials were not found" in text.lower():
        return AccessDeniedError(uri, _NO_CREDENTIALS, key=key)
    # A key file that is missing, malformed or of an unknown type. The first argument names the file, never its
    # contents (the parser's own error, which might quote them, is the second argument and is left out).
    return AccessDeniedError(uri, f"cannot load Google Cloud credentials: {text}", key=key)


def _page_items(page: Any) -> list[Any]:
    return [*page]


def _detail_from_blob(blob: Any) -> ObjectDetail:
    return _detail(int(blob.size or 0), str(blob.generation), blob.crc32c, blob.md5_hash)


def _detail(size: int, generation: str, crc32c: str | None, md5: str | None) -> ObjectDetail:
    checksums: list[Checksum] = []
    if crc32c:
        checksums.append(Checksum("crc32c", str(crc32c), "base64"))
    if md5:
        checksums.append(Checksum("md5", str(md5), "base64"))
    return ObjectDetail(
        size=size,
        version=generation,
        version_id=None,
        checksums=tuple(checksums),
        unverifiable=None if checksums else "the object has no crc32c or md5Hash",
    )


def _detail_from_headers(headers: Mapping[str, str], size: int, generation: str) -> ObjectDetail:
    """Integrity facts from a whole-object response: x-goog-hash: crc32c=...,md5=..."""
    hashes: dict[str, str] = {}
    for item in (headers.get("x-goog-hash") or "").split(","):
        name, sep, value = item.strip().partition("=")
        if sep and value:
            hashes[name.strip().lower()] = value.strip()
    served = (headers.get("x-goog-generation") or "").strip()
    return _detail(size, served or generation, hashes.get("crc32c"), hashes.get("md5"))


def _generation(uri: str, f: RemoteFile, version: str | None = None) -> int:
    raw = version if version is not None else f.version
    try:
        return int(raw)
    except ValueError:
        raise SourceError(uri, f"object version {raw!r} is not a GCS generation", key=f.key) from None


def _control_retryable(exc: BaseException) -> bool:
    if isinstance(exc, gapi_exc.GoogleAPICallError):
        return isinstance(exc.code, int) and exc.code in _RETRYABLE_STATUS
    if isinstance(exc, gauth_exc.RefreshError):
        return bool(getattr(exc, "retryable", False))
    return isinstance(
        exc,
        (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,
            urllib3.exceptions.HTTPError,
            gauth_exc.TransportError,
            ConnectionError,
            TimeoutError,
        ),
    )


def _read_error_body(resp: Any) -> str:
    """At most 16 KiB of an error response, as text."""
    try:
        data = resp.raw.read(16384, decode_content=True)
    except Exception:
        return ""
    return bytes(data or b"").decode("utf-8", "replace")


_XML_MESSAGE = re.compile(r"<Message>(.*?)</Message>", re.S)


def _reason(body: str) -> str:
    """The human part of an error body: JSON API error.message, an XML <Message>, or the first line."""
    text = body.strip()
    if not text:
        return ""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        data = json.loads(text)
        message = data.get("error", {}).get("message") if isinstance(data.get("error"), dict) else data.get("error")
        if message:
            text = str(message)
    m = _XML_MESSAGE.search(text)
    if m:
        text = m.group(1)
    line = " ".join(text.split())
    return line if len(line) <= 300 else line[:297] + "..."


def _brief(exc: BaseException) -> str:
    """A failed control-plane request in a few words."""
    if isinstance(exc, gapi_exc.GoogleAPICallError):
        body = ""
        with contextlib.suppress(Exception):
            body = str(exc.response.text)
        reason = _reason(body)
        return f"HTTP {exc.code}" + (f" ({reason})" if reason else "")
    return _describe(exc)


def _describe(exc: BaseException) -> str:
    """An exception as one short line, without URLs' query strings."""
    inner = exc.args[0] if exc.args else None
    if isinstance(inner, urllib3.exceptions.MaxRetryError) and inner.reason is not None:
        exc = inner.reason  # requests wraps the one failure that matters in MaxRetryError
    text = f"{type(exc).__name__}: {exc}"
    text = re.sub(r"(https?://[^\s?'\"]+)\?[^\s'\"]*", r"\1", text)
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def _short(exc: BaseException) -> str:
    """google-auth errors carry (message, response-details); keep the message only."""
    first = exc.args[0] if exc.args else exc
    text = " ".join(str(first).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _int_or(raw: str, default: int) -> int:
    try:
        return int(raw)
    except ValueError:
        return default
