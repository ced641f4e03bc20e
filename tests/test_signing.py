"""The downloader's signatures, checked by a server that verifies them (moto accepts any).

SeaweedFS with a static identity (tests/seaweed.py) checks every request's SigV4 signature. Each way a request
leaves the downloader is covered: listing pages (boto3's client), ranged GETs of a large shard and whole GETs of
small files signed by hand with botocore's signer (`_DirectGet`), and whole GETs of small files signed by the AWS
CRT. With the right key each path downloads byte-exactly; with a wrong secret each path, on its own, fails with
the auth exit code and a message naming the problem, and neither secret appears in anything the run leaves.

A wrong secret fails the listing before any GET is sent. So that a GET is refused for the downloader's own
signature, a FaultProxy in front of SeaweedFS signs every request but the ones under test anew with the right
secret (`sign_anew_except`): those reach SeaweedFS exactly as the downloader signed them with the wrong secret.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from downloader import read_manifest, read_progress
from downloader.errors import AccessDeniedError
from tests.conftest import read_tree, run_cli
from tests.faultproxy import FaultProxy, RequestRecord
from tests.seaweed import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3
from tests.synthetic import MiB, random_bytes, upload
from tests.test_s3_crt import CRT_UA, DIRECT_UA
from tests.test_secrets import files_text

pytestmark = [pytest.mark.slow, pytest.mark.fast_paths]

WRONG_SECRET = "wrong/Secret+For=TheRightKey0123456789ab"
AUTH_EXIT = AccessDeniedError.exit_code  # 3 in the README's table: "the source refused ... access denied"
PREFIX = "m"
SHARD = "shards/model 00001+of=00001.safetensors"  # a key to encode: the signature covers the encoded path
# Small files with every character a key's encoding treats specially; fetched whole (the CRT's path).
ODD = [
    "a b.json",
    "plus+sign.json",
    "eq=amp&.json",
    "tilde~.json",
    "pct%41.json",
    "\u00e9-unicode.json",
    "semi;colon,comma.json",
    "paren(1)!'*.json",
    "at@dollar$.json",
    "q?mark.json",
    "hash#.json",
    "x[1]{2}.json",
]
PAGE = 1000  # SeaweedFS's listing page: more objects than this make the listing span pages
# Small ranges, so the 11 MiB shard comes in several ranged GETs (one per 5 MiB part: its checksum is per part).
RANGED = ["--part-threshold", "4MiB", "--part-chunksize", "1MiB", "--num-threads", "4"]


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def model(seaweed: SeaweedS3) -> tuple[str, dict[str, bytes]]:
    """A versioned bucket (ranged GETs carry ?versionId=, a signed query) holding a multipart shard, small files
    with odd names and enough others that the listing spans two pages."""
    bucket = f"signed-{uuid.uuid4().hex[:12]}"
    client = seaweed.client()
    client.create_bucket(Bucket=bucket)
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    files = {SHARD: random_bytes(11 * MiB, 1)}
    files.update({f"odd/{name}": random_bytes(3_000 + i, 10 + i) for i, name in enumerate(ODD)})
    files.update({f"small/{i:04d}.json": random_bytes(200 + i, 100 + i) for i in range(PAGE)})
    upload(client, bucket, PREFIX, {SHARD: files[SHARD]}, part_size=5 * MiB)
    small = sorted(k for k in files if k != SHARD)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda names: upload(client, bucket, PREFIX, {k: files[k] for k in names}), _chunks(small, 16)))
    return bucket, files


@pytest.fixture
def signed_proxy(seaweed: SeaweedS3) -> Iterator[FaultProxy]:
    with FaultProxy(seaweed.host, seaweed.port) as p:
        yield p


def _chunks(items: list[str], n: int) -> list[list[str]]:
    return [items[i::n] for i in range(n)]


# -------------------------------------------------------------------------------------------------- helpers
def download(proxy: FaultProxy, bucket: str, local: Path, secret: str, *extra: str, key: str = ACCESS_KEY) -> Any:
    args = ["--model-uri", f"s3://{bucket}/{PREFIX}/", "--local-dir", str(local), *RANGED, *extra]
    return run_cli(args, proxy.url, AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, AWS_REGION=REGION)


_CREDENTIAL = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^/]+)/\d{8}/([^/]+)/([^/]+)/aws4_request,")


def record_credential_scopes(
    scopes: list[tuple[str, ...]],
) -> Callable[[str, str, list[tuple[str, str]]], list[tuple[str, str]]]:
    """A FaultProxy.rewrite_headers that changes nothing and appends each request's (key id, region, service)
    to `scopes`, () for a request not signed with SigV4. SeaweedFS ignores the region a signature names; AWS
    refuses a request signed for another region than the bucket's."""

    def record(_method: str, _path: str, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        authorization = next((v for k, v in headers if k.lower() == "authorization"), "")
        m = _CREDENTIAL.match(authorization)
        scopes.append(m.groups() if m else ())
        return headers

    return record


def sign_anew_except(
    verbatim: Callable[[str, str], bool],
) -> Callable[[str, str, list[tuple[str, str]]], list[tuple[str, str]]]:
    """A FaultProxy.rewrite_headers: requests `verbatim(method, path)` selects go on as the downloader signed them;
    every other one is signed anew with the identity's right secret, as a downloader with that key would have."""
    credentials = Credentials(ACCESS_KEY, SECRET_KEY)

    def rewrite(method: str, path: str, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if verbatim(method, path):
            return headers
        unsigned = {k: v for k, v in headers if k.lower() not in ("authorization", "x-amz-date")}
        host = next(v for k, v in headers if k.lower() == "host")
        request = AWSRequest(method=method, url=f"http://{host}{path}", headers=unsigned)
        S3SigV4Auth(credentials, "s3", REGION).add_auth(request)
        return list(request.headers.items())

    return rewrite


def is_listing(bucket: str, path: str) -> bool:
    return path.startswith(f"/{bucket}?") and "list-type=2" in path


def is_later_page(bucket: str, path: str) -> bool:
    return is_listing(bucket, path) and "continuation-token=" in path


def is_object_get(bucket: str, method: str, path: str) -> bool:
    return method == "GET" and path.startswith(f"/{bucket}/{PREFIX}/")


def gets_of(proxy: FaultProxy, bucket: str, rel: str) -> list[RequestRecord]:
    path = f"/{bucket}/{PREFIX}/{quote(rel, safe='/~')}"
    return [r for r in proxy.log if r.method == "GET" and r.path.split("?")[0] == path]


def assert_no_secret(result: Any, local: Path) -> None:
    """Neither secret, nor its URL-encoded form, in stdout, stderr or any file the run left (progress.json...)."""
    seen = result.stdout + result.stderr + files_text(local)
    for secret in (SECRET_KEY, WRONG_SECRET):
        assert secret not in seen and quote(secret, safe="") not in seen


def assert_refused(result: Any, local: Path, reason: str, *, listed: bool) -> None:
    """The auth exit code, one clear line naming the request and the server's reason, no traceback, no secret, no
    model. A failed listing leaves nothing behind; a failed GET leaves progress.json, which says why."""
    assert result.returncode == AUTH_EXIT, result.stderr
    assert reason in result.stderr and "Traceback" not in result.stderr, result.stderr
    model_dir = local / PREFIX
    if listed:
        progress = read_progress(str(model_dir))
        assert progress is not None and progress.phase == "failed" and reason in (progress.last_error or ""), progress
        assert read_manifest(str(model_dir)) is None
    else:
        assert not model_dir.exists()
    assert_no_secret(result, local)


# ---------------------------------------------------------------------------------------------- right key
@pytest.mark.parametrize("crt, small_ua", [("--s3-crt", CRT_UA), ("--no-s3-crt", DIRECT_UA)], ids=["crt", "no-crt"])
def test_the_right_key_downloads_through_every_signed_path(
    signed_proxy: FaultProxy, model: tuple[str, dict[str, bytes]], tmp_path: Path, crt: str, small_ua: str
) -> None:
    bucket, files = model
    scopes: list[tuple[str, ...]] = []
    signed_proxy.rewrite_headers = record_credential_scopes(scopes)
    r = download(signed_proxy, bucket, tmp_path, SECRET_KEY, crt)
    assert r.returncode == 0, r.stderr
    assert read_tree(str(tmp_path / PREFIX)) == files
    log = signed_proxy.log
    # every request signed with SigV4, by the identity's key, for the region given
    assert len(scopes) == len(log)
    assert set(scopes) == {(ACCESS_KEY, REGION, "s3")}
    # SeaweedFS accepted every signature the downloader made, all with the identity's key
    assert all(rec.status in (200, 206) and rec.access_key == ACCESS_KEY for rec in log), [
        rec for rec in log if rec.status not in (200, 206)
    ]
    pages = [rec for rec in log if is_listing(bucket, rec.path)]
    assert len(pages) == 2 and is_later_page(bucket, pages[1].path), pages
    shard = gets_of(signed_proxy, bucket, SHARD)
    assert len(shard) >= 2, shard  # several ranged GETs, each on the hand-signed path, with a signed query
    assert all(g.user_agent.startswith(DIRECT_UA) and g.range and "versionId=" in g.path for g in shard), shard
    for rel in files:
        if rel != SHARD:
            gets = gets_of(signed_proxy, bucket, rel)
            assert len(gets) == 1 and gets[0].user_agent.startswith(small_ua) and gets[0].range is None, (rel, gets)
    assert_no_secret(r, tmp_path)


# ---------------------------------------------------------------------------------------------- wrong key
@pytest.mark.parametrize(
    "key, secret, reason",
    [
        (ACCESS_KEY, WRONG_SECRET, "listing: SignatureDoesNotMatch"),
        ("AKIDNOSUCHKEY0000000", SECRET_KEY, "listing: InvalidAccessKeyId"),
    ],
    ids=["wrong-secret", "unknown-key-id"],
)
def test_a_wrong_key_fails_at_the_listing(
    signed_proxy: FaultProxy, model: tuple[str, dict[str, bytes]], tmp_path: Path, key: str, secret: str, reason: str
) -> None:
    bucket, _ = model
    r = download(signed_proxy, bucket, tmp_path, secret, "--log-level", "debug", key=key)
    assert_refused(r, tmp_path, reason, listed=False)
    assert [(rec.status, is_listing(bucket, rec.path)) for rec in signed_proxy.log] == [(403, True)]


def test_a_wrong_secret_fails_on_a_later_listing_page(
    signed_proxy: FaultProxy, model: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    bucket, _ = model
    signed_proxy.rewrite_headers = sign_anew_except(lambda _method, path: is_later_page(bucket, path))
    r = download(signed_proxy, bucket, tmp_path, WRONG_SECRET, "--log-level", "debug")
    assert_refused(r, tmp_path, "listing: SignatureDoesNotMatch", listed=False)
    pages = [(rec.status, is_later_page(bucket, rec.path)) for rec in signed_proxy.log]
    assert pages == [(200, False), (403, True)]  # the first page signed anew went through; nothing was fetched


def _ranged(rec: RequestRecord) -> bool:
    return rec.user_agent.startswith(DIRECT_UA) and rec.range is not None


def _crt(rec: RequestRecord) -> bool:
    return rec.user_agent.startswith(CRT_UA) and rec.range is None


def _direct_whole(rec: RequestRecord) -> bool:
    return rec.user_agent.startswith(DIRECT_UA) and rec.range is None


def _head(rec: RequestRecord) -> bool:
    return rec.method == "HEAD"


def is_head(_bucket: str, method: str, _path: str) -> bool:
    return method == "HEAD"


@pytest.mark.parametrize(
    "files, crt, verbatim, path_under_test, reason",
    [
        ("shards/*", "--s3-crt", is_object_get, _ranged, "GET: SignatureDoesNotMatch"),
        ("odd/*", "--s3-crt", is_object_get, _crt, "GET: SignatureDoesNotMatch"),
        ("odd/*", "--no-s3-crt", is_object_get, _direct_whole, "GET: SignatureDoesNotMatch"),
        ("shards/*", "--s3-crt", is_head, _head, "HEAD: 403"),  # no body, so no reason: S3 answers a HEAD so too
    ],
    ids=["ranged-gets", "crt-whole-gets", "botocore-signed-whole-gets", "heads-of-a-large-file"],
)
def test_a_wrong_secret_fails_after_the_listing(
    signed_proxy: FaultProxy,
    model: tuple[str, dict[str, bytes]],
    tmp_path: Path,
    files: str,
    crt: str,
    verbatim: Callable[[str, str, str], bool],
    path_under_test: Callable[[RequestRecord], bool],
    reason: str,
) -> None:
    """The requests `verbatim` selects as the downloader signed them with the wrong secret, every other one (the
    listing first) signed anew with the right one: the path under test is the one refused."""
    bucket, _ = model
    signed_proxy.rewrite_headers = sign_anew_except(lambda method, path: verbatim(bucket, method, path))
    r = download(signed_proxy, bucket, tmp_path, WRONG_SECRET, "--include", files, crt, "--log-level", "debug")
    assert_refused(r, tmp_path, reason, listed=True)
    log = signed_proxy.log
    signed_anew = [rec for rec in log if not verbatim(bucket, rec.method, rec.path)]
    as_sent = [rec for rec in log if verbatim(bucket, rec.method, rec.path)]
    assert len([rec for rec in signed_anew if is_listing(bucket, rec.path)]) == 2
    assert all(rec.status in (200, 206) for rec in signed_anew), signed_anew  # SeaweedFS took them
    assert any(path_under_test(rec) for rec in as_sent), as_sent  # the path under test sent its requests...
    assert as_sent and all(rec.status == 403 for rec in as_sent), as_sent  # ...and SeaweedFS refused every one
