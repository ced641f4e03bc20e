"""The cooperative source: the origin backend, wrapped. Ranges this member owns come from the origin; the others from
the peer that owns them, and from the origin whenever that peer cannot give them (down, silent, refusing, wrong).

Peers' bytes are used only for files whose origin publishes a checksum that --verify lets count: the engine verifies
every file against the origin's checksums before it gets its name, and a file with peers' bytes in it that fails is
reported back here (`verification_failed`): the peers that served any of it are dropped for the rest of the
download, and the file is fetched again from the origin alone. A peer that breaks off mid-range is replaced by the
origin for the rest of that range inside the body the engine reads, so the engine sees no failure of a peer's.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from ..config import PeerSettings, VerifyMode
from ..jobs import usable_checksums
from ..sources.base import Body, ObjectDetail, RemoteFile, Source, Span
from .client import Bytes, Failed, PeerClient, Refused
from .members import Members
from .protocol import Refusal
from .report import CoopReport, PeerReport, PeerState

log = logging.getLogger(__name__)

STARTING_RETRY = 0.25  # seconds between two attempts to reach a peer that is starting


class CoopSource:
    """A `Source` (the origin's listing, facts and bytes, with peers' bytes in place of the origin's where they can
    be had) and the engine's `Steering` (which ranges to fetch after this member's own share)."""

    def __init__(self, origin: Source, peers: PeerSettings, *, verify: VerifyMode, num_threads: int) -> None:
        self.origin = origin
        self.display_uri = origin.display_uri
        self.open_ahead = origin.open_ahead
        self.self_url = peers.self_url
        self.members = Members(peers.members, peers.self_url)
        self.client = PeerClient(peers.token, peers.self_url, peers.stall_timeout)
        # A peer found down is skipped (its ranges go to the members that own them without it) for this long.
        self.cool_down = peers.stall_timeout
        # Members start at about the same time, not at the same instant: for this long from our start, a peer that
        # never answered and whose port refuses connections is taken to be starting and asked again, not skipped.
        self.starting_until = time.monotonic() + peers.stall_timeout
        # Workers that may wait on peers while this member's own share is not all started: the others keep
        # fetching it, so a wait never blocks the share the peers wait for (see transfer.Steering).
        self.wait_slots = num_threads // 2
        self._verify = verify
        self._lock = threading.Lock()
        self._peers: dict[str, PeerReport] = {}
        self._down_until: dict[str, float] = {}
        self._origin_only: set[str] = set()  # files fetched again after their verification failed
        self._served_by: dict[tuple[str, str], set[str]] = {}  # (file, version) -> peers whose bytes are in it
        self._planned: dict[tuple[str, int], tuple[int, bool]] = {}  # (file, range end) -> (length, own)
        self._ends: dict[str, list[int]] = {}  # file -> the last byte of each of its ranges (see `later`)
        self._from_origin_bytes = 0
        self._refetched = 0

    # ------------------------------------------------------------------------------------ the Source
    def list(self, cancel: threading.Event) -> Iterator[RemoteFile]:
        return self.origin.list(cancel)

    def stat(self, f: RemoteFile) -> ObjectDetail:
        return self.origin.stat(f)

    def open(
        self,
        f: RemoteFile,
        detail: ObjectDetail | None,
        span: Span | None,
        buffer: memoryview | None,
        landing_fd: int | None = None,
    ) -> Body:
        if span is not None and self._shared(f, detail):
            peer = self._owner(f, span)
            if peer != self.self_url:
                body = self._from_peer(peer, f, span, lambda pos: self._from_origin(f, detail, Span(pos, span.end)))
                if body is not None:
                    return body
        return self._from_origin(f, detail, span, buffer, landing_fd)

    def close(self) -> None:
        self.members.close()
        self.client.close()
        self.origin.close()

    # --------------------------------------------------------------------------------- the Steering
    def later(self, f: RemoteFile, detail: ObjectDetail | None, ranges: Sequence[Span]) -> set[int]:
        """The positions in `ranges` (every range of `f`, in order) of those a peer owns: the engine fetches them
        after this member's own share."""
        if not self._shared(f, detail):
            return set()
        ends = [r.end for r in ranges]
        with self._lock:
            self._ends[f.rel_path] = ends
        owners = [self._owner(f, r) for r in ranges]
        with self._lock:
            for r, who in zip(ranges, owners, strict=True):
                self._planned[(f.rel_path, r.end)] = (r.end - r.start + 1, who == self.self_url)
        return {i for i, who in enumerate(owners) if who != self.self_url}

    def verification_failed(self, f: RemoteFile) -> bool:
        """`f` failed verification: from now on it comes from the origin alone, and every peer that served bytes of
        it is dropped. True when peers' bytes were in it (the failure is not the origin's)."""
        with self._lock:
            peers = self._served_by.pop((f.rel_path, f.version), set())
            self._origin_only.add(f.rel_path)
            if peers:
                self._refetched += 1
        for peer in sorted(peers):
            self._set_state(peer, PeerState.DROPPED, f"bytes it served of {f.rel_path} failed verification")
        return bool(peers)

    # ---------------------------------------------------------------------------------------- report
    def report(self) -> CoopReport:
        with self._lock:
            planned = list(self._planned.values())
            peers = {
                url: PeerReport(p.state, p.reason, p.bytes, p.ranges, dict(p.refusals), p.failures)
                for url, p in self._peers.items()
            }
            return CoopReport(
                self_url=self.self_url,
                members=list(self.members.current()),
                share_bytes=sum(length for length, own in planned if own),
                planned_bytes=sum(length for length, _ in planned),
                bytes_from_origin=self._from_origin_bytes,
                bytes_from_peers=sum(p.bytes for p in peers.values()),
                files_refetched=self._refetched,
                peers={url: peers.get(url, PeerReport()) for url in self.members.current() if url != self.self_url},
            )

    # -------------------------------------------------------------------------------------- helpers
    def _shared(self, f: RemoteFile, detail: ObjectDetail | None) -> bool:
        """Whether peers' bytes may go into `f`: only where the origin publishes a checksum to verify them with."""
        return (
            detail is not None
            and f.size > 0
            and f.rel_path not in self._origin_only
            and bool(usable_checksums(detail, self._verify))
        )

    def _owner(self, f: RemoteFile, span: Span) -> str:
        """Who to ask for `span` of `f`: its owner among the members not down or dropped; this member for a file
        the engine did not cut into ranges (see `later`)."""
        now = time.monotonic()
        with self._lock:
            ends = self._ends.get(f.rel_path)
            left_out = {
                url
                for url, p in self._peers.items()
                if p.state is PeerState.DROPPED or (p.state is PeerState.DOWN and now < self._down_until.get(url, 0))
            }
        if ends is None:
            return self.self_url
        return self.members.file_owner(f.rel_path, ends, span.end, left_out)

    def _from_origin(
        self,
        f: RemoteFile,
        detail: ObjectDetail | None,
        span: Span | None,
        buffer: memoryview | None = None,
        landing_fd: int | None = None,
    ) -> Body:
        return _Counted(self.origin.open(f, detail, span, buffer, landing_fd), self._count_origin)

    def _count_origin(self, n: int) -> None:
        with self._lock:
            self._from_origin_bytes += n

    def _from_peer(self, peer: str, f: RemoteFile, span: Span, rest: Callable[[int], Body]) -> Body | None:
        answer = self.client.ask(peer, f, span)
        while isinstance(answer, Failed) and answer.unreachable and self._starting(peer):
            time.sleep(STARTING_RETRY)
            answer = self.client.ask(peer, f, span)
        if isinstance(answer, Bytes):
            self._set_state(peer, PeerState.UP)
            return _PeerBody(self, peer, f, span, answer, rest)
        if isinstance(answer, Refused):
            with self._lock:
                report = self._peers.setdefault(peer, PeerReport())
                report.refusals[answer.refusal.value] = report.refusals.get(answer.refusal.value, 0) + 1
            if answer.refusal is Refusal.TOKEN:
                self._failed(peer, "it refuses our token (is the group's token the same on every member?)")
            else:
                self._set_state(peer, PeerState.UP)
            return None
        self._failed(peer, answer.reason)
        return None

    def _starting(self, peer: str) -> bool:
        """Whether `peer` may still be starting: it never answered, and we started only just now."""
        with self._lock:
            untried = self._peers.get(peer, PeerReport()).state is PeerState.UNTRIED
        return untried and time.monotonic() < self.starting_until

    def _failed(self, peer: str, reason: str) -> None:
        with self._lock:
            self._peers.setdefault(peer, PeerReport()).failures += 1
            self._down_until[peer] = time.monotonic() + self.cool_down
        self._set_state(peer, PeerState.DOWN, reason)

    def _set_state(self, peer: str, state: PeerState, reason: str = "") -> None:
        with self._lock:
            report = self._peers.setdefault(peer, PeerReport())
            if report.state is PeerState.DROPPED or (report.state is state and report.reason == reason):
                return
            report.state, report.reason = state, reason
        if state is PeerState.DOWN:
            log.warning(
                "peer %s: %s; the ranges it owns come from the others or the source for %.0fs",
                peer,
                reason,
                self.cool_down,
            )
        elif state is PeerState.DROPPED:
            log.warning("peer %s dropped: %s; that file is fetched again from the source", peer, reason)
        else:
            log.info("peer %s is up", peer)

    def _received(self, peer: str, f: RemoteFile, n: int) -> None:
        with self._lock:
            self._peers.setdefault(peer, PeerReport()).bytes += n
            self._served_by.setdefault((f.rel_path, f.version), set()).add(peer)

    def _range_received(self, peer: str) -> None:
        with self._lock:
            self._peers.setdefault(peer, PeerReport()).ranges += 1


class _Counted(Body):
    """An origin body whose bytes are counted as the origin's."""

    def __init__(self, inner: Body, count: Callable[[int], None]) -> None:
        self._inner = inner
        self._count = count
        self.in_file = inner.in_file

    @property
    def detail(self) -> ObjectDetail | None:  # known once the answer's first bytes are in (Body.detail)
        return self._inner.detail

    @detail.setter
    def detail(self, value: ObjectDetail | None) -> None:
        self._inner.detail = value

    def readinto(self, buf: memoryview) -> int:
        n = self._inner.readinto(buf)
        if n > 0:
            self._count(n)
        return n

    def copy_into(self, fd: int, offset: int, count: int) -> int | None:
        n = self._inner.copy_into(fd, offset, count)
        if n:
            self._count(n)
        return n

    def close(self) -> None:
        self._inner.close()


class _PeerBody(Body):
    """A range from a peer. Where the peer breaks off (an error, no byte for the stall timeout, an answer that ends
    early) the rest of the range comes from the origin, in this same body."""

    def __init__(
        self, coop: CoopSource, peer: str, f: RemoteFile, span: Span, answer: Bytes, rest: Callable[[int], Body]
    ) -> None:
        self._coop = coop
        self._peer = peer
        self._f = f
        self._pos = span.start
        self._end = span.end
        self._answer: Bytes | None = answer
        self._rest = rest
        self._origin: Body | None = None

    def readinto(self, buf: memoryview) -> int:
        answer = self._answer
        if answer is not None:
            try:
                n = answer.response.readinto(buf)
                why = "the answer ended early"
            except TimeoutError:
                n, why = 0, f"no byte for {self._coop.client.stall_timeout:g}s"
            except (OSError, http.client.HTTPException) as exc:
                n, why = 0, f"the answer broke off ({type(exc).__name__})"
            if n > 0:
                self._pos += n
                self._coop._received(self._peer, self._f, n)
                if self._pos > self._end:
                    self._coop._range_received(self._peer)
                    self._finish()
                return n
            if self._pos > self._end:
                return 0
            self._finish()
            self._coop._failed(self._peer, f"{why} at byte {self._pos} of {self._f.rel_path}")
            self._origin = self._rest(self._pos)
        if self._origin is None:
            return 0
        return self._origin.readinto(buf)

    def _finish(self) -> None:
        answer, self._answer = self._answer, None
        if answer is not None:
            self._coop.client.finish(self._peer, answer.response, answer.connection)

    def close(self) -> None:
        self._finish()
        if self._origin is not None:
            self._origin.close()
