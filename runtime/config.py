"""Runtime settings: flags > environment > defaults, declared once in OPTIONS, parsed once, strictly. The only
runtime module that reads the environment (it is handed a mapping; `cli` passes `os.environ`). Every error names
the setting it is about.

The table and the generic parsers are downloader.options (one meaning of "a number of seconds" or "a boolean"),
and the model directory is decided by the downloader's own parser when the runtime runs the download.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import re
import shlex
import shutil
import string
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from downloader.config import load_settings as load_download_settings
from downloader.errors import ConfigError
from downloader.options import (
    LOG_LEVEL,
    Kind,
    Lookup,
    Option,
    Options,
    choice,
    integer,
    parse_bool,
    parse_int,
    parse_url,
    seconds,
)

HEAD = "head"
WORKER = "worker"

DEFAULT_RAY_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_VLLM_PORT = 8000
KUBERAY_ENV = "KUBERAY_GEN_RAY_START_CMD"

# Flags of `ray start` that the runtime sets itself; passing them in --ray-start-args would contradict it.
RAY_FLAGS_OWNED = {
    HEAD: {
        "--head": "the subcommand",
        "--address": "aibrix-runtime worker --head-address",
        "--block": "the runtime (it always supervises a blocking `ray start`)",
        "--port": "--ray-port",
        "--dashboard-host": "--dashboard-host",
        "--dashboard-port": "--dashboard-port",
        "--include-dashboard": "the runtime (it reads membership from the dashboard)",
        "--node-ip-address": "--node-ip",
        "--num-cpus": "--num-cpus",
        "--num-gpus": "--num-gpus",
        "--resources": "--resources",
    },
    WORKER: {
        "--head": "the subcommand",
        "--address": "--head-address",
        "--block": "the runtime (it always supervises a blocking `ray start`)",
        "--node-ip-address": "--node-ip",
        "--num-cpus": "--num-cpus",
        "--num-gpus": "--num-gpus",
        "--resources": "--resources",
    },
}

# vLLM flags the runtime sets itself; everything else after `--` is passed through unchanged.
ENGINE_FLAGS_OWNED = {
    "--tensor-parallel-size": "--tensor-parallel-size",
    "-tp": "--tensor-parallel-size",
    "--pipeline-parallel-size": "--pipeline-parallel-size",
    "-pp": "--pipeline-parallel-size",
    "--distributed-executor-backend": "the runtime (always ray)",
    "--served-model-name": "--served-model-name",
    "--model": "--model-dir / --model-uri",
}


@dataclass(frozen=True)
class HealthCheck:
    """Ray's GCS → raylet health check (RAY_health_check_*), which decides how fast a lost node is marked DEAD."""

    period_ms: int
    timeout_ms: int
    failure_threshold: int


DEFAULT_HEALTH_CHECK = HealthCheck(period_ms=1000, timeout_ms=1000, failure_threshold=3)


@dataclass(frozen=True)
class Settings:
    role: str  # "head" or "worker"
    model_dir: str
    model_name: str
    download_args: tuple[str, ...] = ()  # when set, the runtime runs aibrix-download with these first
    model_wait_timeout: float = 0.0  # 0 = wait as long as it takes (and say so every --log-interval)
    # the local Ray node
    ray_command: tuple[str, ...] = ("ray",)
    node_ip: str | None = None
    num_cpus: str | None = None
    num_gpus: str | None = None
    resources: str | None = None  # canonical JSON object
    ray_start_args: tuple[str, ...] = ()
    kuberay_command: str | None = None  # KUBERAY_GEN_RAY_START_CMD, used instead of composing `ray start`
    ray_port: int = DEFAULT_RAY_PORT  # head: the GCS port it opens; worker: the head's GCS port
    # head
    dashboard_host: str = "0.0.0.0"
    dashboard_port: int = DEFAULT_DASHBOARD_PORT
    dashboard_url: str = f"http://127.0.0.1:{DEFAULT_DASHBOARD_PORT}"
    ray_health_check: HealthCheck | None = DEFAULT_HEALTH_CHECK
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    served_model_name: str = ""
    expected_nodes: int = 0  # 0 = any number of nodes, as long as the GPUs are there
    expected_gpus: int = 1
    accelerator_resource: str = "GPU"
    cluster_wait_timeout: float = 600.0
    dashboard_lost_timeout: float = 30.0
    engine_start_timeout: float = 3600.0  # 0 = no limit
    engine_lost_timeout: float = 60.0  # once vLLM has served: how long /health may fail before the head exits
    vllm_command: tuple[str, ...] = ("vllm",)
    engine_args: tuple[str, ...] = ()
    # worker
    head_host: str = ""
    head_wait_timeout: float = 600.0
    head_lost_timeout: float = 30.0
    # both
    poll_interval: float = 1.0
    log_interval: float = 10.0
    stop_timeout: float = 10.0
    log_level: str = "INFO"
    print_commands: bool = False
    warnings: tuple[str, ...] = field(default=())

    @property
    def gcs_address(self) -> str:
        """host:port of the GCS: the head's own address on the head, the head's on a worker."""
        host = self.head_host if self.role == WORKER else (self.node_ip or "127.0.0.1")
        return f"{_bracket(host)}:{self.ray_port}"


# ------------------------------------------------------------------------------------------ small parsers


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def parse_host(setting: str, raw: str) -> str:
    """A host name or IP address (IPv6 without brackets)."""
    host = raw.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?", host):
        raise ConfigError(setting, raw, "expected a host name or an IP address")
    return host


def parse_host_port(setting: str, raw: str, default_port: int) -> tuple[str, int]:
    """HOST, HOST:PORT, [V6] or [V6]:PORT."""
    text = raw.strip()
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
    if m:
        host, port = m.group(1), m.group(2)
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None  # a bare name, or a bare IPv6 address
    if not host:
        raise ConfigError(setting, raw, "expected HOST or HOST:PORT")
    return parse_host(setting, host), (
        parse_int(setting, port, minimum=1, maximum=65535) if port is not None else default_port
    )


def parse_number(setting: str, raw: str) -> str:
    """A non-negative count for Ray (CPUs, GPUs): kept as text, integers without a trailing .0."""
    try:
        value = float(raw.strip())
    except ValueError as exc:
        raise ConfigError(setting, raw, "expected a non-negative number") from exc
    if not math.isfinite(value) or value < 0:
        raise ConfigError(setting, raw, "expected a non-negative number")
    return str(int(value)) if value.is_integer() else repr(value)


def parse_resources(setting: str, raw: str) -> str:
    """A JSON object of custom Ray resources, returned in canonical form."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(setting, raw, f"not valid JSON ({exc.msg})") from exc
    except (RecursionError, ValueError) as exc:  # nesting too deep, or an integer longer than Python converts
        raise ConfigError(setting, raw, "not valid JSON (nested too deeply or a number too long)") from exc
    if not isinstance(value, dict):
        raise ConfigError(setting, raw, 'expected a JSON object such as {"rack_a": 1}')
    for key, amount in value.items():
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount < 0:
            raise ConfigError(setting, raw, f"resource {key!r} must be a non-negative number")
        if key in ("CPU", "GPU", "memory", "object_store_memory"):
            raise ConfigError(setting, raw, f"{key} is not a custom resource; use --num-cpus/--num-gpus")
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def parse_command(setting: str, raw: str, env: Mapping[str, str]) -> tuple[str, ...]:
    """A command line (shell-quoted). A bare program name not on PATH is looked for next to this Python."""
    try:
        argv = shlex.split(raw)
    except ValueError as exc:
        raise ConfigError(setting, raw, f"cannot be split into words ({exc})") from exc
    if not argv:
        raise ConfigError(setting, raw, "is empty")
    program = argv[0]
    if "/" not in program and shutil.which(program, path=env.get("PATH")) is None:
        sibling = os.path.join(os.path.dirname(sys.executable), program)
        if os.access(sibling, os.X_OK):
            argv[0] = sibling
    return tuple(argv)


def parse_args_string(setting: str, raw: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(raw))
    except ValueError as exc:
        raise ConfigError(setting, raw, f"cannot be split into words ({exc})") from exc


def parse_health_check(setting: str, raw: str) -> HealthCheck | None:
    text = raw.strip().lower()
    if text in ("ray", "default", "off"):
        return None
    parts = [x.strip() for x in text.split(",")]
    if len(parts) != 3:
        raise ConfigError(setting, raw, "expected PERIOD_MS,TIMEOUT_MS,FAILURES (e.g. 1000,1000,3) or 'ray'")
    period = parse_int(setting, parts[0], minimum=100, maximum=600_000)
    timeout = parse_int(setting, parts[1], minimum=100, maximum=600_000)
    failures = parse_int(setting, parts[2], minimum=1, maximum=1000)
    return HealthCheck(period_ms=period, timeout_ms=timeout, failure_threshold=failures)


def ray_start_flags(command: str) -> dict[str, str]:
    """The `--flag[=value]` options of a `ray start ...` command line, as {"flag": "value" or ""}.

    Used on KubeRay's generated command: which node type it starts, and on which ports and address."""
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(KUBERAY_ENV, command, f"cannot be split into words ({exc})") from exc
    if "start" not in words:
        raise ConfigError(KUBERAY_ENV, command, "is not a `ray start` command")
    words = words[words.index("start") + 1 :]
    flags: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            if not eq and i + 1 < len(words) and not words[i + 1].startswith("-"):
                value = words[i + 1]
                i += 1
            flags[name.replace("_", "-")] = value
        i += 1
    return flags


def _owned_flag(word: str) -> str:
    name = word.split("=", 1)[0]
    return name.replace("_", "-") if name.startswith("--") else name


def check_ray_start_args(role: str, args: Sequence[str]) -> None:
    for word in args:
        owned = RAY_FLAGS_OWNED[role].get(_owned_flag(word))
        if owned is not None:
            raise ConfigError("--ray-start-args", word, f"the runtime sets this flag itself; use {owned}")


def check_engine_args(args: Sequence[str]) -> None:
    if args and not args[0].startswith("-"):
        raise ConfigError(
            "engine arguments after --", args[0], "the model is the runtime's (--model-dir); pass only vLLM options"
        )
    for word in args:
        owned = ENGINE_FLAGS_OWNED.get(_owned_flag(word))
        if owned is not None:
            raise ConfigError("engine arguments after --", word, f"the runtime sets this flag itself; use {owned}")


def engine_endpoint(engine_args: Sequence[str]) -> tuple[str, int]:
    """Where vLLM will listen, from --host/--port among its arguments (vLLM's defaults otherwise)."""
    host, port = "127.0.0.1", DEFAULT_VLLM_PORT
    for i, word in enumerate(engine_args):
        name, eq, value = word.partition("=")
        if not eq and i + 1 < len(engine_args):
            value = engine_args[i + 1]
        if name == "--port" and value.isdigit():
            port = int(value)
        elif name == "--host" and value:
            host = value
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1" if host != "::" else "::1"
    return host, port


def dashboard_url_for(host: str, port: int) -> str:
    if host in ("0.0.0.0", "localhost", "127.0.0.1", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://{_bracket(host)}:{port}"


def _served_name(setting: str, raw: object) -> str:
    name = str(raw)
    if not name.strip() or any(c.isspace() for c in name):
        raise ConfigError(setting, raw, "must be a non-empty name without spaces")
    return name


def _resource_name(setting: str, raw: object) -> str:
    name = str(raw).strip()
    if not re.fullmatch(r"[A-Za-z0-9_.:/-]+", name):
        raise ConfigError(setting, raw, "expected a Ray resource name such as GPU")
    return name


def _port(setting: str, raw: object) -> int:
    return parse_int(setting, raw, minimum=1, maximum=65535)


# ------------------------------------------------------------------------------------------- the settings

_MODEL, _NODE, _SUPERVISION = "model", "ray node", "supervision"
_HEAD, _CLUSTER, _WORKER = "ray head", "cluster and engine", "head"

OPTIONS = Options(
    Option("model_dir", "model directory whose manifest is waited for", env=("RUNTIME_MODEL_DIR",), group=_MODEL),
    Option(
        "model_uri",
        "run aibrix-download for this URI first; the model directory is then <local-dir>/<model-name>",
        env=("RUNTIME_MODEL_URI",),
        group=_MODEL,
    ),
    Option(
        "local_dir",
        "with --model-uri: aibrix-download --local-dir",
        env_doc="`DOWNLOADER_LOCAL_DIR`",
        default_doc="the downloader's",
        group=_MODEL,
    ),
    Option(
        "model_name",
        "with --model-uri: aibrix-download --model-name",
        env_doc="`DOWNLOADER_MODEL_NAME`",
        default_doc="the downloader's",
        group=_MODEL,
    ),
    Option(
        "model_wait_timeout",
        "seconds to wait for the manifest; 0 = no limit",
        env=("RUNTIME_MODEL_WAIT_TIMEOUT",),
        default="0",
        parse=seconds(),
        group=_MODEL,
    ),
    Option(
        "node_ip",
        "this node's address: ray start --node-ip-address, and VLLM_HOST_IP when unset",
        env=("RUNTIME_NODE_IP",),
        parse=parse_host,
        default_doc="Ray detects",
        group=_NODE,
    ),
    Option(
        "num_cpus",
        "ray start --num-cpus",
        env=("RUNTIME_NUM_CPUS",),
        parse=parse_number,
        default_doc="Ray detects",
        group=_NODE,
    ),
    Option(
        "num_gpus",
        "ray start --num-gpus",
        env=("RUNTIME_NUM_GPUS",),
        parse=parse_number,
        default_doc="Ray detects",
        group=_NODE,
    ),
    Option(
        "resources",
        'ray start --resources: a JSON object of custom resources, e.g. {"rack": 1}',
        env=("RUNTIME_RESOURCES",),
        parse=parse_resources,
        group=_NODE,
    ),
    Option(
        "ray_start_args",
        "further `ray start` flags, shell-quoted; flags the runtime sets are refused",
        env=("RUNTIME_RAY_START_ARGS",),
        parse=parse_args_string,
        group=_NODE,
    ),
    Option(
        "ray_command",
        "how to run Ray's CLI",
        env=("RUNTIME_RAY_COMMAND",),
        default="ray",
        group=_NODE,
        doc="how to run Ray's CLI; when it cannot be started, the error says where it was looked for (`PATH`) and "
        "names this setting",
    ),
    Option(
        "kuberay",
        f"auto: use ${KUBERAY_ENV} when KubeRay sets it; on: require it; off: ignore it",
        env=("RUNTIME_KUBERAY",),
        default="auto",
        parse=choice("auto", "on", "off"),
        group=_NODE,
    ),
    Option(
        "poll_interval",
        "seconds between checks",
        env=("RUNTIME_POLL_INTERVAL",),
        default="1",
        parse=seconds(0.05, 60),
        group=_SUPERVISION,
    ),
    Option(
        "log_interval",
        "seconds between 'still waiting' lines",
        env=("RUNTIME_LOG_INTERVAL",),
        default="10",
        parse=seconds(0.1, 3600),
        group=_SUPERVISION,
    ),
    Option(
        "stop_timeout",
        "seconds each child gets after SIGTERM before SIGKILL",
        env=("RUNTIME_STOP_TIMEOUT",),
        default="10",
        parse=seconds(0, 3600),
        group=_SUPERVISION,
    ),
    Option(
        "log_level",
        "debug, info, warning or error",
        env=("RUNTIME_LOG_LEVEL",),
        default="info",
        parse=LOG_LEVEL,
        group=_SUPERVISION,
    ),
    Option(
        "print_commands",
        "print the steps and commands it would run, and exit 0",
        parse=parse_bool,
        kind=Kind.TRUE,
        group=_SUPERVISION,
    ),
    Option(
        "ray_port",
        "GCS port",
        env=("RUNTIME_RAY_PORT",),
        default=str(DEFAULT_RAY_PORT),
        parse=_port,
        scope=HEAD,
        group=_HEAD,
    ),
    Option(
        "dashboard_host",
        "dashboard bind address",
        env=("RUNTIME_DASHBOARD_HOST",),
        default="0.0.0.0",
        parse=parse_host,
        scope=HEAD,
        group=_HEAD,
    ),
    Option(
        "dashboard_port",
        "dashboard port",
        env=("RUNTIME_DASHBOARD_PORT",),
        default=str(DEFAULT_DASHBOARD_PORT),
        parse=_port,
        scope=HEAD,
        group=_HEAD,
    ),
    Option(
        "dashboard_url",
        "where the runtime reads the members (/api/v0/nodes)",
        env=("RUNTIME_DASHBOARD_URL",),
        parse=parse_url,
        default_doc="`http://127.0.0.1:<dashboard port>`",
        scope=HEAD,
        group=_HEAD,
    ),
    Option(
        "ray_health_check",
        "PERIOD_MS,TIMEOUT_MS,FAILURES of Ray's node health check, set as RAY_health_check_* unless already in the "
        "environment; 'ray' keeps Ray's defaults",
        env=("RUNTIME_RAY_HEALTH_CHECK",),
        default="1000,1000,3",
        parse=parse_health_check,
        scope=HEAD,
        group=_HEAD,
        doc="`PERIOD_MS,TIMEOUT_MS,FAILURES` of Ray's node health check (see above); `ray` keeps Ray's defaults",
    ),
    Option(
        "tensor_parallel_size",
        "vLLM's tensor parallelism",
        env=("RUNTIME_TENSOR_PARALLEL_SIZE",),
        default="1",
        parse=integer(1, 4096),
        flags=("--tensor-parallel-size", "-tp"),
        scope=HEAD,
        group=_CLUSTER,
    ),
    Option(
        "pipeline_parallel_size",
        "vLLM's pipeline parallelism",
        env=("RUNTIME_PIPELINE_PARALLEL_SIZE",),
        default="1",
        parse=integer(1, 4096),
        flags=("--pipeline-parallel-size", "-pp"),
        scope=HEAD,
        group=_CLUSTER,
    ),
    Option(
        "served_model_name",
        "the name vLLM serves the model under",
        env=("RUNTIME_SERVED_MODEL_NAME",),
        parse=_served_name,
        default_doc="the model's name",
        scope=HEAD,
        group=_CLUSTER,
    ),
    Option(
        "expected_nodes",
        "ALIVE Ray nodes to wait for; 0 = any number",
        env=("RUNTIME_EXPECTED_NODES",),
        default="0",
        parse=integer(0, 100_000),
        scope=HEAD,
        group=_CLUSTER,
    ),
    Option(
        "expected_gpus",
        "GPUs to wait for (never fewer than TP x PP)",
        env=("RUNTIME_EXPECTED_GPUS",),
        parse=integer(0, 1_000_000),
        default_doc="TP x PP",
        scope=HEAD,
        group=_CLUSTER,
    ),
    Option(
        "accelerator_resource",
        "the Ray resource counted as GPUs",
        env=("RUNTIME_ACCELERATOR_RESOURCE",),
        default="GPU",
        parse=_resource_name,
        scope=HEAD,
        group=_CLUSTER,
    ),
    Option(
        "cluster_wait_timeout",
        "seconds to wait for the nodes and GPUs",
        env=("RUNTIME_CLUSTER_WAIT_TIMEOUT",),
        default="600",
        parse=seconds(0.1),
        scope=HEAD,
        group=_CLUSTER,
    ),
    Option(
        "dashboard_lost_timeout",
        "while serving: fail when the dashboard does not answer for this long",
        env=("RUNTIME_DASHBOARD_LOST_TIMEOUT",),
        default="30",
        parse=seconds(0.1),
        scope=HEAD,
        group=_CLUSTER,
    ),
    Option(
        "engine_start_timeout",
        "fail when vLLM has not answered /health this long after it started; 0 = no limit",
        env=("RUNTIME_ENGINE_START_TIMEOUT",),
        default="3600",
        parse=seconds(),
        scope=HEAD,
        group=_CLUSTER,
    ),
    Option(
        "engine_lost_timeout",
        "once vLLM has answered /health, fail when it answers anything but 200 (or nothing) for this long",
        env=("RUNTIME_ENGINE_LOST_TIMEOUT",),
        default="60",
        parse=seconds(0.1),
        scope=HEAD,
        group=_CLUSTER,
    ),
    Option(
        "vllm_command",
        "how to run vLLM's CLI",
        env=("RUNTIME_VLLM_COMMAND",),
        default="vllm",
        scope=HEAD,
        group=_CLUSTER,
    ),
    Option(
        "head_address",
        "HOST[:PORT] of the head's GCS",
        env=("RUNTIME_HEAD_ADDRESS",),
        default_doc="required (KubeRay: its own)",
        scope=WORKER,
        group=_WORKER,
    ),
    Option(
        "head_wait_timeout",
        "seconds to wait for the head's GCS before joining",
        env=("RUNTIME_HEAD_WAIT_TIMEOUT",),
        default="600",
        parse=seconds(0.1),
        scope=WORKER,
        group=_WORKER,
    ),
    Option(
        "head_lost_timeout",
        "after joining: exit when the head's GCS does not answer for this long",
        env=("RUNTIME_HEAD_LOST_TIMEOUT",),
        default="30",
        parse=seconds(0.1),
        scope=WORKER,
        group=_WORKER,
    ),
    env_prefix="RUNTIME_",
    doc_rows=[
        (
            "head: after `--`",
            "",
            "",
            "vLLM options, passed through unchanged (`--tensor-parallel-size`, `--pipeline-parallel-size`, "
            "`--distributed-executor-backend`, `--served-model-name`, `--model` and a positional model are refused: "
            "the runtime sets them)",
        ),
    ],
)


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aibrix-runtime",
        allow_abbrev=False,  # flags are spelt in full, here and in each role below
        description="Start a Ray node for multi-node vLLM and supervise it: `head` waits for the model and the "
        "cluster, then runs `vllm serve` (arguments after `--` are passed to it); `worker` waits for the model "
        "and the head, then joins. Settings: flag > environment > default (see docs/runtime.md).",
    )
    sub = p.add_subparsers(dest="role", required=True, metavar="{head,worker}")
    head = sub.add_parser(
        HEAD, help="Ray head + vllm serve", description="Ray head node and vllm serve.", allow_abbrev=False
    )
    OPTIONS.add_arguments(head, HEAD)
    worker = sub.add_parser(
        WORKER, help="Ray worker", description="Ray worker node joining the head.", allow_abbrev=False
    )
    OPTIONS.add_arguments(worker, WORKER)
    return p


# ------------------------------------------------------------------------------------------------ loading


def load_settings(argv: Sequence[str], env: Mapping[str, str]) -> Settings:
    """Parse flags and environment. Raises ConfigError; argparse itself exits 2 on usage errors."""
    argv = list(argv)
    engine_args: tuple[str, ...] = ()
    if "--" in argv:
        cut = argv.index("--")
        argv, engine_args = argv[:cut], tuple(argv[cut + 1 :])
    # `--ray-start-args --object-store-memory=...`: its value starts with dashes, which argparse would take for
    # an option of its own; glue it to the flag.
    for i in range(len(argv) - 1):
        if argv[i] == "--ray-start-args":
            argv[i : i + 2] = [f"--ray-start-args={argv[i + 1]}"]
            break
    args = build_arg_parser().parse_args(argv)
    role: str = args.role
    if engine_args and role != HEAD:
        raise ConfigError("arguments after --", " ".join(engine_args), "only `aibrix-runtime head` passes them on")
    get = OPTIONS.lookup(args, env)
    warnings = [f"ignoring unknown environment variable {name}" for name in OPTIONS.unknown_env(env)]

    # --- the model
    raw_dir, dir_name, _ = get.given("model_dir")
    raw_uri = get.value("model_uri")
    download_args: tuple[str, ...] = ()
    if raw_uri is not None:
        dl = ["--model-uri", raw_uri]
        if args.local_dir is not None:
            dl += ["--local-dir", args.local_dir]
        if args.model_name is not None:
            dl += ["--model-name", args.model_name]
        download = load_download_settings(dl, env)  # the downloader decides where the model lands
        model_dir, model_name = download.model_dir, download.model_name
        download_args = tuple(dl)
        if raw_dir is not None and os.path.abspath(raw_dir.strip()) != model_dir:
            raise ConfigError(dir_name, raw_dir, f"contradicts --model-uri, which downloads into {model_dir}")
    elif args.local_dir is not None or args.model_name is not None:
        raise ConfigError(
            "--local-dir" if args.local_dir is not None else "--model-name",
            args.local_dir if args.local_dir is not None else args.model_name,
            "only goes with --model-uri; without a download, give --model-dir",
        )
    elif raw_dir is not None:
        model_dir = os.path.abspath(get.value("model_dir").strip())
        model_name = os.path.basename(model_dir.rstrip("/")) or model_dir
    else:
        raise ConfigError("--model-dir", None, "give the model directory, or --model-uri to download it first")

    # --- the Ray node
    node_ip = get.value("node_ip")
    num_cpus, num_gpus, resources = get.value("num_cpus"), get.value("num_gpus"), get.value("resources")
    ray_start_args = get.value("ray_start_args") or ()
    check_ray_start_args(role, ray_start_args)

    kuberay = get.given("kuberay")
    kuberay_mode = get.value("kuberay")
    kuberay_command: str | None = None
    kuberay_flags: dict[str, str] = {}
    generated = env.get(KUBERAY_ENV, "").strip()
    if kuberay_mode == "on" and not generated:
        raise ConfigError(kuberay.source, kuberay.raw, f"KubeRay mode is on but {KUBERAY_ENV} is not set")
    if generated and kuberay_mode != "off":
        kuberay_command = generated
        kuberay_flags = {k: _expand(v, env) for k, v in ray_start_flags(generated).items()}
        is_head = "head" in kuberay_flags
        if is_head != (role == HEAD):
            kind = "a head" if is_head else "a worker"
            raise ConfigError(KUBERAY_ENV, generated, f"starts {kind} node but this is `aibrix-runtime {role}`")
        for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus), ("resources", resources)):
            if value is not None:
                warnings.append(f"{OPTIONS[name].label} is ignored: KubeRay's generated `ray start` is used")
        if ray_start_args:
            warnings.append("--ray-start-args is ignored: KubeRay's generated `ray start` is used")
        if node_ip is None and kuberay_flags.get("node-ip-address"):
            node_ip = parse_host(KUBERAY_ENV, kuberay_flags["node-ip-address"])

    common = dict(
        role=role,
        model_dir=model_dir,
        model_name=model_name,
        download_args=download_args,
        model_wait_timeout=get.value("model_wait_timeout"),
        ray_command=_command(get, "ray_command", env),
        node_ip=node_ip,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        resources=resources,
        ray_start_args=ray_start_args,
        kuberay_command=kuberay_command,
        poll_interval=get.value("poll_interval"),
        log_interval=get.value("log_interval"),
        stop_timeout=get.value("stop_timeout"),
        log_level=get.value("log_level").upper(),
        print_commands=bool(get.value("print_commands")),
    )
    if role == HEAD:
        return _head_settings(get, env, engine_args, kuberay_flags, common, warnings)
    return _worker_settings(get, env, kuberay_flags, common, warnings)


def _command(get: Lookup, name: str, env: Mapping[str, str]) -> tuple[str, ...]:
    return parse_command(get.given(name).source, get.value(name), env)


def _expand(value: str, env: Mapping[str, str]) -> str:
    return string.Template(value).safe_substitute(env)


def _head_settings(
    get: Lookup,
    env: Mapping[str, str],
    engine_args: tuple[str, ...],
    kuberay_flags: Mapping[str, str],
    common: dict[str, object],
    warnings: list[str],
) -> Settings:
    ray_port: int = get.value("ray_port")
    dashboard_host: str = get.value("dashboard_host")
    dashboard_port: int = get.value("dashboard_port")
    if common["kuberay_command"] is not None:
        # KubeRay decides the ports; read them from its command so that we probe what it starts.
        if "port" in kuberay_flags:
            ray_port = _port(KUBERAY_ENV + " --port", kuberay_flags["port"])
        if "dashboard-port" in kuberay_flags:
            dashboard_port = _port(KUBERAY_ENV + " --dashboard-port", kuberay_flags["dashboard-port"])
        dashboard_host = kuberay_flags.get("dashboard-host") or "127.0.0.1"
    dashboard_url = get.value("dashboard_url") or dashboard_url_for(dashboard_host, dashboard_port)

    tp, pp = get.value("tensor_parallel_size"), get.value("pipeline_parallel_size")
    expected_gpus = get.value("expected_gpus")
    if expected_gpus is None:
        expected_gpus = tp * pp
    elif expected_gpus < tp * pp:
        gpus = get.given("expected_gpus")
        raise ConfigError(gpus.source, gpus.raw, f"fewer than tensor-parallel x pipeline-parallel = {tp * pp} GPUs")
    check_engine_args(engine_args)
    return Settings(
        **common,  # type: ignore[arg-type]
        ray_port=ray_port,
        dashboard_host=dashboard_host,
        dashboard_port=dashboard_port,
        dashboard_url=dashboard_url,
        ray_health_check=get.value("ray_health_check"),
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        served_model_name=get.value("served_model_name") or _served_name("the model's name", common["model_name"]),
        expected_nodes=get.value("expected_nodes"),
        expected_gpus=expected_gpus,
        accelerator_resource=get.value("accelerator_resource"),
        cluster_wait_timeout=get.value("cluster_wait_timeout"),
        dashboard_lost_timeout=get.value("dashboard_lost_timeout"),
        engine_start_timeout=get.value("engine_start_timeout"),
        engine_lost_timeout=get.value("engine_lost_timeout"),
        vllm_command=_command(get, "vllm_command", env),
        engine_args=engine_args,
        warnings=tuple(warnings),
    )


def _worker_settings(
    get: Lookup,
    env: Mapping[str, str],
    kuberay_flags: Mapping[str, str],
    common: dict[str, object],
    warnings: list[str],
) -> Settings:
    given = get.given("head_address")
    head = parse_host_port(given.source, given.raw, DEFAULT_RAY_PORT) if given.raw is not None else None
    if common["kuberay_command"] is not None:
        # KubeRay's command names the head (its service); probe exactly what `ray start` will connect to.
        address = kuberay_flags.get("address") or _kuberay_env_address(env)
        if not address:
            raise ConfigError(KUBERAY_ENV, common["kuberay_command"], "names no --address, and FQ_RAY_IP is not set")
        kuberay_head = parse_host_port(KUBERAY_ENV + " --address", address, DEFAULT_RAY_PORT)
        if head is not None and head != kuberay_head:
            warnings.append(f"{given.source} is ignored: KubeRay's command connects to {address}")
        head = kuberay_head
    if head is None:
        raise ConfigError("--head-address", None, "give the head's HOST[:PORT] (RUNTIME_HEAD_ADDRESS)")
    return Settings(
        **common,  # type: ignore[arg-type]
        head_host=head[0],
        ray_port=head[1],
        head_wait_timeout=get.value("head_wait_timeout"),
        head_lost_timeout=get.value("head_lost_timeout"),
        warnings=tuple(warnings),
    )


def _kuberay_env_address(env: Mapping[str, str]) -> str:
    host = (env.get("FQ_RAY_IP") or env.get("RAY_IP") or "").strip()
    if not host:
        return ""
    port = (env.get("RAY_PORT") or str(DEFAULT_RAY_PORT)).strip()
    return f"{_bracket(host)}:{port}"
