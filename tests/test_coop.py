"""Cooperative download (downloader/coop, sidecar/peers.py): real sidecars in native mode, each running a real
aibrix-download, on 127.0.0.1, against one S3 server behind a FaultProxy that counts what the origin sends."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from downloader.config import build_arg_parser, load_settings
from downloader.coop.members import Members, file_ends, file_owners, owner, range_key
from downloader.coop.protocol import REFUSAL_HEADER, VERSION_HEADER, file_target
from downloader.errors import ConfigError
from tests.conftest import REPO, WAIT_LIMIT, cli_env, journal_ranges, read_tree, wait_until
from tests.faultproxy import Action, Callback, FaultProxy, FlipBit, Rule, Stall
from tests.gcs_server import free_port
from tests.synthetic import MiB, random_bytes, upload

TOKEN = "group-token-0123456789abcdef"
SHARD = 6 * MiB
# Ranges of 1 MiB from 2 MiB on: each shard is 6 ranges, spread over the members by rendezvous hashing.
RANGED = ["--part-threshold", "2MiB", "--part-chunksize", "1MiB", "--num-threads", "4", "--progress-interval", "0.2"]


class Member:
    """One member of the group: `aibrix-sidecar --port <port> -- <aibrix-download args>`, reached by the others at
    `url` (its own port, or a proxy in front of it)."""

    def __init__(
        self,
        port: int,
        urls: list[str],
        uri: str,
        local_dir: Path,
        endpoint: str,
        url: str = "",
        stall_timeout: float = 5,
        **env: str,
    ) -> None:
        self.port = port
        self.url = url or f"http://127.0.0.1:{port}"
        self.model_dir = local_dir / "m"
        args = [sys.executable, "-m", "sidecar", "--host", "127.0.0.1", "--port", str(port), "--poll-interval", "0.2"]
        args += ["--", "--model-uri", uri, "--local-dir", str(local_dir), *RANGED]
        args += ["--peers", ",".join(urls), "--peer-self", self.url, "--peer-stall-timeout", f"{stall_timeout:g}"]
        self.proc = subprocess.Popen(
            args,
            env=cli_env(endpoint, **{"DOWNLOADER_PEER_TOKEN": TOKEN, **env}),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            start_new_session=True,
        )
        self.log: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def get(self, path: str, **kw: object) -> httpx.Response:
        return self.http.get(path, **kw)  # type: ignore[arg-type]

    def ready(self) -> bool:
        try:
            return self.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def status(self) -> dict[str, object]:
        return dict(self.get("/status").json())

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out = {}
        for family in text_string_to_metric_families(self.get("/metrics").text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def text(self) -> str:
        return "".join(self.log)

    def kill(self) -> None:
        """SIGKILL the sidecar and its download child (its own session)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def close(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def group(uri: str, tmp_path: Path, endpoints: list[str], stall_timeout: float = 5) -> list[Member]:
    """One member per entry of `endpoints` (where that member reaches the origin), each knowing every other."""
    ports = [free_port() for _ in endpoints]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    return [
        Member(p, urls, uri, tmp_path / f"member{i}", endpoints[i], stall_timeout=stall_timeout)
        for i, p in enumerate(ports)
    ]


@pytest.fixture
def model(s3: object, bucket: str) -> tuple[str, dict[str, bytes]]:
    files = {f"model-0000{i}-of-00003.safetensors": random_bytes(SHARD, 10 + i) for i in range(1, 4)}
    files["config.json"] = b'{"model_type": "demo"}'
    upload(s3, bucket, "m", files)
    return bucket, files


def model_bytes(files: dict[str, bytes]) -> int:
    return sum(len(b) for b in files.values())


def origin_body_bytes(proxy: FaultProxy) -> int:
    """Bytes of object bodies the origin sent (GETs)."""
    return sum(r.body_bytes for r in list(proxy.log) if r.method == "GET")


@pytest.mark.slow
def test_members_share_the_download_and_end_with_identical_bytes(proxy: FaultProxy, model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = model
    # A peer's share is waited for (and a peer that is still starting asked again) for up to this long before its
    # ranges come from the origin: long enough that a busy machine's slow start or slow share is waited for.
    members = group(f"s3://{bucket}/m/", tmp_path, [proxy.url] * 3, stall_timeout=60)
    try:
        for m in members:
            wait_until(f"{m.url} ready\n{m.text()}", m.ready)
        for m in members:
            assert read_tree(str(m.model_dir)) == files
        total = model_bytes(files)
        origin = origin_body_bytes(proxy)
        # Every byte from the origin once, plus at most a few ranges fetched again where a peer broke off (the small
        # files always come from the origin: each member fetches config.json itself).
        reports = [m.status()["cooperation"] for m in members]
        assert origin <= total + 3 * len(files["config.json"]) + 3 * MiB, f"{origin} {total} {json.dumps(reports)}"
        from_peers = 0
        for m in members:
            status = m.status()
            coop = status["cooperation"]
            assert isinstance(coop, dict)
            assert coop["self_url"] == m.url and sorted(coop["members"]) == sorted(x.url for x in members)
            assert 0 < coop["share_bytes"] < coop["planned_bytes"]
            from_peers += int(coop["bytes_from_peers"])
            metrics = m.metrics()
            assert (
                metrics[("aibrix_download_bytes_by_source_total", (("source", "origin"),))] == coop["bytes_from_origin"]
            )
            assert metrics[("aibrix_download_bytes_by_source_total", (("source", "peer"),))] == coop["bytes_from_peers"]
            assert TOKEN not in m.text() and TOKEN not in json.dumps(status)
        assert from_peers >= 3 * SHARD  # each member got most of what it does not own from its peers
    finally:
        for m in members:
            m.close()


@pytest.mark.slow
def test_the_peer_route_refuses_callers_without_the_group_token(proxy: FaultProxy, s3, model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = model
    uri = f"s3://{bucket}/m/"
    (member,) = group(uri, tmp_path, [proxy.url])
    intruder: Member | None = None
    try:
        wait_until(f"ready\n{member.text()}", member.ready)
        name = "model-00001-of-00003.safetensors"
        version = s3.head_object(Bucket=bucket, Key=f"m/{name}")["ETag"]
        headers = {"Range": "bytes=0-99", VERSION_HEADER: version}
        for auth in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
            r = member.get(file_target(name), headers={**headers, **auth})
            assert r.status_code == 401 and r.headers[REFUSAL_HEADER] == "token", auth
            assert files[name][:100] not in r.content
        ok = member.get(file_target(name), headers={**headers, "Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 206 and ok.content == files[name][:100]
        assert ok.headers["content-range"] == f"bytes 0-99/{SHARD}"
        for bad in ("..%2Fm%2Fconfig.json", ".aibrix/manifest.json", "%2Fetc%2Fpasswd"):
            r = member.get("/peer/v1/file/" + bad, headers={**headers, "Authorization": f"Bearer {TOKEN}"})
            assert r.status_code == 400 and r.headers[REFUSAL_HEADER] == "path", bad
        other = member.get(
            file_target(name), headers={**headers, "Authorization": f"Bearer {TOKEN}", VERSION_HEADER: '"x"'}
        )
        assert other.status_code == 412 and other.headers[REFUSAL_HEADER] == "version"

        # A verified file replaced by a symlink to a file outside the model directory that has the same bytes,
        # size and modification time is not served: nothing below the model directory is reached through a link.
        linked = "model-00002-of-00003.safetensors"
        outside = tmp_path / "outside.safetensors"
        outside.write_bytes(files[linked])
        recorded = (member.model_dir / linked).stat()
        os.utime(outside, ns=(recorded.st_atime_ns, recorded.st_mtime_ns))
        (member.model_dir / linked).unlink()
        (member.model_dir / linked).symlink_to(outside)
        linked_version = s3.head_object(Bucket=bucket, Key=f"m/{linked}")["ETag"]
        r = member.get(
            file_target(linked),
            headers={"Range": "bytes=0-99", VERSION_HEADER: linked_version, "Authorization": f"Bearer {TOKEN}"},
        )
        assert r.status_code == 503 and r.headers[REFUSAL_HEADER] == "not-mine"

        # A member of another group (another token) is refused every range; it fetches them from the origin.
        wrong_token = "another-group-token-0123456789"
        port = free_port()
        urls = [member.url, f"http://127.0.0.1:{port}"]
        intruder = Member(port, urls, uri, tmp_path / "intruder", proxy.url, DOWNLOADER_PEER_TOKEN=wrong_token)
        wait_until(f"intruder ready\n{intruder.text()}", intruder.ready)
        assert read_tree(str(intruder.model_dir)) == files
        seen = intruder.status()["cooperation"]["peers"][member.url]  # type: ignore[index]
        assert seen["state"] == "down" and seen["refusals"]["token"] >= 1 and seen["bytes"] == 0, seen
        assert wrong_token not in intruder.text()
        metrics = member.metrics()
        assert metrics[("aibrix_peer_refusals_total", (("reason", "token"),))] >= 4  # the three above, the intruder
        # The one 100-byte answer above is all it ever served.
        assert {k: v for k, v in metrics.items() if k[0] == "aibrix_peer_served_bytes_total"} == {
            ("aibrix_peer_served_bytes_total", (("peer", "other"),)): 100.0
        }
    finally:
        for m in (member, intruder):
            if m is not None:
                m.close()


@pytest.mark.slow
def test_a_member_killed_mid_download_leaves_the_others_to_finish(  # type: ignore[no-untyped-def]
    s3_server, proxy: FaultProxy, model, tmp_path: Path
) -> None:
    bucket, files = model
    # The survivors' origin holds every ranged GET until the victim is dead, so neither can finish before that.
    killed = threading.Event()
    proxy.add_rule(Rule(Callback(lambda _: killed.wait(WAIT_LIMIT)), match_method="GET", only_ranged=True, times=-1))
    # The victim's own origin answers its first ranged GET, then nothing: it is surely mid-download when killed.
    with FaultProxy(s3_server.host, s3_server.port) as victim_origin:
        victim_origin.add_rule(Rule(Stall(seconds=600), match_method="GET", only_ranged=True, skip=1, times=-1))
        members = group(f"s3://{bucket}/m/", tmp_path, [victim_origin.url, proxy.url, proxy.url])
        victim, survivors = members[0], members[1:]
        try:
            wait_until("the victim has finished a range", lambda: journal_ranges(victim.model_dir) >= 1)
            victim.kill()
            killed.set()
            for m in survivors:
                wait_until(f"{m.url} ready\n{m.text()}", m.ready)
                assert read_tree(str(m.model_dir)) == files
                coop = m.status()["cooperation"]
                assert isinstance(coop, dict)
                assert coop["peers"][victim.url]["state"] == "down"
            assert not (victim.model_dir / ".aibrix" / "manifest.json").exists()
        finally:
            killed.set()
            for m in members:
                m.close()


@contextlib.contextmanager
def pair_with_a_bad_path(origin: str, uri: str, tmp_path: Path, action: Action) -> Iterator[tuple[Member, Member]]:
    """Two members, yielded (good, bad) once both have the model. `bad` has all of it before `good` starts, so it
    has every range `good` asks it for; `good` reaches it only through a proxy applying `action` to every peer
    request."""
    bad_port, good_port = free_port(), free_port()
    with FaultProxy("127.0.0.1", bad_port) as bad_path:
        bad_path.add_rule(Rule(action, match_method="GET", match_path="^/peer/", times=-1))
        urls = [bad_path.url, f"http://127.0.0.1:{good_port}"]
        members: list[Member] = []
        try:
            for port, name, url in ((bad_port, "bad", urls[0]), (good_port, "good", urls[1])):
                m = Member(port, urls, uri, tmp_path / name, origin, url)
                members.append(m)
                wait_until(f"{name} ready\n{m.text()}", m.ready)
            assert bad_path.log, "the good member never asked the bad one for anything"
            yield members[1], members[0]
        finally:
            for m in members:
                m.close()


@pytest.mark.slow
def test_corrupt_bytes_from_a_peer_are_caught_and_fetched_again_from_the_origin(
    proxy: FaultProxy, model, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bucket, files = model
    # A bit flipped in every range the liar serves.
    with pair_with_a_bad_path(proxy.url, f"s3://{bucket}/m/", tmp_path, FlipBit(offset=1000)) as (honest, liar):
        for m in (honest, liar):
            assert read_tree(str(m.model_dir)) == files
        coop = honest.status()["cooperation"]
        assert isinstance(coop, dict)
        assert coop["files_refetched"] >= 1
        assert coop["peers"][liar.url]["state"] == "dropped"
        metrics = honest.metrics()
        assert metrics[("aibrix_download_peer_refetched_files_total", ())] == coop["files_refetched"]
        assert metrics[("aibrix_download_peer_state", (("peer", liar.url), ("state", "dropped")))] == 1.0


@pytest.mark.slow
def test_a_peer_that_goes_silent_is_skipped_after_the_stall_timeout(proxy: FaultProxy, model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bucket, files = model
    # A little of every range the silent member serves, then nothing.
    stall = Stall(seconds=600, after_bytes=4096)
    with pair_with_a_bad_path(proxy.url, f"s3://{bucket}/m/", tmp_path, stall) as (other, silent):
        for m in (other, silent):
            assert read_tree(str(m.model_dir)) == files
        peer = other.status()["cooperation"]["peers"][silent.url]  # type: ignore[index]
        assert peer["failures"] >= 1, peer
        assert "no byte for 5s" in other.text()


URI = ["--model-uri", "s3://bucket/m/"]
COOP = [*URI, "--peers", "http://10.0.0.1:8080, http://Node-B.example:8080,dns+http://group.ns.svc:8080"]


def test_peer_settings_are_parsed_into_one_spelling_and_the_token_comes_only_from_a_secret(tmp_path: Path) -> None:
    s = load_settings([*COOP, "--peer-self", "http://10.0.0.1:8080/"], {"DOWNLOADER_PEER_TOKEN": TOKEN})
    assert s.peers is not None
    assert s.peers.members == ("http://10.0.0.1:8080", "http://node-b.example:8080", "dns+http://group.ns.svc:8080")
    assert s.peers.self_url == "http://10.0.0.1:8080" and s.peers.token.reveal() == TOKEN
    assert s.peers.stall_timeout == 30.0
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {"DOWNLOADER_PEER_TOKEN_FILE": str(token_file), "DOWNLOADER_PEER_STALL_TIMEOUT": "5"}
    s = load_settings([*COOP, "--peer-self", "http://10.0.0.1:8080"], env)
    assert s.peers is not None and s.peers.token.reveal() == TOKEN and s.peers.stall_timeout == 5.0
    assert load_settings(URI, {}).peers is None
    with pytest.raises(ConfigError, match="peer-self"):
        load_settings(COOP, {"DOWNLOADER_PEER_TOKEN": TOKEN})
    with pytest.raises(ConfigError, match="set --peers too"):
        load_settings([*URI, "--peer-self", "http://10.0.0.1:8080"], {})
    with pytest.raises(ConfigError, match="token"):
        load_settings([*COOP, "--peer-self", "http://10.0.0.1:8080"], {})
    with pytest.raises(ConfigError) as short:
        load_settings([*COOP, "--peer-self", "http://10.0.0.1:8080"], {"DOWNLOADER_PEER_TOKEN": "short-secret"})
    assert "short-secret" not in str(short.value)
    for bad in ("https://10.0.0.1:8080", "http://10.0.0.1:8080/path", "dns+http://[::1]:80", "http://a:99999"):
        with pytest.raises(ConfigError):
            load_settings(
                [*URI, "--peers", bad, "--peer-self", "http://10.0.0.1:8080"], {"DOWNLOADER_PEER_TOKEN": TOKEN}
            )
    # The token has no flag: a command line is seen by every process of the node.
    assert not re.search(r"--peer-token(?!-file)", build_arg_parser().format_help())


def test_ownership_is_spread_over_the_members_and_a_member_leaving_moves_only_its_own_ranges() -> None:
    members = [f"http://10.0.0.{i}:8080" for i in range(1, 5)]
    keys = [range_key(f"model-{f:05d}.safetensors", (r + 1) * 64 * MiB - 1) for f in range(40) for r in range(25)]
    before = {k: owner(members, k) for k in keys}
    counts = {m: sum(1 for o in before.values() if o == m) for m in members}
    assert all(abs(c - len(keys) / 4) < len(keys) / 4 * 0.1 for c in counts.values()), counts
    after = {k: owner(members[1:], k) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == members[0] for k in moved)  # only the leaver's ranges found a new owner


def test_no_member_owns_more_than_its_part_of_a_file_and_never_loses_its_own_share() -> None:
    members = [f"http://10.0.0.{i}:8080" for i in range(1, 5)]
    for n in (2, 3, 4):
        for ranges in (1, 5, 24, 97):
            ends = file_ends(ranges * MiB - 3, MiB)
            owners = file_owners(members[:n], "model.safetensors", ends)
            assert sorted(owners) == ends
            counts = [sum(1 for o in owners.values() if o == m) for m in members[:n]]
            assert max(counts) == -(-ranges // n), (n, ranges, counts)  # the largest share: ceil(ranges / n)
    ends = file_ends(96 * MiB, MiB)
    group = Members(members, members[2])
    every = file_owners(members, "f", ends)
    for end in ends:
        chosen = group.file_owner("f", ends, end, leaving_out=[members[0], members[2]])
        if every[end] == members[2]:
            assert chosen == members[2]  # its own share among all stays its own: it fetched it from the origin
        assert chosen != members[0]


def test_dns_members_are_every_address_of_the_name() -> None:
    answers = {("group.ns.svc", 8080): ["http://10.0.0.2:8080", "http://10.0.0.3:8080"]}
    group = Members(["dns+http://group.ns.svc:8080"], "http://10.0.0.2:8080", lambda n, p: answers[(n, p)])
    try:
        assert group.current() == ("http://10.0.0.2:8080", "http://10.0.0.3:8080")
    finally:
        group.close()


def test_a_member_whose_download_just_ended_serves_what_it_finished(tmp_path: Path) -> None:
    """The peer route shares one reading of the model directory for REFRESH_EVERY. A download that ends within that
    time leaves a file complete that the reading still shows unfinished: the route reads again before it refuses
    ("nobody here fetches it"), and serves the file."""
    import asyncio

    from starlette.requests import Request

    from downloader.state import DoneRecord, JournalHeader, StateDir, temp_name
    from sidecar.peers import PeerRoute

    name, version = "w.safetensors", '"v1"'
    data = random_bytes(256 * 1024, 5)
    model_dir = tmp_path / "m"
    state = StateDir(str(model_dir))
    state.ensure()
    temp = temp_name(name, "tok")
    layout = f"v1 step={len(data)} part=0 digest=-"
    state.start_journal("tok", JournalHeader(name, f"m/{name}", version, None, len(data), temp, layout))
    (model_dir / temp).write_bytes(bytes(len(data)))  # being fetched: no range done yet
    running = [True]
    route = PeerRoute(str(model_dir), TOKEN, lambda: running[0])

    async def ask() -> tuple[int, bytes]:
        headers = {"authorization": f"Bearer {TOKEN}", "range": "bytes=0-99", VERSION_HEADER: version}
        scope = {
            "type": "http",
            "method": "GET",
            "path": file_target(name),
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],  # no wait: answer at once
            "query_string": b"",
            "path_params": {"path": name},
        }

        requested = [False]

        async def receive() -> dict[str, object]:
            if not requested[0]:
                requested[0] = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # the client stays connected; cancelled once the answer is sent
            return {"type": "http.disconnect"}

        sent: list[dict[str, object]] = []

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        response = await route.handle(Request(scope, receive))
        await response(scope, receive, send)
        status = next(int(m["status"]) for m in sent if m["type"] == "http.response.start")  # type: ignore[call-overload]
        return status, b"".join(bytes(m.get("body", b"")) for m in sent if m["type"] == "http.response.body")  # type: ignore[arg-type]

    async def scenario() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        first = await ask()  # its share may still come: not yet
        # The download finishes the file (renamed, recorded, journal gone) and exits, within the shared reading.
        (model_dir / temp).write_bytes(data)
        (model_dir / temp).rename(model_dir / name)
        mtime = (model_dir / name).stat().st_mtime_ns
        state.append_done([DoneRecord(name, version, None, len(data), mtime, None, "size")])
        state.drop_journal("tok")
        running[0] = False
        return first, await ask()

    first, second = asyncio.run(scenario())
    assert first[0] == 503
    assert second == (206, data[:100])
