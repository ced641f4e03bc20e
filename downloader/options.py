"""Settings declared once. Each setting of a command is one `Option`: its flags, environment names, default,
parser and meaning. A command's `Options` table yields the rest: the argparse arguments (their help names the
environment variable and the default), the environment names the command knows (an unknown one with its prefix
is reported), the `--download-extra-config` keys, the lookup in order of precedence (flag > extra-config key >
environment > default) that remembers where each value came from, and the settings table of the command's
reference page (docs/*.md: `make docs` rewrites it, tests/test_docs_settings.py checks it).

The generic value parsers live here too, so that "a boolean", "a size" or "a number of seconds" mean one thing
in all three commands. Each takes the name of the setting a value came from, for its error, and the raw value.
The downloader, the sidecar and the runtime each declare their table in their `config` module, the only module
of each package that reads the environment.
"""

from __future__ import annotations

import argparse
import importlib
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from .errors import ConfigError

TRUE_WORDS = {"1", "on", "yes", "true"}
FALSE_WORDS = {"0", "off", "no", "false"}

Parse = Callable[[str, Any], Any]


# ------------------------------------------------------------------------------------------- value parsers


def text(setting: str, raw: object) -> str:
    """Any text but an empty one or one with a NUL byte (which no path, name or command may hold)."""
    value = str(raw)
    if not value.strip():
        raise ConfigError(setting, raw, "is empty")
    if "\x00" in value:
        raise ConfigError(setting, raw, "contains a NUL byte")
    return value


def parse_bool(setting: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int):
        if raw in (0, 1):
            return bool(raw)
        raise ConfigError(setting, raw, "expected a boolean (1/0, true/false, yes/no, on/off)")
    word = str(raw).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(setting, raw, "expected a boolean (1/0, true/false, yes/no, on/off)")


_SIZE_RE = re.compile(r"^\s*(\d{1,20})\s*([KMGT]i?B?|[kmgt]i?b?|B|b)?\s*$")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(setting: str, raw: object, *, minimum: int = 1, maximum: int = 1 << 50) -> int:
    """Bytes as an integer, or with a binary unit: 64MiB, 64M, 1GiB. Decimal 'KB/MB/GB' mean powers of 1000."""
    if isinstance(raw, bool):
        raise ConfigError(setting, raw, "expected a size in bytes")
    if isinstance(raw, int):
        value = raw
    else:
        m = _SIZE_RE.match(str(raw))
        if not m:
            raise ConfigError(setting, raw, "expected a size such as 67108864, 64MiB or 1GiB")
        unit = (m.group(2) or "").lower()
        base = unit[:1]
        if unit.endswith("b") and "i" not in unit and base in ("k", "m", "g", "t"):
            factor = 1000 ** ("kmgt".index(base) + 1)
        else:
            factor = _SIZE_UNITS[base]
        value = int(m.group(1)) * factor
    if not minimum <= value <= maximum:
        raise ConfigError(setting, raw, f"must be between {minimum} and {maximum} bytes")
    return value


def parse_int(setting: str, raw: object, *, minimum: int, maximum: int) -> int:
    if isinstance(raw, bool):
        raise ConfigError(setting, raw, "expected an integer")
    try:
        digits = "" if isinstance(raw, int) else str(raw).strip()
        if len(digits) > 30:  # int() refuses huge digit strings with its own ValueError; no setting needs them
            raise ValueError
        value = raw if isinstance(raw, int) else int(digits, 10)
    except ValueError as exc:
        raise ConfigError(setting, raw, "expected an integer") from exc
    if not minimum <= value <= maximum:
        raise ConfigError(setting, raw, f"must be between {minimum} and {maximum}")
    return value


def parse_seconds(setting: str, raw: object, *, minimum: float = 0.0, maximum: float = 7 * 86400) -> float:
    if isinstance(raw, bool):
        raise ConfigError(setting, raw, "expected a number of seconds")
    try:
        value = float(raw) if isinstance(raw, (int, float)) else float(str(raw).strip().rstrip("s"))
    except ValueError as exc:
        raise ConfigError(setting, raw, "expected a number of seconds") from exc
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise ConfigError(setting, raw, f"must be between {minimum} and {maximum} seconds")
    return value


def parse_choice(setting: str, raw: object, choices: Sequence[str]) -> str:
    word = str(raw).strip().lower()
    if word not in choices:
        raise ConfigError(setting, raw, f"expected one of {', '.join(choices)}")
    return word


def parse_url(setting: str, raw: object) -> str:
    """An http(s) URL naming a host, without a trailing slash."""
    url = str(raw).strip()
    if not re.match(r"^https?://[^/\s]+", url):
        raise ConfigError(setting, raw, "must start with http:// or https:// and name a host")
    return url.rstrip("/")


# Parsers with their bounds, for a table entry: `parse=integer(1, 1024)`.


def integer(minimum: int, maximum: int) -> Parse:
    return lambda setting, raw: parse_int(setting, raw, minimum=minimum, maximum=maximum)


def size(minimum: int = 1, maximum: int = 1 << 50) -> Parse:
    return lambda setting, raw: parse_size(setting, raw, minimum=minimum, maximum=maximum)


def seconds(minimum: float = 0.0, maximum: float = 7 * 86400) -> Parse:
    return lambda setting, raw: parse_seconds(setting, raw, minimum=minimum, maximum=maximum)


def choice(*words: str) -> Parse:
    return lambda setting, raw: parse_choice(setting, raw, words)


LOG_LEVEL = choice("debug", "info", "warning", "error")


# ---------------------------------------------------------------------------------------------- the table


class Kind(Enum):
    """How a setting is spelt on the command line."""

    VALUE = "value"  # --flag VALUE
    SWITCH = "switch"  # --flag / --no-flag
    TRUE = "true"  # --flag alone
    REPEAT = "repeat"  # --flag VALUE, repeatable; the environment gives a comma list
    ENV = "env"  # no flag: the environment (or an extra-config key) only


class Where(Enum):
    """Where a value came from."""

    FLAG = "flag"
    EXTRA = "extra"
    ENV = "env"
    DEFAULT = "default"


@dataclass(frozen=True)
class Option:
    name: str  # the attribute argparse fills; --name-with-dashes is its flag unless `flags` says otherwise
    help: str  # one line for --help, and the docs' meaning unless `doc` says more
    env: tuple[str, ...] = ()  # environment names, first wins
    default: str | None = None  # as a user would write it; parsed like a given value. None: decided in code
    parse: Parse = text
    kind: Kind = Kind.VALUE
    flags: tuple[str, ...] = ()  # the spellings, when not just --name-with-dashes (e.g. "-tp")
    extra: str | None = None  # its --download-extra-config key
    required: bool = False
    default_doc: str | None = None  # the docs' default where code decides it ("last URI segment")
    env_doc: str | None = None  # more for the docs' environment column ("TOS_ENDPOINT for tos://")
    doc: str | None = None  # the docs' meaning, where it says more than `help`
    scope: str = ""  # a subcommand's own setting (the runtime's "head" or "worker"); "" for every one
    group: str | None = None  # the --help section
    metavar: str | None = None

    @property
    def flag_names(self) -> tuple[str, ...]:
        if self.kind is Kind.ENV:
            return ()
        return self.flags or ("--" + self.name.replace("_", "-"),)

    @property
    def label(self) -> str:
        """The name an error about this setting uses when nothing was given."""
        return self.flag_names[0] if self.flag_names else (self.env[0] if self.env else self.extra or self.name)

    def argparse_help(self) -> str:
        where = ", ".join(self.env)
        default = self.default_doc if self.default_doc is not None else self.default
        said = "; ".join(x for x in (where, f"default {default}" if default else "") if x)
        return f"{self.help} [{said}]" if said else self.help


class Given(NamedTuple):
    raw: Any  # None: not given anywhere
    source: str  # the flag, extra-config key or environment name it came from (the option's label otherwise)
    where: Where


class Options:
    """The settings of one command, in the order its reference page lists them."""

    def __init__(self, *options: Option, env_prefix: str, doc_rows: Sequence[tuple[str, str, str, str]] = ()) -> None:
        self.options = options
        self.by_name = {o.name: o for o in options}
        if len(self.by_name) != len(options):
            raise ValueError("two options share a name")
        self.env_prefix = env_prefix
        self.doc_rows = tuple(doc_rows)  # rows of the docs table that are not settings (--version, after --)

    def __getitem__(self, name: str) -> Option:
        return self.by_name[name]

    @property
    def known_env(self) -> frozenset[str]:
        return frozenset(name for o in self.options for name in o.env)

    @property
    def extra_keys(self) -> frozenset[str]:
        return frozenset(o.extra for o in self.options if o.extra)

    def unknown_env(self, env: Mapping[str, str]) -> list[str]:
        """Names with this command's prefix that no setting reads: a typo in a pod spec that would do nothing."""
        known = self.known_env
        return sorted(k for k in env if k.startswith(self.env_prefix) and k not in known)

    def add_arguments(self, parser: argparse.ArgumentParser, scope: str = "") -> None:
        groups: dict[str, Any] = {}
        for o in self.options:
            if o.kind is Kind.ENV or o.scope not in ("", scope):
                continue
            target: Any = parser
            if o.group:
                target = groups.get(o.group) or groups.setdefault(o.group, parser.add_argument_group(o.group))
            kwargs: dict[str, Any] = {"dest": o.name, "help": o.argparse_help(), "default": None}
            if o.kind is Kind.SWITCH:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif o.kind is Kind.TRUE:
                kwargs["action"] = "store_true"
            elif o.kind is Kind.REPEAT:
                kwargs["action"] = "append"
            if o.required:
                kwargs["required"] = True
            if o.metavar:
                kwargs["metavar"] = o.metavar
            target.add_argument(*o.flag_names, **kwargs)

    def lookup(
        self, args: argparse.Namespace, env: Mapping[str, str], extra: Mapping[str, Any] | None = None
    ) -> Lookup:
        return Lookup(self, args, env, extra or {})

    def markdown(self) -> str:
        """The reference page's settings table."""
        lines = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
        for o in self.options:
            flags = " / ".join(f"`{f}`" for f in o.flag_names)
            if o.kind is Kind.SWITCH:
                flags += " / " + " / ".join(f"`--no-{f[2:]}`" for f in o.flag_names if f.startswith("--"))
            if o.scope and flags:
                flags = f"{o.scope}: {flags}"
            env = ", ".join(f"`{e}`" for e in o.env)
            if o.env_doc:
                env = f"{env} ({o.env_doc})" if env else o.env_doc
            meaning = o.doc or o.help
            if o.extra:
                meaning += f" (`--download-extra-config` key `{o.extra}`)"
            default = "required" if o.required else (o.default_doc if o.default_doc is not None else o.default or "")
            lines.append(f"| {flags} | {env} | {default} | {meaning} |")
        lines += [f"| {' | '.join(row)} |" for row in self.doc_rows]
        return "\n".join(lines) + "\n"


class Lookup:
    """One command line and environment read through a table: each value with the name it came from."""

    def __init__(self, options: Options, args: argparse.Namespace, env: Mapping[str, str], extra: Mapping[str, Any]):
        self.options = options
        self.args = args
        self.env = env
        self.extra = extra

    def given(self, name: str, *, env_first: Iterable[str] = ()) -> Given:
        """The raw value of a setting: flag > extra-config key > environment (`env_first`, then its own names).

        An empty environment value counts as not given (a pod spec's `value: ""`); an empty flag does not."""
        o = self.options[name]
        if o.kind is not Kind.ENV:
            flag = getattr(self.args, name, None)
            if flag is not None and not (o.kind is Kind.TRUE and flag is False):
                return Given(flag, o.flag_names[0], Where.FLAG)
        if o.extra and not _blank(self.extra.get(o.extra)):
            return Given(self.extra[o.extra], f"--download-extra-config {o.extra}", Where.EXTRA)
        for env_name in (*env_first, *o.env):
            raw = self.env.get(env_name)
            if raw is not None and raw.strip():
                return Given(raw, env_name, Where.ENV)
        return Given(None, o.label, Where.DEFAULT)

    def value(self, name: str, *, env_first: Iterable[str] = ()) -> Any:
        """The parsed value, or the parsed default (None where the table leaves the default to code)."""
        o = self.options[name]
        raw, source, _ = self.given(name, env_first=env_first)
        if raw is None:
            return None if o.default is None else o.parse(source, o.default)
        return o.parse(source, raw)


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


# ------------------------------------------------------------------------------------------ the docs tables

BEGIN = "<!-- settings table: generated from {module} by `make docs`; edit the table there -->"
END = "<!-- end of settings table -->"


def render_page(page: str, module: str, table: Options) -> str:
    """`page` with its settings table, between the markers, replaced by the table's own."""
    begin = BEGIN.format(module=module)
    start = page.find(begin)
    stop = page.find(END, start)
    if start < 0 or stop < 0:
        raise ValueError(f"the page has no settings-table markers ({begin} ... {END})")
    return page[: start + len(begin)] + "\n" + table.markdown() + page[stop:]


def main(argv: Sequence[str]) -> int:
    """`python -m downloader.options PAGE=MODULE:ATTR ...`: rewrite each page's settings table."""
    for pair in argv:
        page, _, target = pair.partition("=")
        module, _, attr = target.partition(":")
        table = getattr(importlib.import_module(module), attr)
        with open(page, encoding="utf-8") as f:
            before = f.read()
        after = render_page(before, module.replace(".", "/") + ".py", table)
        if after != before:
            with open(page, "w", encoding="utf-8") as f:
                f.write(after)
            print(f"{page}: settings table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
