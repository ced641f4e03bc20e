"""Sidecar settings: flags > environment > defaults, declared once in OPTIONS and parsed once. The only sidecar
module reading the environment."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from downloader import __version__
from downloader.config import Secret
from downloader.config import Settings as DownloadSettings
from downloader.config import load_settings as load_download_settings
from downloader.errors import ConfigError
from downloader.options import LOG_LEVEL, Kind, Lookup, Option, Options, Where, integer, parse_bool, parse_url, seconds

# Environment variables whose values are credentials: never shown in /status, even if a child printed one. Names
# of files holding them (AWS_WEB_IDENTITY_TOKEN_FILE, ...) are paths, which an error may usefully name.
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PRIVATE|ACCESS_KEY", re.IGNORECASE)
_PATH_NAME = re.compile(r"_(FILE|PATH|DIR)$", re.IGNORECASE)


@dataclass(frozen=True)
class SidecarSettings:
    host: str = "0.0.0.0"
    port: int = 8080
    model_dir: str | None = None
    download_args: tuple[str, ...] = ()  # when set, the sidecar runs `aibrix-download` with these itself
    engine_url: str | None = None
    engine_metrics_path: str = "/metrics"
    engine_timeout: float = 2.0
    expected_ray_nodes: int = 0
    ray_dashboard_url: str = "http://127.0.0.1:8265"
    stall_timeout: float = 300.0
    poll_interval: float = 1.0
    fast_paths: bool = True  # probes answered on the socket (sidecar/fastpath.py); off: through the ASGI app
    exit_on_failure_after: float = 10.0  # native mode: seconds after a failed download before exiting (-1: never)
    log_level: str = "INFO"
    # Credentials in the environment and the download's settings: cut out of anything the sidecar repeats from
    # the download child (its error lines), whatever the child printed.
    secrets: tuple[Secret, ...] = ()
    warnings: tuple[str, ...] = ()  # settings accepted but not acted on (AIBrix's runtime flags), for the log

    def redact(self, text: str) -> str:
        """`text` without any credential the sidecar knows of (the downloader prints none; this makes sure)."""
        for secret in self.secrets:
            text = text.replace(secret.reveal(), "***")
        return text


def _path(setting: str, raw: object) -> str:
    path = str(raw).strip()
    if not path.startswith("/"):
        raise ConfigError(setting, raw, "must start with /")
    return path


OPTIONS = Options(
    Option("host", "bind address", env=("SIDECAR_HOST",), default="0.0.0.0"),
    Option("port", "bind port; 0 picks a free one", env=("SIDECAR_PORT",), default="8080", parse=integer(0, 65535)),
    Option(
        "model_dir",
        "model directory to watch; implied by download arguments after --; without one, no model is watched and "
        "readiness follows the engine (and Ray), as AIBrix's runtime sidecar",
        env=("SIDECAR_MODEL_DIR",),
        default_doc="implied by the download arguments after `--`; none: no model is watched",
        doc='the model directory to watch (see "Without a model directory")',
    ),
    Option(
        "engine_url",
        "engine base URL, e.g. http://localhost:8000",
        env=("INFERENCE_ENGINE_ENDPOINT",),
        parse=parse_url,
        default_doc="none (readiness ignores the engine)",
    ),
    Option(
        "engine_metrics_path",
        "the engine's metrics path, passed through",
        env=("METRIC_SCRAPE_PATH",),
        default="/metrics",
        parse=_path,
    ),
    Option(
        "engine_timeout",
        "seconds for each engine probe",
        env=("SIDECAR_ENGINE_TIMEOUT",),
        default="2",
        parse=seconds(0.05, 60),
    ),
    Option(
        "expected_ray_nodes",
        "ready only when this many Ray nodes are alive; 0: Ray is not checked",
        env=("SIDECAR_EXPECTED_RAY_NODES",),
        default="0",
        parse=integer(0, 100000),
    ),
    Option(
        "ray_dashboard_url",
        "the Ray dashboard (reads /api/v0/nodes)",
        env=("SIDECAR_RAY_DASHBOARD_URL",),
        default="http://127.0.0.1:8265",
        parse=parse_url,
    ),
    Option(
        "stall_timeout",
        "liveness fails after a download makes no progress this long, in seconds",
        env=("SIDECAR_STALL_TIMEOUT",),
        default="300",
        parse=seconds(0.5),
    ),
    Option(
        "poll_interval",
        "seconds between engine, Ray and progress polls",
        env=("SIDECAR_POLL_INTERVAL",),
        default="1",
        parse=seconds(0.05, 60),
    ),
    Option(
        "fast_paths",
        "answer probes on the socket, past the ASGI app; off: every request through it",
        env=("SIDECAR_FAST_PATHS",),
        default="on",
        parse=parse_bool,
        kind=Kind.SWITCH,
    ),
    Option(
        "exit_on_failure_after",
        "native mode: exit 1 this many seconds after the download failed, so Kubernetes restarts the container and "
        "the download resumes (probes do not run during startup); -1 = stay up",
        env=("SIDECAR_EXIT_ON_FAILURE_AFTER",),
        default="10",
        parse=seconds(-1),
    ),
    Option("log_level", "debug, info, warning or error", env=("SIDECAR_LOG_LEVEL",), default="info", parse=LOG_LEVEL),
    Option(
        "enable_fastapi_docs",
        "accepted for AIBrix's runtime sidecar (aibrix_runtime); ignored with a log line: no API docs are served",
        parse=parse_bool,
        kind=Kind.TRUE,
    ),
    env_prefix="SIDECAR_",
    doc_rows=[
        ("`--version`", "", "", "print the version and exit"),
        ("after `--`", "", "", "`aibrix-download` arguments: the sidecar runs the download itself (native mode)"),
    ],
)


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aibrix-sidecar",
        allow_abbrev=False,  # a flag is spelt in full: --model must not quietly mean --model-dir
        description="Probes and metrics for a model download and its engine. Everything after `--` is passed "
        "to aibrix-download, which the sidecar then runs itself (native-sidecar mode).",
    )
    OPTIONS.add_arguments(p)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


# AIBrix's runtime sidecar reads these; they mean nothing here. Accepted, and named in the log when set.
_AIBRIX_IGNORED = {
    "INFERENCE_ENGINE_VERSION": "the engine is reached over HTTP, whatever its version",
    "PROMETHEUS_MULTIPROC_DIR": "the sidecar's metrics come from one process",
    "METRICS_ENABLE_TRANSFORMATION": "the engine's metrics are passed through with their own names",
    "METRICS_RAW_PASSTHROUGH_MODE": "the engine's metrics are always passed through with their own names",
}


def load_settings(argv: Sequence[str], env: Mapping[str, str]) -> SidecarSettings:
    argv = list(argv)
    download_args: tuple[str, ...] = ()
    if "--" in argv:
        cut = argv.index("--")
        argv, download_args = argv[:cut], tuple(argv[cut + 1 :])
    args = build_arg_parser().parse_args(argv)
    get = OPTIONS.lookup(args, env)

    given_dir = get.given("model_dir")
    model_dir = given_dir.raw.strip() if given_dir.where is Where.ENV else given_dir.raw
    download: DownloadSettings | None = None
    if download_args:
        # The downloader's own parser decides where the model lands: one source of truth.
        download = load_download_settings(download_args, env)
        model_dir = download.model_dir
    if model_dir is not None and not model_dir.strip():
        raise ConfigError(
            "--model-dir", model_dir, "set the model directory (or pass aibrix-download arguments after --)"
        )
    engine_url = get.value("engine_url")
    ray_nodes = get.value("expected_ray_nodes")
    if model_dir is None and engine_url is None and not ray_nodes:
        raise ConfigError(
            "--model-dir",
            None,
            "nothing to watch: set the model directory (--model-dir / SIDECAR_MODEL_DIR, or aibrix-download "
            "arguments after --), or the engine (--engine-url / INFERENCE_ENGINE_ENDPOINT)",
        )
    warnings = [f"ignoring unknown environment variable {name}" for name in OPTIONS.unknown_env(env)]
    return SidecarSettings(
        host=get.value("host").strip(),
        port=get.value("port"),
        model_dir=model_dir,
        download_args=download_args,
        engine_url=engine_url,
        engine_metrics_path=get.value("engine_metrics_path"),
        engine_timeout=get.value("engine_timeout"),
        expected_ray_nodes=ray_nodes,
        ray_dashboard_url=get.value("ray_dashboard_url"),
        stall_timeout=get.value("stall_timeout"),
        poll_interval=get.value("poll_interval"),
        fast_paths=get.value("fast_paths"),
        exit_on_failure_after=get.value("exit_on_failure_after"),
        log_level=get.value("log_level").upper(),
        secrets=_secrets(env, download),
        warnings=(*warnings, *_aibrix_warnings(get, env, engine_url)),
    )


def _aibrix_warnings(get: Lookup, env: Mapping[str, str], engine_url: str | None) -> tuple[str, ...]:
    """What AIBrix's runtime sidecar reads that the sidecar accepts without acting on it."""
    out: list[str] = []
    if get.value("enable_fastapi_docs"):
        out.append("--enable-fastapi-docs (AIBrix's runtime flag) ignored: the sidecar serves no API docs")
    engine = env.get("INFERENCE_ENGINE", "").strip()
    if engine and engine_url is None:
        out.append(
            f"INFERENCE_ENGINE={engine} is set but no engine endpoint (INFERENCE_ENGINE_ENDPOINT / --engine-url): "
            "the engine is not watched"
        )
    for name, why in _AIBRIX_IGNORED.items():
        if env.get(name, "").strip():
            out.append(f"{name} (AIBrix's runtime setting) ignored: {why}")
    return tuple(out)


def _secrets(env: Mapping[str, str], download: DownloadSettings | None) -> tuple[Secret, ...]:
    values = {v for k, v in env.items() if _SECRET_NAME.search(k) and not _PATH_NAME.search(k) and len(v) >= 4}
    if download is not None:
        given = (download.s3.access_key, download.s3.secret_key, download.s3.session_token, download.hf.token)
        values |= {s.reveal() for s in given if s is not None and len(s.reveal()) >= 4}
    return tuple(Secret(v) for v in sorted(values, key=len, reverse=True))  # longest first: no partial leftovers
