"""The page-cache policy: what limits the page cache is read from real cgroup files, `auto` keeps the weights in
memory only where they can stay, and a download in a memory cgroup far below the model is not OOM-killed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from downloader.config import load_settings
from downloader.errors import ConfigError
from downloader.pagecache import KEEP_FRACTION, PageCache, decide
from downloader.resources import MemoryRoom, read_memory_room
from tests import cgroups
from tests.conftest import REPO, cli_env, read_tree
from tests.synthetic import MiB, random_bytes, upload

GiB = 1024 * MiB
URI = ["--model-uri", "s3://bucket/models/llama/"]


# ------------------------------------------------------------------------------------------- settings


def test_page_cache_setting_and_its_older_spelling() -> None:
    assert load_settings(URI, {}).page_cache is PageCache.AUTO
    assert load_settings([*URI, "--page-cache", "KEEP"], {}).page_cache is PageCache.KEEP
    assert load_settings(URI, {"DOWNLOADER_PAGE_CACHE": "bypass"}).page_cache is PageCache.BYPASS
    assert load_settings([*URI, "--direct-io"], {}).page_cache is PageCache.BYPASS
    assert load_settings([*URI, "--no-direct-io"], {}).page_cache is PageCache.KEEP
    assert load_settings(URI, {"DOWNLOADER_DIRECT_IO": "off"}).page_cache is PageCache.KEEP
    assert load_settings(URI, {"DOWNLOADER_DIRECT_IO": "1"}).page_cache is PageCache.BYPASS
    # the flag beats the environment, the newer name beats the older one at the same level
    assert load_settings([*URI, "--no-direct-io"], {"DOWNLOADER_PAGE_CACHE": "bypass"}).page_cache is PageCache.KEEP
    env = {"DOWNLOADER_PAGE_CACHE": "auto", "DOWNLOADER_DIRECT_IO": "0"}
    assert load_settings(URI, env).page_cache is PageCache.AUTO
    with pytest.raises(ConfigError, match="contradicts --page-cache keep"):
        load_settings([*URI, "--page-cache", "keep", "--direct-io"], {})
    with pytest.raises(ConfigError, match="DOWNLOADER_PAGE_CACHE"):
        load_settings(URI, {"DOWNLOADER_PAGE_CACHE": "sometimes"})


# ------------------------------------------------------------------------------------------- decision


def test_auto_keeps_what_fits_and_bypasses_what_does_not() -> None:
    room = MemoryRoom(mem_available=100 * GiB, cgroup_room=10 * GiB, cgroup="/kubepods/pod1/model")
    fits = decide(PageCache.AUTO, int(KEEP_FRACTION * 10 * GiB), room)
    assert fits.keep and "memory cgroup /kubepods/pod1/model" in fits.reason
    too_big = decide(PageCache.AUTO, int(KEEP_FRACTION * 10 * GiB) + 1, room)
    assert not too_big.keep and "do not fit" in too_big.reason
    host = MemoryRoom(mem_available=2 * GiB, cgroup_room=None, cgroup=None)
    assert not decide(PageCache.AUTO, 4 * GiB, host).keep
    assert "available memory" in decide(PageCache.AUTO, 4 * GiB, host).reason
    assert decide(PageCache.AUTO, 1 << 50, MemoryRoom(None, None, None)).keep  # nothing known: the kernel decides
    assert decide(PageCache.KEEP, 1 << 50, host).keep
    assert not decide(PageCache.BYPASS, 1, room).keep


# ------------------------------------------------------------------------------- reading cgroup files


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _proc(tmp_path: Path, cgroup_lines: str, available_kib: int = 64 * 1024 * 1024) -> Path:
    proc = tmp_path / "proc"
    _write(proc, "meminfo", f"MemTotal: 99999999 kB\nMemAvailable: {available_kib} kB\n")
    _write(proc, "self/cgroup", cgroup_lines)
    return proc


def test_cgroup_v2_the_tightest_level_counts_and_file_pages_are_room(tmp_path: Path) -> None:
    fs = tmp_path / "cgroup"
    _write(fs, "memory.stat", "file 0\n")  # the root has no memory.max
    _write(fs, "kubepods/memory.max", str(8 * GiB))
    _write(fs, "kubepods/memory.current", str(5 * GiB))
    _write(fs, "kubepods/memory.stat", f"anon {GiB}\nfile {4 * GiB}\n")  # 4 GiB of cache is reclaimable: room 7 GiB
    _write(fs, "kubepods/pod/memory.max", "max")
    _write(fs, "kubepods/pod/memory.current", str(GiB))
    _write(fs, "kubepods/pod/model/memory.max", str(2 * GiB))
    _write(fs, "kubepods/pod/model/memory.current", str(GiB))
    _write(fs, "kubepods/pod/model/memory.stat", f"anon {512 * MiB}\nfile {512 * MiB}\n")  # room 1.5 GiB
    room = read_memory_room(str(_proc(tmp_path, "0::/kubepods/pod/model\n")), str(fs))
    assert (room.cgroup_room, room.cgroup) == (3 * GiB // 2, "/kubepods/pod/model")
    assert room.mem_available == 64 * GiB and room.room == 3 * GiB // 2


def test_cgroup_v2_inside_a_namespace_reads_the_mount_itself(tmp_path: Path) -> None:
    fs = tmp_path / "cgroup"
    _write(fs, "memory.max", str(GiB))
    _write(fs, "memory.current", str(256 * MiB))
    _write(fs, "memory.stat", "file 0\n")
    room = read_memory_room(str(_proc(tmp_path, "0::/\n")), str(fs))
    assert room.cgroup_room == 768 * MiB


def test_cgroup_v1_uses_the_hierarchical_limit_and_unlimited_is_none(tmp_path: Path) -> None:
    fs = tmp_path / "cgroup"
    group = "memory/kubepods/pod/model"
    _write(fs, f"{group}/memory.limit_in_bytes", "9223372036854771712")  # unlimited itself ...
    _write(fs, f"{group}/memory.usage_in_bytes", str(3 * GiB))
    # ... under a parent limited to 4 GiB; 2 GiB of its usage is page cache
    stat = f"hierarchical_memory_limit {4 * GiB}\ntotal_inactive_file {GiB}\ntotal_active_file {GiB}\n"
    _write(fs, f"{group}/memory.stat", stat)
    lines = "4:memory:/kubepods/pod/model\n3:cpu,cpuacct:/kubepods/pod/model\n0::/\n"
    room = read_memory_room(str(_proc(tmp_path, lines)), str(fs))
    assert (room.cgroup_room, room.cgroup) == (3 * GiB, "/kubepods/pod/model")

    _write(fs, f"{group}/memory.stat", "hierarchical_memory_limit 9223372036854771712\n")
    assert read_memory_room(str(_proc(tmp_path, lines)), str(fs)).cgroup_room is None


def test_nothing_readable_means_no_limit(tmp_path: Path) -> None:
    room = read_memory_room(str(tmp_path / "no-proc"), str(tmp_path / "no-cgroup"))
    assert room == MemoryRoom(None, None, None)


# ---------------------------------------------------------------------------------- a real cgroup

# The program's own memory (interpreter, SDKs) is ~60-80 MiB; the limit leaves it room, and the shard is larger
# than what is left (so `auto` bypasses the page cache there) while being far from any limit outside the group.
LIMIT = 160 * MiB
SHARD = 128 * MiB

needs_cgroups = pytest.mark.skipif(not cgroups.available(), reason="needs root and a memory cgroup hierarchy")
needs_fincore = pytest.mark.skipif(shutil.which("fincore") is None, reason="needs util-linux fincore")


@pytest.fixture(scope="module")
def big_model(s3_server) -> tuple[str, dict[str, bytes]]:  # type: ignore[no-untyped-def]
    s3 = s3_server.client()
    bucket = "pagecache-model"
    s3.create_bucket(Bucket=bucket)
    files = {"model.safetensors": random_bytes(SHARD, 11), "config.json": b'{"model_type": "demo"}'}
    upload(s3, bucket, "m", files)
    return bucket, files


def resident(path: Path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)], capture_output=True)
    return int(out.stdout.decode().strip() or 0)


def _argv(bucket: str, local: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "downloader", "--model-uri", f"s3://{bucket}/m/", "--local-dir", str(local), *extra]


def _run(s3_server, argv: list[str], group: cgroups.MemoryGroup | None = None) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    env = cli_env(s3_server.url)
    if group is None:
        return subprocess.run(argv, env=env, capture_output=True, text=True, cwd=REPO, timeout=300)
    return cgroups.run_in(group, argv, env=env, cwd=REPO, timeout=300)


@pytest.mark.slow
@needs_cgroups
@needs_fincore
def test_auto_keeps_the_weights_in_memory_only_where_they_can_stay(s3_server, big_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = big_model
    r = _run(s3_server, _argv(bucket, tmp_path / "free"))
    assert r.returncode == 0, r.stderr
    assert "page cache: keep" in r.stderr
    # Nothing on this machine evicts 128 MiB within a second: kept, it is all in memory.
    assert resident(tmp_path / "free" / "m" / "model.safetensors") >= SHARD - MiB

    with cgroups.memory_group(LIMIT) as group:
        r = _run(s3_server, _argv(bucket, tmp_path / "limited"), group)
        assert r.returncode == 0, r.stderr
        assert "page cache: bypass" in r.stderr and "memory cgroup" in r.stderr
        assert group.oom_kills() == 0
    # Written past the page cache: in memory only what went through it (the odd tail, small files).
    assert resident(tmp_path / "limited" / "m" / "model.safetensors") <= 2 * MiB
    assert read_tree(str(tmp_path / "free" / "m")) == files
    assert read_tree(str(tmp_path / "limited" / "m")) == files


@pytest.mark.slow
@needs_cgroups
def test_keeping_the_page_cache_in_a_small_cgroup_is_not_oom_killed(s3_server, big_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Forced to keep pages in a group with less room than the model, the kernel reclaims what was written back:
    the download completes, whole."""
    bucket, files = big_model
    with cgroups.memory_group(LIMIT) as group:
        r = _run(s3_server, _argv(bucket, tmp_path, "--page-cache", "keep", "--num-threads", "8"), group)
        assert r.returncode == 0, r.stderr
        assert group.oom_kills() == 0
    assert read_tree(str(tmp_path / "m")) == files
