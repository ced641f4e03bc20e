"""Seeded, repeatable fault campaigns against the real CLI and the real local servers.

Every trial publishes a fresh random model on one source (moto's S3 server, fake-gcs-server, or a local fake
Hugging Face hub), puts a FaultProxy in front of it with a random mix of faults drawn from a seed, runs the real
`aibrix-download` in a child process, and classifies what it left behind:

  OK              exit 0, a manifest, and every byte identical to what the source holds
  CLEAN-FAIL      a documented non-zero exit (3-7), one clear ERROR line, no traceback, no manifest
  BAD             a manifest over wrong or missing bytes, a manifest after a failure, or a corrupt file under its
                  final name: the one outcome that must never happen
  UNCLEAR         a failure without a clear error (exit 1, a traceback, an undocumented exit code)
  HANG            the process did not finish within the trial's timeout
  LEFTOVERS       success, but temp files or journals were left behind
  UNEXPECTED-FAIL a clean failure although every injected fault was transient (the retries should have won)

A trial is a pure function of (campaign seed, trial index): `python -m tests.reliability trials --seed 1
--only 17 -v` replays trial 17 of seed 1 and prints its plan and the downloader's stderr.

The same module runs the crash-consistency campaign (kill -9 at random moments, resuming each time), the
disk-full scenario on a small tmpfs, and N processes downloading one model into one directory at once.
`python -m tests.reliability all` runs everything (the long campaign); tests/test_reliability.py runs a fast
subset of the same code in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from downloader import read_manifest, read_progress
from tests.conftest import cli_env, read_tree
from tests.fakehub import FakeHub
from tests.faultproxy import (
    Action,
    Callback,
    Delay,
    FaultProxy,
    FlipBit,
    RequestRecord,
    Reset,
    RewriteHeader,
    Rule,
    Stall,
    Status,
    Throttle,
    Truncate,
)
from tests.gcs_server import FakeGcs
from tests.gcs_server import upload as gcs_upload
from tests.synthetic import MiB, random_bytes
from tests.synthetic import upload as s3_upload

SOURCES = ("s3", "gcs", "hf")
# The primary fault of trial i is KINDS[(i // 3) % len(KINDS)] on source SOURCES[i % 3], so any 24 consecutive
# trials cover every (source, fault kind) pair once.
KINDS = ("reset", "stall", "status", "truncate", "content-range", "flipbit", "replace", "listing")
OUTCOMES = ("OK", "CLEAN-FAIL", "BAD", "UNCLEAR", "HANG", "LEFTOVERS", "UNEXPECTED-FAIL")
PASSING = ("OK", "CLEAN-FAIL")
CLEAN_EXIT_CODES = (3, 4, 5, 6, 7)  # README: source, transfer, integrity, local storage, unsafe key

HF_TOKEN = "hf_RELIABILITYtoken_4Kq9Zx"
RANGE = 1 * MiB
MAX_ATTEMPTS = 6
STALL_TIMEOUT = 1.5
LISTING_PAGE = 2  # objects per listing page, so every model's listing spans several pages
# More transient faults than this on data requests could exhaust one range's attempts, so a trial is only
# expected to succeed with at most this many.
TRANSIENT_BUDGET = MAX_ATTEMPTS - 2
TRIAL_TIMEOUT = 180.0
UNUSED_S3 = "http://127.0.0.1:9"  # cli_env sets AWS_ENDPOINT_URL; gs:// and hf:// ignore it


# ============================================================================================== plans
@dataclass
class FileSpec:
    path: str
    size: int
    seed: int
    large: bool  # fetched in ranges (and, on the Hub, an LFS file served by the CDN)


@dataclass
class FaultSpec:
    """One rule, described by plain data so a plan can be printed, stored as JSON and replayed."""

    kind: str
    target: str  # "large": ranged object bodies; "small": small files; "listing": listing pages
    times: int
    skip: int
    file: str | None = None  # restrict to one file's requests
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrialPlan:
    seed: int
    index: int
    source: str
    primary: str
    files: list[FileSpec]
    multipart: bool
    small_files: bool  # a model made only of files fetched whole (S3's CRT path, several GETs per worker)
    num_threads: int
    faults: list[FaultSpec]
    persistent: bool
    expect_ok: bool

    @property
    def model_bytes(self) -> int:
        return sum(f.size for f in self.files)


def plan_trial(seed: int, index: int) -> TrialPlan:
    rng = random.Random(f"reliability:{seed}:{index}")
    source = SOURCES[index % len(SOURCES)]
    primary = KINDS[(index // len(SOURCES)) % len(KINDS)]
    # Every fourth round of (source x fault kind) is a model of small files only: each kind, on each source.
    small_files = (index // (len(SOURCES) * len(KINDS))) % 4 == 3
    multipart = source == "s3" and not small_files and rng.random() < 0.3
    files = _plan_small_model(rng) if small_files else _plan_model(rng, multipart)
    faults = [_plan_fault(rng, primary, source, files)]
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        kind = rng.choice([k for k in KINDS if k != "replace" or primary != "replace"])
        faults.append(_plan_fault(rng, kind, source, files))
    persistent = primary != "stall" and rng.random() < 0.12
    if persistent:
        # A fault that never stops, on one file: the run must fail cleanly (or, if the fault happens to miss the
        # bytes, e.g. a flip past the end of a short body, succeed with correct bytes).
        main = faults[0]
        main.times = -1
        main.skip = 0
        if main.target != "listing":
            main.file = rng.choice([f.path for f in files if f.large])
            main.target = "large"
    return TrialPlan(
        seed=seed,
        index=index,
        source=source,
        primary=primary,
        files=files,
        multipart=multipart,
        small_files=small_files,
        num_threads=rng.choice((2, 4, 8)),
        faults=faults,
        persistent=persistent,
        expect_ok=not persistent and _transient(faults),
    )


def _plan_model(rng: random.Random, multipart: bool) -> list[FileSpec]:
    files = [
        FileSpec("config.json", rng.randint(60, 900), rng.randrange(1 << 30), False),
        FileSpec("tokenizer.json", rng.randint(2_000, 300_000), rng.randrange(1 << 30), False),
    ]
    if rng.random() < 0.5:
        files.append(FileSpec("original/params.json", rng.randint(20, 400), rng.randrange(1 << 30), False))
    shards = rng.randint(1, 3)
    for i in range(1, shards + 1):
        # odd sizes: the last range of a file is rarely a whole MiB
        size = rng.randint(10 * MiB + 1, 13 * MiB) if multipart and i == 1 else rng.randint(2 * MiB + 1, 5 * MiB)
        files.append(FileSpec(f"model-{i:05d}-of-{shards:05d}.safetensors", size, rng.randrange(1 << 30), True))
    return files


def _plan_small_model(rng: random.Random) -> list[FileSpec]:
    """A model of 12 to 40 files, each fetched whole (under the 1 MiB read buffer): the weights' faults hit the
    whole-object GETs (on S3 the CRT's, several in flight per worker), the JSON files' the usual ones."""
    files = [FileSpec("config.json", rng.randint(60, 900), rng.randrange(1 << 30), False)]
    count = rng.randint(12, 40)
    for i in range(1, count + 1):
        size = rng.randint(20_000, 900_000)
        files.append(FileSpec(f"weights-{i:05d}-of-{count:05d}.safetensors", size, rng.randrange(1 << 30), True))
    return files


def _plan_fault(rng: random.Random, kind: str, source: str, files: list[FileSpec]) -> FaultSpec:
    large = [f for f in files if f.large]
    target = "large" if rng.random() < 0.8 else "small"
    if kind == "flipbit" and source == "hf":
        # Hub files that are not LFS are verified by size only (README): a flip there is the separate
        # "flipbit-size-only" scenario, not part of the random mix.
        target = "large"
    times = rng.randint(1, 3)
    skip = rng.randint(0, 6)
    params: dict[str, Any] = {}
    file: str | None = None
    if kind == "reset" or kind == "truncate":
        params["after_bytes"] = rng.randrange(0, RANGE)
    elif kind == "stall":
        params["variant"] = rng.choice(("no-headers", "no-body", "mid-body"))
        params["after_bytes"] = rng.randrange(1, RANGE) if params["variant"] == "mid-body" else 0
        times = rng.randint(1, 2)
    elif kind == "status":
        params["code"] = rng.choice((500, 503, 429))
        params["retry_after"] = rng.choice((None, None, "0", "1", "2", "date"))
        times = rng.randint(1, 4)  # a burst
    elif kind == "content-range":
        params["variant"] = rng.choice(("shift", "start", "total", "static"))
        target = "large"
    elif kind == "flipbit":
        candidates = large if target == "large" else [f for f in files if not f.large]
        chosen = rng.choice(candidates)
        file = chosen.path
        params["offset"] = rng.randrange(0, min(chosen.size, RANGE))
        params["bit"] = rng.randrange(8)
        times = 1
        skip = rng.randint(0, 3)
    elif kind == "replace":
        chosen = rng.choice(large)
        file = chosen.path
        target = "large"
        params["new_size"] = rng.choice((chosen.size, rng.randint(2 * MiB + 1, 5 * MiB)))
        params["seed"] = rng.randrange(1 << 30)
        times = rng.choice((1, 1, 2))
        skip = rng.randint(0, 3)
    elif kind == "listing":
        target = "listing"
        params["action"] = rng.choice(("status", "status", "reset", "truncate"))
        params["code"] = rng.choice((500, 503, 429))
        params["later_pages"] = rng.random() < 0.7
        times = rng.randint(1, 2)
        skip = 0
    else:
        raise ValueError(kind)
    return FaultSpec(kind, target, times, skip, file, params)


def _transient(faults: Sequence[FaultSpec]) -> bool:
    data = sum(f.times for f in faults if f.target != "listing" and f.kind not in ("replace", "flipbit"))
    flips = sum(f.times for f in faults if f.kind == "flipbit")
    changes = sum(f.times for f in faults if f.kind == "replace")
    listing = sum(f.times for f in faults if f.target == "listing")
    return data <= TRANSIENT_BUDGET and flips <= 1 and changes <= 2 and listing <= 2


# ====================================================================================== the servers
class Lab:
    """The long-lived local servers every trial shares: moto's S3 server and fake-gcs-server.

    The Hub is started per trial (FakeHub is cheap and its CDN base URL is per-hub state).
    """

    def __init__(self, s3_host: str | None = None, s3_port: int | None = None, *, gcs: bool = True) -> None:
        self._moto: Any = None
        if s3_host is None or s3_port is None:
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)
            self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self._moto.start()
            s3_host, s3_port = self._moto.get_host_and_port()
        self.s3_host, self.s3_port = str(s3_host), int(s3_port)
        self.gcs: FakeGcs | None = None
        if gcs:
            self.gcs = FakeGcs()
            self.gcs.start()

    def close(self) -> None:
        if self.gcs is not None:
            self.gcs.stop()
        if self._moto is not None:
            self._moto.stop()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def s3_client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=f"http://{self.s3_host}:{self.s3_port}")

    def publish(self, source: str, files: dict[str, bytes], *, multipart: bool = False) -> Deployment:
        if source == "s3":
            return S3Deployment(self, files, multipart)
        if source == "gcs":
            return GcsDeployment(self, files)
        if source == "hf":
            return HfDeployment(files)
        raise ValueError(f"unknown source {source!r}")


class Deployment:
    """One model published on one source, behind fault proxies, for one trial.

    `current` is what the source holds now (updated by `replace`), `history` every version a path ever had.
    """

    uri: str
    model_subdir: str
    data_proxy: FaultProxy  # carries the bytes of large (ranged) files
    small_proxy: FaultProxy  # carries the bytes of small files
    listing_proxy: FaultProxy

    def __init__(self, files: dict[str, bytes]) -> None:
        self.current = dict(files)
        self.history: dict[str, list[bytes]] = {k: [v] for k, v in files.items()}
        # path -> {version the source published (ETag, generation) -> its bytes}; empty where versions are pinned
        self.versions: dict[str, dict[str, bytes]] = {}
        self._lock = threading.Lock()

    # --- per source -------------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        raise NotImplementedError

    def file_pattern(self, rel: str) -> str:
        """Regex matching the object-body GETs of one file."""
        raise NotImplementedError

    def large_pattern(self) -> str:
        raise NotImplementedError

    def small_pattern(self) -> str:
        raise NotImplementedError

    def listing_pattern(self, later_pages: bool) -> str:
        raise NotImplementedError

    def error_body(self, code: int) -> bytes | None:
        """What this source puts in an error body (None: the S3 XML the proxy sends by default)."""
        return None

    def _put(self, rel: str, data: bytes) -> None:
        raise NotImplementedError

    def _version(self, rel: str) -> str | None:
        """The version the source now publishes for `rel` (None where the download pins its own)."""
        return None

    def _close(self) -> None:
        raise NotImplementedError

    def _remember_versions(self, files: dict[str, bytes]) -> None:
        for rel, data in files.items():
            version = self._version(rel)
            if version is not None:
                self.versions.setdefault(rel, {})[version] = data

    def bytes_of(self, rel: str, version: str) -> bytes | None:
        """The bytes the source published as `version` of `rel` (the current bytes where versions are pinned)."""
        known = self.versions.get(rel)
        if not known:
            return self.current.get(rel)
        return known.get(version.strip('"'))

    @property
    def pins_versions(self) -> bool:
        """True when a change at the source must not reach this download (the Hub pins a commit)."""
        return False

    # --- shared ------------------------------------------------------------------------------------------
    @property
    def proxies(self) -> list[FaultProxy]:
        return list({id(p): p for p in (self.data_proxy, self.small_proxy, self.listing_proxy)}.values())

    def replace(self, rel: str, data: bytes) -> None:
        self._put(rel, data)
        with self._lock:
            self.history.setdefault(rel, []).append(data)
            self._remember_versions({rel: data})
            if not self.pins_versions:
                self.current[rel] = data

    def object_bytes(self) -> int:
        """Object-body bytes the proxies wrote to the downloader (listings and metadata excluded)."""
        large, small = re.compile(self.large_pattern()), re.compile(self.small_pattern())
        total = 0
        for proxy in self.proxies:
            for r in proxy.log:
                if r.method == "GET" and (large.search(r.path) or small.search(r.path)):
                    total += r.body_bytes
        return total

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.stop()
        self._close()


class S3Deployment(Deployment):
    def __init__(self, lab: Lab, files: dict[str, bytes], multipart: bool) -> None:
        super().__init__(files)
        self.client = lab.s3_client()
        self.bucket = f"rel-{uuid.uuid4().hex[:16]}"
        self.client.create_bucket(Bucket=self.bucket)
        s3_upload(self.client, self.bucket, "m", files, part_size=5 * MiB if multipart else 0)
        self._remember_versions(files)
        proxy = FaultProxy(lab.s3_host, lab.s3_port)
        # Small listing pages (moto does not check signatures, so the query can be changed in flight).
        proxy.rewrite_path = _add_query("list-type=2", f"max-keys={LISTING_PAGE}")
        proxy.start()
        self.data_proxy = self.small_proxy = self.listing_proxy = proxy
        self.uri = f"s3://{self.bucket}/m/"
        self.model_subdir = "m"

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.data_proxy.url}

    def file_pattern(self, rel: str) -> str:
        return rf"^/{self.bucket}/m/{re.escape(quote(rel, safe='/~'))}(\?|$)"

    def large_pattern(self) -> str:
        return rf"^/{self.bucket}/m/[^?]*\.safetensors(\?|$)"

    def small_pattern(self) -> str:
        return rf"^/{self.bucket}/m/[^?]*\.json(\?|$)"

    def listing_pattern(self, later_pages: bool) -> str:
        return rf"^/{self.bucket}\?(?=.*list-type=2)" + ("(?=.*continuation-token=)" if later_pages else "")

    def _put(self, rel: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"m/{rel}", Body=data)

    def _version(self, rel: str) -> str | None:
        return str(self.client.head_object(Bucket=self.bucket, Key=f"m/{rel}")["ETag"]).strip('"')

    def _close(self) -> None:
        with contextlib.suppress(Exception):
            keys = [k for k in self.history]
            for k in keys:
                self.client.delete_object(Bucket=self.bucket, Key=f"m/{k}")
            self.client.delete_bucket(Bucket=self.bucket)


class GcsDeployment(Deployment):
    def __init__(self, lab: Lab, files: dict[str, bytes]) -> None:
        super().__init__(files)
        assert lab.gcs is not None
        self.client = lab.gcs.client()
        self.bucket = f"rel-{uuid.uuid4().hex[:16]}"
        self.client.create_bucket(self.bucket)
        gcs_upload(self.client, self.bucket, "m", files)
        self._remember_versions(files)
        proxy = FaultProxy(lab.gcs.host, lab.gcs.port)
        proxy.rewrite_path = _set_query("maxResults", str(LISTING_PAGE))
        proxy.start()
        self.data_proxy = self.small_proxy = self.listing_proxy = proxy
        self.uri = f"gs://{self.bucket}/m/"
        self.model_subdir = "m"

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.data_proxy.url}

    def file_pattern(self, rel: str) -> str:
        return rf"^/download/storage/v1/b/{self.bucket}/o/{re.escape(quote('m/' + rel, safe=''))}(\?|$)"

    def large_pattern(self) -> str:
        return rf"^/download/storage/v1/b/{self.bucket}/o/[^?]*\.safetensors(\?|$)"

    def small_pattern(self) -> str:
        return rf"^/download/storage/v1/b/{self.bucket}/o/[^?]*\.json(\?|$)"

    def listing_pattern(self, later_pages: bool) -> str:
        return rf"^/storage/v1/b/{self.bucket}/o\?" + ("(?=.*pageToken=)" if later_pages else "")

    def error_body(self, code: int) -> bytes | None:
        return json.dumps(
            {"error": {"code": code, "message": "injected", "errors": [{"reason": "backendError"}]}}
        ).encode()

    def _put(self, rel: str, data: bytes) -> None:
        gcs_upload(self.client, self.bucket, "m", {rel: data})

    def _version(self, rel: str) -> str | None:
        return str(self.client.bucket(self.bucket).get_blob(f"m/{rel}").generation)

    def _close(self) -> None:
        with contextlib.suppress(Exception):
            bucket = self.client.bucket(self.bucket)
            for blob in list(self.client.list_blobs(self.bucket)):
                blob.delete()
            bucket.delete()
        with contextlib.suppress(Exception):
            self.client.close()


class HfDeployment(Deployment):
    REPO_ORG = "acme"

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(files)
        # Every .safetensors is LFS (served by the CDN, verified by sha256); the json files are not.
        self.hub = FakeHub(token=HF_TOKEN, page_size=LISTING_PAGE).start()
        self.name = f"m-{uuid.uuid4().hex[:10]}"
        self.repo = f"{self.REPO_ORG}/{self.name}"
        self.commit = self.hub.create_repo(self.repo, files)
        self.data_proxy = FaultProxy("127.0.0.1", self.hub.cdn_port)
        self.data_proxy.start()
        self.hub.cdn_base = self.data_proxy.url
        self.small_proxy = self.listing_proxy = FaultProxy("127.0.0.1", self.hub.port)
        self.small_proxy.start()
        self.uri = f"hf://{self.repo}"
        self.model_subdir = f"{self.REPO_ORG}/{self.name}"

    @property
    def pins_versions(self) -> bool:
        return True

    def env(self) -> dict[str, str]:
        return {"HF_ENDPOINT": self.small_proxy.url, "HF_TOKEN": HF_TOKEN, "HUGGING_FACE_HUB_TOKEN": ""}

    def file_pattern(self, rel: str) -> str:
        data = self.current.get(rel, b"")
        if rel.endswith(".safetensors"):
            return rf"^/blobs/{hashlib.sha256(data).hexdigest()}(\?|$)"
        return rf"^/{re.escape(self.repo)}/resolve/[0-9a-f]{{40}}/{re.escape(quote(rel, safe='/'))}(\?|$)"

    def large_pattern(self) -> str:
        return r"^/blobs/"

    def small_pattern(self) -> str:
        return rf"^/{re.escape(self.repo)}/resolve/[^?]*\.json(\?|$)"

    def listing_pattern(self, later_pages: bool) -> str:
        return rf"^/api/models/{re.escape(self.repo)}/tree/" + (r"(?=.*cursor=)" if later_pages else "")

    def error_body(self, code: int) -> bytes | None:
        return json.dumps({"error": f"injected {code}"}).encode()

    def _put(self, rel: str, data: bytes) -> None:
        self.hub.push(self.repo, {rel: data})  # the branch moves; the download keeps the commit it resolved

    def _close(self) -> None:
        self.hub.stop()


def _add_query(marker: str, extra: str) -> Callable[[str], str]:
    def rewrite(path: str) -> str:
        return path.replace(marker, f"{marker}&{extra}", 1) if marker in path else path

    return rewrite


def _set_query(name: str, value: str) -> Callable[[str], str]:
    pattern = re.compile(rf"([?&]){re.escape(name)}=\d+")

    def rewrite(path: str) -> str:
        return pattern.sub(rf"\g<1>{name}={value}", path)

    return rewrite


def model_bytes(files: Sequence[FileSpec]) -> dict[str, bytes]:
    return {f.path: random_bytes(f.size, f.seed) for f in files}


# ============================================================================================= faults
def _wrong_content_range(variant: str) -> Callable[[str | None], str]:
    def lie(truth: str | None) -> str:
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (truth or "").strip())
        if variant == "static" or m is None:
            return "bytes 0-9/10"
        start, end, total = int(m.group(1)), int(m.group(2)), m.group(3)
        if variant == "shift":
            return f"bytes {start + 1}-{end + 1}/{total}"
        if variant == "start":
            return f"bytes {max(0, start - 4096)}-{end}/{total}"
        return f"bytes {start}-{end}/{int(total) + 1 if total != '*' else 1}"

    return lie


def _retry_after(value: str | None) -> str | None:
    if value == "date":
        return email.utils.formatdate(time.time() + 1, usegmt=True)
    return value


def install_fault(dep: Deployment, spec: FaultSpec) -> tuple[FaultProxy, Rule]:
    """Turn a FaultSpec into a Rule on the proxy that carries the requests it targets."""
    p = spec.params
    if spec.target == "listing":
        proxy = dep.listing_proxy
        path = dep.listing_pattern(bool(p.get("later_pages")))
        listing_action: Action
        if p["action"] == "status":
            listing_action = Status(p["code"], body=dep.error_body(p["code"]))
        elif p["action"] == "reset":
            listing_action = Reset(after_bytes=0)
        else:
            listing_action = Truncate(after_bytes=40)
        rule = Rule(listing_action, match_method="GET", match_path=path, times=spec.times, skip=spec.skip)
        proxy.add_rule(rule)
        return proxy, rule
    proxy = dep.data_proxy if spec.target == "large" else dep.small_proxy
    path = (
        dep.file_pattern(spec.file)
        if spec.file
        else (dep.large_pattern() if spec.target == "large" else dep.small_pattern())
    )
    action: Action
    only_ranged = False
    if spec.kind == "reset":
        action = Reset(p["after_bytes"])
    elif spec.kind == "truncate":
        action = Truncate(p["after_bytes"])
    elif spec.kind == "stall":
        action = Delay(30.0) if p["variant"] == "no-headers" else Stall(30.0, after_bytes=p["after_bytes"])
    elif spec.kind == "status":
        action = Status(p["code"], body=dep.error_body(p["code"]), retry_after=_retry_after(p["retry_after"]))
    elif spec.kind == "content-range":
        action = RewriteHeader("Content-Range", _wrong_content_range(p["variant"]))
        only_ranged = True
    elif spec.kind == "flipbit":
        action = FlipBit(p["offset"], p["bit"])
    elif spec.kind == "replace":
        rel = spec.file
        assert rel is not None
        counter = iter(range(1 << 20))

        def replace(_record: RequestRecord) -> None:
            dep.replace(rel, random_bytes(p["new_size"], p["seed"] + next(counter)))

        action = Callback(replace)
    else:
        raise ValueError(spec.kind)
    rule = Rule(action, match_method="GET", match_path=path, only_ranged=only_ranged, times=spec.times, skip=spec.skip)
    proxy.add_rule(rule)
    return proxy, rule


# ===================================================================================== classification
@dataclass
class Verdict:
    outcome: str
    reason: str


def model_dir_of(local: Path, dep: Deployment) -> Path:
    return local / dep.model_subdir


def classify(
    returncode: int | None, stdout: str, stderr: str, model_dir: Path, dep: Deployment, *, expect_ok: bool = False
) -> Verdict:
    """What a finished run left behind, judged against what the source holds."""
    if returncode is None:
        return Verdict("HANG", "did not finish in time")
    manifest = read_manifest(str(model_dir)) if model_dir.is_dir() else None
    on_disk = read_tree(str(model_dir)) if model_dir.is_dir() else {}
    # Temp files (kept for the next run to resume) are not final names; everything else must be a real version.
    finals = {p: d for p, d in on_disk.items() if not p.endswith(".aibrix-tmp")}
    corrupt = sorted(p for p, data in finals.items() if data not in dep.history.get(p, []))
    if returncode == 0:
        if manifest is None:
            return Verdict("BAD", "exit 0 without a manifest")
        listed = {f.path: f for f in manifest.files}
        if set(listed) != set(dep.current):
            return Verdict("BAD", f"manifest lists {sorted(listed)} but the source holds {sorted(dep.current)}")
        for p, entry in sorted(listed.items()):
            data = on_disk.get(p)
            if data is None:
                return Verdict("BAD", f"manifest lists {p}, which is not on disk")
            if entry.size != len(data):
                return Verdict(
                    "BAD",
                    f"manifest size differs from the bytes: {p} listed as {entry.size} bytes, is {len(data)} on "
                    f"disk ({len(dep.current[p])} at the source)",
                )
            # A file finished before the source replaced it is right as long as the manifest names the version
            # whose bytes it holds; anything else is a manifest over wrong bytes.
            if data != dep.bytes_of(p, str(entry.version)):
                return Verdict("BAD", f"manifest over wrong bytes: {p} (version {entry.version})")
        extra = sorted(set(finals) - set(dep.current))
        if extra:
            return Verdict("BAD", f"files the source does not hold: {', '.join(extra)}")
        if stdout.strip() != str(model_dir):
            return Verdict("UNCLEAR", f"stdout is {stdout.strip()!r}, not the model directory")
        leftovers = _leftovers(model_dir)
        if leftovers:
            return Verdict("LEFTOVERS", ", ".join(leftovers[:5]))
        return Verdict("OK", "")
    if manifest is not None:
        return Verdict("BAD", f"exit {returncode} but a manifest is present")
    if corrupt:
        return Verdict("BAD", f"exit {returncode} and wrong bytes under final names: {', '.join(corrupt)}")
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    if returncode not in CLEAN_EXIT_CODES or "Traceback" in stderr or not errors:
        return Verdict("UNCLEAR", f"exit {returncode}: {(errors or stderr.strip().splitlines() or [''])[-1][-300:]}")
    if expect_ok:
        return Verdict("UNEXPECTED-FAIL", f"exit {returncode}: {errors[-1][-300:]}")
    return Verdict("CLEAN-FAIL", f"exit {returncode}: {errors[-1][-300:]}")


def _leftovers(model_dir: Path) -> list[str]:
    found = []
    for dirpath, dirnames, names in os.walk(model_dir):
        dirnames[:] = [d for d in dirnames if d != ".aibrix"]
        found += [os.path.join(dirpath, n) for n in names if n.endswith(".aibrix-tmp")]
    journal = model_dir / ".aibrix" / "journal"
    if journal.is_dir():
        found += [str(journal / n) for n in os.listdir(journal)]
    return found


# ============================================================================================= trials
@dataclass
class TrialResult:
    seed: int
    index: int
    source: str
    primary: str
    kinds: list[str]
    persistent: bool
    expect_ok: bool
    outcome: str
    reason: str
    exit_code: int | None
    seconds: float
    fired: list[int]
    model_bytes: int
    object_bytes: int
    errors_by_kind: dict[str, int]
    plan: dict[str, Any]
    stderr_tail: str = ""


def cli_args(uri: str, local: Path, num_threads: int, *extra: str) -> list[str]:
    return [
        "--model-uri",
        uri,
        "--local-dir",
        str(local),
        "--part-threshold",
        "2MiB",
        "--part-chunksize",
        "1MiB",
        "--num-threads",
        str(num_threads),
        "--max-attempts",
        str(MAX_ATTEMPTS),
        "--stall-timeout",
        str(STALL_TIMEOUT),
        "--progress",
        "none",
        *extra,
    ]


def start_cli(args: list[str], dep: Deployment) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "downloader", *args],
        env=cli_env(UNUSED_S3, **dep.env()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a kill reaches nothing else
    )


def finish_cli(proc: subprocess.Popen[str], timeout: float) -> tuple[int | None, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return None, out, err


def run_trial(
    lab: Lab, plan: TrialPlan, workdir: Path, *, timeout: float = TRIAL_TIMEOUT, keep: bool = False
) -> TrialResult:
    dep = lab.publish(plan.source, model_bytes(plan.files), multipart=plan.multipart)
    local = workdir / f"trial-{plan.seed}-{plan.index}"
    try:
        rules = [install_fault(dep, spec) for spec in plan.faults]
        started = time.monotonic()
        proc = start_cli(cli_args(dep.uri, local, plan.num_threads), dep)
        code, out, err = finish_cli(proc, timeout)
        seconds = time.monotonic() - started
        model_dir = model_dir_of(local, dep)
        verdict = classify(code, out, err, model_dir, dep, expect_ok=plan.expect_ok)
        progress = read_progress(str(model_dir)) if model_dir.is_dir() else None
        return TrialResult(
            seed=plan.seed,
            index=plan.index,
            source=plan.source,
            primary=plan.primary,
            kinds=[f.kind for f in plan.faults],
            persistent=plan.persistent,
            expect_ok=plan.expect_ok,
            outcome=verdict.outcome,
            reason=verdict.reason,
            exit_code=code,
            seconds=round(seconds, 2),
            fired=[rule.fired for _, rule in rules],
            model_bytes=sum(len(v) for v in dep.current.values()),
            object_bytes=dep.object_bytes(),
            errors_by_kind=dict(progress.errors_by_kind) if progress else {},
            plan=asdict(plan),
            stderr_tail="" if verdict.outcome == "OK" else "\n".join(err.splitlines()[-25:]),
        )
    finally:
        dep.close()
        if not keep:
            shutil.rmtree(local, ignore_errors=True)


def run_trials(
    lab: Lab,
    seed: int,
    indices: Sequence[int],
    workdir: Path,
    *,
    jobs: int = 2,
    keep: bool = False,
    on_result: Callable[[TrialResult], None] | None = None,
) -> list[TrialResult]:
    results: list[TrialResult] = []
    lock = threading.Lock()

    def one(index: int) -> TrialResult:
        result = run_trial(lab, plan_trial(seed, index), workdir, keep=keep)
        with lock:
            results.append(result)
            if on_result is not None:
                on_result(result)
        return result

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        list(pool.map(one, indices))
    return sorted(results, key=lambda r: r.index)


def outcome_table(results: Sequence[TrialResult]) -> str:
    """Outcomes by primary fault kind (rows) and source (columns), then by every fault kind present."""
    lines = []
    header = f"{'primary fault':<16}" + "".join(f"{s:>22}" for s in SOURCES) + f"{'all':>22}"
    lines.append(header)
    for kind in KINDS:
        row = [r for r in results if r.primary == kind]
        if not row:
            continue
        cells = [_cell([r for r in row if r.source == s]) for s in SOURCES] + [_cell(row)]
        lines.append(f"{kind:<16}" + "".join(f"{c:>22}" for c in cells))
    cells = [_cell([r for r in results if r.source == s]) for s in SOURCES] + [_cell(results)]
    lines.append(f"{'all':<16}" + "".join(f"{c:>22}" for c in cells))
    lines.append("")
    lines.append("cell = OK/CLEAN-FAIL/other; every other outcome is listed below")
    totals = Counter(r.outcome for r in results)
    lines.append("outcomes: " + ", ".join(f"{o} {totals.get(o, 0)}" for o in OUTCOMES))
    present = Counter(k for r in results for k in set(r.kinds))
    lines.append("trials containing each fault kind: " + ", ".join(f"{k} {present.get(k, 0)}" for k in KINDS))
    small = [r for r in results if r.plan.get("small_files")]
    if small:
        counts = Counter(r.outcome for r in small)
        lines.append(
            f"models of small files only (fetched whole): {len(small)} trials, "
            + ", ".join(f"{k} {counts.get(k, 0)}" for k in OUTCOMES)
        )
    for r in results:
        if r.outcome not in PASSING:
            lines.append(f"  trial {r.index} ({r.source}, {'+'.join(r.kinds)}): {r.outcome}: {r.reason}")
    return "\n".join(lines)


def _cell(rows: Sequence[TrialResult]) -> str:
    c = Counter(r.outcome for r in rows)
    other = len(rows) - c["OK"] - c["CLEAN-FAIL"]
    return f"{c['OK']}/{c['CLEAN-FAIL']}/{other}"


# ================================================================================ size-only hub files
def size_only_flip_trial(workdir: Path, seed: int) -> Verdict:
    """A bit flipped in a Hub file that is not LFS: the Hub publishes only its git blob id for it and the
    downloader checks its size only (README), so nothing can notice."""
    rng = random.Random(f"size-only:{seed}")
    files = {"config.json": json.dumps({"seed": seed, "pad": "x" * rng.randint(50, 500)}).encode()}
    dep = HfDeployment(files)
    local = workdir / f"size-only-{seed}"
    try:
        offset = rng.randrange(len(files["config.json"]))
        dep.small_proxy.add_rule(
            Rule(FlipBit(offset, rng.randrange(8)), match_method="GET", match_path=dep.file_pattern("config.json"))
        )
        code, out, err = finish_cli(start_cli(cli_args(dep.uri, local, 2), dep), TRIAL_TIMEOUT)
        return classify(code, out, err, model_dir_of(local, dep), dep)
    finally:
        dep.close()
        shutil.rmtree(local, ignore_errors=True)


# ================================================================================= crash consistency
@dataclass
class CrashResult:
    source: str
    seed: int
    kills_planned: int
    kills: int  # processes actually killed mid-run
    finished_early: int  # runs that completed before their kill moment came
    kill_moments: list[float]
    model_bytes: int
    bytes_sent: int  # object bytes the server sent, all runs together
    refetched: int  # bytes_sent - model_bytes
    bound: int  # kills x in-flight ranges: what resume may lose at most
    resumed_runs: int  # runs that said "resuming"
    final: Verdict
    seconds: float


def crash_files(seed: int) -> dict[str, bytes]:
    rng = random.Random(f"crash-model:{seed}")
    files = {
        "config.json": json.dumps({"seed": seed}).encode(),
        "tokenizer.json": random_bytes(200_000, rng.randrange(1 << 30)),
    }
    for i, size in enumerate((16 * MiB + 4321, 14 * MiB + 77, 9 * MiB + 5), start=1):
        files[f"model-{i:05d}-of-00003.safetensors"] = random_bytes(size, rng.randrange(1 << 30))
    return files


def crash_small_files(seed: int) -> dict[str, bytes]:
    """A model of small files only (each fetched whole: on S3 through the CRT, several GETs per worker)."""
    rng = random.Random(f"crash-small-model:{seed}")
    files = {"config.json": json.dumps({"seed": seed}).encode()}
    for i in range(1, 81):
        files[f"weights-{i:05d}-of-00080.safetensors"] = random_bytes(
            rng.randint(20_000, 200_000), rng.randrange(1 << 30)
        )
    return files


def crash_campaign(
    lab: Lab,
    source: str,
    kills: int,
    seed: int,
    workdir: Path,
    *,
    max_moment: float = 2.5,
    rate: float = 384 * 1024,
    files: dict[str, bytes] | None = None,
    label: str = "",
    progress: Callable[[str], None] | None = None,
) -> CrashResult:
    """kill -9 at `kills` random moments (uniform in [0, max_moment] s after each start), resuming each time.

    Every object body is paced at `rate` bytes/s per connection so a kill usually lands mid-range. After the
    kills, one run without pacing completes the model; the proxy's byte count tells how much was fetched twice.
    """
    rng = random.Random(f"crash:{source}{label}:{seed}")
    files = files or crash_files(seed)
    dep = lab.publish(source, files)
    local = workdir / f"crash-{source}{label}-{seed}"
    threads, chunk = 2, 256 * 1024
    args = cli_args(dep.uri, local, threads)
    args[args.index("--part-chunksize") + 1] = str(chunk)
    started = time.monotonic()
    try:
        for proxy in (dep.data_proxy, dep.small_proxy):
            proxy.add_rule(Rule(Throttle(rate), match_method="GET", times=-1))
        moments: list[float] = []
        killed = early = resumed = 0
        for n in range(kills):
            moment = rng.uniform(0.0, max_moment)
            proc = start_cli(args, dep)
            try:
                proc.wait(timeout=moment)
                early += 1  # finished (or failed) before the kill: nothing left to crash
                _, err = proc.communicate()
                if proc.returncode != 0:
                    raise AssertionError(f"run {n} exited {proc.returncode} before its kill:\n{err[-2000:]}")
                break
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: only this download
                _, err = proc.communicate()
                killed += 1
                moments.append(round(moment, 3))
                resumed += "resuming" in err
                if read_manifest(str(model_dir_of(local, dep))) is not None:
                    raise AssertionError(f"a manifest exists after kill {n}") from None
            if progress is not None and (n + 1) % 10 == 0:
                progress(f"  {source}: {n + 1} kills, {dep.object_bytes()} object bytes sent so far")
        for proxy in (dep.data_proxy, dep.small_proxy):
            proxy.clear_rules()
        proc = start_cli(args, dep)
        code, out, err = finish_cli(proc, TRIAL_TIMEOUT)
        resumed += "resuming" in err
        final = classify(code, out, err, model_dir_of(local, dep), dep, expect_ok=True)
        size = sum(len(v) for v in files.values())
        sent = dep.object_bytes()
        # What a kill may cost: the ranges in flight; for small files fetched whole, the last batch not yet recorded
        # (placed at `chunk` bytes) and the whole-file GETs in flight (at most three per connection, and one more).
        largest = max(len(v) for v in files.values())
        per_kill = threads * chunk if largest >= chunk else chunk + (3 * threads + 1) * largest
        return CrashResult(
            source=source + label,
            seed=seed,
            kills_planned=kills,
            kills=killed,
            finished_early=early,
            kill_moments=moments,
            model_bytes=size,
            bytes_sent=sent,
            refetched=sent - size,
            bound=killed * per_kill,
            resumed_runs=resumed,
            final=final,
            seconds=round(time.monotonic() - started, 1),
        )
    finally:
        dep.close()
        shutil.rmtree(local, ignore_errors=True)


# ========================================================================================= disk full
class MountNotPermitted(Exception):
    pass


@contextlib.contextmanager
def tmpfs(size_bytes: int) -> Iterator[Path]:
    """A fresh tmpfs of the given size (needs root, or CAP_SYS_ADMIN); removed afterwards."""
    mnt = Path(tempfile.mkdtemp(prefix="aibrix-tmpfs-"))
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        mnt.rmdir()
        raise MountNotPermitted(f"cannot mount a tmpfs ({(r.stderr or r.stdout).strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        with contextlib.suppress(OSError):
            mnt.rmdir()


@dataclass
class DiskFullResult:
    source: str
    tmpfs_bytes: int
    model_bytes: int
    fresh: Verdict  # the model does not fit at all
    fresh_needed: int | None
    fresh_available: int | None
    fresh_object_bytes: int  # fetched by the failing run (should be 0: checked before any byte)
    done_before_fill: int  # bytes of files finished (and verified) before the disk was filled
    filled: Verdict  # a partly done model, then someone else fills the disk
    filled_needed: int | None
    filled_available: int | None
    filled_free_at_check: int
    filled_object_bytes: int
    final: Verdict  # after the space is freed
    final_object_bytes: int
    refetched_done_bytes: int  # bytes of files that were already done, fetched again by the final run


_SPACE = re.compile(r"need (\d+) bytes .*available (\d+) bytes")


def _space_numbers(stderr: str) -> tuple[int | None, int | None]:
    m = _SPACE.search(stderr)
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def disk_full_scenario(lab: Lab, source: str, workdir: Path, *, seed: int = 1) -> DiskFullResult:
    rng = random.Random(f"disk-full:{source}:{seed}")
    files = {"config.json": b'{"model_type": "demo"}'}
    for i in range(1, 7):
        files[f"model-{i:05d}-of-00006.safetensors"] = random_bytes(
            4 * MiB + rng.randrange(1, 4096), rng.randrange(1 << 30)
        )
    size = sum(map(len, files.values()))
    dep = lab.publish(source, files)
    try:
        # 1. The model does not fit at all: refused before any byte is fetched.
        with tmpfs(size // 2) as mnt:
            code, out, err = finish_cli(start_cli(cli_args(dep.uri, mnt, 2), dep), TRIAL_TIMEOUT)
            fresh = classify(code, out, err, model_dir_of(mnt, dep), dep)
            fresh_needed, fresh_available = _space_numbers(err)
            fresh_bytes = dep.object_bytes()
        # 2. It fits; a crash after some files are done; then another tenant fills the disk.
        tmpfs_bytes = size + 8 * MiB
        with tmpfs(tmpfs_bytes) as mnt:
            model_dir = model_dir_of(mnt, dep)
            for proxy in (dep.data_proxy, dep.small_proxy):
                proxy.reset_counters()
                proxy.add_rule(Rule(Throttle(2 * MiB), match_method="GET", times=-1))
            proc = start_cli(cli_args(dep.uri, mnt, 2), dep)
            deadline = time.monotonic() + 60
            while _done_files(model_dir) < 2 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            done = {p for p in files if (model_dir / p).exists()}
            done_bytes = sum(len(files[p]) for p in done)
            for proxy in (dep.data_proxy, dep.small_proxy):
                proxy.clear_rules()
            ballast = mnt / "other-tenant.bin"
            _fill(ballast, keep=512 * 1024)
            free_at_check = _free(mnt)
            for proxy in (dep.data_proxy, dep.small_proxy):
                proxy.reset_counters()
            code, out, err = finish_cli(start_cli(cli_args(dep.uri, mnt, 2), dep), TRIAL_TIMEOUT)
            filled = classify(code, out, err, model_dir, dep)
            filled_needed, filled_available = _space_numbers(err)
            filled_bytes = dep.object_bytes()
            # 3. Space freed: the next run completes and fetches only what was not done.
            ballast.unlink()
            for proxy in (dep.data_proxy, dep.small_proxy):
                proxy.reset_counters()
            code, out, err = finish_cli(start_cli(cli_args(dep.uri, mnt, 2), dep), TRIAL_TIMEOUT)
            final = classify(code, out, err, model_dir, dep, expect_ok=True)
            final_bytes = dep.object_bytes()
            refetched_done = sum(_object_bytes_of(dep, p) for p in done)
        return DiskFullResult(
            source=source,
            tmpfs_bytes=tmpfs_bytes,
            model_bytes=size,
            fresh=fresh,
            fresh_needed=fresh_needed,
            fresh_available=fresh_available,
            fresh_object_bytes=fresh_bytes,
            done_before_fill=done_bytes,
            filled=filled,
            filled_needed=filled_needed,
            filled_available=filled_available,
            filled_free_at_check=free_at_check,
            filled_object_bytes=filled_bytes,
            final=final,
            final_object_bytes=final_bytes,
            refetched_done_bytes=refetched_done,
        )
    finally:
        dep.close()


def _done_files(model_dir: Path) -> int:
    done = model_dir / ".aibrix" / "done.jsonl"
    return len(done.read_bytes().splitlines()) if done.exists() else 0


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fill(path: Path, *, keep: int) -> None:
    """Write a file that leaves only about `keep` bytes free."""
    with open(path, "wb") as fh:
        remaining = _free(path.parent) - keep
        block = b"\0" * MiB
        while remaining > 0:
            n = min(len(block), remaining)
            try:
                fh.write(block[:n])
            except OSError:
                break
            remaining -= n


def _object_bytes_of(dep: Deployment, rel: str) -> int:
    pattern = re.compile(dep.file_pattern(rel))
    return sum(r.body_bytes for p in dep.proxies for r in p.log if r.method == "GET" and pattern.search(r.path))


# ======================================================================================= concurrency
@dataclass
class ConcurrentResult:
    source: str
    processes: int
    verdicts: list[Verdict]
    waited: int  # processes that said they waited for another one's download
    model_bytes: int
    object_bytes: int
    ratio: float
    seconds: float


def concurrent_scenario(lab: Lab, source: str, workdir: Path, *, processes: int = 8, seed: int = 1) -> ConcurrentResult:
    rng = random.Random(f"concurrent:{source}:{seed}")
    files = {"config.json": b'{"model_type": "demo"}', "tokenizer.json": random_bytes(150_000, rng.randrange(1 << 30))}
    for i in range(1, 4):
        files[f"model-{i:05d}-of-00003.safetensors"] = random_bytes(
            4 * MiB + rng.randrange(4096), rng.randrange(1 << 30)
        )
    size = sum(map(len, files.values()))
    dep = lab.publish(source, files)
    local = workdir / f"concurrent-{source}-{seed}"
    started = time.monotonic()
    try:
        # Slow ranges, so that every process starts while the first one is still downloading.
        dep.data_proxy.add_rule(Rule(Delay(0.1), match_method="GET", times=-1))
        procs = [start_cli(cli_args(dep.uri, local, 4), dep) for _ in range(processes)]
        runs = [finish_cli(p, TRIAL_TIMEOUT) for p in procs]
        model_dir = model_dir_of(local, dep)
        verdicts = [classify(code, out, err, model_dir, dep, expect_ok=True) for code, out, err in runs]
        sent = dep.object_bytes()
        return ConcurrentResult(
            source=source,
            processes=processes,
            verdicts=verdicts,
            waited=sum("waiting for pid" in err for _, _, err in runs),
            model_bytes=size,
            object_bytes=sent,
            ratio=round(sent / size, 4),
            seconds=round(time.monotonic() - started, 1),
        )
    finally:
        dep.close()
        shutil.rmtree(local, ignore_errors=True)


# ================================================================================================ CLI
def _print(msg: str) -> None:
    print(msg, flush=True)


def _code_state() -> str:
    """The commit measured, and whether downloader/ had uncommitted changes (results belong to that code)."""
    repo = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=repo)
    dirty = subprocess.run(["git", "status", "--short", "downloader"], capture_output=True, text=True, cwd=repo)
    changed = len(dirty.stdout.splitlines())
    return f"{head.stdout.strip() or 'unknown'}" + (
        f" + {changed} uncommitted file(s) in downloader/" if changed else ""
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.reliability", description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("all", "trials", "size-only", "crash", "disk-full", "concurrent"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--trials", type=int, default=240, help="randomized trials (indices 0..N-1)")
    ap.add_argument("--only", type=int, action="append", help="run only this trial index (repeatable)")
    ap.add_argument("--jobs", type=int, default=2, help="trials run at once")
    ap.add_argument("--kills", type=int, default=50, help="kill -9 moments per source in the crash campaign")
    ap.add_argument("--sources", default=",".join(SOURCES), help="for crash, disk-full and concurrent")
    ap.add_argument("--processes", type=int, default=8)
    ap.add_argument("--size-only-trials", type=int, default=10)
    ap.add_argument("--json", help="write every result here")
    ap.add_argument("--keep", metavar="DIR", help="download into DIR and keep each trial's directory")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each trial's plan and stderr")
    ns = ap.parse_args(argv)
    sources = [s.strip() for s in ns.sources.split(",") if s.strip()]
    report: dict[str, Any] = {
        "seed": ns.seed,
        "command": "python -m tests.reliability " + " ".join(argv or sys.argv[1:]),
    }
    failed = False
    report["code"] = _code_state()
    _print(f"downloader code: {report['code']}")
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="aibrix-reliability-") as tmp:
        workdir = Path(ns.keep or tmp)
        if ns.what in ("all", "trials"):
            indices = ns.only or list(range(ns.trials))
            _print(f"== {len(indices)} randomized trials, seed {ns.seed}, {ns.jobs} at a time")
            t0 = time.monotonic()

            def show(r: TrialResult) -> None:
                kinds = "+".join(r.kinds)
                _print(f"trial {r.index:4d} {r.source:3} {kinds:40} {r.outcome:15} {r.seconds:6.1f}s {r.reason[:80]}")
                if ns.verbose:
                    _print(json.dumps(r.plan, indent=1))
                    _print(r.stderr_tail)

            results = run_trials(lab, ns.seed, indices, workdir, jobs=ns.jobs, keep=bool(ns.keep), on_result=show)
            _print(outcome_table(results))
            _print(f"{len(results)} trials in {time.monotonic() - t0:.0f}s")
            report["trials"] = [asdict(r) for r in results]
            failed |= any(r.outcome not in PASSING for r in results)
        if ns.what in ("all", "size-only"):
            _print(f"== flipped bit in a size-only Hub file, {ns.size_only_trials} trials")
            verdicts = [size_only_flip_trial(workdir, ns.seed * 1000 + i) for i in range(ns.size_only_trials)]
            counts = Counter(v.outcome for v in verdicts)
            _print("outcomes: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
            for reason in sorted({v.reason for v in verdicts}):
                _print(f"  {reason}")
            report["size_only"] = [asdict(v) for v in verdicts]
        if ns.what in ("all", "crash"):
            report["crash"] = []
            for source in sources:
                _print(f"== crash consistency: kill -9 at {ns.kills} random moments, {source}")
                c = crash_campaign(lab, source, ns.kills, ns.seed, workdir, progress=_print)
                _print(
                    f"{source}: {c.kills} kills ({c.finished_early} runs finished before their kill), final run "
                    f"{c.final.outcome} {c.final.reason}; model {c.model_bytes} bytes, sent {c.bytes_sent}, re-fetched "
                    f"{c.refetched} ({c.refetched / max(1, c.kills):.0f} per kill; bound {c.bound}); {c.seconds}s"
                )
                report["crash"].append(asdict(c))
                failed |= c.final.outcome != "OK" or c.refetched > c.bound
        if ns.what in ("all", "crash") and "s3" in sources:
            # The batched whole-object path (the CRT's on S3): a model of small files only.
            _print(f"== crash consistency: kill -9 at {ns.kills} random moments, s3, a model of small files")
            c = crash_campaign(
                lab, "s3", ns.kills, ns.seed, workdir, files=crash_small_files(ns.seed), label="-small", progress=_print
            )
            _print(
                f"s3-small: {c.kills} kills ({c.finished_early} runs finished before their kill), final run "
                f"{c.final.outcome} {c.final.reason}; model {c.model_bytes} bytes, sent {c.bytes_sent}, re-fetched "
                f"{c.refetched} ({c.refetched / max(1, c.kills):.0f} per kill; bound {c.bound}); {c.seconds}s"
            )
            report["crash"].append(asdict(c))
            failed |= c.final.outcome != "OK" or c.refetched > c.bound
        if ns.what in ("all", "disk-full"):
            report["disk_full"] = []
            for source in sources:
                _print(f"== disk full on a small tmpfs, {source}")
                try:
                    d = disk_full_scenario(lab, source, workdir, seed=ns.seed)
                except MountNotPermitted as exc:
                    _print(f"skipped: {exc}")
                    continue
                _print(json.dumps(asdict(d), indent=1))
                report["disk_full"].append(asdict(d))
                failed |= d.final.outcome != "OK" or d.refetched_done_bytes != 0
        if ns.what in ("all", "concurrent"):
            report["concurrent"] = []
            for source in sources:
                _print(f"== {ns.processes} processes, one model, one directory, {source}")
                cc = concurrent_scenario(lab, source, workdir, processes=ns.processes, seed=ns.seed)
                _print(
                    f"{source}: outcomes {dict(Counter(v.outcome for v in cc.verdicts))}, {cc.waited} waited; "
                    f"sent {cc.object_bytes} bytes for a {cc.model_bytes}-byte model = {cc.ratio}x; {cc.seconds}s"
                )
                report["concurrent"].append(asdict(cc))
                failed |= cc.ratio > 1.05 or any(v.outcome != "OK" for v in cc.verdicts)
    if ns.json:
        Path(ns.json).write_text(json.dumps(report, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
