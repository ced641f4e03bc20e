"""`make demo`: a local S3 server seeded with a small model, downloaded by the real CLI, then shown.

Everything runs on 127.0.0.1: moto's S3 server, a synthetic model (safetensors shards, config and
tokenizer JSON, custom modeling code, and files the classic filter skips), and `aibrix-download`.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

os.environ.update(
    AWS_EC2_METADATA_DISABLED="true",
    AWS_ACCESS_KEY_ID="demo-key-id",
    AWS_SECRET_ACCESS_KEY="demo-secret",
    AWS_REGION="us-east-1",
)

import boto3
from moto.server import ThreadedMotoServer

from tests.synthetic import MiB, model_files, upload

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, ".demo", "models")


def main() -> int:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="models")
        files = model_files(shards=3, shard_bytes=24 * MiB)
        upload(s3, "models", "deepseek-ai/demo-model", files, part_size=8 * MiB)
        print(f"== local S3 server on {endpoint}; s3://models/deepseek-ai/demo-model/ holds:")
        for rel in sorted(files):
            print(f"   {len(files[rel]):>10}  {rel}")
        shutil.rmtree(OUT, ignore_errors=True)
        cmd = [
            os.path.join(os.path.dirname(sys.executable), "aibrix-download"),
            "--model-uri", "s3://models/deepseek-ai/demo-model/",
            "--local-dir", OUT,
            "--allow-file-suffix", "json,safetensors,py",
            "--part-chunksize", "8MiB", "--part-threshold", "16MiB", "--num-threads", "8",
        ]  # fmt: skip
        env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, DOWNLOADER_PROGRESS_INTERVAL="0.5")
        print("\n== " + " ".join(["aibrix-download", *cmd[1:]]), flush=True)
        first = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        if first.returncode != 0:
            print(f"download failed with exit code {first.returncode}")
            return first.returncode
        model_dir = first.stdout.strip()
        print(f"\n== stdout: {model_dir}\n== what landed (the filter skipped *.bin, *.pth, README.md and 'happy'):")
        for dirpath, dirnames, names in os.walk(model_dir):
            dirnames[:] = sorted(d for d in dirnames if d != ".aibrix")  # our bookkeeping, shown below
            for name in sorted(names):
                path = os.path.join(dirpath, name)
                print(f"   {os.path.getsize(path):>10}  {os.path.relpath(path, model_dir)}")
        from downloader import read_manifest

        manifest = read_manifest(model_dir)
        assert manifest is not None
        print(f"\n== manifest: {len(manifest.files)} files, {manifest.total_bytes} bytes, all verified:")
        for f in manifest.files:
            print(f"   {f.path}: {f.verified}")
        print("\n== a second run fetches nothing:", flush=True)
        second = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        return second.returncode
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
