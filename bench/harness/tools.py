"""How each tool is invoked, per setting, and what its settings mean in requests in flight.

Two settings (``Setting``):

- **defaults**: each tool as its users run it, with no concurrency or part-size flag;
- **matched**: every tool at the same most GETs in flight (``--concurrency``, N) and the same range size
  (``--chunk-mib``), for either model shape.

What each knob means in GETs in flight (each GET holds one connection; none of these tools pipelines):

- ``aibrix-download --num-threads N``: requests in flight for the whole download, whatever the files (one pool of
  N workers; a model of small files fetched whole by the CRT opens at most N connections and queues the rest).
- ``s5cmd --numworkers W cp -c C``: W objects in parallel, each in up to C ranged GETs of ``-p`` MiB, so at most
  the sum of min(C, parts) over the W objects with the most parts: W x C on large objects, W on one-part
  objects (C does not matter there). s5cmd has no global cap. Defaults: W = 256, C = 5, ``-p`` 50 MiB.
- boto3's ``TransferManager(max_concurrency=N)``, one shared by all objects (as ``aws s3 cp --recursive``): N GETs
  in flight in all (its request executor has N threads), one per object under ``multipart_threshold``. Defaults:
  N = 10, 8 MiB parts from 8 MiB, ``max_pool_connections`` = 10.
- AIBrix 0.8.0 ``DOWNLOADER_NUM_THREADS=N``: one file after another, each through boto3 ``download_file`` with
  ``max_concurrency=N``: min(N, parts of that file) GETs, 1 for a file under the 64 MiB threshold. Default
  N = 32. Nothing makes it fetch two files at once, so on a model of small files it has one GET in flight in
  either setting.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from .common import BENCH_DIR, BUCKET, VENV, VENV_AIBRIX, MiB, cmd_out, git_rev
from .model import ModelSpec
from .venvs import byte_compile

# each tool's own defaults (see the module docstring); aibrix-download's are read from its --help
S5CMD_DEFAULT_WORKERS = 256
S5CMD_DEFAULT_CONCURRENCY = 5
S5CMD_DEFAULT_PART_MIB = 50
BOTO3_DEFAULT_CONCURRENCY = 10
BOTO3_DEFAULT_CHUNK_MIB = 8
AIBRIX_OLD_DEFAULT_THREADS = 32
AIBRIX_OLD_DEFAULT_CHUNK_MIB = 64


class Setting(str, Enum):
    DEFAULTS = "defaults"
    MATCHED = "matched"


@dataclass(frozen=True)
class Variant:
    """One way of running every tool: a setting, at matched N GETs in flight and range size, maybe in a cgroup."""

    setting: Setting
    conns: int | None = None  # matched only
    chunk_mib: int | None = None  # matched only
    mem_limit_mib: int | None = None  # run the tool inside a memory cgroup of this limit

    @property
    def label(self) -> str:
        out = self.setting.value
        if self.setting is Setting.MATCHED:
            out += f" ({self.conns} in flight, {self.chunk_mib} MiB)"
        if self.mem_limit_mib:
            out += f", {self.mem_limit_mib} MiB cgroup"
        return out

    def key(self) -> dict[str, object]:
        """The fields a run record carries to say which variant it belongs to."""
        return {
            "setting": self.setting.value,
            "conns": self.conns,
            "chunk_mib": self.chunk_mib,
            "mem_limit_mib": self.mem_limit_mib,
        }


@dataclass
class Invocation:
    argv: list[str]
    env: dict[str, str]
    landing: Callable[[Path, str], Path]  # where the files land, given (dest dir, stdout text)


@dataclass
class Setup:
    """A tool's exact settings in a variant, and the most GETs it can have in flight on the model."""

    flags: str
    max_in_flight: int | None


@dataclass
class Ctx:
    endpoint: str
    spec: ModelSpec
    variant: Variant
    s5cmd_workers: int  # matched, large objects: s5cmd --numworkers (and -c = N // this)
    aibrix_download_bin: Path
    sizes: list[int] = field(default_factory=list)  # every object's size (for the in-flight bounds)
    base_env: dict[str, str] = field(default_factory=dict)
    baseline_bin: Path | None = None  # --baseline-bin: another build of aibrix-download, run as its own tool

    @property
    def uri(self) -> str:
        return f"s3://{BUCKET}/{self.spec.prefix}"

    @property
    def matched(self) -> bool:
        return self.variant.setting is Setting.MATCHED


@dataclass
class Tool:
    name: str
    available: Callable[[Ctx], str | None]  # None if usable, else a reason
    build: Callable[[Ctx, Path], Invocation]
    setup: Callable[[Ctx], Setup]
    version: Callable[[Ctx], dict[str, str]]
    prepare: Callable[[Ctx], None] = lambda _ctx: None  # once, before the first run (as an install would)


# ------------------------------------------------------------------------------------- in-flight bounds


def parts(size: int, chunk: int, threshold: int | None = None) -> int:
    """Ranged GETs for one object: one below the threshold (default: the chunk size), else ceil(size / chunk)."""
    if size < (threshold or chunk) or size <= chunk:
        return 1
    return -(-size // chunk)


def pool_bound(pool: int, sizes: list[int], chunk: int) -> int | None:
    """One pool of ``pool`` GETs shared by every object (aibrix-download, boto3's TransferManager)."""
    return min(pool, sum(parts(s, chunk) for s in sizes)) if sizes else None


def s5cmd_bound(workers: int, per_object: int, part: int, sizes: list[int]) -> int | None:
    """s5cmd: ``workers`` objects at once, each in min(per_object, parts) GETs: the busiest ``workers`` objects."""
    if not sizes:
        return None
    each = sorted((min(per_object, parts(s, part)) for s in sizes), reverse=True)
    return sum(each[:workers])


def s5cmd_matched(ctx: Ctx) -> tuple[int, int]:
    """(--numworkers, -c) whose product is N: for one-part objects N workers (-c 1: in flight = numworkers);
    for large objects --s5cmd-workers objects in N // workers parts each."""
    n = ctx.variant.conns or 1
    chunk = (ctx.variant.chunk_mib or 1) * MiB
    if ctx.sizes and all(s <= chunk for s in ctx.sizes):
        return n, 1
    workers = max(1, min(ctx.s5cmd_workers, n))
    return workers, max(1, n // workers)


# ------------------------------------------------------------------------------------- aibrix-download


@functools.lru_cache(maxsize=4)
def _help_text(binary: Path) -> str:
    try:
        r = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"error: {e}"
    return r.stdout if r.returncode == 0 else f"error: exit {r.returncode}: {r.stderr.strip()[-500:]}"


def aibrix_download_defaults(binary: Path) -> tuple[int | None, int | None]:
    """(--num-threads, range MiB) as the binary's --help states its defaults; None where it does not say."""
    text = " ".join(_help_text(binary).split())
    # "[NAME, 32]" before the settings table (b5ef9be and older), "[NAME; default 32]" since, and with --connections
    # "[NAME; default 128 (auto), 32 (fixed)]": the cap of the default mode (auto starts at 32 and stays within its
    # buffer budget: fewer may be in flight)
    threads = re.search(r"\[DOWNLOADER_NUM_THREADS(?:,|; default) (\d+)[\] ]", text)
    chunk = re.search(r"\[DOWNLOADER_PART_CHUNKSIZE(?:,|; default) (\d+) ?MiB\]", text)
    return (int(threads.group(1)) if threads else None, int(chunk.group(1)) if chunk else None)


def _reason_for(b: Path | None) -> str | None:
    if b is None:
        return "no binary given (--baseline-bin)"
    if not b.exists():
        return f"{b} does not exist yet"
    text = _help_text(b)
    if text.startswith("error:"):
        return f"`{b} --help` failed: {text}"
    if "--num-threads" not in text:
        return f"`{b} --help` does not mention --num-threads"
    return None


def _landing_from_stdout(default_name: str) -> Callable[[Path, str], Path]:
    def landing(dest: Path, stdout: str) -> Path:
        lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
        if lines and Path(lines[-1]).is_dir():
            return Path(lines[-1])
        return dest / default_name

    return landing


def _matched_chunk(ctx: Ctx) -> int:
    return (ctx.variant.chunk_mib or 64) * MiB


def _aibrix_download_flags(ctx: Ctx) -> list[str]:
    if not ctx.matched:
        return []
    chunk = str(_matched_chunk(ctx))
    return ["--num-threads", str(ctx.variant.conns), "--part-chunksize", chunk, "--part-threshold", chunk]


def _aibrix_download_tool(name: str, binary: Callable[[Ctx], Path | None]) -> Tool:
    """aibrix-download from `binary` (this checkout's, or --baseline-bin's for a before/after comparison)."""

    def build(ctx: Ctx, dest: Path) -> Invocation:
        b = binary(ctx)
        assert b is not None
        return Invocation(
            argv=[str(b), "--model-uri", ctx.uri, "--local-dir", str(dest), *_aibrix_download_flags(ctx)],
            env={},
            landing=_landing_from_stdout(ctx.spec.name),
        )

    def setup(ctx: Ctx) -> Setup:
        if ctx.matched:
            return Setup(
                " ".join(_aibrix_download_flags(ctx)),
                pool_bound(ctx.variant.conns or 1, ctx.sizes, _matched_chunk(ctx)),
            )
        b = binary(ctx)
        assert b is not None
        threads, chunk_mib = aibrix_download_defaults(b)
        flags = f"no flags (its defaults: --num-threads {threads}, {chunk_mib} MiB ranges, from --help)"
        bound = pool_bound(threads, ctx.sizes, chunk_mib * MiB) if threads and chunk_mib else None
        return Setup(flags, bound)

    def version(ctx: Ctx) -> dict[str, str]:
        b = binary(ctx)
        assert b is not None
        v = _pkg_versions(b.parent / "python", ["aibrix-model-runtime", "boto3", "botocore"])
        v["binary"] = str(b)
        # the checkout whose venv holds the binary (<repo>/.venv/bin/aibrix-download)
        v["git"] = (
            git_rev()
            if name == "aibrix-download"
            else cmd_out(["git", "-C", str(b.parent.parent.parent), "rev-parse", "--short", "HEAD"])
        )
        return v

    def prepare(ctx: Ctx) -> None:
        b = binary(ctx)
        assert b is not None
        byte_compile(b.parent / "python")

    return Tool(
        name=name,
        available=lambda c: _reason_for(binary(c)),
        build=build,
        setup=setup,
        version=version,
        prepare=prepare,
    )


# ------------------------------------------------------------------------------------- the peers


def _pkg_versions(python: Path, pkgs: list[str]) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for p in sys.argv[1:]:\n"
        "    try: out[p] = m.version(p)\n"
        "    except Exception: out[p] = 'not installed'\n"
        "print(json.dumps(out))\n"
    )
    try:
        return dict(json.loads(cmd_out([str(python), "-c", code, *pkgs])))
    except (ValueError, TypeError):
        return {p: "unknown" for p in pkgs}


def _aibrix_old_env(ctx: Ctx) -> dict[str, str]:
    if not ctx.matched:
        return {}
    chunk = str(_matched_chunk(ctx))
    return {
        "DOWNLOADER_NUM_THREADS": str(ctx.variant.conns),
        "DOWNLOADER_PART_CHUNKSIZE": chunk,
        "DOWNLOADER_PART_THRESHOLD": chunk,
    }


def _aibrix_old_build(ctx: Ctx, dest: Path) -> Invocation:
    return Invocation(
        argv=[str(VENV_AIBRIX / "bin" / "aibrix_download"), "--model-uri", ctx.uri, "--local-dir", str(dest)],
        env=_aibrix_old_env(ctx),
        landing=_landing_from_stdout(ctx.spec.name),
    )


def _aibrix_old_setup(ctx: Ctx) -> Setup:
    threads = ctx.variant.conns if ctx.matched else AIBRIX_OLD_DEFAULT_THREADS
    chunk = _matched_chunk(ctx) if ctx.matched else AIBRIX_OLD_DEFAULT_CHUNK_MIB * MiB
    env = " ".join(f"{k}={v}" for k, v in _aibrix_old_env(ctx).items()) or (
        f"no DOWNLOADER_* variables (its defaults: {AIBRIX_OLD_DEFAULT_THREADS} threads, 64 MiB parts)"
    )
    bound = max((min(threads or 1, parts(s, chunk)) for s in ctx.sizes), default=None)
    return Setup(f"{env}; files one after another, each via boto3 download_file", bound)


def _boto3_flags(ctx: Ctx) -> list[str]:
    if not ctx.matched:
        return ["--defaults"]
    return ["--concurrency", str(ctx.variant.conns), "--chunk-mib", str(ctx.variant.chunk_mib)]


def _boto3_build(ctx: Ctx, dest: Path) -> Invocation:
    return Invocation(
        argv=[
            str(VENV / "bin" / "python"),
            str(BENCH_DIR / "boto3_download.py"),
            "--bucket",
            BUCKET,
            "--prefix",
            ctx.spec.prefix,
            "--dest",
            str(dest / ctx.spec.name),
            *_boto3_flags(ctx),
        ],
        env={},
        landing=lambda d, _o: d / ctx.spec.name,
    )


def _boto3_setup(ctx: Ctx) -> Setup:
    if ctx.matched:
        n, chunk = ctx.variant.conns or 1, _matched_chunk(ctx)
        flags = (
            f"one shared TransferManager, max_concurrency={n}, {ctx.variant.chunk_mib} MiB parts, "
            f"max_pool_connections={n}"
        )
    else:
        n, chunk = BOTO3_DEFAULT_CONCURRENCY, BOTO3_DEFAULT_CHUNK_MIB * MiB
        flags = "one shared TransferManager, TransferConfig() and Config() defaults (max_concurrency=10, 8 MiB parts)"
    return Setup(flags, pool_bound(n, ctx.sizes, chunk))


def _s5cmd_knobs(ctx: Ctx) -> list[str]:
    """The global and cp flags in their places: [--numworkers W] cp [-c C -p P]."""
    if not ctx.matched:
        return ["cp"]
    workers, per_object = s5cmd_matched(ctx)
    return ["--numworkers", str(workers), "cp", "-c", str(per_object), "-p", str(ctx.variant.chunk_mib)]


def _s5cmd_build(ctx: Ctx, dest: Path) -> Invocation:
    return Invocation(
        argv=[
            str(VENV / "bin" / "s5cmd"),
            "--endpoint-url",
            ctx.endpoint,
            *_s5cmd_knobs(ctx),
            f"s3://{BUCKET}/{ctx.spec.prefix}*",
            f"{dest / ctx.spec.name}/",
        ],
        env={},
        landing=lambda d, _o: d / ctx.spec.name,
    )


def _s5cmd_setup(ctx: Ctx) -> Setup:
    if ctx.matched:
        workers, per_object = s5cmd_matched(ctx)
        part = _matched_chunk(ctx)
        flags = " ".join(_s5cmd_knobs(ctx))
    else:
        workers, per_object, part = S5CMD_DEFAULT_WORKERS, S5CMD_DEFAULT_CONCURRENCY, S5CMD_DEFAULT_PART_MIB * MiB
        flags = "cp with no flags (its defaults: --numworkers 256, -c 5, -p 50)"
    return Setup(flags, s5cmd_bound(workers, per_object, part, ctx.sizes))


def make_tools() -> dict[str, Tool]:
    return {
        "aibrix-download": _aibrix_download_tool("aibrix-download", lambda c: c.aibrix_download_bin),
        "aibrix-download-baseline": _aibrix_download_tool("aibrix-download-baseline", lambda c: c.baseline_bin),
        "aibrix-0.8.0": Tool(
            name="aibrix-0.8.0",
            available=lambda c: (
                None
                if (VENV_AIBRIX / "bin" / "aibrix_download").exists()
                else "bench/.venv-aibrix has no aibrix_download"
            ),
            build=_aibrix_old_build,
            setup=_aibrix_old_setup,
            version=lambda c: _pkg_versions(VENV_AIBRIX / "bin" / "python", ["aibrix", "boto3", "s3transfer"]),
        ),
        "boto3": Tool(
            name="boto3",
            available=lambda c: None,
            build=_boto3_build,
            setup=_boto3_setup,
            version=lambda c: _pkg_versions(VENV / "bin" / "python", ["boto3", "botocore", "s3transfer"]),
        ),
        "s5cmd": Tool(
            name="s5cmd",
            available=lambda c: None,
            build=_s5cmd_build,
            setup=_s5cmd_setup,
            version=lambda c: {
                "s5cmd_binary": cmd_out([str(VENV / "bin" / "s5cmd"), "version"]),
                **_pkg_versions(VENV / "bin" / "python", ["s5cmd"]),
            },
        ),
    }
