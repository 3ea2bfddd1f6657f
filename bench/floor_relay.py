"""The floor: the least an OpenAI-style relay of the fake Qwen upstream can do on the service's stack.

A Flask app with one route, ``POST /v1/chat/completions``, served by gunicorn with one gevent
worker. It makes the same two upstream calls as the benchmark's direct client (``chats/new``, then
the ``chat/completions`` SSE stream) with one module-level requests.Session, and relays the answer:
one ``chat.completion.chunk`` per upstream event and ``data: [DONE]`` when streaming, one
``chat.completion`` otherwise. No settings, accounts, logging or checks: the real service is
compared to this.

    FLOOR_UPSTREAM=http://127.0.0.1:PORT python -m gunicorn --worker-class=gevent --workers=1 \\
        --bind=127.0.0.1:PORT --chdir bench floor_relay:app
"""

from __future__ import annotations

import json
import os
import time
import uuid

import requests
from clients import completion_body, new_chat_body  # served with --chdir bench
from flask import Flask, Response, request
from requests.adapters import HTTPAdapter

UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "http://127.0.0.1:8000")
HEADERS = {"Authorization": "Bearer bench", "Accept": "application/json"}
TIMEOUT = (10, 60)

session = requests.Session()
session.trust_env = False
session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=512, max_retries=0))

app = Flask(__name__)


def upstream_events(model: str, prompt: str):
    """(content, finished) of each upstream answer event."""
    answer = session.post(f"{UPSTREAM}/api/v2/chats/new", json=new_chat_body(), headers=HEADERS, timeout=TIMEOUT)
    chat_id = answer.json()["data"]["id"]
    body = completion_body(chat_id, prompt)  # what the direct arm and the service send
    url = f"{UPSTREAM}/api/v2/chat/completions?chat_id={chat_id}"
    with session.post(url, json=body, headers=HEADERS, stream=True, timeout=TIMEOUT) as response:
        raw = response.raw
        rest = b""
        while True:
            chunk = raw.read1(65536)
            if not chunk:
                return
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            batch = []
            for line in lines:
                if not line.startswith(b"data:"):
                    continue
                choices = json.loads(line[5:]).get("choices")
                if choices:
                    delta = choices[0].get("delta") or {}
                    batch.append((delta.get("content") or "", delta.get("status") == "finished"))
            if batch:
                yield batch


def prompt_of(messages: list[dict]) -> str:
    return "\n\n".join(str(m.get("content") or "") for m in messages)


@app.post("/v1/chat/completions")
def completions() -> Response:
    body = request.get_json()
    model = body.get("model") or "qwen3.7-plus"
    events = upstream_events(model, prompt_of(body.get("messages") or []))
    reply_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if not body.get("stream"):
        content = "".join(text for batch in events for text, _ in batch)
        message = {"role": "assistant", "content": content}
        return {
            "id": reply_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }

    def relay():
        for batch in events:
            out = []
            for text, finished in batch:
                if not text and not finished:
                    continue
                chunk = {
                    "id": reply_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [
                        {"index": 0, "delta": {"content": text}, "finish_reason": "stop" if finished else None}
                    ],
                }
                out.append(f"data: {json.dumps(chunk)}\n\n")
            if out:
                yield "".join(out)  # every event of one upstream read in one write
        yield "data: [DONE]\n\n"

    return Response(relay(), mimetype="text/event-stream", headers={"Cache-Control": "no-cache"})
