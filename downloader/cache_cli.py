"""`aibrix-download cache ls|rm|gc`: the node cache from the command line (docs/downloader.md, "The node cache").

Exit codes: 0 done, 2 usage (or no model of that name), 6 local storage (no such root), 8 `cache gc` could not
reach its size (the models in use alone hold more), 9 `cache rm` of a model in use.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import TextIO

from .cache import CacheRoot, Evicted
from .config import CacheAction, CacheSettings
from .errors import LocalStorageError
from .inventory import CachedModel, CacheInventory
from .progress import human_bytes

log = logging.getLogger("downloader")


def run(settings: CacheSettings, out: TextIO) -> int:
    root = CacheRoot(settings.root)
    if not os.path.isdir(root.root):
        raise LocalStorageError(root.root, "no such directory (the cache root is --local-dir)")
    if settings.action is CacheAction.LS:
        inventory = root.inventory()
        out.write(json.dumps(inventory.as_json(), indent=2) + "\n" if settings.json else table(inventory))
        return 0
    if settings.action is CacheAction.RM:
        assert settings.name is not None
        _report([root.remove(settings.name)], out)
        return 0
    assert settings.max_size is not None
    evicted = root.gc(settings.max_size)
    _report(evicted, out)
    log.info(
        "cache gc: %d model(s) evicted; the models hold %s", len(evicted), human_bytes(root.inventory().bytes_used)
    )
    return 0


def _report(evicted: list[Evicted], out: TextIO) -> None:
    for e in evicted:
        out.write(f"evicted {e.name} ({human_bytes(e.bytes)}, last used {_when(e.last_used)})\n")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else "never"


def _leases(m: CachedModel) -> str:
    if m.leases.evicting:
        return "evicting"
    if not m.leases.supported:
        return "unknown"
    return str(m.leases.holders)


def table(inventory: CacheInventory) -> str:
    """The inventory for people: one line per model, least recently used first, then the totals."""
    header = ("NAME", "STATE", "BYTES", "LEASES", "LAST USED", "CONTENT", "SOURCE")
    rows = [header] + [
        (
            m.name,
            m.state.value,
            human_bytes(m.bytes),
            _leases(m),
            _when(m.last_used),
            m.content_id or "-",
            m.source or "-",
        )
        for m in sorted(inventory.models, key=lambda m: (m.last_used, m.name))
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]  # the last column is not padded
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)), r[-1]]) for r in rows]
    summary = f"{len(inventory.models)} model(s), {human_bytes(inventory.bytes_used)}"
    summary += f"; budget {human_bytes(inventory.budget)}" if inventory.budget is not None else "; no budget recorded"
    summary += f"; {inventory.evictions} eviction(s) so far ({human_bytes(inventory.evicted_bytes)})"
    if inventory.trash_bytes:
        summary += f"; {human_bytes(inventory.trash_bytes)} of evicted models still being deleted"
    return "\n".join([*lines, summary]) + "\n"
