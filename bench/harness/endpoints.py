"""The three end points a run can measure, and which runs measure which.

A tool's run is followed by one of two things (``Then``), never both, because each changes what the other costs:

- ``sync``: a timed ``sync`` right after the tool exits;
- ``read``: the weights reader (``reader.py``) right after the tool exits; a ``sync`` before it would write the
  page cache back first and change what the read costs, and a read before a ``sync`` would overlap writeback.

From those, per run:

- **download only**: the tool's process, start to exit (the same in both kinds of run: nothing after the exit
  affects it, so it is taken from every run); CPU = the tool's user + sys; RSS = the tool's peak.
- **durable** (``sync`` runs): wall = tool + ``sync``; CPU = tool + the machine's busy CPU during the ``sync``
  (the writeback the tool left behind, "client + flush"); RSS = the tool's peak.
- **weights in memory** (``read`` runs): wall = from the tool's start until the reader has read every byte;
  CPU = tool + reader (user + sys); RSS = the tool's peak (the reader's, which counts the mapped file pages, is
  kept apart in the run's record).
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class Then(str, Enum):
    SYNC = "sync"
    READ = "read"


class EndPoint(str, Enum):
    DOWNLOAD = "download"
    DURABLE = "durable"
    IN_MEMORY = "in-memory"

    @property
    def heading(self) -> str:
        return {"download": "download only", "durable": "durable", "in-memory": "weights in memory"}[self.value]


SOURCES: dict[EndPoint, tuple[Then, ...]] = {
    EndPoint.DOWNLOAD: (Then.SYNC, Then.READ),
    EndPoint.DURABLE: (Then.SYNC,),
    EndPoint.IN_MEMORY: (Then.READ,),
}


def runs_needed(endpoints: list[EndPoint]) -> list[Then]:
    """The kinds of run that measure ``endpoints``: download only alone needs just the ``sync`` runs."""
    need = {t for ep in endpoints for t in SOURCES[ep] if ep is not EndPoint.DOWNLOAD}
    return [t for t in Then if t in need] or [Then.SYNC]


def then_of(run: dict[str, Any]) -> Then:
    """Results files from before the three end points have only ``sync`` runs, without the field."""
    return Then(run.get("then", Then.SYNC.value))


def tool_cpu(run: dict[str, Any]) -> float:
    return float(run.get("user_s", 0.0) + run.get("sys_s", 0.0))


def measure(run: dict[str, Any], ep: EndPoint) -> tuple[float, float | None, float | None] | None:
    """(wall s, CPU s, peak RSS MiB) of ``run`` at ``ep``; None if the run does not measure it."""
    if then_of(run) not in SOURCES[ep]:
        return None
    rss = run["max_rss_kb"] / 1024 if "max_rss_kb" in run else None
    cpu = tool_cpu(run) if "user_s" in run else None
    if ep is EndPoint.DOWNLOAD:
        return run["wall_s"], cpu, rss
    if ep is EndPoint.DURABLE:
        if "post_sync_s" not in run:
            return None
        flush = run.get("flush_cpu_s")
        return run["wall_s"] + run["post_sync_s"], None if cpu is None or flush is None else cpu + flush, rss
    if run.get("in_memory_wall_s") is None:
        return None
    reader = run.get("reader_cpu_s")
    return run["in_memory_wall_s"], None if cpu is None or reader is None else cpu + reader, rss
