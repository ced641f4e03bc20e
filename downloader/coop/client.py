"""Asking a peer for a range (protocol.py): one GET over a keep-alive connection to its sidecar.

An answer is either the bytes (a 206 whose headers say exactly the range, size and version asked for), a refusal
that says why (the asker goes to the source), or a failure: the peer could not be reached, kept silent past the
wait, or answered something else. Nothing here raises: every outcome is a value the caller decides on.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..config import Secret
from ..jobs import same_version
from ..sources.base import RemoteFile, Span
from .protocol import (
    FROM_HEADER,
    REFUSAL_HEADER,
    VERSION_HEADER,
    WAIT_HEADER,
    Refusal,
    bearer,
    content_range,
    file_target,
)

CONNECT_TIMEOUT = 5.0  # seconds to reach a peer (a member on the same network answers in well under one)
ANSWER_GRACE = 5.0  # past the wait we gave it, the seconds a peer has for its answer's first line
_CLOSED_WHILE_IDLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


@dataclass
class Bytes:
    """A 206 with the range asked for: read `response` (with the stall timeout on its socket), then `finish`."""

    response: http.client.HTTPResponse
    connection: http.client.HTTPConnection


@dataclass(frozen=True)
class Refused:
    refusal: Refusal


@dataclass(frozen=True)
class Failed:
    reason: str
    unreachable: bool = False  # nobody listens there (yet): the connection was refused


Answer = Bytes | Refused | Failed


class PeerClient:
    """Connections to the group's sidecars, kept alive between requests, each carrying one request at a time."""

    def __init__(self, token: Secret, self_url: str, stall_timeout: float) -> None:
        self._token = token
        self._self_url = self_url
        self.stall_timeout = stall_timeout
        self._lock = threading.Lock()
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}

    def ask(self, peer: str, f: RemoteFile, span: Span) -> Answer:
        """Ask `peer` for bytes `span` of the listed version of `f`."""
        headers = {
            "Authorization": bearer(self._token.reveal()),
            "Range": f"bytes={span.start}-{span.end}",
            VERSION_HEADER: f.version,
            WAIT_HEADER: f"{self.stall_timeout:g}",
            FROM_HEADER: self._self_url,
        }
        conn, reused = self._take(peer)
        while True:
            try:
                conn.request("GET", file_target(f.rel_path), headers=headers)
                assert conn.sock is not None
                conn.sock.settimeout(self.stall_timeout + ANSWER_GRACE)  # it may hold the request up to the wait
                resp = conn.getresponse()
                break
            except TimeoutError:
                conn.close()
                return Failed(f"no answer within {self.stall_timeout + ANSWER_GRACE:g}s")
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused and isinstance(exc, _CLOSED_WHILE_IDLE):
                    # The peer closed a kept-alive connection while it was idle (its keep-alive timeout), as
                    # our request went out: no answer was lost; ask again on a new connection.
                    conn, reused = self._connect(peer), False
                    continue
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                return Failed(reason, unreachable=isinstance(exc, ConnectionRefusedError))
        if resp.status == 206:
            wrong = _wrong_range(resp, f, span)
            if wrong:
                conn.close()
                return Failed(f"answered {wrong}")
            conn.sock.settimeout(self.stall_timeout)  # from here on: no byte for the stall timeout is a failure
            return Bytes(resp, conn)
        refusal = _refusal(resp)
        self.finish(peer, resp, conn)
        if refusal is None:
            return Failed(f"answered HTTP {resp.status}")
        return Refused(refusal)

    def finish(self, peer: str, resp: http.client.HTTPResponse, conn: http.client.HTTPConnection) -> None:
        """Done with an answer: its connection is kept for the next request when the answer was read to its end
        (a short one is read here), closed otherwise."""
        if not resp.isclosed() and resp.length is not None and resp.length <= 64 * 1024:
            with contextlib.suppress(OSError, http.client.HTTPException):
                resp.read()
        if resp.isclosed() and not resp.will_close:
            with self._lock:
                self._idle.setdefault(peer, []).append(conn)
        else:
            conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _take(self, peer: str) -> tuple[http.client.HTTPConnection, bool]:
        """A connection to `peer`, and whether it is a kept-alive one."""
        with self._lock:
            idle = self._idle.get(peer)
            if idle:
                return idle.pop(), True
        return self._connect(peer), False

    def _connect(self, peer: str) -> http.client.HTTPConnection:
        parts = urlsplit(peer)
        assert parts.hostname is not None and parts.port is not None
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=CONNECT_TIMEOUT)


def _wrong_range(resp: http.client.HTTPResponse, f: RemoteFile, span: Span) -> str | None:
    """What is wrong with a 206's headers for the range asked for; None when they say exactly it."""
    expected = content_range(span.start, span.end, f.size)
    got = resp.getheader("content-range")
    if got != expected:
        return f"Content-Range {got!r} for {expected!r}"
    if resp.length != span.end - span.start + 1:
        return f"Content-Length {resp.length} for a range of {span.end - span.start + 1} bytes"
    if not same_version(resp.getheader(VERSION_HEADER) or "", f.version):
        return "another version of the file"
    return None


def _refusal(resp: http.client.HTTPResponse) -> Refusal | None:
    try:
        refusal = Refusal(resp.getheader(REFUSAL_HEADER, ""))
    except ValueError:
        return None
    return refusal if refusal.status == resp.status else None
