"""Where one request's time went, sent back as a `Server-Timing` header (W3C Server Timing).

The phases are the ones a latency question is about: `read` (body and multipart), `decode` (bytes to pixels),
`resize` (pixels to the model's crop), `normalise` and `model` (ONNX Runtime). Whatever a client measures
beyond their sum is the request path itself: HTTP, routing, thread hand-offs, the JSON answer. Browsers'
developer tools show the header, and benchmarks/serve.py subtracts it request by request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timing:
    """Seconds per phase for one request; a phase timed several times (a batch) adds up."""

    __slots__ = ("phases",)

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - start

    def seconds(self, name: str) -> float:
        return self.phases.get(name, 0.0)

    def header(self) -> str:
        return ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in self.phases.items())


def parse_server_timing(value: str) -> dict[str, float]:
    """A `Server-Timing` header back into milliseconds per phase (what a client or a benchmark reads)."""
    out: dict[str, float] = {}
    for entry in filter(None, (e.strip() for e in value.split(","))):
        name, *params = (p.strip() for p in entry.split(";"))
        durations = [p.partition("=")[2] for p in params if p.startswith("dur=")]
        out[name] = float(durations[0]) if durations else 0.0
    return out
