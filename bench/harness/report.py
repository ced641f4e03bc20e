"""The markdown report: per phase and setting, every tool's wall, CPU-s/GiB and peak RSS at each end point, with
the ratios to s5cmd; the headline ratios; the sweep's pivot tables; the no-op re-run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import netem
from .common import BASELINE, OURS
from .endpoints import EndPoint
from .numbers import fmt
from .phases import Phase
from .stats import SPEEDUP_PEERS

READER_NOTE = (
    "End points: **download only** = the tool's process, start to exit (every run); **durable** = the same, then "
    "`sync` (wall = tool + sync; CPU = tool + the machine's CPU during the sync, i.e. the writeback the tool left "
    "behind); **weights in memory** = the tool, then a separate reader process that reads every weight file "
    "(`{glob}`) the way safetensors does (method `{method}`, see bench/harness/reader.py), timed from the tool's "
    "start until the reader has read every byte; CPU = tool + reader. A run is followed by either the `sync` or "
    "the reader, never both. Peak RSS is the tool's. Ratios: a tool's median ÷ s5cmd's, same setting."
)


def _wall_cell(st: dict[str, Any]) -> str:
    out = fmt(st["wall_median_s"], ".2f")
    if st["wall_min_s"] is not None and st["n"] > 1:
        out += f" ({st['wall_min_s']:.2f}-{st['wall_max_s']:.2f})"
    return out


def _ok_cell(r: dict[str, Any], discard_label: str) -> str:
    notes = [f"+{r['discarded']} {discard_label}"] if r.get("discarded") else []
    notes += [f"{r['noisy_accepted']} noisy kept"] if r.get("noisy_accepted") else []
    notes += [f"{r['oom_killed']} OOM-killed"] if r.get("oom_killed") else []
    return f"{r['ok']}/{r['runs']}" + (f" ({', '.join(notes)})" if notes else "")


def variant_table(rows: list[dict[str, Any]], settings: dict[str, Any], discard_label: str = "redone") -> str:
    """One row per tool and end point: n, wall, CPU-s/GiB, peak RSS, ratios to s5cmd; cgroup columns if limited."""
    limited = any(r.get("cgroup_runs") for r in rows)
    head = (
        "| tool | ok/runs | max GETs in flight | end point | n | median wall s (min-max) | CPU-s/GiB | peak RSS MiB "
        f"| wall ÷ {BASELINE} | CPU ÷ {BASELINE} |" + (" cgroup peak MiB (max) |" if limited else "")
    )
    out = [head, "|---" * (10 + limited) + "|"]
    for r in rows:
        if r["skipped"] or not r["runs"]:
            out.append(f"| {r['tool']} | skipped |" + " — |" * (8 + limited))
            continue
        inflight = fmt((settings.get(r["tool"]) or {}).get("max_in_flight"), ".0f")
        for i, ep in enumerate(EndPoint):
            st = r["endpoints"][ep.value]
            first = f"| {r['tool']} | {_ok_cell(r, discard_label)} | {inflight} " if i == 0 else "| | | "
            cg = ""
            if limited:
                cg = (
                    f" {fmt(r.get('cgroup_peak_mib_median'), '.0f')} ({fmt(r.get('cgroup_peak_mib_max'), '.0f')}) |"
                    if i == 0
                    else " |"
                )
            out.append(
                f"{first}| {ep.heading} | {st['n']} | {_wall_cell(st)} | {fmt(st['cpu_s_per_gib_median'], '.2f')} "
                f"| {fmt(st['rss_mib_median'], '.0f')} | {fmt(st.get('wall_ratio_vs_s5cmd'), '.2f')} "
                f"| {fmt(st.get('cpu_ratio_vs_s5cmd'), '.2f')} |{cg}"
            )
    ours = next((r for r in rows if r["tool"] == OURS and r["runs"]), None)
    speed = (ours or {}).get("endpoints", {}).get(EndPoint.IN_MEMORY.value, {}).get("speedup_vs", {})
    if any(v is not None for v in speed.values()):
        parts = [f"{fmt(v, '.2f')}x {p}'s" for p, v in speed.items() if p in SPEEDUP_PEERS]
        out.append(f"\n{OURS} weights in memory, speed-up (their median wall ÷ ours): " + ", ".join(parts) + ".")
    return "\n".join(out) + "\n"


def details_table(rows: list[dict[str, Any]]) -> str:
    """The download only, in detail: MB/s, % of the physical limit, server and other CPU; what the reader read
    from disk."""
    pct = any("pct_physical" in r for r in rows)
    out = [
        "| tool | median MB/s |" + (" % of phys. limit |" if pct else "") + " median server CPU-s "
        "| median other CPU-s | reader: MiB read from disk (median) |",
        "|---|---|" + ("---|" if pct else "") + "---|---|---|",
    ]
    for r in rows:
        if not r["runs"]:
            continue
        share = r.get("pct_physical")
        pc = (" — |" if share is None else f" {share:.0f} % |") if pct else ""
        out.append(
            f"| {r['tool']} | {fmt(r['mb_per_s_median'], '.0f')} |{pc} {fmt(r['server_cpu_s_median'], '.1f')} "
            f"| {fmt(r['other_cpu_s_median'], '.1f')} | {fmt(r.get('reader_disk_mib_median'), '.0f')} |"
        )
    return "\n".join(out) + "\n"


def headline(phase: dict[str, Any]) -> str:
    """Ours ÷ s5cmd per end point and setting, and against s5cmd at the better of its settings."""
    best = phase.get("against_best_s5cmd") or {}
    groups = [g for g in phase.get("groups", []) if not g["variant"].get("mem_limit_mib")]
    if not groups:
        return ""
    labels = [g["variant"]["label"] for g in groups]
    out = [
        f"**{OURS} ÷ {BASELINE}** (wall / CPU), per setting, and ÷ {BASELINE} at the better of its settings:\n",
        "| end point | "
        + " | ".join(labels)
        + " | "
        + " | ".join(f"{g['variant']['setting']} ÷ best" for g in groups)
        + " |",
        "|---|" + "---|" * (2 * len(groups)),
    ]
    for ep in EndPoint:
        cells = []
        for g in groups:
            row = next((r for r in g["summary"] if r["tool"] == OURS), None)
            st = row["endpoints"][ep.value] if row else {}
            cells.append(f"{fmt(st.get('wall_ratio_vs_s5cmd'), '.2f')} / {fmt(st.get('cpu_ratio_vs_s5cmd'), '.2f')}")
        for g in groups:
            b = best.get(f"{g['variant']['setting']}/{ep.value}", {})
            cells.append(f"{fmt(b.get('wall'), '.2f')} / {fmt(b.get('cpu'), '.2f')}")
        out.append(f"| {ep.heading} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def limit_table(phase: dict[str, Any]) -> str:
    rows = phase.get("limit_cost") or []
    if not rows:
        return ""
    out = [
        "**The memory limit's cost** (median wall in the cgroup ÷ without it, same setting):\n",
        "| tool | setting | limit MiB | " + " | ".join(ep.heading for ep in EndPoint) + " |",
        "|---|---|---|" + "---|" * len(EndPoint),
    ]
    for r in rows:
        cells = " | ".join(fmt(r["wall_ratio"][ep.value], ".2f") for ep in EndPoint)
        out.append(f"| {r['tool']} | {r['setting']} | {r['mem_limit_mib']} | {cells} |")
    return "\n".join(out) + "\n"


def matrix_section(key: str, ph: dict[str, Any], discard_label: str = "redone") -> list[str]:
    mdl = ph["model"]
    out = [
        f"#### {ph['name']} ({key}): `{mdl['uri']}` — {mdl.get('shape') or 'model'}, {mdl['total_gib']:.2f} GiB in "
        f"{mdl['n_files']} files, {ph['reps']} rep(s)"
        + (f" + {ph['warmup_rounds']} warm-up round(s)" if ph.get("warmup_rounds") else ""),
        "",
    ]
    if ph["name"] == Phase.SWEEP:
        return [*out, sweep_tables(ph)]
    for g in ph.get("groups", []):
        label = g["variant"]["label"]
        settings = ph.get("tool_settings", {}).get(label, {})
        out += [f"**{label}**", "", variant_table(g["summary"], settings, discard_label), details_table(g["summary"])]
        out += [
            f"- `{t}`: {s['flags']} (at most {fmt(s.get('max_in_flight'), '.0f')} GETs in flight on this model)"
            for t, s in settings.items()
        ]
        out.append("")
    out += [headline(ph), limit_table(ph)]
    return out


def noop_section(key: str, ph: dict[str, Any]) -> list[str]:
    out = [f"#### No-op re-run ({key}): `{ph['model']['uri']}`, {ph['model']['n_files']} files", ""]
    if ph.get("skipped") or (ph.get("problems") and "excess_median_s" not in ph):
        return [*out, f"Not measured: {ph.get('skipped') or ph.get('problems')}", ""]
    return [
        *out,
        "| aibrix-download re-run s (median) | CPU-s | RSS MiB | one listing, in-process s "
        "| listing, new python+boto3 s | `s5cmd ls` s | `aibrix-download --help` s | re-run minus listing s "
        "| target < 1 s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {fmt(ph['noop_wall_median_s'], '.3f')} ({ph['ok']}/{ph['reps']} ok) "
        f"| {fmt(ph['noop_cpu_median_s'], '.2f')} | {fmt(ph['noop_rss_mib_median'], '.0f')} "
        f"| {fmt(ph['listing_median_s'], '.3f')} | {fmt(ph['listing_cold_python_median_s'], '.3f')} "
        f"| {fmt(ph['listing_s5cmd_median_s'], '.3f')} | {fmt(ph['startup_help_median_s'], '.3f')} "
        f"| {fmt(ph['excess_median_s'], '.3f')} | {'met' if ph['target_met'] else 'NOT met'} |",
        "",
    ]


def sweep_tables(phase: dict[str, Any]) -> str:
    """One pivot table per range size: rows = tools, columns = connection counts."""
    rows = phase["summary"]
    tools = phase["tools"]
    conns = sorted({r["conns"] for r in rows})
    chunks = sorted({r["chunk_mib"] for r in rows})
    netns = phase.get("env") == "netns"
    out = []
    if netns:
        out.append(
            "Ceiling: min(connections x per-connection cap, aggregate cap). Ideal with latency: the same, with "
            "every range also paying the first-byte latency once (and at most one connection per range).\n"
        )
    for ch in chunks:
        out.append(f"**{ch} MiB ranges**: median MB/s (% of the emulated ceiling, % of the physical limit)\n")
        out.append("| tool | " + " | ".join(f"{c} conn{'s' if c > 1 else ''}" for c in conns) + " |")
        out.append("|---|" + "---|" * len(conns))
        if netns:
            ceil = " | ".join(fmt(phase["ceilings_mb_per_s"].get(str(c)), ".0f") for c in conns)
            out.append(f"| *ceiling MB/s* | {ceil} |")
            ideal = " | ".join(fmt(phase.get("ideal_mb_per_s", {}).get(f"{c}x{ch}"), ".0f") for c in conns)
            out.append(f"| *ideal with latency MB/s* | {ideal} |")
        for t in tools:
            cells = []
            for c in conns:
                r = next((x for x in rows if x["tool"] == t and x["conns"] == c and x["chunk_mib"] == ch), None)
                if r is None or r["mb_per_s_median"] is None:
                    cells.append("—" if r is None or not r["runs"] else f"failed {r['runs'] - r['ok']}/{r['runs']}")
                    continue
                pcts = [fmt(r.get("pct_ceiling"), ".0f") + " %"] if netns else []
                pcts += [fmt(r.get("pct_physical"), ".0f") + " %"] if "pct_physical" in r else []
                cells.append(f"{r['mb_per_s_median']:.0f}" + (f" ({', '.join(pcts)})" if pcts else ""))
            out.append(f"| {t} | " + " | ".join(cells) + " |")
        out.append("")
    out.append(
        "| range MiB | conns | tool | ok/runs | median wall s | median MB/s | client CPU-s/GiB | peak RSS MiB "
        "| server CPU-s | relay CPU-s | other CPU-s | HTTP requests | most connections open |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda x: (x["chunk_mib"], x["conns"], tools.index(x["tool"]))):
        out.append(
            f"| {r['chunk_mib']} | {r['conns']} | {r['tool']} | {r['ok']}/{r['runs']} "
            f"| {fmt(r['wall_median_s'], '.2f')} | {fmt(r['mb_per_s_median'], '.0f')} "
            f"| {fmt(r['cpu_s_per_gib_median'], '.2f')} | {fmt(r['rss_mib_median'], '.0f')} "
            f"| {fmt(r['server_cpu_s_median'], '.1f')} | {fmt(r.get('relay_cpu_s_median'), '.2f')} "
            f"| {fmt(r['other_cpu_s_median'], '.1f')} | {fmt(r.get('http_requests_median'), '.0f')} "
            f"| {fmt(r.get('max_open_connections_median'), '.0f')} |"
        )
    return "\n".join(out) + "\n"


def report_markdown(rec: dict[str, Any], results_path: Path) -> str:
    """The whole report of one results record."""
    m = rec["machine"]
    out = [
        f"### Download benchmark {rec['timestamp']}",
        "",
        f"Command: `{rec['command']}`. Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_total_gib']} GiB RAM, "
        f"kernel {m['kernel']}, Python {m['python']}, load average at start "
        f"{' '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}.",
        "",
    ]
    lim = rec.get("limits")
    if lim:
        d_b = lim["disk_write_buffered"].get("mb_per_s")
        d_d = lim["disk_write_direct"].get("mb_per_s")
        out += [
            "**Physical limits, measured in this run:** loopback TCP "
            f"{lim['loopback_mb_per_s']:.0f} MB/s (best of 1 and 4 connections); disk write "
            f"{fmt(d_b, '.0f')} MB/s buffered + fdatasync, {fmt(d_d, '.0f')} MB/s O_DIRECT. "
            f"Physical limit = min(loopback, best disk) = **{lim['limit_mb_per_s']:.0f} MB/s** ({lim['limit_is']}); "
            'every "% of phys. limit" below is median MB/s ÷ this.',
            "",
        ]
    ne = rec.get("netem")
    if ne:
        ch = ne.get("checks", {})
        out += [
            f"**Emulated network (`--netns`):** server in netns `{ne['namespace']}` behind veth "
            f"({ne['subnet']}); first-byte latency {ne['latency_ms']:g} ms per request (relay), "
            f"{ne['conn_mbps']:g} Mbit/s = {ne['conn_mb_per_s']:.0f} MB/s per connection (SO_MAX_PACING_RATE), "
            f"aggregate {ne['aggregate_gbps']:g} Gbit/s = {ne['aggregate_mb_per_s']:.0f} MB/s (htb). "
            f"Measured: 1 connection {fmt(ch.get('one_conn_mb_per_s'), '.0f')} MB/s, "
            f"{ch.get('tcp_goodput', {}).get('runs', [{}, {}])[1].get('conns', '?')} connections "
            f"{fmt(ch.get('many_conns_mb_per_s'), '.0f')} MB/s (TCP goodput ≈ {100 * netem.GOODPUT_FACTOR:.1f} % "
            f"of wire rate); a small request takes {fmt(ch.get('small_request_ms_direct'), '.1f')} ms direct and "
            f"{fmt(ch.get('small_request_ms_via_relay'), '.1f')} ms through the relay. "
            "The ceiling for c connections is min(c x per-connection cap, aggregate cap).",
            "",
        ]
    cfg = rec.get("config", {})
    phases = rec.get("phases", {}).values()
    globs = sorted(
        {ph["model"].get("weights_glob", "*") for ph in phases if ph["name"] not in (Phase.NOOP, Phase.SWEEP)}
    )
    if globs:
        out += [READER_NOTE.format(glob="`, `".join(globs), method=cfg.get("reader", "mmap")), ""]
    for key, ph in rec.get("phases", {}).items():
        out += noop_section(key, ph) if ph["name"] == Phase.NOOP else matrix_section(key, ph)
    for t, why in rec["config"]["tools_skipped"].items():
        out.append(f"- **{t} skipped**: {why}")
    if rec.get("plot"):
        out.append(f"\nPlot: `{rec['plot']}`")
    out.append(f"\nRaw numbers: `{results_path}`\n")
    return "\n".join(out)
