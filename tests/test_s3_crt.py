"""Small S3 objects through the AWS CRT's native client: every fault a fault-injecting proxy in front of moto
can make, and the fallbacks to botocore's transport."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from downloader import read_manifest, read_progress
from tests.conftest import read_tree, run_cli
from tests.faultproxy import FaultProxy, FlipBit, RequestRecord, Reset, Rule, Stall, Status, Truncate
from tests.synthetic import MiB, random_bytes, upload

pytestmark = [pytest.mark.slow, pytest.mark.fast_paths]

CRT_UA = "aibrix-download awscrt/"
DIRECT_UA = "aibrix-download rest/"  # the REST transport: signed here, sent over http.client
TOKENIZER = "tokenizer.json"
SHARD = "model.safetensors"  # over the CRT's 1 MiB limit: the engine's own GET


@pytest.fixture
def small_model(s3: object, bucket: str) -> tuple[str, dict[str, bytes]]:
    files = {f"extra/part-{i}.bin": random_bytes(100_000 + 7 * i, i) for i in range(6)}
    files[TOKENIZER] = random_bytes(600_000, 42)
    files["config.json"] = b'{"model_type": "demo"}'
    files[SHARD] = random_bytes(3 * MiB, 43)
    upload(s3, bucket, "m", files)
    return bucket, files


def download(proxy: FaultProxy, bucket: str, local: Path, *extra: str):  # type: ignore[no-untyped-def]
    args = ["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(local), "--num-threads", "4", "--max-attempts", "4"]
    return run_cli([*args, "--s3-crt", *extra], proxy.url)


def gets_of(proxy: FaultProxy, name: str) -> list[RequestRecord]:
    return [r for r in proxy.log if r.method == "GET" and r.path.split("?")[0].endswith("/m/" + name)]


def test_small_objects_come_whole_through_the_crt_and_are_verified(proxy: FaultProxy, small_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = small_model
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 0, r.stderr
    assert read_tree(str(tmp_path / "m")) == files
    for name in files:
        gets = gets_of(proxy, name)
        assert len(gets) == 1, (name, gets)
        expected_ua = DIRECT_UA if name == SHARD else CRT_UA
        assert gets[0].user_agent.startswith(expected_ua), (name, gets[0])
        assert gets[0].range is None  # whole objects: the store sends their checksum only then
    manifest = read_manifest(str(tmp_path / "m"))
    assert manifest is not None
    verified = {f.path: f.verified for f in manifest.files}
    assert verified[TOKENIZER] in ("size and crc32 (full object)", "size and md5 (full object)"), verified


def test_without_the_crt_every_get_is_botocores(proxy: FaultProxy, small_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = small_model
    r = download(proxy, bucket, tmp_path, "--no-s3-crt")
    assert r.returncode == 0, r.stderr
    assert read_tree(str(tmp_path / "m")) == files
    gets = [g for name in files for g in gets_of(proxy, name)]
    assert len(gets) == len(files) and all(g.user_agent.startswith(DIRECT_UA) for g in gets), gets


@pytest.mark.parametrize(
    "action, kind",
    [
        (Reset(after_bytes=50_000), "connection"),
        (Truncate(after_bytes=20_000), "connection"),
        (Status(503), "throttled"),
        (Status(500), "server-error"),
    ],
)
def test_broken_answers_are_retried(proxy: FaultProxy, small_model, tmp_path, action, kind) -> None:  # type: ignore[no-untyped-def]
    bucket, files = small_model
    rule = proxy.add_rule(Rule(action, match_method="GET", match_path=TOKENIZER, times=2))
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 0, r.stderr
    assert rule.fired == 2
    assert read_tree(str(tmp_path / "m")) == files
    assert all(g.user_agent.startswith(CRT_UA) for g in gets_of(proxy, TOKENIZER))  # the CRT kept every GET
    progress = read_progress(str(tmp_path / "m"))
    assert progress is not None and progress.errors_by_kind.get(kind, 0) == 2, progress


def test_a_stalled_get_is_abandoned_and_retried(proxy: FaultProxy, small_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = small_model
    rule = proxy.add_rule(Rule(Stall(seconds=60, after_bytes=10_000), match_method="GET", match_path=TOKENIZER))
    r = download(proxy, bucket, tmp_path, "--stall-timeout", "5")
    assert r.returncode == 0, r.stderr
    assert rule.fired == 1  # the 60 s stall was abandoned: counted as a stall below
    assert read_tree(str(tmp_path / "m")) == files
    progress = read_progress(str(tmp_path / "m"))
    assert progress is not None and progress.errors_by_kind.get("stall") == 1, progress


def test_a_flipped_bit_is_caught_and_the_file_fetched_again(proxy: FaultProxy, small_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = small_model
    rule = proxy.add_rule(Rule(FlipBit(offset=123_456, bit=5), match_method="GET", match_path=TOKENIZER))
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 0, r.stderr
    assert rule.fired == 1 and "(full object) mismatch" in r.stderr
    assert read_tree(str(tmp_path / "m")) == files


def test_persistent_corruption_fails_and_the_file_never_gets_its_name(proxy: FaultProxy, small_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, _ = small_model
    proxy.add_rule(Rule(FlipBit(offset=99), match_method="GET", match_path=TOKENIZER, times=-1))
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 5, r.stderr
    assert "mismatch" in r.stderr and TOKENIZER in r.stderr and "Traceback" not in r.stderr
    assert read_manifest(str(tmp_path / "m")) is None
    assert not (tmp_path / "m" / TOKENIZER).exists()


def test_an_object_replaced_mid_download_is_fetched_again(proxy: FaultProxy, small_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = small_model
    rule = proxy.add_rule(Rule(Status(412), match_method="GET", match_path=TOKENIZER))  # If-Match failed
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 0, r.stderr
    assert rule.fired == 1 and "changed during download" in r.stderr
    assert read_tree(str(tmp_path / "m")) == files


def test_an_answer_about_the_crts_request_hands_every_get_to_the_rest_transport(
    proxy: FaultProxy, small_model, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    bucket, files = small_model
    rule = proxy.add_rule(Rule(Status(400), match_method="GET", match_path=TOKENIZER))
    r = download(proxy, bucket, tmp_path, "--num-threads", "1")
    assert r.returncode == 0, r.stderr
    assert rule.fired == 1
    assert read_tree(str(tmp_path / "m")) == files
    tokenizer = gets_of(proxy, TOKENIZER)
    assert [g.status for g in tokenizer] == [400, 200] and tokenizer[0].user_agent.startswith(CRT_UA)
    later = proxy.log[proxy.log.index(tokenizer[1]) :]
    assert all(not g.user_agent.startswith(CRT_UA) for g in later)


def test_access_denied_through_the_crt_is_a_clear_error(proxy: FaultProxy, small_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, _ = small_model
    proxy.add_rule(Rule(Status(403), match_method="GET", match_path="/m/", times=-1))  # may list, may not read
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 3, r.stderr
    assert "AccessDenied" in r.stderr and "Traceback" not in r.stderr
    assert read_manifest(str(tmp_path / "m")) is None


def test_a_model_of_small_files_is_fetched_several_gets_per_worker(proxy: FaultProxy, s3, bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Every file fits in a buffer: each worker sends several GETs at once (jobs.WHOLE_DEPTH), and a fault
    on any of them is retried for that file alone."""
    files = {f"part-{i:02d}.bin": random_bytes(50_000 + i, 100 + i) for i in range(24)}
    upload(s3, bucket, "m", files)
    faults = {
        "part-03.bin": proxy.add_rule(Rule(Status(503), match_method="GET", match_path="part-03")),
        "part-10.bin": proxy.add_rule(Rule(FlipBit(offset=777), match_method="GET", match_path="part-10")),
        "part-17.bin": proxy.add_rule(Rule(Reset(after_bytes=10_000), match_method="GET", match_path="part-17")),
    }
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 0, r.stderr
    assert all(rule.fired == 1 for rule in faults.values())
    assert read_tree(str(tmp_path / "m")) == files
    for name in files:
        gets = gets_of(proxy, name)
        assert len(gets) == (2 if name in faults else 1), (name, gets)
        assert all(g.user_agent.startswith(CRT_UA) and g.range is None for g in gets)
    manifest = read_manifest(str(tmp_path / "m"))
    assert manifest is not None and len(manifest.files) == len(files)


def test_each_crt_get_is_signed_with_the_credentials_current_when_it_starts(proxy: FaultProxy, s3, bucket) -> None:  # type: ignore[no-untyped-def]
    """The CRT signs with a static copy of the credentials, made again whenever they change (a refresh)."""
    import threading

    from downloader.sources.s3_crt import CrtGetter
    from downloader.sources.sigv4 import Credentials

    files = {f"obj-{i}.bin": random_bytes(20_000 + i, 200 + i) for i in range(6)}
    upload(s3, bucket, "m", files)
    current = ["AKIDFIRST"]
    getter = CrtGetter.create(
        f"{proxy.url}/{bucket}/",
        "us-east-1",
        lambda: Credentials(current[0], "secret-" + current[0]),
        ca_bundle=None,
        connections=2,
        stall_timeout=30,
    )
    assert getter is not None
    buf = memoryview(bytearray(64 * 1024))
    for i, (name, body) in enumerate(sorted(files.items())):
        if i == 3:
            current[0] = "AKIDROTATED"
        response = getter.finish(getter.start(f"m/{name}", (), {}, buf), threading.Event())
        assert response.status == 200 and bytes(buf[: response.length]) == body
    getter.close()
    keys = [r.access_key for r in sorted(proxy.log, key=lambda r: r.path) if r.method == "GET"]
    assert keys == ["AKIDFIRST"] * 3 + ["AKIDROTATED"] * 3


def test_bodies_of_many_reads_cut_mid_way_arrive_whole(proxy: FaultProxy, s3, bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Bodies that take many socket reads, one of them cut mid-way, arrive whole and verified through the CRT."""
    files = {f"w-{i}.bin": random_bytes(700_000 + i, 300 + i) for i in range(3)}
    upload(s3, bucket, "m", files)
    cut = proxy.add_rule(Rule(Reset(after_bytes=400_000, linger=0.5), match_method="GET", match_path="w-1"))
    r = download(proxy, bucket, tmp_path)
    assert r.returncode == 0, r.stderr
    assert cut.fired == 1
    assert read_tree(str(tmp_path / "m")) == files
    assert all(g.user_agent.startswith(CRT_UA) for name in files for g in gets_of(proxy, name))
    assert len(gets_of(proxy, "w-1.bin")) == 2


def _tmpfs_dir() -> str | None:
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and fields[1] == "/dev/shm" and fields[2] == "tmpfs" and os.access("/dev/shm", os.W_OK):
                return "/dev/shm"
    return None


@pytest.mark.parametrize("pages", ["bypass", "keep"])
@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_files_of_every_size_land_whole_with_or_without_o_direct(
    proxy: FaultProxy, small_model, tmp_path, where, pages
) -> None:  # type: ignore[no-untyped-def]
    """Bypassing the page cache, a one-range file is written through one descriptor opened with O_DIRECT, its
    unaligned tail through the page cache; a filesystem that refuses O_DIRECT (tmpfs) gets every write through the
    page cache. Keeping it, every write goes through the page cache."""
    bucket, files = small_model
    local = tmp_path
    if where == "tmpfs":
        shm = _tmpfs_dir()
        if shm is None:
            pytest.skip("no writable tmpfs at /dev/shm")
        local = Path(tempfile.mkdtemp(prefix="crt-", dir=shm))
    try:
        r = download(proxy, bucket, local, "--page-cache", pages)
        assert r.returncode == 0, r.stderr
        assert read_tree(str(local / "m")) == files  # and no temp file left beside them
    finally:
        if local != tmp_path:
            shutil.rmtree(local, ignore_errors=True)


def _crt_source(proxy: FaultProxy, bucket: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    import threading

    from downloader.config import load_settings
    from downloader.sources import open_source

    env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url}
    settings = load_settings(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path), "--s3-crt"], env)
    source = open_source(settings, threading.Event())
    return source, {f.rel_path: f for f in source.list(threading.Event())}


def _read_all(body, size: int) -> bytes:  # type: ignore[no-untyped-def]
    out = bytearray(size + 1)
    view, got = memoryview(out), 0
    while (n := body.readinto(view[got:])) > 0:
        got += n
    body.close()
    return bytes(out[:got])


def test_the_crt_writes_a_whole_body_into_the_file_it_is_given(proxy: FaultProxy, small_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = small_model
    source, listed = _crt_source(proxy, bucket, tmp_path)
    try:
        f = listed[TOKENIZER]
        landing = memoryview(bytearray(1024 * 1024))
        fd = os.open(tmp_path / "landing", os.O_RDWR | os.O_CREAT, 0o600)
        os.write(fd, b"stale bytes the GET must replace" * 50_000)  # longer than the object
        try:
            body = source.open(f, None, None, landing, fd)
            assert body.in_file
            assert _read_all(body, f.size) == files[TOKENIZER]  # read back from the file...
            assert body.detail is not None and body.detail.checksums  # ...with what the answer said of the object
            assert (tmp_path / "landing").read_bytes() == files[TOKENIZER]  # emptied first, then written whole
            assert not any(landing)  # the bytes never went through the buffer
        finally:
            os.close(fd)
        assert gets_of(proxy, TOKENIZER)[0].user_agent.startswith(CRT_UA)
    finally:
        source.close()


def test_a_file_the_crt_cannot_write_sends_its_bodies_through_memory(proxy: FaultProxy, small_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from downloader.errors import RetryableError

    bucket, files = small_model
    source, listed = _crt_source(proxy, bucket, tmp_path)
    not_a_file = os.open(tmp_path, os.O_RDONLY)  # the CRT's own open of it fails
    try:
        f = listed[TOKENIZER]
        landing = memoryview(bytearray(1024 * 1024))
        with pytest.raises(RetryableError):
            _read_all(source.open(f, None, None, landing, not_a_file), f.size)
        body = source.open(f, None, None, landing, not_a_file)  # the retry: through the buffer, from now on
        assert not body.in_file
        assert _read_all(body, f.size) == files[TOKENIZER]
        assert bytes(landing[: f.size]) == files[TOKENIZER]
    finally:
        os.close(not_a_file)
        source.close()


def test_a_body_cut_short_is_fetched_again_and_the_file_is_right(proxy: FaultProxy, small_model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = small_model
    proxy.add_rule(Rule(Truncate(after_bytes=300_000), match_method="GET", match_path=f"/m/{TOKENIZER}", times=2))
    r = download(proxy, bucket, tmp_path, "--page-cache", "keep")
    assert r.returncode == 0, r.stderr
    assert read_tree(str(tmp_path / "m")) == files
    assert len(gets_of(proxy, TOKENIZER)) == 3
