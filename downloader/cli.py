"""`aibrix-download` / `aibrix_download` / `python -m downloader`: parse, configure logging, run, exit.

Exit codes (also in README and docs/downloader.md): 0 ok, 1 internal error, 2 usage or configuration, 3 source
refused or missing, 4 transfer failed after retries, 5 integrity check failed, 6 local storage (space, permissions,
I/O), 7 unsafe object key, 130 interrupted by SIGINT, 143 interrupted by SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from .config import load_settings
from .errors import ConfigError, DownloaderError, Interrupted
from .progress import human_bytes

log = logging.getLogger("downloader")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = load_settings(argv, os.environ)
    except ConfigError as exc:
        log.error("%s", exc)
        return exc.exit_code
    logging.getLogger().setLevel(settings.log_level)
    noisy_libraries = ("botocore", "boto3", "urllib3", "s3transfer", "httpx", "httpcore", "httpx2", "httpcore2",
                       "google", "google.auth", "google.cloud")  # fmt: skip
    for noisy in noisy_libraries:
        logging.getLogger(noisy).setLevel(logging.WARNING if settings.log_level != "DEBUG" else logging.INFO)
    for warning in settings.warnings:
        log.warning("%s", warning)

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


if __name__ == "__main__":
    raise SystemExit(main())
