"""The group as this member sees it, and who owns which range: rendezvous (highest random weight) hashing.

A range's owner is the member with the highest weight for it, the weight being a hash of the member's URL and the
range's key. Every member computes the same owner from the same member list, without talking to anyone, and a
member that joins or leaves moves only the ranges it owns (about 1/N of them): the others keep their owners.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
from collections.abc import Callable, Collection, Iterable, Sequence

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
