"""Benchmark of the reverse API against a direct client of the same fake Qwen upstream.

Starts ``bench/fake_upstream.py`` and the real service (``python app.py``: gunicorn with gevent
workers), then runs two arms interleaved over several rounds:

- direct: this client makes the two upstream calls the service makes (``chats/new``, then the
  ``chat/completions`` SSE stream);
- proxy: ``POST /v1/chat/completions`` on the service, streaming or not.

Each metric is printed as its median across rounds with the spread (min .. max), then one
PASS/FAIL line per target and an overall line. Everything runs on 127.0.0.1; the machine is shared
by client, upstream and service, so targets compare numbers measured in the same run.

    python bench/run.py             full run (~2 min); FAIL lines are informative, exit 0
    python bench/run.py --strict    exit 1 when a target is missed
    python bench/run.py --smoke     a few seconds, tiny counts, no thresholds (CI): exit 1 on a failed request
    python bench/run.py --compare REF   this tree against the commit REF, both served at once, alternating

Only the standard library and requests; process figures come from /proc.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
MODEL = "qwen3.7-plus"
HTTP_TIMEOUT = (10, 30)  # connect, and each gap while reading
READ_CHUNK = 65536
CLK_TCK = os.sysconf("SC_CLK_TCK")
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
    rps_seconds: float  # per round
    reuse_requests: int
    warmup: int


# Long streams: 50 events 40 ms apart (2 s), about the pace of a chat model's tokens.
FULL = Plan(5, 40, 50, 20, 2000, 256, 50, 40, 512, 16, 4.0, 50, 6)
SMOKE = Plan(1, 5, 10, 20, 200, 20, 5, 50, 32, 16, 1.0, 10, 2)


class BenchError(Exception):
    """A request that did not give the complete, well-formed answer."""


class HttpStatus(BenchError):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.status = status


# --- /proc ----------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if int(_stat_fields(int(name))[1]) == pid:
                    found.append(int(name))
            except (OSError, ValueError, IndexError):
                continue
    return sorted(found)


def group_members(pgid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if int(_stat_fields(int(name))[2]) == pgid:
                    found.append(int(name))
            except (OSError, ValueError, IndexError):
                continue
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def pss_bytes(pids: list[int]) -> int:
    """Proportional set size: shared pages split between the processes sharing them."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def client_cpu() -> float:
    t = os.times()
    return t.user + t.system


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


class CpuWindow:
    """CPU used by service, upstream, this client and everything else over a stretch of time."""

    def __init__(self, servers: Servers) -> None:
        self.pids = servers.pids()
        self.upstream = [servers.upstream.pid]
        self.start = self._snap()

    def _snap(self) -> tuple[float, float, float, float, float]:
        return time.monotonic(), cpu_seconds(self.pids), cpu_seconds(self.upstream), client_cpu(), machine_busy()

    def stop(self) -> dict[str, float]:
        end = self._snap()
        wall, service, upstream, client, busy = (b - a for a, b in zip(self.start, end, strict=True))
        return {
            "wall": wall,
            "service": service,
            "upstream": upstream,
            "client": client,
            "other": max(0.0, busy - service - upstream - client),
        }


# --- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Servers:
    """The fake upstream and the service, each in its own process group; ``stop`` ends both."""

    def __init__(self, tmp: Path, service_root: Path = ROOT) -> None:
        self.tmp = tmp
        self.service_root = service_root  # the checkout whose app.py is served
        self.upstream: subprocess.Popen | None = None
        self.service: subprocess.Popen | None = None
        self.upstream_port = 0
        self.port = 0
        self.workers: list[int] = []
        self.logs: list = []

    def start(self) -> None:
        self._start_upstream()
        self._start_service()

    def _start_upstream(self) -> None:
        log = open(self.tmp / "upstream.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.logs.append(log)
        self.upstream = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "fake_upstream.py"), "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
        ready, _, _ = select.select([self.upstream.stdout], [], [], START_TIMEOUT)
        line = self.upstream.stdout.readline() if ready else b""
        if not line.startswith(b"ready "):
            raise RuntimeError(f"fake upstream did not start: {line!r}\n{self.log_tail('upstream.log')}")
        self.upstream_port = int(line.split()[1])

    def _start_service(self) -> None:
        providers = self.tmp / "providers"
        shutil.copytree(self.service_root / "porviders" / "qwen", providers / "qwen")
        meta_path = providers / "qwen" / "metadata.json"
        metadata = json.loads(meta_path.read_text())
        metadata.update(host=f"{HOST}:{self.upstream_port}", scheme="http")
        meta_path.write_text(json.dumps(metadata, indent=2))
        self.port = free_port()
        env = dict(
            os.environ,
            HOST=HOST,
            PORT=str(self.port),
            PROVIDERS_DIR=str(providers),
            QWEN_TOKEN="bench",
            # The default store (SQLite), in the run's own folder rather than beside app.py.
            STATE_URL=f"sqlite:///{self.tmp / 'state.sqlite3'}",
            LOG_LEVEL="WARNING",
            API_KEYS="",  # a developer's .env must not lock the benchmark out (the environment wins)
        )
        log = open(self.tmp / "service.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.logs.append(log)
        self.service = subprocess.Popen(
            [sys.executable, "app.py"],
            cwd=self.service_root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        with make_session() as s:
            while True:
                if self.service.poll() is not None:
                    raise RuntimeError(f"service exited with {self.service.returncode}\n{self.log_tail('service.log')}")
                try:
                    if s.get(f"{self.base}/health", timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"service did not answer /health\n{self.log_tail('service.log')}")
                time.sleep(0.1)

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def upstream_base(self) -> str:
        return f"http://{HOST}:{self.upstream_port}"

    def refresh_workers(self) -> list[int]:
        self.workers = children(self.service.pid)
        return self.workers

    def pids(self) -> list[int]:
        """The gunicorn master (``python app.py`` execs it, so it keeps the pid) and its workers."""
        return [self.service.pid, *self.workers]

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = (self.tmp / name).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"    | {line}" for line in text[-lines:])

    def stop(self) -> None:
        for proc in (self.service, self.upstream):
            if proc is None:
                continue
            _signal_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_TIMEOUT)
            # Workers left behind (or a stuck master): the group is ours, end it for good.
            if group_members(proc.pid):
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT)
            if proc.stdout:
                proc.stdout.close()
        for log in self.logs:
            log.close()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


# --- clients --------------------------------------------------------------------------------


def make_session(pool: int = 1) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxy variables for 127.0.0.1, and no per-request environment look-ups
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool, max_retries=0)
    session.mount("http://", adapter)
    return session


class Stream:
    """One streamed reply: start, first content event, end, and each event's arrival and send time."""

    __slots__ = ("t0", "first", "end", "arrived", "sent", "done")

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.first: float | None = None
        self.end = 0.0
        self.arrived: list[float] = []
        self.sent: list[float] = []
        self.done = False

    def add(self, now: float, content: str | None) -> None:
        if not content:
            return
        if self.first is None:
            self.first = now
        for piece in content.split(";"):  # one piece per upstream frame, even if frames were merged
            if piece:
                self.arrived.append(now)
                self.sent.append(float(piece))

    @property
    def wall(self) -> float:
        return self.end - self.t0


def data_lines(response: requests.Response, deadline: float) -> Iterator[tuple[float, bytes]]:
    """(arrival time, payload) of each ``data:`` line; arrival is when its bytes were read."""
    raw = response.raw
    rest = b""
    while True:
        chunk = raw.read1(READ_CHUNK)
        if not chunk:
            return
        now = time.monotonic()
        if now > deadline:
            raise BenchError("stream ran past its deadline")
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if line.startswith(b"data:"):
                yield now, line[5:].strip()


def direct_stream(session: requests.Session, upstream: str, prompt: str, limit: float) -> Stream:
    """The two upstream calls the service makes, made by this client."""
    result = Stream()
    deadline = result.t0 + limit
    headers = {"Authorization": "Bearer bench", "Accept": "application/json"}
    new_chat = {"chatId": "", "models": [MODEL], "chat_type": "t2t", "timestamp": int(time.time() * 1000)}
    answer = session.post(f"{upstream}/api/v2/chats/new", json=new_chat, headers=headers, timeout=HTTP_TIMEOUT)
    if answer.status_code != 200:
        raise HttpStatus(answer.status_code, answer.text)
    chat_id = answer.json()["data"]["id"]
    body = {
        "stream": True,
        "incremental_output": True,
        "chat_id": chat_id,
        "chat_mode": "normal",
        "model": MODEL,
        "parent_id": None,
        "messages": [
            {
                "role": "user",
                "content": prompt,
                "user_action": "chat",
                "files": [],
                "models": [MODEL],
                "chat_type": "t2t",
                "feature_config": {"thinking_enabled": False, "output_schema": "phase"},
            }
        ],
        "timestamp": int(time.time()),
    }
    url = f"{upstream}/api/v2/chat/completions?chat_id={chat_id}"
    with session.post(url, json=body, headers=headers, stream=True, timeout=HTTP_TIMEOUT) as response:
        if response.status_code != 200:
            raise HttpStatus(response.status_code, response.text)
        for now, data in data_lines(response, deadline):
            choices = json.loads(data).get("choices")
            if choices:
                delta = choices[0].get("delta") or {}
                result.add(now, delta.get("content"))
                if delta.get("status") == "finished":
                    result.done = True
    result.end = time.monotonic()
    return result


def proxy_stream(
    session: requests.Session, base: str, prompt: str, limit: float, on_first: Callable[[], None] | None = None
) -> Stream:
    result = Stream()
    deadline = result.t0 + limit
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    with session.post(f"{base}/v1/chat/completions", json=body, stream=True, timeout=HTTP_TIMEOUT) as response:
        if response.status_code != 200:
            raise HttpStatus(response.status_code, response.text)
        for now, data in data_lines(response, deadline):
            if data == b"[DONE]":
                result.done = True
                continue  # read on to the end of the body so the connection stays reusable
            obj = json.loads(data)
            if "error" in obj:
                raise BenchError(f"error event: {obj['error'].get('message')}")
            choices = obj.get("choices")
            if choices:
                content = choices[0]["delta"].get("content")
                if content and result.first is None and on_first:
                    on_first()
                result.add(now, content)
    result.end = time.monotonic()
    return result


def proxy_complete(session: requests.Session, base: str, prompt: str) -> int:
    """A non-streaming request; returns how many upstream frames the answer holds."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}]}
    response = session.post(f"{base}/v1/chat/completions", json=body, timeout=HTTP_TIMEOUT)
    if response.status_code != 200:
        raise HttpStatus(response.status_code, response.text)
    return response.json()["choices"][0]["message"]["content"].count(";")


class LeanClient:
    """A keep-alive http.client connection for the throughput test, where requests' own cost
    would make the client the bottleneck on a 2-core machine."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=HTTP_TIMEOUT[1])

    def complete(self, body: bytes) -> int:
        self.conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise HttpStatus(response.status, data.decode(errors="replace"))
        return json.loads(data)["choices"][0]["message"]["content"].count(";")

    def close(self) -> None:
        self.conn.close()


# --- statistics -----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Percentile with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


# --- the benchmark --------------------------------------------------------------------------


class Bench:
    def __init__(self, servers: Servers, plan: Plan) -> None:
        self.servers = servers
        self.plan = plan
        self.base = servers.base
        self.upstream = servers.upstream_base
        self.direct_session = make_session()
        self.proxy_session = make_session()
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

    def arm(self, arm: str, prompt: str, events: int, test: str, limit: float = 60.0) -> Stream | None:
        """One stream on one arm, checked complete; None (and a recorded failure) otherwise."""
        try:
            if arm == "direct":
                result = direct_stream(self.direct_session, self.upstream, prompt, limit)
            else:
                result = proxy_stream(self.proxy_session, self.base, prompt, limit)
            if not result.done or len(result.sent) != events:
                raise BenchError(f"incomplete: {len(result.sent)}/{events} events, done={result.done}")
            return result
        except Exception as exc:
            self.fail(f"{test}/{arm}", exc)
            return None

    def upstream_connections(self) -> int:
        return self.stats_session.get(f"{self.upstream}/stats", timeout=HTTP_TIMEOUT).json()["connections"]

    # phases

    def warm_up(self) -> None:
        self.upstream_connections()  # opens the stats connection now, so it is not counted later
        for _ in range(self.plan.warmup):
            self.arm("direct", "events=5 gap_ms=0", 5, "warm-up")
            self.arm("proxy", "events=5 gap_ms=0", 5, "warm-up")

        def worker() -> None:
            with make_session() as s:
                for _ in range(self.plan.warmup):
                    try:
                        proxy_stream(s, self.base, "events=5 gap_ms=0", 30)
                        proxy_complete(s, self.base, "events=5 gap_ms=0")
                    except Exception as exc:
                        self.fail("warm-up/proxy", exc)

        run_threads([threading.Thread(target=worker, daemon=True) for _ in range(8)], 60)
        time.sleep(0.3)
        workers = self.servers.refresh_workers()
        self.once["workers"] = len(workers)
        self.once["rss_base"] = rss_bytes(self.servers.pids())
        self.once["pss_base"] = pss_bytes(self.servers.pids())
        self.once["rss_master"] = rss_bytes([self.servers.service.pid])
        self.once["rss_worker_max"] = max((rss_bytes([pid]) for pid in workers), default=math.nan)

    def round(self, index: int) -> None:
        order = ("direct", "proxy") if index % 2 == 0 else ("proxy", "direct")
        self.servers.refresh_workers()
        self.ttft(order)
        self.event_latency(order)
        self.burst(order)
        self.reuse()
        self.throughput()
        self.concurrent_streams()
        self.connection_burst()

    def ttft(self, order: tuple[str, str]) -> None:
        """1. Time to the first content event, both arms, requests alternating."""
        ttft: dict[str, list[float]] = {"direct": [], "proxy": []}
        for _ in range(self.plan.ttft_requests):
            for arm in order:
                result = self.arm(arm, "events=5 gap_ms=0", 5, "ttft")
                if result:
                    ttft[arm].append(result.first - result.t0)
        for arm in order:
            self.record(f"ttft_{arm}_p50", pct(ttft[arm], 50))
            self.record(f"ttft_{arm}_p95", pct(ttft[arm], 95))
        self.record("ttft_added_p50", pct(ttft["proxy"], 50) - pct(ttft["direct"], 50))
        self.record("ttft_added_p95", pct(ttft["proxy"], 95) - pct(ttft["direct"], 95))

    def event_latency(self, order: tuple[str, str]) -> None:
        """2. Per-event latency (arrival - upstream send) on a paced stream."""
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
        self.record("event_added_p50", p50["proxy"] - p50["direct"])

    def burst(self, order: tuple[str, str]) -> None:
        """3. and 7. A fast stream: wall time of both arms, server CPU per relayed event."""
        events = self.plan.burst_events
        prompt = f"events={events} gap_ms=0"
        walls = {}
        for arm in order:
            window = CpuWindow(self.servers)
            result = self.arm(arm, prompt, events, "burst")
            cpu = window.stop()
            walls[arm] = result.wall if result else math.nan
            self.record(f"burst_{arm}_wall", walls[arm])
            self.record(f"burst_{arm}_client_cpu", cpu["client"] / cpu["wall"])
            if arm == "proxy" and result:
                self.record("cpu_per_event_burst", cpu["service"] / events)
                for part in ("service", "upstream", "other"):
                    self.record(f"burst_proxy_{part}_cpu", cpu[part] / cpu["wall"])
        self.record("burst_ratio", walls["proxy"] / walls["direct"])

    def reuse(self) -> None:
        """9. New upstream TCP connections over sequential non-streaming requests."""
        before = self.upstream_connections()
        for _ in range(self.plan.reuse_requests):
            try:
                if proxy_complete(self.proxy_session, self.base, "events=1") != 1:
                    raise BenchError("incomplete answer")
            except Exception as exc:
                self.fail("reuse/proxy", exc)
        self.record("reuse_new_connections", self.upstream_connections() - before)

    def throughput(self) -> None:
        """6. Non-streaming requests per second over keep-alive connections."""
        plan = self.plan
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "events=5 gap_ms=0"}]}).encode()
        barrier = threading.Barrier(plan.rps_threads + 1, timeout=30)
        done = [0] * plan.rps_threads
        ends = [0.0] * plan.rps_threads
        start = [0.0]

        def worker(i: int) -> None:
            client = LeanClient(self.servers.port)
            try:
                barrier.wait()
                stop = start[0] + plan.rps_seconds
                while time.monotonic() < stop:
                    try:
                        if client.complete(body) != 5:
                            raise BenchError("incomplete answer")
                        done[i] += 1
                    except Exception as exc:
                        self.fail("throughput", exc)
                        client.close()
                        client = LeanClient(self.servers.port)
            except threading.BrokenBarrierError as exc:
                self.fail("throughput", exc)
            finally:
                ends[i] = time.monotonic()
                client.close()

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(plan.rps_threads)]
        for t in threads:
            t.start()
        window = CpuWindow(self.servers)
        start[0] = time.monotonic()
        barrier.wait()
        run_threads(threads, plan.rps_seconds + 60, started=True)
        elapsed = max(ends) - start[0]
        cpu = window.stop()
        total = sum(done) / elapsed
        self.record("rps_total", total)
        self.record("rps_per_worker", total / max(1, len(self.servers.workers)))
        self.record("rps_cpu_per_request", cpu["service"] / max(1, sum(done)))
        self.record("rps_per_cpu_second", sum(done) / cpu["service"] if cpu["service"] else math.nan)
        for part in ("service", "upstream", "client", "other"):
            self.record(f"rps_{part}_cpu", cpu[part] / cpu["wall"])

    def concurrent_streams(self) -> None:
        """4., 7. and 8. Many long streams at once, each on its own connection."""
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
        for session in (self.direct_session, self.proxy_session, self.stats_session):
            session.close()


def run_threads(threads: list[threading.Thread], timeout: float, started: bool = False) -> None:
    if not started:
        for t in threads:
            t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))


def litellm_arm(python: str | None, base: str, requests_n: int, own_p50: float) -> str:
    """Optional: time to first token through the service with LiteLLM as the client."""
    if not python:
        return "LiteLLM arm: skipped (no --litellm-python given)"
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")  # no network look-up at import
    try:
        probe = subprocess.run([python, "-c", "import litellm"], capture_output=True, timeout=120, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"LiteLLM arm: skipped ({python}: {exc})"
    if probe.returncode != 0:
        return f"LiteLLM arm: skipped (import litellm failed in {python})"
    script = f"""
import json, statistics, time, litellm
ttft = []
for _ in range({requests_n}):
    t0 = time.monotonic()
    first = None
    for chunk in litellm.completion(model="openai/{MODEL}", api_base="{base}/v1", api_key="x", stream=True,
                                    messages=[{{"role": "user", "content": "events=5 gap_ms=0"}}]):
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.monotonic() - t0
    ttft.append(first)
print(json.dumps({{"p50": statistics.median(ttft)}}))
"""
    try:
        out = subprocess.run([python, "-c", script], capture_output=True, timeout=180, text=True, env=env)
        if out.returncode != 0:
            return f"LiteLLM arm: failed ({(out.stderr.strip().splitlines() or ['no output'])[-1][:200]})"
        p50 = json.loads(out.stdout.strip().splitlines()[-1])["p50"]
    except Exception as exc:
        return f"LiteLLM arm: failed ({type(exc).__name__}: {exc})"
    return (
        f"LiteLLM arm: TTFT p50 through the service with litellm.completion as the client: {p50 * 1e3:.2f} ms "
        f"(this script's proxy client: {own_p50 * 1e3:.2f} ms)"
    )


# --- report ---------------------------------------------------------------------------------

# key, label, unit, scale
METRICS = [
    ("ttft_direct_p50", "1 TTFT direct p50", "ms", 1e3),
    ("ttft_proxy_p50", "1 TTFT proxy p50", "ms", 1e3),
    ("ttft_direct_p95", "1 TTFT direct p95", "ms", 1e3),
    ("ttft_proxy_p95", "1 TTFT proxy p95", "ms", 1e3),
    ("ttft_added_p50", "1 TTFT added by proxy, p50", "ms", 1e3),
    ("ttft_added_p95", "1 TTFT added by proxy, p95", "ms", 1e3),
    ("event_direct_p50", "2 event latency direct p50", "ms", 1e3),
    ("event_proxy_p50", "2 event latency proxy p50", "ms", 1e3),
    ("event_added_p50", "2 event latency added by proxy, p50", "ms", 1e3),
    ("event_direct_gap_max", "2 largest inter-arrival gap, direct", "ms", 1e3),
    ("event_proxy_gap_max", "2 largest inter-arrival gap, proxy", "ms", 1e3),
    ("burst_direct_wall", "3 burst stream wall, direct", "ms", 1e3),
    ("burst_proxy_wall", "3 burst stream wall, proxy", "ms", 1e3),
    ("burst_ratio", "3 burst wall proxy/direct", "x", 1),
    ("burst_direct_client_cpu", "3 client CPU during direct burst", "%", 100),
    ("burst_proxy_client_cpu", "3 client CPU during proxy burst", "%", 100),
    ("burst_proxy_service_cpu", "3 service CPU during proxy burst", "%", 100),
    ("burst_proxy_upstream_cpu", "3 upstream CPU during proxy burst", "%", 100),
    ("burst_proxy_other_cpu", "3 rest-of-machine CPU, proxy burst", "%", 100),
    ("single_stream_wall", "4 one long stream alone, wall", "ms", 1e3),
    ("concurrent_wall", "4 concurrent streams, wall", "ms", 1e3),
    ("concurrent_ratio", "4 concurrent wall / single wall", "x", 1),
    ("concurrent_complete_pct", "4 concurrent streams complete", "%", 1),
    ("concurrent_errors", "4 concurrent streams failed", "", 1),
    ("concurrent_peak_open", "4 streams open at once (peak)", "", 1),
    ("concurrent_ttft_p95", "4 TTFT p95 under concurrency", "ms", 1e3),
    ("concurrent_service_cpu", "4 service CPU during concurrent streams", "%", 100),
    ("concurrent_upstream_cpu", "4 upstream CPU during concurrent streams", "%", 100),
    ("concurrent_client_cpu", "4 client CPU during concurrent streams", "%", 100),
    ("concurrent_other_cpu", "4 rest-of-machine CPU, concurrent streams", "%", 100),
    ("burst_conn_ok", "5 connection burst: ok", "", 1),
    ("burst_conn_errors", "5 connection burst: resets/conn errors", "", 1),
    ("burst_conn_5xx", "5 connection burst: 5xx", "", 1),
    ("burst_conn_other", "5 connection burst: other failures", "", 1),
    ("burst_conn_latency_p95", "5 connection burst: latency p95", "ms", 1e3),
    ("burst_conn_wall", "5 connection burst: wall", "ms", 1e3),
    ("rps_total", "6 non-streaming req/s, total", "/s", 1),
    ("rps_per_worker", "6 non-streaming req/s per worker", "/s", 1),
    ("rps_cpu_per_request", "6 service CPU per request", "ms", 1e3),
    ("rps_per_cpu_second", "6 req per service CPU-second (1 busy worker)", "/s", 1),
    ("rps_service_cpu", "6 service CPU during test", "%", 100),
    ("rps_upstream_cpu", "6 upstream CPU during test", "%", 100),
    ("rps_client_cpu", "6 client CPU during test", "%", 100),
    ("rps_other_cpu", "6 rest-of-machine CPU during test", "%", 100),
    ("cpu_per_event_burst", "7 service CPU per event, burst", "us", 1e6),
    ("cpu_per_event_concurrent", "7 service CPU per event, concurrent", "us", 1e6),
    ("rss_during_streams", "8 RSS during concurrent streams", "MB", 1e-6),
    ("rss_per_stream", "8 RSS per open stream (vs. base after warm-up)", "KB", 1e-3),
    ("rss_per_stream_round", "8 RSS per open stream (vs. just before)", "KB", 1e-3),
    ("reuse_new_connections", "9 new upstream connections / reuse run", "", 1),
]
ONCE = [
    ("workers", "  service worker processes", "", 1),
    ("rss_base", "8 base RSS (master+workers, after warm-up)", "MB", 1e-6),
    ("rss_master", "  base RSS of the gunicorn master", "MB", 1e-6),
    ("rss_worker_max", "  base RSS of the largest worker", "MB", 1e-6),
    ("pss_base", "  base PSS (shared pages counted once)", "MB", 1e-6),
    ("rss_end", "  RSS at the end", "MB", 1e-6),
    ("upstream_connections_total", "  upstream TCP connections accepted, total", "", 1),
]
# key, description, op, limit (in the metric's display unit), aggregate over rounds
TARGETS = [
    ("ttft_added_p50", "1 TTFT added p50", "<=", 3, "median"),
    ("ttft_added_p95", "1 TTFT added p95", "<=", 6, "median"),
    ("event_added_p50", "2 event latency added p50", "<=", 0.5, "median"),
    ("event_proxy_gap_max", "2 largest proxy inter-arrival gap", "<=", 25, "median"),
    ("burst_ratio", "3 burst wall proxy/direct", "<=", 1.5, "median"),
    ("concurrent_complete_pct", "4 concurrent streams complete", ">=", 100, "worst"),
    ("concurrent_errors", "4 concurrent stream errors", "<=", 0, "worst"),
    ("concurrent_ratio", "4 concurrent wall / single wall", "<=", 2, "median"),
    ("burst_conn_errors", "5 connection resets/errors", "<=", 0, "worst"),
    ("burst_conn_5xx", "5 5xx answers", "<=", 0, "worst"),
    ("rps_per_worker", "6 req/s per worker", ">=", 300, "median"),
    ("cpu_per_event_burst", "7 service CPU per event (burst)", "<=", 250, "median"),
    ("cpu_per_event_concurrent", "7 service CPU per event (concurrent)", "<=", 250, "median"),
    ("rss_base", "8 base RSS", "<=", 100, "once"),
    ("rss_per_stream", "8 RSS per open stream", "<=", 100, "median"),
    ("reuse_new_connections", "9 new upstream connections per 50 requests", "<=", 1, "per50"),
    ("failed_requests", "all requests answered completely", "<=", 0, "total"),
]


def fmt(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if abs(value) < 1e-6:
        value = 0.0
    if value == int(value) and abs(value) >= 10:
        return f"{value:.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}" if abs(value) < 100 else f"{value:.1f}"


def report(bench: Bench, plan: Plan, thresholds: bool, strict: bool) -> int:
    units = {key: (unit, scale) for key, _, unit, scale in METRICS + ONCE}
    units["failed_requests"] = ("failed", 1)
    print(f"\n{'metric':<46} {'median':>10}  {'spread (min .. max)':<24} rounds")
    for key, label, unit, scale in METRICS:
        vals = [v * scale for v in bench.values.get(key, [])]
        clean = [v for v in vals if not math.isnan(v)]
        if not clean:
            print(f"{label:<46} {'nan':>10} {unit:<3}")
            continue
        med = statistics.median(clean)
        spread = f"[{fmt(min(clean))} .. {fmt(max(clean))}]"
        print(f"{label:<46} {fmt(med):>10} {unit:<3} {spread:<22} {len(vals)}")
    for key, label, unit, scale in ONCE:
        value = bench.once.get(key, math.nan) * scale
        print(f"{label:<46} {fmt(value):>10} {unit:<3} (measured once)")
    failed_requests = sum(bench.failures.values())
    bench.once["failed_requests"] = failed_requests
    print(f"\nfailed requests: {failed_requests}" + (f" {dict(bench.failures)}" if failed_requests else ""))
    for sample in bench.failure_samples:
        print(f"  {sample}")

    if not thresholds:
        print("\nsmoke run: no thresholds checked")
        return 1 if failed_requests else 0

    print()
    missed = []
    for key, desc, op, limit, how in TARGETS:
        unit, scale = units[key]
        if how in ("once", "total"):
            value = bench.once.get(key, math.nan) * scale
        else:
            vals = [v * scale for v in bench.values.get(key, [])]
            if not vals or any(math.isnan(v) for v in vals) and how == "worst":
                value = math.nan
            elif how == "worst":
                value = max(vals) if op == "<=" else min(vals)
            elif how == "per50":
                value = statistics.median(vals) * 50 / plan.reuse_requests
            else:
                value = statistics.median([v for v in vals if not math.isnan(v)] or [math.nan])
        ok = value <= limit if op == "<=" else value >= limit  # NaN fails both
        if not ok:
            missed.append(desc)
        label = {"worst": "worst round", "once": "measured once", "total": "whole run", "per50": "median"}.get(how, how)
        shown, target = f"{fmt(value)} {unit}".strip(), f"{fmt(limit)} {unit}".strip()
        print(f"{'PASS' if ok else 'FAIL'}  {desc}: {shown} ({label}; target {op} {target})")
    total = len(TARGETS)
    if missed:
        print(f"\nOVERALL: FAIL ({len(missed)} of {total} targets missed: {', '.join(missed)})")
    else:
        print(f"\nOVERALL: PASS ({total} of {total} targets met)")
    return 1 if strict and missed else 0


# What --compare measures on both trees: key, label, unit, scale (as in METRICS and ONCE).
COMPARED = [
    ("ttft_proxy_p50", "TTFT through the service, p50", "ms", 1e3),
    ("ttft_added_p50", "TTFT added by the service, p50", "ms", 1e3),
    ("burst_proxy_wall", "burst stream through the service, wall", "ms", 1e3),
    ("cpu_per_event_burst", "service CPU per event, burst", "us", 1e6),
    ("rps_total", "non-streaming req/s", "/s", 1),
    ("rps_cpu_per_request", "service CPU per request", "ms", 1e3),
    ("rss_base", "base RSS after warm-up", "MB", 1e-6),
]


def export_tree(ref: str, into: Path) -> Path:
    """The files of commit ``ref`` (no .git), so its app.py can be served beside this tree's."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def compare(ref: str, plan: Plan, tmp: Path) -> int:
    """This tree and ``ref`` served side by side; the same phases alternate between them each round."""
    trees = {"this tree": ROOT, ref: export_tree(ref, tmp / "baseline")}
    servers = {}
    for index, (name, root) in enumerate(trees.items()):
        (tmp / f"run-{index}").mkdir()
        servers[name] = Servers(tmp / f"run-{index}", root)
    benches: dict[str, Bench] = {}
    try:
        for name, server in servers.items():
            server.start()
            benches[name] = Bench(server, plan)
            benches[name].warm_up()
        for index in range(plan.rounds):
            names = list(benches) if index % 2 == 0 else list(reversed(benches))
            for name in names:
                bench = benches[name]
                bench.servers.refresh_workers()
                bench.ttft(("direct", "proxy"))
                bench.burst(("direct", "proxy"))
                bench.throughput()
            print(f"round {index + 1}/{plan.rounds} done", flush=True)
        return report_comparison(benches)
    finally:
        for bench in benches.values():
            bench.close()
        for server in servers.values():
            server.stop()


def report_comparison(benches: dict[str, Bench]) -> int:
    (new, new_bench), (old, old_bench) = benches.items()
    print(f"\n{'metric':<34} {new:>12} {old:>12}   ratio (this / {old})")
    for key, label, unit, scale in COMPARED:
        values = [_median_of(bench, key) * scale for bench in (new_bench, old_bench)]
        ratio = values[0] / values[1] if values[1] else math.nan
        print(f"{label:<34} {fmt(values[0]):>9} {unit:<3}{fmt(values[1]):>9} {unit:<3}  {ratio:.2f}")
    failures = sum(sum(bench.failures.values()) for bench in benches.values())
    print(f"\nfailed requests: {failures}")
    return 1 if failures else 0


def _median_of(bench: Bench, key: str) -> float:
    if key in bench.once:
        return bench.once[key]
    clean = [v for v in bench.values.get(key, []) if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds, tiny counts, no thresholds")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--litellm-python", metavar="PATH", help="an interpreter where `import litellm` works")
    parser.add_argument("--compare", metavar="REF", help="measure this tree against a git commit, in the same run")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    if args.rounds:
        plan = Plan(**{**plan.__dict__, "rounds": args.rounds})

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="reverse-api-bench-"))
    if args.compare:
        try:
            return compare(args.compare, plan, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"total time {time.monotonic() - started:.1f} s")
    servers = Servers(tmp)
    bench: Bench | None = None
    code = 0
    try:
        servers.start()
        print(
            f"service pid {servers.service.pid} on {servers.base}, fake upstream on {servers.upstream_base}; "
            f"{os.cpu_count()} CPUs; {'smoke' if args.smoke else 'full'} run, {plan.rounds} round(s)",
            flush=True,
        )
        bench = Bench(servers, plan)
        bench.warm_up()
        print(f"warm-up done: {len(servers.workers)} worker(s), pids {servers.pids()}", flush=True)
        for index in range(plan.rounds):
            t0 = time.monotonic()
            bench.round(index)
            print(f"round {index + 1}/{plan.rounds} done in {time.monotonic() - t0:.1f} s", flush=True)
        bench.finish()
        own_p50 = statistics.median(bench.values["ttft_proxy_p50"] or [math.nan])
        print(litellm_arm(args.litellm_python, servers.base, plan.ttft_requests, own_p50), flush=True)
        code = report(bench, plan, thresholds=not args.smoke, strict=args.strict)
        if sum(bench.failures.values()):
            print(f"\nservice log (last lines):\n{servers.log_tail('service.log')}")
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        code = 130
    except Exception:
        traceback.print_exc()
        print(f"service log (last lines):\n{servers.log_tail('service.log')}", file=sys.stderr)
        code = 2
    finally:
        if bench is not None:
            bench.close()
        servers.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"total time {time.monotonic() - started:.1f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
