"""The connections benchmark's tables (medians over the interleaved repetitions of each mode in each scenario) and
its plot (throughput and connections over time)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from ..harness.common import GiB
from ..harness.tables import header, row
from .download import rates


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None, spec: str = ".0f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _range(values: list[float], spec: str = ".0f") -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):{spec}} ({min(values):{spec}}-{max(values):{spec}})"


def summarise(scenario: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per mode: medians (and ranges) over its runs."""
    out: dict[str, dict[str, Any]] = {}
    cap = scenario.get("cap_mb_s")
    for mode in scenario["modes"]:
        runs = [r for r in scenario["runs"] if r["mode"] == mode]
        ok = [r for r in runs if r["returncode"] == 0]
        gib = [r["bytes"] / GiB for r in ok]
        s: dict[str, Any] = {
            "runs": len(runs),
            "failed": [r["returncode"] for r in runs if r["returncode"] != 0],
            "wall_s": [r["wall_s"] for r in ok],
            "cpu_s": [r["cpu_s"] for r in ok],
            "mb_s": [r["mb_s"] for r in ok],
            "mb_s_middle": [r["mb_s_middle"] for r in ok if r["mb_s_middle"] is not None],
            "cpu_s_per_gib": [r["cpu_s"] / g for r, g in zip(ok, gib, strict=True) if g],
            "maxrss_mib": [r["maxrss_mib"] for r in runs],
            "most_open": [r["most_open"] for r in runs],
            "open_middle": [r["open_middle"] for r in ok if r["open_middle"] is not None],
            "settled": [r["changes"][-1]["limit"] for r in runs if r["changes"]],
            "changes": [len(r["changes"]) for r in runs],
            "throttled_503": [r.get("answers_503", 0) for r in runs],
            "gets": [r.get("gets", 0) for r in runs],
        }
        if cap:
            s["share_whole"] = [x / cap for x in s["mb_s"]]
            s["share_middle"] = [x / cap for x in s["mb_s_middle"]]
        out[mode] = s
    return out


EMULATED = [
    *("mode", "runs ok", "wall s", "MB/s whole run", "÷ cap, whole run", "MB/s middle half", "÷ cap, middle half"),
    *("connections open (middle half)", "most open", "last count set", "CPU-s/GiB", "peak RSS MiB"),
]
THROTTLED = [
    *("mode", "outcome", "wall s", "MB/s", "503 SlowDown answers (retries)", "GETs sent", "most open"),
    *("last count set", "peak RSS MiB"),
]
LOOPBACK = [*("mode", "runs ok", "wall s", "CPU s", "CPU-s/GiB", "MB/s", "most open", "peak RSS MiB")]


def _emulated_cells(mode: str, s: dict[str, Any]) -> list[str]:
    return [
        mode,
        f"{len(s['wall_s'])}/{s['runs']}",
        _range(s["wall_s"], ".1f"),
        _range(s["mb_s"]),
        _range([x * 100 for x in s["share_whole"]]) + " %",
        _range(s["mb_s_middle"]),
        _range([x * 100 for x in s["share_middle"]]) + " %",
        _range(s["open_middle"]),
        _range(s["most_open"]),
        _range(s["settled"]) if s["settled"] else "-",
        _range(s["cpu_s_per_gib"], ".2f"),
        _range(s["maxrss_mib"]),
    ]


def _throttled_cells(mode: str, s: dict[str, Any]) -> list[str]:
    failed = f", exit {sorted(set(s['failed']))}" if s["failed"] else ""
    return [
        mode,
        f"{s['runs'] - len(s['failed'])}/{s['runs']} ok{failed}",
        _range(s["wall_s"], ".1f"),
        _range(s["mb_s"]),
        _range(s["throttled_503"]),
        _range(s["gets"]),
        _range(s["most_open"]),
        _range(s["settled"]) if s["settled"] else "-",
        _range(s["maxrss_mib"]),
    ]


def _loopback_cells(mode: str, s: dict[str, Any]) -> list[str]:
    return [
        mode,
        f"{len(s['wall_s'])}/{s['runs']}",
        _range(s["wall_s"], ".2f"),
        _range(s["cpu_s"], ".2f"),
        _range(s["cpu_s_per_gib"], ".2f"),
        _range(s["mb_s"]),
        _range(s["most_open"]),
        _range(s["maxrss_mib"]),
    ]


TABLES = {
    "emulated": (EMULATED, _emulated_cells),
    "throttled": (THROTTLED, _throttled_cells),
    "loopback": (LOOPBACK, _loopback_cells),
}


def render(record: dict[str, Any]) -> str:
    lines: list[str] = []
    for sc in record["scenarios"]:
        summary = summarise(sc)
        sc["summary"] = summary
        name = sc["name"]
        lines += [f"#### {name} ({sc['model']['gib']:.2f} GiB, {sc['model']['files']} files)", ""]
        columns, cells = TABLES[name]
        lines += header(columns)
        lines += [row(cells(mode, s)) for mode, s in summary.items()]
        if name == "loopback" and "auto" in summary and "fixed-32" in summary:
            a, f = summary["auto"], summary["fixed-32"]
            wall, cpu = _ratio(a["wall_s"], f["wall_s"]), _ratio(a["cpu_s"], f["cpu_s"])
            lines += ["", f"auto ÷ fixed-32, medians of each: wall {_fmt(wall, '.3f')}, CPU {_fmt(cpu, '.3f')}"]
            pw, pc = _paired(sc, "wall_s"), _paired(sc, "cpu_s")
            lines += [f"auto ÷ fixed-32 of each round, median (range): wall {pw}, CPU {pc}"]
        lines += ["", f"Loads (1-min) during the runs: {_loads(sc)}", ""]
    return "\n".join(lines) + "\n"


def _ratio(a: list[float], b: list[float]) -> float | None:
    ma, mb = _median(a), _median(b)
    return None if ma is None or not mb else ma / mb


def _paired(sc: dict[str, Any], key: str) -> str:
    """auto ÷ fixed-32 within each round (the two runs side by side), median (range)."""
    by_rep: dict[int, dict[str, float]] = {}
    for r in sc["runs"]:
        if r["returncode"] == 0:
            by_rep.setdefault(r["rep"], {})[r["mode"]] = r[key]
    ratios = [m["auto"] / m["fixed-32"] for m in by_rep.values() if "auto" in m and m.get("fixed-32")]
    return _range(ratios, ".3f")


def _loads(sc: dict[str, Any]) -> str:
    loads = [r["load"][0] for r in sc["runs"]]
    return f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-"


def plot(record: dict[str, Any], png: Path) -> None:
    import matplotlib  # type: ignore[import-not-found,unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]

    shown = [sc for sc in record["scenarios"] if sc["name"] != "loopback"]
    if not shown:
        return
    fig, axes = plt.subplots(2, len(shown), figsize=(8 * len(shown), 8), sharex="col", squeeze=False)
    colours = {"auto": "tab:blue", "fixed-32": "tab:orange", "fixed-128": "tab:green"}
    for col, sc in enumerate(shown):
        top, bottom = axes[0][col], axes[1][col]
        seen: set[str] = set()
        for r in sc["runs"]:
            mode = r["mode"]
            first = mode not in seen
            seen.add(mode)
            colour = colours.get(mode, "grey")
            alpha, width = (1.0, 1.4) if first else (0.35, 0.8)
            pts = rates(r["timeline"])
            top.plot([t for t, _ in pts], [mb for _, mb in pts], color=colour, alpha=alpha, lw=width,
                     label=mode if first else None)  # fmt: skip
            times = [p["t"] for p in r["timeline"]]
            bottom.plot(times, [p["open"] for p in r["timeline"]], color=colour, alpha=alpha, lw=width,
                        label=f"{mode}: connections open" if first else None)  # fmt: skip
            if r["changes"]:
                xs = [0.0, *(c["t"] for c in r["changes"]), r["wall_s"]]
                ys = [sc["start"], *(c["limit"] for c in r["changes"])]
                bottom.step(xs, [*ys, ys[-1]], where="post", color=colour, ls="--", alpha=alpha, lw=width,
                            label=f"{mode}: requests allowed (gate)" if first else None)  # fmt: skip
        if sc.get("cap_mb_s"):
            top.axhline(sc["cap_mb_s"], color="grey", ls=":", label="aggregate cap (payload)")
            per = sc["per_connection_mb_s"]
            top.axhline(min(sc["cap_mb_s"], 32 * per), color="grey", ls="--", label="32 x per-connection cap")
        top.set_title(sc["title"], fontsize=9)
        top.set_ylabel("MB/s (per sample)")
        top.legend(loc="lower right", fontsize=7)
        bottom.set_ylabel("connections")
        bottom.set_xlabel("seconds since the download started (bold: first repetition)")
        bottom.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
