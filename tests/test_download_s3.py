"""End-to-end: the real CLI in a child process against moto's S3 server on 127.0.0.1."""

from __future__ import annotations

import json
import os

import pytest

from downloader import is_ready, read_manifest, read_progress
from tests.conftest import S3Server, read_tree, run_cli
from tests.synthetic import MiB, model_files, upload

CLASSIC = "json,safetensors,py"
# Small ranges so that a few-MiB model still exercises parallel ranged GETs.
RANGED = ["--part-threshold", "4MiB", "--part-chunksize", "1MiB", "--num-threads", "8"]


def expected_classic(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k.rsplit(".", 1)[-1] in ("json", "safetensors", "py")}


@pytest.fixture
def model(s3: object, bucket: str) -> tuple[str, dict[str, bytes]]:
    files = model_files(shards=3, shard_bytes=12 * MiB)
    upload(s3, bucket, "org/llama-demo", files, part_size=5 * MiB)
    return bucket, files


def download(s3_server: S3Server, uri: str, local: str, *extra: str, **env: str):  # type: ignore[no-untyped-def]
    return run_cli(["--model-uri", uri, "--local-dir", local, *extra], s3_server.url, **env)


def test_downloads_byte_identical_with_classic_filter(s3_server: S3Server, model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = model
    r = download(s3_server, f"s3://{bucket}/org/llama-demo/", str(tmp_path), "--allow-file-suffix", CLASSIC, *RANGED)
    assert r.returncode == 0, r.stderr
    model_dir = tmp_path / "llama-demo"
    assert r.stdout.strip() == str(model_dir)  # the path on stdout, as AIBrix prints it
    got = read_tree(str(model_dir))
    assert got == expected_classic(files)
    # real suffixes only: 'happy' ends in "py" but is not a .py file
    assert "happy" not in got and "pytorch_model.bin" not in got and "original/consolidated.00.pth" not in got
    assert "original/params.json" in got  # sub-folders kept
    manifest = read_manifest(str(model_dir))
    assert manifest is not None and is_ready(str(model_dir))
    by_path = {f.path: f for f in manifest.files}
    assert set(by_path) == set(got)
    shard = by_path["model-00001-of-00003.safetensors"]
    assert shard.verified == "size and md5 (composite of 3 parts)"
    assert shard.checksum is not None and shard.checksum.endswith("-3")
    assert manifest.source == f"s3://{bucket}/org/llama-demo/"
    # no temp files or journals left behind
    leftovers = [n for _, _, names in os.walk(model_dir) for n in names if n.endswith(".aibrix-tmp")]
    assert leftovers == []
    assert os.listdir(model_dir / ".aibrix" / "journal") == []


def test_environment_settings_and_model_name(s3_server: S3Server, model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = model
    r = run_cli(
        ["--model-uri", f"s3://{bucket}/org/llama-demo", "--model-name", "served/llama"],
        s3_server.url,
        DOWNLOADER_LOCAL_DIR=str(tmp_path),
        DOWNLOADER_ALLOW_FILE_SUFFIX="json, safetensors",
        DOWNLOADER_NUM_THREADS="4",
        DOWNLOADER_PART_THRESHOLD=str(4 * MiB),
        DOWNLOADER_PART_CHUNKSIZE=str(2 * MiB),
    )
    assert r.returncode == 0, r.stderr
    got = read_tree(str(tmp_path / "served" / "llama"))
    assert got == {k: v for k, v in files.items() if k.endswith((".json", ".safetensors"))}


def test_include_exclude_patterns(s3_server: S3Server, model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = model
    r = download(
        s3_server,
        f"s3://{bucket}/org/llama-demo/",
        str(tmp_path),
        "--include",
        "*.json,*.safetensors",
        "--exclude",
        "original/",
    )
    assert r.returncode == 0, r.stderr
    got = read_tree(str(tmp_path / "llama-demo"))
    assert set(got) == {k for k in files if k.endswith((".json", ".safetensors")) and not k.startswith("original/")}


def test_warns_when_filter_drops_tokenizer_files(s3_server: S3Server, s3, bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    upload(s3, bucket, "m", {"config.json": b"{}", "tokenizer.model": b"spm", "chat_template.jinja": b"{{x}}"})
    r = download(s3_server, f"s3://{bucket}/m/", str(tmp_path), "--allow-file-suffix", "json")
    assert r.returncode == 0, r.stderr
    assert "tokenizer.model" in r.stderr and "chat_template.jinja" in r.stderr and "WARNING" in r.stderr


def test_dry_run_lists_and_fetches_nothing(s3_server: S3Server, model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = model
    r = download(
        s3_server, f"s3://{bucket}/org/llama-demo/", str(tmp_path), "--allow-file-suffix", CLASSIC, "--dry-run"
    )
    assert r.returncode == 0, r.stderr
    want = expected_classic(files)
    for rel, data in want.items():
        assert rel in r.stdout and str(len(data)) in r.stdout
    assert f"would fetch {len(want)} files, {sum(map(len, want.values()))} bytes" in r.stdout
    assert "happy" not in r.stdout
    assert not (tmp_path / "llama-demo").exists()


def test_rerun_is_a_noop_and_repairs_damage(s3_server: S3Server, model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = model
    uri = f"s3://{bucket}/org/llama-demo/"
    assert download(s3_server, uri, str(tmp_path), "--allow-file-suffix", CLASSIC, *RANGED).returncode == 0
    model_dir = tmp_path / "llama-demo"
    before = {p: os.stat(model_dir / p).st_mtime_ns for p in expected_classic(files)}

    r = download(s3_server, uri, str(tmp_path), "--allow-file-suffix", CLASSIC, *RANGED)
    assert r.returncode == 0, r.stderr
    assert "nothing to fetch" in r.stderr
    assert {p: os.stat(model_dir / p).st_mtime_ns for p in before} == before  # nothing rewritten

    # damage: one file truncated, one deleted -> exactly those two come back
    with open(model_dir / "model-00002-of-00003.safetensors", "r+b") as fh:
        fh.truncate(100)
    os.unlink(model_dir / "config.json")
    r = download(s3_server, uri, str(tmp_path), "--allow-file-suffix", CLASSIC, *RANGED)
    assert r.returncode == 0, r.stderr
    assert "fetching 2 file(s)" in r.stderr
    assert read_tree(str(model_dir)) == expected_classic(files)
    unchanged = {p for p in before if p not in ("model-00002-of-00003.safetensors", "config.json")}
    assert {p: os.stat(model_dir / p).st_mtime_ns for p in unchanged} == {p: before[p] for p in unchanged}


def test_force_download_refetches_everything(s3_server: S3Server, model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, _files = model
    uri = f"s3://{bucket}/org/llama-demo/"
    assert download(s3_server, uri, str(tmp_path), "--allow-file-suffix", "json").returncode == 0
    r = download(s3_server, uri, str(tmp_path), "--allow-file-suffix", "json", DOWNLOADER_FORCE_DOWNLOAD="1")
    assert r.returncode == 0 and "fetching" in r.stderr
    # the flag overrides the environment: --no-force-download wins over DOWNLOADER_FORCE_DOWNLOAD=1
    r = download(
        s3_server,
        uri,
        str(tmp_path),
        "--allow-file-suffix",
        "json",
        "--no-force-download",
        DOWNLOADER_FORCE_DOWNLOAD="1",
    )
    assert r.returncode == 0 and "nothing to fetch" in r.stderr


def test_single_object_uri(s3_server: S3Server, model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = model
    r = download(s3_server, f"s3://{bucket}/org/llama-demo/config.json", str(tmp_path), "--model-name", "cfg")
    assert r.returncode == 0, r.stderr
    assert read_tree(str(tmp_path / "cfg")) == {"config.json": files["config.json"]}


@pytest.mark.parametrize(
    "bad_key, why",
    [
        ("evil/../../escaped.json", "'..'"),
        ("evil//etc/passwd.json", "absolute"),
        ("evil/sub\\..\\..\\x.json", "backslash"),
        ("evil/.aibrix/manifest.json", ".aibrix"),
    ],
)
def test_refuses_unsafe_keys_before_writing(s3_server: S3Server, s3, bucket, tmp_path, bad_key, why) -> None:  # type: ignore[no-untyped-def]
    upload(s3, bucket, "", {"evil/config.json": b"{}", bad_key: b'{"pwned": true}'})
    local = tmp_path / "models"
    r = download(s3_server, f"s3://{bucket}/evil/", str(local))
    assert r.returncode == 7, r.stderr
    assert "refusing object key" in r.stderr and why in r.stderr
    assert not (local / "evil").exists()  # nothing written at all
    assert not (tmp_path / "escaped.json").exists()


def test_never_follows_planted_symlinks(s3_server: S3Server, model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = model
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.json").write_bytes(b"precious")
    model_dir = tmp_path / "models" / "llama-demo"
    model_dir.mkdir(parents=True)
    os.symlink(outside / "victim.json", model_dir / "config.json")  # a file symlink: replaced, not followed
    r = download(s3_server, f"s3://{bucket}/org/llama-demo/", str(tmp_path / "models"), "--allow-file-suffix", "json")
    assert r.returncode == 0, r.stderr
    assert (outside / "victim.json").read_bytes() == b"precious"
    assert not os.path.islink(model_dir / "config.json")
    assert (model_dir / "config.json").read_bytes() == files["config.json"]

    os.symlink(outside, model_dir / "original-link")
    os.rename(model_dir / "original", tmp_path / "moved")
    os.symlink(outside, model_dir / "original")  # a directory symlink: refused
    r = download(
        s3_server,
        f"s3://{bucket}/org/llama-demo/",
        str(tmp_path / "models"),
        "--allow-file-suffix",
        "json",
        "--force-download",
    )
    assert r.returncode == 7, r.stderr
    assert "symlink" in r.stderr
    assert sorted(os.listdir(outside)) == ["victim.json"]
    assert read_manifest(str(model_dir)) is None  # a refused run leaves no manifest


def test_free_space_checked_before_fetching(s3_server: S3Server, model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, _files = model
    r = download(s3_server, f"s3://{bucket}/org/llama-demo/", str(tmp_path), "--reserve-space", str(2**49))
    assert r.returncode == 6, r.stderr
    assert "not enough free space: need" in r.stderr and "available" in r.stderr
    model_dir = tmp_path / "llama-demo"
    assert read_tree(str(model_dir)) == {}
    assert read_manifest(str(model_dir)) is None
    progress = read_progress(str(model_dir))  # the sidecar can tell why
    assert progress is not None and progress.phase == "failed" and "not enough free space" in str(progress.last_error)


@pytest.mark.parametrize(
    "uri, code, message",
    [
        ("ftp://bucket/x", 2, "unsupported scheme"),
        ("s3:///nobucket", 2, "no bucket"),
        ("s3://ab/x", 2, "not valid"),
        ("s3://no-such-bucket-here/x/", 3, "does not exist"),
    ],
)
def test_bad_uris_and_missing_buckets(s3_server: S3Server, tmp_path, uri, code, message) -> None:  # type: ignore[no-untyped-def]
    r = download(s3_server, uri, str(tmp_path))
    assert r.returncode == code, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert os.listdir(tmp_path) == []


def test_empty_prefix_and_empty_selection(s3_server: S3Server, model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, _ = model
    r = download(s3_server, f"s3://{bucket}/org/nothing-here/", str(tmp_path))
    assert r.returncode == 3 and "no objects" in r.stderr
    r = download(s3_server, f"s3://{bucket}/org/llama-demo/", str(tmp_path), "--allow-file-suffix", "gguf")
    assert r.returncode == 3 and "selected none" in r.stderr
    assert not (tmp_path / "llama-demo" / ".aibrix" / "manifest.json").exists()


def test_bad_settings_name_the_setting(s3_server: S3Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = download(s3_server, "s3://bucket/x/", str(tmp_path), DOWNLOADER_NUM_THREADS="lots")
    assert r.returncode == 2 and "DOWNLOADER_NUM_THREADS" in r.stderr
    r = download(s3_server, "s3://bucket/x/", str(tmp_path), "--download-extra-config", '{"nope": 1}')
    assert r.returncode == 2 and "unknown key(s) nope" in r.stderr
    r = download(s3_server, "s3://bucket/x/", str(tmp_path), DOWNLOADER_FORCE_DOWNLOAD="maybe")
    assert r.returncode == 2 and "DOWNLOADER_FORCE_DOWNLOAD" in r.stderr


def test_progress_file_and_lines(s3_server: S3Server, model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = model
    r = download(
        s3_server,
        f"s3://{bucket}/org/llama-demo/",
        str(tmp_path),
        "--allow-file-suffix",
        CLASSIC,
        "--progress-interval",
        "0.1",
    )
    assert r.returncode == 0, r.stderr
    assert "downloading: 100.0%" in r.stderr  # not a TTY: periodic lines with percent, rate, ETA
    progress = json.loads((tmp_path / "llama-demo" / ".aibrix" / "progress.json").read_text())
    assert progress["phase"] == "ready"
    assert progress["bytes_done"] == progress["bytes_total"] == sum(map(len, expected_classic(files).values()))


@pytest.mark.slow
def test_listing_pages_and_many_small_files(s3_server: S3Server, s3, bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = {f"shards/{i:04d}.json": f'{{"i": {i}}}'.encode() for i in range(1105)}  # more than one listing page
    upload(s3, bucket, "many", files)
    r = download(s3_server, f"s3://{bucket}/many/", str(tmp_path), "--num-threads", "16")
    assert r.returncode == 0, r.stderr
    assert read_tree(str(tmp_path / "many")) == files


def test_progress_bar_on_a_terminal(s3_server: S3Server, model, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pty
    import subprocess
    import sys

    from tests.conftest import REPO, cli_env

    bucket, _ = model
    controller, terminal = pty.openpty()
    args = ["--model-uri", f"s3://{bucket}/org/llama-demo/", "--local-dir", str(tmp_path), *RANGED]
    proc = subprocess.Popen(
        [sys.executable, "-m", "downloader", *args],
        env=cli_env(s3_server.url),
        stdout=subprocess.PIPE,
        stderr=terminal,
        cwd=REPO,
    )
    os.close(terminal)
    out, _ = proc.communicate(timeout=120)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    assert proc.returncode == 0, seen.decode(errors="replace")
    assert out.decode().strip() == str(tmp_path / "llama-demo")  # stdout stays clean for scripts
    assert b"\r[" in seen and b"#" in seen and b"100.0%" in seen  # a bar redrawn in place
