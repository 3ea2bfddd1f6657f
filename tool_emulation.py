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

from converters import MAX_REPLY_BYTES, ChatRequest, ContentPart, Delta, Message, message_text, upstream_error
from tool_parser import CallEvent, Event, TextEvent, ToolCallParser
from tool_prompt import ToolChoice, ToolSpec, format_tool_call, format_tool_result, function_tools, tool_block

RETRIES = 2  # a required call asked for again at most this often, each time in a fresh chat
SAID_KEPT = 64 * 1024  # of an answer without its required call, what is kept to tell why
RESULT_MARKER = "[TOOL RESULT"
MADE_UP_RESULT = re.compile(re.escape(RESULT_MARKER), re.IGNORECASE)
# The end of a text that may be the start of RESULT_MARKER, cut by the frames.
MADE_UP_RESULT_PREFIX = re.compile(
    "(?:" + "|".join(re.escape(RESULT_MARKER[:n]) for n in range(1, len(RESULT_MARKER))) + ")$", re.IGNORECASE
)
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

    def __init__(self, reason: str, usage: dict | None) -> None:
        super().__init__(reason)
        self.usage = usage  # what the attempt cost: the client is told the cost of every attempt


def iter_reply_with_tools(open_attempt: OpenAttempt, chat_request: ChatRequest, native: bool) -> Iterator[Delta]:
    """The reply's deltas, tool calls emulated when the request has function tools and the
    upstream takes none (``native`` False). A required call that does not come is asked for
    again, up to RETRIES times, then 502 ``tool_call_failed``."""
    plan = plan_tools(chat_request) if not native else None
    if plan is None:
        yield from open_attempt(chat_request)
        return
    reason, spent = "", None
    for attempt in range(RETRIES + 1):
        deltas = open_attempt(request_with_tools(chat_request, plan, reason))
        try:
            if attempt:
                yield Delta(reasoning="\n\n")  # the next try's thoughts, apart from the last one's
            yield from iter_tool_deltas(deltas, plan, spent)
            return
        except CallMissing as missing:
            reason, spent = str(missing), add_usage(spent, missing.usage)
        finally:
            deltas.close()
    raise upstream_error(
        f"The model did not make the required tool call in {RETRIES + 1} tries: {reason}.",
        code="tool_call_failed",
        retryable=False,  # the service asked again already: an SDK's own retries would triple the cost
    )


def plan_tools(chat_request: ChatRequest) -> ToolPlan | None:
    """None when there is nothing to emulate; a bad tool or tool_choice is a 400 here (also a
    required or named choice with no function tool to call)."""
    tools = function_tools(chat_request.tools)
    if not tools:
        if chat_request.tool_choice not in (None, "auto", "none"):
            ToolChoice.parse(chat_request.tool_choice, ())  # raises: there is nothing to call
        return None
    return ToolPlan(tools, ToolChoice.parse(chat_request.tool_choice, tools), chat_request.parallel_tool_calls)


def add_usage(first: dict | None, second: dict | None) -> dict | None:
    """Two usage objects added up, field by field (nested details too)."""
    if first is None or second is None:
        return second if first is None else first
    total = dict(first)
    for key, value in second.items():
        if isinstance(value, dict):
            total[key] = add_usage(first.get(key) if isinstance(first.get(key), dict) else None, value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            total[key] = (first.get(key) or 0) + value
        else:
            total.setdefault(key, value)
    return total


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


def iter_tool_deltas(deltas: Iterable[Delta], plan: ToolPlan, spent: dict | None = None) -> Iterator[Delta]:
    """Content read for calls: text streams while it cannot start a marker, each call becomes
    OpenAI ``tool_calls`` deltas, and the end says ``finish_reason: "tool_calls"``. Reasoning
    passes at once. With a required call, text waits until the call comes (a text answer is
    never given for one). ``spent`` is the usage of earlier attempts, added to this one's.

    :raise CallMissing: a required call that the answer did not make.
    """
    reader = _CallReader(plan)
    for delta in deltas:
        if delta.usage is not None:
            yield from reader.end(delta.usage)
            usage = add_usage(spent, delta.usage)
            yield replace(delta, usage=usage, finish_reason="tool_calls" if reader.calls else delta.finish_reason)
            return
        if delta.content:
            if delta.reasoning or delta.response_id:
                yield replace(delta, content="")
            yield from reader.events(reader.parser.feed(delta.content))
        else:
            yield delta
    yield from reader.end(None)  # a stream that ended without its usage


class _CallReader:
    """What one answer said: its text (held while a required call has not come) and its calls."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.parser = ToolCallParser(plan.callable_names)
        self.calls = 0
        self.held: list[str] = []  # text kept back until a required call comes
        self.held_size = 0
        self.space = ""  # white space kept back: around a call it is not content
        self.tail = ""  # text after a call, kept back while it may start a made-up tool result
        self.stopped = False  # the model wrote a tool result itself: the rest is not relayed
        self.said = ""  # the start of the text, to tell why a required call is missing

    def events(self, events: list[Event]) -> Iterator[Delta]:
        for event in events:
            if isinstance(event, TextEvent):
                yield from self._text(event.text)
            elif isinstance(event, CallEvent) and not self.stopped and (self.plan.parallel or not self.calls):
                self.space = ""
                yield from self._flush()
                yield from _call_deltas(self.calls, event)
                self.calls += 1

    def end(self, usage: dict | None) -> Iterator[Delta]:
        """The rest of the answer; a required call that never came raises here."""
        yield from self.events(self.parser.finish())
        if self.tail and not self.stopped:
            yield from self._relay(self.tail)
        if self.space and not self.calls and not self.plan.choice.must_call:
            yield Delta(content=self.space)  # only white space beside a call is not content
        if self.plan.choice.must_call and not self.calls:
            # The held text is dropped: a text answer is never relayed for a required call.
            raise CallMissing(why_no_call(self.said, self.plan), usage)

    def _text(self, text: str) -> Iterator[Delta]:
        if self.plan.choice.must_call and len(self.said) < SAID_KEPT:
            self.said += text[: SAID_KEPT - len(self.said)]
        if self.stopped:
            return
        if self.calls:
            text = self._before_made_up_result(self.tail + text)
        yield from self._relay(text)

    def _relay(self, text: str) -> Iterator[Delta]:
        if not text.strip():
            self.space += text
            return
        text, self.space = self.space + text, ""
        if self.plan.choice.must_call and not self.calls:
            self.held.append(text)
            self.held_size += len(text)
            if self.held_size > MAX_REPLY_BYTES:
                raise CallMissing(f"the answer grew past {MAX_REPLY_BYTES} characters without a call", None)
        else:
            yield Delta(content=text)

    def _before_made_up_result(self, text: str) -> str:
        """Text after a call, up to a tool result the model wrote itself (it cannot know one)."""
        found = MADE_UP_RESULT.search(text)
        if found:
            self.stopped, self.tail = True, ""
            return text[: found.start()].rstrip()
        cut = MADE_UP_RESULT_PREFIX.search(text[-len(RESULT_MARKER) :])
        self.tail = cut.group() if cut else ""
        return text[: len(text) - len(self.tail)]

    def _flush(self) -> Iterator[Delta]:
        if self.held:
            text, self.held, self.held_size = "".join(self.held), [], 0
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
    first = BLOCK.search(text)
    if first is None:
        return "the answer had no [TOOL CALL] block"
    if _fenced_before(text, first.start()):
        return "the [TOOL CALL] block was inside a ``` code block, where it is only an example"
    body = first.group(1).strip().removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        call = json.loads(body)
    except (ValueError, RecursionError):
        return "the [TOOL CALL] block did not hold valid JSON"
    name = call.get("name") if isinstance(call, dict) else None
    if not isinstance(name, str) or name not in plan.callable_names:
        allowed = ", ".join(sorted(plan.callable_names))
        return f"it called {name!r}, which is not a tool it may call here ({allowed})"
    return "the call's arguments were not a JSON object"


def _fenced_before(text: str, at: int) -> bool:
    """Whether ``at`` falls inside a code block: an odd number of fences open a line before it."""
    return at > 0 and len(re.findall(r"^ {0,3}```", text[:at], re.MULTILINE)) % 2 == 1


def _reminder(plan: ToolPlan, reason: str) -> str:
    which = f"the tool {plan.choice.name}" if plan.choice.mode == "named" else "one of the tools"
    return (
        f"Your previous answer could not be used: {reason}. You must call {which} now: answer with a "
        'line [TOOL CALL], then one JSON object {"name": ..., "arguments": {...}}, then a line [END TOOL CALL].'
    )


def _text_message(role: str, text: str) -> Message:
    return Message(role, (ContentPart("text", text),))
