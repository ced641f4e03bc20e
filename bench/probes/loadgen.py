"""The probe load of condition B: an open-loop load generator, run as its own process
(``bench_sidecar.py --_loadgen``), that sends GET /readyz and GET /status alternately at a steady rate over
keep-alive connections and prints one JSON object of what it saw. Standard library only: it starts, imports and
waits on stdin for the port before the sidecar exists."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import struct
import sys
import time

PROBE_PATHS = ("/readyz", "/status")


class _Conn:
    __slots__ = ("buf", "idle_since", "pidx", "sent_at", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.pidx = 0
        self.sent_at = 0.0  # time.time() of the send, to compare with the kernel's receive timestamp
        self.idle_since = time.monotonic()


IDLE_REOPEN_S = 2.0  # a connection idle this long is replaced before use: servers close idle ones (uvicorn: 5 s)
SO_TIMESTAMPNS = 35  # Linux (asm-generic and x86): a CLOCK_REALTIME timespec on every received segment
_TIMESPEC = struct.Struct("@ll")


def _parse_head(buf: bytes, end: int) -> tuple[int, int, bool]:
    """(status, content length, connection-close) from the response head buf[:end]; ValueError if unusable.

    Minimal on purpose (this runs once per probe, on the cores the download needs): the status is at a fixed
    offset of "HTTP/1.1 NNN", and only content-length and connection are looked for.
    """
    head = buf[:end].lower()
    if not head.startswith(b"http/1.") or head[8:9] != b" ":
        raise ValueError("not an HTTP/1.x status line")
    k = head.find(b"\r\ncontent-length:")
    if k < 0:
        raise ValueError("response without content-length (chunked responses are not supported)")
    e = head.find(b"\r\n", k + 17)
    length = int(head[k + 17 :] if e < 0 else head[k + 17 : e])
    return int(head[9:12]), length, b"\r\nconnection: close" in head


def main(argv: list[str]) -> int:
    """Open-loop probe load: request i is due at t0 + i/rate, sent on any idle keep-alive connection.

    Reads the port from stdin (so the process is started, imported and waiting before the sidecar exists),
    stops on SIGTERM, after --max-seconds or after --max-requests, and prints one JSON object on stdout.

    Its own CPU counts against the download on a small machine, so it wakes up once per request, not twice:
    it sleeps until the next request is due, then collects the answers that arrived meanwhile (non-blocking
    reads of the connections awaiting one) and sends. A probe's latency is still exact: it is the kernel's
    receive timestamp of the answer (SO_TIMESTAMPNS) minus the send time, not the time it was read. Requests
    are pre-built, and the response parser reads three fields.
    """
    p = argparse.ArgumentParser(prog="bench_sidecar.py --_loadgen")
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--max-seconds", type=float, required=True)
    p.add_argument("--max-requests", type=int, required=True)
    p.add_argument("--conns", type=int, default=4, help="connections opened at the start")
    p.add_argument("--max-conns", type=int, default=64, help="the pool grows to this when all are busy")
    a = p.parse_args(argv)

    stop = False

    def on_term(_s: int, _f: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    line = sys.stdin.readline()
    if not line.strip():
        print(json.dumps({"error": "no port given"}), flush=True)
        return 2
    port = int(line)
    reqs = [f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode() for path in PROBE_PATHS]
    npaths = len(PROBE_PATHS)

    # aibrix-sidecar logs "listening on" after bind() but before uvicorn calls listen(): until then connect()
    # is refused, so wait (briefly) for the port to accept before the schedule starts.
    tw = time.monotonic()
    refused = 0
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            break
        except ConnectionRefusedError:
            refused += 1
            if stop or time.monotonic() - tw > 30:
                print(json.dumps({"error": f"connection refused for {time.monotonic() - tw:.1f}s"}), flush=True)
                return 2
            time.sleep(0.002)
    connect_wait = time.monotonic() - tw

    idle: list[_Conn] = []  # a stack: the most recently answered connection goes out first
    busy: list[_Conn] = []  # awaiting an answer
    lat: list[list[float]] = [[] for _ in PROBE_PATHS]
    late: list[float] = []  # send time - scheduled time
    codes: list[dict[int, int]] = [{} for _ in PROBE_PATHS]
    errors: dict[str, int] = {}
    reconnects = 0
    reopened = 0
    conns_used = 0
    kernel_stamps = True
    ancsize = socket.CMSG_SPACE(_TIMESPEC.size) * 4

    def err(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    def open_conn() -> _Conn:
        nonlocal conns_used, kernel_stamps
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            kernel_stamps = False
        s.setblocking(False)
        conns_used += 1
        return _Conn(s)

    def replace(c: _Conn) -> None:
        """Close c (no longer in idle or busy) and put a fresh connection in the idle stack."""
        nonlocal reconnects
        with contextlib.suppress(OSError):
            c.sock.close()
        reconnects += 1
        try:
            idle.append(open_conn())
        except OSError:
            err("connect")

    def reap(c: _Conn) -> bool:
        """Read what arrived on a busy connection; True when its answer is complete (c is then off `busy`)."""
        try:
            data, anc, _flags, _addr = c.sock.recvmsg(65536, ancsize)
        except BlockingIOError:
            return False
        except OSError:
            data, anc = b"", []
        if not data:
            err("closed-before-response")
            replace(c)
            return True
        buf = c.buf + data if c.buf else data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            c.buf = buf
            return False
        try:
            status, length, close = _parse_head(buf, end)
        except ValueError:
            err("unparseable")
            replace(c)
            return True
        total = end + 4 + length
        if len(buf) < total:
            c.buf = buf
            return False
        if len(buf) > total:
            err("unsolicited-response")
            close = True
        arrived = time.time()
        for level, kind, stamp in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(stamp) >= _TIMESPEC.size:
                sec, nsec = _TIMESPEC.unpack_from(stamp)
                arrived = sec + nsec * 1e-9
        lat[c.pidx].append(arrived - c.sent_at)
        st = codes[c.pidx]
        st[status] = st.get(status, 0) + 1
        c.buf = b""
        if close:
            replace(c)
        else:
            c.idle_since = mono()
            idle.append(c)
        return True

    mono = time.monotonic
    for _ in range(a.conns):
        idle.append(open_conn())
    wall = time.time
    sleep = time.sleep
    interval = 1.0 / a.rate
    max_requests, max_conns = a.max_requests, a.max_conns
    ru0 = os.times()
    t0 = mono()
    deadline = t0 + a.max_seconds
    due = wake = t0  # request i is due at `due`; the loop sleeps until `wake`
    i = 0
    backlog_max = 0
    while not stop:
        now = mono()
        if now >= deadline or i >= max_requests:
            break
        if wake > now:
            sleep(min(wake, deadline) - now)
            continue
        if busy:
            busy = [c for c in busy if not reap(c)]
        while due <= now and i < max_requests:
            if idle:
                c = idle.pop()
                if now - c.idle_since > IDLE_REOPEN_S:  # the server may have closed it by now
                    with contextlib.suppress(OSError):
                        c.sock.close()
                    try:
                        c = open_conn()
                    except OSError:
                        err("connect")
                        break
                    reopened += 1
            elif len(idle) + len(busy) < max_conns:
                # open loop: a request that is due goes out now, on a new connection if all are waiting
                try:
                    c = open_conn()
                except OSError:
                    err("connect")
                    break
            else:
                break
            pidx = i % npaths
            try:
                c.sock.send(reqs[pidx])  # ~50 bytes into an empty socket buffer: all of it or an error
            except OSError:
                err("send")
                replace(c)
                continue
            c.pidx, c.sent_at = pidx, wall()
            busy.append(c)
            late.append(mono() - due)
            i += 1
            due = t0 + i * interval
        backlog = int((now - t0) * a.rate) + 1 - i
        if backlog > backlog_max:
            backlog_max = backlog
        # normally sleep until the next request is due; if one is still due, every connection awaits an answer
        # (or connect failed): look again shortly
        wake = due if due > now else now + 0.001
    t_stop = mono()
    drain_until = t_stop + 2.0
    while busy and mono() < drain_until:
        busy = [c for c in busy if not reap(c)]
        if busy:
            sleep(0.005)
    unanswered = len(busy)
    ru1 = os.times()
    for c in idle + busy:
        with contextlib.suppress(OSError):
            c.sock.close()
    completed = sum(len(v) for v in lat)
    active = t_stop - t0
    out = {
        "rate_target": a.rate,
        "conns": a.conns,
        "conns_used": conns_used,
        "sent": i,
        "completed": completed,
        "unanswered": unanswered,
        "active_s": active,
        "achieved_rps": completed / active if active > 0 else None,
        "sent_rps": i / active if active > 0 else None,
        "stopped_by": "signal" if stop else ("max-requests" if i >= a.max_requests else "max-seconds"),
        "backlog_max": backlog_max,
        "reconnects": reconnects,
        "reopened_after_idle": reopened,
        "connect_wait_s": connect_wait,
        "refused_before_listen": refused,
        "errors": errors,
        "statuses": {path: {str(k): n for k, n in codes[j].items()} for j, path in enumerate(PROBE_PATHS)},
        "latency_s": {path: [round(x, 6) for x in lat[j]] for j, path in enumerate(PROBE_PATHS)},
        "latency_clock": "kernel receive timestamp" if kernel_stamps else "read time (no SO_TIMESTAMPNS)",
        "lateness_s": [round(x, 6) for x in late],
        "cpu_s": (ru1.user - ru0.user) + (ru1.system - ru0.system),
        "cpu_user_s": ru1.user - ru0.user,
        "cpu_sys_s": ru1.system - ru0.system,
    }
    print(json.dumps(out), flush=True)
    return 0
