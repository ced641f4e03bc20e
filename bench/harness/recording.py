"""A benchmark's results file (bench/results/<prefix><timestamp>.json, rewritten whole after every step, and
files beside it), and a run that stops cleanly on SIGINT, SIGTERM and SIGHUP, its record saved marked
``interrupted``."""

from __future__ import annotations

import datetime as dt
import json
import signal
from pathlib import Path
from typing import Any, Protocol

from .common import log


def timestamp(utc: bool = False) -> str:
    """The name of a results file: local time (the download and sidecar benchmarks) or UTC (the others)."""
    now = dt.datetime.now(dt.timezone.utc) if utc else dt.datetime.now()
    return now.strftime("%Y%m%dT%H%M%S")


class Results:
    """``<directory>/<prefix><timestamp>.json``; ``save`` replaces it atomically, so a reader never sees half."""

    def __init__(self, directory: Path, prefix: str = "", utc: bool = False) -> None:
        self.stamp = timestamp(utc)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{prefix}{self.stamp}.json"

    def save(self, record: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
        tmp.replace(self.path)

    def beside(self, suffix: str) -> Path:
        """The file next to the JSON with another suffix (``.md``, ``.png``)."""
        return self.path.with_suffix(suffix)


class Interruptible(Protocol):
    """A benchmark run: ``main`` measures, ``cleanup`` stops and removes whatever it started."""

    record: dict[str, Any]
    results: Results | None

    def main(self) -> int: ...

    def cleanup(self) -> None: ...


def run_interruptible(bench: Interruptible) -> int:
    """bench.main(), with SIGINT/SIGTERM/SIGHUP turned into a clean stop: the results file is saved marked
    `interrupted`, and whatever the bench started (servers, namespaces, directories) is cleaned up."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell may start background jobs with SIGINT ignored
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        return int(bench.main())
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        if bench.record and bench.results:
            bench.record["interrupted"] = True
            bench.results.save(bench.record)
        return 130
    finally:
        bench.cleanup()
        for sig, previous in old.items():
            signal.signal(sig, previous)
