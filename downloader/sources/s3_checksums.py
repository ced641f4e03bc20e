"""What an S3 answer's headers say about the object's integrity: each checksum read the way the store built it.

S3-compatible stores publish checksums in several forms (docs/verification.md): a full-object digest, or a composite
(the digest of the parts' digests) with or without a `-N` part count, labelled by x-amz-checksum-type or not; and
the ETag, the MD5 of the object or of its parts' MD5s. This module reads them from the raw headers of a HEAD or a
whole-object GET, asking the store for what the headers leave open (the part size, GetObjectAttributes) through
the lookups it is given. A value it cannot read is named, never trusted.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

from ..config import VerifyMode
from .base import Checksum, ObjectDetail, RemoteFile

# Cheapest first: a CRC costs a fraction of a cryptographic hash per byte.
ALGORITHMS = ("crc32c", "crc64nvme", "crc32", "sha256", "sha1")
_MD5_ETAG = re.compile(r'^"?([0-9a-fA-F]{32})(?:-(\d+))?"?$')
_DIGEST_BYTES = {"crc32c": 4, "crc64nvme": 8, "crc32": 4, "sha256": 32, "sha1": 20}
_FULL_OBJECT_ONLY = frozenset({"crc64nvme"})  # S3 builds CRC64NVME values of multipart objects only whole


class ChecksumType(str, Enum):
    """S3's x-amz-checksum-type (and GetObjectAttributes' ChecksumType): how a multipart object's value is built."""

    FULL_OBJECT = "FULL_OBJECT"  # the digest of the whole object, whatever its parts
    COMPOSITE = "COMPOSITE"  # the digest of the parts' digests


@dataclass(frozen=True)
class _Facts:
    """What reading an object's checksums needs: its size, whether it is multipart, its parts as the ETag counts
    them, and the size of its parts (all equal but the last) when known."""

    size: int
    multipart: bool
    etag_parts: int | None
    part_size: int | None


@dataclass(frozen=True)
class Lookups:
    """What the reader may ask the store: the size of part 1 (None when unknown), and GetObjectAttributes'
    (ChecksumType, TotalPartsCount) (None, None when the store does not answer it)."""

    part_size: Callable[[RemoteFile, int | None], int | None]
    attributes: Callable[[RemoteFile], tuple[ChecksumType | None, int | None]]


def parts_count(size: int, part_size: int) -> int:
    return max(1, math.ceil(size / part_size))


def _decodes_to(value: str, length: int) -> bool:
    try:
        return len(base64.b64decode(value, validate=True)) == length
    except (ValueError, binascii.Error):
        return False


def object_size(headers: Mapping[str, str], listed: int) -> int:
    """The object's size from a HEAD or whole GET (a ranged answer gives it after the slash of Content-Range)."""
    content_range = headers.get("content-range")
    if content_range and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        return int(total) if total.isdigit() else listed
    length = headers.get("content-length")
    return int(length) if length is not None and length.isdigit() else listed


def read_detail(f: RemoteFile, headers: Mapping[str, str], verify: VerifyMode, lookups: Lookups) -> ObjectDetail:
    """The checksums an answer's headers publish, each read the way the store says it built it (see _additional);
    the ETag's MD5 last. A value this program cannot read is named in `uninterpreted`."""
    size = object_size(headers, f.size)
    etag = headers.get("etag", f.version)
    version_id = headers.get("x-amz-version-id")
    if version_id == "null":
        version_id = None
    m = _MD5_ETAG.match(etag)
    etag_parts = int(m.group(2)) if m and m.group(2) else None
    multipart = etag_parts is not None or (m is None and "-" in etag)
    # --verify etag and size leave the additional checksums out: no lookups are made for them either.
    published = [
        (algorithm, headers[f"x-amz-checksum-{algorithm}"])
        for algorithm in ALGORITHMS
        if headers.get(f"x-amz-checksum-{algorithm}") and verify is VerifyMode.STRICT
    ]
    wanted = verify is not VerifyMode.SIZE and (published or (m is not None and etag_parts is not None))
    facts = _Facts(size, multipart, etag_parts, lookups.part_size(f, etag_parts) if multipart and wanted else None)
    checksums: list[Checksum] = []
    notes: list[str] = []
    for algorithm, raw in published:
        read, note = _additional(f, facts, algorithm, raw, headers.get("x-amz-checksum-type"), lookups)
        checksums += read
        notes += [note] if note else []
    reasons: list[str] = []
    encrypted = headers.get("x-amz-server-side-encryption") == "aws:kms" or headers.get(
        "x-amz-server-side-encryption-customer-algorithm"
    )
    if verify is VerifyMode.SIZE:
        reasons.append("--verify size")
    elif m and not encrypted:
        if etag_parts is None:
            checksums.append(Checksum("md5", m.group(1).lower(), "hex"))
        elif facts.part_size and etag_parts == parts_count(size, facts.part_size):
            # MD5 of the parts' MD5s is what S3 does, but S3 does not promise it ("not necessarily an MD5"), and
            # some stores build multipart ETags otherwise: a reading of ours, not the store's word.
            checksums.append(Checksum("md5", m.group(1).lower(), "hex", facts.part_size, etag_parts, declared=False))
        else:
            reasons.append("multipart ETag with unknown or uneven part size")
    elif encrypted:
        reasons.append("ETag of an SSE-KMS/SSE-C object is not an MD5")
    else:
        reasons.append("ETag is not an MD5")
    # The store's own readings first (cheapest first among them), then this program's guesses.
    checksums.sort(key=lambda c: not c.declared)
    return ObjectDetail(
        size=size,
        version=etag,
        version_id=version_id,
        checksums=tuple(checksums),
        unverifiable=None if checksums else "; ".join(reasons + notes) or "no checksum published",
        uninterpreted=tuple(notes),
    )


def _additional(
    f: RemoteFile, facts: _Facts, algorithm: str, raw: str, checksum_type: str | None, lookups: Lookups
) -> tuple[tuple[Checksum, ...], str | None]:
    """How to read one x-amz-checksum-<algorithm> value: as a full-object or a composite digest.

    The store says which with x-amz-checksum-type (AWS, SeaweedFS), or with a `-N` part count (a composite: AWS,
    MinIO, SeaweedFS), or in GetObjectAttributes (moto, which sends neither). A single-part object's value can only
    be a full-object one, and AWS builds CRC64NVME values of multipart objects only that way. A bare value on a
    multipart object that nothing explains is read both ways, as guesses. Returns the readings and, when the value
    cannot be read at all, a note naming it.
    """
    name = f"x-amz-checksum-{algorithm} value {raw!r}"
    value, dash, suffix = raw.partition("-")  # base64 has no '-': the one in a value is S3's part count
    count = int(suffix) if suffix.isdigit() and int(suffix) > 0 else None
    if dash and count is None:
        return (), f"{name} is not a digest with a part count"
    if not _decodes_to(value, _DIGEST_BYTES[algorithm]):
        return (), f"{name} is not a {_DIGEST_BYTES[algorithm] * 8}-bit {algorithm} digest"
    try:
        kind = ChecksumType(checksum_type.upper()) if checksum_type else None
    except ValueError:
        return (), f"{name} has checksum type {checksum_type!r}, which this program does not know"
    if kind is None:
        if count is not None:
            kind = ChecksumType.COMPOSITE
        elif not facts.multipart or algorithm in _FULL_OBJECT_ONLY:
            kind = ChecksumType.FULL_OBJECT
        else:
            kind, attribute_parts = lookups.attributes(f)
            count = count or attribute_parts
    declared = kind is not None
    full = Checksum(algorithm, value, "base64", declared=declared, additional=True)
    if kind is ChecksumType.FULL_OBJECT:
        return (full,), None
    parts = count or facts.etag_parts
    if parts is None and facts.part_size:
        parts = parts_count(facts.size, facts.part_size)
    if facts.part_size and parts == parts_count(facts.size, facts.part_size):
        composite = Checksum(algorithm, value, "base64", facts.part_size, parts, declared, additional=True)
        return ((composite,) if kind else (composite, full)), None
    if kind is None:
        return (full,), None  # a guess: the composite reading would need the part size
    return (), f"{name} is a composite of {parts or 'an unknown number of'} parts of a size not known here"
