"""The node cache with real processes: leases held and released (and ended by kill -9), models cycling through a
budget least recently used first, evictions killed at every step, concurrent downloaders under a tight budget,
and `aibrix-download cache ls|rm|gc`."""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from downloader import is_ready, read_manifest
from downloader.cache import CacheRoot
from downloader.config import CACHE_OPTIONS, CacheAction, build_cache_parser, load_cache_settings
from downloader.inventory import ModelState, read_evictions, read_inventory, read_leases, read_model
from tests.conftest import REPO, S3Server, StderrLines, cli_env, popen_cli, read_tree, run_cli, wait_until
from tests.synthetic import MiB, model_files, random_bytes, upload, write_tree
from tests.test_docs_settings import FLAG, OPTION_LINE

KiB = 1024
WEIGHTS = 256 * KiB


def small_model(seed: int) -> dict[str, bytes]:
    """A model of one weights file and a config: every one the same size, so that a budget counts models."""
    return {"model.safetensors": random_bytes(WEIGHTS, seed), "config.json": b'{"seed": %03d}' % seed}


# Three such models (and their state files) fit, four do not.
BUDGET = str(WEIGHTS * 7 // 2)


def cached(root: Path) -> set[str]:
    return {m.name for m in read_inventory(str(root)).models if m.state is ModelState.COMPLETE}


def evicted_names(root: Path) -> list[str]:
    return [e.name for e in read_evictions(str(root))]


def hold(bucket: str, name: str, root: Path, endpoint: str) -> tuple[subprocess.Popen[str], StderrLines]:
    """`aibrix-download --hold`: a real process holding a lease on the model, once it is complete."""
    proc = popen_cli(
        ["--model-uri", f"s3://{bucket}/{name}/", "--local-dir", str(root), "--cache-max-size", BUDGET, "--hold"],
        endpoint,
    )
    lines = StderrLines(proc)
    lines.wait_for("holding a lease")
    return proc, lines


def test_ten_models_cycle_through_a_budget_of_three_least_recently_used_first(
    s3_server: S3Server, s3: object, bucket: str, tmp_path: Path
) -> None:
    models = {f"m{i}": small_model(i) for i in range(10)}
    for name, files in models.items():
        upload(s3, bucket, name, files)
    root = tmp_path / "nvme"
    order: list[str] = []  # least recently used first: what the test expects the cache to evict
    held: set[str] = set()
    expected_evictions: list[str] = []

    def use(name: str) -> None:
        if name in order:
            order.remove(name)
        order.append(name)

    def download(name: str) -> None:
        r = run_cli(
            ["--model-uri", f"s3://{bucket}/{name}/", "--local-dir", str(root), "--cache-max-size", BUDGET],
            s3_server.url,
        )
        assert r.returncode == 0, r.stderr
        if name not in order and len(order) == 3:
            victim = next(n for n in order if n not in held)
            order.remove(victim)
            expected_evictions.append(victim)
        use(name)
        assert evicted_names(root) == expected_evictions
        assert cached(root) == set(order)
        for present in order:
            assert read_tree(str(root / present)) == models[present]
        assert read_inventory(str(root)).bytes_used <= int(BUDGET)

    for name in ("m0", "m1", "m2"):
        download(name)
    holder_a, _ = hold(bucket, "m0", root, s3_server.url)
    held.add("m0")
    use("m0")
    assert read_leases(str(root / "m0")).holders == 1
    for name in ("m3", "m4", "m5"):
        download(name)  # m0 is the least recently used of all, but held: m1, m2, m3 go instead
    assert "m0" not in expected_evictions
    holder_b, lines_b = hold(bucket, "m4", root, s3_server.url)
    held.add("m4")
    use("m4")
    download("m6")

    holder_a.send_signal(signal.SIGKILL)  # no release, no clean-up: the kernel ends the lease with the process
    holder_a.wait(timeout=60)
    held.discard("m0")
    assert read_leases(str(root / "m0")).holders == 0
    download("m7")  # m0, no longer held, is the least recently used
    assert expected_evictions[-1] == "m0"
    download("m8")

    holder_b.send_signal(signal.SIGTERM)
    assert holder_b.wait(timeout=60) == 0, lines_b.text()
    held.discard("m4")
    use("m4")  # releasing a lease is a use
    download("m9")
    download("m1")  # an evicted model comes back (and the least recently used one makes room)
    assert expected_evictions == ["m1", "m2", "m3", "m5", "m0", "m6", "m7", "m8"]
    admitted = [e.reason.removeprefix("to admit ") for e in read_evictions(str(root))]
    assert admitted == ["m3", "m4", "m5", "m6", "m7", "m8", "m9", "m1"]


def test_a_model_in_use_is_never_evicted_and_the_run_fails_before_fetching(
    s3_server: S3Server, s3: object, bucket: str, tmp_path: Path
) -> None:
    root = tmp_path / "nvme"
    upload(s3, bucket, "a", small_model(1))
    upload(s3, bucket, "big", {"model.safetensors": random_bytes(3 * WEIGHTS, 2)})
    holder, lines = hold(bucket, "a", root, s3_server.url)
    try:
        r = run_cli(
            ["--model-uri", f"s3://{bucket}/big/", "--local-dir", str(root), "--cache-max-size", BUDGET],
            s3_server.url,
        )
        assert r.returncode == 8, r.stderr
        assert "cannot make room for big, nothing was fetched" in r.stderr
        assert "in use and not evictable: a (" in r.stderr and "1 lease held" in r.stderr
        assert not (root / "big" / "model.safetensors").exists()
        assert read_tree(str(root / "big")) == {}  # nothing fetched, no temp file allocated
        assert is_ready(str(root / "a"))
        rm = run_cli(["cache", "rm", "a", "--local-dir", str(root)], "")
        assert rm.returncode == 9 and "refusing to remove a: in use (1 lease held)" in rm.stderr
    finally:
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=60) == 0, lines.text()
    r = run_cli(
        ["--model-uri", f"s3://{bucket}/big/", "--local-dir", str(root), "--cache-max-size", BUDGET], s3_server.url
    )
    assert r.returncode == 0, r.stderr
    assert evicted_names(root) == ["a"] and cached(root) == {"big"}


def _lease_holder(model_dir: Path) -> subprocess.Popen[str]:
    """A process that holds a lease (as the sidecar and the runtime do) and says so on stdout."""
    code = (
        "import sys, time\nfrom downloader.lease import Lease\n"
        "lease = Lease(sys.argv[1])\nassert lease.acquire(create=False)\nprint('held', flush=True)\ntime.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(model_dir)],
        env=cli_env(""),
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def _download_local(src: Path, root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(["--model-uri", f"file://{src}", "--local-dir", str(root), *extra], "")


def _local_model(tmp_path: Path, seed: int) -> tuple[Path, Path]:
    """A small model downloaded from a local source into the root tmp_path/nvme: (root, model directory)."""
    src = tmp_path / "src" / "llama"
    write_tree(str(src), small_model(seed))
    root = tmp_path / "nvme"
    assert _download_local(src, root).returncode == 0
    return root, root / "llama"


def test_leases_are_counted_and_kill_9_of_a_holder_frees_its_lease(tmp_path: Path) -> None:
    root, model_dir = _local_model(tmp_path, 7)
    assert read_leases(str(model_dir)).holders == 0
    holders = [_lease_holder(model_dir) for _ in range(3)]
    try:
        assert read_leases(str(model_dir)).holders == 3
        ls = run_cli(["cache", "ls", "--json", "--local-dir", str(root)], "")
        assert ls.returncode == 0, ls.stderr
        (entry,) = json.loads(ls.stdout)["models"]
        assert entry["leases"] == 3 and entry["in_use"] is True and entry["state"] == "complete"
        holders[1].send_signal(signal.SIGKILL)
        holders[1].wait(timeout=60)
        assert read_leases(str(model_dir)).holders == 2
        assert run_cli(["cache", "gc", "--max-size", "0", "--local-dir", str(root)], "").returncode == 8
        assert is_ready(str(model_dir))
    finally:
        for p in holders:
            p.kill()
            p.wait(timeout=60)
    assert read_leases(str(model_dir)).holders == 0
    gc = run_cli(["cache", "gc", "--max-size", "0", "--local-dir", str(root)], "")
    assert gc.returncode == 0, gc.stderr
    assert gc.stdout.startswith("evicted llama (")
    assert not model_dir.exists() and read_inventory(str(root)).models == ()


KILL_TRIALS = 60


def test_kill_9_at_any_step_of_an_eviction_never_leaves_a_complete_looking_model_with_missing_bytes(
    tmp_path: Path,
) -> None:
    files = model_files(shards=2, shard_bytes=64 * KiB, seed=3)
    src = tmp_path / "src" / "llama"
    write_tree(str(src), files)
    template = tmp_path / "template"
    assert _download_local(src, template).returncode == 0
    assert _download_local(tmp_path / "src" / "llama", template, "--model-name", "other").returncode == 0
    kept = read_tree(str(template / "llama"))

    # How many steps one whole eviction takes, so that the trials can stop it after any of them.
    probe = tmp_path / "probe"
    shutil.copytree(template, probe, copy_function=shutil.copy2)
    total_steps = int(_evict(probe, "llama", 0).stdout)
    assert total_steps > len(files)  # the locks, the manifest, the rename, the record and each unlink

    rng = random.Random(21)
    outcomes: dict[str, int] = {}
    for trial in range(KILL_TRIALS):
        root = tmp_path / f"trial{trial}"
        shutil.copytree(template, root, copy_function=shutil.copy2)  # copy2: mtimes too, so the copy is complete
        assert is_ready(str(root / "llama")) and is_ready(str(root / "other"))
        kill_after = rng.randint(1, total_steps)
        r = _evict(root, "llama", kill_after)
        assert r.returncode == -signal.SIGKILL, r.stderr

        model_dir = root / "llama"
        state = read_model(str(root), "llama").state if model_dir.exists() else None
        outcomes[state.value if state else "absent"] = outcomes.get(state.value if state else "absent", 0) + 1
        if read_manifest(str(model_dir)) is not None:
            # complete-looking: then complete, every byte in place
            assert state is ModelState.COMPLETE and read_tree(str(model_dir)) == kept, f"trial {trial}"
        assert is_ready(str(root / "other")) and read_tree(str(root / "other")) == kept  # never touched
        assert not model_dir.exists() or read_leases(str(model_dir)).holders == 0  # the kill freed its locks

        # The next user recovers: what is left is removed or fetched again, and the trash is emptied.
        if trial % 10 == 0:
            again = _download_local(src, root, "--cache-max-size", "64MiB")
            assert again.returncode == 0, again.stderr
            assert is_ready(str(model_dir)) and read_tree(str(model_dir)) == kept
        else:
            CacheRoot(str(root)).gc(64 * MiB)
        assert read_inventory(str(root)).trash_bytes == 0
        shutil.rmtree(root)
    assert sum(outcomes.values()) == KILL_TRIALS
    # The kills landed before the manifest went (complete), between it and the rename (partial), and after
    # (absent, some of them while the trash was being deleted): every kind of moment, with this seed.
    assert set(outcomes) == {"complete", "partial", "absent"}, outcomes


def _evict(root: Path, name: str, kill_after: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.cache_evictor", str(root), name, str(kill_after)],
        env=cli_env(""),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_four_concurrent_downloaders_under_a_tight_budget(
    s3_server: S3Server, s3: object, bucket: str, tmp_path: Path
) -> None:
    """A model held, two old ones not in use, four downloads of other models at once, each holding its model once
    complete: exactly two fit beside the held one; the other two fail before fetching; nothing in use is evicted."""
    root = tmp_path / "nvme"
    models = {name: small_model(seed) for seed, name in enumerate(["held", "old1", "old2", "d1", "d2", "d3", "d4"])}
    for name, files in models.items():
        upload(s3, bucket, name, files)
    for name in ("old1", "old2"):
        args = ["--model-uri", f"s3://{bucket}/{name}/", "--local-dir", str(root), "--cache-max-size", BUDGET]
        assert run_cli(args, s3_server.url).returncode == 0
    holder, holder_lines = hold(bucket, "held", root, s3_server.url)
    procs = {
        name: popen_cli(
            ["--model-uri", f"s3://{bucket}/{name}/", "--local-dir", str(root), "--cache-max-size", BUDGET, "--hold"],
            s3_server.url,
        )
        for name in ("d1", "d2", "d3", "d4")
    }
    lines = {name: StderrLines(p) for name, p in procs.items()}
    try:
        holding: set[str] = set()
        failed: set[str] = set()
        for name, proc in procs.items():
            _wait_held_or_exit(proc, lines[name])
            if proc.poll() is None:
                holding.add(name)
            else:
                assert proc.returncode == 8, lines[name].text()
                assert "cannot make room" in lines[name].text() and "in use and not evictable" in lines[name].text()
                failed.add(name)
        assert len(holding) == 2 and len(failed) == 2
        for name in holding | {"held"}:
            assert is_ready(str(root / name)) and read_tree(str(root / name)) == models[name]
        for name in failed:
            assert "model.safetensors" not in read_tree(str(root / name))
        assert set(evicted_names(root)) == {"old1", "old2"}
        assert read_inventory(str(root)).bytes_used <= int(BUDGET)
    finally:
        for proc in [holder, *procs.values()]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=60) == 0, holder_lines.text()
        for name, proc in procs.items():
            assert proc.wait(timeout=60) in (0, 8), lines[name].text()


def _wait_held_or_exit(proc: subprocess.Popen[str], lines: StderrLines) -> None:
    wait_until(
        "the download holding its model or exiting",
        lambda: proc.poll() is not None or any("holding a lease" in line for line in lines.lines),
    )


def test_cache_ls_rm_and_usage_errors(tmp_path: Path) -> None:
    root = tmp_path / "nvme"
    for seed, name in enumerate(["a", "b"]):
        write_tree(str(tmp_path / "src" / name), small_model(seed))
        assert _download_local(tmp_path / "src" / name, root).returncode == 0
    ls = run_cli(["cache", "ls", "--local-dir", str(root)], "")
    assert ls.returncode == 0, ls.stderr
    header, *rows, summary = ls.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "STATE", "BYTES", "LEASES"]
    assert [r.split()[0] for r in rows] == ["a", "b"] and all(r.split()[1] == "complete" for r in rows)
    assert summary.startswith("2 model(s)") and "no budget recorded" in summary
    body = json.loads(run_cli(["cache", "ls", "--json", "--local-dir", str(root)], "").stdout)
    a = next(m for m in body["models"] if m["name"] == "a")
    assert a["source"] == f"file://{tmp_path / 'src' / 'a'}" and set(a["versions"]) == set(small_model(0))
    assert a["bytes"] >= WEIGHTS and a["leases"] == 0 and a["in_use"] is False

    rm = run_cli(["cache", "rm", "a", "--local-dir", str(root)], "")
    assert rm.returncode == 0, rm.stderr
    assert not (root / "a").exists() and is_ready(str(root / "b"))
    assert run_cli(["cache", "rm", "a", "--local-dir", str(root)], "").returncode == 2  # no such model
    assert run_cli(["cache", "gc", "--local-dir", str(root)], "").returncode == 2  # gc needs its size
    assert run_cli(["cache", "ls", "--local-dir", str(tmp_path / "nowhere")], "").returncode == 6
    assert run_cli(["cache", "rm", "../b", "--local-dir", str(root)], "").returncode == 2
    for args in (["--hold", "--dry-run"], ["--model-name", ".aibrix-cache"], ["--cache-max-size", "lots"]):
        r = _download_local(tmp_path / "src" / "b", root, *args)
        assert r.returncode == 2, (args, r.stderr)
    env_budget = run_cli(
        ["--model-uri", f"file://{tmp_path / 'src' / 'a'}", "--local-dir", str(root)], "", DOWNLOADER_CACHE_MAX_SIZE="1"
    )
    assert env_budget.returncode == 8 and "of a budget of 1 bytes" in env_budget.stderr


def test_the_sidecar_holds_its_model_and_shows_the_nodes_inventory(
    s3_server: S3Server, s3: object, bucket: str, tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from tests.test_sidecar import Sidecar

    root = tmp_path / "nvme"
    for seed, name in enumerate(["old", "m"]):
        upload(s3, bucket, name, small_model(seed))
    args = ["--model-uri", f"s3://{bucket}/old/", "--local-dir", str(root), "--cache-max-size", str(WEIGHTS * 3 // 2)]
    assert run_cli(args, s3_server.url).returncode == 0
    sidecar = Sidecar(
        ["--", "--model-uri", f"s3://{bucket}/m/", "--local-dir", str(root), "--cache-max-size", str(WEIGHTS * 3 // 2)],
        s3_server.url,
    )
    try:
        seen: list[dict[str, Any]] = []

        def status_with_m() -> bool:
            # The sidecar reads the inventory every few seconds: wait for a reading from after the download's last
            # write into the model's directory (its state files change size until it exits).
            status = sidecar.get("/status").json()
            cache = status.get("cache")
            names = [(m["name"], m["state"]) for m in cache["models"]] if cache else []
            settled = bool(cache) and cache["bytes_used"] == read_inventory(str(root)).bytes_used
            ready = names == [("m", "complete")] and sidecar.get("/readyz").status_code == 200
            if ready and settled:
                seen.append(status)
            return ready and settled

        wait_until("the inventory to show m complete and old evicted", status_with_m)
        status = seen[-1]
        assert status["lease_held"] is True
        cache = status["cache"]
        (m,) = cache["models"]
        assert m["leases"] == 1 and m["in_use"] is True and "versions" not in m
        assert cache["evictions"] == 1 and cache["budget_bytes"] == WEIGHTS * 3 // 2
        assert cache["bytes_used"] == m["bytes"] == read_inventory(str(root)).bytes_used
        families = {f.name: f for f in text_string_to_metric_families(sidecar.get("/metrics").text)}
        assert families["aibrix_cache_bytes_used"].samples[0].value == m["bytes"]
        assert families["aibrix_cache_budget_bytes"].samples[0].value == WEIGHTS * 3 // 2
        by_state = {s.labels["state"]: s.value for s in families["aibrix_cache_models"].samples}
        assert by_state == {"complete": 1.0, "incomplete": 0.0, "partial": 0.0}
        assert families["aibrix_cache_models_in_use"].samples[0].value == 1.0
        assert families["aibrix_cache_evictions"].samples[0].value == 1.0
        assert families["aibrix_model_lease_held"].samples[0].value == 1.0
        rm = run_cli(["cache", "rm", "m", "--local-dir", str(root)], "")
        assert rm.returncode == 9, rm.stderr
    finally:
        assert sidecar.close() == 143
    assert read_leases(str(root / "m")).holders == 0


def test_the_runtime_holds_a_lease_on_its_model_while_it_runs(tmp_path: Path) -> None:
    from runtime.config import load_settings as load_runtime_settings
    from runtime.run import Runner
    from runtime.supervise import Signals

    root, model_dir = _local_model(tmp_path, 5)
    settings = load_runtime_settings(["head", "--model-dir", str(model_dir)], {"PATH": "/usr/bin:/bin"})
    runner = Runner(settings, {}, Signals())
    runner.prepare_model()  # the model is there: the runtime takes its lease and finds it ready
    try:
        assert read_leases(str(model_dir)).holders == 1
        rm = run_cli(["cache", "rm", "llama", "--local-dir", str(root)], "")
        assert rm.returncode == 9, rm.stderr
    finally:
        runner.lease.release()
    assert read_leases(str(model_dir)).holders == 0
    assert run_cli(["cache", "rm", "llama", "--local-dir", str(root)], "").returncode == 0


@pytest.mark.parametrize("action", [a.value for a in CacheAction])
def test_every_flag_of_the_cache_commands_is_declared_in_their_table(action: str) -> None:
    parser = build_cache_parser()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parser.parse_args([action, *(["NAME"] if action == "rm" else []), "--help"])
    lines = [m.group(1) for m in map(OPTION_LINE.match, out.getvalue().splitlines()) if m]
    shown = {flag for line in lines for flag in FLAG.findall(line)} - {"--help", "-h"}
    declared = {f for o in CACHE_OPTIONS.options if o.scope in ("", action) for f in o.flag_names}
    assert shown == declared
    settings = load_cache_settings([action, *(["m"] if action == "rm" else [])], {"DOWNLOADER_CACHE_MAX_SIZE": "1G"})
    assert settings.root == CACHE_OPTIONS["local_dir"].default
    assert settings.max_size == (2**30 if action == "gc" else None)


def test_a_native_sidecar_whose_download_finds_no_room_exits_to_try_again(tmp_path: Path) -> None:
    from tests.test_sidecar import Sidecar

    src = tmp_path / "src" / "llama"
    write_tree(str(src), small_model(9))
    args = ["--", "--model-uri", f"file://{src}", "--local-dir", str(tmp_path / "nvme"), "--cache-max-size", "1KiB"]
    sidecar = Sidecar(["--exit-on-failure-after", "0", *args], "")
    assert sidecar.proc.wait(timeout=60) == 1  # so that Kubernetes restarts the container
    sidecar.http.close()
    log = "".join(sidecar.log)
    assert "download failed (exit code 8)" in log and "cannot make room for llama, nothing was fetched" in log, log
    assert "the next start of this container tries again" in log


RACE_ROUNDS = 20


def test_a_lease_taken_while_an_eviction_runs_is_either_refused_or_keeps_the_model(tmp_path: Path) -> None:
    """A lease holder and `cache rm` started together, round after round: either the lease came first (rm is
    refused with 9 and the model stays complete while held) or the eviction did (no lease is held: the model is
    gone), never a lease on a model being evicted."""
    template, _ = _local_model(tmp_path, 11)
    kept = read_tree(str(template / "llama"))
    code = (
        "import sys\nfrom downloader import is_ready\nfrom downloader.lease import Lease\n"
        "lease = Lease(sys.argv[1])\nheld = lease.acquire(create=False)\n"
        "print('held' if held else 'none', is_ready(sys.argv[1]), flush=True)\nsys.stdin.read()\n"
    )
    for n in range(RACE_ROUNDS):
        root = tmp_path / f"round{n}"
        shutil.copytree(template, root, copy_function=shutil.copy2)
        holder = subprocess.Popen(
            [sys.executable, "-c", code, str(root / "llama")],
            env=cli_env(""),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        rm = run_cli(["cache", "rm", "llama", "--local-dir", str(root)], "")
        assert holder.stdout is not None
        held, ready = holder.stdout.readline().split()
        try:
            if held == "held":
                assert ready == "True" and rm.returncode == 9, rm.stderr
                assert is_ready(str(root / "llama")) and read_tree(str(root / "llama")) == kept
            else:
                assert rm.returncode == 0, rm.stderr
                assert not (root / "llama").exists()
        finally:
            holder.communicate("", timeout=60)  # which side wins a round is the machine's business
