"""Prometheus text for the download, the readiness verdict, and the engine's own metrics passed through. A scrape
reads one snapshot, with fresh progress, so the counters agree with the manifest they sit beside."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from downloader.coop.report import CoopReport, PeerState
from downloader.inventory import CacheInventory, ModelState

from .monitor import Monitor
from .peers import PeerRoute
from .snapshot import Phase, Snapshot


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class DownloadCollector(Collector):
    def __init__(self, monitor: Monitor, peers: PeerRoute | None = None) -> None:
        self.monitor = monitor
        self.peers = peers

    def collect(self):  # type: ignore[no-untyped-def]
        snap = self.monitor.snapshot(fresh_progress=True)
        if snap.model is not None:
            yield from _download(snap)
            report = CoopReport.from_dict(snap.progress.cooperation) if snap.progress is not None else None
            if report is not None:
                yield from _cooperation(report)
        if self.peers is not None:
            yield from _served(self.peers)
        settings = snap.settings
        cache = snap.cache
        if cache is None and settings.cache_root is not None:  # not read yet: the families, at zero
            cache = CacheInventory(settings.cache_root, (), None, 0, 0, 0)
        if cache is not None:
            yield from _cache(snap, cache)
        yield _gauge("aibrix_ready", "1 when /readyz answers 200", 1.0 if snap.readiness.ok else 0.0)
        if snap.engine is not None:
            yield _gauge("aibrix_engine_up", "1 when the engine's /health answers 200", 1.0 if snap.engine.up else 0.0)
        if snap.ray is not None:
            yield _gauge("aibrix_ray_alive_nodes", "Alive Ray nodes", float(snap.ray.alive or 0))
            yield _gauge("aibrix_ray_expected_nodes", "Ray nodes required", float(settings.expected_ray_nodes))


def _download(snap: Snapshot):  # type: ignore[no-untyped-def]
    """The model's series: its download's progress, its phase, the cold-start steps, whether it is complete."""
    progress, model = snap.progress, snap.model
    assert model is not None
    manifest, complete = model.manifest, model.ready
    total = progress.bytes_total if progress else (manifest.total_bytes if manifest else 0)
    done = progress.bytes_done if progress else (manifest.total_bytes if manifest and complete else 0)
    yield _gauge("aibrix_download_bytes_total", "Bytes of the selected model files", total)
    yield _gauge("aibrix_download_bytes_done", "Bytes of the model on disk and verified or in progress", done)
    yield CounterMetricFamily(
        "aibrix_download_bytes_fetched",
        "Bytes received from the source by the current (or last) download run",
        value=progress.bytes_fetched if progress else 0,
    )
    files_total = progress.files_total if progress else (len(manifest.files) if manifest else 0)
    files_done = progress.files_done if progress else (len(manifest.files) if manifest and complete else 0)
    yield _gauge("aibrix_download_files_total", "Model files selected", files_total)
    yield _gauge("aibrix_download_files_done", "Model files complete and verified", files_done)
    duration = 0.0
    if progress is not None:
        end = time.time() if snap.download_running else progress.updated_at
        duration = max(0.0, end - progress.started_at)
    yield _gauge("aibrix_download_duration_seconds", "Seconds the current (or last) download has run", duration)
    yield _gauge(
        "aibrix_download_throughput_bytes_per_second",
        "Current download rate",
        progress.rate_bps if progress and progress.phase == Phase.DOWNLOADING else 0.0,
    )
    yield CounterMetricFamily("aibrix_download_retries", "Retried requests", value=progress.retries if progress else 0)
    errors = CounterMetricFamily("aibrix_download_errors", "Transient errors by kind", labels=["kind"])
    for kind, count in sorted((progress.errors_by_kind if progress else {}).items()):
        errors.add_metric([kind], count)
    yield errors
    phase = GaugeMetricFamily("aibrix_download_phase", "1 for the current phase", labels=["phase"])
    for p in Phase:
        phase.add_metric([p.value], 1.0 if snap.phase == p else 0.0)
    yield phase
    steps = GaugeMetricFamily(
        "aibrix_cold_start_step_seconds",
        "Seconds each step of this start took (listing, download, verification, ray, engine, total); "
        "a step not reached yet is absent",
        labels=["step"],
    )
    for step, seconds in (snap.cold_start or {}).items():
        if seconds is not None:
            steps.add_metric([step.value], seconds)
    yield steps
    yield _gauge("aibrix_model_complete", "1 when the manifest says complete and verified", 1.0 if complete else 0.0)
    yield _gauge(
        "aibrix_model_lease_held", "1 while the sidecar holds a lease on the model", 1.0 if snap.lease else 0.0
    )


def _cache(snap: Snapshot, inventory: CacheInventory):  # type: ignore[no-untyped-def]
    """The node cache: bytes, budget, models by state and in use, evictions so far."""
    models = inventory.models
    yield _gauge("aibrix_cache_bytes_used", "Bytes of every model in the node cache", inventory.bytes_used)
    budget = GaugeMetricFamily("aibrix_cache_budget_bytes", "The node cache's budget (absent when none is set)")
    if snap.cache_budget is not None:
        budget.add_metric([], snap.cache_budget)
    yield budget
    by_state = GaugeMetricFamily("aibrix_cache_models", "Models in the node cache by state", labels=["state"])
    for state in ModelState:
        by_state.add_metric([state.value], sum(1 for m in models if m.state is state))
    yield by_state
    yield _gauge("aibrix_cache_models_in_use", "Models with a lease held (or being downloaded or evicted)",
                 sum(1 for m in models if m.leases.in_use))  # fmt: skip
    yield CounterMetricFamily("aibrix_cache_evictions", "Models evicted from the node cache", value=inventory.evictions)
    yield CounterMetricFamily(
        "aibrix_cache_evicted_bytes", "Bytes of the models evicted from the node cache", value=inventory.evicted_bytes
    )


def _cooperation(report: CoopReport):  # type: ignore[no-untyped-def]
    """A cooperative download's series: bytes by where they came from, its share, each peer's state."""
    by_source = CounterMetricFamily(
        "aibrix_download_bytes_by_source",
        "Bytes received by the download, from the origin or from peers",
        labels=["source"],
    )
    by_source.add_metric(["origin"], report.bytes_from_origin)
    by_source.add_metric(["peer"], report.bytes_from_peers)
    yield by_source
    yield _gauge(
        "aibrix_download_share_bytes",
        "Bytes of the ranges planned so far that are this member's share",
        report.share_bytes,
    )
    yield _gauge(
        "aibrix_download_shared_bytes", "Bytes of every range planned so far that peers may fill", report.planned_bytes
    )
    yield CounterMetricFamily(
        "aibrix_download_peer_refetched_files",
        "Files whose bytes from peers failed verification, fetched again from the origin",
        value=report.files_refetched,
    )
    received = CounterMetricFamily("aibrix_download_peer_bytes", "Bytes received from each peer", labels=["peer"])
    failures = CounterMetricFamily(
        "aibrix_download_peer_failures", "A peer unreachable, stalled or answering wrongly", labels=["peer"]
    )
    states = GaugeMetricFamily(
        "aibrix_download_peer_state", "1 for each peer's current state", labels=["peer", "state"]
    )
    for url, peer in sorted(report.peers.items()):
        received.add_metric([url], peer.bytes)
        failures.add_metric([url], peer.failures)
        for state in PeerState:
            states.add_metric([url, state.value], 1.0 if peer.state is state else 0.0)
    yield received
    yield failures
    yield states


def _served(peers: PeerRoute):  # type: ignore[no-untyped-def]
    """What this member's peer route served and refused."""
    counts = peers.counts
    served = CounterMetricFamily("aibrix_peer_served_bytes", "Bytes served to each peer", labels=["peer"])
    for url, n in sorted(dict(counts.bytes_by_peer).items()):
        served.add_metric([url], n)
    yield served
    refused = CounterMetricFamily("aibrix_peer_refusals", "Peer requests refused, by reason", labels=["reason"])
    for reason, n in sorted(dict(counts.refusals).items()):
        refused.add_metric([reason], n)
    yield refused


def render(monitor: Monitor, registry: CollectorRegistry) -> bytes:
    ours = generate_latest(registry)
    engine = monitor.engine.metrics() if monitor.engine is not None else None
    if engine:
        # The engine's metrics keep their own names (vllm:...), as AIBrix's sidecar passes them through.
        return ours + b"\n" + engine.encode()
    return ours


def make_registry(monitor: Monitor, peers: PeerRoute | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DownloadCollector(monitor, peers))
    return registry
