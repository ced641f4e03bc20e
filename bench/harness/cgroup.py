"""A memory cgroup for one run of a tool: the memory-limited runs (issue 17's "memory-limited container").

Only the tool goes in: the harness starts ``/bin/sh -c 'echo $$ > <group>/cgroup.procs && exec "$@"' <tool
argv>`` (under ``/usr/bin/time -v``, which stays outside), so the shell moves itself, then becomes the tool; the
harness's own process and the reader stay where they were. A fresh group per run starts every counter at zero;
it is removed after the run (any process left in it is one the tool started, and is killed first).

- cgroup v1 (``/sys/fs/cgroup/memory``, this machine): the group is made under the harness's own memory cgroup
  (so it stays inside whatever limit and accounting the harness itself runs under), with
  ``memory.limit_in_bytes`` and ``memory.memsw.limit_in_bytes`` (no swap beyond it, where swap is accounted);
  read: ``memory.max_usage_in_bytes`` (peak, page cache included), ``memory.failcnt`` (times the limit was
  hit), ``oom_kill`` of ``memory.oom_control``, and ``memory.stat``.
- cgroup v2 (``/sys/fs/cgroup`` with a ``memory`` controller): under the harness's own group if its
  ``cgroup.subtree_control`` enables memory, else under the root (a group with processes cannot enable
  controllers for its children); ``memory.max``, ``memory.swap.max`` = 0; read: ``memory.peak``,
  ``memory.events`` (``max``: limit hits, ``oom_kill``) and ``memory.stat``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from enum import Enum
from pathlib import Path
from typing import Any

V1_ROOT = Path("/sys/fs/cgroup/memory")
V2_ROOT = Path("/sys/fs/cgroup")
V1_STAT_KEYS = ("rss", "cache", "mapped_file", "dirty", "writeback")
V2_STAT_KEYS = ("anon", "file", "file_mapped", "file_dirty", "file_writeback")


class CgroupVersion(str, Enum):
    V1 = "v1"
    V2 = "v2"


class CgroupError(RuntimeError):
    pass


def _own_path(controller_field: str) -> str | None:
    """This process's cgroup path in the hierarchy whose /proc/self/cgroup controller field is given."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            if ctrls == controller_field or controller_field in ctrls.split(","):
                return path
    return None


def _v2_enables_memory(group: Path) -> bool:
    try:
        return "memory" in (group / "cgroup.subtree_control").read_text().split()
    except OSError:
        return False


def locate() -> tuple[CgroupVersion, Path]:
    """(version, the directory a new group is made in); CgroupError if this machine has no usable one."""
    if (V1_ROOT / "memory.limit_in_bytes").exists():
        own = _own_path("memory")
        parent = V1_ROOT / own.lstrip("/") if own else V1_ROOT
        return CgroupVersion.V1, parent if parent.is_dir() and os.access(parent, os.W_OK) else V1_ROOT
    controllers = V2_ROOT / "cgroup.controllers"
    if controllers.exists() and "memory" in controllers.read_text().split():
        own = _own_path("")
        parent = V2_ROOT / own.lstrip("/") if own else V2_ROOT
        if parent != V2_ROOT and _v2_enables_memory(parent) and os.access(parent, os.W_OK):
            return CgroupVersion.V2, parent
        if not _v2_enables_memory(V2_ROOT):
            try:
                (V2_ROOT / "cgroup.subtree_control").write_text("+memory\n")
            except OSError as e:
                raise CgroupError(f"cannot enable the memory controller under {V2_ROOT}: {e.strerror}") from e
        return CgroupVersion.V2, V2_ROOT
    raise CgroupError("no memory cgroup: neither /sys/fs/cgroup/memory (v1) nor a v2 memory controller")


class MemoryCgroup:
    """One child memory cgroup with a limit; ``wrap`` an argv to run it inside."""

    def __init__(self, name: str, limit_bytes: int) -> None:
        self.version, parent = locate()
        self.path = parent / name
        self.limit_bytes = limit_bytes

    def create(self) -> None:
        try:
            self.path.mkdir()
            if self.version is CgroupVersion.V1:
                self._write("memory.limit_in_bytes", self.limit_bytes)
                # equal to the limit: the group cannot swap past it (where swap is accounted at all)
                with contextlib.suppress(OSError):
                    self._write("memory.memsw.limit_in_bytes", self.limit_bytes)
            else:
                self._write("memory.max", self.limit_bytes)
                with contextlib.suppress(OSError):
                    self._write("memory.swap.max", 0)
        except OSError as e:
            self.remove()
            raise CgroupError(f"cannot set up {self.path}: {e}") from e

    def _write(self, name: str, value: int) -> None:
        (self.path / name).write_text(f"{value}\n")

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv``, started by a shell that first moves itself (its own pid, $$) into this group."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs"), *argv]

    def _keyed(self, name: str) -> dict[str, int]:
        out: dict[str, int] = {}
        with contextlib.suppress(OSError):
            for line in self._read(name).splitlines():
                k, _, v = line.partition(" ")
                with contextlib.suppress(ValueError):
                    out[k] = int(v)
        return out

    def counters(self) -> dict[str, Any]:
        """What the group saw: peak usage (page cache included), limit hits, OOM kills, some of memory.stat."""
        out: dict[str, Any] = {"version": self.version.value, "path": str(self.path), "limit_bytes": self.limit_bytes}
        if self.version is CgroupVersion.V1:
            with contextlib.suppress(OSError, ValueError):
                out["peak_bytes"] = int(self._read("memory.max_usage_in_bytes"))
            with contextlib.suppress(OSError, ValueError):
                out["limit_hits"] = int(self._read("memory.failcnt"))
            oom = self._keyed("memory.oom_control")
            out["oom_kills"] = oom.get("oom_kill")
            stat = self._keyed("memory.stat")
            out["stat_at_end"] = {k: stat[k] for k in V1_STAT_KEYS if k in stat}
        else:
            with contextlib.suppress(OSError, ValueError):
                out["peak_bytes"] = int(self._read("memory.peak"))
            events = self._keyed("memory.events")
            out["limit_hits"] = events.get("max")
            out["oom_kills"] = events.get("oom_kill")
            stat = self._keyed("memory.stat")
            out["stat_at_end"] = {k: stat[k] for k in V2_STAT_KEYS if k in stat}
        return out

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in self._read("cgroup.procs").split()]
        except (OSError, ValueError):
            return []

    def remove(self) -> None:
        """Kill what the tool left in the group (its own children), then remove the group."""
        if not self.path.exists():
            return
        for _ in range(50):
            left = self.pids()
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)
        raise CgroupError(f"could not remove {self.path}")
