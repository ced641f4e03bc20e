"""The head's and the worker's lifecycles: wait for what each step needs (with bounded, logged waits), start the
children built by `commands`, and supervise them until one of them ends or a signal arrives. Every way out is a
`RuntimeFailure` with its exit code; the children are always stopped in order on the way out: vLLM, then Ray.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import httpx

from downloader import Progress, is_ready, read_manifest, read_progress
from downloader.lease import Lease

from . import commands
from .cluster import Dashboard, Membership, Node, engine_nodes, lost_nodes, probe_http, probe_tcp
from .config import HealthCheck, Settings, engine_endpoint
from .errors import (
    ClusterTimeoutError,
    EngineExitedError,
    EngineLostError,
    EngineStartTimeoutError,
    HeadUnreachableError,
    Interrupted,
    ModelError,
    NodeLostError,
    RayExitedError,
    RayStartError,
    RuntimeFailure,
)
from .supervise import Child, Signals, describe_exit, reap_orphans, stop_together

log = logging.getLogger("runtime")

FAILURE_GRACE = 5.0  # after a failure, each child gets at most this long after SIGTERM: nothing is left to drain
HEAD_BACKOFF = (0.5, 5.0)  # first and largest delay between probes of the head's GCS
# Ray's own RAY_health_check_* defaults (ray_config_def.h), which `--ray-health-check ray` keeps.
RAY_DEFAULT_HEALTH_CHECK = HealthCheck(period_ms=3000, timeout_ms=10000, failure_threshold=5)
ENGINE_PROBE_TIMEOUT = 2.0  # seconds one /health check of a serving vLLM may take; only sustained failure counts


class Runner:
    def __init__(
        self,
        settings: Settings,
        env: Mapping[str, str],
        signals: Signals,
        python: str = sys.executable,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.s = settings
        self.env = dict(env)
        self.signals = signals
        self.python = python
        self.clock = clock
        self.children: list[Child] = []  # in start order; stopped in reverse
        # The model is in use for as long as the runtime lives: its lease keeps the node cache from evicting it.
        self.lease = Lease(settings.model_dir)

    # ---------------------------------------------------------------------------------------------- helpers
    def _sleep(self, seconds: float) -> None:
        if self.signals.sleep(seconds):
            raise self.signals.interrupted()

    def _start(self, child: Child, failure: Callable[[str], RuntimeFailure]) -> Child:
        try:
            child.start()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if isinstance(exc, FileNotFoundError):
                reason += "; " + self._not_found_hint(child.argv[0])
            raise failure(f"cannot start {child.name} ({child.argv[0]}): {reason}") from exc
        self.children.append(child)
        return child

    def _not_found_hint(self, program: str) -> str:
        """Where a program that does not exist was looked for, and the setting that names it."""
        if program == self.s.ray_command[0]:
            setting = "--ray-command (RUNTIME_RAY_COMMAND)"
        elif program == self.s.vllm_command[0]:
            setting = "--vllm-command (RUNTIME_VLLM_COMMAND)"
        else:
            setting = "its setting"
        if "/" in program:
            return f"there is no {program!r}: give the right path with {setting}"
        return f"{program!r} is not on PATH ({self.env.get('PATH', '')}): install it, or give its path with {setting}"

    def _reap(self) -> None:
        reap_orphans({c.pid for c in self.children if c.pid is not None})

    def stop_children(self, failure: BaseException | None) -> None:
        """On a signal: vLLM first (it is the Ray driver, and drains its requests), then Ray, each with
        --stop-timeout. After a failure nothing is left to drain: all at once, bounded by FAILURE_GRACE."""
        children = list(reversed(self.children))
        if failure is None or isinstance(failure, Interrupted):
            for child in children:
                child.stop(self.s.stop_timeout, self.signals)
        else:
            stop_together(children, min(self.s.stop_timeout, FAILURE_GRACE), self.signals)
        for child in children:
            if child.returncode is not None:
                log.info("%s stopped (%s)", child.name, describe_exit(child.returncode))
        self.children.clear()

    def log_network_env(self) -> None:
        network = commands.passthrough_network_env(self.env)
        if network:
            log.info("collective network settings passed through: %s", " ".join(f"{k}={v}" for k, v in network.items()))

    # ------------------------------------------------------------------------------------------------ model
    def prepare_model(self) -> None:
        self.hold_lease()
        cmd = commands.download_command(self.python, self.s)
        if cmd is not None:
            log.info("downloading the model into %s: aibrix-download %s", self.s.model_dir, " ".join(cmd[3:]))
            child = self._start(Child("aibrix-download", cmd, self.env, stdout_to_stderr=True), ModelError)
            while child.poll() is None:
                self._sleep(self.s.poll_interval)
            self.children.remove(child)
            code = child.returncode
            assert code is not None
            if code != 0:
                raise ModelError(
                    f"aibrix-download failed ({describe_exit(code)}; its log above says why): "
                    f"no model in {self.s.model_dir}"
                )
        self.wait_for_model()

    def hold_lease(self) -> None:
        """Take the model's lease when its lease file is there (made by the download; the runtime makes it only
        when it runs the download itself, since its mount of the model may be read-only)."""
        if not self.lease.held and self.lease.acquire(create=bool(self.s.download_args)):
            log.info("holding a lease on %s: the node cache does not evict it while the runtime runs", self.s.model_dir)

    def wait_for_model(self) -> None:
        s = self.s
        start = self.clock()
        last_log = -1e18
        while True:
            self.hold_lease()
            if is_ready(s.model_dir):
                if not self.lease.held:
                    log.warning(
                        "no lease on %s (%s): the node cache could evict it while it is served",
                        s.model_dir,
                        self.lease.unsupported or "no lease file: downloaded by an older aibrix-download?",
                    )
                manifest = read_manifest(s.model_dir)
                files = len(manifest.files) if manifest is not None else 0
                log.info("model ready in %s (%d files, complete and verified)", s.model_dir, files)
                return
            now = self.clock()
            waited = now - start
            state = describe_model_wait(read_progress(s.model_dir))
            if s.model_wait_timeout and waited >= s.model_wait_timeout:
                raise ModelError(f"no complete model in {s.model_dir} after {waited:.0f}s: {state}")
            if now - last_log >= s.log_interval:
                limit = f" of {s.model_wait_timeout:.0f}s" if s.model_wait_timeout else ""
                log.info("waiting for the model in %s (%.0fs%s): %s", s.model_dir, waited, limit, state)
                last_log = now
            self._sleep(s.poll_interval)

    # ------------------------------------------------------------------------------------------------- head
    def run_head(self) -> None:
        s = self.s
        self.log_network_env()
        self.prepare_model()
        ray = self._start(
            Child("ray head", commands.ray_start_command(s), commands.ray_env(self.env, s)),
            lambda msg: RayStartError(msg),
        )
        log.info("started the Ray head: %s", commands.shell_line(ray.argv))
        dashboard = Dashboard(s.dashboard_url)
        try:
            watched = self.wait_for_cluster(ray, dashboard)
            vllm = self._start(
                Child("vllm", commands.vllm_command(s), commands.engine_env(self.env, s)),
                lambda msg: EngineExitedError(msg, 127),
            )
            log.info("started vLLM: %s", commands.shell_line(vllm.argv))
            self.supervise_head(ray, vllm, dashboard, watched)
        finally:
            dashboard.close()

    def wait_for_cluster(self, ray: Child, dashboard: Dashboard) -> tuple[Node, ...]:
        s = self.s
        start = self.clock()
        last_log, last_summary = -1e18, ""
        membership: Membership | None = None
        reason = "not asked yet"
        while True:
            self._reap()
            code = ray.poll()
            if code is not None:
                raise RayStartError(f"`ray start` exited ({describe_exit(code)}) before the cluster was complete")
            try:
                nodes = dashboard.nodes(s.accelerator_resource)
                membership = Membership.of(nodes, s.expected_nodes, s.expected_gpus, s.accelerator_resource)
                reason = ""
            except (httpx.HTTPError, ValueError) as exc:
                reason = f"dashboard {s.dashboard_url} not answering ({type(exc).__name__})"
            now = self.clock()
            waited = now - start
            if membership is not None and not reason and membership.complete:
                log.info("cluster complete after %.0fs: %s", waited, membership.summary())
                return engine_nodes(membership)
            summary = reason or (membership.summary() if membership is not None else "")
            if summary != last_summary or now - last_log >= s.log_interval:
                log.info("waiting for the cluster (%.0fs of %.0fs): %s", waited, s.cluster_wait_timeout, summary)
                last_log, last_summary = now, summary
            if waited >= s.cluster_wait_timeout:
                if membership is None:
                    raise RayStartError(f"the Ray head did not come up within {s.cluster_wait_timeout:.0f}s: {reason}")
                raise ClusterTimeoutError(
                    f"the cluster is incomplete after {s.cluster_wait_timeout:.0f}s: {membership.summary()}"
                )
            self._sleep(s.poll_interval)

    def supervise_head(self, ray: Child, vllm: Child, dashboard: Dashboard, watched: Sequence[Node]) -> None:
        s = self.s
        host, port = engine_endpoint(s.engine_args)
        health_url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/health"
        log.info("watching %s: %s", "node" if len(watched) == 1 else f"{len(watched)} nodes",
                 ", ".join(n.label(s.accelerator_resource) for n in watched))  # fmt: skip
        started = self.clock()
        last_healthy: float | None = None  # when vLLM last answered /health with 200; None until it has served
        failing = ""  # why its /health fails right now, once it has served
        last_log = self.clock()
        dashboard_down_since: float | None = None
        while True:
            self._reap()
            lost: list[tuple[Node, str]] = []
            try:
                lost = lost_nodes(watched, dashboard.nodes(s.accelerator_resource))
                if dashboard_down_since is not None:
                    log.info("the Ray dashboard answers again")
                dashboard_down_since = None
            except (httpx.HTTPError, ValueError) as exc:
                now = self.clock()
                if dashboard_down_since is None:
                    dashboard_down_since = now
                    log.warning(
                        "the Ray dashboard %s is not answering (%s); failing if it stays away for %.0fs",
                        s.dashboard_url,
                        type(exc).__name__,
                        s.dashboard_lost_timeout,
                    )
                elif now - dashboard_down_since >= s.dashboard_lost_timeout:
                    raise NodeLostError(
                        f"the Ray dashboard {s.dashboard_url} has not answered for {now - dashboard_down_since:.0f}s: "
                        "cluster membership unknown"
                    ) from exc
            engine_code = vllm.poll()
            if lost:
                raise self.node_lost(lost, engine_code)
            if engine_code is not None:
                self.blame_a_lost_node(dashboard, watched, engine_code)
                raise EngineExitedError(f"vLLM exited ({describe_exit(engine_code)}); it must never stop", engine_code)
            ray_code = ray.poll()
            if ray_code is not None:
                raise RayExitedError(f"the Ray head (`ray start`) exited ({describe_exit(ray_code)})", ray_code)
            if last_healthy is None:
                status = probe_http(health_url, timeout=min(1.0, s.poll_interval + 0.5))
                now = self.clock()
                if status == 200:
                    last_healthy = now
                    log.info("vLLM is serving: %s answered 200 after %.0fs", health_url, now - started)
                elif s.engine_start_timeout and now - started >= s.engine_start_timeout:
                    raise EngineStartTimeoutError(
                        f"vLLM has not answered {health_url} for {now - started:.0f}s since it started: stuck in "
                        "collective setup (check NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME and that every node "
                        "reaches every other) or in loading the model"
                    )
                elif now - last_log >= s.log_interval:
                    log.info("vLLM starting (%.0fs): %s not answering yet", now - started, health_url)
                    last_log = now
            else:
                last_healthy, failing = self.watch_engine(health_url, last_healthy, failing)
            self._sleep(s.poll_interval)

    def node_lost(self, lost: Sequence[tuple[Node, str]], engine_code: int | None) -> NodeLostError:
        what = ", ".join(f"{n.label(self.s.accelerator_resource)} is {state}" for n, state in lost)
        after = f"; vLLM had already exited ({describe_exit(engine_code)})" if engine_code is not None else ""
        return NodeLostError(f"Ray node lost: {what}{after}; stopping so that the whole group restarts")

    def blame_a_lost_node(self, dashboard: Dashboard, watched: Sequence[Node], engine_code: int) -> None:
        """vLLM exited. When a node died under it, vLLM often notices (its Ray actor is gone) before Ray's health
        check declares the node DEAD: wait that check's window for the cause, and raise NodeLostError if a
        watched node is lost within it, so the exit code names the node rather than vLLM."""
        s = self.s
        window = node_loss_window(s)
        log.info("vLLM exited (%s); checking Ray's node states for %.0fs", describe_exit(engine_code), window)
        deadline = self.clock() + window
        while True:
            try:
                lost = lost_nodes(watched, dashboard.nodes(s.accelerator_resource))
            except (httpx.HTTPError, ValueError):
                lost = []
            if lost:
                raise self.node_lost(lost, engine_code)
            if self.clock() >= deadline:
                return
            self._sleep(min(s.poll_interval, 0.5))

    def watch_engine(self, health_url: str, last_healthy: float, failing: str) -> tuple[float, str]:
        """One /health check of a vLLM that has served. Returns (when it last answered 200, why it fails now or
        ""); raises EngineLostError once it has failed for --engine-lost-timeout: a hung API server or engine
        keeps its process (and its GPUs) while the pod just goes NotReady, so only a restart of the group helps."""
        s = self.s
        status = probe_http(health_url, timeout=min(ENGINE_PROBE_TIMEOUT, s.engine_lost_timeout))
        now = self.clock()
        if status == 200:
            if failing:
                log.info("vLLM answers %s again after %.0fs", health_url, now - last_healthy)
            return now, ""
        why = "not answering" if status is None else f"answering {status}"
        if not failing:
            log.warning(
                "vLLM's %s is %s; failing if it does not answer 200 within %.0fs of its last answer",
                health_url,
                why,
                s.engine_lost_timeout,
            )
        if now - last_healthy >= s.engine_lost_timeout:
            raise EngineLostError(
                f"vLLM's {health_url} has not answered 200 for {now - last_healthy:.0f}s ({why}) after it had "
                f"served (--engine-lost-timeout {s.engine_lost_timeout:g}s): the engine is hung; stopping so that "
                "the whole group restarts"
            )
        return last_healthy, why

    # ----------------------------------------------------------------------------------------------- worker
    def run_worker(self) -> None:
        s = self.s
        self.log_network_env()
        self.prepare_model()
        self.wait_for_head()
        ray = self._start(
            Child("ray worker", commands.ray_start_command(s), commands.ray_env(self.env, s)),
            lambda msg: RayStartError(msg),
        )
        log.info("started the Ray worker: %s", commands.shell_line(ray.argv))
        self.supervise_worker(ray)

    def wait_for_head(self) -> None:
        s = self.s
        host, port = s.head_host, s.ray_port
        start = self.clock()
        delay, last_log = HEAD_BACKOFF[0], -1e18
        while True:
            reason = probe_tcp(host, port, timeout=min(2.0, max(0.5, delay)))
            now = self.clock()
            waited = now - start
            if reason is None:
                log.info("the head's GCS answers at %s (after %.0fs)", s.gcs_address, waited)
                return
            if waited >= s.head_wait_timeout:
                raise HeadUnreachableError(
                    f"the head's GCS at {s.gcs_address} did not answer within {s.head_wait_timeout:.0f}s ({reason})"
                )
            if now - last_log >= s.log_interval or last_log < start:
                log.info(
                    "the head's GCS at %s is not answering yet (%s); next try in %.1fs (waited %.0fs of %.0fs)",
                    s.gcs_address,
                    reason,
                    delay,
                    waited,
                    s.head_wait_timeout,
                )
                last_log = now
            self._sleep(min(delay, max(0.0, s.head_wait_timeout - waited)))
            delay = min(delay * 2, HEAD_BACKOFF[1])

    def supervise_worker(self, ray: Child) -> None:
        s = self.s
        lost_since: float | None = None
        while True:
            self._reap()
            code = ray.poll()
            if code is not None:
                raise RayExitedError(
                    f"`ray start` exited ({describe_exit(code)}): this node's raylet is gone "
                    "(Ray's log above says why)",
                    code,
                )
            reason = probe_tcp(s.head_host, s.ray_port, timeout=min(2.0, max(0.5, s.poll_interval)))
            now = self.clock()
            if reason is None:
                if lost_since is not None:
                    log.info("the head's GCS answers again after %.0fs", now - lost_since)
                lost_since = None
            elif lost_since is None:
                lost_since = now
                log.warning(
                    "the head's GCS at %s is not answering (%s); exiting if it stays away for %.0fs",
                    s.gcs_address,
                    reason,
                    s.head_lost_timeout,
                )
            elif now - lost_since >= s.head_lost_timeout:
                raise HeadUnreachableError(
                    f"the head's GCS at {s.gcs_address} has not answered for {now - lost_since:.0f}s ({reason})"
                )
            self._sleep(s.poll_interval)

    # -------------------------------------------------------------------------------------------------- run
    def run(self) -> None:
        """Run this node's lifecycle; always raises (a RuntimeFailure) and always stops the children first."""
        failure: BaseException | None = None
        try:
            if self.s.role == "head":
                self.run_head()
            else:
                self.run_worker()
            raise RuntimeFailure("internal error: the supervision loop ended")  # pragma: no cover
        except BaseException as exc:
            failure = exc
            if isinstance(exc, Interrupted):
                log.info("%s: stopping %s", exc, " then ".join(c.name for c in reversed(self.children)) or "nothing")
            elif isinstance(exc, RuntimeFailure):
                log.error("%s", exc)
            raise
        finally:
            self.stop_children(failure)
            self.lease.release()


def node_loss_window(s: Settings) -> float:
    """Seconds within which Ray's GCS declares a node that stopped answering DEAD: its health check's period x
    failures + timeout (RAY_health_check_*, as the runtime sets them; Ray's own defaults when left alone)."""
    hc = s.ray_health_check or RAY_DEFAULT_HEALTH_CHECK
    return (hc.period_ms * hc.failure_threshold + hc.timeout_ms) / 1000


def describe_model_wait(p: Progress | None) -> str:
    if p is None:
        return "no download has started in this directory yet"
    if p.phase == "failed":
        return f"the download failed ({p.last_error}); waiting for it to be run again"
    if p.bytes_total:
        pct = 100.0 * p.bytes_done / p.bytes_total
        return f"{p.phase} {pct:.0f}% ({p.bytes_done / 1e9:.1f}/{p.bytes_total / 1e9:.1f} GB)"
    return p.phase


def default_python() -> str:
    return sys.executable or os.path.realpath("/proc/self/exe")
