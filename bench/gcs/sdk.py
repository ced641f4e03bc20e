"""The peers: what a user of google-cloud-storage would write, ``transfer_manager`` chunked for big blobs, run as
``bench_gcs.py sdk-download`` (internal) under ``/usr/bin/time -v``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..harness.common import MiB
from .emulator import gcs_client


def sdk_download(args: argparse.Namespace) -> int:
    from google.cloud.storage import transfer_manager

    client = gcs_client(args.endpoint)
    worker_type = transfer_manager.PROCESS if args.worker_type == "process" else transfer_manager.THREAD
    chunk = args.chunk_mib * MiB
    dest = Path(args.dest)
    blobs = [b for b in client.list_blobs(args.bucket, prefix=args.prefix) if not b.name.endswith("/")]
    small = [b.name[len(args.prefix) :] for b in blobs if b.size < chunk]  # relative to blob_name_prefix
    results = transfer_manager.download_many_to_path(
        client.bucket(args.bucket),
        small,
        destination_directory=str(dest),
        blob_name_prefix=args.prefix,
        max_workers=args.workers,
        worker_type=worker_type,
        raise_exception=True,
    )
    for r in results:
        if isinstance(r, Exception):
            raise r
    for b in blobs:
        if b.size >= chunk:
            target = dest / b.name[len(args.prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            transfer_manager.download_chunks_concurrently(
                b, str(target), chunk_size=chunk, max_workers=args.workers, worker_type=worker_type
            )
    print(dest)
    return 0
