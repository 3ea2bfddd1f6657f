"""The Responses front: ``/v1/responses``, as Codex and ``client.responses`` speak it, parsed into
the neutral contract.

Response objects, stream events and ``response.failed`` are rendered by ``fronts.responses_render``;
errors before the first byte are OpenAI error bodies (the chat front's). Nothing is stored.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, current_app, jsonify

from converters import MAX_REPLY_BYTES, ApiError, ChatRequest, ContentPart, Message, ToolCall, iter_bounded
from fronts.http import (
    block_reasoning_format,
    client_gone_check,
    json_body,
    model_field,
    optional_field,
    request_scope,
    set_write_timeout,
    stream_response,
)
from fronts.openai_render import error_response
from fronts.responses_render import ResponseMeta, iter_stream_body, response_from_events
from keepalive import Watch
from pipeline import start_watched_reply
from reply_blocks import iter_blocks
from routing import resolve_provider

ACCEPTS_X_API_KEY = False  # the key comes as Authorization: Bearer
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text", "refusal"})

__all__ = ["error_response", "owns", "parse_responses_request", "register"]


def register(app: Flask) -> None:
    app.add_url_rule("/v1/responses", view_func=create_response, methods=["POST"])
    app.add_url_rule("/v1/responses", view_func=refuse_websocket, methods=["GET"])
    # Werkzeug routes an upgrade request to WebSocket rules alone: the refusal is one too.
    app.add_url_rule("/v1/responses", "refuse_websocket_upgrade", refuse_websocket, methods=["GET"], websocket=True)


def owns(path: str) -> bool:
    return False  # OpenAI's error shape: the chat front's, the default


# --- views -------------------------------------------------------------------------------


def create_response() -> Response:
    scope = request_scope()
    body = json_body()
    chat_request = parse_responses_request(body)
    provider = resolve_provider(scope.registry, scope.models, chat_request.provider, chat_request.model)
    meta = ResponseMeta.new(body, chat_request)
    config = current_app.config
    keepalive = config["KEEPALIVE_SECONDS"] if chat_request.stream else 0.0
    watch = Watch(keepalive, config["REQUEST_TIMEOUT"], client_gone_check())
    deltas = start_watched_reply(scope, provider, chat_request, block_reasoning_format(config), watch)
    if chat_request.stream:
        set_write_timeout(config["CLIENT_TIMEOUT"])  # a client that stops reading is dropped
        return stream_response(iter_stream_body(iter_blocks(deltas), deltas, meta, scope.redact), deltas)
    try:
        return jsonify(response_from_events(iter_blocks(iter_bounded(deltas, MAX_REPLY_BYTES)), meta))
    finally:
        deltas.close()


def refuse_websocket() -> Response:
    """Codex may try Responses over a WebSocket first; refused at once, it streams over HTTP."""
    raise ApiError(
        "This service serves /v1/responses over HTTP streaming (POST) only, not over a WebSocket. "
        "Codex: set supports_websockets = false in the model_providers entry (the default for custom providers).",
        status=405,
        code="websocket_not_supported",
        headers={"Allow": "POST"},
    )


# --- the request -------------------------------------------------------------------------


def parse_responses_request(body: Any) -> ChatRequest:
    """Check a Responses body and normalise it; unknown fields are accepted and ignored."""
    if not isinstance(body, dict):
        raise ApiError("The request body must be a JSON object.")
    model = model_field(body)
    if body.get("previous_response_id") is not None:
        raise ApiError(
            "previous_response_id is not supported: this service stores no responses. Send the whole "
            "conversation in 'input' (the service continues the upstream chat by itself).",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise ApiError("'tools' must be an array of tools.", param="tools", code="invalid_tool")
    return ChatRequest(
        model=model,
        messages=(*_instructions(body.get("instructions")), *_input_messages(body.get("input"))),
        stream=optional_field(body, "stream", bool, False),
        reasoning_effort=_reasoning_effort(body.get("reasoning")),
        provider=optional_field(body, "provider", str, None),
        tools=tuple(tools or ()),
        tool_choice=body.get("tool_choice"),
        parallel_tool_calls=optional_field(body, "parallel_tool_calls", bool, True),
    )


def _instructions(instructions: Any) -> tuple[Message, ...]:
    if instructions is None or instructions == "":
        return ()
    if not isinstance(instructions, str):
        raise ApiError("'instructions' must be a string.", param="instructions")
    return (Message("system", (ContentPart("text", instructions),)),)


def _input_messages(value: Any) -> list[Message]:
    if isinstance(value, str):
        return [Message("user", (ContentPart("text", value),))]
    if not isinstance(value, list) or not value:
        raise ApiError("'input' is required: a string or a non-empty array of items.", param="input")
    messages: list[Message] = []
    for index, item in enumerate(value):
        _add_item(messages, item, f"input[{index}]")
    return messages


def _add_item(messages: list[Message], item: Any, where: str) -> None:
    """One input item onto the conversation; calls join the assistant turn before them, as chat
    completions carry them (one assistant message with its calls)."""
    kind = item.get("type", "message") if isinstance(item, dict) else None
    if kind == "message":
        messages.append(_message(item, where))
    elif kind == "function_call":
        _add_call(messages, _call(item, where))
    elif kind == "function_call_output":
        messages.append(_call_output(item, where))
    elif kind != "reasoning":  # its summary and encrypted_content are the upstream's own business
        shown = kind if isinstance(kind, str) else type(item).__name__
        raise ApiError(f"'{where}' is an item of type '{shown}', which this service does not take.", param=where)


def _message(item: dict, where: str) -> Message:
    role = item.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise ApiError(f"'{where}.role' must be one of: {', '.join(ROLES)}.", param=f"{where}.role")
    content = item.get("content")
    if isinstance(content, str):
        return Message(ROLES[role], (ContentPart("text", content),))
    if not isinstance(content, list):
        raise ApiError(f"'{where}.content' must be a string or an array of parts.", param=f"{where}.content")
    return Message(ROLES[role], tuple(_part(part, f"{where}.content[{n}]") for n, part in enumerate(content)))


def _part(part: Any, where: str) -> ContentPart:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise ApiError(f"'{where}' must be an object with a string 'type'.", param=where)
    if part["type"] not in TEXT_PARTS:
        return ContentPart(part["type"], raw=part)  # images, files: refused by text-only dialects
    text = part.get("text", part.get("refusal"))
    if not isinstance(text, str):
        raise ApiError(f"'{where}.text' must be a string.", param=f"{where}.text")
    return ContentPart("text", text)


def _call(item: dict, where: str) -> ToolCall:
    call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments", "")
    if not all(isinstance(value, str) for value in (call_id, name, arguments)):
        raise ApiError(f"'{where}': a function_call needs string call_id, name and arguments.", param=where)
    return ToolCall(call_id, name, arguments)


def _add_call(messages: list[Message], call: ToolCall) -> None:
    last = messages[-1] if messages else None
    if last is not None and last.role == "assistant":
        messages[-1] = Message("assistant", last.parts, tool_calls=(*last.tool_calls, call))
    else:
        messages.append(Message("assistant", tool_calls=(call,)))


def _call_output(item: dict, where: str) -> Message:
    call_id, output = item.get("call_id"), item.get("output")
    if not isinstance(call_id, str):
        raise ApiError(f"'{where}.call_id' must be a string.", param=f"{where}.call_id")
    if isinstance(output, str):
        parts = (ContentPart("text", output),)
    elif isinstance(output, list):
        parts = tuple(_part(part, f"{where}.output[{n}]") for n, part in enumerate(output))
    else:
        raise ApiError(f"'{where}.output' must be a string or an array of parts.", param=f"{where}.output")
    return Message("tool", parts, tool_call_id=call_id)


def _reasoning_effort(reasoning: Any) -> str | None:
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise ApiError("'reasoning' must be an object.", param="reasoning")
    effort = reasoning.get("effort")
    if effort is not None and not isinstance(effort, str):
        raise ApiError("'reasoning.effort' must be a string.", param="reasoning.effort")
    return effort
