"""aibrix-runtime without Ray or vLLM: settings parsing (every option, flag and environment), the pure command
builders, cluster membership, the error tree, and the supervisor driven through the real CLI with stand-in
`ray` and `vllm` programs and a stand-in dashboard on 127.0.0.1. Runs in the fast suite's venv."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from downloader.errors import ConfigError
from runtime import commands
from runtime.cluster import Membership, Node, engine_nodes, lost_nodes, parse_nodes, probe_tcp
from runtime.config import (
    DEFAULT_HEALTH_CHECK,
    HealthCheck,
    Settings,
    engine_endpoint,
    load_settings,
    parse_command,
    parse_host_port,
    ray_start_flags,
)
from runtime.errors import (
    EngineExitedError,
    EngineLostError,
    EngineStartTimeoutError,
    Interrupted,
    NodeLostError,
    RuntimeFailure,
)
from runtime.supervise import Child, Signals, describe_exit, stop_together
from tests.conftest import REPO, StderrLines, wait_until

RAY = "/opt/ray/bin/ray"
VLLM = "/opt/vllm/bin/vllm"
BASE_ENV = {"RUNTIME_RAY_COMMAND": RAY, "RUNTIME_VLLM_COMMAND": VLLM, "PATH": "/usr/bin:/bin"}


def load(*argv: str, **env: str) -> Settings:
    return load_settings(list(argv), {**BASE_ENV, **env})


def head(*argv: str, **env: str) -> Settings:
    return load("head", "--model-dir", "/models/m", *argv, **env)


def worker(*argv: str, **env: str) -> Settings:
    return load("worker", "--model-dir", "/models/m", "--head-address", "10.0.0.1", *argv, **env)


def config_error(fn: Any, *argv: str, **env: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        fn(*argv, **env)
    return info.value


# ============================================================================================ settings


def test_head_defaults() -> None:
    s = head()
    assert s.role == "head" and s.model_dir == "/models/m" and s.model_name == "m" and s.download_args == ()
    assert s.model_wait_timeout == 0.0
    assert s.ray_command == (RAY,) and s.vllm_command == (VLLM,)
    assert s.node_ip is None and s.num_cpus is None and s.num_gpus is None and s.resources is None
    assert s.ray_start_args == () and s.kuberay_command is None
    assert (s.ray_port, s.dashboard_host, s.dashboard_port) == (6379, "0.0.0.0", 8265)
    assert s.dashboard_url == "http://127.0.0.1:8265"
    assert s.ray_health_check == DEFAULT_HEALTH_CHECK == HealthCheck(1000, 1000, 3)
    assert (s.tensor_parallel_size, s.pipeline_parallel_size, s.served_model_name) == (1, 1, "m")
    assert (s.expected_nodes, s.expected_gpus, s.accelerator_resource) == (0, 1, "GPU")
    assert (s.cluster_wait_timeout, s.dashboard_lost_timeout, s.engine_start_timeout) == (600.0, 30.0, 3600.0)
    assert s.engine_lost_timeout == 60.0
    assert (s.poll_interval, s.log_interval, s.stop_timeout, s.log_level) == (1.0, 10.0, 10.0, "INFO")
    assert s.engine_args == () and not s.print_commands and s.warnings == ()
    assert s.gcs_address == "127.0.0.1:6379"


def test_worker_defaults() -> None:
    s = worker()
    assert s.role == "worker" and s.head_host == "10.0.0.1" and s.ray_port == 6379
    assert (s.head_wait_timeout, s.head_lost_timeout) == (600.0, 30.0)
    assert s.gcs_address == "10.0.0.1:6379"


# (flag, environment variable, raw value, attribute, parsed value) for every option of both subcommands
COMMON_OPTIONS = [
    ("--model-wait-timeout", "RUNTIME_MODEL_WAIT_TIMEOUT", "90", "model_wait_timeout", 90.0),
    ("--ray-command", "RUNTIME_RAY_COMMAND", "/x/ray --verbose", "ray_command", ("/x/ray", "--verbose")),
    ("--node-ip", "RUNTIME_NODE_IP", "127.0.0.11", "node_ip", "127.0.0.11"),
    ("--num-cpus", "RUNTIME_NUM_CPUS", "8", "num_cpus", "8"),
    ("--num-gpus", "RUNTIME_NUM_GPUS", "0.5", "num_gpus", "0.5"),
    ("--resources", "RUNTIME_RESOURCES", '{"rack": 1, "a": 2}', "resources", '{"a":2,"rack":1}'),
    (
        "--ray-start-args",
        "RUNTIME_RAY_START_ARGS",
        "--object-store-memory=1000000000 --temp-dir '/tmp/r x'",
        "ray_start_args",
        ("--object-store-memory=1000000000", "--temp-dir", "/tmp/r x"),
    ),
    ("--poll-interval", "RUNTIME_POLL_INTERVAL", "0.5", "poll_interval", 0.5),
    ("--log-interval", "RUNTIME_LOG_INTERVAL", "30s", "log_interval", 30.0),
    ("--stop-timeout", "RUNTIME_STOP_TIMEOUT", "25", "stop_timeout", 25.0),
    ("--log-level", "RUNTIME_LOG_LEVEL", "DEBUG", "log_level", "DEBUG"),
]
HEAD_OPTIONS = [
    ("--ray-port", "RUNTIME_RAY_PORT", "7000", "ray_port", 7000),
    ("--dashboard-host", "RUNTIME_DASHBOARD_HOST", "127.0.0.11", "dashboard_host", "127.0.0.11"),
    ("--dashboard-port", "RUNTIME_DASHBOARD_PORT", "9000", "dashboard_port", 9000),
    ("--dashboard-url", "RUNTIME_DASHBOARD_URL", "http://ray-head:8265/", "dashboard_url", "http://ray-head:8265"),
    ("--ray-health-check", "RUNTIME_RAY_HEALTH_CHECK", "500, 2000, 5", "ray_health_check", HealthCheck(500, 2000, 5)),
    ("--tensor-parallel-size", "RUNTIME_TENSOR_PARALLEL_SIZE", "8", "tensor_parallel_size", 8),
    ("--pipeline-parallel-size", "RUNTIME_PIPELINE_PARALLEL_SIZE", "2", "pipeline_parallel_size", 2),
    ("--served-model-name", "RUNTIME_SERVED_MODEL_NAME", "deepseek-r1", "served_model_name", "deepseek-r1"),
    ("--expected-nodes", "RUNTIME_EXPECTED_NODES", "2", "expected_nodes", 2),
    ("--expected-gpus", "RUNTIME_EXPECTED_GPUS", "16", "expected_gpus", 16),
    ("--accelerator-resource", "RUNTIME_ACCELERATOR_RESOURCE", "TPU", "accelerator_resource", "TPU"),
    ("--cluster-wait-timeout", "RUNTIME_CLUSTER_WAIT_TIMEOUT", "1200", "cluster_wait_timeout", 1200.0),
    ("--dashboard-lost-timeout", "RUNTIME_DASHBOARD_LOST_TIMEOUT", "12", "dashboard_lost_timeout", 12.0),
    ("--engine-start-timeout", "RUNTIME_ENGINE_START_TIMEOUT", "0", "engine_start_timeout", 0.0),
    ("--engine-lost-timeout", "RUNTIME_ENGINE_LOST_TIMEOUT", "20s", "engine_lost_timeout", 20.0),
    (
        "--vllm-command",
        "RUNTIME_VLLM_COMMAND",
        "/x/python -m vllm.entrypoints.cli.main",
        "vllm_command",
        ("/x/python", "-m", "vllm.entrypoints.cli.main"),
    ),
]
WORKER_OPTIONS = [
    ("--head-address", "RUNTIME_HEAD_ADDRESS", "ray-head.ns.svc:7000", "head_host", "ray-head.ns.svc"),
    ("--head-wait-timeout", "RUNTIME_HEAD_WAIT_TIMEOUT", "300", "head_wait_timeout", 300.0),
    ("--head-lost-timeout", "RUNTIME_HEAD_LOST_TIMEOUT", "45", "head_lost_timeout", 45.0),
]


@pytest.mark.parametrize("role", ["head", "worker"])
@pytest.mark.parametrize(("flag", "env_name", "raw", "attr", "value"), COMMON_OPTIONS)
def test_common_options_from_flag_and_environment(
    role: str, flag: str, env_name: str, raw: str, attr: str, value: object
) -> None:
    base = head if role == "head" else worker
    assert getattr(base(f"{flag}={raw}"), attr) == value
    assert getattr(base(**{env_name: raw}), attr) == value


@pytest.mark.parametrize(("flag", "env_name", "raw", "attr", "value"), HEAD_OPTIONS)
def test_head_options_from_flag_and_environment(flag: str, env_name: str, raw: str, attr: str, value: object) -> None:
    extra = ("--tensor-parallel-size=8", "--pipeline-parallel-size=2") if attr == "expected_gpus" else ()
    assert getattr(head(f"{flag}={raw}", *extra), attr) == value
    assert getattr(head(*extra, **{env_name: raw}), attr) == value


@pytest.mark.parametrize(("flag", "env_name", "raw", "attr", "value"), WORKER_OPTIONS)
def test_worker_options_from_flag_and_environment(flag: str, env_name: str, raw: str, attr: str, value: object) -> None:
    argv = ["worker", "--model-dir", "/models/m", f"{flag}={raw}"]
    if flag != "--head-address":
        argv += ["--head-address", "10.0.0.1"]
    assert getattr(load(*argv), attr) == value
    env_argv = [a for a in argv if not a.startswith(flag)]
    assert getattr(load(*env_argv, **{env_name: raw}), attr) == value


def test_flags_beat_the_environment() -> None:
    s = head(
        "--tensor-parallel-size",
        "4",
        "--node-ip",
        "10.1.1.1",
        RUNTIME_TENSOR_PARALLEL_SIZE="2",
        RUNTIME_NODE_IP="10.2.2.2",
        RUNTIME_MODEL_DIR="/elsewhere",
    )
    assert (s.tensor_parallel_size, s.node_ip, s.model_dir) == (4, "10.1.1.1", "/models/m")
    assert load("head", RUNTIME_MODEL_DIR="/from/env").model_dir == "/from/env"
    assert load("head", "--model-dir", "/m", "-tp", "2", "-pp", "3").expected_gpus == 6  # short vLLM spellings


def test_switches_and_derived_values() -> None:
    assert head("--print-commands").print_commands
    assert head("--ray-health-check", "ray").ray_health_check is None
    assert head(RUNTIME_RAY_HEALTH_CHECK="off").ray_health_check is None
    assert head("--tensor-parallel-size", "4", "--pipeline-parallel-size", "2").expected_gpus == 8
    assert head("--dashboard-port", "9000").dashboard_url == "http://127.0.0.1:9000"
    assert head("--dashboard-host", "10.0.0.5").dashboard_url == "http://10.0.0.5:8265"
    assert head("--dashboard-host", "::").dashboard_url == "http://[::1]:8265"
    assert head("--node-ip", "10.0.0.5", "--ray-port", "7000").gcs_address == "10.0.0.5:7000"
    assert head("--num-gpus", "2.0").num_gpus == "2"
    assert worker("--head-address", "[fd00::1]:7000").gcs_address == "[fd00::1]:7000"
    assert load("head", "--model-dir", "relative/dir").model_dir == os.path.abspath("relative/dir")


def test_engine_arguments_after_double_dash_pass_through_unchanged() -> None:
    s = head("-tp", "2", "--", "--port", "8011", "--enforce-eager", "--max-model-len=256", "--", "x")
    assert s.engine_args == ("--port", "8011", "--enforce-eager", "--max-model-len=256", "--", "x")


@pytest.mark.parametrize(
    "word",
    [
        "--tensor-parallel-size=2",
        "-tp",
        "--pipeline-parallel-size",
        "-pp",
        "--distributed-executor-backend=mp",
        "--served-model-name",
        "--model",
        "--tensor_parallel_size=2",
    ],
)
def test_engine_flags_the_runtime_owns_are_refused(word: str) -> None:
    err = config_error(head, "--", "--port", "1", word, "2")
    assert "engine arguments" in str(err) and "the runtime sets this flag itself" in str(err)


def test_engine_arguments_cannot_name_another_model_or_go_to_a_worker() -> None:
    assert "the model is the runtime's" in str(config_error(head, "--", "/other/model"))
    assert "only `aibrix-runtime head`" in str(config_error(worker, "--", "--port", "1"))


@pytest.mark.parametrize(
    ("role", "word"),
    [
        ("head", "--head"),
        ("head", "--block"),
        ("head", "--port=1"),
        ("head", "--dashboard-port=1"),
        ("head", "--dashboard-host=x"),
        ("head", "--include-dashboard=false"),
        ("head", "--num-gpus=1"),
        ("head", "--node-ip-address=1.2.3.4"),
        ("head", "--resources={}"),
        ("head", "--num_cpus=1"),
        ("head", "--address=x:1"),
        ("worker", "--address=x:1"),
        ("worker", "--block"),
        ("worker", "--head"),
        ("worker", "--num-cpus=2"),
        ("worker", "--num-gpus=2"),
        ("worker", "--resources={}"),
        ("worker", "--node-ip-address=1.2.3.4"),
    ],
)
def test_ray_start_flags_the_runtime_owns_are_refused(role: str, word: str) -> None:
    err = config_error(head if role == "head" else worker, f"--ray-start-args={word}")
    assert err.setting == "--ray-start-args" and "use " in err.reason


BAD_VALUES = [
    (head, "--tensor-parallel-size", "0"),
    (head, "--pipeline-parallel-size", "x"),
    (head, "--ray-port", "70000"),
    (head, "--dashboard-port", "0"),
    (head, "--dashboard-url", "ray-head:8265"),
    (head, "--expected-nodes", "-1"),
    (head, "--expected-gpus", "many"),
    (head, "--cluster-wait-timeout", "0"),
    (head, "--dashboard-lost-timeout", "x"),
    (head, "--ray-health-check", "1000,1000"),
    (head, "--ray-health-check", "10,1000,3"),
    (head, "--engine-start-timeout", "-1"),
    (head, "--served-model-name", "a b"),
    (head, "--accelerator-resource", "G P U"),
    (head, "--dashboard-host", "a b"),
    (head, "--vllm-command", "'unclosed"),
    (head, "--model-wait-timeout", "-5"),
    (head, "--node-ip", "not a host"),
    (head, "--num-cpus", "-1"),
    (head, "--num-gpus", "nan"),
    (head, "--resources", "[1]"),
    (head, "--resources", '{"GPU": 1}'),
    (head, "--resources", '{"a": "x"}'),
    (head, "--resources", "{"),
    (head, "--ray-start-args", "'unclosed"),
    (head, "--poll-interval", "0"),
    (head, "--log-interval", "x"),
    (head, "--stop-timeout", "-1"),
    (head, "--log-level", "loud"),
    (head, "--kuberay", "maybe"),
    (head, "--ray-command", ""),
    (worker, "--head-address", "a:b:c:99999"),
    (worker, "--head-address", "h:0"),
    (worker, "--head-wait-timeout", "0"),
    (worker, "--head-lost-timeout", "x"),
]


@pytest.mark.parametrize(("fn", "flag", "raw"), BAD_VALUES)
def test_bad_values_fail_naming_the_setting(fn: Any, flag: str, raw: str) -> None:
    err = config_error(fn, f"{flag}={raw}")
    assert err.setting.startswith(flag) and err.exit_code == 2


def test_bad_environment_values_name_the_variable() -> None:
    assert config_error(head, RUNTIME_TENSOR_PARALLEL_SIZE="two").setting == "RUNTIME_TENSOR_PARALLEL_SIZE"
    assert config_error(worker, RUNTIME_HEAD_LOST_TIMEOUT="soon").setting == "RUNTIME_HEAD_LOST_TIMEOUT"
    err = config_error(head, "-tp", "4", RUNTIME_EXPECTED_GPUS="2")
    assert err.setting == "RUNTIME_EXPECTED_GPUS" and "fewer than" in err.reason


def test_model_source_rules() -> None:
    assert "give the model directory" in str(config_error(load, "head"))
    assert "only goes with --model-uri" in str(config_error(load, "head", "--model-dir", "/m", "--local-dir", "/x"))
    assert config_error(load, "worker", "--model-dir", "/m").setting == "--head-address"
    assert "NUL" in str(config_error(load, "head", RUNTIME_MODEL_DIR="/a\x00b"))


def test_model_uri_runs_the_download_and_the_downloader_decides_the_directory() -> None:
    s = load("head", "--model-uri", "s3://bucket/models/deepseek-r1/", "--local-dir", "/models")
    assert s.download_args == ("--model-uri", "s3://bucket/models/deepseek-r1/", "--local-dir", "/models")
    assert (s.model_dir, s.model_name, s.served_model_name) == ("/models/deepseek-r1", "deepseek-r1", "deepseek-r1")
    s = load(
        "worker",
        "--model-uri",
        "s3://bucket/m/",
        "--model-name",
        "org/name",
        "--head-address",
        "h",
        DOWNLOADER_LOCAL_DIR="/data",
    )
    assert s.model_dir == "/data/org/name" and s.download_args[-2:] == ("--model-name", "org/name")
    s = load("head", RUNTIME_MODEL_URI="s3://bucket/m/", DOWNLOADER_LOCAL_DIR="/data")
    assert s.model_dir == "/data/m" and s.download_args == ("--model-uri", "s3://bucket/m/")
    assert load("head", "--model-uri", "s3://bucket/m/", "--local-dir", "/d", "--model-dir", "/d/m").model_dir == "/d/m"
    err = config_error(load, "head", "--model-uri", "s3://bucket/m/", "--local-dir", "/d", "--model-dir", "/x")
    assert "contradicts --model-uri" in str(err)
    assert config_error(load, "head", "--model-uri", "s3://b/m/").setting == "--model-uri"  # the downloader's check


def test_unknown_runtime_variables_are_reported() -> None:
    assert head(RUNTIME_TENSOR_PARALEL_SIZE="2").warnings == (
        "ignoring unknown environment variable RUNTIME_TENSOR_PARALEL_SIZE",
    )


def test_command_resolution(tmp_path: Path) -> None:
    assert parse_command("x", "sh -c 'echo hi'", {"PATH": "/usr/bin:/bin"}) == ("sh", "-c", "echo hi")
    assert parse_command("x", "no-such-program-xyz", {"PATH": ""}) == ("no-such-program-xyz",)
    # not on PATH, but next to this Python (a virtual environment that is not activated)
    name = os.path.basename(sys.executable)
    assert parse_command("x", name, {"PATH": str(tmp_path)}) == (os.path.join(os.path.dirname(sys.executable), name),)


def test_host_and_port_parsing() -> None:
    assert parse_host_port("s", "head", 6379) == ("head", 6379)
    assert parse_host_port("s", "head.ns.svc.cluster.local:7000", 6379) == ("head.ns.svc.cluster.local", 7000)
    assert parse_host_port("s", "127.0.0.11:1", 6379) == ("127.0.0.11", 1)
    assert parse_host_port("s", "[fd00::1]:7000", 6379) == ("fd00::1", 7000)
    assert parse_host_port("s", "fd00::1", 6379) == ("fd00::1", 6379)
    with pytest.raises(ConfigError):
        parse_host_port("s", ":7000", 6379)


def test_engine_endpoint_from_its_arguments() -> None:
    assert engine_endpoint([]) == ("127.0.0.1", 8000)
    assert engine_endpoint(["--port", "8011", "--host", "0.0.0.0"]) == ("127.0.0.1", 8011)
    assert engine_endpoint(["--port=9000", "--host=10.0.0.3"]) == ("10.0.0.3", 9000)
    assert engine_endpoint(["--host", "::"]) == ("::1", 8000)


# ================================================================================================ KubeRay

KUBERAY_HEAD = (
    "ray start --head --dashboard-host=0.0.0.0 --metrics-export-port=8080 --num-cpus=8 --port=6380 "
    "--dashboard-port=8266 --resources='{\"rack\":1}' --block --dashboard-agent-listen-port=52365"
)
KUBERAY_WORKER = (
    "ray start --address=raycluster-head-svc.default.svc.cluster.local:6379 --num-gpus=8 "
    "--metrics-export-port=8080 --block --dashboard-agent-listen-port=52365"
)


def test_ray_start_flags_of_a_generated_command() -> None:
    flags = ray_start_flags(KUBERAY_HEAD)
    assert flags["head"] == "" and flags["port"] == "6380" and flags["resources"] == '{"rack":1}'
    assert ray_start_flags("ulimit -n 65536; ray start --address x:1 --block")["address"] == "x:1"
    with pytest.raises(ConfigError):
        ray_start_flags("echo hello")


def test_kuberay_head_uses_the_generated_command_and_its_ports() -> None:
    s = head("--num-gpus", "1", "--ray-port", "7000", KUBERAY_GEN_RAY_START_CMD=KUBERAY_HEAD)
    assert s.kuberay_command == KUBERAY_HEAD
    assert (s.ray_port, s.dashboard_port, s.dashboard_url) == (6380, 8266, "http://127.0.0.1:8266")
    assert any("--num-gpus is ignored" in w for w in s.warnings)
    assert commands.ray_start_command(s) == ["/bin/sh", "-c", "exec " + KUBERAY_HEAD]
    assert head("--kuberay", "off", KUBERAY_GEN_RAY_START_CMD=KUBERAY_HEAD).kuberay_command is None
    assert head(RUNTIME_KUBERAY="off", KUBERAY_GEN_RAY_START_CMD=KUBERAY_HEAD).kuberay_command is None
    assert "not set" in str(config_error(head, "--kuberay", "on"))
    err = config_error(head, KUBERAY_GEN_RAY_START_CMD=KUBERAY_WORKER)
    assert err.setting == "KUBERAY_GEN_RAY_START_CMD" and "worker node" in err.reason


def test_kuberay_worker_probes_the_address_kuberay_connects_to() -> None:
    s = load("worker", "--model-dir", "/m", KUBERAY_GEN_RAY_START_CMD=KUBERAY_WORKER)
    assert (s.head_host, s.ray_port) == ("raycluster-head-svc.default.svc.cluster.local", 6379)
    s = load("worker", "--model-dir", "/m", "--head-address", "other:1", KUBERAY_GEN_RAY_START_CMD=KUBERAY_WORKER)
    assert s.head_host.startswith("raycluster-head-svc") and any("ignored" in w for w in s.warnings)
    generated = "ray start --num-gpus=1 --block"  # no --address: KubeRay's environment names the head
    s = load("worker", "--model-dir", "/m", KUBERAY_GEN_RAY_START_CMD=generated, FQ_RAY_IP="h.ns.svc", RAY_PORT="7")
    assert (s.head_host, s.ray_port) == ("h.ns.svc", 7)
    s = load(
        "worker",
        "--model-dir",
        "/m",
        KUBERAY_GEN_RAY_START_CMD="ray start --address=$HEAD_HOST:6379",
        HEAD_HOST="10.9.9.9",
    )
    assert s.head_host == "10.9.9.9"
    assert "names no --address" in str(
        config_error(load, "worker", "--model-dir", "/m", KUBERAY_GEN_RAY_START_CMD=generated)
    )
    err = config_error(load, "worker", "--model-dir", "/m", KUBERAY_GEN_RAY_START_CMD=KUBERAY_HEAD)
    assert "head node" in err.reason


def test_kuberay_command_gets_block_when_missing() -> None:
    assert commands.kuberay_command("ray start --head") == ["/bin/sh", "-c", "exec ray start --head --block"]
    assert commands.kuberay_command(" ray start --block ")[-1] == "exec ray start --block"


# =============================================================================================== builders


def test_ray_head_command_with_every_option() -> None:
    s = head(
        "--node-ip",
        "127.0.0.11",
        "--num-cpus",
        "4",
        "--num-gpus",
        "1",
        "--resources",
        '{"r": 1}',
        "--ray-port",
        "7000",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        "9000",
        "--ray-start-args=--object-store-memory=100000000",
    )
    assert commands.ray_head_command(s) == [
        RAY,
        "start",
        "--head",
        "--port=7000",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        "--dashboard-port=9000",
        "--node-ip-address=127.0.0.11",
        "--num-cpus=4",
        "--num-gpus=1",
        '--resources={"r":1}',
        "--object-store-memory=100000000",
        "--block",
    ]
    assert commands.ray_start_command(s) == commands.ray_head_command(s)
    assert commands.ray_head_command(head()) == [
        RAY,
        "start",
        "--head",
        "--port=6379",
        "--include-dashboard=true",
        "--dashboard-host=0.0.0.0",
        "--dashboard-port=8265",
        "--block",
    ]


def test_ray_worker_command_with_every_option() -> None:
    s = worker(
        "--head-address",
        "127.0.0.11:7000",
        "--node-ip",
        "127.0.0.12",
        "--num-cpus",
        "2",
        "--num-gpus",
        "1",
        "--resources",
        '{"r": 1}',
        "--ray-start-args",
        "--dashboard-agent-listen-port=0",
    )
    assert commands.ray_start_command(s) == [
        RAY,
        "start",
        "--address=127.0.0.11:7000",
        "--node-ip-address=127.0.0.12",
        "--num-cpus=2",
        "--num-gpus=1",
        '--resources={"r":1}',
        "--dashboard-agent-listen-port=0",
        "--block",
    ]
    assert commands.ray_worker_command(worker()) == [RAY, "start", "--address=10.0.0.1:6379", "--block"]


def test_vllm_command() -> None:
    s = head("-tp", "8", "-pp", "2", "--served-model-name", "r1", "--", "--port", "8011", "--max-model-len", "4096")
    assert commands.vllm_command(s) == [
        VLLM,
        "serve",
        "/models/m",
        "--tensor-parallel-size",
        "8",
        "--pipeline-parallel-size",
        "2",
        "--distributed-executor-backend",
        "ray",
        "--served-model-name",
        "r1",
        "--port",
        "8011",
        "--max-model-len",
        "4096",
    ]
    assert commands.vllm_command(head())[3:] == [
        "--tensor-parallel-size",
        "1",
        "--pipeline-parallel-size",
        "1",
        "--distributed-executor-backend",
        "ray",
        "--served-model-name",
        "m",
    ]


def test_download_command() -> None:
    assert commands.download_command("/py", head()) is None
    s = load("worker", "--model-uri", "s3://bucket/m/", "--local-dir", "/d", "--model-name", "x", "--head-address", "h")
    assert commands.download_command("/py", s) == [
        "/py",
        "-m",
        "downloader",
        "--model-uri",
        "s3://bucket/m/",
        "--local-dir",
        "/d",
        "--model-name",
        "x",
    ]


NETWORK = {
    "NCCL_SOCKET_IFNAME": "eth0",
    "GLOO_SOCKET_IFNAME": "eth0",
    "NCCL_IB_HCA": "mlx5_0,mlx5_1",
    "NCCL_IB_DISABLE": "0",
    "NCCL_DEBUG": "INFO",
}


def test_ray_environment() -> None:
    base = {"PATH": "/bin", **NETWORK}
    env = commands.ray_env(base, head("--node-ip", "127.0.0.11"))
    assert env == {
        **base,
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
        "VLLM_HOST_IP": "127.0.0.11",
    }
    assert base == {"PATH": "/bin", **NETWORK}  # not mutated
    mine = {**base, "RAY_health_check_period_ms": "3000", "VLLM_HOST_IP": "10.0.0.9"}
    env = commands.ray_env(mine, head("--node-ip", "127.0.0.11", "--ray-health-check", "200,300,4"))
    assert env["RAY_health_check_period_ms"] == "3000" and env["VLLM_HOST_IP"] == "10.0.0.9"  # explicit ones win
    assert (env["RAY_health_check_timeout_ms"], env["RAY_health_check_failure_threshold"]) == ("300", "4")
    assert commands.ray_env(base, head("--ray-health-check", "ray")) == base
    assert commands.ray_env(base, worker()) == base  # health checks are the head's (GCS) business
    assert commands.ray_env(base, worker("--node-ip", "127.0.0.12"))["VLLM_HOST_IP"] == "127.0.0.12"


def test_engine_environment() -> None:
    base = {"PATH": "/bin", **NETWORK}
    assert commands.engine_env(base, head()) == {**base, "RAY_ADDRESS": "127.0.0.1:6379"}
    env = commands.engine_env(base, head("--node-ip", "127.0.0.11", "--ray-port", "7000"))
    assert env == {**base, "RAY_ADDRESS": "127.0.0.11:7000", "VLLM_HOST_IP": "127.0.0.11"}
    assert commands.engine_env({"RAY_ADDRESS": "auto"}, head())["RAY_ADDRESS"] == "auto"  # KubeRay sets its own
    assert commands.passthrough_network_env({**base, "OTHER": "x"}) == dict(sorted(NETWORK.items()))


def test_described_commands_are_what_runs() -> None:
    s = head("--node-ip", "127.0.0.11", "-tp", "2", "--expected-nodes", "2", "--", "--port", "8011")
    lines = commands.describe_commands("/py", s, {"PATH": "/bin"})
    assert lines[0] == "# 1. wait for the model's manifest in /models/m"
    assert lines[2].startswith("RAY_health_check_failure_threshold=3 ") and lines[2].endswith("--block")
    assert "2 nodes and 2 GPU" in lines[3]
    assert lines[5] == (
        "RAY_ADDRESS=127.0.0.11:6379 VLLM_HOST_IP=127.0.0.11 " + commands.shell_line(commands.vllm_command(s))
    )
    s = load("worker", "--model-uri", "s3://bucket/m/", "--local-dir", "/d", "--head-address", "h:1")
    lines = commands.describe_commands("/py", s, {})
    assert lines[1].startswith("/py -m downloader") and "wait until the head's GCS answers at h:1" in lines[2]


# ================================================================================================ cluster

RAY_NODES = {
    "result": True,
    "msg": "",
    "data": {
        "result": {
            "total": 3,
            "result": [
                {
                    "node_id": "w1",
                    "node_ip": "127.0.0.12",
                    "is_head_node": False,
                    "state": "ALIVE",
                    "node_name": "127.0.0.12",
                    "resources_total": {"GPU": 1.0, "CPU": 2.0},
                },
                {
                    "node_id": "h",
                    "node_ip": "127.0.0.11",
                    "is_head_node": True,
                    "state": "ALIVE",
                    "node_name": "127.0.0.11",
                    "resources_total": {"GPU": 1.0, "CPU": 2.0, "node:__internal_head__": 1.0},
                },
                {
                    "node_id": "old",
                    "node_ip": "127.0.0.13",
                    "is_head_node": False,
                    "state": "DEAD",
                    "node_name": "pod-3",
                    "resources_total": {"GPU": 1.0},
                },
                {
                    "node_id": "cpu",
                    "node_ip": "127.0.0.14",
                    "is_head_node": False,
                    "state": "ALIVE",
                    "resources_total": {},
                },
            ],
        }
    },
}


def test_membership_from_the_dashboard_answer() -> None:
    nodes = parse_nodes(RAY_NODES)
    assert [n.node_id for n in nodes] == ["w1", "h", "old", "cpu"]
    m = Membership.of(nodes, expected_nodes=3, expected_accelerators=2, resource="GPU")
    assert m.complete and m.accelerators == 2 and [n.node_id for n in m.alive] == ["h", "w1", "cpu"]
    assert m.summary() == (
        "3 of 3 nodes, 2 of 2 GPU present: 127.0.0.11 [head, 1 GPU], 127.0.0.12 [1 GPU], "
        "127.0.0.14 [0 GPU]; dead: pod-3 (127.0.0.13) [1 GPU]"
    )
    assert [n.node_id for n in engine_nodes(m)] == ["h", "w1"]  # the CPU-only node does not run the engine
    m = Membership.of(nodes[1:2], expected_nodes=2, expected_accelerators=2, resource="GPU")
    assert not m.complete
    assert m.summary() == "1 of 2 nodes, 1 of 2 GPU present: 127.0.0.11 [head, 1 GPU]; missing: 1 node, 1 GPU"
    assert Membership.of([], 0, 1, "GPU").summary() == "0 nodes, 0 of 1 GPU present: none; missing: 1 GPU"
    assert not Membership.of([], 0, 0, "GPU").complete  # not even the head yet
    assert parse_nodes({"data": {"result": [RAY_NODES["data"]["result"]["result"][0]]}})[0].node_id == "w1"
    assert parse_nodes(RAY_NODES, resource="TPU")[0].accelerators == 0
    with pytest.raises(ValueError):
        parse_nodes({"data": {"result": "nope"}})


def test_lost_nodes() -> None:
    nodes = parse_nodes(RAY_NODES)
    watched = engine_nodes(Membership.of(nodes, 0, 2, "GPU"))
    assert lost_nodes(watched, nodes) == []
    dead = [Node("w1", "127.0.0.12", "", False, "DEAD", 1.0), nodes[1]]
    assert [(n.node_id, st) for n, st in lost_nodes(watched, dead)] == [("w1", "DEAD")]
    assert [(n.node_id, st) for n, st in lost_nodes(watched, nodes[1:2])] == [("w1", "gone")]


def test_probe_tcp() -> None:
    import socket

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        assert probe_tcp("127.0.0.1", srv.getsockname()[1], 1.0) is None
        port = srv.getsockname()[1]
    assert probe_tcp("127.0.0.1", port, 1.0) is not None


# ================================================================================================= errors


def test_exit_codes() -> None:
    assert EngineExitedError("x", 0).exit_code == 16
    assert EngineExitedError("x", 3).exit_code == 3  # passed on
    assert EngineExitedError("x", -9).exit_code == 137
    assert Interrupted(15, "SIGTERM").exit_code == 143 and Interrupted(2, "SIGINT").exit_code == 130
    assert NodeLostError("x").exit_code == 14 and RuntimeFailure("x").exit_code == 1
    assert EngineStartTimeoutError("x").exit_code == 17 and EngineLostError("x").exit_code == 18
    assert describe_exit(-9) == "killed by SIGKILL" and describe_exit(3) == "exit code 3"


# ============================================================================================= supervisor


def test_child_stop_kills_its_whole_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    child = Child("sh", ["sh", "-c", f"trap '' TERM; sleep 60 & echo $! > {pids}; wait"], {"PATH": "/usr/bin:/bin"})
    child.start()
    deadline = time.monotonic() + 10
    while not pids.exists() or not pids.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    grandchild = int(pids.read_text())
    assert child.stop(0.5) == -signal.SIGKILL  # ignores SIGTERM, so SIGKILL after the grace
    wait_until("the grandchild killed with its group", lambda: gone(grandchild))


def gone(pid: int) -> bool:
    """Dead: no such process, or a zombie waiting for whoever inherited it."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# A child that ignores SIGTERM, but first records how many of its siblings (itself included) are still alive.
_COUNTS_SIBLINGS_ON_TERM = """
import os, signal, sys, time
pids, log, ready = sys.argv[1:4]
def on_term(*_):
    alive = 0
    for pid in open(pids).read().split():
        try:
            os.kill(int(pid), 0)
            alive += 1
        except ProcessLookupError:
            pass
    with open(log, "a") as fh:
        fh.write(f"{alive}\\n")
signal.signal(signal.SIGTERM, on_term)
with open(ready, "a") as fh:
    fh.write("ready\\n")
while True:
    time.sleep(0.05)
"""


def test_stop_together_signals_every_child_before_it_kills_any(tmp_path: Path) -> None:
    """One shared grace period: each child gets SIGTERM while all three are alive (one by one, the second and
    third would get theirs only after the first was killed), and each is killed once the grace is over."""
    pids, log, ready = tmp_path / "pids", tmp_path / "log", tmp_path / "ready"
    argv = [sys.executable, "-c", _COUNTS_SIBLINGS_ON_TERM, str(pids), str(log), str(ready)]
    children = [Child(f"c{i}", argv, {"PATH": "/usr/bin:/bin"}) for i in range(3)]
    for c in children:
        c.start()
    pids.write_text(" ".join(str(c.pid) for c in children))
    wait_until("three children handling SIGTERM", lambda: ready.exists() and ready.read_text().count("ready") == 3)
    stop_together(children, 5.0)  # each child's handler must run within the grace, however busy the machine
    assert all(c.returncode == -signal.SIGKILL for c in children)
    # The first SIGTERM of each found all three alive (the final stop of each may send another, to fewer).
    assert log.read_text().split()[:3] == ["3", "3", "3"]


def test_signals_interrupt_a_sleep() -> None:
    signals = Signals()
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        signals.install()
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        # Far longer than the test's time limit: returning at all means the signal ended the sleep.
        assert signals.sleep(3600) is True
        assert signals.interrupted().exit_code == 143 and not signals.hurry
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


# ===================================================== the real CLI with stand-in ray, vllm and dashboard

FAKE = textwrap.dedent(
    """\
    #!{python}
    # Stand-in for `ray` and `vllm`: records what happens to it in $FAKE_LOG; behaviour from FAKE_* variables.
    import http.server, os, signal, sys, threading, time
    name = os.path.basename(sys.argv[0])
    log = open(os.environ["FAKE_LOG"], "a", buffering=1)
    log.write(f"{{name}} start {{' '.join(sys.argv[1:])}}\\n")
    log.write(f"{{name}} pid {{os.getpid()}}\\n")
    def on_term(signum, frame):
        log.write(f"{{name}} stopped {{time.time()}}\\n")
        time.sleep(float(os.environ.get("FAKE_STOP_DELAY", "0")))
        sys.exit(0 if name == "vllm" else 1)
    signal.signal(signal.SIGTERM, on_term)
    if name == "ray":
        log.write(f"ray env health={{os.environ.get('RAY_health_check_period_ms')}} "
                  f"vllm_ip={{os.environ.get('VLLM_HOST_IP')}} nccl={{os.environ.get('NCCL_SOCKET_IFNAME')}}\\n")
        exit_after = float(os.environ.get("FAKE_RAY_EXIT_AFTER", "1e9"))
    else:
        log.write(f"vllm env ray_address={{os.environ.get('RAY_ADDRESS')}}\\n")
        port = int(sys.argv[sys.argv.index("--port") + 1])
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                sick = os.path.exists(os.environ.get("FAKE_VLLM_UNHEALTHY_FILE", "/nonexistent"))
                self.send_response(503 if sick else 200); self.send_header("Content-Length", "0"); self.end_headers()
                log.write(f"vllm answered {{503 if sick else 200}}\\n")
            def log_message(self, *a): pass
        if not os.environ.get("FAKE_VLLM_SILENT"):
            srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
            threading.Thread(target=srv.serve_forever, daemon=True).start()
        exit_after = float(os.environ.get("FAKE_VLLM_EXIT_AFTER", "1e9"))
    deadline = time.time() + min(exit_after, 120)
    while time.time() < deadline:
        time.sleep(0.05)
    sys.exit(int(os.environ.get("FAKE_EXIT_CODE", "0")))
    """
)


class _Nodes(BaseHTTPRequestHandler):
    nodes: list[dict[str, Any]] = []

    def do_GET(self) -> None:
        body = json.dumps({"result": True, "data": {"result": {"result": type(self).nodes}}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _node(node_id: str, state: str = "ALIVE", head: bool = False) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "node_ip": "127.0.0.1",
        "is_head_node": head,
        "state": state,
        "resources_total": {"GPU": 1.0},
    }


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[dict[str, Any]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("ray", "vllm"):
        path = bin_dir / name
        path.write_text(FAKE.format(python=sys.executable))
        path.chmod(0o755)
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    _Nodes.nodes = [_node("h", head=True)]
    dashboard = ThreadingHTTPServer(("127.0.0.1", 0), _Nodes)
    threading.Thread(target=dashboard.serve_forever, daemon=True).start()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        engine_port = s.getsockname()[1]
    yield {
        "bin": bin_dir,
        "src": src,
        "log": tmp_path / "fake.log",
        "tmp": tmp_path,
        "engine_port": engine_port,
        "dashboard": f"http://127.0.0.1:{dashboard.server_address[1]}",
    }
    dashboard.shutdown()


def run_head(fakes: dict[str, Any], *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    argv = [
        sys.executable,
        "-m",
        "runtime",
        "head",
        "--model-uri",
        str(fakes["src"]),
        "--local-dir",
        str(fakes["tmp"] / "models"),
        "--dashboard-url",
        fakes["dashboard"],
        "--poll-interval",
        "0.1",
        "--log-interval",
        "0.5",
        "--node-ip",
        "127.0.0.1",
        *extra,
        "--",
        "--port",
        str(fakes["engine_port"]),
    ]
    full_env = {
        **os.environ,
        "PATH": f"{fakes['bin']}:/usr/bin:/bin",
        "FAKE_LOG": str(fakes["log"]),
        "PYTHONPATH": REPO,
        "NCCL_SOCKET_IFNAME": "eth9",
        **(env or {}),
    }
    for name in ("RUNTIME_RAY_COMMAND", "RUNTIME_VLLM_COMMAND", "KUBERAY_GEN_RAY_START_CMD"):
        full_env.pop(name, None)
    return subprocess.Popen(argv, env=full_env, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def finish(proc: subprocess.Popen[str], lines: StderrLines | None = None, timeout: float = 60) -> tuple[int, str]:
    """The runtime's exit code and stderr once it has exited. `lines`: the reader of its stderr where the test made one
    (to wait for a line before this); otherwise one is made here."""
    if lines is None:
        lines = StderrLines(proc)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("the runtime did not exit in time:\n" + lines.text()) from None
    return proc.returncode, lines.text()


def wait_log(fakes: dict[str, Any], text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fakes["log"].exists() and text in fakes["log"].read_text():
            return
        time.sleep(0.05)
    raise AssertionError(
        f"{text!r} not in the fake log:\n" + (fakes["log"].read_text() if fakes["log"].exists() else "")
    )


@pytest.mark.slow
def test_head_waits_for_the_gpus_then_serves_and_sigterm_stops_vllm_before_ray(fakes: dict[str, Any]) -> None:
    proc = run_head(fakes, "-tp", "2", "--expected-nodes", "2")
    wait_log(fakes, "ray start start --head")
    time.sleep(1.0)
    assert "vllm start" not in fakes["log"].read_text()  # one node, one GPU: keeps waiting
    lines = StderrLines(proc)
    _Nodes.nodes = [_node("h", head=True), _node("w")]
    wait_log(fakes, "vllm start serve")
    lines.wait_for("vLLM is serving")
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc, lines)
    assert code == 143, err
    log = fakes["log"].read_text()
    assert "ray env health=1000 vllm_ip=127.0.0.1 nccl=eth9" in log  # NCCL_* passes through untouched
    assert "vllm env ray_address=127.0.0.1:6379" in log
    assert "--tensor-parallel-size 2 --pipeline-parallel-size 1 --distributed-executor-backend ray" in log
    stopped = {line.split()[0]: float(line.split()[2]) for line in log.splitlines() if " stopped " in line}
    assert stopped["vllm"] < stopped["ray"]  # vLLM first, then Ray
    assert "1 of 2 nodes, 1 of 2 GPU present: 127.0.0.1 [head, 1 GPU]; missing: 1 node, 1 GPU" in err
    assert "cluster complete" in err and "vLLM is serving" in err and "model ready" in err


@pytest.mark.slow
@pytest.mark.parametrize(("vllm_code", "expected"), [("0", 16), ("3", 3)])
def test_head_exits_non_zero_when_vllm_exits(fakes: dict[str, Any], vllm_code: str, expected: int) -> None:
    proc = run_head(fakes, env={"FAKE_VLLM_EXIT_AFTER": "1", "FAKE_EXIT_CODE": vllm_code})
    code, err = finish(proc)
    assert code == expected, err
    assert f"vLLM exited (exit code {vllm_code})" in err and "ray stopped" in fakes["log"].read_text()


@pytest.mark.slow
def test_head_exits_17_when_vllm_never_answers(fakes: dict[str, Any]) -> None:
    code, err = finish(run_head(fakes, "--engine-start-timeout", "1.5", env={"FAKE_VLLM_SILENT": "1"}))
    assert code == 17 and "stuck in collective setup" in err, err
    assert "vllm stopped" in fakes["log"].read_text()


def fake_pid(fakes: dict[str, Any], name: str) -> int:
    wait_log(fakes, f"{name} pid ")
    return int(
        next(line.split()[2] for line in fakes["log"].read_text().splitlines() if line.startswith(f"{name} pid "))
    )


@pytest.mark.slow
def test_head_exits_18_when_a_serving_vllm_stops_answering(fakes: dict[str, Any]) -> None:
    proc = run_head(fakes, "--engine-lost-timeout", "2")
    wait_log(fakes, "vllm start serve")
    vllm = fake_pid(fakes, "vllm")
    wait_log(fakes, "vllm answered 200")
    time.sleep(1.0)  # the runtime polls every 0.1 s: it has seen the 200 by now
    os.kill(vllm, signal.SIGSTOP)  # its /health no longer answers, its process stays
    stopped_at = time.monotonic()
    try:
        code, err = finish(proc)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(vllm, signal.SIGCONT)
    assert code == 18, err
    # the timeout, plus a probe, the poll and stopping the children (~10 s), with room for a busy machine
    assert time.monotonic() - stopped_at < 60
    assert "vLLM's http://127.0.0.1:" in err and "/health is not answering; failing if" in err
    assert "has not answered 200 for 2s (not answering) after it had served" in err
    assert gone(vllm) and "ray stopped" in fakes["log"].read_text()


@pytest.mark.slow
def test_head_exits_18_when_vllm_health_fails_and_waits_out_a_short_failure(fakes: dict[str, Any]) -> None:
    # /health answers 503 once vLLM has served (while the file exists): with a 30 s timeout the head keeps serving
    # through the first seconds of failure; with 1 s it exits 18 (checked by the message naming the status).
    sick = fakes["tmp"] / "vllm-unhealthy"
    env = {"FAKE_VLLM_UNHEALTHY_FILE": str(sick)}
    proc = run_head(fakes, "--engine-lost-timeout", "30", env=env)
    lines = StderrLines(proc)
    lines.wait_for("vLLM is serving")
    sick.touch()
    lines.wait_for("is answering 503; failing if it does not answer 200 within 30s")
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc, lines)
    assert code == 143, err
    sick.unlink()
    proc = run_head(fakes, "--engine-lost-timeout", "1", env=env)
    lines = StderrLines(proc)
    lines.wait_for("vLLM is serving")
    sick.touch()
    code, err = finish(proc, lines)
    assert code == 18 and "(answering 503) after it had served" in err, err


@pytest.mark.slow
def test_vllm_exiting_because_a_node_died_is_reported_as_the_lost_node(fakes: dict[str, Any]) -> None:
    """vLLM notices a dead worker (its Ray actor is gone) and exits before Ray's health check declares the node
    DEAD: the head waits that check's window (1 s x 3 + 1 s here) and names the node, exit 14, not vLLM's 16."""
    _Nodes.nodes = [_node("h", head=True), _node("w")]
    proc = run_head(fakes, "-tp", "2", env={"FAKE_VLLM_EXIT_AFTER": "2"})
    lines = StderrLines(proc)
    lines.wait_for("checking Ray's node states for 4s")  # vLLM has exited; Ray has not said anything yet
    _Nodes.nodes = [_node("h", head=True), _node("w", "DEAD")]
    code, err = finish(proc, lines)
    assert code == 14, err
    assert "checking Ray's node states for 4s" in err
    assert "Ray node lost: 127.0.0.1 [1 GPU] is DEAD; vLLM had already exited (exit code 0)" in err


@pytest.mark.slow
def test_head_exits_14_when_a_node_is_lost(fakes: dict[str, Any]) -> None:
    _Nodes.nodes = [_node("h", head=True), _node("w")]
    proc = run_head(fakes, "-tp", "2")
    wait_log(fakes, "vllm start serve")
    time.sleep(0.5)
    _Nodes.nodes = [_node("h", head=True), _node("w", "DEAD")]
    code, err = finish(proc)
    assert code == 14, err
    assert "Ray node lost: 127.0.0.1 [1 GPU] is DEAD" in err
    assert "vllm stopped" in fakes["log"].read_text() and "ray stopped" in fakes["log"].read_text()


@pytest.mark.slow
def test_head_cluster_timeout_lists_present_and_missing(fakes: dict[str, Any]) -> None:
    code, err = finish(run_head(fakes, "-tp", "4", "--cluster-wait-timeout", "1.5"))
    assert code == 12, err
    assert (
        "the cluster is incomplete after 2s: 1 node, 1 of 4 GPU present: 127.0.0.1 [head, 1 GPU]; missing: 3 GPU" in err
    )


@pytest.mark.slow
def test_head_exits_15_when_ray_dies_and_11_when_ray_cannot_start(fakes: dict[str, Any]) -> None:
    _Nodes.nodes = [_node("h", head=True)]
    code, err = finish(run_head(fakes, env={"FAKE_RAY_EXIT_AFTER": "3"}))
    assert code == 15, err
    code, err = finish(run_head(fakes, "-tp", "2", "--cluster-wait-timeout", "5", env={"FAKE_RAY_EXIT_AFTER": "0"}))
    assert code == 11 and "`ray start` exited" in err, err
    code, err = finish(run_head(fakes, "--ray-command", "/nonexistent/ray"))
    assert code == 11 and "cannot start ray head" in err, err


@pytest.mark.slow
def test_worker_waits_for_the_head_then_exits_13_or_15(fakes: dict[str, Any]) -> None:
    import socket

    base = [
        sys.executable,
        "-m",
        "runtime",
        "worker",
        "--model-uri",
        str(fakes["src"]),
        "--local-dir",
        str(fakes["tmp"] / "models"),
        "--poll-interval",
        "0.1",
    ]
    env = {**os.environ, "PATH": f"{fakes['bin']}:/usr/bin:/bin", "FAKE_LOG": str(fakes["log"]), "PYTHONPATH": REPO}
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    p = subprocess.run(
        [*base, "--head-address", f"127.0.0.1:{port}", "--head-wait-timeout", "1.5"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 13 and "did not answer within 2s (Connection refused)" in p.stderr, p.stderr
    assert "not answering yet (Connection refused); next try in 0.5s" in p.stderr

    gcs = socket.socket()
    gcs.bind(("127.0.0.1", 0))
    gcs.listen(16)
    port = gcs.getsockname()[1]
    proc = subprocess.Popen(
        [*base, "--head-address", f"127.0.0.1:{port}", "--head-lost-timeout", "1"],
        env=env,
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    wait_log(fakes, "ray start start --address=127.0.0.1:")
    time.sleep(0.5)
    gcs.close()  # the head goes away
    code, err = finish(proc)
    assert code == 13 and "has not answered for" in err, err
    assert "ray stopped" in fakes["log"].read_text()

    p = subprocess.run(
        [*base, "--head-address", fakes["dashboard"].removeprefix("http://")],
        env={**env, "FAKE_RAY_EXIT_AFTER": "1"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 15 and "this node's raylet is gone" in p.stderr, p.stderr


@pytest.mark.slow
def test_cli_model_errors_and_print_commands(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": REPO}
    run = [sys.executable, "-m", "runtime"]
    p = subprocess.run(
        [
            *run,
            "worker",
            "--model-dir",
            str(tmp_path / "none"),
            "--head-address",
            "h",
            "--model-wait-timeout",
            "0.5",
            "--poll-interval",
            "0.1",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 10 and "no download has started in this directory yet" in p.stderr, p.stderr
    p = subprocess.run(
        [*run, "head", "--model-uri", str(tmp_path / "missing"), "--local-dir", str(tmp_path)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 10 and "aibrix-download failed (exit code 3" in p.stderr, p.stderr
    p = subprocess.run(
        [*run, "head", "--model-dir", "/m", "-tp", "zero"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "--tensor-parallel-size" in p.stderr
    p = subprocess.run(
        [*run, "head", "--model-dir", "/m", "-tp", "2", "--print-commands", "--", "--port", "8011"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0 and "--tensor-parallel-size 2" in p.stdout and "--port 8011" in p.stdout, p.stderr
    p = subprocess.run([*run], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
