"""--workers: one download fetched by several processes (downloader/workers.py), against moto behind the fault proxy."""

from __future__ import annotations

import os
import pickle
import signal
from pathlib import Path

import pytest

from downloader import errors, read_manifest, read_progress
from downloader.concurrency import AUTO_WORKERS_MAX, AUTO_WORKERS_MIN_BYTES, CPUS_PER_WORKER, auto_workers
from downloader.progress import Counters, Stats
from downloader.resources import read_cpu_room
from downloader.sources import RemoteFile
from downloader.workers import deal
from tests.conftest import Gate, journal_ranges, popen_cli, read_tree, run_cli, wait_until
from tests.faultproxy import Callback, FaultProxy, Rule, Status
from tests.synthetic import MiB, random_bytes, upload

SHARDS = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
RANGED = ["--part-threshold", "2MiB", "--part-chunksize", "1MiB", "--num-threads", "6", "--max-attempts", "3"]


@pytest.fixture
def model(s3: object, bucket: str) -> tuple[str, dict[str, bytes]]:
    files = {name: random_bytes(5 * MiB, i) for i, name in enumerate(SHARDS)}
    files |= {f"tokenizer/part-{i}.json": random_bytes(30_000 + i, 100 + i) for i in range(12)}
    files["config.json"] = b'{"model_type": "demo"}'
    upload(s3, bucket, "m", files)
    return bucket, files


def download(proxy: FaultProxy, bucket: str, local: Path, *extra: str):  # type: ignore[no-untyped-def]
    return run_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(local), *RANGED, *extra], proxy.url)


def object_bytes(proxy: FaultProxy) -> int:
    """Bytes of objects the proxy passed (not of listings)."""
    return sum(r.body_bytes for r in proxy.log if r.method == "GET" and "list-type" not in r.path)


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(name))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------ pure parts


def file_of(name: str, size: int) -> RemoteFile:
    return RemoteFile(key=f"m/{name}", rel_path=name, size=size, version=f"v-{name}")


def test_deal_gives_every_file_once_in_shares_of_nearly_equal_bytes() -> None:
    sizes = [900, 10, 500, 500, 400, 3, 3, 3, 250, 120, 77, 64, 1, 0, 333]
    files = [file_of(f"f{i}", s) for i, s in enumerate(sizes)]
    shares = deal(files, 4)
    assert sorted(f.rel_path for share in shares for f in share) == sorted(f.rel_path for f in files)
    loads = [sum(f.size for f in share) for share in shares]
    assert max(loads) - min(loads) <= max(sizes)
    assert all(shares)
    # many equal files: equal counts
    same = deal([file_of(f"s{i}", 256) for i in range(30)], 4)
    assert sorted(len(s) for s in same) == [7, 7, 8, 8]


def test_auto_workers_follows_cpus_and_size() -> None:
    big = AUTO_WORKERS_MIN_BYTES
    assert auto_workers(2, 1000, big) == 1  # this kind of machine: one process
    assert auto_workers(CPUS_PER_WORKER * 4, 1000, big) == 4
    assert auto_workers(1024, 1000, big) == AUTO_WORKERS_MAX
    assert auto_workers(64, 3, big) == 3  # never more than files
    assert auto_workers(64, 1000, big - 1) == 1  # a small download is not worth a process start


def test_cpu_room_reads_the_quota_of_v1_and_v2_groups(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    v2 = tmp_path / "v2"
    (v2 / "pod" / "ctr").mkdir(parents=True)
    (v2 / "pod" / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs on the parent group
    (v2 / "pod" / "ctr" / "cpu.max").write_text("max 100000\n")
    cg = tmp_path / "self-cgroup"
    cg.write_text("0::/pod/ctr\n")
    assert read_cpu_room(str(v2), str(cg)) == min(affinity, 1)
    v1 = tmp_path / "v1"
    (v1 / "cpu,cpuacct" / "pod").mkdir(parents=True)
    (v1 / "cpu,cpuacct" / "pod" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu,cpuacct" / "pod" / "cpu.cfs_period_us").write_text("100000\n")
    cg.write_text("4:memory:/pod\n3:cpu,cpuacct:/pod\n")
    assert read_cpu_room(str(v1), str(cg)) == affinity  # no quota: the affinity
    (v1 / "cpu,cpuacct" / "pod" / "cpu.cfs_quota_us").write_text("100000\n")
    assert read_cpu_room(str(v1), str(cg)) == 1


def test_errors_cross_a_process_boundary_whole() -> None:
    made = [
        errors.ConfigError("--x", 3, "bad"),
        errors.NotFoundError("s3://b/m/", "gone", key="m/a"),
        errors.TransferError("m/a", "reset", attempts=4),
        errors.IntegrityError("m/a", "md5", "x", "y", hint=" (h)"),
        errors.LocalStorageError("/d/f", "No space left on device"),
        errors.InsufficientSpaceError("/d", 10, 5, 1),
        errors.UnsafePathError("../x", "leaves the directory"),
        errors.Interrupted("SIGTERM", 143),
    ]
    for exc in made:
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc)
        assert str(back) == str(exc) and back.exit_code == exc.exit_code
        assert vars(back) == vars(exc)


def test_stats_absorb_sums_the_workers_counters() -> None:
    stats = Stats("s3://b/m/", "/d/m")
    stats.set_totals(1000, 4, 100, 1)
    stats.absorb(0, Counters(bytes_done=200, bytes_fetched=200, retries=1, errors_by_kind={"reset": 1},
                             last_error="reset", active={"a": (300, 200)}))  # fmt: skip
    stats.absorb(1, Counters(bytes_done=50, bytes_fetched=50, active={"b": (300, 50)}))
    stats.absorb(0, Counters(bytes_done=300, bytes_fetched=300, files_done=1, retries=1, errors_by_kind={"reset": 1},
                             last_error="reset"))  # fmt: skip
    p = stats.snapshot()
    assert (p.bytes_done, p.bytes_fetched, p.retries, p.errors_by_kind) == (450, 350, 1, {"reset": 1})
    assert p.files_done == 2 and p.active_files == {"b": {"size": 300, "done": 50}}
    assert p.last_error == "reset"


# ------------------------------------------------------------------------------------------------ downloads


def test_workers_fetch_the_model_byte_identical(proxy: FaultProxy, model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = model
    r = download(proxy, bucket, tmp_path, "--workers", "3")
    assert r.returncode == 0, r.stderr
    assert "fetching in 3 worker processes" in r.stderr
    model_dir = tmp_path / "m"
    assert read_tree(str(model_dir)) == files
    manifest = read_manifest(str(model_dir))
    assert manifest is not None and {f.path for f in manifest.files} == set(files)
    assert all(f.verified.startswith("size and ") and f.checksum for f in manifest.files)  # each checked by a worker
    progress = read_progress(str(model_dir))
    assert progress is not None and progress.phase == "ready"
    assert progress.bytes_fetched == sum(len(b) for b in files.values())  # every worker's bytes counted
    assert progress.files_done == len(files)
    assert os.listdir(model_dir / ".aibrix" / "journal") == []
    assert [n for _, _, names in os.walk(model_dir) for n in names if n.endswith(".aibrix-tmp")] == []
    assert object_bytes(proxy) == sum(len(b) for b in files.values())  # each byte fetched once


def test_a_workers_error_is_the_downloads_error(proxy: FaultProxy, model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bucket, _ = model
    proxy.add_rule(Rule(Status(403), match_method="GET", match_path=SHARDS[1], times=-1))
    r = download(proxy, bucket, tmp_path, "--workers", "3")
    assert r.returncode == 3, r.stderr  # AccessDenied, as one process reports it
    assert SHARDS[1] in r.stderr and "AccessDenied" in r.stderr and "Traceback" not in r.stderr
    assert read_manifest(str(tmp_path / "m")) is None
    progress = read_progress(str(tmp_path / "m"))
    assert progress is not None and progress.phase == "failed" and SHARDS[1] in (progress.last_error or "")


def test_sigterm_stops_every_worker_and_another_count_resumes(proxy: FaultProxy, model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = model
    gate = Gate()  # four ranges go through, every later one waits: the signal comes mid-download
    proxy.add_rule(Rule(Callback(gate.hold), match_method="GET", only_ranged=True, skip=4, times=-1))
    proc = popen_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path), *RANGED, "--workers", "3"],
                     proxy.url)  # fmt: skip
    model_dir = tmp_path / "m"
    wait_until("4 ranges in the journals", lambda: journal_ranges(model_dir) == 4)
    workers = children(proc.pid)
    assert workers  # the worker processes (and multiprocessing's resource tracker)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    gate.open()
    assert proc.returncode == 143, err
    wait_until("every worker process gone", lambda: not any(alive(pid) for pid in workers))
    assert read_manifest(str(model_dir)) is None
    done = journal_ranges(model_dir)
    assert done >= 4

    proxy.clear_rules()
    proxy.reset_counters()
    r = download(proxy, bucket, tmp_path, "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr
    assert read_tree(str(model_dir)) == files
    assert (
        object_bytes(proxy) <= sum(len(b) for b in files.values()) - done * MiB
    )  # the journaled ranges were not fetched again


def test_workers_stop_when_the_coordinator_is_killed(proxy: FaultProxy, model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bucket, _ = model
    gate = Gate()
    proxy.add_rule(Rule(Callback(gate.hold), match_method="GET", only_ranged=True, skip=2, times=-1))
    proc = popen_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path), *RANGED, "--workers", "2"],
                     proxy.url)  # fmt: skip
    wait_until("2 ranges in the journals", lambda: journal_ranges(tmp_path / "m") == 2)
    wait_until("requests held", lambda: gate.held >= 1)
    workers = children(proc.pid)
    assert workers
    proc.kill()  # SIGKILL: the coordinator does nothing more; its workers see their pipe close
    proc.communicate()
    try:
        wait_until("every worker process gone", lambda: not any(alive(pid) for pid in workers))
    finally:
        gate.open()


def test_workers_with_peers_is_a_configuration_error(tmp_path: Path) -> None:
    r = run_cli(
        ["--model-uri", "s3://bucket-x/m/", "--local-dir", str(tmp_path), "--workers", "2", "--peers",
         "http://127.0.0.1:1,http://127.0.0.1:2", "--peer-self", "http://127.0.0.1:1"],
        "http://127.0.0.1:1", DOWNLOADER_PEER_TOKEN="t" * 32,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "--workers" in r.stderr and "cooperative" in r.stderr


def test_workers_setting_parses_strictly() -> None:
    from downloader.config import load_settings

    base = ["--model-uri", "s3://bucket-x/m/"]
    assert load_settings(base, {}).workers is None  # auto
    assert load_settings([*base, "--workers", "4"], {}).workers == 4
    assert load_settings(base, {"DOWNLOADER_WORKERS": "auto"}).workers is None
    assert load_settings(base, {"DOWNLOADER_WORKERS": "3"}).workers == 3
    for bad in ("0", "65", "two", "1.5"):
        with pytest.raises(errors.ConfigError, match="--workers"):
            load_settings([*base, "--workers", bad], {})
