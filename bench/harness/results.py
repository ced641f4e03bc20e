"""Results files: re-printing the tables of one or more (``--summarize``), including files written before the
three end points and the two settings (their runs were all "then sync", every tool at --concurrency)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .phases import Phase, summarize_phase
from .report import matrix_section
from .tools import Setting, Variant


def upgrade(rec: dict[str, Any]) -> dict[str, Any]:
    """``rec`` in the current layout: phases with variants, runs with the phase key and the variant's fields."""
    cfg = rec.get("config", {})
    if not rec.get("phases"):  # schema 1: one compare phase, no phase names
        rec["phases"] = {
            "compare@loopback": {
                "name": "compare",
                "env": "loopback",
                "model": rec["model"],
                "reps": cfg.get("reps"),
                "warmup_rounds": cfg.get("warmup_rounds", 0),
                "tools": cfg.get("tools_requested", []),
                "configs": [{"conns": cfg.get("concurrency"), "chunk_mib": cfg.get("chunk_mib")}],
            }
        }
    for r in rec.get("runs", []):
        phase = r.get("phase") or "compare"
        r["phase"] = phase if "@" in phase else f"{phase}@loopback"
        r.setdefault("conns", cfg.get("concurrency"))
        r.setdefault("chunk_mib", cfg.get("chunk_mib"))
    for ph in rec["phases"].values():
        if ph["name"] == Phase.NOOP or "variants" in ph:
            continue
        variants = [Variant(Setting.MATCHED, c["conns"], c["chunk_mib"]) for c in ph.get("configs", [])]
        ph["variants"] = [v.key() | {"label": v.label} for v in variants]
        # the settings were one string per tool, under "<conns>x<chunk>MiB"
        ph["tool_settings"] = {
            v.label: {
                t: {"flags": flags, "max_in_flight": None}
                for t, flags in (ph.get("tool_settings") or {}).get(f"{v.conns}x{v.chunk_mib}MiB", {}).items()
            }
            for v in variants
        }
        ph["model"].setdefault("shape", "")
        # schema 1 named the file list (or count) "files"
        listed = ph["model"].get("files", {})
        ph["model"].setdefault("n_files", len(listed) if isinstance(listed, dict) else listed)
    return rec


def resummarize(paths: list[Path], quiet_cores: float | None) -> int:
    """Re-print the tables of every matrix phase in one or more results files (pooled if several).

    With ``quiet_cores``, every timed run (including ones redone as contaminated) counts if other processes used
    at most that many cores during it, and no other run counts.
    """
    merged: dict[str, Any] = {"phases": {}, "runs": [], "config": {"tools_skipped": {}}}
    for path in paths:
        rec = upgrade(json.loads(path.read_text()))
        limit = rec["config"].get("max_other_cores", 0.5)
        merged["config"]["tools_skipped"] |= rec["config"].get("tools_skipped", {})
        merged.setdefault("limits", rec.get("limits"))
        for key, ph in rec["phases"].items():
            if ph["name"] == Phase.NOOP:
                continue
            have = merged["phases"].setdefault(key, ph)
            have["tools"] = list(dict.fromkeys([*have["tools"], *ph["tools"]]))
            labels = {v["label"] for v in have["variants"]}
            have["variants"] += [v for v in ph["variants"] if v["label"] not in labels]
            for label, settings in ph.get("tool_settings", {}).items():
                have.setdefault("tool_settings", {}).setdefault(label, settings)
        for r in rec["runs"]:
            if r.get("warmup") or r["phase"] not in rec["phases"] or rec["phases"][r["phase"]]["name"] == Phase.NOOP:
                continue
            if "other_cores" not in r and r.get("other_cpu_s") is not None:
                r["other_cores"] = r["other_cpu_s"] / max(r["wall_s"], 1e-9)
                r["noisy"] = r["other_cores"] > limit
            if quiet_cores is not None:
                quiet = r.get("other_cores") is not None and r["other_cores"] <= quiet_cores
                r["discarded"] = None if quiet else "not quiet"
                r["noisy"] = False
            merged["runs"].append(r)
    if not merged["phases"]:
        raise SystemExit(f"{', '.join(map(str, paths))}: no phase with tools to summarize (see the .md)")
    out: list[str] = []
    for key in merged["phases"]:
        summarize_phase(merged, key)
        out += matrix_section(key, merged["phases"][key], "redone" if quiet_cores is None else "not quiet, left out")
    print("\n".join(out))
    return 0
