"""The seed's own YAML (tests/seed/, AIBrix's DeepSeek-R1 multi-node sample) with only the images swapped for ours:
every container's user, command, environment and ports checked against what our image provides: its console
scripts (pyproject.toml), the Ray it installs (Dockerfile), vLLM and the shell of its base image, and the user
it runs as by default."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from downloader import config as download_config
from tests import k8s_validate as kv
from tests.test_manifests import DOCKERFILE, REPO, _vllm_serve_parser, kuberay_env, kuberay_ports

SEED = Path(__file__).parent / "seed" / "deepseek-r1-ai-runtime.yaml"
# What the vLLM OpenAI base image brings (Debian/Ubuntu with bash, Python and vLLM's console script).
BASE_PROGRAMS = {"bash", "sh", "python3", "vllm"}
SHELL_BUILTINS = {"ulimit", "echo", "exec", "export", "cd", "set", "true"}
VLLM_DEFAULT_PORT = 8000


def our_image() -> str:
    tag = yaml.safe_load((REPO / "manifests/base/common/kustomization.yaml").read_text())["images"][0]["newTag"]
    return f"aibrix-model-runtime:{tag}"


def image_programs() -> set[str]:
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", (REPO / "pyproject.toml").read_text(), re.M | re.S)
    assert section is not None
    scripts = set(re.findall(r"^([\w.-]+)\s*=", section.group(1), re.M))
    ray = {"ray"} if '"ray[default]==' in DOCKERFILE.read_text() else set()
    return scripts | ray | BASE_PROGRAMS


def image_default_uid() -> int:
    """The user a container without runAsUser runs as: the Dockerfile's last USER, else the base's (root)."""
    users = re.findall(r"^USER\s+(\S+)", DOCKERFILE.read_text(), re.M)
    if not users:
        return 0
    name = users[-1].split(":")[0]
    return 0 if name == "root" else int(name)


def image_uids() -> set[int]:
    """Users that exist in the image: root, and those the Dockerfile adds."""
    return {0, *map(int, re.findall(r"useradd\b.*?--uid (\d+)", DOCKERFILE.read_text()))}


@pytest.fixture
def seed() -> list[kv.Obj]:
    objs = kv.load_documents(SEED.read_text())
    swapped = copy.deepcopy(objs)
    for pod in kv.pod_templates(swapped):
        for _, c in pod.containers():
            c["image"] = our_image()
    return swapped


def test_the_seed_is_what_the_crds_accept(seed: list[kv.Obj]) -> None:
    (fleet,) = seed
    assert kv.crd_findings(fleet) == []
    images = {c["image"] for pod in kv.pod_templates(seed) for _, c in pod.containers()}
    assert images == {our_image()}


def test_every_container_runs_as_a_user_that_can_do_its_job(seed: list[kv.Obj]) -> None:
    """The seed sets no runAsUser: containers run as the image's default user. The kubelet creates a
    DirectoryOrCreate hostPath owned by root, mode 0755, so whatever writes there must be root."""
    for pod in kv.pod_templates(seed):
        host_paths = {v["name"] for v in pod.spec.get("volumes") or [] if "hostPath" in v}
        for cpath, c in pod.containers():
            uid = (c.get("securityContext") or {}).get(
                "runAsUser", (pod.spec.get("securityContext") or {}).get("runAsUser", image_default_uid())
            )
            assert uid in image_uids(), f"{pod.where}.{cpath}: uid {uid} does not exist in the image"
            writes = [m for m in c.get("volumeMounts") or [] if m["name"] in host_paths and not m.get("readOnly")]
            if writes:
                assert uid == 0, (
                    f"{pod.where}.{cpath} ({c['name']}) writes the root-owned hostPath {writes[0]['mountPath']} "
                    f"as uid {uid}"
                )


def _statements(pod: kv.PodTemplate, cpath: str, c: kv.Obj) -> list[list[str]]:
    """The commands a container runs: its argv, or each statement of a `bash -c` script with the shell's
    $VARIABLES expanded from the environment the kubelet and KubeRay give it."""
    env = kv.container_env(c, [], kuberay_env(pod) if cpath == "containers[0]" else {})
    argv = kv.command_line(c, env)
    if argv[0].rsplit("/", 1)[-1] not in ("bash", "sh") or not any(a.startswith("-") and "c" in a for a in argv[1:]):
        return [argv]
    script = next(a for a in argv[1:] if not a.startswith("-"))
    out = [argv[:1]]
    for statement in script.split(";"):
        words = shlex.split(re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: env.get(m.group(1) or m.group(2), ""), statement))
        if words:
            out.append(words)
    return out


def test_every_command_is_one_the_image_provides(seed: list[kv.Obj]) -> None:
    provided = image_programs()
    ran: set[str] = set()
    for pod in kv.pod_templates(seed):
        for cpath, c in pod.containers():
            for words in _statements(pod, cpath, c):
                program = words[0].rsplit("/", 1)[-1]
                ran.add(program)
                assert program in provided | SHELL_BUILTINS, f"{pod.where}.{cpath}: {program!r} is not in the image"
    assert {"aibrix_download", "bash", "ray", "vllm"} <= ran


def test_the_download_and_the_engine_agree_with_the_seeds_environment(seed: list[kv.Obj]) -> None:
    for pod in kv.pod_templates(seed):
        (init,) = pod.spec["initContainers"]
        env = kv.container_env(init, [])
        settings = download_config.load_settings(kv.command_line(init, env)[1:], env)
        assert settings.warnings == (), settings.warnings  # every variable the seed sets is one we read
        assert settings.model_dir == "/models/deepseek-r1"
        assert env["DOWNLOADER_ALLOW_FILE_SUFFIX"] == "json, safetensors, py"
        if pod.role == "head":
            serves = [w for w in _statements(pod, "containers[0]", pod.spec["containers"][0]) if w[0] == "vllm"]
            (vllm,) = serves
            args, _ = _vllm_serve_parser().parse_known_args(vllm[2:])
            assert args.model == settings.model_dir  # vLLM serves where our downloader put the model


def test_every_declared_port_is_opened_by_what_the_container_runs(seed: list[kv.Obj]) -> None:
    for pod in kv.pod_templates(seed):
        ray = pod.spec["containers"][0]
        opened: dict[int, str] = dict(kuberay_ports(pod))
        for words in _statements(pod, "containers[0]", ray):
            if words[0] == "vllm":
                args, _ = _vllm_serve_parser().parse_known_args(words[2:])
                opened[args.port or VLLM_DEFAULT_PORT] = "vLLM"
        for port in ray.get("ports") or []:
            assert port["containerPort"] in opened, f"{pod.where}: nothing opens {port}"
        probe = (ray.get("startupProbe") or {}).get("httpGet")
        if probe:
            number = next(p["containerPort"] for p in ray["ports"] if p["name"] == probe["port"])
            assert opened[number] == "vLLM" and probe["path"] == "/metrics"


def test_the_image_still_has_the_user_our_own_manifests_name() -> None:
    """Root by default for the seed; our manifests run vLLM on one node as uid 10001, which the image creates."""
    uids: set[Any] = set()
    for overlay in (REPO / "manifests/overlays").iterdir():
        for pod in kv.pod_templates(kv.render(overlay)):
            for _, c in pod.containers():
                uids.add((c.get("securityContext") or {}).get("runAsUser"))
    assert uids - {None} <= image_uids() and 10001 in uids
