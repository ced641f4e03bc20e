"""The phases of a run: the interleaved matrix of tools x variants x repetitions (the large model, the small
files, the memory-limited runs, the sweep), the no-op re-run and the physical limits."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from .. import physlimits
from .common import BUCKET, OURS, VENV, GiB, MiB, log
from .endpoints import Then
from .env import Environment
from .measure import verify_tree, wait_for_quiet
from .model import ModelSpec, ensure_model
from .numbers import fmt, median
from .runner import Runner
from .server import s3_client, s3_tool_env
from .stats import add_percentages, against_best, limit_cost, summarize, variant_of
from .tools import Ctx, Setting, Variant, make_tools


class Phase(str, Enum):
    COMPARE = "compare"  # the large model
    SMALL = "small"  # the model of small files
    MEMLIMIT = "memlimit"  # with and without a memory cgroup
    SWEEP = "sweep"  # connections x range sizes
    NOOP = "noop"  # a re-run with nothing to fetch


@dataclass
class Session:
    """What every phase works with: the options, the results record, the server and the runner."""

    args: argparse.Namespace
    record: dict[str, Any]
    save: Callable[[], None]
    env: Environment
    runner: Runner

    def make_ctx(self, spec: ModelSpec, variant: Variant, sizes: list[int] | None = None) -> Ctx:
        a = self.args
        ctx = Ctx(
            endpoint=self.env.tool_endpoint,
            spec=spec,
            variant=variant,
            s5cmd_workers=a.s5cmd_workers,
            aibrix_download_bin=Path(a.aibrix_download_bin),
            sizes=sizes or [],
            baseline_bin=Path(a.baseline_bin) if a.baseline_bin else None,
        )
        ctx.base_env = s3_tool_env(ctx.endpoint)
        return ctx


def _timed_run(s: Session, tool_name: str, ctx: Ctx, files: dict[str, Any], then: Then, **where: Any) -> None:
    """One timed run, redone (up to --retries times) while other processes used more than --max-other-cores."""
    a = s.args
    tool = make_tools()[tool_name]
    for attempt in range(a.retries + 1):
        run = s.runner.run_one(tool, ctx, files, then=then, warmup=False, **where)
        run["attempt"] = attempt
        busy = run.get("other_cores", 0.0)
        run["noisy"] = busy > a.max_other_cores
        redo = run["ok"] and run["noisy"] and attempt < a.retries
        if redo:
            # kept in the JSON, left out of the medians
            run["discarded"] = f"contaminated: other work used {busy:.2f} cores during the run"
            log(f"  -> discarding and redoing ({run['discarded']})")
        s.record["runs"].append(run)
        s.save()
        if not redo:
            return


def matrix(
    s: Session,
    name: Phase,
    env: str,
    spec: ModelSpec,
    variants: list[Variant],
    thens: list[Then],
    reps: int,
    warmup_rounds: int,
    warm_one: bool,
) -> dict[str, Any]:
    """Every tool in every (variant, kind of run) slot, ``reps`` times, interleaved: repetition r takes the slots
    rotated by r, and in its j-th slot starts at tool (r + j) mod n, so no tool and no slot is always first."""
    key = f"{name.value}@{env}"
    s.env.use(env)
    manifest = ensure_model(s.env.admin_endpoint, spec, s.runner.scratch)
    files = manifest["files"]
    sizes = [v["size"] for v in files.values()]
    total = sum(sizes)
    tools = s.record["config"]["tools_run"]
    tools_all = make_tools()
    phase: dict[str, Any] = {
        "name": name.value,
        "env": env,
        "tools": tools,
        "variants": [v.key() | {"label": v.label} for v in variants],
        "then": [t.value for t in thens],
        "reps": reps,
        "warmup_rounds": warmup_rounds,
        "model": {
            "uri": f"s3://{BUCKET}/{spec.prefix}",
            "shape": spec.shape,
            "weights_glob": spec.weights_glob,
            "total_bytes": total,
            "total_gib": total / GiB,
            "n_files": len(files),
            # the file list of a 10,000-file model would bloat every results file
            "files": files if len(files) <= 100 else f"{len(files)} files, see the manifest in the bucket",
        },
        "tool_settings": {
            v.label: {t: vars(tools_all[t].setup(s.make_ctx(spec, v, sizes))) for t in tools} for v in variants
        },
    }
    if s.env.net is not None:
        conns = sorted({v.conns for v in variants if v.conns})
        phase["ceilings_mb_per_s"] = {str(c): s.env.net.ceiling_mb_per_s(c) for c in conns}
        phase["ideal_mb_per_s"] = {
            f"{v.conns}x{v.chunk_mib}": s.env.net.ideal_mb_per_s(v.conns, v.chunk_mib * MiB, sizes)
            for v in variants
            if v.conns and v.chunk_mib
        }
    s.record["phases"][key] = phase
    slots = [(v, t) for v in variants for t in thens]
    log(
        f"phase {key}: {spec.name} ({total / GiB:.2f} GiB, {len(files)} files), {len(variants)} variant(s) x "
        f"{len(thens)} kind(s) of run x {len(tools)} tool(s) x {reps} rep(s)"
        + (f" + {warmup_rounds} warm-up round(s)" if warmup_rounds else "")
    )
    if warm_one:
        # warm SeaweedFS's page cache and any lazily opened volume once, untimed
        t = "s5cmd" if "s5cmd" in tools else tools[0]
        ctx = s.make_ctx(spec, variants[0], sizes)
        s.record["runs"].append(
            s.runner.run_one(tools_all[t], ctx, files, phase=key, rep=-1, order=0, warmup=True, then=Then.SYNC)
        )
    for w in range(warmup_rounds):
        ctx = s.make_ctx(spec, variants[0], sizes)
        for i, t in enumerate(tools):
            run = s.runner.run_one(
                tools_all[t], ctx, files, phase=key, rep=-(w + 1), order=i, warmup=True, then=thens[0]
            )
            s.record["runs"].append(run)
            s.save()
    n = len(tools)
    for rep in range(reps):
        k = rep % len(slots)
        for j, (variant, then) in enumerate(slots[k:] + slots[:k]):
            ctx = s.make_ctx(spec, variant, sizes)
            start = (rep + j) % n
            for i, t in enumerate(tools[start:] + tools[:start]):
                _timed_run(s, t, ctx, files, then, phase=key, rep=rep, order=i)
    summarize_phase(s.record, key)
    phase["server_rss_mib_at_end"] = s.env.server.rss_mib() if s.env.server else None
    s.save()
    return phase


def summarize_phase(rec: dict[str, Any], key: str) -> None:
    """The medians and ratios of one matrix phase, per variant (``groups``), and flat (``summary``)."""
    phase = rec["phases"][key]
    tools = sorted(phase["tools"], key=lambda t: t != OURS)  # ours first
    runs = [r for r in rec["runs"] if r.get("phase") == key]
    phys = (rec.get("limits") or {}).get("limit_mb_per_s")
    ne = rec.get("netem") if phase.get("env") == "netns" else None
    groups = []
    for vk in phase["variants"]:
        v = Variant(Setting(vk["setting"]), vk["conns"], vk["chunk_mib"], vk["mem_limit_mib"])
        rows = summarize([r for r in runs if variant_of(r) == v], tools, phase["model"]["total_bytes"])
        ceiling = (phase.get("ceilings_mb_per_s") or {}).get(str(v.conns))
        add_percentages(rows, phys, ceiling, ne["aggregate_mb_per_s"] if ne else None)
        for r in rows:
            r |= {"variant": v.label, **v.key()}
            r["skipped"] = r["skipped"] or r["tool"] in rec["config"].get("tools_skipped", {})
        groups.append({"variant": vk, "summary": rows})
    phase["groups"] = groups
    phase["summary"] = [r for g in groups for r in g["summary"]]
    phase["against_best_s5cmd"] = against_best(groups)
    phase["limit_cost"] = limit_cost(groups)


def noop(s: Session, env: str) -> dict[str, Any]:
    """aibrix-download on a complete model directory (nothing to fetch) vs one listing of the prefix."""
    a = s.args
    key = f"{Phase.NOOP.value}@{env}"
    s.env.use(env)
    spec = ModelSpec(files=a.noop_files, file_kib=a.noop_file_kib)
    manifest = ensure_model(s.env.admin_endpoint, spec, s.runner.scratch)
    files = manifest["files"]
    tool = make_tools()[OURS]
    ctx = s.make_ctx(spec, Variant(Setting.MATCHED, a.concurrency, a.chunk_mib), [v["size"] for v in files.values()])
    phase: dict[str, Any] = {
        "name": Phase.NOOP.value,
        "env": env,
        "model": {"uri": ctx.uri, "n_files": len(files), "total_bytes": sum(v["size"] for v in files.values())},
        "settings": tool.setup(ctx).flags,
        "target_s": 1.0,
    }
    s.record["phases"][key] = phase
    why = tool.available(ctx)
    if why:
        phase["skipped"] = why
        log(f"SKIPPING {key}: {why}")
        return phase
    dest = s.runner.scratch / "noop"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    log(f"phase {key}: first download of {spec.name} ({len(files)} files) ...")
    first, inv = s.runner.execute(tool, ctx, dest, Then.SYNC)
    landing = inv.landing(dest, first["stdout"])
    problems, _ = verify_tree(landing, files)
    phase["first_download"] = {k: first.get(k) for k in ("wall_s", "user_s", "sys_s", "max_rss_kb", "exit_code")}
    log(f"{key}: first download {first['wall_s']:.2f}s {'OK' if not problems else problems[:3]}")
    if problems or first["exit_code"] != 0:
        phase["problems"] = problems or [f"exit code {first['exit_code']}"]
        return phase

    def snapshot() -> dict[str, tuple[int, int]]:
        return {rel: ((st := (landing / rel).stat()).st_ino, st.st_mtime_ns) for rel in files}

    c = s3_client(s.env.tool_endpoint)

    def listing() -> float:
        t0 = time.perf_counter()
        n = 0
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=spec.prefix):
            n += len(page.get("Contents", []))
        if n < len(files):
            raise RuntimeError(f"listing found {n} < {len(files)} objects")
        return time.perf_counter() - t0

    def timed(argv: list[str]) -> float:
        t0 = time.perf_counter()
        subprocess.run(argv, env=ctx.base_env, capture_output=True, check=True, timeout=120)
        return time.perf_counter() - t0

    cold_list = [
        str(VENV / "bin" / "python"),
        "-c",
        "import boto3, sys\n"
        "c = boto3.client('s3')\n"
        "print(sum(len(p.get('Contents', [])) for p in "
        "c.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[1], Prefix=sys.argv[2])))",
        BUCKET,
        spec.prefix,
    ]
    s5_list = [str(VENV / "bin" / "s5cmd"), "--endpoint-url", ctx.endpoint, "ls", f"{ctx.uri}*"]
    listing()  # connect and warm the server's metadata path
    runs = []
    for rep in range(a.noop_reps):
        before = snapshot()
        warm_s = listing()
        cold_s = timed(cold_list)
        s5_s = timed(s5_list)
        run, _ = s.runner.execute(tool, ctx, dest, Then.SYNC)
        del run["stdout"]
        rewritten = sum(1 for k, v in snapshot().items() if before.get(k) != v)
        run.update(
            phase=key,
            rep=rep,
            warmup=False,
            listing_s=warm_s,
            listing_cold_python_s=cold_s,
            listing_s5cmd_s=s5_s,
            excess_s=run["wall_s"] - warm_s,
            files_rewritten=rewritten,
            ok=run["exit_code"] == 0 and rewritten == 0,
        )
        runs.append(run)
        s.record["runs"].append(run)
        log(
            f"{key} rep {rep}: re-run {run['wall_s']:.3f}s (cpu {run.get('user_s', 0) + run.get('sys_s', 0):.2f}s)"
            f", listing {warm_s * 1000:.0f} ms in-process / {cold_s:.2f}s new python / {s5_s:.2f}s s5cmd ls"
            f", files rewritten {rewritten}"
        )
    startup = [timed([str(ctx.aibrix_download_bin), "--help"]) for _ in range(3)]
    problems, _ = verify_tree(landing, files)
    shutil.rmtree(dest, ignore_errors=True)
    ok = [r for r in runs if r["ok"]]
    excess = median([r["excess_s"] for r in ok])
    phase.update(
        {
            "reps": a.noop_reps,
            "ok": len(ok),
            "noop_wall_median_s": median([r["wall_s"] for r in ok]),
            "noop_cpu_median_s": median([r.get("user_s", 0) + r.get("sys_s", 0) for r in ok]),
            "noop_rss_mib_median": median([r.get("max_rss_kb", 0) / 1024 for r in ok]),
            "listing_median_s": median([r["listing_s"] for r in ok]),
            "listing_cold_python_median_s": median([r["listing_cold_python_s"] for r in ok]),
            "listing_s5cmd_median_s": median([r["listing_s5cmd_s"] for r in ok]),
            "excess_median_s": excess,
            "startup_help_median_s": median(startup),
            "target_met": excess is not None and excess < 1.0 and not problems,
            "problems": problems,
        }
    )
    s.save()
    return phase


def limits(s: Session) -> None:
    """Loopback TCP and disk write throughput: what no tool can beat on this machine."""
    a = s.args
    log(
        f"measuring physical limits: loopback TCP ({a.limits_seconds}s per point), "
        f"disk write ({a.limits_disk_mib} MiB) ..."
    )
    wait_for_quiet(a.idle_threshold, a.max_idle_wait)
    lim = physlimits.measure(s.runner.scratch, a.limits_disk_mib, a.limits_seconds, [1, 4])
    s.record["limits"] = lim
    log(
        f"loopback TCP {lim['loopback_mb_per_s']:.0f} MB/s; disk write buffered+fdatasync "
        f"{fmt(lim['disk_write_buffered'].get('mb_per_s'), '.0f')} MB/s, O_DIRECT "
        f"{fmt(lim['disk_write_direct'].get('mb_per_s'), '.0f')} MB/s -> limit {lim['limit_mb_per_s']:.0f} MB/s "
        f"({lim['limit_is']})"
    )
    s.save()
