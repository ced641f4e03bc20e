"""Real memory cgroups for tests: a child process started inside a fresh group with a memory limit.

v2 where the machine mounts the unified hierarchy with the memory controller, v1 otherwise. Only the child moves
into the group (it writes its own pid to cgroup.procs, then execs): the test process stays where it is.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

ROOT = "/sys/fs/cgroup"


@dataclass(frozen=True)
class MemoryGroup:
    path: str
    version: int

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """argv, run inside this group."""
        procs = os.path.join(self.path, "cgroup.procs")
        return ["/bin/sh", "-c", f"echo $$ > {shlex.quote(procs)} && exec {shlex.join(argv)}"]

    def oom_kills(self) -> int:
        if self.version == 2:
            for line in _read(os.path.join(self.path, "memory.events")).splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
            return 0
        for line in _read(os.path.join(self.path, "memory.oom_control")).splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0


def _read(path: str) -> str:
    with open(path, encoding="ascii") as fh:
        return fh.read()


def _parent() -> tuple[str, int] | None:
    if os.geteuid() != 0:
        return None
    if os.path.exists(os.path.join(ROOT, "cgroup.controllers")):
        if "memory" in _read(os.path.join(ROOT, "cgroup.controllers")).split():
            return ROOT, 2
        return None
    v1 = os.path.join(ROOT, "memory")
    if os.path.exists(os.path.join(v1, "memory.limit_in_bytes")) and os.access(v1, os.W_OK):
        return v1, 1
    return None


def available() -> bool:
    return _parent() is not None


@contextlib.contextmanager
def memory_group(limit_bytes: int) -> Iterator[MemoryGroup]:
    found = _parent()
    if found is None:
        raise RuntimeError("no writable memory cgroup hierarchy here (needs root)")
    parent, version = found
    path = os.path.join(parent, f"aibrix-test-{uuid.uuid4().hex[:10]}")
    if version == 2:
        # the controller may already be on for children
        with contextlib.suppress(OSError), open(os.path.join(parent, "cgroup.subtree_control"), "w") as fh:
            fh.write("+memory")
    os.mkdir(path)
    try:
        name = "memory.max" if version == 2 else "memory.limit_in_bytes"
        with open(os.path.join(path, name), "w") as fh:
            fh.write(str(limit_bytes))
        yield MemoryGroup(path, version)
    finally:
        _remove(path)


def _remove(path: str) -> None:
    # The child has exited by now; its page cache moves to the parent when the group goes (v1) or stays charged to
    # a dying group (v2), neither of which blocks rmdir once no process is left. A straggler gets a few tries.
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            with contextlib.suppress(OSError):
                for pid in _read(os.path.join(path, "cgroup.procs")).split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), 9)
            time.sleep(0.1)


def run_in(group: MemoryGroup, argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(group.wrap(argv), capture_output=True, text=True, **kwargs)  # type: ignore[call-overload,no-any-return]
