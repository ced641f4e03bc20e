"""Google Cloud Storage (gs://): the JSON API spoken here, over google-auth's authorized session.

google-auth is the only Google library on this path, for what it alone knows: the credentials (Application Default
Credentials with the read-only storage scope: workload identity, GOOGLE_APPLICATION_CREDENTIALS, the metadata server;
or anonymous access to an emulator named by STORAGE_EMULATOR_HOST) and their access tokens. Its `AuthorizedSession`,
a requests session that adds the bearer token and refreshes it, carries every request to
https://storage.googleapis.com (or the emulator):

- objects.list, `/storage/v1/b/{bucket}/o`: the prefix, only the fields used, page by page (`pageToken`), retried
  here (6 attempts within a minute);
- objects.get, `/storage/v1/b/{bucket}/o/{object}`: the single object a URI may name, stat(), and the current
  generation when a pinned one went missing;
- media GETs, `/download/storage/v1/b/{bucket}/o/{object}?alt=media&generation=G`: one per range, pinned to the
  generation seen at listing, streamed, so bytes go from the socket into the engine's buffer and memory stays
  bounded whatever the object size. Content-Range, Content-Length and x-goog-generation are checked on every
  response. The transport does not retry them: the engine retries and resumes each range itself.

No google, requests or urllib3 exception leaves this module: everything is translated into `downloader.errors`
(permanent) or `RetryableError` / `ObjectChangedError` (handled by the engine).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

import google.auth
import google.auth.exceptions as gauth_exc
import requests
import requests.adapters
import urllib3.exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.auth.transport.requests import AuthorizedSession

from .. import __version__
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
from ..retry import backoff_delay
from ..uri import ModelUri
from .base import Body, Checksum, ObjectDetail, RemoteFile, Span, parse_retry_after

log = logging.getLogger(__name__)

T = TypeVar("T")

BASE_URL = "https://storage.googleapis.com"
MTLS_BASE_URL = "https://storage.mtls.googleapis.com"  # when google-auth sets up a client certificate
READ_ONLY_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
# Only these fields are fetched: a 100k-object bucket lists in a fraction of the full payload.
_OBJECT_FIELDS = "name,size,generation,crc32c,md5Hash,contentEncoding"
_LIST_FIELDS = f"items({_OBJECT_FIELDS}),nextPageToken"
_PAGE_SIZE = 1000
_CONTROL_RETRY_SECONDS = 60.0  # listing: no retry starts later than this after the request's first attempt
_CONTROL_ATTEMPTS = 6  # listing and the metadata read around it, the first attempt included
_TOKEN_REFRESH_SECONDS = 300.0  # google-cloud-storage's own bound: a metadata server can be slow to mint a token
_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
# A 403 whose error document gives one of these reasons is throttling, not a refusal (the JSON API's rate limits).
_RATE_LIMIT_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded"})
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
        credentials = self._credentials(gcs)
        # google-auth leaves AuthorizedSession's methods unannotated (a requests.Session): held as Any
        session: Any = AuthorizedSession(credentials, refresh_timeout=_TOKEN_REFRESH_SECONDS)  # type: ignore[no-untyped-call]
        session.headers["User-Agent"] = f"aibrix-download/{__version__}"
        # One pool big enough for every range in flight (requests' default keeps 10 and discards the rest). The engine
        # retries each range itself: no retries in the transport.
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=connections + 4, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        self._session = session
        if gcs.emulator_host:
            endpoint = gcs.emulator_host.strip().rstrip("/")
            self._base_url = endpoint if "://" in endpoint else "http://" + endpoint  # the Go SDK accepts host:port
        else:
            try:
                # A client certificate when the environment asks for one (GOOGLE_API_USE_CLIENT_CERTIFICATE, a
                # workload certificate config); google-auth keeps the pool's size and retries on its own adapter.
                session.configure_mtls_channel()
            except gauth_exc.MutualTLSChannelError as exc:
                # from None: the cause may carry the certificate source's output
                raise SourceError(self.display_uri, f"cannot set up mutual TLS: {_short(exc)}") from None
            self._base_url = MTLS_BASE_URL if session.is_mtls else BASE_URL
        self._objects_url = f"{self._base_url}/storage/v1/b/{quote(self.bucket, safe='')}/o"

    def _credentials(self, gcs: GcsSettings) -> Credentials:
        if gcs.emulator_host:
            return AnonymousCredentials()  # type: ignore[no-untyped-call]
        try:
            credentials, _project = google.auth.default(scopes=[READ_ONLY_SCOPE])
        except (gauth_exc.GoogleAuthError, ValueError, TypeError, OSError) as exc:
            # from None: the cause's second argument is the key parser's own error, which may quote the key file
            raise _credentials_error(self.display_uri, exc, None) from None
        return credentials

    # ---------------------------------------------------------------------------------------- listing
    def list(self, cancel: threading.Event) -> Iterator[RemoteFile]:
        prefix = self.uri.prefix
        dir_prefix = prefix.rstrip("/") + "/" if prefix else ""
        params = {"fields": _LIST_FIELDS, "maxResults": str(_PAGE_SIZE)}
        if dir_prefix:
            params["prefix"] = dir_prefix
        found = False
        attempts = _Attempts()  # one budget for the whole listing, every page
        token: str | None = None
        while True:
            query = params if token is None else {**params, "pageToken": token}
            request = functools.partial(self._get_json, self._objects_url, query, "listing")
            page = self._retrying("listing", None, attempts, cancel, request)
            if isinstance(page, _Cancelled):
                return
            if page is None:
                raise NotFoundError(self.display_uri, f"bucket {self.bucket!r} does not exist")
            for item in _items(page):
                name = _text(item, "name")
                if name.endswith("/"):
                    continue  # a folder placeholder (console "create folder", gcsfuse, ...)
                found = True
                yield self._remember(item, rel_path=name[len(dir_prefix) :])
            token = _next_page_token(page)
            if token is None or cancel.is_set():
                break
        if found or not prefix or prefix.endswith("/") or cancel.is_set():
            return
        # gs://bucket/path/file.json names a single object.
        single = self._retrying("reading metadata", prefix, _Attempts(), cancel, lambda: self._object(prefix))
        if isinstance(single, dict):
            yield self._remember(single, rel_path=prefix.rsplit("/", 1)[-1])

    def _remember(self, item: Mapping[str, Any], rel_path: str) -> RemoteFile:
        name = _text(item, "name")
        detail = self._detail(item)
        if "gzip" in str(item.get("contentEncoding") or "").lower():
            log.warning(
                "%s is stored gzip-compressed (Content-Encoding: gzip); it is fetched as stored, still compressed",
                name,
            )
        # A generation's bytes and checksums never change: the listing's facts serve the engine, no stat() needed.
        return RemoteFile(key=name, rel_path=rel_path, size=detail.size, version=detail.version, detail=detail)

    def _retrying(
        self, what: str, key: str | None, attempts: _Attempts, cancel: threading.Event, fn: Callable[[], T]
    ) -> T | _Cancelled:
        """A control-plane request retried here: anything still retryable after the budget is final."""
        deadline = time.monotonic() + _CONTROL_RETRY_SECONDS
        while True:
            try:
                return fn()
            except RetryableError as exc:
                delay = backoff_delay(attempts.count, exc.retry_after, exc.kind)
                if attempts.count >= _CONTROL_ATTEMPTS or time.monotonic() + delay > deadline:
                    subject, name = ("prefix", self.display_uri) if key is None else ("object", key)
                    raise TransferError(name, exc.detail, attempts=attempts.count, subject=subject) from exc
                attempts.count += 1
                log.warning("%s: %s; retrying (attempt %d)", self.display_uri, exc.detail, attempts.count)
                if cancel.wait(delay):
                    return _CANCELLED

    # ------------------------------------------------------------------------------------- integrity
    def stat(self, f: RemoteFile) -> ObjectDetail:
        item = self._object(f.key, "metadata")
        if item is None:
            if not self._bucket_exists(f.key):
                raise NotFoundError(self.display_uri, f"bucket {self.bucket!r} does not exist")
            raise NotFoundError(self.display_uri, "no such object", key=f.key)
        return self._detail(item)

    def _object(self, name: str, what: str = "reading metadata") -> dict[str, Any] | None:
        """objects.get: the object's current metadata, or None when it (or the bucket) does not exist."""
        return self._get_json(f"{self._objects_url}/{quote(name, safe='')}", {"fields": _OBJECT_FIELDS}, what, name)

    def _raise_missing(self, f: RemoteFile, generation: int) -> NoReturn:
        """A 404 for the pinned generation: the object was replaced or deleted, or the bucket is gone."""
        current = self._object(f.key, "metadata")
        if current is not None:
            now = _text(current, "generation")
            if now != str(generation):
                raise ObjectChangedError(f.key, f"generation {generation} is gone; the object is now generation {now}")
            raise RetryableError("server-error", f"HTTP 404 for generation {generation}, which still exists")
        if not self._bucket_exists(f.key):
            raise NotFoundError(self.display_uri, f"bucket {self.bucket!r} does not exist")
        raise ObjectChangedError(f.key, f"generation {generation} is gone; the object was deleted")

    def _bucket_exists(self, key: str) -> bool:
        """Asked with objects.list (which listing needed anyway), not buckets.get (which readers may lack)."""
        params = {"maxResults": "1", "fields": "items(name)"}
        return self._get_json(self._objects_url, params, "metadata", key) is not None

    def _detail(self, item: Mapping[str, Any]) -> ObjectDetail:
        try:
            size, generation = int(item.get("size") or 0), int(item["generation"])
        except (KeyError, TypeError, ValueError):
            raise SourceError(
                self.display_uri, "the JSON API gave no size or generation for the object", key=_text(item, "name")
            ) from None
        return _detail(size, str(generation), item.get("crc32c"), item.get("md5Hash"))

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
            self._session.close()

    # ----------------------------------------------------------------------------------- control plane
    def _get_json(
        self, url: str, params: Mapping[str, str], what: str, key: str | None = None
    ) -> dict[str, Any] | None:
        """One JSON API GET, not retried here: its document, or None when the server answers 404."""
        query = {**params, "prettyPrint": "false"}
        try:
            resp: Any = self._session.request("GET", url, params=query, timeout=self._control_timeout)
        except Exception as exc:
            self._raise_transport(exc, key, what)
        try:
            status = int(resp.status_code)
            if status == 404:
                return None
            try:
                body = bytes(resp.content)
            except Exception as exc:
                self._raise_transport(exc, key, what)
            if status != 200:
                self._raise_status(status, resp.headers, body.decode("utf-8", "replace"), key, what)
        finally:
            resp.close()
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise RetryableError("bad-answer", f"{what}: the JSON API's answer is not JSON") from exc
        if not isinstance(document, dict):
            raise RetryableError("bad-answer", f"{what}: the JSON API's answer is not a JSON object")
        return document

    # ---------------------------------------------------------------------------------------- errors
    def _raise_status(self, status: int, headers: Mapping[str, str], body: str, key: str | None, what: str) -> NoReturn:
        message, reasons = _error_document(body)
        reason = f"{what}: HTTP {status}" + (f" ({message})" if message else "")
        retry_after = parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"))
        if status == 412:
            raise ObjectChangedError(key or "", "generation precondition failed (HTTP 412)")
        if status == 416:
            raise ObjectChangedError(key or "", "requested range is no longer valid (HTTP 416)")
        if status in _RETRYABLE_STATUS or (status == 403 and reasons & _RATE_LIMIT_REASONS):
            kind = "throttled" if status in (403, 429, 503) else "timeout" if status == 408 else "server-error"
            raise RetryableError(kind, reason, retry_after=retry_after)
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
        # google-auth's errors are not chained (from None): a token refresh's error carries the token endpoint's
        # answer and a credentials error the key parser's, either of which may quote a secret.
        if self._emulator and isinstance(exc, gauth_exc.InvalidOperation):
            # a 401 answered to anonymous (emulator) credentials, which cannot be refreshed
            raise AccessDeniedError(
                self.display_uri, f"{what}: the server refused anonymous access (HTTP 401)", key=key
            ) from None
        if isinstance(exc, gauth_exc.DefaultCredentialsError):
            raise _credentials_error(self.display_uri, exc, key) from None
        if isinstance(exc, gauth_exc.RefreshError):
            if exc.retryable:
                reason = f"{what}: refreshing the access token failed: {_short(exc)}"
                raise RetryableError("connection", reason) from None
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
            raise RetryableError("timeout", f"{what}: connecting timed out") from exc
        if isinstance(exc, requests.exceptions.ReadTimeout):
            raise RetryableError("stall", f"{what}: no answer within the stall timeout") from exc
        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)):
            inner = exc.args[0] if exc.args else None
            kind = "reset" if isinstance(inner, urllib3.exceptions.ProtocolError) else "connection"
            raise RetryableError(kind, f"{what}: {_describe(exc)}") from exc
        if isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)):
            raise RetryableError("connection", f"{what}: {_describe(exc)}") from exc
        if isinstance(exc, requests.exceptions.RequestException):
            raise SourceError(self.display_uri, f"{what}: {_describe(exc)}", key=key) from exc
        if isinstance(exc, OSError):
            raise RetryableError("connection", f"{what}: {_describe(exc)}") from exc
        if type(exc).__module__.split(".")[0] in ("google", "requests", "urllib3", "http"):
            raise SourceError(self.display_uri, f"{what}: {_describe(exc)}", key=key) from exc
        raise exc


class _Attempts:
    """How many requests a retried control-plane call has made so far."""

    def __init__(self) -> None:
        self.count = 1


class _Cancelled:
    """What a retried control-plane call returns when the run was cancelled during its backoff."""


_CANCELLED = _Cancelled()


class _Missing(Exception):
    """Internal: a media GET answered 404; open() finds out why."""


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


def _items(page: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    items = page.get("items") or []
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _next_page_token(page: Mapping[str, Any]) -> str | None:
    token = page.get("nextPageToken")
    return str(token) if token else None


def _text(item: Mapping[str, Any], field: str) -> str:
    value = item.get(field)
    return "" if value is None else str(value)


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


def _read_error_body(resp: Any) -> str:
    """At most 16 KiB of an error response, as text."""
    try:
        data = resp.raw.read(16384, decode_content=True)
    except Exception:
        return ""
    return bytes(data or b"").decode("utf-8", "replace")


_XML_MESSAGE = re.compile(r"<Message>(.*?)</Message>", re.S)


def _error_document(body: str) -> tuple[str, frozenset[str]]:
    """The human part of an error body and the reasons it gives. The JSON API answers
    `{"error": {"code": 403, "message": "...", "errors": [{"reason": "forbidden", ...}]}}`; other servers on the way
    (a proxy, the XML API) may send XML with a <Message>, or plain text (its first 300 characters are kept)."""
    text = body.strip()
    if not text:
        return "", frozenset()
    reasons: set[str] = set()
    with contextlib.suppress(ValueError):
        document = json.loads(text)
        error = document.get("error") if isinstance(document, dict) else None
        if isinstance(error, dict):
            errors = error.get("errors")
            for entry in errors if isinstance(errors, list) else []:
                if isinstance(entry, dict) and entry.get("reason"):
                    reasons.add(str(entry["reason"]))
            error = error.get("message")
        if error:
            text = str(error)
    m = _XML_MESSAGE.search(text)
    if m:
        text = m.group(1)
    line = " ".join(text.split())
    return (line if len(line) <= 300 else line[:297] + "..."), frozenset(reasons)


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
