#!/usr/bin/env python3
"""PNG plot of one cooperative-download benchmark results file (bench/coop_bench.py --results-dir).

Left: time until every member has the model, each run a dot and the median a bar, per group size, against one
member alone, with the issue's targets (from the results file) and the ideal 1/N drawn in.
Right: bytes the origin sent in total / the model (the downloaders' own counts), with the target.

    bench/.venv/bin/python bench/coop_plot.py bench/results/coop-<timestamp>.json [out.png]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def plot(data: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["summary"]
    results = data["results"]
    alone = next(r for r in rows if not r["cooperative"])["seconds_all_median"]
    labels = [f"{r['members']}" + (" (alone)" if not r["cooperative"] else "") for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for x, row in enumerate(rows):
        runs = [r for r in results if r["members"] == row["members"] and r["cooperative"] == row["cooperative"]]
        left.bar(x, row["seconds_all_median"], color="#1f77b4" if row["cooperative"] else "#7f7f7f", alpha=0.6)
        left.scatter([x] * len(runs), [r["seconds_all"] for r in runs], color="black", s=12, zorder=3)
        if row["cooperative"]:
            n = row["members"]
            first = n == min(r["members"] for r in rows if r["cooperative"])
            left.hlines(
                alone / n, x - 0.4, x + 0.4, colors="#2ca02c", linestyles=":", label="ideal 1/N" if first else None
            )
            if "time_target" in row:
                left.hlines(
                    alone * row["time_target"],
                    x - 0.4,
                    x + 0.4,
                    colors="#d62728",
                    linestyles="--",
                    label="target" if first else None,
                )
        right.bar(x, row["origin_payload_ratio_median"], color="#1f77b4" if row["cooperative"] else "#7f7f7f")
        ratios = [r["origin_payload_bytes"] / r["model_bytes"] for r in runs]
        right.scatter([x] * len(runs), ratios, color="black", s=12, zorder=3)
    right.axhline(data["origin_target"], color="#d62728", linestyle="--", label=f"target {data['origin_target']}")
    for ax in (left, right):
        ax.set_xticks(range(len(rows)), labels)
        ax.set_xlabel("members")
        ax.legend(loc="upper right", fontsize=8)
    left.set_ylabel("s until every member has the model")
    right.set_ylabel("origin bytes, all members / model")
    right.set_ylim(0, max(1.3, max(r["origin_payload_ratio_max"] for r in rows) * 1.1))
    setup = data["setup"]
    fig.suptitle(
        f"cooperative download: {setup['model_mib']} MiB model, origin {setup['origin_mbit']} Mbit/s + "
        f"{setup['origin_latency_ms']:g} ms per request, peers {setup['peer_mbit']} Mbit/s per member",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> int:
    src = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else src.with_suffix(".png")
    plot(json.loads(src.read_text()), out)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
