"""Small synthetic models for tests, the demo and benchmarks: real safetensors layout, random weights."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping

MiB = 1024 * 1024


def safetensors_bytes(name: str, nbytes: int, seed: int) -> bytes:
    """A valid safetensors file holding one float32 tensor of about `nbytes` bytes."""
    count = max(1, nbytes // 4)
    header = {
        name: {"dtype": "F32", "shape": [count], "data_offsets": [0, count * 4]},
        "__metadata__": {"format": "pt"},
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + random_bytes(count * 4, seed)


def random_bytes(n: int, seed: int) -> bytes:
    """Incompressible, reproducible bytes, generated quickly (a 1 MiB random block, varied per MiB)."""
    import random

    rng = random.Random(seed)
    block = rng.randbytes(min(n, MiB))
    out = bytearray()
    i = 0
    while len(out) < n:
        out += (i.to_bytes(8, "little") + block[8:])[: n - len(out)]
        i += 1
    return bytes(out)


def model_files(shards: int = 3, shard_bytes: int = 3 * MiB, seed: int = 1) -> dict[str, bytes]:
    """A model directory as {relative path: bytes}, including files the classic filter must skip."""
    files: dict[str, bytes] = {}
    weight_map = {}
    for i in range(1, shards + 1):
        name = f"model-{i:05d}-of-{shards:05d}.safetensors"
        files[name] = safetensors_bytes(f"layers.{i}.weight", shard_bytes, seed + i)
        weight_map[f"layers.{i}.weight"] = name
    files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    files["config.json"] = json.dumps({"architectures": ["DemoForCausalLM"], "hidden_size": 64}).encode()
    files["generation_config.json"] = json.dumps({"do_sample": False}).encode()
    files["tokenizer.json"] = json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}}}).encode()
    files["tokenizer_config.json"] = json.dumps({"chat_template": "{{ messages }}"}).encode()
    files["modeling_demo.py"] = b"# custom modeling code shipped with the model\nclass DemoForCausalLM: ...\n"
    files["happy"] = b"a file whose name ends in 'py' but has no .py suffix\n"
    files["pytorch_model.bin"] = random_bytes(256 * 1024, seed + 100)
    files["original/consolidated.00.pth"] = random_bytes(512 * 1024, seed + 101)
    files["original/params.json"] = b'{"dim": 64}'
    files["README.md"] = b"# demo model\n"
    return files


def upload(client: object, bucket: str, prefix: str, files: Mapping[str, bytes], *, part_size: int = 0) -> None:
    """Put every file under the prefix; files larger than part_size (when set) go up as multipart uploads."""
    for rel, data in files.items():
        key = f"{prefix.rstrip('/')}/{rel}" if prefix else rel
        if part_size and len(data) > part_size:
            mp = client.create_multipart_upload(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
            parts = []
            for n, off in enumerate(range(0, len(data), part_size), start=1):
                r = client.upload_part(  # type: ignore[attr-defined]
                    Bucket=bucket, Key=key, UploadId=mp["UploadId"], PartNumber=n, Body=data[off : off + part_size]
                )
                parts.append({"PartNumber": n, "ETag": r["ETag"]})
            client.complete_multipart_upload(  # type: ignore[attr-defined]
                Bucket=bucket, Key=key, UploadId=mp["UploadId"], MultipartUpload={"Parts": parts}
            )
        else:
            client.put_object(Bucket=bucket, Key=key, Body=data)  # type: ignore[attr-defined]


def write_tree(root: str, files: Mapping[str, bytes]) -> None:
    for rel, data in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
