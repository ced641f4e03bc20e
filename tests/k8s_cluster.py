"""What a cluster does with rendered objects that no schema says, modelled for the tests: Pod Security admission
levels, NetworkPolicy ingress, Prometheus' metric relabeling, and how many pods a rolling update keeps serving.
(KubeRay's probe injection is in k8s_validate, beside the checks that use it.) Pure functions over plain dicts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from enum import Enum
from typing import Any

from tests.k8s_validate import Obj, selector_matches

# ------------------------------------------------------------------------------------------------ Pod Security


class PodSecurityLevel(str, Enum):
    """The Pod Security Standards (kubernetes.io/docs/concepts/security/pod-security-standards), least to most
    permissive; a namespace's `pod-security.kubernetes.io/enforce` label admits pods up to its level."""

    RESTRICTED = "restricted"
    BASELINE = "baseline"
    PRIVILEGED = "privileged"


# Capabilities the baseline level lets a container add.
_BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
_RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _containers(spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(kind) or []


def pod_security_violations(spec: Mapping[str, Any]) -> dict[PodSecurityLevel, list[str]]:
    """For each level a pod spec does not meet, why (the first level it meets has no entry)."""
    baseline: list[str] = []
    restricted: list[str] = []
    pod_ctx = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            baseline.append(key)
    for volume in spec.get("volumes") or []:
        kinds = [k for k in volume if k != "name"]
        if "hostPath" in kinds:
            baseline.append(f"hostPath volume {volume.get('name')!r}")
        elif not set(kinds) <= _RESTRICTED_VOLUMES:
            restricted.append(f"volume {volume.get('name')!r} of type {kinds}")
    pod_seccomp = (pod_ctx.get("seccompProfile") or {}).get("type")
    for c in _containers(spec):
        name = c.get("name")
        ctx = c.get("securityContext") or {}
        if ctx.get("privileged"):
            baseline.append(f"{name}: privileged")
        added = set((ctx.get("capabilities") or {}).get("add") or [])
        if added - _BASELINE_CAPABILITIES:
            baseline.append(f"{name}: adds capabilities {sorted(added - _BASELINE_CAPABILITIES)}")
        if added - {"NET_BIND_SERVICE"}:
            restricted.append(f"{name}: adds capabilities {sorted(added - {'NET_BIND_SERVICE'})}")
        if "ALL" not in ((ctx.get("capabilities") or {}).get("drop") or []):
            restricted.append(f"{name}: does not drop ALL capabilities")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            baseline.append(f"{name}: hostPort")
        if ctx.get("procMount") not in (None, "Default"):
            baseline.append(f"{name}: procMount {ctx.get('procMount')}")
        seccomp = (ctx.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp == "Unconfined":
            baseline.append(f"{name}: seccomp Unconfined")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            restricted.append(f"{name}: no RuntimeDefault/Localhost seccomp profile")
        if ctx.get("allowPrivilegeEscalation") is not False:
            restricted.append(f"{name}: allowPrivilegeEscalation is not false")
        non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
        user = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
        if user == 0 or not (non_root or (user is not None and user != 0)):
            restricted.append(f"{name}: may run as root")
    out: dict[PodSecurityLevel, list[str]] = {}
    if baseline:
        out[PodSecurityLevel.BASELINE] = baseline
    if baseline or restricted:
        out[PodSecurityLevel.RESTRICTED] = baseline + restricted
    return out


def pod_security_level(spec: Mapping[str, Any]) -> PodSecurityLevel:
    """The most restrictive level that admits the pod."""
    violations = pod_security_violations(spec)
    for level in (PodSecurityLevel.RESTRICTED, PodSecurityLevel.BASELINE):
        if level not in violations:
            return level
    return PodSecurityLevel.PRIVILEGED


# ------------------------------------------------------------------------------------------------ NetworkPolicy


def _port_matches(rule_port: Mapping[str, Any], number: int, name: str | None, protocol: str) -> bool:
    if rule_port.get("protocol", "TCP") != protocol:
        return False
    port = rule_port.get("port")
    if port is None:
        return True
    if isinstance(port, str) and not port.isdigit():
        return port == name
    end = rule_port.get("endPort")
    return int(port) == number if end is None else int(port) <= number <= int(end)


def ingress_allowed(
    policies: Iterable[Obj],
    target: Mapping[str, str],
    port: int,
    peer: Mapping[str, str] | None,
    *,
    port_name: str | None = None,
    protocol: str = "TCP",
) -> bool:
    """May a connection reach the pod labelled `target` on `port` (named `port_name` in that pod), from a pod
    labelled `peer` in the same namespace (None: from outside the cluster)? NetworkPolicy's rules: a pod selected by
    no Ingress policy accepts everything; otherwise any rule of any selecting policy must allow it."""
    selecting = [
        p
        for p in policies
        if p.get("kind") == "NetworkPolicy"
        and "Ingress" in ((p.get("spec") or {}).get("policyTypes") or ["Ingress"])
        and _selects((p.get("spec") or {}).get("podSelector") or {}, target)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in (policy.get("spec") or {}).get("ingress") or []:
            ports = rule.get("ports")
            if ports and not any(_port_matches(p, port, port_name, protocol) for p in ports):
                continue
            sources = rule.get("from")
            if not sources or any(_peer_matches(s, peer) for s in sources):
                return True
    return False


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    return not selector or selector_matches(selector, labels)  # an empty podSelector selects every pod


def _peer_matches(source: Mapping[str, Any], peer: Mapping[str, str] | None) -> bool:
    if "ipBlock" in source:
        return peer is None  # modelled as "from outside the cluster"
    if peer is None or "namespaceSelector" in source:
        return False  # other namespaces are not modelled: only the policy's own
    return _selects(source.get("podSelector") or {}, peer)


# ------------------------------------------------------------------------------------------------ Prometheus


def relabel_keeps(name: str, relabelings: Sequence[Mapping[str, Any]]) -> bool:
    """Does a series named `name` (no other labels) survive a ServiceMonitor's metricRelabelings? keep and drop
    on `__name__`, with Prometheus' anchored regular expressions (default `(.*)`); other actions keep it."""
    for rule in relabelings:
        action = str(rule.get("action", "replace")).lower()
        if action not in ("keep", "drop"):
            continue
        sources = rule.get("sourceLabels") or []
        value = str(rule.get("separator", ";")).join(name if s == "__name__" else "" for s in sources)
        matched = re.fullmatch(str(rule.get("regex", "(.*)")), value) is not None
        if matched != (action == "keep"):
            return False
    return True


# ------------------------------------------------------------------------------------------------ rollouts


def _scaled(value: Any, replicas: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = replicas * float(value[:-1]) / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


def min_available_during_rollout(workload: Obj, replicas: int | None = None) -> int:
    """How many pods (Deployment) or Ray clusters (RayClusterFleet) a rolling update keeps available: replicas
    minus maxUnavailable (percentages rounded down, as the controllers do; defaults 25%); 0 for Recreate."""
    spec = workload.get("spec") or {}
    count = int(spec.get("replicas", 1)) if replicas is None else replicas
    strategy = spec.get("strategy") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        return 0
    rolling = strategy.get("rollingUpdate") or {}
    unavailable = _scaled(rolling.get("maxUnavailable", "25%"), count, round_up=False)
    surge = _scaled(rolling.get("maxSurge", "25%"), count, round_up=True)
    if unavailable == 0 and surge == 0:
        unavailable = 1  # the API server refuses both 0; controllers never stall
    return max(0, count - unavailable)
