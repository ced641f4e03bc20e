"""The benchmarks' pure logic (bench/harness, bench/probes): what each tool's settings allow in flight, which runs
measure which end point, the ratios the tables print, reading old results files, the weights reader, the
medians' intervals, the sidecar benchmark's per-pair CPU figures and verdicts, and table cells."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from bench.harness import numbers, phases, reader, report, results, stats, tables, tools
from bench.harness.endpoints import EndPoint, Then, measure, runs_needed
from bench.harness.model import ModelSpec
from bench.probes import summary as probes_summary

MiB = 1 << 20
LARGE = [1024 * MiB + 5000] * 4 + [2_000, 1_300_000, 300, 200, 5_000, 100]  # 4 shards and 6 small files
SMALL = [256 * 1024] * 3000


def ctx(sizes: list[int], variant: tools.Variant) -> tools.Ctx:
    spec = ModelSpec(files=3000, file_kib=256) if sizes is SMALL else ModelSpec(4, 1024)
    return tools.Ctx("", spec, variant, 4, Path("/nonexistent"), sizes=sizes)


MATCHED = tools.Variant(tools.Setting.MATCHED, 16, 64)


def test_s5cmd_matched_caps_gets_in_flight_at_n_for_both_shapes() -> None:
    assert tools.s5cmd_matched(ctx(SMALL, MATCHED)) == (16, 1)  # one-part objects: in flight = numworkers
    assert tools.s5cmd_matched(ctx(LARGE, MATCHED)) == (4, 4)
    for sizes in (SMALL, LARGE):
        assert tools.make_tools()["s5cmd"].setup(ctx(sizes, MATCHED)).max_in_flight == 16


def test_every_tool_matched_has_the_same_bound_where_it_can() -> None:
    made = tools.make_tools()
    for sizes in (SMALL, LARGE):
        bounds = {name: t.setup(ctx(sizes, MATCHED)).max_in_flight for name, t in made.items()}
        # AIBrix 0.8 fetches one file at a time: 1 GET for a small file, at most N on a 17-part shard
        want_old = 1 if sizes is SMALL else 16
        want = {"aibrix-download": 16, "aibrix-download-baseline": 16, "aibrix-0.8.0": want_old, "boto3": 16}
        assert bounds == {**want, "s5cmd": 16}


def test_peer_defaults_in_flight() -> None:
    made = tools.make_tools()
    defaults = tools.Variant(tools.Setting.DEFAULTS)
    # s5cmd: 256 workers x 5 parts: 4 shards x 5 + 6 one-part files; 256 on small files
    assert made["s5cmd"].setup(ctx(LARGE, defaults)).max_in_flight == 26
    assert made["s5cmd"].setup(ctx(SMALL, defaults)).max_in_flight == 256
    assert made["boto3"].setup(ctx(SMALL, defaults)).max_in_flight == 10
    assert made["aibrix-0.8.0"].setup(ctx(LARGE, defaults)).max_in_flight == 17  # 17 parts of 64 MiB < 32 threads
    assert made["aibrix-0.8.0"].setup(ctx(SMALL, defaults)).max_in_flight == 1


def test_aibrix_download_defaults_read_from_this_checkouts_help() -> None:
    # the defaults column of the tables comes from --help; its wording changed once and the column said "None"
    binary = Path(sys.executable).parent / "aibrix-download"
    if not binary.exists():
        pytest.skip(f"{binary} is not installed (make setup installs it)")
    assert tools.aibrix_download_defaults(binary) == (128, 64)  # auto's cap; 64 MiB ranges


def test_invocations_follow_the_setting() -> None:
    made = tools.make_tools()
    dest = Path("/d")
    s5 = made["s5cmd"].build(ctx(SMALL, MATCHED), dest).argv
    assert s5[s5.index("--numworkers") + 1] == "16" and s5[s5.index("-c") + 1] == "1"
    assert "--numworkers" not in made["s5cmd"].build(ctx(SMALL, tools.Variant(tools.Setting.DEFAULTS)), dest).argv
    assert "--defaults" in made["boto3"].build(ctx(LARGE, tools.Variant(tools.Setting.DEFAULTS)), dest).argv
    assert made["aibrix-0.8.0"].build(ctx(LARGE, tools.Variant(tools.Setting.DEFAULTS)), dest).env == {}


def test_runs_needed() -> None:
    assert runs_needed([EndPoint.DOWNLOAD]) == [Then.SYNC]
    assert runs_needed([EndPoint.IN_MEMORY]) == [Then.READ]
    assert runs_needed(list(EndPoint)) == [Then.SYNC, Then.READ]


def run(tool: str, then: Then, wall: float, cpu: float, after: float, after_cpu: float) -> dict[str, object]:
    r: dict[str, object] = {"tool": tool, "then": then.value, "ok": True, "wall_s": wall, "user_s": cpu, "sys_s": 0.0}
    r["max_rss_kb"] = 1024 * 10
    if then is Then.SYNC:
        r |= {"post_sync_s": after, "flush_cpu_s": after_cpu}
    else:
        r |= {"in_memory_wall_s": wall + after, "reader_cpu_s": after_cpu}
    return r


def test_measure_end_points() -> None:
    sync_run = run("s5cmd", Then.SYNC, 4.0, 2.0, 1.0, 0.5)
    read_run = run("s5cmd", Then.READ, 4.0, 2.0, 1.5, 0.7)
    assert measure(sync_run, EndPoint.DURABLE) == (5.0, 2.5, 10.0)
    assert measure(sync_run, EndPoint.IN_MEMORY) is None
    assert measure(read_run, EndPoint.IN_MEMORY) == (5.5, 2.7, 10.0)
    assert measure(read_run, EndPoint.DOWNLOAD) == (4.0, 2.0, 10.0)


def test_ratios_against_s5cmd_and_speedups() -> None:
    runs = [
        run("aibrix-download", Then.SYNC, 4.0, 1.0, 0.0, 0.0),
        run("aibrix-download", Then.READ, 4.0, 1.0, 2.0, 1.0),
        run("s5cmd", Then.SYNC, 4.0, 2.0, 2.0, 0.5),
        run("s5cmd", Then.READ, 4.0, 2.0, 1.0, 0.5),
        run("boto3", Then.READ, 8.0, 4.0, 1.0, 0.5),
    ]
    rows = {r["tool"]: r for r in stats.summarize(runs, ["aibrix-download", "s5cmd", "boto3"], 1 << 30)}
    ours = rows["aibrix-download"]["endpoints"]
    assert ours["durable"]["wall_ratio_vs_s5cmd"] == pytest.approx(4.0 / 6.0)
    assert ours["in-memory"]["wall_ratio_vs_s5cmd"] == pytest.approx(6.0 / 5.0)
    assert ours["in-memory"]["cpu_ratio_vs_s5cmd"] == pytest.approx(2.0 / 2.5)
    assert ours["in-memory"]["speedup_vs"]["boto3"] == pytest.approx(9.0 / 6.0)


def test_old_results_files_read_as_matched_then_sync() -> None:
    old: dict[str, Any] = {
        "config": {"concurrency": 16, "chunk_mib": 64, "reps": 1, "tools_requested": ["s5cmd"]},
        "model": {"uri": "s3://b/m/", "total_bytes": 1 << 30, "total_gib": 1.0, "n_files": 1},
        "runs": [run("s5cmd", Then.SYNC, 4.0, 2.0, 1.0, 0.5) | {"then": None}],
    }
    old["runs"][0].pop("then")
    rec = results.upgrade(old)
    assert rec["runs"][0]["phase"] == "compare@loopback"
    assert stats.variant_of(rec["runs"][0]) == MATCHED
    assert rec["phases"]["compare@loopback"]["variants"][0]["setting"] == "matched"


def test_schema_1_results_file_prints_its_table() -> None:
    """Schema 1 named the model's file list "files" (no count): --summarize of such a file prints its table."""
    old: dict[str, Any] = {
        "config": {"concurrency": 16, "chunk_mib": 64, "reps": 1, "tools_requested": ["s5cmd"]},
        "model": {"uri": "s3://b/m/", "total_bytes": 1 << 30, "total_gib": 1.0, "files": {"a": {}, "b": {}}},
        "runs": [run("s5cmd", Then.SYNC, 4.0, 2.0, 1.0, 0.5)],
    }
    rec = results.upgrade(old)
    rec["phases"]["compare@loopback"]["tools"] = ["s5cmd"]
    phases.summarize_phase(rec, "compare@loopback")
    text = "\n".join(report.matrix_section("compare@loopback", rec["phases"]["compare@loopback"]))
    assert "1.00 GiB in 2 files" in text
    assert "| s5cmd | 1/1 |" in text


@pytest.mark.parametrize("method", [reader.read_mapped, reader.read_plain])
def test_reader_reads_every_weight_byte(tmp_path: Path, method: object) -> None:
    (tmp_path / "a.safetensors").write_bytes(b"x" * (3 * MiB + 5))
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "config.json").write_bytes(b"{}")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "b.safetensors").write_bytes(b"y")
    files = reader.weight_files(str(tmp_path), "*.safetensors")
    assert [Path(f).name for f in files] == ["a.safetensors", "empty.safetensors"]
    buf = bytearray(MiB)
    assert sum(method(f, buf) for f in files) == 3 * MiB + 5  # type: ignore[operator]


def test_median_interval_covers_at_least_what_is_asked() -> None:
    xs = [float(x) for x in range(1, 17)]
    low, high, coverage = numbers.median_ci(xs, 0.95)
    assert coverage is not None and coverage >= 0.95
    assert low is not None and high is not None and low < numbers.median(xs) < high  # type: ignore[operator]
    assert (low, high) == (4.0, 13.0)
    assert numbers.median_ci([2.0, 1.0], 0.95) == (1.0, 2.0, 0.5)  # too few values: the widest interval
    assert numbers.percentile(xs, 50) == 8.0 and numbers.percentile(xs, 99) == 16.0
    assert numbers.percentile([], 50) is None


def test_sidecar_pair_cost_and_verdicts() -> None:
    a = {"sidecar_cpu_window_s": 1.0, "download_child_cpu_s": 8.0, "server_cpu_s": 2.0}
    b: dict[str, Any] = {"sidecar_cpu_window_s": 1.5, "download_child_cpu_s": 9.0, "server_cpu_s": 2.0}
    b["probe"] = {"cpu_s": 0.25, "completed": 500}
    cost = probes_summary.pair_cpu_cost(a, b)
    assert cost["cpu_share_sidecar"] == pytest.approx(0.05)
    assert cost["cpu_share_with_loadgen"] == pytest.approx(0.075)
    assert cost["sidecar_ms_per_probe"] == pytest.approx(1.0)
    assert cost["download_cpu_ratio"] == pytest.approx(1.1)
    assert probes_summary._verdict(0.9, 1.04, 1.05, "1.05") == "holds"
    assert probes_summary._verdict(1.06, 1.2, 1.05, "1.05") == "does not hold"
    assert probes_summary._verdict(1.0, 1.1, 1.05, "1.05") == "inconclusive (the interval contains 1.05)"
    assert probes_summary._verdict(None, None, 1.05, "1.05") is None


def test_table_cells() -> None:
    assert tables.spread_cell(1.234, 1.0, 2.0) == "1.23 (1.00-2.00)"
    assert tables.spread_cell(None, None, None) == "—"
    assert tables.header(["a", "b"]) == ["| a | b |", "|---|---|"]


def test_ceiling_counts_each_processs_gil_apart() -> None:
    """py-spy --subprocesses stacks start with their processes; a spawned worker's command line holds ';' and '('."""
    from bench.ceiling.cli import worker_count
    from bench.ceiling.sampler import parse_raw

    root = "/venv/bin/aibrix-download --model-uri s3://b/m/ --workers 2"
    worker = "/venv/bin/python -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=9) --multiprocessing-fork"  # noqa: E501
    tracker = "/venv/bin/python -c from multiprocessing.resource_tracker import main;main(4)"
    raw = "\n".join(
        [
            f'process 10:"{root}";_download (downloader/run.py:120);_fetch (downloader/run.py:190) 7',
            f'process 10:"{root}";process 11:"{worker}";thread (0x1): "fetch-0";Engine._stream (downloader/transfer.py:500) 30',  # noqa: E501
            f'process 10:"{root}";process 12:"{worker}";_pwrite_all (downloader/transfer.py:120) 20',
            f'process 10:"{root}";process 13:"{tracker}";main (resource_tracker.py:200) 1',
            # a worker whose command line py-spy read between its fork and its exec: still the coordinator's
            f'process 10:"{root}";process 14:"{root}";_pwrite_all (downloader/transfer.py:120) 5',
            f'process 10:"{root}" 2',
            # the coordinator's progress thread: work per second, apart
            f'process 10:"{root}";Thread._bootstrap (threading.py:1002);Reporter._run (downloader/progress.py:250);StateDir.write_progress (downloader/state.py:650) 4',  # noqa: E501
            # a worker importing its modules: its start, left out of the roles (in the total)
            f'process 10:"{root}";process 12:"{worker}";<module> (x.py:1);_call_with_frames_removed (<frozen importlib._bootstrap>:241) 8',  # noqa: E501
        ]
    )
    total, top, roles, workers = parse_raw(raw, 10)
    assert total == 77 and roles == {"coordinator": 9, "coordinator-periodic": 4, "worker": 55, "other": 1}
    assert workers == {11: 30, 12: 20, 14: 5}
    assert top[0] == ("Engine._stream (transfer.py)", 30)
    assert worker_count(["--page-cache", "keep", "--workers", "4"]) == 4 and worker_count(["--page-cache", "keep"]) == 1
