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
5. writes bench/results/<timestamp>.json (+ .md, + .png plot) and prints markdown tables;
6. stops SeaweedFS and removes scratch directories (also on Ctrl-C / SIGTERM).

Besides that classic comparison ("compare" phase) it can also run, in the same invocation:

- ``--sweep``: connection counts x range sizes for every tool (1/4/16/64 x 8/16/64 MiB);
- ``--netns``: the server in a network namespace behind an emulated WAN link (netem.py, netrelay.py):
  first-byte latency, a per-connection cap and an aggregate cap; alone it means ``--sweep``;
- ``--small-files``: a many-small-files model (10,000 x 256 KiB);
- ``--noop``: a no-op re-run of aibrix-download on a complete 1,000-file model vs one listing;
- physical limits (loopback TCP, disk write) at the start of every run (physlimits.py);
- ``--all``: all of the above (compare, small files and no-op on loopback, sweep and no-op in the netns).

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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netem
import physlimits

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

    def __init__(self, store_dir: Path, scratch: Path, net: netem.NetEmu | None = None) -> None:
        self.store_dir = store_dir
        self.scratch = scratch
        # with ``net``: run inside its namespace, on its veth address (the relay reaches that over the
        # namespace's own loopback; the harness and unthrottled checks over the veth)
        self.net = net
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.log_path = scratch / "weed.log"
        self.endpoint = ""

    def start(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # weed mini rewrites <store>/mini.options on every start and, on the next start, lets the ip and
        # ip.bind saved there win over -ip/-ip.bind: drop them so a store used in the netns mode (or on
        # loopback) the last time serves on the address asked for now
        opts = self.store_dir / "mini.options"
        with contextlib.suppress(OSError):
            lines = opts.read_text().splitlines(keepends=True)
            keep = [ln for ln in lines if not ln.startswith(("ip=", "ip.bind="))]
            if keep != lines:
                opts.write_text("".join(keep))
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
        ip = self.net.server_ip if self.net else "127.0.0.1"
        cmd = [
            *(self.net.prefix if self.net else []),
            str(VENV / "bin" / "weed"),
            "mini",
            f"-ip={ip}",
            f"-ip.bind={ip}",
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
        self.endpoint = f"http://{ip}:{self.ports['s3']}"
        where = f" in netns {self.net.ns}" if self.net else ""
        log(f"starting SeaweedFS{where}: store={self.store_dir} s3={self.endpoint}")
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
    """Either ``shards`` big safetensors shards (+ small json files) or ``files`` small files."""

    shards: int = 0
    shard_mib: int = 0
    files: int = 0  # > 0: a many-small-files model of ``files`` x ``file_kib`` KiB
    file_kib: int = 0
    # multipart part size of the upload, so the ETags' part size (aibrix-download aligns its ranges to
    # whole source parts to verify each part's MD5 while streaming; boto3 and s5cmd ignore it)
    part_mib: int = 64

    @property
    def small(self) -> bool:
        return self.files > 0

    @property
    def name(self) -> str:
        if self.small:
            return f"small-{self.files}x{self.file_kib}KiB"
        # 64 MiB parts keep the historical name (and cache) of the default model
        return f"synth-{self.shards}x{self.shard_mib}MiB" + ("" if self.part_mib == 64 else f"-p{self.part_mib}MiB")

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


def upload_small_files(c: Any, spec: ModelSpec) -> dict[str, dict[str, Any]]:
    """PUT ``spec.files`` objects of ``spec.file_kib`` KiB of unique random bytes, straight from memory."""
    size = spec.file_kib * 1024
    t0 = time.monotonic()
    log(f"uploading {spec.name}: {spec.files} x {spec.file_kib} KiB ...")

    def put(i: int) -> tuple[str, dict[str, Any]]:
        name = f"file-{i:06d}.bin"
        data = (struct.pack("<QQ", GENERATOR_VERSION, i) + os.urandom(max(0, size - 16)))[:size]
        r = c.put_object(Bucket=BUCKET, Key=spec.prefix + name, Body=data)
        return name, {"size": size, "sha256": hashlib.sha256(data).hexdigest(), "etag": r["ETag"]}

    with ThreadPoolExecutor(max_workers=16) as ex:
        files = dict(ex.map(put, range(spec.files)))
    log(f"uploaded {spec.files} files in {time.monotonic() - t0:.1f}s")
    return files


def ensure_model(endpoint: str, spec: ModelSpec, scratch: Path) -> dict[str, Any]:
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

    if spec.small:
        files = upload_small_files(c, spec)
        manifest = {
            "generator_version": GENERATOR_VERSION,
            "bucket": BUCKET,
            "prefix": spec.prefix,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(),
            "files": files,
        }
        c.put_object(Bucket=BUCKET, Key=spec.manifest_key, Body=json.dumps(manifest, indent=1).encode())
        return manifest

    src = scratch / "model-src"
    t0 = time.monotonic()
    log(f"generating {spec.name} in {src} ...")
    files = generate_model(spec, src)
    log(f"generated {sum(v['size'] for v in files.values()) / GiB:.2f} GiB in {time.monotonic() - t0:.1f}s")
    chunk_mib = spec.part_mib
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
                "--part-chunksize",
                str(ctx.chunk_mib * MiB),
                "--part-threshold",
                str(ctx.chunk_mib * MiB),
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
            settings=lambda c: (
                f"--num-threads {c.concurrency} --part-chunksize {c.chunk_mib * MiB} "
                f"--part-threshold {c.chunk_mib * MiB}"
            ),
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
        gib = total_bytes / GiB
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
                "cpu_s_per_gib_with_flush_median": median(
                    [(r["user_s"] + r["sys_s"] + r["flush_cpu_s"]) / gib for r in ok if "flush_cpu_s" in r]
                ),
                "cpu_util_median": median([(r["user_s"] + r["sys_s"]) / r["wall_s"] for r in ok]),
                "rss_mib_median": median([r["max_rss_kb"] / 1024 for r in ok]),
                "server_cpu_s_median": median([r["server_cpu_s"] for r in ok if r.get("server_cpu_s") is not None]),
                # wall + the `sync` right after it: time until the bytes are on disk, which
                # levels tools that fsync themselves with tools that leave dirty pages behind
                "wall_sync_median_s": median([r["wall_s"] + r["post_sync_s"] for r in ok]),
                "other_cpu_s_median": median([r["other_cpu_s"] for r in ok if r.get("other_cpu_s") is not None]),
                "relay_cpu_s_median": median([r["relay_cpu_s"] for r in ok if r.get("relay_cpu_s") is not None]),
                "http_requests_median": median([r["http_requests"] for r in ok if "http_requests" in r]),
                "max_open_connections_median": median(
                    [r["max_open_connections"] for r in ok if "max_open_connections" in r]
                ),
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
    """The classic table; with ``pct_physical`` in the rows, a "% of phys. limit" column after MB/s."""
    pct = any("pct_physical" in r for r in rows)
    head = (
        "| tool | ok/runs | median wall s (min-max) | median MB/s "
        + ("| % of phys. limit " if pct else "")
        + "| median GiB/s "
        "| median client CPU-s/GiB | median client + flush CPU-s/GiB | median peak RSS MiB | median server CPU-s "
        "| median other CPU-s | wall ÷ aibrix-download | median wall+sync s | (wall+sync) ÷ aibrix-download |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if pct else "") + "\n"
    )
    lines = []
    for r in rows:
        if r["skipped"] or not r["runs"]:
            lines.append(f"| {r['tool']} | skipped |" + " — |" * (12 if pct else 11))
            continue
        wall = fmt(r["wall_median_s"], ".2f")
        if r["wall_min_s"] is not None:
            wall += f" ({r['wall_min_s']:.2f}-{r['wall_max_s']:.2f})"
        notes = [f"+{r['discarded']} {discard_label}"] if r.get("discarded") else []
        notes += [f"{r['noisy_accepted']} noisy kept"] if r.get("noisy_accepted") else []
        okr = f"{r['ok']}/{r['runs']}" + (f" ({', '.join(notes)})" if notes else "")
        pct_cell = f"| {fmt(r.get('pct_physical'), '.0f')} % " if pct else ""
        lines.append(
            f"| {r['tool']} | {okr} | {wall} | {fmt(r['mb_per_s_median'], '.0f')} {pct_cell}"
            f"| {fmt(r['gib_per_s_median'], '.3f')} | {fmt(r['cpu_s_per_gib_median'], '.2f')} "
            f"| {fmt(r.get('cpu_s_per_gib_with_flush_median'), '.2f')} "
            f"| {fmt(r['rss_mib_median'], '.0f')} | {fmt(r['server_cpu_s_median'], '.1f')} "
            f"| {fmt(r['other_cpu_s_median'], '.1f')} "
            f"| {fmt(r['ratio_vs_aibrix_download'], '.2f')} | {fmt(r['wall_sync_median_s'], '.2f')} "
            f"| {fmt(r['ratio_wall_sync_vs_aibrix_download'], '.2f')} |"
        )
    return head + "\n".join(lines) + "\n"


def add_percentages(
    rows: list[dict[str, Any]], phys_mb_s: float | None, ceiling_mb_s: float | None, aggregate_mb_s: float | None
) -> None:
    """Median MB/s as a percentage of the physical limit and, in the netns mode, of the emulated link."""
    for r in rows:
        mb = r.get("mb_per_s_median")
        if phys_mb_s:
            r["pct_physical"] = None if mb is None else 100 * mb / phys_mb_s
        if ceiling_mb_s:
            r["pct_ceiling"] = None if mb is None else 100 * mb / ceiling_mb_s
        if aggregate_mb_s:
            r["pct_aggregate"] = None if mb is None else 100 * mb / aggregate_mb_s


def sweep_tables(phase: dict[str, Any]) -> str:
    """One pivot table per range size: rows = tools, columns = connection counts."""
    rows = phase["summary"]
    tools = phase["tools"]
    conns = sorted({r["conns"] for r in rows})
    chunks = sorted({r["chunk_mib"] for r in rows})
    netns = phase.get("env") == "netns"
    out = []
    if netns:
        out.append(
            "Ceiling: min(connections x per-connection cap, aggregate cap). Ideal with latency: the same, with "
            "every range also paying the first-byte latency once (and at most one connection per range).\n"
        )
    for ch in chunks:
        out.append(f"**{ch} MiB ranges**: median MB/s (% of the emulated ceiling, % of the physical limit)\n")
        out.append("| tool | " + " | ".join(f"{c} conn{'s' if c > 1 else ''}" for c in conns) + " |")
        out.append("|---|" + "---|" * len(conns))
        if netns:
            ceil = " | ".join(fmt(phase["ceilings_mb_per_s"].get(str(c)), ".0f") for c in conns)
            out.append(f"| *ceiling MB/s* | {ceil} |")
            ideal = " | ".join(fmt(phase.get("ideal_mb_per_s", {}).get(f"{c}x{ch}"), ".0f") for c in conns)
            out.append(f"| *ideal with latency MB/s* | {ideal} |")
        for t in tools:
            cells = []
            for c in conns:
                r = next((x for x in rows if x["tool"] == t and x["conns"] == c and x["chunk_mib"] == ch), None)
                if r is None or r["mb_per_s_median"] is None:
                    cells.append("—" if r is None or not r["runs"] else f"failed {r['runs'] - r['ok']}/{r['runs']}")
                    continue
                pcts = [fmt(r.get("pct_ceiling"), ".0f") + " %"] if netns else []
                pcts += [fmt(r.get("pct_physical"), ".0f") + " %"] if "pct_physical" in r else []
                cells.append(f"{r['mb_per_s_median']:.0f}" + (f" ({', '.join(pcts)})" if pcts else ""))
            out.append(f"| {t} | " + " | ".join(cells) + " |")
        out.append("")
    out.append(
        "| range MiB | conns | tool | ok/runs | median wall s | median MB/s | client CPU-s/GiB | peak RSS MiB "
        "| server CPU-s | relay CPU-s | other CPU-s | HTTP requests | most connections open |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda x: (x["chunk_mib"], x["conns"], tools.index(x["tool"]))):
        out.append(
            f"| {r['chunk_mib']} | {r['conns']} | {r['tool']} | {r['ok']}/{r['runs']} "
            f"| {fmt(r['wall_median_s'], '.2f')} | {fmt(r['mb_per_s_median'], '.0f')} "
            f"| {fmt(r['cpu_s_per_gib_median'], '.2f')} | {fmt(r['rss_mib_median'], '.0f')} "
            f"| {fmt(r['server_cpu_s_median'], '.1f')} | {fmt(r.get('relay_cpu_s_median'), '.2f')} "
            f"| {fmt(r['other_cpu_s_median'], '.1f')} | {fmt(r.get('http_requests_median'), '.0f')} "
            f"| {fmt(r.get('max_open_connections_median'), '.0f')} |"
        )
    return "\n".join(out) + "\n"


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
        self.net: netem.NetEmu | None = None
        self.env: str | None = None  # "loopback" or "netns" while a server runs
        self.admin_endpoint = ""  # SeaweedFS's own S3 port: uploads and checks by the harness
        self.tool_endpoint = ""  # what the tools get: the same, or the relay in the netns mode
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
        self.stop_env()
        shutil.rmtree(self.scratch, ignore_errors=True)
        with contextlib.suppress(OSError):
            Path(self.args.work_dir).rmdir()  # only if empty

    def save(self) -> None:
        assert self.results_path is not None
        tmp = self.results_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.record, indent=1, default=str) + "\n")
        tmp.replace(self.results_path)

    # ------------------------------------------------------------ environment

    def stop_env(self) -> None:
        """Stop relay, SeaweedFS and remove the namespace (each step also after a partial start)."""
        try:
            if self.net is not None:
                self.net.stop_relay()
                if self.record and self.net.relay_stats:
                    self.record.setdefault("netem", {})["relay_counters"] = self.net.relay_stats
            if self.server is not None:
                self.server.stop()
                self.server = None
        finally:
            if self.net is not None:
                self.net.teardown()
                self.net = None
            self.env = None

    def use_env(self, env: str) -> None:
        """Have SeaweedFS running on loopback (``loopback``) or behind the emulated link (``netns``)."""
        if self.env == env:
            return
        self.stop_env()
        a = self.args
        store = self.scratch / "store" if a.fresh_store else Path(a.store_dir)
        if env == "netns":
            self.net = netem.NetEmu(a.latency_ms, a.conn_mbps, a.aggregate_gbps, a.queue_ms, log=log)
            self.net.setup()
        self.server = SeaweedFS(store, self.scratch, self.net)
        self.server.start()
        self.env = env
        self.admin_endpoint = self.tool_endpoint = self.server.endpoint
        if self.net is not None:
            self.tool_endpoint = self.net.start_relay(self.net.server_ip, self.server.ports["s3"], self.scratch)
            log(f"relay (latency + per-connection cap) at {self.tool_endpoint}; checking the emulated link ...")
            self.record["netem"] = {**self.net.describe(), "relay_endpoint": self.tool_endpoint}
            self.record["netem"]["checks"] = self.check_link()
        self.record.setdefault("server", {})[env] = {
            "endpoint": self.admin_endpoint,
            "tool_endpoint": self.tool_endpoint,
            "rss_mib_after_setup": self.server.rss_mib(),
        }
        self.save()

    def check_link(self) -> dict[str, Any]:
        """What the emulated link really gives: goodput of 1 and many paced connections, request latency."""
        net = self.net
        assert net is not None
        a = self.args
        many = max([16, *a.sweep_conns_list])
        tcp = physlimits.tcp_throughput(
            net.server_ip,
            physlimits.free_port(),
            [1, many],
            a.limits_seconds,
            prefix=net.prefix,
            rate=net.conn_bytes_per_s if net.conn_mbps > 0 else 0,
        )

        def request_ms(endpoint: str) -> float:
            c = s3_client(endpoint)
            c.list_buckets()  # connect first
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                c.list_buckets()
                ts.append(time.perf_counter() - t0)
            return 1000 * statistics.median(ts)

        out = {
            "tcp_goodput": tcp,
            "one_conn_mb_per_s": tcp["runs"][0]["mb_per_s"],
            "many_conns_mb_per_s": tcp["runs"][1]["mb_per_s"],
            "small_request_ms_direct": request_ms(self.admin_endpoint),
            "small_request_ms_via_relay": request_ms(self.tool_endpoint),
        }
        log(
            "emulated link: 1 connection {:.0f} MB/s (cap {:.0f}), {} connections {:.0f} MB/s (aggregate {:.0f}); "
            "small request {:.1f} ms direct, {:.1f} ms via relay".format(
                out["one_conn_mb_per_s"],
                net.conn_mb_per_s,
                many,
                out["many_conns_mb_per_s"],
                net.aggregate_mb_per_s,
                out["small_request_ms_direct"],
                out["small_request_ms_via_relay"],
            )
        )
        return out

    def make_ctx(self, spec: ModelSpec, conns: int, chunk_mib: int) -> Ctx:
        a = self.args
        ctx = Ctx(
            endpoint=self.tool_endpoint,
            spec=spec,
            concurrency=conns,
            chunk_mib=chunk_mib,
            s5cmd_workers=a.s5cmd_workers,
            aibrix_download_bin=Path(a.aibrix_download_bin),
        )
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
        return ctx

    # --------------------------------------------------------------- one run

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

    def execute(self, tool: Tool, ctx: Ctx, dest: Path) -> tuple[dict[str, Any], str, Invocation]:
        """Run ``tool`` into ``dest`` under /usr/bin/time -v and measure it (no verification)."""
        inv = tool.build(ctx, dest)
        env = {**ctx.base_env, **inv.env}
        tfile, ofile, efile = (self.scratch / f"run.{x}" for x in ("time", "out", "err"))
        pre_sync = timed_sync()
        idle_wait, idle_busy = self.wait_for_quiet()
        cache = drop_page_cache() if self.args.drop_caches else "kept"
        srv0 = self.server.cpu_seconds() if self.server else None
        relay0 = self.net.relay_cpu_seconds() if self.net else None
        counters0 = self.net.relay_counters() if self.net else None
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
        relay1 = self.net.relay_cpu_seconds() if self.net else None
        busy1 = busy_cpu_seconds()
        counters1 = self.net.relay_counters() if self.net else None
        post_sync = timed_sync()
        busy2 = busy_cpu_seconds()
        tv = parse_time_v(tfile.read_text(errors="replace") if tfile.exists() else "")
        stdout = ofile.read_text(errors="replace")
        run: dict[str, Any] = {
            "tool": tool.name,
            "env": self.env,
            "conns": ctx.concurrency,
            "chunk_mib": ctx.chunk_mib,
            "argv": inv.argv,
            "env_extra": inv.env,
            "started": started,
            "wall_s": wall,
            **tv,
            "exit_code": rc,
            "timed_out": timed_out,
            "server_cpu_s": None if srv0 is None or srv1 is None else srv1 - srv0,
            "relay_cpu_s": None if relay0 is None or relay1 is None else relay1 - relay0,
            "machine_busy_cpu_s": busy1 - busy0,
            "pre_sync_s": pre_sync,
            "idle_wait_s": idle_wait,
            "busy_cores_before": idle_busy,
            "post_sync_s": post_sync,
            # machine CPU while the `sync` after the run writes back what the tool left in the page cache:
            # kernel work a tool that writes through the page cache causes but is not billed for
            "flush_cpu_s": busy2 - busy1,
            "page_cache": cache,
            "loadavg_before": load,
        }
        if counters0 and counters1:
            # what the tool did on the wire: HTTP requests (each paid the first-byte latency once),
            # TCP connections opened, and the most connections it had open at once
            run["http_requests"] = counters1["requests_delayed"] - counters0["requests_delayed"]
            run["tcp_connections"] = counters1["connections"] - counters0["connections"]
            run["max_open_connections"] = counters1["max_active"]
            run["relay_response_bytes"] = counters1["response_bytes"] - counters0["response_bytes"]
        # CPU burnt during the run by neither the client nor SeaweedFS (nor the relay): other workloads
        # plus kernel threads (writeback, softirq); a large value flags a contaminated run
        if run["server_cpu_s"] is not None and "user_s" in run:
            run["other_cpu_s"] = (
                run["machine_busy_cpu_s"]
                - run["server_cpu_s"]
                - (run["relay_cpu_s"] or 0)
                - run["user_s"]
                - run["sys_s"]
            )
        run["stderr_tail"] = tail(efile, 3000 if rc or timed_out else 600)
        run["stdout_tail"] = tail(ofile, 1000 if rc or timed_out else 300)
        return run, stdout, inv

    def run_one(
        self, tool: Tool, ctx: Ctx, files: dict[str, Any], phase: str, rep: int, order: int, warmup: bool
    ) -> dict[str, Any]:
        dest = self.scratch / f"dl-{tool.name}-r{rep}"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        run, stdout, inv = self.execute(tool, ctx, dest)
        run = {"phase": phase, "rep": rep, "order_in_rep": order, "warmup": warmup, **run}
        problems: list[str] = []
        if run["timed_out"]:
            problems.append(f"timed out after {self.args.timeout}s")
        if run["exit_code"] != 0:
            problems.append(f"exit code {run['exit_code']}")
        landing = inv.landing(dest, stdout)
        run["landing_dir"] = str(landing)
        vp, ignored = verify_tree(landing, files)
        problems += vp
        run["ignored_extra_files"] = ignored if len(ignored) <= 50 else [*ignored[:50], f"... {len(ignored)} in all"]
        run["problems"] = problems if len(problems) <= 50 else [*problems[:50], f"... {len(problems)} in all"]
        run["ok"] = not problems
        shutil.rmtree(dest, ignore_errors=True)
        os.sync()
        status = "OK" if run["ok"] else "FAILED: " + "; ".join(problems[:5])
        relay = f" relay {run['relay_cpu_s']:4.1f}s" if run.get("relay_cpu_s") is not None else ""
        if "http_requests" in run:
            relay += f" req {run['http_requests']} conns {run['tcp_connections']} (max {run['max_open_connections']})"
        log(
            f"{phase} {'warmup' if warmup else f'rep {rep}'} {tool.name:16s} c={ctx.concurrency:<3d} "
            f"{ctx.chunk_mib:3d}MiB wall {run['wall_s']:7.2f}s "
            f"cpu {run.get('user_s', 0) + run.get('sys_s', 0):6.2f}s "
            f"rss {run.get('max_rss_kb', 0) / 1024:5.0f} MiB server {run['server_cpu_s'] or 0:5.1f}s{relay} "
            f"other {run.get('other_cpu_s', 0):5.1f}s  {status}"
        )
        if problems and run.get("stderr_tail"):
            print("\n".join(run["stderr_tail"].splitlines()[-15:]), file=sys.stderr)
        return run

    # ---------------------------------------------------------------- phases

    def phase_matrix(
        self,
        name: str,
        env: str,
        spec: ModelSpec,
        configs: list[tuple[int, int]],
        tools: list[str],
        reps: int,
        warmup_rounds: int,
        warm_one: bool,
    ) -> dict[str, Any]:
        """Every tool at every (connections, range MiB) config, ``reps`` times, interleaved."""
        a = self.args
        key = f"{name}@{env}"
        self.use_env(env)
        manifest = ensure_model(self.admin_endpoint, spec, self.scratch)
        files = manifest["files"]
        total = sum(v["size"] for v in files.values())
        tools_all = make_tools()
        phase: dict[str, Any] = {
            "name": name,
            "env": env,
            "tools": tools,
            "configs": [{"conns": c, "chunk_mib": ch} for c, ch in configs],
            "reps": reps,
            "warmup_rounds": warmup_rounds,
            "model": {
                "uri": f"s3://{BUCKET}/{spec.prefix}",
                "total_bytes": total,
                "total_gib": total / GiB,
                "n_files": len(files),
                # the file list of a 10,000-file model would bloat every results file
                "files": files if len(files) <= 100 else f"{len(files)} files, see the manifest in the bucket",
            },
            "tool_settings": {
                f"{c}x{ch}MiB": {t: tools_all[t].settings(self.make_ctx(spec, c, ch)) for t in tools}
                for c, ch in configs
            },
        }
        if self.net is not None:
            phase["ceilings_mb_per_s"] = {str(c): self.net.ceiling_mb_per_s(c) for c in sorted({c for c, _ in configs})}
            sizes = [v["size"] for v in files.values()]
            phase["ideal_mb_per_s"] = {f"{c}x{ch}": self.net.ideal_mb_per_s(c, ch * MiB, sizes) for c, ch in configs}
        self.record["phases"][key] = phase
        log(
            f"phase {key}: {spec.name} ({total / GiB:.2f} GiB, {len(files)} files), {len(configs)} config(s) x "
            f"{len(tools)} tool(s) x {reps} rep(s)" + (f" + {warmup_rounds} warm-up round(s)" if warmup_rounds else "")
        )
        if warm_one:
            # warm SeaweedFS's page cache and any lazily opened volume once, untimed
            t = "s5cmd" if "s5cmd" in tools else tools[0]
            c, ch = max(configs)
            run = self.run_one(tools_all[t], self.make_ctx(spec, c, ch), files, key, -1, 0, True)
            self.record["runs"].append(run)
        n = len(tools)
        schedule: list[tuple[int, bool]] = [(-(i + 1), True) for i in range(warmup_rounds)]
        schedule += [(r, False) for r in range(reps)]
        for rep, warm in schedule:
            for ci, (conns, chunk) in enumerate(configs):
                ctx = self.make_ctx(spec, conns, chunk)
                k = 0 if warm else (rep + ci) % n
                order = tools[k:] + tools[:k]
                for i, t in enumerate(order):
                    for attempt in range(a.retries + 1):
                        run = self.run_one(tools_all[t], ctx, files, key, rep, i, warm)
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
        runs = [r for r in self.record["runs"] if r.get("phase") == key]
        phys = (self.record.get("limits") or {}).get("limit_mb_per_s")
        rows: list[dict[str, Any]] = []
        for conns, chunk in configs:
            sub = [r for r in runs if r["conns"] == conns and r["chunk_mib"] == chunk]
            rs = summarize(sub, ordered, total)
            for r in rs:
                r["conns"], r["chunk_mib"] = conns, chunk
                r["skipped"] = r["skipped"] or r["tool"] in self.record["config"]["tools_skipped"]
            add_percentages(
                rs,
                phys,
                self.net.ceiling_mb_per_s(conns) if self.net else None,
                self.net.aggregate_mb_per_s if self.net else None,
            )
            rows += rs
        phase["summary"] = rows
        phase["server_rss_mib_at_end"] = self.server.rss_mib() if self.server else None
        self.save()
        return phase

    def phase_noop(self, env: str) -> dict[str, Any]:
        """aibrix-download on a complete model directory (nothing to fetch) vs one listing of the prefix."""
        a = self.args
        key = f"noop@{env}"
        self.use_env(env)
        spec = ModelSpec(files=a.noop_files, file_kib=a.noop_file_kib)
        manifest = ensure_model(self.admin_endpoint, spec, self.scratch)
        files = manifest["files"]
        tool = make_tools()[REFERENCE_TOOL]
        ctx = self.make_ctx(spec, a.concurrency, a.chunk_mib)
        phase: dict[str, Any] = {
            "name": "noop",
            "env": env,
            "model": {"uri": ctx.uri, "n_files": len(files), "total_bytes": sum(v["size"] for v in files.values())},
            "settings": tool.settings(ctx),
            "target_s": 1.0,
        }
        self.record["phases"][key] = phase
        why = tool.available(ctx)
        if why:
            phase["skipped"] = why
            log(f"SKIPPING {key}: {why}")
            return phase
        dest = self.scratch / "noop"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        log(f"phase {key}: first download of {spec.name} ({len(files)} files) ...")
        first, stdout, inv = self.execute(tool, ctx, dest)
        landing = inv.landing(dest, stdout)
        problems, _ = verify_tree(landing, files)
        first["problems"] = problems
        phase["first_download"] = {k: first.get(k) for k in ("wall_s", "user_s", "sys_s", "max_rss_kb", "exit_code")}
        log(f"{key}: first download {first['wall_s']:.2f}s {'OK' if not problems else problems[:3]}")
        if problems or first["exit_code"] != 0:
            phase["problems"] = problems or [f"exit code {first['exit_code']}"]
            return phase

        def snapshot() -> dict[str, tuple[int, int]]:
            return {rel: ((st := (landing / rel).stat()).st_ino, st.st_mtime_ns) for rel in files}

        c = s3_client(self.tool_endpoint)

        def listing() -> float:
            t0 = time.perf_counter()
            n = 0
            for page in c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=spec.prefix):
                n += len(page.get("Contents", []))
            if n < len(files):
                raise RuntimeError(f"listing found {n} < {len(files)} objects")
            return time.perf_counter() - t0

        def timed(argv: list[str]) -> float:
            t0 = time.perf_counter()
            subprocess.run(argv, env=ctx.base_env, capture_output=True, check=True, timeout=120)
            return time.perf_counter() - t0

        cold_list = [
            str(VENV / "bin" / "python"),
            "-c",
            "import boto3, sys\n"
            "c = boto3.client('s3')\n"
            "print(sum(len(p.get('Contents', [])) for p in "
            "c.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[1], Prefix=sys.argv[2])))",
            BUCKET,
            spec.prefix,
        ]
        s5_list = [str(VENV / "bin" / "s5cmd"), "--endpoint-url", ctx.endpoint, "ls", f"{ctx.uri}*"]
        listing()  # connect and warm the server's metadata path
        runs = []
        for rep in range(a.noop_reps):
            before = snapshot()
            warm_s = listing()
            cold_s = timed(cold_list)
            s5_s = timed(s5_list)
            run, _, _ = self.execute(tool, ctx, dest)
            rewritten = sum(1 for k, v in snapshot().items() if before.get(k) != v)
            run.update(
                phase=key,
                rep=rep,
                warmup=False,
                listing_s=warm_s,
                listing_cold_python_s=cold_s,
                listing_s5cmd_s=s5_s,
                excess_s=run["wall_s"] - warm_s,
                files_rewritten=rewritten,
                ok=run["exit_code"] == 0 and rewritten == 0,
            )
            runs.append(run)
            self.record["runs"].append(run)
            log(
                f"{key} rep {rep}: re-run {run['wall_s']:.3f}s (cpu {run.get('user_s', 0) + run.get('sys_s', 0):.2f}s)"
                f", listing {warm_s * 1000:.0f} ms in-process / {cold_s:.2f}s new python / {s5_s:.2f}s s5cmd ls"
                f", files rewritten {rewritten}"
            )
        startup = [timed([str(ctx.aibrix_download_bin), "--help"]) for _ in range(3)]
        problems, _ = verify_tree(landing, files)
        shutil.rmtree(dest, ignore_errors=True)
        ok = [r for r in runs if r["ok"]]
        excess = median([r["excess_s"] for r in ok])
        phase.update(
            {
                "reps": a.noop_reps,
                "ok": len(ok),
                "noop_wall_median_s": median([r["wall_s"] for r in ok]),
                "noop_cpu_median_s": median([r.get("user_s", 0) + r.get("sys_s", 0) for r in ok]),
                "noop_rss_mib_median": median([r.get("max_rss_kb", 0) / 1024 for r in ok]),
                "listing_median_s": median([r["listing_s"] for r in ok]),
                "listing_cold_python_median_s": median([r["listing_cold_python_s"] for r in ok]),
                "listing_s5cmd_median_s": median([r["listing_s5cmd_s"] for r in ok]),
                "excess_median_s": excess,
                "startup_help_median_s": median(startup),
                "target_met": excess is not None and excess < 1.0 and not problems,
                "problems": problems,
            }
        )
        self.save()
        return phase

    def phase_limits(self) -> None:
        a = self.args
        log(
            f"measuring physical limits: loopback TCP ({a.limits_seconds}s per point), "
            f"disk write ({a.limits_disk_mib} MiB) ..."
        )
        self.wait_for_quiet()
        lim = physlimits.measure(self.scratch, a.limits_disk_mib, a.limits_seconds, [1, 4])
        self.record["limits"] = lim
        log(
            f"loopback TCP {lim['loopback_mb_per_s']:.0f} MB/s; disk write buffered+fdatasync "
            f"{fmt(lim['disk_write_buffered'].get('mb_per_s'), '.0f')} MB/s, O_DIRECT "
            f"{fmt(lim['disk_write_direct'].get('mb_per_s'), '.0f')} MB/s -> limit {lim['limit_mb_per_s']:.0f} MB/s "
            f"({lim['limit_is']})"
        )
        self.save()

    # ------------------------------------------------------------------ main

    def main(self) -> int:
        a = self.args
        tools_all = make_tools()
        tools = [t.strip() for t in a.tools.split(",") if t.strip()]
        unknown = [t for t in tools if t not in tools_all]
        if unknown:
            raise SystemExit(f"unknown tool(s) {unknown}; choose from {ALL_TOOLS}")
        if not Path(TIME_BIN).exists():
            raise SystemExit(f"{TIME_BIN} missing: apt-get install time")
        phases = plan_phases(a)
        if any(env == "netns" for _, env in phases):
            why = netem.preflight()
            if why:
                raise SystemExit(f"--netns: {why}")

        probe = Ctx(
            "",
            ModelSpec(a.shards, a.shard_mib),
            a.concurrency,
            a.chunk_mib,
            a.s5cmd_workers,
            Path(a.aibrix_download_bin),
        )
        runnable: list[str] = []
        skipped: dict[str, str] = {}
        for t in tools:
            reason = tools_all[t].available(probe)
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
        self.record = {
            "schema": 2,
            "timestamp": ts,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "machine": machine_info(),
            "config": {
                "phases": [f"{n}@{e}" for n, e in phases],
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
                "order": "round-robin: repetition r of config i starts at tool (r + i) mod n",
                "destination_root": str(self.scratch),
                "store_dir": str(self.scratch / "store" if a.fresh_store else Path(a.store_dir)),
                "tool_settings": {t: tools_all[t].settings(probe) for t in runnable},
                "sweep": {
                    "conns": a.sweep_conns_list,
                    "chunks_mib": a.sweep_chunks_list,
                    "reps": a.sweep_reps,
                    "model": ModelSpec(a.sweep_shards, a.sweep_shard_mib, part_mib=a.sweep_part_mib).name,
                },
                "small_files": {
                    "model": ModelSpec(files=a.small_files_count, file_kib=a.small_file_kib).name,
                    "reps": a.small_reps,
                },
                "noop": {"model": ModelSpec(files=a.noop_files, file_kib=a.noop_file_kib).name, "reps": a.noop_reps},
                "netns": {
                    "latency_ms": a.latency_ms,
                    "conn_mbps": a.conn_mbps,
                    "aggregate_gbps": a.aggregate_gbps,
                    "queue_ms": a.queue_ms,
                },
            },
            "versions": {
                "seaweedfs": _cmd_out([str(VENV / "bin" / "weed"), "version"]),
                **{t: tools_all[t].version(probe) for t in runnable},
            },
            "phases": {},
            "runs": [],
        }
        self.save()
        log(f"phases {self.record['config']['phases']}; tools {runnable}; results -> {self.results_path}")

        if not a.skip_limits:
            self.phase_limits()
        for name, env in phases:
            if name == "noop":
                self.phase_noop(env)
            elif name == "compare":
                spec = ModelSpec(a.shards, a.shard_mib)
                ph = self.phase_matrix(
                    name, env, spec, [(a.concurrency, a.chunk_mib)], runnable, a.reps, a.warmup, warm_one=False
                )
                # top-level copies keep --summarize and older readers working
                self.record["model"] = ph["model"]
                self.record["summary"] = ph["summary"]
                self.record["summary_markdown"] = markdown_table(ph["summary"])
            elif name == "sweep":
                spec = ModelSpec(a.sweep_shards, a.sweep_shard_mib, part_mib=a.sweep_part_mib)
                configs = [(c, ch) for ch in a.sweep_chunks_list for c in a.sweep_conns_list]
                self.phase_matrix(name, env, spec, configs, runnable, a.sweep_reps, 0, warm_one=True)
            elif name == "small":
                spec = ModelSpec(files=a.small_files_count, file_kib=a.small_file_kib)
                self.phase_matrix(
                    name, env, spec, [(a.concurrency, a.chunk_mib)], runnable, a.small_reps, 0, warm_one=True
                )
        self.stop_env()
        self.save()
        png = self.results_path.with_suffix(".png")
        try:
            import plot

            if plot.make_plot(self.record, png):
                self.record["plot"] = str(png)
                log(f"plot -> {png}")
        except Exception as e:  # a plot must never cost the measurements
            log(f"no plot: {e!r}")
        self.save()
        md = report_markdown(self.record, self.results_path)
        self.results_path.with_suffix(".md").write_text(md)
        print(md)
        failed = [r for r in self.record["runs"] if not r.get("ok")]
        if failed:
            log(f"{len(failed)} run(s) failed verification or exited non-zero; see {self.results_path}")
        return 1 if failed else 0


def plan_phases(a: argparse.Namespace) -> list[tuple[str, str]]:
    """[(phase, env)] in run order; env is "loopback" or "netns"."""
    if a.all:
        return [
            ("compare", "loopback"),
            ("small", "loopback"),
            ("noop", "loopback"),
            ("sweep", "netns"),
            ("noop", "netns"),
        ]
    env = "netns" if a.netns else "loopback"
    chosen = [
        p for p, on in (("compare", a.compare), ("sweep", a.sweep), ("small", a.small_files), ("noop", a.noop)) if on
    ]
    if not chosen:
        chosen = ["sweep"] if a.netns else ["compare"]
    return [(p, env) for p in chosen]


def report_markdown(rec: dict[str, Any], results_path: Path) -> str:
    m = rec["machine"]
    out = [
        f"### Download benchmark {rec['timestamp']}",
        "",
        f"Command: `{rec['command']}`. Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_total_gib']} GiB RAM, "
        f"kernel {m['kernel']}, Python {m['python']}, load average at start "
        f"{' '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}.",
        "",
    ]
    lim = rec.get("limits")
    if lim:
        d_b = lim["disk_write_buffered"].get("mb_per_s")
        d_d = lim["disk_write_direct"].get("mb_per_s")
        out += [
            "**Physical limits, measured in this run:** loopback TCP "
            f"{lim['loopback_mb_per_s']:.0f} MB/s (best of 1 and 4 connections); disk write "
            f"{fmt(d_b, '.0f')} MB/s buffered + fdatasync, {fmt(d_d, '.0f')} MB/s O_DIRECT. "
            f"Physical limit = min(loopback, best disk) = **{lim['limit_mb_per_s']:.0f} MB/s** ({lim['limit_is']}); "
            'every "% of phys. limit" below is median MB/s ÷ this.',
            "",
        ]
    ne = rec.get("netem")
    if ne:
        ch = ne.get("checks", {})
        out += [
            f"**Emulated network (`--netns`):** server in netns `{ne['namespace']}` behind veth "
            f"({ne['subnet']}); first-byte latency {ne['latency_ms']:g} ms per request (relay), "
            f"{ne['conn_mbps']:g} Mbit/s = {ne['conn_mb_per_s']:.0f} MB/s per connection (SO_MAX_PACING_RATE), "
            f"aggregate {ne['aggregate_gbps']:g} Gbit/s = {ne['aggregate_mb_per_s']:.0f} MB/s (htb). "
            f"Measured: 1 connection {fmt(ch.get('one_conn_mb_per_s'), '.0f')} MB/s, "
            f"{ch.get('tcp_goodput', {}).get('runs', [{}, {}])[1].get('conns', '?')} connections "
            f"{fmt(ch.get('many_conns_mb_per_s'), '.0f')} MB/s (TCP goodput ≈ {100 * netem.GOODPUT_FACTOR:.1f} % "
            f"of wire rate); a small request takes {fmt(ch.get('small_request_ms_direct'), '.1f')} ms direct and "
            f"{fmt(ch.get('small_request_ms_via_relay'), '.1f')} ms through the relay. "
            "The ceiling for c connections is min(c x per-connection cap, aggregate cap).",
            "",
        ]
    for key, ph in rec.get("phases", {}).items():
        if ph["name"] == "noop":
            out.append(f"#### No-op re-run ({key}): `{ph['model']['uri']}`, {ph['model']['n_files']} files")
            out.append("")
            if ph.get("skipped") or (ph.get("problems") and "excess_median_s" not in ph):
                out += [f"Not measured: {ph.get('skipped') or ph.get('problems')}", ""]
                continue
            out += [
                "| aibrix-download re-run s (median) | CPU-s | RSS MiB | one listing, in-process s "
                "| listing, new python+boto3 s | `s5cmd ls` s | `aibrix-download --help` s | re-run minus listing s "
                "| target < 1 s |",
                "|---|---|---|---|---|---|---|---|---|",
                f"| {fmt(ph['noop_wall_median_s'], '.3f')} ({ph['ok']}/{ph['reps']} ok) "
                f"| {fmt(ph['noop_cpu_median_s'], '.2f')} | {fmt(ph['noop_rss_mib_median'], '.0f')} "
                f"| {fmt(ph['listing_median_s'], '.3f')} | {fmt(ph['listing_cold_python_median_s'], '.3f')} "
                f"| {fmt(ph['listing_s5cmd_median_s'], '.3f')} | {fmt(ph['startup_help_median_s'], '.3f')} "
                f"| {fmt(ph['excess_median_s'], '.3f')} | {'met' if ph['target_met'] else 'NOT met'} |",
                "",
            ]
            continue
        mdl = ph["model"]
        out.append(
            f"#### {ph['name']} ({key}): `{mdl['uri']}` — {mdl['total_gib']:.2f} GiB in {mdl['n_files']} files, "
            f"{ph['reps']} rep(s)" + (f" + {ph['warmup_rounds']} warm-up round(s)" if ph["warmup_rounds"] else "")
        )
        out.append("")
        if ph["name"] == "sweep":
            out.append(sweep_tables(ph))
        else:
            cfg = ph["configs"][0]
            out.append(f"{cfg['conns']} connections, {cfg['chunk_mib']} MiB ranges.\n")
            out.append(markdown_table(ph["summary"]))
            for t, s in ph["tool_settings"][f"{cfg['conns']}x{cfg['chunk_mib']}MiB"].items():
                out.append(f"- `{t}`: {s}")
            out.append("")
    for t, why in rec["config"]["tools_skipped"].items():
        out.append(f"- **{t} skipped**: {why}")
    if rec.get("plot"):
        out.append(f"\nPlot: `{rec['plot']}`")
    out.append(f"\nRaw numbers: `{results_path}`\n")
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
        if "model" not in rec:
            raise SystemExit(f"{path}: has no compare phase to summarize (see its .md for the other phases)")
        limit = rec["config"].get("max_other_cores", 0.5)
        total = rec["model"]["total_bytes"]
        tools += [t for t in rec["config"]["tools_requested"] if t not in tools]
        skipped |= rec["config"].get("tools_skipped", {})
        for r in rec["runs"]:
            if r.get("warmup") or not str(r.get("phase", "compare")).startswith("compare"):
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
    g = p.add_argument_group(
        "phases",
        "Without a phase flag a run is the classic comparison (--compare) on loopback, or the sweep with --netns. "
        "Physical limits (loopback TCP, disk write) are measured at the start of every run.",
    )
    g.add_argument(
        "--all",
        action="store_true",
        help="everything: limits; compare, small files and no-op on loopback; then sweep and no-op in the netns",
    )
    g.add_argument(
        "--compare", action="store_true", help="the classic table: --shards x --shard-mib model, --reps reps"
    )
    g.add_argument("--sweep", action="store_true", help="every tool at --sweep-conns x --sweep-chunks-mib")
    g.add_argument(
        "--small-files", action="store_true", help="many small files: --small-files-count x --small-file-kib"
    )
    g.add_argument(
        "--noop", action="store_true", help="no-op re-run of aibrix-download on a complete --noop-files model"
    )
    g.add_argument("--skip-limits", action="store_true", help="do not measure loopback/disk limits")
    g.add_argument("--limits-disk-mib", type=int, default=1024, help="bytes written by each disk-limit test")
    g.add_argument("--limits-seconds", type=float, default=3.0, help="duration of each TCP throughput point")
    g.add_argument("--sweep-conns", default="1,4,16,64", help="connection counts of the sweep")
    g.add_argument("--sweep-chunks-mib", default="8,16,64", help="range sizes (MiB) of the sweep")
    g.add_argument("--sweep-reps", type=int, default=2, help="repetitions of the whole sweep (each ~10 min)")
    g.add_argument("--sweep-shards", type=int, default=4, help="shards of the sweep's model")
    g.add_argument("--sweep-shard-mib", type=int, default=256, help="shard size of the sweep's model (4 x 256 = 1 GiB)")
    g.add_argument(
        "--sweep-part-mib",
        type=int,
        default=8,
        help="multipart part size the sweep's model is uploaded with (8 = the AWS CLI's default); "
        "aibrix-download's ranges are whole parts, so this must be <= the smallest swept range size",
    )
    g.add_argument("--small-files-count", type=int, default=10000, help="files in the small-files model")
    g.add_argument("--small-file-kib", type=int, default=256, help="size of each small file")
    g.add_argument("--small-reps", type=int, default=3, help="repetitions of the small-files phase")
    g.add_argument("--noop-files", type=int, default=1000, help="files in the no-op model")
    g.add_argument("--noop-file-kib", type=int, default=256, help="size of each file of the no-op model")
    g.add_argument("--noop-reps", type=int, default=5, help="no-op re-runs (each with its own listing timings)")
    n = p.add_argument_group(
        "realistic network (--netns)",
        "The server runs in a network namespace behind a veth pair (made and removed by the harness; root only). "
        "A relay in the namespace adds first-byte latency per request and caps each connection "
        "(SO_MAX_PACING_RATE); an htb qdisc caps the aggregate. No packet loss, jitter or per-packet RTT.",
    )
    n.add_argument("--netns", action="store_true", help="run the selected phases against the emulated network")
    n.add_argument("--latency-ms", type=float, default=100.0, help="first-byte latency added to every request")
    n.add_argument("--conn-mbps", type=float, default=680.0, help="per-connection cap, Mbit/s (680 = 85 MB/s; 0: none)")
    n.add_argument("--aggregate-gbps", type=float, default=2.5, help="aggregate cap of the link, Gbit/s (0: none)")
    n.add_argument("--queue-ms", type=float, default=20.0, help="bottleneck queue length in ms of the aggregate rate")
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
    args = p.parse_args(argv)
    try:
        args.sweep_conns_list = [int(x) for x in args.sweep_conns.split(",") if x.strip()]
        args.sweep_chunks_list = [int(x) for x in args.sweep_chunks_mib.split(",") if x.strip()]
    except ValueError:
        p.error("--sweep-conns and --sweep-chunks-mib take comma lists of integers")
    return args


def run_interruptible(bench: Any) -> int:
    """bench.main(), with SIGINT/SIGTERM/SIGHUP turned into a clean stop: the results file is saved marked
    `interrupted`, and whatever the bench started (servers, namespaces, directories) is cleaned up.

    `bench` has main(), cleanup(), save(), and the attributes `record` and `results_path`: this harness's
    Bench and bench_sidecar.py's SidecarBench both do.
    """

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: a shell may start background jobs with SIGINT ignored
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        return int(bench.main())
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        if bench.record and bench.results_path:
            bench.record["interrupted"] = True
            bench.save()
        return 130
    finally:
        bench.cleanup()
        for sig, previous in old.items():
            signal.signal(sig, previous)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.summarize:
        return resummarize([Path(x) for x in args.summarize], args.quiet_only)
    bootstrap([t.strip() for t in args.tools.split(",")])
    return run_interruptible(Bench(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
