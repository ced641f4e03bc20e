"""Whole-object GETs of small S3 objects through the AWS Common Runtime's S3 client (awscrt).

A model of thousands of small files is bound by the client's work per request, not by bytes: Python's
HTTP stack and SigV4 signing cost about 1 ms of CPU per GET, more than the kernel's share of writing the
file. The CRT signs, sends and receives in native threads, and hands the body over in one piece, so one GET
costs the interpreter a few Python calls. It is used only for what it is good at here: one GET, no Range,
of an object that fits in the engine's read buffer (the CRT holds a body whole before it hands it over, so
its memory stays within the same bound). Its own retries are off (the engine retries), the request is
signed with botocore's credentials (refreshed as botocore refreshes them), and its checksum validation is
not used: the engine verifies the bytes against the response's headers, as it does for every file, and
writes them itself (O_DIRECT, batched durability).

This module is the only one that imports awscrt. What it cannot do (a proxy) stays on botocore's transport;
`CrtGetter.create` returns None when awscrt is missing or its client cannot be set up.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import RetryableError

log = logging.getLogger(__name__)

# The CRT calls into Python from its own threads, four times per GET (headers, body, finish, shutdown). A thread
# the interpreter does not know gets a new thread state for each call and loses it at the end: an allocation, a
# 16 KiB frame stack mapped and unmapped (a TLB shootdown on every core) and a gettid, each time; 40,000 mmaps
# per 10,000 files. One extra PyGILState_Ensure, never released, keeps the thread state of each CRT thread for
# the life of the process; the CRT's own Ensure/Release pairs then only take and drop the GIL. Py_IsInitialized()
# turns false as finalization begins and awscrt checks it before every call in, so no CRT thread uses its kept
# state after the interpreter frees it.
_THREADS_WITH_STATE: set[int] = set()


def _keep_thread_state() -> None:
    ident = threading.get_ident()
    if ident not in _THREADS_WITH_STATE:
        _THREADS_WITH_STATE.add(ident)
        ctypes.pythonapi.PyGILState_Ensure()


def _on_done(**_: Any) -> None:
    # Runs on the thread that finishes GETs, which may run no other callback of ours.
    _keep_thread_state()


# The CRT's channels read a socket and pass data on in messages of aws-c-io's `g_aws_channel_max_fragment_size`
# bytes, 16 KiB by default: 16 reads, event-loop wake-ups and timer resets per 256 KiB body, two-thirds of the
# CRT's system calls on a model of small files. aws-c-io declares the variable public for applications to tune,
# but the awscrt wheel links it statically and exports no symbol for it: it is found through the extension's
# symbol table and set, with checks, before the client makes its first connection (BENCHMARKS.md).
_FRAGMENT_SYMBOL = b"g_aws_channel_max_fragment_size"
_DEFAULT_FRAGMENT = 16 * 1024
CRT_FRAGMENT = 256 * 1024


def _symbol_offset(path: str, name: bytes) -> int | None:
    """st_value of the 8-byte data object `name` in the ELF64 shared object at `path`, when the first loadable
    segment starts at address 0 (so the object lies at load base + st_value); None otherwise."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2 or header[5] != 1:  # 64-bit, little-endian
            return None
        phoff, shoff = struct.unpack_from("<QQ", header, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", header, 54)
        f.seek(phoff)
        programs = f.read(phentsize * phnum)
        loads = [struct.unpack_from("<IIQQ", programs, i * phentsize) for i in range(phnum)]
        first_load = next((p for p in loads if p[0] == 1), None)  # PT_LOAD
        if first_load is None or first_load[3] != 0:
            return None
        f.seek(shoff)
        table = f.read(shentsize * shnum)
        sections = [struct.unpack_from("<IIQQQQII", table, i * shentsize) for i in range(shnum)]
        for _name, kind, _flags, _addr, offset, size, link, _info in sections:
            if kind != 2:  # SHT_SYMTAB: present unless the library was stripped
                continue
            f.seek(sections[link][4])
            strings = f.read(sections[link][5])
            f.seek(offset)
            symbols = f.read(size)
            for i in range(0, len(symbols) - 23, 24):
                st_name, st_info, _other, _shndx, st_value, st_size = struct.unpack_from("<IBBHQQ", symbols, i)
                if st_info & 0xF == 1 and st_size == 8 and strings[st_name : st_name + len(name) + 1] == name + b"\0":
                    return int(st_value)
    return None


def _load_base(path: str) -> int | None:
    real = os.path.realpath(path)
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and int(fields[2], 16) == 0 and os.path.realpath(fields[5].strip()) == real:
                return int(fields[0].split("-")[0], 16)
    return None


def raise_fragment_size(size: int = CRT_FRAGMENT) -> int | None:
    """Set the CRT's channel fragment size (see above); its value afterwards, None where it cannot be found.
    Only the default is ever overwritten, so a second call, or a value someone else chose, is left as it is."""
    try:
        import _awscrt  # type: ignore[import-not-found]  # awscrt's extension module: no stubs

        path = _awscrt.__file__
        if not sys.platform.startswith("linux") or not path:
            return None
        offset = _symbol_offset(path, _FRAGMENT_SYMBOL)
        base = _load_base(path) if offset is not None else None
    except (ImportError, OSError, struct.error, ValueError, IndexError):
        return None
    if offset is None or base is None:
        return None
    value = ctypes.c_size_t.from_address(base + offset)
    if value.value == _DEFAULT_FRAGMENT:
        value.value = size
    return int(value.value)


# One event-loop thread serves every connection of the client: it only parses HTTP and copies bodies (a small
# file's cost is in the interpreter and the kernel), and each extra loop thread is one more thread calling into
# Python three times per GET, taking the GIL from the workers: with two, 40 % more context switches and 5 % more
# CPU on a model of 10,000 small files, for the same wall time (BENCHMARKS.md, "Sixth round").
CRT_EVENT_LOOP_THREADS = 1

_STATUS_OF_ERROR = {"AWS_ERROR_S3_INTERNAL_ERROR": 500, "AWS_ERROR_S3_SLOW_DOWN": 503}


@dataclass(frozen=True)
class CrtResponse:
    """A GET's status, headers (names lowercased) and body length (the body is in the caller's buffer)."""

    status: int
    headers: dict[str, str]
    length: int


class CrtGet:
    """One GET in flight: what its callbacks (on the CRT's threads) have seen so far."""

    def __init__(self, buf: memoryview, deadline: float) -> None:
        self.buf = buf
        self.deadline = deadline
        self.request: Any = None
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.length = 0
        self.overflow = 0

    def on_headers(self, status_code: int, headers: list[tuple[str, str]], **_: Any) -> None:
        _keep_thread_state()
        self.status = status_code
        self.headers = headers

    def on_body(self, chunk: Any, offset: int, **_: Any) -> None:
        # The CRT holds a GET's body until it is complete and hands it over in one call (it is valid only during
        # the call): one copy into the engine's buffer.
        _keep_thread_state()
        end = offset + len(chunk)
        if end > len(self.buf):
            self.overflow = end
            return
        self.buf[offset:end] = chunk
        self.length = max(self.length, end)


class CrtGetter:
    """One CRT S3 client bound to an endpoint, a signing region and botocore's credentials."""

    def __init__(
        self,
        client: Any,
        host: str,
        base_path: str,
        region: str,
        credentials: Callable[[], tuple[str, str, str | None]],
        user_agent: str,
        stall_timeout: float,
    ) -> None:
        self._client = client
        self._host = host
        self._base_path = base_path  # "/" or "/bucket/": the percent-encoded key follows
        self._region = region
        self._credentials = credentials
        self._signing: tuple[tuple[str, str, str | None], Any] | None = None  # (credentials, signing config)
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
        fragment = raise_fragment_size()
        log.debug("CRT channel fragment size: %s", fragment or "default (not found)")
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
        """A signing config with botocore's current credentials, made anew only when they change.

        Static credentials in the config, not a delegate provider: a delegate is one more call into Python per
        GET from the CRT's threads, and botocore refreshes its credentials only when asked (here, per GET)."""
        from awscrt.auth import AwsCredentialsProvider
        from awscrt.s3 import create_default_s3_signing_config

        current = self._credentials()
        signing = self._signing
        if signing is None or signing[0] != current:
            provider = AwsCredentialsProvider.new_static(*current)
            signing = self._signing = (
                current,
                create_default_s3_signing_config(region=self._region, credential_provider=provider),
            )
        return signing[1]

    def start(self, encoded_key: str, query: str, headers: dict[str, str], buf: memoryview) -> CrtGet:
        """Send a GET of the object, its body to go into the start of `buf`; `finish` waits for it."""
        from awscrt.http import HttpHeaders, HttpRequest
        from awscrt.s3 import S3RequestType

        path = self._base_path + encoded_key + (f"?{query}" if query else "")
        request = HttpRequest(
            "GET",
            path,
            HttpHeaders([("Host", self._host), ("User-Agent", self._user_agent), *headers.items()]),
        )
        get = CrtGet(buf, time.monotonic() + self._stall_timeout)
        # on_done only keeps its thread's state (the request's future carries the outcome, set just before).
        get.request = self._client.make_request(
            type=S3RequestType.DEFAULT,
            operation_name="GetObject",
            request=request,
            signing_config=self._signing_config(),
            on_headers=get.on_headers,
            on_body=get.on_body,
            on_done=_on_done,
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
            # No answer, or the connection broke after a 2xx status line: a transport failure.
            kind = "tls" if "TLS" in name else "connection"
            raise RetryableError(kind, f"{name}: {getattr(error, 'message', error)}")
        return CrtResponse(status, {k.lower(): v for k, v in answer_headers}, get.length)

    def close(self) -> None:
        self._client = None
