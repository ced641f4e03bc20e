"""The engine arguments every rendered manifest gives vLLM, parsed by vLLM's own `vllm serve` parser.

It needs vLLM, so it runs in the end-to-end stage (`make test-e2e`, .venv-e2e), where CI has it: in `make test`'s
venv it could only ever be skipped. The manifests are the ones tests/test_manifests.py renders and checks.
"""

from __future__ import annotations

import pytest

from runtime.commands import vllm_command
from tests import k8s_validate as kv
from tests.test_manifests import parse_container, rendered  # noqa: F401 - rendered is a fixture

pytestmark = pytest.mark.e2e


def test_engine_arguments_parse_with_vllms_own_parser(rendered: dict[str, list[kv.Obj]]) -> None:  # noqa: F811
    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    except ImportError:  # before vLLM 0.30
        from vllm.entrypoints.openai.cli_args import make_arg_parser
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        from vllm.utils import FlexibleArgumentParser

    argvs: set[tuple[str, ...]] = set()
    for objs in rendered.values():
        for pod in kv.pod_templates(objs):
            for cpath, c in pod.containers():
                p = parse_container(pod, cpath, c, objs)
                if p.program == "vllm":
                    argvs.add(tuple(p.argv[2:]))
                elif p.program == "runtime" and p.settings.role == "head":
                    command = vllm_command(p.settings)  # what the runtime will run: its flags and ours
                    argvs.add(tuple(command[command.index("serve") + 1 :]))
    assert argvs, "no vLLM command line in any rendered manifest"
    parser = make_arg_parser(FlexibleArgumentParser())
    refused = []
    for argv in [*sorted(argvs), ("/models/m", "--tensor-paralel-size", "8")]:  # a typo the parser must refuse
        try:
            parser.parse_args(list(argv))
        except SystemExit:
            refused.append(argv)
    assert refused == [("/models/m", "--tensor-paralel-size", "8")], refused
