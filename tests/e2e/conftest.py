"""End-to-end runtime tests: real Ray, real vLLM (CPU build), two Ray nodes on this machine.

They need the separate environment that tests/e2e/setup.sh builds (.venv-e2e). Collected from the fast suite's
venv, they skip with the reason below.
"""

from __future__ import annotations

import importlib.util

import pytest

MISSING = [name for name in ("vllm", "ray", "transformers", "torch") if importlib.util.find_spec(name) is None]
SKIP_REASON = (
    f"end-to-end runtime tests need {', '.join(MISSING)}: run `bash tests/e2e/setup.sh`, then "
    "`.venv-e2e/bin/python -m pytest -m e2e tests/e2e`"
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: heavy end-to-end tests with Ray and vLLM (tests/e2e/setup.sh)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not MISSING:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)
