#!/usr/bin/env python3
"""TCP relay that adds first-byte latency and a per-connection bandwidth cap (realistic-network mode).

This machine's kernel has no ``sch_netem`` (and no ``fq``), so latency cannot be added with tc. The
benchmark therefore runs this relay inside the server's network namespace, in front of SeaweedFS:

    client (root netns) --veth, htb aggregate cap--> relay (server netns) --loopback--> SeaweedFS

For every accepted connection it opens one upstream connection and moves bytes in both directions:

- **requests** (client -> server, small: HTTP headers) are read into userspace and forwarded. The
  first chunk of each new request (the first bytes on a connection, or the first bytes after response
  bytes were seen) is held until ``--latency-ms`` after it arrived. Since S3 clients do not pipeline,
  this delays the start of every response by that much: a first-byte latency per request, not per packet.
- **responses** (server -> client, the bulk) never enter userspace: ``os.splice`` moves them from the
  upstream socket into a pipe and from the pipe into the client socket, so the kernel does the copy.
- **per-connection cap**: ``SO_MAX_PACING_RATE`` on the client-facing socket makes the kernel pace that
  TCP connection (TCP internal pacing, which needs no ``fq`` qdisc). That is an exact per-connection
  cap, no hashing of connections into classes.

One thread per direction per connection; the blocking ``splice`` calls release the GIL. Standard library
only (Python >= 3.10 for ``os.splice``). On SIGUSR1 it prints one JSON line of counters to stdout
(connections, requests, bytes, most connections open at once since the last SIGUSR1); on SIGTERM/SIGINT
the same, and it exits.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import socket
import struct
import sys
import threading
import time

SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_BYTES = 1 << 20
SPLICE_F_MOVE = getattr(os, "SPLICE_F_MOVE", 1)


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connections = 0
        self.active = 0
        self.max_active = 0
        self.requests_delayed = 0
        self.request_bytes = 0
        self.response_bytes = 0
        self.errors = 0

    def as_dict(self) -> dict[str, int]:
        with self.lock:
            return {k: v for k, v in vars(self).items() if k != "lock"}


class Relay:
    def __init__(self, args: argparse.Namespace) -> None:
        self.latency = args.latency_ms / 1000.0
        self.rate = int(args.conn_bytes_per_s)
        up_host, up_port = args.upstream.rsplit(":", 1)
        self.upstream = (up_host, int(up_port))
        self.stats = Stats()

    def handle(self, cli: socket.socket) -> None:
        st = self.stats
        with st.lock:
            st.connections += 1
            st.active += 1
            st.max_active = max(st.max_active, st.active)
        up: socket.socket | None = None
        try:
            cli.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.rate > 0:
                cli.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, struct.pack("Q", self.rate))
            up = socket.create_connection(self.upstream)
            up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # new_request[0]: the next client bytes start a new request (delay them)
            new_request = [True]
            t = threading.Thread(target=self._requests, args=(cli, up, new_request), daemon=True)
            t.start()
            self._responses(up, cli, new_request)
            t.join()
        except OSError:
            with st.lock:
                st.errors += 1
        finally:
            for s in (cli, up):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()
            with st.lock:
                st.active -= 1

    def _requests(self, cli: socket.socket, up: socket.socket, new_request: list[bool]) -> None:
        st = self.stats
        try:
            while True:
                data = cli.recv(256 * 1024)
                arrived = time.monotonic()
                if not data:
                    break
                if new_request[0]:
                    new_request[0] = False
                    wait = arrived + self.latency - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    with st.lock:
                        st.requests_delayed += 1
                up.sendall(data)
                with st.lock:
                    st.request_bytes += len(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                up.shutdown(socket.SHUT_WR)

    def _responses(self, up: socket.socket, cli: socket.socket, new_request: list[bool]) -> None:
        st = self.stats
        r, w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_BYTES)
        try:
            while True:
                n = os.splice(up.fileno(), w, PIPE_BYTES, flags=SPLICE_F_MOVE)
                if n == 0:
                    break
                new_request[0] = True
                left = n
                while left:
                    left -= os.splice(r, cli.fileno(), left, flags=SPLICE_F_MOVE)
                with st.lock:
                    st.response_bytes += n
        except OSError:
            # client went away: wake the request thread too
            with contextlib.suppress(OSError):
                cli.shutdown(socket.SHUT_RDWR)
        finally:
            with contextlib.suppress(OSError):
                cli.shutdown(socket.SHUT_WR)
            os.close(r)
            os.close(w)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", required=True, help="host:port to accept clients on")
    p.add_argument("--upstream", required=True, help="host:port of the real server")
    p.add_argument("--latency-ms", type=float, default=0.0, help="first-byte latency added to every request")
    p.add_argument(
        "--conn-bytes-per-s", type=float, default=0, help="SO_MAX_PACING_RATE per client connection (0: none)"
    )
    args = p.parse_args()
    relay = Relay(args)
    host, port = args.listen.rsplit(":", 1)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, int(port)))
    ls.listen(1024)

    def stop(_signum: int, _frame: object) -> None:
        print(json.dumps(relay.stats.as_dict()), flush=True)
        os._exit(0)

    def report(_signum: int, _frame: object) -> None:
        # counters so far; the harness reads them before and after every run. max_active restarts here
        print(json.dumps(relay.stats.as_dict()), flush=True)
        with relay.stats.lock:
            relay.stats.max_active = relay.stats.active

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, report)
    print(f"listening {args.listen}", file=sys.stderr, flush=True)
    while True:
        cli, _addr = ls.accept()
        threading.Thread(target=relay.handle, args=(cli,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
