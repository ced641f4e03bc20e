"""A fault-injecting HTTP/1.1 reverse proxy for tests.

The downloader under test talks to S3 through boto3.  Real S3 misbehaves in
ways a well-behaved local server (moto) never does: connections get reset
half-way through a body, bodies arrive short, a socket goes silent, S3 answers
``503 SlowDown``, a bit flips somewhere between disk and client.  This module
sits between the client and the real upstream server and makes those failures
happen on demand, deterministically, so the downloader's retry / resume /
verification logic can be exercised against real sockets instead of mocks.

Design notes (why it looks the way it does):

* stdlib only (``socketserver``, ``http.server``, ``http.client``) so it can
  never disagree with the project's dependency pins.
* Requests are forwarded verbatim -- method, path+query, every header
  including ``Host`` and ``Authorization`` -- so SigV4 signatures computed by
  boto3 for the proxy's address stay valid.  Only ``Expect: 100-continue`` is
  consumed here (the proxy already answered it, and it is never signed).
* Response bodies are streamed in 64 KiB pieces, never buffered whole, so a
  fault at byte N of a large object really happens after N bytes hit the wire.
* Every client connection gets its own thread and its own upstream
  connection; a stalled connection never blocks the others, and ``stop()``
  can shut every socket down to release threads promptly.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import TypeAlias

__all__ = [
    "Action",
    "Callback",
    "Delay",
    "FaultProxy",
    "FlipBit",
    "OverCapacity",
    "RequestRecord",
    "Reset",
    "RewriteHeader",
    "Rule",
    "Stall",
    "Status",
    "Throttle",
    "Truncate",
    "s3_error_body",
]

CHUNK_SIZE = 64 * 1024

# Headers that describe one hop rather than the message.  They are dropped
# from upstream *responses* because the proxy frames its own response to the
# client (it may re-chunk, and it owns the client connection's lifetime).
_HOP_BY_HOP_RESPONSE = frozenset({"connection", "keep-alive", "transfer-encoding", "proxy-connection"})

_S3_ERROR_CODES: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "Bad Request"),
    403: ("AccessDenied", "Access Denied"),
    404: ("NoSuchKey", "The specified key does not exist."),
    416: ("InvalidRange", "The requested range is not satisfiable"),
    429: ("TooManyRequests", "Too Many Requests"),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    502: ("BadGateway", "Bad Gateway"),
    503: ("SlowDown", "Please reduce your request rate."),
    504: ("GatewayTimeout", "Gateway Timeout"),
}


def s3_error_body(code: int) -> bytes:
    """Return an S3-style ``<Error>`` XML document for an HTTP status code.

    boto3 parses the ``<Code>`` element to decide whether an error is
    retryable (``SlowDown``, ``InternalError`` ...), so injected errors look
    like the real thing rather than an empty body.
    """
    err_code, message = _S3_ERROR_CODES.get(code, (f"Http{code}", f"HTTP {code}"))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{err_code}</Code><Message>{message}</Message>"
        "<RequestId>FAULTPROXY</RequestId><HostId>faultproxy</HostId></Error>"
    ).encode()


# --------------------------------------------------------------------------
# Records and actions
# --------------------------------------------------------------------------


def _access_key_of(authorization: str) -> str:
    m = re.search(r"Credential=([^/,\s]+)/", authorization)
    return m.group(1) if m else ""


@dataclass
class RequestRecord:
    """What the proxy did with one client request.

    Appended to ``FaultProxy.log`` when the request arrives (so a ``Callback``
    sees it) and filled in as the response goes out.  ``status`` stays
    ``None`` if no status line was ever sent; ``body_bytes`` counts response
    body bytes that were actually written to the client socket.
    """

    method: str
    path: str
    range: str | None
    status: int | None = None
    body_bytes: int = 0
    fault: str | None = None
    user_agent: str = ""
    access_key: str = ""  # the key id a SigV4 Authorization header names (never the secret or the signature)


@dataclass
class Reset:
    """Send headers and ``after_bytes`` of body, then abort with a TCP RST.

    Models a load balancer or NAT dropping the connection: the client sees
    ``ECONNRESET`` rather than a clean end-of-stream.  Linux drops whatever
    the client has not read yet when the RST arrives; ``linger`` seconds of
    silence before it let the client read what was sent (a connection that
    breaks after the bytes arrived, rather than with them in flight).
    """

    after_bytes: int
    linger: float = 0.0


@dataclass
class Truncate:
    """Send headers (Content-Length unchanged) and ``after_bytes`` of body, then FIN.

    Models a server that closes cleanly but early: the client only notices
    because fewer bytes arrived than ``Content-Length`` promised.
    """

    after_bytes: int


@dataclass
class Stall:
    """Send headers and ``after_bytes`` of body, go silent, then close.

    Silence lasts ``seconds`` or until ``FaultProxy.stop()``.  Exercises the
    client's read timeout: nothing is reset, data just stops arriving.
    """

    seconds: float
    after_bytes: int = 0


@dataclass
class Status:
    """Answer with ``code`` without contacting upstream; keep the connection.

    ``body`` defaults (``None``) to an S3-style XML error for ``code``
    (``SlowDown`` for 503, ``InternalError`` for 500, ...), because that is
    what boto3's retry logic inspects.  ``headers`` are added to (and may
    override) the defaults; ``retry_after`` adds a ``Retry-After`` header.
    The request body is drained so the kept-alive connection stays in sync.
    """

    code: int
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    retry_after: str | None = None

    def payload(self) -> bytes:
        """The body that will be sent (explicit ``body`` or the S3 default)."""
        return s3_error_body(self.code) if self.body is None else self.body


@dataclass
class FlipBit:
    """Forward normally but XOR bit ``bit`` of the body byte at ``offset``.

    Models silent corruption that only a checksum can catch.  If the body is
    shorter than ``offset + 1`` bytes, nothing is changed.
    """

    offset: int
    bit: int = 0


@dataclass
class RewriteHeader:
    """Forward normally but replace (or add) response header ``name``.

    Lets a test lie about metadata, e.g. a wrong ``Content-Range`` or ``ETag``.
    ``value`` may be a function of the upstream value (``None`` if absent),
    so a lie can be relative to the truth (a Content-Range shifted by one).
    """

    name: str
    value: str | Callable[[str | None], str]

    def new_value(self, upstream: str | None) -> str:
        """The value that will be sent, given what upstream sent."""
        return self.value(upstream) if callable(self.value) else self.value


@dataclass
class Throttle:
    """Forward normally but pace the body at ``bytes_per_second``.

    A slow link: a client killed at a random moment is then usually in the
    middle of several bodies, which is what crash-consistency tests need.
    """

    bytes_per_second: float


@dataclass
class Delay:
    """Wait ``seconds`` (or until ``stop()``) before forwarding the request.

    Slow-but-correct responses, e.g. to test timeouts or request ordering.
    """

    seconds: float


@dataclass
class Callback:
    """Call ``fn(record)`` before forwarding, then forward normally.

    Tests use it to change the world mid-download (e.g. overwrite the S3
    object between two ranged GETs).  Exceptions raised by ``fn`` are stored
    in ``FaultProxy.errors`` and the client gets a ``502``.
    """

    fn: Callable[[RequestRecord], None]


Action: TypeAlias = Reset | Truncate | Stall | Status | FlipBit | RewriteHeader | Delay | Callback | Throttle


@dataclass
class Rule:
    """Which requests to sabotage, how often, and how.

    A request matches when every given criterion holds: ``match_method``
    (exact, case-insensitive), ``match_path`` (regex searched in path+query),
    ``only_ranged`` (request carries a ``Range`` header).  Rules are checked
    in insertion order and the first matching rule that still has budget
    decides.  Of the requests that reach it and match, the rule lets the
    first ``skip`` pass untouched (evaluation then continues with the next
    rule), then fires ``times`` times (``-1`` = forever).  ``fired`` and
    ``skipped`` count what actually happened.
    """

    action: Action
    match_method: str | None = None
    match_path: str | None = None
    only_ranged: bool = False
    times: int = 1
    skip: int = 0
    fired: int = field(default=0, init=False)
    skipped: int = field(default=0, init=False)

    def matches(self, method: str, path: str, has_range: bool) -> bool:
        """True if the request satisfies every criterion of this rule."""
        if self.match_method is not None and method.upper() != self.match_method.upper():
            return False
        if self.match_path is not None and re.search(self.match_path, path) is None:
            return False
        return not (self.only_ranged and not has_range)

    @property
    def exhausted(self) -> bool:
        """True once the rule has fired ``times`` times (never for ``-1``)."""
        return self.times >= 0 and self.fired >= self.times


@dataclass
class OverCapacity(Rule):
    """Matches a request that arrives while ``capacity`` others are being served: a store that throttles above a
    number of requests at once (S3 answers ``503 SlowDown`` above a request rate per prefix).  The requests it lets
    through count as being served for ``seconds_each`` after they arrived (pace them with a ``Throttle`` rule
    after this one so that they last about that long).  Give it a ``Status(503)`` action and ``times=-1``."""

    capacity: int = 4
    seconds_each: float = 0.5
    serving: list[float] = field(default_factory=list)

    def matches(self, method: str, path: str, has_range: bool) -> bool:
        """True (throttle) when ``capacity`` requests arrived within ``seconds_each``; else count this one."""
        if not super().matches(method, path, has_range):
            return False
        now = time.monotonic()
        self.serving = [t for t in self.serving if now - t < self.seconds_each]
        if len(self.serving) >= self.capacity:
            return True
        self.serving.append(now)
        return False


# --------------------------------------------------------------------------
# Server plumbing
# --------------------------------------------------------------------------


def _upstream_body_done(resp: http.client.HTTPResponse) -> bool:
    """True once the upstream body is fully consumed; closes ``resp`` if so.

    ``read1()`` does not close a Content-Length response when its length hits
    zero, and ``http.client`` refuses the next request on the connection until
    the previous response is closed -- so keep-alive depends on this.
    """
    if resp.isclosed():
        return True
    if not resp.chunked and resp.length == 0:
        resp.close()
        return True
    return False


class _ClientGone(Exception):
    """The client socket broke while we were writing; abandon the connection."""


class _Server(socketserver.TCPServer):
    """TCPServer that tracks its connection threads so ``stop()`` can reap them.

    ``http.server.HTTPServer`` is avoided on purpose: its ``server_bind`` does
    a reverse DNS lookup (``getfqdn``), which can hang in a sandbox.
    """

    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: socket.socket | tuple[bytes, socket.socket], client_address: object) -> None:
        assert isinstance(request, socket.socket)
        thread = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name=f"faultproxy-conn-{client_address}",
            daemon=True,
        )
        self.proxy._track_connection(thread, request)
        thread.start()

    def _serve_connection(self, request: socket.socket, client_address: object) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # a broken client must not print tracebacks
            pass
        finally:
            self.shutdown_request(request)
            self.proxy._untrack_connection(threading.current_thread(), request)

    def handle_error(self, request: socket.socket | tuple[bytes, socket.socket], client_address: object) -> None:
        """Stay quiet: faults break connections on purpose."""


class _Handler(BaseHTTPRequestHandler):
    """Handles every request on one client connection (keep-alive loop)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server
    _upstream: http.client.HTTPConnection | None = None

    # --- quiet logging -----------------------------------------------------

    def log_message(self, format: str, *args: object) -> None:
        """Silence per-request logging; the proxy keeps its own ``log``."""

    # --- connection lifecycle ------------------------------------------------

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            super().finish()
        self._drop_upstream()

    def _drop_upstream(self) -> None:
        if self._upstream is not None:
            self.server.proxy._untrack_upstream(self._upstream)
            self._upstream.close()
            self._upstream = None

    def _upstream_conn(self) -> http.client.HTTPConnection:
        if self._upstream is None:
            proxy = self.server.proxy
            self._upstream = http.client.HTTPConnection(
                proxy.upstream_host, proxy.upstream_port, timeout=proxy.upstream_timeout
            )
            proxy._track_upstream(self._upstream)
        return self._upstream

    # --- entry point for every method --------------------------------------

    def _dispatch(self) -> None:
        proxy = self.server.proxy
        method = self.command
        path = self.path
        range_header = self.headers.get("Range")
        record = RequestRecord(
            method=method,
            path=path,
            range=range_header,
            user_agent=self.headers.get("User-Agent", ""),
            access_key=_access_key_of(self.headers.get("Authorization", "")),
        )
        action = proxy._pick_action(method, path, range_header is not None)
        if action is not None:
            record.fault = type(action).__name__
        proxy._append_record(record)
        try:
            self._serve(record, action)
        except _ClientGone:
            self.close_connection = True
            self._drop_upstream()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_OPTIONS = do_PATCH = _dispatch

    def _serve(self, record: RequestRecord, action: Action | None) -> None:
        proxy = self.server.proxy
        if isinstance(action, Status):
            self._drain_request_body()
            self._send_status(record, action)
            return
        if isinstance(action, Delay):
            proxy._stopping.wait(action.seconds)
        elif isinstance(action, Callback):
            try:
                action.fn(record)
            except Exception as exc:  # reported via proxy.errors
                proxy._record_error(exc)
                self._drain_request_body()
                self.close_connection = True
                self._send_simple(record, 502, b"faultproxy: callback failed\n")
                return
        try:
            resp = self._forward_request()
        except (OSError, http.client.HTTPException) as exc:
            proxy._record_error(exc)
            self._drop_upstream()
            self.close_connection = True
            self._send_simple(record, 502, f"faultproxy: upstream error: {exc!r}\n".encode())
            return
        self._relay_response(record, action, resp)

    # --- request side ------------------------------------------------------

    def _request_body(self) -> Iterator[bytes]:
        """Yield the client's request body, de-chunked if it was chunked."""
        if self._is_chunked_request():
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise _ClientGone()
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers (usually none) end with an empty line.
                    while True:
                        trailer = self.rfile.readline(65537)
                        if trailer in (b"\r\n", b"\n", b""):
                            return
                remaining = size
                while remaining:
                    data = self.rfile.read(min(remaining, CHUNK_SIZE))
                    if not data:
                        raise _ClientGone()
                    remaining -= len(data)
                    yield data
                self.rfile.readline(65537)  # CRLF after the chunk
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                data = self.rfile.read(min(remaining, CHUNK_SIZE))
                if not data:
                    raise _ClientGone()
                remaining -= len(data)
                yield data

    def _drain_request_body(self) -> None:
        for _ in self._request_body():
            pass

    def _forward_request(self) -> http.client.HTTPResponse:
        """Send the request upstream verbatim and return the response object.

        A kept-alive upstream connection may have been closed by the server
        while idle; like any proxy, retry once on a fresh connection -- but
        only when there is no request body, since that was consumed already.
        """
        conn = self._upstream_conn()
        reused = conn.sock is not None
        has_body = self._is_chunked_request() or int(self.headers.get("Content-Length") or 0) > 0
        try:
            return self._send_upstream(conn)
        except (ConnectionResetError, BrokenPipeError):  # includes RemoteDisconnected
            if not reused or has_body:
                raise
        self._drop_upstream()
        return self._send_upstream(self._upstream_conn())

    def _is_chunked_request(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _send_upstream(self, conn: http.client.HTTPConnection) -> http.client.HTTPResponse:
        chunked = self._is_chunked_request()
        proxy = self.server.proxy
        path = self.path if proxy.rewrite_path is None else proxy.rewrite_path(self.path)
        # "Expect" was already answered with "100 Continue" by http.server
        headers = [(name, value) for name, value in self.headers.items() if name.lower() != "expect"]
        if proxy.rewrite_headers is not None:
            headers = proxy.rewrite_headers(self.command, path, headers)
        conn.putrequest(self.command, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.endheaders()
        for data in self._request_body():
            conn.send(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        if chunked:
            conn.send(b"0\r\n\r\n")
        return conn.getresponse()

    # --- response side -----------------------------------------------------

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
        except OSError as exc:
            raise _ClientGone() from exc

    def _send_head(self, record: RequestRecord, code: int, reason: str, headers: list[tuple[str, str]]) -> None:
        self.send_response_only(code, reason)
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        record.status = code  # before the client can see it (see _send_body_piece)
        try:
            self.end_headers()
        except OSError as exc:
            raise _ClientGone() from exc

    def _send_body_piece(self, record: RequestRecord, data: bytes, chunked: bool) -> None:
        # Count *before* writing: once sendall() returns the client may already
        # have read the bytes and be asserting on the counters.  If the write
        # fails, the count is taken back (delivery is unknown).
        if not data:
            return
        proxy = self.server.proxy
        proxy._count_body(record, len(data))
        try:
            self._write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        except _ClientGone:
            proxy._count_body(record, -len(data))
            raise

    def _send_simple(self, record: RequestRecord, code: int, body: bytes) -> None:
        headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        self._send_head(record, code, http.client.responses.get(code, ""), headers)
        if self.command != "HEAD":
            self._send_body_piece(record, body, chunked=False)

    def _send_status(self, record: RequestRecord, action: Status) -> None:
        body = action.payload()
        merged: dict[str, tuple[str, str]] = {}
        defaults = {
            "Content-Type": "application/xml",
            "x-amz-request-id": "FAULTPROXY",
        }
        for name, value in defaults.items():
            merged[name.lower()] = (name, value)
        if action.retry_after is not None:
            merged["retry-after"] = ("Retry-After", action.retry_after)
        for name, value in action.headers.items():
            merged[name.lower()] = (name, value)
        merged["content-length"] = ("Content-Length", str(len(body)))
        reason = http.client.responses.get(action.code, "Injected Fault")
        self._send_head(record, action.code, reason, list(merged.values()))
        if self.command != "HEAD" and action.code not in (204, 304):
            self._send_body_piece(record, body, chunked=False)

    def _relay_response(self, record: RequestRecord, action: Action | None, resp: http.client.HTTPResponse) -> None:
        has_body = not (self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200)
        headers = [(k, v) for k, v in resp.msg.items() if k.lower() not in _HOP_BY_HOP_RESPONSE]
        has_length = any(k.lower() == "content-length" for k, _ in headers)
        chunked_out = False
        if has_body and (resp.chunked or not has_length):
            if self.request_version >= "HTTP/1.1":
                chunked_out = True
                headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
                headers.append(("Transfer-Encoding", "chunked"))
            else:
                self.close_connection = True  # HTTP/1.0: delimit by closing
        if isinstance(action, RewriteHeader):
            upstream_value = next((v for k, v in headers if k.lower() == action.name.lower()), None)
            headers = [(k, v) for k, v in headers if k.lower() != action.name.lower()]
            headers.append((action.name, action.new_value(upstream_value)))
        self._send_head(record, resp.status, resp.reason, headers)

        limit: int | None = None
        if isinstance(action, (Reset, Truncate, Stall)):
            limit = action.after_bytes
        flip = action if isinstance(action, FlipBit) else None
        rate = action.bytes_per_second if isinstance(action, Throttle) else None

        complete = True
        if has_body:
            complete = self._relay_body(record, resp, limit, flip, chunked_out, rate)
        else:
            resp.close()  # http.client won't send the next request until it is closed
        if not complete:
            # Upstream body only partly consumed: that connection is unusable.
            self._drop_upstream()
        elif has_body and chunked_out:
            self._write(b"0\r\n\r\n")

        if isinstance(action, Reset):
            if action.linger:
                self.server.proxy._stopping.wait(action.linger)
            self._abort_with_rst()
        elif isinstance(action, Truncate):
            self._close_with_fin()
        elif isinstance(action, Stall):
            self.server.proxy._stopping.wait(action.seconds)
            self._close_with_fin()

    def _relay_body(
        self,
        record: RequestRecord,
        resp: http.client.HTTPResponse,
        limit: int | None,
        flip: FlipBit | None,
        chunked_out: bool,
        rate: float | None = None,
    ) -> bool:
        """Stream the upstream body to the client.

        Returns True if the whole upstream body was relayed (the upstream
        response is then closed, so its connection can be reused), False if
        ``limit`` cut it short.  Upstream failures mid-body abort the client
        connection with RST: the status line has already gone out, so there is
        no honest way left to report an error, and silently ending a
        Content-Length body early would leave the client hanging.
        """
        sent = 0
        started = time.monotonic()
        # Small pieces when throttled, so the pace is smooth at ~20 writes a second.
        piece = CHUNK_SIZE if rate is None else max(1024, min(CHUNK_SIZE, int(rate / 20)))
        while True:
            if _upstream_body_done(resp):
                return True
            if limit is not None and sent >= limit:
                return False
            if rate is not None:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0 and self.server.proxy._stopping.wait(ahead):
                    raise _ClientGone()
            want = piece if limit is None else min(piece, limit - sent)
            try:
                data = resp.read1(want)
                broken = not data and bool(resp.length)  # EOF before Content-Length
            except (OSError, http.client.HTTPException):
                data, broken = b"", True
            if broken:
                self._drop_upstream()
                self._abort_with_rst()
                raise _ClientGone()
            if not data:
                resp.close()
                return True
            if flip is not None and sent <= flip.offset < sent + len(data):
                buf = bytearray(data)
                buf[flip.offset - sent] ^= 1 << flip.bit
                data = bytes(buf)
            self._send_body_piece(record, data, chunked_out)
            sent += len(data)

    def _abort_with_rst(self) -> None:
        """Close the client socket with SO_LINGER(0) so the kernel sends RST."""
        self.close_connection = True
        sock = self.connection
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The makefile() reader holds a reference; the fd is only really
        # closed (and the RST only sent) once every reference is gone.
        self.rfile.close()
        sock.close()

    def _close_with_fin(self) -> None:
        """Half-close our side cleanly (FIN) and end the connection."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_WR)


# --------------------------------------------------------------------------
# Public façade
# --------------------------------------------------------------------------


class FaultProxy:
    """Reverse proxy in front of ``upstream_host:upstream_port`` that injects faults.

    Use ``start()``/``stop()`` or ``with FaultProxy(host, port) as proxy:``.
    Point boto3 at ``proxy.url``.  All counters are protected by one lock so
    tests may read them while connections are still in flight.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        #: Socket timeout for upstream connections; a safety net, not a fault.
        self.upstream_timeout: float = 30.0
        #: Maps path+query to what is sent upstream (records keep the original).  Lets a test ask a
        #: server for small listing pages (``max-keys=3``) without changing the client under test.
        self.rewrite_path: Callable[[str], str] | None = None
        #: Maps (method, path+query sent upstream, request headers) to the headers sent upstream (records keep
        #: the original).  Lets a test sign some requests anew for a server that checks signatures.
        self.rewrite_headers: Callable[[str, str, list[tuple[str, str]]], list[tuple[str, str]]] | None = None
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._log: list[RequestRecord] = []
        self._errors: list[BaseException] = []
        self._body_bytes_sent = 0
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._conn_threads: set[threading.Thread] = set()
        self._conn_socks: set[socket.socket] = set()
        self._upstreams: set[http.client.HTTPConnection] = set()

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Bind 127.0.0.1 on an ephemeral port and serve in daemon threads."""
        if self._server is not None:
            raise RuntimeError("FaultProxy already started")
        self._stopping.clear()
        self._server = _Server(self)
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="faultproxy-accept",
            daemon=True,
        )
        self._serve_thread.start()

    def stop(self) -> None:
        """Stop accepting, wake stalls/delays, shut every socket down, join threads.

        Returns promptly even while a ``Stall`` is in progress or clients hold
        idle keep-alive connections, because shutting a socket down unblocks
        the thread reading or writing it.
        """
        server = self._server
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            socks = list(self._conn_socks)
            upstreams = list(self._upstreams)
            threads = list(self._conn_threads)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for conn in upstreams:
            up_sock = conn.sock
            if up_sock is not None:
                with contextlib.suppress(OSError):
                    up_sock.shutdown(socket.SHUT_RDWR)
        if self._serve_thread is not None:
            self._serve_thread.join(timeout=5)
        for thread in threads:
            thread.join(timeout=5)
        self._server = None
        self._serve_thread = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The ephemeral port the proxy listens on (valid after ``start()``)."""
        if self._server is None:
            raise RuntimeError("FaultProxy not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` -- pass as boto3's ``endpoint_url``."""
        return f"http://127.0.0.1:{self.port}"

    # --- rules ---------------------------------------------------------------

    def add_rule(self, rule: Rule) -> Rule:
        """Append ``rule`` (checked after existing rules) and return it."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        """Remove every rule; subsequent requests are forwarded untouched."""
        with self._lock:
            self._rules.clear()

    def _pick_action(self, method: str, path: str, has_range: bool) -> Action | None:
        with self._lock:
            for rule in self._rules:
                if rule.exhausted or not rule.matches(method, path, has_range):
                    continue
                if rule.skipped < rule.skip:
                    rule.skipped += 1
                    continue
                rule.fired += 1
                return rule.action
        return None

    # --- counters ------------------------------------------------------------

    @property
    def body_bytes_sent(self) -> int:
        """Response body bytes actually written to clients, all requests."""
        with self._lock:
            return self._body_bytes_sent

    @property
    def log(self) -> list[RequestRecord]:
        """Snapshot of per-request records, in arrival order."""
        with self._lock:
            return list(self._log)

    @property
    def errors(self) -> list[BaseException]:
        """Upstream failures and ``Callback`` exceptions (normally empty)."""
        with self._lock:
            return list(self._errors)

    def reset_counters(self) -> None:
        """Zero ``body_bytes_sent`` and empty ``log`` and ``errors`` (rules untouched)."""
        with self._lock:
            self._body_bytes_sent = 0
            self._log.clear()
            self._errors.clear()

    def _count_body(self, record: RequestRecord, n: int) -> None:
        with self._lock:
            self._body_bytes_sent += n
            record.body_bytes += n

    def _append_record(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)

    def _record_error(self, exc: BaseException) -> None:
        with self._lock:
            self._errors.append(exc)

    # --- connection tracking (so stop() can release everything) ------------

    def _track_connection(self, thread: threading.Thread, sock: socket.socket) -> None:
        with self._lock:
            self._conn_threads.add(thread)
            self._conn_socks.add(sock)

    def _untrack_connection(self, thread: threading.Thread, sock: socket.socket) -> None:
        with self._lock:
            self._conn_threads.discard(thread)
            self._conn_socks.discard(sock)

    def _track_upstream(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._upstreams.add(conn)

    def _untrack_upstream(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._upstreams.discard(conn)
