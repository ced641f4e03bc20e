"""S3 and S3-compatible stores (tos://, MinIO, SeaweedFS, ...) through boto3.

boto3 is the control plane (credentials chain, listing, HEAD); ranged GETs go through a second client with
botocore's own retries off, because the engine retries per range and resumes a broken range where it
stopped. Every GET carries If-Match on the ETag seen at listing, and Content-Range is checked. A file that
is one range is asked for whole, without a Range header: S3-compatible stores (SeaweedFS among them) send
the object's checksum only then, and a CRC costs a fraction of the MD5 of the ETag.

The GETs themselves skip botocore's request pipeline (serializers, event hooks, endpoint rules, response
parsing: about 1 ms of CPU per request, most of the client's work on a model of many small files). Each is
signed by botocore's SigV4 signer with the client's own credentials and sent through the data client's own
HTTP session, so proxies, TLS settings, timeouts and the connection pool are exactly botocore's. The URL
layout (endpoint, addressing style, key encoding) and the signing region are read once from the request the
client prepares for a probe key, caught before it is sent. Any answer other than the expected ones sends that
request through the client
instead, which handles redirects and errors; if the client then succeeds, every later GET does too.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.client
import logging
import math
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import quote, urlsplit

import boto3
import botocore
import botocore.exceptions as bce
import botocore.session
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config

from ..config import S3Settings, VerifyMode
from ..errors import (
    AccessDeniedError,
    NotFoundError,
    ObjectChangedError,
    RetryableError,
    SourceError,
    TransferError,
)
from ..uri import ModelUri
from .base import Checksum, ObjectDetail, RangeReader, RemoteFile, Whole, Wholes, direct_body, parse_retry_after
from .s3_crt import CrtGet, CrtGetter, CrtResponse

# Cheapest first: a CRC costs a fraction of a cryptographic hash per byte.
_CHECKSUM_FIELDS = (
    ("ChecksumCRC32C", "crc32c"),
    ("ChecksumCRC64NVME", "crc64nvme"),
    ("ChecksumCRC32", "crc32"),
    ("ChecksumSHA256", "sha256"),
    ("ChecksumSHA1", "sha1"),
)
log = logging.getLogger(__name__)

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


def _decodes_to(value: str, length: int) -> bool:
    try:
        return len(base64.b64decode(value, validate=True)) == length
    except (ValueError, binascii.Error):
        return False


_THROTTLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "RequestThrottled",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
}


class S3Source:
    def __init__(
        self,
        uri: ModelUri,
        s3: S3Settings,
        *,
        connections: int,
        stall_timeout: float,
        max_attempts: int = 10,
        verify: VerifyMode = VerifyMode.STRICT,
    ) -> None:
        self.uri = uri
        self._verify = verify
        self._max_attempts = max_attempts
        self.bucket = uri.bucket
        self.display_uri = uri.display
        core = botocore.session.get_session()
        # Timestamps (LastModified of every listed object and every GET) are never used here; parsing them with
        # dateutil is most of botocore's CPU per listed object and a large share per small-file GET.
        core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
        session = boto3.session.Session(
            botocore_session=core,
            aws_access_key_id=s3.access_key.reveal() if s3.access_key else None,
            aws_secret_access_key=s3.secret_key.reveal() if s3.secret_key else None,
            aws_session_token=s3.session_token.reveal() if s3.session_token else None,
            region_name=s3.region or ("us-east-1" if s3.endpoint_url else None),
        )
        common: dict[str, Any] = {
            "s3": {"addressing_style": s3.addressing_style},
            # We verify checksums ourselves, part by part; botocore's whole-body validation cannot see ranges.
            "response_checksum_validation": "when_required",
            "request_checksum_calculation": "when_required",
            "tcp_keepalive": True,
            "user_agent_extra": "aibrix-download",
        }
        control = Config(
            # Listing and the lookups around it retry in botocore, --max-attempts attempts in all (the first one
            # included); the engine retries every request of the data client itself.
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=10,
            read_timeout=max(30.0, stall_timeout),
            max_pool_connections=8,
            **common,
        )
        data = Config(
            retries={"total_max_attempts": 1},  # the engine retries each range itself
            connect_timeout=min(10.0, stall_timeout),
            read_timeout=stall_timeout,  # a socket read idle this long = a stalled range
            max_pool_connections=connections + 4,
            **common,
        )
        try:
            self._control = session.client("s3", endpoint_url=s3.endpoint_url, config=control)
            self._data = session.client("s3", endpoint_url=s3.endpoint_url, config=data)
        except (bce.BotoCoreError, ValueError) as exc:
            raise SourceError(self.display_uri, f"cannot set up the S3 client: {exc}") from None
        self._part_size_cache: dict[tuple[str, str], int | None] = {}
        self._attribute_cache: dict[tuple[str, str], tuple[ChecksumType | None, int | None]] = {}
        self._lock = threading.Lock()
        self._direct = _DirectGet.create(self._data, session, self.bucket)
        self._crt: CrtGetter | None = None
        if s3.crt and self._direct is not None:
            self._crt = self._direct.crt_getter(s3.ca_bundle, connections=connections, stall_timeout=stall_timeout)

    # ---------------------------------------------------------------------------------------- listing
    def list(self, cancel: threading.Event) -> Iterator[RemoteFile]:
        prefix = self.uri.prefix
        dir_prefix = prefix.rstrip("/") + "/" if prefix else ""
        found = False
        paginator = self._control.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=dir_prefix):
                for obj in page.get("Contents", ()):
                    key = obj["Key"]
                    if key.endswith("/") and obj.get("Size", 0) == 0:
                        continue  # folder marker
                    found = True
                    yield RemoteFile(
                        key=key, rel_path=key[len(dir_prefix) :], size=int(obj["Size"]), version=obj["ETag"]
                    )
                if cancel.is_set():
                    return
        except bce.ClientError as exc:
            raise self._client_error(exc, None, "listing") from None
        except bce.NoCredentialsError:
            raise AccessDeniedError(self.display_uri, _NO_CREDENTIALS) from None
        except bce.BotoCoreError as exc:
            raise TransferError(
                self.display_uri, f"listing failed: {exc}", attempts=self._max_attempts, subject="prefix"
            ) from None
        if found or not prefix or prefix.endswith("/"):
            return
        # s3://bucket/path/file.json names a single object.
        try:
            head = self._control.head_object(Bucket=self.bucket, Key=prefix)
        except bce.ClientError as exc:
            if _status(exc) == 404:
                return
            raise self._client_error(exc, prefix, "HEAD") from None
        except bce.BotoCoreError as exc:
            raise TransferError(prefix, f"HEAD failed: {exc}", attempts=self._max_attempts) from None
        yield RemoteFile(
            key=prefix, rel_path=prefix.rsplit("/", 1)[-1], size=int(head["ContentLength"]), version=head["ETag"]
        )

    # ------------------------------------------------------------------------------------- integrity
    def describe(self, f: RemoteFile) -> ObjectDetail:
        try:
            # The data client (no retries of its own): the engine retries describe() and refresh(), and the two
            # would multiply each other's attempts.
            head = self._data.head_object(Bucket=self.bucket, Key=f.key, IfMatch=f.version, ChecksumMode="ENABLED")
        except bce.ClientError as exc:
            raise self._translate(exc, f.key, "HEAD") from None
        except bce.BotoCoreError as exc:
            raise RetryableError("connection", str(exc)) from None
        return self._detail(f, head)

    def _detail(self, f: RemoteFile, headers: Mapping[str, Any]) -> ObjectDetail:
        """The checksums an answer's headers publish, each read the way the store says it built it (see
        _additional); the ETag's MD5 last. A value this program cannot read is named in `uninterpreted`."""
        size = int(headers.get("ContentLength", f.size)) if "ContentRange" not in headers else f.size
        etag = str(headers.get("ETag", f.version))
        version_id = headers.get("VersionId")
        if version_id == "null":
            version_id = None
        m = _MD5_ETAG.match(etag)
        etag_parts = int(m.group(2)) if m and m.group(2) else None
        multipart = etag_parts is not None or (m is None and "-" in etag)
        # --verify etag and size leave the additional checksums out: no lookups are made for them either.
        published = [
            (algorithm, str(headers[field]))
            for field, algorithm in _CHECKSUM_FIELDS
            if headers.get(field) and self._verify is VerifyMode.STRICT
        ]
        wanted = self._verify is not VerifyMode.SIZE and (published or (m is not None and etag_parts is not None))
        facts = _Facts(size, multipart, etag_parts, self._part_size(f, etag_parts) if multipart and wanted else None)
        checksums: list[Checksum] = []
        notes: list[str] = []
        for algorithm, raw in published:
            read, note = self._additional(f, facts, algorithm, raw, headers.get("ChecksumType"))
            checksums += read
            notes += [note] if note else []
        reasons: list[str] = []
        encrypted = headers.get("ServerSideEncryption") == "aws:kms" or headers.get("SSECustomerAlgorithm")
        if self._verify is VerifyMode.SIZE:
            reasons.append("--verify size")
        elif m and not encrypted:
            if etag_parts is None:
                checksums.append(Checksum("md5", m.group(1).lower(), "hex"))
            elif facts.part_size and etag_parts == _parts_count(size, facts.part_size):
                # MD5 of the parts' MD5s is what S3 does, but S3 does not promise it ("not necessarily an MD5"),
                # and some stores build multipart ETags otherwise: a reading of ours, not the store's word.
                checksums.append(
                    Checksum("md5", m.group(1).lower(), "hex", facts.part_size, etag_parts, declared=False)
                )
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
        self, f: RemoteFile, facts: _Facts, algorithm: str, raw: str, checksum_type: str | None
    ) -> tuple[tuple[Checksum, ...], str | None]:
        """How to read one x-amz-checksum-<algorithm> value: as a full-object or a composite digest.

        The store says which with x-amz-checksum-type (AWS, SeaweedFS), or with a `-N` part count (a composite:
        AWS, MinIO, SeaweedFS), or in GetObjectAttributes (moto, which sends neither). A single-part object's
        value can only be a full-object one, and AWS builds CRC64NVME values of multipart objects only that way.
        A bare value on a multipart object that nothing explains is read both ways, as guesses. Returns the
        readings and, when the value cannot be read at all, a note naming it.
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
                kind, attribute_parts = self._attributes(f)
                count = count or attribute_parts
        declared = kind is not None
        full = Checksum(algorithm, value, "base64", declared=declared, additional=True)
        if kind is ChecksumType.FULL_OBJECT:
            return (full,), None
        parts = count or facts.etag_parts
        if parts is None and facts.part_size:
            parts = _parts_count(facts.size, facts.part_size)
        if facts.part_size and parts == _parts_count(facts.size, facts.part_size):
            composite = Checksum(algorithm, value, "base64", facts.part_size, parts, declared, additional=True)
            return ((composite,) if kind else (composite, full)), None
        if kind is None:
            return (full,), None  # a guess: the composite reading would need the part size
        return (), f"{name} is a composite of {parts or 'an unknown number of'} parts of a size not known here"

    def _attributes(self, f: RemoteFile) -> tuple[ChecksumType | None, int | None]:
        """(ChecksumType, parts) from GetObjectAttributes; (None, None) when the store does not answer it (not every
        S3-compatible store has it, and a role may lack s3:GetObjectAttributes): the value then stays a guess."""
        cache_key = (f.key, f.version)
        with self._lock:
            if cache_key in self._attribute_cache:
                return self._attribute_cache[cache_key]
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": f.key, "ObjectAttributes": ["Checksum", "ObjectParts"]}
        if f.version_id:
            kwargs["VersionId"] = f.version_id
        try:
            answer = self._control.get_object_attributes(**kwargs)
            kind = (answer.get("Checksum") or {}).get("ChecksumType")
            parts = (answer.get("ObjectParts") or {}).get("TotalPartsCount")
            found = (ChecksumType(str(kind).upper()) if kind else None, int(parts) if parts else None)
        except (bce.ClientError, bce.BotoCoreError, ValueError, TypeError):
            found = (None, None)
        with self._lock:
            self._attribute_cache[cache_key] = found
        return found

    def _part_size(self, f: RemoteFile, parts: int | None) -> int | None:
        """Size of part 1 from HEAD ?partNumber=1, when all parts but the last have that size."""
        cache_key = (f.key, f.version)
        with self._lock:
            if cache_key in self._part_size_cache:
                return self._part_size_cache[cache_key]
        part_size: int | None = None
        try:
            # No If-Match here: some S3-compatible servers compare it with the part's ETag. The version is
            # pinned on every GET anyway; a wrong part size only makes verification fail, never pass.
            head = self._control.head_object(Bucket=self.bucket, Key=f.key, PartNumber=1)
            size1 = int(head["ContentLength"])
            count = int(head.get("PartsCount") or parts or 0)
            if size1 > 0 and count and count == _parts_count(f.size, size1):
                part_size = size1
        except bce.ClientError as exc:
            if _status(exc) == 412:
                raise ObjectChangedError(f.key, "ETag changed") from None
        except bce.BotoCoreError:
            part_size = None
        with self._lock:
            self._part_size_cache[cache_key] = part_size
        return part_size

    def refresh(self, f: RemoteFile) -> RemoteFile | None:
        try:
            head = self._data.head_object(Bucket=self.bucket, Key=f.key)
        except bce.ClientError as exc:
            if _status(exc) == 404:
                return None
            raise self._translate(exc, f.key, "HEAD") from None
        except bce.BotoCoreError as exc:
            raise RetryableError("connection", str(exc)) from None
        return RemoteFile(key=f.key, rel_path=f.rel_path, size=int(head["ContentLength"]), version=head["ETag"])

    # ---------------------------------------------------------------------------------------- reading
    @property
    def native_whole(self) -> bool:
        return self._crt is not None

    def fetch_whole(self, items: Sequence[tuple[RemoteFile, memoryview]], halt: threading.Event) -> Wholes:
        """Small objects through the CRT's native client (see s3_crt), all in flight at once, each answer given as
        soon as it and those before it are in."""
        crt = self._crt
        early: dict[int, Whole] = {}
        started: dict[int, CrtGet] = {}
        for i, (f, buf) in enumerate(items):
            if crt is None or f.size > len(buf):
                early[i] = None
                continue
            query = "versionId=" + quote(f.version_id, safe="") if f.version_id else ""
            headers = {"If-Match": f.version, "x-amz-checksum-mode": "ENABLED"}
            try:
                started[i] = crt.start(quote(f.key, safe="/~"), query, headers, buf)
            except Exception as exc:  # awscrt's own error types; the ones already started are still awaited
                early[i] = RetryableError("connection", f"the CRT did not take the request: {exc}")
        try:
            for i, (f, _) in enumerate(items):
                get = started.pop(i, None)
                if get is None:
                    yield early[i]
                    continue
                assert crt is not None
                try:
                    outcome: Whole = self._whole(crt, f, crt.finish(get, halt))
                except RetryableError as exc:
                    outcome = self._whole(crt, f, None) if exc.kind == "tls" else exc
                except ObjectChangedError as exc:
                    outcome = exc
                yield outcome
        finally:
            # The caller stopped early (a failure, a halt): no buffer may be written once we return.
            for get in started.values():
                assert crt is not None
                crt.abandon(get)

    def _whole(self, crt: CrtGetter, f: RemoteFile, resp: CrtResponse | None) -> tuple[ObjectDetail, int] | None:
        """What a CRT GET's answer means; None (and no more CRT) for an answer botocore's path should handle.
        `resp` is None after a TLS failure: a TLS setup botocore's transport has and the CRT's has not."""
        status = resp.status if resp is not None else 0
        if resp is not None and status == 200:
            fields = _fields_from_headers(resp.headers)
            problem = _body_mismatch(fields, 0, f.size - 1, f.size)
            if problem is None and resp.length != f.size:
                problem = RetryableError("bad-length", f"{resp.length} bytes for {f.size}")
            if problem is not None:
                raise problem
            return self._detail(f, {**fields, "ContentLength": f.size}), resp.length
        if resp is not None:
            _raise_for_status(f.key, status, resp.headers.get("retry-after"))
        # Redirects, auth errors and anything else: botocore's path knows them all, and keeps every later GET.
        if self._crt is crt:
            self._crt = None
            log.info("the CRT's GET got %s; every GET goes through botocore's transport", status or "a TLS failure")
        return None

    def open_range(self, f: RemoteFile, detail: ObjectDetail | None, start: int, end: int) -> RangeReader:
        size = detail.size if detail else f.size
        whole = start == 0 and end == size - 1
        version = detail.version if detail else f.version
        version_id = detail.version_id if detail else None
        direct = self._direct
        if direct is not None:
            reader = self._open_direct(direct, f, detail, size, version, version_id, start, end)
            if reader is not None:
                return reader
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": f.key, "IfMatch": version}
        if version_id:
            kwargs["VersionId"] = version_id
        if whole:
            kwargs["ChecksumMode"] = "ENABLED"
        elif size > 0:
            kwargs["Range"] = f"bytes={start}-{end}"
        try:
            resp = self._data.get_object(**kwargs)
        except bce.ClientError as exc:
            raise self._translate(exc, f.key) from None
        except bce.NoCredentialsError:
            raise AccessDeniedError(self.display_uri, _NO_CREDENTIALS, key=f.key) from None
        except bce.BotoCoreError as exc:
            raise _connection_error(exc) from None
        if direct is not None and self._direct is direct:
            self._direct = None
            log.info("signed GETs were refused where the S3 client's succeeded; every GET goes through the client")
        body = resp["Body"]
        fields = {k: v for k, v in resp.items() if isinstance(v, str | int)}
        return self._reader(f, size, start, end, detail, fields, getattr(body, "_raw_stream", None), body)

    def _open_direct(
        self,
        direct: _DirectGet,
        f: RemoteFile,
        detail: ObjectDetail | None,
        size: int,
        version: str,
        version_id: str | None,
        start: int,
        end: int,
    ) -> RangeReader | None:
        """The GET on the direct path; None when its answer is one the client should handle instead."""
        whole = start == 0 and end == size - 1
        byte_range = None if whole or size == 0 else f"bytes={start}-{end}"
        try:
            raw = direct.get(f.key, version, version_id, byte_range, checksums=whole)
        except bce.BotoCoreError as exc:
            raise _connection_error(exc) from None
        if raw.status in (200, 206):
            fields = _fields_from_headers(raw.headers)
            return self._reader(f, size, start, end, detail, fields, raw, None)
        retry_after = raw.headers.get("retry-after")
        _discard(raw)
        _raise_for_status(f.key, raw.status, retry_after)
        return None  # redirects, auth and other errors: the client's path knows them all

    def _reader(
        self,
        f: RemoteFile,
        size: int,
        start: int,
        end: int,
        detail: ObjectDetail | None,
        fields: Mapping[str, Any],
        raw: Any,
        body: Any,
    ) -> RangeReader:
        reader = _S3RangeReader(start, end, None, raw, body)
        problem = _body_mismatch(fields, start, end, size)
        if problem is not None:
            reader.close()
            raise problem
        if start == 0 and end == size - 1 and detail is None:
            reader.detail = self._detail(f, {**fields, "ContentLength": size})
        return reader

    def close(self) -> None:
        if self._crt is not None:
            self._crt.close()
        for client in (self._control, self._data):
            with contextlib.suppress(Exception):
                client.close()

    # ---------------------------------------------------------------------------------------- errors
    def _translate(self, exc: bce.ClientError, key: str, what: str = "GET") -> Exception:
        status = _status(exc)
        code = exc.response.get("Error", {}).get("Code", "")
        if status == 412 or code == "PreconditionFailed":
            return ObjectChangedError(key, "ETag no longer matches (If-Match failed)")
        if status == 416 or code == "InvalidRange":
            return ObjectChangedError(key, "requested range is no longer valid")
        if status in (429, 500, 502, 503, 504) or code in _THROTTLE_CODES:
            kind = (
                "throttled"
                if status in (429, 503) or code in ("SlowDown", "Throttling", "TooManyRequests")
                else "server-error"
            )
            return RetryableError(kind, f"HTTP {status} {code}", retry_after=_retry_after(exc))
        return self._client_error(exc, key, what)

    def _client_error(self, exc: bce.ClientError, key: str | None, what: str) -> SourceError:
        status = _status(exc)
        code = exc.response.get("Error", {}).get("Code", "") or str(status)
        message = exc.response.get("Error", {}).get("Message", "")
        reason = f"{what}: {code}" + (f" ({message})" if message else "")
        if code == "NoSuchBucket":
            return NotFoundError(self.display_uri, f"bucket {self.bucket!r} does not exist")
        if status == 404 or code in ("NoSuchKey", "NotFound"):
            return NotFoundError(self.display_uri, reason, key=key)
        if status in (401, 403) or code in (
            "AccessDenied",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "ExpiredToken",
        ):
            return AccessDeniedError(self.display_uri, reason, key=key)
        if status in (429, 500, 502, 503, 504):
            return SourceError(self.display_uri, f"{reason}; still failing after retries", key=key)
        return SourceError(self.display_uri, reason, key=key)


_NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from a Secret, "
    "or give the pod a role (IRSA / pod identity / instance profile)"
)


class _S3RangeReader(RangeReader):
    """A response body: `raw` is urllib3's response; `body` botocore's wrapper of it, on the client's path."""

    def __init__(self, start: int, end: int, detail: ObjectDetail | None, raw: Any, body: Any) -> None:
        super().__init__(start, end, detail)
        self._raw = raw
        self._body = body if body is not None else raw
        self._fp = direct_body(raw)  # read under urllib3 straight into the engine's buffer (see direct_body)
        self._left = end - start + 1

    def readinto(self, buf: memoryview) -> int:
        if self._fp is None:
            return self._readinto_body(buf)
        try:
            n = self._fp.readinto(buf[: self._left]) if self._left > 0 else 0
        except TimeoutError as exc:
            raise RetryableError("stall", f"no bytes for the stall timeout ({exc})") from None
        except http.client.IncompleteRead as exc:
            raise RetryableError("truncated", f"IncompleteRead: {exc}") from None
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise RetryableError("reset", f"{type(exc).__name__}: {exc}") from None
        self._left -= n
        if self._left == 0:
            # The whole body is read: hand the keep-alive connection back to urllib3's pool.
            self._raw.release_conn()
        return n

    def _readinto_body(self, buf: memoryview) -> int:
        try:
            n: int = self._body.readinto(buf)
        except bce.ReadTimeoutError as exc:
            raise RetryableError("stall", f"no bytes for the stall timeout ({exc})") from None
        except bce.IncompleteReadError as exc:
            raise RetryableError("truncated", str(exc)) from None
        except (bce.BotoCoreError, OSError, ValueError) as exc:
            raise RetryableError("reset", f"{type(exc).__name__}: {exc}") from None
        except Exception as exc:  # urllib3's ProtocolError and friends, which botocore does not wrap
            if type(exc).__module__.startswith(("urllib3", "http.client")):
                raise RetryableError("reset", f"{type(exc).__name__}: {exc}") from None
            raise
        return n

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._body.close()


class _DirectGet:
    """GET requests signed with botocore's SigV4 signer and sent through the data client's HTTP session.

    Everything but the request pipeline is botocore's: credentials (refreshed as the client refreshes them),
    the signer, the transport. Built only when the request the client itself prepares for a probe key (caught
    just before it would be sent) shows a layout this class reproduces exactly: SigV4 for "s3", and the key
    percent-encoded at the end of the path. Otherwise every GET stays on the client's path.
    """

    _PROBE_KEY = "aibrix probe/a+b~c=d&e%f\u00e9"
    _CREDENTIAL = re.compile(r"^AWS4-HMAC-SHA256 Credential=[^/]+/\d{8}/([^/]+)/s3/aws4_request,")

    def __init__(self, http_session: Any, credentials: Any, region: str, base: str) -> None:
        self._http = http_session
        self._credentials = credentials
        self._region = region
        self._base = base  # scheme://host[:port]/[bucket/] : the key, percent-encoded, follows
        self._user_agent = f"aibrix-download Botocore/{botocore.__version__}"

    @classmethod
    def create(cls, client: Any, session: boto3.session.Session, bucket: str) -> _DirectGet | None:
        http_session = getattr(getattr(client, "_endpoint", None), "http_session", None)
        credentials = session.get_credentials()
        if credentials is None or not callable(getattr(http_session, "send", None)) or bucket.endswith("--x-s3"):
            return None  # no credentials (the client reports that), an unknown transport, or S3 Express
        url, authorization = _prepared_get(client, bucket, cls._PROBE_KEY)
        parts = urlsplit(url)
        encoded_key = quote(cls._PROBE_KEY, safe="/~")
        m = cls._CREDENTIAL.match(authorization)
        if m is None or parts.query or parts.fragment or not parts.path.endswith("/" + encoded_key):
            return None
        base = f"{parts.scheme}://{parts.netloc}{parts.path[: -len(encoded_key)]}"
        return cls(http_session, credentials, m.group(1), base)

    def crt_getter(self, ca_bundle: str | None, *, connections: int, stall_timeout: float) -> CrtGetter | None:
        """The CRT's client for the same URL layout, region and credentials (None without awscrt)."""

        def credentials() -> tuple[str, str, str | None]:
            frozen = self._credentials.get_frozen_credentials()
            return frozen.access_key, frozen.secret_key, frozen.token

        return CrtGetter.create(
            self._base,
            self._region,
            credentials,
            ca_bundle=ca_bundle,
            connections=connections,
            stall_timeout=stall_timeout,
        )

    def get(self, key: str, if_match: str, version_id: str | None, byte_range: str | None, *, checksums: bool) -> Any:
        """Send the GET; returns urllib3's response with its body unread (botocore exceptions on failure)."""
        url = self._base + quote(key, safe="/~")
        if version_id:
            url += "?versionId=" + quote(version_id, safe="")
        headers = {"If-Match": if_match, "User-Agent": self._user_agent}
        if byte_range:
            headers["Range"] = byte_range
        if checksums:
            headers["x-amz-checksum-mode"] = "ENABLED"
        request = AWSRequest(method="GET", url=url, headers=headers)
        S3SigV4Auth(self._credentials.get_frozen_credentials(), "s3", self._region).add_auth(request)
        prepared = request.prepare()
        prepared.stream_output = True
        return self._http.send(prepared).raw


class _Prepared(Exception):
    def __init__(self, url: str, authorization: str) -> None:
        self.url = url
        self.authorization = authorization


def _prepared_get(client: Any, bucket: str, key: str) -> tuple[str, str]:
    """URL and Authorization header of the GET the client would send for `key` (nothing is sent)."""

    def stop(request: Any, **_: Any) -> None:
        authorization = request.headers.get("Authorization", b"")
        if isinstance(authorization, bytes):
            authorization = authorization.decode("latin-1")
        raise _Prepared(str(request.url), str(authorization))

    event = "before-send.s3.GetObject"
    client.meta.events.register_first(event, stop)
    try:
        client.get_object(Bucket=bucket, Key=key)
    except _Prepared as prepared:
        return prepared.url, prepared.authorization
    except (bce.BotoCoreError, bce.ClientError, ValueError):
        pass
    finally:
        client.meta.events.unregister(event, stop)
    return "", ""


# Response headers of a GET, under the names botocore's parsed responses give them (what _detail reads).
_HEADER_FIELDS = {
    "content-length": "ContentLength",
    "content-range": "ContentRange",
    "etag": "ETag",
    "x-amz-version-id": "VersionId",
    "x-amz-server-side-encryption": "ServerSideEncryption",
    "x-amz-server-side-encryption-customer-algorithm": "SSECustomerAlgorithm",
    "x-amz-checksum-type": "ChecksumType",
    **{f"x-amz-checksum-{alg}": field for field, alg in _CHECKSUM_FIELDS},
}


def _fields_from_headers(headers: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in _HEADER_FIELDS.items():
        value = headers.get(name)
        if value is not None:
            out[field] = int(value) if field == "ContentLength" and value.isdigit() else value
    return out


def _raise_for_status(key: str, status: int, retry_after: str | None) -> None:
    """The error a GET's answer stands for when the engine handles it (the object changed, try again later)."""
    if status in (412, 416):
        what = "ETag no longer matches (If-Match failed)" if status == 412 else "requested range is no longer valid"
        raise ObjectChangedError(key, what)
    if status in (429, 500, 502, 503, 504):
        kind = "throttled" if status in (429, 503) else "server-error"
        raise RetryableError(kind, f"HTTP {status}", retry_after=parse_retry_after(retry_after))


def _body_mismatch(fields: Mapping[str, Any], start: int, end: int, size: int) -> RetryableError | None:
    """Why the answer to a GET of bytes [start, end] does not carry exactly those bytes; None when it does.

    A whole object is asked for without a Range (stores send its checksum only then): 200, and either no
    Content-Range or the full one. A range must come back as exactly that range.
    """
    expected = f"bytes {start}-{end}/{size}"
    whole = start == 0 and end == size - 1
    content_range = fields.get("ContentRange")
    if size > 0 and content_range != expected and not (whole and content_range is None):
        return RetryableError("bad-content-range", f"asked for {expected}, server sent {content_range!r}")
    if int(fields.get("ContentLength", -1)) != end - start + 1:
        return RetryableError("bad-length", f"Content-Length {fields.get('ContentLength')} for {end - start + 1} bytes")
    return None


def _discard(raw: Any) -> None:
    """Read a small error body to its end and give the connection back (or close it if that fails)."""
    try:
        raw.read(64 * 1024)
        raw.release_conn()
    except Exception:  # any failure here only costs the connection
        with contextlib.suppress(Exception):
            raw.close()


def _connection_error(exc: bce.BotoCoreError) -> RetryableError:
    if isinstance(exc, bce.ReadTimeoutError):
        return RetryableError("stall", f"no answer within the stall timeout ({exc})")
    if isinstance(exc, bce.ConnectTimeoutError):
        return RetryableError("timeout", str(exc))
    return RetryableError("connection", str(exc))


def _status(exc: bce.ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


def _retry_after(exc: bce.ClientError) -> float | None:
    headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}) or {}
    return parse_retry_after(headers.get("retry-after"))


def _parts_count(size: int, part_size: int) -> int:
    return max(1, math.ceil(size / part_size))
