"""``bench/bench_ceiling.py``: options, the interleaved sampled runs of every path and size, the per-GiB costs (the
slope between the two sizes, so start-up, imports and listing drop out), the ceilings, the table, the results file."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from ..harness.common import DEFAULT_RESULTS, DEFAULT_WORK, GiB, logger, machine_info
from ..harness.recording import Results
from ..harness.tables import header, row
from ..harness.venvs import ensure_bench_tools, use_project_venv
from .paths import PATHS, Path_, open_path
from .sampler import Sample, calibrate, run_sampled

log = logger("bench-ceiling")
GB = 1e9
DEFAULT_SIZES = {"s3-ranges": (2, 6), "s3-small": (1000, 4000), "gcs": (2, 6), "hf": (2, 6)}
# Flags of each variant measured: the page cache kept (the default where the model fits in memory, as on a
# serving node) or bypassed (O_DIRECT), and a fixed connection count where the automatic one is not the question.
VARIANTS = {"keep": ["--page-cache", "keep"], "bypass": ["--page-cache", "bypass"]}
COLUMNS = [
    *("path", "variant", "runs ok", "GIL-s/GiB (range)", "CPU-s/GiB (range)", "GIL share of CPU"),
    *("ceiling GB/s (1 / GIL-s per GB)", "cores at the ceiling", "MB/s here (large model)"),
]


def per_gib(small: list[Sample], large: list[Sample], attr: str) -> tuple[float, float, float]:
    """(median, min, max) of the slope of `attr` between the two sizes, pairing the runs of one round."""
    gib = (bytes_of(large) - bytes_of(small)) / GiB
    pairs = [(getattr(b, attr) - getattr(a, attr)) / gib for a, b in zip(small, large, strict=False)]
    return statistics.median(pairs), min(pairs), max(pairs)


def bytes_of(samples: list[Sample]) -> int:
    return samples[0].model_bytes


def measure(path: Path_, variant: str, flags: list[str], reps: int, rate: float, work: Path) -> dict[str, Any]:
    runs: dict[int, list[Sample]] = {0: [], 1: []}
    for rep in range(reps):
        for i, model in enumerate(path.models):
            dest = work / "dest"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            s = run_sampled(path.argv(model, dest, flags), path.env, rate, work)
            s.model_bytes = model.bytes
            shutil.rmtree(dest, ignore_errors=True)
            os.sync()
            ok = s.returncode == 0
            log(
                f"{path.name} {variant} rep {rep} {model.bytes / GiB:.2f} GiB: {'ok' if ok else 'FAILED'} "
                f"wall {s.wall_s:.2f}s cpu {s.cpu_s:.2f}s gil {s.gil_s:.2f}s ({s.gil_samples} samples)"
                + ("" if ok else f"\n{s.stderr_tail}")
            )
            if ok:
                runs[i].append(s)
    small, large = runs[0], runs[1]
    n = min(len(small), len(large))
    small, large = small[:n], large[:n]
    out: dict[str, Any] = {
        "path": path.name,
        "variant": variant,
        "flags": flags,
        "models": [{"uri": m.uri, "bytes": m.bytes, "files": m.files} for m in path.models],
        "runs": [
            {
                "size": i,
                "wall_s": s.wall_s,
                "user_s": s.user_s,
                "sys_s": s.sys_s,
                "gil_s": s.gil_s,
                "gil_samples": s.gil_samples,
                "top_frames": s.top_frames,
            }
            for i, group in runs.items()
            for s in group
        ],
        "ok": n,
    }
    if n == 0:
        return out
    gil = per_gib(small, large, "gil_s")
    cpu = per_gib(small, large, "cpu_s")
    gil_per_gb = gil[0] * GB / GiB
    out |= {
        "gil_s_per_gib": gil,
        "cpu_s_per_gib": cpu,
        "ceiling_gb_s": 1 / gil_per_gb if gil_per_gb > 0 else None,
        "cores_at_ceiling": cpu[0] / gil[0] if gil[0] > 0 else None,
        "mb_s_here": statistics.median(path.models[1].bytes / s.wall_s for s in large) / 1e6,
        # The sampling error of one run's count (binomial, about sqrt(samples)), as a share of the slope's samples
        "sampling_error": statistics.median(
            (b.gil_samples + a.gil_samples) ** 0.5 / max(1, b.gil_samples - a.gil_samples)
            for a, b in zip(small, large, strict=False)
        ),
    }
    return out


def render(stamp: str, calib: dict[str, float], results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"### Ceiling per data path ({stamp}, `bench/bench_ceiling.py --reps {args.reps} --rate {args.rate:g}`)",
        "",
        f"Method check: py-spy `--gil` at {args.rate:g} Hz sampled {calib['sampled_gil_s']:.2f} s of GIL-held time "
        f"where the holder's own CPU clock said {calib['true_gil_s']:.2f} s ({calib['error'] * 100:+.1f} %).",
        "",
        *header(COLUMNS),
    ]
    for r in results:
        if not r.get("ok"):
            lines.append(row([r["path"], r["variant"], "0", "-", "-", "-", "-", "-", "-"]))
            continue
        g, c = r["gil_s_per_gib"], r["cpu_s_per_gib"]
        lines.append(
            row(
                [
                    r["path"],
                    r["variant"],
                    str(r["ok"]),
                    f"{g[0]:.3f} ({g[1]:.3f}-{g[2]:.3f})",
                    f"{c[0]:.2f} ({c[1]:.2f}-{c[2]:.2f})",
                    f"{g[0] / c[0] * 100:.0f} %" if c[0] > 0 else "-",
                    f"{r['ceiling_gb_s']:.1f}" if r["ceiling_gb_s"] else "-",
                    f"{r['cores_at_ceiling']:.1f}" if r["cores_at_ceiling"] else "-",
                    f"{r['mb_s_here']:.0f}",
                ]
            )
        )
    lines.append("")
    for r in results:
        if r.get("runs"):
            largest = [x for x in r["runs"] if x["size"] == 1]
            if largest:
                frames = ", ".join(f"{name} {n}" for name, n in largest[-1]["top_frames"][:6])
                where = f"- {r['path']} {r['variant']}, where the GIL was held (samples, last large run)"
                lines.append(f"{where}: {frames}")
    return "\n".join(lines) + "\n"


def main(argv: list[str], script: Path) -> int:
    ensure_bench_tools()
    use_project_venv(script)
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--paths", default=",".join(PATHS), help=f"comma list of {','.join(PATHS)}")
    p.add_argument("--variants", default="keep,bypass", help="s3-ranges: keep, bypass or both (others: keep)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--flags", default="", help="extra aibrix-download flags for every run")
    p.add_argument("--store", type=Path, default=DEFAULT_WORK.parent / ".cache" / "seaweedfs")
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    args = p.parse_args(argv)
    paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    if set(paths) - set(PATHS):
        p.error(f"--paths takes {','.join(PATHS)}")
    results_file = Results(args.results_dir, "ceiling-", utc=True)
    DEFAULT_WORK.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ceiling-", dir=DEFAULT_WORK))
    record: dict[str, Any] = {"timestamp": results_file.stamp, "machine": machine_info(), "args": vars(args)}
    results: list[dict[str, Any]] = []
    try:
        calib = calibrate(args.rate, work)
        log(f"calibration: {calib}")
        record["calibration"] = calib
        for name in paths:
            with open_path(name, args.store, work, DEFAULT_SIZES[name]) as path:
                variants = [v.strip() for v in args.variants.split(",")] if name == "s3-ranges" else ["keep"]
                for v in variants:
                    flags = VARIANTS[v] + args.flags.split()
                    results.append(measure(path, v, flags, args.reps, args.rate, work))
                    record["results"] = results
                    results_file.save(record)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    md = render(results_file.stamp, record["calibration"], results, args)
    print(md)
    results_file.save(record)
    results_file.beside(".md").write_text(md)
    log(f"raw numbers: {results_file.path}")
    return 0
