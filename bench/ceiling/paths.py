"""The data paths whose ceiling is measured, each a server on 127.0.0.1 with a model of two sizes and the download
command of either: S3's ranged large files (REST transport), S3's small whole files (the CRT), GCS (its emulator),
the Hugging Face Hub (tests/fakehub, which serves blobs with sendfile)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..harness.common import BUCKET, DEFAULT_AIBRIX_DOWNLOAD, MiB, tool_env
from ..harness.model import ModelSpec, ensure_model, generate_model
from ..harness.server import SeaweedFS, s3_tool_env

PATHS = ("s3-ranges", "s3-small", "gcs", "hf")


@dataclass
class Model:
    """One size of a path's model: where the download command fetches it from, its bytes, its files."""

    uri: str
    bytes: int
    files: int


@dataclass
class Path_:
    name: str
    models: list[Model]  # the small one first
    env: dict[str, str]
    extra: list[str]  # flags of every run on this path

    def argv(self, model: Model, dest: Path, flags: list[str]) -> list[str]:
        return [
            str(DEFAULT_AIBRIX_DOWNLOAD),
            "--model-uri",
            model.uri,
            "--local-dir",
            str(dest),
            "--model-name",
            "m",
            "--progress",
            "none",
            *self.extra,
            *flags,
        ]


@contextlib.contextmanager
def s3(store: Path, scratch: Path, small: bool, sizes: tuple[int, int]) -> Iterator[Path_]:
    """SeaweedFS with models of `sizes` shards of 512 MiB (64 MiB parts), or `sizes` files of 256 KiB."""
    server = SeaweedFS(store, scratch)
    server.start()
    try:
        models = []
        for n in sizes:
            spec = ModelSpec(files=n, file_kib=256) if small else ModelSpec(n, 512)
            manifest = ensure_model(server.endpoint, spec, scratch)
            files = manifest["files"]
            total = sum(v["size"] for v in files.values())
            models.append(Model(f"s3://{BUCKET}/{spec.prefix}", total, len(files)))
        yield Path_("s3-small" if small else "s3-ranges", models, s3_tool_env(server.endpoint), [])
    finally:
        server.stop()


@contextlib.contextmanager
def gcs(scratch: Path, sizes: tuple[int, int]) -> Iterator[Path_]:
    """fake-gcs-server (in memory) with models of `sizes` shards of 256 MiB."""
    from ..gcs.cli import BUCKET as GCS_BUCKET
    from ..gcs.cli import upload
    from ..gcs.emulator import Emulator

    emu = Emulator(scratch)
    emu.start()
    try:
        models = []
        for n in sizes:
            spec = ModelSpec(n, 256)
            src = scratch / f"gcs-src-{n}"
            files = generate_model(spec, src)
            upload(emu.url, src, spec.prefix, files)
            shutil.rmtree(src)
            models.append(Model(f"gs://{GCS_BUCKET}/{spec.prefix}", sum(v["size"] for v in files.values()), len(files)))
        env = tool_env(("DOWNLOADER_", "AWS_"), STORAGE_EMULATOR_HOST=emu.url)
        yield Path_("gcs", models, env, [])
    finally:
        emu.stop()


@contextlib.contextmanager
def hf(scratch: Path, sizes: tuple[int, int]) -> Iterator[Path_]:
    """The fake hub with repos of `sizes` shards of 256 MiB (LFS, redirected to its CDN)."""
    from tests.fakehub import FakeHub

    from ..hf.cli import TOKEN

    with FakeHub(token=TOKEN, redirect_lfs=True) as hub:
        models = []
        for n in sizes:
            files: dict[str, bytes | Path] = {"config.json": b'{"model_type": "synth"}'}
            for i in range(n):
                path = scratch / f"hf-{n}-{i}.safetensors"
                _random_file(path, 256 * MiB, seed=f"{n}-{i}")
                files[f"model-{i:05d}-of-{n:05d}.safetensors"] = path
            repo = f"bench-org/ceiling-{n}"
            hub.create_repo(repo, files)
            total = sum(len(v) if isinstance(v, bytes) else v.stat().st_size for v in files.values())
            models.append(Model(f"hf://{repo}", total, len(files)))
        env = tool_env(("DOWNLOADER_", "HF_", "HUGGING"), HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN)
        yield Path_("hf", models, env, [])


def _random_file(path: Path, size: int, seed: str) -> None:
    """`size` bytes that do not repeat per MiB (no store or cache can shortcut them)."""
    block = os.urandom(MiB)
    with open(path, "wb") as fh:
        for i in range(size // MiB):
            fh.write(hashlib.sha256(f"{seed}/{i}".encode()).digest() + block[32:])


def open_path(name: str, store: Path, scratch: Path, sizes: tuple[int, int]) -> contextlib.AbstractContextManager[Any]:
    if name == "s3-ranges":
        return s3(store, scratch, False, sizes)
    if name == "s3-small":
        return s3(store, scratch, True, sizes)
    if name == "gcs":
        return gcs(scratch, sizes)
    return hf(scratch, sizes)
