"""End-to-end for gs://: the real CLI in a child process against fake-gcs-server on 127.0.0.1, with the
fault-injecting proxy in front of it where a test needs the network to misbehave."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import re
import signal
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from downloader import is_ready, read_manifest, read_progress
from tests.conftest import Gate, journal_ranges, popen_cli, read_tree, run_cli, wait_until
from tests.faultproxy import Callback, FaultProxy, FlipBit, RequestRecord, Reset, Rule, Stall, Status, Truncate
from tests.gcs_server import FakeGcs, RefusingTokenEndpoint, free_port, upload
from tests.synthetic import MiB, model_files, random_bytes

CLASSIC = "json,safetensors,py"
# Small ranges so that a few-MiB file exercises parallel ranged GETs.
RANGED = ["--part-threshold", "2MiB", "--part-chunksize", "1MiB", "--num-threads", "4", "--max-attempts", "6"]
SHARD = "weights.safetensors"
UNUSED_S3 = "http://127.0.0.1:9"  # run_cli's endpoint argument sets AWS_ENDPOINT_URL, which gs:// ignores
LISTING = r"^/storage/v1/b/[^/?]+/o\?"  # objects.list (objects.get goes on with /o/<object>)


@pytest.fixture(scope="module")
def gcs() -> Iterator[FakeGcs]:
    with FakeGcs() as server:
        yield server


@pytest.fixture(scope="module")
def gcs_client(gcs: FakeGcs) -> Any:
    client = gcs.client()
    yield client
    client.close()


@pytest.fixture
def gcs_bucket(gcs_client: Any) -> str:
    name = f"models-{uuid.uuid4().hex[:12]}"
    gcs_client.create_bucket(name)
    return name


@pytest.fixture
def proxy(gcs: FakeGcs) -> Iterator[FaultProxy]:
    with FaultProxy(gcs.host, gcs.port) as p:
        yield p


@pytest.fixture(scope="module")
def classic_model(gcs_client: Any) -> tuple[str, dict[str, bytes]]:
    """Three ~3 MiB shards (3 ranges each) and the files the classic filter must skip; never modified."""
    name = f"models-{uuid.uuid4().hex[:12]}"
    gcs_client.create_bucket(name)
    files = model_files(shards=3, shard_bytes=3 * MiB)
    upload(gcs_client, name, "org/llama-demo", files)
    gcs_client.bucket(name).blob("org/llama-demo/").upload_from_string(b"")  # a console-made folder placeholder
    return name, files


@pytest.fixture
def shard_model(gcs_client: Any, gcs_bucket: str) -> tuple[str, dict[str, bytes]]:
    files = {SHARD: random_bytes(12 * MiB, 7), "config.json": b'{"model_type": "demo"}'}
    upload(gcs_client, gcs_bucket, "m", files)
    return gcs_bucket, files


def gs(endpoint: str, uri: str, local: Path | str, *extra: str, **env: str) -> Any:
    return run_cli(
        ["--model-uri", uri, "--local-dir", str(local), *extra],
        UNUSED_S3,
        timeout=120,
        STORAGE_EMULATOR_HOST=endpoint,
        **env,
    )


def expected_classic(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k.rsplit(".", 1)[-1] in ("json", "safetensors", "py")}


def json_error(code: int, reason: str, message: str) -> Status:
    """An error answered the way the JSON API answers one: a JSON document with a message and reasons."""
    document = {"error": {"code": code, "message": message, "errors": [{"reason": reason, "message": message}]}}
    return Status(code, body=json.dumps(document).encode(), headers={"Content-Type": "application/json"})


def media_bytes(proxy: FaultProxy, name: str) -> int:
    """Object bytes served through the proxy for object `name` (media downloads only, not metadata)."""
    quoted = quote(name, safe="")
    return sum(
        r.body_bytes
        for r in proxy.log
        if r.method == "GET" and r.path.startswith("/download/") and r.path.split("?")[0].endswith(quoted)
    )


# ------------------------------------------------------------------------------------------ happy paths
def test_downloads_byte_identical_verified_and_rerun_is_a_noop(gcs: FakeGcs, classic_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = classic_model
    uri = f"gs://{bucket}/org/llama-demo/"
    r = gs(gcs.url, uri, tmp_path, "--allow-file-suffix", CLASSIC, *RANGED)
    assert r.returncode == 0, r.stderr
    model_dir = tmp_path / "llama-demo"
    assert r.stdout.strip() == str(model_dir)
    got = read_tree(str(model_dir))
    assert got == expected_classic(files)
    assert "original/params.json" in got  # sub-folders kept
    assert "happy" not in got and "pytorch_model.bin" not in got

    manifest = read_manifest(str(model_dir))
    assert manifest is not None and is_ready(str(model_dir))
    assert manifest.source == uri
    by_path = {f.path: f for f in manifest.files}
    assert set(by_path) == set(got)
    for f in manifest.files:
        # ranged shards: per-range CRC32Cs combined; small files: x-goog-hash of the single response
        assert f.verified == "size and crc32c (full object)", f
        assert f.checksum is not None and f.checksum.startswith("crc32c:")
        assert f.version.isdigit()  # the object generation
    assert [n for _, _, names in os.walk(model_dir) for n in names if n.endswith(".aibrix-tmp")] == []
    assert os.listdir(model_dir / ".aibrix" / "journal") == []

    before = {p: os.stat(model_dir / p).st_mtime_ns for p in got}
    r = gs(gcs.url, uri, tmp_path, "--allow-file-suffix", CLASSIC, *RANGED)
    assert r.returncode == 0, r.stderr
    assert "nothing to fetch" in r.stderr
    assert {p: os.stat(model_dir / p).st_mtime_ns for p in before} == before


def test_rerun_sends_only_the_listing(gcs: FakeGcs, proxy: FaultProxy, shard_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = shard_model
    assert gs(proxy.url, f"gs://{bucket}/m/", tmp_path, *RANGED).returncode == 0
    # ranged shard: every range pinned to the listed generation, and never a metadata GET for it (the listing
    # already carried its size, generation and checksums)
    generation = str(read_manifest(str(tmp_path / "m")).files[-1].version)  # type: ignore[union-attr]
    media = [rec.path for rec in proxy.log if rec.path.startswith("/download/")]
    assert len(media) == 12 + 1 and all("generation=" in p for p in media)
    assert any(f"generation={generation}" in p for p in media)
    assert [rec.path for rec in proxy.log if rec.path.startswith(f"/storage/v1/b/{bucket}/o/")] == []
    proxy.reset_counters()
    r = gs(proxy.url, f"gs://{bucket}/m/", tmp_path, *RANGED)
    assert r.returncode == 0 and "nothing to fetch" in r.stderr
    assert [(rec.method, rec.path.split("?")[0]) for rec in proxy.log] == [("GET", f"/storage/v1/b/{bucket}/o")]
    assert read_tree(str(tmp_path / "m")) == files


def test_uri_without_trailing_slash_and_single_object(gcs: FakeGcs, classic_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = classic_model
    r = gs(gcs.url, f"gs://{bucket}/org/llama-demo", tmp_path, "--include", "original/")
    assert r.returncode == 0, r.stderr
    assert read_tree(str(tmp_path / "llama-demo")) == {k: v for k, v in files.items() if k.startswith("original/")}

    r = gs(gcs.url, f"gs://{bucket}/org/llama-demo/config.json", tmp_path, "--model-name", "cfg")
    assert r.returncode == 0, r.stderr
    assert read_tree(str(tmp_path / "cfg")) == {"config.json": files["config.json"]}


def test_gzip_stored_object_is_fetched_as_stored_and_verified(gcs: FakeGcs, gcs_client, gcs_bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    raw = b'{"vocab": "' + b"x" * 5000 + b'"}'
    stored = gzip.compress(raw)
    blob = gcs_client.bucket(gcs_bucket).blob("gz/tokenizer.json")
    blob.content_encoding = "gzip"
    blob.upload_from_string(stored, content_type="application/json")
    r = gs(gcs.url, f"gs://{gcs_bucket}/gz/", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "gz/tokenizer.json is stored gzip-compressed" in r.stderr  # a warning names it
    assert read_tree(str(tmp_path / "gz")) == {"tokenizer.json": stored}  # the listed size and CRC32C hold
    manifest = read_manifest(str(tmp_path / "gz"))
    assert manifest is not None and manifest.files[0].verified == "size and crc32c (full object)"


@pytest.mark.slow
def test_listing_pages_through_placeholders_without_the_storage_sdk(
    gcs: FakeGcs, gcs_client, gcs_bucket, proxy: FaultProxy, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    bucket = gcs_client.bucket(gcs_bucket)
    for i in range(1001):  # a first page (1,000 objects) of nothing but folder placeholders
        bucket.blob(f"m/d{i:04d}/").upload_from_string(b"")
    bucket.blob("m/z/config.json").upload_from_string(b'{"a": 1}')
    host_port = proxy.url.split("://", 1)[1]  # STORAGE_EMULATOR_HOST as host:port, the way the Go SDK takes it too
    r = gs(host_port, f"gs://{gcs_bucket}/m/", tmp_path, PYTHONPROFILEIMPORTTIME="1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert read_tree(str(tmp_path / "m")) == {"z/config.json": b'{"a": 1}'}
    listing = [rec.path for rec in proxy.log if re.match(LISTING, rec.path)]
    assert len(listing) == 2, listing
    assert "pageToken=" not in listing[0] and "pageToken=" in listing[1]
    assert all("prefix=m%2F" in p and "fields=items%28" in p for p in listing), listing
    # the JSON API spoken by the downloader itself: google-cloud-storage and its api_core never imported
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "google.auth.transport.requests" in imported
    assert not {m for m in imported if m.startswith(("google.cloud", "google.api_core", "google.resumable_media"))}


def test_listing_retries_rate_limits_and_garbled_answers(
    gcs: FakeGcs, proxy: FaultProxy, shard_model, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    bucket, files = shard_model
    garbled = Status(200, body=b"<html>maintenance</html>", headers={"Content-Type": "text/html"})
    rules = [
        Rule(json_error(403, "rateLimitExceeded", "The project exceeded the rate limit"), match_path=LISTING),
        Rule(garbled, match_path=LISTING),
        Rule(json_error(403, "userRateLimitExceeded", "Slow down"), match_method="GET", only_ranged=True),
    ]
    for rule in rules:
        proxy.add_rule(rule)
    r = gs(proxy.url, f"gs://{bucket}/m/", tmp_path, *RANGED)
    assert r.returncode == 0, r.stderr
    assert [rule.fired for rule in rules] == [1, 1, 1]
    assert "listing: HTTP 403 (The project exceeded the rate limit); retrying (attempt 2)" in r.stderr
    assert "listing: the JSON API's answer is not JSON; retrying (attempt 3)" in r.stderr
    assert read_tree(str(tmp_path / "m")) == files
    progress = read_progress(str(tmp_path / "m"))
    assert progress is not None and progress.errors_by_kind.get("throttled", 0) >= 1  # the media GET's 403


@pytest.mark.slow
def test_listing_gives_up_after_six_attempts(gcs: FakeGcs, proxy: FaultProxy, classic_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, _ = classic_model
    proxy.add_rule(Rule(json_error(500, "backendError", "Backend Error"), match_path=LISTING, times=-1))
    r = gs(proxy.url, f"gs://{bucket}/org/llama-demo/", tmp_path)
    assert r.returncode == 4, r.stderr
    assert (
        f"prefix 'gs://{bucket}/org/llama-demo/': giving up after 6 attempt(s): listing: HTTP 500 (Backend Error)"
        in r.stderr
    )
    assert [n for n in range(2, 7) if f"retrying (attempt {n})" in r.stderr] == [2, 3, 4, 5, 6]
    assert len([rec for rec in proxy.log if re.match(LISTING, rec.path)]) == 6
    assert read_manifest(str(tmp_path / "llama-demo")) is None


# ---------------------------------------------------------------------------------------- clear errors
def test_missing_bucket_and_prefix_fail_clearly(gcs: FakeGcs, classic_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, _ = classic_model
    r = gs(gcs.url, "gs://no-such-bucket-4711/models/x/", tmp_path)
    assert r.returncode == 3, r.stderr
    assert "bucket 'no-such-bucket-4711' does not exist" in r.stderr
    assert "Traceback" not in r.stderr

    r = gs(gcs.url, f"gs://{bucket}/org/no-such-model/", tmp_path)
    assert r.returncode == 3, r.stderr
    assert f"gs://{bucket}/org/no-such-model/: no objects under this prefix" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "no-such-model").exists()


@pytest.mark.parametrize("code, words", [(403, "HTTP 403 (Access Denied)"), (401, "refused anonymous access")])
def test_auth_failure_exits_3_with_one_clear_line(
    gcs: FakeGcs, proxy: FaultProxy, classic_model, tmp_path, code, words
) -> None:  # type: ignore[no-untyped-def]
    bucket, _ = classic_model
    proxy.add_rule(Rule(Status(code), times=-1))
    r = gs(proxy.url, f"gs://{bucket}/org/llama-demo/", tmp_path)
    assert r.returncode == 3, r.stderr
    errors = [line for line in r.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and words in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert read_manifest(str(tmp_path / "llama-demo")) is None


def test_refusal_names_the_json_api_message(gcs: FakeGcs, proxy: FaultProxy, classic_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, _ = classic_model
    message = "reader@demo.iam.gserviceaccount.com does not have storage.objects.list access to the bucket."
    proxy.add_rule(Rule(json_error(403, "forbidden", message), times=-1))
    r = gs(proxy.url, f"gs://{bucket}/org/llama-demo/", tmp_path)
    assert r.returncode == 3, r.stderr
    errors = [line for line in r.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"listing: HTTP 403 ({message})" in errors[0], r.stderr
    assert "retrying" not in r.stderr


def test_credentials_errors_name_the_problem_never_the_secret(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RefusingTokenEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        key = {
            "type": "service_account",
            "project_id": "demo",
            "private_key_id": "0123abcd",
            "private_key": pem,
            "client_email": "downloader@demo.iam.gserviceaccount.com",
            "client_id": "42",
            "token_uri": f"http://127.0.0.1:{server.server_address[1]}/token",
        }
        good = tmp_path / "sa.json"
        good.write_text(json.dumps(key))
        broken = tmp_path / "broken.json"
        broken.write_text(json.dumps({**key, "private_key": pem.replace("A", "B", 40)}))
        secret_line = pem.splitlines()[5]
        for path, words in [
            (good, "could not obtain an access token: invalid_grant: Invalid JWT Signature."),
            (broken, f"cannot load Google Cloud credentials: Failed to load service account credentials from {broken}"),
            (tmp_path / "missing.json", f"cannot load Google Cloud credentials: File {tmp_path / 'missing.json'}"),
        ]:
            # no emulator: the real credential chain, pointed at the key file
            r = gs("", "gs://some-bucket/models/m/", tmp_path / "out", **{"GOOGLE_APPLICATION_CREDENTIALS": str(path)})
            assert r.returncode == 3, r.stderr
            assert words in r.stderr, r.stderr
            assert secret_line not in r.stderr and "PRIVATE KEY" not in r.stderr and "Traceback" not in r.stderr
    finally:
        server.shutdown()
        server.server_close()


def test_no_credentials_anywhere_names_the_ways_to_give_them(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # no key file, no gcloud login (an empty config directory), no metadata server: google-auth is told not to look
    # for one, and were it to look anyway, the address it would ask is a closed port on 127.0.0.1
    closed = f"127.0.0.1:{free_port()}"
    nowhere = {"GOOGLE_APPLICATION_CREDENTIALS": "", "CLOUDSDK_CONFIG": str(tmp_path), "NO_GCE_CHECK": "true"}
    nowhere.update(GCE_METADATA_HOST=closed, GCE_METADATA_IP=closed)
    r = gs("", "gs://some-bucket/models/m/", tmp_path / "out", **nowhere)
    assert r.returncode == 3, r.stderr
    errors = [line for line in r.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "no Google Cloud credentials found: use workload identity" in errors[0], r.stderr


# ---------------------------------------------------------------------------------------------- faults
@pytest.mark.slow
def test_kill_9_then_resume_fetches_only_what_is_missing(
    gcs: FakeGcs, proxy: FaultProxy, shard_model, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    bucket, files = shard_model
    size = len(files[SHARD])
    gate = Gate()  # the first 4 ranges go through; every later one is held until the process is dead
    proxy.add_rule(Rule(Callback(gate.hold), match_method="GET", match_path=SHARD, only_ranged=True, skip=4, times=-1))
    args = ["--model-uri", f"gs://{bucket}/m/", "--local-dir", str(tmp_path), *RANGED]
    proc = popen_cli(args, UNUSED_S3, STORAGE_EMULATOR_HOST=proxy.url)
    model_dir = tmp_path / "m"
    wait_until("4 ranges in the journal", lambda: journal_ranges(model_dir) == 4)
    proc.kill()  # SIGKILL: no cleanup of any kind
    proc.communicate()
    gate.open()
    assert proc.returncode == -signal.SIGKILL
    assert read_manifest(str(model_dir)) is None
    assert not (model_dir / SHARD).exists()
    done_ranges = journal_ranges(model_dir)
    assert done_ranges == 4

    proxy.clear_rules()
    proxy.reset_counters()
    r = gs(proxy.url, f"gs://{bucket}/m/", tmp_path, *RANGED)
    assert r.returncode == 0, r.stderr
    assert f"resuming {SHARD}: {done_ranges * MiB} of {size} bytes already on disk" in r.stderr
    assert media_bytes(proxy, f"m/{SHARD}") == size - done_ranges * MiB  # exactly what the journal lacked
    assert read_tree(str(model_dir)) == files
    assert [n for n in os.listdir(model_dir) if n.endswith(".aibrix-tmp")] == []
    manifest = read_manifest(str(model_dir))
    assert manifest is not None
    assert {f.path: f.verified for f in manifest.files}[SHARD] == "size and crc32c (full object)"


@pytest.mark.slow
def test_flipped_bit_is_caught_by_crc32c_and_the_file_fetched_again(
    gcs: FakeGcs, proxy: FaultProxy, shard_model, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    bucket, files = shard_model
    rule = proxy.add_rule(
        Rule(FlipBit(offset=4321, bit=3), match_method="GET", match_path=SHARD, only_ranged=True, times=1, skip=5)
    )
    r = gs(proxy.url, f"gs://{bucket}/m/", tmp_path, *RANGED)
    assert r.returncode == 0, r.stderr
    assert rule.fired == 1
    assert "crc32c (full object) mismatch" in r.stderr and "fetching the file again" in r.stderr
    assert read_tree(str(tmp_path / "m")) == files
    assert media_bytes(proxy, f"m/{SHARD}") >= 2 * len(files[SHARD]) - 4 * MiB  # fetched again from scratch
    manifest = read_manifest(str(tmp_path / "m"))
    assert manifest is not None
    assert {f.path: f.verified for f in manifest.files}[SHARD] == "size and crc32c (full object)"


@pytest.mark.slow
def test_object_replaced_mid_download_starts_that_file_over(
    gcs: FakeGcs, gcs_client, proxy: FaultProxy, shard_model, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    bucket, files = shard_model
    new_content = random_bytes(12 * MiB, 99)

    def replace(_record: RequestRecord) -> None:
        upload(gcs_client, bucket, "m", {SHARD: new_content})  # a new generation of the same name

    proxy.add_rule(Rule(Callback(replace), match_method="GET", match_path=SHARD, only_ranged=True, times=1, skip=4))
    r = gs(proxy.url, f"gs://{bucket}/m/", tmp_path, *RANGED)
    assert r.returncode == 0, r.stderr
    assert "changed during download" in r.stderr and "generation" in r.stderr
    assert read_tree(str(tmp_path / "m")) == {**files, SHARD: new_content}
    progress = read_progress(str(tmp_path / "m"))
    assert progress is not None and progress.object_changes == 1
    manifest = read_manifest(str(tmp_path / "m"))
    assert manifest is not None
    new_generation = str(gcs_client.bucket(bucket).get_blob(f"m/{SHARD}").generation)
    assert {f.path: f.version for f in manifest.files}[SHARD] == new_generation


@pytest.mark.slow
def test_object_deleted_mid_download_fails_clearly(
    gcs: FakeGcs, gcs_client, proxy: FaultProxy, shard_model, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    bucket, _ = shard_model

    def delete(_record: RequestRecord) -> None:
        gcs_client.bucket(bucket).blob(f"m/{SHARD}").delete()

    proxy.add_rule(Rule(Callback(delete), match_method="GET", match_path=SHARD, only_ranged=True, times=1, skip=2))
    r = gs(proxy.url, f"gs://{bucket}/m/", tmp_path, *RANGED)
    assert r.returncode == 3, r.stderr
    assert "object disappeared during the download" in r.stderr and "Traceback" not in r.stderr
    assert read_manifest(str(tmp_path / "m")) is None


@pytest.mark.slow
def test_bucket_deleted_mid_download_fails_clearly(
    gcs: FakeGcs, gcs_client, proxy: FaultProxy, shard_model, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    bucket, _ = shard_model

    def delete_bucket(_record: RequestRecord) -> None:
        for blob in gcs_client.list_blobs(bucket):
            blob.delete()
        gcs_client.bucket(bucket).delete()

    proxy.add_rule(Rule(Callback(delete_bucket), match_method="GET", match_path=SHARD, only_ranged=True, skip=2))
    r = gs(proxy.url, f"gs://{bucket}/m/", tmp_path, *RANGED)
    assert r.returncode == 3, r.stderr
    assert f"bucket {bucket!r} does not exist" in r.stderr and "Traceback" not in r.stderr
    assert read_manifest(str(tmp_path / "m")) is None


@pytest.mark.slow
def test_throttling_resets_truncation_and_stalls_are_retried(
    gcs: FakeGcs, proxy: FaultProxy, shard_model, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    bucket, files = shard_model
    rules = [
        proxy.add_rule(Rule(Status(429, retry_after="1"), match_method="GET", only_ranged=True, times=1, skip=1)),
        proxy.add_rule(Rule(Reset(after_bytes=300_000), match_method="GET", only_ranged=True, times=1, skip=2)),
        proxy.add_rule(Rule(Truncate(after_bytes=200_000), match_method="GET", only_ranged=True, times=1, skip=3)),
        proxy.add_rule(Rule(Stall(seconds=60, after_bytes=10_000), match_method="GET", only_ranged=True, skip=4)),
    ]
    r = gs(proxy.url, f"gs://{bucket}/m/", tmp_path, *RANGED, "--stall-timeout", "1.5")
    assert r.returncode == 0, r.stderr
    assert [rule.fired for rule in rules] == [1, 1, 1, 1]  # the 60 s stall was abandoned: counted as a stall below
    assert read_tree(str(tmp_path / "m")) == files
    progress = read_progress(str(tmp_path / "m"))
    assert progress is not None
    for kind in ("throttled", "reset", "truncated", "stall"):
        assert progress.errors_by_kind.get(kind, 0) >= 1, progress.errors_by_kind
