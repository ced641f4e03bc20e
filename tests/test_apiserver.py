"""Every CRD and every custom object of every render, through a real Kubernetes API server: the
apiextensions-apiserver and etcd that tests/apiserver/build.sh builds from Debian's packages, on 127.0.0.1.

The CRDs are created for real (the server validates them too); every custom object is then created with
server-side dry run (`dryRun=All`) and strict field validation (`fieldValidation=Strict`, kubectl's default), so
the API server's own defaulting, pruning, schema, CEL and list-map checks decide, not our model of them
(tests/k8s_validate.py). A RayClusterFleet's RayCluster template also goes through KubeRay's RayCluster CRD.

`make validate-apiserver` builds the server (once) and runs this file; elsewhere it is skipped.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import k8s_validate as kv
from tests.test_manifests import RENDERS, render_all

BUILD = kv.REPO / os.environ.get("APISERVER_DIR", "build/apiserver")  # relative to the repository, or absolute
APISERVER, ETCD = BUILD / "bin" / "apiextensions-apiserver", BUILD / "bin" / "etcd"
pytestmark = pytest.mark.skipif(
    not (os.access(APISERVER, os.X_OK) and os.access(ETCD, os.X_OK)),
    reason=f"no API server in {BUILD}: `make validate-apiserver` builds it and runs these tests",
)
# Admission plugins that need the core API (namespaces, webhooks' services), which this server does not serve.
DISABLED_ADMISSION = "NamespaceLifecycle,MutatingAdmissionPolicy,MutatingAdmissionWebhook,ValidatingAdmissionPolicy,"
DISABLED_ADMISSION += "ValidatingAdmissionWebhook"
NAMESPACE = "default"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _certificates(work: Path) -> None:
    """A CA, the server's certificate for 127.0.0.1, and a client certificate in system:masters (authorized for
    everything without a webhook: there is no core API server to ask)."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=validation-ca",
             "-keyout", str(work / "ca.key"), "-out", str(work / "ca.crt"))  # fmt: skip
    for name, subject, ext in (
        ("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1"),
        ("client", "/O=system:masters/CN=validator", "extendedKeyUsage=clientAuth"),
    ):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", str(work / f"{name}.key"),
                 "-out", str(work / f"{name}.csr"))  # fmt: skip
        (work / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", str(work / f"{name}.csr"), "-CA", str(work / "ca.crt"), "-CAkey",
                 str(work / "ca.key"), "-CAcreateserial", "-days", "1", "-extfile", str(work / f"{name}.ext"),
                 "-out", str(work / f"{name}.crt"))  # fmt: skip


@dataclass
class Api:
    url: str
    http: httpx.Client
    plurals: dict[tuple[str, str, str], str]  # (group, version, kind) -> resource

    def dry_run(self, obj: kv.Obj) -> httpx.Response:
        group, _, version = str(obj["apiVersion"]).rpartition("/")
        plural = self.plurals[(group, version, obj["kind"])]
        body = {**obj, "metadata": {**obj.get("metadata", {}), "namespace": NAMESPACE}}
        return self.http.post(
            f"/apis/{group}/{version}/namespaces/{NAMESPACE}/{plural}",
            params={"dryRun": "All", "fieldValidation": "Strict"},
            json=body,
        )


def _wait(check: Any, what: str, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{what} within {timeout:.0f}s; log:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    work = tmp_path_factory.mktemp("apiserver")
    _certificates(work)
    etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
    client_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
    kubeconfig = work / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "v",
                        "cluster": {
                            "server": f"https://127.0.0.1:{api_port}",
                            "certificate-authority": str(work / "ca.crt"),
                        },
                    }
                ],
                "users": [
                    {
                        "name": "v",
                        "user": {
                            "client-certificate": str(work / "client.crt"),
                            "client-key": str(work / "client.key"),
                        },
                    }
                ],
                "contexts": [{"name": "v", "context": {"cluster": "v", "user": "v"}}],
                "current-context": "v",
            }
        )
    )
    logs = {name: open(work / f"{name}.log", "wb") for name in ("etcd", "apiserver")}  # noqa: SIM115
    procs = [
        subprocess.Popen(
            [
                str(ETCD),
                "--data-dir",
                str(work / "etcd"),
                "--listen-client-urls",
                client_url,
                "--advertise-client-urls",
                client_url,
                "--listen-peer-urls",
                peer_url,
                "--initial-advertise-peer-urls",
                peer_url,
                "--initial-cluster",
                f"default={peer_url}",
                "--log-level",
                "warn",
            ],
            stdout=logs["etcd"],
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    ]
    tls = ssl.create_default_context(cafile=str(work / "ca.crt"))
    tls.load_cert_chain(str(work / "client.crt"), str(work / "client.key"))
    http = httpx.Client(base_url=f"https://127.0.0.1:{api_port}", verify=tls, timeout=30, trust_env=False)
    try:
        _wait(lambda: httpx.get(client_url + "/health", timeout=2).status_code == 200, "etcd answers", 60,
              work / "etcd.log")  # fmt: skip
        procs.append(
            subprocess.Popen(
                [
                    str(APISERVER),
                    "--etcd-servers",
                    client_url,
                    "--bind-address",
                    "127.0.0.1",
                    "--secure-port",
                    str(api_port),
                    "--cert-dir",
                    str(work / "certs"),
                    "--tls-cert-file",
                    str(work / "server.crt"),
                    "--tls-private-key-file",
                    str(work / "server.key"),
                    "--client-ca-file",
                    str(work / "ca.crt"),
                    "--kubeconfig",
                    str(kubeconfig),
                    "--authentication-kubeconfig",
                    str(kubeconfig),
                    "--authorization-kubeconfig",
                    str(kubeconfig),
                    "--authentication-skip-lookup",
                    "--enable-priority-and-fairness=false",
                    "--disable-admission-plugins",
                    DISABLED_ADMISSION,
                ],
                stdout=logs["apiserver"],
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )
        # /readyz as a whole never passes (informers on core kinds this server does not serve); the CRD
        # informer's own check does once the server can take CRDs.
        _wait(lambda: http.get("/readyz/poststarthook/crd-informer-synced").status_code == 200,
              "the API server is ready for CRDs", 120, work / "apiserver.log")  # fmt: skip
        plurals = {}
        for path in sorted(kv.CRD_DIR.glob("*.yaml")):
            for crd in kv.load_documents(path.read_text()):
                r = http.post(
                    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                    params={"fieldValidation": "Strict"},
                    json=crd,
                )
                assert r.status_code == 201, f"{path.name}: {r.status_code} {r.text[:2000]}"
                spec = crd["spec"]
                for version in spec["versions"]:
                    plurals[(spec["group"], version["name"], spec["names"]["kind"])] = spec["names"]["plural"]
                name = crd["metadata"]["name"]

                def established(crd_name: str = name) -> bool:
                    got = http.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd_name}").json()
                    conditions = (got.get("status") or {}).get("conditions") or []
                    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

                _wait(established, f"CRD {name} established", 60, work / "apiserver.log")
        yield Api(str(http.base_url), http, plurals)
    finally:
        http.close()
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in logs.values():
            log.close()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[kv.Obj]]:
    return render_all(lambda: tmp_path_factory.mktemp("kustomize"))


def _custom_objects(objs: list[kv.Obj]) -> Iterator[tuple[str, kv.Obj]]:
    for obj in objs:
        if kv.is_builtin(obj):
            continue
        yield kv.ident(obj), obj
        for path, api_version, kind in kv.EMBEDDED.get((kv.api_group(obj), str(obj["kind"])), []):
            spec = kv.get_path(obj, path)
            embedded = {"apiVersion": api_version, "kind": kind, "metadata": {"name": obj["metadata"]["name"]}}
            yield f"{kv.ident(obj)} {path} as {kind}", {**embedded, "spec": spec}


@pytest.mark.parametrize("name", RENDERS)
def test_every_custom_object_passes_the_api_servers_dry_run(
    api: Api, rendered: dict[str, list[kv.Obj]], name: str
) -> None:
    checked = 0
    refused = []
    for what, obj in _custom_objects(rendered[name]):
        r = api.dry_run(obj)
        checked += 1
        if r.status_code not in (200, 201):
            refused.append(f"{what}: {r.status_code} {r.json().get('message', r.text)[:2000]}")
    assert not refused, "\n".join(refused)
    if name.startswith("overlays/"):
        assert checked >= 2  # a RayCluster(Fleet) or Deployment's PodAutoscaler, and the ServiceMonitor


def test_the_api_server_refuses_what_strict_validation_should(api: Api, rendered: dict[str, list[kv.Obj]]) -> None:
    """The same dry run refuses a typo'd field, a wrong enum, a missing required field and a CEL rule: the check
    above can fail."""
    objs = rendered["overlays/deepseek-r1-fleet"]
    pa = next(o for o in objs if o["kind"] == "PodAutoscaler")
    typo = json.loads(json.dumps(pa))
    typo["spec"]["metricsSources"][0]["targetMetrics"] = "typo"
    r = api.dry_run(typo)
    assert r.status_code == 400, r.text
    assert 'strict decoding error: unknown field "spec.metricsSources[0].targetMetrics"' in r.json()["message"]
    enum = json.loads(json.dumps(pa))
    enum["spec"]["scalingStrategy"] = "KNATIVE"
    r = api.dry_run(enum)
    assert r.status_code == 422 and "KNATIVE" in r.json()["message"], r.text
    fleet = json.loads(json.dumps(next(o for o in objs if o["kind"] == "RayClusterFleet")))
    del fleet["spec"]["template"]["spec"]["headGroupSpec"]["rayStartParams"]  # required by the fleet's schema
    r = api.dry_run(fleet)
    assert r.status_code == 422 and "rayStartParams: Required value" in r.json()["message"], r.text
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "x"},
        "spec": {
            "managedBy": "someone-else",  # a CEL rule of KubeRay's CRD
            "headGroupSpec": {"template": {"spec": {"containers": [{"name": "ray-head", "image": "i:1"}]}}},
        },
    }
    r = api.dry_run(cluster)
    assert r.status_code == 422 and "managedBy field value must be either" in r.json()["message"], r.text
