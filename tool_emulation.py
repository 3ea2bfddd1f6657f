"""Tool calling for upstreams that have none: the request rewritten with the protocol, the answer
read back into OpenAI tool calls, and a required call asked for again.

The model is taught ``[TOOL CALL]`` blocks (``tool_prompt``); its answer is read by one
incremental parser (``tool_parser``) whether it streams or not. Pure: the upstream is reached
through the ``open_attempt`` callable the pipeline passes in.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from converters import ChatRequest, ContentPart, Delta, Message, message_text, upstream_error
from tool_parser import CallEvent, Event, TextEvent, ToolCallParser
from tool_prompt import ToolChoice, ToolSpec, format_tool_call, format_tool_result, function_tools, tool_block

RETRIES = 2  # a required call asked for again at most this often, each time in a fresh chat
BLOCK = re.compile(r"(?:\[TOOL CALL\]|<tool_call>)(.*?)(?:\[END TOOL CALL\]|</tool_call>|$)", re.IGNORECASE | re.DOTALL)

OpenAttempt = Callable[[ChatRequest], Iterator[Delta]]


@dataclass(frozen=True)
class ToolPlan:
    """The client's function tools and how it asked for them to be used."""

    tools: tuple[ToolSpec, ...]
    choice: ToolChoice
    parallel: bool

    @property
    def callable_names(self) -> frozenset[str]:
        """What the answer may call: the named tool alone when one is forced."""
        if self.choice.mode == "named":
            return frozenset({self.choice.name})
        return frozenset(tool.name for tool in self.tools) if self.choice.mode != "none" else frozenset()


class CallMissing(Exception):
    """A required call the answer did not make; the reason goes into the reminder and the error."""


def iter_reply_with_tools(open_attempt: OpenAttempt, chat_request: ChatRequest, native: bool) -> Iterator[Delta]:
    """The reply's deltas, tool calls emulated when the request has function tools and the
    upstream takes none (``native`` False). A required call that does not come is asked for
    again, up to RETRIES times, then 502 ``tool_call_failed``."""
    plan = plan_tools(chat_request) if not native else None
    if plan is None:
        yield from open_attempt(chat_request)
        return
    reason = ""
    for _ in range(RETRIES + 1):
        deltas = open_attempt(request_with_tools(chat_request, plan, reason))
        try:
            yield from iter_tool_deltas(deltas, plan)
            return
        except CallMissing as missing:
            reason = str(missing)
        finally:
            deltas.close()
    raise upstream_error(
        f"The model did not make the required tool call in {RETRIES + 1} tries: {reason}.", code="tool_call_failed"
    )


def plan_tools(chat_request: ChatRequest) -> ToolPlan | None:
    """None when there is nothing to emulate; a bad tool or tool_choice is a 400 here."""
    tools = function_tools(chat_request.tools)
    if not tools:
        return None
    return ToolPlan(tools, ToolChoice.parse(chat_request.tool_choice, tools), chat_request.parallel_tool_calls)


def request_with_tools(chat_request: ChatRequest, plan: ToolPlan, reason: str = "") -> ChatRequest:
    """The request as the upstream gets it: the protocol first (none for ``tool_choice: "none"``),
    the history's calls and results in the same syntax, and a reminder after a missed call."""
    messages = fold_tool_history(chat_request.messages)
    if reason:
        messages += (_text_message("user", _reminder(plan, reason)),)
    preamble = tool_block(plan.tools, plan.choice, plan.parallel) if plan.choice.mode != "none" else ""
    return replace(chat_request, messages=messages, preamble=preamble, tools=(), tool_choice=None)


def fold_tool_history(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    """Assistant calls as ``[TOOL CALL]`` blocks and each tool result numbered, naming its tool and call."""
    names = {call.id: call.name for message in messages for call in message.tool_calls}
    folded, results = [], 0
    for index, message in enumerate(messages):
        if message.role == "assistant" and message.tool_calls:
            blocks = [format_tool_call(call.name, call.arguments) for call in message.tool_calls]
            folded.append(_text_message("assistant", "\n".join([message_text(message, index), *blocks]).strip()))
        elif message.role == "tool":
            results += 1
            name = message.name or names.get(message.tool_call_id, "")
            text = format_tool_result(results, name, message.tool_call_id, message_text(message, index))
            folded.append(_text_message("tool", text))
        else:
            folded.append(message)
    return tuple(folded)


def iter_tool_deltas(deltas: Iterable[Delta], plan: ToolPlan) -> Iterator[Delta]:
    """Content read for calls: text streams while it cannot start a marker, each call becomes
    OpenAI ``tool_calls`` deltas, and the end says ``finish_reason: "tool_calls"``. Reasoning
    passes at once. With a required call, text waits until the call comes (a text answer is
    never given for one).

    :raise CallMissing: a required call that the answer did not make.
    """
    reader = _CallReader(plan)
    for delta in deltas:
        if delta.usage is not None:
            yield from reader.events(reader.parser.finish())
            reader.check_required()
            yield replace(delta, finish_reason="tool_calls") if reader.calls else delta
            return
        if delta.content:
            if delta.reasoning or delta.response_id:
                yield replace(delta, content="")
            yield from reader.events(reader.parser.feed(delta.content))
        else:
            yield delta
    yield from reader.events(reader.parser.finish())  # a stream that ended without its usage
    reader.check_required()


class _CallReader:
    """What one answer said: its text (held while a required call has not come) and its calls."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.parser = ToolCallParser(plan.callable_names)
        self.calls = 0
        self.held: list[str] = []  # text kept back until a required call comes
        self.said: list[str] = []  # all the text, to tell why a required call is missing

    def events(self, events: list[Event]) -> Iterator[Delta]:
        for event in events:
            if isinstance(event, TextEvent):
                yield from self._text(event.text)
            elif isinstance(event, CallEvent) and (self.plan.parallel or not self.calls):
                yield from self._flush()
                yield from _call_deltas(self.calls, event)
                self.calls += 1

    def check_required(self) -> None:
        if self.plan.choice.must_call and not self.calls:
            # The held text is dropped: a text answer is never relayed for a required call.
            raise CallMissing(why_no_call("".join(self.said), self.plan))

    def _text(self, text: str) -> Iterator[Delta]:
        self.said.append(text)
        if self.plan.choice.must_call and not self.calls:
            self.held.append(text)
        elif text:
            yield Delta(content=text)

    def _flush(self) -> Iterator[Delta]:
        if self.held:
            text, self.held = "".join(self.held), []
            if text.strip():
                yield Delta(content=text)


def _call_deltas(index: int, event: CallEvent) -> Iterator[Delta]:
    """One call as OpenAI streams it: id, type and name first, then the arguments."""
    opening = {"index": index, "id": "call_" + uuid.uuid4().hex[:24], "type": "function"}
    yield Delta(tool_calls=[{**opening, "function": {"name": event.name, "arguments": ""}}])
    arguments = json.dumps(event.arguments, ensure_ascii=False)
    yield Delta(tool_calls=[{"index": index, "function": {"arguments": arguments}}])


def why_no_call(text: str, plan: ToolPlan) -> str:
    """Why an answer holds no usable call, for the reminder and the final error."""
    blocks = [match.group(1) for match in BLOCK.finditer(text)]
    if not blocks:
        return "the answer had no [TOOL CALL] block"
    body = blocks[0].strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        call = json.loads(body)
    except ValueError:
        return "the [TOOL CALL] block did not hold valid JSON"
    name = call.get("name") if isinstance(call, dict) else None
    if name not in plan.callable_names:
        allowed = ", ".join(sorted(plan.callable_names))
        return f"it called {name!r}, which is not a tool it may call here ({allowed})"
    return "the call's arguments were not a JSON object"


def _reminder(plan: ToolPlan, reason: str) -> str:
    which = f"the tool {plan.choice.name}" if plan.choice.mode == "named" else "one of the tools"
    return (
        f"Your previous answer could not be used: {reason}. You must call {which} now: answer with a "
        'line [TOOL CALL], then one JSON object {"name": ..., "arguments": {...}}, then a line [END TOOL CALL].'
    )


def _text_message(role: str, text: str) -> Message:
    return Message(role, (ContentPart("text", text),))
