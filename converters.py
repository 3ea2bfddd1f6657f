"""The internal contract every front and dialect shares, and the conversions between its parts.

A front parses its client's request into a ``ChatRequest``; a dialect turns it into an upstream
body and the upstream's stream into ``Delta``s; errors anywhere are ``ApiError``s. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}
REASONING_FORMATS = ("reasoning_content", "think-tags", "hidden")
THINK_CLOSE = "\n</think>\n\n"
TEXT_PARTS = ("text", "refusal")
MAX_REPLY_BYTES = 16 * 1024 * 1024  # what a non-streaming request may collect of a reply
CLIENT_GONE = "client_gone"  # the code of a reply nobody waits for any more: no fault of a provider


class ApiError(Exception):
    """An error for the client, complete when created: each front renders it in its own shape."""

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
            # openai-python, openai-node and the Anthropic SDKs obey this header before any status rule.
            self.headers["x-should-retry"] = "true" if retryable else "false"


CHAT_GONE = "upstream_chat_gone"  # a continued chat the upstream no longer takes: start a fresh one


def upstream_error(message: str, status: int = 502, code: str = "upstream_error", **kwargs: Any) -> ApiError:
    return ApiError(message, status=status, type="server_error", code=code, **kwargs)


# --- the neutral chat request ------------------------------------------------------------


@dataclass(frozen=True)
class ContentPart:
    """One piece of a message: ``text`` (refusals too), or another kind kept as the client sent it."""

    type: str
    text: str = ""
    raw: dict | None = field(default=None, compare=False, hash=False)

    @property
    def is_text(self) -> bool:
        return self.type in TEXT_PARTS


@dataclass(frozen=True)
class ToolCall:
    """A call the assistant made earlier in the conversation."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Message:
    """One turn of the conversation, whatever the front's wire shape was."""

    role: str  # one of ROLES
    parts: tuple[ContentPart, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""  # on a tool result: the call it answers
    name: str = ""  # on a tool result: the tool's name


@dataclass(frozen=True)
class ChatRequest:
    """What a client asked for, in the front's terms no longer."""

    model: str
    messages: tuple[Message, ...]
    stream: bool = False
    include_usage: bool = False
    reasoning_effort: str | None = None
    provider: str | None = None
    tools: tuple[dict, ...] = ()
    tool_choice: Any = None
    parallel_tool_calls: bool = True
    # Text a dialect puts before the conversation (the tool protocol, for upstreams without tools).
    preamble: str = ""
    # The client's own body, for dialects that pass it through to a compatible upstream.
    passthrough: dict = field(default_factory=dict, hash=False, compare=False)


def message_text(message: Message, index: int) -> str:
    """The text of a message: its text parts joined. Parts of other kinds are refused."""
    texts = []
    for number, part in enumerate(message.parts):
        if not part.is_text:
            raise ApiError(
                f"Content parts of type '{part.type}' are not supported by this provider; send text.",
                param=f"messages[{index}].content[{number}]",
                code="unsupported_content",
            )
        texts.append(part.text)
    return "\n".join(texts)


def message_texts(messages: Iterable[Message]) -> list[str]:
    """Each message's text, checked once for the whole conversation."""
    return [message_text(message, index) for index, message in enumerate(messages)]


def fold_messages(messages: tuple[Message, ...], texts: list[str] | None = None, preamble: str = "") -> str:
    """Fold a conversation into one user text, as web chats take it, after ``preamble`` if any.

    A lone user message goes as its text unchanged; anything else gets role labels.
    """
    texts = message_texts(messages) if texts is None else texts
    if len(messages) == 1 and messages[0].role == "user":
        return "\n\n".join(text for text in (preamble, texts[0]) if text)
    blocks = [_labelled(message, text) for message, text in zip(messages, texts, strict=True)]
    return "\n\n".join(block for block in (preamble, *blocks) if block)


def _labelled(message: Message, text: str) -> str:
    if message.role == "tool":
        ref = message.tool_call_id or message.name
        return f"Tool result ({ref}):\n{text}" if ref else f"Tool result:\n{text}"
    calls = "\n".join(f"[called {call.name}({call.arguments})]" for call in message.tool_calls)
    if calls:
        text = "\n".join(t for t in (text, calls) if t)
    return f"{ROLE_LABELS[message.role]}: {text}" if text else ""


# --- the reply ---------------------------------------------------------------------------


@dataclass(slots=True)  # one per relayed event: slots make it smaller and quicker to build
class Delta:
    """One step of a reply: text for the answer or for the reasoning, or the final usage."""

    content: str = ""
    reasoning: str = ""
    usage: dict | None = None
    heartbeat: bool = False  # the upstream is alive but has nothing to say yet
    tool_calls: list | None = None  # OpenAI tool-call deltas, passed through as they came
    finish_reason: str | None = None  # set on the final usage delta when the upstream gave one
    response_id: str = ""  # the upstream's id for this reply, announced once (Qwen's response.created)

    @property
    def is_notice(self) -> bool:
        """True for a delta that only tells the upstream's ids: nothing for the client to see."""
        return bool(self.response_id) and not (self.content or self.reasoning or self.tool_calls or self.heartbeat)


def iter_reasoning_format(deltas: Iterable[Delta], reasoning_format: str) -> Iterator[Delta]:
    """Apply REASONING_FORMAT: keep reasoning apart, wrap it in <think> tags, or drop it."""
    if reasoning_format == "reasoning_content":
        yield from deltas
        return
    thinking = False
    for delta in deltas:
        if delta.heartbeat or delta.is_notice:
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


def iter_bounded(deltas: Iterable[Delta], limit: int) -> Iterator[Delta]:
    """The deltas of a reply that is collected whole, refused once their text passes ``limit``."""
    size = 0
    for delta in deltas:
        size += len(delta.content) + len(delta.reasoning) + sum(map(_call_size, delta.tool_calls or ()))
        if size > limit:
            raise upstream_error(f"The upstream's reply is longer than {limit} characters; ask for it streamed.")
        yield delta


def _call_size(fragment: Any) -> int:
    function = fragment.get("function") if isinstance(fragment, dict) else None
    return sum(len(value) for value in function.values() if isinstance(value, str)) if isinstance(function, dict) else 0


def empty_usage() -> dict:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


# --- JSON helpers every side uses -----------------------------------------------------------


def copy_json(value: Any) -> Any:
    """A copy of a JSON-like value; several times faster than copy.deepcopy on the request path."""
    if isinstance(value, dict):
        return {key: copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_json(item) for item in value]
    return value


def dig(data: Any, dotted: str) -> Any:
    """The value at a dotted path such as ``data.id``, or None when any step is missing."""
    for key in dotted.split("."):
        data = data.get(key) if isinstance(data, dict) else None
    return data


def json_depth(value: Any) -> int:
    """How deeply a JSON value nests (a scalar is 0), without recursing."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        item, depth = todo.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            todo.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            todo.extend((child, depth + 1) for child in item)
    return deepest


def merge_tool_calls(calls: dict[int, dict], deltas: list) -> None:
    """Gather streamed tool-call fragments by index, as the OpenAI SDK's accumulator does; the
    pieces are kept in lists and joined once (adding strings up is quadratic in a long call)."""
    for fragment in deltas:
        if not isinstance(fragment, dict):
            continue
        call = calls.setdefault(
            as_int(fragment.get("index")), {"id": "", "type": "function", "function": {"name": [], "arguments": []}}
        )
        call["id"] = as_str(fragment.get("id")) or call["id"]
        call["type"] = as_str(fragment.get("type")) or call["type"]
        function = as_dict(fragment.get("function"))
        call["function"]["name"].append(as_str(function.get("name")))
        call["function"]["arguments"].append(as_str(function.get("arguments")))


def joined_tool_calls(calls: dict[int, dict]) -> list[dict]:
    """The gathered calls in index order, each with its name and arguments joined."""
    return [_joined(calls[index]) for index in sorted(calls)]


def _joined(call: dict) -> dict:
    function = call["function"]
    return {**call, "function": {"name": "".join(function["name"]), "arguments": "".join(function["arguments"])}}


def as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
