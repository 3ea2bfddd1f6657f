"""The Anthropic front's output: ``message`` objects, the Messages event stream, error bodies.

Every Anthropic-shaped byte the service writes is built here, from the reply's blocks
(``reply_blocks``). Fields the upstream gives nothing for are null or empty, as the SDK's types
list them, so strict clients accept every object.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from flask import Response, g, has_app_context, jsonify

from converters import ApiError, ChatRequest, as_dict, as_int
from redaction import Redactor
from reply_blocks import (
    TEXT,
    THINKING,
    TOOL_CALL,
    BlockDelta,
    BlockEvent,
    BlockStart,
    BlockStop,
    Held,
    KeepAlive,
    ReplyEnd,
)
from streaming import format_event, iter_guarded

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "stop_sequence": "stop_sequence"}
# Anthropic's error types by HTTP status; other 4xx are invalid requests, other 5xx api errors.
ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
DELTA_FIELDS = {
    TEXT: ("text_delta", "text"),
    THINKING: ("thinking_delta", "thinking"),
    TOOL_CALL: ("input_json_delta", "partial_json"),
}
RETRYABLE_CLIENT_STATUSES = (408, 409, 429)

log = logging.getLogger("reverse_api")


# --- errors --------------------------------------------------------------------------------


def error_body(error: ApiError, redact: Redactor | None = None, request_id: str = "") -> dict:
    """``{"type": "error", "error": {type, message}, "request_id"}``, as the Anthropic SDK reads it."""
    message = redact(error.message) if redact else error.message
    return {
        "type": "error",
        "error": {"type": error_type(anthropic_status(error)), "message": message},
        "request_id": request_id or _request_id() or None,
    }


def anthropic_status(error: ApiError) -> int:
    """The status Anthropic clients should see. A 401 that is not about the client's own key
    (the provider's credential is missing or refused) is the service's trouble: Claude Code
    would take a 401 for a bad key of its own and ask the user to log in again."""
    return 502 if error.status == 401 and error.code != "invalid_api_key" else error.status


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_response(error: ApiError, redact: Redactor) -> Response:
    """An error before the first byte: the body with its real HTTP status and headers."""
    response = jsonify(error_body(error, redact))
    response.status_code = anthropic_status(error)
    response.headers.update(error.headers)
    same_again = 400 <= error.status < 500 and error.status not in RETRYABLE_CLIENT_STATUSES
    if same_again:
        response.headers.setdefault("x-should-retry", "false")  # the same request would fail the same way
    return response


def _request_id() -> str:
    return g.get("request_id", "") if has_app_context() else ""


# --- the message -------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageMeta:
    """What the message and its events repeat."""

    id: str
    model: str
    input_estimate: int  # until the upstream reports its count (streams must say one first)
    request_id: str = ""  # for errors the stream writes once the request's context is gone

    @classmethod
    def new(cls, model: str, input_estimate: int) -> MessageMeta:
        return cls("msg_" + uuid.uuid4().hex[:24], model, input_estimate, _request_id())


def estimate_tokens(chat_request: ChatRequest) -> int:
    """About four characters a token for Latin script and one a character for others (CJK), over
    every text, call, and tool schema: the rule of thumb tokenizers give; exact counts come
    only with the upstream's answer."""
    texts = [part.text for message in chat_request.messages for part in message.parts]
    texts += [call.name + call.arguments for message in chat_request.messages for call in message.tool_calls]
    texts.append(json.dumps(chat_request.tools, ensure_ascii=False) if chat_request.tools else "")
    wide = sum(1 for text in texts for char in text if ord(char) > 0x2E7F)
    narrow = sum(map(len, texts)) - wide
    return max(1, math.ceil(narrow / 4) + wide)


def message_from_events(events: Iterable[BlockEvent], meta: MessageMeta) -> dict:
    """Aggregate a whole reply into one ``message``."""
    content: list[dict] = []
    for event in events:
        if isinstance(event, BlockStop):
            if event.text or event.kind != TEXT:  # empty text: a stop sequence at the very start
                content.append(_whole_block(event))
        elif isinstance(event, ReplyEnd):
            return {
                **_message_head(meta),
                "content": content,
                **_stop_fields(event),
                "usage": _usage(event, meta, content),
            }
    raise AssertionError("iter_blocks always ends with a ReplyEnd")


def _message_head(meta: MessageMeta) -> dict:
    return {"id": meta.id, "type": "message", "role": "assistant", "model": meta.model, "diagnostics": None}


def _stop_fields(end: ReplyEnd | None) -> dict:
    reason = STOP_REASONS.get(end.finish_reason, "end_turn") if end else None
    return {
        "stop_reason": reason,
        "stop_sequence": end.stop_sequence if end else None,
        "stop_details": None,
        "container": None,
    }


def _whole_block(stop: BlockStop) -> dict:
    if stop.kind == TOOL_CALL:
        return {**_tool_use_head(stop.call_id, stop.name), "input": _tool_input(stop.text)}
    if stop.kind == THINKING:
        return {"type": "thinking", "thinking": stop.text, "signature": ""}
    return {"type": "text", "text": stop.text, "citations": None}


def _tool_use_head(call_id: str, name: str) -> dict:
    suffix = call_id.removeprefix("call_") or uuid.uuid4().hex[:24]
    return {"type": "tool_use", "id": "toolu_" + suffix, "name": name, "caller": None, "toolset_name": None}


def _tool_input(arguments: str) -> dict:
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):  # the tool layer only lets objects through; a native upstream might not
        log.warning("a tool call's arguments are not a JSON object; sent as {}")
        return {}
    return value


def _usage(end: ReplyEnd | None, meta: MessageMeta, content: list[dict]) -> dict:
    """The upstream's counts in Anthropic's terms (cached tokens apart from input); estimates when
    it gave none (a stop sequence ended the reply before its count came)."""
    counts = _counts(end.usage if end else None, meta, content)
    return {
        **counts,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "inference_geo": None,
        "service_tier": "standard",
        "speed": None,
    }


def _counts(usage: dict | None, meta: MessageMeta, content: list[dict]) -> dict:
    """The counts a message's usage and the closing ``message_delta``'s share."""
    if usage is None:
        said = "".join(str(block.get("text") or block.get("thinking") or block.get("input")) for block in content)
        prompt, cached, output, thinking = meta.input_estimate, 0, max(1, math.ceil(len(said) / 4)), 0
    else:
        prompt, output = as_int(usage.get("prompt_tokens")), as_int(usage.get("completion_tokens"))
        cached = as_int(as_dict(usage.get("prompt_tokens_details")).get("cached_tokens"))
        thinking = as_int(as_dict(usage.get("completion_tokens_details")).get("reasoning_tokens"))
    return {
        "input_tokens": max(0, prompt - cached),
        "output_tokens": output,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens_details": {"thinking_tokens": min(thinking, output)},
        "server_tool_use": None,
    }


# --- the stream ----------------------------------------------------------------------------


def iter_stream_body(
    events: Iterator[BlockEvent], deltas: Iterator, meta: MessageMeta, redact: Redactor
) -> Iterator[bytes]:
    """The Messages event stream; an error after the first byte becomes an ``error`` event."""
    # A held delta is an empty frame: no bytes, only the writer told that nothing more is coming now.
    frames = (format_event(name, data) if name else b"" for name, data in iter_stream_events(events, meta))

    def error_event(error: ApiError) -> bytes:
        return format_event("error", error_body(error, redact, meta.request_id))

    return iter_guarded(frames, error_event, meta.id, redact, deltas.close)


def iter_stream_events(events: Iterable[BlockEvent], meta: MessageMeta) -> Iterator[tuple[str, dict]]:
    """``(event name, data)`` pairs in Anthropic's order: one ``message_start``, each block's
    start, deltas and stop, then ``message_delta`` and ``message_stop``; ``ping`` while silent."""
    yield "message_start", {"type": "message_start", "message": _started_message(meta)}
    content: list[dict] = []  # the blocks so far, for the usage estimate when no count comes
    for event in events:
        if isinstance(event, KeepAlive):
            yield "ping", {"type": "ping"}
        elif isinstance(event, Held):
            yield "", {}
        elif isinstance(event, BlockStart):
            yield from _block_start(event)
        elif isinstance(event, BlockDelta):
            kind, field = DELTA_FIELDS[event.kind]
            yield _block_event("content_block_delta", event.index, delta={"type": kind, field: event.text})
        elif isinstance(event, BlockStop):
            content.append(_whole_block(event))
            yield _block_event("content_block_stop", event.index)
        elif isinstance(event, ReplyEnd):
            yield (
                "message_delta",
                {"type": "message_delta", "delta": _stop_fields(event), "usage": _counts(event.usage, meta, content)},
            )
            yield "message_stop", {"type": "message_stop"}
            return


def _started_message(meta: MessageMeta) -> dict:
    usage = {**_usage(None, meta, []), "input_tokens": meta.input_estimate, "output_tokens": 0}
    return {**_message_head(meta), "content": [], **_stop_fields(None), "usage": usage}


def _block_start(start: BlockStart) -> Iterator[tuple[str, dict]]:
    if start.kind == TOOL_CALL:
        block = {**_tool_use_head(start.call_id, start.name), "input": {}}
        yield _block_event("content_block_start", start.index, content_block=block)
        # Anthropic opens every tool input with an empty piece; clients may count on it.
        yield _block_event("content_block_delta", start.index, delta={"type": "input_json_delta", "partial_json": ""})
        return
    empty = (
        {"type": "thinking", "thinking": "", "signature": ""}
        if start.kind == THINKING
        else {"type": "text", "text": "", "citations": None}
    )
    yield _block_event("content_block_start", start.index, content_block=empty)


def _block_event(kind: str, index: int, **fields: dict) -> tuple[str, dict]:
    return kind, {"type": kind, "index": index, **fields}
