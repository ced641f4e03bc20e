"""Medians per tool and end point, and the ratios the tables show (ours ÷ s5cmd; peers' wall ÷ ours)."""

from __future__ import annotations

from typing import Any

from .common import BASELINE, OURS, GiB
from .endpoints import EndPoint, measure, tool_cpu
from .numbers import median
from .tools import Setting, Variant

SPEEDUP_PEERS = ("boto3", "aibrix-0.8.0")


def variant_of(run: dict[str, Any]) -> Variant:
    """The variant a run belongs to; results from before the settings ran every tool matched (--concurrency)."""
    return Variant(
        Setting(run.get("setting", Setting.MATCHED.value)),
        run.get("conns"),
        run.get("chunk_mib"),
        run.get("mem_limit_mib"),
    )


def counted(runs: list[dict[str, Any]], tool: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(timed runs that count, runs redone as contaminated) of ``tool``."""
    mine = [r for r in runs if r["tool"] == tool and not r.get("warmup")]
    return [r for r in mine if not r.get("discarded")], [r for r in mine if r.get("discarded")]


def _endpoint_stats(ok: list[dict[str, Any]], ep: EndPoint, gib: float) -> dict[str, Any]:
    got = [m for r in ok if (m := measure(r, ep)) is not None]
    walls = [w for w, _, _ in got]
    return {
        "n": len(got),
        "wall_median_s": median(walls),
        "wall_min_s": min(walls) if walls else None,
        "wall_max_s": max(walls) if walls else None,
        "cpu_s_per_gib_median": median([c / gib for _, c, _ in got if c is not None]),
        "rss_mib_median": median([m for _, _, m in got if m is not None]),
    }


def summarize(runs: list[dict[str, Any]], tools: list[str], total_bytes: int) -> list[dict[str, Any]]:
    """One row per tool over ``runs`` (one variant of one phase): every end point, and the download's details."""
    gib = total_bytes / GiB
    rows = []
    for t in tools:
        mine, redone = counted(runs, t)
        ok = [r for r in mine if r["ok"]]
        walls = [r["wall_s"] for r in ok]
        cg = [r["cgroup"] for r in mine if r.get("cgroup")]
        eps = {ep.value: _endpoint_stats(ok, ep, gib) for ep in EndPoint}
        rows.append(
            {
                "tool": t,
                "ok": len(ok),
                "runs": len(mine),
                "discarded": len(redone),
                "noisy_accepted": sum(1 for r in ok if r.get("noisy")),
                "skipped": bool(mine) and all(r.get("skipped") for r in mine),
                "endpoints": eps,
                "oom_killed": sum(1 for r in mine if r.get("oom_killed")),
                "cgroup_runs": len(cg),
                "cgroup_peak_mib_median": median([c["peak_bytes"] / 2**20 for c in cg if c.get("peak_bytes")]),
                "cgroup_peak_mib_max": max([c["peak_bytes"] / 2**20 for c in cg if c.get("peak_bytes")], default=None),
                # what the reader had to fetch from disk (time -v's file system inputs, 512-byte blocks): the
                # weights the tool did not leave in the page cache
                "reader_disk_mib_median": median(
                    [r["reader"]["fs_inputs"] * 512 / 2**20 for r in ok if "fs_inputs" in r.get("reader", {})]
                ),
                # the download only, over every run (the plot and the sweep tables read these)
                "wall_median_s": eps["download"]["wall_median_s"],
                "wall_min_s": eps["download"]["wall_min_s"],
                "wall_max_s": eps["download"]["wall_max_s"],
                "mb_per_s_median": median([total_bytes / 1e6 / w for w in walls]),
                "gib_per_s_median": median([gib / w for w in walls]),
                "cpu_s_per_gib_median": eps["download"]["cpu_s_per_gib_median"],
                "cpu_s_per_gib_with_flush_median": eps["durable"]["cpu_s_per_gib_median"],
                "cpu_util_median": median([tool_cpu(r) / r["wall_s"] for r in ok if "user_s" in r]),
                "rss_mib_median": eps["download"]["rss_mib_median"],
                "wall_sync_median_s": eps["durable"]["wall_median_s"],
                "server_cpu_s_median": median([r["server_cpu_s"] for r in ok if r.get("server_cpu_s") is not None]),
                "other_cpu_s_median": median([r["other_cpu_s"] for r in ok if r.get("other_cpu_s") is not None]),
                "relay_cpu_s_median": median([r["relay_cpu_s"] for r in ok if r.get("relay_cpu_s") is not None]),
                "http_requests_median": median([r["http_requests"] for r in ok if "http_requests" in r]),
                "max_open_connections_median": median(
                    [r["max_open_connections"] for r in ok if "max_open_connections" in r]
                ),
            }
        )
    add_ratios(rows)
    return rows


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Per end point: each tool's wall and CPU ÷ s5cmd's (same variant); on every row of ours, each peer's wall
    ÷ ours (the speed-up)."""
    by_tool = {r["tool"]: r for r in rows}
    base = by_tool.get(BASELINE)
    ours = by_tool.get(OURS)
    for r in rows:
        for ep, st in r["endpoints"].items():
            b = base["endpoints"][ep] if base else {}
            st["wall_ratio_vs_s5cmd"] = _ratio(st["wall_median_s"], b.get("wall_median_s"))
            st["cpu_ratio_vs_s5cmd"] = _ratio(st["cpu_s_per_gib_median"], b.get("cpu_s_per_gib_median"))
            if ours is not None and r is ours:
                st["speedup_vs"] = {
                    p: _ratio(by_tool[p]["endpoints"][ep]["wall_median_s"], st["wall_median_s"])
                    for p in SPEEDUP_PEERS
                    if p in by_tool
                }


def add_percentages(
    rows: list[dict[str, Any]], phys_mb_s: float | None, ceiling_mb_s: float | None, aggregate_mb_s: float | None
) -> None:
    """Median MB/s as a percentage of the physical limit and, in the netns mode, of the emulated link."""
    for r in rows:
        mb = r.get("mb_per_s_median")
        if phys_mb_s:
            r["pct_physical"] = None if mb is None else 100 * mb / phys_mb_s
        if ceiling_mb_s:
            r["pct_ceiling"] = None if mb is None else 100 * mb / ceiling_mb_s
        if aggregate_mb_s:
            r["pct_aggregate"] = None if mb is None else 100 * mb / aggregate_mb_s


def best_of_settings(groups: list[dict[str, Any]], tool: str, ep: str, metric: str) -> float | None:
    """The lowest median of ``tool`` at ``ep`` over the unlimited variants of a phase (s5cmd at its best)."""
    vals = [
        row["endpoints"][ep][metric]
        for g in groups
        if not g["variant"].get("mem_limit_mib")
        for row in g["summary"]
        if row["tool"] == tool and row["endpoints"][ep][metric] is not None
    ]
    return min(vals) if vals else None


def against_best(groups: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Ours at each unlimited setting ÷ s5cmd at the better of its settings, per end point (wall and CPU)."""
    out: dict[str, dict[str, float | None]] = {}
    for g in groups:
        if g["variant"].get("mem_limit_mib"):
            continue
        row = next((r for r in g["summary"] if r["tool"] == OURS), None)
        if row is None:
            continue
        for ep in EndPoint:
            st = row["endpoints"][ep.value]
            key = f"{g['variant']['setting']}/{ep.value}"
            out[key] = {
                "wall": _ratio(st["wall_median_s"], best_of_settings(groups, BASELINE, ep.value, "wall_median_s")),
                "cpu": _ratio(
                    st["cpu_s_per_gib_median"], best_of_settings(groups, BASELINE, ep.value, "cpu_s_per_gib_median")
                ),
            }
    return out


def limit_cost(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every limited variant: each tool's median wall in it ÷ in the same setting without the limit."""
    out = []
    for g in groups:
        lim = g["variant"].get("mem_limit_mib")
        if not lim:
            continue
        free = next(
            (
                h
                for h in groups
                if not h["variant"].get("mem_limit_mib") and h["variant"]["setting"] == g["variant"]["setting"]
            ),
            None,
        )
        if free is None:
            continue
        for row in g["summary"]:
            other = next((r for r in free["summary"] if r["tool"] == row["tool"]), None)
            if other is None:
                continue
            out.append(
                {
                    "tool": row["tool"],
                    "setting": g["variant"]["setting"],
                    "mem_limit_mib": lim,
                    "wall_ratio": {
                        ep.value: _ratio(
                            row["endpoints"][ep.value]["wall_median_s"], other["endpoints"][ep.value]["wall_median_s"]
                        )
                        for ep in EndPoint
                    },
                }
            )
    return out
