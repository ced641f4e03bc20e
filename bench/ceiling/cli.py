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
# `workers-N`: the page cache kept, N fetching processes (--workers): the GIL-held time of the coordinator and of the
# workers is sampled apart, and the ceiling is that of the busiest GIL (BENCHMARKS.md, "The ceiling").
VARIANTS = {
    "keep": ["--page-cache", "keep", "--workers", "1"],
    "bypass": ["--page-cache", "bypass", "--workers", "1"],
    **{f"workers-{n}": ["--page-cache", "keep", "--workers", str(n)] for n in (2, 4, 8)},
}
COLUMNS = [
    *("path", "variant", "runs ok", "GIL-s/GiB (range)", "CPU-s/GiB (range)", "GIL share of CPU"),
    *("ceiling GB/s (1 / GIL-s per GB)", "cores at the ceiling", "MB/s here (large model)"),
]


def per_gib(small: list[Sample], large: list[Sample], attr: str) -> tuple[float, float, float]:
    """(median, min, max) of the slope of `attr` between the two sizes, pairing the runs of one round."""
    gib = (bytes_of(large) - bytes_of(small)) / GiB
    pairs = [(getattr(b, attr) - getattr(a, attr)) / gib for a, b in zip(small, large, strict=False)]
    return statistics.median(pairs), min(pairs), max(pairs)


def worker_count(flags: list[str]) -> int:
    """The --workers of a variant's flags (1 when not given)."""
    return int(flags[flags.index("--workers") + 1]) if "--workers" in flags else 1


def bytes_of(samples: list[Sample]) -> int:
    return samples[0].model_bytes


def measure(
    path: Path_, variant: str, flags: list[str], reps: int, rate: float, work: Path, *, idle: bool = True
) -> dict[str, Any]:
    runs: dict[int, list[Sample]] = {0: [], 1: []}
    for rep in range(reps):
        for i, model in enumerate(path.models):
            dest = work / "dest"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            s = run_sampled(path.argv(model, dest, flags), path.env, rate, work, idle=idle)
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
    ceiling = 1 / gil_per_gb if gil_per_gb > 0 else None
    workers = worker_count(flags)
    if workers > 1:
        # Each process has a GIL of its own, and the rate is bounded by the one that holds its GIL longest per GB:
        # the coordinator (listing, plan, manifest: per file) or the busiest worker (its share, 1 / workers of the
        # bytes). A worker holds its GIL per GiB of its own share `workers` times its slope here; so many workers
        # are needed for a rate R: R x that.
        coordinator = per_gib(small, large, "coordinator_gil_s")
        busiest = per_gib(small, large, "busiest_worker_gil_s")
        in_workers = per_gib(small, large, "workers_gil_s")
        out |= {
            "coordinator_gil_s_per_gib": coordinator,
            "busiest_worker_gil_s_per_gib": busiest,
            "workers_gil_s_per_gib": in_workers,
            "workers": workers,
            "workers_seen": [s.workers_seen for s in large],
        }
        # The coordinator's periodic work takes a share of its GIL whatever the rate: what is left for its work
        # per GiB is 1 - that share.
        periodic = statistics.median(s.coordinator_periodic_gil_s / s.wall_s for s in large)
        out["coordinator_periodic_gil_share"] = periodic
        coordinator_bound = coordinator[0] / max(0.01, 1 - periodic)
        bound = max(coordinator_bound, busiest[0])
        ceiling = 1 / (bound * GB / GiB) if bound > 0 else None
        if busiest[0] > 0:
            out["worker_gil_s_per_own_gib"] = busiest[0] * workers
            out["workers_for_25_gb_s"] = 25 * busiest[0] * workers * GB / GiB
            if coordinator_bound > 0:
                out["ceiling_many_workers_gb_s"] = 1 / (coordinator_bound * GB / GiB)
    out |= {
        "gil_s_per_gib": gil,
        "cpu_s_per_gib": cpu,
        "ceiling_gb_s": ceiling,
        "cores_at_ceiling": cpu[0] * ceiling * GB / GiB if ceiling else None,
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
        f"### Ceiling per data path ({stamp}, `bench/bench_ceiling.py --reps {args.reps} --rate {args.rate:g}"
        + (" --on-cpu-only" if args.on_cpu_only else "")
        + "`)",
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
        if r.get("workers"):
            c, b, w = r["coordinator_gil_s_per_gib"], r["busiest_worker_gil_s_per_gib"], r["workers_gil_s_per_gib"]
            many = r.get("ceiling_many_workers_gb_s")
            lines.append(
                f"- {r['path']} {r['variant']}: GIL-held s/GiB in the coordinator {c[0]:.3f} ({c[1]:.3f}-{c[2]:.3f}), "
                f"in the busiest worker {b[0]:.3f} ({b[1]:.3f}-{b[2]:.3f}), in all {r['workers']} workers "
                f"{w[0]:.3f} ({w[1]:.3f}-{w[2]:.3f}); the coordinator's periodic work (progress, counters) "
                f"{r['coordinator_periodic_gil_share'] * 100:.1f} % of its GIL; workers sampled per large run: "
                f"{', '.join(map(str, r['workers_seen']))}; a worker's GIL-s per GiB of its own share "
                f"{r.get('worker_gil_s_per_own_gib', 0):.3f}, so {r.get('workers_for_25_gb_s', 0):.1f} workers "
                f"for 25 GB/s; the coordinator alone caps any number of workers at "
                + (f"{many:.1f} GB/s" if many else "(no cost measured)")
            )
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
    p.add_argument(
        "--variants", default="keep,bypass", help=f"comma list of {','.join(VARIANTS)} (bypass: s3-ranges only)"
    )
    p.add_argument(
        "--sizes",
        action="append",
        default=[],
        metavar="PATH=SMALL,LARGE",
        help="the two model sizes of a path (shards, or files for s3-small), e.g. s3-ranges=2,10; repeatable",
    )
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument(
        "--on-cpu-only",
        action="store_true",
        help="count a GIL holder only while it is on a CPU (py-spy without --idle): for more processes than cores",
    )
    p.add_argument("--flags", default="", help="extra aibrix-download flags for every run")
    p.add_argument("--store", type=Path, default=DEFAULT_WORK.parent / ".cache" / "seaweedfs")
    p.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    args = p.parse_args(argv)
    paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    if set(paths) - set(PATHS):
        p.error(f"--paths takes {','.join(PATHS)}")
    sizes = dict(DEFAULT_SIZES)
    for item in args.sizes:
        name, _, pair = item.partition("=")
        small_large = tuple(int(x) for x in pair.split(","))
        if name not in PATHS or len(small_large) != 2 or not 0 < small_large[0] < small_large[1]:
            p.error(f"--sizes {item!r}: PATH=SMALL,LARGE with PATH one of {','.join(PATHS)} and 0 < SMALL < LARGE")
        sizes[name] = (small_large[0], small_large[1])
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
            with open_path(name, args.store, work, sizes[name]) as path:
                variants = [v.strip() for v in args.variants.split(",") if v.strip()]
                if name != "s3-ranges":  # O_DIRECT is measured where it matters, on the large files
                    variants = [v for v in variants if v != "bypass"] or ["keep"]
                for v in variants:
                    flags = VARIANTS[v] + args.flags.split()
                    results.append(measure(path, v, flags, args.reps, args.rate, work, idle=not args.on_cpu_only))
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
