"""Runtime settings: flags > environment > defaults, parsed once, strictly. The only runtime module that reads
the environment (it is handed a mapping; `cli` passes `os.environ`). Every error names the setting it is about.

Parse helpers are the downloader's (one meaning of "a number of seconds" or "a boolean" across the project),
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
from downloader.config import parse_choice, parse_int, parse_seconds
from downloader.errors import ConfigError

HEAD = "head"
WORKER = "worker"

DEFAULT_RAY_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_VLLM_PORT = 8000
KUBERAY_ENV = "KUBERAY_GEN_RAY_START_CMD"

# Environment variables this program reads. Unknown RUNTIME_* variables are reported: a typo in a pod spec
# would otherwise silently do nothing.
KNOWN_ENV = {
    "RUNTIME_MODEL_DIR",
    "RUNTIME_MODEL_URI",
    "RUNTIME_MODEL_WAIT_TIMEOUT",
    "RUNTIME_RAY_COMMAND",
    "RUNTIME_VLLM_COMMAND",
    "RUNTIME_NODE_IP",
    "RUNTIME_NUM_CPUS",
    "RUNTIME_NUM_GPUS",
    "RUNTIME_RESOURCES",
    "RUNTIME_RAY_START_ARGS",
    "RUNTIME_RAY_PORT",
    "RUNTIME_DASHBOARD_HOST",
    "RUNTIME_DASHBOARD_PORT",
    "RUNTIME_DASHBOARD_URL",
    "RUNTIME_RAY_HEALTH_CHECK",
    "RUNTIME_TENSOR_PARALLEL_SIZE",
    "RUNTIME_PIPELINE_PARALLEL_SIZE",
    "RUNTIME_SERVED_MODEL_NAME",
    "RUNTIME_EXPECTED_NODES",
    "RUNTIME_EXPECTED_GPUS",
    "RUNTIME_ACCELERATOR_RESOURCE",
    "RUNTIME_CLUSTER_WAIT_TIMEOUT",
    "RUNTIME_DASHBOARD_LOST_TIMEOUT",
    "RUNTIME_ENGINE_START_TIMEOUT",
    "RUNTIME_ENGINE_LOST_TIMEOUT",
    "RUNTIME_HEAD_ADDRESS",
    "RUNTIME_HEAD_WAIT_TIMEOUT",
    "RUNTIME_HEAD_LOST_TIMEOUT",
    "RUNTIME_POLL_INTERVAL",
    "RUNTIME_LOG_INTERVAL",
    "RUNTIME_STOP_TIMEOUT",
    "RUNTIME_KUBERAY",
    "RUNTIME_LOG_LEVEL",
}

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


# ------------------------------------------------------------------------------------------------ parser


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model-dir", help="model directory to wait for (its manifest) [RUNTIME_MODEL_DIR]")
    g.add_argument("--model-uri", help="run aibrix-download for this URI first [RUNTIME_MODEL_URI]")
    g.add_argument("--local-dir", help="with --model-uri: aibrix-download --local-dir [DOWNLOADER_LOCAL_DIR]")
    g.add_argument("--model-name", help="with --model-uri: aibrix-download --model-name [DOWNLOADER_MODEL_NAME]")
    g.add_argument(
        "--model-wait-timeout", help="seconds to wait for the manifest; 0 = no limit [RUNTIME_MODEL_WAIT_TIMEOUT, 0]"
    )
    g = p.add_argument_group("ray node")
    g.add_argument("--ray-command", help="how to run Ray's CLI [RUNTIME_RAY_COMMAND, ray]")
    g.add_argument("--node-ip", help="this node's address: ray start --node-ip-address, VLLM_HOST_IP [RUNTIME_NODE_IP]")
    g.add_argument("--num-cpus", help="ray start --num-cpus [RUNTIME_NUM_CPUS; Ray detects]")
    g.add_argument("--num-gpus", help="ray start --num-gpus [RUNTIME_NUM_GPUS; Ray detects]")
    g.add_argument("--resources", help='ray start --resources, a JSON object, e.g. {"rack": 1} [RUNTIME_RESOURCES]')
    g.add_argument("--ray-start-args", help="more `ray start` flags, shell-quoted [RUNTIME_RAY_START_ARGS]")
    g.add_argument(
        "--kuberay",
        help=f"auto: use ${KUBERAY_ENV} when KubeRay sets it; on: require it; off: ignore it [RUNTIME_KUBERAY, auto]",
    )
    g = p.add_argument_group("supervision")
    g.add_argument("--poll-interval", help="seconds between checks [RUNTIME_POLL_INTERVAL, 1]")
    g.add_argument("--log-interval", help="seconds between 'still waiting' lines [RUNTIME_LOG_INTERVAL, 10]")
    g.add_argument(
        "--stop-timeout",
        help="seconds each child gets after SIGTERM before SIGKILL [RUNTIME_STOP_TIMEOUT, 10]",
    )
    g.add_argument("--log-level", help="debug, info, warning, error [RUNTIME_LOG_LEVEL, info]")
    g.add_argument("--print-commands", action="store_true", help="print the commands it would run, and exit 0")


def build_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aibrix-runtime",
        allow_abbrev=False,  # flags are spelt in full, here and in each role below
        description="Start a Ray node for multi-node vLLM and supervise it: `head` waits for the model and the "
        "cluster, then runs `vllm serve` (arguments after `--` are passed to it); `worker` waits for the model "
        "and the head, then joins. Settings: flag > environment > default (see README).",
    )
    sub = p.add_subparsers(dest="role", required=True, metavar="{head,worker}")
    head = sub.add_parser(
        HEAD, help="Ray head + vllm serve", description="Ray head node and vllm serve.", allow_abbrev=False
    )
    _common(head)
    g = head.add_argument_group("ray head")
    g.add_argument("--ray-port", help=f"GCS port [RUNTIME_RAY_PORT, {DEFAULT_RAY_PORT}]")
    g.add_argument("--dashboard-host", help="dashboard bind address [RUNTIME_DASHBOARD_HOST, 0.0.0.0]")
    g.add_argument("--dashboard-port", help=f"dashboard port [RUNTIME_DASHBOARD_PORT, {DEFAULT_DASHBOARD_PORT}]")
    g.add_argument("--dashboard-url", help="where the runtime reads /api/v0/nodes [RUNTIME_DASHBOARD_URL; derived]")
    g.add_argument(
        "--ray-health-check",
        help="PERIOD_MS,TIMEOUT_MS,FAILURES of Ray's node health check, set as RAY_health_check_* unless "
        "already in the environment; 'ray' keeps Ray's defaults [RUNTIME_RAY_HEALTH_CHECK, 1000,1000,3]",
    )
    g = head.add_argument_group("cluster and engine")
    g.add_argument("--tensor-parallel-size", "-tp", help="[RUNTIME_TENSOR_PARALLEL_SIZE, 1]")
    g.add_argument("--pipeline-parallel-size", "-pp", help="[RUNTIME_PIPELINE_PARALLEL_SIZE, 1]")
    g.add_argument("--served-model-name", help="[RUNTIME_SERVED_MODEL_NAME; default: the model's name]")
    g.add_argument("--expected-nodes", help="wait for this many ALIVE nodes; 0 = any [RUNTIME_EXPECTED_NODES, 0]")
    g.add_argument("--expected-gpus", help="wait for this many GPUs [RUNTIME_EXPECTED_GPUS; default TP x PP]")
    g.add_argument(
        "--accelerator-resource", help="the Ray resource counted as GPUs [RUNTIME_ACCELERATOR_RESOURCE, GPU]"
    )
    g.add_argument(
        "--cluster-wait-timeout",
        help="seconds to wait for the nodes and GPUs [RUNTIME_CLUSTER_WAIT_TIMEOUT, 600]",
    )
    g.add_argument(
        "--dashboard-lost-timeout",
        help="fail when the dashboard does not answer for this long while serving [RUNTIME_DASHBOARD_LOST_TIMEOUT, 30]",
    )
    g.add_argument(
        "--engine-start-timeout",
        help="fail when vLLM has not answered /health this long after it started; 0 = no limit "
        "[RUNTIME_ENGINE_START_TIMEOUT, 3600]",
    )
    g.add_argument(
        "--engine-lost-timeout",
        help="once vLLM has answered /health, fail when it answers anything but 200 (or nothing) for this long "
        "[RUNTIME_ENGINE_LOST_TIMEOUT, 60]",
    )
    g.add_argument("--vllm-command", help="how to run vLLM's CLI [RUNTIME_VLLM_COMMAND, vllm]")
    worker = sub.add_parser(
        WORKER, help="Ray worker", description="Ray worker node joining the head.", allow_abbrev=False
    )
    _common(worker)
    g = worker.add_argument_group("head")
    g.add_argument("--head-address", help="HOST[:PORT] of the head's GCS [RUNTIME_HEAD_ADDRESS; KubeRay: its own]")
    g.add_argument("--head-wait-timeout", help="seconds to wait for the head's GCS [RUNTIME_HEAD_WAIT_TIMEOUT, 600]")
    g.add_argument(
        "--head-lost-timeout",
        help="exit when the head's GCS does not answer for this long [RUNTIME_HEAD_LOST_TIMEOUT, 30]",
    )
    return p


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


def _url(setting: str, raw: str) -> str:
    if not re.match(r"^https?://[^/\s]+", raw):
        raise ConfigError(setting, raw, "must start with http:// or https:// and name a host")
    return raw.rstrip("/")


# ------------------------------------------------------------------------------------------------ loading


class _Source:
    """flag > environment lookups that remember where a value came from, for error messages."""

    def __init__(self, args: argparse.Namespace, env: Mapping[str, str]) -> None:
        self.args = args
        self.env = env

    def get(self, attr: str, env_name: str | None) -> tuple[str | None, str]:
        flag = getattr(self.args, attr, None)
        if flag is not None:
            return str(flag), "--" + attr.replace("_", "-")
        if env_name:
            value = self.env.get(env_name)
            if value is not None and value.strip():
                return value.strip(), env_name
        return None, "--" + attr.replace("_", "-")


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
    src = _Source(args, env)
    warnings = [f"ignoring unknown environment variable {k}" for k in sorted(env) if k.startswith("RUNTIME_")]
    warnings = [w for w in warnings if w.rsplit(" ", 1)[1] not in KNOWN_ENV]

    # --- the model
    raw_dir, dir_name = src.get("model_dir", "RUNTIME_MODEL_DIR")
    raw_uri, _ = src.get("model_uri", "RUNTIME_MODEL_URI")
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
        if raw_dir is not None and os.path.abspath(raw_dir) != model_dir:
            raise ConfigError(dir_name, raw_dir, f"contradicts --model-uri, which downloads into {model_dir}")
    elif args.local_dir is not None or args.model_name is not None:
        raise ConfigError(
            "--local-dir" if args.local_dir is not None else "--model-name",
            args.local_dir if args.local_dir is not None else args.model_name,
            "only goes with --model-uri; without a download, give --model-dir",
        )
    elif raw_dir is not None:
        if "\x00" in raw_dir:
            raise ConfigError(dir_name, raw_dir, "contains a NUL byte")
        model_dir = os.path.abspath(raw_dir)
        model_name = os.path.basename(model_dir.rstrip("/")) or model_dir
    else:
        raise ConfigError("--model-dir", None, "give the model directory, or --model-uri to download it first")
    raw, name = src.get("model_wait_timeout", "RUNTIME_MODEL_WAIT_TIMEOUT")
    model_wait = parse_seconds(name, raw) if raw is not None else 0.0

    # --- supervision
    raw, name = src.get("poll_interval", "RUNTIME_POLL_INTERVAL")
    poll = parse_seconds(name, raw, minimum=0.05, maximum=60) if raw is not None else 1.0
    raw, name = src.get("log_interval", "RUNTIME_LOG_INTERVAL")
    log_interval = parse_seconds(name, raw, minimum=0.1, maximum=3600) if raw is not None else 10.0
    raw, name = src.get("stop_timeout", "RUNTIME_STOP_TIMEOUT")
    stop_timeout = parse_seconds(name, raw, minimum=0, maximum=3600) if raw is not None else 10.0
    raw, name = src.get("log_level", "RUNTIME_LOG_LEVEL")
    log_level = parse_choice(name, raw if raw is not None else "info", ("debug", "info", "warning", "error")).upper()

    # --- the Ray node
    raw, name = src.get("ray_command", "RUNTIME_RAY_COMMAND")
    ray_command = parse_command(name, raw if raw is not None else "ray", env)
    raw, name = src.get("node_ip", "RUNTIME_NODE_IP")
    node_ip = parse_host(name, raw) if raw is not None else None
    raw, name = src.get("num_cpus", "RUNTIME_NUM_CPUS")
    num_cpus = parse_number(name, raw) if raw is not None else None
    raw, name = src.get("num_gpus", "RUNTIME_NUM_GPUS")
    num_gpus = parse_number(name, raw) if raw is not None else None
    raw, name = src.get("resources", "RUNTIME_RESOURCES")
    resources = parse_resources(name, raw) if raw is not None else None
    raw, name = src.get("ray_start_args", "RUNTIME_RAY_START_ARGS")
    ray_start_args = parse_args_string(name, raw) if raw is not None else ()
    check_ray_start_args(role, ray_start_args)

    raw, name = src.get("kuberay", "RUNTIME_KUBERAY")
    kuberay_mode = parse_choice(name, raw if raw is not None else "auto", ("auto", "on", "off"))
    kuberay_command: str | None = None
    kuberay_flags: dict[str, str] = {}
    generated = env.get(KUBERAY_ENV, "").strip()
    if kuberay_mode == "on" and not generated:
        raise ConfigError(name, raw, f"KubeRay mode is on but {KUBERAY_ENV} is not set")
    if generated and kuberay_mode != "off":
        kuberay_command = generated
        kuberay_flags = {k: _expand(v, env) for k, v in ray_start_flags(generated).items()}
        is_head = "head" in kuberay_flags
        if is_head != (role == HEAD):
            kind = "a head" if is_head else "a worker"
            raise ConfigError(KUBERAY_ENV, generated, f"starts {kind} node but this is `aibrix-runtime {role}`")
        for attr, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus), ("resources", resources)):
            if value is not None:
                warnings.append(f"--{attr.replace('_', '-')} is ignored: KubeRay's generated `ray start` is used")
        if ray_start_args:
            warnings.append("--ray-start-args is ignored: KubeRay's generated `ray start` is used")
        if node_ip is None and kuberay_flags.get("node-ip-address"):
            node_ip = parse_host(KUBERAY_ENV, kuberay_flags["node-ip-address"])

    common = dict(
        role=role,
        model_dir=model_dir,
        model_name=model_name,
        download_args=download_args,
        model_wait_timeout=model_wait,
        ray_command=ray_command,
        node_ip=node_ip,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        resources=resources,
        ray_start_args=ray_start_args,
        kuberay_command=kuberay_command,
        poll_interval=poll,
        log_interval=log_interval,
        stop_timeout=stop_timeout,
        log_level=log_level,
        print_commands=bool(args.print_commands),
    )
    if role == HEAD:
        return _head_settings(src, env, engine_args, kuberay_flags, common, warnings)
    return _worker_settings(src, env, kuberay_flags, common, warnings)


def _expand(value: str, env: Mapping[str, str]) -> str:
    return string.Template(value).safe_substitute(env)


def _head_settings(
    src: _Source,
    env: Mapping[str, str],
    engine_args: tuple[str, ...],
    kuberay_flags: Mapping[str, str],
    common: dict[str, object],
    warnings: list[str],
) -> Settings:
    raw, name = src.get("ray_port", "RUNTIME_RAY_PORT")
    ray_port = parse_int(name, raw, minimum=1, maximum=65535) if raw is not None else DEFAULT_RAY_PORT
    raw, name = src.get("dashboard_host", "RUNTIME_DASHBOARD_HOST")
    dashboard_host = parse_host(name, raw) if raw is not None else "0.0.0.0"
    raw, name = src.get("dashboard_port", "RUNTIME_DASHBOARD_PORT")
    dashboard_port = parse_int(name, raw, minimum=1, maximum=65535) if raw is not None else DEFAULT_DASHBOARD_PORT
    if common["kuberay_command"] is not None:
        # KubeRay decides the ports; read them from its command so that we probe what it starts.
        if "port" in kuberay_flags:
            ray_port = parse_int(KUBERAY_ENV + " --port", kuberay_flags["port"], minimum=1, maximum=65535)
        if "dashboard-port" in kuberay_flags:
            dashboard_port = parse_int(
                KUBERAY_ENV + " --dashboard-port", kuberay_flags["dashboard-port"], minimum=1, maximum=65535
            )
        dashboard_host = kuberay_flags.get("dashboard-host") or "127.0.0.1"
    raw, name = src.get("dashboard_url", "RUNTIME_DASHBOARD_URL")
    dashboard_url = _url(name, raw) if raw is not None else dashboard_url_for(dashboard_host, dashboard_port)
    raw, name = src.get("ray_health_check", "RUNTIME_RAY_HEALTH_CHECK")
    health = parse_health_check(name, raw) if raw is not None else DEFAULT_HEALTH_CHECK

    raw, name = src.get("tensor_parallel_size", "RUNTIME_TENSOR_PARALLEL_SIZE")
    tp = parse_int(name, raw, minimum=1, maximum=4096) if raw is not None else 1
    raw, name = src.get("pipeline_parallel_size", "RUNTIME_PIPELINE_PARALLEL_SIZE")
    pp = parse_int(name, raw, minimum=1, maximum=4096) if raw is not None else 1
    raw, name = src.get("served_model_name", "RUNTIME_SERVED_MODEL_NAME")
    served = raw if raw is not None else str(common["model_name"])
    if not served.strip() or any(c.isspace() for c in served):
        raise ConfigError(name, served, "must be a non-empty name without spaces")
    raw, name = src.get("expected_nodes", "RUNTIME_EXPECTED_NODES")
    expected_nodes = parse_int(name, raw, minimum=0, maximum=100_000) if raw is not None else 0
    raw, name = src.get("expected_gpus", "RUNTIME_EXPECTED_GPUS")
    expected_gpus = parse_int(name, raw, minimum=0, maximum=1_000_000) if raw is not None else tp * pp
    if expected_gpus < tp * pp:
        raise ConfigError(name, raw, f"fewer than tensor-parallel x pipeline-parallel = {tp * pp} GPUs")
    raw, name = src.get("accelerator_resource", "RUNTIME_ACCELERATOR_RESOURCE")
    accelerator = raw if raw is not None else "GPU"
    if not re.fullmatch(r"[A-Za-z0-9_.:/-]+", accelerator):
        raise ConfigError(name, accelerator, "expected a Ray resource name such as GPU")
    raw, name = src.get("cluster_wait_timeout", "RUNTIME_CLUSTER_WAIT_TIMEOUT")
    cluster_wait = parse_seconds(name, raw, minimum=0.1) if raw is not None else 600.0
    raw, name = src.get("dashboard_lost_timeout", "RUNTIME_DASHBOARD_LOST_TIMEOUT")
    dashboard_lost = parse_seconds(name, raw, minimum=0.1) if raw is not None else 30.0
    raw, name = src.get("engine_start_timeout", "RUNTIME_ENGINE_START_TIMEOUT")
    engine_start = parse_seconds(name, raw) if raw is not None else 3600.0
    raw, name = src.get("engine_lost_timeout", "RUNTIME_ENGINE_LOST_TIMEOUT")
    engine_lost = parse_seconds(name, raw, minimum=0.1) if raw is not None else 60.0
    raw, name = src.get("vllm_command", "RUNTIME_VLLM_COMMAND")
    vllm_command = parse_command(name, raw if raw is not None else "vllm", env)
    check_engine_args(engine_args)
    return Settings(
        **common,  # type: ignore[arg-type]
        ray_port=ray_port,
        dashboard_host=dashboard_host,
        dashboard_port=dashboard_port,
        dashboard_url=dashboard_url,
        ray_health_check=health,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        served_model_name=served,
        expected_nodes=expected_nodes,
        expected_gpus=expected_gpus,
        accelerator_resource=accelerator,
        cluster_wait_timeout=cluster_wait,
        dashboard_lost_timeout=dashboard_lost,
        engine_start_timeout=engine_start,
        engine_lost_timeout=engine_lost,
        vllm_command=vllm_command,
        engine_args=engine_args,
        warnings=tuple(warnings),
    )


def _worker_settings(
    src: _Source,
    env: Mapping[str, str],
    kuberay_flags: Mapping[str, str],
    common: dict[str, object],
    warnings: list[str],
) -> Settings:
    raw, name = src.get("head_address", "RUNTIME_HEAD_ADDRESS")
    head: tuple[str, int] | None = parse_host_port(name, raw, DEFAULT_RAY_PORT) if raw is not None else None
    if common["kuberay_command"] is not None:
        # KubeRay's command names the head (its service); probe exactly what `ray start` will connect to.
        address = kuberay_flags.get("address") or _kuberay_env_address(env)
        if not address:
            raise ConfigError(KUBERAY_ENV, common["kuberay_command"], "names no --address, and FQ_RAY_IP is not set")
        kuberay_head = parse_host_port(KUBERAY_ENV + " --address", address, DEFAULT_RAY_PORT)
        if head is not None and head != kuberay_head:
            warnings.append(f"{name} is ignored: KubeRay's command connects to {address}")
        head = kuberay_head
    if head is None:
        raise ConfigError("--head-address", None, "give the head's HOST[:PORT] (RUNTIME_HEAD_ADDRESS)")
    raw, name = src.get("head_wait_timeout", "RUNTIME_HEAD_WAIT_TIMEOUT")
    head_wait = parse_seconds(name, raw, minimum=0.1) if raw is not None else 600.0
    raw, name = src.get("head_lost_timeout", "RUNTIME_HEAD_LOST_TIMEOUT")
    head_lost = parse_seconds(name, raw, minimum=0.1) if raw is not None else 30.0
    return Settings(
        **common,  # type: ignore[arg-type]
        head_host=head[0],
        ray_port=head[1],
        head_wait_timeout=head_wait,
        head_lost_timeout=head_lost,
        warnings=tuple(warnings),
    )


def _kuberay_env_address(env: Mapping[str, str]) -> str:
    host = (env.get("FQ_RAY_IP") or env.get("RAY_IP") or "").strip()
    if not host:
        return ""
    port = (env.get("RAY_PORT") or str(DEFAULT_RAY_PORT)).strip()
    return f"{_bracket(host)}:{port}"
