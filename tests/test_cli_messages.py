"""What a new user sees: --version, flags spelt in full, where a single object lands, retries that stop at
--max-attempts and name what they were doing, the Hub retried like S3, a missing `ray` explained, and a progress
bar that fits an 80-column terminal."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from fcntl import ioctl
from pathlib import Path

import pytest

from downloader import __version__
from downloader.layout import Manifest, ManifestFile, Phase, Progress
from downloader.progress import Reporter, Stats, bar_line, progress_line
from downloader.state import StateDir
from tests.conftest import REPO, ClosingServer, S3Server, cli_env, read_tree, run_cli
from tests.synthetic import MiB, random_bytes, upload

PYTHON = sys.executable


def run(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", module, *args],
        env={**cli_env("http://127.0.0.1:9"), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


# --------------------------------------------------------------------------------------------- the CLIs


def test_version() -> None:
    for module, prog in (("downloader", "aibrix-download"), ("sidecar", "aibrix-sidecar")):
        r = run(module, "--version")
        assert r.returncode == 0 and r.stdout.strip() == f"{prog} {__version__}", r


@pytest.mark.parametrize(
    ("module", "args", "flag"),
    [
        ("downloader", ["--model-uri", "s3://bkt/m/", "--num-thread", "3", "--dry-run"], "--num-thread"),
        ("downloader", ["--model-uri", "s3://bkt/m/", "--local", "/x", "--dry-run"], "--local"),
        ("sidecar", ["--model", "/models/m"], "--model"),
        ("runtime", ["head", "--model-dir", "/m", "--tensor-parallel", "2", "--print-commands"], "--tensor-parallel"),
        ("runtime", ["worker", "--model-dir", "/m", "--head-addr", "h:6379", "--print-commands"], "--head-addr"),
    ],
)
def test_abbreviated_flags_are_refused(module: str, args: list[str], flag: str) -> None:
    """argparse would take --num-thread for --num-threads; a typo in a pod spec must not quietly mean something."""
    r = run(module, *args)
    assert r.returncode == 2, r
    assert "unrecognized arguments" in r.stderr and flag in r.stderr, r.stderr


def test_a_single_object_uri_lands_in_its_model_directory_as_aibrix_lays_it_out(
    s3_server: S3Server, s3: object, bucket: str, tmp_path: Path
) -> None:
    """AIBrix names the model directory after the URI's last segment, an object's name included; the object goes
    into it once, and the log says where, and how to choose the directory."""
    upload(s3, bucket, "m", {"config.json": b'{"a": 1}', "other.json": b"{}"})
    r = run_cli(["--model-uri", f"s3://{bucket}/m/config.json", "--local-dir", str(tmp_path)], s3_server.url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "config.json")
    assert read_tree(str(tmp_path / "config.json")) == {"config.json": b'{"a": 1}'}
    landed = tmp_path / "config.json" / "config.json"
    assert f"names one object: it lands at {landed}" in r.stderr and "--model-name" in r.stderr
    r = run_cli(
        ["--model-uri", f"s3://{bucket}/m/config.json", "--local-dir", str(tmp_path), "--model-name", "m"],
        s3_server.url,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "m") and read_tree(str(tmp_path / "m")) == {"config.json": b'{"a": 1}'}
    assert "names one object" not in r.stderr


def test_max_attempts_bounds_the_listing_and_the_message_names_the_prefix(closing: ClosingServer) -> None:
    r = run("downloader", "--model-uri", "s3://bkt/m/", "--endpoint-url", closing.url, "--max-attempts", "2")
    assert r.returncode == 4, r.stderr
    assert closing.accepted == 2  # exactly --max-attempts, not botocore's own count on top
    assert "prefix 's3://bkt/m/': giving up after 2 attempt(s): listing failed" in r.stderr, r.stderr
    assert "object 's3://" not in r.stderr


def test_an_unreachable_hub_is_retried_like_s3(closing: ClosingServer) -> None:
    r = run("downloader", "--model-uri", "org/name", "--max-attempts", "3", env={"HF_ENDPOINT": closing.url})
    assert r.returncode == 4, r.stderr
    assert closing.accepted == 3
    assert r.stderr.count("retrying in") == 2
    assert "repository 'hf://org/name@main': giving up after 3 attempt(s): listing failed" in r.stderr, r.stderr


def test_a_missing_ray_names_path_and_the_flag(tmp_path: Path) -> None:
    model = tmp_path / "m"
    (model / "config.json").parent.mkdir(parents=True)
    (model / "config.json").write_bytes(b"{}")
    st = os.stat(model / "config.json")
    state = StateDir(str(model))
    state.ensure()
    state.write_manifest(
        Manifest(
            source="s3://b/m/", model_dir=str(model), created_at=time.time(), tool="test",
            files=(ManifestFile("config.json", 2, "etag", None, None, "size", st.st_mtime_ns),),
        )
    )  # fmt: skip
    env = {"PATH": "/usr/bin:/bin"}
    r = run("runtime", "head", "--model-dir", str(model), "--ray-command", "ray-not-installed-here", env=env)
    assert r.returncode == 11, r.stderr
    assert "'ray-not-installed-here' is not on PATH (/usr/bin:/bin)" in r.stderr, r.stderr
    assert "--ray-command (RUNTIME_RAY_COMMAND)" in r.stderr
    r = run("runtime", "head", "--model-dir", str(model), "--ray-command", str(tmp_path / "bin" / "ray"), env=env)
    assert r.returncode == 11 and f"there is no '{tmp_path / 'bin' / 'ray'}'" in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------------ progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_no_rate_and_no_eta_until_bytes_have_flowed_for_a_while() -> None:
    """The first GETs' latency is not a rate: no ETA (and so no 29544h) until bytes have arrived for 2 s."""
    clock = Clock()
    stats = Stats("s3://b/m/", "/m", clock=clock)
    stats.set_totals(640 * 2**30, 163, 0, 0)
    stats.file_started("a", 4 * 2**30, 0)
    assert stats.snapshot().eta_seconds is None
    clock.now += 3.0  # listing, HEADs, the first GETs in flight: no byte yet
    assert stats.snapshot().eta_seconds is None
    stats.add_bytes("a", 4096)  # the very first bytes, after 3 s
    clock.now += 0.5
    assert stats.snapshot().eta_seconds is None and "ETA" not in progress_line(stats.snapshot())
    for _ in range(8):
        clock.now += 0.5
        stats.add_bytes("a", 512 * MiB)  # 1 GiB/s
        snap = stats.snapshot()
    assert snap.eta_seconds is not None and 500 < snap.eta_seconds < 700, snap  # ~636 GiB left at ~1 GiB/s
    assert "ETA 10m" in progress_line(snap) or "ETA 11m" in progress_line(snap) or "ETA 9m" in progress_line(snap)


def test_a_file_whose_bytes_are_all_in_counts_as_done() -> None:
    stats = Stats("s3://b/m/", "/m")
    stats.set_totals(30, 3, 0, 0)
    for name in ("a", "b", "c"):
        stats.file_started(name, 10, 0)
        stats.add_bytes(name, 10)
    snap = stats.snapshot()
    assert (snap.bytes_done, snap.files_done) == (30, 3)  # not "100 %, files 0/3" while they wait for their names
    stats.file_reset("b")  # a checksum failed: b starts over
    assert stats.snapshot().files_done == 2
    for name in ("a", "b", "c"):
        stats.file_done(name)
    assert stats.snapshot().files_done == 3


def _progress(**kw: object) -> Progress:
    base = dict(phase="downloading", source="s3://b/m/", model_dir="/m", pid=1, host="h", started_at=0.0,
                updated_at=0.0, bytes_total=640 * 2**30, bytes_done=262 * 2**30, bytes_fetched=262 * 2**30,
                files_total=163, files_done=67, rate_bps=1.9 * 2**30, eta_seconds=199.0, retries=12,
                errors_by_kind={}, object_changes=0, last_error=None, active_files={})  # fmt: skip
    base.update(kw)
    return Progress(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("columns", [40, 60, 80, 100, 200])
def test_the_bar_never_wraps(columns: int) -> None:
    line = bar_line(_progress(), columns)
    assert len(line) <= columns - 1, (columns, line)
    assert "40.9%" in line
    if columns >= 80:
        assert line.startswith("[") and "files 67/163" in line and "ETA 3m19s" in line


def test_the_bar_redraws_in_place_on_an_80_column_terminal(
    s3_server: S3Server, s3: object, bucket: str, tmp_path: Path
) -> None:
    """The real CLI on a pseudo-terminal 80 columns wide: every frame fits in 79 columns and starts with a carriage
    return, so each one overwrites the last; the bar ends with one newline, and log lines never share its line."""
    files = {f"model-{i}.safetensors": random_bytes(3 * MiB, i) for i in range(4)}
    upload(s3, bucket, "m", files)
    master, slave = pty.openpty()
    ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    args = ["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path), "--part-threshold", "1MiB",
            "--part-chunksize", "256KiB", "--num-threads", "2"]  # fmt: skip
    proc = subprocess.Popen(
        [PYTHON, "-m", "downloader", *args], env=cli_env(s3_server.url), stdout=subprocess.PIPE, stderr=slave, cwd=REPO
    )
    os.close(slave)
    raw = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        assert ready, "no output from the CLI"
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        raw += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0, raw.decode(errors="replace")
    text = raw.decode().replace("\r\n", "\n")  # the terminal's own newline translation
    frames = [f for f in re.split(r"[\r\n]", text) if f.startswith("[")]
    assert frames, text
    for frame in frames:
        visible = frame.replace("\x1b[K", "")
        assert len(visible) <= 79, visible
    bars = [line for line in text.split("\n") if "[" in line and "#" in line]
    assert len(bars) == 1, text  # every redraw on one line: no trail
    for line in text.split("\n"):
        if " INFO " in line or " WARNING " in line:
            assert "#" not in line and "\r[" not in line.split(" INFO ")[0], line  # a log line has its own line


def test_reporter_writes_nothing_but_the_bar_when_piped_as_a_bar() -> None:
    stream = io.StringIO()
    stats = Stats("s3://b/m/", "/m")
    stats.set_totals(100, 1, 0, 0)
    stats.set_phase(Phase.DOWNLOADING)
    reporter = Reporter(stats, "bar", 5.0, stream)
    reporter.tick()
    stats.add_bytes("x", 100)
    reporter.stop()
    out = stream.getvalue()
    assert out.startswith("\r[") and out.endswith("\n") and out.count("\n") == 1, repr(out)
