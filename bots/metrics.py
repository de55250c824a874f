"""Prometheus metrics for every adapter: per-stage latency, queue depth, jobs by outcome."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """One registry per service (tests build several services in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.stage_seconds = Histogram(
            "talktwin_stage_seconds", "Seconds per reply stage", ["stage"], buckets=STAGE_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.jobs = Counter("talktwin_jobs", "Jobs by outcome", ["outcome"], registry=self.registry)
        self.queue_depth = Gauge(
            "talktwin_queue_depth", "Jobs admitted and not finished", registry=self.registry
        )

    def track_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(depth)

    def observe_stages(self, seconds: dict[str, float]) -> None:
        for stage, value in seconds.items():
            self.stage_seconds.labels(stage).observe(value)

    def count(self, outcome: str) -> None:
        self.jobs.labels(outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
