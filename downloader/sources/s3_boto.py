"""S3 through boto3's client, by its public API: the transport for everything the REST client does not speak.

Used when fast paths are off (--fast-paths off), through a proxy, for S3 Express buckets, and for what only botocore
knows: its credential chain (profiles, web identity, container and instance credentials) and the region of the
shared config file. Imported only then: botocore costs about 0.3 s of CPU to import and to build a client.
botocore's own retries are off; the backend retries every request itself (--max-attempts in all).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import boto3
import botocore.exceptions as bce
import botocore.session
from botocore.config import Config

from ..errors import RetryableError
from .base import Body
from .s3_transport import Answer, ListPage, S3Error
from .sigv4 import Credentials

log = logging.getLogger(__name__)

# The raw request parts the backend speaks in, as boto3's parameters.
_QUERY_PARAMS = {"versionId": "VersionId", "partNumber": "PartNumber"}
_HEADER_PARAMS = {"if-match": "IfMatch", "range": "Range", "x-amz-checksum-mode": "ChecksumMode"}


def botocore_session(region: str | None) -> Any:
    """A botocore session with the default credential chain and config files."""
    session = botocore.session.get_session()
    if region:
        session.set_config_variable("region", region)
    return session


def chain_credentials(session: Any) -> Callable[[], Credentials] | None:
    """The default credential chain's credentials (refreshed as botocore refreshes them); None when it finds none."""
    found = session.get_credentials()
    if found is None:
        return None

    def current() -> Credentials:
        frozen = found.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    return current


def configured_region(session: Any) -> str | None:
    region = session.get_config_variable("region")
    return str(region) if region else None


class BotoTransport:
    name = "boto3"

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None,
        region: str | None,
        credentials: Credentials | None,
        addressing_style: str,
        connections: int,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self.bucket = bucket
        session = boto3.session.Session(
            aws_access_key_id=credentials.access_key if credentials else None,
            aws_secret_access_key=credentials.secret_key if credentials else None,
            aws_session_token=credentials.token if credentials else None,
            region_name=region,
        )
        config = Config(
            s3={"addressing_style": addressing_style},
            # Checksums are verified by the engine, range by range; botocore's whole-body validation cannot see ranges.
            response_checksum_validation="when_required",
            request_checksum_calculation="when_required",
            retries={"total_max_attempts": 1},  # the backend retries every request itself
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,  # a socket read idle this long = a stalled request
            max_pool_connections=connections + 4,
            tcp_keepalive=True,
            user_agent_extra="aibrix-download",
        )
        try:
            self._client = session.client("s3", endpoint_url=endpoint_url, config=config)
        except (bce.BotoCoreError, ValueError) as exc:
            raise S3Error(0, "ClientSetup", f"cannot set up the S3 client: {exc}") from exc

    def list_page(self, prefix: str, token: str | None) -> ListPage:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if token:
            kwargs["ContinuationToken"] = token
        page = self._call(lambda: self._client.list_objects_v2(**kwargs))
        objects = [(o["Key"], int(o.get("Size", 0)), str(o.get("ETag", ""))) for o in page.get("Contents", ())]
        return ListPage(objects, page.get("NextContinuationToken") if page.get("IsTruncated") else None)

    def head(self, key: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str]) -> Answer:
        response = self._call(lambda: self._client.head_object(**self._params(key, query, headers)))
        return Answer(_status(response), _headers(response))

    def get(self, key: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str]) -> Answer:
        response = self._call(lambda: self._client.get_object(**self._params(key, query, headers)))
        return Answer(_status(response), _headers(response), _BotoBody(response["Body"]))

    def attributes(self, key: str, version_id: str | None) -> tuple[str | None, int | None]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "ObjectAttributes": ["Checksum", "ObjectParts"]}
        if version_id:
            kwargs["VersionId"] = version_id
        answer = self._call(lambda: self._client.get_object_attributes(**kwargs))
        kind = (answer.get("Checksum") or {}).get("ChecksumType")
        parts = (answer.get("ObjectParts") or {}).get("TotalPartsCount")
        return (str(kind) if kind else None), (int(parts) if parts else None)

    def close(self) -> None:
        self._client.close()

    def _params(self, key: str, query: Sequence[tuple[str, str]], headers: Mapping[str, str]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        for name, value in query:
            kwargs[_QUERY_PARAMS[name]] = int(value) if name == "partNumber" else value
        for name, value in headers.items():
            kwargs[_HEADER_PARAMS[name.lower()]] = value
        return kwargs

    def _call(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except bce.ClientError as exc:
            meta = exc.response.get("ResponseMetadata", {})
            error = exc.response.get("Error", {})
            raise S3Error(
                int(meta.get("HTTPStatusCode", 0) or 0),
                str(error.get("Code", "")),
                str(error.get("Message", "")),
                meta.get("HTTPHeaders") or {},
            ) from exc
        except bce.NoCredentialsError as exc:
            raise S3Error(0, "NoCredentials", "no AWS credentials found") from exc
        except bce.ReadTimeoutError as exc:
            raise RetryableError("stall", f"no answer within the stall timeout ({exc})") from exc
        except bce.ConnectTimeoutError as exc:
            raise RetryableError("timeout", str(exc)) from exc
        except bce.BotoCoreError as exc:
            raise RetryableError("connection", str(exc)) from exc


def _status(response: Mapping[str, Any]) -> int:
    return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 200))


def _headers(response: Mapping[str, Any]) -> dict[str, str]:
    raw = response.get("ResponseMetadata", {}).get("HTTPHeaders") or {}
    return {str(k).lower(): str(v) for k, v in raw.items()}


class _BotoBody(Body):
    """botocore's StreamingBody, read into the caller's buffer (its readinto)."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readinto(self, buf: memoryview) -> int:
        try:
            n: int = self._body.readinto(buf)
        except bce.ReadTimeoutError as exc:
            raise RetryableError("stall", f"no bytes for the stall timeout ({exc})") from exc
        except bce.IncompleteReadError as exc:
            raise RetryableError("truncated", str(exc)) from exc
        except (bce.BotoCoreError, OSError, ValueError) as exc:
            raise RetryableError("reset", f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # urllib3's ProtocolError and friends, which botocore does not wrap
            if type(exc).__module__.startswith(("urllib3", "http.client")):
                raise RetryableError("reset", f"{type(exc).__name__}: {exc}") from exc
            raise
        return n

    def close(self) -> None:
        try:
            self._body.close()
        except Exception as exc:  # closing a broken stream: nothing left to do with it
            log.debug("closing a response body: %s", exc)
