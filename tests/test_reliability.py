"""The fast subset of the reliability campaigns (tests/reliability.py), run in CI on every change.

The long runs (240 randomized trials, 50 kills per source, every source for disk-full and concurrency) are
`make reliability`; RELIABILITY.md has their measured results. Everything here runs the real CLI against the real
local servers through FaultProxy, from fixed seeds, so a failure reproduces with the command in its message.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from downloader import is_ready
from tests.conftest import S3Server
from tests.faultproxy import Callback, FaultProxy, FlipBit, RequestRecord, RewriteHeader, Rule, Throttle
from tests.reliability import (
    KINDS,
    PASSING,
    SOURCES,
    HfDeployment,
    Lab,
    MountNotPermitted,
    classify,
    cli_args,
    concurrent_scenario,
    crash_campaign,
    disk_full_scenario,
    finish_cli,
    model_dir_of,
    outcome_table,
    run_trials,
    start_cli,
)
from tests.synthetic import MiB, random_bytes

pytestmark = pytest.mark.slow

SEED = 1
CI_TRIALS = range(24)  # trial i has primary fault KINDS[i // 3 % 8] on SOURCES[i % 3]: every pair once


@pytest.fixture(scope="module")
def lab(s3_server: S3Server) -> Iterator[Lab]:
    with Lab(s3_server.host, s3_server.port) as lab:
        yield lab


def test_randomized_trials_end_correct_or_clearly_failed(lab: Lab, tmp_path: Path) -> None:
    results = run_trials(lab, SEED, CI_TRIALS, tmp_path, jobs=2)
    table = outcome_table(results)
    print(table)
    assert {(r.source, r.primary) for r in results} == {(s, k) for s in SOURCES for k in KINDS}
    replay = f"replay one with: python -m tests.reliability trials --seed {SEED} --only N -v\n{table}"
    failing = [r for r in results if r.outcome not in PASSING]
    assert failing == [], replay
    # Not vacuous: the faults really happened, and most trials recovered from them.
    assert sum(1 for r in results if sum(r.fired) > 0) >= 0.8 * len(results), replay
    assert sum(1 for r in results if r.outcome == "OK") >= 0.6 * len(results), replay
    for r in results:
        if r.outcome == "OK":
            assert r.object_bytes >= r.model_bytes  # every byte on disk came through the proxy


def test_kill_9_at_random_moments_then_resume(lab: Lab, tmp_path: Path) -> None:
    files = {"config.json": b"{}", **{f"model-{i}.safetensors": random_bytes(4 * MiB + i, i) for i in (1, 2, 3)}}
    result = crash_campaign(lab, "s3", 5, SEED, tmp_path, files=files)
    print(
        f"{result.kills} kills at {result.kill_moments}s; re-fetched {result.refetched} of {result.model_bytes} "
        f"bytes (bound {result.bound}); {result.resumed_runs} runs resumed"
    )
    assert result.final.outcome == "OK", result.final.reason  # the final bytes are identical, with a manifest
    assert result.kills == 5 and result.finished_early == 0
    assert 0 <= result.refetched <= result.bound  # only ranges in flight at a kill are fetched again


def test_disk_full_names_both_numbers_and_the_next_run_fetches_only_what_is_missing(lab: Lab, tmp_path: Path) -> None:
    try:
        d = disk_full_scenario(lab, "s3", tmp_path, seed=SEED)
    except MountNotPermitted as exc:
        pytest.skip(f"needs root to mount a small tmpfs: {exc}")
    # A model twice the size of the filesystem: refused before any byte, naming both numbers.
    assert d.fresh.outcome == "CLEAN-FAIL" and "exit 6" in d.fresh.reason, d.fresh
    assert d.fresh_needed == d.model_bytes
    assert d.fresh_available is not None and 0 < d.fresh_available <= d.model_bytes // 2
    assert d.fresh_object_bytes == 0
    # Part of the model done, then the disk filled by someone else: the same clear error, nothing fetched.
    assert d.done_before_fill > 0
    assert d.filled.outcome == "CLEAN-FAIL" and "not enough free space" in d.filled.reason, d.filled
    assert d.filled_needed is not None and d.filled_available is not None
    assert d.filled_needed > d.filled_available
    assert abs(d.filled_available - d.filled_free_at_check) <= 256 * 1024  # what statvfs says, give or take
    assert d.filled_needed <= d.model_bytes - d.done_before_fill
    assert d.filled_object_bytes == 0
    # Space freed: complete, and the files finished before were not fetched again.
    assert d.final.outcome == "OK", d.final.reason
    assert d.refetched_done_bytes == 0
    assert d.final_object_bytes <= d.model_bytes - d.done_before_fill


@pytest.mark.parametrize("source", SOURCES)
def test_eight_processes_one_directory(lab: Lab, tmp_path: Path, source: str) -> None:
    c = concurrent_scenario(lab, source, tmp_path, processes=8, seed=SEED)
    assert [v.outcome for v in c.verdicts] == ["OK"] * 8, c.verdicts
    assert c.waited >= 1  # they really overlapped: the lock made the others wait
    assert c.object_bytes <= 1.05 * c.model_bytes, c


@pytest.mark.parametrize("source", ["s3", "gcs"])
def test_object_replaced_by_one_of_another_size_gets_a_consistent_manifest(
    lab: Lab, tmp_path: Path, source: str
) -> None:
    """Reproduces trials 18 and 19 of seed 1 in isolation."""
    shard = "model-00001-of-00001.safetensors"
    dep = lab.publish(source, {"config.json": b"{}", shard: random_bytes(4 * MiB + 3, 5)})
    try:
        smaller = random_bytes(3 * MiB + 7, 6)

        def replace(_record: RequestRecord) -> None:
            dep.replace(shard, smaller)

        dep.data_proxy.add_rule(Rule(Callback(replace), match_method="GET", match_path=dep.file_pattern(shard)))
        code, out, err = finish_cli(start_cli(cli_args(dep.uri, tmp_path, 2), dep), 120)
        assert code == 0 and "changed during download" in err, err
        model_dir = model_dir_of(tmp_path, dep)
        assert (model_dir / shard).read_bytes() == smaller  # the bytes are right...
        verdict = classify(code, out, err, model_dir, dep)
        assert verdict.outcome == "OK", verdict.reason  # ...and so is the manifest's size
        assert is_ready(str(model_dir))
    finally:
        dep.close()


def test_flipped_bit_in_a_small_hub_file_is_caught(tmp_path: Path) -> None:
    dep = HfDeployment({"config.json": b'{"architectures": ["DemoForCausalLM"], "hidden_size": 64}'})
    try:
        dep.small_proxy.add_rule(Rule(FlipBit(5, 1), match_method="GET", match_path=dep.file_pattern("config.json")))
        code, out, err = finish_cli(start_cli(cli_args(dep.uri, tmp_path, 2), dep), 120)
        verdict = classify(code, out, err, model_dir_of(tmp_path, dep), dep)
        assert verdict.outcome in PASSING, verdict.reason
    finally:
        dep.close()


def test_faultproxy_additions(s3_server: S3Server) -> None:
    """Throttle paces bodies, RewriteHeader can lie relative to the truth, rewrite_path changes the query."""
    import boto3

    s3_server.client().create_bucket(Bucket="proxy-additions")  # type: ignore[attr-defined]
    body = random_bytes(300_000, 9)
    direct = s3_server.client()
    for key in ("a", "b", "c"):
        direct.put_object(Bucket="proxy-additions", Key=key, Body=body)  # type: ignore[attr-defined]
    with FaultProxy(s3_server.host, s3_server.port) as proxy:
        client = boto3.client("s3", endpoint_url=proxy.url)
        proxy.rewrite_path = lambda path: path.replace("list-type=2", "list-type=2&max-keys=1")
        pages = list(client.get_paginator("list_objects_v2").paginate(Bucket="proxy-additions"))
        assert [len(p["Contents"]) for p in pages] == [1, 1, 1]  # the server saw max-keys=1
        assert all("max-keys" not in r.path for r in proxy.log)  # the records keep what the client sent
        proxy.rewrite_path = None
        proxy.add_rule(Rule(Throttle(600_000), times=1))
        proxy.add_rule(Rule(RewriteHeader("Content-Range", lambda v: f"{v}, really"), times=1))
        started = time.monotonic()
        assert client.get_object(Bucket="proxy-additions", Key="a")["Body"].read() == body
        assert time.monotonic() - started >= 0.4  # 300 kB at 600 kB/s: paced (a lower bound no load can break)
        got = client.get_object(Bucket="proxy-additions", Key="a", Range="bytes=10-19")
        assert got["ContentRange"] == "bytes 10-19/300000, really" and got["Body"].read() == body[10:20]
