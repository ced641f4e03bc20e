"""The sidecar benchmark's summary: per condition, medians (min-max); per A/B pair, the wall-time ratios B/A and
the CPU figures; their medians with distribution-free intervals; the probe load pooled over the B runs; and
whether the target (< 5 % slowdown) holds on wall time and on CPU."""

from __future__ import annotations

from typing import Any

from ..harness.numbers import median, median_ci, percentile, spread
from .loadgen import PROBE_PATHS

METRICS = ("ready_s", "window_s", "manifest_s", "dl_own_s")  # the durations whose B/A ratio is the slowdown
PER_CONDITION = (
    *METRICS,
    "startup_s",
    "sidecar_self_cpu_s",
    "sidecar_cpu_window_s",
    "download_child_cpu_s",
    "sidecar_total_cpu_s_rusage",
    "server_cpu_s",
    "sidecar_peak_rss_mib",
)
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


def _ms(xs: list[float], q: float) -> float | None:
    v = percentile(xs, q)
    return None if v is None else 1e3 * v


def _verdict(low: float | None, high: float | None, target: float, contains: str) -> str | None:
    """Whether the interval [low, high] of a median lies below ``target`` ("holds"), above it, or across it."""
    if high is None:
        return None
    if high < target:
        return "holds"
    if low is not None and low >= target:
        return "does not hold"
    return f"inconclusive (the interval contains {contains})"


def _per_condition(runs: list[dict[str, Any]], cond: str) -> dict[str, Any]:
    ok = [r for r in runs if r["cond"] == cond and r["ok"]]
    row: dict[str, Any] = {"ok": len(ok), "runs": sum(1 for r in runs if r["cond"] == cond)}
    for m in PER_CONDITION:
        row[m] = spread([r[m] for r in ok if r.get(m) is not None])
    row["busy_cores_median"] = median([r["machine"]["busy_cores"] for r in ok])
    row["steal_frac_median"] = median([r["machine"]["steal_frac"] for r in ok])
    if cond == "B":
        row["loadgen_cpu_s_median"] = median([r["probe"]["cpu_s"] for r in ok if r.get("probe")])
    return row


def _pairs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pairs = []
    for rep in sorted({r["rep"] for r in runs}):
        ra = next((r for r in runs if r["rep"] == rep and r["cond"] == "A"), None)
        rb = next((r for r in runs if r["rep"] == rep and r["cond"] == "B"), None)
        if ra and rb and ra["ok"] and rb["ok"]:
            pairs.append(
                {
                    "rep": rep,
                    "first": "A" if ra["order_in_rep"] == 0 else "B",
                    **{m: rb[m] / ra[m] for m in METRICS if ra.get(m) and rb.get(m)},
                    **pair_cpu_cost(ra, rb),
                }
            )
    return pairs


def _probe_load(probes: list[dict[str, Any]], lat: dict[str, list[float]]) -> dict[str, Any]:
    """The probe load over the B runs; percentiles from every probe's latency (``lat``, pooled)."""
    every = lat.get("all", [])
    return {
        "runs": len(probes),
        "achieved_rps_median": median([p["achieved_rps"] for p in probes]),
        "achieved_rps_min": min((p["achieved_rps"] for p in probes), default=None),
        "requests_total": sum(p["completed"] for p in probes),
        "lat_p50_ms": _ms(every, 50),
        "lat_p99_ms": _ms(every, 99),
        "lat_max_ms": 1e3 * max(every) if every else None,
        "per_path": {
            path: {"p50_ms": _ms(lat[path], 50), "p99_ms": _ms(lat[path], 99), "n": len(lat[path])}
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


def _probe_cpu_cost(per_cond: dict[str, Any], probe: dict[str, Any], n_probe_runs: int) -> dict[str, Any] | None:
    """What the probe load costs in CPU, per download: the sidecar's extra CPU plus the load generator's."""
    a_cpu = {k: per_cond["A"][k]["median"] for k in ("sidecar_self_cpu_s", "download_child_cpu_s", "server_cpu_s")}
    b_side = per_cond["B"]["sidecar_self_cpu_s"]["median"]
    # over the probe window when measured (the whole run's CPU adds the sidecar's start-up and stop noise)
    a_win, b_win = per_cond["A"]["sidecar_cpu_window_s"]["median"], per_cond["B"]["sidecar_cpu_window_s"]["median"]
    if b_side is None or a_cpu["sidecar_self_cpu_s"] is None:
        return None
    extra_side = b_side - a_cpu["sidecar_self_cpu_s"]
    if a_win is not None and b_win is not None:
        extra_side = b_win - a_win
    lg_cpu = probe["loadgen_cpu_s_median"] or 0.0
    pipeline = sum(v for v in a_cpu.values() if v is not None)
    return {
        "sidecar_extra_cpu_s": extra_side,
        "loadgen_cpu_s": lg_cpu,
        "sidecar_extra_cpu_ms_per_request": 1e3 * extra_side / (probe["requests_total"] / n_probe_runs)
        if n_probe_runs and probe["requests_total"]
        else None,
        "pipeline_cpu_s_in_A": pipeline,
        "extra_share_of_pipeline": (extra_side + lg_cpu) / pipeline if pipeline else None,
    }


def summarize(all_runs: list[dict[str, Any]], lat: dict[str, list[float]], ci: float) -> dict[str, Any]:
    """The summary of the timed runs; ``ci``: the coverage of the medians' intervals (at least)."""
    runs = [r for r in all_runs if not r["warmup"]]
    per_cond = {cond: _per_condition(runs, cond) for cond in ("A", "B")}
    pairs = _pairs(runs)
    slowdown: dict[str, Any] = {}
    for m in METRICS:
        rs = [p[m] for p in pairs if m in p]
        ma, mb = per_cond["A"][m]["median"], per_cond["B"][m]["median"]
        lo, hi, cov = median_ci(rs, ci)
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
    probe = _probe_load(probes, lat)
    # The CPU figures: far less noise-sensitive than wall time (other work barely changes CPU per unit of work).
    cpu_cost: dict[str, Any] = {}
    for m in CPU_COST_METRICS:
        rs = [p[m] for p in pairs if p.get(m) is not None]
        lo, hi, cov = median_ci(rs, ci)
        s = spread(rs)
        cpu_cost[m] = {
            "median": s["median"],
            "ci_low": lo,
            "ci_high": hi,
            "ci_coverage": cov,
            "min": s["min"],
            "max": s["max"],
            "pairs": len(rs),
        }
    wall, cpu = slowdown["ready_s"], cpu_cost["cpu_share_sidecar"]
    return {
        "per_condition": per_cond,
        "pairs": pairs,
        "slowdown": slowdown,
        "probe": probe,
        "probe_cpu_cost": _probe_cpu_cost(per_cond, probe, len(probes)),
        "cpu_cost": cpu_cost,
        "ci_level": ci,
        "target_5pct_verdict": _verdict(wall["median_ci_low"], wall["median_ci_high"], 1.05, "1.05"),
        "target_5pct_cpu_verdict": _verdict(cpu["ci_low"], cpu["ci_high"], 0.05, "5 %"),
    }
