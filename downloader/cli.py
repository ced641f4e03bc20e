"""`aibrix-download` / `aibrix_download` / `python -m downloader`: parse, configure logging, run, exit.

`aibrix-download cache ls|rm|gc ...` is the node cache's command (downloader/cache_cli.py); every other command line
is a download, as AIBrix's flags have it (the top-level parser takes no positional argument, so no download's
command line starts with `cache`).

Exit codes (also in README and docs/downloader.md): 0 ok, 1 internal error, 2 usage or configuration, 3 source
refused or missing, 4 transfer failed after retries, 5 integrity check failed, 6 local storage (space, permissions,
I/O), 7 unsafe object key, 8 the node cache cannot make room (--cache-max-size, free space; models in use),
9 `cache rm` of a model in use, 130 interrupted by SIGINT, 143 interrupted by SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from . import cache_cli
from .config import Settings, load_cache_settings, load_settings
from .errors import ConfigError, DownloaderError, Interrupted
from .lease import Lease
from .progress import human_bytes

log = logging.getLogger("downloader")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=LOG_FORMAT)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["cache"]:
        return cache_main(argv[1:])
    try:
        settings = load_settings(argv, os.environ)
    except ConfigError as exc:
        log.error("%s", exc)
        return exc.exit_code
    _apply_logging(settings.log_level, settings.warnings)
    quiet_libraries(settings.log_level)

    cancel = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if received:
            os._exit(128 + signum)  # a second signal: the user really wants out now
        received.append(signum)
        log.warning("received %s; stopping, completed ranges are kept", signal.Signals(signum).name)
        cancel.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    # --hold: a lease of its own, from before the download until the signal (the download's own ends with it)
    hold = Lease(settings.model_dir) if settings.hold else None
    if hold is not None:
        hold.acquire(create=True)
    try:
        code = _download(settings, cancel, received)
        if hold is None or code != 0:
            return code
        if hold.held or hold.acquire(create=False):
            log.info("holding a lease on %s until SIGTERM or SIGINT: it is not evicted meanwhile", settings.model_dir)
        else:  # the filesystem refuses the locks (Lease warned why): then nothing here is ever evicted either
            log.warning("no lease held on %s; waiting for SIGTERM or SIGINT all the same", settings.model_dir)
        cancel.wait()
        log.info("received %s: releasing the lease", signal.Signals(received[0]).name if received else "a signal")
        return 0
    finally:
        if hold is not None:
            hold.release()


def _download(settings: Settings, cancel: threading.Event, received: list[int]) -> int:
    from .run import download  # imported late: boto3 import is slow and --help should not pay it

    try:
        result = download(settings, cancel, sys.stdout, sys.stderr)
    except Interrupted:
        signum = received[0] if received else signal.SIGINT
        log.error("interrupted by %s; the next run resumes where this one stopped", signal.Signals(signum).name)
        return 128 + signum
    except DownloaderError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        log.error("internal error: %s: %s", type(exc).__name__, exc, exc_info=settings.log_level == "DEBUG")
        return 1
    if not settings.dry_run:
        log.info(
            "done: %s in %.1fs (%d fetched, %d already present, %s received)",
            result.model_dir,
            result.seconds,
            result.fetched_files,
            result.skipped_files,
            human_bytes(result.fetched_bytes),
        )
        print(result.model_dir, flush=True)
    return 0


LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
NOISY_LIBRARIES = ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpcore", "httpx2", "httpcore2",
                   "google", "google.auth", "google.cloud")  # fmt: skip


def quiet_libraries(level: str) -> None:
    """The SDKs' own loggers say little unless --log-level DEBUG."""
    for noisy in NOISY_LIBRARIES:
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "DEBUG" else logging.INFO)


def worker_logging(level: str, index: int) -> None:
    """A worker process's logging (downloader/workers.py): the same stream and form, its lines marked."""
    marked = LOG_FORMAT.replace("%(message)s", f"[worker {index}] %(message)s")
    logging.basicConfig(stream=sys.stderr, level=level, format=marked)
    quiet_libraries(level)


def _apply_logging(level: str, warnings: Sequence[str]) -> None:
    logging.getLogger().setLevel(level)
    for warning in warnings:
        log.warning("%s", warning)


def cache_main(argv: Sequence[str]) -> int:
    """`aibrix-download cache ls|rm|gc`."""
    try:
        settings = load_cache_settings(argv, os.environ)
    except ConfigError as exc:
        log.error("%s", exc)
        return exc.exit_code
    _apply_logging(settings.log_level, settings.warnings)
    try:
        return cache_cli.run(settings, sys.stdout)
    except DownloaderError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
