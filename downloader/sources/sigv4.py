"""AWS Signature Version 4 for S3 requests without a body (GET, HEAD), in the header form.

What the S3 REST client (s3_rest.py) signs its requests with: the algorithm as AWS documents it ("Signature Version 4
signing process", "Authenticating Requests: Using the Authorization Header"), for the "s3" service. The path is
encoded once and never normalised (S3's rule); the payload hash is that of the empty body. Only `host` and the
`x-amz-*` headers are signed: a store checks what is signed, and unsigned headers (Range, If-Match) are allowed.
Checked against a server that verifies signatures (tests/test_signing.py) and against botocore's signer.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str
    token: str | None = None

    def __repr__(self) -> str:  # never the secret, wherever the object ends up
        return f"Credentials(access_key={self.access_key!r}, secret_key='***', token={'***' if self.token else None})"


def uri_encode(text: str, *, slash: bool) -> str:
    """AWS's URI encoding: every byte but A-Z a-z 0-9 - _ . ~ percent-encoded (and '/' kept when `slash`)."""
    return quote(text, safe="-_.~/" if slash else "-_.~")


def canonical_query(params: Sequence[tuple[str, str]]) -> str:
    return "&".join(f"{uri_encode(k, slash=False)}={uri_encode(v, slash=False)}" for k, v in sorted(params))


class Signer:
    """Signs requests for one region. Thread-safe; the derived signing key is kept for the day it is valid."""

    def __init__(self, region: str) -> None:
        self.region = region
        self._lock = threading.Lock()
        self._key: tuple[str, str, bytes] | None = None  # (secret, yyyymmdd, key)

    def _signing_key(self, secret: str, day: str) -> bytes:
        with self._lock:
            if self._key is not None and self._key[0] == secret and self._key[1] == day:
                return self._key[2]
        key = _hmac(("AWS4" + secret).encode(), day)
        for part in (self.region, SERVICE, "aws4_request"):
            key = _hmac(key, part)
        with self._lock:
            self._key = (secret, day, key)
        return key

    def sign(
        self,
        method: str,
        host: str,
        path: str,
        query: Sequence[tuple[str, str]],
        credentials: Credentials,
        headers: Mapping[str, str] | None = None,
        now: datetime | None = None,
    ) -> dict[str, str]:
        """The headers that authenticate `method` on `host` + `path` (already URI-encoded) with `query` and the
        request's other `headers` (its x-amz-* ones are signed: stores refuse them unsigned): x-amz-date,
        x-amz-content-sha256, x-amz-security-token (with a session token) and Authorization."""
        when = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
        day = when[:8]
        signed: dict[str, str] = {k.lower(): v for k, v in (headers or {}).items() if k.lower().startswith("x-amz-")}
        signed.update({"host": host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": when})
        if credentials.token:
            signed["x-amz-security-token"] = credentials.token
        names = sorted(signed)
        canonical = "\n".join(
            [
                method,
                path,
                canonical_query(query),
                "".join(f"{name}:{_trim(signed[name])}\n" for name in names),
                ";".join(names),
                EMPTY_SHA256,
            ]
        )
        scope = f"{day}/{self.region}/{SERVICE}/aws4_request"
        to_sign = f"{ALGORITHM}\n{when}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(credentials.secret_key, day), to_sign.encode(), hashlib.sha256)
        out = {k: v for k, v in signed.items() if k != "host"}
        out["authorization"] = (
            f"{ALGORITHM} Credential={credentials.access_key}/{scope}, SignedHeaders={';'.join(names)}, "
            f"Signature={signature.hexdigest()}"
        )
        return out


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _trim(value: str) -> str:
    return " ".join(value.split())
