"""One run of the sidecar benchmark, in condition A (no probe load) or B (the load generator running), and the
interleaved A/B pairs of a whole benchmark, recorded in bench/results/sidecar-<timestamp>.json."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..harness.common import BUCKET, GiB, cmd_out, git_rev, git_status, machine_info
from ..harness.measure import sha256_file, tail, timed_sync
from ..harness.model import ModelSpec, ensure_model
from ..harness.numbers import fmt, percentile
from ..harness.procs import (
    busy_processes,
    cpu_split,
    kill_group,
    machine_share,
    machine_ticks,
    memory_mib,
    threads_cpu_ns,
    wait_reap,
)
from ..harness.recording import Results
from ..harness.server import SeaweedFS, s3_tool_env
from .common import loadgen_argv, log, wait_listening
from .loadgen import PROBE_PATHS
from .report import markdown
from .summary import summarize

# what the sidecar and its download child must not inherit besides TOOL_ENV_DROP: their own settings
SIDECAR_ENV_DROP = ("SIDECAR_", "TOS_", "INFERENCE_ENGINE_ENDPOINT", "METRIC_SCRAPE_PATH")
# the load generator's fields a run keeps (its latencies go into the pooled percentiles instead)
PROBE_FIELDS = (
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

CpuMark = tuple[int | None, dict[str, float] | None]  # the sidecar's threads' schedstat ns, and its utime+stime


@dataclass
class Watched:
    """What watching one run saw: when the sidecar listened and turned ready, its CPU then, the bench's own
    /readyz polls, the load generator's report."""

    t_listen: float | None = None
    t_ready: float | None = None
    at_listen: CpuMark = (None, None)
    at_ready: CpuMark = (None, None)
    polls: dict[str, int] = field(default_factory=dict)
    loadgen: dict[str, Any] | None = None


def _cpu_mark(pid: int) -> CpuMark:
    return threads_cpu_ns(pid), cpu_split(pid)


class SidecarBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.scratch = Path(tempfile.mkdtemp(prefix="aibrix-bench-sidecar-"))
        self.server: SeaweedFS | None = None
        self.children: list[subprocess.Popen[bytes]] = []  # only processes we started
        self.record: dict[str, Any] = {}
        self.results: Results | None = None
        self.lat_raw: dict[str, list[float]] = {}  # every probe's latency, pooled over the timed B runs
        self.spec = ModelSpec(
            shards=args.shards, shard_mib=max(1, round(args.size_gib * 1024 / args.shards)), part_mib=args.chunk_mib
        )
        self.uri = f"s3://{BUCKET}/{self.spec.prefix}"
        self.env: dict[str, str] = {}
        self.files: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------- plumbing
    def cleanup(self) -> None:
        for p in self.children:
            if p.returncode is None:
                with contextlib.suppress(ChildProcessError):
                    kill_group(p)
        self.children.clear()
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def save(self) -> None:
        assert self.results is not None
        self.results.save(self.record)

    # --------------------------------------------------------------------------------------- one run
    def _start_loadgen(self) -> subprocess.Popen[bytes]:
        a = self.a
        argv = loadgen_argv(
            a.rate, a.probe_max_seconds, int(a.rate * a.probe_max_seconds), a.probe_conns, a.probe_max_conns
        )
        loadgen = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        self.children.append(loadgen)
        time.sleep(0.3)  # let it import and block on stdin before the clock starts
        return loadgen

    def _stop_loadgen(self, loadgen: subprocess.Popen[bytes], run: dict[str, Any], problems: list[str]) -> Any:
        """SIGTERM the load generator and read its report (None if it failed)."""
        with contextlib.suppress(ProcessLookupError):
            loadgen.send_signal(signal.SIGTERM)
        try:
            out, lerr = loadgen.communicate(timeout=15)
            run["loadgen_stderr_tail"] = lerr.decode(errors="replace")[-500:]
            lg = json.loads(out.decode().strip().splitlines()[-1])
            if "error" in lg:
                problems.append(f"load generator: {lg['error']}")
                return None
            return lg
        except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
            problems.append(f"load generator: {e!r}")
            kill_group(loadgen)
            return None

    def _watch(
        self,
        proc: subprocess.Popen[bytes],
        errfile: Path,
        t0: float,
        loadgen: subprocess.Popen[bytes] | None,
        run: dict[str, Any],
        problems: list[str],
    ) -> Watched:
        """From the start to the download child's exit: the port, the probe load, the /readyz polls."""
        import httpx

        a = self.a
        w = Watched()
        try:
            port = wait_listening(proc, errfile, 60, 0.005)
            w.t_listen = time.monotonic()
            w.at_listen = _cpu_mark(proc.pid)
            if loadgen is not None:
                assert loadgen.stdin is not None
                loadgen.stdin.write(f"{port}\n".encode())
                loadgen.stdin.flush()
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=5.0) as cli:
                k = 0
                deadline = t0 + a.timeout
                while time.monotonic() < deadline:
                    try:
                        r = cli.get("/readyz")
                        w.polls[str(r.status_code)] = w.polls.get(str(r.status_code), 0) + 1
                        if r.status_code == 200:
                            w.t_ready = time.monotonic()
                            w.at_ready = _cpu_mark(proc.pid)
                            break
                    except httpx.HTTPError as e:
                        w.polls[type(e).__name__] = w.polls.get(type(e).__name__, 0) + 1
                    if proc.poll() is not None:
                        problems.append(f"sidecar exited {proc.returncode} before ready")
                        break
                    k += 1
                    time.sleep(max(0.0, w.t_listen + k * a.ready_poll_interval - time.monotonic()))
                if w.t_ready is None and not problems:
                    problems.append(f"/readyz not 200 after {a.timeout}s")
                # stop the probe load as soon as the download is done
                if loadgen is not None:
                    w.loadgen = self._stop_loadgen(loadgen, run, problems)
                # wait for the download child to exit (the sidecar reaps it), so its CPU shows in cutime
                if w.t_ready is not None:
                    self._wait_download_child(cli, problems)
        except RuntimeError as e:
            problems.append(str(e))
        return w

    @staticmethod
    def _wait_download_child(cli: Any, problems: list[str]) -> None:
        import httpx

        status_body: dict[str, Any] | None = None
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

    @staticmethod
    def _stop_sidecar(proc: subprocess.Popen[bytes], problems: list[str]) -> tuple[int | None, Any]:
        """SIGTERM the sidecar and reap it ourselves: wait4's rusage is what /usr/bin/time -v reports (the poll()
        while watching only reaped it if it had already died). (exit code, rusage or None)."""
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
        return exit_code, ru

    def _check_files(self, model_dir: Path, warmup: bool, problems: list[str]) -> None:
        """The bytes: sizes always, sha256 when asked (of a warm-up download)."""
        for rel, v in self.files.items():
            p = model_dir / rel
            try:
                size = p.stat().st_size
            except OSError:
                problems.append(f"missing {rel}")
                continue
            if size != v["size"]:
                problems.append(f"size mismatch {rel}")
            elif warmup and self.a.verify_sha_on_warmup and sha256_file(p) != v["sha256"]:
                problems.append(f"sha256 mismatch {rel}")

    def _probe_record(self, lg: dict[str, Any], w: Watched, problems: list[str]) -> dict[str, Any]:
        """The load generator's report, as a run keeps it; its latencies join the pooled ones."""
        lat_all = [x for v in lg["latency_s"].values() for x in v]
        non_ok = {path: {s: n for s, n in st.items() if s not in ("200", "503")} for path, st in lg["statuses"].items()}
        probe = {k: lg[k] for k in PROBE_FIELDS}
        probe.update({k: lg.get(k) for k in ("cpu_user_s", "cpu_sys_s", "reopened_after_idle", "latency_clock")})

        def ms(xs: list[float], q: float) -> float:
            return 1e3 * (percentile(xs, q) or 0)

        probe.update(
            lat_p50_ms=ms(lat_all, 50),
            lat_p99_ms=ms(lat_all, 99),
            lat_max_ms=1e3 * max(lat_all) if lat_all else None,
            lateness_p99_ms=ms(lg["lateness_s"], 99),
            non_200_503=non_ok,
            per_path={
                path: {"p50_ms": ms(v, 50), "p99_ms": ms(v, 99), "n": len(v)} for path, v in lg["latency_s"].items()
            },
            covered_frac_of_download=(lg["active_s"] / (w.t_ready - w.t_listen)) if w.t_ready and w.t_listen else None,
        )
        self.lat_raw.setdefault("all", []).extend(lat_all)
        for path, v in lg["latency_s"].items():
            self.lat_raw.setdefault(path, []).extend(v)
        if any(non_ok.values()):
            problems.append(f"probe answers other than 200/503: {non_ok}")
        if lg["stopped_by"] != "signal":
            problems.append(f"load stopped by {lg['stopped_by']} before the download was ready")
        return probe

    def run_one(self, cond: str, rep: int, order: int, warmup: bool) -> dict[str, Any]:
        a = self.a
        assert self.server is not None
        dest = self.scratch / f"dl-{cond}-{'w' if warmup else 'r'}{rep}"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        model_dir = dest / self.spec.name
        errfile = self.scratch / "sidecar.err"
        errfile.write_bytes(b"")
        pre_sync = timed_sync()
        time.sleep(a.settle)
        loadgen = self._start_loadgen() if cond == "B" else None
        argv = [str(a.sidecar_bin), "--host", "127.0.0.1", "--port", "0", "--"]
        argv += ["--model-uri", self.uri, "--local-dir", str(dest), "--num-threads", str(a.num_threads)]
        srv0 = self.server.cpu_seconds()
        m0 = machine_ticks()
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
        w = self._watch(proc, errfile, t0, loadgen, run, problems)
        m1 = machine_ticks()
        srv1 = self.server.cpu_seconds()
        split = cpu_split(proc.pid)
        hwm = memory_mib(proc.pid, "VmHWM")
        if loadgen is not None and loadgen.returncode is None:  # e.g. the sidecar never listened
            kill_group(loadgen)
        exit_code, ru = self._stop_sidecar(proc, problems)

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
        self._check_files(model_dir, warmup, problems)

        win0, win1 = w.at_listen, w.at_ready
        run.update(
            startup_s=(w.t_listen - t0) if w.t_listen else None,
            # the probe window: listening -> /readyz 200, without the sidecar's own (noisy) start-up
            window_s=(w.t_ready - w.t_listen) if w.t_ready and w.t_listen else None,
            ready_s=(w.t_ready - t0) if w.t_ready else None,
            manifest_s=manifest_s,
            dl_own_s=dl_own,
            dl_start_s=progress["started_at"] - w0 if progress else None,
            ready_polls=w.polls,
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
            machine=machine_share(m0, m1),
            loadavg_before=load,
            pre_sync_s=pre_sync,
            progress_final={
                k: progress.get(k)
                for k in ("phase", "bytes_total", "bytes_fetched", "retries", "errors_by_kind", "files_done")
            }
            if progress
            else None,
        )
        if w.loadgen is not None:
            run["probe"] = self._probe_record(w.loadgen, w, problems)
        run["problems"] = problems
        run["ok"] = not problems
        run["sidecar_stderr_tail"] = tail(errfile, 3000 if problems else 400)
        shutil.rmtree(dest, ignore_errors=True)
        self.children = [p for p in self.children if p.returncode is None]
        _log_run(run, cond, rep, warmup)
        return run

    # ---------------------------------------------------------------------------------------- main
    def _config(self, store: Path) -> dict[str, Any]:
        a = self.a
        return {
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
        }

    def main(self) -> int:
        a = self.a
        if not Path(a.sidecar_bin).exists():
            raise SystemExit(f"{a.sidecar_bin} does not exist")
        self.results = Results(Path(a.results_dir), "sidecar-")
        store = Path(a.store_dir) if a.store_dir else self.scratch / "store"
        self.server = SeaweedFS(store, self.scratch)
        self.server.start()
        endpoint = self.server.endpoint
        self.env = s3_tool_env(endpoint, SIDECAR_ENV_DROP)
        self.files = ensure_model(endpoint, self.spec, self.scratch)["files"]
        total = sum(v["size"] for v in self.files.values())
        self.record = {
            "schema": 1,
            "benchmark": "sidecar probe load vs. download time",
            "goal": "probing /readyz and /status at 200 rps while downloading slows the download by < 5 %",
            "timestamp": self.results.stamp,
            "command": " ".join([sys.executable, "bench/bench_sidecar.py", *sys.argv[1:]]),
            "machine": machine_info(),
            "config": self._config(store),
            "versions": {
                "seaweedfs": cmd_out([str(SeaweedFS.weed), "version"]),
                "git": git_rev(),
                "git_status_sidecar_downloader": git_status("sidecar", "downloader"),
                "python": sys.version.split()[0],
            },
            "model": {"uri": self.uri, "total_bytes": total, "total_gib": total / GiB, "files": len(self.files)},
            "busy_processes_at_start": busy_processes(),
            "runs": [],
        }
        self.save()
        log(
            f"model {total / GiB:.2f} GiB in {len(self.files)} files; {a.warmup} warm-up + {a.reps} pair(s); "
            f"results -> {self.results.path}"
        )
        for w in range(a.warmup):
            self.record["runs"].append(self.run_one("A", -(w + 1), 0, True))
            self.save()
        self.lat_raw.clear()
        for rep in range(a.reps):
            for i, cond in enumerate(("A", "B") if rep % 2 == 0 else ("B", "A")):
                self.record["runs"].append(self.run_one(cond, rep, i, False))
                self.save()
        self.record["busy_processes_at_end"] = busy_processes()
        self.record["loadavg_at_end"] = os.getloadavg()
        summary = summarize(self.record["runs"], self.lat_raw, a.ci)
        self.record["summary"] = summary
        md = markdown(self.record, summary, a, self.results.path)
        self.record["summary_markdown"] = md
        self.save()
        print(md)
        failed = [r for r in self.record["runs"] if not r["ok"]]
        if failed:
            log(f"{len(failed)} run(s) had problems; see {self.results.path}")
        return 1 if failed else 0


def _log_run(run: dict[str, Any], cond: str, rep: int, warmup: bool) -> None:
    pr = run.get("probe") or {}
    log(
        f"{'warmup' if warmup else f'rep {rep}'} {cond}: ready {fmt(run['ready_s'], '.2f')}s "
        f"manifest {fmt(run['manifest_s'], '.2f')}s own {fmt(run['dl_own_s'], '.2f')}s "
        f"sidecar cpu {fmt(run['sidecar_self_cpu_s'], '.2f')}s dl cpu {fmt(run['download_child_cpu_s'], '.2f')}s "
        f"weed cpu {fmt(run['server_cpu_s'], '.2f')}s busy {run['machine']['busy_cores']:.2f} cores"
        + (
            f" | probes {pr.get('completed')} @ {fmt(pr.get('achieved_rps'), '.1f')} rps "
            f"p50 {fmt(pr.get('lat_p50_ms'), '.2f')} ms p99 {fmt(pr.get('lat_p99_ms'), '.2f')} ms "
            f"cpu {fmt(pr.get('cpu_s'), '.2f')}s"
            if pr
            else ""
        )
        + ("" if run["ok"] else "  FAILED: " + "; ".join(run["problems"][:4]))
    )
