#!/usr/bin/env python3
"""Download benchmark: aibrix-download vs. s5cmd, boto3 and aibrix 0.8.0.

One command does everything (see BENCHMARKS.md):

    python3 bench/run_bench.py            # or: bench/run.sh

1. installs the benchmark's own tools into bench/.venv (and aibrix 0.8.0 into
   bench/.venv-aibrix) if they are missing, then re-executes itself there;
2. starts SeaweedFS (``weed mini``) on 127.0.0.1 with a small static S3 identity;
3. generates a synthetic safetensors-style model (default 4 x ~1 GiB shards plus
   small json/py files), uploads it with 64 MiB multipart parts, and keeps it
   in the store (bench/.cache/seaweedfs) so later invocations reuse it;
4. runs each tool under ``/usr/bin/time -v`` in round-robin order, each into a
   fresh empty directory, verifies every byte (size + sha256 per file), and
   deletes the directory again;
5. writes bench/results/<timestamp>.json (+ .md) and prints a markdown table;
6. stops SeaweedFS and removes scratch directories (also on Ctrl-C / SIGTERM).

Only the standard library is imported at module level; boto3 is imported after
the bench venv is in place.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
VENV = BENCH_DIR / ".venv"
VENV_AIBRIX = BENCH_DIR / ".venv-aibrix"
REQS = BENCH_DIR / "requirements.txt"
REQS_AIBRIX = BENCH_DIR / "requirements-aibrix.txt"
DEFAULT_STORE = BENCH_DIR / ".cache" / "seaweedfs"
DEFAULT_WORK = BENCH_DIR / ".work"
DEFAULT_RESULTS = BENCH_DIR / "results"
DEFAULT_AIBRIX_DOWNLOAD = REPO_DIR / ".venv" / "bin" / "aibrix-download"
TIME_BIN = "/usr/bin/time"

BUCKET = "bench"
ACCESS_KEY = "benchaccesskey"  # static, local-only SeaweedFS identity
SECRET_KEY = "benchsecretkey"
REGION = "us-east-1"
MiB = 1024 * 1024
GiB = 1024 * MiB
GENERATOR_VERSION = 1

ALL_TOOLS = ["aibrix-download", "aibrix-0.8.0", "boto3", "s5cmd"]
REFERENCE_TOOL = "aibrix-download"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- setup


def _stamp_ok(venv: Path, reqs: Path, must_exist: list[str]) -> bool:
    stamp = venv / ".bench-stamp"
    want = hashlib.sha256(reqs.read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text().strip() != want:
        return False
    return all((venv / "bin" / exe).exists() for exe in must_exist)


def ensure_venv(venv: Path, reqs: Path, must_exist: list[str]) -> None:
    """Create ``venv`` and pip-install ``reqs`` into it unless already done (idempotent)."""
    if _stamp_ok(venv, reqs, must_exist):
        return
    log(f"installing {reqs.name} into {venv} ...")
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(reqs)],
        check=True,
    )
    missing = [exe for exe in must_exist if not (venv / "bin" / exe).exists()]
    if missing:
        raise SystemExit(f"{venv}: still missing {missing} after pip install")
    (venv / ".bench-stamp").write_text(hashlib.sha256(reqs.read_bytes()).hexdigest() + "\n")


def bootstrap(tools: list[str]) -> None:
    """Install tools if needed and re-exec under bench/.venv's python."""
    ensure_venv(VENV, REQS, ["python", "weed", "s5cmd"])
    if "aibrix-0.8.0" in tools:
        ensure_venv(VENV_AIBRIX, REQS_AIBRIX, ["python", "aibrix_download"])
    if Path(sys.prefix).resolve() != VENV.resolve():
        py = str(VENV / "bin" / "python")
        os.execv(py, [py, str(Path(__file__).resolve()), *sys.argv[1:]])


# ----------------------------------------------------------------------- SeaweedFS


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SeaweedFS:
    """``weed mini`` bound to 127.0.0.1 on free ports, with a static S3 identity."""

    def __init__(self, store_dir: Path, scratch: Path) -> None:
        self.store_dir = store_dir
        self.scratch = scratch
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.log_path = scratch / "weed.log"
        self.endpoint = ""

    def start(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        names = ["master", "volume", "filer", "s3", "admin"]
        for n in names:
            self.ports[n] = free_port()
            self.ports[n + ".grpc"] = free_port()
        cfg = self.scratch / "s3.json"
        cfg.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "bench",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        cmd = [
            str(VENV / "bin" / "weed"),
            "mini",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={self.store_dir}",
            f"-s3.config={cfg}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.scratch / 's3.sock'}",
            f"-filer.localSocket={self.scratch / 'filer.sock'}",
        ]
        for n in names:
            cmd += [f"-{n}.port={self.ports[n]}", f"-{n}.port.grpc={self.ports[n + '.grpc']}"]
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        log(f"starting SeaweedFS: store={self.store_dir} s3={self.endpoint}")
        with open(self.log_path, "wb") as lf:
            # own session: a terminal Ctrl-C must not kill it before we clean up
            self.proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                c = s3_client(self.endpoint)
                c.list_buckets()
                return
            except Exception as e:  # not up yet
                last = repr(e)
            time.sleep(0.5)
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout}s ({last}):\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def cpu_seconds(self) -> float | None:
        """utime+stime of the weed process so far (all components run in one process)."""
        if self.proc is None:
            return None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def rss_mib(self) -> float | None:
        if self.proc is None:
            return None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            log("stopping SeaweedFS")
            # weed mini's graceful shutdown can hang in the volume server; give it a
            # few seconds, then kill it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # unix sockets weed creates in /tmp for *our* ports only
        for kind in ("master", "volume", "filer", "s3", "admin"):
            sock = Path(f"/tmp/seaweedfs-{kind}-grpc-{self.ports.get(kind + '.grpc', 0)}.sock")
            with contextlib.suppress(OSError):
                sock.unlink()
        self.proc = None


def s3_client(endpoint: str, pool: int = 10) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        config=Config(max_pool_connections=pool, retries={"mode": "standard"}),
    )


# ------------------------------------------------------------------ synthetic model


@dataclass
class ModelSpec:
    shards: int
    shard_mib: int

    @property
    def name(self) -> str:
        return f"synth-{self.shards}x{self.shard_mib}MiB"

    @property
    def prefix(self) -> str:
        return f"models/{self.name}/"

    @property
    def manifest_key(self) -> str:
        return f"_bench/manifests/{self.name}.json"

    def shard_sizes(self) -> list[int]:
        # deliberately not multiples of the 64 MiB part size: last part is short
        return [self.shard_mib * MiB + 4099 * (i + 1) + 777 for i in range(self.shards)]


def _safetensors_header(tensor: str, total: int) -> tuple[bytes, int]:
    """Return (8-byte length + padded JSON header, data byte count) for a file of ``total`` bytes."""
    nbytes = total
    for _ in range(5):
        hdr = json.dumps(
            {
                "__metadata__": {"format": "pt"},
                tensor: {"dtype": "U8", "shape": [nbytes], "data_offsets": [0, nbytes]},
            },
            separators=(",", ":"),
        ).encode()
        hdr += b" " * (-len(hdr) % 8)
        new = total - 8 - len(hdr)
        if new == nbytes:
            break
        nbytes = new
    return struct.pack("<Q", len(hdr)) + hdr, nbytes


def generate_model(spec: ModelSpec, src: Path) -> dict[str, dict[str, Any]]:
    """Write the synthetic model into ``src``; return {relpath: {size, sha256}}."""
    src.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, dict[str, Any]] = {}
    block = 1 * MiB
    pool_len = 64 * MiB
    pool = os.urandom(pool_len + block)
    sizes = spec.shard_sizes()
    weight_map: dict[str, str] = {}
    for i, size in enumerate(sizes):
        name = f"model-{i + 1:05d}-of-{spec.shards:05d}.safetensors"
        tensor = f"model.layers.{i}.weight"
        weight_map[tensor] = name
        head, nbytes = _safetensors_header(tensor, size)
        h = hashlib.sha256()
        with open(src / name, "wb", buffering=0) as f:
            f.write(head)
            h.update(head)
            left, blk = nbytes, 0
            while left:
                # random pool slice at a varying offset, prefixed by a unique header,
                # so blocks are incompressible and no two blocks are identical
                off = (blk * 7919 * 4096 + i * 1_048_573) % pool_len
                buf = struct.pack("<QQ", i, blk) + pool[off : off + block - 16]
                buf = buf[:left]
                f.write(buf)
                h.update(buf)
                left -= len(buf)
                blk += 1
        manifest[name] = {"size": size, "sha256": h.hexdigest()}

    vocab = {f"tok{n:06d}_{os.urandom(3).hex()}": n for n in range(50_000)}
    small = {
        "config.json": json.dumps(
            {
                "architectures": ["SynthForCausalLM"],
                "model_type": "synth",
                "hidden_size": 4096,
                "num_hidden_layers": spec.shards,
                "vocab_size": len(vocab),
                "torch_dtype": "bfloat16",
            },
            indent=2,
        ),
        "generation_config.json": json.dumps({"do_sample": True, "temperature": 0.7, "top_p": 0.9}),
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": vocab}}),
        "tokenizer_config.json": json.dumps({"model_max_length": 32768, "eos_token": "</s>"}),
        "model.safetensors.index.json": json.dumps(
            {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}, indent=2
        ),
        "modeling_synth.py": '"""Synthetic model used by the download benchmark."""\n\n'
        "class SynthForCausalLM:\n    pass\n",
    }
    for name, text in small.items():
        data = text.encode()
        (src / name).write_bytes(data)
        manifest[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return manifest


def ensure_model(endpoint: str, spec: ModelSpec, scratch: Path, chunk_mib: int) -> dict[str, Any]:
    """Make sure the bucket holds the model; return the manifest (reused if intact)."""
    from boto3.s3.transfer import TransferConfig

    c = s3_client(endpoint, pool=16)
    with contextlib.suppress(c.exceptions.BucketAlreadyOwnedByYou, c.exceptions.BucketAlreadyExists):
        c.create_bucket(Bucket=BUCKET)

    def listing() -> dict[str, dict[str, Any]]:
        out = {}
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=spec.prefix):
            for o in page.get("Contents", []):
                out[o["Key"][len(spec.prefix) :]] = {"size": o["Size"], "etag": o["ETag"]}
        return out

    try:
        manifest = json.loads(c.get_object(Bucket=BUCKET, Key=spec.manifest_key)["Body"].read())
    except c.exceptions.NoSuchKey:
        manifest = None
    if manifest and manifest.get("generator_version") == GENERATOR_VERSION:
        have = listing()
        want = manifest["files"]
        if set(have) == set(want) and all(
            have[k]["size"] == v["size"] and have[k]["etag"] == v["etag"] for k, v in want.items()
        ):
            log(f"reusing cached model s3://{BUCKET}/{spec.prefix} ({len(want)} files)")
            return dict(manifest)
        log("cached model incomplete or changed; regenerating")

    stale = [{"Key": spec.prefix + k} for k in listing()]
    for i in range(0, len(stale), 1000):
        c.delete_objects(Bucket=BUCKET, Delete={"Objects": stale[i : i + 1000]})

    src = scratch / "model-src"
    t0 = time.monotonic()
    log(f"generating {spec.name} in {src} ...")
    files = generate_model(spec, src)
    log(f"generated {sum(v['size'] for v in files.values()) / GiB:.2f} GiB in {time.monotonic() - t0:.1f}s")
    cfg = TransferConfig(multipart_threshold=chunk_mib * MiB, multipart_chunksize=chunk_mib * MiB, max_concurrency=8)
    t0 = time.monotonic()
    for name in sorted(files):
        c.upload_file(str(src / name), BUCKET, spec.prefix + name, Config=cfg)
    log(f"uploaded in {time.monotonic() - t0:.1f}s")
    shutil.rmtree(src)
    for name, v in files.items():
        v["etag"] = c.head_object(Bucket=BUCKET, Key=spec.prefix + name)["ETag"]
        if v["size"] > chunk_mib * MiB and "-" not in v["etag"]:
            raise RuntimeError(f"{name}: expected a multipart ETag, got {v['etag']}")
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "bucket": BUCKET,
        "prefix": spec.prefix,
        "part_size_mib": chunk_mib,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(),
        "files": files,
    }
    c.put_object(Bucket=BUCKET, Key=spec.manifest_key, Body=json.dumps(manifest, indent=1).encode())
    return manifest


# ------------------------------------------------------------------------- tools


@dataclass
class Invocation:
    argv: list[str]
    env: dict[str, str]
    # where the files should land, given (dest dir, stdout text)
    landing: Callable[[Path, str], Path]


@dataclass
class Tool:
    name: str
    available: Callable[[Ctx], str | None]  # None if usable, else a reason
    build: Callable[[Ctx, Path], Invocation]
    version: Callable[[Ctx], dict[str, str]]
    settings: Callable[[Ctx], str]


@dataclass
class Ctx:
    endpoint: str
    spec: ModelSpec
    concurrency: int
    chunk_mib: int
    s5cmd_workers: int
    aibrix_download_bin: Path
    base_env: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"s3://{BUCKET}/{self.spec.prefix}"


def _cmd_out(argv: list[str], timeout: float = 60) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"error: {e}"
    return (r.stdout or r.stderr).strip()


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
        return dict(json.loads(_cmd_out([str(python), "-c", code, *pkgs])))
    except (ValueError, TypeError):
        return {p: "unknown" for p in pkgs}


def _landing_from_stdout(default_name: str) -> Callable[[Path, str], Path]:
    def landing(dest: Path, stdout: str) -> Path:
        lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
        if lines and Path(lines[-1]).is_dir():
            return Path(lines[-1])
        return dest / default_name

    return landing


def _git_rev() -> str:
    rev = _cmd_out(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"])
    if not re.fullmatch(r"[0-9a-f]{4,40}", rev):
        rev = "no-commit"
    dirty = _cmd_out(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--", "downloader"])
    return rev + ("+dirty" if dirty else "")


def make_tools() -> dict[str, Tool]:
    def aibrix_download_build(ctx: Ctx, dest: Path) -> Invocation:
        return Invocation(
            argv=[
                str(ctx.aibrix_download_bin),
                "--model-uri",
                ctx.uri,
                "--local-dir",
                str(dest),
                "--num-threads",
                str(ctx.concurrency),
            ],
            env={},
            landing=_landing_from_stdout(ctx.spec.name),
        )

    def aibrix_download_version(ctx: Ctx) -> dict[str, str]:
        py = ctx.aibrix_download_bin.parent / "python"
        v = _pkg_versions(py, ["aibrix-model-runtime", "boto3", "botocore"])
        v["git"] = _git_rev()
        return v

    def aibrix_old_build(ctx: Ctx, dest: Path) -> Invocation:
        return Invocation(
            argv=[
                str(VENV_AIBRIX / "bin" / "aibrix_download"),
                "--model-uri",
                ctx.uri,
                "--local-dir",
                str(dest),
            ],
            env={
                "DOWNLOADER_NUM_THREADS": str(ctx.concurrency),
                "DOWNLOADER_PART_CHUNKSIZE": str(ctx.chunk_mib * MiB),
                "DOWNLOADER_PART_THRESHOLD": str(ctx.chunk_mib * MiB),
            },
            landing=_landing_from_stdout(ctx.spec.name),
        )

    def boto3_build(ctx: Ctx, dest: Path) -> Invocation:
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
                "--concurrency",
                str(ctx.concurrency),
                "--chunk-mib",
                str(ctx.chunk_mib),
            ],
            env={},
            landing=lambda d, _o: d / ctx.spec.name,
        )

    def s5cmd_parts(ctx: Ctx) -> tuple[int, int]:
        workers = max(1, min(ctx.s5cmd_workers, ctx.concurrency))
        return workers, max(1, ctx.concurrency // workers)

    def s5cmd_build(ctx: Ctx, dest: Path) -> Invocation:
        workers, per_obj = s5cmd_parts(ctx)
        return Invocation(
            argv=[
                str(VENV / "bin" / "s5cmd"),
                "--endpoint-url",
                ctx.endpoint,
                "--numworkers",
                str(workers),
                "cp",
                "-c",
                str(per_obj),
                "-p",
                str(ctx.chunk_mib),
                f"s3://{BUCKET}/{ctx.spec.prefix}*",
                f"{dest / ctx.spec.name}/",
            ],
            env={},
            landing=lambda d, _o: d / ctx.spec.name,
        )

    return {
        "aibrix-download": Tool(
            name="aibrix-download",
            available=_aibrix_download_reason,
            build=aibrix_download_build,
            version=aibrix_download_version,
            settings=lambda c: f"--num-threads {c.concurrency}",
        ),
        "aibrix-0.8.0": Tool(
            name="aibrix-0.8.0",
            available=lambda c: (
                None
                if (VENV_AIBRIX / "bin" / "aibrix_download").exists()
                else "bench/.venv-aibrix has no aibrix_download"
            ),
            build=aibrix_old_build,
            version=lambda c: _pkg_versions(VENV_AIBRIX / "bin" / "python", ["aibrix", "boto3", "s3transfer"]),
            settings=lambda c: (
                f"DOWNLOADER_NUM_THREADS={c.concurrency}, {c.chunk_mib} MiB parts; "
                "files one after another, each via boto3 download_file"
            ),
        ),
        "boto3": Tool(
            name="boto3",
            available=lambda c: None,
            build=boto3_build,
            version=lambda c: _pkg_versions(VENV / "bin" / "python", ["boto3", "botocore", "s3transfer"]),
            settings=lambda c: (
                f"one shared TransferManager, max_concurrency={c.concurrency}, "
                f"multipart_chunksize={c.chunk_mib} MiB, max_pool_connections={c.concurrency}"
            ),
        ),
        "s5cmd": Tool(
            name="s5cmd",
            available=lambda c: None,
            build=s5cmd_build,
            version=lambda c: {
                "s5cmd_binary": _cmd_out([str(VENV / "bin" / "s5cmd"), "version"]),
                **_pkg_versions(VENV / "bin" / "python", ["s5cmd"]),
            },
            settings=lambda c: "--numworkers {} cp -c {} -p {} (<= {} GETs in flight)".format(
                *s5cmd_parts(c), c.chunk_mib, s5cmd_parts(c)[0] * s5cmd_parts(c)[1]
            ),
        ),
    }


# ---------------------------------------------------------------------- measuring

_TIME_FIELDS = {
    "user_s": r"User time \(seconds\): ([\d.]+)",
    "sys_s": r"System time \(seconds\): ([\d.]+)",
    "max_rss_kb": r"Maximum resident set size \(kbytes\): (\d+)",
    "elapsed": r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)",
    "exit_status": r"Exit status: (\d+)",
    "fs_outputs": r"File system outputs: (\d+)",
    "vol_ctx": r"Voluntary context switches: (\d+)",
    "invol_ctx": r"Involuntary context switches: (\d+)",
}


def parse_time_v(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, rx in _TIME_FIELDS.items():
        m = re.search(rx, text)
        if not m:
            continue
        if k == "elapsed":
            secs = 0.0
            for part in m.group(1).split(":"):
                secs = secs * 60 + float(part)
            out["time_wall_s"] = secs
        else:
            out[k] = float(m.group(1))
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(8 * MiB):
            h.update(chunk)
    return h.hexdigest()


def verify_tree(root: Path, files: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """Compare ``root`` with the manifest. Returns (problems, ignored extra files)."""
    problems: list[str] = []
    if not root.is_dir():
        return [f"landing dir {root} does not exist"], []
    found: dict[str, Path] = {}
    ignored: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in filenames:
            p = Path(dirpath) / fn
            rel = p.relative_to(root).as_posix()
            if rel in files:
                found[rel] = p
            elif any(part.startswith(".") for part in Path(rel).parts):
                ignored.append(rel)  # tool metadata such as .cache/**, not model bytes
            else:
                problems.append(f"unexpected file {rel} ({p.stat().st_size} bytes)")
    for rel in sorted(set(files) - set(found)):
        problems.append(f"missing {rel}")
    to_hash = []
    for rel, p in sorted(found.items()):
        size = p.stat().st_size
        if size != files[rel]["size"]:
            problems.append(f"size mismatch {rel}: {size} != {files[rel]['size']}")
        else:
            to_hash.append(rel)
    with ThreadPoolExecutor(max_workers=2) as ex:  # hashlib releases the GIL
        digests = dict(zip(to_hash, ex.map(lambda r: sha256_file(found[r]), to_hash), strict=True))
    for rel, d in digests.items():
        if d != files[rel]["sha256"]:
            problems.append(f"sha256 mismatch {rel}")
    return problems, ignored


def drop_page_cache() -> str:
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return "dropped"
    except OSError as e:
        return f"not permitted ({e.strerror})"


def busy_cpu_seconds() -> float:
    """Machine-wide non-idle CPU seconds so far (/proc/stat: all but idle, iowait, guest)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = f[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def timed_sync() -> float:
    t0 = time.perf_counter()
    os.sync()
    return time.perf_counter() - t0


def tail(path: Path, chars: int = 3000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-chars:].decode(errors="replace")


# ------------------------------------------------------------------------- stats


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarize(runs: list[dict[str, Any]], tools: list[str], total_bytes: int) -> list[dict[str, Any]]:
    rows = []
    for t in tools:
        mine = [r for r in runs if r["tool"] == t and not r.get("warmup") and not r.get("discarded")]
        redone = [r for r in runs if r["tool"] == t and r.get("discarded")]
        ok = [r for r in mine if r["ok"]]
        walls = [r["wall_s"] for r in ok]
        rows.append(
            {
                "tool": t,
                "ok": len(ok),
                "runs": len(mine),
                "discarded": len(redone),
                "noisy_accepted": sum(1 for r in ok if r.get("noisy")),
                "skipped": bool(mine) and all(r.get("skipped") for r in mine),
                "wall_median_s": median(walls),
                "wall_min_s": min(walls) if walls else None,
                "wall_max_s": max(walls) if walls else None,
                "mb_per_s_median": median([total_bytes / 1e6 / w for w in walls]),
                "gib_per_s_median": median([total_bytes / GiB / w for w in walls]),
                "cpu_s_per_gib_median": median([(r["user_s"] + r["sys_s"]) / (total_bytes / GiB) for r in ok]),
                "cpu_util_median": median([(r["user_s"] + r["sys_s"]) / r["wall_s"] for r in ok]),
                "rss_mib_median": median([r["max_rss_kb"] / 1024 for r in ok]),
                "server_cpu_s_median": median([r["server_cpu_s"] for r in ok if r.get("server_cpu_s") is not None]),
                # wall + the `sync` right after it: time until the bytes are on disk, which
                # levels tools that fsync themselves with tools that leave dirty pages behind
                "wall_sync_median_s": median([r["wall_s"] + r["post_sync_s"] for r in ok]),
                "other_cpu_s_median": median([r["other_cpu_s"] for r in ok if r.get("other_cpu_s") is not None]),
            }
        )
    ref = next((r for r in rows if r["tool"] == REFERENCE_TOOL and r["wall_median_s"]), None)
    for r in rows:
        r["ratio_vs_aibrix_download"] = (
            r["wall_median_s"] / ref["wall_median_s"] if ref and r["wall_median_s"] else None
        )
        r["ratio_wall_sync_vs_aibrix_download"] = (
            r["wall_sync_median_s"] / ref["wall_sync_median_s"] if ref and r["wall_sync_median_s"] else None
        )
    return rows


def fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def markdown_table(rows: list[dict[str, Any]], discard_label: str = "redone") -> str:
    head = (
        "| tool | ok/runs | median wall s (min-max) | median MB/s | median GiB/s "
        "| median client CPU-s/GiB | median peak RSS MiB | median server CPU-s | median other CPU-s "
        "| wall ÷ aibrix-download | median wall+sync s | (wall+sync) ÷ aibrix-download |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        if r["skipped"] or not r["runs"]:
            lines.append(f"| {r['tool']} | skipped |" + " — |" * 10)
            continue
        wall = fmt(r["wall_median_s"], ".2f")
        if r["wall_min_s"] is not None:
            wall += f" ({r['wall_min_s']:.2f}-{r['wall_max_s']:.2f})"
        notes = [f"+{r['discarded']} {discard_label}"] if r.get("discarded") else []
        notes += [f"{r['noisy_accepted']} noisy kept"] if r.get("noisy_accepted") else []
        okr = f"{r['ok']}/{r['runs']}" + (f" ({', '.join(notes)})" if notes else "")
        lines.append(
            f"| {r['tool']} | {okr} | {wall} | {fmt(r['mb_per_s_median'], '.0f')} "
            f"| {fmt(r['gib_per_s_median'], '.3f')} | {fmt(r['cpu_s_per_gib_median'], '.2f')} "
            f"| {fmt(r['rss_mib_median'], '.0f')} | {fmt(r['server_cpu_s_median'], '.1f')} "
            f"| {fmt(r['other_cpu_s_median'], '.1f')} "
            f"| {fmt(r['ratio_vs_aibrix_download'], '.2f')} | {fmt(r['wall_sync_median_s'], '.2f')} "
            f"| {fmt(r['ratio_wall_sync_vs_aibrix_download'], '.2f')} |"
        )
    return head + "\n".join(lines) + "\n"


# ----------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "hostname": socket.gethostname(),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "mem_total_gib": round(mem_kb / 1024 / 1024, 2),
        "kernel": platform.release(),
        "os": _cmd_out(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
        "filesystem": _cmd_out(["findmnt", "-no", "SOURCE,FSTYPE,OPTIONS", "-T", str(BENCH_DIR)]),
    }


# ------------------------------------------------------------------------- main


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.current: subprocess.Popen[bytes] | None = None
        self.scratch = Path(tempfile.mkdtemp(prefix="aibrix-bench-", dir=self._work_root()))
        self.server: SeaweedFS | None = None
        self.results_path: Path | None = None
        self.record: dict[str, Any] = {}

    def _work_root(self) -> Path:
        root = Path(self.args.work_dir)
        root.mkdir(parents=True, exist_ok=True)
        return root

    def cleanup(self) -> None:
        if self.current is not None and self.current.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.current.pid, signal.SIGKILL)
            self.current.wait()
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            Path(self.args.work_dir).rmdir()  # only if empty

    def save(self) -> None:
        assert self.results_path is not None
        tmp = self.results_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.record, indent=1, default=str) + "\n")
        tmp.replace(self.results_path)

    def wait_for_quiet(self) -> tuple[float, float]:
        """Wait (up to --max-idle-wait s) until the machine is nearly idle.

        Samples machine-wide busy CPU over 1 s windows; returns (seconds waited, busy
        cores in the last window).  Other workloads on a 2-core box distort timings.
        """
        t0 = time.monotonic()
        busy = 0.0
        while True:
            b0, w0 = busy_cpu_seconds(), time.monotonic()
            time.sleep(1.0)
            busy = (busy_cpu_seconds() - b0) / (time.monotonic() - w0)
            waited = time.monotonic() - t0
            if busy <= self.args.idle_threshold or waited >= self.args.max_idle_wait:
                if busy > self.args.idle_threshold:
                    log(f"machine still busy ({busy:.2f} cores) after {waited:.0f}s; running anyway")
                return waited, busy

    def run_one(self, tool: Tool, ctx: Ctx, rep: int, order: int, warmup: bool) -> dict[str, Any]:
        files = self.record["model"]["files"]
        dest = self.scratch / f"dl-{tool.name}-r{rep}"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        inv = tool.build(ctx, dest)
        env = {**ctx.base_env, **inv.env}
        tfile, ofile, efile = (self.scratch / f"run.{x}" for x in ("time", "out", "err"))
        pre_sync = timed_sync()
        idle_wait, idle_busy = self.wait_for_quiet()
        cache = drop_page_cache() if self.args.drop_caches else "kept"
        srv0 = self.server.cpu_seconds() if self.server else None
        busy0 = busy_cpu_seconds()
        load = os.getloadavg()
        started = dt.datetime.now(dt.timezone.utc).isoformat()
        argv = [TIME_BIN, "-v", "-o", str(tfile), *inv.argv]
        with open(ofile, "wb") as out, open(efile, "wb") as err:
            t0 = time.perf_counter()
            self.current = subprocess.Popen(argv, stdout=out, stderr=err, env=env, start_new_session=True)
            try:
                rc = self.current.wait(timeout=self.args.timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(self.current.pid, signal.SIGKILL)
                rc = self.current.wait()
                timed_out = True
            wall = time.perf_counter() - t0
            self.current = None
        srv1 = self.server.cpu_seconds() if self.server else None
        busy1 = busy_cpu_seconds()
        post_sync = timed_sync()
        tv = parse_time_v(tfile.read_text(errors="replace") if tfile.exists() else "")
        stdout = ofile.read_text(errors="replace")
        run: dict[str, Any] = {
            "tool": tool.name,
            "rep": rep,
            "order_in_rep": order,
            "warmup": warmup,
            "argv": inv.argv,
            "env_extra": inv.env,
            "started": started,
            "wall_s": wall,
            **tv,
            "exit_code": rc,
            "timed_out": timed_out,
            "server_cpu_s": None if srv0 is None or srv1 is None else srv1 - srv0,
            "machine_busy_cpu_s": busy1 - busy0,
            "pre_sync_s": pre_sync,
            "idle_wait_s": idle_wait,
            "busy_cores_before": idle_busy,
            "post_sync_s": post_sync,
            "page_cache": cache,
            "loadavg_before": load,
        }
        # CPU burnt during the run by neither the client nor SeaweedFS: other workloads
        # plus kernel threads (writeback, softirq); a large value flags a contaminated run
        if run["server_cpu_s"] is not None and "user_s" in run:
            run["other_cpu_s"] = run["machine_busy_cpu_s"] - run["server_cpu_s"] - run["user_s"] - run["sys_s"]
        problems: list[str] = []
        if timed_out:
            problems.append(f"timed out after {self.args.timeout}s")
        if rc != 0:
            problems.append(f"exit code {rc}")
        landing = inv.landing(dest, stdout)
        run["landing_dir"] = str(landing)
        vp, ignored = verify_tree(landing, files)
        problems += vp
        run["ignored_extra_files"] = ignored
        run["problems"] = problems
        run["ok"] = not problems
        # keep a short tail always (a tool's own summary line), a long one on failure
        run["stderr_tail"] = tail(efile, 3000 if problems else 600)
        run["stdout_tail"] = tail(ofile, 1000 if problems else 300)
        shutil.rmtree(dest, ignore_errors=True)
        os.sync()
        status = "OK" if run["ok"] else "FAILED: " + "; ".join(problems[:5])
        log(
            f"{'warmup' if warmup else f'rep {rep}'} {tool.name:16s} wall {wall:7.2f}s "
            f"cpu {tv.get('user_s', 0) + tv.get('sys_s', 0):6.2f}s "
            f"rss {tv.get('max_rss_kb', 0) / 1024:7.0f} MiB server {run['server_cpu_s'] or 0:5.1f}s "
            f"other {run.get('other_cpu_s', 0):5.1f}s  {status}"
        )
        if problems and run.get("stderr_tail"):
            print("\n".join(run["stderr_tail"].splitlines()[-15:]), file=sys.stderr)
        return run

    def main(self) -> int:
        a = self.args
        tools_all = make_tools()
        tools = [t.strip() for t in a.tools.split(",") if t.strip()]
        unknown = [t for t in tools if t not in tools_all]
        if unknown:
            raise SystemExit(f"unknown tool(s) {unknown}; choose from {ALL_TOOLS}")
        if not Path(TIME_BIN).exists():
            raise SystemExit(f"{TIME_BIN} missing: apt-get install time")

        spec = ModelSpec(a.shards, a.shard_mib)
        ctx = Ctx(
            endpoint="",
            spec=spec,
            concurrency=a.concurrency,
            chunk_mib=a.chunk_mib,
            s5cmd_workers=a.s5cmd_workers,
            aibrix_download_bin=Path(a.aibrix_download_bin),
        )

        # which tools can run?
        runnable: list[str] = []
        skipped: dict[str, str] = {}
        for t in tools:
            reason = tools_all[t].available(ctx)
            if reason:
                skipped[t] = reason
                log(f"SKIPPING {t}: {reason}")
            else:
                runnable.append(t)
        if not runnable:
            raise SystemExit("no runnable tools")

        ts = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        results_dir = Path(a.results_dir)
        results_dir.mkdir(parents=True, exist_ok=True)
        self.results_path = results_dir / f"{ts}.json"

        store = self.scratch / "store" if a.fresh_store else Path(a.store_dir)
        self.server = SeaweedFS(store, self.scratch)
        self.server.start()
        ctx.endpoint = self.server.endpoint
        ctx.base_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DOWNLOADER_", "S3_", "HF_"))
        } | {
            "AWS_ENDPOINT_URL": ctx.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "PYTHONUNBUFFERED": "1",
        }

        manifest = ensure_model(ctx.endpoint, spec, self.scratch, a.chunk_mib)
        files = manifest["files"]
        total = sum(v["size"] for v in files.values())

        self.record = {
            "schema": 1,
            "timestamp": ts,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "machine": machine_info(),
            "config": {
                "reps": a.reps,
                "warmup_rounds": a.warmup,
                "tools_requested": tools,
                "tools_run": runnable,
                "tools_skipped": skipped,
                "concurrency": a.concurrency,
                "chunk_mib": a.chunk_mib,
                "drop_caches": a.drop_caches,
                "timeout_s": a.timeout,
                "idle_threshold_cores": a.idle_threshold,
                "max_idle_wait_s": a.max_idle_wait,
                "max_other_cores": a.max_other_cores,
                "retries": a.retries,
                "order": "round-robin: repetition r starts at tool r mod n",
                "destination_root": str(self.scratch),
                "store_dir": str(store),
                "tool_settings": {t: tools_all[t].settings(ctx) for t in runnable},
            },
            "versions": {
                "seaweedfs": _cmd_out([str(VENV / "bin" / "weed"), "version"]),
                **{t: tools_all[t].version(ctx) for t in runnable},
            },
            "model": {
                "uri": ctx.uri,
                "total_bytes": total,
                "total_gib": total / GiB,
                "files": files,
            },
            "server": {"endpoint": ctx.endpoint, "rss_mib_after_setup": self.server.rss_mib()},
            "runs": [],
        }
        self.save()
        log(
            f"model {total / GiB:.2f} GiB in {len(files)} files; tools {runnable}; "
            f"{a.warmup} warm-up round(s) + {a.reps} rep(s); results -> {self.results_path}"
        )

        n = len(runnable)
        schedule: list[tuple[int, bool]] = [(-(i + 1), True) for i in range(a.warmup)]
        schedule += [(r, False) for r in range(a.reps)]
        for rep, warm in schedule:
            k = (rep % n) if not warm else 0
            order = runnable[k:] + runnable[:k]
            for i, t in enumerate(order):
                for attempt in range(a.retries + 1):
                    run = self.run_one(tools_all[t], ctx, rep, i, warm)
                    run["attempt"] = attempt
                    busy = run.get("other_cpu_s", 0.0) / max(run["wall_s"], 1e-9)
                    run["other_cores"] = busy
                    run["noisy"] = busy > a.max_other_cores
                    redo = run["ok"] and not warm and busy > a.max_other_cores and attempt < a.retries
                    if redo:
                        # kept in the JSON, left out of the medians
                        run["discarded"] = f"contaminated: other work used {busy:.2f} cores during the run"
                        log(f"  -> discarding and redoing ({run['discarded']})")
                    self.record["runs"].append(run)
                    self.save()
                    if not redo:
                        break

        ordered = sorted(tools, key=lambda t: t != REFERENCE_TOOL)  # reference first
        rows = summarize(self.record["runs"], ordered, total)
        for t in skipped:
            for r in rows:
                if r["tool"] == t:
                    r["skipped"] = True
        self.record["summary"] = rows
        self.record["server"]["rss_mib_at_end"] = self.server.rss_mib()
        table = markdown_table(rows)
        self.record["summary_markdown"] = table
        self.save()
        md = self._report_md(table, total, skipped)
        self.results_path.with_suffix(".md").write_text(md)
        print(md)
        failed = [r for r in self.record["runs"] if not r["ok"]]
        if failed:
            log(f"{len(failed)} run(s) failed verification or exited non-zero; see {self.results_path}")
        return 1 if failed else 0

    def _report_md(self, table: str, total: int, skipped: dict[str, str]) -> str:
        m = self.record["machine"]
        c = self.record["config"]
        out = [
            f"### Download benchmark {self.record['timestamp']}",
            "",
            f"Model: `{self.record['model']['uri']}` — {total / GiB:.2f} GiB "
            f"({total / 1e6:.0f} MB) in {len(self.record['model']['files'])} files. "
            f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_total_gib']} GiB RAM, "
            f"kernel {m['kernel']}, Python {m['python']}.",
            f"{c['reps']} timed reps (+{c['warmup_rounds']} warm-up round), round-robin order, "
            f"concurrency {c['concurrency']}, page cache "
            f"{'dropped before each run' if c['drop_caches'] else 'kept (server data warm)'}.",
            "",
            table,
        ]
        for t, why in skipped.items():
            out.append(f"- **{t} skipped**: {why}")
        for t, s in c["tool_settings"].items():
            out.append(f"- `{t}`: {s}")
        out.append(f"\nRaw numbers: `{self.results_path}`\n")
        return "\n".join(out)


def _aibrix_download_reason(ctx: Ctx) -> str | None:
    b = ctx.aibrix_download_bin
    if not b.exists():
        return f"{b} does not exist yet"
    try:
        r = subprocess.run([str(b), "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`{b} --help` failed: {e}"
    if r.returncode != 0:
        return f"`{b} --help` exited {r.returncode}: {r.stderr.strip()[-500:]}"
    if "--num-threads" not in r.stdout:
        return f"`{b} --help` does not mention --num-threads"
    return None


def resummarize(paths: list[Path], quiet_cores: float | None) -> int:
    """Re-print the table of one or more results files (pooled if several).

    With ``quiet_cores``, every timed run (including ones redone as contaminated) counts if other
    processes used at most that many cores during it, and no other run counts.
    """
    runs: list[dict[str, Any]] = []
    tools: list[str] = []
    skipped: dict[str, str] = {}
    total = 0
    for path in paths:
        rec = json.loads(path.read_text())
        limit = rec["config"].get("max_other_cores", 0.5)
        total = rec["model"]["total_bytes"]
        tools += [t for t in rec["config"]["tools_requested"] if t not in tools]
        skipped |= rec["config"].get("tools_skipped", {})
        for r in rec["runs"]:
            if r.get("warmup"):
                continue
            if "other_cores" not in r and r.get("other_cpu_s") is not None:
                r["other_cores"] = r["other_cpu_s"] / max(r["wall_s"], 1e-9)
                r["noisy"] = r["other_cores"] > limit
            if quiet_cores is not None:
                quiet = r.get("other_cores") is not None and r["other_cores"] <= quiet_cores
                r["discarded"] = None if quiet else "not quiet"
                r["noisy"] = False
            runs.append(r)
    ordered = sorted(tools, key=lambda t: t != REFERENCE_TOOL)
    rows = summarize(runs, ordered, total)
    for r in rows:
        r["skipped"] = r["skipped"] or (r["tool"] in skipped and not r["runs"])
    print(markdown_table(rows, "redone" if quiet_cores is None else "not quiet, left out"))
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark aibrix-download against s5cmd, boto3 and aibrix 0.8.0 on local SeaweedFS.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per tool")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (all tools) before the reps")
    p.add_argument("--tools", default=",".join(ALL_TOOLS), help=f"comma list from {ALL_TOOLS}")
    p.add_argument("--concurrency", type=int, default=16, help="connections/threads per tool")
    p.add_argument("--chunk-mib", type=int, default=64, help="ranged GET / multipart part size")
    p.add_argument(
        "--s5cmd-workers",
        type=int,
        default=4,
        help="s5cmd --numworkers; per-object -c is concurrency/workers so the product is the cap",
    )
    p.add_argument("--shards", type=int, default=4, help="number of large safetensors shards")
    p.add_argument("--shard-mib", type=int, default=1024, help="approximate size of each shard")
    p.add_argument("--drop-caches", action="store_true", help="sync + echo 1 > drop_caches before each run")
    p.add_argument("--timeout", type=float, default=1200, help="per-run timeout, seconds")
    p.add_argument(
        "--max-other-cores",
        type=float,
        default=0.5,
        help="a run during which other processes used more than this many cores on average is redone",
    )
    p.add_argument("--retries", type=int, default=2, help="max redos per run for --max-other-cores")
    p.add_argument(
        "--idle-threshold",
        type=float,
        default=0.3,
        help="before each run wait until machine-wide busy CPU (cores) is at most this",
    )
    p.add_argument(
        "--max-idle-wait", type=float, default=90, help="max seconds to wait for quiet per run (0: never wait)"
    )
    p.add_argument("--store-dir", default=str(DEFAULT_STORE), help="SeaweedFS data dir (model cache)")
    p.add_argument(
        "--fresh-store",
        action="store_true",
        help="use a throw-away store in the scratch dir (no model cache)",
    )
    p.add_argument("--work-dir", default=str(DEFAULT_WORK), help="where scratch/download dirs are made")
    p.add_argument("--results-dir", default=str(DEFAULT_RESULTS))
    p.add_argument("--aibrix-download-bin", default=str(DEFAULT_AIBRIX_DOWNLOAD))
    p.add_argument(
        "--summarize",
        metavar="JSON",
        nargs="+",
        help="only re-print the table of existing results file(s), pooled if several (no server, no runs)",
    )
    p.add_argument(
        "--quiet-only",
        type=float,
        metavar="CORES",
        help="with --summarize: use every timed run (redone ones too) with other load <= CORES, and only those",
    )
    return p.parse_args(argv)


def _install_signal_handlers() -> Iterator[None]:
    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell may start background jobs with SIGINT ignored
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.summarize:
        return resummarize([Path(x) for x in args.summarize], args.quiet_only)
    bootstrap([t.strip() for t in args.tools.split(",")])
    bench = Bench(args)
    with contextlib.contextmanager(_install_signal_handlers)():
        try:
            return bench.main()
        except KeyboardInterrupt:
            log("interrupted; cleaning up")
            if bench.record and bench.results_path:
                bench.record["interrupted"] = True
                bench.save()
            return 130
        finally:
            bench.cleanup()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
