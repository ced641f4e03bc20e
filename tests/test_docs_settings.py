"""Each command's settings are declared once, in its OPTIONS table: the parser, the environment names it reads
and the reference page's table all come from there. These tests fail when a page's table was edited by hand
(or the table changed without `make docs`), or when a parser grows a flag the table does not declare."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path

import pytest

import downloader.config
import runtime.config
import sidecar.config
from downloader.concurrency import AUTO_MAX_REQUESTS
from downloader.errors import ConfigError
from downloader.options import END, Kind, Options, render_page

ROOT = Path(__file__).resolve().parent.parent
PAGES = {
    "docs/downloader.md": (downloader.config, "downloader/config.py"),
    "docs/sidecar.md": (sidecar.config, "sidecar/config.py"),
    "docs/runtime.md": (runtime.config, "runtime/config.py"),
}
# An option line of argparse's --help: two spaces, the spellings, then two spaces and the help text
OPTION_LINE = re.compile(r"^  (-[^ ].*?)(?:  |$)")
FLAG = re.compile(r"(?<![\w-])(--?[a-z][a-z0-9-]*)")


@pytest.mark.parametrize("page", sorted(PAGES))
def test_each_reference_page_shows_its_table_as_generated(page: str) -> None:
    module, path = PAGES[page]
    text = (ROOT / page).read_text(encoding="utf-8")
    assert render_page(text, path, module.OPTIONS) == text, f"{page} differs from {path}'s OPTIONS: run `make docs`"


def test_a_page_without_the_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="markers"):
        render_page("# no table here\n", "downloader/config.py", downloader.config.OPTIONS)
    with pytest.raises(ValueError, match="markers"):
        render_page(END + "\n", "downloader/config.py", downloader.config.OPTIONS)


def _help(parser: argparse.ArgumentParser, *argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parser.parse_args([*argv, "--help"])
    return out.getvalue()


def _declared_flags(table: Options, scope: str = "") -> set[str]:
    flags = set()
    for o in table.options:
        if o.scope not in ("", scope):
            continue
        flags.update(o.flag_names)
        if o.kind is Kind.SWITCH:
            flags.update("--no-" + f[2:] for f in o.flag_names)
    return flags


@pytest.mark.parametrize(
    ("module", "argv", "scope"),
    [
        (downloader.config, (), ""),
        (sidecar.config, (), ""),
        (runtime.config, ("head",), "head"),
        (runtime.config, ("worker",), "worker"),
    ],
    ids=["downloader", "sidecar", "runtime-head", "runtime-worker"],
)
def test_every_flag_a_parser_accepts_is_declared_in_its_table(
    module: object, argv: tuple[str, ...], scope: str
) -> None:
    table: Options = module.OPTIONS  # type: ignore[attr-defined]
    help_text = _help(module.build_arg_parser(), *argv)  # type: ignore[attr-defined]
    lines = [m.group(1) for m in map(OPTION_LINE.match, help_text.splitlines()) if m]
    shown = {flag for line in lines for flag in FLAG.findall(line)}
    declared = _declared_flags(table, scope)
    assert shown - {"--help", "-h"} - declared <= {"--version"}, "a flag outside the table"
    assert declared <= shown, "a declared flag the parser does not offer"


@pytest.mark.parametrize("module", [downloader.config, sidecar.config, runtime.config], ids=lambda m: m.__name__)
def test_every_written_default_parses_like_a_given_value(module: object) -> None:
    table: Options = module.OPTIONS  # type: ignore[attr-defined]
    for o in table.options:
        if o.default is not None:
            o.parse(o.label, o.default)  # raises ConfigError on a default the setting itself would refuse


@pytest.mark.parametrize("module", [downloader.config, sidecar.config, runtime.config], ids=lambda m: m.__name__)
def test_environment_names_belong_to_one_setting(module: object) -> None:
    table: Options = module.OPTIONS  # type: ignore[attr-defined]
    seen: dict[str, str] = {}
    for o in table.options:
        for name in o.env:
            assert seen.setdefault(name, o.name) == o.name, f"{name} is read by {seen[name]} and {o.name}"


def test_download_extra_config_keys_come_from_the_table() -> None:
    keys = downloader.config.OPTIONS.extra_keys
    assert {"ak", "sk", "endpoint", "region", "num_threads", "hf_token", "verify"} <= keys
    assert downloader.config.parse_extra_config("x", '{"num_threads": 4}') == {"num_threads": 4}
    with pytest.raises(ConfigError, match="unknown key"):
        downloader.config.parse_extra_config("x", '{"num_thread": 4}')


def test_a_misspelt_variable_of_each_command_is_reported() -> None:
    d = downloader.config.load_settings(["--model-uri", "s3://bucket/m/"], {"DOWNLOADER_NUM_THREAD": "4"})
    assert "ignoring unknown environment variable DOWNLOADER_NUM_THREAD" in d.warnings
    s = sidecar.config.load_settings(["--model-dir", "/m"], {"SIDECAR_POL_INTERVAL": "2"})
    assert "ignoring unknown environment variable SIDECAR_POL_INTERVAL" in s.warnings
    worker = ["worker", "--model-dir", "/m", "--head-address", "h:6379"]
    r = runtime.config.load_settings(worker, {"RUNTIME_HEAD_ADRESS": "x"})
    assert "ignoring unknown environment variable RUNTIME_HEAD_ADRESS" in r.warnings


def test_precedence_flag_then_extra_config_then_environment_then_default() -> None:
    env = {"DOWNLOADER_NUM_THREADS": "8"}
    base = ["--model-uri", "s3://bucket/m/"]
    extra = ["--download-extra-config", '{"num_threads": 4}']
    assert downloader.config.load_settings(base, {}).num_threads == AUTO_MAX_REQUESTS
    assert downloader.config.load_settings(base, env).num_threads == 8
    assert downloader.config.load_settings(base + extra, env).num_threads == 4
    assert downloader.config.load_settings(base + extra + ["--num-threads", "2"], env).num_threads == 2
    # A blank variable (a pod spec's `value: ""`) is not a value: the default holds.
    assert downloader.config.load_settings(base, {"DOWNLOADER_NUM_THREADS": " "}).num_threads == AUTO_MAX_REQUESTS
