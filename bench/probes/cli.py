"""``bench/bench_sidecar.py``: the options, then the A/B benchmark (``runs``), the probe cost alone (``cost``),
or, with ``--_loadgen`` (internal), the load generator. Imports only what the mode needs: the load generator
must start fast."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..harness.common import DEFAULT_RESULTS
from .common import DEFAULT_SIDECAR


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Download time with and without 200 rps of /readyz + /status probes on aibrix-sidecar.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--reps", type=int, default=5, help="A/B pairs (order alternates)")
    p.add_argument(
        "--ci", type=float, default=0.95, help="coverage of the medians' distribution-free intervals (at least)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed runs (condition A) before the pairs")
    p.add_argument("--size-gib", type=float, default=2.0, help="approximate model size")
    p.add_argument("--shards", type=int, default=2, help="large safetensors shards the size is split into")
    p.add_argument("--rate", type=float, default=200.0, help="probe requests per second in condition B")
    p.add_argument("--probe-conns", type=int, default=4, help="keep-alive connections the load generator opens")
    p.add_argument(
        "--probe-max-conns", type=int, default=64, help="it opens more, up to this, when all are awaiting answers"
    )
    p.add_argument("--probe-max-seconds", type=float, default=300.0, help="hard bound on the load's duration")
    p.add_argument("--ready-poll-interval", type=float, default=0.1, help="seconds between the bench's /readyz polls")
    p.add_argument("--num-threads", type=int, default=16, help="aibrix-download --num-threads")
    p.add_argument("--chunk-mib", type=int, default=64, help="multipart part size of the upload")
    p.add_argument("--settle", type=float, default=1.0, help="idle seconds after sync, before each run")
    p.add_argument("--timeout", type=float, default=300.0, help="per-run limit, seconds")
    p.add_argument(
        "--verify-sha-on-warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sha256 every file of the warm-up download (sizes are always checked)",
    )
    p.add_argument("--store-dir", default="", help="SeaweedFS data dir to reuse (default: a throw-away one)")
    p.add_argument("--results-dir", default=str(DEFAULT_RESULTS))
    p.add_argument("--sidecar-bin", default=str(DEFAULT_SIDECAR))
    g = p.add_argument_group("--probe-cost: CPU per probe of the sidecar alone (no download, no SeaweedFS)")
    g.add_argument(
        "--probe-cost",
        action="store_true",
        help="measure the sidecar's CPU per probe and the load generator's CPU per request, then exit",
    )
    g.add_argument("--cost-requests", type=int, default=4000, help="probes per round")
    g.add_argument("--cost-rounds", type=int, default=3, help="rounds (median reported)")
    g.add_argument("--cost-idle-seconds", type=float, default=10.0, help="idle stretch after each round (baseline)")
    return p.parse_args(argv)


def main(argv: list[str], script: Path) -> int:
    if argv[:1] == ["--_loadgen"]:
        from . import loadgen

        return loadgen.main(argv[1:])
    from ..harness.venvs import ensure_bench_tools, use_project_venv

    use_project_venv(script)
    args = parse_args(argv)
    if args.probe_cost:
        from . import cost

        return cost.main(args)
    from ..harness.recording import run_interruptible
    from .runs import SidecarBench

    ensure_bench_tools()  # SeaweedFS
    return run_interruptible(SidecarBench(args))
