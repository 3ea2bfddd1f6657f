"""The Anthropic front: ``/v1/messages`` and ``/v1/messages/count_tokens``, as Claude Code and the
``anthropic`` SDK speak them, parsed into the neutral contract.

Replies, stream events and errors are rendered by ``fronts.anthropic_render``. The key may come
as ``x-api-key`` (the SDK's way) or ``Authorization: Bearer``.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, Response, current_app, jsonify

from converters import MAX_REPLY_BYTES, ApiError, ChatRequest, ContentPart, Message, ToolCall, iter_bounded
from fronts.anthropic_render import (
    MessageMeta,
    error_response,
    estimate_tokens,
    iter_stream_body,
    message_from_events,
)
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
from keepalive import Watch
from pipeline import start_watched_reply
from reply_blocks import iter_blocks, iter_until_stop_sequence
from routing import resolve_provider

ACCEPTS_X_API_KEY = True  # the Anthropic SDK sends the key as x-api-key
ROLES = frozenset({"user", "assistant"})
# Claude's history carries its reasoning back; the upstream chat holds its own, so it is left out.
SKIPPED_BLOCKS = frozenset({"thinking", "redacted_thinking"})
# Anthropic's thinking switch in reasoning_effort's terms (any effort but "none" turns it on).
THINKING_EFFORT = {"enabled": "medium", "adaptive": "medium", "disabled": "none"}
TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}

__all__ = ["error_response", "owns", "parse_messages_request", "register"]


def register(app: Flask) -> None:
    app.add_url_rule("/v1/messages", view_func=create_message, methods=["POST"])
    app.add_url_rule("/v1/messages/count_tokens", view_func=count_tokens, methods=["POST"])


def owns(path: str) -> bool:
    return path == "/v1/messages" or path.startswith("/v1/messages/")


# --- views -------------------------------------------------------------------------------


def create_message() -> Response:
    scope = request_scope()
    body = json_body()
    chat_request = parse_messages_request(body)
    stop_sequences = _stop_sequences(body)
    provider = resolve_provider(scope.registry, scope.models, chat_request.provider, chat_request.model)
    meta = MessageMeta.new(chat_request.model, estimate_tokens(chat_request))
    config = current_app.config
    watch = Watch(
        config["KEEPALIVE_SECONDS"] if chat_request.stream else 0.0, config["REQUEST_TIMEOUT"], client_gone_check()
    )
    deltas = start_watched_reply(scope, provider, chat_request, block_reasoning_format(config), watch)
    if chat_request.stream:
        set_write_timeout(config["CLIENT_TIMEOUT"])  # a client that stops reading is dropped
        events = iter_until_stop_sequence(iter_blocks(deltas), stop_sequences)
        return stream_response(iter_stream_body(events, deltas, meta, scope.redact), deltas)
    try:
        events = iter_until_stop_sequence(iter_blocks(iter_bounded(deltas, MAX_REPLY_BYTES)), stop_sequences)
        return jsonify(message_from_events(events, meta))
    finally:
        deltas.close()  # a stop sequence leaves the rest of the upstream's answer unread


def count_tokens() -> Response:
    """An estimate (see ``estimate_tokens``): web chats report no count before they answer."""
    chat_request = parse_messages_request(json_body(), needs_max_tokens=False)
    return jsonify({"input_tokens": estimate_tokens(chat_request)})


# --- the request -------------------------------------------------------------------------


def parse_messages_request(body: Any, needs_max_tokens: bool = True) -> ChatRequest:
    """Check a Messages body and normalise it; unknown fields (``metadata``, ``temperature``,
    ``cache_control`` on blocks...) are accepted and ignored."""
    if not isinstance(body, dict):
        raise ApiError("The request body must be a JSON object.")
    model = model_field(body)
    if needs_max_tokens:
        _check_max_tokens(body.get("max_tokens"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages: a non-empty array is required.", param="messages")
    tools, tool_choice, parallel = _tools_of(body)
    return ChatRequest(
        model=model,
        messages=(*_system_messages(body.get("system")), *_conversation(messages)),
        stream=optional_field(body, "stream", bool, False),
        reasoning_effort=_thinking_effort(body.get("thinking")),
        provider=optional_field(body, "provider", str, None),
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
    )


def _check_max_tokens(value: Any) -> None:
    if value is None:
        raise ApiError("max_tokens: Field required.", param="max_tokens")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ApiError("max_tokens: must be a positive integer.", param="max_tokens")


def _system_messages(system: Any) -> tuple[Message, ...]:
    if system is None or system == "":
        return ()
    if isinstance(system, str):
        return (Message("system", (ContentPart("text", system),)),)
    if not isinstance(system, list):
        raise ApiError("system: must be a string or an array of text blocks.", param="system")
    for index, block in enumerate(system):
        if not (isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)):
            raise ApiError(f"system.{index}: must be a text block.", param=f"system.{index}")
    texts = tuple(ContentPart("text", block["text"]) for block in system)
    return (Message("system", texts),) if texts else ()


def _conversation(messages: list) -> list[Message]:
    found: list[Message] = []
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ApiError(f"{where}.role: must be 'user' or 'assistant'.", param=f"{where}.role")
        found.extend(_messages_of(message["role"], _blocks(message.get("content"), where), where))
    return found


def _blocks(content: Any, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ApiError(f"{where}.content: must be a string or an array of blocks.", param=f"{where}.content")
    for number, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise ApiError(f"{where}.content.{number}: must be a block with a type.", param=f"{where}.content.{number}")
    return content


def _messages_of(role: str, blocks: list[dict], where: str) -> list[Message]:
    """One Anthropic turn as neutral messages: its tool results first (each a ``tool`` message),
    then what the turn says, with an assistant's tool uses as its calls."""
    results = [
        _tool_result(block, f"{where}.content.{n}") for n, block in enumerate(blocks) if block["type"] == "tool_result"
    ]
    calls = tuple(
        _tool_call(block, f"{where}.content.{n}") for n, block in enumerate(blocks) if block["type"] == "tool_use"
    )
    said = [block for block in blocks if block["type"] not in ("tool_result", "tool_use", *SKIPPED_BLOCKS)]
    parts = tuple(_part(block, f"{where}.content.{n}") for n, block in enumerate(said))
    if role == "user" and results and not parts:
        return results
    return [*results, Message(role, parts, tool_calls=calls)]


def _part(block: dict, where: str) -> ContentPart:
    if block["type"] == "text":
        if not isinstance(block.get("text"), str):
            raise ApiError(f"{where}.text: must be a string.", param=f"{where}.text")
        return ContentPart("text", block["text"])
    return ContentPart(block["type"], raw=block)  # images, documents: refused by text-only dialects


def _tool_call(block: dict, where: str) -> ToolCall:
    name, arguments = block.get("name"), block.get("input", {})
    if not isinstance(name, str) or not isinstance(arguments, dict):
        raise ApiError(f"{where}: a tool_use block needs a string name and an object input.", param=where)
    return ToolCall(str(block.get("id") or ""), name, json.dumps(arguments, ensure_ascii=False))


def _tool_result(block: dict, where: str) -> Message:
    content = block.get("content", "")
    blocks = _blocks(content, where) if content != "" else []
    parts = tuple(_part(item, f"{where}.content.{n}") for n, item in enumerate(blocks))
    if block.get("is_error") is True:
        parts = (ContentPart("text", "[the tool reported an error]"), *parts)
    return Message("tool", parts, tool_call_id=str(block.get("tool_use_id") or ""))


def _tools_of(body: dict) -> tuple[tuple[dict, ...], Any, bool]:
    """Anthropic's tools and tool_choice in OpenAI's shape, which the tool layer reads."""
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise ApiError("tools: must be an array of tools.", param="tools", code="invalid_tool")
    converted = tuple(_function_tool(tool) for tool in tools or ())
    choice = body.get("tool_choice")
    if choice is None:
        return converted, None, True
    if not isinstance(choice, dict) or choice.get("type") not in (*TOOL_CHOICE, "tool"):
        raise ApiError("tool_choice.type: must be one of auto, any, tool, none.", param="tool_choice")
    parallel = choice.get("disable_parallel_tool_use") is not True
    if choice["type"] == "tool":
        return converted, {"type": "function", "function": {"name": choice.get("name")}}, parallel
    return converted, TOOL_CHOICE[choice["type"]], parallel


def _function_tool(tool: Any) -> dict:
    """A client tool as an OpenAI function; a server tool (``web_search_...``) keeps its own type,
    which the tool layer skips: nothing a prompt can run."""
    if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
        return tool if isinstance(tool, dict) else {"type": "function", "function": tool}
    function = {"name": tool.get("name"), "parameters": tool.get("input_schema", {"type": "object"})}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _thinking_effort(thinking: Any) -> str | None:
    if thinking is None:
        return None
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind not in THINKING_EFFORT:
        raise ApiError("thinking.type: must be one of enabled, adaptive, disabled.", param="thinking")
    return THINKING_EFFORT[kind]


def _stop_sequences(body: dict) -> tuple[str, ...]:
    sequences = body.get("stop_sequences")
    if sequences is None:
        return ()
    if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
        raise ApiError("stop_sequences: must be an array of strings.", param="stop_sequences")
    return tuple(sequences)
