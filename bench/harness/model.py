"""The synthetic models the benchmark downloads: a few large safetensors shards (+ the small json/py files of a
real checkpoint), or many small files; generated once, uploaded to SeaweedFS and reused while intact."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import BUCKET, GiB, MiB, log
from .server import s3_client

GENERATOR_VERSION = 1


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
    def weights_glob(self) -> str:
        """The files an engine reads as weights: the shards' ``*.safetensors``; in a model of small files, every
        file (each is a blob of weight bytes; the name does not change how it is read)."""
        return "*" if self.small else "*.safetensors"

    @property
    def shape(self) -> str:
        """The model's shape, as the tables name it."""
        if self.small:
            return f"{self.files:,} x {self.file_kib} KiB"
        return f"{self.shards} x {self.shard_mib} MiB"

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
