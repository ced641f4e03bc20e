"""Property tests of every parser that takes text from a user: a value or the project's own error, never a traceback.

"A clear error" means a `DownloaderError` (the one tree every CLI turns into an exit code and one line) with a
non-empty message; for argv, argparse's own usage exit (SystemExit 2) also counts. Anything else (ValueError,
RecursionError, TypeError ...) escapes `main()` as a traceback and exit 1, which the README reserves for bugs.

The inputs that once crashed (found by these tests) are kept as named regression tests at the bottom.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from downloader import jobs
from downloader.config import load_settings, parse_patterns, parse_suffixes
from downloader.errors import ConfigError, DownloaderError, UnsafePathError, UriError
from downloader.options import parse_size
from downloader.plan import check_layout, is_selected, pattern_matches, safe_parts, suffix_matches
from downloader.sources.base import RemoteFile
from downloader.uri import parse_model_uri, redact_uri
from tests.conftest import REPO

# Modest budgets: the whole file runs in well under 30 s on a shared 2-core machine.
PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters that matter to URL, path and glob parsers, plus a few awkward code points.
NASTY = "abcAZ019-_.:/@?#%[]!*\\ \t\n\x00\x01\x7f~=&;,'\"İı\u202e\ufeff😀"
nasty_text = st.text(alphabet=st.sampled_from(NASTY), max_size=60)
any_text = st.one_of(st.text(max_size=80), nasty_text)
SCHEMES = ["s3://", "S3://", "tos://", "gs://", "hf://", "file://", "file:///", "ftp://", "", "/", "//", "s3:"]
uri_text = st.one_of(any_text, st.builds(lambda a, b: a + b, st.sampled_from(SCHEMES), nasty_text))


@contextlib.contextmanager
def _no_stderr() -> Iterator[None]:
    """argparse prints usage to stderr before exiting; keep the test output readable."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def value_or_clear_error(fn: Callable[[], Any], *, argparse_exit_ok: bool = False) -> Any:
    """Run fn; a DownloaderError must carry a message. Returns the value, or the error."""
    try:
        with _no_stderr():
            return fn()
    except DownloaderError as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return exc
    except SystemExit as exc:
        assert argparse_exit_ok and exc.code == 2, f"SystemExit({exc.code!r})"
        return exc


# ----------------------------------------------------------------------------------------------- URIs


@PROPS
@given(uri_text)
@example("s3://bucket/models/x/")
@example("s3://bu\ncket/x")  # urlsplit drops tab/newline; must still be a value or an error
def test_model_uri_gives_a_value_or_a_clear_error(text: str) -> None:
    got = value_or_clear_error(lambda: parse_model_uri(text))
    if isinstance(got, DownloaderError):
        assert isinstance(got, UriError) and got.setting == "--model-uri"
        return
    assert got.scheme in ("s3", "tos", "gs", "hf", "file")
    if got.scheme in ("s3", "tos", "gs"):
        # nothing that could smuggle a path or credentials through
        assert got.bucket and "/" not in got.bucket and "@" not in got.bucket and ".." not in got.bucket
        assert ".." not in got.prefix.split("/") and "\x00" not in got.prefix
    # the default model name is what lands under --local-dir: it must pass the model-name check or be refused
    # there (load_settings validates it); here it must at least be computable
    assert isinstance(got.default_model_name, str)


@PROPS
@given(
    st.sampled_from(["s3", "gs", "tos"]),
    st.text(alphabet=st.sampled_from("abcXYZ019-_."), min_size=3, max_size=20),
    st.text(alphabet=st.sampled_from("abcXYZ019-_./"), max_size=30),
    # no '/', '?', '#' or '@': inside user-info those end the password
    st.text(alphabet=st.sampled_from("abcdefXYZ0129+=%&-_"), min_size=8, max_size=40),
)
def test_presigned_query_and_user_info_never_echoed(scheme: str, host: str, path: str, secret: str) -> None:
    """A signature in a query string or a password in the user-info never appears in an error or display."""
    sig = "Sig" + secret  # distinctive enough not to occur in the fixed parts of a message
    for uri in (
        f"{scheme}://{host}/{path}?X-Amz-Signature={sig}&X-Amz-Credential=AKIA",
        f"{scheme}://AKIAUSER:{sig}@{host}/{path}",
    ):
        assert sig not in redact_uri(uri)
        got = value_or_clear_error(lambda u=uri: parse_model_uri(u))  # type: ignore[misc]
        shown = str(got) if isinstance(got, DownloaderError) else got.display
        assert sig not in shown


# --------------------------------------------------------------------------- suffix / include / exclude


@PROPS
@given(any_text)
def test_suffix_list_parses_to_clean_suffixes_or_a_clear_error(text: str) -> None:
    got = value_or_clear_error(lambda: parse_suffixes("--allow-file-suffix", text))
    if isinstance(got, DownloaderError):
        assert isinstance(got, ConfigError) and got.setting == "--allow-file-suffix"
        return
    for s in got:
        assert s and "," not in s and "/" not in s and "\x00" not in s and not s.startswith(".")
        assert s == s.strip()


@PROPS
@given(st.lists(any_text, max_size=4), st.lists(nasty_text.filter(bool), min_size=1, max_size=5))
def test_patterns_parse_and_match_without_crashing(raws: list[str], paths: list[str]) -> None:
    got = value_or_clear_error(lambda: parse_patterns("--include", raws))
    if isinstance(got, DownloaderError):
        assert isinstance(got, ConfigError) and "\x00" in "".join(raws)
        return
    for p in got:
        assert p and p == p.strip() and "," not in p
    for path in paths:
        for p in got:
            assert pattern_matches(path, p) in (True, False)
        assert is_selected(path, ("json", "py"), got, ()) in (True, False)
        assert is_selected(path, (), (), got) in (True, False)


@PROPS
@given(nasty_text, st.lists(st.text(alphabet=st.sampled_from("abpyjson.gz"), min_size=1, max_size=8), max_size=4))
def test_suffix_match_means_a_real_dot_suffix(path: str, suffixes: list[str]) -> None:
    got = suffix_matches(path, suffixes)
    name = path.rsplit("/", 1)[-1]
    assert got == any(name.endswith("." + s) and len(name) > len(s) + 1 for s in suffixes)
    if got:
        assert any(name.endswith("." + s) for s in suffixes)  # 'py' never matches 'happy'


@PROPS
@given(st.lists(nasty_text, min_size=1, max_size=8))
def test_layout_check_is_total_and_never_lets_a_path_escape(paths: list[str]) -> None:
    files = [RemoteFile(key=f"k/{p}", rel_path=p, size=1, version="v") for p in paths]
    got = value_or_clear_error(lambda: check_layout(files))
    if isinstance(got, DownloaderError):
        assert isinstance(got, UnsafePathError) and got.exit_code == 7 and "refusing object key" in str(got)
        return
    for p in paths:
        parts = safe_parts("k", p)
        assert not p.startswith("/") and "\\" not in p and "\x00" not in p
        assert all(part not in ("", ".", "..") and not any(ord(c) < 0x20 for c in part) for part in parts)
        assert parts[0] != ".aibrix"
    assert all(isinstance(w, str) and w for w in got)


# ------------------------------------------------------------------------------- downloader settings

FLAG_NAMES = [
    "--local-dir", "--model-name", "--allow-file-suffix", "--include", "--exclude", "--num-threads",
    "--part-threshold", "--part-chunksize", "--buffer-size", "--progress", "--progress-interval",
    "--stall-timeout", "--max-attempts", "--lock-timeout", "--reserve-space", "--endpoint-url", "--region",
    "--s3-addressing-style", "--local-mode", "--log-level", "--download-extra-config",
]  # fmt: skip
ENV_NAMES = [
    "DOWNLOADER_LOCAL_DIR", "DOWNLOADER_MODEL_NAME", "DOWNLOADER_ALLOW_FILE_SUFFIX", "DOWNLOADER_INCLUDE",
    "DOWNLOADER_EXCLUDE", "DOWNLOADER_NUM_THREADS", "DOWNLOADER_PART_THRESHOLD", "DOWNLOADER_PART_CHUNKSIZE",
    "DOWNLOADER_BUFFER_SIZE", "DOWNLOADER_FORCE_DOWNLOAD", "DOWNLOADER_CHECK_FILE_EXIST", "DOWNLOADER_DRY_RUN",
    "DOWNLOADER_PROGRESS", "DOWNLOADER_PROGRESS_INTERVAL", "DOWNLOADER_STALL_TIMEOUT", "DOWNLOADER_MAX_ATTEMPTS",
    "DOWNLOADER_LOCK_TIMEOUT", "DOWNLOADER_RESERVE_SPACE", "DOWNLOADER_S3_ADDRESSING_STYLE", "DOWNLOADER_LOG_LEVEL",
    "DOWNLOADER_LOCAL_MODE", "DOWNLOADER_S3_MAX_IO_QUEUE", "DOWNLOADER_S3_IO_CHUNKSIZE", "DOWNLOADER_TOS_VERSION",
    "DOWNLOADER_TYPO", "AWS_ENDPOINT_URL", "AWS_REGION", "TOS_ENDPOINT", "HF_ENDPOINT", "HF_REVISION", "HF_TOKEN",
]  # fmt: skip
# Values near what people type, plus noise: numbers with units, booleans, floats, JSON-ish text.
setting_value = st.one_of(
    any_text,
    st.from_regex(r"\A-?[0-9]{1,25}(\.[0-9]+)?\s?([KMGTkmgt]i?[Bb]?|s|B)?\Z"),
    st.sampled_from(["0", "1", "true", "FALSE", "yes", "off", "nan", "inf", "-1", "1e9", "64MiB", "http://h:1"]),
)
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
EXTRA_KEYS = ["ak", "sk", "endpoint", "region", "hf_endpoint", "hf_token", "hf_revision", "num_threads",
              "max_io_queue", "io_chunksize", "part_threshold", "part_chunksize", "allow_file_suffix",
              "force_download", "unknown_key"]  # fmt: skip


def _check_settings(got: Any) -> None:
    if isinstance(got, (DownloaderError, SystemExit)):
        return
    assert 1 <= got.num_threads <= 1024 and got.part_threshold >= 1 and got.part_chunksize >= 64 * 1024
    assert got.model_name and ".." not in got.model_name.split("/") and not got.model_name.startswith("/")
    assert got.model_dir.startswith("/")


@PROPS
@given(
    uri_text,
    st.lists(st.tuples(st.sampled_from(FLAG_NAMES), setting_value), max_size=4),
    st.dictionaries(st.sampled_from(ENV_NAMES), setting_value, max_size=5),
)
def test_settings_from_flags_and_env_give_a_value_or_a_clear_error(
    uri: str, flags: list[tuple[str, str]], env: dict[str, str]
) -> None:
    assume(all("\x00" not in v for v in env.values()))  # the OS cannot put NUL in the environment
    argv = ["--model-uri", uri] + [x for pair in flags for x in pair]
    _check_settings(value_or_clear_error(lambda: load_settings(argv, env), argparse_exit_ok=True))


@PROPS
@given(st.one_of(st.dictionaries(st.sampled_from(EXTRA_KEYS), json_value, max_size=5), json_value))
def test_extra_config_json_gives_a_value_or_a_clear_error(value: Any) -> None:
    argv = ["--model-uri", "s3://bucket/m/", "--download-extra-config", json.dumps(value)]
    got = value_or_clear_error(lambda: load_settings(argv, {}), argparse_exit_ok=True)
    _check_settings(got)
    if isinstance(got, ConfigError):
        assert got.setting  # names what was wrong


@PROPS
@given(any_text)
def test_extra_config_arbitrary_text(text: str) -> None:
    got = value_or_clear_error(
        lambda: load_settings(["--model-uri", "s3://bucket/m/", "--download-extra-config", text], {}),
        argparse_exit_ok=True,
    )
    _check_settings(got)


# ------------------------------------------------------------------------------- sidecar and runtime


@PROPS
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "--host",
                    "--port",
                    "--model-dir",
                    "--engine-url",
                    "--engine-metrics-path",
                    "--engine-timeout",
                    "--expected-ray-nodes",
                    "--ray-dashboard-url",
                    "--stall-timeout",
                    "--poll-interval",
                    "--exit-on-failure-after",
                    "--log-level",
                ]
            ),
            setting_value,
        ),
        max_size=4,
    ),
    st.dictionaries(
        st.sampled_from(
            [
                "SIDECAR_PORT",
                "SIDECAR_MODEL_DIR",
                "INFERENCE_ENGINE_ENDPOINT",
                "METRIC_SCRAPE_PATH",
                "SIDECAR_ENGINE_TIMEOUT",
                "SIDECAR_EXPECTED_RAY_NODES",
                "SIDECAR_STALL_TIMEOUT",
                "SIDECAR_POLL_INTERVAL",
                "SIDECAR_LOG_LEVEL",
                "SIDECAR_EXIT_ON_FAILURE_AFTER",
            ]
        ),
        setting_value,
        max_size=4,
    ),
    st.booleans(),
)
def test_sidecar_settings_give_a_value_or_a_clear_error(
    flags: list[tuple[str, str]], env: dict[str, str], with_download: bool
) -> None:
    from sidecar.config import load_settings as load_sidecar

    assume(all("\x00" not in v for v in env.values()))
    argv = [x for pair in flags for x in pair]
    if with_download:
        argv += ["--", "--model-uri", "s3://bucket/m/", "--local-dir", "/tmp/x"]
    got = value_or_clear_error(lambda: load_sidecar(argv, env), argparse_exit_ok=True)
    if not isinstance(got, (DownloaderError, SystemExit)):
        # (an empty --model-dir '' is accepted and means the working directory: noted in the report, not a crash)
        assert 0 <= got.port <= 65535
        # no model directory only when there is something else to watch (AIBrix's aibrix_runtime: the engine)
        assert isinstance(got.model_dir, str) or (got.model_dir is None and (got.engine_url or got.expected_ray_nodes))
        assert got.engine_metrics_path.startswith("/")


@PROPS
@given(
    st.sampled_from(["head", "worker"]),
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "--num-cpus",
                    "--num-gpus",
                    "--resources",
                    "--ray-start-args",
                    "--ray-port",
                    "--tensor-parallel-size",
                    "--expected-nodes",
                    "--head-address",
                    "--node-ip",
                    "--poll-interval",
                    "--stop-timeout",
                    "--ray-health-check",
                    "--dashboard-url",
                    "--served-model-name",
                    "--model-wait-timeout",
                    "--kuberay",
                ]
            ),
            setting_value,
        ),
        max_size=4,
    ),
    st.lists(any_text, max_size=3),
)
def test_runtime_settings_give_a_value_or_a_clear_error(
    role: str, flags: list[tuple[str, str]], engine_args: list[str]
) -> None:
    from runtime.config import load_settings as load_runtime

    argv = [role, "--model-dir", "/models/m", "--head-address", "10.0.0.1:6379"][: 3 if role == "head" else 5]
    argv += [x for pair in flags for x in pair]
    if engine_args:
        argv += ["--", *engine_args]
    # {} as the environment: no KubeRay variables, no PATH lookups of our own commands that could differ per host
    value_or_clear_error(lambda: load_runtime(argv, {"PATH": "/usr/bin:/bin"}), argparse_exit_ok=True)


# ------------------------------------------------------------------- regressions: inputs that once crashed


def _cli(*args: str, env: dict[str, str] | None = None, module: str = "downloader") -> subprocess.CompletedProcess[str]:
    import os

    full_env = {**os.environ, "PYTHONPATH": REPO, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=full_env, cwd=REPO, timeout=60
    )


@pytest.mark.parametrize("uri", ["s3://[abc/models/", "gs://bucket]/m", "file://[x/y", "s3://user:pw@bucket:abc/m"])
def test_uri_with_brackets_or_bad_port_is_a_uri_error(uri: str) -> None:
    with pytest.raises(UriError):
        parse_model_uri(uri)


def test_cli_bracket_uri_exits_2_without_traceback(tmp_path: Any) -> None:
    r = _cli("--model-uri", "s3://[abc/models/", "--local-dir", str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-400:]


@pytest.mark.parametrize(
    "uri",
    [
        "https://bucket.s3.amazonaws.com/models/m/x.safetensors?X-Amz-Signature=Sig0123secret&X-Amz-Expires=60",
        "hf://org/name?sig=Sig0123secret",
        "org/name/extra?sig=Sig0123secret",
        "file://host/models?sig=Sig0123secret",
    ],
)
def test_rejected_presigned_uri_is_not_echoed(uri: str) -> None:
    with pytest.raises(UriError) as info:
        parse_model_uri(uri)
    assert "Sig0123secret" not in str(info.value)


@pytest.mark.parametrize("uri", ["/", "file:///", "/mnt/ /"])
def test_uri_without_a_name_is_a_config_error(uri: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(["--model-uri", uri], {})


def test_cli_root_uri_exits_2_without_traceback(tmp_path: Any) -> None:
    r = _cli("--model-uri", "/", "--local-dir", str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-400:]


def test_redact_uri_with_bad_port() -> None:
    assert "sig" not in redact_uri("https://host:abc/x?sig=1")


def test_deeply_nested_extra_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        load_settings(["--model-uri", "s3://bucket/m/", "--download-extra-config", "[" * 100_000], {})


def test_huge_integer_in_extra_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        load_settings(
            ["--model-uri", "s3://bucket/m/", "--download-extra-config", '{"num_threads": ' + "1" * 5000 + "}"], {}
        )


def test_huge_size_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_size("DOWNLOADER_PART_THRESHOLD", "9" * 5000)


def test_cli_huge_size_exits_2_without_traceback(tmp_path: Any) -> None:
    r = _cli(
        "--model-uri", "s3://bucket/m/", "--local-dir", str(tmp_path), env={"DOWNLOADER_PART_THRESHOLD": "9" * 5000}
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-400:]


def test_runtime_nested_resources_is_a_config_error() -> None:
    from runtime.config import load_settings as load_runtime

    with pytest.raises(ConfigError):
        load_runtime(["head", "--model-dir", "/m", "--resources", "[" * 100_000], {"PATH": "/usr/bin:/bin"})


# ------------------------------------------------------------------------------- whole-file GETs in flight


@PROPS
@given(
    st.integers(min_value=1, max_value=1024),
    st.integers(min_value=1, max_value=16384).map(lambda pages: pages * 4096),
    st.integers(min_value=4096, max_value=64 * 2**20).map(lambda buffer: buffer * jobs.WHOLE_BUDGET_BUFFERS),
)
@example(16, 256 * 1024, 24 * 2**20)  # the benchmark's small files: three GETs per connection, as measured
@example(32, 2**20, 24 * 2**20)  # 1 MiB files at the default 32 connections
def test_whole_gets_in_flight_keep_to_the_memory_budget(connections: int, slot: int, budget: int) -> None:
    depth, workers = jobs.whole_concurrency(connections, slot, budget)
    gets = depth * workers
    assert 1 <= depth <= jobs.WHOLE_DEPTH and workers >= 1
    assert gets <= jobs.WHOLE_PER_CONNECTION * connections
    # Our buffers, plus the client's copy of each body arriving (one per busy connection), within the budget:
    # whatever the connection count, unless one GET alone is over it.
    assert gets * slot + min(gets, connections) * slot <= max(budget, 2 * slot)
    # No fewer than the budget allows: three per connection, or half of what it buys, less the rounding to batches.
    assert gets >= min(jobs.WHOLE_PER_CONNECTION * connections, budget // slot // 2) - workers + 1
    if connections == 16 and slot == 256 * 1024 and budget == 24 * 2**20:
        assert (depth, workers) == (16, 3)
