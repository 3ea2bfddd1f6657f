"""The OpenAI front: ``/v1/chat/completions`` and ``/v1/models``, parsed into the neutral contract.

Requests are checked and normalised here (``parse_chat_request``); replies and errors are
rendered by ``fronts.openai_render``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, current_app, jsonify

from converters import MAX_REPLY_BYTES, ApiError, ChatRequest, ContentPart, Message, ToolCall, iter_bounded
from fronts.http import (
    client_gone_check,
    json_body,
    model_field,
    optional_field,
    request_scope,
    services,
    set_write_timeout,
    stream_response,
)
from fronts.openai_render import (
    CompletionMeta,
    completion_from_deltas,
    error_response,
    iter_stream_body,
)
from keepalive import Watch
from pipeline import start_watched_reply
from provider_loader import Provider
from routing import check_model_known, find_provider, resolve_provider, sorted_providers
from services import RequestScope

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# OpenAI's older spellings of the neutral roles.
ROLE_ALIASES = {"developer": "system", "function": "tool"}

__all__ = ["error_response", "owns", "parse_chat_request", "register"]

ACCEPTS_X_API_KEY = False  # the key comes as Authorization: Bearer


def register(app: Flask) -> None:
    app.add_url_rule("/v1/models", view_func=list_models, methods=["GET"])
    app.add_url_rule("/v1/models/<path:model_id>", view_func=retrieve_model, methods=["GET"])
    app.add_url_rule("/v1/chat/completions", view_func=chat_completions, methods=["POST"])


def owns(path: str) -> bool:
    """Every path is this front's unless another claims it: OpenAI's error shape is the default."""
    return True


# --- views -------------------------------------------------------------------------------


def chat_completions() -> Response:
    scope = request_scope()
    body = json_body()
    chat_request = parse_chat_request(body)
    response = _answer(scope, chat_request)
    ignored = ignored_fields(body)
    if ignored:  # so a user can see why the answer differs from what OpenAI would give
        response.headers["x-ignored-fields"] = ", ".join(ignored)
    return response


def _answer(scope: RequestScope, chat_request: ChatRequest) -> Response:
    provider = resolve_provider(scope.registry, scope.models, chat_request.provider, chat_request.model)
    meta = CompletionMeta.new(chat_request.model)
    config = current_app.config
    keepalive = config["KEEPALIVE_SECONDS"] if chat_request.stream else 0.0
    watch = Watch(keepalive, config["REQUEST_TIMEOUT"], client_gone_check())
    deltas = start_watched_reply(scope, provider, chat_request, config["REASONING_FORMAT"], watch)
    if chat_request.stream:
        # A client that stops reading blocks our writes: past CLIENT_TIMEOUT it is dropped, and
        # its upstream with it, rather than holding both past REQUEST_TIMEOUT.
        set_write_timeout(config["CLIENT_TIMEOUT"])
        return stream_response(iter_stream_body(deltas, meta, chat_request.include_usage, scope.redact), deltas)
    return jsonify(completion_from_deltas(iter_bounded(deltas, MAX_REPLY_BYTES), meta))


def list_models() -> Response:
    scope = request_scope()
    providers = sorted_providers(scope.registry)
    ids = scope.models.ids(providers, services().fetch_model_ids)
    data = [model_object(model, provider) for provider in providers for model in ids[provider.name]]
    return jsonify({"object": "list", "data": data})


def retrieve_model(model_id: str) -> Response:
    scope = request_scope()
    provider = find_provider(scope.registry, scope.models, model_id)
    if provider is None:
        raise ApiError(f"The model '{model_id}' does not exist.", status=404, param="model", code="model_not_found")
    check_model_known(scope.models, provider, model_id)  # what a chat with this model would be told
    return jsonify(model_object(model_id, provider))


def model_object(model_id: str, provider: Provider) -> dict:
    return {"id": model_id, "object": "model", "created": provider.created, "owned_by": provider.owned_by}


# --- the request -------------------------------------------------------------------------


def ignored_fields(body: dict) -> list[str]:
    """Fields the upstream cannot honour that change what an answer is: more than one choice,
    JSON asked for by response_format, log probabilities. (The rest of what is ignored, such as
    temperature, changes how an answer reads, not what it is.)"""
    ignored = []
    if isinstance(body.get("n"), int) and body["n"] > 1:
        ignored.append("n")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema"):
        ignored.append("response_format")
    if body.get("logprobs") is True or body.get("top_logprobs"):
        ignored.append("logprobs")
    return ignored


def parse_chat_request(body: Any) -> ChatRequest:
    """Check a parsed JSON body and normalise it; unknown fields are ignored and null means absent."""
    if not isinstance(body, dict):
        raise ApiError("The request body must be a JSON object.")
    model = model_field(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("'messages' is required and must be a non-empty array.", param="messages")
    for index, message in enumerate(messages):
        _validate_message(message, f"messages[{index}]")
    tools, tool_choice = _tools_of(body)
    return ChatRequest(
        model=model,
        messages=tuple(_message(message) for message in messages),
        stream=optional_field(body, "stream", bool, False),
        include_usage=_include_usage(body),
        reasoning_effort=optional_field(body, "reasoning_effort", str, None),
        provider=optional_field(body, "provider", str, None),
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=optional_field(body, "parallel_tool_calls", bool, True),
        passthrough=body,
    )


def _tools_of(body: dict) -> tuple[tuple, Any]:
    """``tools`` and ``tool_choice``; the deprecated ``functions`` and ``function_call`` read as them."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None and isinstance(body.get("functions"), list):
        tools = [{"type": "function", "function": f} for f in body["functions"]]
        legacy = body.get("function_call")
        choice = {"type": "function", "function": legacy} if isinstance(legacy, dict) else legacy
    if tools is not None and not isinstance(tools, list):
        raise ApiError("'tools' must be an array of tools.", param="tools", code="invalid_tool")
    return tuple(tools or ()), choice


def _validate_message(message: Any, param: str) -> None:
    if not isinstance(message, dict):
        raise ApiError(f"'{param}' must be an object.", param=param)
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        allowed = ", ".join(sorted(ROLES))
        raise ApiError(f"'{param}.role' must be one of: {allowed}.", param=f"{param}.role")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise ApiError(f"'{param}.content' must be a string or an array of parts.", param=f"{param}.content")
    for index, part in enumerate(content):
        _validate_part(part, f"{param}.content[{index}]")


def _validate_part(part: Any, param: str) -> None:
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise ApiError(f"'{param}' must be an object with a string 'type'.", param=param)
    if part["type"] in ("text", "refusal") and not isinstance(part.get(part["type"]), str):
        raise ApiError(f"'{param}.{part['type']}' must be a string.", param=f"{param}.{part['type']}")


def _message(message: dict) -> Message:
    """A checked OpenAI message in neutral terms."""
    return Message(
        role=ROLE_ALIASES.get(message["role"], message["role"]),
        parts=_parts(message.get("content")),
        tool_calls=_tool_calls(message.get("tool_calls")),
        tool_call_id=_reference(message.get("tool_call_id")),
        name=_reference(message.get("name")),
    )


def _parts(content: Any) -> tuple[ContentPart, ...]:
    if content is None:
        return ()
    if isinstance(content, str):
        return (ContentPart("text", content),)
    return tuple(
        ContentPart(part["type"], part[part["type"]])
        if part["type"] in ("text", "refusal")
        else ContentPart(part["type"], raw=part)
        for part in content
    )


def _tool_calls(calls: Any) -> tuple[ToolCall, ...]:
    """Earlier calls of the assistant; entries of another shape carry nothing to fold and are skipped."""
    if not isinstance(calls, list):
        return ()
    found = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            found.append(
                ToolCall(_reference(call.get("id")), str(function.get("name")), str(function.get("arguments", "")))
            )
    return tuple(found)


def _reference(value: Any) -> str:
    return str(value) if value else ""


def _include_usage(body: dict) -> bool:
    options = optional_field(body, "stream_options", dict, {})
    value = options.get("include_usage")
    if value is not None and not isinstance(value, bool):
        raise ApiError("'stream_options.include_usage' must be a boolean.", param="stream_options.include_usage")
    return bool(value)
