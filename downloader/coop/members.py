"""The group as this member sees it, and who owns which range: rendezvous (highest random weight) hashing with
bounded loads.

A range's weight for a member is a hash of the member's URL and the range's key. Plain rendezvous hashing gives
each range to the member with the highest weight: every member computes the same owner from the same member list
without talking to anyone, and a member that joins or leaves moves only the ranges it owns. With few ranges per
member, though, shares differ by about sqrt(ranges / N), and the group waits for the largest. So the ranges of
a file are given out in order, each to the member of highest weight that owns fewer than ceil(ranges / N) of the
file's ranges so far (`file_owners`): no share is larger than ceil(ranges / N), each is still computed alone by
every member, and a member leaving still moves few ranges besides its own.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import socket
import threading
import types
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from ..config import member_url

log = logging.getLogger(__name__)

DNS_PREFIX = "dns+"
RESOLVE_EVERY = 5.0  # seconds between two resolutions of the dns+http:// entries (pods come and go)

Resolver = Callable[[str, int], Sequence[str]]


def range_key(rel_path: str, end: int) -> str:
    """What ownership is hashed on: the file and the last byte of the range. The end, because a range retried after
    it broke is asked for from where it broke to the same end."""
    return f"{rel_path}\n{end}"


def weight(member: str, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{member}\n{key}".encode(), digest_size=8).digest(), "big")


def owner(members: Iterable[str], key: str) -> str:
    """The member with the highest weight for `key` (ties, never seen with 64-bit weights, go to the larger URL)."""
    return max(members, key=lambda m: (weight(m, key), m))


def file_ends(size: int, step: int) -> list[int]:
    """The last byte of each range of a file of `size` bytes cut every `step` bytes (as downloader.plan cuts it)."""
    return [min(start + step, size) - 1 for start in range(0, size, step)]


def file_owners(members: Sequence[str], rel_path: str, ends: Sequence[int]) -> Mapping[int, str]:
    """The owner of each range of a file (by its last byte): rendezvous hashing with bounded loads (see above)."""
    return _file_owners(tuple(members), rel_path, tuple(ends))


@functools.lru_cache(maxsize=1024)  # asked for every range and every held request: computed once per file
def _file_owners(members: tuple[str, ...], rel_path: str, ends: tuple[int, ...]) -> Mapping[int, str]:
    cap = -(-len(ends) // len(members))
    load = dict.fromkeys(members, 0)
    out: dict[int, str] = {}
    for end in ends:
        key = range_key(rel_path, end)
        for m in sorted(members, key=lambda m: (weight(m, key), m), reverse=True):
            if load[m] < cap:
                load[m] += 1
                out[end] = m
                break
    return types.MappingProxyType(out)


def resolve(name: str, port: int) -> list[str]:
    """Every address of `name`, as member URLs."""
    infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return sorted({member_url(str(info[4][0]), port) for info in infos})


class Members:
    """The member URLs (this member's own included), from the configured entries: member URLs as given, and for each
    dns+http://name:port every address the name has, resolved again every RESOLVE_EVERY seconds in a thread of its
    own. A resolution that fails keeps what the last one found."""

    def __init__(self, entries: Sequence[str], self_url: str, resolver: Resolver = resolve) -> None:
        self.self_url = self_url
        self._static = {e for e in entries if not e.startswith(DNS_PREFIX)} | {self_url}
        self._names = [_name_and_port(e) for e in entries if e.startswith(DNS_PREFIX)]
        self._resolver = resolver
        self._resolved: dict[tuple[str, int], frozenset[str]] = {}
        self._lock = threading.Lock()
        self._current: tuple[str, ...] = tuple(sorted(self._static))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self._names:
            self._resolve_all()
            self._thread = threading.Thread(target=self._keep_resolving, name="peer-dns", daemon=True)
            self._thread.start()

    def current(self) -> tuple[str, ...]:
        """Every member now, sorted."""
        return self._current

    def owner(self, key: str, leaving_out: Collection[str] = ()) -> str:
        """The owner of `key` among the members, less those left out (peers down or dropped: their ranges go to
        the members that would own them without them). This member is never left out."""
        return owner((m for m in self._current if m not in leaving_out or m == self.self_url), key)

    def file_owner(self, rel_path: str, ends: Sequence[int], end: int, leaving_out: Collection[str] = ()) -> str:
        """The owner of the range of a file (its ranges' last bytes `ends`) that ends at `end`, among the members
        less those left out. A range this member owns among all the members stays its own whoever is left out:
        what it serves from a file not finished yet is exactly those ranges, all fetched from the origin."""
        every = self._current
        first = file_owners(every, rel_path, ends).get(end, self.self_url)
        if first == self.self_url or first not in leaving_out:
            return first
        rest = [m for m in every if m not in leaving_out or m == self.self_url]
        return file_owners(rest, rel_path, ends).get(end, self.self_url)

    def close(self) -> None:
        self._stop.set()

    def _keep_resolving(self) -> None:
        while not self._stop.wait(RESOLVE_EVERY):
            self._resolve_all()

    def _resolve_all(self) -> None:
        for name, port in self._names:
            try:
                found = frozenset(self._resolver(name, port))
            except OSError as exc:
                log.warning("peers: cannot resolve %s (%s); keeping the last members it named", name, exc)
                continue
            with self._lock:
                if self._resolved.get((name, port)) != found:
                    log.info("peers: %s names %d member(s)", name, len(found))
                self._resolved[(name, port)] = found
        with self._lock:
            current = set(self._static).union(*self._resolved.values())
            self._current = tuple(sorted(current))


def _name_and_port(entry: str) -> tuple[str, int]:
    host_port = entry[len(DNS_PREFIX) + len("http://") :]
    host, _, port = host_port.rpartition(":")
    return host, int(port)
