"""Faults between the downloader and a real S3 server: a fault-injecting proxy in front of moto."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from downloader import read_manifest, read_progress
from downloader.layout import DONE_NAME
from downloader.state import JournalHeader, StateDir, new_token, open_direct, temp_name
from downloader.transfer import READ_STEP
from tests.conftest import Gate, StderrLines, journal_ranges, popen_cli, read_tree, run_cli, wait_until
from tests.faultproxy import (
    Callback,
    FaultProxy,
    FlipBit,
    RequestRecord,
    Reset,
    RewriteHeader,
    Rule,
    Stall,
    Status,
    Truncate,
)
from tests.synthetic import MiB, random_bytes, upload

pytestmark = pytest.mark.slow

SHARD = "weights.safetensors"
# 1 MiB ranges over a 12 MiB shard: 12 ranged GETs, 4 connections.
RANGED = ["--part-threshold", "2MiB", "--part-chunksize", "1MiB", "--num-threads", "4", "--max-attempts", "6"]


@pytest.fixture
def shard_model(s3: object, bucket: str) -> tuple[str, dict[str, bytes]]:
    files = {SHARD: random_bytes(12 * MiB, 7), "config.json": b'{"model_type": "demo"}'}
    upload(s3, bucket, "m", files)  # single-part uploads: the ETag is the MD5 of the object
    return bucket, files


def object_get_bytes(proxy: FaultProxy, key_suffix: str) -> int:
    return sum(r.body_bytes for r in proxy.log if r.method == "GET" and r.path.split("?")[0].endswith(key_suffix))


def download(proxy: FaultProxy, bucket: str, local: Path, *extra: str, **env: str):  # type: ignore[no-untyped-def]
    return run_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(local), *RANGED, *extra], proxy.url, **env)


def test_throttling_is_retried_with_backoff(proxy: FaultProxy, shard_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = shard_model
    rule = proxy.add_rule(Rule(Status(503, retry_after="1"), match_method="GET", only_ranged=True, times=3))
    started = time.monotonic()
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 0, r.stderr
    assert rule.fired == 3
    assert time.monotonic() - started >= 1.0  # Retry-After was honoured
    assert read_tree(str(tmp_path / "m")) == files
    progress = read_progress(str(tmp_path / "m"))
    assert progress is not None and progress.errors_by_kind.get("throttled", 0) >= 3


@pytest.mark.parametrize(
    "action, kind",
    [
        (Reset(after_bytes=300_000), "reset"),
        (Truncate(after_bytes=200_000), "truncated"),
        (RewriteHeader("Content-Range", "bytes 0-9/10"), "bad-content-range"),
    ],
)
def test_broken_responses_are_retried(proxy: FaultProxy, shard_model, tmp_path, action, kind) -> None:  # type: ignore[no-untyped-def]
    bucket, files = shard_model
    rule = proxy.add_rule(Rule(action, match_method="GET", only_ranged=True, times=3, skip=2))
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 0, r.stderr
    assert rule.fired == 3
    assert read_tree(str(tmp_path / "m")) == files
    progress = read_progress(str(tmp_path / "m"))
    assert progress is not None and progress.errors_by_kind.get(kind, 0) >= 1, progress


def test_a_reset_range_resumes_where_it_broke(proxy: FaultProxy, shard_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = shard_model
    proxy.add_rule(Rule(Reset(after_bytes=700_000, linger=0.5), match_method="GET", only_ranged=True, times=1))
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 0, r.stderr
    # The broken range asks for its remaining bytes only: nothing is fetched twice beyond the read that broke (at
    # most READ_STEP bytes) and what was in flight in the proxy's buffer when it reset the connection.
    assert object_get_bytes(proxy, SHARD) <= len(files[SHARD]) + READ_STEP + 200_000
    assert read_tree(str(tmp_path / "m")) == files


def test_stalled_range_is_abandoned_and_retried(proxy: FaultProxy, shard_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = shard_model
    rule = proxy.add_rule(Rule(Stall(seconds=60, after_bytes=10_000), match_method="GET", only_ranged=True, times=1))
    r = download(proxy, bucket, tmp_path, "--stall-timeout", "5")
    assert r.returncode == 0, r.stderr
    assert rule.fired == 1
    # Abandoned, not waited out: had the range sat through the 60 s stall, it would have ended with no error.
    progress = read_progress(str(tmp_path / "m"))
    assert progress is not None and progress.errors_by_kind.get("stall") == 1
    assert read_tree(str(tmp_path / "m")) == files


def test_flipped_bit_is_caught_and_the_file_fetched_again(proxy: FaultProxy, shard_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = shard_model
    rule = proxy.add_rule(
        Rule(FlipBit(offset=4321, bit=3), match_method="GET", match_path=SHARD, only_ranged=True, times=1, skip=5)
    )
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 0, r.stderr
    assert rule.fired == 1
    assert "(full object) mismatch" in r.stderr  # moto publishes CRC32 too; the cheapest checksum is used
    assert read_tree(str(tmp_path / "m")) == files
    manifest = read_manifest(str(tmp_path / "m"))
    assert manifest is not None
    assert {f.path: f.verified for f in manifest.files}[SHARD] in (
        "size and crc32 (full object)",
        "size and md5 (full object)",
    )


def test_persistent_corruption_fails_without_manifest(proxy: FaultProxy, shard_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, _ = shard_model
    proxy.add_rule(Rule(FlipBit(offset=99), match_method="GET", match_path=SHARD, only_ranged=True, times=-1))
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 5, r.stderr
    assert "mismatch" in r.stderr and SHARD in r.stderr
    assert read_manifest(str(tmp_path / "m")) is None
    assert not (tmp_path / "m" / SHARD).exists()  # a corrupt file never gets its final name


def test_server_errors_that_never_stop_fail_clearly(proxy: FaultProxy, shard_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, _ = shard_model
    proxy.add_rule(Rule(Status(500), match_method="GET", match_path=SHARD, only_ranged=True, times=-1))
    r = download(proxy, bucket, tmp_path, "--max-attempts", "3")
    assert r.returncode == 4, r.stderr
    assert "giving up after 3 attempt(s)" in r.stderr and SHARD in r.stderr
    assert "Traceback" not in r.stderr
    assert read_manifest(str(tmp_path / "m")) is None


def test_object_replaced_mid_download_starts_that_file_over(proxy: FaultProxy, s3, shard_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = shard_model
    new_content = random_bytes(12 * MiB, 99)

    def replace(_record: RequestRecord) -> None:
        s3.put_object(Bucket=bucket, Key=f"m/{SHARD}", Body=new_content)

    proxy.add_rule(Rule(Callback(replace), match_method="GET", match_path=SHARD, only_ranged=True, times=1, skip=4))
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "changed during download" in r.stderr
    assert read_tree(str(tmp_path / "m")) == {**files, SHARD: new_content}
    progress = read_progress(str(tmp_path / "m"))
    assert progress is not None and progress.object_changes == 1


def test_kill_9_then_resume_fetches_only_what_is_missing(proxy: FaultProxy, shard_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = shard_model
    size = len(files[SHARD])
    gate = Gate()  # the first 4 ranges go through; every later one is held until the process is dead
    proxy.add_rule(Rule(Callback(gate.hold), match_method="GET", only_ranged=True, skip=4, times=-1))
    proc = popen_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path), *RANGED], proxy.url)
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
    missing = size - done_ranges * MiB

    proxy.clear_rules()
    proxy.reset_counters()
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"resuming {SHARD}: {done_ranges * MiB} of {size} bytes already on disk" in r.stderr
    assert object_get_bytes(proxy, SHARD) == missing  # exactly the ranges the journal did not have
    assert read_tree(str(model_dir)) == files
    leftovers = [n for n in os.listdir(model_dir) if n.endswith(".aibrix-tmp")]
    assert leftovers == []


@pytest.mark.parametrize("touched", [False, True], ids=["in-place", "touched-since"])
def test_a_file_renamed_into_place_before_its_record_is_found_by_the_next_run(  # type: ignore[no-untyped-def]
    proxy: FaultProxy, shard_model, tmp_path, touched: bool
) -> None:
    # A process killed between a large file's rename into place and its line in done.jsonl leaves the file under its
    # name, no record of it, no manifest, and its journal with the record it was about to write (Journal.placed).
    # The next run records the file and fetches none of it; a file under the name that is not that one (here the same
    # bytes with another mtime) is fetched again.
    bucket, files = shard_model
    assert download(proxy, bucket, tmp_path).returncode == 0
    model_dir = tmp_path / "m"
    state = StateDir(str(model_dir))
    records = state.read_done()
    record = records[SHARD]
    state.remove_manifest()
    os.unlink(os.path.join(state.path, DONE_NAME))
    state.append_done([r for path, r in records.items() if path != SHARD])
    state.close()
    os.makedirs(state.journal_path, exist_ok=True)
    token = new_token()
    header = JournalHeader(
        SHARD, f"m/{SHARD}", record.version, record.version_id, record.size, temp_name(SHARD, token), "v1"
    )
    state.start_journal(token, header)
    state.record_placing(token, record)
    if touched:
        os.utime(model_dir / SHARD, ns=(record.mtime_ns, record.mtime_ns + 1_000_000))

    dry = download(proxy, bucket, tmp_path, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    shown = next(line for line in dry.stdout.splitlines() if line.endswith(SHARD))
    assert shown.split()[0] == ("fetch" if touched else "present")
    proxy.reset_counters()
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 0, r.stderr
    assert object_get_bytes(proxy, SHARD) == (len(files[SHARD]) if touched else 0)
    assert ("in place, recorded now" in r.stderr) is not touched
    assert read_tree(str(model_dir)) == files
    manifest = read_manifest(str(model_dir))
    assert manifest is not None
    shard = next(f for f in manifest.files if f.path == SHARD)
    assert (shard.mtime_ns == record.mtime_ns) is not touched
    assert os.listdir(state.journal_path) == []


def test_a_run_that_fails_after_the_rename_leaves_the_record_it_was_about_to_write(  # type: ignore[no-untyped-def]
    proxy: FaultProxy, s3, bucket, tmp_path
) -> None:
    # The window for real: done.jsonl cannot be written (a directory stands at its name), so the run fails right after
    # it renamed the file into place. Once the directory is gone, the next run finds the file by its journal.
    data = random_bytes(6 * MiB, 11)
    upload(s3, bucket, "solo", {SHARD: data})
    model_dir = tmp_path / "solo"
    os.makedirs(model_dir / ".aibrix" / DONE_NAME)
    args = ["--model-uri", f"s3://{bucket}/solo/", "--local-dir", str(tmp_path), *RANGED]
    r = run_cli(args, proxy.url)
    assert r.returncode != 0 and DONE_NAME in r.stderr, r.stderr
    assert (model_dir / SHARD).read_bytes() == data and read_manifest(str(model_dir)) is None
    os.rmdir(model_dir / ".aibrix" / DONE_NAME)
    proxy.reset_counters()
    r = run_cli(args, proxy.url)
    assert r.returncode == 0, r.stderr
    assert "in place, recorded now" in r.stderr
    assert object_get_bytes(proxy, SHARD) == 0
    assert read_tree(str(model_dir)) == {SHARD: data} and read_manifest(str(model_dir)) is not None


def test_sigterm_stops_cleanly_and_the_next_run_resumes(proxy: FaultProxy, shard_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = shard_model
    gate = Gate()  # two ranges go through, the rest wait: the signal always comes mid-download
    proxy.add_rule(Rule(Callback(gate.hold), match_method="GET", only_ranged=True, skip=2, times=-1))
    proc = popen_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path), *RANGED], proxy.url)
    model_dir = tmp_path / "m"
    wait_until("2 ranges in the journal", lambda: journal_ranges(model_dir) == 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    gate.open()
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM" in err
    progress = read_progress(str(model_dir))
    assert progress is not None and progress.phase == "interrupted"
    assert read_manifest(str(model_dir)) is None

    proxy.clear_rules()
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    assert read_tree(str(model_dir)) == files


def test_rerun_sends_no_object_requests(proxy: FaultProxy, shard_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, _ = shard_model
    assert download(proxy, bucket, tmp_path).returncode == 0
    proxy.reset_counters()
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 0, r.stderr
    requests = [(rec.method, rec.path.split("?")[0]) for rec in proxy.log]
    assert requests == [("GET", f"/{bucket}")]  # one listing, nothing else


def test_concurrent_processes_fetch_each_byte_once(proxy: FaultProxy, shard_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = shard_model
    model_bytes = sum(map(len, files.values()))
    gate = Gate()  # the first process's ranges wait until the three others are waiting for its lock
    proxy.add_rule(Rule(Callback(gate.hold), match_method="GET", only_ranged=True, times=-1))
    args = ["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path), *RANGED]
    first = popen_cli(args, proxy.url)
    wait_until("the first process fetching (it holds the lock)", lambda: gate.held > 0)
    others = [popen_cli(args, proxy.url) for _ in range(3)]
    watched = [StderrLines(p) for p in others]
    for w in watched:
        w.wait_for(f"waiting for pid {first.pid}")
    gate.open()
    first_out, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    assert first_out.strip() == str(tmp_path / "m")
    for p, w in zip(others, watched, strict=True):
        assert p.stdout is not None
        out = p.stdout.read()  # not communicate(): its stderr is StderrLines' to read
        p.wait(timeout=120)
        err = w.text()
        assert p.returncode == 0, err
        assert out.strip() == str(tmp_path / "m")
        assert "is complete; nothing to fetch" in err, err  # it waited, then found the model whole
    object_bytes = object_get_bytes(proxy, SHARD) + object_get_bytes(proxy, "config.json")
    assert object_bytes <= 1.05 * model_bytes
    assert read_tree(str(tmp_path / "m")) == files
    manifest = json.loads((tmp_path / "m" / ".aibrix" / "manifest.json").read_text())
    assert manifest["file_count"] == 2


def test_a_lost_lock_is_still_safe(proxy: FaultProxy, shard_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Some filesystems ignore flock: two processes then download at once and both must end correct.

    The first process is held mid-file; the second, which no lock keeps out, takes over the first one's journal
    and temp file, finishes the model and writes the manifest; then the first goes on, finds its temp file gone
    and the file rewritten under it, and fetches that file again. (The two are kept from finishing at the same
    moment: a finish inside the other's commit is a race of its own, reported in issue 19.)"""
    bucket, files = shard_model
    gate = Gate()
    first_key = "first-process-key"  # the proxy tells the two processes apart by the key id they sign with

    def hold_the_first(record: RequestRecord) -> None:
        if record.access_key == first_key:
            gate.hold(record)

    proxy.add_rule(Rule(Callback(hold_the_first), match_method="GET", only_ranged=True, skip=2, times=-1))
    args = ["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path), *RANGED, "--stall-timeout", "600"]
    first = popen_cli(args, proxy.url, AWS_ACCESS_KEY_ID=first_key)
    model_dir = tmp_path / "m"
    wait_until("2 ranges in the first process's journal", lambda: journal_ranges(model_dir) == 2)
    wait_until("the first process's 4 connections at the gate", lambda: gate.held == 4)
    os.unlink(model_dir / ".aibrix" / "lock")  # the second process gets a lock of its own: no exclusion
    second = popen_cli(args, proxy.url)
    _, second_err = second.communicate(timeout=120)
    assert second.returncode == 0, second_err
    assert "resuming weights.safetensors" in second_err  # the first process's journal, taken over
    gate.open()
    _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    assert "temporary file vanished; fetching the file again" in first_err
    assert read_tree(str(model_dir)) == files
    assert read_manifest(str(model_dir)) is not None
    assert [n for n in os.listdir(model_dir) if n.endswith(".aibrix-tmp")] == []
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 0 and "nothing to fetch" in r.stderr


def test_access_denied_is_a_clear_error(proxy: FaultProxy, shard_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, _ = shard_model
    proxy.add_rule(Rule(Status(403), times=-1))  # every request: wrong keys, or a role without s3:ListBucket
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 3, r.stderr
    assert "AccessDenied" in r.stderr and "Traceback" not in r.stderr
    assert "testing-secret-key" not in r.stderr  # the secret never appears
    assert read_manifest(str(tmp_path / "m")) is None


DIRECT_UA = "aibrix-download rest/"  # the REST transport: signed here, sent over http.client


def object_gets(proxy: FaultProxy) -> list[RequestRecord]:
    return [r for r in proxy.log if r.method == "GET" and "/m/" in r.path and "list-type" not in r.path]


@pytest.mark.fast_paths
def test_every_request_through_the_rest_transport_or_with_fast_paths_off_boto3s(
    proxy: FaultProxy, shard_model, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    bucket, files = shard_model
    r = download(proxy, bucket, tmp_path / "a")
    assert r.returncode == 0, r.stderr
    gets = object_gets(proxy)
    shard = [g for g in gets if SHARD in g.path]  # config.json, under 1 MiB, goes through the CRT (test_s3_crt.py)
    assert len(gets) == 13 and len(shard) == 12 and all(g.user_agent.startswith(DIRECT_UA) for g in shard), gets
    others = [x for x in proxy.log if x not in gets]  # the listing and the shard's HEADs
    assert others and all(x.user_agent.startswith(DIRECT_UA) for x in others), others

    # --fast-paths off: boto3's client carries every request, through its public API.
    proxy.reset_counters()
    r = download(proxy, bucket, tmp_path / "b", "--no-fast-paths")
    assert r.returncode == 0, r.stderr
    assert read_tree(str(tmp_path / "b" / "m")) == files
    assert proxy.log and all("Boto3/" in x.user_agent and "aibrix-download" in x.user_agent for x in proxy.log)

    # An answer no retry can change (a 400) fails the run clearly, whichever request got it.
    rule = proxy.add_rule(Rule(Status(400), match_method="GET", match_path=SHARD, only_ranged=True, times=1, skip=3))
    r = download(proxy, bucket, tmp_path / "c", "--num-threads", "1")
    assert r.returncode == 3 and rule.fired == 1, r.stderr
    assert "GET: BadRequest" in r.stderr and "Traceback" not in r.stderr
    assert read_manifest(str(tmp_path / "c" / "m")) is None


def test_access_denied_on_the_objects_alone_is_a_clear_error(proxy: FaultProxy, shard_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, _ = shard_model
    proxy.add_rule(Rule(Status(403), match_method="GET", only_ranged=True, times=-1))  # may list, may not read
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 3, r.stderr
    assert "AccessDenied" in r.stderr and "Traceback" not in r.stderr
    assert read_manifest(str(tmp_path / "m")) is None


def test_versioned_bucket_reads_the_listed_version(proxy: FaultProxy, s3, shard_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = shard_model
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    newer = random_bytes(12 * MiB, 11)
    version_id = s3.put_object(Bucket=bucket, Key=f"m/{SHARD}", Body=newer)["VersionId"]
    s3.put_object(Bucket=bucket, Key="m/config.json", Body=files["config.json"])  # versioned small file too
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 0, r.stderr
    assert read_tree(str(tmp_path / "m")) == {**files, SHARD: newer}
    shard_gets = [g for g in object_gets(proxy) if SHARD in g.path]
    assert len(shard_gets) == 12
    assert all(f"versionId={version_id}" in g.path for g in shard_gets)
    manifest = read_manifest(str(tmp_path / "m"))
    assert manifest is not None and {f.path: f.version_id for f in manifest.files}[SHARD] == version_id


def resident_bytes(path: Path) -> int:
    """Bytes of the file in the page cache (util-linux fincore)."""
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)], capture_output=True)
    return int(out.stdout.decode().strip() or 0)


@pytest.mark.skipif(shutil.which("fincore") is None, reason="needs util-linux fincore")
def test_page_cache_bypassed_or_kept_and_odd_resets_lose_nothing(proxy: FaultProxy, s3, bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = {SHARD: random_bytes(12 * MiB + 1234, 5), "config.json": b'{"model_type": "demo"}'}
    upload(s3, bucket, "m", files)
    probe = os.open(tmp_path / "probe", os.O_RDWR | os.O_CREAT, 0o644)
    probe_direct = open_direct(probe)
    os.close(probe)
    if probe_direct is None:
        pytest.skip("this filesystem refuses O_DIRECT")
    os.close(probe_direct)
    # Two ranges break at odd byte counts: what arrived is written through the page cache, the rest resumes.
    proxy.add_rule(Rule(Reset(after_bytes=333_333), match_method="GET", match_path=SHARD, times=2, skip=1))
    r = download(proxy, bucket, tmp_path / "direct", "--page-cache", "bypass")
    assert r.returncode == 0, r.stderr
    r = download(proxy, bucket, tmp_path / "buffered", "--page-cache", "keep")
    assert r.returncode == 0, r.stderr
    # Written with O_DIRECT, the shard is not in the page cache (but for the odd tail and the two broken
    # ranges' rest); written through it, all of it is (nothing evicts 12 MiB here in a second). Measured
    # before the bytes are compared: reading them fills the cache.
    direct = resident_bytes(tmp_path / "direct" / "m" / SHARD)
    buffered = resident_bytes(tmp_path / "buffered" / "m" / SHARD)
    assert buffered >= len(files[SHARD]) - 64 * 1024, buffered
    assert direct <= 2 * MiB + 8192, direct
    assert read_tree(str(tmp_path / "direct" / "m")) == files
    assert read_tree(str(tmp_path / "buffered" / "m")) == files
