"""The ``qwen`` dialect: chat.qwen.ai's v2 web API, from payload to stream frames and error answers.

Upstream quirks are commented where they are handled; README "Dialects" says what each part does.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import json_codec
from converters import (
    CHAT_GONE,
    ApiError,
    ChatRequest,
    Delta,
    Message,
    as_dict,
    as_int,
    copy_json,
    fold_messages,
    message_texts,
    upstream_error,
)
from dialects.contract import Dialect, Plan, UpstreamAnswer, UpstreamCall
from dialects.qwen_import import IMPORT_HINTS
from drift import DROPPED_CANDIDATE, EMPTY_REPLY, UNKNOWN_KEY, UNKNOWN_PHASE, ZERO_OUTPUT_ROUND, DriftLog, StreamDrift

THINKING_SUFFIX = "-thinking"
FAST_MODE = {"thinking_enabled": False, "auto_thinking": False, "thinking_mode": "Fast"}
THINKING_MODE = {
    "thinking_enabled": True,
    "auto_thinking": False,
    "thinking_mode": "Thinking",
    "thinking_format": "summary",
}
HISTORY_GAP_SECONDS = 2
ERROR_BODY_LIMIT = 300
RATE_LIMIT_CODES = frozenset({"ratelimited", "parallellimited", "quotalimited", "quota_limit", "too_many_requests"})
BROWSER_CHECK_MARKERS = ("FAIL_SYS_USER_VALIDATE", "aliyun_waf", "_____tmd_____/punish")
UNNAMED_CREDENTIAL = "the provider's credential"
AUTH_CODES = frozenset({"unauthorized", "token_expired", "invalid_token"})
CHAT_GONE_CODES = frozenset({"chat_not_found", "parent_not_found", "not_found"})
# What an ordinary stream holds; anything else is counted as drift (see drift.py).
KNOWN_FRAME_KEYS = frozenset({"choices", "response_id", "usage", "timestamp"})
KNOWN_DELTA_KEYS = frozenset({"role", "content", "phase", "status", "extra", "function_call", "function_id", "name"})
KNOWN_PHASES = frozenset({"answer", "think", "thinking_summary", "web_search", None})


# --- the request ---------------------------------------------------------------------------


@dataclass(frozen=True)
class QwenNotes:
    """The thinking switch and the checked texts, computed once per request."""

    thinking: bool | None
    texts: list[str]
    prompt: str  # the folded conversation; empty in history mode


def thinking_choice(model: str, reasoning_effort: str | None) -> tuple[str, bool | None]:
    """Upstream model name and thinking switch: True, False, or None to keep the captured mode."""
    base = model
    thinking: bool | None = None
    if model.endswith(THINKING_SUFFIX):
        base, thinking = model[: -len(THINKING_SUFFIX)], True
    if reasoning_effort is not None:
        thinking = reasoning_effort != "none"
    return base, thinking


def prepare(chat_request: ChatRequest, history: bool) -> Plan:
    """Refuse content this web chat cannot take, before anything is sent upstream."""
    model, thinking = thinking_choice(chat_request.model, chat_request.reasoning_effort)
    texts = message_texts(chat_request.messages)
    if history and chat_request.preamble and texts:
        texts[0] = f"{chat_request.preamble}\n\n{texts[0]}"  # each message goes apart: it leads the first
    prompt = "" if history else fold_messages(chat_request.messages, texts, chat_request.preamble)
    return Plan(model, QwenNotes(thinking, texts, prompt))


def build_request(template: dict, chat_request: ChatRequest, call: UpstreamCall) -> dict:
    """Qwen's v2 body for a chat request, in one-message or whole-history mode."""
    notes: QwenNotes = call.plan.notes
    payload = build_qwen_payload(template, call.model, notes.prompt, notes.thinking, call.chat_id, call.now)
    if call.parent_id:  # a continued chat: the turn answers the reply it names
        for node in (payload, *payload["messages"][:1]):
            node.update({key: call.parent_id for key in call.parent_fields if key in node})
    if call.history:
        template_message = payload["messages"][0]
        payload["messages"] = build_history_messages(
            template_message, chat_request.messages, notes.texts, call.model, call.now
        )
    return payload


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
    message.update(content=text, fid=str(uuid.uuid4()), timestamp=seconds, models=[model])
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


def build_history_messages(
    template_message: dict, messages: tuple[Message, ...], texts: list[str], model: str, now: float
) -> list[dict]:
    """One copy of the template message per message, for web APIs that take the whole history.

    Timestamps increase by HISTORY_GAP_SECONDS between messages and end at ``now``.
    """
    built = []
    last = len(messages) - 1
    for index, (message, text) in enumerate(zip(messages, texts, strict=True)):
        copy_ = copy_json(template_message)
        copy_.update(role=message.role, content=text, timestamp=int(now - (last - index) * HISTORY_GAP_SECONDS))
        for key in ("fid", "id"):
            if copy_.get(key):
                copy_[key] = str(uuid.uuid4())
        if "models" in copy_:
            copy_["models"] = [model]
        built.append(copy_)
    return built


# --- stream frames to deltas -------------------------------------------------------------


@dataclass
class _QwenState:
    credential: str
    drift: StreamDrift
    finished: bool = False
    saw_reply: bool = False
    saw_content: bool = False
    kept_id: str = ""  # the candidate answer relayed: the first response.created
    dropped_ids: set[str] = field(default_factory=set)
    thoughts: list[str] = field(default_factory=list)
    closed_rounds: list[dict] = field(default_factory=list)
    round_usage: dict | None = None


def iter_qwen_deltas(
    payloads: Iterable[str], credential: str = UNNAMED_CREDENTIAL, drift: DriftLog | None = None
) -> Iterator[Delta]:
    """Turn Qwen SSE data payloads into deltas, ending with one usage delta.

    Shapes it does not recognise are counted in ``drift``.
    :raise ApiError: for an in-stream error, a frame that is not JSON, or a reply cut short.
    """
    state = _QwenState(credential, StreamDrift(drift))
    for data in payloads:
        frame = parse_frame(data)
        delta = _frame_delta(frame, state)
        if delta is not None:
            yield delta
    if not state.finished:
        raise upstream_error("The upstream closed the stream before the reply finished.", code="upstream_truncated")
    if not state.saw_content:
        state.drift.note(EMPTY_REPLY)
    yield Delta(usage=_total_usage(state))


def parse_frame(data: str) -> dict:
    """One SSE data payload as a JSON object, or a 502 quoting the start of it."""
    try:
        frame = json_codec.loads(data)
    except (ValueError, RecursionError):  # nested deeper than Python recurses: unreadable too
        raise upstream_error(f"The upstream sent an unreadable event: {data[:ERROR_BODY_LIMIT]!r}") from None
    if not isinstance(frame, dict):
        raise upstream_error(f"The upstream sent an unexpected event: {data[:ERROR_BODY_LIMIT]!r}")
    return frame


def _frame_delta(frame: dict, state: _QwenState) -> Delta | None:
    """What one frame says, if anything (a frame says one thing at most: a plain call per frame,
    where a generator would cost more than the work)."""
    if "ret" in frame and any(marker in str(frame["ret"]) for marker in BROWSER_CHECK_MARKERS):
        raise _browser_check_error()  # the anti-bot challenge, sent as an event
    if frame.get("error"):
        raise _in_stream_error(frame["error"], state.credential)
    if frame.get("success") is False:
        raise error_from_envelope(frame, state.credential)
    if "response.info" in frame:
        return Delta(heartbeat=True)
    if "response.created" in frame:
        return _created(as_dict(frame["response.created"]), state)
    if not _of_kept_candidate(frame, state):
        return None
    if not frame.keys() <= KNOWN_FRAME_KEYS:  # a subset test per frame, a set only for drift
        for key in frame.keys() - KNOWN_FRAME_KEYS:
            state.drift.note(UNKNOWN_KEY, key=key)
    choices = frame.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None  # keep-alives and other bookkeeping frames.
    delta = choices[0].get("delta")
    if not isinstance(delta, dict) or delta.get("role") == "function":
        return None  # built-in tool frames (web_search results) are never content.
    if not delta.keys() <= KNOWN_DELTA_KEYS:
        for key in delta.keys() - KNOWN_DELTA_KEYS:
            state.drift.note(UNKNOWN_KEY, key=f"delta.{key}")
    _track_usage(frame.get("usage"), state)
    return _phase_delta(delta, state)


def _created(created: dict, state: _QwenState) -> Delta | None:
    """The first reply opened is the one relayed; the upstream sometimes opens a second candidate."""
    response_id = created.get("response_id")
    if not isinstance(response_id, str) or not response_id:
        return None
    if not state.kept_id:
        state.kept_id = response_id
        return Delta(response_id=response_id)  # what a later turn names as its parent
    if response_id != state.kept_id:
        _drop_candidate(response_id, _index_shape(created.get("response_index")), state)
    return None


def _of_kept_candidate(frame: dict, state: _QwenState) -> bool:
    """False for frames of another candidate answer: relaying both would mix them letter by letter."""
    response_id = frame.get("response_id")
    if not isinstance(response_id, str) or not response_id:
        if state.dropped_ids:  # two candidates open: an untagged frame could be either's
            _drop_candidate("", "untagged", state)
            return False
        return True
    if not state.kept_id:
        state.kept_id = response_id  # no response.created came: the first tagged reply is the one
    elif response_id != state.kept_id:
        _drop_candidate(response_id, "unannounced", state)
        return False
    return True


def _drop_candidate(response_id: str, index: int | str, state: _QwenState) -> None:
    """Count each other candidate once, however many frames of it are dropped."""
    if response_id not in state.dropped_ids:
        state.dropped_ids.add(response_id)
        state.drift.note(DROPPED_CANDIDATE, response_index=index)


def _index_shape(index: Any) -> int | str:
    """``response_index`` as shown in drift: a number, never the upstream's text."""
    return int(index) if isinstance(index, (str, int)) and str(index).isdigit() else "unnumbered"


def _phase_delta(delta: dict, state: _QwenState) -> Delta | None:
    phase, status = delta.get("phase"), delta.get("status")
    content = delta.get("content") if isinstance(delta.get("content"), str) else ""
    if phase not in KNOWN_PHASES:
        state.drift.note(UNKNOWN_PHASE, phase=phase)
    if phase == "answer" or (phase is None and content):
        state.saw_reply = True
        state.finished = status == "finished"
        if status == "finished":
            _close_round(state)
        if content:
            state.saw_content = True
            return Delta(content=content)
        return None
    if status == "typing" or content:
        state.finished = False  # more is coming after a finished round (web search, then answer)
    if phase == "think" and content:
        return Delta(reasoning=content)
    if phase == "thinking_summary":
        new_text = _new_thoughts(delta.get("extra"), state)
        if new_text:
            return Delta(reasoning=new_text)
    return None


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
    """Add up the last usage of each answer round: counters are cumulative within a round (the
    latest replaces the earlier ones) and restart in the next (a web search's second round)."""
    rounds = state.closed_rounds + ([state.round_usage] if state.round_usage else [])
    if any(as_int(r.get("output_tokens")) == 0 for r in rounds):
        state.drift.note(ZERO_OUTPUT_ROUND)
    prompt = sum(as_int(r.get("input_tokens")) for r in rounds)
    completion = sum(as_int(r.get("output_tokens")) for r in rounds)
    reasoning = sum(as_int(as_dict(r.get("output_tokens_details")).get("reasoning_tokens")) for r in rounds)
    cached = sum(as_int(as_dict(r.get("prompt_tokens_details")).get("cached_tokens")) for r in rounds)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


def _in_stream_error(error: Any, credential: str) -> ApiError:
    """An error frame inside the stream: known codes map as in the JSON envelope, others are 502."""
    if isinstance(error, dict):
        code = str(error.get("code") or "error")
        details = str(error.get("details") or error.get("message") or "")
        mapped = error_from_envelope({"data": {**error, "code": code, "details": details}}, credential)
        if mapped.code != "upstream_error":  # a lost chat (CHAT_GONE) too: before the first byte it falls back
            return mapped
        return upstream_error(f"The upstream reported an error: {code}: {details}"[:ERROR_BODY_LIMIT])
    return upstream_error(f"The upstream reported an error: {str(error)[:ERROR_BODY_LIMIT]}")


# --- error answers -------------------------------------------------------------------------


def read_error(answer: UpstreamAnswer, credential: str) -> ApiError:
    return error_from_upstream(answer.status, answer.content_type, answer.body, credential, answer.retry_after)


def error_from_upstream(
    status: int, content_type: str, body: str, credential: str, retry_after: str | None = None
) -> ApiError:
    """Map a non-stream upstream answer (Qwen sends most errors with HTTP 200) to an ApiError."""
    if any(marker in body for marker in BROWSER_CHECK_MARKERS):
        return _browser_check_error()
    if "text/html" in content_type and status == 200:
        return _browser_check_error()  # a web page where the API should answer: a login or check page
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict) and data.get("success") is False:
        return error_from_envelope(data, credential, retry_after)
    if status in (401, 403):
        return credential_error(credential, f"HTTP {status}")
    if status == 429:
        headers = {"Retry-After": retry_after} if retry_after else {}
        return ApiError(
            "The upstream is rate limiting requests.",
            status=429,
            type="rate_limit_error",
            code="rate_limit_exceeded",
            headers=headers,
        )
    trimmed = " ".join(body.split())[:ERROR_BODY_LIMIT]
    return upstream_error(f"The upstream answered HTTP {status} ({content_type or 'no content type'}): {trimmed}")


def error_from_envelope(data: dict, credential: str = UNNAMED_CREDENTIAL, retry_after: str | None = None) -> ApiError:
    """Map Qwen's ``{"success": false, "data": {"code", "details"}}`` envelope."""
    inner = as_dict(data.get("data"))
    code = str(inner.get("code") or "")
    details = str(inner.get("details") or "")[:ERROR_BODY_LIMIT]
    lowered = code.lower()
    if lowered in RATE_LIMIT_CODES or "quota" in lowered or _mentions_rate_limit(details):
        return _rate_limit_error(code, details, inner.get("num"), retry_after)
    if lowered in AUTH_CODES or "token" in details.lower() and "expired" in details.lower():
        return credential_error(credential, details or code)
    if lowered in CHAT_GONE_CODES or "in progress" in details.lower():
        # The chat a continued turn named cannot take it: the pipeline starts a fresh one.
        return upstream_error(f"The upstream refused the request: {code}: {details}", code=CHAT_GONE)
    return upstream_error(f"The upstream refused the request: {code}: {details}".rstrip(": "))


def _mentions_rate_limit(details: str) -> bool:
    lowered = details.lower()
    return "upper limit" in lowered or "rate limit" in lowered or "too many requests" in lowered


def _rate_limit_error(code: str, details: str, hours: Any, retry_after: str | None) -> ApiError:
    """429; the wait is Qwen's ``num`` hours when given, else the upstream's own Retry-After."""
    headers = {"Retry-After": retry_after} if retry_after else {}
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


def credential_error(credential: str, reason: str) -> ApiError:
    """401 that names the variable to refresh; shared with the openai dialect."""
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


DIALECT = Dialect(
    name="qwen",
    prepare=prepare,
    build_payload=build_request,
    iter_deltas=iter_qwen_deltas,
    read_error=read_error,
    hints=IMPORT_HINTS,
)
