"""The transfer engine in-process, against a real local source (files on disk): ranges, whole files, resume from
journals, a file that changes while it is read, and the engine's choices from an object's facts."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from downloader.config import load_settings
from downloader.jobs import Strategy, choose_checksum, whole_concurrency
from downloader.progress import Stats
from downloader.sources.base import Checksum, ObjectDetail, RemoteFile
from downloader.sources.local import LocalSource
from downloader.state import JournalHeader, ModelTree, StateDir, new_token
from downloader.transfer import Engine
from tests.conftest import read_tree
from tests.synthetic import MiB, random_bytes


def _settings(source: Path, target: Path, *extra: str):  # type: ignore[no-untyped-def]
    argv = ["--model-uri", str(source), "--local-dir", str(target), "--model-name", "m", *extra]
    return load_settings(argv, {})


class _Download:
    """One engine run over a local source, as run.py drives it (minus listing, plan and manifest)."""

    def __init__(self, source: Path, target: Path, *extra: str) -> None:
        self.settings = _settings(source, target, *extra)
        self.source = LocalSource(self.settings.uri)
        self.tree = ModelTree(self.settings.model_dir)
        self.state = StateDir(self.settings.model_dir)
        self.stats = Stats(self.source.display_uri, self.settings.model_dir)
        self.cancel = threading.Event()

    def files(self) -> list[RemoteFile]:
        return sorted(self.source.list(threading.Event()), key=lambda f: f.rel_path)

    def run(self, files: list[RemoteFile], *, keep_pages: bool = True):  # type: ignore[no-untyped-def]
        self.tree.open_root(create=True)
        self.state.ensure()
        engine = Engine(
            self.source, self.tree, self.state, self.settings, self.stats, self.cancel, keep_pages=keep_pages
        )
        try:
            return engine.run(files, self.state.journals())
        finally:
            self.state.close()
            self.tree.close()


def _model(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


RANGED = ["--part-threshold", "1MiB", "--part-chunksize", "1MiB", "--num-threads", "4"]


@pytest.mark.parametrize("keep_pages", [True, False], ids=["page-cache", "o-direct"])
def test_ranges_and_whole_files_land_verified_and_recorded(tmp_path: Path, keep_pages: bool) -> None:
    files = {
        "model-1.safetensors": random_bytes(5 * MiB + 123, 1),
        "sub/model-2.safetensors": random_bytes(3 * MiB, 2),
        "config.json": b'{"a": 1}',
        "empty.txt": b"",
    }
    src = _model(tmp_path / "src", files)
    d = _Download(src, tmp_path / "dst", *RANGED)
    records = d.run(d.files(), keep_pages=keep_pages)
    assert read_tree(str(tmp_path / "dst" / "m")) == files
    assert {r.rel_path: r.size for r in records} == {k: len(v) for k, v in files.items()}
    assert d.stats.snapshot().bytes_fetched == sum(map(len, files.values()))
    # Every record names what was checked: a local file publishes no checksum, its size is checked.
    assert all(r.verified.startswith("size") for r in records)
    assert os.listdir(tmp_path / "dst" / "m" / ".aibrix" / "journal") == []  # no journal left behind


def test_a_resumed_file_reads_only_its_missing_ranges(tmp_path: Path) -> None:
    """The state a crash leaves (a temp file with its first ranges written, a journal naming them), made here with
    the state machinery itself: the engine reads only the other ranges and keeps the journaled bytes."""
    shard = random_bytes(8 * MiB, 6)
    src = _model(tmp_path / "src", {"shard.bin": shard})
    d = _Download(src, tmp_path / "dst", *RANGED, "--no-fast-paths")  # through the buffer, so bytes are counted
    (f,) = d.files()
    d.tree.open_root(create=True)
    d.state.ensure()
    token = new_token()
    temp, fd, _ = d.tree.create_temp(("shard.bin",), token, f.size)
    os.pwrite(fd, shard[: 3 * MiB], 0)  # ranges 0-2 of 8, each 1 MiB
    os.close(fd)
    layout = "v1 step=1048576 part=0 digest=-"  # what the engine writes for 1 MiB ranges and no streamed checksum
    d.state.start_journal(token, JournalHeader(f.rel_path, f.key, f.version, None, f.size, temp, layout))
    for index in range(3):
        d.state.record_range(token, index, [])
    d.state.close()
    d.tree.close()

    resumed = _Download(src, tmp_path / "dst", *RANGED, "--no-fast-paths")
    records = resumed.run([f])
    assert [r.rel_path for r in records] == ["shard.bin"]
    assert resumed.stats.snapshot().bytes_fetched == len(shard) - 3 * MiB
    assert read_tree(str(tmp_path / "dst" / "m")) == {"shard.bin": shard}


def test_a_file_that_changes_while_it_is_read_starts_over_at_its_new_version(tmp_path: Path) -> None:
    old, new = random_bytes(6 * MiB, 4), random_bytes(7 * MiB, 5)
    src = _model(tmp_path / "src", {"shard.bin": old})
    d = _Download(src, tmp_path / "dst", *RANGED)
    files = d.files()
    path = src / "shard.bin"
    path.write_bytes(new)  # after listing: size and mtime differ from the listed version
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    records = d.run(files)
    assert read_tree(str(tmp_path / "dst" / "m")) == {"shard.bin": new}
    assert records[0].size == len(new)
    assert d.stats.snapshot().object_changes == 1


def test_the_checksum_is_chosen_by_what_can_be_computed_while_the_bytes_stream() -> None:
    md5 = Checksum("md5", "0" * 32, "hex")
    md5_parts = Checksum("md5", "0" * 32, "hex", part_size=8 * MiB, parts=3)
    crc = Checksum("crc32", "AAAAAA==", "base64")
    sha = Checksum("sha256", "A" * 43 + "=", "base64")
    detail = ObjectDetail(20 * MiB, "v", None, (sha, crc, md5_parts))
    assert choose_checksum(detail, multi_range=False) == (sha, Strategy.STREAM)  # one range: the first, as it streams
    assert choose_checksum(detail, multi_range=True) == (crc, Strategy.COMBINE)  # ranges: a CRC combines
    assert choose_checksum(ObjectDetail(1, "v", None, (md5_parts,)), multi_range=True) == (md5_parts, Strategy.STREAM)
    assert choose_checksum(ObjectDetail(1, "v", None, (md5,)), multi_range=True) == (md5, Strategy.REREAD)
    assert choose_checksum(ObjectDetail(1, "v", None, ()), multi_range=True) == (None, Strategy.SIZE)


def test_whole_file_gets_in_flight_stay_within_the_memory_budget() -> None:
    depth, workers = whole_concurrency(connections=16, slot=256 * 1024, budget=24 * MiB)
    assert depth * workers * 256 * 1024 <= 24 * MiB and workers >= 3
