"""Settings: command-line flags > --download-extra-config > environment > defaults, parsed once, strictly.

This is the only module of the downloader that reads the environment. Everything else takes a `Settings`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from . import __version__
from .allocator import user_sets_allocator
from .concurrency import (
    AUTO_BUFFER_BUDGET,
    AUTO_MAX_REQUESTS,
    AUTO_WORKERS_MAX,
    AUTO_WORKERS_MIN_BYTES,
    CPUS_PER_WORKER,
    FIXED_REQUESTS,
    MAX_WORKERS,
    ConnectionsMode,
)
from .errors import ConfigError
from .inventory import CACHE_DIR_NAME
from .options import (
    LOG_LEVEL,
    Kind,
    Lookup,
    Option,
    Options,
    Where,
    choice,
    integer,
    parse_bool,
    parse_choice,
    parse_int,
    parse_url,
    seconds,
    size,
)
from .pagecache import PageCache
from .uri import ModelUri, parse_model_uri

MiB = 1024 * 1024
DEFAULT_LOCAL_DIR = "/tmp/aibrix/models/"

_SUFFIX_LEAD = re.compile(r"^[\s.]+")
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


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
    # Credentials: Application Default Credentials (workload identity, GOOGLE_APPLICATION_CREDENTIALS),
    # resolved by google-auth itself. No request names a project, so none is configured.


@dataclass(frozen=True)
class HfSettings:
    endpoint: str = "https://huggingface.co"  # HF_ENDPOINT or a mirror
    token: Secret | None = None  # HF_TOKEN
    revision: str = "main"  # @revision in the URI > hf_revision > HF_REVISION > main


@dataclass(frozen=True)
class PeerSettings:
    """Cooperative download (docs/design.md, "Cooperative download"): the members of the group, this member's own
    URL among them, the group's shared token and how long a peer may keep us waiting for a byte."""

    members: tuple[str, ...]  # member URLs (http://host:port), and dns+http://name:port for every address of a name
    self_url: str  # http://host:port, as the other members reach this member's sidecar
    token: Secret
    stall_timeout: float = 30.0


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
    workers: int | None = None  # processes that fetch; None: auto (downloader/workers.py)
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
    cache_max_size: int | None = None  # the node cache's budget for every model under local_dir; None: no budget
    hold: bool = False  # after the download, hold a lease on the model until SIGTERM/SIGINT
    peers: PeerSettings | None = None  # None: no cooperation, every byte from the source
    tune_allocator: bool = True  # set glibc's malloc thresholds (downloader/allocator.py); off where the user does
    warnings: tuple[str, ...] = ()

    @property
    def model_dir(self) -> str:
        import os.path

        return os.path.join(os.path.abspath(self.local_dir), self.model_name)


# ----------------------------------------------------------------------------------------------- parsing


def parse_workers(setting: str, raw: object) -> int | None:
    """'auto' (None) or a count of processes."""
    if isinstance(raw, str) and raw.strip().lower() == "auto":
        return None
    return parse_int(setting, raw, minimum=1, maximum=MAX_WORKERS)


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


def parse_patterns(setting: str, raws: Sequence[str] | str) -> tuple[str, ...]:
    """Globs: a repeated flag's values, or one comma list (the environment's); each may itself be a comma list."""
    out: list[str] = []
    for raw in [raws] if isinstance(raws, str) else raws:
        for item in raw.split(","):
            pattern = item.strip()
            if not pattern:
                continue
            if "\x00" in pattern:
                raise ConfigError(setting, raw, "contains a NUL byte")
            out.append(pattern)
    return tuple(dict.fromkeys(out))


def validate_model_name(name: str | None, setting: str = "--model-name") -> str:
    if not name or not name.strip():
        raise ConfigError(setting, name, "cannot be derived from the URI (it has no last segment); pass --model-name")
    parts = name.split("/")
    if not name or name.startswith("/") or "\\" in name or "\x00" in name or any(p in ("", ".", "..") for p in parts):
        raise ConfigError(setting, name, "must be a relative name without '..', empty parts or backslashes")
    if parts[0] == CACHE_DIR_NAME:
        raise ConfigError(setting, name, f"{CACHE_DIR_NAME} is the node cache's own directory")
    return name


def parse_extra_config(setting: str, raw: object) -> dict[str, Any]:
    if raw is None or str(raw).strip() == "":
        return {}
    try:
        value = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise ConfigError(setting, None, f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    except (RecursionError, ValueError) as exc:  # nesting too deep, or an integer longer than Python converts
        raise ConfigError(setting, None, "not valid JSON (nested too deeply or a number too long)") from exc
    if not isinstance(value, dict):
        raise ConfigError(setting, None, "must be a JSON object")
    unknown = sorted(set(value) - OPTIONS.extra_keys)
    if unknown:
        raise ConfigError(
            setting, None, f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(OPTIONS.extra_keys))}"
        )
    return value


def _secret(setting: str, raw: object) -> Secret:
    return Secret(str(raw))


# ------------------------------------------------------------------------------------------- the settings

_COMPAT = "AIBrix's setting, accepted and validated; no effect (it tunes boto3 internals this engine does not use)"

OPTIONS = Options(
    Option(
        "model_uri",
        "s3://, tos://, gs://bucket/prefix/, hf://org/name[@rev] or org/name, file:///path or /path",
        required=True,
        doc="`s3://bucket/prefix/`, `tos://bucket/prefix/`, `gs://bucket/prefix/`, `hf://org/name[@rev]` or "
        "`org/name`, `file:///path` or `/path`",
    ),
    Option("local_dir", "base directory", env=("DOWNLOADER_LOCAL_DIR",), default=DEFAULT_LOCAL_DIR),
    Option(
        "model_name",
        "directory under --local-dir (may contain /)",
        env=("DOWNLOADER_MODEL_NAME",),
        parse=lambda setting, raw: validate_model_name(str(raw), setting),
        default_doc="last URI segment",
    ),
    Option(
        "allow_file_suffix",
        "comma list of suffixes, e.g. json,safetensors,py",
        env=("DOWNLOADER_ALLOW_FILE_SUFFIX",),
        parse=parse_suffixes,
        extra="allow_file_suffix",
        default_doc="all files",
    ),
    Option(
        "include",
        "globs on the relative path to keep; repeatable",
        env=("DOWNLOADER_INCLUDE",),
        parse=parse_patterns,
        kind=Kind.REPEAT,
    ),
    Option(
        "exclude",
        "globs on the relative path to drop; repeatable",
        env=("DOWNLOADER_EXCLUDE",),
        parse=parse_patterns,
        kind=Kind.REPEAT,
    ),
    Option(
        "num_threads",
        "requests in flight for the whole download (1-1024): the most with --connections auto, the count with fixed",
        env=("DOWNLOADER_NUM_THREADS",),
        parse=integer(1, 1024),
        extra="num_threads",
        default_doc=f"{AUTO_MAX_REQUESTS} (auto), {FIXED_REQUESTS} (fixed)",
        doc="requests (GETs, and the HEADs that precede a file's ranges) in flight for the whole download "
        "(1-1024): with `--connections auto` the most the download may use, with `fixed` the number it uses; "
        "each takes a `--buffer-size` buffer while it is in flight. The listing and HEAD calls keep their own few "
        "keep-alive connections, so up to ~`N + 4` connections may be open, and S3's native client for small "
        "files keeps a pool of its own of at most `N` ([BENCHMARKS.md](../BENCHMARKS.md))",
    ),
    Option(
        "connections",
        "auto (as many requests in flight as raise the aggregate rate, up to --num-threads) or fixed",
        env=("DOWNLOADER_CONNECTIONS",),
        default="auto",
        parse=lambda setting, raw: ConnectionsMode(parse_choice(setting, raw, [m.value for m in ConnectionsMode])),
        doc="`auto`: start at 32 requests in flight (what `fixed` keeps; fewer under a smaller cap) and raise the "
        "number while the aggregate rate rises with it and the CPUs have spare time for a higher rate, "
        "lower it on throttling (503 SlowDown, 429) or where fewer are as fast, never above `--num-threads` nor "
        f"above {AUTO_BUFFER_BUDGET // MiB} MiB of `--buffer-size` buffers "
        f"({AUTO_BUFFER_BUDGET // MiB} requests at 1 MiB); "
        "`fixed`: `--num-threads` requests in flight all along ([docs/design.md](design.md))",
    ),
    Option(
        "workers",
        f"processes that fetch (1-{MAX_WORKERS}), or auto: one per {CPUS_PER_WORKER} CPUs this process may use",
        env=("DOWNLOADER_WORKERS",),
        default="auto",
        parse=parse_workers,
        doc=f"processes that fetch (1-{MAX_WORKERS}): one interpreter holds its lock for part of every GiB, which "
        "caps what one process can take in; with more than one, this process lists, plans, and writes the "
        "manifest, and each worker process fetches a share of the files into the same directory and journals, "
        "with `--num-threads` divided among them. `auto`: one per "
        f"{CPUS_PER_WORKER} CPUs the process may use (its affinity and its cgroup's CPU quota), at most "
        f"{AUTO_WORKERS_MAX}, and one when less than {AUTO_WORKERS_MIN_BYTES // 2**30} GiB is to be fetched or "
        "for a cooperative download ([docs/design.md](design.md))",
    ),
    Option(
        "part_threshold",
        "files from this size are fetched in ranges",
        env=("DOWNLOADER_PART_THRESHOLD",),
        default="64MiB",
        parse=size(1),
        extra="part_threshold",
    ),
    Option(
        "part_chunksize",
        "range size (rounded to whole multipart parts)",
        env=("DOWNLOADER_PART_CHUNKSIZE",),
        default="64MiB",
        parse=size(64 * 1024),
        extra="part_chunksize",
    ),
    Option(
        "buffer_size",
        "read buffer per connection (each full buffer is one write)",
        env=("DOWNLOADER_BUFFER_SIZE",),
        default="1MiB",
        parse=size(4096, 64 * MiB),
    ),
    Option(
        "page_cache",
        "auto, keep (written through the page cache: the weights are in memory at the end) or bypass (O_DIRECT)",
        env=("DOWNLOADER_PAGE_CACHE",),
        default="auto",
        parse=lambda setting, raw: PageCache(parse_choice(setting, raw, [p.value for p in PageCache])),
        doc="`keep`: write through the page cache, so the weights are in memory when the download ends (the "
        "engine's first load reads them from there); `bypass`: write with `O_DIRECT`, the least CPU, nothing left "
        "in memory; `auto`: `keep` when the bytes to fetch fit in 80 % of the memory this process may fill (the "
        "host's `MemAvailable`, and every memory cgroup limit above it, v1 or v2, less that group's non-file "
        "usage), else `bypass`. The log says which and why ([docs/design.md](design.md))",
    ),
    Option(
        "direct_io",
        "older spelling: --direct-io = --page-cache bypass, --no-direct-io = --page-cache keep",
        env=("DOWNLOADER_DIRECT_IO",),
        parse=parse_bool,
        kind=Kind.SWITCH,
        doc="the older spelling: `--page-cache bypass` / `keep`; `--page-cache` wins where both are set in one "
        "place, and contradicting flags are an error",
    ),
    Option(
        "fast_paths",
        "each backend's fast path (S3: signed requests over a lean HTTP client and the AWS CRT; local: in-kernel "
        "copies); off: only the SDKs' public paths",
        env=("DOWNLOADER_FAST_PATHS",),
        default="on",
        parse=parse_bool,
        kind=Kind.SWITCH,
        doc="each backend's fast path: S3's own REST transport (SigV4 signed here, no botocore on the way) and "
        "the AWS CRT for small objects; local files copied inside the kernel. Off: every backend through its "
        "SDK's public path only (S3: boto3's client for everything), for a store that misbehaves with them "
        "([docs/design.md](design.md))",
    ),
    Option(
        "s3_crt",
        "GET S3 objects that fit in one read buffer with the AWS CRT's native client",
        env=("DOWNLOADER_S3_CRT",),
        parse=parse_bool,
        kind=Kind.SWITCH,
        default_doc="on, off when `HTTP(S)_PROXY`/`ALL_PROXY` is set",
        doc="GET S3 objects that fit in one read buffer with the AWS CRT's native client ([docs/design.md](design.md))",
    ),
    Option(
        "force_download",
        "ignore what is on disk and fetch everything again",
        env=("DOWNLOADER_FORCE_DOWNLOAD",),
        default="false",
        parse=parse_bool,
        kind=Kind.SWITCH,
        extra="force_download",
    ),
    Option(
        "check_file_exist",
        "AIBrix's switch: `0` means the same as force-download",
        env=("DOWNLOADER_CHECK_FILE_EXIST",),
        default="true",
        parse=parse_bool,
        kind=Kind.ENV,
    ),
    Option(
        "dry_run",
        "list what would be fetched; fetch nothing",
        env=("DOWNLOADER_DRY_RUN",),
        default="false",
        parse=parse_bool,
        kind=Kind.SWITCH,
    ),
    Option(
        "progress",
        "auto, bar, lines or none; auto = bar on a TTY",
        env=("DOWNLOADER_PROGRESS",),
        default="auto",
        parse=choice("auto", "bar", "lines", "none"),
    ),
    Option("enable_progress_bar", "AIBrix's spelling of --progress bar", parse=parse_bool, kind=Kind.TRUE),
    Option(
        "progress_interval",
        "seconds between progress lines",
        env=("DOWNLOADER_PROGRESS_INTERVAL",),
        default="5",
        parse=seconds(0.1),
    ),
    Option(
        "stall_timeout",
        "seconds without a byte before a range is retried",
        env=("DOWNLOADER_STALL_TIMEOUT",),
        default="60",
        parse=seconds(0.1),
    ),
    Option(
        "max_attempts",
        "attempts of each request (a range, a HEAD, the listing) before the run fails",
        env=("DOWNLOADER_MAX_ATTEMPTS",),
        default="10",
        parse=integer(1, 1000),
        doc="attempts of each request (a range, a HEAD, the listing) before the run fails: the first one included, "
        "and no library retries on top",
    ),
    Option(
        "lock_timeout",
        "max seconds to wait for another process's download; 0 = no limit",
        env=("DOWNLOADER_LOCK_TIMEOUT",),
        default="0",
        parse=seconds(),
    ),
    Option(
        "reserve_space",
        "bytes to leave free on the target filesystem",
        env=("DOWNLOADER_RESERVE_SPACE",),
        default="0",
        parse=size(0),
    ),
    Option(
        "cache_max_size",
        "budget for every model under --local-dir together: before fetching, models not in use are evicted (least "
        "recently used first) to make room; exit 8 when they cannot",
        env=("DOWNLOADER_CACHE_MAX_SIZE",),
        parse=size(1),
        default_doc="no budget",
        doc="the node cache's budget for every model under `--local-dir` together: models not in use are evicted, "
        "least recently used first, to make room before anything is fetched; exit 8 when they cannot "
        "([The node cache](#the-node-cache))",
    ),
    Option(
        "hold",
        "once the model is complete, hold a lease on it (it is not evicted) until SIGTERM or SIGINT, then exit 0",
        parse=parse_bool,
        kind=Kind.TRUE,
        doc="once the model is complete, hold a lease on it (it is not evicted) until SIGTERM or SIGINT, then exit "
        "0: for an engine run without the sidecar or the runtime",
    ),
    Option(
        "endpoint_url",
        "S3-compatible endpoint",
        env=("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        parse=parse_url,
        extra="endpoint",
        env_doc="`TOS_ENDPOINT` first for tos://",
        default_doc="AWS",
    ),
    Option(
        "region",
        "the S3 region",
        env=("AWS_REGION", "AWS_DEFAULT_REGION"),
        extra="region",
        env_doc="`TOS_REGION` first for tos://",
        default_doc="SDK default",
    ),
    Option(
        "access_key",
        "S3 access key (the secret key must come from the same place)",
        kind=Kind.ENV,
        extra="ak",
        parse=_secret,
        env_doc="`TOS_ACCESS_KEY` for tos://, then `AWS_ACCESS_KEY_ID` (see below)",
        default_doc="the AWS credential chain",
    ),
    Option(
        "secret_key",
        "S3 secret key",
        kind=Kind.ENV,
        extra="sk",
        parse=_secret,
        env_doc="`TOS_SECRET_KEY` for tos://, then `AWS_SECRET_ACCESS_KEY`",
        default_doc="the AWS credential chain",
    ),
    Option(
        "s3_addressing_style",
        "auto, path or virtual",
        env=("DOWNLOADER_S3_ADDRESSING_STYLE",),
        parse=choice("auto", "path", "virtual"),
        default_doc="auto (virtual for tos://)",
    ),
    Option(
        "ca_bundle",
        "a PEM file of the certificate authorities every S3 transport trusts",
        env=("AWS_CA_BUNDLE",),
        kind=Kind.ENV,
        default_doc="the system's",
    ),
    Option(
        "storage_emulator_host",
        "gs://: this endpoint with anonymous credentials (fake-gcs-server and similar)",
        env=("STORAGE_EMULATOR_HOST",),
        kind=Kind.ENV,
    ),
    Option(
        "hf_endpoint",
        "Hugging Face endpoint or mirror",
        env=("HF_ENDPOINT",),
        kind=Kind.ENV,
        default="https://huggingface.co",
        parse=parse_url,
        extra="hf_endpoint",
    ),
    Option(
        "hf_token",
        "Hugging Face token",
        env=("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"),
        kind=Kind.ENV,
        parse=_secret,
        extra="hf_token",
    ),
    Option(
        "hf_revision",
        "revision when the URI names none (`@revision` in the URI comes first)",
        env=("HF_REVISION",),
        kind=Kind.ENV,
        default="main",
        extra="hf_revision",
    ),
    Option(
        "local_mode",
        "file:// sources: copy, or link to use the files in place",
        env=("DOWNLOADER_LOCAL_MODE",),
        default="copy",
        parse=choice("copy", "link"),
    ),
    Option(
        "verify",
        "strict (size and the best published checksum), etag (S3: size and ETag only) or size",
        env=("DOWNLOADER_VERIFY",),
        default="strict",
        parse=lambda setting, raw: VerifyMode(parse_choice(setting, raw, [m.value for m in VerifyMode])),
        extra="verify",
        doc="`strict`, `etag` or `size`: what a file must match ([docs/verification.md](verification.md))",
    ),
    Option(
        "log_level",
        "debug, info, warning or error; debug also prints tracebacks of internal errors",
        env=("DOWNLOADER_LOG_LEVEL",),
        default="info",
        parse=LOG_LEVEL,
    ),
    Option(
        "peers",
        "cooperative download: the group's members, comma-separated, each http://host:port (a member's sidecar) or "
        "dns+http://name:port (every address of the name, e.g. a headless Service)",
        env=("DOWNLOADER_PEERS",),
        parse=lambda setting, raw: _members(setting, raw),
        default_doc="none: every byte from the source",
        group="cooperative download",
    ),
    Option(
        "peer_self",
        "this member's URL as the others reach it, e.g. http://10.0.0.5:8080 (its sidecar's port)",
        env=("DOWNLOADER_PEER_SELF",),
        parse=lambda setting, raw: _member_self(setting, raw),
        default_doc="required with --peers",
        group="cooperative download",
    ),
    Option(
        "peer_token_file",
        "file holding the group's shared token (a mounted Secret)",
        env=("DOWNLOADER_PEER_TOKEN_FILE",),
        default_doc="required with --peers, or DOWNLOADER_PEER_TOKEN",
        group="cooperative download",
    ),
    Option(
        "peer_token",
        "the group's shared token itself (from a Secret; never a flag: a command line is seen by every process)",
        env=("DOWNLOADER_PEER_TOKEN",),
        kind=Kind.ENV,
        parse=_secret,
    ),
    Option(
        "peer_stall_timeout",
        "seconds a peer may keep us waiting for a byte before that range comes from the source",
        env=("DOWNLOADER_PEER_STALL_TIMEOUT",),
        default="30",
        parse=seconds(0.5, 3600),
        group="cooperative download",
    ),
    Option(
        "download_extra_config",
        "JSON object with AIBrix's extra keys (ak, sk, endpoint, ...)",
        parse=parse_extra_config,
        doc="JSON object with AIBrix's keys: the `--download-extra-config` keys above",
    ),
    Option(
        "s3_max_io_queue",
        _COMPAT,
        env=("DOWNLOADER_S3_MAX_IO_QUEUE",),
        kind=Kind.ENV,
        parse=integer(1, 1 << 20),
        extra="max_io_queue",
    ),
    Option(
        "s3_io_chunksize",
        _COMPAT,
        env=("DOWNLOADER_S3_IO_CHUNKSIZE",),
        kind=Kind.ENV,
        parse=size(),
        extra="io_chunksize",
    ),
    Option("tos_version", _COMPAT, env=("DOWNLOADER_TOS_VERSION",), kind=Kind.ENV, parse=choice("v1", "v2")),
    env_prefix="DOWNLOADER_",
    doc_rows=[("`--version`", "", "", "print the version and exit")],
)


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aibrix-download",
        allow_abbrev=False,  # a flag is spelt in full: --num-thread must not quietly mean --num-threads
        description="Download model weights from object storage into a node-local directory: parallel, "
        "ranged, filtered, resumable, verified, one download per node. Settings: flag > "
        "--download-extra-config > environment > default (see docs/downloader.md).",
        epilog="The node cache (many models under one --local-dir, a budget, leases, eviction): "
        "aibrix-download cache {ls,rm,gc} --help.",
    )
    OPTIONS.add_arguments(p)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def load_settings(argv: Sequence[str] | None, env: Mapping[str, str]) -> Settings:
    """Parse flags and environment into Settings. Raises ConfigError (argparse exits 2 on usage errors)."""
    args = build_arg_parser().parse_args(argv)
    return settings_from(args, env)


def settings_from(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    extra = parse_extra_config("--download-extra-config", args.download_extra_config)
    get = OPTIONS.lookup(args, env, extra)
    warnings: list[str] = []
    for secret_key in ("ak", "sk", "hf_token"):
        if extra.get(secret_key):
            warnings.append(
                f"--download-extra-config {secret_key} puts a secret in the pod spec and process table; "
                "prefer the environment from a Secret"
            )
    warnings += [f"ignoring unknown environment variable {name}" for name in OPTIONS.unknown_env(env)]

    uri = parse_model_uri(args.model_uri)
    model_name = get.value("model_name")
    if model_name is None:
        model_name = validate_model_name(uri.default_model_name)

    # Compatibility settings, validated but not needed (our engine has no io queue).
    for name in ("s3_max_io_queue", "s3_io_chunksize", "tos_version"):
        get.value(name)

    force = get.value("force_download")
    if get.given("force_download").where is not Where.FLAG and not get.value("check_file_exist"):
        force = True  # AIBrix: CHECK_FILE_EXIST=0 means "do not trust what is on disk"
    hold = bool(get.value("hold"))
    if hold and get.value("dry_run"):
        raise ConfigError("--hold", True, "a dry run fetches nothing, so there is nothing to hold")
    connections = get.value("connections")
    progress = get.value("progress")
    if get.value("enable_progress_bar") and get.given("progress").where is not Where.FLAG:
        progress = "bar"

    peers = None if get.value("dry_run") else _peer_settings(get)
    workers: int | None = get.value("workers")
    if peers is not None and workers is not None and workers > 1:
        raise ConfigError(get.given("workers").source, workers, "a cooperative download (--peers) runs in one process")

    return Settings(
        uri=uri,
        local_dir=get.value("local_dir"),
        model_name=model_name,
        allow_suffixes=get.value("allow_file_suffix") or (),
        include=get.value("include") or (),
        exclude=get.value("exclude") or (),
        connections=connections,
        num_threads=_num_threads(get, connections),
        workers=workers,
        part_threshold=get.value("part_threshold"),
        part_chunksize=get.value("part_chunksize"),
        buffer_size=get.value("buffer_size"),
        page_cache=_page_cache(get),
        fast_paths=get.value("fast_paths"),
        force_download=force,
        dry_run=get.value("dry_run"),
        progress=progress,
        progress_interval=get.value("progress_interval"),
        stall_timeout=get.value("stall_timeout"),
        max_attempts=get.value("max_attempts"),
        lock_timeout=get.value("lock_timeout"),
        reserve_space=get.value("reserve_space"),
        log_level=get.value("log_level").upper(),
        s3=_s3_settings(get, env, uri),
        gcs=GcsSettings(emulator_host=get.value("storage_emulator_host")),
        hf=_hf_settings(get, uri),
        local_mode=get.value("local_mode"),
        verify=get.value("verify"),
        cache_max_size=get.value("cache_max_size"),
        hold=hold,
        peers=peers,
        tune_allocator=not user_sets_allocator(env),
        warnings=tuple(warnings),
    )


def _num_threads(get: Lookup, connections: ConnectionsMode) -> int:
    given: int | None = get.value("num_threads")
    if given is not None:
        return given
    return AUTO_MAX_REQUESTS if connections is ConnectionsMode.AUTO else FIXED_REQUESTS


def _page_cache(get: Lookup) -> PageCache:
    """--page-cache, or its older boolean spelling --direct-io: flags before the environment, each time."""
    chosen, legacy = get.given("page_cache"), get.given("direct_io")

    def from_legacy() -> PageCache:
        return PageCache.BYPASS if get.value("direct_io") else PageCache.KEEP

    if chosen.where is Where.FLAG:
        page_cache: PageCache = get.value("page_cache")
        if legacy.where is Where.FLAG and from_legacy() is not page_cache:
            raise ConfigError("--direct-io", legacy.raw, f"contradicts --page-cache {page_cache.value}")
        return page_cache
    if legacy.where is Where.FLAG or (chosen.where is Where.DEFAULT and legacy.where is Where.ENV):
        return from_legacy()
    page_cache = get.value("page_cache")
    return page_cache


def _hf_settings(get: Lookup, uri: ModelUri) -> HfSettings:
    revision = uri.revision or get.value("hf_revision")
    revision = revision.strip()
    if not revision or any(c in revision for c in "\x00\n ") or ".." in revision:
        raise ConfigError("revision", revision, "is not a valid branch, tag or commit")
    return HfSettings(endpoint=get.value("hf_endpoint"), token=get.value("hf_token"), revision=revision)


def _s3_settings(get: Lookup, env: Mapping[str, str], uri: ModelUri) -> S3Settings:
    tos = uri.scheme == "tos"
    endpoint = get.value("endpoint_url", env_first=("TOS_ENDPOINT",) if tos else ())
    if tos and endpoint is None:
        raise ConfigError("TOS_ENDPOINT", None, "tos:// needs an endpoint URL (TOS_ENDPOINT, with the scheme)")
    region = get.value("region", env_first=("TOS_REGION",) if tos else ())
    ak = get.value("access_key", env_first=("TOS_ACCESS_KEY",) if tos else ())
    sk = get.value("secret_key", env_first=("TOS_SECRET_KEY",) if tos else ())
    if (ak is None) != (sk is None):
        raise ConfigError("credentials", None, "an access key needs its secret key and vice versa")
    token = None
    if ak is None:
        # The environment's keys, first in the AWS credential chain (botocore's finds the rest, when they are absent).
        ak, sk = _env_secret(env, "AWS_ACCESS_KEY_ID"), _env_secret(env, "AWS_SECRET_ACCESS_KEY")
        if ak is None or sk is None:
            ak = sk = None
        else:
            token = _env_secret(env, "AWS_SESSION_TOKEN") or _env_secret(env, "AWS_SECURITY_TOKEN")
    style = get.value("s3_addressing_style") or ("virtual" if tos else "auto")
    # Neither the CRT's client nor the REST transport takes a proxy: where one is set, boto3's transport, which
    # honours it, carries every request unless the CRT is asked for explicitly.
    proxied = any(env.get(v) for v in _PROXY_VARIABLES)
    crt = get.value("s3_crt")
    return S3Settings(
        endpoint_url=endpoint,
        region=region.strip() if region is not None else None,
        access_key=ak,
        secret_key=sk,
        session_token=token,
        addressing_style=style,
        crt=(not proxied) if crt is None else crt,
        ca_bundle=(get.value("ca_bundle") or "").strip() or None,
        proxied=proxied,
    )


def _env_secret(env: Mapping[str, str], name: str) -> Secret | None:
    raw = env.get(name)
    return Secret(raw) if raw is not None and raw.strip() else None


# ------------------------------------------------------------------------------ aibrix-download cache ls|rm|gc


class CacheAction(str, Enum):
    LS = "ls"  # the inventory
    RM = "rm"  # evict one model (refused while it is in use)
    GC = "gc"  # evict models not in use, least recently used first, down to a size


@dataclass(frozen=True)
class CacheSettings:
    """`aibrix-download cache ...`: the node cache under --local-dir (docs/downloader.md, "The node cache")."""

    action: CacheAction
    root: str
    name: str | None = None  # rm: the model (its directory under the root)
    max_size: int | None = None  # gc: the size to bring every model together under
    json: bool = False  # ls: one JSON document instead of the table
    log_level: str = "INFO"
    warnings: tuple[str, ...] = ()


# The cache commands' settings: the root and log level are the download's own rows.
CACHE_OPTIONS = Options(
    OPTIONS["local_dir"],
    Option("json", "one JSON document (for machines)", parse=parse_bool, kind=Kind.TRUE, scope=CacheAction.LS.value),
    Option(
        "max_size",
        "bring every model together under this size",
        env=("DOWNLOADER_CACHE_MAX_SIZE",),
        parse=size(0),
        scope=CacheAction.GC.value,
    ),
    OPTIONS["log_level"],
    env_prefix="DOWNLOADER_",
)
_CACHE_HELP = {
    CacheAction.LS: "every model: state, bytes, leases, last use, source and versions",
    CacheAction.RM: "remove one model; refused while it is in use",
    CacheAction.GC: "evict models not in use, least recently used first, down to --max-size",
}


def build_cache_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aibrix-download cache",
        allow_abbrev=False,
        description="The node cache: every model under --local-dir, their leases, and eviction.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="{ls,rm,gc}")
    for action in CacheAction:
        sub = actions.add_parser(action.value, allow_abbrev=False, help=_CACHE_HELP[action])
        if action is CacheAction.RM:
            sub.add_argument("name", metavar="NAME", help="the model's directory under --local-dir (its --model-name)")
        CACHE_OPTIONS.add_arguments(sub, scope=action.value)
    return p


def load_cache_settings(argv: Sequence[str], env: Mapping[str, str]) -> CacheSettings:
    """Parse `aibrix-download cache ...` (the arguments after `cache`). Raises ConfigError; argparse exits 2."""
    args = build_cache_parser().parse_args(argv)
    action = CacheAction(args.action)
    get = CACHE_OPTIONS.lookup(args, env)
    max_size = get.value("max_size") if action is CacheAction.GC else None
    if action is CacheAction.GC and max_size is None:
        raise ConfigError("--max-size", None, "cache gc needs the size to reach (or DOWNLOADER_CACHE_MAX_SIZE)")
    return CacheSettings(
        action=action,
        root=get.value("local_dir"),
        name=validate_model_name(args.name, "NAME") if action is CacheAction.RM else None,
        max_size=max_size,
        json=bool(get.value("json")) if action is CacheAction.LS else False,
        log_level=get.value("log_level").upper(),
        # the download's table knows every DOWNLOADER_* name a pod's environment may carry
        warnings=tuple(f"ignoring unknown environment variable {n}" for n in OPTIONS.unknown_env(env)),
    )


# ------------------------------------------------------------------------------------- cooperative download

# A member's URL: http, a host (a name, an IPv4 address or a bracketed IPv6 one) and a port; nothing after it.
_MEMBER_URL = re.compile(r"^(dns\+)?http://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?/?$")
MIN_PEER_TOKEN = 16


def member_url(host: str, port: int) -> str:
    """A member's URL in the one spelling every member uses for it (ownership is hashed over these strings): a
    lowercased name or the canonical form of an address, and the port always written."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"http://{host.lower().rstrip('.')}:{port}"
    return f"http://[{address.compressed}]:{port}" if address.version == 6 else f"http://{address.compressed}:{port}"


def parse_member(setting: str, raw: str) -> str:
    """One entry of --peers or --peer-self in its one spelling: http://host:port, or dns+http://name:port."""
    m = _MEMBER_URL.match(raw.strip())
    port = int(m.group(3) or 80) if m else 0
    if m is None or not 0 < port < 65536:
        raise ConfigError(setting, raw, "expected http://host:port (or dns+http://name:port in --peers)")
    url = member_url(m.group(2), port)
    if m.group(1):
        if url.startswith("http://["):
            raise ConfigError(setting, raw, "dns+http:// takes a DNS name, not an address")
        return "dns+" + url
    return url


def _members(setting: str, raw: object) -> tuple[str, ...]:
    members = tuple(dict.fromkeys(parse_member(setting, item) for item in str(raw).split(",") if item.strip()))
    if not members:
        raise ConfigError(setting, raw, "names no member")
    return members


def _member_self(setting: str, raw: object) -> str:
    url = parse_member(setting, str(raw))
    if url.startswith("dns+"):
        raise ConfigError(setting, raw, "is this member's own URL: http://host:port")
    return url


def _peer_settings(get: Lookup) -> PeerSettings | None:
    members: tuple[str, ...] | None = get.value("peers")
    if members is None:
        for other in ("peer_self", "peer_token_file"):
            if get.given(other).where is not Where.DEFAULT:
                raise ConfigError(get.given(other).source, None, "is for a cooperative download: set --peers too")
        return None
    self_url: str | None = get.value("peer_self")
    if self_url is None:
        raise ConfigError("--peer-self", None, "a cooperative download needs this member's own URL among --peers")
    return PeerSettings(members, self_url, _peer_token(get), get.value("peer_stall_timeout"))


def _peer_token(get: Lookup) -> Secret:
    """The group's token, from a file (a mounted Secret) or DOWNLOADER_PEER_TOKEN. Never from a flag's value: a
    command line is seen by every process of the node."""
    path, name, _ = get.given("peer_token_file")
    if path is not None:
        try:
            with open(str(path), "rb") as fh:
                data = fh.read(8192)
        except OSError as exc:
            raise ConfigError(name, path, f"cannot read the token file: {exc.strerror or exc}") from exc
        try:
            token, where = data.decode("ascii").strip(), name
        except UnicodeDecodeError as exc:
            raise ConfigError(name, path, "the token must be printable ASCII") from exc
    else:
        secret: Secret | None = get.value("peer_token")
        if secret is None or not secret.reveal().strip():
            raise ConfigError(
                "--peer-token-file", None, "a cooperative download needs the group's token (DOWNLOADER_PEER_TOKEN_FILE "
                "or DOWNLOADER_PEER_TOKEN, from a Secret)"
            )  # fmt: skip
        token, where = secret.reveal().strip(), "DOWNLOADER_PEER_TOKEN"
    # The value is never shown: an error names only where it came from.
    if len(token) < MIN_PEER_TOKEN or len(token) > 4096 or not all(33 <= ord(c) < 127 for c in token):
        raise ConfigError(
            where, None, f"the token must be {MIN_PEER_TOKEN} to 4096 printable ASCII characters without spaces"
        )
    return Secret(token)
