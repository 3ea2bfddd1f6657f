"""The Responses front's output: ``response`` objects and the Responses event stream.

Built from the reply's blocks (``reply_blocks``): reasoning becomes a ``reasoning`` item with a
summary, text a ``message`` item, each call a ``function_call`` item. Every field the SDK's types
list is present, null or empty where the upstream gives nothing. Every event carries a rising
``sequence_number``; the stream ends with ``response.completed`` (or ``.incomplete`` /
``.failed``), never ``[DONE]``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from converters import ApiError, ChatRequest, as_dict, as_int
from fronts.openai_render import error_body
from redaction import Redactor
from reply_blocks import TEXT, THINKING, TOOL_CALL, BlockDelta, BlockEvent, BlockStart, BlockStop, KeepAlive, ReplyEnd
from streaming import KEEP_ALIVE, format_event, iter_guarded

ITEM_PREFIX = {THINKING: "rs_", TEXT: "msg_", TOOL_CALL: "fc_"}


@dataclass
class ResponseMeta:
    """What every event repeats of the response: its id and the request's settings, echoed."""

    id: str
    created_at: int
    echo: dict  # the request's fields the response object repeats
    output: list[dict] = field(default_factory=list)  # the items done so far

    @classmethod
    def new(cls, body: dict, chat_request: ChatRequest) -> ResponseMeta:
        return cls("resp_" + uuid.uuid4().hex, int(time.time()), _echoed(body, chat_request))


def _echoed(body: dict, chat_request: ChatRequest) -> dict:
    """The request's settings as the response repeats them; a value of the wrong type is not
    repeated (its default is), so the response stays valid for the SDK's types."""
    reasoning = as_dict(body.get("reasoning"))
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": _of_type(body.get("max_output_tokens"), int, None),
        "metadata": _of_type(body.get("metadata"), dict, {}),
        "model": chat_request.model,
        "parallel_tool_calls": chat_request.parallel_tool_calls,
        "prompt_cache_key": _of_type(body.get("prompt_cache_key"), str, None),
        "reasoning": {
            "effort": _of_type(reasoning.get("effort"), str, None),
            "summary": _of_type(reasoning.get("summary"), str, None),
            "generate_summary": None,
            "mode": None,
            "context": None,
        },
        "safety_identifier": _of_type(body.get("safety_identifier"), str, None),
        "store": body.get("store", True) is not False,
        "temperature": _of_type(body.get("temperature"), (int, float), 1.0),
        "text": {"format": {"type": "text"}, "verbosity": None, **_of_type(body.get("text"), dict, {})},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": list(chat_request.tools),
        "top_p": _of_type(body.get("top_p"), (int, float), 1.0),
        "truncation": body.get("truncation") if body.get("truncation") in ("auto", "disabled") else "disabled",
        "user": _of_type(body.get("user"), str, None),
    }


def _of_type(value: object, kinds: type | tuple[type, ...], default: object) -> object:
    return value if isinstance(value, kinds) and not isinstance(value, bool) else default


# Fields of the official response that this service never fills: null, as the API sends them unused.
UNUSED_FIELDS = (
    "access_programs",
    "completed_at",
    "conversation",
    "image",
    "input_transformations",
    "max_tool_calls",
    "moderation",
    "prompt",
    "prompt_cache_diagnostics",
    "prompt_cache_options",
    "prompt_cache_retention",
    "tool_usage",
    "top_logprobs",
)


def response_object(meta: ResponseMeta, status: str, usage: dict | None = None, **fields: object) -> dict:
    return {
        "id": meta.id,
        "object": "response",
        "created_at": meta.created_at,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": None,
        "output": list(meta.output),
        "previous_response_id": None,
        "service_tier": "default",
        "usage": usage,
        **dict.fromkeys(UNUSED_FIELDS),
        **meta.echo,
        **fields,
    }


def response_usage(usage: dict | None) -> dict:
    """The upstream's counts (chat completions' names) in the Responses API's."""
    usage = usage or {}
    prompt, output = as_int(usage.get("prompt_tokens")), as_int(usage.get("completion_tokens"))
    cached = as_int(as_dict(usage.get("prompt_tokens_details")).get("cached_tokens"))
    reasoning = as_int(as_dict(usage.get("completion_tokens_details")).get("reasoning_tokens"))
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0, "cache_write_tokens_details": None},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": prompt + output,
    }


def _final_fields(end: ReplyEnd) -> tuple[str, dict]:
    """The status a reply ends in, and what the response says of it."""
    if end.finish_reason == "length":
        return "incomplete", {"incomplete_details": {"reason": "max_output_tokens"}}
    return "completed", {"completed_at": int(time.time())}


def response_from_events(events: Iterable[BlockEvent], meta: ResponseMeta) -> dict:
    """Aggregate a whole reply into one ``response``."""
    for event in events:
        if isinstance(event, BlockStop):
            meta.output.append(_item(event, meta))
        elif isinstance(event, ReplyEnd):
            status, fields = _final_fields(event)
            return response_object(meta, status, response_usage(event.usage), **fields)
    raise AssertionError("iter_blocks always ends with a ReplyEnd")


# --- items -----------------------------------------------------------------------------------


def _item_id(block: BlockStart | BlockStop, meta: ResponseMeta) -> str:
    # One id per block of the response, the same in every event that names it.
    return f"{ITEM_PREFIX[block.kind]}{meta.id.removeprefix('resp_')[:24]}{block.index:04d}"


def _item(block: BlockStart | BlockStop, meta: ResponseMeta) -> dict:
    """The output item of a block: empty and in progress at its start, whole when it stops."""
    done = isinstance(block, BlockStop)
    text, status, item_id = (
        (block.text if done else ""),
        ("completed" if done else "in_progress"),
        _item_id(block, meta),
    )
    if block.kind == THINKING:
        summary = [_summary_part(text)] if done else []
        return {
            "id": item_id,
            "type": "reasoning",
            "summary": summary,
            "content": None,
            "encrypted_content": None,
            "status": status,
        }
    if block.kind == TOOL_CALL:
        call = {
            "call_id": block.call_id,
            "name": block.name,
            "arguments": text,
            "namespace": None,
            "caller": None,
            "async": None,
        }
        return {"id": item_id, "type": "function_call", **call, "status": status}
    content = [_output_text(text)] if done else []
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content, "phase": None}


def _summary_part(text: str) -> dict:
    return {"type": "summary_text", "text": text}


def _output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


# --- the stream ----------------------------------------------------------------------------


def iter_stream_body(
    events: Iterator[BlockEvent], deltas: Iterator, meta: ResponseMeta, redact: Redactor
) -> Iterator[bytes]:
    """The Responses event stream; an error after the first byte becomes ``response.failed``."""
    numbered = _Numbered()
    frames = (KEEP_ALIVE if data is None else numbered.frame(data) for data in iter_stream_events(events, meta))

    def failed(error: ApiError) -> bytes:
        message = error_body(error, redact)["error"]
        # The SDK's types allow a closed list of codes: ours are told in the message's words.
        code = "rate_limit_exceeded" if error.status == 429 else "server_error"
        failure = {"code": code, "message": message["message"]}
        return numbered.frame({"type": "response.failed", "response": response_object(meta, "failed", error=failure)})

    return iter_guarded(frames, failed, meta.id, redact, deltas.close)


class _Numbered:
    """Events numbered as they are written: the failure after them goes on counting."""

    def __init__(self) -> None:
        self.next = 0

    def frame(self, data: dict) -> bytes:
        data = {**data, "sequence_number": self.next}
        self.next += 1
        return format_event(data["type"], data)


def iter_stream_events(events: Iterable[BlockEvent], meta: ResponseMeta) -> Iterator[dict | None]:
    """The events' data in the Responses order (``None`` for a keep-alive comment)."""
    yield {"type": "response.created", "response": response_object(meta, "in_progress")}
    yield {"type": "response.in_progress", "response": response_object(meta, "in_progress")}
    for event in events:
        if isinstance(event, KeepAlive):
            yield None
        elif isinstance(event, BlockStart):
            yield from _item_opened(event, meta)
        elif isinstance(event, BlockDelta):
            yield _piece(event, meta)
        elif isinstance(event, BlockStop):
            yield from _item_closed(event, meta)
        elif isinstance(event, ReplyEnd):
            status, fields = _final_fields(event)
            yield {
                "type": f"response.{status}",
                "response": response_object(meta, status, response_usage(event.usage), **fields),
            }
            return


def _where(block: BlockStart | BlockDelta | BlockStop, meta: ResponseMeta) -> dict:
    return {"item_id": _item_id(block, meta), "output_index": block.index}


def _item_opened(start: BlockStart, meta: ResponseMeta) -> Iterator[dict]:
    yield {"type": "response.output_item.added", "output_index": start.index, "item": _item(start, meta)}
    if start.kind == THINKING:
        part = {"summary_index": 0, "part": _summary_part("")}
        yield {"type": "response.reasoning_summary_part.added", **_where(start, meta), **part}
    elif start.kind == TEXT:
        yield {
            "type": "response.content_part.added",
            **_where(start, meta),
            "content_index": 0,
            "part": _output_text(""),
        }


def _piece(delta: BlockDelta, meta: ResponseMeta) -> dict:
    where = _where(delta, meta)
    if delta.kind == THINKING:
        return {"type": "response.reasoning_summary_text.delta", **where, "summary_index": 0, "delta": delta.text}
    if delta.kind == TOOL_CALL:
        return {"type": "response.function_call_arguments.delta", **where, "delta": delta.text}
    return {"type": "response.output_text.delta", **where, "content_index": 0, "delta": delta.text, "logprobs": []}


def _item_closed(stop: BlockStop, meta: ResponseMeta) -> Iterator[dict]:
    where = _where(stop, meta)
    if stop.kind == THINKING:
        yield {"type": "response.reasoning_summary_text.done", **where, "summary_index": 0, "text": stop.text}
        yield {
            "type": "response.reasoning_summary_part.done",
            **where,
            "summary_index": 0,
            "part": _summary_part(stop.text),
            "status": None,
        }
    elif stop.kind == TOOL_CALL:
        yield {"type": "response.function_call_arguments.done", **where, "name": stop.name, "arguments": stop.text}
    else:
        yield {"type": "response.output_text.done", **where, "content_index": 0, "text": stop.text, "logprobs": []}
        yield {"type": "response.content_part.done", **where, "content_index": 0, "part": _output_text(stop.text)}
    item = _item(stop, meta)
    meta.output.append(item)
    yield {"type": "response.output_item.done", "output_index": stop.index, "item": item}
