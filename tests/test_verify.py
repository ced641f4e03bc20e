"""Checksums computed by our streaming hashers match what a real S3 server publishes."""

from __future__ import annotations

import base64
import hashlib
import itertools
import threading

from downloader.sources.base import Checksum
from downloader.verify import RangeHasher, composite_value, digest_file, encode
from tests.synthetic import MiB, random_bytes, upload


def stream(data: bytes, start: int, end: int, part_size: int | None, algorithm: str, piece: int = 7777) -> list[str]:
    h = RangeHasher(algorithm, start, end, part_size)
    view = memoryview(data)
    for off in range(start, end + 1, piece):
        h.update(view[off : min(end + 1, off + piece)])
    return h.finish()


def test_multipart_etag_matches_the_server(s3, bucket) -> None:  # type: ignore[no-untyped-def]
    data = random_bytes(13 * MiB, 3)
    upload(s3, bucket, "", {"big.bin": data}, part_size=5 * MiB)
    etag = s3.head_object(Bucket=bucket, Key="big.bin")["ETag"].strip('"')
    value, parts = etag.split("-")
    c = Checksum("md5", value, "hex", 5 * MiB, int(parts))
    # two ranges of two parts each, then the short tail, as the engine would lay them out
    digests = stream(data, 0, 10 * MiB - 1, 5 * MiB, "md5") + stream(data, 10 * MiB, len(data) - 1, 5 * MiB, "md5")
    assert len(digests) == 3
    assert composite_value(c, digests) == value


def test_full_object_checksums() -> None:
    data = random_bytes(3 * MiB + 5, 4)
    for algorithm, encoding, expect in [
        ("md5", "hex", hashlib.md5(data).hexdigest()),
        ("sha256", "base64", base64.b64encode(hashlib.sha256(data).digest()).decode()),
    ]:
        c = Checksum(algorithm, expect, encoding)
        assert composite_value(c, stream(data, 0, len(data) - 1, None, algorithm)) == expect


def test_second_read_digest(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = random_bytes(2 * MiB + 1, 5)
    path = tmp_path / "f"
    path.write_bytes(data)
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        raw = digest_file(fd, "crc32", len(data), threading.Event(), block=64 * 1024)
    finally:
        os.close(fd)
    import zlib

    assert encode(raw, "hex") == zlib.crc32(data).to_bytes(4, "big").hex()


def test_empty_object() -> None:
    assert stream(b"", 0, -1, None, "md5") == [hashlib.md5(b"").hexdigest()]


def test_crc_combination_matches_a_whole_file_crc() -> None:
    import zlib

    import google_crc32c

    from downloader.verify import combine_range_crcs

    data = random_bytes(5 * MiB + 123, 6)
    cuts = [0, 1, 1000, 2 * MiB, 5 * MiB, len(data)]
    pieces = [data[a:b] for a, b in itertools.pairwise(cuts)]
    lengths = [len(p) for p in pieces]
    crc32s = [zlib.crc32(p).to_bytes(4, "big").hex() for p in pieces]
    assert combine_range_crcs("crc32", crc32s, lengths) == zlib.crc32(data).to_bytes(4, "big")
    crc32cs = [google_crc32c.Checksum(p).digest().hex() for p in pieces]
    assert combine_range_crcs("crc32c", crc32cs, lengths) == google_crc32c.Checksum(data).digest()


def _crc64nvme(data: bytes) -> int:
    """Reference CRC-64/NVME (reflected, init and xorout all ones), table-driven, for the combination test."""
    poly = 0x9A6C9329AC4BC9B5
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    crc = 0xFFFFFFFFFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFFFFFFFFFF


def test_crc64nvme_combination_matches_a_whole_file_crc() -> None:
    from downloader.verify import combine_range_crcs

    assert _crc64nvme(b"123456789") == 0xAE8B14860A799888  # the catalogued check value
    data = random_bytes(200_000, 8)
    cuts = [0, 1, 999, 65_536, 150_000, len(data)]
    pieces = [data[a:b] for a, b in itertools.pairwise(cuts)]
    digests = [_crc64nvme(p).to_bytes(8, "big").hex() for p in pieces]
    assert combine_range_crcs("crc64nvme", digests, [len(p) for p in pieces]) == _crc64nvme(data).to_bytes(8, "big")


def test_crc32_hasher_matches_zlib() -> None:
    import zlib

    from downloader.verify import new_hasher

    data = random_bytes(3 * MiB + 5, 9)
    h = new_hasher("crc32")
    h.update(memoryview(data)[:1000])
    h.update(memoryview(data)[1000:])
    assert h.digest() == zlib.crc32(data).to_bytes(4, "big")


# ---- what to make of a value the bytes do not match (verify.settle) ---------------------------------------------
def _never(_c: Checksum) -> str:
    raise AssertionError("no other value to compute")


def test_a_declared_value_the_bytes_contradict_fails() -> None:
    import pytest

    from downloader.errors import IntegrityError
    from downloader.verify import settle

    declared = Checksum("crc32", "AAAAAA==", "base64", 5 * MiB, 3)
    with pytest.raises(IntegrityError) as exc:
        settle("k", declared, "BBBBBB==", [], _never, earlier=None)
    assert "crc32 (composite of 3 parts) mismatch: expected AAAAAA==-3, got BBBBBB==" in str(exc.value)
    with pytest.raises(IntegrityError):  # the same bytes a second time change nothing: never a silent pass
        settle("k", declared, "BBBBBB==", [], _never, earlier="BBBBBB==")


def test_another_published_value_that_matches_verifies_the_bytes_and_names_the_wrong_one() -> None:
    from downloader.verify import settle

    declared = Checksum("crc32c", "AAAAAA==", "base64", 5 * MiB, 3, additional=True)
    etag = Checksum("md5", "ab" * 16, "hex", 5 * MiB, 3, declared=False)
    verdict = settle("k", declared, "BBBBBB==", [etag], lambda c: c.value, earlier=None)
    assert verdict.checksum == etag and verdict.verified == "size and md5 (composite of 3 parts)"
    assert verdict.warning is not None and "crc32c (composite of 3 parts) value AAAAAA==-3" in verdict.warning
    assert "the store's crc32c value is wrong" in verdict.warning


def test_a_guessed_reading_is_tried_the_other_way_quietly() -> None:
    from downloader.verify import settle

    full = Checksum("crc32", "AAAAAA==", "base64", declared=False)
    composite = Checksum("crc32", "AAAAAA==", "base64", 5 * MiB, 3, declared=False)
    verdict = settle("k", full, "BBBBBB==", [composite], lambda c: c.value, earlier=None)
    assert verdict.checksum == composite and verdict.warning is None


def test_guessed_values_no_reading_matches_fetch_again_then_size_with_a_warning() -> None:
    import pytest

    from downloader.errors import IntegrityError
    from downloader.verify import settle

    full = Checksum("crc32", "AAAAAA==", "base64", declared=False)
    composite = Checksum("crc32", "AAAAAA==", "base64", 5 * MiB, 3, declared=False)
    with pytest.raises(IntegrityError):  # the first time: maybe a bad fetch
        settle("k", full, "BBBBBB==", [composite], lambda c: "CCCCCC==", earlier=None)
    with pytest.raises(IntegrityError):  # other bytes the second time: a bad fetch again, not a value to give up on
        settle("k", full, "DDDDDD==", [composite], lambda c: "CCCCCC==", earlier="BBBBBB==")
    verdict = settle("k", full, "BBBBBB==", [composite], lambda c: "CCCCCC==", earlier="BBBBBB==")
    assert (
        verdict.checksum is None
        and verdict.verified == "size only (published crc32 AAAAAA==, crc32 AAAAAA==-3 cannot be interpreted)"
    )
    assert verdict.warning is not None and "verified by size only" in verdict.warning


def test_value_of_reads_full_and_composite_values_again(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import zlib

    from downloader.verify import value_of

    data = random_bytes(11 * MiB + 3, 12)
    path = tmp_path / "f"
    path.write_bytes(data)
    parts = [data[i : i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    composite = zlib.crc32(b"".join(zlib.crc32(p).to_bytes(4, "big") for p in parts)).to_bytes(4, "big")
    fd = os.open(path, os.O_RDONLY)
    try:
        full = value_of(Checksum("crc32", "", "base64"), fd, len(data), threading.Event(), block=1 * MiB)
        comp = value_of(Checksum("crc32", "", "base64", 5 * MiB, 3), fd, len(data), threading.Event(), block=1 * MiB)
    finally:
        os.close(fd)
    assert full == base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    assert comp == base64.b64encode(composite).decode()
