"""What the calling process may use, as the kernel says: the memory its page cache can fill (for --page-cache auto,
downloader/pagecache.py), the CPUs it can keep busy (for --workers auto, downloader/workers.py) and how many of
them sit idle (for --connections auto, downloader/concurrency.py), from /proc and every cgroup above it, v1 or v2.
The roots are arguments so that tests can build a tree."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

# cgroup v1 writes "no limit" as the largest page-aligned signed 64-bit number; anything this large is none.
_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class MemoryRoom:
    """How much page cache this process could hold, and why: None where nothing limits it or it cannot be read."""

    mem_available: int | None  # /proc/meminfo MemAvailable
    cgroup_room: int | None  # the tightest cgroup limit above us, minus that cgroup's non-file usage
    cgroup: str | None  # the cgroup that sets cgroup_room, for messages

    @property
    def room(self) -> int | None:
        known = [v for v in (self.mem_available, self.cgroup_room) if v is not None]
        return min(known) if known else None


def read_memory_room(proc: str = "/proc", cgroup_fs: str = "/sys/fs/cgroup") -> MemoryRoom:
    """What limits the page cache of the calling process (the roots are arguments so tests can build a tree)."""
    available = _mem_available(os.path.join(proc, "meminfo"))
    best: tuple[int, str] | None = None
    for room, name in _cgroup_rooms(os.path.join(proc, "self", "cgroup"), cgroup_fs):
        if best is None or room < best[0]:
            best = (room, name)
    return MemoryRoom(available, best[0] if best else None, best[1] if best else None)


def _mem_available(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _stat(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        v = _int(value)
        if v is not None:
            out[key] = v
    return out


def _cgroups(self_cgroup: str) -> Iterator[tuple[list[str], str]]:
    """(controllers, path) of each hierarchy the process is in: no controllers for v2's unified one."""
    for line in (_read(self_cgroup) or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) == 3:
            yield [c for c in fields[1].split(",") if c], fields[2]


def _cgroup_rooms(self_cgroup: str, cgroup_fs: str) -> Iterator[tuple[int, str]]:
    """(room, cgroup path) for every memory limit above the process, v2 and v1 alike."""
    for controllers, path in _cgroups(self_cgroup):
        if not controllers:
            yield from _v2_rooms(cgroup_fs, path)
        elif "memory" in controllers:
            yield from _v1_rooms(os.path.join(cgroup_fs, "memory"), path)


def _ancestors(mount: str, path: str) -> Iterator[str]:
    """The process's cgroup directory under `mount`, then each one above it up to the mount."""
    here = _own_dir(mount, path)
    mount = os.path.normpath(mount)
    while here is not None:
        yield here
        if os.path.normpath(here) == mount:
            return
        here = os.path.dirname(here)


def _own_dir(mount: str, path: str) -> str | None:
    """The process's cgroup directory; the mount itself inside a cgroup namespace, where the path is not there."""
    candidate = os.path.join(mount, path.lstrip("/"))
    if os.path.isdir(candidate):
        return candidate
    return mount if os.path.isdir(mount) else None


def _v2_rooms(mount: str, path: str) -> Iterator[tuple[int, str]]:
    for here in _ancestors(mount, path):
        limit = _int(_read(os.path.join(here, "memory.max")))  # "max" reads as None: no limit at this level
        current = _int(_read(os.path.join(here, "memory.current")))
        if limit is not None and current is not None:
            st = _stat(os.path.join(here, "memory.stat"))
            yield (
                max(0, limit - (current - st.get("file", 0))),
                "/" + os.path.relpath(here, os.path.normpath(mount)).strip("."),
            )


def _v1_rooms(mount: str, path: str) -> Iterator[tuple[int, str]]:
    here = _own_dir(mount, path)
    if here is None:
        return
    st = _stat(os.path.join(here, "memory.stat"))
    # hierarchical_memory_limit is the tightest limit on the way up to the root: one read covers the ancestors.
    limit = st.get("hierarchical_memory_limit", _int(_read(os.path.join(here, "memory.limit_in_bytes"))))
    usage = _int(_read(os.path.join(here, "memory.usage_in_bytes")))
    if limit is None or usage is None or limit >= _UNLIMITED:
        return
    files = st.get("total_inactive_file", st.get("inactive_file", 0)) + st.get(
        "total_active_file", st.get("active_file", 0)
    )
    yield max(0, limit - (usage - files)), "/" + os.path.relpath(here, os.path.normpath(mount)).strip(".")


def read_cpu_room(cgroup_fs: str = "/sys/fs/cgroup", self_cgroup: str = "/proc/self/cgroup") -> int:
    """The CPUs the calling process may keep busy (for --workers auto): its affinity, and below that every CPU quota
    of a cgroup above it (v2 `cpu.max`, v1 `cpu.cfs_quota_us` over `cpu.cfs_period_us`: a container's CPU limit)."""
    cpus = len(os.sched_getaffinity(0))
    for controllers, path in _cgroups(self_cgroup):
        if not controllers:
            quotas = _v2_cpu_quotas(cgroup_fs, path)
        elif "cpu" in controllers:
            quotas = _v1_cpu_quotas(os.path.join(cgroup_fs, ",".join(controllers)), path)
        else:
            continue
        for quota in quotas:
            cpus = min(cpus, max(1, int(quota)))
    return cpus


def _v2_cpu_quotas(mount: str, path: str) -> Iterator[float]:
    for here in _ancestors(mount, path):
        quota, _, period = (_read(os.path.join(here, "cpu.max")) or "max").partition(" ")
        q, p = _int(quota), _int(period)  # "max" reads as None: no quota at this level
        if q is not None and p:
            yield q / p


def _v1_cpu_quotas(mount: str, path: str) -> Iterator[float]:
    for here in _ancestors(mount, path):
        q = _int(_read(os.path.join(here, "cpu.cfs_quota_us")))  # -1: no quota at this level
        p = _int(_read(os.path.join(here, "cpu.cfs_period_us")))
        if q is not None and q > 0 and p:
            yield q / p


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative seconds at one moment (CpuMeter): of the clock, of the CPUs the process may run on spent idle (idle
    and iowait in /proc/stat), and of CPU the process used (every thread, the native clients' own included); `room`
    is the number of CPUs it may keep busy (read_cpu_room)."""

    wall: float
    idle: float
    own: float
    room: int


def spare_cpus(before: CpuTimes, after: CpuTimes) -> tuple[float, float]:
    """(CPUs that sat idle and the process could have used, CPUs the process used), on average between two readings.
    Idle CPUs beyond a container's quota are not the process's to use: the spare is at most its room less its use."""
    seconds = after.wall - before.wall
    if seconds <= 0:
        return 0.0, 0.0
    own = max(0.0, (after.own - before.own) / seconds)
    idle = max(0.0, (after.idle - before.idle) / seconds)
    return max(0.0, min(idle, after.room - own)), own


class CpuMeter:
    """Reads CpuTimes: a callable, None when /proc/stat cannot be read."""

    def __init__(
        self,
        proc: str = "/proc",
        cpus: Collection[int] | None = None,
        room: int | None = None,
        own: Callable[[], float] = time.process_time,
    ) -> None:
        self._stat = os.path.join(proc, "stat")
        self._names = {f"cpu{n}" for n in (os.sched_getaffinity(0) if cpus is None else cpus)}
        self._room = read_cpu_room() if room is None else room
        self._own = own
        self._tick = os.sysconf("SC_CLK_TCK")

    def __call__(self) -> CpuTimes | None:
        idle = 0
        seen = False
        try:
            with open(self._stat, encoding="ascii") as fh:
                for line in fh:
                    if not line.startswith("cpu"):
                        break  # the per-CPU lines come first
                    fields = line.split()
                    if fields[0] in self._names:
                        idle += int(fields[4]) + int(fields[5])  # idle, iowait (USER_HZ ticks)
                        seen = True
        except (OSError, ValueError, IndexError, UnicodeDecodeError):
            return None
        if not seen:
            return None
        return CpuTimes(time.monotonic(), idle / self._tick, self._own(), self._room)
