"""The benchmark's clients: the direct upstream client, the OpenAI-style client of the service (or of
the floor relay), the lean keep-alive client for throughput, and the statistics they feed."""

from __future__ import annotations

import http.client
import json
import math
import os
import subprocess
import time
from collections.abc import Callable, Iterator

import requests
from common import HOST, HTTP_TIMEOUT, MODEL, READ_CHUNK, BenchError, HttpStatus
from requests.adapters import HTTPAdapter


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

    @property
    def bunched(self) -> float:
        """Share of events that came in the same client read as the event before (equal arrival)."""
        pairs = len(self.arrived) - 1
        if pairs < 1:
            return math.nan
        return sum(1 for a, b in zip(self.arrived, self.arrived[1:], strict=False) if a == b) / pairs


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


def new_chat_body() -> dict:
    return {"chatId": "", "models": [MODEL], "chat_type": "t2t", "timestamp": int(time.time() * 1000)}


def completion_body(chat_id: str, prompt: str) -> dict:
    """The upstream completion body the service sends for one user turn (the floor relay sends it too)."""
    return {
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


UPSTREAM_HEADERS = {"Authorization": "Bearer bench", "Accept": "application/json"}


def direct_stream(session: requests.Session, upstream: str, prompt: str, limit: float) -> Stream:
    """The two upstream calls the service makes, made by this client."""
    result = Stream()
    deadline = result.t0 + limit
    answer = session.post(
        f"{upstream}/api/v2/chats/new", json=new_chat_body(), headers=UPSTREAM_HEADERS, timeout=HTTP_TIMEOUT
    )
    if answer.status_code != 200:
        raise HttpStatus(answer.status_code, answer.text)
    chat_id = answer.json()["data"]["id"]
    url = f"{upstream}/api/v2/chat/completions?chat_id={chat_id}"
    body = completion_body(chat_id, prompt)
    with session.post(url, json=body, headers=UPSTREAM_HEADERS, stream=True, timeout=HTTP_TIMEOUT) as response:
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
    """``POST /v1/chat/completions`` with ``"stream": true`` on the service (or the floor relay)."""
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


def completion_request(messages: list[dict], stream: bool = False, model: str = MODEL) -> bytes:
    return json.dumps({"model": model, "stream": stream, "messages": messages}).encode()


def history(length: int, prompt: str = "events=5 gap_ms=0") -> list[dict]:
    """``length`` messages alternating user/assistant, about 100 characters each, the last the user's prompt."""
    filler = "This is an earlier turn of the conversation, kept by the client as OpenAI clients keep them. "
    messages = []
    for i in range(length - 1):
        role = "user" if (length - 1 - i) % 2 == 0 else "assistant"
        messages.append({"role": role, "content": f"{i:04d} {filler}"[:100]})
    messages.append({"role": "user", "content": prompt})
    return messages


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

    def stream(self, body: bytes) -> int:
        """A streamed request read to its end; returns how many upstream frames it relayed."""
        self.conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise HttpStatus(response.status, data.decode(errors="replace"))
        if not data.rstrip().endswith(b"data: [DONE]"):
            raise BenchError("stream did not end with [DONE]")
        return data.count(b";")

    def close(self) -> None:
        self.conn.close()


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
