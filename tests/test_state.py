"""The state machinery in-process: files under the model directory never follow a symlink out of it, records and
journals survive a torn write, the manifest is the readiness signal, and one process at a time holds the lock."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from downloader.errors import LocalStorageError, UnsafePathError
from downloader.layout import Manifest, ManifestFile, damaged_files, is_ready, read_manifest
from downloader.state import DoneRecord, JournalHeader, ModelTree, StateDir, new_token


def _tree(root: Path) -> ModelTree:
    tree = ModelTree(str(root))
    tree.open_root(create=True)
    return tree


def test_a_temp_file_gets_its_name_atomically_and_replaces_a_planted_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not ours")
    model = tmp_path / "m"
    tree = _tree(model)
    try:
        os.symlink(outside, model / "config.json")  # planted where the file will go
        temp, fd, _ = tree.create_temp(("config.json",), new_token(), 3)
        os.write(fd, b"abc")
        os.close(fd)
        assert tree.commit(("config.json",), temp) is not None
    finally:
        tree.close()
    assert (model / "config.json").read_bytes() == b"abc" and not (model / "config.json").is_symlink()
    assert outside.read_bytes() == b"not ours"  # the symlink was replaced, never followed


def test_a_directory_replaced_by_a_symlink_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    model = tmp_path / "m"
    tree = _tree(model)
    try:
        os.symlink(elsewhere, model / "sub")
        with pytest.raises(UnsafePathError):
            tree.create_temp(("sub", "weights.bin"), new_token(), 10)
    finally:
        tree.close()
    assert os.listdir(elsewhere) == []


def test_done_records_and_journals_survive_a_torn_last_line(tmp_path: Path) -> None:
    model = tmp_path / "m"
    _tree(model).close()
    state = StateDir(str(model))
    state.ensure()
    record = DoneRecord("a.bin", '"etag"', None, 3, 123, "crc32:AAAAAA==", "size and crc32 (full object)")
    state.append_done([record])
    token = new_token()
    state.start_journal(token, JournalHeader("b.bin", "m/b.bin", '"v"', None, 10, ".b.bin.t.aibrix-tmp", "v1"))
    state.record_range(token, 0, ["d0"])
    state.record_range(token, 2, ["d2"])
    state.close()
    # A crash in the middle of an append: half a line at the end of each file.
    for path in (model / ".aibrix" / "done.jsonl", model / ".aibrix" / "journal" / f"{token}.jsonl"):
        with open(path, "ab") as fh:
            fh.write(b'{"r": 7, "d": ["x')
    again = StateDir(str(model))
    assert again.read_done() == {"a.bin": record}
    (journal,) = again.journals()
    assert journal.token == token and journal.done == {0: ["d0"], 2: ["d2"]}


def test_the_manifest_is_the_readiness_signal_and_names_what_went_missing(tmp_path: Path) -> None:
    model = tmp_path / "m"
    tree = _tree(model)
    tree.close()
    (model / "w.bin").write_bytes(b"12345")
    state = StateDir(str(model))
    state.ensure()
    assert read_manifest(str(model)) is None and not is_ready(str(model))
    mtime = os.stat(model / "w.bin").st_mtime_ns
    manifest = Manifest(
        "s3://b/m/", str(model), time.time(), "test", (ManifestFile("w.bin", 5, "v", None, None, "size", mtime),)
    )
    state.write_manifest(manifest)
    assert read_manifest(str(model)) == manifest and is_ready(str(model))
    (model / "w.bin").write_bytes(b"123")  # truncated since
    assert not is_ready(str(model)) and damaged_files(str(model), manifest) == ["w.bin"]
    state.remove_manifest()
    assert read_manifest(str(model)) is None
    # A manifest that does not say complete, or of another format, is no manifest.
    (model / ".aibrix" / "manifest.json").write_text(json.dumps({"format": "other", "complete": True}))
    assert read_manifest(str(model)) is None


def test_one_holder_of_the_lock_at_a_time(tmp_path: Path) -> None:
    model = tmp_path / "m"
    _tree(model).close()
    first, second = StateDir(str(model)), StateDir(str(model))
    first.ensure()
    first.acquire_lock(threading.Event(), 0, lambda waited, owner: None)
    waits: list[str] = []
    with pytest.raises(LocalStorageError, match="held the lock"):
        second.acquire_lock(threading.Event(), 0.6, lambda waited, owner: waits.append(owner))
    assert waits and str(os.getpid()) in waits[0]  # who holds it, from the lock file
    first.release_lock()
    second.acquire_lock(threading.Event(), 5, lambda waited, owner: None)  # free now: taken at once
    second.release_lock()
