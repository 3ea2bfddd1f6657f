"""The OpenAI front's output: ``chat.completion`` objects, chunk streams and error bodies.

Every OpenAI-shaped byte the service writes is built here, errors included (JSON or in-stream).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from flask import Response, jsonify

import json_codec
from converters import ApiError, Delta, empty_usage, joined_tool_calls, merge_tool_calls
from redaction import Redactor
from streaming import DONE, format_sse, iter_guarded, iter_sse_bytes

SYSTEM_FINGERPRINT = "fp_reverse_api"
# The same request would fail the same way on these; spare the upstream the SDKs' retries.
RETRYABLE_CLIENT_STATUSES = (408, 409, 429)

log = logging.getLogger("reverse_api")


def error_body(error: ApiError, redact: Redactor | None = None) -> dict:
    """``{"error": {message, type, param, code}}``: the body openai-python's APIError reads."""
    message = redact(error.message) if redact else error.message
    return {"error": {"message": message, "type": error.type, "param": error.param, "code": error.code}}


def error_response(error: ApiError, redact: Redactor) -> Response:
    """An error before the first byte: the JSON body with its real HTTP status and headers."""
    response = jsonify(error_body(error, redact))
    response.status_code = error.status
    response.headers.update(error.headers)
    if 400 <= error.status < 500 and error.status not in RETRYABLE_CLIENT_STATUSES:
        response.headers.setdefault("x-should-retry", "false")
    return response


def iter_stream_body(
    deltas: Iterator[Delta], meta: CompletionMeta, include_usage: bool, redact: Redactor
) -> Iterator[bytes]:
    """SSE bytes for the client; an error after the first byte becomes an error event, then [DONE]."""
    frames = iter_sse_bytes(iter_chunks(deltas, meta, include_usage, ChunkFrame(meta, include_usage)))
    return iter_guarded(
        frames, lambda error: format_sse(error_body(error, redact)) + DONE, meta.id, redact, deltas.close
    )


@dataclass(frozen=True)
class CompletionMeta:
    """What every chunk of one completion repeats."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, model: str) -> CompletionMeta:
        return cls(id="chatcmpl-" + uuid.uuid4().hex, created=int(time.time()), model=model)


class ChunkFrame:
    """The SSE frame of one delta's chunk, from bytes made once per completion: only the delta's
    own fields are encoded per event. The same bytes ``format_sse(chunk_from_delta(...))`` gives."""

    def __init__(self, meta: CompletionMeta, include_usage: bool) -> None:
        head = json_codec.dumps(_chunk_head(meta))[:-1]  # the object left open for "choices"
        self._before = b"data: " + head + b',"choices":[{"index":0,"delta":'
        usage = b',"usage":null' if include_usage else b""
        self._after = b',"logprobs":null,"finish_reason":null}]' + usage + b"}\n\n"

    def __call__(self, fields: dict) -> bytes:
        return self._before + json_codec.dumps(fields) + self._after


def iter_chunks(
    deltas: Iterable[Delta],
    meta: CompletionMeta,
    include_usage: bool,
    delta_chunk: Callable[[dict], dict | bytes] | None = None,
) -> Iterator[dict | bytes | None]:
    """OpenAI ``chat.completion.chunk`` dicts: role first, deltas, finish, then optional usage.

    ``None`` stands for an upstream keep-alive, relayed as an SSE comment; ``delta_chunk`` makes
    each delta's chunk (a ``ChunkFrame`` gives it framed already).
    """
    usage_field = {"usage": None} if include_usage else {}
    if delta_chunk is None:
        delta_chunk = lambda fields: chunk_from_delta(meta, fields, None, usage_field)  # noqa: E731
    yield chunk_from_delta(meta, {"role": "assistant", "content": ""}, None, usage_field)
    usage, finish_reason = None, "stop"
    for delta in deltas:
        if delta.usage is not None:
            usage, finish_reason = delta.usage, delta.finish_reason or "stop"
            continue
        if delta.heartbeat:
            yield None
        elif not delta.is_notice:  # the upstream's ids are for the service, not the client
            yield delta_chunk(_delta_fields(delta))
    yield chunk_from_delta(meta, {}, finish_reason, usage_field)
    if include_usage:
        yield {**_chunk_head(meta), "choices": [], "usage": usage or empty_usage()}


def _delta_fields(delta: Delta) -> dict:
    fields = {}
    if delta.reasoning:
        fields["reasoning_content"] = delta.reasoning
    if delta.content:
        fields["content"] = delta.content
    if delta.tool_calls:
        fields["tool_calls"] = delta.tool_calls
    return fields


def chunk_from_delta(meta: CompletionMeta, delta: dict, finish_reason: str | None, extra: dict) -> dict:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {**_chunk_head(meta), "choices": [choice], **extra}


def _chunk_head(meta: CompletionMeta) -> dict:
    return {
        "id": meta.id,
        "object": "chat.completion.chunk",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def completion_from_deltas(deltas: Iterable[Delta], meta: CompletionMeta) -> dict:
    """Aggregate a whole reply into one ``chat.completion``."""
    content: list[str] = []
    reasoning: list[str] = []
    tool_calls: dict[int, dict] = {}
    usage, finish_reason = None, "stop"
    for delta in deltas:
        content.append(delta.content)
        reasoning.append(delta.reasoning)
        merge_tool_calls(tool_calls, delta.tool_calls or [])
        if delta.usage is not None:
            usage, finish_reason = delta.usage, delta.finish_reason or "stop"
    message = {"role": "assistant", "content": "".join(content), "refusal": None, "annotations": []}
    if any(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    if tool_calls:
        message["tool_calls"] = joined_tool_calls(tool_calls)
        message["content"] = message["content"] or None
    return {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage or empty_usage(),
    }
