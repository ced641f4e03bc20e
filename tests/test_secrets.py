"""Secrets never leave: AWS keys and session token, the Hugging Face token, a GCS service-account key, presigned
URL signatures. Real downloads at DEBUG log level; everything a person or a scraper can see is collected and
grepped: stdout/stderr, every file the run leaves (progress.json, manifest.json, done.jsonl, journals), the
sidecar's /status, /metrics, /healthz, /readyz, and the process table (`ps -eo args`, /proc/<pid>/cmdline)
sampled while the download runs.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, S3Server, cli_env, run_cli
from tests.fakehub import FakeHub
from tests.faultproxy import Delay, FaultProxy, Rule
from tests.gcs_server import RefusingTokenEndpoint
from tests.synthetic import MiB, random_bytes, upload

# Distinctive values: none of them can occur by chance in a log line.
AWS_KEY_ID = "AKIAABUSE7Q3Z9XEXAMPL"
AWS_SECRET = "abuseSecret/9f8e7d6c5b4a+Qx2Zr"
AWS_TOKEN = "abuseSessionToken+Zx81QwIQoJb3JpZ2luX2Vj"
HF_TOKEN = "hf_ABUSEtoken_k3Lq9Zx7Pw2Rm5"
RANGED = ["--part-threshold", "1MiB", "--part-chunksize", "1MiB", "--num-threads", "2"]


def files_text(root: Path) -> str:
    """Every regular file below root, as text (bytes decoded leniently): what a later reader could find."""
    out = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or os.path.getsize(path) > 4 * MiB:
                continue  # model weights: random bytes we put there ourselves
            out.append(f"== {path}\n" + Path(path).read_bytes().decode("utf-8", "replace"))
    return "\n".join(out)


class ProcessTable:
    """Samples `ps -eo args` and /proc/<pid>/cmdline of every process while it runs (what `kubectl exec ps`,
    node agents and crash reporters see)."""

    def __init__(self) -> None:
        self.samples: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessTable:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout)
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                    except OSError:
                        continue
                    if b"downloader" in raw or b"sidecar" in raw:
                        self.samples.append(raw.replace(b"\x00", b" ").decode("utf-8", "replace"))
            self._stop.wait(0.1)

    @property
    def text(self) -> str:
        return "\n".join(self.samples)


def assert_absent(secrets: dict[str, str], **places: str) -> None:
    leaks = [f"{what} in {where}" for where, text in places.items() for what, value in secrets.items() if value in text]
    assert leaks == [], leaks


# --------------------------------------------------------------------------------------------------- S3


def test_aws_credentials_never_appear_anywhere(proxy: FaultProxy, s3: object, bucket: str, tmp_path: Path) -> None:
    """A native-sidecar download at DEBUG with static keys and a session token: logs, files, HTTP surface, ps."""
    files = {"model.safetensors": random_bytes(3 * MiB, 11), "config.json": b'{"model_type": "demo"}'}
    upload(s3, bucket, "m", files)
    proxy.add_rule(Rule(Delay(1.0), match_method="GET", only_ranged=True, times=-1))  # long enough to sample ps
    creds = {"AWS_ACCESS_KEY_ID": AWS_KEY_ID, "AWS_SECRET_ACCESS_KEY": AWS_SECRET, "AWS_SESSION_TOKEN": AWS_TOKEN}
    sidecar_args = ["--host", "127.0.0.1", "--port", "0", "--poll-interval", "0.1", "--log-level", "debug"]
    download_args = ["--model-uri", f"s3://{bucket}/m/", "--local-dir", str(tmp_path), "--log-level", "debug"]
    args = [*sidecar_args, "--", *download_args, *RANGED]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", *args],
        env=cli_env(proxy.url, **creds),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    log: list[str] = []
    assert proc.stderr is not None
    url = ""
    while not url:
        line = proc.stderr.readline()
        assert line, "".join(log)
        log.append(line)
        m = re.search(r"listening on (http://\S+)", line)
        url = m.group(1) if m else ""
    drain = threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    drain.start()
    answers: list[str] = []
    try:
        with ProcessTable() as ps, httpx.Client(base_url=url, timeout=10) as http:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                for path in ("/status", "/metrics", "/healthz", "/readyz"):
                    answers.append(http.get(path).text)
                if http.get("/readyz").status_code == 200:
                    break
                time.sleep(0.1)
            else:
                raise AssertionError("never ready:\n" + "".join(log))
            for path in ("/status", "/metrics"):
                answers.append(http.get(path).text)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        drain.join(timeout=10)
    stderr = "".join(log)
    assert "DEBUG" in stderr  # the level we asked for really was in force
    assert any('"phase": "downloading"' in a for a in answers)  # sampled while it ran, not only at the end
    assert any(f"s3://{bucket}/m/" in s for s in ps.samples)  # the sampler did see our processes
    secrets = {"key id": AWS_KEY_ID, "secret key": AWS_SECRET, "session token": AWS_TOKEN}
    assert_absent(
        secrets,
        stderr=stderr,
        stdout=proc.stdout.read() if proc.stdout else "",
        files=files_text(tmp_path),
        http="\n".join(answers),
        process_table=ps.text,
    )


def test_aws_credentials_absent_from_failure_messages(s3_server: S3Server, tmp_path: Path) -> None:
    creds = {"AWS_ACCESS_KEY_ID": AWS_KEY_ID, "AWS_SECRET_ACCESS_KEY": AWS_SECRET, "AWS_SESSION_TOKEN": AWS_TOKEN}
    for uri, code in [("s3://no-such-bucket-abuse/m/", 3), ("s3://bucket/m?X-Amz-Signature=abc", 2)]:
        r = run_cli(["--model-uri", uri, "--local-dir", str(tmp_path), "--log-level", "debug"], s3_server.url, **creds)
        assert r.returncode == code, r.stderr
        assert_absent({"key id": AWS_KEY_ID, "secret": AWS_SECRET, "token": AWS_TOKEN}, out=r.stdout + r.stderr)
    # ak/sk in --download-extra-config are a documented exception (they are in argv); the run must warn
    r = run_cli(
        [
            "--model-uri",
            "s3://no-such-bucket-abuse/m/",
            "--local-dir",
            str(tmp_path),
            "--log-level",
            "debug",
            "--download-extra-config",
            json.dumps({"ak": AWS_KEY_ID, "sk": AWS_SECRET}),
        ],
        s3_server.url,
    )
    assert r.returncode == 3 and "puts a secret in the pod spec and process table" in r.stderr
    assert_absent({"key id": AWS_KEY_ID, "secret": AWS_SECRET}, out=r.stdout + r.stderr)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/m/?X-Amz-Signature=SIGabuse0123456789&X-Amz-Security-Token=TOKabuse0123456789",
        "gs://bucket/m/?X-Goog-Signature=SIGabuse0123456789",
        "https://bucket.s3.amazonaws.com/m/x.safetensors?X-Amz-Signature=SIGabuse0123456789"
        "&X-Amz-Security-Token=TOKabuse0123456789",
        "org/name/file?sig=SIGabuse0123456789",
    ],
    ids=["s3", "gs", "https-presigned", "bare-hf-with-query"],
)
def test_presigned_url_given_as_model_uri_is_refused_without_echoing_it(uri: str, tmp_path: Path) -> None:
    r = run_cli(["--model-uri", uri, "--local-dir", str(tmp_path), "--log-level", "debug"], "http://127.0.0.1:9")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert_absent({"signature": "SIGabuse0123456789", "token": "TOKabuse0123456789"}, out=r.stdout + r.stderr)


# -------------------------------------------------------------------------------------------- Hugging Face


def test_hf_token_and_signed_cdn_urls_never_appear(tmp_path: Path) -> None:
    files = {"weights.safetensors": random_bytes(3 * MiB, 12), "config.json": b"{}", "tokenizer.json": b"{}"}
    with FakeHub(token=HF_TOKEN, lfs_min_size=1 * MiB) as hub, ProcessTable() as ps:
        hub.create_repo("acme/secret-model", files, private=True)
        env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": HF_TOKEN, "HUGGING_FACE_HUB_TOKEN": ""}
        r = run_cli(["--model-uri", "hf://acme/secret-model", "--local-dir", str(tmp_path), "--log-level", "debug",
                     *RANGED], hub.url, **env)  # fmt: skip
        assert r.returncode == 0, r.stderr
        # the signed query strings the CDN was really asked with: none may be repeated anywhere
        signed = {m for req in hub.log if req.port == "cdn" for m in re.findall(r"sig=[0-9a-f]+", req.path)}
        assert signed, "the download did not go through signed CDN URLs"
        assert hub.authorizations("cdn") == {None}  # the token was never sent to the storage host
        # a wrong token: the failure message names HF_TOKEN, never the token
        r2 = run_cli(["--model-uri", "hf://acme/secret-model", "--local-dir", str(tmp_path / "x"), "--log-level",
                      "debug"], hub.url, **{**env, "HF_TOKEN": HF_TOKEN + "-wrong"})  # fmt: skip
        assert r2.returncode == 3 and "HF_TOKEN" in r2.stderr, r2.stderr
    secrets = {"token": HF_TOKEN, **{s: s for s in signed}}
    assert "DEBUG" in r.stderr
    assert_absent(secrets, out=r.stdout + r.stderr, out_wrong=r2.stdout + r2.stderr, files=files_text(tmp_path),
                  process_table=ps.text)  # fmt: skip


# -------------------------------------------------------------------------------------------------- GCS


def test_gcs_service_account_key_never_appears(tmp_path: Path) -> None:
    """The real google-auth chain reads the key file, signs a JWT and posts it to the token endpoint (ours, on
    127.0.0.1, which refuses): the private key, its id and the signed assertion stay out of every output."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RefusingTokenEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    key_id = "abusekeyid" + hashlib.sha1(pem.encode()).hexdigest()[:20]
    key = {
        "type": "service_account",
        "project_id": "demo",
        "private_key_id": key_id,
        "private_key": pem,
        "client_email": "downloader@demo.iam.gserviceaccount.com",
        "client_id": "42",
        "token_uri": f"http://127.0.0.1:{server.server_address[1]}/token",
    }
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps(key))
    RefusingTokenEndpoint.assertions = []
    try:
        r = run_cli(
            [
                "--model-uri",
                "gs://some-bucket/models/m/",
                "--local-dir",
                str(tmp_path / "out"),
                "--log-level",
                "debug",
            ],
            "http://127.0.0.1:9",
            GOOGLE_APPLICATION_CREDENTIALS=str(key_file),
            STORAGE_EMULATOR_HOST="",
        )
    finally:
        server.shutdown()
        server.server_close()
    assert r.returncode == 3 and "invalid_grant" in r.stderr, r.stderr
    assert RefusingTokenEndpoint.assertions, "no JWT was ever signed: the key was not really used"
    body_lines = [line for line in pem.splitlines() if "PRIVATE KEY" not in line]
    secrets = {"private key id": key_id, "signed assertion": RefusingTokenEndpoint.assertions[0][:60]}
    secrets.update({f"key line {i}": line for i, line in enumerate(body_lines)})
    assert_absent(
        secrets, out=r.stdout + r.stderr, files=files_text(tmp_path / "out") if (tmp_path / "out").exists() else ""
    )
    assert "PRIVATE KEY" not in r.stderr
