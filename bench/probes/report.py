"""The sidecar benchmark's markdown: per condition, the slowdown B/A, the CPU cost of the probes, the probe load,
and the verdicts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..harness.numbers import fmt
from ..harness.tables import spread_cell
from .loadgen import PROBE_PATHS


def markdown(record: dict[str, Any], s: dict[str, Any], a: argparse.Namespace, results_path: Path) -> str:
    m = record["machine"]
    pc, sl, pr = s["per_condition"], s["slowdown"], s["probe"]

    def mm(c: str, k: str) -> str:
        d = pc[c][k]
        return spread_cell(d["median"], d["min"], d["max"])

    out = [
        f"### Sidecar probe load vs. download — {record['timestamp']}",
        "",
        f"Model `{record['model']['uri']}`: {record['model']['total_gib']:.2f} GiB in {record['model']['files']} "
        f"files, SeaweedFS on 127.0.0.1, `--num-threads {a.num_threads}`. Machine: {m['nproc']} CPUs "
        f"({m['cpu_model']}), Python {record['versions']['python']}, git {record['versions']['git']}. "
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
        f"| connect() refused after the 'listening on' log line (all B runs) | {pr['refused_before_listen_total']} |",
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
        f"{', '.join(f'{x:.1f}' for x in record.get('loadavg_at_end', ()))} on {m['nproc']} CPUs.",
        "",
        f"Raw numbers: `{results_path}`",
        "",
    ]
    return "\n".join(out)
