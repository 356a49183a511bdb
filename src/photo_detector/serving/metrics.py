"""Prometheus metrics of one service instance (`GET /metrics`).

Requests by route and status and their latency say whether the service is healthy; predictions by label and
the histogram of the ai_generated probability say whether what it sees is changing (drift): a shift in
either, with the model unchanged, means the traffic changed. Each app has its own registry, so several apps
in one process (tests) never share counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets from 1 ms to 10 s: a 224 px request takes a few ms, a phone photo tens.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
PROBABILITY_BUCKETS = tuple(i / 10 for i in range(1, 11))
# Phases of one request run from 0.1 ms (normalising a crop) to seconds (decoding a huge PNG).
PHASE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0)


class ServiceMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("photo_detector_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("photo_detector_request_seconds", "Time from request to response, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.model_time = Histogram("photo_detector_model_seconds", "ONNX Runtime time per model call",
                                    buckets=LATENCY_BUCKETS, registry=self.registry)
        self.phases = Histogram("photo_detector_phase_seconds",
                                "Server time per request phase (read, decode, resize, normalise, model), as in "
                                "the Server-Timing header", ["phase"], buckets=PHASE_BUCKETS, registry=self.registry)
        self.predictions = Counter("photo_detector_predictions", "Predictions by label", ["label"],
                                   registry=self.registry)
        self.probability = Histogram("photo_detector_ai_probability",
                                     "Predicted probability of ai_generated (its shifts signal drift)",
                                     buckets=PROBABILITY_BUCKETS, registry=self.registry)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_predictions(self, labels: list[str], probabilities: list[float]) -> None:
        for label, p in zip(labels, probabilities, strict=True):
            self.predictions.labels(label).inc()
            self.probability.observe(p)

    def observe_phases(self, phases: dict[str, float]) -> None:
        """One request's Server-Timing phases; its model phase is also the model-time histogram's sample."""
        for phase, seconds in phases.items():
            self.phases.labels(phase).observe(seconds)
        if "model" in phases:
            self.model_time.observe(phases["model"])

    def render(self) -> bytes:
        return generate_latest(self.registry)
