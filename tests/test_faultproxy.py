"""Tests for the fault-injecting proxy in ``tests/faultproxy.py``.

Everything runs against real sockets on 127.0.0.1: a tiny stdlib upstream
server defined here (so every byte is known and Range/chunking are under our
control) and, for the end-to-end check, moto's threaded S3 server driven by
boto3.  The proxy is test infrastructure that other tests will trust, so each
fault is checked for its *observable* effect on a client, not for internals.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import random
import re
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.faultproxy import (
    Callback,
    Delay,
    FaultProxy,
    FlipBit,
    RequestRecord,
    Reset,
    RewriteHeader,
    Rule,
    Stall,
    Status,
    Truncate,
)

BODY = random.Random(1234).randbytes(300_000)  # > 4 proxy chunks of 64 KiB
CHUNKS = [b"alpha-", b"x" * 100_000, b"-middle-", os.urandom(5000), b"-omega"]
CHUNKED_BODY = b"".join(CHUNKS)
TIMEOUT = 5.0


# --------------------------------------------------------------------------
# A tiny, fully known upstream server
# --------------------------------------------------------------------------


class _UpstreamServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _UpstreamHandler)
        self.body = BODY
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.connections: set[tuple[str, int]] = set()
        self.echoes: list[dict[str, Any]] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: the proxy abandons upstream responses on purpose (Reset, Truncate)."""


class _UpstreamHandler(BaseHTTPRequestHandler):
    """GET/HEAD /data (Range aware), /chunked, /empty (204), /drop-after; PUT|POST /echo."""

    protocol_version = "HTTP/1.1"
    server: _UpstreamServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _note(self) -> None:
        with self.server.lock:
            self.server.requests.append((self.command, self.path))
            self.server.connections.add(self.client_address)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self._note()
        if self.path.startswith("/data"):
            self._data()
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in CHUNKS:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/drop-after":
            # Answer, then silently close the kept-alive connection (no
            # "Connection: close"), like a server with an idle timeout.
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            self.close_connection = True
        elif self.path == "/empty":
            self.send_response(204)
            self.end_headers()
        else:
            self.send_error(404)

    def _data(self) -> None:
        body = self.server.body
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else len(body) - 1, len(body) - 1)
            payload = body[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
        else:
            payload = body
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("ETag", '"' + hashlib.md5(body).hexdigest() + '"')
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_PUT(self) -> None:
        self._note()
        body = self._read_body()
        echo = {
            "method": self.command,
            "path": self.path,
            "headers": list(self.headers.items()),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body_len": len(body),
        }
        with self.server.lock:
            self.server.echoes.append(echo)
        payload = json.dumps(echo).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_POST = do_PUT


@pytest.fixture
def upstream() -> Iterator[_UpstreamServer]:
    server = _UpstreamServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def proxy(upstream: _UpstreamServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", upstream.port) as p:
        yield p


def _conn(proxy: FaultProxy, timeout: float = TIMEOUT) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=timeout)


def _get(
    proxy: FaultProxy, path: str = "/data", headers: dict[str, str] | None = None
) -> tuple[http.client.HTTPResponse, bytes]:
    conn = _conn(proxy)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


def _raw_exchange(proxy: FaultProxy, request: bytes, timeout: float = TIMEOUT) -> tuple[bytes, BaseException | None]:
    """Send raw bytes, read until EOF or error; return (everything read, error)."""
    data = b""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as sock:
        sock.sendall(request)
        try:
            while True:
                piece = sock.recv(65536)
                if not piece:
                    return data, None
                data += piece
        except OSError as exc:
            return data, exc


def _split_head(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


# --------------------------------------------------------------------------
# Plain forwarding
# --------------------------------------------------------------------------


def test_forwards_content_length_and_range_with_keepalive(proxy: FaultProxy, upstream: _UpstreamServer) -> None:
    conn = _conn(proxy)
    conn.request("GET", "/data")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Length") == str(len(BODY))
    assert resp.read() == BODY
    first_sock = conn.sock

    conn.request("GET", "/data?part=2", headers={"Range": "bytes=100-199"})
    resp = conn.getresponse()
    assert resp.status == 206
    assert resp.getheader("Content-Range") == f"bytes 100-199/{len(BODY)}"
    assert resp.read() == BODY[100:200]
    assert conn.sock is first_sock, "client connection must be kept alive"
    conn.close()

    assert proxy.body_bytes_sent == len(BODY) + 100
    assert proxy.log == [
        RequestRecord("GET", "/data", None, 200, len(BODY), None),
        RequestRecord("GET", "/data?part=2", "bytes=100-199", 206, 100, None),
    ]
    assert upstream.requests == [("GET", "/data"), ("GET", "/data?part=2")]
    assert len(upstream.connections) == 1, "one upstream connection per client connection"


def test_forwards_chunked_response(proxy: FaultProxy) -> None:
    conn = _conn(proxy)
    conn.request("GET", "/chunked")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.chunked, "chunked upstream response is re-emitted chunked"
    assert resp.read() == CHUNKED_BODY
    conn.request("GET", "/data", headers={"Range": "bytes=0-9"})  # connection still in sync
    assert conn.getresponse().read() == BODY[:10]
    conn.close()
    assert proxy.body_bytes_sent == len(CHUNKED_BODY) + 10


def test_forwards_request_verbatim(proxy: FaultProxy, upstream: _UpstreamServer) -> None:
    body = os.urandom(200_000)
    sent_headers = {
        "Host": "bucket.s3.example:9000",
        "Authorization": "AWS4-HMAC-SHA256 Credential=AKID/20250101/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=abc123",
        "X-Amz-Date": "20250101T000000Z",
        "X-Amz-Content-Sha256": hashlib.sha256(body).hexdigest(),
        "Content-Type": "application/x-test",
    }
    conn = _conn(proxy)
    conn.request("PUT", "/echo/a%20b?partNumber=3&uploadId=x%2Fy", body=body, headers=sent_headers)
    echo = json.loads(conn.getresponse().read())
    assert echo["method"] == "PUT"
    assert echo["path"] == "/echo/a%20b?partNumber=3&uploadId=x%2Fy"
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    got = {k: v for k, v in echo["headers"]}
    for name, value in sent_headers.items():
        assert got[name] == value
    assert got["Content-Length"] == str(len(body))

    # Chunked request body, on the same kept-alive connection.
    conn.request("POST", "/echo", body=iter([b"abc", b"defgh", b"i" * 70_000]), encode_chunked=True)
    echo = json.loads(conn.getresponse().read())
    assert echo["body_len"] == 3 + 5 + 70_000
    assert echo["body_sha256"] == hashlib.sha256(b"abcdefgh" + b"i" * 70_000).hexdigest()
    assert dict(echo["headers"])["Transfer-Encoding"] == "chunked"
    conn.close()


def test_expect_100_continue_is_answered_by_proxy(proxy: FaultProxy, upstream: _UpstreamServer) -> None:
    request = b"PUT /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n")
        sock.sendall(b"hello")
        data = b""
        while piece := sock.recv(65536):
            data += piece
    head, body = _split_head(data)
    assert head.startswith(b"HTTP/1.1 200")
    echo = json.loads(body)
    assert echo["body_len"] == 5
    assert "Expect" not in dict(echo["headers"])


def test_head_and_204_have_no_body(proxy: FaultProxy) -> None:
    conn = _conn(proxy)
    conn.request("HEAD", "/data")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Length") == str(len(BODY))
    assert resp.read() == b""
    conn.request("GET", "/empty")
    resp = conn.getresponse()
    assert resp.status == 204
    assert resp.read() == b""
    conn.request("GET", "/data", headers={"Range": "bytes=5-9"})
    assert conn.getresponse().read() == BODY[5:10]
    conn.close()
    assert [r.body_bytes for r in proxy.log] == [0, 0, 5]


def test_retries_silently_closed_idle_upstream_connection(proxy: FaultProxy, upstream: _UpstreamServer) -> None:
    conn = _conn(proxy)
    conn.request("GET", "/drop-after")
    assert conn.getresponse().read() == b"ok"
    time.sleep(0.05)  # let upstream's FIN arrive
    conn.request("GET", "/data", headers={"Range": "bytes=0-3"})
    resp = conn.getresponse()
    assert (resp.status, resp.read()) == (206, BODY[:4])
    conn.close()
    assert proxy.errors == []
    assert len(upstream.connections) == 2


def test_upstream_unreachable_gives_502() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    with FaultProxy("127.0.0.1", dead_port) as proxy:
        resp, _ = _get(proxy)
        assert resp.status == 502
        assert proxy.errors and isinstance(proxy.errors[0], ConnectionRefusedError)


def test_through_moto_with_boto3(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3
    from botocore.config import Config
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    werkzeug_logger = logging.getLogger("werkzeug")
    old_level = werkzeug_logger.level
    werkzeug_logger.setLevel(logging.ERROR)  # moto's server logs every request to stderr
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        with FaultProxy(host, port) as proxy:
            s3 = boto3.client(
                "s3",
                endpoint_url=proxy.url,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                region_name="us-east-1",
                config=Config(retries={"mode": "standard", "max_attempts": 3}),
            )
            data = os.urandom(2 * 1024 * 1024 + 123)
            s3.create_bucket(Bucket="fp-bucket")
            s3.put_object(Bucket="fp-bucket", Key="models/w.bin", Body=data)

            proxy.reset_counters()
            got = s3.get_object(Bucket="fp-bucket", Key="models/w.bin")["Body"].read()
            assert got == data
            assert proxy.body_bytes_sent == len(data)
            [record] = proxy.log
            assert (record.method, record.path, record.status, record.body_bytes) == (
                "GET",
                "/fp-bucket/models/w.bin",
                200,
                len(data),
            )

            # An injected 503 SlowDown is retried by boto3 transparently.
            rule = proxy.add_rule(Rule(Status(503, retry_after="0"), match_method="GET", only_ranged=True))
            part = s3.get_object(Bucket="fp-bucket", Key="models/w.bin", Range="bytes=10-19")
            assert part["Body"].read() == data[10:20]
            assert rule.fired == 1
            assert [r.status for r in proxy.log[1:]] == [503, 206]
    finally:
        server.stop()
        werkzeug_logger.setLevel(old_level)


# --------------------------------------------------------------------------
# One test per action
# --------------------------------------------------------------------------


def test_reset_aborts_with_rst(proxy: FaultProxy) -> None:
    # The RST after a pause: without one, Linux may drop the headers unread when it arrives (see Reset)
    proxy.add_rule(Rule(Reset(after_bytes=1000, linger=1.0)))
    conn = _conn(proxy)
    conn.request("GET", "/data")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("Content-Length") == str(len(BODY))
    with pytest.raises((ConnectionResetError, http.client.IncompleteRead)):
        resp.read()
    conn.close()

    # Raw socket: the connection ends in ECONNRESET, not a clean EOF.
    proxy.add_rule(Rule(Reset(after_bytes=1000)))
    _, error = _raw_exchange(proxy, b"GET /data HTTP/1.1\r\nHost: h\r\n\r\n")
    assert isinstance(error, ConnectionResetError)

    assert [(r.fault, r.status, r.body_bytes) for r in proxy.log] == [("Reset", 200, 1000)] * 2
    assert proxy.body_bytes_sent == 2000


def test_truncate_closes_cleanly_with_short_body(proxy: FaultProxy) -> None:
    proxy.add_rule(Rule(Truncate(after_bytes=70_000)))
    raw, error = _raw_exchange(proxy, b"GET /data HTTP/1.1\r\nHost: h\r\n\r\n")
    assert error is None, "Truncate must end with FIN, not RST"
    head, body = _split_head(raw)
    assert f"Content-Length: {len(BODY)}".encode() in head
    assert body == BODY[:70_000]

    proxy.add_rule(Rule(Truncate(after_bytes=10)))
    conn = _conn(proxy)
    conn.request("GET", "/data")
    resp = conn.getresponse()
    with pytest.raises(http.client.IncompleteRead) as excinfo:
        resp.read()
    assert excinfo.value.partial == BODY[:10]
    conn.close()


def test_truncate_chunked_response(proxy: FaultProxy) -> None:
    proxy.add_rule(Rule(Truncate(after_bytes=50)))
    resp_conn = _conn(proxy)
    resp_conn.request("GET", "/chunked")
    resp = resp_conn.getresponse()
    with pytest.raises(http.client.IncompleteRead) as excinfo:
        resp.read()
    assert excinfo.value.partial == CHUNKED_BODY[:50]
    resp_conn.close()


def test_stall_times_out_client_without_blocking_others(proxy: FaultProxy) -> None:
    # A stall far longer than the test's own time limit: stop() returning at all shows it did not wait for it.
    proxy.add_rule(Rule(Stall(seconds=3600, after_bytes=1000)))
    stalled = _conn(proxy)
    stalled.request("GET", "/data")
    resp = stalled.getresponse()
    assert resp.status == 200
    assert resp.read(1000) == BODY[:1000]
    assert stalled.sock is not None
    stalled.sock.settimeout(0.3)  # only now: the connect, headers and first bytes had the whole TIMEOUT
    with pytest.raises(TimeoutError):  # the client's own read timeout: the proxy sends nothing more
        resp.read(1)

    # Other connections are served while the stall is in progress.
    other, body = _get(proxy)
    assert other.status == 200 and body == BODY

    proxy.stop()  # must not wait for the stall
    stalled.close()


def test_stop_releases_idle_keepalive_connections(upstream: _UpstreamServer) -> None:
    proxy = FaultProxy("127.0.0.1", upstream.port)
    proxy.start()
    conns = [_conn(proxy) for _ in range(5)]
    for c in conns:
        c.request("GET", "/empty")
        c.getresponse().read()
    proxy.stop()
    for c in conns:  # the proxy closed them itself, rather than waiting for clients that keep them open
        c.sock.settimeout(30)
        assert c.sock.recv(1) == b""
        c.close()


def test_status_answers_without_upstream_and_keeps_alive(proxy: FaultProxy, upstream: _UpstreamServer) -> None:
    proxy.add_rule(Rule(Status(503, retry_after="2")))
    conn = _conn(proxy)
    conn.request("GET", "/data")
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 503
    assert resp.getheader("Retry-After") == "2"
    assert resp.getheader("Content-Type") == "application/xml"
    assert resp.getheader("Content-Length") == str(len(body))
    assert b"<Code>SlowDown</Code>" in body
    sock = conn.sock

    # A drained request body keeps the connection usable after a 500.
    proxy.add_rule(Rule(Status(500), match_method="PUT"))
    conn.request("PUT", "/echo", body=b"z" * 100_000)
    resp = conn.getresponse()
    assert resp.status == 500
    assert b"<Code>InternalError</Code>" in resp.read()

    proxy.add_rule(Rule(Status(429, body=b"slow down", headers={"X-Custom": "1"})))
    conn.request("GET", "/data")
    resp = conn.getresponse()
    assert (resp.status, resp.read(), resp.getheader("X-Custom")) == (429, b"slow down", "1")
    assert resp.getheader("Retry-After") is None

    conn.request("GET", "/data")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == BODY
    assert conn.sock is sock
    conn.close()
    assert upstream.requests == [("GET", "/data")], "Status faults never reach upstream"


def test_flipbit_changes_exactly_one_bit(proxy: FaultProxy) -> None:
    proxy.add_rule(Rule(FlipBit(offset=70_000, bit=3)))  # inside the second 64 KiB piece
    resp, body = _get(proxy)
    assert resp.status == 200 and len(body) == len(BODY)
    diffs = [i for i, (a, b) in enumerate(zip(body, BODY, strict=True)) if a != b]
    assert diffs == [70_000]
    assert body[70_000] ^ BODY[70_000] == 1 << 3

    proxy.add_rule(Rule(FlipBit(offset=len(BODY))))  # past the end: nothing to flip
    assert _get(proxy)[1] == BODY

    proxy.add_rule(Rule(FlipBit(offset=0, bit=7)))
    body = _get(proxy, "/chunked")[1]
    assert body[0] == CHUNKED_BODY[0] ^ 0x80 and body[1:] == CHUNKED_BODY[1:]
    assert [r.fault for r in proxy.log] == ["FlipBit"] * 3


def test_rewrite_header_replaces_or_adds(proxy: FaultProxy) -> None:
    proxy.add_rule(Rule(RewriteHeader("content-range", "bytes 0-9/999")))
    resp, body = _get(proxy, headers={"Range": "bytes=10-19"})
    assert resp.status == 206 and body == BODY[10:20]
    assert resp.msg.get_all("Content-Range") == ["bytes 0-9/999"]

    proxy.add_rule(Rule(RewriteHeader("X-Injected", "yes")))
    resp, body = _get(proxy)
    assert resp.getheader("X-Injected") == "yes" and body == BODY


def test_delay_waits_before_forwarding(proxy: FaultProxy, upstream: _UpstreamServer) -> None:
    proxy.add_rule(Rule(Delay(0.3)))
    t0 = time.monotonic()
    _, body = _get(proxy)
    assert time.monotonic() - t0 >= 0.3
    assert body == BODY


def test_callback_runs_before_forwarding(proxy: FaultProxy, upstream: _UpstreamServer) -> None:
    seen: list[RequestRecord] = []
    replacement = b"new object contents" * 1000

    def swap_object(record: RequestRecord) -> None:
        seen.append(record)
        assert upstream.requests == [], "callback must run before the request is forwarded"
        upstream.body = replacement

    proxy.add_rule(Rule(Callback(swap_object), match_path=r"\?v=1$"))
    resp, body = _get(proxy, "/data?v=1", headers={"Range": "bytes=0-99"})
    assert body == replacement[:100]
    assert resp.getheader("Content-Range") == f"bytes 0-99/{len(replacement)}"
    assert [(r.method, r.path, r.range, r.fault) for r in seen] == [("GET", "/data?v=1", "bytes=0-99", "Callback")]

    def boom(record: RequestRecord) -> None:
        raise RuntimeError("callback exploded")

    proxy.add_rule(Rule(Callback(boom)))
    resp, _ = _get(proxy)
    assert resp.status == 502
    assert [str(e) for e in proxy.errors] == ["callback exploded"]


# --------------------------------------------------------------------------
# Rule semantics
# --------------------------------------------------------------------------


def _statuses(proxy: FaultProxy, n: int, path: str = "/data") -> list[int]:
    return [_get(proxy, path)[0].status for _ in range(n)]


def test_skip_then_times(proxy: FaultProxy) -> None:
    rule = proxy.add_rule(Rule(Status(500), skip=1, times=2))
    assert _statuses(proxy, 4) == [200, 500, 500, 200]
    assert (rule.fired, rule.skipped) == (2, 1)
    assert [r.fault for r in proxy.log] == [None, "Status", "Status", None]


def test_times_forever_and_clear_rules(proxy: FaultProxy) -> None:
    rule = proxy.add_rule(Rule(Status(503), times=-1))
    assert _statuses(proxy, 3) == [503, 503, 503]
    assert rule.fired == 3
    proxy.clear_rules()
    assert _statuses(proxy, 1) == [200]


def test_rules_checked_in_insertion_order(proxy: FaultProxy) -> None:
    first = proxy.add_rule(Rule(Status(500)))
    second = proxy.add_rule(Rule(Status(503)))
    assert _statuses(proxy, 3) == [500, 503, 200]
    assert (first.fired, second.fired) == (1, 1)


def test_skipping_rule_lets_later_rules_decide(proxy: FaultProxy) -> None:
    proxy.add_rule(Rule(Status(500), skip=1))
    proxy.add_rule(Rule(Status(503)))
    assert _statuses(proxy, 3) == [503, 500, 200]


def test_match_criteria(proxy: FaultProxy) -> None:
    head_only = proxy.add_rule(Rule(Status(500), match_method="HEAD"))
    ranged = proxy.add_rule(Rule(Status(416), only_ranged=True))
    by_path = proxy.add_rule(Rule(Status(404), match_path=r"[?&]part=7\b"))

    assert _statuses(proxy, 1, "/data?part=1") == [200]
    assert _statuses(proxy, 1, "/data?x=1&part=7") == [404]
    assert _get(proxy, headers={"Range": "bytes=0-1"})[0].status == 416
    conn = _conn(proxy)
    conn.request("HEAD", "/data")
    assert conn.getresponse().status == 500
    conn.close()
    assert (head_only.fired, ranged.fired, by_path.fired) == (1, 1, 1)


def test_reset_counters(proxy: FaultProxy) -> None:
    _get(proxy)
    assert proxy.body_bytes_sent == len(BODY) and len(proxy.log) == 1
    proxy.reset_counters()
    assert proxy.body_bytes_sent == 0 and proxy.log == []


def test_faults_are_quiet_on_stderr(proxy: FaultProxy, capfd: pytest.CaptureFixture[str]) -> None:
    proxy.add_rule(Rule(Reset(10)))
    proxy.add_rule(Rule(Truncate(10)))
    proxy.add_rule(Rule(Stall(30, after_bytes=10)))
    for _ in range(2):
        _raw_exchange(proxy, b"GET /data HTTP/1.1\r\nHost: h\r\n\r\n")
    # A client that hangs up mid-body, and one that sends garbage.
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /data HTTP/1.1\r\nHost: h\r\n\r\n")
        sock.recv(100)
    _raw_exchange(proxy, b"NOT HTTP AT ALL\r\n\r\n")
    # The stalled request, then stop() while it is stalled.
    stalled = socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)
    stalled.sendall(b"GET /data HTTP/1.1\r\nHost: h\r\n\r\n")
    time.sleep(0.1)
    proxy.stop()
    stalled.close()
    captured = capfd.readouterr()
    assert captured.err == ""
    assert "Traceback" not in captured.out


def test_url_and_context_manager(upstream: _UpstreamServer) -> None:
    proxy = FaultProxy("127.0.0.1", upstream.port)
    with pytest.raises(RuntimeError):
        _ = proxy.url
    with proxy as p:
        assert p is proxy
        port = p.port
        assert p.url == f"http://127.0.0.1:{port}"
        assert _get(p)[1] == BODY
    with pytest.raises(RuntimeError):
        _ = proxy.port
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
