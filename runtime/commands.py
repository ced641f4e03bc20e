"""Pure builders: Settings in, command lines and environments out. Nothing here starts a process or reads the
environment (an environment is passed in and a new one returned), so every option is covered by unit tests.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence

from .config import HEAD, WORKER, Settings

# Network settings of the collective libraries: passed through untouched, never set or changed here.
PASSTHROUGH_PREFIXES = ("NCCL_", "GLOO_", "UCX_", "TP_SOCKET_IFNAME")


def download_command(python: str, s: Settings) -> list[str] | None:
    """`python -m downloader --model-uri ... [--local-dir ...] [--model-name ...]`, or None when not downloading.

    The rest of the downloader's settings come from its own DOWNLOADER_* environment, passed on unchanged."""
    if not s.download_args:
        return None
    return [python, "-m", "downloader", *s.download_args]


def ray_start_command(s: Settings) -> list[str]:
    """The `ray start ... --block` this node runs: KubeRay's generated command when present, else our own."""
    if s.kuberay_command is not None:
        return kuberay_command(s.kuberay_command)
    if s.role == HEAD:
        return ray_head_command(s)
    return ray_worker_command(s)


def _node_flags(s: Settings) -> list[str]:
    flags: list[str] = []
    if s.node_ip is not None:
        flags.append(f"--node-ip-address={s.node_ip}")
    if s.num_cpus is not None:
        flags.append(f"--num-cpus={s.num_cpus}")
    if s.num_gpus is not None:
        flags.append(f"--num-gpus={s.num_gpus}")
    if s.resources is not None:
        flags.append(f"--resources={s.resources}")
    return flags


def ray_head_command(s: Settings) -> list[str]:
    assert s.role == HEAD
    return [
        *s.ray_command,
        "start",
        "--head",
        f"--port={s.ray_port}",
        "--include-dashboard=true",
        f"--dashboard-host={s.dashboard_host}",
        f"--dashboard-port={s.dashboard_port}",
        *_node_flags(s),
        *s.ray_start_args,
        "--block",
    ]


def ray_worker_command(s: Settings) -> list[str]:
    assert s.role == WORKER
    return [*s.ray_command, "start", f"--address={s.gcs_address}", *_node_flags(s), *s.ray_start_args, "--block"]


def kuberay_command(generated: str) -> list[str]:
    """KubeRay's generated `ray start` (a shell string, possibly with quoted JSON), run by a shell that then
    becomes `ray start` itself (exec), so that signals reach it directly. `--block` is added when missing: the
    runtime supervises a blocking `ray start`."""
    line = generated.strip()
    if "--block" not in shlex.split(line):
        line += " --block"
    return ["/bin/sh", "-c", "exec " + line]


def vllm_command(s: Settings) -> list[str]:
    """`vllm serve <model dir>` on the Ray cluster; engine arguments after `--` follow unchanged."""
    assert s.role == HEAD
    return [
        *s.vllm_command,
        "serve",
        s.model_dir,
        "--tensor-parallel-size",
        str(s.tensor_parallel_size),
        "--pipeline-parallel-size",
        str(s.pipeline_parallel_size),
        "--distributed-executor-backend",
        "ray",
        "--served-model-name",
        s.served_model_name,
        *s.engine_args,
    ]


def ray_env(base: Mapping[str, str], s: Settings) -> dict[str, str]:
    """Environment of `ray start`: the base unchanged, plus

    - RAY_health_check_period_ms / _timeout_ms / _failure_threshold (head only, each only when not already set):
      how fast the GCS declares a silent node DEAD; Ray's defaults take about a minute for a frozen node;
    - VLLM_HOST_IP = --node-ip when set and VLLM_HOST_IP is not: vLLM's workers run inside this node's Ray
      worker processes and inherit this environment.
    NCCL_*, GLOO_*, UCX_* and every other variable pass through untouched."""
    env = dict(base)
    if s.role == HEAD and s.ray_health_check is not None:
        hc = s.ray_health_check
        env.setdefault("RAY_health_check_period_ms", str(hc.period_ms))
        env.setdefault("RAY_health_check_timeout_ms", str(hc.timeout_ms))
        env.setdefault("RAY_health_check_failure_threshold", str(hc.failure_threshold))
    if s.node_ip is not None:
        env.setdefault("VLLM_HOST_IP", s.node_ip)
    return env


def engine_env(base: Mapping[str, str], s: Settings) -> dict[str, str]:
    """Environment of `vllm serve`: the base unchanged, plus RAY_ADDRESS (this head's GCS, so that vLLM joins
    this cluster and never starts one of its own) and VLLM_HOST_IP, each only when not already set."""
    env = dict(base)
    env.setdefault("RAY_ADDRESS", s.gcs_address)
    if s.node_ip is not None:
        env.setdefault("VLLM_HOST_IP", s.node_ip)
    return env


def passthrough_network_env(env: Mapping[str, str]) -> dict[str, str]:
    """The collective-network variables present (NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME, NCCL_IB_HCA, ...), for
    the log: they reach Ray and vLLM unchanged."""
    return {k: v for k, v in sorted(env.items()) if k.startswith(PASSTHROUGH_PREFIXES)}


def shell_line(argv: Sequence[str]) -> str:
    return shlex.join(argv)


def describe_commands(python: str, s: Settings, base_env: Mapping[str, str]) -> list[str]:
    """What --print-commands prints: each step as a shell line, with the variables the runtime adds."""
    steps: list[tuple[str, str | None]] = []
    download = download_command(python, s)
    if download is not None:
        steps.append(("download the model, then check its manifest", shell_line(download)))
    else:
        steps.append((f"wait for the model's manifest in {s.model_dir}", None))
    if s.role == WORKER:
        steps.append((f"wait until the head's GCS answers at {s.gcs_address}", None))
    added = {k: v for k, v in ray_env(base_env, s).items() if base_env.get(k) != v}
    ray_line = shell_line([*(f"{k}={v}" for k, v in sorted(added.items())), *ray_start_command(s)])
    steps.append(("start this Ray node (supervised, blocking)", ray_line))
    if s.role == HEAD:
        need = f"{s.expected_gpus} {s.accelerator_resource}"
        if s.expected_nodes:
            need = f"{s.expected_nodes} nodes and {need}"
        steps.append((f"wait until the cluster has {need} (dashboard {s.dashboard_url})", None))
        added = {k: v for k, v in engine_env(base_env, s).items() if base_env.get(k) != v}
        vllm_line = shell_line([*(f"{k}={v}" for k, v in sorted(added.items())), *vllm_command(s)])
        steps.append(("serve (supervised)", vllm_line))
    lines: list[str] = []
    for i, (title, line) in enumerate(steps, start=1):
        lines.append(f"# {i}. {title}")
        if line is not None:
            lines.append(line)
    return lines
