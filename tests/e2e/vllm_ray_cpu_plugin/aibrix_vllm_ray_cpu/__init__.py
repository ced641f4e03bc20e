"""Test-only vLLM platform plugin: the CPU platform, made usable with Ray.

vLLM's CPU platform has an empty Ray device key, so `--distributed-executor-backend ray` fails with
"current platform cpu does not support ray" (upstream vLLM issue 21602). This plugin activates a subclass whose
Ray device key is "GPU"; every Ray node then starts with `ray start --num-gpus=1`, which gives it exactly one
vLLM worker slot. Set AIBRIX_TEST_RAY_CPU_PLATFORM=0 to switch it off.

Kept import-light: vLLM imports this module while it is still resolving its platform, so the class lives in
`platform.py` and is named by its qualified name only.
"""

from __future__ import annotations

import os


def register() -> str | None:
    if os.environ.get("AIBRIX_TEST_RAY_CPU_PLATFORM", "1") == "0":
        return None
    return "aibrix_vllm_ray_cpu.platform.RayCpuPlatform"
