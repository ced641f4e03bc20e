"""Pure parsing and planning: URIs, filters, path safety, skip rules, range layout."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from downloader.errors import InsufficientSpaceError, UnsafePathError, UriError
from downloader.plan import (
    check_free_space,
    check_layout,
    dropped_load_critical,
    is_selected,
    plan_downloads,
    safe_parts,
    split_ranges,
    suffix_matches,
)
from downloader.sources.base import RemoteFile
from downloader.state import DoneRecord, LocalStat
from downloader.uri import parse_model_uri, redact_uri


def rf(path: str, size: int = 10, version: str = '"v1"') -> RemoteFile:
    return RemoteFile(key="p/" + path, rel_path=path, size=size, version=version)


@pytest.mark.parametrize(
    "uri, scheme, bucket, prefix, name",
    [
        ("s3://bucket/models/llama/", "s3", "bucket", "models/llama/", "llama"),
        ("s3://bucket/models/llama", "s3", "bucket", "models/llama", "llama"),
        ("s3://bucket", "s3", "bucket", "", "bucket"),
        ("tos://b-1/x/y", "tos", "b-1", "x/y", "y"),
        ("gs://bucket/a/", "gs", "bucket", "a/", "a"),
        ("deepseek-ai/DeepSeek-R1", "hf", "deepseek-ai/DeepSeek-R1", "", "deepseek-ai/DeepSeek-R1"),
        ("/mnt/models/x", "file", "", "/mnt/models/x", "x"),
    ],
)
def test_parse_uri(uri: str, scheme: str, bucket: str, prefix: str, name: str) -> None:
    u = parse_model_uri(uri)
    assert (u.scheme, u.bucket, u.prefix, u.default_model_name) == (scheme, bucket, prefix, name)


@pytest.mark.parametrize(
    "uri", ["", "ftp://x/y", "s3://", "s3://b/../x", "s3://user:pw@bucket/x", "s3://bucket/x?sig=1", "a/b/c"]
)
def test_bad_uris(uri: str) -> None:
    with pytest.raises(UriError):
        parse_model_uri(uri)


def test_credentials_never_shown() -> None:
    with pytest.raises(UriError) as info:
        parse_model_uri("s3://AKIA:secretpw@bucket/x")
    assert "secretpw" not in str(info.value)
    assert redact_uri("https://host/path?X-Amz-Signature=abc") == "https://host/path"


@given(st.text(max_size=80))
def test_uri_parser_gives_a_value_or_a_clear_error(text: str) -> None:
    try:
        parse_model_uri(text)
    except UriError as exc:
        assert exc.setting == "--model-uri"


def test_suffix_filter_matches_real_suffixes() -> None:
    assert suffix_matches("modeling.py", ["py"])
    assert suffix_matches("sub/dir/x.safetensors", ["safetensors"])
    assert not suffix_matches("happy", ["py"])
    assert not suffix_matches(".py", ["py"])
    assert not suffix_matches("model.safetensors.index.json", ["safetensors"])
    assert suffix_matches("weights.tar.gz", ["tar.gz"])


def test_include_exclude() -> None:
    assert is_selected("original/params.json", ["json"], [], [])
    assert not is_selected("original/params.json", ["json"], [], ["original/"])
    assert is_selected("a/b.json", [], ["*.json"], [])
    assert not is_selected("a/b.bin", [], ["*.json"], [])
    assert not is_selected("a/b.json", [], ["*.json"], ["a/*"])


def test_load_critical_warning_names() -> None:
    dropped = [rf("tokenizer.model"), rf("x/merges.txt"), rf("cl100k.tiktoken"), rf("weights.bin"), rf("t.jinja")]
    assert dropped_load_critical(dropped) == ["tokenizer.model", "x/merges.txt", "cl100k.tiktoken", "t.jinja"]


@pytest.mark.parametrize(
    "rel",
    [
        "../x",
        "a/../../x",
        "/etc/passwd",
        "a//b",
        "a/./b",
        "a\\b",
        "a\x00b",
        "a/\x01b",
        ".aibrix/manifest.json",
        "x" * 256,
    ],
)
def test_unsafe_paths(rel: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_parts("key", rel)


def test_file_and_folder_clash_and_case_warning() -> None:
    with pytest.raises(UnsafePathError, match="both a file and a folder"):
        check_layout([rf("a"), rf("a/b")])
    warnings = check_layout([rf("Config.json"), rf("config.json")])
    assert warnings and "differ only in case" in warnings[0]


@given(st.lists(st.text(alphabet=st.sampled_from("ab./\\\x00."), min_size=1, max_size=12), max_size=6))
def test_layout_check_never_lets_a_path_escape(paths: list[str]) -> None:
    files = [RemoteFile(key=p, rel_path=p, size=1, version="v") for p in paths]
    try:
        check_layout(files)
    except UnsafePathError:
        return
    for p in paths:
        parts = p.split("/")
        assert ".." not in parts and "" not in parts and not p.startswith("/") and "\\" not in p


def test_skip_rules() -> None:
    f = rf("a.json", size=10)
    rec = DoneRecord("a.json", '"v1"', None, 10, 123, None, "size")
    assert plan_downloads([f], {"a.json": rec}, {"a.json": LocalStat(10, 123, True)}, force=False).skip == [f]
    # touched, resized, missing, a different version, or forced: fetched
    assert plan_downloads([f], {"a.json": rec}, {"a.json": LocalStat(10, 999, True)}, force=False).fetch == [f]
    assert plan_downloads([f], {"a.json": rec}, {"a.json": LocalStat(9, 123, True)}, force=False).fetch == [f]
    assert plan_downloads([f], {"a.json": rec}, {"a.json": None}, force=False).fetch == [f]
    assert plan_downloads(
        [rf("a.json", version='"v2"')], {"a.json": rec}, {"a.json": LocalStat(10, 123, True)}, force=False
    ).fetch
    assert plan_downloads([f], {"a.json": rec}, {"a.json": LocalStat(10, 123, True)}, force=True).fetch == [f]


def test_free_space() -> None:
    check_free_space("/m", 100, 200, 50)
    with pytest.raises(InsufficientSpaceError) as info:
        check_free_space("/m", 100, 120, 50)
    assert info.value.needed == 100 and info.value.available == 70
    assert "need 100 bytes" in str(info.value) and "available 70 bytes" in str(info.value)


def test_ranges_cover_the_file_exactly() -> None:
    for size, threshold, chunk, part in [(100, 50, 30, None), (100, 200, 30, None), (10, 5, 3, 4), (0, 5, 5, None)]:
        ranges = split_ranges(size, threshold, chunk, part)
        assert sum(r.length for r in ranges) == size
        assert all(a.end + 1 == b.start for a, b in itertools.pairwise(ranges))
    # aligned to multipart parts: 5-byte parts, ~10-byte chunks -> ranges of two whole parts
    assert [(r.start, r.end, r.first_part) for r in split_ranges(23, 1, 10, 5)] == [(0, 9, 0), (10, 19, 2), (20, 22, 4)]


def test_temp_tokens_are_unique_and_a_forked_child_draws_its_own() -> None:
    import os

    from downloader.state import new_token

    tokens = {new_token() for _ in range(50_000)}
    assert len(tokens) == 50_000 and all(len(t) == 16 and int(t, 16) >= 0 for t in tokens)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next tokens, then out without running any cleanup
        os.write(write_end, " ".join(new_token() for _ in range(3)).encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as r:
        child = r.read().split()
    parent = [new_token() for _ in range(3)]
    assert len(child) == 3 and not set(child) & set(parent), (child, parent)
