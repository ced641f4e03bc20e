"""Native-sidecar mode: `aibrix-download` as the sidecar's child, supervised by the runtime's `Child` (own process
group, SIGTERM if the sidecar dies, SIGTERM then SIGKILL on stop).

Its stderr comes through the sidecar (passed on line by line, the last lines kept) so that the cause of a failure
reaches /status; its stdout (the model directory, on success) goes to the sidecar's stderr, as in the runtime.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence

from downloader import read_progress
from downloader.errors import PERMANENT_EXIT_CODES, CacheFullError
from runtime.supervise import Child

from .snapshot import ChildState

log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 40  # lines of the download child's stderr kept to tell /status why it failed
STOP_GRACE = 15.0  # seconds from SIGTERM to SIGKILL: the downloader keeps finished ranges and exits 143


class DownloadChild:
    """The download process. `on_change` gets its state when it starts and when it exits."""

    def __init__(
        self,
        args: Sequence[str],
        model_dir: str,
        redact: Callable[[str], str],
        on_change: Callable[[ChildState], None],
    ) -> None:
        self.args = tuple(args)
        self.model_dir = model_dir
        self.redact = redact
        self.on_change = on_change
        self.child = Child(
            "aibrix-download", [sys.executable, "-m", "downloader", *self.args], stdout_to_stderr=True, pipe_stderr=True
        )
        self.failed = threading.Event()  # set when it failed (not when the sidecar stopped it)
        self._stopping = threading.Event()
        self._tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._relay: threading.Thread | None = None

    def start(self) -> None:
        """Call from the thread that lives as long as the sidecar (see Child)."""
        log.info("starting the download: aibrix-download %s", " ".join(self.args))
        self.child.start()
        assert self.child.pid is not None
        self.on_change(ChildState(self.child.pid))
        self._relay = threading.Thread(target=self._relay_stderr, name="download-stderr", daemon=True)
        self._relay.start()
        threading.Thread(target=self._wait, name="download-child", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()
        self.child.stop(STOP_GRACE)

    def _relay_stderr(self) -> None:
        pipe = self.child.stderr
        assert pipe is not None
        out = getattr(sys.stderr, "buffer", None)
        for raw in pipe:
            if out is not None:
                try:
                    out.write(raw)
                    out.flush()
                except (OSError, ValueError):
                    out = None  # our own stderr is gone; keep reading so that the child never blocks
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._tail.append(line)  # deque.append is atomic: read from _wait only after this thread ended

    def _wait(self) -> None:
        code = self.child.wait()
        if self._relay is not None:
            self._relay.join(timeout=5)  # its last lines, which say why
        pid = self.child.pid
        assert pid is not None
        stopped = self._stopping.is_set()
        if code == 0 or stopped:
            self.on_change(ChildState(pid, code))
            if code == 0:
                log.info("download finished")
            return
        cause = self._failure_cause()
        failed = f"aibrix-download exited with code {code}" + (f": {cause}" if cause else "")
        self.on_change(ChildState(pid, code, failed, cause))
        if code in PERMANENT_EXIT_CODES:
            outlook = "a restart fails the same way until that is fixed"
        elif code == CacheFullError.exit_code:
            outlook = "the next start of this container tries again (room is made once a model in use is released)"
        else:
            outlook = "the next start of this container resumes it"
        log.error("download failed (exit code %d): %s; %s", code, cause or "see the lines above", outlook)
        self.failed.set()

    def _failure_cause(self) -> str | None:
        """The download's own last word on why it failed: its last ERROR line, else progress.json's last error."""
        errors = [line.split(" ERROR ", 1)[1] for line in list(self._tail) if " ERROR " in line]
        if errors:
            return self.redact(errors[-1])
        p = read_progress(self.model_dir)
        return self.redact(p.last_error) if p is not None and p.last_error else None
