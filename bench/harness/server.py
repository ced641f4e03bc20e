"""SeaweedFS (``weed mini``, all components in one process) as the benchmark's S3 server, and a boto3 client
for the harness's own uploads and checks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import netem

from .common import ACCESS_KEY, REGION, SECRET_KEY, VENV, log


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SeaweedFS:
    """``weed mini`` bound to 127.0.0.1 on free ports, with a static S3 identity."""

    # bench_sidecar.py points this at its own venv when bench/.venv has no weed
    weed: Path = VENV / "bin" / "weed"

    def __init__(self, store_dir: Path, scratch: Path, net: netem.NetEmu | None = None) -> None:
        self.store_dir = store_dir
        self.scratch = scratch
        # with ``net``: run inside its namespace, on its veth address (the relay reaches that over the
        # namespace's own loopback; the harness and unthrottled checks over the veth)
        self.net = net
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.log_path = scratch / "weed.log"
        self.endpoint = ""

    def start(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # weed mini rewrites <store>/mini.options on every start and, on the next start, lets the ip and
        # ip.bind saved there win over -ip/-ip.bind: drop them so a store used in the netns mode (or on
        # loopback) the last time serves on the address asked for now
        opts = self.store_dir / "mini.options"
        with contextlib.suppress(OSError):
            lines = opts.read_text().splitlines(keepends=True)
            keep = [ln for ln in lines if not ln.startswith(("ip=", "ip.bind="))]
            if keep != lines:
                opts.write_text("".join(keep))
        names = ["master", "volume", "filer", "s3", "admin"]
        for n in names:
            self.ports[n] = free_port()
            self.ports[n + ".grpc"] = free_port()
        cfg = self.scratch / "s3.json"
        cfg.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "bench",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        ip = self.net.server_ip if self.net else "127.0.0.1"
        cmd = [
            *(self.net.prefix if self.net else []),
            str(self.weed),
            "mini",
            f"-ip={ip}",
            f"-ip.bind={ip}",
            f"-dir={self.store_dir}",
            f"-s3.config={cfg}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.scratch / 's3.sock'}",
            f"-filer.localSocket={self.scratch / 'filer.sock'}",
        ]
        for n in names:
            cmd += [f"-{n}.port={self.ports[n]}", f"-{n}.port.grpc={self.ports[n + '.grpc']}"]
        self.endpoint = f"http://{ip}:{self.ports['s3']}"
        where = f" in netns {self.net.ns}" if self.net else ""
        log(f"starting SeaweedFS{where}: store={self.store_dir} s3={self.endpoint}")
        with open(self.log_path, "wb") as lf:
            # own session: a terminal Ctrl-C must not kill it before we clean up
            self.proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                c = s3_client(self.endpoint)
                c.list_buckets()
                return
            except Exception as e:  # not up yet
                last = repr(e)
            time.sleep(0.5)
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout}s ({last}):\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def cpu_seconds(self) -> float | None:
        """utime+stime of the weed process so far (all components run in one process)."""
        if self.proc is None:
            return None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def rss_mib(self) -> float | None:
        if self.proc is None:
            return None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            log("stopping SeaweedFS")
            # weed mini's graceful shutdown can hang in the volume server; give it a
            # few seconds, then kill it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # unix sockets weed creates in /tmp for *our* ports only
        for kind in ("master", "volume", "filer", "s3", "admin"):
            sock = Path(f"/tmp/seaweedfs-{kind}-grpc-{self.ports.get(kind + '.grpc', 0)}.sock")
            with contextlib.suppress(OSError):
                sock.unlink()
        self.proc = None


def s3_client(endpoint: str, pool: int = 10) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        config=Config(max_pool_connections=pool, retries={"mode": "standard"}),
    )
