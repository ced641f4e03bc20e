"""file:// and absolute-path sources: copied in the kernel, or used in place, with the same manifest."""

from __future__ import annotations

import os

from downloader import is_ready, read_manifest
from tests.conftest import read_tree, run_cli
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
