"""S3's REST API over the standard library's HTTP client, each request signed with SigV4 (sigv4.py).

The fast transport of the S3 backend. botocore's request pipeline (serializers, event hooks, endpoint rules,
response parsing) costs about 1 ms of CPU per request, and importing it and building a client about 0.3 s of CPU per
run (BENCHMARKS.md); a GET or HEAD here is a few dozen microseconds of Python. It speaks only what the downloader
needs: ListObjectsV2, HEAD, GET (whole or a byte range, pinned with If-Match and versionId) and GetObjectAttributes,
to an endpoint whose URL layout it builds itself (path style, or virtual-hosted style on AWS). Proxies, S3 Express
buckets and anything else botocore knows and this does not stay on the boto3 transport (s3_boto.py).

Keep-alive connections are pooled; a connection whose answer was not read to its end is closed.
Failures to connect or to read are RetryableError (chained to the OS error); every HTTP answer is returned as it is,
for the caller to interpret (S3Source), except redirects to the bucket's region, which are followed here.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import re
import socket
import ssl
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_plus, urlsplit

from ..errors import RetryableError
from .base import Body
from .s3_transport import Answer, ListPage, S3Error
from .sigv4 import Credentials, Signer, canonical_query, uri_encode

_NS = re.compile(r"^\{[^}]*\}")
_DRAIN = 64 * 1024  # an unread body up to this long is read to its end to keep the connection
# Buckets that are valid host names: a virtual-hosted URL can carry them (with no dots over TLS, or the wildcard
# certificate does not match).
log = logging.getLogger(__name__)
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class Endpoint:
    """Where the bucket's objects are: scheme://host[:port]/base_path<key>, and the region requests are signed for."""

    scheme: str
    host: str  # with :port when not the scheme's default
    base_path: str  # "/" (virtual-hosted) or "/bucket/" (path style)
    region: str

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}{self.base_path}"


def build_endpoint(bucket: str, endpoint_url: str | None, region: str, addressing_style: str) -> Endpoint:
    """The URL layout for `bucket`: the given endpoint (path style unless asked otherwise, as S3-compatible stores
    expect) or AWS's regional one (virtual-hosted when the bucket name allows it, as botocore does)."""
    if endpoint_url:
        parts = urlsplit(endpoint_url)
        scheme, host = parts.scheme, parts.netloc
        prefix = parts.path.rstrip("/")
        virtual = addressing_style == "virtual" and _DNS_BUCKET.match(bucket) and not _is_ip(parts.hostname or "")
    else:
        scheme, prefix = "https", ""
        host = "s3.amazonaws.com" if region == "us-east-1" else f"s3.{region}.amazonaws.com"
        virtual = addressing_style != "path" and _DNS_BUCKET.match(bucket) is not None and "." not in bucket
    if virtual:
        return Endpoint(scheme, f"{bucket}.{host}", prefix + "/", region)
    return Endpoint(scheme, host, f"{prefix}/{bucket}/", region)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host == "localhost"
    return True


class _HttpAnswer:
    """An HTTP answer: status, headers (names lowercased) and the body, unread (read it to its end, or close it)."""

    def __init__(self, conn: _Connection, resp: http.client.HTTPResponse) -> None:
        self._conn = conn
        self._resp = resp
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.getheaders()}

    def readinto(self, buf: memoryview) -> int:
        """Bytes of the body into `buf` (0 at its end); RetryableError when the connection breaks or stalls."""
        try:
            n = self._resp.readinto(buf)
        except TimeoutError as exc:
            self.close()
            raise RetryableError("stall", f"no bytes for the stall timeout ({exc})") from exc
        except http.client.IncompleteRead as exc:
            self.close()
            raise RetryableError("truncated", f"the body ended early ({exc})") from exc
        except (OSError, ValueError, http.client.HTTPException) as exc:
            self.close()
            raise RetryableError("reset", f"{type(exc).__name__}: {exc}") from exc
        if self._resp.isclosed():
            self._conn.release(self._resp)
        return n

    def read(self, limit: int = 1 << 20) -> bytes:
        """A short body (an XML document), whole."""
        chunks = bytearray()
        buf = memoryview(bytearray(64 * 1024))
        while len(chunks) < limit:
            n = self.readinto(buf)
            if n == 0:
                break
            chunks += buf[:n]
        return bytes(chunks)

    def close(self) -> None:
        """Done with the answer: the connection is kept when the body was read to its end (or is short enough to
        drain), closed otherwise."""
        resp = self._resp
        if not resp.isclosed() and resp.length is not None and resp.length <= _DRAIN:
            with contextlib.suppress(OSError, ValueError, http.client.HTTPException):
                resp.read()
        if resp.isclosed():
            self._conn.release(resp)
        else:
            self._conn.discard()


class _Pool:
    """Idle keep-alive connections per host, shared by every thread (a connection serves one request at a time)."""

    def __init__(self, make: Callable[[str], http.client.HTTPConnection]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}

    def take(self, host: str) -> _Connection:
        with self._lock:
            idle = self._idle.get(host)
            conn = idle.pop() if idle else None
        return _Connection(self, host, conn)

    def give_back(self, host: str, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.setdefault(host, []).append(conn)

    def new(self, host: str) -> http.client.HTTPConnection:
        return self._make(host)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                with contextlib.suppress(OSError):
                    conn.close()


class _Connection:
    """A connection taken from the pool for one request: given back once its answer is read, closed otherwise."""

    def __init__(self, pool: _Pool, host: str, conn: http.client.HTTPConnection | None) -> None:
        self._pool = pool
        self._host = host
        self.conn = conn
        self.reused = conn is not None

    def send(self, method: str, target: str, headers: Mapping[str, str]) -> http.client.HTTPResponse:
        if self.conn is None:
            self.conn = self._pool.new(self._host)
        self.conn.request(method, target, headers=dict(headers))
        return self.conn.getresponse()

    def release(self, resp: http.client.HTTPResponse) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if resp.will_close:
            with contextlib.suppress(OSError):
                conn.close()
        else:
            self._pool.give_back(self._host, conn)

    def discard(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.close()


class S3Rest:
    """Signed requests to one bucket. Thread-safe: a pool of keep-alive connections serves every thread."""

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: Callable[[], Credentials],
        *,
        connect_timeout: float,
        read_timeout: float,
        ca_bundle: str | None,
        user_agent: str,
    ) -> None:
        self.endpoint = endpoint
        self._credentials = credentials
        self._signer = Signer(endpoint.region)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._user_agent = user_agent
        self._tls: ssl.SSLContext | None = None
        if endpoint.scheme == "https":
            self._tls = ssl.create_default_context(cafile=ca_bundle or _default_ca_bundle())
        self._pool = _Pool(self._new_connection)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------------------ requests
    def request(
        self,
        method: str,
        key: str | None,
        query: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> _HttpAnswer:
        """Send a signed request for `key` (None: the bucket itself); the answer's body is left unread.
        A redirect to the bucket's own region is followed once, with the requests after it going there."""
        answer = self._send(method, key, query, headers or {})
        region = answer.headers.get("x-amz-bucket-region")
        if answer.status in (301, 307, 400) and region and region != self.endpoint.region:
            answer.read(64 * 1024)
            answer.close()
            self._move_to(region)
            answer = self._send(method, key, query, headers or {})
        return answer

    def _send(
        self, method: str, key: str | None, query: Sequence[tuple[str, str]], extra: Mapping[str, str]
    ) -> _HttpAnswer:
        ep = self.endpoint
        path = ep.base_path + (uri_encode(key, slash=True) if key is not None else "")
        if key is None and path != "/":
            path = path.rstrip("/")  # the bucket in path style: /bucket
        target = path + ("?" + canonical_query(query) if query else "")
        signed = self._signer.sign(method, ep.host, path, query, self._credentials(), extra)
        headers = {
            "Host": ep.host,
            "User-Agent": self._user_agent,
            **{k: v for k, v in extra.items() if not k.lower().startswith("x-amz-")},
            **signed,
        }
        slot = self._pool.take(ep.host)
        reused = slot.reused
        try:
            try:
                resp = slot.send(method, target, headers)
            except (ConnectionError, http.client.BadStatusLine) as exc:
                if not reused:
                    raise
                # A keep-alive connection the server had closed while it sat idle: once more on a new one (GET and
                # HEAD are idempotent), as urllib3 does.
                log.debug("a kept connection to %s was closed (%s); sending again on a new one", ep.host, exc)
                slot.discard()
                resp = slot.send(method, target, headers)
        except TimeoutError as exc:
            slot.discard()
            raise RetryableError("timeout", f"no answer from {ep.host} within the timeout ({exc})") from exc
        except ssl.SSLError as exc:
            slot.discard()
            raise RetryableError("tls", f"TLS with {ep.host} failed: {exc}") from exc
        except (OSError, http.client.HTTPException) as exc:
            slot.discard()
            raise RetryableError("connection", f"{type(exc).__name__} talking to {ep.host}: {exc}") from exc
        return _HttpAnswer(slot, resp)

    def _new_connection(self, host: str) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._tls is not None:
            conn = http.client.HTTPSConnection(host, timeout=self._connect_timeout, context=self._tls)
        else:
            conn = http.client.HTTPConnection(host, timeout=self._connect_timeout)
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(self._read_timeout)  # a read idle this long = a stalled request
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return conn

    def _move_to(self, region: str) -> None:
        with self._lock:
            ep = self.endpoint
            if ep.region == region:
                return
            if ep.host.endswith(".amazonaws.com"):
                old = "s3.amazonaws.com" if ep.region == "us-east-1" else f"s3.{ep.region}.amazonaws.com"
                new = "s3.amazonaws.com" if region == "us-east-1" else f"s3.{region}.amazonaws.com"
                host = ep.host.replace(old, new)
            else:
                host = ep.host
            self.endpoint = Endpoint(ep.scheme, host, ep.base_path, region)
            self._signer = Signer(region)

    # ------------------------------------------------------------------------------------ operations
    name = "rest"

    def list_page(self, prefix: str, token: str | None) -> ListPage:
        """One page of ListObjectsV2 under `prefix` (encoding-type=url: keys come percent-encoded, which keeps
        control characters in a key from breaking the XML)."""
        query = [("list-type", "2"), ("prefix", prefix), ("encoding-type", "url")]
        if token:
            query.append(("continuation-token", token))
        answer = self._checked("GET", None, query, {})
        try:
            return parse_list(answer.read(64 << 20))
        finally:
            answer.close()

    def head(self, key: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str]) -> Answer:
        answer = self._checked("HEAD", key, query, headers)
        answer.close()
        return Answer(answer.status, answer.headers)

    def get(self, key: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str]) -> Answer:
        answer = self._checked("GET", key, query, headers)
        return Answer(answer.status, answer.headers, _RestBody(answer))

    def attributes(self, key: str, version_id: str | None) -> tuple[str | None, int | None]:
        query = [("attributes", "")] + ([("versionId", version_id)] if version_id else [])
        answer = self._checked("GET", key, query, {"x-amz-object-attributes": "Checksum,ObjectParts"})
        try:
            return parse_attributes(answer.read(1 << 20))
        finally:
            answer.close()

    def _checked(
        self, method: str, key: str | None, query: Sequence[tuple[str, str]], headers: Mapping[str, str]
    ) -> _HttpAnswer:
        """The answer when it is a 2xx; S3Error (with the error document's code and message) otherwise."""
        answer = self.request(method, key, query, headers)
        if 200 <= answer.status < 300:
            return answer
        document = b"" if method == "HEAD" else answer.read(64 * 1024)
        answer.close()
        code, message = error_fields(document)
        raise S3Error(answer.status, code, message, answer.headers)

    def close(self) -> None:
        self._pool.close()


class _RestBody(Body):
    def __init__(self, answer: _HttpAnswer) -> None:
        self._answer = answer

    def readinto(self, buf: memoryview) -> int:
        return self._answer.readinto(buf)

    def close(self) -> None:
        self._answer.close()


def _default_ca_bundle() -> str | None:
    """botocore's default trust store (certifi's bundle), so the fast path trusts exactly what boto3 trusts."""
    try:
        import certifi
    except ImportError:
        return None
    return str(certifi.where())


def _local(tag: str) -> str:
    return _NS.sub("", tag)


def parse_list(document: bytes) -> ListPage:
    """A ListObjectsV2 answer (encoding-type=url: keys are percent-encoded, which keeps control characters safe).

    Elements are found by their full names in the document's namespace (the root's), not by stripping each tag's:
    a page has a thousand entries of seven or so elements each."""
    try:
        root = ET.fromstring(document)
    except ET.ParseError as exc:
        raise RetryableError("bad-listing", f"the listing is not XML ({exc})") from exc
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    encoded = (root.findtext(ns + "EncodingType") or "").lower() == "url"
    key_tag, size_tag, etag_tag = ns + "Key", ns + "Size", ns + "ETag"
    objects: list[tuple[str, int, str]] = []
    for el in root.iterfind(ns + "Contents"):
        key = el.findtext(key_tag) or ""
        # S3's URL encoding of keys is a form encoding: '+' is a space (a '+' comes as %2B)
        objects.append(
            (unquote_plus(key) if encoded else key, int(el.findtext(size_tag) or 0), el.findtext(etag_tag) or "")
        )
    truncated = (root.findtext(ns + "IsTruncated") or "").lower() == "true"
    return ListPage(objects, (root.findtext(ns + "NextContinuationToken") or None) if truncated else None)


def parse_attributes(document: bytes) -> tuple[str | None, int | None]:
    """(ChecksumType, TotalPartsCount) of a GetObjectAttributes answer, each None when absent."""
    try:
        root = ET.fromstring(document)
    except ET.ParseError:
        return None, None
    kind: str | None = None
    parts: int | None = None
    for el in root.iter():
        tag = _local(el.tag)
        if tag == "ChecksumType" and el.text:
            kind = el.text
        elif tag == "TotalPartsCount" and el.text and el.text.isdigit():
            parts = int(el.text)
    return kind, parts


def error_fields(document: bytes) -> tuple[str, str]:
    """(Code, Message) of an S3 error document; empty strings when it has none."""
    if not document:
        return "", ""
    try:
        root = ET.fromstring(document)
    except ET.ParseError:
        return "", ""
    fields = {_local(el.tag): (el.text or "") for el in root}
    return fields.get("Code", ""), fields.get("Message", "")
