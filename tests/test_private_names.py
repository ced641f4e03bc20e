"""The private names of our dependencies that we use are the ones docs/private-names.md lists: each still is what
its code was written against (contract tests), and no other one has crept in (a scan of our packages)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import httpx

from sidecar.fastpath import uvicorn_contract_holds
from tests.conftest import REPO
from tests.test_sidecar import Sidecar

PACKAGES = ("downloader", "sidecar", "runtime")
# (module, third-party package) pairs allowed to use that package's private names: docs/private-names.md
ALLOWED = {("sidecar/fastpath.py", "uvicorn")}


def test_uvicorn_is_what_the_probe_protocol_was_written_against() -> None:
    assert uvicorn_contract_holds() is None


def test_probes_answer_the_same_through_the_asgi_app(tmp_path: Path) -> None:
    """The public fallback (uvicorn's own protocol, every request through the app) gives the same answers."""
    answers = []
    for flag in ("--fast-paths", "--no-fast-paths"):
        sidecar = Sidecar([flag, "--model-dir", str(tmp_path / "nothing")], "http://127.0.0.1:9")
        try:
            got = {}
            for path in ("/healthz", "/readyz", "/ready"):
                r = sidecar.get(path)
                got[path] = (r.status_code, r.json()["phase"], r.json()["ok"])
            head = httpx.head(sidecar.url + "/readyz")
            got["HEAD /readyz"] = (head.status_code, head.content, None)
            answers.append(got)
        finally:
            sidecar.close()
    assert answers[0] == answers[1], answers


def _third_party(module: str) -> str | None:
    root = module.split(".")[0]
    if not root or root in sys.stdlib_module_names or root in PACKAGES or root.startswith("_"):
        return None
    return root


def test_no_private_name_of_a_dependency_outside_the_list() -> None:
    found: set[tuple[str, str, str]] = set()
    for package in PACKAGES:
        for path in sorted((Path(REPO) / package).rglob("*.py")):
            rel = str(path.relative_to(REPO))
            tree = ast.parse(path.read_text(), rel)
            aliases: dict[str, str] = {}  # local name -> third-party package it is a module of
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    for a in node.names:
                        if (pkg := _third_party(a.name)) is not None:
                            aliases[a.asname or a.name.split(".")[0]] = pkg
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    if (pkg := _third_party(node.module)) is None:
                        continue
                    for a in node.names:
                        if a.name.startswith("_") and not a.name.startswith("__"):
                            found.add((rel, pkg, a.name))
                        if any(p.startswith("_") and not p.startswith("__") for p in node.module.split(".")):
                            found.add((rel, pkg, node.module))
                        aliases[a.asname or a.name] = pkg
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id in aliases
                    and node.attr.startswith("_")
                    and not node.attr.startswith("__")
                ):
                    found.add((rel, aliases[node.value.id], node.attr))
    unlisted = sorted(f for f in found if (f[0], f[1]) not in ALLOWED)
    assert not unlisted, f"private names of dependencies not in docs/private-names.md: {unlisted}"
