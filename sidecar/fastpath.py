"""Probes answered on the socket: uvicorn's HTTP protocol class, with GET/HEAD of the route table's non-blocking
routes (the probes: sidecar/routes.py) short-circuited.

A Kubernetes probe is a tiny GET whose answer `ProbeAnswers` already holds rendered. Going through uvicorn's
ASGI cycle for it (a parser callback per header, a scope dict, a Task, an Event, a keep-alive timer per
response) is most of its cost: measured at 200 probes/s, ~0.27 ms of CPU per probe that way against ~0.15 ms
here (bench/bench_sidecar.py --probe-cost). This protocol recognises such a request in the raw bytes and
writes the pre-encoded answer straight to the transport. Anything else - another path or
method, a request with a body, an upgrade, something it does not understand - hands the connection (with
the bytes read so far) to uvicorn's own protocol, the way uvicorn itself hands a connection to its WebSocket
protocol, and from then on uvicorn serves that connection as usual (the ASGI app, from the same route table).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any, cast

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from .routes import Answer, Route

log = logging.getLogger(__name__)

MAX_HEAD = 8192  # longer request heads are not probes: uvicorn's parser gets them
# request headers after which the request is not a plain probe: uvicorn handles those
_NOT_PLAIN = (b"\r\ncontent-length:", b"\r\ntransfer-encoding:", b"\r\nupgrade:", b"\r\nexpect:")
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_SERVER_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\n"
    b"connection: close\r\n\r\nInternal Server Error"
)


# What of uvicorn this module relies on beyond its documented interface (PRIVATE_NAMES.md): how uvicorn constructs an
# HTTP protocol class given as Config(http=...), the server state's `connections` and `default_headers`, and
# AutoHTTPProtocol's module. `uvicorn_contract_holds` checks them; where they changed, the sidecar serves the probes
# through the ASGI app instead (http="auto"), slower but the same answers.
UVICORN_PROTOCOL_PARAMETERS = ("config", "server_state", "app_state", "_loop")
UVICORN_SERVER_STATE_FIELDS = ("connections", "default_headers")


def uvicorn_contract_holds() -> str | None:
    """None when uvicorn still is what ProbeProtocol was written against; otherwise what changed."""
    import inspect

    from uvicorn.server import ServerState

    params = tuple(inspect.signature(AutoHTTPProtocol.__init__).parameters)[1:]
    if params[: len(UVICORN_PROTOCOL_PARAMETERS)] != UVICORN_PROTOCOL_PARAMETERS:
        return f"uvicorn's HTTP protocols now take {params}"
    state = ServerState()
    missing = [name for name in UVICORN_SERVER_STATE_FIELDS if not hasattr(state, name)]
    return f"uvicorn's ServerState has no {', '.join(missing)}" if missing else None


def http_protocol(routes: Mapping[str, Route]) -> type[asyncio.Protocol] | str:
    """What to pass as uvicorn.Config(http=...): the probe protocol, or uvicorn's own where its internals moved."""
    changed = uvicorn_contract_holds()
    if changed is not None:
        log.warning("probes go through the ASGI app: %s (sidecar/fastpath.py)", changed)
        return "auto"
    return probe_protocol(routes)


def probe_protocol(routes: Mapping[str, Route]) -> type[asyncio.Protocol]:
    """The class to pass as uvicorn.Config(http=...): it answers the routes that never wait."""
    on_socket = {path.encode(): route.answer for path, route in routes.items() if not route.blocking}
    return type("ProbeProtocol", (ProbeProtocol,), {"routes": on_socket})


class ProbeProtocol(asyncio.Protocol):
    routes: dict[bytes, Callable[[], Answer]] = {}
    _default_headers: list[tuple[bytes, bytes]] | None = None  # shared by all connections
    _default_block = b""

    def __init__(
        self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        self._uvicorn_args: dict[str, Any] = {
            "config": config,
            "server_state": server_state,
            "app_state": app_state,
            "_loop": _loop,
        }
        self.server_state = server_state
        self.loop = _loop or asyncio.get_event_loop()
        self.keep_alive_timeout: float = config.timeout_keep_alive
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.last_active = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------------------ the connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.server_state.connections.add(self)
        self.last_active = self.loop.time()
        self.idle_timer = self.loop.call_later(self.keep_alive_timeout, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def _check_idle(self) -> None:
        # One timer per connection that re-arms itself, rather than one per response as uvicorn does.
        idle = self.loop.time() - self.last_active
        if idle >= self.keep_alive_timeout:
            self.idle_timer = None
            if self.transport is not None:
                self.transport.close()
        else:
            self.idle_timer = self.loop.call_later(self.keep_alive_timeout - idle, self._check_idle)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: nothing is ever in flight here (answers are written at once)."""
        if self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:  # a client that sends probes without reading the answers
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    # ------------------------------------------------------------------------------------- requests
    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None:
            return
        buf = self.buf + data if self.buf else data
        self.last_active = self.loop.time()
        while buf:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    self._hand_over(buf)
                    return
                break
            try:
                response = self._respond(buf[:end])
            except Exception:
                log.exception("probe failed")
                transport.write(_SERVER_ERROR)
                transport.close()
                return
            if response is None:
                self._hand_over(buf)
                return
            transport.write(response[0])
            self.server_state.total_requests += 1
            buf = buf[end + 4 :]
            if response[1]:  # connection: close
                transport.close()
                buf = b""
                break
        self.buf = buf

    def _respond(self, head: bytes) -> tuple[bytes, bool] | None:
        """(response bytes, close after it) for a plain GET/HEAD of a probe path; None for anything else."""
        eol = head.find(b"\r\n")
        line = head if eol < 0 else head[:eol]
        parts = line.split(b" ")
        if len(parts) != 3:
            return None
        method, target, version = parts
        if method != b"GET" and method != b"HEAD":
            return None
        q = target.find(b"?")
        route = self.routes.get(target if q < 0 else target[:q])  # the query is ignored, as Starlette does
        if route is None or (version != b"HTTP/1.1" and version != b"HTTP/1.0"):
            return None
        close = version == b"HTTP/1.0"  # as uvicorn: no keep-alive for HTTP/1.0
        if eol >= 0:
            headers = head[eol:].lower()
            for name in _NOT_PLAIN:
                if name in headers:
                    return None
            at = headers.find(b"\r\nconnection:")
            if at >= 0 and not close:
                stop = headers.find(b"\r\n", at + 13)
                value = headers[at + 13 :] if stop < 0 else headers[at + 13 : stop]
                close = b"close" in {t.strip() for t in value.split(b",")}
        answer = route()
        cls = type(self)
        default = self.server_state.default_headers  # date and server, replaced by uvicorn once a second
        if default is not cls._default_headers:
            cls._default_headers = default
            cls._default_block = b"".join(k + b": " + v + b"\r\n" for k, v in default)
        out = [
            _STATUS_LINES[answer.status],
            cls._default_block,
            answer.headers,
            b"connection: close\r\n\r\n" if close else b"\r\n",
        ]
        if method == b"GET":
            out.append(answer.body)
        return b"".join(out), close

    def _hand_over(self, buf: bytes) -> None:
        """From here on, uvicorn serves this connection, starting with the bytes not answered yet."""
        assert self.transport is not None
        self.server_state.connections.discard(self)
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        self.buf = b""
        protocol = AutoHTTPProtocol(**self._uvicorn_args)
        transport, self.transport = self.transport, None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(buf)
