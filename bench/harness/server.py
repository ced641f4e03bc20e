"""The servers the benchmarks start: any server process (start, wait until it answers, CPU and RSS, stop), SeaweedFS
(``weed mini``, all components in one process) as the S3 server, a boto3 client for the harness's own uploads and
checks, and the environment a tool gets to reach it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import netem
from .common import ACCESS_KEY, REGION, SECRET_KEY, VENV, log, tool_env
from .procs import cpu_seconds, free_port, memory_mib, stop_group


class ServerProcess:
    """A server the benchmark starts as a process group of its own (a terminal's Ctrl-C must not kill it before
    the benchmark cleans up), waits for, measures (CPU, RSS) and stops."""

    name = "server"
    stop_grace = 8.0  # seconds between SIGTERM and SIGKILL

    def __init__(self, log_path: Path) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = log_path  # its stdout and stderr

    def launch(self, argv: list[str], ready: Callable[[], object], timeout: float, interval: float) -> None:
        """Start ``argv``, then call ``ready`` every ``interval`` s until it returns without raising."""
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                ready()
                return
            except Exception as e:  # not up yet
                last = repr(e)
            time.sleep(interval)
        raise RuntimeError(f"{self.name} not ready after {timeout}s ({last}):\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def cpu_seconds(self) -> float | None:
        """utime+stime of the server process so far."""
        return None if self.proc is None else cpu_seconds(self.proc.pid)

    def rss_mib(self) -> float | None:
        return None if self.proc is None else memory_mib(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            log(f"stopping {self.name}")
            stop_group(self.proc, self.stop_grace)
        self.proc = None


class SeaweedFS(ServerProcess):
    """``weed mini`` bound to 127.0.0.1 on free ports, with a static S3 identity."""

    name = "SeaweedFS"
    weed: Path = VENV / "bin" / "weed"
    stop_grace = 8.0  # weed mini's graceful shutdown can hang in the volume server: killed after a few seconds

    def __init__(self, store_dir: Path, scratch: Path, net: netem.NetEmu | None = None) -> None:
        super().__init__(scratch / "weed.log")
        self.store_dir = store_dir
        self.scratch = scratch
        # with ``net``: run inside its namespace, on its veth address (the relay reaches that over the
        # namespace's own loopback; the harness and unthrottled checks over the veth)
        self.net = net
        self.ports: dict[str, int] = {}
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
        self.launch(cmd, lambda: s3_client(self.endpoint).list_buckets(), timeout=90.0, interval=0.5)

    def stop(self) -> None:
        if self.proc is None:
            return
        super().stop()
        # unix sockets weed creates in /tmp for *our* ports only
        for kind in ("master", "volume", "filer", "s3", "admin"):
            sock = Path(f"/tmp/seaweedfs-{kind}-grpc-{self.ports.get(kind + '.grpc', 0)}.sock")
            with contextlib.suppress(OSError):
                sock.unlink()


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


# the benchmark's static, local-only S3 identity, as AWS_* variables (no instance metadata lookups)
S3_IDENTITY = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
}
# what an S3 tool must not inherit from whoever runs the benchmark: other credentials and endpoints, and the
# project's own settings
TOOL_ENV_DROP = ("AWS_", "DOWNLOADER_", "S3_", "HF_")


def s3_tool_env(endpoint: str, drop: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment of a tool that downloads from the benchmark's S3 server: without the variables that start
    with one of ``TOOL_ENV_DROP`` + ``drop``, with the server's endpoint and identity."""
    return tool_env(
        TOOL_ENV_DROP + drop, AWS_ENDPOINT_URL=endpoint, **S3_IDENTITY, AWS_DEFAULT_REGION=REGION, PYTHONUNBUFFERED="1"
    )
