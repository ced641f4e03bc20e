"""``bench/bench_datapath.py``: the options, in the project's venv; then the sections (``run``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..harness.common import DEFAULT_RESULTS
from ..harness.server import S3_IDENTITY
from ..harness.venvs import use_project_venv

SECTIONS = ("checksums", "reads", "gets", "disk")
KEY = "datapath/object.bin"  # section 2's object
SMALL_PREFIX = "datapath/small/"  # section 3's objects
DESCRIPTION = "Which byte path and which checksum code should the downloader use? Measured, not guessed."


def main(argv: list[str], script: Path) -> int:
    use_project_venv(script)
    p = argparse.ArgumentParser(description=DESCRIPTION)
    p.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated sections to run (default: {','.join(SECTIONS)})"
    )
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--size-mib", type=int, default=1024, help="size of the object of section 2 (reads)")
    p.add_argument("--small-count", type=int, default=1000, help="objects of 256 KiB in section 3 (gets)")
    p.add_argument("--disk-mib", type=int, default=1024, help="MiB written per run in section 4 (disk)")
    p.add_argument("--endpoint", help=f"a running S3 server (s3://bench/{KEY} and {SMALL_PREFIX} uploaded if missing)")
    p.add_argument("--results-dir", default=str(DEFAULT_RESULTS))
    args = p.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown or not sections:
        p.error(f"--only takes a comma-separated subset of {','.join(SECTIONS)}; unknown: {','.join(unknown)}")
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[k]
    os.environ.update(S3_IDENTITY)
    from .run import run

    return run(args, sections)
