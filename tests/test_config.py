"""Settings: flag > extra config > environment > default, strict parsing, clear errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from downloader.concurrency import ConnectionsMode
from downloader.config import MiB, load_settings, parse_suffixes
from downloader.errors import ConfigError
from downloader.options import parse_bool, parse_size

URI = ["--model-uri", "s3://bucket/models/llama/"]


def test_defaults_match_aibrix() -> None:
    s = load_settings(URI, {})
    assert s.local_dir == "/tmp/aibrix/models/"
    assert s.model_name == "llama"
    assert s.model_dir == "/tmp/aibrix/models/llama"
    assert (s.part_threshold, s.part_chunksize) == (64 * MiB, 64 * MiB)
    assert s.allow_suffixes == () and not s.force_download and not s.dry_run
    # AIBrix's 32 requests in flight is the fixed mode's count; the default, auto, may go up to 128
    assert (s.connections, s.num_threads) == (ConnectionsMode.AUTO, 128)
    assert load_settings([*URI, "--connections", "fixed"], {}).num_threads == 32


@pytest.mark.parametrize("mode", ["auto", "fixed"])
def test_num_threads_is_the_cap_or_the_count(mode: str) -> None:
    s = load_settings([*URI, "--num-threads", "16"], {"DOWNLOADER_CONNECTIONS": mode})
    assert (s.connections.value, s.num_threads) == (mode, 16)


def test_connections_takes_auto_or_fixed_only() -> None:
    with pytest.raises(ConfigError, match="DOWNLOADER_CONNECTIONS"):
        load_settings(URI, {"DOWNLOADER_CONNECTIONS": "64"})


def test_precedence_flag_over_extra_over_env() -> None:
    env = {"DOWNLOADER_NUM_THREADS": "8", "DOWNLOADER_ALLOW_FILE_SUFFIX": "json"}
    assert load_settings(URI, env).num_threads == 8
    assert load_settings([*URI, "--download-extra-config", '{"num_threads": 12}'], env).num_threads == 12
    s = load_settings([*URI, "--num-threads", "4", "--download-extra-config", '{"num_threads": 12}'], env)
    assert s.num_threads == 4
    assert s.allow_suffixes == ("json",)


def test_false_overrides_defaults_and_env() -> None:
    assert load_settings(URI, {"DOWNLOADER_FORCE_DOWNLOAD": "TRUE"}).force_download
    assert not load_settings(URI, {"DOWNLOADER_FORCE_DOWNLOAD": "0"}).force_download
    assert not load_settings([*URI, "--no-force-download"], {"DOWNLOADER_FORCE_DOWNLOAD": "yes"}).force_download
    assert load_settings(URI, {"DOWNLOADER_CHECK_FILE_EXIST": "0"}).force_download
    assert not load_settings([*URI, "--download-extra-config", '{"force_download": false}'], {}).force_download


def test_suffixes_from_every_source() -> None:
    assert load_settings(URI, {"DOWNLOADER_ALLOW_FILE_SUFFIX": "json, safetensors, .py"}).allow_suffixes == (
        "json",
        "safetensors",
        "py",
    )
    s = load_settings([*URI, "--download-extra-config", '{"allow_file_suffix": ["json", "py"]}'], {})
    assert s.allow_suffixes == ("json", "py")


def test_extra_config_credentials_warn_and_stay_secret() -> None:
    s = load_settings([*URI, "--download-extra-config", '{"ak": "AKIAEXAMPLE", "sk": "s3cr3t-value"}'], {})
    assert s.s3.access_key is not None and s.s3.access_key.reveal() == "AKIAEXAMPLE"
    assert any("secret" in w for w in s.warnings)
    assert "s3cr3t-value" not in repr(s) and "AKIAEXAMPLE" not in repr(s)


def test_endpoint_and_region() -> None:
    s = load_settings(URI, {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_DEFAULT_REGION": "eu-west-1"})
    assert s.s3.endpoint_url == "http://127.0.0.1:9000" and s.s3.region == "eu-west-1"
    s = load_settings(URI, {"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "http://b:2", "AWS_REGION": "x"})
    assert s.s3.endpoint_url == "http://b:2" and s.s3.region == "x"
    s = load_settings(["--model-uri", "tos://bucket/m/"], {"TOS_ENDPOINT": "https://tos-s3-cn-beijing.volces.com"})
    assert s.s3.endpoint_url == "https://tos-s3-cn-beijing.volces.com" and s.s3.addressing_style == "virtual"


def test_the_crt_carries_small_gets_unless_a_proxy_is_set() -> None:
    assert load_settings(URI, {}).s3.crt
    assert not load_settings(URI, {"HTTPS_PROXY": "http://proxy:3128"}).s3.crt  # the CRT client takes no proxy
    assert load_settings(URI, {"HTTPS_PROXY": "http://proxy:3128", "DOWNLOADER_S3_CRT": "1"}).s3.crt
    assert not load_settings([*URI, "--no-s3-crt"], {"DOWNLOADER_S3_CRT": "true"}).s3.crt
    assert load_settings(URI, {"AWS_CA_BUNDLE": "/etc/ca.pem"}).s3.ca_bundle == "/etc/ca.pem"


@pytest.mark.parametrize(
    "argv, env, setting",
    [
        ([], {"DOWNLOADER_NUM_THREADS": "0"}, "DOWNLOADER_NUM_THREADS"),
        ([], {"DOWNLOADER_PART_CHUNKSIZE": "huge"}, "DOWNLOADER_PART_CHUNKSIZE"),
        (["--num-threads", "-1"], {}, "--num-threads"),
        (["--part-threshold", "1.5GiB"], {}, "--part-threshold"),
        ([], {"DOWNLOADER_FORCE_DOWNLOAD": "2"}, "DOWNLOADER_FORCE_DOWNLOAD"),
        (["--download-extra-config", "[1]"], {}, "--download-extra-config"),
        (["--download-extra-config", "{bad json"], {}, "--download-extra-config"),
        (["--download-extra-config", '{"num_threads": "x"}'], {}, "--download-extra-config num_threads"),
        (["--model-name", "../escape"], {}, "--model-name"),
        (["--progress", "fancy"], {}, "--progress"),
        ([], {"AWS_ENDPOINT_URL": "localhost:9000"}, "AWS_ENDPOINT_URL"),
        ([], {"DOWNLOADER_S3_MAX_IO_QUEUE": "many"}, "DOWNLOADER_S3_MAX_IO_QUEUE"),
        (["--stall-timeout", "nan"], {}, "--stall-timeout"),
    ],
)
def test_malformed_values_name_the_setting(argv: list[str], env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings([*URI, *argv], env)
    assert info.value.setting == setting
    assert setting in str(info.value)


def test_unknown_downloader_variable_is_reported() -> None:
    s = load_settings(URI, {"DOWNLOADER_NUM_THREAD": "8"})
    assert any("DOWNLOADER_NUM_THREAD" in w for w in s.warnings)


def test_size_units() -> None:
    assert parse_size("x", "67108864") == 64 * MiB
    assert parse_size("x", "64MiB") == parse_size("x", "64M") == parse_size("x", "64m") == 64 * MiB
    assert parse_size("x", "1GiB") == 1024 * MiB
    assert parse_size("x", "1GB") == 10**9


@given(st.text(max_size=30))
def test_bool_parser_gives_a_value_or_a_clear_error(text: str) -> None:
    try:
        assert parse_bool("SETTING", text) in (True, False)
    except ConfigError as exc:
        assert exc.setting == "SETTING"


@given(st.text(max_size=30))
def test_size_parser_gives_a_value_or_a_clear_error(text: str) -> None:
    try:
        assert parse_size("SETTING", text) >= 1
    except ConfigError as exc:
        assert exc.setting == "SETTING"


@given(st.text(max_size=60))
def test_suffix_parser_gives_a_value_or_a_clear_error(text: str) -> None:
    try:
        for s in parse_suffixes("SETTING", text):
            assert s and "," not in s and not s.startswith(".")
    except ConfigError as exc:
        assert exc.setting == "SETTING"
