#!/usr/bin/env python3
"""PNG plot of one benchmark results file (written by run_bench.py next to its JSON).

Top row (if the run had a sweep): median throughput vs connection count, one line per tool, one panel per
range size, with the emulated ceiling min(c x per-connection cap, aggregate cap) and the measured physical
limit drawn in. Bottom row: median MB/s, client CPU-s per GiB and peak RSS per tool, one bar per phase
(compare, small files, and the sweep at --plot-point connections x range size).

    bench/.venv/bin/python bench/plot.py bench/results/<timestamp>.json [out.png]
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

TOOL_ORDER = ["aibrix-download", "aibrix-0.8.0", "boto3", "s5cmd"]
COLORS = {"aibrix-download": "#d62728", "aibrix-0.8.0": "#ff7f0e", "boto3": "#1f77b4", "s5cmd": "#2ca02c"}
MARKERS = {"aibrix-download": "o", "aibrix-0.8.0": "s", "boto3": "^", "s5cmd": "D"}


def _tools(rows: list[dict[str, Any]]) -> list[str]:
    seen = {r["tool"] for r in rows}
    return [t for t in TOOL_ORDER if t in seen] + sorted(seen - set(TOOL_ORDER))


def _bar_phases(rec: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """(label, summary rows of one config) for every matrix phase (one per variant: defaults, matched, ...); the
    sweep contributes one point. The bars are the download only."""
    out = []
    for key, ph in rec.get("phases", {}).items():
        rows = ph.get("summary") or []
        if not rows or ph.get("name") == "noop":
            continue
        if ph["name"] == "sweep":
            conns = sorted({r["conns"] for r in rows})
            chunks = sorted({r["chunk_mib"] for r in rows})
            c = 16 if 16 in conns else conns[-1]
            ch = 64 if 64 in chunks else chunks[-1]
            rows = [r for r in rows if r["conns"] == c and r["chunk_mib"] == ch]
            label = f"{key}\n{c} conns x {ch} MiB"
        elif "groups" in ph:  # one bar group per variant (defaults, matched, in a cgroup)
            size = f"{ph['model']['total_gib']:.2f} GiB / {ph['model']['n_files']} files"
            out += [(f"{key}\n{size}, {g['variant']['label']}", g["summary"]) for g in ph["groups"]]
            continue
        else:
            cfg = ph["configs"][0]
            label = f"{key}\n{ph['model']['total_gib']:.2f} GiB / {ph['model']['n_files']} files, c={cfg['conns']}"
        out.append((label, rows))
    return out


def make_plot(rec: dict[str, Any], png: Path) -> bool:
    """Write ``png``; False if there is nothing to plot."""
    # matplotlib is in bench/.venv only; the project's venv, where the type checker runs, has none
    import matplotlib  # type: ignore[import-not-found,unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]

    sweeps = [(k, ph) for k, ph in rec.get("phases", {}).items() if ph.get("name") == "sweep" and ph.get("summary")]
    bars = _bar_phases(rec)
    if not sweeps and not bars:
        return False
    phys = (rec.get("limits") or {}).get("limit_mb_per_s")
    chunk_sets = [sorted({r["chunk_mib"] for r in ph["summary"]}) for _, ph in sweeps]
    top = sum(len(c) for c in chunk_sets)
    ncols = max(top, 3)
    nrows = (1 if top else 0) + (1 if bars else 0)
    fig = plt.figure(figsize=(4.6 * ncols, 4.4 * nrows + 0.8), constrained_layout=True)
    gs = fig.add_gridspec(nrows, ncols)
    m = rec.get("machine", {})
    cmd = textwrap.fill(rec.get("command", ""), width=int(38 * ncols), break_on_hyphens=False)
    fig.suptitle(
        f"aibrix-download benchmark {rec.get('timestamp', '')} — {m.get('nproc', '?')} CPUs, "
        f"{m.get('mem_total_gib', '?')} GiB RAM, kernel {m.get('kernel', '?')}\n{cmd}",
        fontsize=9,
    )

    col = 0
    for (key, ph), chunks in zip(sweeps, chunk_sets, strict=True):
        rows = ph["summary"]
        conns = sorted({r["conns"] for r in rows})
        ceilings = {int(k): v for k, v in (ph.get("ceilings_mb_per_s") or {}).items()}
        ne = rec.get("netem") if ph.get("env") == "netns" else None
        for ch in chunks:
            ax = fig.add_subplot(gs[0, col])
            col += 1
            for t in _tools(rows):
                pts = [
                    (r["conns"], r["mb_per_s_median"])
                    for r in rows
                    if r["tool"] == t and r["chunk_mib"] == ch and r["mb_per_s_median"] is not None
                ]
                if pts:
                    xs, ys = zip(*sorted(pts), strict=True)
                    ax.plot(xs, ys, marker=MARKERS.get(t, "o"), color=COLORS.get(t), label=t)
            top_y = max([r["mb_per_s_median"] or 0 for r in rows] + [1])
            if ceilings:
                cs = sorted(ceilings)
                ax.plot(cs, [ceilings[c] for c in cs], "k--", lw=1, label="ceiling: min(c x conn cap, aggregate)")
                top_y = max(top_y, *ceilings.values())
            ideal = ph.get("ideal_mb_per_s") or {}
            pts = sorted((c, ideal[f"{c}x{ch}"]) for c in conns if f"{c}x{ch}" in ideal)
            if pts:
                ax.plot(*zip(*pts, strict=True), "k:", lw=1, label="ideal incl. first-byte latency")
            off_scale = ""
            if phys and phys < 3 * top_y:
                ax.axhline(phys, color="grey", ls="-.", lw=1.2, label=f"physical limit {phys:.0f} MB/s")
                top_y = max(top_y, phys)
            elif phys:
                off_scale = f"; physical limit {phys:.0f} MB/s is off scale"
            ax.set_ylim(0, top_y * 1.12)
            ax.set_xscale("log", base=2)
            ax.set_xticks(conns)
            ax.set_xticklabels([str(c) for c in conns])
            ax.set_xlabel("connections")
            ax.set_ylabel("median MB/s")
            title = f"{key}: {ch} MiB ranges{off_scale}"
            if ne:
                title += (
                    f"\n{ne['latency_ms']:g} ms first byte, {ne['conn_mb_per_s']:.0f} MB/s/conn, "
                    f"{ne['aggregate_mb_per_s']:.0f} MB/s total"
                )
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)

    if bars:
        row = nrows - 1
        tools = _tools([r for _, rows in bars for r in rows])
        metrics = [
            ("mb_per_s_median", "median MB/s"),
            ("cpu_s_per_gib_median", "client CPU-s per GiB"),
            ("rss_mib_median", "peak RSS MiB"),
        ]
        width = 0.8 / len(bars)
        for i, (metric, label) in enumerate(metrics):
            ax = fig.add_subplot(gs[row, i])
            for j, (plabel, rows) in enumerate(bars):
                by_tool = {r["tool"]: r.get(metric) for r in rows}
                at = [k + (j - (len(bars) - 1) / 2) * width for k in range(len(tools))]
                heights = [by_tool.get(t) or 0 for t in tools]
                b = ax.bar(at, heights, width, label=plabel.replace("\n", ", "), alpha=0.85, edgecolor="black", lw=0.4)
                ax.bar_label(b, fmt="%.0f" if metric != "cpu_s_per_gib_median" else "%.2f", fontsize=6)
            if metric == "mb_per_s_median" and phys:
                ax.axhline(phys, color="grey", ls=":", lw=1.2, label=f"physical limit {phys:.0f} MB/s")
            ax.set_xticks(range(len(tools)))
            ax.set_xticklabels(tools, fontsize=8, rotation=15)
            ax.set_ylabel(label)
            ax.set_title(label, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
            if i == 0:
                ax.legend(fontsize=6)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return True


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    src = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else src.with_suffix(".png")
    if not make_plot(json.loads(src.read_text()), out):
        print("nothing to plot", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
