"""Whether the files we write stay in the page cache: what the engine's first load reads them from.

Written through the page cache, the weights are in memory when the download ends, and the engine's first read
of every shard costs a copy from memory instead of a read from the disk (on the benchmark VM, reading a model
back from the disk took longer than fetching it; BENCHMARKS.md). That is worth it only where the pages can stay:
page cache counts against the memory cgroup of the process that writes it, and in a container whose limit is far
below the model the kernel evicts what we wrote to make room for what we write next, so the engine reads most of
it from the disk anyway, after we paid the page cache's CPU for nothing. There, writing with O_DIRECT, past the
page cache, is cheaper.

`auto` (the default) keeps the pages when the bytes still to fetch fit in KEEP_FRACTION of the memory this
process can fill: the smaller of the host's MemAvailable and, for each memory cgroup limit above the process
(v1 or v2), that limit minus what the cgroup uses for anything but file pages (downloader/resources.py reads it).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .resources import MemoryRoom

KEEP_FRACTION = 0.8


class PageCache(str, enum.Enum):
    """--page-cache: where written bytes go."""

    AUTO = "auto"  # KEEP when the bytes to fetch fit in the memory this process can fill, else BYPASS
    KEEP = "keep"  # through the page cache, written back as we go: the weights are in memory at the end
    BYPASS = "bypass"  # O_DIRECT where the filesystem takes it: least CPU, nothing left in memory


@dataclass(frozen=True)
class Decision:
    keep: bool
    reason: str


def decide(policy: PageCache, bytes_to_write: int, room: MemoryRoom) -> Decision:
    if policy is PageCache.KEEP:
        return Decision(True, "--page-cache keep")
    if policy is PageCache.BYPASS:
        return Decision(False, "--page-cache bypass")
    limit = room.room
    if limit is None:
        return Decision(True, "auto: no memory limit could be read")
    where = (
        f"memory cgroup {room.cgroup}"
        if room.cgroup_room is not None and room.cgroup_room == limit
        else "the host's available memory"
    )
    fits = bytes_to_write <= KEEP_FRACTION * limit
    verdict = "fit" if fits else "do not fit"
    return Decision(
        fits,
        f"auto: {_gib(bytes_to_write)} to write {verdict} in {KEEP_FRACTION:.0%} of the {_gib(limit)} "
        f"that {where} leaves for the page cache",
    )


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
