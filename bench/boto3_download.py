"""boto3 baseline for the benchmark: download every object under an S3 prefix.

All objects are submitted to ONE shared s3transfer TransferManager, so
``--concurrency`` is a global cap on in-flight ranged GETs across all files
(this is how ``aws s3 cp --recursive`` uses s3transfer).  Objects larger than
the chunk size are fetched as parallel ranged GETs of ``--chunk-mib``.  With
``--defaults``, the client and the TransferManager keep every default of
botocore and s3transfer (max_concurrency 10, 8 MiB parts from 8 MiB,
max_pool_connections 10) and the two numeric options are ignored.

Endpoint and credentials come from the usual AWS_* environment variables.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bucket", required=True)
    p.add_argument("--prefix", required=True, help="key prefix, e.g. models/foo/")
    p.add_argument("--dest", required=True, help="local directory to fill")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--chunk-mib", type=int, default=64)
    p.add_argument("--defaults", action="store_true", help="botocore's and s3transfer's defaults for everything")
    args = p.parse_args()

    prefix = args.prefix if args.prefix.endswith("/") else args.prefix + "/"
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if args.defaults:
        client = boto3.client("s3", endpoint_url=endpoint)
        cfg = TransferConfig()
    else:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            config=Config(max_pool_connections=args.concurrency, retries={"mode": "standard"}),
        )
        chunk = args.chunk_mib * 1024 * 1024
        cfg = TransferConfig(
            max_concurrency=args.concurrency,
            multipart_threshold=chunk,
            multipart_chunksize=chunk,
            use_threads=True,
        )

    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=args.bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/"))
    if not keys:
        print(f"no objects under s3://{args.bucket}/{prefix}", file=sys.stderr)
        return 2

    dest = Path(args.dest)
    with create_transfer_manager(client, cfg) as tm:
        futures = []
        for key in keys:
            target = dest / key[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            futures.append(tm.download(args.bucket, key, str(target)))
        for f in futures:
            f.result()
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
