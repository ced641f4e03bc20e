"""The benchmark's command line: options, the phases they select, and the run of them (``bench/run.sh``)."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .. import netem
from . import phases
from .cgroup import CgroupError, locate
from .common import (
    ALL_TOOLS,
    TIME_BIN,
    VENV,
    GiB,
    MiB,
    cmd_out,
    log,
    machine_info,
)
from .destfs import open_loop_filesystem
from .endpoints import Then, runs_needed
from .env import Environment
from .model import ModelSpec
from .options import parse_args
from .phases import Phase
from .recording import Results, run_interruptible
from .report import matrix_section, report_markdown
from .results import resummarize
from .runner import Runner
from .tools import Ctx, Setting, Variant, make_tools
from .venvs import bootstrap


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        root = Path(args.work_dir)
        root.mkdir(parents=True, exist_ok=True)
        self.destfs = open_loop_filesystem(root) if args.dest_fs == "loop" else None
        where = self.destfs.mount_point if self.destfs else root
        self.scratch = Path(tempfile.mkdtemp(prefix="aibrix-bench-", dir=where))
        self.results: Results | None = None
        self.record: dict[str, Any] = {}
        self.env = Environment(args, self.scratch, self.record, self.save)
        self.runner = Runner(args, self.scratch, self.env)

    def cleanup(self) -> None:
        self.runner.kill_current()
        self.env.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)
        if self.destfs is not None:
            self.destfs.close()
        with contextlib.suppress(OSError):
            Path(self.args.work_dir).rmdir()  # only if empty

    def save(self) -> None:
        assert self.results is not None
        self.results.save(self.record)

    def variants(self, settings: list[Setting], mem_limit_mib: int | None = None) -> list[Variant]:
        a = self.args
        out = []
        for s in settings:
            v = Variant(s) if s is Setting.DEFAULTS else Variant(s, a.concurrency, a.chunk_mib)
            out += [v] if mem_limit_mib is None else [v, Variant(v.setting, v.conns, v.chunk_mib, mem_limit_mib)]
        return out

    def run_phase(self, s: phases.Session, name: Phase, env: str) -> None:
        a = self.args
        thens = runs_needed(a.end_points_list)
        large = ModelSpec(a.shards, a.shard_mib)
        small = ModelSpec(files=a.small_files_count, file_kib=a.small_file_kib)
        if name is Phase.NOOP:
            phases.noop(s, env)
        elif name is Phase.COMPARE:
            ph = phases.matrix(s, name, env, large, self.variants(a.settings_list), thens, a.reps, a.warmup, False)
            # top-level copies for older readers of the results file
            self.record["model"] = ph["model"]
            self.record["summary"] = ph["summary"]
            self.record["summary_markdown"] = "\n".join(matrix_section(f"{name.value}@{env}", ph))
        elif name is Phase.SMALL:
            phases.matrix(s, name, env, small, self.variants(a.settings_list), thens, a.small_reps, 0, True)
        elif name is Phase.MEMLIMIT:
            spec = large if a.mem_model == "large" else small
            variants = self.variants(a.mem_settings_list, a.mem_limit_mib)
            phases.matrix(s, name, env, spec, variants, thens, a.mem_reps, 0, True)
        elif name is Phase.SWEEP:
            spec = ModelSpec(a.sweep_shards, a.sweep_shard_mib, part_mib=a.sweep_part_mib)
            variants = [Variant(Setting.MATCHED, c, ch) for ch in a.sweep_chunks_list for c in a.sweep_conns_list]
            phases.matrix(s, name, env, spec, variants, [Then.SYNC], a.sweep_reps, 0, True)

    def main(self) -> int:
        a = self.args
        tools_all = make_tools()
        tools = [t.strip() for t in a.tools.split(",") if t.strip()]
        unknown = [t for t in tools if t not in tools_all]
        if unknown:
            raise SystemExit(f"unknown tool(s) {unknown}; choose from {ALL_TOOLS}")
        if not Path(TIME_BIN).exists():
            raise SystemExit(f"{TIME_BIN} missing: apt-get install time")
        plan = plan_phases(a)
        if any(env == "netns" for _, env in plan):
            why = netem.preflight()
            if why:
                raise SystemExit(f"--netns: {why}")
        cgroup_at = None
        if any(name is Phase.MEMLIMIT for name, _ in plan):
            try:
                version, parent = locate()
            except CgroupError as e:
                raise SystemExit(f"--mem-limited: {e}") from e
            cgroup_at = f"cgroup {version.value}, groups made under {parent}"
        check_disk(a, plan)
        probe = Ctx(
            "",
            ModelSpec(a.shards, a.shard_mib),
            Variant(Setting.DEFAULTS),
            a.s5cmd_workers,
            Path(a.aibrix_download_bin),
            baseline_bin=Path(a.baseline_bin) if a.baseline_bin else None,
        )
        runnable: list[str] = []
        skipped: dict[str, str] = {}
        for t in tools:
            reason = tools_all[t].available(probe)
            if reason:
                skipped[t] = reason
                log(f"SKIPPING {t}: {reason}")
            else:
                runnable.append(t)
        if not runnable:
            raise SystemExit("no runnable tools")
        for t in runnable:
            tools_all[t].prepare(probe)

        self.results = Results(Path(a.results_dir))
        ts = self.results.stamp
        self.record |= {
            "schema": 3,
            "timestamp": ts,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "machine": machine_info(),
            "config": {
                "phases": [f"{n.value}@{e}" for n, e in plan],
                "reps": a.reps,
                "warmup_rounds": a.warmup,
                "tools_requested": tools,
                "tools_run": runnable,
                "tools_skipped": skipped,
                "settings": [s.value for s in a.settings_list],
                "end_points": [ep.value for ep in a.end_points_list],
                "runs_per_tool_and_rep": [t.value for t in runs_needed(a.end_points_list)],
                "reader": a.reader,
                "reader_block_mib": a.reader_block_mib,
                "concurrency": a.concurrency,
                "chunk_mib": a.chunk_mib,
                "s5cmd_workers": a.s5cmd_workers,
                "drop_caches": a.drop_caches,
                "timeout_s": a.timeout,
                "idle_threshold_cores": a.idle_threshold,
                "max_idle_wait_s": a.max_idle_wait,
                "max_other_cores": a.max_other_cores,
                "retries": a.retries,
                "order": "repetition r runs the (variant, then) slots rotated by r; in its j-th slot the tools start "
                "at tool (r + j) mod n",
                "destination_root": str(self.scratch),
                "destination_fs": self.destfs.describe() if self.destfs else "the work directory's own filesystem",
                "store_dir": str(self.scratch / "store" if a.fresh_store else Path(a.store_dir)),
                "sweep": {
                    "conns": a.sweep_conns_list,
                    "chunks_mib": a.sweep_chunks_list,
                    "reps": a.sweep_reps,
                    "model": ModelSpec(a.sweep_shards, a.sweep_shard_mib, part_mib=a.sweep_part_mib).name,
                },
                "small_files": {
                    "model": ModelSpec(files=a.small_files_count, file_kib=a.small_file_kib).name,
                    "reps": a.small_reps,
                },
                "mem_limited": {
                    "limit_mib": a.mem_limit_mib,
                    "settings": [s.value for s in a.mem_settings_list],
                    "model": a.mem_model,
                    "reps": a.mem_reps,
                    "cgroup": cgroup_at,
                },
                "noop": {"model": ModelSpec(files=a.noop_files, file_kib=a.noop_file_kib).name, "reps": a.noop_reps},
                "netns": {
                    "latency_ms": a.latency_ms,
                    "conn_mbps": a.conn_mbps,
                    "aggregate_gbps": a.aggregate_gbps,
                    "queue_ms": a.queue_ms,
                },
            },
            "versions": {
                "seaweedfs": cmd_out([str(VENV / "bin" / "weed"), "version"]),
                **{t: tools_all[t].version(probe) for t in runnable},
            },
            "phases": {},
            "runs": [],
        }
        self.save()
        log(f"phases {self.record['config']['phases']}; tools {runnable}; results -> {self.results.path}")
        s = phases.Session(a, self.record, self.save, self.env, self.runner)
        if not a.skip_limits:
            phases.limits(s)
        for name, env in plan:
            self.run_phase(s, name, env)
        self.env.stop()
        self.save()
        self.finish()
        # a tool killed by its memory cgroup's OOM killer is a result of the memory-limited phase, not a failure
        oom = [r for r in self.record["runs"] if r.get("oom_killed")]
        failed = [r for r in self.record["runs"] if not r.get("ok") and not r.get("oom_killed")]
        if oom:
            log(f"{len(oom)} run(s) OOM-killed in their memory cgroup (recorded, left out of the medians)")
        if failed:
            log(f"{len(failed)} run(s) failed verification or exited non-zero; see {self.results.path}")
        return 1 if failed else 0

    def finish(self) -> None:
        """The plot, the .md next to the JSON, and the tables on stdout."""
        assert self.results is not None
        png = self.results.beside(".png")
        try:
            from .. import plot

            if plot.make_plot(self.record, png):
                self.record["plot"] = str(png)
                log(f"plot -> {png}")
        except Exception as e:  # a plot must never cost the measurements
            log(f"no plot: {e!r}")
        self.save()
        md = report_markdown(self.record, self.results.path)
        self.results.beside(".md").write_text(md)
        print(md)


def check_disk(a: argparse.Namespace, plan: list[tuple[Phase, str]]) -> None:
    """Enough free space for the largest model twice (one download, plus its source files the first time it is
    generated, or its store copy) and a GiB to spare; fail before starting anything if not."""
    large = a.shards * a.shard_mib * MiB
    small = a.small_files_count * a.small_file_kib * 1024
    sizes = {
        Phase.COMPARE: large,
        Phase.SMALL: small,
        Phase.MEMLIMIT: large if a.mem_model == "large" else small,
        Phase.SWEEP: a.sweep_shards * a.sweep_shard_mib * MiB,
        Phase.NOOP: a.noop_files * a.noop_file_kib * 1024,
    }
    need = 2 * max(sizes[name] for name, _ in plan) + GiB
    root = Path(a.work_dir)
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if free < need:
        raise SystemExit(f"{root}: {free / GiB:.1f} GiB free, the run needs about {need / GiB:.1f} GiB")


def plan_phases(a: argparse.Namespace) -> list[tuple[Phase, str]]:
    """[(phase, env)] in run order; env is "loopback" or "netns"."""
    if a.all:
        return [
            (Phase.COMPARE, "loopback"),
            (Phase.SMALL, "loopback"),
            (Phase.MEMLIMIT, "loopback"),
            (Phase.NOOP, "loopback"),
            (Phase.SWEEP, "netns"),
            (Phase.NOOP, "netns"),
        ]
    env = "netns" if a.netns else "loopback"
    flags = (
        (Phase.COMPARE, a.compare),
        (Phase.SWEEP, a.sweep),
        (Phase.SMALL, a.small_files),
        (Phase.MEMLIMIT, a.mem_limited),
        (Phase.NOOP, a.noop),
    )
    chosen = [p for p, on in flags if on]
    if not chosen:
        chosen = [Phase.SWEEP] if a.netns else [Phase.COMPARE]
    return [(p, env) for p in chosen]


def main(argv: list[str], script: Path) -> int:
    """``bench/run.sh`` and ``bench/run_bench.py``: the options, the tools' venvs (re-executing ``script`` in
    bench/.venv), then the run."""
    args = parse_args(argv)
    if args.summarize:
        return resummarize([Path(x) for x in args.summarize], args.quiet_only)
    bootstrap([t.strip() for t in args.tools.split(",")], script)
    return run_interruptible(Bench(args))
