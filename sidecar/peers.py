"""The peer route of a cooperative download (downloader/coop): the group's other members ask this sidecar for ranges
of the model its download child fetches (protocol: downloader/coop/protocol.py).

What is served, and only with the group's token: bytes of a file this member has verified (in its manifest or
done.jsonl, still as recorded), or, from a file not finished yet, a range its journal records as finished and that
is this member's own share among all the members. A member fetches its own share from the origin and nothing else,
so it never relays bytes it got from a peer before they were verified. A range of its own share that is not
finished yet is held until it is, up to the asker's wait; anything else is refused at once with the reason, and the
asker goes to the origin. The route runs on the event loop: waits are sleeps, reads run in the thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from downloader import read_progress
from downloader.coop.holdings import Holdings, Piece, check_path, open_piece
from downloader.coop.members import file_ends, file_owners
from downloader.coop.protocol import (
    FROM_HEADER,
    HOLD_MARGIN,
    MAX_HOLD,
    REFUSAL_HEADER,
    VERSION_HEADER,
    WAIT_HEADER,
    Refusal,
    content_range,
    token_matches,
)
from downloader.coop.report import CoopReport
from downloader.errors import UnsafePathError

READ_CHUNK = 1024 * 1024  # bytes per read of a served range
REFRESH_EVERY = 0.1  # seconds: held requests share one reading of the model directory per this long
_RANGE = re.compile(r"^bytes=(\d{1,19})-(\d{1,19})$")


@dataclass
class ServedCounts:
    """What this member served its peers, by the member that asked (its X-Aibrix-From), and what it refused."""

    bytes_by_peer: dict[str, int] = field(default_factory=dict)
    refusals: dict[str, int] = field(default_factory=dict)  # Refusal value -> count


class PeerRoute:
    """GET /peer/v1/file/{path}. `running` says whether the download child is still fetching (a range of this
    member's share is worth waiting for only then)."""

    def __init__(self, model_dir: str, token: str, running: Callable[[], bool]) -> None:
        self.model_dir = model_dir
        self._token = token
        self._running = running
        self.holdings = Holdings(model_dir)
        self.counts = ServedCounts()
        self._report: CoopReport | None = None
        self._refreshed = -1.0
        self._refreshing = asyncio.Lock()

    async def handle(self, request: Request) -> Response:
        if not token_matches(request.headers.get("authorization"), self._token):
            return self._refuse(Refusal.TOKEN)  # before anything else: a caller without the token learns nothing
        rel_path = request.path_params["path"]
        try:
            check_path(rel_path)
        except UnsafePathError:
            return self._refuse(Refusal.PATH)
        m = _RANGE.match(request.headers.get("range", ""))
        version = request.headers.get(VERSION_HEADER, "")
        if m is None or int(m.group(1)) > int(m.group(2)) or not version:
            return self._refuse(Refusal.RANGE)
        start, end = int(m.group(1)), int(m.group(2))
        try:
            wait = min(MAX_HOLD, max(0.0, float(request.headers.get(WAIT_HEADER, "0")) - HOLD_MARGIN))
        except ValueError:
            wait = 0.0
        deadline = time.monotonic() + wait
        asker = request.headers.get(FROM_HEADER, "")
        while True:
            # Asked before the reading that the answer rests on: a download that ended after a reading leaves files
            # done that the reading does not show, and a refusal is only given on a reading from after this.
            running, asked = self._running(), time.monotonic()
            await self._refresh()
            found = self.holdings.lookup(rel_path, version, start, end)
            if found.other_version is not None:
                return self._refuse(Refusal.VERSION)
            mine = self._own(rel_path, end, found.grid)
            piece = found.piece
            if piece is not None and (piece.mtime_ns is not None or mine):
                try:
                    fd = await anyio.to_thread.run_sync(open_piece, self.model_dir, piece)
                except OSError:  # renamed once verified, or changed: look again
                    self._refreshed = -1.0
                    continue
                return self._send(fd, piece, start, end, asker)
            if not running or (found.grid is not None and self._report is not None and not mine):
                if self._refreshed < asked:  # the reading is older than what it is judged with: read again first
                    self._refreshed = -1.0
                    continue
                return self._refuse(Refusal.NOT_MINE if found.known or mine else Refusal.UNKNOWN)
            # Its share, or the download has not started the file or said what its share is: worth waiting for.
            if time.monotonic() >= deadline or await request.is_disconnected():
                return self._refuse(Refusal.NOT_YET)
            await asyncio.sleep(REFRESH_EVERY)

    def _own(self, rel_path: str, end: int, grid: tuple[int, int] | None) -> bool:
        """Whether the range is this member's share among all the members (so its bytes here came from the
        origin); `grid`: the file's size and range step, from its journal."""
        report = self._report
        if report is None or not report.members or grid is None:
            return False
        return file_owners(report.members, rel_path, file_ends(*grid)).get(end) == report.self_url

    async def _refresh(self) -> None:
        """Read the model directory's state again, unless a reading started less than REFRESH_EVERY ago.
        `_refreshed` is when the last reading started: what it shows is at least that recent."""
        async with self._refreshing:
            started = time.monotonic()
            if started - self._refreshed < REFRESH_EVERY:
                return
            await anyio.to_thread.run_sync(self._read)
            self._refreshed = started

    def _read(self) -> None:
        self.holdings.refresh()
        progress = read_progress(self.model_dir)
        report = CoopReport.from_dict(progress.cooperation) if progress is not None else None
        if report is not None:
            self._report = report

    def _send(self, fd: int, piece: Piece, start: int, end: int, asker: str) -> Response:
        counts = self.counts
        report = self._report
        if report is None or asker not in report.members:
            asker = "other"  # metrics name members only: a label per caller-chosen string would grow without end

        async def body() -> AsyncIterator[bytes]:
            try:
                pos = start
                while pos <= end:
                    data = await anyio.to_thread.run_sync(os.pread, fd, min(READ_CHUNK, end - pos + 1), pos)
                    if not data:
                        return  # shorter than it was: the asker sees a short answer and goes to the origin
                    pos += len(data)
                    counts.bytes_by_peer[asker] = counts.bytes_by_peer.get(asker, 0) + len(data)
                    yield data
            finally:
                with contextlib.suppress(OSError):
                    os.close(fd)

        headers = {
            "content-range": content_range(start, end, piece.size),
            "content-length": str(end - start + 1),
            VERSION_HEADER: piece.version,
        }
        return StreamingResponse(body(), status_code=206, headers=headers, media_type="application/octet-stream")

    def _refuse(self, refusal: Refusal) -> Response:
        self.counts.refusals[refusal.value] = self.counts.refusals.get(refusal.value, 0) + 1
        return Response(refusal.value, status_code=refusal.status, headers={REFUSAL_HEADER: refusal.value})
