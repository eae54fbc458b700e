"""Prometheus metrics of the coordinator, on its own registry (a fresh one per app and test)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True, slots=True)
class CoordinatorMetrics:
    registry: CollectorRegistry
    reports: Counter
    write_failures: Counter
    aggregation_lag: Gauge
    objects: Gauge
    request_seconds: Histogram
    token_reviews: Counter
    agent_refusals: Counter
    leading: Gauge

    @classmethod
    def create(cls) -> CoordinatorMetrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            reports=Counter(
                "modelcache_coordinator_reports",
                "Agent status reports accepted (rate() gives reports per second).",
                registry=registry,
            ),
            write_failures=Counter(
                "modelcache_coordinator_status_write_failures",
                "Status writes to the store that failed and were retried.",
                registry=registry,
            ),
            aggregation_lag=Gauge(
                "modelcache_coordinator_aggregation_lag_seconds",
                "From the first unwritten change to its status being written, last tick.",
                registry=registry,
            ),
            objects=Gauge(
                "modelcache_coordinator_objects",
                "Objects held, by kind.",
                ["kind"],
                registry=registry,
            ),
            request_seconds=Histogram(
                "modelcache_coordinator_request_duration_seconds",
                "REST request latency by route.",
                ["route"],
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
                registry=registry,
            ),
            token_reviews=Counter(
                "modelcache_coordinator_token_reviews",
                "TokenReviews asked of the API server (cache misses), by result: "
                "accepted, refused, failed.",
                ["result"],
                registry=registry,
            ),
            agent_refusals=Counter(
                "modelcache_coordinator_agent_refusals",
                "Agent calls refused for their token, by HTTP code (401 none or unknown, "
                "403 another node's or not an agent's).",
                ["code"],
                registry=registry,
            ),
            leading=Gauge(
                "modelcache_coordinator_leader",
                "1 while this replica is the acting coordinator (holds the Lease, or runs "
                "alone), 0 on standby.",
                registry=registry,
            ),
        )
