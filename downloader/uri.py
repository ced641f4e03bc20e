"""Model URI parsing: pure functions, no I/O.

Accepted forms (the AIBrix set plus ours):
  s3://bucket/prefix[/]    tos://bucket/prefix[/]    gs://bucket/prefix[/]
  hf://org/name[@revision] or a bare org/name (AIBrix's Hugging Face form)
  file:///abs/path or /abs/path
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from .errors import UriError

OBJECT_STORE_SCHEMES = ("s3", "tos", "gs")

# S3's bucket rules are stricter, but S3-compatible stores differ; this only rejects what no store accepts.
_BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]$")
_HF_PART_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ModelUri:
    scheme: str  # "s3", "tos", "gs", "hf" or "file"
    bucket: str  # bucket, or "org/name" for hf, or "" for file
    prefix: str  # key prefix without leading slash; "" for the whole bucket. Local path for file.
    revision: str | None = None
    original: str = ""

    @property
    def default_model_name(self) -> str:
        """The directory name under --local-dir when --model-name is not given (AIBrix's rule)."""
        if self.scheme == "hf":
            return self.bucket  # org/name, as AIBrix lays Hugging Face models out
        tail = [p for p in self.prefix.split("/") if p]
        if tail:
            return tail[-1]
        return self.bucket

    @property
    def display(self) -> str:
        return redact_uri(self.original)


def parse_model_uri(uri: str) -> ModelUri:
    raw = uri.strip()
    shown = redact_uri(raw)  # every error shows this: a presigned signature in the input never reaches a log
    if not raw:
        raise UriError(uri, "is empty")
    if _CONTROL_RE.search(raw):
        raise UriError(shown, "contains a control character (newline, tab, NUL, ...)")
    if raw.startswith("/"):
        return ModelUri("file", "", raw, original=raw)
    if "://" not in raw:
        return _parse_bare_hf(raw, shown)
    try:
        parts = urlsplit(raw)
        has_userinfo = bool(parts.username or parts.password)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError as exc:
        raise UriError(shown, f"is not a valid URI ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UriError(shown, "file:// URIs must name a local absolute path (file:///path)")
        if not parts.path.startswith("/"):
            raise UriError(shown, "file:// URIs must name an absolute path")
        return ModelUri("file", "", parts.path, original=raw)
    if scheme == "hf":
        return _parse_bare_hf(raw[len("hf://") :], shown, original=raw)
    if scheme not in OBJECT_STORE_SCHEMES:
        raise UriError(
            shown, f"unsupported scheme {scheme!r}; expected s3://, tos://, gs://, hf://, file:// or org/name"
        )
    if has_userinfo:
        raise UriError(shown, "credentials do not belong in the URI; use the environment or a Secret")
    if parts.query or parts.fragment:
        raise UriError(shown, "query strings and fragments are not supported in object-store URIs")
    bucket = parts.netloc
    if not bucket:
        raise UriError(shown, "has no bucket name")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise UriError(shown, f"bucket name {bucket!r} is not valid")
    prefix = parts.path.lstrip("/")
    if any(seg in (".", "..") for seg in prefix.split("/")):
        raise UriError(shown, "prefix must not contain '.' or '..' segments")
    return ModelUri(scheme, bucket, prefix, original=raw)


def _parse_bare_hf(text: str, shown: str, original: str | None = None) -> ModelUri:
    repo, _, revision = text.partition("@")
    pieces = repo.strip("/").split("/")
    if len(pieces) != 2 or not all(_HF_PART_RE.match(p) for p in pieces) or ".." in repo:
        raise UriError(shown, "expected scheme://bucket/prefix, an absolute path, or a Hugging Face repo 'org/name'")
    return ModelUri("hf", "/".join(pieces), "", revision=revision or None, original=original or text)


def redact_uri(uri: str) -> str:
    """Strip user-info and query strings (presigned signatures) before a URI is shown anywhere."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable uri>"
    if not parts.scheme or not parts.netloc:
        return uri.split("?", 1)[0]
    host = parts.netloc.rpartition("@")[2]  # drop user-info; keep host[:port] exactly as written
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
