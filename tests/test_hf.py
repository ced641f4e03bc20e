"""End-to-end: the real CLI against a local Hugging Face Hub (tests/fakehub.py), with its CDN redirect.

Faults are injected by the project's FaultProxy in front of the fake CDN; the fake hub records the
Authorization header of every request so the tests can prove the token never leaves the endpoint.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from downloader import read_manifest, read_progress
from tests.conftest import Gate, journal_ranges, popen_cli, read_tree, run_cli, wait_until
from tests.fakehub import FakeHub
from tests.faultproxy import Callback, FaultProxy, FlipBit, RequestRecord, RewriteHeader, Rule, Stall, Status
from tests.synthetic import MiB, model_files, random_bytes

TOKEN = "hf_TESTtoken_q7Zx3Lm9Pw2Rk5"
REPO = "acme/llama-demo"
CLASSIC = "json,safetensors,py"
RANGED = ["--part-threshold", "2MiB", "--part-chunksize", "1MiB", "--num-threads", "4"]
SHARD = "weights.safetensors"


def expected_classic(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k.rsplit(".", 1)[-1] in ("json", "safetensors", "py")}


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub(token=TOKEN, page_size=5) as h:  # small pages: the listing follows Link headers
        yield h


@pytest.fixture
def cdn_proxy(hub: FakeHub) -> Iterator[FaultProxy]:
    """A FaultProxy between the downloader and the fake CDN: redirects point at it."""
    with FaultProxy("127.0.0.1", hub.cdn_port) as p:
        hub.cdn_base = p.url
        yield p


def hf_cli(hub: FakeHub, uri: str, local: Path, *extra: str, token: str | None = TOKEN, **env: str):  # type: ignore[no-untyped-def]
    """Run the CLI against the fake hub; whatever happens, the token must not appear in its output."""
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": token or "", "HUGGING_FACE_HUB_TOKEN": "", **env}
    r = run_cli(["--model-uri", uri, "--local-dir", str(local), *extra], hub.url, **env)
    check_no_secret(r.stdout + r.stderr)
    return r


def check_no_secret(text: str) -> None:
    assert TOKEN not in text
    assert "expires=" not in text and "sig=" not in text  # no signed storage URL either


def delivered(proxy: FaultProxy, data: bytes) -> int:
    """Body bytes of this blob the proxy wrote to a live client (requests of a killed one do not count)."""
    sha = hashlib.sha256(data).hexdigest()
    return sum(r.body_bytes for r in proxy.log if r.method == "GET" and sha in r.path)


# ----------------------------------------------------------------------------------------------- basics


@pytest.mark.parametrize("redirect", [True, False], ids=["cdn-redirect", "mirror-serves-bytes"])
def test_classic_filter_byte_identical(hub: FakeHub, tmp_path: Path, redirect: bool) -> None:
    hub.redirect_lfs = redirect
    files = model_files(shards=3, shard_bytes=3 * MiB)
    commit = hub.create_repo(REPO, files)
    r = hf_cli(hub, REPO, tmp_path, "--allow-file-suffix", CLASSIC, *RANGED)  # AIBrix's bare org/name form
    assert r.returncode == 0, r.stderr
    model_dir = tmp_path / "acme" / "llama-demo"
    assert r.stdout.strip() == str(model_dir)
    got = read_tree(str(model_dir))
    assert got == expected_classic(files)
    assert "original/params.json" in got and "happy" not in got and "pytorch_model.bin" not in got

    # The token went to the endpoint on every request, and never to the CDN.
    assert hub.authorizations("hub") == {f"Bearer {TOKEN}"}
    cdn = hub.requests("cdn")
    if redirect:
        assert cdn and {r.authorization for r in cdn} == {None}
        assert sum(r.body_bytes for r in cdn) == sum(len(v) for k, v in got.items() if k.endswith(".safetensors"))
        # one HEAD per large file resolves the redirect; its ranges then go straight to the CDN
        heads = [r for r in hub.requests("hub") if r.method == "HEAD"]
        assert len(heads) == 3
    else:
        assert cdn == []

    manifest = read_manifest(str(model_dir))
    assert manifest is not None and manifest.source == f"hf://{REPO}@main"
    by_path = {f.path: f for f in manifest.files}
    for name, data in got.items():
        entry = by_path[name]
        assert entry.version_id == commit
        if name.endswith(".safetensors"):
            assert entry.verified == "size and sha256 (full object)"
            assert entry.checksum == f"sha256:{hashlib.sha256(data).hexdigest()}"
        else:  # not in LFS: the git blob id the Hub lists is checked
            assert entry.verified == "size and git-sha1 (full object)"
            blob = hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()
            assert entry.checksum == f"git-sha1:{blob}" and entry.version == blob
    leftovers = [n for _, _, names in os.walk(model_dir) for n in names if n.endswith(".aibrix-tmp")]
    assert leftovers == [] and os.listdir(model_dir / ".aibrix" / "journal") == []


def test_revision_forms_rerun_and_new_commit(hub: FakeHub, tmp_path: Path) -> None:
    files = model_files(shards=2, shard_bytes=3 * MiB)
    hub.create_repo(REPO, files)
    dev_files = {**files, "config.json": b'{"branch": "dev"}'}
    dev = hub.push(REPO, dev_files, branch="dev")

    r = hf_cli(hub, f"hf://{REPO}@dev", tmp_path, *RANGED)
    assert r.returncode == 0, r.stderr
    model_dir = tmp_path / "acme" / "llama-demo"
    assert read_tree(str(model_dir)) == dev_files
    assert f"is commit {dev}" in r.stderr
    before = {p: os.stat(model_dir / p).st_mtime_ns for p in dev_files}

    # Same commit through HF_REVISION: nothing fetched, no file request at all (the listing only).
    hub.reset_log()
    r = hf_cli(hub, REPO, tmp_path, *RANGED, HF_REVISION="dev")
    assert r.returncode == 0, r.stderr
    assert "nothing to fetch" in r.stderr
    paths = [r.path.split("?")[0] for r in hub.log]
    assert paths[0] == f"/api/models/{REPO}/revision/dev"
    assert len(paths) > 2 and all(p == f"/api/models/{REPO}/tree/{dev}" for p in paths[1:])  # the listing only
    assert hub.requests("cdn") == []
    assert {p: os.stat(model_dir / p).st_mtime_ns for p in dev_files} == before

    # A new commit on dev that changes one file: only that file is fetched (versions are content ids).
    newer = {**dev_files, "config.json": b'{"branch": "dev", "v": 2}'}
    hub.push(REPO, {"config.json": newer["config.json"]}, branch="dev")
    r = hf_cli(hub, f"hf://{REPO}@dev", tmp_path, *RANGED)
    assert r.returncode == 0, r.stderr
    assert "fetching 1 file(s)" in r.stderr
    assert read_tree(str(model_dir)) == newer


def test_auth_failures_are_clear_and_never_show_the_token(hub: FakeHub, tmp_path: Path) -> None:
    hub.create_repo(REPO, {"config.json": b"{}"}, private=True)
    r = hf_cli(hub, REPO, tmp_path, token=None)
    assert r.returncode == 3, r.stderr
    assert "HF_TOKEN" in r.stderr and "no token given" in r.stderr and "Traceback" not in r.stderr

    wrong = "hf_WRONGtoken_0123456789"
    r = hf_cli(hub, REPO, tmp_path, token=wrong)
    assert r.returncode == 3, r.stderr
    assert "HF_TOKEN" in r.stderr and "rejected" in r.stderr
    assert wrong not in r.stderr and "Traceback" not in r.stderr
    assert read_manifest(str(tmp_path / "acme" / "llama-demo")) is None


def test_missing_repo_revision_or_file(hub: FakeHub, tmp_path: Path) -> None:
    hub.create_repo(REPO, {"config.json": b"{}", "model.safetensors": random_bytes(MiB, 3)})
    r = hf_cli(hub, "acme/no-such-model", tmp_path)
    assert r.returncode == 3, r.stderr
    assert "repository not found" in r.stderr

    r = hf_cli(hub, f"hf://{REPO}@no-such-branch", tmp_path)
    assert r.returncode == 3, r.stderr
    assert "revision 'no-such-branch' not found" in r.stderr

    hub.hidden.add((REPO, "model.safetensors"))  # listed, but the resolve URL answers 404
    r = hf_cli(hub, REPO, tmp_path)
    assert r.returncode == 3, r.stderr
    assert "model.safetensors" in r.stderr and "file not found at commit" in r.stderr
    assert "Traceback" not in r.stderr
    assert read_manifest(str(tmp_path / "acme" / "llama-demo")) is None


# ----------------------------------------------------------------------------------------------- faults


@pytest.fixture
def shard_repo(hub: FakeHub) -> tuple[str, dict[str, bytes]]:
    files = {SHARD: random_bytes(12 * MiB, 7), "config.json": b'{"model_type": "demo"}'}
    return hub.create_repo(REPO, files), files


@pytest.mark.slow
def test_throttling_on_the_cdn_honours_retry_after(hub, cdn_proxy, shard_repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, files = shard_repo
    rule = cdn_proxy.add_rule(
        Rule(Status(429, body=b"rate limited", retry_after="1"), match_method="GET", only_ranged=True, times=3)
    )
    started = time.monotonic()
    r = hf_cli(hub, REPO, tmp_path, *RANGED)
    assert r.returncode == 0, r.stderr
    assert rule.fired == 3
    assert time.monotonic() - started >= 1.0
    model_dir = tmp_path / "acme" / "llama-demo"
    assert read_tree(str(model_dir)) == files
    progress = read_progress(str(model_dir))
    assert progress is not None and progress.errors_by_kind.get("throttled", 0) >= 3


@pytest.mark.slow
def test_flipped_bit_is_caught_by_sha256_and_fetched_again(hub, cdn_proxy, shard_repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, files = shard_repo
    sha = hashlib.sha256(files[SHARD]).hexdigest()
    rule = cdn_proxy.add_rule(
        Rule(FlipBit(offset=4321, bit=3), match_method="GET", match_path=sha, only_ranged=True, times=1, skip=5)
    )
    r = hf_cli(hub, REPO, tmp_path, *RANGED)
    assert r.returncode == 0, r.stderr
    assert rule.fired == 1
    assert "sha256 (full object) mismatch" in r.stderr
    model_dir = tmp_path / "acme" / "llama-demo"
    assert read_tree(str(model_dir)) == files
    manifest = read_manifest(str(model_dir))
    assert manifest is not None
    assert {f.path: f.verified for f in manifest.files}[SHARD] == "size and sha256 (full object)"


@pytest.mark.slow
def test_kill_9_then_resume_fetches_only_what_is_missing(hub, cdn_proxy, shard_repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, files = shard_repo
    size = len(files[SHARD])
    gate = Gate()  # the first 4 ranges go through; every later one is held until the process is dead
    cdn_proxy.add_rule(Rule(Callback(gate.hold), match_method="GET", only_ranged=True, skip=4, times=-1))
    env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN}
    proc = popen_cli(["--model-uri", REPO, "--local-dir", str(tmp_path), *RANGED], hub.url, **env)
    model_dir = tmp_path / "acme" / "llama-demo"
    wait_until("4 ranges in the journal", lambda: journal_ranges(model_dir) == 4)
    proc.kill()  # SIGKILL: no cleanup of any kind
    _, err = proc.communicate()
    gate.open()
    check_no_secret(err)
    assert proc.returncode == -signal.SIGKILL
    assert read_manifest(str(model_dir)) is None and not (model_dir / SHARD).exists()
    done_ranges = journal_ranges(model_dir)
    assert done_ranges == 4

    cdn_proxy.clear_rules()
    cdn_proxy.reset_counters()
    r = hf_cli(hub, REPO, tmp_path, *RANGED)
    assert r.returncode == 0, r.stderr
    assert f"resuming {SHARD}: {done_ranges * MiB} of {size} bytes already on disk" in r.stderr
    assert delivered(cdn_proxy, files[SHARD]) == size - done_ranges * MiB  # exactly the ranges the journal lacked
    assert read_tree(str(model_dir)) == files


@pytest.mark.slow
def test_branch_moving_mid_download_stays_pinned(hub, cdn_proxy, shard_repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The download keeps the commit it resolved (URLs carry the commit hash); the next run picks up the
    new commit and fetches only the file that changed."""
    commit, files = shard_repo
    new_shard = random_bytes(12 * MiB, 99)
    sha = hashlib.sha256(files[SHARD]).hexdigest()

    def push(_record: RequestRecord) -> None:
        hub.push(REPO, {SHARD: new_shard})

    cdn_proxy.add_rule(Rule(Callback(push), match_method="GET", match_path=sha, only_ranged=True, times=1, skip=4))
    r = hf_cli(hub, REPO, tmp_path, *RANGED)
    assert r.returncode == 0, r.stderr
    assert "changed during download" not in r.stderr
    model_dir = tmp_path / "acme" / "llama-demo"
    assert read_tree(str(model_dir)) == files  # the resolved commit's bytes, consistently
    manifest = read_manifest(str(model_dir))
    assert manifest is not None and {f.version_id for f in manifest.files} == {commit}

    r = hf_cli(hub, REPO, tmp_path, *RANGED)
    assert r.returncode == 0, r.stderr
    assert "fetching 1 file(s)" in r.stderr
    assert read_tree(str(model_dir)) == {**files, SHARD: new_shard}


@pytest.mark.slow
def test_expired_storage_url_is_resolved_again(hub, cdn_proxy, shard_repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Signed CDN URLs expire (about an hour on huggingface.co); a long download asks the Hub for a new one."""
    _, files = shard_repo
    # The third ranged GET finds every URL issued so far expired (itself included): the URLs in use then answer 403.
    expire = Callback(lambda _: hub.expire_issued_urls())
    cdn_proxy.add_rule(Rule(expire, match_method="GET", only_ranged=True, skip=2, times=1))
    r = hf_cli(hub, REPO, tmp_path, *RANGED)
    assert r.returncode == 0, r.stderr
    assert read_tree(str(tmp_path / "acme" / "llama-demo")) == files
    assert any(r.status == 403 for r in hub.requests("cdn"))
    resolves = [r for r in hub.requests("hub") if "/resolve/" in r.path and SHARD in r.path]
    assert len(resolves) >= 2  # the HEAD, then at least one GET for a fresh URL
    assert {r.authorization for r in hub.requests("cdn")} == {None}


@pytest.mark.slow
def test_stalled_cdn_read_is_abandoned_and_retried(hub, cdn_proxy, shard_repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, files = shard_repo
    rule = cdn_proxy.add_rule(Rule(Stall(seconds=60, after_bytes=10_000), match_method="GET", only_ranged=True))
    r = hf_cli(hub, REPO, tmp_path, *RANGED, "--stall-timeout", "5")
    assert r.returncode == 0, r.stderr
    assert rule.fired == 1  # the 60 s stall was abandoned: counted as a stall below
    model_dir = tmp_path / "acme" / "llama-demo"
    progress = read_progress(str(model_dir))
    assert progress is not None and progress.errors_by_kind.get("stall") == 1
    assert read_tree(str(model_dir)) == files


@pytest.mark.slow
def test_hub_serving_other_content_for_the_pinned_file_restarts_it(hub, shard_repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """If the endpoint (a mirror, say) answers the pinned URL with another ETag than the listing, the file is
    treated as changed: started over after asking the endpoint again, and verified as usual."""
    _, files = shard_repo
    with FaultProxy("127.0.0.1", hub.port) as hub_proxy:
        rule = hub_proxy.add_rule(
            Rule(RewriteHeader("X-Linked-Etag", '"' + "0" * 64 + '"'), match_method="HEAD", match_path=SHARD)
        )
        r = run_cli(
            ["--model-uri", REPO, "--local-dir", str(tmp_path), *RANGED],
            hub_proxy.url,
            HF_ENDPOINT=hub_proxy.url,
            HF_TOKEN=TOKEN,
        )
    check_no_secret(r.stderr)
    assert r.returncode == 0, r.stderr
    assert rule.fired == 1
    assert "changed during download" in r.stderr
    model_dir = tmp_path / "acme" / "llama-demo"
    assert read_tree(str(model_dir)) == files
    progress = read_progress(str(model_dir))
    assert progress is not None and progress.object_changes == 1


def test_bad_endpoint_is_a_config_error(tmp_path: Path) -> None:
    """A configuration error (bad endpoint) exits 2 and, like everything else, never prints the token."""
    r = run_cli(
        ["--model-uri", REPO, "--local-dir", str(tmp_path)],
        "http://127.0.0.1:9",
        HF_ENDPOINT="ftp://nowhere",
        HF_TOKEN=TOKEN,
    )
    assert r.returncode == 2, r.stderr
    assert "HF_ENDPOINT" in r.stderr
    check_no_secret(r.stderr)
