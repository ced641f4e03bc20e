"""Whole-object GETs of small S3 objects through the AWS Common Runtime's S3 client (awscrt), by its public API.

A model of thousands of small files is bound by the client's work per request, not by bytes. The CRT signs, sends
and receives in native threads and hands a body over in one piece, so a GET costs the interpreter a few calls, and
many are in flight from few Python threads. It is used only for what it is good at here: one GET, no Range, of an
object that fits in the engine's read buffer (the CRT holds a body whole before it hands it over, so its memory
stays within the same bound). Its own retries are off (the engine retries), requests are signed with the backend's
credentials (a static copy, made again when they change), and its checksum validation is not used: the engine
verifies the bytes against the answer's headers, as it does for every file.

Where the caller's file for the object is open through the page cache, the CRT writes the body into it itself
(`recv_filepath`, through /proc/self/fd, so the very file the caller holds, whatever happens to its name): no
callback per body, no copy of it made or held under the GIL, and the caller reads the bytes back to check them.
This module is the only one that imports awscrt. What it cannot do (a proxy) stays on the other transports;
`CrtGetter.create` returns None when awscrt is missing or its client cannot be set up.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import RetryableError
from .sigv4 import Credentials, canonical_query, uri_encode

log = logging.getLogger(__name__)

# One event-loop thread serves every connection of the client: it only parses HTTP and copies bodies (a small
# file's cost is in the interpreter and the kernel), and each extra loop thread is one more thread calling into
# Python three times per GET, taking the GIL from the workers: with two, 40 % more context switches and 5 % more
# CPU on a model of 10,000 small files, for the same wall time (BENCHMARKS.md, "Sixth round").
CRT_EVENT_LOOP_THREADS = 1

# A descriptor's own file, reopened by the kernel whatever its name is now (Linux): where the CRT writes a body.
_FD_DIR = "/proc/self/fd"

# What the CRT reports when it could not write a body into the caller's file (errno translated): not the store's fault.
_FILE_ERRORS = frozenset(
    {"AWS_ERROR_NO_SPACE", "AWS_ERROR_NO_PERMISSION", "AWS_ERROR_MAX_FDS_EXCEEDED", "AWS_ERROR_INVALID_FILE_HANDLE"}
)

_STATUS_OF_ERROR = {"AWS_ERROR_S3_INTERNAL_ERROR": 500, "AWS_ERROR_S3_SLOW_DOWN": 503}


@dataclass(frozen=True)
class CrtResponse:
    """A GET's status, headers (names lowercased) and body length: in the caller's buffer, or None when the CRT wrote
    the body into the caller's file (its length is then the file's)."""

    status: int
    headers: dict[str, str]
    length: int | None
    error_body: bytes = b""  # an error answer's document (the CRT hands it over with the failure, not as a body)


class CrtGet:
    """One GET in flight: what its callbacks (on the CRT's threads) have seen so far."""

    def __init__(self, buf: memoryview, deadline: float, in_file: bool = False) -> None:
        self.buf = buf
        self.deadline = deadline
        self.in_file = in_file  # the CRT writes the body into the caller's file, not into `buf`
        self.request: Any = None
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.length = 0
        self.overflow = 0

    def on_headers(self, status_code: int, headers: list[tuple[str, str]], **_: Any) -> None:
        self.status = status_code
        self.headers = headers

    def on_body(self, chunk: Any, offset: int, **_: Any) -> None:
        # The CRT holds a GET's body until it is complete and hands it over in one call (it is valid only during
        # the call): one copy into the engine's buffer.
        end = offset + len(chunk)
        if end > len(self.buf):
            self.overflow = end
            return
        self.buf[offset:end] = chunk
        self.length = max(self.length, end)


class CrtGetter:
    """One CRT S3 client bound to an endpoint, a signing region and the backend's credentials."""

    def __init__(
        self,
        client: Any,
        host: str,
        base_path: str,
        region: str,
        credentials: Callable[[], Credentials],
        user_agent: str,
        stall_timeout: float,
    ) -> None:
        self._client = client
        self._host = host
        self._base_path = base_path  # "/" or "/bucket/": the percent-encoded key follows
        self._region = region
        self._credentials = credentials
        self._signing: tuple[Credentials, Any] | None = None  # (credentials, signing config)
        self._user_agent = user_agent
        self._stall_timeout = stall_timeout
        self._files = os.path.isdir(_FD_DIR)  # whether bodies can be written into the caller's files

    @classmethod
    def create(
        cls,
        base_url: str,
        region: str,
        credentials: Callable[[], Credentials],
        *,
        ca_bundle: str | None,
        connections: int,
        stall_timeout: float,
    ) -> CrtGetter | None:
        """A getter for `base_url` (scheme://host[:port]/[bucket/]); None when awscrt is not installed."""
        try:
            import awscrt
            from awscrt.io import (
                ClientBootstrap,
                ClientTlsContext,
                DefaultHostResolver,
                EventLoopGroup,
                TlsContextOptions,
            )
            from awscrt.s3 import S3Client, S3RequestTlsMode, S3RetryConfig, S3RetryMode
        except ImportError:
            return None
        scheme, _, rest = base_url.partition("://")
        host, _, path = rest.partition("/")
        if scheme not in ("http", "https") or not host:
            return None

        try:
            tls = None
            if scheme == "https":
                options = TlsContextOptions()
                if ca_bundle:
                    options.override_default_trust_store_from_path(ca_filepath=ca_bundle)
                tls = ClientTlsContext(options).new_connection_options()
            loops = EventLoopGroup(CRT_EVENT_LOOP_THREADS)
            client = S3Client(
                bootstrap=ClientBootstrap(loops, DefaultHostResolver(loops)),
                region=region,
                tls_mode=S3RequestTlsMode.ENABLED if tls is not None else S3RequestTlsMode.DISABLED,
                tls_connection_options=tls,
                credential_provider=None,  # every request carries its signing config (see _signing_config)
                part_size=8 * 1024 * 1024,  # unused: every request here is one GET
                max_active_connections_override=connections,  # a cap: GETs beyond it wait in the CRT's queue
                retry_config=S3RetryConfig(retry_mode=S3RetryMode.NONE),  # the engine retries
                connect_timeout_ms=int(min(10.0, stall_timeout) * 1000),
            )
        except Exception as exc:  # awscrt raises its own error types (an unreadable CA bundle, ...)
            log.info("the AWS CRT's S3 client cannot be set up (%s); botocore's transport carries every GET", exc)
            return None
        user_agent = f"aibrix-download awscrt/{getattr(awscrt, '__version__', '')}"
        return cls(client, host, "/" + path, region, credentials, user_agent, stall_timeout)

    def _signing_config(self) -> Any:
        """A signing config with the current credentials, made anew only when they change.

        Static credentials in the config, not a delegate provider: a delegate is one more call into Python per
        GET from the CRT's threads, and credentials that refresh do so only when asked (here, per GET)."""
        from awscrt.auth import AwsCredentialsProvider
        from awscrt.s3 import create_default_s3_signing_config

        current = self._credentials()
        signing = self._signing
        if signing is None or signing[0] != current:
            provider = AwsCredentialsProvider.new_static(current.access_key, current.secret_key, current.token)
            signing = self._signing = (
                current,
                create_default_s3_signing_config(region=self._region, credential_provider=provider),
            )
        return signing[1]

    def start(
        self,
        key: str,
        query: Sequence[tuple[str, str]],
        headers: Mapping[str, str],
        buf: memoryview,
        landing_fd: int | None = None,
    ) -> CrtGet:
        """Send a GET of the object, its body to go into the file open as `landing_fd` from offset 0 where one is
        given and this system can name it (CrtGet.in_file), else into the start of `buf`; `finish` waits for it."""
        from awscrt.http import HttpHeaders, HttpRequest
        from awscrt.s3 import S3RequestType

        path = self._base_path + uri_encode(key, slash=True) + (f"?{canonical_query(query)}" if query else "")
        request = HttpRequest(
            "GET",
            path,
            HttpHeaders([("Host", self._host), ("User-Agent", self._user_agent), *headers.items()]),
        )
        in_file = landing_fd is not None and self._files
        get = CrtGet(buf, time.monotonic() + self._stall_timeout, in_file)
        # Into the file, the CRT opens the path anew ("wb": the file is emptied first) and closes it before it reports
        # the end; no body callback then.
        body: dict[str, Any] = {"recv_filepath": f"{_FD_DIR}/{landing_fd}"} if in_file else {"on_body": get.on_body}
        get.request = self._client.make_request(
            type=S3RequestType.DEFAULT,
            operation_name="GetObject",
            request=request,
            signing_config=self._signing_config(),
            on_headers=get.on_headers,
            **body,
        )
        return get

    def abandon(self, get: CrtGet) -> None:
        """Cancel a GET nobody will read and wait until it has ended (and so no longer touches its buffer)."""
        request, get.request = get.request, None
        request.cancel()
        request.finished_future.exception()

    def finish(self, get: CrtGet, halt: threading.Event) -> CrtResponse:
        """Wait for a GET. Non-2xx answers are returned, not raised; transport failures raise RetryableError, and
        so do a body longer than its buffer, a GET not over within the stall timeout (the CRT reports no progress
        before the end of such a request) and a halt: each once the request has ended, so that nothing touches
        the buffer any more."""
        # The request holds `get`'s callbacks and `get` the request: drop that cycle now, so the CRT's memory for
        # the request goes as soon as it is over rather than at the next garbage collection.
        request, get.request = get.request, None
        cancelled = stalled = False
        while True:
            try:
                error = request.finished_future.exception(timeout=0.25)
                break
            except TimeoutError:
                if not cancelled and (time.monotonic() >= get.deadline or halt.is_set()):
                    cancelled, stalled = True, not halt.is_set()
                    request.cancel()
        del request
        if halt.is_set():
            raise RetryableError("halted", "the download is stopping")
        if stalled:
            raise RetryableError("stall", f"no complete answer within the stall timeout ({self._stall_timeout:g}s)")
        if get.overflow:
            raise RetryableError("bad-length", f"the body ran past {len(get.buf)} bytes (to {get.overflow})")
        status = int(getattr(error, "status_code", None) or get.status)
        answer_headers: list[tuple[str, str]] = getattr(error, "headers", None) or get.headers
        name = getattr(error, "name", type(error).__name__)
        if error is not None and not status:
            # The CRT classifies some answers itself and then reports no status code: what they stood for.
            status = _STATUS_OF_ERROR.get(name, 0)
        if error is not None and status < 300:
            # No answer, the connection broke after a 2xx status line, or the body could not go into the file.
            if get.in_file and (name in _FILE_ERRORS or name.startswith("AWS_ERROR_FILE_")):
                raise RetryableError("landing", f"the CRT could not write the body into the file: {name}")
            kind = "tls" if "TLS" in name else "connection"
            raise RetryableError(kind, f"{name}: {getattr(error, 'message', error)}")
        document = getattr(error, "body", None) or b""
        length = None if get.in_file else get.length
        return CrtResponse(status, {k.lower(): v for k, v in answer_headers}, length, bytes(document))

    def close(self) -> None:
        self._client = None
