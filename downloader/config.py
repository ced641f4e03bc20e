"""Settings: command-line flags > --download-extra-config > environment > defaults, parsed once, strictly.

This is the only module of the downloader that reads the environment. Everything else takes a `Settings`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from . import __version__
from .concurrency import ConnectionsMode
from .errors import ConfigError
from .pagecache import PageCache
from .uri import ModelUri, parse_model_uri

MiB = 1024 * 1024
DEFAULT_LOCAL_DIR = "/tmp/aibrix/models/"

TRUE_WORDS = {"1", "on", "yes", "true"}
FALSE_WORDS = {"0", "off", "no", "false"}

# Environment variables this program understands. Unknown DOWNLOADER_* variables are reported (a typo in a
# pod spec otherwise silently does nothing).
KNOWN_ENV = {
    "DOWNLOADER_LOCAL_DIR",
    "DOWNLOADER_MODEL_NAME",
    "DOWNLOADER_ALLOW_FILE_SUFFIX",
    "DOWNLOADER_INCLUDE",
    "DOWNLOADER_EXCLUDE",
    "DOWNLOADER_NUM_THREADS",
    "DOWNLOADER_PART_THRESHOLD",
    "DOWNLOADER_PART_CHUNKSIZE",
    "DOWNLOADER_BUFFER_SIZE",
    "DOWNLOADER_FORCE_DOWNLOAD",
    "DOWNLOADER_PAGE_CACHE",
    "DOWNLOADER_DIRECT_IO",
    "DOWNLOADER_S3_CRT",
    "DOWNLOADER_FAST_PATHS",
    "DOWNLOADER_CHECK_FILE_EXIST",
    "DOWNLOADER_DRY_RUN",
    "DOWNLOADER_PROGRESS",
    "DOWNLOADER_PROGRESS_INTERVAL",
    "DOWNLOADER_STALL_TIMEOUT",
    "DOWNLOADER_MAX_ATTEMPTS",
    "DOWNLOADER_LOCK_TIMEOUT",
    "DOWNLOADER_RESERVE_SPACE",
    "DOWNLOADER_S3_ADDRESSING_STYLE",
    "DOWNLOADER_LOG_LEVEL",
    "DOWNLOADER_LOCAL_MODE",
    "DOWNLOADER_VERIFY",
    # Accepted for AIBrix compatibility; they tune boto3 internals we do not use (docs/downloader.md).
    "DOWNLOADER_S3_MAX_IO_QUEUE",
    "DOWNLOADER_S3_IO_CHUNKSIZE",
    "DOWNLOADER_TOS_VERSION",
}

_SUFFIX_LEAD = re.compile(r"^[\s.]+")
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")

EXTRA_CONFIG_KEYS = {
    "ak",
    "sk",
    "endpoint",
    "region",
    "hf_endpoint",
    "hf_token",
    "hf_revision",
    "num_threads",
    "max_io_queue",
    "io_chunksize",
    "part_threshold",
    "part_chunksize",
    "allow_file_suffix",
    "force_download",
    "verify",  # ours: --verify
}


class VerifyMode(str, Enum):
    """--verify: what a file must match before it gets its name (docs/verification.md)."""

    STRICT = "strict"  # its size and the best checksum the source publishes whose form is known
    ETAG = "etag"  # S3-compatible stores: its size and the ETag only (x-amz-checksum-* left out); others: strict
    SIZE = "size"  # its size only


class Secret:
    """A credential that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str | None = None
    region: str | None = None
    access_key: Secret | None = None
    secret_key: Secret | None = None
    session_token: Secret | None = None
    addressing_style: str = "auto"  # auto | path | virtual
    crt: bool = True  # small objects through the AWS CRT's native client (downloader/sources/s3_crt.py)
    ca_bundle: str | None = None  # AWS_CA_BUNDLE: the trust store of every transport
    proxied: bool = False  # HTTPS_PROXY, HTTP_PROXY or ALL_PROXY is set: only boto3's transport honours them


@dataclass(frozen=True)
class GcsSettings:
    emulator_host: str | None = None  # STORAGE_EMULATOR_HOST, e.g. http://127.0.0.1:4443 (anonymous access)
    project: str | None = None  # GOOGLE_CLOUD_PROJECT
    # Credentials: Application Default Credentials (workload identity, GOOGLE_APPLICATION_CREDENTIALS),
    # resolved by google-auth itself.


@dataclass(frozen=True)
class HfSettings:
    endpoint: str = "https://huggingface.co"  # HF_ENDPOINT or a mirror
    token: Secret | None = None  # HF_TOKEN
    revision: str = "main"  # @revision in the URI > hf_revision > HF_REVISION > main


@dataclass(frozen=True)
class Settings:
    uri: ModelUri
    local_dir: str
    model_name: str
    allow_suffixes: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    num_threads: int = 32
    part_threshold: int = 64 * MiB
    part_chunksize: int = 64 * MiB
    buffer_size: int = 1 * MiB
    connections: ConnectionsMode = ConnectionsMode.AUTO  # GETs in flight: up to num_threads (downloader/concurrency.py)
    page_cache: PageCache = PageCache.AUTO  # whether written files stay in the page cache (downloader/pagecache.py)
    fast_paths: bool = True  # off: every backend through its SDK's public path only (docs/design.md)
    force_download: bool = False
    dry_run: bool = False
    progress: str = "auto"  # auto | bar | lines | none
    progress_interval: float = 5.0
    stall_timeout: float = 60.0
    max_attempts: int = 10
    lock_timeout: float = 0.0  # 0 = wait as long as the other download makes progress
    reserve_space: int = 0
    log_level: str = "INFO"
    s3: S3Settings = field(default_factory=S3Settings)
    gcs: GcsSettings = field(default_factory=GcsSettings)
    hf: HfSettings = field(default_factory=HfSettings)
    local_mode: str = "copy"  # file:// sources: "copy" the files, or "link" (use them in place)
    verify: VerifyMode = VerifyMode.STRICT
    warnings: tuple[str, ...] = ()

    @property
    def model_dir(self) -> str:
        import os.path

        return os.path.join(os.path.abspath(self.local_dir), self.model_name)


# ----------------------------------------------------------------------------------------------- parsing


def parse_bool(setting: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int):
        if raw in (0, 1):
            return bool(raw)
        raise ConfigError(setting, raw, "expected a boolean (1/0, true/false, yes/no, on/off)")
    text = str(raw).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ConfigError(setting, raw, "expected a boolean (1/0, true/false, yes/no, on/off)")


_SIZE_RE = re.compile(r"^\s*(\d{1,20})\s*([KMGT]i?B?|[kmgt]i?b?|B|b)?\s*$")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(setting: str, raw: object, *, minimum: int = 1, maximum: int = 1 << 50) -> int:
    """Bytes as an integer, or with a binary unit: 64MiB, 64M, 1GiB. Decimal 'KB/MB/GB' mean powers of 1000."""
    if isinstance(raw, bool):
        raise ConfigError(setting, raw, "expected a size in bytes")
    if isinstance(raw, int):
        value = raw
    else:
        m = _SIZE_RE.match(str(raw))
        if not m:
            raise ConfigError(setting, raw, "expected a size such as 67108864, 64MiB or 1GiB")
        unit = (m.group(2) or "").lower()
        base = unit[:1]
        if unit.endswith("b") and "i" not in unit and base in ("k", "m", "g", "t"):
            factor = 1000 ** ("kmgt".index(base) + 1)
        else:
            factor = _SIZE_UNITS[base]
        value = int(m.group(1)) * factor
    if not minimum <= value <= maximum:
        raise ConfigError(setting, raw, f"must be between {minimum} and {maximum} bytes")
    return value


def parse_int(setting: str, raw: object, *, minimum: int, maximum: int) -> int:
    if isinstance(raw, bool):
        raise ConfigError(setting, raw, "expected an integer")
    try:
        text = "" if isinstance(raw, int) else str(raw).strip()
        if len(text) > 30:  # int() refuses huge digit strings with its own ValueError; no setting needs them
            raise ValueError
        value = raw if isinstance(raw, int) else int(text, 10)
    except ValueError as exc:
        raise ConfigError(setting, raw, "expected an integer") from exc
    if not minimum <= value <= maximum:
        raise ConfigError(setting, raw, f"must be between {minimum} and {maximum}")
    return value


def parse_seconds(setting: str, raw: object, *, minimum: float = 0.0, maximum: float = 7 * 86400) -> float:
    if isinstance(raw, bool):
        raise ConfigError(setting, raw, "expected a number of seconds")
    try:
        value = float(raw) if isinstance(raw, (int, float)) else float(str(raw).strip().rstrip("s"))
    except ValueError as exc:
        raise ConfigError(setting, raw, "expected a number of seconds") from exc
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise ConfigError(setting, raw, f"must be between {minimum} and {maximum} seconds")
    return value


def parse_suffixes(setting: str, raw: object) -> tuple[str, ...]:
    """'json, safetensors, .py' or a JSON list -> ('json', 'safetensors', 'py')."""
    items = [str(x) for x in raw] if isinstance(raw, (list, tuple)) else str(raw).split(",")
    out: list[str] = []
    for item in items:
        suffix = _SUFFIX_LEAD.sub("", item).rstrip()  # " .py", ". py" and "..py" are all "py"
        if not suffix:
            continue
        if "/" in suffix or "\\" in suffix or "*" in suffix or "\x00" in suffix:
            raise ConfigError(setting, raw, f"{item.strip()!r} is not a file suffix (use --include for patterns)")
        out.append(suffix)
    return tuple(dict.fromkeys(out))


def parse_patterns(setting: str, raws: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for raw in raws:
        for item in raw.split(","):
            pattern = item.strip()
            if not pattern:
                continue
            if "\x00" in pattern:
                raise ConfigError(setting, raw, "contains a NUL byte")
            out.append(pattern)
    return tuple(dict.fromkeys(out))


def parse_choice(setting: str, raw: object, choices: Sequence[str]) -> str:
    text = str(raw).strip().lower()
    if text not in choices:
        raise ConfigError(setting, raw, f"expected one of {', '.join(choices)}")
    return text


def validate_model_name(name: str | None) -> str:
    if not name or not name.strip():
        raise ConfigError(
            "--model-name", name, "cannot be derived from the URI (it has no last segment); pass --model-name"
        )
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or "\x00" in name or any(p in ("", ".", "..") for p in parts):
        raise ConfigError("--model-name", name, "must be a relative name without '..', empty parts or backslashes")
    return name


# ------------------------------------------------------------------------------------------ the parser


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aibrix-download",
        allow_abbrev=False,  # a flag is spelt in full: --num-thread must not quietly mean --num-threads
        description="Download model weights from object storage into a node-local directory: parallel, "
        "ranged, filtered, resumable, verified, one download per node. Settings: flag > "
        "--download-extra-config > environment > default (see docs/downloader.md).",
    )
    p.add_argument(
        "--model-uri",
        required=True,
        help="s3://, tos://, gs://bucket/prefix/, hf://org/name[@rev] or org/name, file:///path or /path",
    )
    p.add_argument("--local-dir", help=f"base directory [DOWNLOADER_LOCAL_DIR, default {DEFAULT_LOCAL_DIR}]")
    p.add_argument(
        "--model-name", help="directory under --local-dir [DOWNLOADER_MODEL_NAME; default: URI's last segment]"
    )
    p.add_argument(
        "--allow-file-suffix", help="comma list of suffixes, e.g. json,safetensors,py [DOWNLOADER_ALLOW_FILE_SUFFIX]"
    )
    p.add_argument("--include", action="append", help="glob on the relative path; repeatable [DOWNLOADER_INCLUDE]")
    p.add_argument("--exclude", action="append", help="glob on the relative path; repeatable [DOWNLOADER_EXCLUDE]")
    p.add_argument("--num-threads", help="requests in flight for the whole download [DOWNLOADER_NUM_THREADS, 32]")
    p.add_argument("--part-threshold", help="size from which a file is fetched in ranges [DOWNLOADER_PART_THRESHOLD]")
    p.add_argument("--part-chunksize", help="range size [DOWNLOADER_PART_CHUNKSIZE, 64MiB]")
    p.add_argument("--buffer-size", help="read buffer per connection [DOWNLOADER_BUFFER_SIZE, 1MiB]")
    p.add_argument(
        "--page-cache",
        help="auto, keep (written through the page cache: the weights are in memory at the end) or bypass "
        "(O_DIRECT) [DOWNLOADER_PAGE_CACHE, auto: keep when the model fits in the memory this process may fill]",
    )
    p.add_argument(
        "--direct-io",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="older spelling: --direct-io = --page-cache bypass, --no-direct-io = --page-cache keep "
        "[DOWNLOADER_DIRECT_IO]",
    )
    p.add_argument(
        "--fast-paths",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="each backend's fast path (S3: signed requests over a lean HTTP client and the AWS CRT; local: in-kernel "
        "copies); off: only the SDKs' public paths [DOWNLOADER_FAST_PATHS, on]",
    )
    p.add_argument(
        "--s3-crt",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="GET small S3 objects (up to 1 MiB) with the AWS CRT's native client [DOWNLOADER_S3_CRT, on unless "
        "a proxy is set]",
    )
    p.add_argument(
        "--force-download",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ignore what is on disk and fetch everything again [DOWNLOADER_FORCE_DOWNLOAD]",
    )
    p.add_argument(
        "--dry-run",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="list what would be fetched; fetch nothing",
    )
    p.add_argument("--download-extra-config", help="JSON object with AIBrix's extra keys (ak, sk, endpoint, ...)")
    p.add_argument("--enable-progress-bar", action="store_true", default=None, help="AIBrix spelling of --progress bar")
    p.add_argument("--progress", help="auto, bar, lines or none [DOWNLOADER_PROGRESS]")
    p.add_argument("--progress-interval", help="seconds between progress lines [DOWNLOADER_PROGRESS_INTERVAL, 5]")
    p.add_argument("--stall-timeout", help="abandon a range with no bytes for this long [DOWNLOADER_STALL_TIMEOUT, 60]")
    p.add_argument("--max-attempts", help="attempts per range before failing [DOWNLOADER_MAX_ATTEMPTS, 10]")
    p.add_argument("--lock-timeout", help="max seconds to wait for another process's download; 0 = no limit")
    p.add_argument("--reserve-space", help="bytes to keep free on the target filesystem [DOWNLOADER_RESERVE_SPACE]")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint [AWS_ENDPOINT_URL]")
    p.add_argument("--region", help="[AWS_REGION, AWS_DEFAULT_REGION]")
    p.add_argument("--s3-addressing-style", help="auto, path or virtual [DOWNLOADER_S3_ADDRESSING_STYLE]")
    p.add_argument("--local-mode", help="file:// sources: copy or link (use in place) [DOWNLOADER_LOCAL_MODE, copy]")
    p.add_argument(
        "--verify",
        help="strict (size and the best published checksum), etag (S3: size and ETag only) or size "
        "[DOWNLOADER_VERIFY, strict]",
    )
    p.add_argument("--log-level", help="debug, info, warning, error [DOWNLOADER_LOG_LEVEL, info]")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _env_bool(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    return parse_bool(name, raw)


def _first(*values: Any) -> Any:
    """First value that was actually given (None means 'not given'; empty env values count as not given)."""
    for v in values:
        if v is None:
            continue
        if isinstance(v, str) and v.strip() == "":
            continue
        return v
    return None


def _pick(flag: Any, extra: Mapping[str, Any], key: str, env: Mapping[str, str], *env_names: str) -> tuple[Any, str]:
    """Value and the name of the setting it came from (for error messages)."""
    if flag is not None:
        return flag, "--" + key.replace("_", "-")
    if key in extra and extra[key] is not None:
        return extra[key], f"--download-extra-config {key}"
    for name in env_names:
        raw = env.get(name)
        if raw is not None and raw.strip() != "":
            return raw, name
    return None, ""


def parse_extra_config(raw: str | None) -> dict[str, Any]:
    if raw is None or raw.strip() == "":
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError("--download-extra-config", None, f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    except (RecursionError, ValueError) as exc:  # nesting too deep, or an integer longer than Python converts
        raise ConfigError(
            "--download-extra-config", None, "not valid JSON (nested too deeply or a number too long)"
        ) from exc
    if not isinstance(value, dict):
        raise ConfigError("--download-extra-config", None, "must be a JSON object")
    unknown = sorted(set(value) - EXTRA_CONFIG_KEYS)
    if unknown:
        raise ConfigError(
            "--download-extra-config",
            None,
            f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(EXTRA_CONFIG_KEYS))}",
        )
    return value


def load_settings(argv: Sequence[str] | None, env: Mapping[str, str]) -> Settings:
    """Parse flags and environment into Settings. Raises ConfigError (argparse exits 2 on usage errors)."""
    args = build_arg_parser().parse_args(argv)
    return settings_from(args, env)


def settings_from(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    warnings: list[str] = []
    extra = parse_extra_config(args.download_extra_config)
    for secret_key in ("ak", "sk", "hf_token"):
        if extra.get(secret_key):
            warnings.append(
                f"--download-extra-config {secret_key} puts a secret in the pod spec and process table; "
                "prefer the environment from a Secret"
            )
    unknown_env = sorted(k for k in env if k.startswith("DOWNLOADER_") and k not in KNOWN_ENV)
    for name in unknown_env:
        warnings.append(f"ignoring unknown environment variable {name}")

    uri = parse_model_uri(args.model_uri)

    local_dir = _first(args.local_dir, env.get("DOWNLOADER_LOCAL_DIR"), DEFAULT_LOCAL_DIR)
    if "\x00" in local_dir:
        raise ConfigError("--local-dir", local_dir, "contains a NUL byte")
    model_name = validate_model_name(_first(args.model_name, env.get("DOWNLOADER_MODEL_NAME"), uri.default_model_name))

    raw, name = _pick(args.allow_file_suffix, extra, "allow_file_suffix", env, "DOWNLOADER_ALLOW_FILE_SUFFIX")
    allow_suffixes = parse_suffixes(name, raw) if raw is not None else ()
    include = parse_patterns(
        "--include", args.include or ([env["DOWNLOADER_INCLUDE"]] if env.get("DOWNLOADER_INCLUDE") else [])
    )
    exclude = parse_patterns(
        "--exclude", args.exclude or ([env["DOWNLOADER_EXCLUDE"]] if env.get("DOWNLOADER_EXCLUDE") else [])
    )

    raw, name = _pick(args.num_threads, extra, "num_threads", env, "DOWNLOADER_NUM_THREADS")
    num_threads = parse_int(name, raw, minimum=1, maximum=1024) if raw is not None else 32
    raw, name = _pick(args.part_threshold, extra, "part_threshold", env, "DOWNLOADER_PART_THRESHOLD")
    part_threshold = parse_size(name, raw, minimum=1) if raw is not None else 64 * MiB
    raw, name = _pick(args.part_chunksize, extra, "part_chunksize", env, "DOWNLOADER_PART_CHUNKSIZE")
    part_chunksize = parse_size(name, raw, minimum=64 * 1024) if raw is not None else 64 * MiB
    raw, name = _pick(args.buffer_size, {}, "buffer_size", env, "DOWNLOADER_BUFFER_SIZE")
    buffer_size = parse_size(name, raw, minimum=4096, maximum=64 * MiB) if raw is not None else 1 * MiB

    # Compatibility settings we accept and validate but do not need (our engine has no io queue).
    if env.get("DOWNLOADER_S3_MAX_IO_QUEUE"):
        parse_int("DOWNLOADER_S3_MAX_IO_QUEUE", env["DOWNLOADER_S3_MAX_IO_QUEUE"], minimum=1, maximum=1 << 20)
    if env.get("DOWNLOADER_S3_IO_CHUNKSIZE"):
        parse_size("DOWNLOADER_S3_IO_CHUNKSIZE", env["DOWNLOADER_S3_IO_CHUNKSIZE"])
    if extra.get("max_io_queue") is not None:
        parse_int("--download-extra-config max_io_queue", extra["max_io_queue"], minimum=1, maximum=1 << 20)
    if extra.get("io_chunksize") is not None:
        parse_size("--download-extra-config io_chunksize", extra["io_chunksize"])
    if env.get("DOWNLOADER_TOS_VERSION"):
        parse_choice("DOWNLOADER_TOS_VERSION", env["DOWNLOADER_TOS_VERSION"], ("v1", "v2"))

    raw, name = _pick(args.force_download, extra, "force_download", env, "DOWNLOADER_FORCE_DOWNLOAD")
    force = parse_bool(name, raw) if raw is not None else False
    check_exist = _env_bool(env, "DOWNLOADER_CHECK_FILE_EXIST")
    if check_exist is False and args.force_download is None:
        force = True  # AIBrix: CHECK_FILE_EXIST=0 means "do not trust what is on disk"
    dry_run = args.dry_run if args.dry_run is not None else bool(_env_bool(env, "DOWNLOADER_DRY_RUN"))
    page_cache = _page_cache(args, env)
    fast_paths = (
        args.fast_paths if args.fast_paths is not None else _env_bool(env, "DOWNLOADER_FAST_PATHS") is not False
    )

    if args.enable_progress_bar and args.progress is None:
        progress = "bar"
    else:
        raw = _first(args.progress, env.get("DOWNLOADER_PROGRESS"), "auto")
        progress = parse_choice(
            "--progress" if args.progress else "DOWNLOADER_PROGRESS", raw, ("auto", "bar", "lines", "none")
        )
    raw, name = _pick(args.progress_interval, {}, "progress_interval", env, "DOWNLOADER_PROGRESS_INTERVAL")
    progress_interval = parse_seconds(name, raw, minimum=0.1) if raw is not None else 5.0
    raw, name = _pick(args.stall_timeout, {}, "stall_timeout", env, "DOWNLOADER_STALL_TIMEOUT")
    stall_timeout = parse_seconds(name, raw, minimum=0.1) if raw is not None else 60.0
    raw, name = _pick(args.max_attempts, {}, "max_attempts", env, "DOWNLOADER_MAX_ATTEMPTS")
    max_attempts = parse_int(name, raw, minimum=1, maximum=1000) if raw is not None else 10
    raw, name = _pick(args.lock_timeout, {}, "lock_timeout", env, "DOWNLOADER_LOCK_TIMEOUT")
    lock_timeout = parse_seconds(name, raw) if raw is not None else 0.0
    raw, name = _pick(args.reserve_space, {}, "reserve_space", env, "DOWNLOADER_RESERVE_SPACE")
    reserve_space = parse_size(name, raw, minimum=0) if raw is not None else 0
    raw = _first(args.log_level, env.get("DOWNLOADER_LOG_LEVEL"), "info")
    log_level = parse_choice(
        "--log-level" if args.log_level else "DOWNLOADER_LOG_LEVEL", raw, ("debug", "info", "warning", "error")
    )

    s3 = _s3_settings(args, extra, env, uri)
    gcs = GcsSettings(
        emulator_host=_first(env.get("STORAGE_EMULATOR_HOST")),
        project=_first(env.get("GOOGLE_CLOUD_PROJECT"), env.get("GCLOUD_PROJECT")),
    )
    hf = _hf_settings(extra, env, uri)
    raw = _first(args.local_mode, env.get("DOWNLOADER_LOCAL_MODE"), "copy")
    local_mode = parse_choice("--local-mode" if args.local_mode else "DOWNLOADER_LOCAL_MODE", raw, ("copy", "link"))
    raw, name = _pick(args.verify, extra, "verify", env, "DOWNLOADER_VERIFY")
    verify = (
        VerifyMode(parse_choice(name, raw, [m.value for m in VerifyMode])) if raw is not None else VerifyMode.STRICT
    )

    return Settings(
        uri=uri,
        local_dir=local_dir,
        model_name=model_name,
        allow_suffixes=allow_suffixes,
        include=include,
        exclude=exclude,
        num_threads=num_threads,
        part_threshold=part_threshold,
        part_chunksize=part_chunksize,
        buffer_size=buffer_size,
        page_cache=page_cache,
        fast_paths=fast_paths,
        force_download=force,
        dry_run=dry_run,
        progress=progress,
        progress_interval=progress_interval,
        stall_timeout=stall_timeout,
        max_attempts=max_attempts,
        lock_timeout=lock_timeout,
        reserve_space=reserve_space,
        log_level=log_level.upper(),
        s3=s3,
        gcs=gcs,
        hf=hf,
        local_mode=local_mode,
        verify=verify,
        warnings=tuple(warnings),
    )


def _page_cache(args: argparse.Namespace, env: Mapping[str, str]) -> PageCache:
    """--page-cache, or its older boolean spelling --direct-io (flags before the environment, each time)."""
    choices = [p.value for p in PageCache]
    legacy_flag = None if args.direct_io is None else PageCache.BYPASS if args.direct_io else PageCache.KEEP
    if args.page_cache is not None:
        chosen = PageCache(parse_choice("--page-cache", args.page_cache, choices))
        if legacy_flag is not None and legacy_flag is not chosen:
            raise ConfigError("--direct-io", args.direct_io, f"contradicts --page-cache {chosen.value}")
        return chosen
    if legacy_flag is not None:
        return legacy_flag
    if env.get("DOWNLOADER_PAGE_CACHE", "").strip():
        return PageCache(parse_choice("DOWNLOADER_PAGE_CACHE", env["DOWNLOADER_PAGE_CACHE"], choices))
    legacy_env = _env_bool(env, "DOWNLOADER_DIRECT_IO")
    if legacy_env is not None:
        return PageCache.BYPASS if legacy_env else PageCache.KEEP
    return PageCache.AUTO


def _hf_settings(extra: Mapping[str, Any], env: Mapping[str, str], uri: ModelUri) -> HfSettings:
    endpoint = str(_first(extra.get("hf_endpoint"), env.get("HF_ENDPOINT"), "https://huggingface.co")).strip()
    if not re.match(r"^https?://[^/\s]+", endpoint):
        raise ConfigError("HF_ENDPOINT", endpoint, "must start with http:// or https:// and name a host")
    token = _first(extra.get("hf_token"), env.get("HF_TOKEN"), env.get("HUGGING_FACE_HUB_TOKEN"))
    revision = str(_first(uri.revision, extra.get("hf_revision"), env.get("HF_REVISION"), "main")).strip()
    if not revision or any(c in revision for c in "\x00\n ") or ".." in revision:
        raise ConfigError("revision", revision, "is not a valid branch, tag or commit")
    return HfSettings(
        endpoint=endpoint.rstrip("/"), token=Secret(str(token)) if token is not None else None, revision=revision
    )


def _s3_settings(
    args: argparse.Namespace, extra: Mapping[str, Any], env: Mapping[str, str], uri: ModelUri
) -> S3Settings:
    tos = uri.scheme == "tos"
    endpoint = _first(
        args.endpoint_url,
        extra.get("endpoint"),
        env.get("TOS_ENDPOINT") if tos else None,
        env.get("AWS_ENDPOINT_URL_S3"),
        env.get("AWS_ENDPOINT_URL"),
    )
    if endpoint is not None:
        endpoint = str(endpoint).strip()
        if not re.match(r"^https?://[^/\s]+", endpoint):
            raise ConfigError("endpoint URL", endpoint, "must start with http:// or https:// and name a host")
    if tos and endpoint is None:
        raise ConfigError("TOS_ENDPOINT", None, "tos:// needs an endpoint URL (TOS_ENDPOINT, with the scheme)")
    region = _first(
        args.region,
        extra.get("region"),
        env.get("TOS_REGION") if tos else None,
        env.get("AWS_REGION"),
        env.get("AWS_DEFAULT_REGION"),
    )
    ak = _first(extra.get("ak"), env.get("TOS_ACCESS_KEY") if tos else None)
    sk = _first(extra.get("sk"), env.get("TOS_SECRET_KEY") if tos else None)
    if (ak is None) != (sk is None):
        raise ConfigError("credentials", None, "an access key needs its secret key and vice versa")
    token = None
    if ak is None:
        # The environment's keys, first in the AWS credential chain (botocore's finds the rest, when they are absent).
        ak, sk = _first(env.get("AWS_ACCESS_KEY_ID")), _first(env.get("AWS_SECRET_ACCESS_KEY"))
        token = _first(env.get("AWS_SESSION_TOKEN"), env.get("AWS_SECURITY_TOKEN")) if ak and sk else None
        if ak is None or sk is None:
            ak = sk = None
    raw = _first(args.s3_addressing_style, env.get("DOWNLOADER_S3_ADDRESSING_STYLE"), "virtual" if tos else "auto")
    style = parse_choice(
        "--s3-addressing-style" if args.s3_addressing_style else "DOWNLOADER_S3_ADDRESSING_STYLE",
        raw,
        ("auto", "path", "virtual"),
    )
    # Neither the CRT's client nor the REST transport takes a proxy: where one is set, boto3's transport, which
    # honours it, carries every request unless the CRT is asked for explicitly.
    proxied = any(env.get(v) for v in _PROXY_VARIABLES)
    crt = args.s3_crt if args.s3_crt is not None else _env_bool(env, "DOWNLOADER_S3_CRT")
    if crt is None:
        crt = not proxied
    ca_bundle = (env.get("AWS_CA_BUNDLE") or "").strip() or None
    return S3Settings(
        endpoint_url=endpoint,
        region=str(region) if region is not None else None,
        access_key=Secret(str(ak)) if ak is not None else None,
        secret_key=Secret(str(sk)) if sk is not None else None,
        session_token=Secret(str(token)) if token is not None else None,
        addressing_style=style,
        crt=crt,
        ca_bundle=ca_bundle,
        proxied=proxied,
    )
