"""The scaling phase: does the service's CPU per request or per event grow with the history a request
carries, or with the number of configured providers (and so of secrets)?

(a) history: non-streaming requests whose ``messages`` hold 1, 50 or 500 messages, on the main
    service, the lengths alternating;
(b) providers: one extra service instance per provider count (1, 10, 100), all running at once,
    measured in turn (order alternating) over sequential non-streaming requests and 2000-event bursts.

Each sample is a CpuWindow over ``plan.scale_requests`` requests or ``plan.scale_bursts`` bursts;
the report gives the median and spread over ``plan.scale_repeats`` samples."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from clients import LeanClient, completion_request, history
from common import BenchError
from phases import Bench
from procs import CpuWindow
from servers import Servers, stop_all

SCALING_STOP_GRACE = 3.0


def _orders(items: tuple[int, ...], repeats: int) -> list[tuple[int, ...]]:
    """Forward, then backward, then forward...: no configuration always goes first."""
    return [items if r % 2 == 0 else tuple(reversed(items)) for r in range(repeats)]


def cpu_per_request(bench: Bench, servers: Servers, body: bytes, events: int, test: str) -> float:
    """Service CPU per request over ``plan.scale_requests`` sequential non-streaming requests."""

    def one(client: LeanClient) -> int:
        if client.complete(body) != events:
            raise BenchError("incomplete answer")
        return 1

    return _cpu_per_unit(bench, servers, one, bench.plan.scale_requests, test)


def cpu_per_event(bench: Bench, servers: Servers, body: bytes, test: str) -> float:
    """Service CPU per relayed event over ``plan.scale_bursts`` burst streams."""
    events = bench.plan.burst_events

    def one(client: LeanClient) -> int:
        got = client.stream(body)
        if got != events:
            raise BenchError(f"incomplete: {got}/{events} events")
        return got

    return _cpu_per_unit(bench, servers, one, bench.plan.scale_bursts, test)


def _cpu_per_unit(bench: Bench, servers: Servers, one: Callable[[LeanClient], int], times: int, test: str) -> float:
    """Service CPU over ``times`` calls of ``one``, per unit it counted (requests, events)."""
    client = LeanClient(servers.port)
    units = 0
    try:
        window = CpuWindow(servers)
        for _ in range(times):
            try:
                units += one(client)
            except Exception as exc:
                bench.fail(test, exc)
                client.close()
                client = LeanClient(servers.port)
        cpu = window.stop()
    finally:
        client.close()
    return cpu["service"] / units if units else float("nan")


def by_history(bench: Bench) -> None:
    """(a) CPU per request by the number of messages the request holds."""
    plan = bench.plan
    bodies = {n: completion_request(history(n)) for n in plan.histories}
    for body in bodies.values():  # warm: each size's first request is not counted
        cpu_per_request_once(bench, body)
    for order in _orders(plan.histories, plan.scale_repeats):
        for n in order:
            bench.record(
                f"cpu_per_request_hist_{n}", cpu_per_request(bench, bench.servers, bodies[n], 5, "scaling/hist")
            )


def cpu_per_request_once(bench: Bench, body: bytes) -> None:
    client = LeanClient(bench.servers.port)
    try:
        client.complete(body)
    except Exception as exc:
        bench.fail("scaling/warm-up", exc)
    finally:
        client.close()


def by_providers(bench: Bench, tmp: Path) -> None:
    """(b) CPU per request and per event by the number of configured providers."""
    plan = bench.plan
    instances: dict[int, Servers] = {}
    request = completion_request(history(1))
    burst = completion_request(history(1, f"events={plan.burst_events} gap_ms=0"), stream=True)
    try:
        for n in plan.provider_counts:
            folder = tmp / f"providers-{n}"
            folder.mkdir()
            instances[n] = Servers(folder, providers=n)
            t0 = time.monotonic()
            try:
                instances[n].start()
            except Exception as exc:  # measured without it; the failure is reported
                bench.fail(f"scaling/start-{n}-providers", exc)
                instances.pop(n).stop(SCALING_STOP_GRACE)
                continue
            instances[n].refresh_workers()
            bench.once[f"start_providers_{n}"] = time.monotonic() - t0
        for servers in instances.values():  # warm-up, not counted
            client = LeanClient(servers.port)
            try:
                for _ in range(max(5, plan.warmup)):
                    client.complete(request)
                client.stream(burst)
            except Exception as exc:
                bench.fail("scaling/warm-up", exc)
            finally:
                client.close()
            servers.refresh_workers()
        for order in _orders(plan.provider_counts, plan.scale_repeats):
            for n in (n for n in order if n in instances):
                servers = instances[n]
                bench.record(
                    f"cpu_per_request_providers_{n}", cpu_per_request(bench, servers, request, 5, "scaling/providers")
                )
                bench.record(f"cpu_per_event_providers_{n}", cpu_per_event(bench, servers, burst, "scaling/providers"))
    finally:
        # Throw-away instances: a short grace, then SIGKILL (a just-started service can take ~20 s
        # to honour SIGTERM, which would make the smoke run wait for nothing).
        stop_all(list(instances.values()), grace=SCALING_STOP_GRACE)


def scaling(bench: Bench, tmp: Path) -> None:
    by_history(bench)
    by_providers(bench, tmp)
