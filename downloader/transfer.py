"""The concurrent transfer engine.

One pool of `num_threads` workers serves every file, so the number of connections in flight is bounded for
the whole download. Large files are split into ranges that workers fetch concurrently; each range is
written at its offset into a preallocated temporary file, its checksum parts are digested as the bytes
stream past, and its completion is appended to the file's journal so a restarted run fetches only what is
missing. A file of one range is asked for whole; where the source's open() returns before the answer is in
(Source.open_ahead, a native client), a worker opens several such files before it reads the first. Every body is
read, checked and written the same way, and every request retried by one rule (_wait_to_retry). A file appears
under its final name only after it is complete and verified. Memory is bounded by num_threads x buffer_size,
whatever the file sizes; for a model of small files through S3's native client, its GETs' buffers and the client's
copies of the bodies arriving take at most WHOLE_BUDGET_BUFFERS x buffer_size, whatever num_threads
(see jobs.whole_concurrency).
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import mmap
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol, TypeVar

from . import verify
from .concurrency import BufferPool, ConnectionGate, ConnectionsMode, auto_cap
from .config import Settings, VerifyMode
from .errors import (
    IntegrityError,
    LocalStorageError,
    NotFoundError,
    ObjectChangedError,
    RetryableError,
    TransferError,
)
from .jobs import (
    WHOLE_BUDGET_BUFFERS,
    Attempt,
    Cursor,
    Finished,
    Job,
    Strategy,
    choose_checksum,
    same_version,
    usable_checksums,
    whole_concurrency,
)
from .plan import ByteRange, is_complete_on_disk, safe_parts, split_ranges
from .progress import Stats
from .resources import CpuMeter
from .retry import backoff_delay
from .sources.base import Body, ObjectDetail, RemoteFile, Source, Span
from .state import (
    DoneRecord,
    Journal,
    JournalHeader,
    ModelTree,
    StateDir,
    new_token,
    open_direct,
    start_writeback,
)

log = logging.getLogger(__name__)

MAX_OBJECT_RESTARTS = 3
# Small (single-range) files are made durable, named and recorded in batches, with one filesystem flush per
# batch (see _place_batch); a batch is placed when it reaches this many files, the range size in bytes, this
# age, or when the workers run out of other work.
BATCH_MAX_FILES = 256
BATCH_MAX_AGE = 1.0
KERNEL_COPY_STEP = 16 * 1024 * 1024
# Writes through the page cache are at most this large. The kernel sizes the page-cache folios it allocates by the
# write, and on the benchmark VM (a hypervisor that takes free memory back, virtio-balloon free page reporting)
# folios larger than 32 KiB cost several times more to fill: writing 4 GiB from 4 threads took 1.7-2.1 kernel
# CPU-seconds in 32 KiB writes, 2.3-2.9 in 8 KiB, 5.0-6.9 in 128 KiB (BENCHMARKS.md). Elsewhere this costs about
# 30,000 more system calls per GiB.
PAGE_CACHE_WRITE = 32 * 1024
# Bytes written through the page cache are queued for writeback every this many bytes of a range: the disk works
# while the network does, the fdatasync at the end of a file has little left to wait for, and the pages not yet
# queued for writeback stay below num_threads x WRITEBACK_STEP (a memory cgroup counts dirty pages and cannot
# reclaim them until they are written).
WRITEBACK_STEP = 8 * 1024 * 1024
# Most readers fill all they are given before they return, and lose it if the connection breaks meanwhile: asking
# for this much at a time bounds what a reset costs (a MiB fetched again). Each call is a trip through the
# interpreter and a GIL hand-off: 128 KiB reads cost 9 % more CPU and 15-25 % more wall time on a 1 GiB model
# than 1 MiB reads (BENCHMARKS.md).
READ_STEP = 1024 * 1024
# O_DIRECT wants file offsets, lengths and memory aligned to the logical block size (512 or 4096 bytes); the
# worker buffers are page-aligned mmaps and ranges start on multiples of MiB, so whole buffers qualify.
DIRECT_ALIGN = 4096  # per copy_file_range call: keeps progress and cancellation responsive
T = TypeVar("T")


# The SDKs' clients and models are hundreds of thousands of long-lived objects: keep the cyclic collector from
# walking them again and again while thousands of small files are fetched. Each file leaves a few dozen short-lived
# containers, almost none in cycles (those of a GET are broken by hand): collect the young generation every
# GC_YOUNG_THRESHOLD of them rather than every 700 (GC time on 10,000 files: 0.17 -> 0.06 s).
GC_YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """The collector's setting for a process that runs an engine, once its source's client is made."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _pwrite_all(fd: int, data: memoryview, offset: int, step: int = 1 << 62) -> None:
    while len(data):
        written = os.pwrite(fd, data[:step], offset)
        data = data[written:]
        offset += written


class Halted(Exception):
    """The download is stopping (signal or another file's failure); drop this work item quietly."""


class _Abandoned(Exception):
    """This attempt of the file was abandoned (object changed, checksum failed); drop the range."""


class Steering(Protocol):
    """What a source made of more than one store tells the engine (downloader/coop: members of a group that share a
    download). A `later` range is fetched after the others: it may wait on another process that is fetching its own
    share, so at most `wait_slots` workers take later ranges while other work remains, and the rest keep this
    process's own share going (that share is what the other processes wait on: no wait ever closes a cycle).
    `later` is given every range of a file, in order, and names the positions of the later ones. A file
    that fails verification is reported (`verification_failed`); True means the source put bytes of its own choosing
    in it, and that it serves the file from its origin alone from now on: the failure does not count against the
    file's one integrity retry."""

    wait_slots: int

    def later(self, f: RemoteFile, detail: ObjectDetail | None, ranges: Sequence[Span]) -> set[int]: ...

    def verification_failed(self, f: RemoteFile) -> bool: ...


class Engine:
    def __init__(
        self,
        source: Source,
        tree: ModelTree,
        state: StateDir,
        settings: Settings,
        stats: Stats,
        cancel: threading.Event,
        *,
        keep_pages: bool,
        steering: Steering | None = None,
    ) -> None:
        self.source = source
        self.steering = steering
        self.tree = tree
        self.state = state
        self.settings = settings
        self.stats = stats
        self.cancel = cancel
        self._halt = threading.Event()
        self._cv = threading.Condition()
        self._queue: deque[tuple[Job, Attempt | None, ByteRange | None]] = deque()
        self._later: deque[tuple[Job, Attempt | None, ByteRange | None]] = deque()  # see Steering
        self._waiting = 0  # later ranges in flight
        self._outstanding = 0
        self._error: BaseException | None = None
        self._records: list[DoneRecord] = []
        self._journals: dict[str, list[Journal]] = {}
        self._unplaced: list[Finished] = []  # small files written, verified and closed; not yet named
        self._unplaced_bytes = 0
        self._unplaced_since = 0.0
        self._placing = False
        self._depth = 1  # files each worker fetches at once (see run)
        self._slot = settings.buffer_size  # bytes of buffer per file in flight
        # Written files stay in the page cache (the engine's first load reads them from memory), or go past it with
        # O_DIRECT (least CPU): see downloader/pagecache.py.
        self._direct = not keep_pages
        self._gate = ConnectionGate(settings.num_threads, settings.connections)  # requests in flight (see run)
        self._buffers = BufferPool(settings.buffer_size)  # one per request in flight (see run)

    # ------------------------------------------------------------------------------------------ driver
    def run(self, files: Sequence[RemoteFile], journals: Sequence[Journal]) -> list[DoneRecord]:
        for j in journals:
            self._journals.setdefault(j.header.rel_path, []).append(j)
        jobs = [Job(f, safe_parts(f.key, f.rel_path)) for f in files]
        self._outstanding = len(jobs)
        self._queue.extend((job, None, None) for job in jobs)
        count = min(self.settings.num_threads, max(1, self._range_upper_bound(files)))
        if files and self.source.open_ahead > 1 and all(self._fits_whole(f) for f in files):
            # A model made only of files a native client fetches whole: each worker opens up to WHOLE_DEPTH of them
            # at once (Source.open_ahead), writes each body as it comes in, then opens the next batch. A few workers
            # keep up to three GETs per connection (num_threads caps the client's connections; it queues the rest) in
            # flight, so the connections stay busy while workers write, from a fifth of the Python threads: the GIL
            # hand-offs between threads, and GETs sent and awaited one by one, were most of the client's work on such
            # a model (BENCHMARKS.md). Each GET's buffer is the size of the largest file. Our buffers and the
            # client's copies of the bodies arriving stay within WHOLE_BUDGET_BUFFERS x buffer_size, whatever
            # num_threads: fewer GETs in flight when files are large or connections many.
            page = mmap.PAGESIZE
            self._slot = max(page, -(-max(f.size for f in files) // page) * page)
            self._depth, count = whole_concurrency(count, self._slot, WHOLE_BUDGET_BUFFERS * self.settings.buffer_size)
            self._depth = min(self._depth, self.source.open_ahead)
        auto = self.settings.connections is ConnectionsMode.AUTO
        if auto:
            count = auto_cap(count, self._slot * self._depth)
        # One worker per request the gate may let through: the worker count is the cap, the gate the number in flight.
        self._gate = ConnectionGate(count, self.settings.connections, cpu=CpuMeter() if auto else None)
        self._buffers = BufferPool(self._slot * self._depth)
        workers = [threading.Thread(target=self._worker, name=f"fetch-{i}", daemon=True) for i in range(count)]
        for w in workers:
            w.start()
        halted_at: float | None = None
        while any(w.is_alive() for w in workers):
            for w in workers:
                w.join(timeout=0.2)
                self._gate.observe(self.stats.bytes_fetched)
                if self.cancel.is_set() and not self._halt.is_set():
                    self._halt.set()
                    with self._cv:
                        self._cv.notify_all()
                    self._gate.wake()
                if self._halt.is_set():
                    halted_at = halted_at or time.monotonic()
            # Workers blocked on a dead socket notice within the stall timeout; do not wait that long to exit.
            if halted_at is not None and time.monotonic() - halted_at > 3.0:
                break
        if self._unplaced:
            # Stopped early: the small files already verified still get their names and records.
            with contextlib.suppress(Exception):
                self._place_batch()
        if self._error is not None:
            raise self._error
        if self.cancel.is_set():
            raise Halted()
        return self._records

    def _fits_whole(self, f: RemoteFile) -> bool:
        return f.size < self.settings.part_threshold and f.size <= self.settings.buffer_size

    def _range_upper_bound(self, files: Sequence[RemoteFile]) -> int:
        chunk = self.settings.part_chunksize
        return sum(max(1, -(-f.size // chunk)) for f in files)

    def _worker(self) -> None:
        size = self._slot
        while True:
            with self._cv:
                while not self._queue and not self._later and self._outstanding > 0 and not self._halt.is_set():
                    if self._unplaced and not self._placing:
                        break  # nothing left to fetch: place the finished small files now
                    self._cv.wait(0.5)
                if self._halt.is_set() or self._outstanding == 0:
                    return
                waits = bool(self._later) and (not self._queue or self._waiting < self.steering_slots)
                if waits:
                    self._waiting += 1
                    item: tuple[Job, Attempt | None, ByteRange | None] | None = self._later.popleft()
                else:
                    item = self._queue.popleft() if self._queue else None
                more = self._take_fresh(self._depth - 1) if item is not None and item[2] is None else []
            if item is None:
                try:
                    self._place_batch()
                except BaseException as exc:
                    self._fail(exc)
                    return
                continue
            if not self._gate.acquire(self._halt):
                return
            # The buffer goes with the permit (concurrency.BufferPool), and back before it.
            buf = self._buffers.take()
            views = [memoryview(buf)[i * size : (i + 1) * size] for i in range(self._depth)]
            job, attempt, rng = item
            try:
                if rng is None:
                    self._prepare([job, *more], views)
                else:
                    assert attempt is not None
                    self._run_range(job, attempt, rng, views[0])
            except (Halted, _Abandoned):
                continue
            except BaseException as exc:
                self._fail(exc)
                return
            finally:
                self._buffers.give(buf)
                self._gate.release()
                if waits:
                    with self._cv:
                        self._waiting -= 1

    @property
    def steering_slots(self) -> int:
        return self.steering.wait_slots if self.steering is not None else 0

    def _take_fresh(self, count: int) -> list[Job]:
        """Up to `count` more files not started yet from the front of the queue (the caller holds the lock)."""
        taken: list[Job] = []
        while len(taken) < count and self._queue and self._queue[0][1] is None and self._queue[0][2] is None:
            taken.append(self._queue.popleft()[0])
        return taken

    def _fail(self, exc: BaseException) -> None:
        with self._cv:
            if self._error is None:
                self._error = exc
                self.stats.failed(str(exc))
            self._halt.set()
            self._cv.notify_all()
        self._gate.wake()

    def _push_front(self, items: list[tuple[Job, Attempt | None, ByteRange | None]]) -> None:
        with self._cv:
            self._queue.extendleft(reversed(items))
            self._cv.notify_all()

    def _check_halt(self) -> None:
        if self._halt.is_set():
            raise Halted()

    # ----------------------------------------------------------------------------------------- prepare
    def _prepare(self, jobs: list[Job], views: list[memoryview]) -> None:
        """Start files (one, or several small ones at once, one buffer each): large files are split into ranges
        for any worker; one-range files are fetched here, their bodies all opened before the first is read when
        there are several (a source whose open() returns before the answer has them all in flight together)."""
        started: list[tuple[Job, Attempt, ByteRange, memoryview]] = []
        for job, view in zip(jobs, views, strict=False):
            opened = self._open(job)
            if opened is None:
                continue
            attempt, ranges, pending = opened
            if not pending or job.f.size == 0:
                self._finalize(job, attempt)
            elif len(ranges) == 1:
                started.append((job, attempt, ranges[0], view))
            else:
                later = self._later_ranges(job, ranges)
                self._push_front([(job, attempt, r) for r in pending if r.index not in later])
                if later:
                    with self._cv:
                        self._later.extend((job, attempt, r) for r in pending if r.index in later)
                        self._cv.notify_all()
        bodies = [self._open_ahead(job, view) for job, _, _, view in started] if len(started) > 1 else []
        try:
            for i, (job, attempt, r, view) in enumerate(started):
                first, bodies[i : i + 1] = (bodies[i], [None]) if bodies else (None, [])
                self._run_range(job, attempt, r, view, first)
        finally:
            for body in bodies:  # not read (a failure, a halt): nothing may land in a buffer after this
                if body is not None:
                    body.close()

    def _later_ranges(self, job: Job, ranges: list[ByteRange]) -> set[int]:
        """The indexes of the ranges (every range of the file) to fetch after the others (see Steering)."""
        if self.steering is None:
            return set()
        return self.steering.later(job.f, job.detail, [Span(r.start, r.end) for r in ranges])

    def _open_ahead(self, job: Job, view: memoryview) -> Body | None:
        """A whole file's body, opened before it is read; None when the source did not take it now (the file is
        then opened again when its turn comes, where failures are counted and retried)."""
        try:
            return self.source.open(job.f, job.detail, None, view, self._landing_fd(job.attempt))
        except (RetryableError, ObjectChangedError) as exc:
            log.debug("%s: not opened ahead (%s)", job.f.rel_path, exc)
            return None

    @staticmethod
    def _landing_fd(attempt: Attempt | None) -> int | None:
        """The file a source may write a whole body into itself (Source.open): a one-range file's, when it goes
        through the page cache (bytes that bypass it go out in the engine's own aligned writes)."""
        if attempt is None or attempt.journaled or attempt.direct:
            return None
        return attempt.fd

    def _open(self, job: Job) -> tuple[Attempt, list[ByteRange], list[ByteRange]] | None:
        """A file's attempt, its ranges and those still to fetch; None when it starts over instead."""
        self._check_halt()
        f = job.f
        multi = f.size >= self.settings.part_threshold
        part_size: int | None = None
        if multi:
            # The listing's own integrity facts where it carried them (one request fewer per file), else the source's
            job.detail = f.detail or self._retrying(f.key, lambda: self.source.stat(f))
            if not same_version(job.detail.version, f.version) or job.detail.size != f.size:
                self._restart(
                    job, None, ObjectChangedError(f.key, f"now version {job.detail.version}, listed {f.version}")
                )
                return None
            self._choose(job, job.detail, multi_range=True)
            if job.checksum is not None and job.strategy is Strategy.STREAM:
                part_size = job.checksum.part_size  # ranges aligned to the source's parts
        ranges = split_ranges(f.size, self.settings.part_threshold, self.settings.part_chunksize, part_size)
        attempt = self._open_attempt(job, ranges)
        job.attempt = attempt
        already = sum(r.length for r in ranges if r.index in attempt.done)
        self.stats.file_started(f.rel_path, f.size, already)
        if already:
            job.resumed = True
            log.info("resuming %s: %d of %d bytes already on disk", f.rel_path, already, f.size)
        return attempt, ranges, [r for r in ranges if r.index not in attempt.done]

    def _layout(self, job: Job, ranges: list[ByteRange]) -> str:
        alg = job.checksum.algorithm if job.checksum and job.strategy.while_streaming else "-"
        part = job.checksum.part_size if job.checksum and job.checksum.part_size else 0
        return f"v1 step={ranges[0].length} part={part} digest={alg}"

    def _open_attempt(self, job: Job, ranges: list[ByteRange]) -> Attempt:
        f = job.f
        journaled = len(ranges) > 1
        layout = self._layout(job, ranges)
        if journaled and not self.settings.force_download:
            candidates = sorted(self._journals.pop(f.rel_path, []), key=lambda j: len(j.done), reverse=True)
            for j in candidates:
                h = j.header
                fd = None
                if h.version == f.version and h.size == f.size and h.layout == layout:
                    fd = self.tree.open_temp(job.parts, h.temp, f.size)
                if fd is not None:
                    for other in candidates:
                        if other is not j:
                            self._discard_journal(job.parts, other)
                    valid = {i: d for i, d in j.done.items() if 0 <= i < len(ranges)}
                    return self._with_direct(Attempt(j.token, h.temp, fd, ranges, True, done=valid))
                self._discard_journal(job.parts, j)
        token = new_token()
        # A one-range file has one writer: one descriptor, opened with O_DIRECT (one open and one close fewer per
        # file, which counts on a model of thousands of small files). A file in ranges keeps a buffered one too.
        one_fd = not journaled and self._direct
        temp, fd, direct = self.tree.create_temp(job.parts, token, f.size, preallocate_blocks=journaled, direct=one_fd)
        if journaled:
            header = JournalHeader(
                f.rel_path, f.key, f.version, job.detail.version_id if job.detail else None, f.size, temp, layout
            )
            self.state.start_journal(token, header)
        if one_fd:
            return Attempt(token, temp, fd, ranges, journaled, dfd=fd, direct=direct)
        return self._with_direct(Attempt(token, temp, fd, ranges, journaled))

    def _with_direct(self, attempt: Attempt) -> Attempt:
        """Where the pages are not kept, files bypass the page cache: on the benchmark VM buffered writes cost
        0.3-3.7 kernel CPU-seconds per GiB (page cache, writeback), O_DIRECT 0.1-0.2 (BENCHMARKS.md)."""
        if self._direct:
            dfd = open_direct(attempt.fd)
            if dfd is not None:
                attempt.dfd, attempt.direct = dfd, True
        return attempt

    def _discard_journal(self, parts: tuple[str, ...], j: Journal) -> None:
        self.tree.remove_temp(parts, j.header.temp)
        self.state.drop_journal(j.token)

    # ------------------------------------------------------------------------------------------ ranges
    def _wait_to_retry(self, key: str, exc: RetryableError, tries: int, message: str) -> None:
        """Count the `tries`-th failed request; wait out its backoff, or give up after the last attempt. The one
        retry rule of every request the engine makes (ranges, whole files, stat)."""
        self.stats.retry(exc.kind, message)
        if exc.kind == "throttled":
            self._gate.throttled()
        if tries >= self.settings.max_attempts:
            raise TransferError(key, str(exc), attempts=tries) from exc
        delay = backoff_delay(tries, exc.retry_after, exc.kind)
        log.warning("retrying %s in %.1fs (attempt %d of %d)", message, delay, tries + 1, self.settings.max_attempts)
        if self._halt.wait(delay):
            raise Halted() from exc

    def _run_range(self, job: Job, attempt: Attempt, r: ByteRange, view: memoryview, first: Body | None = None) -> None:
        with self._cv:
            if attempt.abandoned:
                if first is not None:
                    first.close()
                return
            attempt.inflight += 1
        try:
            digests = self._fetch_range(job, attempt, r, view, first)
        except ObjectChangedError as exc:
            self._restart(job, attempt, exc)
            return
        finally:
            with self._cv:
                attempt.inflight -= 1
            self._maybe_cleanup(attempt, job.parts)
        with self._cv:
            if attempt.abandoned:
                return
            attempt.done[r.index] = digests
            finished = len(attempt.done) == len(attempt.ranges)
        if attempt.journaled:
            self.state.record_range(attempt.token, r.index, digests)
            start_writeback(attempt.fd, r.start, r.length)
        if finished:
            self._finalize(job, attempt)

    def _fetch_range(
        self, job: Job, attempt: Attempt, r: ByteRange, view: memoryview, first: Body | None = None
    ) -> list[str]:
        """Range `r` of the file into its temp file, retried where it broke; its digests. `first`, when given, is
        the body of the whole file already opened (it is used, or closed, here)."""
        f = job.f
        cursor = Cursor(r.start, self._range_hasher(job, r))
        tries = 0
        while True:
            try:
                if first is not None:
                    body, first = first, None
                else:
                    self._check_halt()
                    if attempt.abandoned:
                        raise _Abandoned()
                    # A one-range file from its start is asked for whole: stores send its checksum only then.
                    whole = len(attempt.ranges) == 1 and cursor.pos == 0
                    span = None if whole else Span(cursor.pos, r.end)
                    body = self.source.open(f, job.detail, span, view, self._landing_fd(attempt) if whole else None)
                self._stream(job, attempt, r, view, body, cursor)
                return cursor.hasher.finish() if cursor.hasher is not None else []
            except RetryableError as exc:
                tries += 1
                self._wait_to_retry(f.key, exc, tries, f"{f.rel_path} bytes {cursor.pos}-{r.end}: {exc}")

    def _stream(self, job: Job, attempt: Attempt, r: ByteRange, view: memoryview, body: Body, cursor: Cursor) -> None:
        """Read `body` to the end of range `r` into the file from `cursor.pos` on, digesting as the bytes pass; the
        cursor keeps what was written when the transfer breaks, so the retry asks for the rest only."""
        f = job.f
        fill = 0  # bytes in view[:fill] arrived but are not written yet; they belong at cursor.pos
        queued = cursor.pos  # writeback is queued for the bytes before this offset (page cache writes)
        try:
            while cursor.pos + fill <= r.end:
                if self._halt.is_set():
                    raise Halted()
                if attempt.abandoned:
                    raise _Abandoned()
                if job.detail is None and body.detail is not None:
                    cursor.hasher = self._learn(job, body.detail, r)
                if cursor.hasher is None and fill == 0 and job.detail is not None:
                    copied = self._copy_in_kernel(body, attempt, job, cursor.pos, r.end)
                    if copied is not None:
                        cursor.pos += copied
                        self.stats.add_bytes(f.rel_path, copied)
                        continue
                space = min(len(view) - fill, r.end - (cursor.pos + fill) + 1, READ_STEP)
                n = body.readinto(view[fill : fill + space])
                if n <= 0:
                    raise RetryableError(
                        "truncated", f"body ended at byte {cursor.pos + fill} of range {r.start}-{r.end}"
                    )
                if job.detail is None and body.detail is not None:
                    # The answer's own integrity facts, known once its first bytes are in (a whole file's)
                    cursor.hasher = self._learn(job, body.detail, r)
                if cursor.hasher is not None:
                    cursor.hasher.update(view[fill : fill + n])
                fill += n
                self.stats.add_bytes(f.rel_path, n)
                # Whole buffers go to disk: aligned for O_DIRECT, and fewer, larger writes. A body the source wrote
                # into the file itself is there already: its bytes were read back to be checked.
                if fill == len(view) or cursor.pos + fill > r.end:
                    if not body.in_file:
                        self._write(attempt, job, view[:fill], cursor.pos)
                    cursor.pos, fill = cursor.pos + fill, 0
                    if cursor.pos - queued >= WRITEBACK_STEP and not attempt.direct:
                        start_writeback(attempt.fd, queued, cursor.pos - queued)
                        queued = cursor.pos
        finally:
            try:
                if fill:  # keep what arrived before a failure: the retry asks for the rest only
                    if not body.in_file:
                        self._write(attempt, job, view[:fill], cursor.pos)
                    cursor.pos += fill
            finally:
                body.close()

    def _learn(self, job: Job, detail: ObjectDetail, r: ByteRange) -> verify.RangeHasher | None:
        """What a whole-file answer said of the object: the checksum to verify, and its hasher for this range."""
        job.detail = detail
        self._choose(job, detail, multi_range=False)
        return self._range_hasher(job, r)

    def _choose(self, job: Job, detail: ObjectDetail, *, multi_range: bool) -> None:
        job.checksum, job.strategy = choose_checksum(detail, multi_range, self.settings.verify)
        for note in detail.uninterpreted:
            log.warning(
                "%s: %s; verified with %s instead",
                job.f.rel_path,
                note,
                job.checksum.label if job.checksum else "its size",
            )

    def _range_hasher(self, job: Job, r: ByteRange) -> verify.RangeHasher | None:
        if job.checksum is None or not job.strategy.while_streaming:
            return None
        return verify.RangeHasher(job.checksum.algorithm, r.start, r.end, job.checksum.part_size)

    def _copy_in_kernel(self, reader: Body, attempt: Attempt, job: Job, pos: int, end: int) -> int | None:
        try:
            copied = reader.copy_into(attempt.buffered_fd(), pos, min(KERNEL_COPY_STEP, end - pos + 1))
        except OSError as exc:
            raise LocalStorageError(os.path.join(self.tree.model_dir, *job.parts), exc.strerror or str(exc)) from exc
        if copied is not None and copied <= 0:
            raise RetryableError("truncated", f"body ended at byte {pos} of range ending at {end}")
        return copied

    def _write(self, attempt: Attempt, job: Job, data: memoryview, offset: int) -> None:
        """Write `data` at `offset`: its block-aligned part through the O_DIRECT descriptor when there is one."""
        try:
            if attempt.direct and offset % DIRECT_ALIGN == 0 and len(data) >= DIRECT_ALIGN:
                aligned = len(data) - len(data) % DIRECT_ALIGN
                try:
                    _pwrite_all(attempt.dfd, data[:aligned], offset)
                    data, offset = data[aligned:], offset + aligned
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    attempt.buffered_fd()
                    attempt.direct = False  # this filesystem takes no O_DIRECT writes after all: page cache
            if len(data):
                # One writer at a time per file: a buffered write holds the file's inode lock while it copies, and
                # the writers queued behind it spin in the kernel rather than sleep (BENCHMARKS.md).
                with attempt.page_cache_writes:
                    _pwrite_all(attempt.buffered_fd(), data, offset, PAGE_CACHE_WRITE)
        except OSError as exc:
            if attempt.abandoned:
                raise _Abandoned() from exc
            reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            raise LocalStorageError(os.path.join(self.tree.model_dir, *job.parts), reason) from exc

    def _retrying(self, key: str, fn: Callable[[], T]) -> T:
        tries = 0
        while True:
            self._check_halt()
            try:
                return fn()
            except RetryableError as exc:
                tries += 1
                self._wait_to_retry(key, exc, tries, f"{key}: {exc}")

    # ----------------------------------------------------------------------------------- finish a file
    def _finalize(self, job: Job, attempt: Attempt) -> None:
        try:
            verified, checksum_text = self._verify(job, attempt)
        except IntegrityError as exc:
            if self.steering is not None and self.steering.verification_failed(job.f):
                log.warning("%s; bytes from peers were in it: fetching it again from the source alone", exc)
                self.stats.retry("peer-checksum", str(exc))
                self._restart(job, attempt, None)
                return
            job.integrity_failures += 1
            if job.integrity_failures > 1:
                hint = verify.STORE_HINT if exc.check != "size" else ""
                raise IntegrityError(exc.key, exc.check, exc.expected, exc.actual, hint=hint) from exc
            job.mismatch = exc.actual
            log.warning("%s; fetching the file again", exc)
            self.stats.retry("checksum", str(exc))
            self._restart(job, attempt, None)
            return
        # Every file is durable before its name appears, and its name before its done record is written. A large
        # file gets its own fdatasync; small files, once closed, wait in a batch for one filesystem flush.
        if attempt.journaled:
            try:
                os.fdatasync(attempt.fd)
            except OSError as exc:
                raise LocalStorageError(
                    os.path.join(self.tree.model_dir, *job.parts), exc.strerror or str(exc)
                ) from exc
        attempt.close()
        attempt.closed = True
        done = Finished(job, attempt, verified, checksum_text)
        if not attempt.journaled:
            self._defer(done)
            return
        placed = self._place(done, durable=True)
        if placed is not None:
            record, new = placed
            if new:
                self.state.append_done([record])
            self.state.drop_journal(attempt.token)
            self._complete([record])

    def _place(self, done: Finished, *, durable: bool) -> tuple[DoneRecord, bool] | None:
        """Give a finished file its name: (its record, whether the record is new); None if it starts over."""
        job, f, attempt = done.job, done.job.f, done.attempt
        if attempt.journaled and attempt.mtime_ns is not None:
            # A process that dies between the rename and the done record leaves this line for the next run, which
            # then finds the file in place instead of fetching it again (run._placed).
            self.state.record_placing(attempt.token, self._record(done, attempt.mtime_ns))
        mtime_ns = self.tree.commit(job.parts, attempt.temp, durable=durable, mtime_ns=attempt.mtime_ns)
        if mtime_ns is None:
            # Our temp file vanished: a process that did not see our lock finished this file and cleaned up.
            adopted = self.state.read_done().get(f.rel_path)
            if adopted is None or not is_complete_on_disk(f, adopted, self.tree.lstat(job.parts)):
                log.warning("%s: temporary file vanished; fetching the file again", f.rel_path)
                self._restart(job, None, None)
                return None
            return adopted, False
        log.debug("done %s (%s)", f.rel_path, done.verified)
        return self._record(done, mtime_ns), True

    @staticmethod
    def _record(done: Finished, mtime_ns: int) -> DoneRecord:
        job, f = done.job, done.job.f
        version_id = job.detail.version_id if job.detail else None
        return DoneRecord(f.rel_path, f.version, version_id, f.size, mtime_ns, done.checksum, done.verified)

    def _complete(self, records: list[DoneRecord]) -> None:
        for r in records:
            self.stats.file_done(r.rel_path)
        with self._cv:
            self._records.extend(records)
            self._outstanding -= len(records)
            self._cv.notify_all()

    def _defer(self, done: Finished) -> None:
        with self._cv:
            if not self._unplaced:
                self._unplaced_since = time.monotonic()
            self._unplaced.append(done)
            self._unplaced_bytes += done.job.f.size
            due = (
                len(self._unplaced) >= BATCH_MAX_FILES
                or self._unplaced_bytes >= self.settings.part_chunksize
                or time.monotonic() - self._unplaced_since >= BATCH_MAX_AGE
                or not self._queue
            )
            self._cv.notify_all()
        if due:
            self._place_batch()

    def _place_batch(self) -> None:
        """Finished small files: one flush makes them durable, then they get their names, then their records."""
        with self._cv:
            if self._placing or not self._unplaced:
                return
            batch = self._unplaced
            self._unplaced, self._unplaced_bytes = [], 0
            self._placing = True
        try:
            self.tree.sync()
            placed = [p for p in (self._place(done, durable=False) for done in batch) if p is not None]
            self.tree.sync_dirs({done.job.parts[:-1] for done in batch})
            self.state.append_done([record for record, new in placed if new])
        finally:
            with self._cv:
                self._placing = False
                self._cv.notify_all()
        self._complete([record for record, _ in placed])

    def _verify(self, job: Job, attempt: Attempt) -> tuple[str, str | None]:
        f = job.f
        st = os.fstat(attempt.fd)
        size, attempt.mtime_ns = st.st_size, st.st_mtime_ns
        if size != f.size:
            raise IntegrityError(f.key, "size", str(f.size), str(size))
        c = job.checksum
        if c is None or f.size == 0:
            if self.settings.verify is VerifyMode.SIZE:
                reason = "--verify size"
            else:
                reason = job.detail.unverifiable if job.detail and job.detail.unverifiable else "no checksum published"
            return (f"size only ({reason})" if f.size else "size (empty file)"), None
        if job.strategy is Strategy.STREAM:
            digests = [d for r in attempt.ranges for d in attempt.done[r.index]]
            actual = verify.composite_value(c, digests)
        elif job.strategy is Strategy.COMBINE:
            crcs = [attempt.done[r.index][0] for r in attempt.ranges]
            raw = verify.combine_range_crcs(c.algorithm, crcs, [r.length for r in attempt.ranges])
            actual = verify.encode(raw, c.encoding)
        else:
            # A second read (normally from the page cache), through the descriptor we hold.
            fd = attempt.buffered_fd()
            actual = verify.encode(verify.digest_file(fd, c.algorithm, f.size, self._halt), c.encoding)
        if actual == c.value:
            return f"size and {c.label}", f"{c.algorithm}:{c.shown}"
        # The first check failed: the other published values, over the same bytes, tell a bad fetch from a value
        # this program cannot read or a store that publishes a wrong one (verify.settle).
        assert job.detail is not None
        others = [o for o in usable_checksums(job.detail, self.settings.verify) if o != c]
        fd = attempt.buffered_fd()
        verdict = verify.settle(
            f.key, c, actual, others, lambda o: verify.value_of(o, fd, f.size, self._halt), job.mismatch
        )
        if verdict.warning:
            log.warning("%s", verdict.warning)
        ok = verdict.checksum
        return verdict.verified, f"{ok.algorithm}:{ok.shown}" if ok else None

    def _restart(
        self,
        job: Job,
        attempt: Attempt | None,
        changed: ObjectChangedError | None,
        current: ObjectDetail | None = None,
    ) -> None:
        """Start the file over from nothing: its object changed (`current`: what it is now, when known), or its
        bytes failed the checksum."""
        if attempt is not None:
            with self._cv:
                if attempt.abandoned or job.attempt is not attempt:
                    return  # another worker already restarted this attempt
                attempt.abandoned = True
            self._maybe_cleanup(attempt, job.parts)
        self.stats.file_reset(job.f.rel_path)
        if changed is not None:
            job.restarts += 1
            self.stats.object_changed(str(changed))
            if job.restarts > MAX_OBJECT_RESTARTS:
                raise TransferError(
                    job.f.key, f"object changed {job.restarts} times during download", attempts=job.restarts
                )
            if current is None:
                current = self._retrying(job.f.key, lambda: self._current(job.f))
            log.warning("%s; starting this file over (new version %s)", changed, current.version)
            job.f = replace(
                job.f, size=current.size, version=current.version, version_id=current.version_id, detail=current
            )
        job.detail = None
        job.checksum = None
        job.strategy = Strategy.SIZE
        job.attempt = None
        self._push_front([(job, None, None)])

    def _current(self, f: RemoteFile) -> ObjectDetail:
        try:
            return self.source.stat(f)
        except NotFoundError as exc:
            raise NotFoundError(self.source.display_uri, "object disappeared during the download", key=f.key) from exc

    def _maybe_cleanup(self, attempt: Attempt, parts: tuple[str, ...]) -> None:
        with self._cv:
            if not attempt.abandoned or attempt.inflight > 0 or attempt.closed:
                return
            attempt.closed = True
        attempt.close()
        self.tree.remove_temp(parts, attempt.temp)
        if attempt.journaled:
            self.state.drop_journal(attempt.token)
