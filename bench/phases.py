"""The Bench class: the interleaved phases of one round, on the direct, proxy and floor arms.

Arms: ``direct`` (this client makes the service's two upstream calls), ``proxy`` (the service) and
``floor`` (``floor_relay.py``, the minimal relay on the same stack). Every phase records into
``values`` (one value per round and key); ``once`` holds figures measured once."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter, defaultdict
from itertools import permutations

import requests
from clients import (
    LeanClient,
    Stream,
    direct_stream,
    gaps,
    make_session,
    pct,
    proxy_complete,
    proxy_stream,
)
from common import MODEL, BenchError, HttpStatus, Plan
from procs import CpuWindow, pss_bytes, rss_bytes
from servers import Servers


def run_threads(threads: list[threading.Thread], timeout: float, started: bool = False) -> None:
    if not started:
        for t in threads:
            t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))


def prefix(arm: str) -> str:
    """Key prefix of a server arm's figures: the service's keep their old names, the floor's say so."""
    return "" if arm == "proxy" else f"{arm}_"


class Bench:
    def __init__(self, servers: Servers, plan: Plan) -> None:
        self.servers = servers
        self.plan = plan
        self.base = servers.base
        self.upstream = servers.upstream_base
        self.arms = ("direct", "proxy", "floor") if servers.floor is not None else ("direct", "proxy")
        self.sessions = {arm: make_session() for arm in self.arms}
        self.stats_session = make_session()
        self.values: dict[str, list[float]] = defaultdict(list)
        self.once: dict[str, float] = {}
        self.failures: Counter[str] = Counter()
        self.failure_samples: list[str] = []
        self.lock = threading.Lock()

    # bookkeeping

    def record(self, key: str, value: float) -> None:
        self.values[key].append(value)

    def fail(self, test: str, exc: BaseException) -> None:
        with self.lock:
            self.failures[test] += 1
            if len(self.failure_samples) < 12:
                self.failure_samples.append(f"{test}: {type(exc).__name__}: {exc}"[:300])

    def order(self, index: int) -> tuple[str, ...]:
        """The arms in a different order each round (every permutation in turn)."""
        orders = list(permutations(self.arms))
        return orders[index % len(orders)]

    def base_of(self, arm: str) -> str:
        return self.servers.floor_base if arm == "floor" else self.base

    def port_of(self, arm: str) -> int:
        return self.servers.floor_port if arm == "floor" else self.servers.port

    def arm(self, arm: str, prompt: str, events: int, test: str, limit: float = 60.0) -> Stream | None:
        """One stream on one arm, checked complete; None (and a recorded failure) otherwise."""
        try:
            if arm == "direct":
                result = direct_stream(self.sessions[arm], self.upstream, prompt, limit)
            else:
                result = proxy_stream(self.sessions[arm], self.base_of(arm), prompt, limit)
            if not result.done or len(result.sent) != events:
                raise BenchError(f"incomplete: {len(result.sent)}/{events} events, done={result.done}")
            return result
        except Exception as exc:
            self.fail(f"{test}/{arm}", exc)
            return None

    def upstream_connections(self) -> int:
        return self.stats_session.get(f"{self.upstream}/stats", timeout=30).json()["connections"]

    # phases

    def warm_up(self) -> None:
        self.upstream_connections()  # opens the stats connection now, so it is not counted later
        for _ in range(self.plan.warmup):
            for arm in self.arms:
                self.arm(arm, "events=5 gap_ms=0", 5, "warm-up")

        def worker(arm: str) -> None:
            with make_session() as s:
                for _ in range(self.plan.warmup):
                    try:
                        proxy_stream(s, self.base_of(arm), "events=5 gap_ms=0", 30)
                        proxy_complete(s, self.base_of(arm), "events=5 gap_ms=0")
                    except Exception as exc:
                        self.fail(f"warm-up/{arm}", exc)

        servers = [arm for arm in self.arms if arm != "direct"]
        run_threads([threading.Thread(target=worker, args=(a,), daemon=True) for a in servers for _ in range(8)], 60)
        time.sleep(0.3)
        workers = self.servers.refresh_workers()
        self.once["workers"] = len(workers)
        self.once["rss_base"] = rss_bytes(self.servers.pids())
        self.once["pss_base"] = pss_bytes(self.servers.pids())
        self.once["rss_master"] = rss_bytes([self.servers.service.pid])
        self.once["rss_worker_max"] = max((rss_bytes([pid]) for pid in workers), default=math.nan)
        if "floor" in self.arms:
            self.once["rss_floor_base"] = rss_bytes(self.servers.pids("floor"))

    def round(self, index: int) -> None:
        order = self.order(index)
        self.servers.refresh_workers()
        self.ttft(order)
        self.event_latency(order)
        self.burst(order)
        self.reuse()
        for arm in order:
            if arm != "direct":
                self.throughput(arm)
        self.concurrent_streams()
        self.connection_burst()

    def ttft(self, order: tuple[str, ...]) -> None:
        """1. Time to the first content event, every arm, requests alternating."""
        ttft: dict[str, list[float]] = {arm: [] for arm in order}
        for _ in range(self.plan.ttft_requests):
            for arm in order:
                result = self.arm(arm, "events=5 gap_ms=0", 5, "ttft")
                if result:
                    ttft[arm].append(result.first - result.t0)
        for arm in order:
            self.record(f"ttft_{arm}_p50", pct(ttft[arm], 50))
            self.record(f"ttft_{arm}_p95", pct(ttft[arm], 95))
        for arm in order:
            if arm != "direct":
                for q in (50, 95):
                    added = pct(ttft[arm], q) - pct(ttft["direct"], q)
                    self.record(f"ttft_{prefix(arm)}added_p{q}", added)

    def event_latency(self, order: tuple[str, ...]) -> None:
        """2. Per-event latency (arrival - upstream send) on a paced stream, its gaps and bunching."""
        plan = self.plan
        prompt = f"events={plan.latency_events} gap_ms={plan.latency_gap_ms}"
        p50 = {}
        for arm in order:
            result = self.arm(arm, prompt, plan.latency_events, "event-latency")
            if result is None:
                p50[arm] = math.nan
                continue
            p50[arm] = pct([a - s for a, s in zip(result.arrived, result.sent, strict=True)], 50)
            self.record(f"event_{arm}_p50", p50[arm])
            self.record(f"event_{arm}_gap_max", max(gaps(result.arrived), default=math.nan))
            self.record(f"event_{arm}_bunched", result.bunched)
        for arm in order:
            if arm != "direct":
                self.record(f"event_{prefix(arm)}added_p50", p50[arm] - p50["direct"])

    def burst(self, order: tuple[str, ...]) -> None:
        """3. and 7. A fast stream: wall time of every arm, server CPU per relayed event."""
        events = self.plan.burst_events
        prompt = f"events={events} gap_ms=0"
        walls = {}
        for arm in order:
            window = CpuWindow(self.servers, arm)
            result = self.arm(arm, prompt, events, "burst")
            cpu = window.stop()
            walls[arm] = result.wall if result else math.nan
            self.record(f"burst_{arm}_wall", walls[arm])
            self.record(f"burst_{arm}_client_cpu", cpu["client"] / cpu["wall"])
            if arm != "direct" and result:
                self.record(f"cpu_per_event_burst{'' if arm == 'proxy' else '_' + arm}", cpu["service"] / events)
                for part in ("service", "upstream", "other"):
                    self.record(f"burst_{arm}_{part}_cpu", cpu[part] / cpu["wall"])
        for arm in order:
            if arm != "direct":
                self.record(f"burst_{prefix(arm)}ratio", walls[arm] / walls["direct"])

    def reuse(self) -> None:
        """9. New upstream TCP connections over sequential non-streaming requests."""
        before = self.upstream_connections()
        for _ in range(self.plan.reuse_requests):
            try:
                if proxy_complete(self.sessions["proxy"], self.base, "events=1") != 1:
                    raise BenchError("incomplete answer")
            except Exception as exc:
                self.fail("reuse/proxy", exc)
        self.record("reuse_new_connections", self.upstream_connections() - before)

    def throughput(self, arm: str = "proxy") -> None:
        """6. Non-streaming requests per second over keep-alive connections, on the service or the floor."""
        plan = self.plan
        port = self.port_of(arm)
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "events=5 gap_ms=0"}]}).encode()
        barrier = threading.Barrier(plan.rps_threads + 1, timeout=30)
        done = [0] * plan.rps_threads
        ends = [0.0] * plan.rps_threads
        start = [0.0]

        def worker(i: int) -> None:
            client = LeanClient(port)
            try:
                barrier.wait()
                stop = start[0] + plan.rps_seconds
                while time.monotonic() < stop:
                    try:
                        if client.complete(body) != 5:
                            raise BenchError("incomplete answer")
                        done[i] += 1
                    except Exception as exc:
                        self.fail(f"throughput/{arm}", exc)
                        client.close()
                        client = LeanClient(port)
            except threading.BrokenBarrierError as exc:
                self.fail(f"throughput/{arm}", exc)
            finally:
                ends[i] = time.monotonic()
                client.close()

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(plan.rps_threads)]
        for t in threads:
            t.start()
        window = CpuWindow(self.servers, arm)
        start[0] = time.monotonic()
        barrier.wait()
        run_threads(threads, plan.rps_seconds + 60, started=True)
        elapsed = max(ends) - start[0]
        cpu = window.stop()
        total = sum(done) / elapsed
        workers = self.servers.floor_workers if arm == "floor" else self.servers.workers
        key = f"rps_{prefix(arm)}"
        self.record(f"{key}total", total)
        self.record(f"{key}per_worker", total / max(1, len(workers)))
        self.record(f"{key}cpu_per_request", cpu["service"] / max(1, sum(done)))
        self.record(f"{key}per_cpu_second", sum(done) / cpu["service"] if cpu["service"] else math.nan)
        for part in ("service", "upstream", "client", "other"):
            self.record(f"{key}{part}_cpu", cpu[part] / cpu["wall"])

    def concurrent_streams(self) -> None:
        """4., 7. and 8. Many long streams at once through the service, each on its own connection."""
        plan = self.plan
        prompt = f"events={plan.stream_events} gap_ms={plan.stream_gap_ms}"
        limit = plan.stream_events * plan.stream_gap_ms / 1000 * 10 + 30
        single = self.arm("proxy", prompt, plan.stream_events, "concurrent/single", limit)
        self.record("single_stream_wall", single.wall if single else math.nan)

        n = plan.streams
        barrier = threading.Barrier(n + 1, timeout=30)
        counts = {"open": 0, "finished": 0}
        results: list[Stream | None] = [None] * n

        def opened() -> None:
            with self.lock:
                counts["open"] += 1

        def worker(i: int) -> None:
            try:
                with make_session() as s:
                    barrier.wait()
                    results[i] = proxy_stream(s, self.base, prompt, limit, on_first=opened)
            except Exception as exc:
                self.fail("concurrent", exc)
            finally:
                with self.lock:
                    counts["finished"] += 1

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        pids = self.servers.pids()
        time.sleep(0.2)
        rss_before = rss_bytes(pids)
        window = CpuWindow(self.servers)
        start = time.monotonic()
        try:
            barrier.wait()
        except threading.BrokenBarrierError as exc:
            self.fail("concurrent", exc)
        peak_open, rss_at_peak = 0, rss_before
        deadline = start + limit + 10
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            with self.lock:
                now_open = counts["open"] - counts["finished"]
            if now_open > 0 and now_open >= peak_open:
                rss = rss_bytes(pids)
                rss_at_peak = rss if now_open > peak_open else max(rss_at_peak, rss)
                peak_open = now_open
            time.sleep(0.05)
        cpu = window.stop()
        complete = [r for r in results if r and r.done and len(r.sent) == plan.stream_events]
        events = sum(len(r.sent) for r in results if r)
        wall = max((r.end for r in results if r), default=math.nan) - start
        self.record("concurrent_complete_pct", 100 * len(complete) / n)
        self.record("concurrent_errors", n - len([r for r in results if r]))
        self.record("concurrent_wall", wall)
        self.record("concurrent_ratio", wall / self.values["single_stream_wall"][-1])
        self.record("concurrent_peak_open", peak_open)
        self.record("concurrent_ttft_p95", pct([r.first - r.t0 for r in results if r and r.first], 95))
        self.record("rss_during_streams", rss_at_peak)
        self.record("rss_per_stream", (rss_at_peak - self.once["rss_base"]) / max(1, peak_open))
        self.record("rss_per_stream_round", (rss_at_peak - rss_before) / max(1, peak_open))
        if events:
            self.record("cpu_per_event_concurrent", cpu["service"] / events)
        for part in ("service", "upstream", "client", "other"):
            self.record(f"concurrent_{part}_cpu", cpu[part] / cpu["wall"])

    def connection_burst(self) -> None:
        """5. Many new connections at once, one short non-streaming request each."""
        n = self.plan.conn_burst
        barrier = threading.Barrier(n + 1, timeout=30)
        outcomes: Counter[str] = Counter()
        latencies: list[float] = []

        def worker() -> None:
            outcome = "ok"
            try:
                with make_session() as s:
                    barrier.wait()
                    t0 = time.monotonic()
                    try:
                        if proxy_complete(s, self.base, "events=1") != 1:
                            raise BenchError("incomplete answer")
                        latencies.append(time.monotonic() - t0)
                    except HttpStatus as exc:
                        outcome = "5xx" if exc.status >= 500 else "other_status"
                        self.fail("conn-burst", exc)
                    except requests.ConnectionError as exc:
                        outcome = "reset" if "reset" in str(exc).lower() else "conn_error"
                        self.fail("conn-burst", exc)
                    except Exception as exc:
                        outcome = "timeout" if isinstance(exc, requests.Timeout) else "other_error"
                        self.fail("conn-burst", exc)
            except threading.BrokenBarrierError as exc:
                outcome = "other_error"
                self.fail("conn-burst", exc)
            with self.lock:
                outcomes[outcome] += 1

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(n)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        start = time.monotonic()
        try:
            barrier.wait()
        except threading.BrokenBarrierError as exc:
            self.fail("conn-burst", exc)
        run_threads(threads, 120, started=True)
        self.record("burst_conn_ok", outcomes["ok"])
        self.record("burst_conn_errors", outcomes["reset"] + outcomes["conn_error"])
        self.record("burst_conn_5xx", outcomes["5xx"])
        self.record("burst_conn_other", outcomes["other_status"] + outcomes["timeout"] + outcomes["other_error"])
        self.record("burst_conn_wall", time.monotonic() - start)
        self.record("burst_conn_latency_p95", pct(latencies, 95))

    def finish(self) -> None:
        self.once["rss_end"] = rss_bytes(self.servers.pids())
        self.once["upstream_connections_total"] = self.upstream_connections()

    def close(self) -> None:
        """Idle keep-alive connections would hold up the service's graceful shutdown."""
        for session in (*self.sessions.values(), self.stats_session):
            session.close()
