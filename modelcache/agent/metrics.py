"""Prometheus metrics of one agent, on its own registry (a fresh one per agent and test)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from modelcache.agent.model_states import ModelStatus
from modelcache.contract.agent_wire import MODEL_STATES

# Pulls of small configs take a second; a 400 GB model on a slow link takes hours.
_PULL_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, float("inf"))


@dataclass(slots=True)
class AgentMetrics:
    registry: CollectorRegistry
    models: Gauge
    downloaded_bytes: Counter
    pull_seconds: Histogram
    pull_failures: Counter
    progress: Gauge
    cache_used_bytes: Gauge
    disk_free_bytes: Gauge
    disk_capacity_bytes: Gauge
    report_failures: Counter
    pulled_bytes: Counter
    peer_served_bytes: Counter
    peer_requests: Counter
    peer_uploads: Gauge
    _progress_keys: set[str] = field(default_factory=set)

    @classmethod
    def create(cls) -> AgentMetrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            models=Gauge(
                "modelcache_agent_models",
                "Models on this node by state.",
                ["state"],
                registry=registry,
            ),
            downloaded_bytes=Counter(
                "modelcache_agent_downloaded_bytes",
                "Model bytes written to the cache from sources.",
                registry=registry,
            ),
            pull_seconds=Histogram(
                "modelcache_agent_pull_duration_seconds",
                "Seconds from a pull's start to its model being published.",
                buckets=_PULL_BUCKETS,
                registry=registry,
            ),
            pull_failures=Counter(
                "modelcache_agent_pull_failures",
                "Pulls that ended in an error, by reason.",
                ["reason"],
                registry=registry,
            ),
            progress=Gauge(
                "modelcache_agent_model_progress_ratio",
                "Bytes done over bytes total, per model being pulled or held.",
                ["storage_key"],
                registry=registry,
            ),
            cache_used_bytes=Gauge(
                "modelcache_agent_cache_used_bytes",
                "Bytes held under the cache root's models/ (published and staging).",
                registry=registry,
            ),
            disk_free_bytes=Gauge(
                "modelcache_agent_disk_free_bytes",
                "Free bytes on the cache root's filesystem.",
                registry=registry,
            ),
            disk_capacity_bytes=Gauge(
                "modelcache_agent_disk_capacity_bytes",
                "Size of the cache root's filesystem.",
                registry=registry,
            ),
            report_failures=Counter(
                "modelcache_agent_report_failures",
                "Registrations, list polls and status reports the coordinator did not take.",
                registry=registry,
            ),
            pulled_bytes=Counter(
                "modelcache_agent_pulled_bytes",
                "Model bytes fetched by pulls, per model, from the origin or from peers.",
                ["model", "source"],
                registry=registry,
            ),
            peer_served_bytes=Counter(
                "modelcache_agent_peer_served_bytes",
                "Chunk bytes this node sent to peers of its node group, per model.",
                ["model"],
                registry=registry,
            ),
            peer_requests=Counter(
                "modelcache_agent_peer_requests",
                "Peer requests this node answered, by route (chunks, file) and status code "
                "(aborted: the peer went away mid-answer).",
                ["route", "code"],
                registry=registry,
            ),
            peer_uploads=Gauge(
                "modelcache_agent_peer_uploads",
                "Chunk uploads to peers in progress (each holds one of --peer-upload-slots).",
                registry=registry,
            ),
        )

    def count_pulled(self, model: str, *, origin: int, peer: int) -> None:
        if origin:
            self.pulled_bytes.labels(model=model, source="origin").inc(origin)
        if peer:
            self.pulled_bytes.labels(model=model, source="peer").inc(peer)

    def forget_model(self, model: str) -> None:
        """A deleted model's series go with it, so label sets stay bounded by what the node holds
        (Prometheus reads a counter that vanishes and comes back as a reset)."""
        for source in ("origin", "peer"):
            self.pulled_bytes.remove(model, source)
        self.peer_served_bytes.remove(model)

    def observe(self, statuses: Iterable[ModelStatus]) -> None:
        counts = dict.fromkeys(MODEL_STATES, 0)
        keys: set[str] = set()
        for status in statuses:
            counts[status.state] += 1
            keys.add(status.storage_key)
            ratio = status.bytes_done / status.bytes_total if status.bytes_total else 0.0
            if status.state == "ModelDownloaded":
                ratio = 1.0
            self.progress.labels(storage_key=status.storage_key).set(ratio)
        for state, count in counts.items():
            self.models.labels(state=state).set(count)
        for gone in self._progress_keys - keys:
            self.progress.remove(gone)
        self._progress_keys = keys
