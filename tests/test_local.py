"""file:// and absolute-path sources: copied in the kernel, or used in place, with the same manifest."""

from __future__ import annotations

import os

from downloader import is_ready, read_manifest
from tests.conftest import journal_ranges, read_tree, run_cli
from tests.synthetic import MiB, model_files, write_tree

RANGED = ["--part-threshold", "2MiB", "--part-chunksize", "1MiB", "--num-threads", "4"]


def expected(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k.rsplit(".", 1)[-1] in ("json", "safetensors", "py")}


def test_copy_from_a_mounted_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = model_files(shards=2, shard_bytes=5 * MiB)
    src = tmp_path / "pvc" / "llama"
    write_tree(str(src), files)
    os.symlink(src / "config.json", src / "alias.json")  # file symlinks (as in an HF cache snapshot) are read
    out = tmp_path / "models"
    r = run_cli(
        [
            "--model-uri",
            f"file://{src}",
            "--local-dir",
            str(out),
            "--allow-file-suffix",
            "json,safetensors,py",
            *RANGED,
        ],
        "",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out / "llama")
    assert read_tree(str(out / "llama")) == {**expected(files), "alias.json": files["config.json"]}
    manifest = read_manifest(str(out / "llama"))
    assert manifest is not None and all("size" in f.verified for f in manifest.files)
    assert not any(os.path.islink(out / "llama" / f.path) for f in manifest.files)  # real copies

    r = run_cli(
        ["--model-uri", str(src), "--local-dir", str(out), "--allow-file-suffix", "json,safetensors,py", *RANGED], ""
    )
    assert r.returncode == 0 and "nothing to fetch" in r.stderr

    (src / "config.json").write_bytes(b'{"changed": true}')  # a changed source file is copied again
    r = run_cli(
        ["--model-uri", str(src), "--local-dir", str(out), "--allow-file-suffix", "json,safetensors,py", *RANGED], ""
    )
    assert r.returncode == 0, r.stderr
    assert (out / "llama" / "config.json").read_bytes() == b'{"changed": true}'


def test_link_mode_uses_files_in_place(tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = model_files(shards=2, shard_bytes=1 * MiB)
    src = tmp_path / "pvc" / "llama"
    write_tree(str(src), files)
    out = tmp_path / "models"
    r = run_cli(
        [
            "--model-uri",
            str(src),
            "--local-dir",
            str(out),
            "--local-mode",
            "link",
            "--allow-file-suffix",
            "json,safetensors",
        ],
        "",
    )
    assert r.returncode == 0, r.stderr
    model_dir = out / "llama"
    shard = model_dir / "model-00001-of-00002.safetensors"
    assert os.path.islink(shard) and os.path.realpath(shard) == str(src / "model-00001-of-00002.safetensors")
    assert (model_dir / "original" / "params.json").read_bytes() == files["original/params.json"]
    assert is_ready(str(model_dir))
    os.unlink(src / "model-00002-of-00002.safetensors")
    assert not is_ready(str(model_dir))  # readiness follows the files actually being there


def test_missing_path_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = run_cli(["--model-uri", str(tmp_path / "nope"), "--local-dir", str(tmp_path / "out")], "")
    assert r.returncode == 3, r.stderr
    assert "no such file or directory" in r.stderr and "Traceback" not in r.stderr


def test_kill_9_then_resume_a_local_copy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import signal
    import time

    from tests.conftest import popen_cli
    from tests.synthetic import random_bytes

    src = tmp_path / "pvc" / "big"
    data = random_bytes(256 * MiB, 11)
    write_tree(str(src), {"weights.safetensors": data, "config.json": b"{}"})
    out = tmp_path / "models"
    args = ["--model-uri", str(src), "--local-dir", str(out), "--part-threshold", "1MiB", "--part-chunksize", "64KiB"]
    killed_at = 0
    for _ in range(5):  # the copy is fast; try again if it finished before we could stop it
        proc = popen_cli([*args, "--num-threads", "1", "--force-download"], "")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            lines = journal_ranges(out / "big") + 1  # + the journal's header line
            if lines > 50:
                proc.send_signal(signal.SIGKILL)
                killed_at = lines
                break
            time.sleep(0.002)
        proc.wait()
        if proc.returncode == -signal.SIGKILL:
            break
    assert killed_at, "the copy always finished before it could be killed"
    assert not (out / "big" / "weights.safetensors").exists()
    r = run_cli(args, "")
    assert r.returncode == 0, r.stderr
    assert "resuming weights.safetensors" in r.stderr
    assert (out / "big" / "weights.safetensors").read_bytes() == data


def test_a_source_file_changed_during_the_copy_is_copied_again(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import time

    from tests.conftest import popen_cli
    from tests.synthetic import random_bytes

    src = tmp_path / "pvc" / "big"
    data = random_bytes(256 * MiB, 12)
    write_tree(str(src), {"weights.safetensors": data})
    shard = src / "weights.safetensors"
    out = tmp_path / "models"
    args = ["--model-uri", str(src), "--local-dir", str(out), "--part-threshold", "1MiB", "--part-chunksize", "64KiB"]
    for attempt in range(5):  # the copy is fast; try again if it finished before we could touch the file
        proc = popen_cli([*args, "--num-threads", "1", "--force-download"], "")
        touched = False
        while proc.poll() is None:
            lines = journal_ranges(out / "big") + 1  # + the journal's header line
            if lines > 50 and not touched:
                os.utime(shard, ns=(time.time_ns(), time.time_ns() + attempt + 1))  # a new version, same bytes
                touched = True
            time.sleep(0.002)
        _, err = proc.communicate()
        if touched:
            break
    assert touched, "the copy always finished before the file could be changed"
    assert proc.returncode == 0, err
    assert "changed" in err and "starting this file over" in err
    assert (out / "big" / "weights.safetensors").read_bytes() == data
    manifest = read_manifest(str(out / "big"))
    assert manifest is not None
    assert manifest.files[0].version == f"{len(data)}:{os.stat(shard).st_mtime_ns}"  # pinned to the new version
