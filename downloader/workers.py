"""One download fetched by several processes (--workers): one plan, one state directory, one manifest.

An interpreter holds its GIL for part of every GiB it takes in (a request's bookkeeping, the calls into the client
and the kernel), so however many cores a node has, one process stops at 1 / X GiB/s for X GIL-held seconds per GiB
(BENCHMARKS.md, "The ceiling"). With more than one worker, the process that was started (the coordinator) does what it
does alone: it lists, plans, holds the model's lock and lease, chooses the page-cache policy, reports progress and
writes the manifest; between plan and manifest it deals the files to fetch out to the worker processes. Each runs the
same engine (downloader/transfer.py) over its share, with its own client and `--num-threads` / N of the requests in
flight, into the same model and state directories: a temp file and its journal have one writer (the worker that has
the file), finished files are recorded in one O_APPEND write each, so a run stopped anywhere resumes with any number
of workers. Workers send their counters (summed into progress.json) and, at the end, their records or their error;
the coordinator stops them all at the first error or signal, and a worker whose coordinator is gone (its pipe
closed) stops by itself. Files are dealt largest first to the least loaded worker: the shares differ by at most one
file's bytes.

Workers start with multiprocessing's `spawn`: a fresh interpreter that inherits no state from a process already
running threads (the CRT's, the reporter's); settings travel through the pipe, never on a command line.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import multiprocessing
import pickle
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from types import FrameType
from typing import Any

from .allocator import tune_allocator
from .concurrency import auto_workers
from .config import Settings
from .errors import DownloaderError
from .progress import Stats
from .resources import read_cpu_room
from .sources import RemoteFile, open_source
from .state import DoneRecord, Journal, ModelTree, StateDir
from .transfer import Engine, Halted, tune_gc

log = logging.getLogger(__name__)

REPORT_INTERVAL = 0.25  # seconds between a worker's counters
STOP_GRACE = 15.0  # seconds a stopped worker has to put its finished files in place before it is terminated


@dataclass(frozen=True)
class WorkerSpec:
    """How one worker process fetches; its share comes through its control pipe once every worker is started."""

    index: int
    settings: Settings
    keep_pages: bool


@dataclass(frozen=True)
class Share:
    """What one worker process fetches: its files, and the journals of those it resumes."""

    files: tuple[RemoteFile, ...]
    journals: tuple[Journal, ...]


def worker_count(settings: Settings, files: Sequence[RemoteFile], fetch_bytes: int) -> int:
    """How many processes fetch these files: --workers, or auto (concurrency.auto_workers); never more than files.
    A cooperative download serves its peers from the one process that holds the group's state."""
    if settings.peers is not None:
        return 1
    wanted = settings.workers
    if wanted is None:
        wanted = 1 if settings.uri.scheme == "file" else auto_workers(read_cpu_room(), len(files), fetch_bytes)
    return max(1, min(wanted, len(files)))


def deal(files: Sequence[RemoteFile], count: int) -> list[list[RemoteFile]]:
    """`files` in `count` shares of nearly equal bytes: largest first, each to the share with the fewest bytes (then
    the fewest files). Every share is non-empty when there are at least `count` files."""
    shares: list[list[RemoteFile]] = [[] for _ in range(count)]
    load = [(0, 0, i) for i in range(count)]  # a heap of (bytes, files, share)
    for f in sorted(files, key=lambda f: (-f.size, f.rel_path)):
        size, n, i = load[0]
        shares[i].append(f)
        heapq.heapreplace(load, (size + f.size, n + 1, i))
    return shares


@dataclass
class _Worker:
    index: int
    process: Any  # multiprocessing's SpawnProcess
    control: Connection  # coordinator -> worker: its Share, then "stop"
    reports: Connection  # worker -> coordinator: ("counters" | "done" | "halted" | "failed", payload)
    outcome: str | None = None


def fetch_in_workers(
    count: int,
    settings: Settings,
    files: Sequence[RemoteFile],
    journals: Sequence[Journal],
    *,
    keep_pages: bool,
    stats: Stats,
    cancel: threading.Event,
) -> list[DoneRecord]:
    """Fetch `files` in `count` worker processes; the records of the files they finished. Raises the first
    worker's error (as it was raised there), or transfer.Halted when stopped by `cancel`."""
    share_settings = replace(settings, num_threads=max(1, settings.num_threads // count), workers=1)
    ctx = multiprocessing.get_context("spawn")
    workers: list[_Worker] = []
    try:
        # Every worker is started before any is sent its share: start() writes what it passes to the new process
        # into a pipe the child reads only once its interpreter is up, so a share of thousands of files passed
        # there would make each start wait for the one before it (~0.45 s each here).
        for i in range(count):
            control_end, control = ctx.Pipe(duplex=False)
            reports, reports_end = ctx.Pipe(duplex=False)
            spec = WorkerSpec(i, share_settings, keep_pages)
            process = ctx.Process(
                target=worker_main, args=(spec, control_end, reports_end), name=f"fetch-worker-{i}", daemon=True
            )
            process.start()
            control_end.close()
            reports_end.close()
            workers.append(_Worker(i, process, control, reports))
        for w, share in zip(workers, deal(files, count), strict=True):
            names = {f.rel_path for f in share}
            with contextlib.suppress(OSError):  # a worker already gone: _gather reports it (no result)
                w.control.send(Share(tuple(share), tuple(j for j in journals if j.header.rel_path in names)))
        log.info("fetching in %d worker processes, up to %d requests in flight each", count, share_settings.num_threads)
        return _gather(workers, stats, cancel)
    finally:
        _stop(workers)
        for w in workers:
            w.process.join(STOP_GRACE)
            if w.process.is_alive():
                log.warning("worker %d did not stop within %.0fs; terminating it", w.index, STOP_GRACE)
                w.process.kill()
                w.process.join()
            w.control.close()
            w.reports.close()


def _stop(workers: Sequence[_Worker]) -> None:
    for w in workers:
        with contextlib.suppress(OSError, ValueError):
            w.control.send("stop")


def _gather(workers: list[_Worker], stats: Stats, cancel: threading.Event) -> list[DoneRecord]:
    records: list[DoneRecord] = []
    error: BaseException | None = None
    stopped_at: float | None = None
    live = {w.reports: w for w in workers}
    while live:
        if stopped_at is None and (cancel.is_set() or error is not None):
            stopped_at = time.monotonic()
            _stop(workers)
        if stopped_at is not None and time.monotonic() - stopped_at > STOP_GRACE:
            break  # a worker stuck past its grace: the caller kills it
        for conn in wait(list(live), timeout=0.2):
            assert isinstance(conn, Connection)
            w = live[conn]
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                del live[conn]
                if w.outcome is None and error is None:
                    w.process.join(STOP_GRACE)
                    error = DownloaderError(
                        f"worker process {w.index} ended without a result (exit code {w.process.exitcode}); "
                        "the next run resumes what it finished"
                    )
                    stats.failed(str(error))
                continue
            if kind == "counters":
                stats.absorb(w.index, payload)
                continue
            w.outcome = kind
            if kind == "done":
                records.extend(payload)
            elif kind == "failed" and error is None:
                error = payload
                stats.failed(str(payload))
    if error is not None:
        raise error
    if cancel.is_set() or any(w.outcome == "halted" for w in workers):
        raise Halted()
    return records


# ------------------------------------------------------------------------------------------------ the worker


def worker_main(spec: WorkerSpec, control: Connection, reports: Connection) -> None:
    """A worker process: fetch its share with the engine, report, exit (the target of multiprocessing's spawn)."""
    from .cli import worker_logging  # the entry point's logging; imported here, where the process starts

    settings = spec.settings
    worker_logging(settings.log_level, spec.index)
    cancel = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        cancel.set()  # a signal to the process group (a terminal's ^C): stop, as the coordinator does

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        share: Share = control.recv()
    except (EOFError, OSError):
        return  # the coordinator stopped before it sent the share: nothing to do
    threading.Thread(target=_listen, args=(control, cancel), name="control", daemon=True).start()
    sending = threading.Lock()
    stats = Stats("", settings.model_dir)

    def send(kind: str, payload: object) -> None:
        with sending, contextlib.suppress(OSError, ValueError):  # the coordinator is gone: nobody to tell
            try:
                reports.send((kind, payload))
            except (pickle.PicklingError, TypeError, AttributeError) as exc:  # an error that does not pickle
                reports.send(("failed", DownloaderError(f"worker {spec.index}: {payload} ({exc})")))

    finished = threading.Event()

    def report_counters() -> None:
        while not finished.wait(REPORT_INTERVAL):
            send("counters", stats.counters())

    reporter = threading.Thread(target=report_counters, name="counters", daemon=True)
    reporter.start()
    try:
        outcome: tuple[str, object] = ("done", _fetch(spec, share, stats, cancel))
    except Halted:
        outcome = ("halted", None)
    except DownloaderError as exc:
        outcome = ("failed", exc)
    except BaseException as exc:  # a bug: the coordinator reports it as an internal error (exit code 1)
        log.exception("worker %d failed", spec.index)
        outcome = ("failed", DownloaderError(f"internal error in worker {spec.index}: {type(exc).__name__}: {exc}"))
    finished.set()
    reporter.join()
    send("counters", stats.counters())
    send(*outcome)
    reports.close()


def _fetch(spec: WorkerSpec, share: Share, stats: Stats, cancel: threading.Event) -> list[DoneRecord]:
    settings = spec.settings
    if settings.tune_allocator:
        tune_allocator()
    source = open_source(settings, cancel)
    tune_gc()
    tree = ModelTree(settings.model_dir)
    state = StateDir(settings.model_dir)
    try:
        tree.open_root(create=False)
        engine = Engine(source, tree, state, settings, stats, cancel, keep_pages=spec.keep_pages)
        return engine.run(share.files, share.journals)
    finally:
        state.close()
        tree.close()
        source.close()


def _listen(control: Connection, cancel: threading.Event) -> None:
    """Stop on the coordinator's word, or when it is gone (the pipe closed: it exited or was killed)."""
    with contextlib.suppress(EOFError, OSError):
        control.recv()
    cancel.set()
