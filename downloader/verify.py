"""Checksums: hashers for every algorithm a source may publish, per-part hashing while bytes stream past,
composite (multipart) digests, the full-file pass used only when nothing cheaper is possible, and what to make of
a published value the bytes do not match (settle)."""

from __future__ import annotations

import base64
import hashlib
import importlib
import os
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import IntegrityError, Interrupted
from .sources.base import Checksum


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...


def _crc32_function() -> Callable[[bytes | memoryview, int], int]:
    # ISA-L's CRC32 (carry-less multiply) runs ~10x faster than the zlib Debian ships: on a CPU-bound
    # download that is a tenth of the client's CPU. zlib gives the same values where ISA-L is missing.
    try:
        from isal import isal_zlib
    except ImportError:
        return zlib.crc32
    return isal_zlib.crc32


_crc32 = _crc32_function()


class _Crc32:
    def __init__(self) -> None:
        self._crc = 0

    def update(self, data: bytes | memoryview, /) -> None:
        self._crc = _crc32(data, self._crc)

    def digest(self) -> bytes:
        return self._crc.to_bytes(4, "big")


class _Crc32c:
    def __init__(self) -> None:
        module: Any = importlib.import_module("google_crc32c")
        self._h: Any = module.Checksum()

    def update(self, data: bytes | memoryview, /) -> None:
        self._h.update(bytes(data) if isinstance(data, memoryview) else data)

    def digest(self) -> bytes:
        return bytes(self._h.digest())


class _Crc64Nvme:
    def __init__(self) -> None:
        module: Any = importlib.import_module("awscrt.checksums")
        self._fn: Any = module.crc64nvme
        self._crc = 0

    def update(self, data: bytes | memoryview, /) -> None:
        self._crc = self._fn(data, self._crc)

    def digest(self) -> bytes:
        return int(self._crc).to_bytes(8, "big")


def _git_blob_sha1(size: int | None) -> Hasher:
    """Git's id of a file: sha1 over "blob <size>\\0" and the bytes. The Hugging Face Hub publishes it for files
    that are not in LFS (config, tokenizer, code), so those are verified too, for free, while they stream."""
    if size is None:
        raise ValueError("a git blob id needs the object size")
    h = hashlib.sha1(usedforsecurity=False)
    h.update(b"blob %d\x00" % size)
    return h


def _factory(algorithm: str) -> Callable[[int | None], Hasher] | None:
    """A constructor taking the object's size (only git-sha1 uses it), or None when this build cannot verify."""
    plain = _plain_factory(algorithm)
    if plain is not None:
        return lambda _size: plain()
    if algorithm == "git-sha1":
        return _git_blob_sha1
    return None


def _plain_factory(algorithm: str) -> Callable[[], Hasher] | None:
    if algorithm in ("md5", "sha1", "sha256"):
        name = algorithm
        return lambda: hashlib.new(name)
    if algorithm == "crc32":
        return _Crc32
    if algorithm == "crc32c":
        try:
            import google_crc32c  # noqa: F401
        except ImportError:
            return None
        return _Crc32c
    if algorithm == "crc64nvme":
        try:
            from awscrt import checksums  # noqa: F401
        except ImportError:
            return None
        return _Crc64Nvme
    return None


def supported(algorithm: str) -> bool:
    return _factory(algorithm) is not None


def new_hasher(algorithm: str, size: int | None = None) -> Hasher:
    factory = _factory(algorithm)
    if factory is None:
        raise ValueError(f"no implementation for checksum {algorithm}")
    return factory(size)


def encode(raw: bytes, encoding: str) -> str:
    return raw.hex() if encoding == "hex" else base64.b64encode(raw).decode()


class RangeHasher:
    """Digests of the checksum parts inside one byte range, computed as the bytes stream past.

    The range [start, end] covers whole parts of `part_size` (the last part of the object may be short),
    or the whole object when `part_size` is None. Digests are kept across retries of the range, so a
    connection reset does not force the range to start over.
    """

    def __init__(self, algorithm: str, start: int, end: int, part_size: int | None) -> None:
        self.algorithm = algorithm
        self.part_size = part_size
        self.pos = start
        self.end = end
        self.digests: list[str] = []
        # A whole-object digest (no parts) starts at byte 0, so end + 1 is the object's size.
        self._hasher = new_hasher(algorithm, end + 1 if part_size is None else None)
        self._boundary = self._next_boundary(start)

    def _next_boundary(self, pos: int) -> int:
        if self.part_size is None:
            return self.end + 1
        return min(self.end + 1, (pos // self.part_size + 1) * self.part_size)

    def update(self, data: memoryview) -> None:
        while len(data):
            take = min(len(data), self._boundary - self.pos)
            self._hasher.update(data[:take])
            self.pos += take
            data = data[take:]
            if self.pos == self._boundary:
                self.digests.append(self._hasher.digest().hex())
                if self.pos <= self.end:  # another part of this range follows (only with a part size)
                    self._hasher = new_hasher(self.algorithm)
                    self._boundary = self._next_boundary(self.pos)

    def finish(self) -> list[str]:
        if self.pos <= self.end:
            raise RuntimeError("range hasher finished early")
        if self.end < 0 and not self.digests:  # empty object
            self.digests.append(self._hasher.digest().hex())
        return self.digests


def composite_value(checksum: Checksum, part_digests: list[str]) -> str:
    """The value S3 publishes for a multipart object: digest of the concatenated part digests."""
    if len(part_digests) == 1 and checksum.parts is None:
        return encode(bytes.fromhex(part_digests[0]), checksum.encoding)
    outer = new_hasher(checksum.algorithm)
    for d in part_digests:
        outer.update(bytes.fromhex(d))
    return encode(outer.digest(), checksum.encoding)


# ---- CRC combination (zlib's crc32_combine, for any reflected CRC) ----------------------------------------
# crc(A || B) = crc(A) * x^(8 * len(B)) mod P  xor  crc(B): ranges fetched out of order are verified against
# a full-object CRC without reading the file a second time. Polynomials are in reflected form.
_POLYS = {"crc32": (0xEDB88320, 32), "crc32c": (0x82F63B78, 32), "crc64nvme": (0x9A6C9329AC4BC9B5, 64)}
COMBINABLE = frozenset(_POLYS)


def _multmodp(a: int, b: int, poly: int, width: int) -> int:
    m = 1 << (width - 1)
    p = 0
    while True:
        if a & m:
            p ^= b
            if (a & (m - 1)) == 0:
                break
        m >>= 1
        b = (b >> 1) ^ poly if b & 1 else b >> 1
    return p


def _x2n_table(poly: int, width: int) -> list[int]:
    table = [1 << (width - 2)]  # x^1
    for _ in range(width - 1):
        table.append(_multmodp(table[-1], table[-1], poly, width))
    return table


_X2N = {name: _x2n_table(poly, width) for name, (poly, width) in _POLYS.items()}


def crc_combine(algorithm: str, crc1: int, crc2: int, len2: int) -> int:
    poly, width = _POLYS[algorithm]
    table = _X2N[algorithm]
    p = 1 << (width - 1)  # x^0
    n, k = len2, 3  # x^(8 * len2) = x^(len2 * 2^3)
    while n:
        if n & 1:
            p = _multmodp(table[k % width], p, poly, width)
        n >>= 1
        k += 1
    return _multmodp(p, crc1, poly, width) ^ crc2


def combine_range_crcs(algorithm: str, digests: list[str], lengths: list[int]) -> bytes:
    """Full-object CRC from the CRCs of consecutive ranges (hex, big-endian) and their lengths."""
    crc = int(digests[0], 16)
    for d, length in zip(digests[1:], lengths[1:], strict=True):
        crc = crc_combine(algorithm, crc, int(d, 16), length)
    return crc.to_bytes(_POLYS[algorithm][1] // 8, "big")


def _blocks(fd: int, size: int, cancel: threading.Event, block: int) -> Iterator[memoryview]:
    """The file's first `size` bytes, read again through `fd`, one buffer at a time (the same buffer each time)."""
    block = max(1, min(block, size))  # a fresh buffer is zeroed: no larger than the file
    view = memoryview(bytearray(block))
    offset = 0
    while offset < size:
        if cancel.is_set():
            raise Interrupted("signal", 130)
        n = os.preadv(fd, [view[: min(block, size - offset)]], offset)
        if n <= 0:
            break
        yield view[:n]
        offset += n


def digest_file(fd: int, algorithm: str, size: int, cancel: threading.Event, block: int = 4 * 1024 * 1024) -> bytes:
    """A second full read; used only for full-object checksums of files fetched in several ranges."""
    h = new_hasher(algorithm, size)
    for data in _blocks(fd, size, cancel, block):
        h.update(data)
    return h.digest()


def value_of(checksum: Checksum, fd: int, size: int, cancel: threading.Event, block: int = 4 * 1024 * 1024) -> str:
    """The value `checksum` would have over the file's bytes, as published (full-object or composite), read again."""
    hasher = RangeHasher(checksum.algorithm, 0, size - 1, checksum.part_size)
    for data in _blocks(fd, size, cancel, block):
        hasher.update(data)
    return composite_value(checksum, hasher.finish())


# Added to the error when a file fails twice: the way out for a store known to publish wrong values.
STORE_HINT = (
    " (the same check failed on a second fetch; if this store is known to publish wrong checksums, "
    "--verify etag (S3-compatible stores: size and ETag only) or --verify size checks less)"
)


@dataclass(frozen=True)
class Verdict:
    """How a file that did not match its first check was verified after all."""

    verified: str  # for the manifest: "size and md5 (composite of 3 parts)", "size only (...)"
    checksum: Checksum | None  # the check that vouches for the bytes; None: their size alone
    warning: str | None  # what the user must hear about the published values, or None


def settle(
    key: str,
    chosen: Checksum,
    actual: str,
    others: Sequence[Checksum],
    value_of: Callable[[Checksum], str],
    earlier: str | None,
) -> Verdict:
    """The bytes gave `actual`, not `chosen`'s value: decide whether they are wrong or the value is unreadable.

    Every other check the source published (`others`, most preferred first) is computed over the same bytes by
    `value_of` (a second read). If one matches, the bytes are verified by it; the user is warned when the first
    value was the store's declared one (the store published two values that cannot both be right). If none
    matches and any of the values was the store's own word (not only this program's reading of it), the bytes
    are wrong: IntegrityError, and the engine fetches the file again, then fails. If every value was only read
    one way or another by this program, a mismatch the first time is still taken as a bad fetch (IntegrityError,
    fetched again); when a second fetch gives the same `actual` (passed as `earlier`), the bytes are stable and
    the values are what cannot be interpreted: the file is verified by size, with a warning naming them.
    """
    for other in others:
        if value_of(other) != other.value:
            continue
        warning = None
        if chosen.declared:
            warning = (
                f"{key}: the {chosen.label} value {chosen.shown} published for it does not match its bytes, which "
                f"match its {other.label} value {other.shown}; the store's {chosen.algorithm} value is wrong; "
                f"verified with {other.label}"
            )
        elif (chosen.algorithm, chosen.value) != (other.algorithm, other.value):
            warning = (
                f"{key}: its {chosen.algorithm} value {chosen.shown} cannot be interpreted (the store does not say "
                f"how it was built and no reading of it matches); verified with {other.label}"
            )
        return Verdict(f"size and {other.label}", other, warning)
    if chosen.declared or any(c.declared for c in others) or earlier != actual:
        raise IntegrityError(key, chosen.label, chosen.shown, actual)
    names = ", ".join(dict.fromkeys(f"{c.algorithm} {c.shown}" for c in (chosen, *others)))
    return Verdict(
        f"size only (published {names} cannot be interpreted)",
        None,
        f"{key}: the published {names} cannot be interpreted: no reading of them matches, and a second fetch gave "
        "the same bytes; verified by size only",
    )
