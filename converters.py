"""OpenAI requests to provider payloads, and provider events to OpenAI objects.

Pure dict-to-dict logic: no Flask, no requests, no I/O.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
ROLE_LABELS = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
REASONING_FORMATS = ("reasoning_content", "think-tags", "hidden")
THINKING_SUFFIX = "-thinking"
FAST_MODE = {"thinking_enabled": False, "auto_thinking": False, "thinking_mode": "Fast"}
THINKING_MODE = {
    "thinking_enabled": True,
    "auto_thinking": False,
    "thinking_mode": "Thinking",
    "thinking_format": "summary",
}
HISTORY_ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}
HISTORY_GAP_SECONDS = 2
# Fields of a client's body that are for this service and never go upstream.
LOCAL_FIELDS = frozenset({"provider"})
# Upstream client errors passed on with their own status; anything else becomes 502.
PASSED_STATUSES = frozenset({400, 404, 413, 422, 429})
SYSTEM_FINGERPRINT = "fp_reverse_api"
THINK_CLOSE = "\n</think>\n\n"
ERROR_BODY_LIMIT = 300
RATE_LIMIT_CODES = frozenset({"ratelimited", "parallellimited", "quotalimited", "quota_limit", "too_many_requests"})
BROWSER_CHECK_MARKERS = ("FAIL_SYS_USER_VALIDATE", "aliyun_waf", "_____tmd_____/punish")
UNNAMED_CREDENTIAL = "the provider's credential"  # the service names the variable when it knows it
AUTH_CODES = frozenset({"unauthorized", "token_expired", "invalid_token"})


class ApiError(Exception):
    """An error answered to the client as an OpenAI error body with an HTTP status."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})
        if retryable is not None:
            # openai-python and openai-node obey this header before any status rule.
            self.headers["x-should-retry"] = "true" if retryable else "false"

    def to_dict(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def copy_json(value: Any) -> Any:
    """A copy of a JSON-like value; several times faster than copy.deepcopy on the request path."""
    if isinstance(value, dict):
        return {key: copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_json(item) for item in value]
    return value


def upstream_error(message: str, status: int = 502, code: str = "upstream_error", **kwargs: Any) -> ApiError:
    return ApiError(message, status=status, type="server_error", code=code, **kwargs)


# --- the request -----------------------------------------------------------------------


@dataclass(frozen=True)
class ChatRequest:
    """The parts of an OpenAI chat request this service acts on."""

    model: str
    messages: list[dict] = field(hash=False)
    stream: bool = False
    include_usage: bool = False
    reasoning_effort: str | None = None
    provider: str | None = None
    body: dict = field(default_factory=dict, hash=False, compare=False)


def validate_chat_request(body: Any) -> ChatRequest:
    """Check a parsed JSON body; unknown fields are ignored and null means absent."""
    if not isinstance(body, dict):
        raise ApiError("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ApiError("'model' is required and must be a non-empty string.", param="model")
    if any(ord(c) < 32 or c == "\x7f" for c in model):
        raise ApiError("'model' must not contain control characters.", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("'messages' is required and must be a non-empty array.", param="messages")
    for index, message in enumerate(messages):
        _validate_message(message, f"messages[{index}]")
    return ChatRequest(
        model=model,
        messages=messages,
        stream=_optional(body, "stream", bool, False),
        include_usage=_include_usage(body),
        reasoning_effort=_optional(body, "reasoning_effort", str, None),
        provider=_optional(body, "provider", str, None),
        body=body,
    )


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


def _optional(body: dict, key: str, kind: type, default: Any) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise ApiError(f"'{key}' must be of type {kind.__name__}.", param=key)
    return value


def _include_usage(body: dict) -> bool:
    options = _optional(body, "stream_options", dict, {})
    value = options.get("include_usage")
    if value is not None and not isinstance(value, bool):
        raise ApiError("'stream_options.include_usage' must be a boolean.", param="stream_options.include_usage")
    return bool(value)


# --- messages to one prompt --------------------------------------------------------------


def fold_messages(messages: list[dict]) -> str:
    """Fold an OpenAI conversation into one user text, as Qwen's web client sends it.

    A lone user message goes as its text unchanged; anything else gets role labels.
    """
    if len(messages) == 1 and messages[0].get("role") == "user":
        return message_text(messages[0], "messages[0]")
    blocks = [_labelled(message, f"messages[{i}]") for i, message in enumerate(messages)]
    return "\n\n".join(block for block in blocks if block)


def _labelled(message: dict, param: str) -> str:
    role = message["role"]
    text = message_text(message, param)
    if role in ("tool", "function"):
        ref = message.get("tool_call_id") or message.get("name") or ""
        return f"Tool result ({ref}):\n{text}" if ref else f"Tool result:\n{text}"
    calls = _tool_call_text(message.get("tool_calls"))
    if calls:
        text = "\n".join(t for t in (text, calls) if t)
    return f"{ROLE_LABELS[role]}: {text}" if text else ""


def _tool_call_text(tool_calls: Any) -> str:
    if not isinstance(tool_calls, list):
        return ""
    lines = []
    for call in tool_calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            lines.append(f"[called {function.get('name')}({function.get('arguments', '')})]")
    return "\n".join(lines)


def message_text(message: dict, param: str) -> str:
    """The text of a message: a string, or its text parts joined. Other parts are refused."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for index, part in enumerate(content):
        if part["type"] not in ("text", "refusal"):
            raise ApiError(
                f"Content parts of type '{part['type']}' are not supported by this provider; send text.",
                param=f"{param}.content[{index}]",
                code="unsupported_content",
            )
        texts.append(part[part["type"]])
    return "\n".join(texts)


# --- the Qwen payload --------------------------------------------------------------------


def thinking_choice(model: str, reasoning_effort: str | None) -> tuple[str, bool | None]:
    """Upstream model name and thinking switch: True, False, or None to keep the captured mode."""
    base = model
    thinking: bool | None = None
    if model.endswith(THINKING_SUFFIX):
        base, thinking = model[: -len(THINKING_SUFFIX)], True
    if reasoning_effort is not None:
        thinking = reasoning_effort != "none"
    return base, thinking


def build_qwen_payload(template: dict, model: str, text: str, thinking: bool | None, chat_id: str, now: float) -> dict:
    """Fill a captured Qwen v2 body: model, fresh ids, timestamps in seconds, the prompt text."""
    payload = copy_json(template)
    seconds = int(now)
    payload["model"] = model
    payload["timestamp"] = seconds
    for key in ("chat_id", "chatId"):
        if key in payload:
            payload[key] = chat_id
    message = _template_message(payload)
    message.update(
        content=text,
        fid=str(uuid.uuid4()),
        timestamp=seconds,
        models=[model],
    )
    if "childrenIds" in message:
        message["childrenIds"] = [str(uuid.uuid4())]
    if thinking is not None:
        feature_config = message.setdefault("feature_config", {"output_schema": "phase"})
        feature_config.update(THINKING_MODE if thinking else FAST_MODE)
        if not thinking:
            feature_config.pop("thinking_format", None)
    return payload


def _template_message(payload: dict) -> dict:
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
        payload["messages"] = [{"role": "user"}]
        return payload["messages"][0]
    del messages[1:]
    return messages[0]


def build_history_messages(template_message: dict, messages: list[dict], model: str, now: float) -> list[dict]:
    """One copy of the template message per OpenAI message, for web APIs that take the whole history.

    Timestamps increase by HISTORY_GAP_SECONDS between messages and end at ``now``.
    """
    built = []
    last = len(messages) - 1
    for index, message in enumerate(messages):
        copy_ = copy_json(template_message)
        copy_.update(
            role=HISTORY_ROLES[message["role"]],
            content=message_text(message, f"messages[{index}]"),
            timestamp=int(now - (last - index) * HISTORY_GAP_SECONDS),
        )
        for key in ("fid", "id"):
            if copy_.get(key):
                copy_[key] = str(uuid.uuid4())
        if "models" in copy_:
            copy_["models"] = [model]
        built.append(copy_)
    return built


def build_create_chat_body(template: dict | None, model: str, now: float) -> dict:
    """The body that opens a Qwen chat; ``chats/new`` takes milliseconds."""
    body = copy_json(template) if template else {}
    if "models" in body:
        body["models"] = [model]
    if "timestamp" in body:
        body["timestamp"] = int(now * 1000)
    return body


# --- Qwen events to deltas ---------------------------------------------------------------


@dataclass
class Delta:
    """One step of a reply: text for the answer or for the reasoning, or the final usage."""

    content: str = ""
    reasoning: str = ""
    usage: dict | None = None
    heartbeat: bool = False  # the upstream is alive but has nothing to say yet
    tool_calls: list | None = None  # OpenAI tool-call deltas, passed through as they came
    finish_reason: str | None = None  # set on the final usage delta when the upstream gave one


@dataclass
class _QwenState:
    finished: bool = False
    saw_reply: bool = False
    thoughts: list[str] = field(default_factory=list)
    closed_rounds: list[dict] = field(default_factory=list)
    round_usage: dict | None = None


def iter_qwen_deltas(payloads: Iterable[str]) -> Iterator[Delta]:
    """Turn Qwen SSE data payloads into deltas, ending with one usage delta.

    :raise ApiError: for an in-stream error, a frame that is not JSON, or a reply cut short.
    """
    state = _QwenState()
    for data in payloads:
        frame = _parse_frame(data)
        yield from _frame_deltas(frame, state)
    if not state.finished:
        raise upstream_error("The upstream closed the stream before the reply finished.", code="upstream_truncated")
    yield Delta(usage=_total_usage(state))


def _parse_frame(data: str) -> dict:
    try:
        frame = json.loads(data)
    except ValueError:
        raise upstream_error(f"The upstream sent an unreadable event: {data[:ERROR_BODY_LIMIT]!r}") from None
    if not isinstance(frame, dict):
        raise upstream_error(f"The upstream sent an unexpected event: {data[:ERROR_BODY_LIMIT]!r}")
    return frame


def _frame_deltas(frame: dict, state: _QwenState) -> Iterator[Delta]:
    if any(marker in str(frame.get("ret", "")) for marker in BROWSER_CHECK_MARKERS):
        raise _browser_check_error()  # the anti-bot challenge, sent as an event
    if frame.get("error"):
        raise _in_stream_error(frame["error"])
    if frame.get("success") is False:
        raise error_from_envelope(frame)
    if "response.info" in frame:
        yield Delta(heartbeat=True)
        return
    choices = frame.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return  # response.created, response.info keep-alives and other bookkeeping frames.
    delta = choices[0].get("delta")
    if not isinstance(delta, dict) or delta.get("role") == "function":
        return  # built-in tool frames (web_search results) are never content.
    _track_usage(frame.get("usage"), state)
    yield from _phase_deltas(delta, state)


def _phase_deltas(delta: dict, state: _QwenState) -> Iterator[Delta]:
    phase, status = delta.get("phase"), delta.get("status")
    content = delta.get("content") if isinstance(delta.get("content"), str) else ""
    if phase == "answer" or (phase is None and content):
        state.saw_reply = True
        state.finished = status == "finished"
        if status == "finished":
            _close_round(state)
        if content:
            yield Delta(content=content)
        return
    if status == "typing" or content:
        state.finished = False  # more is coming after a finished round (web search, then answer)
    if phase == "think" and content:
        yield Delta(reasoning=content)
    elif phase == "thinking_summary":
        new_text = _new_thoughts(delta.get("extra"), state)
        if new_text:
            yield Delta(reasoning=new_text)


def _new_thoughts(extra: Any, state: _QwenState) -> str:
    """Diff the cumulative ``summary_thought`` list so no thought is sent twice."""
    thought = extra.get("summary_thought") if isinstance(extra, dict) else None
    items = thought.get("content") if isinstance(thought, dict) else None
    if not isinstance(items, list):
        return ""
    items = [str(item) for item in items]
    old, new = "\n\n".join(state.thoughts), "\n\n".join(items)
    state.thoughts = items
    if new.startswith(old):
        added = new[len(old) :]
        return added.lstrip("\n") if not old else added
    return ""


def _track_usage(usage: Any, state: _QwenState) -> None:
    if isinstance(usage, dict) and usage:
        state.round_usage = usage


def _close_round(state: _QwenState) -> None:
    if state.round_usage is not None:
        state.closed_rounds.append(state.round_usage)
        state.round_usage = None


def _total_usage(state: _QwenState) -> dict:
    """Add up the last usage of each answer round (Qwen restarts counting per round)."""
    rounds = state.closed_rounds + ([state.round_usage] if state.round_usage else [])
    prompt = sum(_int(r.get("input_tokens")) for r in rounds)
    completion = sum(_int(r.get("output_tokens")) for r in rounds)
    reasoning = sum(_int(_dict(r.get("output_tokens_details")).get("reasoning_tokens")) for r in rounds)
    cached = sum(_int(_dict(r.get("prompt_tokens_details")).get("cached_tokens")) for r in rounds)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _in_stream_error(error: Any) -> ApiError:
    """An error frame inside the stream: known codes map as in the JSON envelope, others are 502."""
    if isinstance(error, dict):
        code = str(error.get("code") or "error")
        details = str(error.get("details") or error.get("message") or "")
        mapped = error_from_envelope({"data": {**error, "code": code, "details": details}})
        if mapped.code != "upstream_error":
            return mapped
        return upstream_error(f"The upstream reported an error: {code}: {details}"[:ERROR_BODY_LIMIT])
    return upstream_error(f"The upstream reported an error: {str(error)[:ERROR_BODY_LIMIT]}")


# --- Qwen error answers ------------------------------------------------------------------


def error_from_upstream(status: int, content_type: str, body: str, credential: str) -> ApiError:
    """Map a non-stream upstream answer (Qwen sends most errors with HTTP 200) to an ApiError."""
    if any(marker in body for marker in BROWSER_CHECK_MARKERS):
        return _browser_check_error()
    if "text/html" in content_type and status == 200:
        return _browser_check_error()  # a web page where the API should answer: a login or check page
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("success") is False:
        return error_from_envelope(data, credential)
    if status in (401, 403):
        return _credential_error(credential, f"HTTP {status}")
    if status == 429:
        return ApiError(
            "The upstream is rate limiting requests.", status=429, type="rate_limit_error", code="rate_limit_exceeded"
        )
    trimmed = " ".join(body.split())[:ERROR_BODY_LIMIT]
    return upstream_error(f"The upstream answered HTTP {status} ({content_type or 'no content type'}): {trimmed}")


def error_from_envelope(data: dict, credential: str = UNNAMED_CREDENTIAL) -> ApiError:
    """Map Qwen's ``{"success": false, "data": {"code", "details"}}`` envelope."""
    inner = data.get("data") if isinstance(data.get("data"), dict) else {}
    code = str(inner.get("code") or "")
    details = str(inner.get("details") or "")[:ERROR_BODY_LIMIT]
    lowered = code.lower()
    if lowered in RATE_LIMIT_CODES or "quota" in lowered or _mentions_rate_limit(details):
        return _rate_limit_error(code, details, inner.get("num"))
    if lowered in AUTH_CODES or "token" in details.lower() and "expired" in details.lower():
        return _credential_error(credential, details or code)
    return upstream_error(f"The upstream refused the request: {code}: {details}".rstrip(": "))


def _mentions_rate_limit(details: str) -> bool:
    lowered = details.lower()
    return "upper limit" in lowered or "rate limit" in lowered or "too many requests" in lowered


def _rate_limit_error(code: str, details: str, hours: Any) -> ApiError:
    headers = {}
    if isinstance(hours, (int, float)) and not isinstance(hours, bool) and hours > 0:
        headers["Retry-After"] = str(int(hours * 3600))
    quota = "quota" in code.lower() or "upper limit" in details.lower()
    return ApiError(
        f"The upstream is rate limiting this account: {code}: {details}".rstrip(": "),
        status=429,
        type="insufficient_quota" if quota else "rate_limit_error",
        code="insufficient_quota" if quota else "rate_limit_exceeded",
        headers=headers,
    )


def _credential_error(credential: str, reason: str) -> ApiError:
    return ApiError(
        f"The upstream rejected the provider credential ({reason[:ERROR_BODY_LIMIT]}). "
        f"Refresh {credential} from a logged-in browser session.",
        status=401,
        type="authentication_error",
        code="upstream_credential_rejected",
        retryable=False,
    )


def _browser_check_error() -> ApiError:
    return upstream_error(
        "The upstream asked for a browser check (anti-bot challenge). Open the site in a browser, "
        "pass the check, then capture fresh headers.",
        status=503,
        code="upstream_browser_check",
        retryable=False,
    )


# --- deltas to OpenAI objects ------------------------------------------------------------


@dataclass(frozen=True)
class CompletionMeta:
    """What every chunk of one completion repeats."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, model: str) -> CompletionMeta:
        return cls(id="chatcmpl-" + uuid.uuid4().hex, created=int(time.time()), model=model)


def iter_reasoning_format(deltas: Iterable[Delta], reasoning_format: str) -> Iterator[Delta]:
    """Apply REASONING_FORMAT: keep reasoning apart, wrap it in <think> tags, or drop it."""
    if reasoning_format == "reasoning_content":
        yield from deltas
        return
    thinking = False
    for delta in deltas:
        if delta.heartbeat:
            yield delta
            continue
        if reasoning_format == "hidden" or delta.usage is not None or delta.tool_calls:
            if thinking:  # reasoning with nothing but calls or the end after it: close the tag all the same
                yield Delta(content=THINK_CLOSE)
                thinking = False
            if delta.content or delta.usage is not None or delta.tool_calls:
                yield replace(delta, reasoning="")  # tool calls, usage and finish reason kept
            continue
        text, thinking = _think_tagged(delta, thinking)
        if text:
            yield Delta(content=text)


def _think_tagged(delta: Delta, thinking: bool) -> tuple[str, bool]:
    text = ""
    if delta.reasoning:
        text = ("" if thinking else "<think>\n") + delta.reasoning
        thinking = True
    if delta.content:
        text += (THINK_CLOSE if thinking else "") + delta.content
        thinking = False
    return text, thinking


def iter_chunks(deltas: Iterable[Delta], meta: CompletionMeta, include_usage: bool) -> Iterator[dict | None]:
    """OpenAI ``chat.completion.chunk`` dicts: role first, deltas, finish, then optional usage.

    ``None`` stands for an upstream keep-alive, relayed as an SSE comment.
    """
    usage_field = {"usage": None} if include_usage else {}
    yield chunk_from_delta(meta, {"role": "assistant", "content": ""}, None, usage_field)
    usage, finish_reason = None, "stop"
    for delta in deltas:
        if delta.usage is not None:
            usage, finish_reason = delta.usage, delta.finish_reason or "stop"
            continue
        if delta.heartbeat:
            yield None
            continue
        yield chunk_from_delta(meta, _delta_fields(delta), None, usage_field)
    yield chunk_from_delta(meta, {}, finish_reason, usage_field)
    if include_usage:
        yield {**_chunk_head(meta), "choices": [], "usage": usage or _empty_usage()}


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
        _merge_tool_calls(tool_calls, delta.tool_calls or [])
        if delta.usage is not None:
            usage, finish_reason = delta.usage, delta.finish_reason or "stop"
    message = {"role": "assistant", "content": "".join(content), "refusal": None, "annotations": []}
    if any(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    if tool_calls:
        message["tool_calls"] = [tool_calls[index] for index in sorted(tool_calls)]
        message["content"] = message["content"] or None
    return {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": usage or _empty_usage(),
    }


def _merge_tool_calls(calls: dict[int, dict], deltas: list) -> None:
    """Join streamed tool-call fragments by index, as the OpenAI SDK's accumulator does."""
    for fragment in deltas:
        if not isinstance(fragment, dict):
            continue
        call = calls.setdefault(
            _int(fragment.get("index")), {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        call["id"] = _str(fragment.get("id")) or call["id"]
        call["type"] = _str(fragment.get("type")) or call["type"]
        function = _dict(fragment.get("function"))
        call["function"]["name"] += _str(function.get("name"))
        call["function"]["arguments"] += _str(function.get("arguments"))


def _empty_usage() -> dict:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


# --- OpenAI-compatible upstreams ---------------------------------------------------------


def build_openai_payload(template: dict, chat_request: ChatRequest, call: UpstreamCall) -> dict:
    """The client's own body over the captured defaults: only the model changes, and it always streams."""
    payload = copy_json(template)
    payload.update({key: value for key, value in chat_request.body.items() if key not in LOCAL_FIELDS})
    payload["model"] = call.model
    payload["stream"] = True
    # Ask for usage even when the client did not, so non-streaming answers have it too.
    payload["stream_options"] = {**(chat_request.body.get("stream_options") or {}), "include_usage": True}
    return payload


def iter_openai_deltas(payloads: Iterable[str]) -> Iterator[Delta]:
    """Turn an OpenAI-compatible chunk stream into deltas, ending with usage and finish reason."""
    usage, finish_reason = None, None
    for data in payloads:
        chunk = _parse_frame(data)
        if chunk.get("error"):
            raise _openai_error_body(chunk["error"], 502)
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        choice = _first_choice(chunk.get("choices"))
        found = _openai_delta(_dict(choice.get("delta")))
        if found:
            yield found
        finish_reason = _str(choice.get("finish_reason")) or finish_reason
    if finish_reason is None:
        raise upstream_error("The upstream closed the stream before the reply finished.", code="upstream_truncated")
    yield Delta(usage=usage or _empty_usage(), finish_reason=finish_reason)


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


def error_from_openai_upstream(status: int, content_type: str, body: str, credential: str) -> ApiError:
    """Pass an OpenAI-style upstream error on: client errors keep their status, the rest become 502."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        error = None
    if status in (401, 403):
        reason = error.get("message", "") if isinstance(error, dict) else f"HTTP {status}"
        return _credential_error(credential, str(reason))
    if not isinstance(error, dict):
        trimmed = " ".join(body.split())[:ERROR_BODY_LIMIT]
        return upstream_error(f"The upstream answered HTTP {status} ({content_type or 'no content type'}): {trimmed}")
    return _openai_error_body(error, status if status in PASSED_STATUSES else 502)


def _openai_error_body(error: Any, status: int) -> ApiError:
    if not isinstance(error, dict):
        return upstream_error(f"The upstream reported an error: {str(error)[:ERROR_BODY_LIMIT]}", status=status)
    message = str(error.get("message") or "The upstream reported an error.")[:ERROR_BODY_LIMIT]
    kind = str(error.get("type") or ("server_error" if status >= 500 else "invalid_request_error"))
    param = error.get("param") if isinstance(error.get("param"), str) else None
    code = error.get("code") if isinstance(error.get("code"), str) else None
    return ApiError(f"The upstream said: {message}", status=status, type=kind, param=param, code=code)


# --- dialects ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpstreamCall:
    """What one upstream call needs besides the client's request."""

    model: str
    chat_id: str = ""
    now: float = 0.0
    history: bool = False  # send every message (True) or fold them into one (False)


def build_qwen_request(template: dict, chat_request: ChatRequest, call: UpstreamCall) -> dict:
    """Qwen's v2 body for a chat request, in one-message or whole-history mode."""
    _, thinking = thinking_choice(chat_request.model, chat_request.reasoning_effort)
    text = "" if call.history else fold_messages(chat_request.messages)
    payload = build_qwen_payload(template, call.model, text, thinking, call.chat_id, call.now)
    if call.history:
        template_message = payload["messages"][0]
        payload["messages"] = build_history_messages(template_message, chat_request.messages, call.model, call.now)
    return payload


def check_text_only(chat_request: ChatRequest) -> None:
    """Refuse content this web chat cannot take, before anything is sent upstream."""
    for index, message in enumerate(chat_request.messages):
        message_text(message, f"messages[{index}]")


def accept_all(chat_request: ChatRequest) -> None:
    """An OpenAI-compatible upstream judges the request itself."""


def qwen_model(chat_request: ChatRequest) -> str:
    return thinking_choice(chat_request.model, chat_request.reasoning_effort)[0]


def same_model(chat_request: ChatRequest) -> str:
    return chat_request.model


@dataclass(frozen=True)
class Dialect:
    """How to speak to one family of upstreams: what it accepts, model name, body, stream, errors."""

    check_request: Callable[[ChatRequest], None]
    upstream_model: Callable[[ChatRequest], str]
    build_payload: Callable[[dict, ChatRequest, UpstreamCall], dict]
    iter_deltas: Callable[[Iterable[str]], Iterator[Delta]]
    error_from_answer: Callable[[int, str, str, str], ApiError]


# A provider's metadata.json names one of these; adding a dialect is one entry here.
DIALECTS = {
    "qwen": Dialect(check_text_only, qwen_model, build_qwen_request, iter_qwen_deltas, error_from_upstream),
    "openai": Dialect(accept_all, same_model, build_openai_payload, iter_openai_deltas, error_from_openai_upstream),
}
