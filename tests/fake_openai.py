"""A fake OpenAI-compatible upstream on a loopback port, speaking real ``chat.completion.chunk`` JSON.

Tests set ``fake.reply`` (an :class:`OpenAIReply`) and ``fake.models`` to script the next answers;
``fake.requests`` records every request (path, method, headers, JSON body).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from flask import Flask, Response, request

UPSTREAM_ID = "chatcmpl-upstream"
UPSTREAM_CREATED = 1700000000
UPSTREAM_FINGERPRINT = "fp_upstream"
UPSTREAM_ONLY_MODEL = "gpt-upstream-only"


@dataclass
class ToolCall:
    """One tool call the fake streams: its arguments are sent in these pieces, one chunk each."""

    id: str
    name: str
    argument_pieces: list[str]

    @property
    def arguments(self) -> str:
        return "".join(self.argument_pieces)


@dataclass
class OpenAIReply:
    """What the fake answers to the next chat completions.

    A status other than 200 answers ``error`` as a JSON body (with ``headers``); ``cut_before_finish``
    ends the stream after the deltas, with no finish chunk, no usage chunk and no ``[DONE]``.
    """

    content: list[str] = field(default_factory=lambda: ["Hello", " from", " upstream"])
    reasoning: list[str] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None  # None: "tool_calls" when there are tool calls, else "stop"
    usage: dict = field(default_factory=lambda: usage_counts(11, 7))
    status: int = 200
    error: dict | None = None
    headers: dict[str, str] = field(default_factory=dict)
    cut_before_finish: bool = False
    delay: float = 0.0
    model: str | None = None  # the model named in the chunks; default: the requested one, dated


def usage_counts(prompt: int, completion: int, reasoning: int = 0) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def error_reply(status: int, message: str, type: str, param: str | None = None, code: str | None = None, **kwargs):
    error = {"message": message, "type": type, "param": param, "code": code}
    return OpenAIReply(status=status, error={"error": error}, **kwargs)


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


class FakeOpenAI:
    """The fake upstream and everything it was sent."""

    def __init__(self) -> None:
        self.app = Flask("fake_openai")
        self.app.add_url_rule("/v1/chat/completions", view_func=self._completions, methods=["POST"])
        self.app.add_url_rule("/v1/models", view_func=self._models, methods=["GET"])
        self.url = ""
        self.host = ""
        self.reset()

    def reset(self) -> None:
        self.requests: list[dict] = []
        self.reply = OpenAIReply()
        self.models: list[str] = ["gpt-4o-mini", UPSTREAM_ONLY_MODEL]
        self.models_status = 200
        self.models_hang = 0.0
        self._lock = threading.Lock()

    def chat_requests(self) -> list[dict]:
        return [r for r in self.requests if r["path"] == "/v1/chat/completions"]

    def model_requests(self) -> list[dict]:
        return [r for r in self.requests if r["path"] == "/v1/models"]

    def _record(self) -> None:
        with self._lock:
            self.requests.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "headers": dict(request.headers),
                    "json": request.get_json(silent=True),
                }
            )

    def _models(self) -> Response:
        self._record()
        time.sleep(self.models_hang)
        if self.models_status != 200:
            body = {"error": {"message": "models unavailable", "type": "server_error", "param": None, "code": None}}
            return Response(json.dumps(body), status=self.models_status, content_type="application/json")
        data = [{"id": m, "object": "model", "created": UPSTREAM_CREATED, "owned_by": "system"} for m in self.models]
        return Response(json.dumps({"object": "list", "data": data}), content_type="application/json")

    def _completions(self) -> Response:
        self._record()
        reply = self.reply
        body = request.get_json(silent=True) or {}
        if reply.status != 200:
            text = json.dumps(reply.error) if reply.error is not None else "upstream failure"
            kind = "application/json" if reply.error is not None else "text/plain"
            return Response(text, status=reply.status, content_type=kind, headers=reply.headers)
        model = reply.model or f"{body.get('model', 'gpt-4o-mini')}-2024-07-18"
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = list(self._chunks(reply, model, include_usage))
        return Response(
            self._paced(chunks, reply.delay), content_type="text/event-stream; charset=utf-8", headers=reply.headers
        )

    @staticmethod
    def _paced(chunks: list[bytes], delay: float) -> Iterator[bytes]:
        for chunk in chunks:
            if delay:
                time.sleep(delay)
            yield chunk

    @staticmethod
    def _chunks(reply: OpenAIReply, model: str, include_usage: bool) -> Iterator[bytes]:
        head = {
            "id": UPSTREAM_ID,
            "object": "chat.completion.chunk",
            "created": UPSTREAM_CREATED,
            "model": model,
            "system_fingerprint": UPSTREAM_FINGERPRINT,
            "service_tier": "default",
        }
        extra = {"usage": None} if include_usage else {}

        def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return sse({**head, "choices": [choice], **extra})

        yield chunk({"role": "assistant", "content": "", "refusal": None})
        for piece in reply.reasoning:
            yield chunk({"reasoning_content": piece})
        for piece in reply.content:
            yield chunk({"content": piece})
        for index, call in enumerate(reply.tool_calls):
            opening = {
                "index": index,
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": ""},
            }
            yield chunk({"tool_calls": [opening]})
            for piece in call.argument_pieces:
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
        if reply.cut_before_finish:
            return
        finish_reason = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        yield chunk({}, finish_reason)
        if include_usage:
            yield sse({**head, "choices": [], "usage": reply.usage})
        yield b"data: [DONE]\n\n"
