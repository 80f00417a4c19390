"""Prometheus metrics of one app, in a registry of its own (never the global one), so several
apps in one process (as in tests) keep separate counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["BATCH_SIZE_BUCKETS", "ServeMetrics"]

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# Seconds; CPU inference of a detector takes tens of milliseconds to seconds.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    """The service's metrics.

    Attributes:
        registry: the ``CollectorRegistry`` holding them.
        requests: ``heron_requests_total{endpoint, status}``, requests answered.
        latency: ``heron_request_latency_seconds``, time to answer ``/v1/predict``.
        batch_size: ``heron_batch_size``, images per predictor call.
        queue_depth: ``heron_queue_depth``, images waiting for a batch.
        inference: ``heron_inference_seconds``, duration of each predictor call.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "heron_requests",
            "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "heron_request_latency_seconds",
            "Time to answer a /v1/predict request, in seconds.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "heron_batch_size",
            "Images per forward of the model.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "heron_queue_depth", "Images waiting for a batch.", registry=self.registry
        )
        self.inference = Histogram(
            "heron_inference_seconds",
            "Duration of one forward of the model (a whole batch), in seconds.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_batch(self, batch_size: int, seconds: float) -> None:
        """Record one predictor call of `batch_size` images that took `seconds`."""
        self.batch_size.observe(batch_size)
        self.inference.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of the Prometheus text exposition of every metric."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
