"""The ``openai`` dialect: a pass-through to OpenAI-compatible upstreams (the client's own body)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from converters import ApiError, ChatRequest, Delta, as_dict, as_str, copy_json, empty_usage, upstream_error
from dialects.contract import Dialect, ImportHints, Plan, UpstreamAnswer, UpstreamCall
from dialects.qwen import ERROR_BODY_LIMIT, credential_error, parse_frame
from drift import EMPTY_REPLY, DriftLog, StreamDrift

# Fields of a client's body that are for this service and never go upstream.
LOCAL_FIELDS = frozenset({"provider"})
# Upstream client errors passed on with their own status; anything else becomes 502.
PASSED_STATUSES = frozenset({400, 404, 413, 422, 429})


def prepare(chat_request: ChatRequest, history: bool) -> Plan:
    """An OpenAI-compatible upstream judges the request itself."""
    return Plan(chat_request.model)


def build_openai_payload(template: dict, chat_request: ChatRequest, call: UpstreamCall) -> dict:
    """The client's own body over the captured defaults: only the model changes, and it always streams."""
    body = chat_request.passthrough
    payload = copy_json(template)
    payload.update({key: value for key, value in body.items() if key not in LOCAL_FIELDS})
    payload["model"] = call.model
    payload["stream"] = True
    # Ask for usage even when the client did not, so non-streaming answers have it too.
    payload["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return payload


def iter_openai_deltas(payloads: Iterable[str], credential: str = "", drift: DriftLog | None = None) -> Iterator[Delta]:
    """Turn an OpenAI-compatible chunk stream into deltas, ending with usage and finish reason."""
    usage, finish_reason, said_something = None, None, False
    for data in payloads:
        chunk = parse_frame(data)
        if chunk.get("error"):
            raise _openai_error_body(chunk["error"], 502)
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        choice = _first_choice(chunk.get("choices"))
        found = _openai_delta(as_dict(choice.get("delta")))
        if found:
            said_something = said_something or bool(found.content or found.tool_calls)
            yield found
        finish_reason = as_str(choice.get("finish_reason")) or finish_reason
    if finish_reason is None:
        raise upstream_error("The upstream closed the stream before the reply finished.", code="upstream_truncated")
    if not said_something:
        StreamDrift(drift).note(EMPTY_REPLY)
    yield Delta(usage=usage or empty_usage(), finish_reason=finish_reason)


def _first_choice(choices: Any) -> dict:
    """The choice with index 0; with ``n`` > 1 an upstream interleaves several, and only one is relayed."""
    for choice in choices if isinstance(choices, list) else []:
        if isinstance(choice, dict) and choice.get("index", 0) == 0:
            return choice
    return {}


def _openai_delta(delta: dict) -> Delta | None:
    reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
    content = delta.get("content") or ""
    tool_calls = delta.get("tool_calls") or None
    if not (content or reasoning or tool_calls):
        return None
    return Delta(content=str(content), reasoning=str(reasoning), tool_calls=tool_calls)


def read_error(answer: UpstreamAnswer, credential: str) -> ApiError:
    """Pass an OpenAI-style upstream error on: client errors keep their status, the rest become 502."""
    status, body = answer.status, answer.body
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError, RecursionError):
        error = None
    if status in (401, 403):
        reason = error.get("message", "") if isinstance(error, dict) else f"HTTP {status}"
        return credential_error(credential, str(reason))
    if not isinstance(error, dict):
        trimmed = " ".join(body.split())[:ERROR_BODY_LIMIT]
        kind = answer.content_type or "no content type"
        return upstream_error(f"The upstream answered HTTP {status} ({kind}): {trimmed}")
    if status == 429:
        return _openai_error_body(error, 429, answer)
    return _openai_error_body(error, status if status in PASSED_STATUSES else 502)


def _openai_error_body(error: Any, status: int, answer: UpstreamAnswer | None = None) -> ApiError:
    if not isinstance(error, dict):
        return upstream_error(f"The upstream reported an error: {str(error)[:ERROR_BODY_LIMIT]}", status=status)
    message = str(error.get("message") or "The upstream reported an error.")[:ERROR_BODY_LIMIT]
    kind = str(error.get("type") or ("server_error" if status >= 500 else "invalid_request_error"))
    param = error.get("param") if isinstance(error.get("param"), str) else None
    code = error.get("code") if isinstance(error.get("code"), str) else None
    # A 429 keeps the upstream's Retry-After, so SDKs wait as long as it asked.
    headers = {"Retry-After": answer.retry_after} if answer is not None and answer.retry_after else {}
    return ApiError(f"The upstream said: {message}", status=status, type=kind, param=param, code=code, headers=headers)


def recognizes(path: str, body: Any) -> bool:
    is_chat_path = path.split("?")[0].endswith("/chat/completions")
    return is_chat_path and isinstance(body, dict) and isinstance(body.get("messages"), list) and "model" in body


def strip_prompt(body: dict) -> dict:
    return {**body, "messages": []}


def folder_metadata(base_url: str, path: str, create: tuple[str, Any] | None) -> dict:
    models_path = path[: -len("chat/completions")] + "models"
    return {"models_endpoint": {"method": "GET", "path": models_path, "list_field": "data", "id_field": "id"}}


DIALECT = Dialect(
    name="openai",
    prepare=prepare,
    build_payload=build_openai_payload,
    iter_deltas=iter_openai_deltas,
    read_error=read_error,
    hints=ImportHints(recognizes=recognizes, strip_prompt=strip_prompt, metadata=folder_metadata),
    native_tools=True,  # tools, tool_choice and tool results pass through in the client's own body
)
