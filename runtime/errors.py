"""The runtime's one error tree.

Every failure ends the process with one documented exit code (README, "aibrix-runtime", exit codes). The runtime
never exits 0 while it is supposed to serve: a child that stops, even "successfully", is a failure, so that
Kubernetes restarts the group.

    0    only for --print-commands and --help
    1    internal error (a bug)
    2    configuration error (`ConfigError`, shared with the downloader's settings parser)
    10   the model: the download failed, or the manifest did not appear within --model-wait-timeout
    11   Ray did not start: `ray start` exited or its dashboard never answered
    12   the cluster did not reach the expected nodes/GPUs within --cluster-wait-timeout
    13   worker: the head's GCS did not answer within --head-wait-timeout, or stopped answering for longer
         than --head-lost-timeout
    14   head: a Ray node the engine uses is no longer ALIVE (or the dashboard stopped answering)
    15   the local Ray node stopped (`ray start --block` exited: raylet or GCS died)
    16   vLLM exited with code 0; a non-zero code (128+N for a signal) is passed on as it is
    17   vLLM did not answer /health within --engine-start-timeout (e.g. a hang in NCCL/GLOO initialisation)
    18   vLLM had served, then its /health failed or did not answer for longer than --engine-lost-timeout (a hung
         API server or engine)
    130 / 143  stopped by SIGINT / SIGTERM, after stopping vLLM and then Ray
"""

from __future__ import annotations

from downloader.errors import ConfigError

__all__ = [
    "ClusterTimeoutError",
    "ConfigError",
    "EngineExitedError",
    "EngineLostError",
    "EngineStartTimeoutError",
    "HeadUnreachableError",
    "Interrupted",
    "ModelError",
    "NodeLostError",
    "RayExitedError",
    "RayStartError",
    "RuntimeFailure",
]


class RuntimeFailure(Exception):
    """Base of every failure the runtime reports; carries its exit code."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ModelError(RuntimeFailure):
    """The model is not there: the download failed, or the manifest did not appear in time."""

    exit_code = 10


class RayStartError(RuntimeFailure):
    """`ray start` exited while starting, or the head's dashboard never answered."""

    exit_code = 11


class ClusterTimeoutError(RuntimeFailure):
    """The expected nodes/GPUs did not join in time. The message lists who is present and what is missing."""

    exit_code = 12


class HeadUnreachableError(RuntimeFailure):
    """Worker: the head's GCS did not answer in time, or went away for too long."""

    exit_code = 13


class NodeLostError(RuntimeFailure):
    """Head: a node the engine runs on is no longer ALIVE."""

    exit_code = 14


class RayExitedError(RuntimeFailure):
    """The local `ray start --block` process ended: this node's raylet (or the head's GCS) is gone."""

    exit_code = 15

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


class EngineExitedError(RuntimeFailure):
    """vLLM exited on its own. Its non-zero exit code is passed on; 0 becomes 16 (it must never stop)."""

    exit_code = 16

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode
        if returncode != 0:
            self.exit_code = returncode if returncode > 0 else 128 - returncode


class EngineStartTimeoutError(RuntimeFailure):
    """vLLM started but never answered /health in time: a silent hang (collective setup, a stuck load)."""

    exit_code = 17


class EngineLostError(RuntimeFailure):
    """vLLM had answered /health, then failed it (or stopped answering) for longer than --engine-lost-timeout."""

    exit_code = 18


class Interrupted(RuntimeFailure):
    """SIGTERM/SIGINT arrived; the children were stopped in order (vLLM, then Ray)."""

    def __init__(self, signum: int, signal_name: str) -> None:
        super().__init__(f"stopped by {signal_name}")
        self.signum = signum
        self.exit_code = 128 + signum
