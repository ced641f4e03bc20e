"""The Hugging Face benchmark's model: safetensors shards with one float32 tensor each (LFS files on the hub)
and the small files of a checkpoint (regular files)."""

from __future__ import annotations

import hashlib
import json
import random
import struct
from pathlib import Path
from typing import Any

from ..harness.common import MiB
from ..harness.measure import sha256_file


def write_shard(path: Path, name: str, nbytes: int, seed: int) -> None:
    """A valid safetensors file (one float32 tensor) of about nbytes, written in 1 MiB blocks."""
    count = max(1, nbytes // 4)
    header = {name: {"dtype": "F32", "shape": [count], "data_offsets": [0, count * 4]}, "__metadata__": {}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    block = random.Random(seed).randbytes(MiB)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        left, i = count * 4, 0
        while left:
            chunk = (i.to_bytes(8, "little") + block[8:])[:left]
            fh.write(chunk)
            left -= len(chunk)
            i += 1


def generate(work: Path, shards: int, shard_mib: int) -> dict[str, bytes | Path]:
    """The repository's files: a Path for each shard (written under ``work``), the bytes of the others."""
    src = work / "model"
    src.mkdir(parents=True)
    files: dict[str, bytes | Path] = {}
    weight_map = {}
    for i in range(1, shards + 1):
        name = f"model-{i:05d}-of-{shards:05d}.safetensors"
        write_shard(src / name, f"layers.{i}.weight", shard_mib * MiB, seed=i)
        files[name] = src / name
        weight_map[f"layers.{i}.weight"] = name
    files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    files["config.json"] = json.dumps({"architectures": ["DemoForCausalLM"], "hidden_size": 4096}).encode()
    files["generation_config.json"] = b'{"do_sample": false}'
    vocab = {f"t{i}": i for i in range(5000)}
    files["tokenizer.json"] = json.dumps({"model": {"type": "BPE", "vocab": vocab}}).encode()
    files["tokenizer_config.json"] = b'{"chat_template": "{{ messages }}"}'
    files["modeling_demo.py"] = b"class DemoForCausalLM: ...\n"
    return files


def manifest(files: dict[str, bytes | Path]) -> dict[str, dict[str, Any]]:
    """{name: {size, sha256}} of the repository's files, as ``verify_tree`` takes it."""
    out: dict[str, dict[str, Any]] = {}
    for rel, data in files.items():
        if isinstance(data, Path):
            out[rel] = {"size": data.stat().st_size, "sha256": sha256_file(data)}
        else:
            out[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return out
