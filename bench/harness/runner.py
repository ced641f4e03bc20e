"""One run: a tool into a fresh directory under ``/usr/bin/time -v`` (inside a memory cgroup if the variant has a
limit), then a timed ``sync`` or the weights reader (see endpoints.py), then verified and removed."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .cgroup import MemoryCgroup
from .common import TIME_BIN, MiB, log
from .endpoints import Then, tool_cpu
from .env import Environment
from .measure import drop_page_cache, parse_time_v, tail, timed_sync, verify_tree, wait_for_quiet
from .model import ModelSpec
from .procs import kill_group, machine_busy_seconds
from .tools import Ctx, Invocation, Tool

READER = Path(__file__).resolve().parent / "reader.py"


@dataclass
class Snapshot:
    """The clock and the CPU counters at one instant of a run."""

    t: float
    busy: float
    server: float | None
    relay: float | None


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def weights_bytes(files: dict[str, dict[str, Any]], spec: ModelSpec) -> int:
    """What the reader must read: the manifest's files that match the model's weights pattern."""
    return sum(v["size"] for rel, v in files.items() if fnmatch.fnmatch(Path(rel).name, spec.weights_glob))


class Runner:
    def __init__(self, args: argparse.Namespace, scratch: Path, env: Environment) -> None:
        self.args = args
        self.scratch = scratch
        self.env = env
        self.current: subprocess.Popen[bytes] | None = None
        self._groups = 0

    def kill_current(self) -> None:
        """Stop the tool or reader running now (its whole process group: ours, started by us)."""
        if self.current is not None and self.current.poll() is None:
            kill_group(self.current)

    def _snapshot(self) -> Snapshot:
        return Snapshot(time.perf_counter(), machine_busy_seconds(), self.env.server_cpu(), self.env.relay_cpu())

    def _spawn(self, argv: list[str], out: IO[bytes], err: IO[bytes], env: dict[str, str]) -> tuple[int, bool]:
        """Run ``argv`` to its end or the timeout; (exit code, timed out)."""
        # self.current stays set while the process may run: an interrupt (KeyboardInterrupt out of wait) leaves it
        # for cleanup() to kill
        proc = self.current = subprocess.Popen(argv, stdout=out, stderr=err, env=env, start_new_session=True)
        try:
            rc, timed_out = proc.wait(timeout=self.args.timeout), False
        except subprocess.TimeoutExpired:
            kill_group(proc)
            rc, timed_out = proc.returncode, True
        self.current = None
        return rc, timed_out

    def _cgroup(self, ctx: Ctx) -> MemoryCgroup | None:
        limit = ctx.variant.mem_limit_mib
        if not limit:
            return None
        self._groups += 1
        group = MemoryCgroup(f"aibrix-bench-{os.getpid()}-{self._groups}", limit * MiB)
        group.create()
        return group

    def _read_weights(self, landing: Path, spec: ModelSpec, env: dict[str, str]) -> dict[str, Any]:
        """The reader, as its own process (under time -v), over the weight files in ``landing``."""
        a = self.args
        rt, ro, rerr = (self.scratch / f"read.{x}" for x in ("time", "out", "err"))
        argv = [
            *(TIME_BIN, "-v", "-o", str(rt)),
            *(sys.executable, "-I", "-S", str(READER), str(landing)),
            *("--glob", spec.weights_glob, "--method", a.reader, "--block-mib", str(a.reader_block_mib)),
        ]
        with open(ro, "wb") as out, open(rerr, "wb") as err:
            rc, timed_out = self._spawn(argv, out, err, env)
        res: dict[str, Any] = {"exit_code": rc, "timed_out": timed_out}
        with contextlib.suppress(ValueError, IndexError):
            res |= json.loads(ro.read_text().strip().splitlines()[-1])
        res |= parse_time_v(rt.read_text(errors="replace") if rt.exists() else "")
        if rc or timed_out:
            res["stderr_tail"] = tail(rerr, 2000)
        return res

    def execute(self, tool: Tool, ctx: Ctx, dest: Path, then: Then) -> tuple[dict[str, Any], Invocation]:
        """Run ``tool`` into ``dest`` and measure it and what follows it (no verification)."""
        a = self.args
        inv = tool.build(ctx, dest)
        env = {**ctx.base_env, **inv.env}
        tfile, ofile, efile = (self.scratch / f"run.{x}" for x in ("time", "out", "err"))
        pre_sync = timed_sync()
        idle_wait, idle_busy = wait_for_quiet(a.idle_threshold, a.max_idle_wait)
        cache = drop_page_cache() if a.drop_caches else "kept"
        group = self._cgroup(ctx)
        cg: dict[str, Any] | None = None
        reader: dict[str, Any] | None = None
        try:
            argv = [TIME_BIN, "-v", "-o", str(tfile), *(group.wrap(inv.argv) if group else inv.argv)]
            counters0 = self.env.relay_counters()
            load = os.getloadavg()
            started = dt.datetime.now(dt.timezone.utc).isoformat()
            s0 = self._snapshot()
            with open(ofile, "wb") as out, open(efile, "wb") as err:
                rc, timed_out = self._spawn(argv, out, err, env)
            s1 = s2 = self._snapshot()
            counters1 = self.env.relay_counters()
            if then is Then.READ and rc == 0 and not timed_out:
                landing = inv.landing(dest, ofile.read_text(errors="replace"))
                reader = self._read_weights(landing, ctx.spec, env)
                s2 = self._snapshot()
            post_sync = timed_sync()
            busy_after_sync = machine_busy_seconds()
            if group:
                cg = group.counters()
        finally:
            if group:
                group.remove()
        tv = parse_time_v(tfile.read_text(errors="replace") if tfile.exists() else "")
        run: dict[str, Any] = {
            "tool": tool.name,
            "env": self.env.name,
            **ctx.variant.key(),
            "then": then.value,
            "argv": inv.argv,
            "env_extra": inv.env,
            "started": started,
            "wall_s": s1.t - s0.t,
            **tv,
            "exit_code": rc,
            "timed_out": timed_out,
            "server_cpu_s": _delta(s0.server, s1.server),
            "relay_cpu_s": _delta(s0.relay, s1.relay),
            "machine_busy_cpu_s": s1.busy - s0.busy,
            "pre_sync_s": pre_sync,
            "idle_wait_s": idle_wait,
            "busy_cores_before": idle_busy,
            # the `sync` after the run (after the reader in a read run); in a sync run, the machine's CPU during
            # it is the writeback the tool left in the page cache: kernel work it causes but is not billed for
            "post_sync_s": post_sync,
            "flush_cpu_s": busy_after_sync - s2.busy,
            "page_cache": cache,
            "loadavg_before": load,
        }
        if reader is not None:
            run["reader"] = reader
            run["reader_wall_s"] = s2.t - s1.t
            run["in_memory_wall_s"] = s2.t - s0.t
            run["reader_cpu_s"] = reader.get("user_s", 0.0) + reader.get("sys_s", 0.0)
        if cg is not None:
            run["cgroup"] = cg
            run["oom_killed"] = bool(cg.get("oom_kills"))
        if counters0 and counters1:
            # what the tool did on the wire: HTTP requests (each paid the first-byte latency once),
            # TCP connections opened, and the most connections it had open at once
            run["http_requests"] = counters1["requests_delayed"] - counters0["requests_delayed"]
            run["tcp_connections"] = counters1["connections"] - counters0["connections"]
            run["max_open_connections"] = counters1["max_active"]
            run["relay_response_bytes"] = counters1["response_bytes"] - counters0["response_bytes"]
        # CPU burnt from the tool's start to the end of what was timed (the reader's end in a read run) by neither
        # the client, the reader, SeaweedFS nor the relay: other workloads plus kernel threads (writeback,
        # softirq); a large value flags a contaminated run
        server = _delta(s0.server, s2.server)
        if server is not None and "user_s" in run:
            run["other_cpu_s"] = (
                (s2.busy - s0.busy)
                - server
                - (_delta(s0.relay, s2.relay) or 0)
                - tool_cpu(run)
                - run.get("reader_cpu_s", 0.0)
            )
            run["other_cores"] = run["other_cpu_s"] / max(s2.t - s0.t, 1e-9)
        run["stderr_tail"] = tail(efile, 3000 if rc or timed_out else 600)
        run["stdout_tail"] = tail(ofile, 1000 if rc or timed_out else 300)
        run["stdout"] = ofile.read_text(errors="replace")[-4000:]
        return run, inv

    def run_one(
        self,
        tool: Tool,
        ctx: Ctx,
        files: dict[str, Any],
        *,
        phase: str,
        rep: int,
        order: int,
        warmup: bool,
        then: Then,
    ) -> dict[str, Any]:
        """One measured run into a fresh directory, verified (sizes and sha256) and removed."""
        dest = self.scratch / f"dl-{tool.name}-r{rep}"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        run, inv = self.execute(tool, ctx, dest, then)
        run = {"phase": phase, "rep": rep, "order_in_rep": order, "warmup": warmup, **run}
        problems: list[str] = []
        if run["timed_out"]:
            problems.append(f"timed out after {self.args.timeout}s")
        if run.get("oom_killed"):
            problems.append(f"OOM-killed in its {ctx.variant.mem_limit_mib} MiB cgroup")
        if run["exit_code"] != 0:
            problems.append(f"exit code {run['exit_code']}")
        rd = run.get("reader")
        if rd is not None:
            want = weights_bytes(files, ctx.spec)
            if rd["exit_code"] != 0 or rd.get("bytes") != want:
                problems.append(f"reader exit {rd['exit_code']}, read {rd.get('bytes')} of {want} weight bytes")
        landing = inv.landing(dest, run.pop("stdout"))
        run["landing_dir"] = str(landing)
        vp, ignored = verify_tree(landing, files)
        problems += vp
        run["ignored_extra_files"] = ignored if len(ignored) <= 50 else [*ignored[:50], f"... {len(ignored)} in all"]
        run["problems"] = problems if len(problems) <= 50 else [*problems[:50], f"... {len(problems)} in all"]
        run["ok"] = not problems
        shutil.rmtree(dest, ignore_errors=True)
        os.sync()
        self._log(run, warmup, problems)
        return run

    def _log(self, run: dict[str, Any], warmup: bool, problems: list[str]) -> None:
        status = "OK" if run["ok"] else "FAILED: " + "; ".join(problems[:5])
        after = f"+sync {run['post_sync_s']:5.2f}s" if run["then"] == Then.SYNC.value else ""
        if "in_memory_wall_s" in run:
            disk = run["reader"].get("fs_inputs", 0) * 512 / MiB
            after = f"+read {run['reader_wall_s']:5.2f}s ({disk:.0f} MiB from disk)"
        extra = f" relay {run['relay_cpu_s']:4.1f}s" if run.get("relay_cpu_s") is not None else ""
        if "http_requests" in run:
            extra += f" req {run['http_requests']} conns {run['tcp_connections']} (max {run['max_open_connections']})"
        cg = run.get("cgroup")
        if cg:
            extra += f" cgroup peak {(cg.get('peak_bytes') or 0) / MiB:.0f} MiB, OOM kills {cg.get('oom_kills')}"
        which = "warmup" if warmup else f"rep {run['rep']}"
        log(
            f"{run['phase']} {which} {run['tool']:15s} {run['setting']:8s} "
            f"then {run['then']:4s} wall {run['wall_s']:6.2f}s {after} "
            f"cpu {tool_cpu(run):6.2f}s rss {run.get('max_rss_kb', 0) / 1024:5.0f} MiB "
            f"server {run['server_cpu_s'] or 0:4.1f}s{extra} other {run.get('other_cpu_s', 0):4.1f}s  {status}"
        )
        if problems and run.get("stderr_tail"):
            print("\n".join(run["stderr_tail"].splitlines()[-15:]), file=sys.stderr)
