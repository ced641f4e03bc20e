"""Hugging Face Hub repositories (`hf://org/name[@revision]` or a bare `org/name`), and Hub mirrors.

The Hub's HTTP API is the control plane, spoken here over the same urllib3 pool as the bytes (no
huggingface_hub on the path): the revision is resolved to a commit hash once (`/api/models/{repo}/revision/{rev}`),
and the file list with sizes and LFS sha256 comes from `/api/models/{repo}/tree/{commit}?recursive=true`, page by
page (`Link: rel="next"`). Every later request is
pinned to the commit (`/{repo}/resolve/{commit}/{path}`), never to the branch, so a branch that moves
during the download changes nothing: the model is exactly that commit's files.

Bytes go through urllib3 with a pool of `connections`: one HEAD per large file reads the Hub's metadata
(`X-Linked-Etag`, `X-Linked-Size`, `X-Repo-Commit`) and the redirect to the storage host, then the ranges
are fetched from that URL directly. The token (`Authorization: Bearer`) is sent only to the endpoint's own
origin, never to a redirect target elsewhere, and never appears in a log line or an error message.

A file's version is what the Hub publishes as its ETag: the sha256 of an LFS file, the git blob id of a
small one. Both change exactly when the content changes, so a new commit that leaves a file alone does not
fetch it again, and a resumed file keeps its finished ranges across commits. The commit goes into
`version_id` (recorded in the manifest). LFS files are verified with their sha256; small non-LFS files
publish only a git blob id (a sha1 over a `blob <size>` header), so their size is checked.
"""

from __future__ import annotations

import builtins
import http.client
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import urllib3

from .. import __version__
from ..config import HfSettings
from ..errors import (
    AccessDeniedError,
    NotFoundError,
    ObjectChangedError,
    RetryableError,
    SourceError,
    TransferError,
)
from ..uri import ModelUri
from .base import Body, Checksum, ObjectDetail, RemoteFile, Span, parse_retry_after

log = logging.getLogger(__name__)


MAX_REDIRECTS = 5
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_OID = re.compile(r"^[0-9a-f]{40}$")
_URL_QUERY = re.compile(r"\?[^\s'\"<>)]*")
_NON_LFS = "not an LFS file and the Hub gave no git blob id for it; size checked"
_REDIRECTS = (301, 302, 303, 307, 308)


_Listing = tuple[str, list[RemoteFile]]  # commit, files (aliases: the class's `list` shadows the builtin)
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


@dataclass(frozen=True)
class _Entry:
    """What the listing says about one file at the pinned commit."""

    size: int
    version: str  # sha256 (LFS) or git blob id: the ETag the Hub serves for it
    sha256: str | None  # LFS files only


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def _norm_etag(raw: str | None) -> str | None:
    if not raw:
        return None
    value = raw.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"').lower() or None


class HfSource:
    open_ahead = 1

    def __init__(
        self,
        uri: ModelUri,
        hf: HfSettings,
        *,
        connections: int,
        stall_timeout: float,
        max_attempts: int = 10,
        cancel: threading.Event | None = None,
    ) -> None:
        cancel = cancel or threading.Event()
        self.repo = uri.bucket
        self._max_attempts = max_attempts
        self.revision = hf.revision
        self.endpoint = hf.endpoint.rstrip("/")
        self.display_uri = f"hf://{self.repo}@{self.revision}"
        self._token = hf.token.reveal() if hf.token else None
        self._endpoint_origin = _origin(self.endpoint)
        self._stall = stall_timeout
        self._cancel = cancel
        self._pool = urllib3.PoolManager(
            num_pools=8,
            maxsize=connections + 4,
            block=False,
            retries=False,  # the engine retries each range and resumes it where it stopped
            timeout=urllib3.Timeout(connect=min(10.0, stall_timeout), read=stall_timeout),
        )
        self._user_agent = f"aibrix-download/{__version__}"
        self._commit: str | None = None
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._locations: dict[tuple[str, str], str] = {}  # (key, version) -> URL the bytes come from
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------------- listing
    def list(self, cancel: threading.Event) -> Iterator[RemoteFile]:
        listed = self._list_with_retries(cancel)
        if listed is None:
            return  # cancelled; the caller notices
        commit, files = listed
        with self._lock:
            self._commit = commit
        if commit != self.revision:
            log.info("%s: revision %s is commit %s; every file is pinned to it", self.repo, self.revision, commit)
        for f in files:
            if cancel.is_set():
                return
            yield f

    def _list_with_retries(self, cancel: threading.Event) -> _Listing | None:
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._list_once(cancel)
            except RetryableError as exc:
                if attempt >= self._max_attempts:
                    raise TransferError(
                        self.display_uri, f"listing failed: {exc}", attempts=attempt, subject="repository"
                    ) from exc
                delay = min(30.0, 2.0 ** (attempt - 1))
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, 60.0))
                log.warning("listing %s failed (%s); retrying in %.0fs", self.display_uri, exc, delay)
                if cancel.wait(delay):
                    return None

    def _list_once(self, cancel: threading.Event) -> _Listing | None:
        info = self._api_json(f"/api/models/{self.repo}/revision/{quote(self.revision, safe='')}")
        commit = str(info.get("sha") or "") if isinstance(info, dict) else ""
        if not _GIT_OID.match(commit):
            raise SourceError(self.display_uri, "the Hub API did not return a commit hash for the revision")
        files: builtins.list[RemoteFile] = []
        entries: dict[tuple[str, str], _Entry] = {}
        url: str | None = f"{self.endpoint}/api/models/{self.repo}/tree/{commit}?recursive=true"
        while url is not None:
            if cancel.is_set():
                return None
            page, url = self._api_page(url)
            for item in page:
                if not isinstance(item, dict) or item.get("type") != "file":
                    continue  # a folder
                lfs = item.get("lfs") if isinstance(item.get("lfs"), dict) else None
                sha256 = str(lfs["oid"]).lower() if lfs and lfs.get("oid") else None
                version = sha256 or str(item.get("oid", "")).lower()
                size = int(lfs["size"]) if lfs and lfs.get("size") is not None else int(item.get("size", 0))
                path = str(item["path"])
                entries[(path, version)] = _Entry(size, version, sha256)
                files.append(RemoteFile(key=path, rel_path=path, size=size, version=version, version_id=commit))
        with self._lock:
            self._entries.update(entries)
        return commit, files

    def _api_json(self, path: str) -> Any:
        page, _ = self._api_page(self.endpoint + path)
        return page

    def _api_page(self, url: str) -> tuple[Any, str | None]:
        """A JSON answer of the Hub API and the URL of its next page (the Link header's rel="next"), if any."""
        resp = self._request("GET", url, {"Accept": "application/json"}, key="")
        try:
            if resp.status >= 300:
                raise self._api_error(resp)
            body = resp.read()
        except urllib3.exceptions.HTTPError as exc:
            raise RetryableError("reset", f"the Hub API's answer broke off: {type(exc).__name__}") from exc
        finally:
            _discard(resp)
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise RetryableError("bad-answer", f"the Hub API's answer at {urlsplit(url).path} is not JSON") from exc
        return document, _next_link(resp.headers.get("Link"), url)

    def _api_error(self, resp: urllib3.BaseHTTPResponse) -> Exception:
        """The Hub API refused: why, from its status and X-Error-Code."""
        status = resp.status
        code = resp.headers.get("X-Error-Code", "")
        server = self._scrub(resp.headers.get("X-Error-Message", ""))
        where = f"HTTP {status}" + (f" ({server.strip()})" if server.strip() else "")
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        if code == "RevisionNotFound":
            return NotFoundError(self.display_uri, f"revision {self.revision!r} not found: {where}")
        if code == "GatedRepo":
            return AccessDeniedError(self.display_uri, self._auth_reason(where, "GatedRepo"))
        if code == "RepoNotFound":
            if status in (401, 403) or self._token is None:
                return AccessDeniedError(
                    self.display_uri, self._auth_reason(f"repository not found, or private or gated: {where}", "")
                )
            return NotFoundError(self.display_uri, f"repository not found: {where}")
        if status in (401, 403):
            return AccessDeniedError(self.display_uri, self._auth_reason(f"listing: {where}", ""))
        if status == 429:
            return RetryableError("throttled", where, retry_after=retry_after)
        if status >= 500 or status == 408:
            return RetryableError("server-error", where, retry_after=retry_after)
        if status == 404:
            return NotFoundError(self.display_uri, f"listing: {where}")
        return SourceError(self.display_uri, f"listing: {where}")

    # ------------------------------------------------------------------------------------- integrity
    def stat(self, f: RemoteFile) -> ObjectDetail:
        """The file at the pinned commit as the Hub serves it now (it should never differ from the listing)."""
        location, headers = self._resolve(f, "HEAD")
        served = (headers.get("X-Repo-Commit") or "").lower()
        pinned = self._pinned(f)
        if served and pinned and served != pinned:
            raise SourceError(
                self.display_uri, f"the endpoint served commit {served} for pinned commit {pinned}", key=f.key
            )
        etag = _norm_etag(headers.get("X-Linked-Etag") or headers.get("ETag"))
        # Only ETags in the Hub's own formats are versions; a mirror that sends its own kind is checked by size.
        version = etag if etag and (_SHA256.match(etag) or _GIT_OID.match(etag)) else f.version
        raw_size = headers.get("X-Linked-Size") or (headers.get("Content-Length") if location is None else None)
        size = int(raw_size) if raw_size and raw_size.isdigit() else f.size
        sha256 = version if _SHA256.match(version) else None
        with self._lock:
            self._entries[(f.key, version)] = _Entry(size, version, sha256)
            self._locations[(f.key, version)] = location or self._resolve_url(f)
        return self._detail(f, size, version)

    def _detail(self, f: RemoteFile, size: int, version: str | None = None) -> ObjectDetail:
        version = version or f.version
        entry = self._entry(f.key, version, f.size)
        if entry.sha256:
            return ObjectDetail(size, version, self._pinned(f), (Checksum("sha256", entry.sha256, "hex"),))
        if _GIT_OID.match(entry.version):  # not in LFS: the version is the file's git blob id
            return ObjectDetail(size, version, self._pinned(f), (Checksum("git-sha1", entry.version, "hex"),))
        return ObjectDetail(size, version, self._pinned(f), (), unverifiable=_NON_LFS)

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
        start, end = (0, size - 1) if span is None else (span.start, span.end)
        whole = start == 0 and end == size - 1
        headers = {"Range": f"bytes={start}-{end}"} if size > 0 else {}
        with self._lock:
            location = self._locations.get((f.key, f.version))
        if location is None:
            resp, url = self._get_resolving(f, headers)
        else:
            resp = self._request("GET", location, headers, f.key)
            url = location
            if resp.status in (401, 403, 404, 410) and _origin(location) != self._endpoint_origin:
                # A signed storage URL expired (they last about an hour; a large model takes longer): ask the
                # Hub for a fresh one once. A fresh URL that is refused again is a real error.
                _discard(resp)
                log.info("%s: storage URL refused (HTTP %d); resolving it again", f.key, resp.status)
                with self._lock:
                    self._locations.pop((f.key, f.version), None)
                resp, url = self._get_resolving(f, headers)
        try:
            if resp.status >= 300:
                raise self._status_error(resp, f.key, url)
            self._check_range(resp, start, end, size, whole)
        except BaseException:
            _discard(resp)
            raise
        body = _HfBody(start, end, resp, self._scrub)
        body.detail = self._detail(f, size) if whole and detail is None else None
        return body

    def _get_resolving(self, f: RemoteFile, headers: Mapping[str, str]) -> tuple[urllib3.BaseHTTPResponse, str]:
        """GET through the Hub's resolve URL; a redirect to the storage host is remembered for later ranges.
        Returns the response (any status; the caller checks it) and the URL it came from."""
        url = self._resolve_url(f)
        for _ in range(MAX_REDIRECTS):
            resp = self._request("GET", url, headers, f.key)
            if resp.status in _REDIRECTS and resp.headers.get("Location"):
                target = urljoin(url, resp.headers["Location"])
                hub_headers = resp.headers.copy()  # case-insensitive, like the original
                _discard(resp)
                if _origin(target) == self._endpoint_origin:
                    url = target
                    continue
                self._check_served(f, hub_headers)
                with self._lock:
                    self._locations[(f.key, f.version)] = target
                return self._request("GET", target, headers, f.key), target
            if resp.status < 300:
                try:
                    self._check_served(f, resp.headers)
                except BaseException:
                    _discard(resp)
                    raise
            return resp, url
        raise SourceError(self.display_uri, f"more than {MAX_REDIRECTS} redirects on the Hub", key=f.key)

    def _resolve(self, f: RemoteFile, method: str) -> tuple[str | None, Mapping[str, str]]:
        """HEAD the resolve URL, following redirects that stay on the endpoint. Returns the storage URL when
        the Hub redirects elsewhere (None when it serves the bytes itself) and the Hub's headers."""
        url = self._resolve_url(f)
        for _ in range(MAX_REDIRECTS):
            resp = self._request(method, url, {}, f.key)
            headers = resp.headers.copy()  # case-insensitive: huggingface.co sends lowercase names
            if resp.status in _REDIRECTS and headers.get("Location"):
                _discard(resp)
                target = urljoin(url, headers["Location"])
                if _origin(target) == self._endpoint_origin:
                    url = target
                    continue
                return target, headers
            if resp.status < 300:
                _discard(resp)
                return (None if url == self._resolve_url(f) else url), headers
            error = self._status_error(resp, f.key, url)
            _discard(resp)
            raise error
        raise SourceError(self.display_uri, f"more than {MAX_REDIRECTS} redirects on the Hub", key=f.key)

    def _check_served(self, f: RemoteFile, headers: Mapping[str, str]) -> None:
        """The Hub's answer for the pinned URL must be the listed commit and content."""
        served = (headers.get("X-Repo-Commit") or "").lower()
        pinned = self._pinned(f)
        if served and pinned and served != pinned:
            raise SourceError(
                self.display_uri, f"the endpoint served commit {served} for pinned commit {pinned}", key=f.key
            )
        linked = _norm_etag(headers.get("X-Linked-Etag"))
        etag = linked or _norm_etag(headers.get("ETag"))
        # Compare only ETags in the Hub's own formats; a mirror that sends its own kind is checked by size.
        if etag and (_SHA256.match(etag) or _GIT_OID.match(etag)) and etag != f.version:
            raise ObjectChangedError(f.key, f"the Hub serves ETag {etag}, listed as {f.version}")

    @staticmethod
    def _check_range(resp: urllib3.BaseHTTPResponse, start: int, end: int, size: int, whole: bool) -> None:
        length = resp.headers.get("Content-Length")
        if size == 0:
            return
        if resp.status == 200:
            if not whole:
                raise RetryableError("bad-content-range", f"asked for bytes {start}-{end}, server sent the whole file")
            if length is not None and length != str(size):
                raise RetryableError("bad-length", f"Content-Length {length} for a {size}-byte file")
            return
        expected = f"bytes {start}-{end}/{size}"
        got = resp.headers.get("Content-Range")
        if got != expected:
            raise RetryableError("bad-content-range", f"asked for {expected}, server sent {got!r}")
        if length is not None and length != str(end - start + 1):
            raise RetryableError("bad-length", f"Content-Length {length} for {end - start + 1} bytes")

    def close(self) -> None:
        self._pool.clear()

    # ---------------------------------------------------------------------------------------- helpers
    def _entry(self, key: str, version: str, size: int) -> _Entry:
        with self._lock:
            entry = self._entries.get((key, version))
        if entry is None:
            sha256 = version if _SHA256.match(version) else None
            entry = _Entry(size, version, sha256)
        return entry

    def _pinned(self, f: RemoteFile) -> str | None:
        return f.version_id or self._commit

    def _resolve_url(self, f: RemoteFile) -> str:
        commit = self._pinned(f)
        if commit is None:  # pragma: no cover - the engine lists before it reads
            raise SourceError(self.display_uri, "no commit resolved yet", key=f.key)
        return f"{self.endpoint}/{self.repo}/resolve/{commit}/{quote(f.key, safe='/')}"

    def _request(self, method: str, url: str, headers: Mapping[str, str], key: str) -> urllib3.BaseHTTPResponse:
        send = {"User-Agent": self._user_agent, "Accept-Encoding": "identity", **headers}
        if self._token and _origin(url) == self._endpoint_origin:
            send["Authorization"] = f"Bearer {self._token}"  # the endpoint only; never a redirect target
        host = urlsplit(url).netloc
        # Not chained (`from None`): urllib3's errors name the URL, and a storage URL's query string is a signature.
        try:
            return self._pool.request(
                method, url, headers=send, redirect=False, retries=False, preload_content=False, decode_content=False
            )
        except urllib3.exceptions.ReadTimeoutError:
            raise RetryableError(
                "stall", f"no answer from {host} within the stall timeout ({self._stall:g}s)"
            ) from None
        except urllib3.exceptions.ConnectTimeoutError:
            raise RetryableError("timeout", f"connecting to {host} timed out") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise RetryableError("connection", f"{host}: {type(exc).__name__}: {self._scrub(str(exc))}") from None

    def _status_error(self, resp: urllib3.BaseHTTPResponse, key: str, url: str) -> Exception:
        """Translate an HTTP error status of a request to `url` (the caller releases the response)."""
        status = resp.status
        code = resp.headers.get("X-Error-Code", "")
        message = self._scrub(resp.headers.get("X-Error-Message", ""))
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        on_hub = _origin(url) == self._endpoint_origin
        where = f"HTTP {status} from {urlsplit(url).netloc}" + (f" ({message})" if message else "")
        if status == 412:
            return ObjectChangedError(key, f"{where}: the file no longer matches its ETag")
        if status == 416:
            return ObjectChangedError(key, f"{where}: the requested range is no longer valid")
        if status == 429:
            return RetryableError("throttled", where, retry_after=retry_after)
        if status >= 500 or status == 408:
            return RetryableError("server-error", where, retry_after=retry_after)
        if status in (401, 403) and not on_hub:
            return AccessDeniedError(
                self.display_uri, f"{where}: the storage host refused the download URL the Hub just issued", key=key
            )
        if status in (401, 403):
            return AccessDeniedError(self.display_uri, self._auth_reason(where, code), key=key)
        if status == 404:
            if code == "RevisionNotFound":
                return NotFoundError(self.display_uri, f"{where}: commit {self._commit} no longer exists", key=key)
            if code == "RepoNotFound":
                return NotFoundError(self.display_uri, f"{where}: repository not found", key=key)
            return NotFoundError(self.display_uri, f"{where}: file not found at commit {self._commit}", key=key)
        return SourceError(self.display_uri, where, key=key)

    def _auth_reason(self, where: str, code: str) -> str:
        if code == "GatedRepo":
            return (
                f"{where}: the repository is gated; accept its terms on the Hub with the account whose token is "
                "in HF_TOKEN"
            )
        if self._token is None:
            return f"{where}: no token given; set HF_TOKEN (from a Secret) to a token that can read this repository"
        return f"{where}: the token in HF_TOKEN was rejected or cannot read this repository"

    def _scrub(self, text: str) -> str:
        """No token and no signed URL query string in anything we print."""
        if self._token:
            text = text.replace(self._token, "***")
        return _URL_QUERY.sub("?...", text)


class _HfBody(Body):
    """A GET's body, read through urllib3's public readinto."""

    def __init__(self, start: int, end: int, resp: urllib3.BaseHTTPResponse, scrub: Callable[[str], str]) -> None:
        self._resp = resp
        self._scrub = scrub
        self._remaining = end - start + 1
        self._closed = False

    def readinto(self, buf: memoryview) -> int:
        try:
            n = self._resp.readinto(buf[: max(0, self._remaining)])
        except http.client.IncompleteRead as exc:
            raise RetryableError("truncated", self._scrub(f"IncompleteRead: {exc}")) from exc
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
            raise RetryableError("stall", "no bytes for the stall timeout") from exc
        except urllib3.exceptions.ProtocolError as exc:
            text = self._scrub(str(exc))
            kind = "truncated" if "IncompleteRead" in text or "incomplete" in text.lower() else "reset"
            raise RetryableError(kind, text) from exc
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError, ValueError) as exc:
            raise RetryableError("reset", f"{type(exc).__name__}: {self._scrub(str(exc))}") from exc
        self._remaining -= n
        return n

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._remaining > 0:
            self._resp.close()  # body not consumed: this connection cannot be reused
        self._resp.release_conn()


def _next_link(header: str | None, base: str) -> str | None:
    m = _NEXT_LINK.search(header or "")
    return urljoin(base, m.group(1)) if m else None


def _discard(resp: urllib3.BaseHTTPResponse) -> None:
    """Finish a small response (redirect, HEAD, error) and give its connection back to the pool."""
    try:
        resp.drain_conn()
    except Exception:
        resp.close()
    resp.release_conn()
