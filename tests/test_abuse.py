"""Bad input and abuse: hostile object keys, symlinks swapped in mid-download, a 100,000-object listing, and the
sidecar under 1,000 concurrent connections and hostile requests.

Everything runs against real processes and servers on 127.0.0.1: the real `aibrix-download` and `aibrix-sidecar`
in child processes, moto's S3 server (conftest), the fault proxy, and for the big listing a small ListObjectsV2
server that synthesises pages (moto would need minutes to hold 100,000 objects).

Measured figures are printed with a `MEASURED` prefix (`pytest -s` shows them) for RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

import pytest

from downloader import is_ready, read_manifest
from downloader.errors import UnsafePathError
from downloader.plan import check_layout, dropped_load_critical, plan_downloads, select
from downloader.sources.base import RemoteFile
from downloader.state import DoneRecord, LocalStat
from tests.conftest import REPO, S3Server, cli_env, read_tree, run_cli
from tests.faultproxy import Callback, FaultProxy, RequestRecord, Rule
from tests.synthetic import MiB, random_bytes, upload


def measured(what: str, **figures: object) -> None:
    print("MEASURED", what, " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry below root (not following symlinks): kind and size, to prove nothing appeared or changed."""
    out: dict[str, tuple[str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            kind = "link" if os.path.islink(p) else "dir" if os.path.isdir(p) else "file"
            out[os.path.relpath(p, root)] = (kind, 0 if kind == "dir" else st.st_size)
    return out


# ------------------------------------------------------------------------------------- hostile keys


@pytest.mark.parametrize(
    "bad_key, why",
    [
        ("evil/" + "x" * 256 + ".json", "longer than 255 bytes"),  # one component over NAME_MAX
        ("evil/" + "/".join(["d" * 200] * 21) + "/x.json", "longer than 4096 bytes"),  # whole path over PATH_MAX
        ("evil/sub\x01name.json", "control character"),
        ("evil/nul\x00byte.json", "NUL"),  # moto stores it; real S3 refuses it, the plan layer covers both
        ("evil/a/./b.json", "'.'"),
        ("evil/..", "'..'"),
        ("evil/sub/../../../../escaped.json", "'..'"),
        ("evil/sub\\..\\..\\escaped.json", "backslash"),
        ("evil/.aibrix/progress.json", ".aibrix"),
    ],
    ids=[
        "name>255",
        "path>4096",
        "ctrl-01",
        "nul",
        "dot",
        "dotdot-alone",
        "dotdot-deep",
        "backslash",
        "state-dir",
    ],
)
def test_hostile_key_is_refused_before_anything_is_written(
    s3_server: S3Server, s3: object, bucket: str, tmp_path: Path, bad_key: str, why: str
) -> None:
    upload(s3, bucket, "", {"evil/config.json": b"{}", "evil/model.safetensors": b"w" * 1000, bad_key: b"pwned"})
    local = tmp_path / "models"
    before = snapshot(tmp_path)
    r = run_cli(
        ["--model-uri", f"s3://{bucket}/evil/", "--local-dir", str(local), "--log-level", "debug"], s3_server.url
    )
    assert r.returncode == 7, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "refusing object key" in errors[0] and why in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert snapshot(tmp_path) == before  # not even the model directory was created
    # the refusal names the key it refused, in repr form, so a control character cannot forge a log line
    assert "\n" not in errors[0].split("refusing object key", 1)[1]


def test_key_that_is_both_a_file_and_a_folder_prefix(s3_server: S3Server, s3: object, bucket: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    upload(s3, bucket, "m", {"config.json": b"{}", "weights": b"file", "weights/shard-1.bin": b"folder member"})
    before = snapshot(tmp_path)
    r = run_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path / "out")], s3_server.url)
    assert r.returncode == 7, r.stderr
    assert "both a file and a folder prefix" in r.stderr and "'weights'" in r.stderr
    assert snapshot(tmp_path) == before


def test_names_differing_only_in_case_are_both_fetched_with_a_warning(
    s3_server: S3Server, s3: object, bucket: str, tmp_path: Path
) -> None:
    files = {
        "Config.json": b'{"a": 1}',
        "config.json": b'{"b": 2}',
        "sub/Tokenizer.JSON": b"T",
        "sub/tokenizer.json": b"t",
    }
    upload(s3, bucket, "m", files)
    r = run_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path)], s3_server.url)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("differ only in case") == 2
    assert read_tree(str(tmp_path / "m")) == files  # on a case-sensitive filesystem neither overwrote the other
    assert is_ready(str(tmp_path / "m"))


def test_plan_layer_refuses_keys_no_s3_server_would_store() -> None:
    """Keys a real store refuses to hold (the listing of a hostile or broken S3-compatible server could still
    carry them): the plan layer refuses the whole listing and names the key."""
    good = [RemoteFile(f"m/ok-{i}.json", f"ok-{i}.json", 1, "v") for i in range(3)]
    hostile = {
        "": "empty relative path",
        "/etc/cron.d/x": "absolute path",
        "a/\x00/b": "NUL",
        "a\\b": "backslash",
        "a//b": "empty",
        "./a": "'.'",
        "a/..": "'..'",
        "\x1b[2Jclear": "control character",
        "new\nline.json": "control character",  # moto's HTTP layer refuses to store this one
        "é" * 128: "longer than 255 bytes",  # 256 bytes in UTF-8, 128 characters
        ".aibrix": ".aibrix",
        ".aibrix/lock": ".aibrix",
    }
    for rel, why in hostile.items():
        for position in (0, len(good)):  # first or last in the listing: refused either way
            files = [*good[:position], RemoteFile("m/" + rel, rel, 1, "v"), *good[position:]]
            with pytest.raises(UnsafePathError) as info:
                check_layout(files)
            assert why in str(info.value), (rel, str(info.value))
            assert info.value.exit_code == 7
    # the same relative path twice (two keys mapping to one file) and a file under a file
    with pytest.raises(UnsafePathError, match="same local path"):
        check_layout([RemoteFile("m/a", "a", 1, "v"), RemoteFile("n/a", "a", 1, "v")])
    with pytest.raises(UnsafePathError, match="both a file and a folder"):
        check_layout([RemoteFile("m/a/b/c", "a/b/c", 1, "v"), RemoteFile("m/a/b", "a/b", 1, "v")])
    # names that look alarming but are safe stay allowed: dots inside names, unicode, '..' inside a name
    ok = ["a..b.json", "...", "..a", "a/.hidden", "é/ü.json", "\u202eevil.json", "x" * 255, "a b/c d"]
    assert check_layout([RemoteFile("m/" + p, p, 1, "v") for p in ok]) == []


# ------------------------------------------------------------------------------------------ symlinks


SLOW = ["--part-threshold", "1MiB", "--part-chunksize", "1MiB", "--num-threads", "1", "--log-level", "debug"]


def test_directory_symlink_swapped_in_before_its_first_use_is_refused(
    proxy: FaultProxy, s3: object, bucket: str, tmp_path: Path
) -> None:
    """One connection, listing order: the big file first, then zz/late.json. While the big file's first range is
    in flight, zz (not created yet) becomes a symlink to a directory outside the target."""
    files = {"a-big.safetensors": random_bytes(4 * MiB, 3), "zz/late.json": b'{"late": true}'}
    upload(s3, bucket, "m", files)
    outside = tmp_path / "outside"
    outside.mkdir()
    model_dir = tmp_path / "models" / "m"
    swapped: list[bool] = []

    def plant(_record: RequestRecord) -> None:
        if not swapped:
            os.symlink(outside, model_dir / "zz")
            swapped.append(True)

    proxy.add_rule(Rule(Callback(plant), match_method="GET", match_path=r"a-big", only_ranged=True, times=1))
    r = run_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path / "models"), *SLOW], proxy.url)
    assert swapped, "the swap never happened: the test did not exercise the race"
    assert r.returncode == 7, r.stderr[-2000:]
    assert "symlink" in r.stderr and "refusing" in r.stderr and "Traceback" not in r.stderr
    assert os.listdir(outside) == []  # nothing written through the link
    assert read_manifest(str(model_dir)) is None


def test_directory_swapped_for_a_symlink_while_its_file_downloads(
    proxy: FaultProxy, s3: object, bucket: str, tmp_path: Path
) -> None:
    """The directory is already open (its temp file is being filled) when it is renamed away and a symlink to
    an outside directory takes its place: writes go on through the open descriptor, never through the link."""
    files = {"sub/weights.safetensors": random_bytes(4 * MiB, 4), "config.json": b"{}"}
    upload(s3, bucket, "m", files)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_bytes(b"precious")
    model_dir = tmp_path / "models" / "m"
    swapped: list[bool] = []

    def swap(_record: RequestRecord) -> None:
        if not swapped:
            os.rename(model_dir / "sub", model_dir / "sub-moved")
            os.symlink(outside, model_dir / "sub")
            swapped.append(True)

    # skip=1: the first range has been written, so the temp file exists in sub/ when the swap happens
    proxy.add_rule(Rule(Callback(swap), match_method="GET", match_path=r"weights", only_ranged=True, skip=1, times=1))
    before_outside = snapshot(outside)
    r = run_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path / "models"), *SLOW], proxy.url)
    assert swapped
    assert snapshot(outside) == before_outside, "something was written through the symlink"
    assert (outside / "victim.txt").read_bytes() == b"precious"
    assert "Traceback" not in r.stderr
    measured("symlink-swap-open-dir", exit_code=r.returncode, moved=sorted(os.listdir(model_dir / "sub-moved")))
    # The bytes went on into the directory that was open (now sub-moved), but the path a reader would open leads
    # through the link: the run refuses to mark the model ready.
    assert r.returncode == 7, r.stderr[-2000:]
    assert "no longer at its path" in r.stderr
    assert read_manifest(str(model_dir)) is None and not is_ready(str(model_dir))


def test_file_swapped_for_a_symlink_while_it_downloads(proxy: FaultProxy, s3: object, bucket: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = {"weights.safetensors": random_bytes(4 * MiB, 5), "config.json": b"{}"}
    upload(s3, bucket, "m", files)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.bin"
    victim.write_bytes(b"precious")
    model_dir = tmp_path / "models" / "m"
    swapped: list[bool] = []

    def plant(_record: RequestRecord) -> None:
        if not swapped:
            target = model_dir / "weights.safetensors"
            os.symlink(victim, target)
            swapped.append(True)

    proxy.add_rule(Rule(Callback(plant), match_method="GET", match_path=r"weights", only_ranged=True, skip=1, times=1))
    r = run_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path / "models"), *SLOW], proxy.url)
    assert swapped
    assert r.returncode == 0, r.stderr[-2000:]
    assert victim.read_bytes() == b"precious"  # the atomic rename replaced the link, never wrote through it
    assert not os.path.islink(model_dir / "weights.safetensors")
    assert read_tree(str(model_dir)) == files and is_ready(str(model_dir))


# ------------------------------------------------------------------------------- 100,000 objects


def synthetic_listing(n: int) -> list[RemoteFile]:
    """A listing shaped like a big sharded model: nested folders, mixed suffixes, long-ish names."""
    suffixes = ("safetensors", "json", "bin", "py", "txt")
    return [
        RemoteFile(
            key=f"models/huge/layer-{i // 1000:03d}/shard-{i:06d}-of-100000.{suffixes[i % 5]}",
            rel_path=f"layer-{i // 1000:03d}/shard-{i:06d}-of-100000.{suffixes[i % 5]}",
            size=1_000_000 + i,
            version=f'"{i:032x}"',
        )
        for i in range(n)
    ]


def plan_everything(files: list[RemoteFile]) -> tuple[int, int, int]:
    """What run.py does between the listing and the first byte: filter, warnings, layout check, skip plan."""
    selected, dropped = select(files, ("json", "safetensors", "py"), ("*",), ("layer-099/*",))
    dropped_load_critical(dropped)
    check_layout(selected)
    half = {f.rel_path: DoneRecord(f.rel_path, f.version, None, f.size, 7, None, "size") for f in selected[::2]}
    local = {f.rel_path: (LocalStat(f.size, 7, True) if f.rel_path in half else None) for f in selected}
    plan = plan_downloads(selected, half, local, force=False)
    return len(selected), len(plan.fetch), len(plan.skip)


def test_plan_for_100k_objects_is_fast_and_memory_bounded() -> None:
    seconds = {}
    for n in (10_000, 100_000):
        files = synthetic_listing(n)
        # the best of three: one run can lose a second to the scheduler on 2 shared cores
        for _ in range(3):
            gc.collect()
            started = time.perf_counter()
            selected, fetch, skip = plan_everything(files)
            seconds[n] = min(seconds.get(n, float("inf")), time.perf_counter() - started)
        assert selected == fetch + skip == sum(1 for i in range(n) if i % 5 in (0, 1, 3) and i // 1000 != 99)
        assert skip == (selected + 1) // 2
    # memory in a second pass: tracemalloc slows Python code down about 4x, so it must not skew the timing
    gc.collect()
    tracemalloc.start()
    plan_everything(files)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    measured("plan-10000", seconds=f"{seconds[10_000]:.2f}")
    measured("plan-100000", seconds=f"{seconds[100_000]:.2f}", peak_mib=f"{peak / MiB:.1f}",
             bytes_per_object=peak // 100_000)  # fmt: skip
    assert seconds[100_000] < 10, f"planning 100k objects took {seconds[100_000]:.1f}s"  # generous: 2 shared cores
    assert seconds[100_000] < 30 * seconds[10_000] + 1  # linear, not quadratic, in the listing
    # what planning allocates on top of the listing itself (the RemoteFile objects already exist)
    assert peak < 64 * MiB, f"planning 100k objects peaked at {peak / MiB:.0f} MiB above the listing itself"


# Objects in the real-CLI listing test. 100,000 takes ~35 s on 2 shared cores (botocore spends ~3/4 of it parsing
# LastModified timestamps with dateutil), too long for every run; the default keeps the test at ~8 s.
LISTING_OBJECTS = int(os.environ.get("ABUSE_LISTING_OBJECTS", "20000"))


class _ListingHandler(BaseHTTPRequestHandler):
    """ListObjectsV2 over `count` synthetic keys, 1,000 per page (as S3 pages), continuation tokens as S3 uses."""

    count = 100_000
    page = 1000
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        query = parse_qs(urlsplit(self.path).query)
        start = int(query.get("continuation-token", ["0"])[0])
        prefix = query.get("prefix", [""])[0]
        end = min(self.count, start + self.page)
        items = "".join(
            f"<Contents><Key>{escape(prefix)}d{i // 1000:03d}/f{i:06d}.json</Key><LastModified>2024-01-01T00:00:00.000Z"
            f"</LastModified><ETag>&quot;{i:032x}&quot;</ETag><Size>{100 + i}</Size><StorageClass>STANDARD"
            f"</StorageClass></Contents>"
            for i in range(start, end)
        )
        more = end < self.count
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>big</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{end - start}</KeyCount>"
            "<MaxKeys>1000</MaxKeys>"
            f"<IsTruncated>{'true' if more else 'false'}</IsTruncated>{items}"
            + (f"<NextContinuationToken>{end}</NextContinuationToken>" if more else "")
            + "</ListBucketResult>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_real_listing_through_the_cli(tmp_path: Path) -> None:
    """The real CLI (boto3 paginator, S3 source, filter, layout check, dry-run plan) over pages of 1,000 keys
    (ABUSE_LISTING_OBJECTS, default 20,000; 100,000 for the figures in RELIABILITY.md). Peak RSS from wait4(2)."""
    n = LISTING_OBJECTS
    handler = type("Listing", (_ListingHandler,), {"count": n})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    out = tmp_path / "dry-run.txt"
    try:
        started = time.monotonic()
        with open(out, "w") as fh:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "downloader",
                    "--model-uri",
                    "s3://big/models/huge/",
                    "--local-dir",
                    str(tmp_path / "models"),
                    "--dry-run",
                    "--s3-addressing-style",
                    "path",
                ],
                env=cli_env(url),
                stdout=fh,
                stderr=subprocess.PIPE,
                cwd=REPO,
            )
            assert proc.stderr is not None
            # VmHWM of the child's own address space (it resets at exec, unlike ru_maxrss, which would report
            # the forked copy of this big pytest process), sampled until the child exits
            peak_kib = [0]

            def sample() -> None:
                while proc.poll() is None:
                    with contextlib.suppress(OSError):
                        text = Path(f"/proc/{proc.pid}/status").read_text()
                        m = re.search(r"VmHWM:\s+(\d+) kB", text)
                        if m and "python" in Path(f"/proc/{proc.pid}/cmdline").read_text():
                            peak_kib[0] = max(peak_kib[0], int(m.group(1)))
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            stderr = proc.stderr.read().decode()
            proc.wait()
            sampler.join()
        seconds = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, stderr[-2000:]
    lines = out.read_text().splitlines()
    assert len(lines) == n + 1 and lines[-1].startswith(f"total: {n} files")
    rss_mib = peak_kib[0] / 1024
    assert rss_mib > 20  # the sampler saw the child
    measured(f"listing-cli objects={n}", seconds=f"{seconds:.1f}", peak_rss_mib=f"{rss_mib:.0f}")
    assert seconds < 60 * max(1, n // 100_000), f"listing and planning {n} objects took {seconds:.0f}s"
    # a fresh interpreter with boto3 is ~70 MiB; the listing adds about 1.3 KiB per object at most
    assert rss_mib < 160 + n * 1.3 / 1024, f"peak RSS {rss_mib:.0f} MiB for a {n}-object listing"
    assert not (tmp_path / "models").exists()  # a dry run writes nothing


# ------------------------------------------------------------------------------------------ sidecar


class SidecarProcess:
    """The real aibrix-sidecar on 127.0.0.1:<ephemeral>, watching a model directory."""

    def __init__(self, model_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "--host", "127.0.0.1", "--port", "0", "--model-dir", str(model_dir)],
            env=cli_env("http://127.0.0.1:9"),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
        )
        assert self.proc.stderr is not None
        self.log: list[str] = []
        deadline = time.monotonic() + 30
        self.port = 0
        while time.monotonic() < deadline and not self.port:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
        assert self.port, "".join(self.log)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)

    def raw(self, request: bytes, timeout: float = 10) -> tuple[int, bytes]:
        """Send exactly these bytes (no client-side path normalisation) and return (status, whole response)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(request)
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except TimeoutError:
                    break
                if not chunk:
                    break
                data += chunk
        m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
        return (int(m.group(1)) if m else 0), data

    def get(self, target: str, method: str = "GET") -> tuple[int, bytes]:
        return self.raw(f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())

    def close(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def sidecar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sidecar")


@pytest.fixture(scope="module")
def sidecar(s3_server: S3Server, sidecar_root: Path) -> Iterator[SidecarProcess]:
    """One sidecar for the module (each test leaves it as it found it, and checks that it is still up)."""
    s3 = s3_server.client()
    bucket = "sidecar-abuse"
    s3.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    files = {"config.json": b'{"model_type": "demo"}', "secret-sentinel.txt": b"SENTINEL-FILE-CONTENT-7f3a"}
    upload(s3, bucket, "m", files)
    r = run_cli(["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(sidecar_root)], s3_server.url)
    assert r.returncode == 0, r.stderr
    side = SidecarProcess(sidecar_root / "m")
    try:
        yield side
    finally:
        if side.proc.poll() is None:
            assert side.close() == 143


def _raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


async def _probe_storm(port: int, n: int, path: str) -> tuple[list[float], list[str], float]:
    """Open n connections at once, keep them all open, then send one probe on each; latency per probe."""

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)

    t0 = time.perf_counter()
    conns = await asyncio.gather(*(connect() for _ in range(n)), return_exceptions=True)
    connect_seconds = time.perf_counter() - t0
    failures = [repr(c) for c in conns if isinstance(c, BaseException)]
    live = [c for c in conns if not isinstance(c, BaseException)]

    async def probe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
        started = time.perf_counter()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        m = re.search(rb"content-length: (\d+)", head, re.I)
        assert m and re.match(rb"HTTP/1\.1 (200|503) ", head), head[:200]
        await asyncio.wait_for(reader.readexactly(int(m.group(1))), 30)
        return time.perf_counter() - started

    results = await asyncio.gather(*(probe(r, w) for r, w in live), return_exceptions=True)
    for _, w in live:
        w.close()
    latencies = [x for x in results if isinstance(x, float)]
    failures += [repr(x) for x in results if not isinstance(x, float)]
    return latencies, failures, connect_seconds


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.mark.parametrize("path", ["/readyz", "/status"])
def test_sidecar_answers_1000_concurrent_probe_connections(sidecar: SidecarProcess, path: str) -> None:
    n = 1000
    _raise_nofile(n + 200)
    latencies, failures, connect_seconds = asyncio.run(_probe_storm(sidecar.port, n, path))
    ms = [x * 1000 for x in latencies]
    measured(
        f"sidecar-1000-connections {path}",
        answered=f"{len(latencies)}/{n}",
        connect_all_s=f"{connect_seconds:.2f}",
        p50_ms=f"{_pct(ms, 0.5):.0f}",
        p95_ms=f"{_pct(ms, 0.95):.0f}",
        p99_ms=f"{_pct(ms, 0.99):.0f}",
        max_ms=f"{max(ms):.0f}",
    )
    assert failures == [], failures[:5]
    assert len(latencies) == n
    assert max(latencies) < 20, "a probe waited longer than a kubelet would"  # kubelet's default timeout is 1 s;
    # on 2 shared cores with 1,000 requests arriving at once the tail is measured and reported, bounded here
    assert sidecar.proc.poll() is None
    status, body = sidecar.get("/readyz")  # and it still answers afterwards
    assert status == 200 and b'"ok": true' in body


def test_sidecar_answers_probes_while_1000_idle_connections_are_held_open(sidecar: SidecarProcess) -> None:
    """A slowloris-style client: 1,000 connections that never send a request must not starve the kubelet."""
    n = 1000
    _raise_nofile(n + 200)
    idle: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", sidecar.port), timeout=10)
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")  # a request that never ends
            idle.append(s)
        latencies = []
        for _ in range(20):
            started = time.perf_counter()
            status, _ = sidecar.get("/readyz")
            latencies.append(time.perf_counter() - started)
            assert status == 200
        measured("sidecar-probe-with-1000-idle", p50_ms=f"{_pct(latencies, 0.5) * 1000:.1f}",
                 max_ms=f"{max(latencies) * 1000:.1f}")  # fmt: skip
        # the kubelet's default probe timeout is 1 s: the typical probe within it; one that waited on 2 shared cores
        # for the scheduler is reported above, and bounded loosely
        assert _pct(latencies, 0.5) < 1 and max(latencies) < 20
    finally:
        for s in idle:
            s.close()
    assert sidecar.proc.poll() is None


HOSTILE_TARGETS = [
    "/../../etc/passwd",
    "/status/../x",
    "/status/../../../../etc/passwd",
    "//etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/..%2f..%2fetc%2fpasswd",
    "/etc/passwd",
    "/proc/self/environ",
    "/.aibrix/manifest.json",
    "/secret-sentinel.txt",
    "/config.json",
    "/static/../../secret-sentinel.txt",
    "/metrics/../secret-sentinel.txt",
    "/docs",
    "/openapi.json",
    "/redoc",
    "http://127.0.0.1/etc/passwd",
    "/status%00.json",
    "/" + "a" * 8000,
]


def test_sidecar_exposes_no_file_and_no_write_endpoint(sidecar: SidecarProcess, sidecar_root: Path) -> None:
    model_dir = sidecar_root / "m"
    before = snapshot(sidecar_root)
    secrets = (b"root:", b"SENTINEL-FILE-CONTENT", b"AWS_SECRET_ACCESS_KEY", b"testing-secret-key")
    answered = 0
    for target in HOSTILE_TARGETS:
        for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"):
            status, response = sidecar.get(target, method)
            answered += 1
            assert status in (400, 404, 405, 414, 431), (method, target, response[:300])
            assert not any(s in response for s in secrets), (method, target, response[:300])
    # the real endpoints take only GET (and HEAD, which Starlette adds to GET routes)
    for target in ("/healthz", "/readyz", "/ready", "/status", "/metrics"):
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            body = b'{"model_dir": "/etc"}'
            request = (f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body  # fmt: skip
            status, response = sidecar.raw(request)
            answered += 1
            assert status == 405, (method, target, response[:300])
        # query strings and dot segments after a real path change nothing and read nothing
        for suffix in ("?file=/etc/passwd", "?path=../secret-sentinel.txt", "/.", "/x/.."):
            status, response = sidecar.get(target + suffix)
            answered += 1
            assert not any(s in response for s in secrets), (target + suffix, response[:300])
    # a request line with TRACE/CONNECT/garbage is answered, not crashed on
    for line in (b"TRACE / HTTP/1.1", b"CONNECT 127.0.0.1:22 HTTP/1.1", b"GET", b"\x16\x03\x01\x02\x00"):
        status, response = sidecar.raw(line + b"\r\nHost: x\r\nConnection: close\r\n\r\n", timeout=5)
        answered += 1
        assert not any(s in response for s in secrets)
    measured("sidecar-hostile-requests", requests=answered)
    assert snapshot(sidecar_root) == before, "a request changed files"
    assert read_manifest(str(model_dir)) is not None
    assert sidecar.proc.poll() is None
    status, _ = sidecar.get("/readyz")
    assert status == 200


@pytest.mark.parametrize("xmlns", [' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"', ""])
def test_a_listing_page_is_read_in_its_namespace_or_none(xmlns: str) -> None:
    """Keys percent-decoded (a form encoding: '+' is a space), sizes and ETags per entry, the continuation token only
    while the page says it is truncated, and a truncated page with an empty token ends the listing (never asks for
    the first page again)."""
    from downloader.sources.s3_rest import parse_list

    def page(truncated: str, token: str | None) -> bytes:
        return (
            f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult{xmlns}><Name>b</Name><EncodingType>url'
            f"</EncodingType><IsTruncated>{truncated}</IsTruncated><Contents><Key>m/a%2Bb+c.json</Key>"
            "<ETag>&quot;e1&quot;</ETag><Size>12</Size><Owner><ID>x</ID></Owner></Contents><Contents><Key>m/d</Key>"
            "<Size></Size><ETag>&quot;e2&quot;</ETag></Contents>"
            + (f"<NextContinuationToken>{token}</NextContinuationToken>" if token is not None else "")
            + "</ListBucketResult>"
        ).encode()

    listed = parse_list(page("true", "t-2"))
    assert listed.objects == [("m/a+b c.json", 12, '"e1"'), ("m/d", 0, '"e2"')]
    assert listed.next_token == "t-2"
    assert parse_list(page("false", "t-2")).next_token is None
    assert parse_list(page("true", "")).next_token is None
    assert parse_list(page("true", None)).next_token is None
