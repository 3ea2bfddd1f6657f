"""Constants, the run plans and the error types every part of the benchmark shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MODEL = "qwen3.7-plus"
HTTP_TIMEOUT = (10, 30)  # connect, and each gap while reading
READ_CHUNK = 65536
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class Plan:
    rounds: int
    ttft_requests: int  # per arm per round
    latency_events: int
    latency_gap_ms: int
    burst_events: int
    streams: int  # concurrent long streams
    stream_events: int
    stream_gap_ms: int
    conn_burst: int
    rps_threads: int
    rps_seconds: float  # per round and per arm
    reuse_requests: int
    warmup: int
    scale_requests: int  # sequential non-streaming requests per CPU sample in the scaling phase
    scale_bursts: int  # burst streams per CPU sample in the scaling phase
    scale_repeats: int  # samples per configuration, configurations alternating
    histories: tuple[int, ...]  # messages per request
    provider_counts: tuple[int, ...]  # configured providers per service instance


# Long streams: 50 events 40 ms apart (2 s), about the pace of a chat model's tokens.
FULL = Plan(5, 40, 50, 20, 2000, 256, 50, 40, 512, 16, 4.0, 50, 6, 200, 10, 3, (1, 50, 500), (1, 10, 100))
SMOKE = Plan(1, 5, 10, 20, 200, 20, 5, 50, 32, 16, 1.0, 10, 2, 20, 1, 1, (1, 50), (1, 10))


class BenchError(Exception):
    """A request that did not give the complete, well-formed answer."""


class HttpStatus(BenchError):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.status = status
