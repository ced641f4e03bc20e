"""Sidecar settings: flags > environment > defaults, parsed once. The only sidecar module reading the environment."""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from downloader import __version__
from downloader.config import Secret, parse_choice, parse_int, parse_seconds
from downloader.config import Settings as DownloadSettings
from downloader.config import load_settings as load_download_settings
from downloader.errors import ConfigError

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
    exit_on_failure_after: float = 10.0  # native mode: seconds after a failed download before exiting (-1: never)
    log_level: str = "INFO"
    # Native mode, a cooperative download (--peers in the download's arguments): the group's token, which callers
    # of the peer route (sidecar/peers.py) must present. None: no peer route.
    peer_token: Secret | None = None
    # Credentials in the environment and the download's settings: cut out of anything the sidecar repeats from
    # the download child (its error lines), whatever the child printed.
    secrets: tuple[Secret, ...] = ()
    warnings: tuple[str, ...] = ()  # settings accepted but not acted on (AIBrix's runtime flags), for the log

    def redact(self, text: str) -> str:
        """`text` without any credential the sidecar knows of (the downloader prints none; this makes sure)."""
        for secret in self.secrets:
            text = text.replace(secret.reveal(), "***")
        return text


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aibrix-sidecar",
        allow_abbrev=False,  # a flag is spelt in full: --model must not quietly mean --model-dir
        description="Probes and metrics for a model download and its engine. Everything after `--` is passed "
        "to aibrix-download, which the sidecar then runs itself (native-sidecar mode).",
    )
    p.add_argument("--host", help="bind address [SIDECAR_HOST, 0.0.0.0]")
    p.add_argument("--port", help="bind port; 0 picks a free one [SIDECAR_PORT, 8080]")
    p.add_argument(
        "--model-dir",
        help="model directory to watch [SIDECAR_MODEL_DIR]; implied by download args; without one, no model is "
        "watched and readiness follows the engine (and Ray), as AIBrix's runtime sidecar",
    )
    p.add_argument("--engine-url", help="engine base URL, e.g. http://localhost:8000 [INFERENCE_ENGINE_ENDPOINT]")
    p.add_argument("--engine-metrics-path", help="engine metrics path passed through [METRIC_SCRAPE_PATH, /metrics]")
    p.add_argument("--engine-timeout", help="seconds for each engine probe [SIDECAR_ENGINE_TIMEOUT, 2]")
    p.add_argument(
        "--expected-ray-nodes", help="ready only when this many Ray nodes are alive [SIDECAR_EXPECTED_RAY_NODES]"
    )
    p.add_argument("--ray-dashboard-url", help="Ray dashboard [SIDECAR_RAY_DASHBOARD_URL, http://127.0.0.1:8265]")
    p.add_argument(
        "--stall-timeout",
        help="liveness fails after a download makes no progress this long [SIDECAR_STALL_TIMEOUT, 300]",
    )
    p.add_argument("--poll-interval", help="seconds between engine/Ray/progress polls [SIDECAR_POLL_INTERVAL, 1]")
    p.add_argument(
        "--exit-on-failure-after",
        help="native mode: exit 1 this many seconds after the download failed, so Kubernetes restarts the "
        "container and the download resumes (probes do not run during startup); -1 = stay up [10]",
    )
    p.add_argument("--log-level", help="debug, info, warning, error [SIDECAR_LOG_LEVEL, info]")
    p.add_argument(
        "--enable-fastapi-docs",
        action="store_true",
        help="accepted for AIBrix's runtime sidecar (aibrix_runtime); ignored: no API docs are served",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


# AIBrix's runtime sidecar reads these; they mean nothing here. Accepted, and named in the log when set.
_AIBRIX_IGNORED = {
    "INFERENCE_ENGINE_VERSION": "the engine is reached over HTTP, whatever its version",
    "PROMETHEUS_MULTIPROC_DIR": "the sidecar's metrics come from one process",
    "METRICS_ENABLE_TRANSFORMATION": "the engine's metrics are passed through with their own names",
    "METRICS_RAW_PASSTHROUGH_MODE": "the engine's metrics are always passed through with their own names",
}


def _pick(flag: str | None, env: Mapping[str, str], *names: str) -> tuple[str | None, str]:
    if flag is not None:
        return flag, ""
    for name in names:
        value = env.get(name)
        if value is not None and value.strip():
            return value.strip(), name
    return None, ""


def _url(setting: str, raw: str) -> str:
    if not re.match(r"^https?://[^/\s]+", raw):
        raise ConfigError(setting, raw, "must start with http:// or https:// and name a host")
    return raw.rstrip("/")


def load_settings(argv: Sequence[str], env: Mapping[str, str]) -> SidecarSettings:
    argv = list(argv)
    download_args: tuple[str, ...] = ()
    if "--" in argv:
        cut = argv.index("--")
        argv, download_args = argv[:cut], tuple(argv[cut + 1 :])
    args = build_arg_parser().parse_args(argv)

    model_dir, _ = _pick(args.model_dir, env, "SIDECAR_MODEL_DIR")
    download: DownloadSettings | None = None
    if download_args:
        # The downloader's own parser decides where the model lands: one source of truth.
        download = load_download_settings(download_args, env)
        model_dir = download.model_dir
    if model_dir is not None and not model_dir.strip():
        raise ConfigError(
            "--model-dir", model_dir, "set the model directory (or pass aibrix-download arguments after --)"
        )

    raw, name = _pick(args.host, env, "SIDECAR_HOST")
    host = raw or "0.0.0.0"
    raw, name = _pick(args.port, env, "SIDECAR_PORT")
    port = parse_int(name or "--port", raw, minimum=0, maximum=65535) if raw is not None else 8080
    raw, name = _pick(args.engine_url, env, "INFERENCE_ENGINE_ENDPOINT")
    engine_url = _url(name or "--engine-url", raw) if raw else None
    raw, _ = _pick(args.engine_metrics_path, env, "METRIC_SCRAPE_PATH")
    metrics_path = raw or "/metrics"
    if not metrics_path.startswith("/"):
        raise ConfigError("METRIC_SCRAPE_PATH", metrics_path, "must start with /")
    raw, name = _pick(args.engine_timeout, env, "SIDECAR_ENGINE_TIMEOUT")
    engine_timeout = parse_seconds(name or "--engine-timeout", raw, minimum=0.05, maximum=60) if raw else 2.0
    raw, name = _pick(args.expected_ray_nodes, env, "SIDECAR_EXPECTED_RAY_NODES")
    ray_nodes = parse_int(name or "--expected-ray-nodes", raw, minimum=0, maximum=100000) if raw else 0
    raw, name = _pick(args.ray_dashboard_url, env, "SIDECAR_RAY_DASHBOARD_URL")
    ray_url = _url(name or "--ray-dashboard-url", raw) if raw else "http://127.0.0.1:8265"
    raw, name = _pick(args.stall_timeout, env, "SIDECAR_STALL_TIMEOUT")
    stall = parse_seconds(name or "--stall-timeout", raw, minimum=0.5) if raw else 300.0
    raw, name = _pick(args.poll_interval, env, "SIDECAR_POLL_INTERVAL")
    poll = parse_seconds(name or "--poll-interval", raw, minimum=0.05, maximum=60) if raw else 1.0
    raw, name = _pick(args.exit_on_failure_after, env, "SIDECAR_EXIT_ON_FAILURE_AFTER")
    exit_after = parse_seconds(name or "--exit-on-failure-after", raw, minimum=-1) if raw else 10.0
    raw, name = _pick(args.log_level, env, "SIDECAR_LOG_LEVEL")
    level = parse_choice(name or "--log-level", raw or "info", ("debug", "info", "warning", "error")).upper()
    if model_dir is None and engine_url is None and not ray_nodes:
        raise ConfigError(
            "--model-dir",
            None,
            "nothing to watch: set the model directory (--model-dir / SIDECAR_MODEL_DIR, or aibrix-download "
            "arguments after --), or the engine (--engine-url / INFERENCE_ENGINE_ENDPOINT)",
        )
    return SidecarSettings(
        host=host,
        port=port,
        model_dir=model_dir,
        download_args=download_args,
        engine_url=engine_url,
        engine_metrics_path=metrics_path,
        engine_timeout=engine_timeout,
        expected_ray_nodes=ray_nodes,
        ray_dashboard_url=ray_url,
        stall_timeout=stall,
        poll_interval=poll,
        exit_on_failure_after=exit_after,
        log_level=level,
        peer_token=download.peers.token if download is not None and download.peers is not None else None,
        secrets=_secrets(env, download),
        warnings=_aibrix_warnings(args, env, engine_url),
    )


def _aibrix_warnings(args: argparse.Namespace, env: Mapping[str, str], engine_url: str | None) -> tuple[str, ...]:
    """What AIBrix's runtime sidecar reads that the sidecar accepts without acting on it."""
    out: list[str] = []
    if args.enable_fastapi_docs:
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
        peer_token = download.peers.token if download.peers is not None else None
        given = (
            download.s3.access_key,
            download.s3.secret_key,
            download.s3.session_token,
            download.hf.token,
            peer_token,
        )
        values |= {s.reveal() for s in given if s is not None and len(s.reveal()) >= 4}
    return tuple(Secret(v) for v in sorted(values, key=len, reverse=True))  # longest first: no partial leftovers
