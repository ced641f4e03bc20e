"""One download, start to finish: list, filter, check, lock, plan, fetch, verify, manifest.

The order is what makes a half-written model invisible: the manifest is removed before any file of the
model is touched and written again, atomically, only when every selected file is verified.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TextIO

from . import __version__
from .allocator import tune_allocator
from .cache import CacheRoot, drop_reservation
from .config import Settings
from .errors import Interrupted, NotFoundError, UnsafePathError
from .layout import Manifest, ManifestFile, Phase, read_manifest
from .lease import Lease
from .pagecache import decide
from .plan import Plan, check_free_space, check_layout, dropped_load_critical, plan_downloads, safe_parts, select
from .progress import Reporter, Stats, human_bytes
from .resources import read_memory_room
from .sources import RemoteFile, Source, open_source
from .state import DoneRecord, Journal, LocalStat, ModelTree, StateDir
from .transfer import Engine, Halted, tune_gc
from .workers import fetch_in_workers, worker_count

if TYPE_CHECKING:
    from .coop.source import CoopSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    model_dir: str
    fetched_files: int
    skipped_files: int
    fetched_bytes: int  # bytes received from the network in this run
    total_bytes: int
    seconds: float


def download(settings: Settings, cancel: threading.Event, out: TextIO, err: TextIO) -> Result:
    started = time.monotonic()
    if settings.tune_allocator:
        tune_allocator()  # before the source's client makes its threads and their heaps
    source: Source = open_source(settings, cancel)
    coop: CoopSource | None = None
    if settings.peers is not None:  # a cooperative download: the origin, wrapped (downloader/coop)
        from .coop.source import CoopSource  # only here: its import is ~15 % of the start-up imports

        source = coop = CoopSource(source, settings.peers, verify=settings.verify, num_threads=settings.num_threads)
    tune_gc()
    try:
        return _download(settings, source, coop, cancel, out, err, started)
    finally:
        source.close()


@dataclass
class _Run:
    """What every step of one download needs."""

    settings: Settings
    source: Source
    coop: CoopSource | None  # the source, when it is a cooperative download's
    tree: ModelTree
    state: StateDir
    stats: Stats
    reporter: Reporter
    cancel: threading.Event
    started: float

    def result(self, fetched: int, skipped: int, fetched_bytes: int, total: int) -> Result:
        return Result(self.settings.model_dir, fetched, skipped, fetched_bytes, total, time.monotonic() - self.started)


def _download(
    settings: Settings,
    source: Source,
    coop: CoopSource | None,
    cancel: threading.Event,
    out: TextIO,
    err: TextIO,
    started: float,
) -> Result:
    model_dir = settings.model_dir
    stats = Stats(source.display_uri, model_dir)
    if coop is not None:
        stats.cooperation = lambda: coop.report().to_dict()
    reporter = Reporter(stats, "none" if settings.dry_run else settings.progress, settings.progress_interval, err)

    stats.set_phase(Phase.LISTING)
    log.info("listing %s", source.display_uri)
    listed = list(source.list(cancel))
    if cancel.is_set():
        raise Interrupted("signal", 130)
    if not listed:
        raise NotFoundError(source.display_uri, "no objects under this prefix")
    selected, dropped = select(listed, settings.allow_suffixes, settings.include, settings.exclude)
    if not selected:
        raise NotFoundError(source.display_uri, f"the filter selected none of the {len(listed)} objects")
    critical = dropped_load_critical(dropped)
    if critical:
        log.warning(
            "the filter drops files a model usually needs to load: %s (widen --allow-file-suffix or --include)",
            ", ".join(critical[:10]) + (" ..." if len(critical) > 10 else ""),
        )
    for warning in check_layout(selected):
        log.warning("%s", warning)
    if len(listed) == 1 and listed[0].key == settings.uri.prefix and settings.model_name == listed[0].rel_path:
        # AIBrix's layout, kept: the model directory is named after the URI's last segment, here the object's name.
        log.warning(
            "%s names one object: it lands at %s (the model directory is named after the URI's last segment, as "
            "AIBrix does); --model-name chooses that directory",
            source.display_uri,
            os.path.join(model_dir, listed[0].rel_path),
        )
    log.info("%d of %d objects selected (%s)", len(selected), len(listed), human_bytes(sum(f.size for f in selected)))

    tree = ModelTree(model_dir)
    state = StateDir(model_dir)
    # A download is a use of its model: the lease keeps evictions away from it (and is taken before the tree is
    # opened, so that it is the directory an eviction that was under way has just moved away, if any, that is left
    # behind, not ours).
    lease = Lease(model_dir)
    try:
        if settings.dry_run:
            return _dry_run(settings, selected, dropped, tree, state, out, started)

        lease.acquire(create=True)
        tree.open_root(create=True)
        state.ensure()
        reporter.attach(state)
        stats.set_phase(Phase.WAITING)
        reporter.tick()
        last_note = [0.0]

        def on_wait(waited: float, owner: str) -> None:
            if waited - last_note[0] >= 30 or last_note[0] == 0.0:
                last_note[0] = max(waited, 0.001)
                log.info("waiting for %s, which is downloading this model (%.0fs so far)", owner, waited)

        state.acquire_lock(cancel, settings.lock_timeout, on_wait)
        run = _Run(settings, source, coop, tree, state, stats, reporter, cancel, started)
        try:
            if settings.uri.scheme == "file" and settings.local_mode == "link":
                return _link_in_place(run, selected)
            return _fetch(run, selected)
        except Interrupted:
            stats.set_phase(Phase.INTERRUPTED)
            raise
        except BaseException as exc:
            stats.failed(str(exc))  # progress.json says why, for the sidecar and for people
            raise
        finally:
            reporter.tick()
            state.close()
            state.release_lock()
    finally:
        tree.close()
        lease.release()


def _local_stats(
    tree: ModelTree, files: Sequence[RemoteFile], records: Mapping[str, DoneRecord]
) -> dict[str, LocalStat | None]:
    """The local files the plan asks about: only those with a record of being finished can be kept (a fresh
    download of thousands of files looks up none)."""
    return {f.rel_path: tree.lstat(safe_parts(f.key, f.rel_path)) for f in files if f.rel_path in records}


def _placed(
    tree: ModelTree, journals: Sequence[Journal], records: Mapping[str, DoneRecord]
) -> list[tuple[Journal, DoneRecord]]:
    """The journals, and their `placed` records, of files that were renamed into place by a process that died before
    it wrote their done records: the file under the name is still the one the record describes (a regular file of
    that size and that mtime, which no other write leaves; done.jsonl then holds an older record at most)."""
    found = []
    for j in journals:
        rec = j.placed
        if rec is None or records.get(rec.rel_path) == rec:
            continue
        try:
            local = tree.lstat(safe_parts(j.header.key, rec.rel_path))
        except UnsafePathError:
            continue
        if local is not None and local.is_regular and (local.size, local.mtime_ns) == (rec.size, rec.mtime_ns):
            found.append((j, rec))
    return found


def _record_placed(run: _Run, journals: list[Journal], records: dict[str, DoneRecord]) -> list[Journal]:
    """Record the files a dead process renamed into place (_placed), as it would have, into `records` too, and drop
    their journals, as after any file; the journals left."""
    placed = _placed(run.tree, journals, records)
    if not placed:
        return journals
    run.state.append_done([rec for _, rec in placed])
    for j, rec in placed:
        records[rec.rel_path] = rec
        run.state.drop_journal(j.token)
        log.info("%s: in place, recorded now (the last run ended before it recorded the file)", rec.rel_path)
    tokens = {j.token for j, _ in placed}
    return [j for j in journals if j.token not in tokens]


def _fetch(run: _Run, selected: list[RemoteFile]) -> Result:
    settings, state, stats = run.settings, run.state, run.stats
    records = state.read_done()
    journals = _record_placed(run, [] if settings.force_download else state.journals(), records)
    plan = plan_downloads(selected, records, _local_stats(run.tree, selected, records), force=settings.force_download)
    total = sum(f.size for f in selected)
    stats.set_totals(total, len(selected), plan.skip_bytes, len(plan.skip))

    if not plan.fetch:
        manifest = read_manifest(settings.model_dir)
        if manifest is None or not _manifest_matches(manifest, selected):
            _write_manifest(run, selected, records)
        stats.set_phase(Phase.READY)
        log.info("%s is complete; nothing to fetch", settings.model_dir)
        return run.result(0, len(plan.skip), 0, total)

    # From here on files of the model change: readers must not see the old manifest.
    state.remove_manifest()
    _check_space(run, plan, journals)

    stats.set_phase(Phase.DOWNLOADING)
    log.info(
        "fetching %d file(s), %s; %d already present", len(plan.fetch), human_bytes(plan.fetch_bytes), len(plan.skip)
    )
    pages = decide(settings.page_cache, plan.fetch_bytes, read_memory_room())
    log.info("page cache: %s (%s)", "keep" if pages.keep else "bypass", pages.reason)
    run.reporter.start()
    workers = worker_count(settings, plan.fetch, plan.fetch_bytes)
    try:
        if workers > 1:
            new_records = fetch_in_workers(
                workers, settings, plan.fetch, journals, keep_pages=pages.keep, stats=stats, cancel=run.cancel
            )
        else:
            engine = Engine(
                run.source, run.tree, state, settings, stats, run.cancel, keep_pages=pages.keep, steering=run.coop
            )
            new_records = engine.run(plan.fetch, journals)
    except Halted as exc:
        raise Interrupted("signal", 130) from exc
    finally:
        run.reporter.stop()

    stats.set_phase(Phase.VERIFYING)
    # Recorded before the manifest lands, so that a reader who finds the model complete finds where the fetch ended.
    state.write_progress(stats.snapshot())
    for rec in new_records:
        records[rec.rel_path] = rec
    _write_manifest(run, selected, records)
    drop_reservation(settings.model_dir)
    _clean_leftovers(run.tree, state, selected)
    stats.set_phase(Phase.READY)
    return run.result(len(plan.fetch), len(plan.skip), stats.snapshot().bytes_fetched, total)


def _link_in_place(run: _Run, selected: list[RemoteFile]) -> Result:
    """--local-mode link: no bytes copied; the model directory holds symlinks to the source files."""
    run.state.remove_manifest()
    files = []
    for f in sorted(selected, key=lambda f: f.rel_path):
        run.tree.link(safe_parts(f.key, f.rel_path), f.key)
        files.append(ManifestFile(f.rel_path, f.size, f.version, None, None, "linked in place (size checked)", 0, True))
    total = sum(f.size for f in selected)
    run.stats.set_totals(total, len(selected), total, len(selected))
    run.state.write_manifest(_manifest(run, files))
    run.stats.set_phase(Phase.READY)
    log.info("linked %d files in place from %s", len(files), run.source.display_uri)
    return run.result(0, len(selected), 0, total)


def _check_space(run: _Run, plan: Plan, journals: list[Journal]) -> None:
    """What is still needed must fit, before anything is fetched: in the free space, and with --cache-max-size in the
    node cache's budget too, evicting models not in use to make room (downloader/cache.py)."""
    settings = run.settings
    # A temp file that will be resumed is already allocated at full size.
    allocated = {(j.header.rel_path, j.header.version) for j in journals}
    needed = sum(f.size for f in plan.fetch if (f.rel_path, f.version) not in allocated)
    if settings.cache_max_size is None:
        check_free_space(settings.model_dir, needed, run.tree.free_bytes(), settings.reserve_space)
        return
    root = CacheRoot(settings.local_dir)
    evicted = root.admit(settings.model_dir, needed, settings.cache_max_size, settings.reserve_space, run.cancel)
    for e in evicted:
        log.info("evicted %s from the node cache (%s, not in use) to make room", e.name, human_bytes(e.bytes))


def _manifest_matches(manifest: Manifest, selected: Sequence[RemoteFile]) -> bool:
    have = {(f.path, f.version, f.size) for f in manifest.files}
    want = {(f.rel_path, f.version, f.size) for f in selected}
    return have == want


def _manifest(run: _Run, files: Sequence[ManifestFile]) -> Manifest:
    return Manifest(
        source=run.source.display_uri,
        model_dir=run.settings.model_dir,
        created_at=time.time(),
        tool=f"aibrix-download {__version__}",
        files=tuple(files),
    )


def _write_manifest(run: _Run, selected: Sequence[RemoteFile], records: dict[str, DoneRecord]) -> None:
    files = []
    dirs: dict[tuple[str, ...], int] = {}
    others: dict[str, DoneRecord] | None = None
    try:
        for f in sorted(selected, key=lambda f: f.rel_path):
            r = records[f.rel_path]
            # The manifest vouches for the path a reader will open: walk it again, in case a directory was
            # moved or replaced by a symlink after the file was written through a descriptor opened earlier.
            local = run.tree.lstat_fresh(safe_parts(f.key, f.rel_path), dirs)
            if local is not None and local.is_regular and local.mtime_ns != r.mtime_ns:
                # Another process that did not see our lock (a filesystem without flock) put its own copy of the
                # same version there after ours, and recorded it: that copy is the one to vouch for.
                others = run.state.read_done() if others is None else others
                other = others.get(f.rel_path)
                if other is not None and other.version == r.version and other.mtime_ns == local.mtime_ns:
                    r = other
            if local is None or not local.is_regular or local.size != r.size or local.mtime_ns != r.mtime_ns:
                raise UnsafePathError(
                    f.key, "the finished file is no longer at its path (a directory moved or was replaced)"
                )
            # The record, not the listing: an object replaced mid-download was fetched at its new version and size.
            files.append(ManifestFile(f.rel_path, r.size, r.version, r.version_id, r.checksum, r.verified, r.mtime_ns))
    finally:
        for fd in dirs.values():
            os.close(fd)
    manifest = _manifest(run, files)
    run.state.write_manifest(manifest)
    log.info("manifest written: %d files, %s", len(files), human_bytes(manifest.total_bytes))


def _clean_leftovers(tree: ModelTree, state: StateDir, selected: Sequence[RemoteFile]) -> None:
    """Remove temp files and journals that no longer belong to anything (earlier crashes, changed objects)."""
    for j in state.journals():
        parts = tuple(j.header.rel_path.split("/"))
        tree.remove_temp(parts, j.header.temp)
        state.drop_journal(j.token)
    dirs = {tuple(f.rel_path.split("/")[:-1]) for f in selected}
    for d, name in list(tree.stale_temps(dirs)):
        tree.remove_temp((*d, name), name)  # remove_temp takes the final path; its directory is d


def _dry_run(
    settings: Settings,
    selected: list[RemoteFile],
    dropped: list[RemoteFile],
    tree: ModelTree,
    state: StateDir,
    out: TextIO,
    started: float,
) -> Result:
    if os.path.isdir(settings.model_dir):
        tree.open_root(create=False)
        records = state.read_done()
        journals = [] if settings.force_download else state.journals()
        records.update((rec.rel_path, rec) for _, rec in _placed(tree, journals, records))
        plan = plan_downloads(selected, records, _local_stats(tree, selected, records), force=settings.force_download)
    else:
        plan = Plan(fetch=list(selected), skip=[])
    skip = {f.rel_path for f in plan.skip}
    width = max(len(f"{f.size}") for f in selected)
    for f in sorted(selected, key=lambda f: f.rel_path):
        status = "present" if f.rel_path in skip else "fetch"
        out.write(f"{status:8} {f.size:>{width}}  {human_bytes(f.size):>10}  {f.rel_path}\n")
    out.write(
        f"total: {len(selected)} files, {plan.fetch_bytes + plan.skip_bytes} bytes; "
        f"would fetch {len(plan.fetch)} files, {plan.fetch_bytes} bytes ({human_bytes(plan.fetch_bytes)}); "
        f"{len(dropped)} objects filtered out\n"
    )
    return Result(
        settings.model_dir, 0, len(plan.skip), 0, plan.fetch_bytes + plan.skip_bytes, time.monotonic() - started
    )
