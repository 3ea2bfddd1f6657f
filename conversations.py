"""Conversations continued upstream: which remembered chat a request's history extends.

After a reply, the conversation so far (the client's messages plus the reply as the service
returned it) is remembered by a fingerprint, never as text, with the account, the upstream chat
and the reply's id. A later request whose history is exactly a remembered one followed by new
turns (user messages, tool results) continues that chat with only the new turns. A remembered
branch is taken once: a second client sending the same history gets a fresh chat.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from converters import ChatRequest, ContentPart, Delta, Message, ToolCall, joined_tool_calls, merge_tool_calls
from state import Store

NEW_TURN_ROLES = frozenset({"user", "tool"})
THINK_BLOCK = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)


@dataclass(frozen=True)
class Continuation:
    """A remembered upstream chat this request goes on with."""

    account_id: str
    chat_id: str
    parent_id: str  # the id of the reply the new turns answer
    new_turns: int  # how many of the request's last messages are new


@dataclass
class ReplyRecord:
    """One request's turn: the chat it may continue, and what its reply leaves to remember,
    filled in as it runs."""

    continuation: Continuation | None = None
    chat_lost: bool = False  # the upstream refused the continued chat: it is not given back
    remembered: bool = False
    account_id: str = ""
    chat_id: str = ""
    response_id: str = ""


def continued_request(chat_request: ChatRequest, continuation: Continuation) -> ChatRequest:
    """Only the new turns, and no preamble: the upstream chat holds the rest."""
    return replace(chat_request, messages=chat_request.messages[-continuation.new_turns :], preamble="")


def iter_remembering(deltas: Iterable[Delta], on_reply: Callable[[Message], None]) -> Iterator[Delta]:
    """The deltas as they are; once the reply is whole (its usage delta), ``on_reply`` gets it
    as the client will send it back."""
    content: list[str] = []
    calls: dict[int, dict] = {}
    for delta in deltas:
        content.append(delta.content)
        merge_tool_calls(calls, delta.tool_calls or [])
        if delta.usage is not None:
            on_reply(_reply_message("".join(content), joined_tool_calls(calls)))
        yield delta


def conversation_key(provider: str, chat_request: ChatRequest, messages: tuple[Message, ...]) -> str:
    """The fingerprint of a conversation: its messages normalised (roles, text, calls, results; no
    ids), the model and the tools offered, so a changed tool list or model starts afresh."""
    canonical = [provider, chat_request.model, _tools_of(chat_request), [_canonical(m) for m in messages]]
    # ASCII escapes: a lone surrogate in a message (JSON allows one) must still hash.
    digest = hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
    return f"conversation:{provider}:{digest}"


def new_turns(messages: tuple[Message, ...]) -> int:
    """How many trailing messages follow the last assistant reply (0 when none does, or when
    one of them is not a user message or a tool result)."""
    for count, message in enumerate(reversed(messages)):
        if message.role == "assistant":
            return count
        if message.role not in NEW_TURN_ROLES:
            return 0
    return 0


def _reply_message(content: str, calls: list[dict]) -> Message:
    parts = (ContentPart("text", content),) if content else ()
    tool_calls = tuple(ToolCall(call["id"], call["function"]["name"], call["function"]["arguments"]) for call in calls)
    return Message("assistant", parts, tool_calls=tool_calls)


class ConversationBook:
    """Remembered conversations in the state store, each for CONVERSATION_TTL_SECONDS."""

    def __init__(self, store: Store, ttl: float) -> None:
        self.store = store
        self.ttl = ttl

    def take(self, provider: str, chat_request: ChatRequest) -> Continuation | None:
        """The remembered chat this request extends, taken so no one else continues it."""
        count = new_turns(chat_request.messages)
        if not count:
            return None
        known = chat_request.messages[: len(chat_request.messages) - count]
        record = self.store.take(conversation_key(provider, chat_request, known))
        if not record:
            return None
        return Continuation(record["account_id"], record["chat_id"], record["response_id"], count)

    def give_back(self, provider: str, chat_request: ChatRequest, taken: Continuation) -> None:
        """Remember again a conversation taken by a turn that did not complete."""
        known = chat_request.messages[: len(chat_request.messages) - taken.new_turns]
        record = {"account_id": taken.account_id, "chat_id": taken.chat_id, "response_id": taken.parent_id}
        self.store.put(conversation_key(provider, chat_request, known), record, self.ttl)

    def remember(self, provider: str, chat_request: ChatRequest, reply: Message, where: ReplyRecord) -> None:
        if not (where.chat_id and where.response_id):
            return  # nothing to continue: the upstream named no chat or no reply
        key = conversation_key(provider, chat_request, (*chat_request.messages, reply))
        record = {"account_id": where.account_id, "chat_id": where.chat_id, "response_id": where.response_id}
        self.store.put(key, record, self.ttl)


def _canonical(message: Message) -> list:
    text = "\n".join(part.text if part.is_text else f"[{part.type}]" for part in message.parts)
    if message.role == "assistant":  # REASONING_FORMAT=think-tags: the client sends its reasoning back
        text = THINK_BLOCK.sub("", text)
    calls = [[call.name, _arguments(call.arguments)] for call in message.tool_calls]
    return [message.role, text.strip(), calls]


def _arguments(arguments: str) -> object:
    try:
        return json.loads(arguments)
    except (ValueError, RecursionError):
        return arguments


def _tools_of(chat_request: ChatRequest) -> str:
    # The tools offered, not tool_choice: agents switch between "required" and "auto" mid-conversation.
    shown = json.dumps(list(chat_request.tools), sort_keys=True, default=repr)
    return hashlib.sha256(shown.encode()).hexdigest()
