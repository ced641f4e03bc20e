"""Whole-object GETs of small S3 objects through the AWS Common Runtime's S3 client (awscrt).

A model of thousands of small files is bound by the client's work per request, not by bytes: Python's
HTTP stack and SigV4 signing cost about 1 ms of CPU per GET, more than the kernel's share of writing the
file. The CRT signs, sends, receives and writes the body to the file in native threads, so one GET costs
the interpreter a few Python calls. It is used only for what it is good at here: one GET, no Range, of an
object small enough that the CRT's whole-body buffer stays small (`MAX_OBJECT_SIZE`). Its own retries are
off (the engine retries), the request is signed with botocore's credentials (refreshed as botocore
refreshes them), and its checksum validation is not used: the caller verifies the file it wrote against
the response's headers, the same way as every other file.

This module is the only one that imports awscrt. Everything it cannot do (a proxy, a TLS setup it cannot
build) stays on the botocore path; `CrtGetter.create` returns None when awscrt is missing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import RetryableError

log = logging.getLogger(__name__)

# The CRT buffers a DEFAULT request's whole body before it writes the file: this bounds that memory to
# connections x 1 MiB. Larger files go through the engine's own buffers.
MAX_OBJECT_SIZE = 1024 * 1024
_STATUS_OF_ERROR = {"AWS_ERROR_S3_INTERNAL_ERROR": 500, "AWS_ERROR_S3_SLOW_DOWN": 503}


@dataclass(frozen=True)
class CrtResponse:
    """A GET's status and headers (names lowercased). The body is in the file the GET was asked to write."""

    status: int
    headers: dict[str, str]
    error_body: bytes = b""


class CrtGetter:
    """One CRT S3 client bound to an endpoint, a signing region and botocore's credentials."""

    def __init__(self, client: Any, host: str, base_path: str, user_agent: str, stall_timeout: float) -> None:
        self._client = client
        self._host = host
        self._base_path = base_path  # "/" or "/bucket/": the percent-encoded key follows
        self._user_agent = user_agent
        self._stall_timeout = stall_timeout

    @classmethod
    def create(
        cls,
        base_url: str,
        region: str,
        credentials: Callable[[], tuple[str, str, str | None]],
        *,
        ca_bundle: str | None,
        connections: int,
        stall_timeout: float,
    ) -> CrtGetter | None:
        """A getter for `base_url` (scheme://host[:port]/[bucket/]); None when awscrt is not installed."""
        try:
            import awscrt
            from awscrt.auth import AwsCredentials, AwsCredentialsProvider
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

        def provide() -> Any:
            access_key, secret_key, token = credentials()
            return AwsCredentials(access_key, secret_key, token)

        try:
            tls = None
            if scheme == "https":
                options = TlsContextOptions()
                if ca_bundle:
                    options.override_default_trust_store_from_path(ca_filepath=ca_bundle)
                tls = ClientTlsContext(options).new_connection_options()
            loops = EventLoopGroup(2)
            client = S3Client(
                bootstrap=ClientBootstrap(loops, DefaultHostResolver(loops)),
                region=region,
                tls_mode=S3RequestTlsMode.ENABLED if tls is not None else S3RequestTlsMode.DISABLED,
                tls_connection_options=tls,
                credential_provider=AwsCredentialsProvider.new_delegate(provide),
                part_size=8 * MAX_OBJECT_SIZE,
                max_active_connections_override=connections,
                retry_config=S3RetryConfig(retry_mode=S3RetryMode.NONE),  # the engine retries
                connect_timeout_ms=int(min(10.0, stall_timeout) * 1000),
            )
        except Exception as exc:  # awscrt raises its own error types (an unreadable CA bundle, ...)
            log.info("the AWS CRT's S3 client cannot be set up (%s); botocore's transport carries every GET", exc)
            return None
        user_agent = f"aibrix-download awscrt/{getattr(awscrt, '__version__', '')}"
        return cls(client, host, "/" + path, user_agent, stall_timeout)

    def get(
        self, encoded_key: str, query: str, headers: dict[str, str], dest: str, halt: threading.Event
    ) -> CrtResponse:
        """GET the object into the file at `dest` (created or truncated). Non-2xx answers are returned, not
        raised; transport failures raise RetryableError, and so does a halt (after the request has ended, so
        nothing writes `dest` any more)."""
        from awscrt.http import HttpHeaders, HttpRequest
        from awscrt.s3 import S3RequestType

        path = self._base_path + encoded_key + (f"?{query}" if query else "")
        request = HttpRequest(
            "GET",
            path,
            HttpHeaders([("Host", self._host), ("User-Agent", self._user_agent), *headers.items()]),
        )
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def on_headers(status_code: int, headers: list[tuple[str, str]], **_: Any) -> None:
            outcome["status"] = status_code
            outcome["headers"] = {k.lower(): v for k, v in headers}

        def on_done(
            error: Exception | None = None,
            error_headers: list[tuple[str, str]] | None = None,
            error_body: bytes | None = None,
            status_code: int | None = None,
            **_: Any,
        ) -> None:
            outcome["error"] = error
            if error_headers is not None:
                outcome["headers"] = {k.lower(): v for k, v in error_headers}
            if status_code is not None:
                outcome["status"] = status_code
            outcome["error_body"] = error_body or b""
            done.set()

        meta = self._client.make_request(
            type=S3RequestType.DEFAULT,
            operation_name="GetObject",
            request=request,
            recv_filepath=dest,
            on_headers=on_headers,
            on_done=on_done,
        )
        # The CRT reports no progress for such a request and writes the file only at its end: a GET of at most
        # MAX_OBJECT_SIZE that is not over within the stall timeout is stalled.
        deadline = time.monotonic() + self._stall_timeout
        while not done.wait(0.25):
            stalled = time.monotonic() >= deadline
            if stalled or halt.is_set():
                meta.cancel()
                done.wait()  # the CRT no longer touches `dest` once the request has ended
                if stalled:
                    raise RetryableError(
                        "stall", f"no complete answer within the stall timeout ({self._stall_timeout:g}s)"
                    )
        if halt.is_set():
            raise RetryableError("halted", "the download is stopping")
        error = outcome.get("error")
        status = int(outcome.get("status") or 0)
        name = getattr(error, "name", type(error).__name__)
        if error is not None and not status:
            # The CRT classifies some answers itself and then reports no status code: what they stood for.
            status = _STATUS_OF_ERROR.get(name, 0)
        if error is not None and status < 300:
            # No answer, or the connection broke after a 2xx status line: a transport failure.
            kind = "tls" if "TLS" in name else "connection"
            raise RetryableError(kind, f"{name}: {getattr(error, 'message', error)}")
        return CrtResponse(status, outcome.get("headers", {}), outcome.get("error_body", b""))

    def close(self) -> None:
        self._client = None
