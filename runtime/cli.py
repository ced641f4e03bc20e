"""`aibrix-runtime head|worker` / `python -m runtime`: parse, configure logging, run, exit with a documented code.

Exit codes (see `runtime.errors` and the README): 0 only for --print-commands/--help, 1 internal error,
2 configuration, 10 model, 11 Ray did not start, 12 cluster incomplete in time, 13 head unreachable,
14 node lost, 15 local Ray node stopped, 16 vLLM exited 0 (a non-zero vLLM exit code is passed on),
17 vLLM never answered /health within --engine-start-timeout, 18 vLLM's /health failed for longer than
--engine-lost-timeout after it had served, 130 / 143 stopped by SIGINT / SIGTERM.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from .commands import describe_commands
from .config import load_settings
from .errors import ConfigError, RuntimeFailure
from .run import Runner, default_python
from .supervise import Signals, raise_open_files_limit

log = logging.getLogger("runtime")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s aibrix-runtime: %(message)s"
    )
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as exc:
        log.error("%s", exc)
        return exc.exit_code
    logging.getLogger().setLevel(settings.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for warning in settings.warnings:
        log.warning("%s", warning)
    if settings.print_commands:
        print("\n".join(describe_commands(default_python(), settings, os.environ)), flush=True)
        return 0

    signals = Signals()
    signals.install()
    raise_open_files_limit()
    log.info("aibrix-runtime %s starting (pid %d), model %s", settings.role, os.getpid(), settings.model_dir)
    try:
        Runner(settings, os.environ, signals).run()
    except RuntimeFailure as exc:  # already logged where it happened, before the children were stopped
        log.log(logging.INFO if exc.exit_code in (130, 143) else logging.ERROR, "exiting %d (%s)", exc.exit_code,
                type(exc).__name__)  # fmt: skip
        return exc.exit_code
    except Exception as exc:
        log.error("internal error: %s: %s", type(exc).__name__, exc, exc_info=settings.log_level == "DEBUG")
        return 1
    return 1  # pragma: no cover - Runner.run always raises


if __name__ == "__main__":
    raise SystemExit(main())
