"""A reply as a sequence of blocks: reasoning, text, one per tool call, each opened, filled and
closed in turn. The Anthropic and Responses fronts render these; chat completions need none.

Pure: it reads ``Delta``s and yields events, one block open at a time, never a delta for a block
that is not open. Each ``BlockStop`` carries the whole block, for the events that repeat it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from converters import Delta, as_dict, as_int, as_str

THINKING, TEXT, TOOL_CALL = "thinking", "text", "tool_call"

log = logging.getLogger("reverse_api")


@dataclass(frozen=True)
class BlockStart:
    index: int  # counts every block of the reply, from 0
    kind: str  # THINKING, TEXT or TOOL_CALL
    call_id: str = ""  # a tool call's id and name, known when it opens
    name: str = ""


@dataclass(frozen=True)
class BlockDelta:
    index: int
    kind: str
    text: str  # reasoning, answer text, or a piece of a call's JSON arguments


@dataclass(frozen=True)
class BlockStop:
    index: int
    kind: str
    text: str  # the block whole: all its reasoning, text or arguments
    call_id: str = ""
    name: str = ""


@dataclass(frozen=True)
class KeepAlive:
    """The upstream is alive with nothing to say yet."""


class Held:
    """A delta came and is held for now (text that may begin a stop sequence): a writer holding
    frames learns that nothing more comes of what arrived, and sends what it holds."""


HELD = Held()


@dataclass(frozen=True)
class ReplyEnd:
    usage: dict | None  # the upstream's usage (OpenAI's field names), None when it gave none
    finish_reason: str  # "stop", "length", "tool_calls" as chat completions name them; "stop_sequence"
    stop_sequence: str | None = None  # which of the client's stop sequences ended the answer


BlockEvent = BlockStart | BlockDelta | BlockStop | KeepAlive | Held | ReplyEnd


@dataclass
class _OpenBlock:
    index: int
    kind: str
    call_index: int = -1  # which tool call (its index in the upstream's deltas)
    call_id: str = ""
    name: str = ""
    pieces: list[str] = field(default_factory=list)

    def stop(self) -> BlockStop:
        return BlockStop(self.index, self.kind, "".join(self.pieces), self.call_id, self.name)


class _Blocks:
    """The one open block, and how many came before it."""

    def __init__(self) -> None:
        self.open: _OpenBlock | None = None
        self.count = 0
        self.calls_seen: set[int] = set()

    def text(self, kind: str, text: str) -> Iterator[BlockEvent]:
        if self.open is None or self.open.kind != kind:
            yield from self.close()
            yield self._start(_OpenBlock(self.count, kind))
        self.open.pieces.append(text)
        yield BlockDelta(self.open.index, kind, text)

    def call(self, fragment: dict) -> Iterator[BlockEvent]:
        call_index = as_int(fragment.get("index"))
        function = as_dict(fragment.get("function"))
        if self.open is None or self.open.call_index != call_index:
            if call_index in self.calls_seen:
                # Calls stream one after the other; a piece of an earlier one cannot be shown.
                log.warning("a piece of tool call %d came after the next call began; dropped", call_index)
                return
            yield from self.close()
            self.calls_seen.add(call_index)
            call_id, name = as_str(fragment.get("id")), as_str(function.get("name"))
            yield self._start(_OpenBlock(self.count, TOOL_CALL, call_index, call_id, name))
        arguments = as_str(function.get("arguments"))
        if arguments:
            self.open.pieces.append(arguments)
            yield BlockDelta(self.open.index, TOOL_CALL, arguments)

    def close(self) -> Iterator[BlockEvent]:
        if self.open is not None:
            yield self.open.stop()
            self.open = None

    def _start(self, block: _OpenBlock) -> BlockStart:
        self.open, self.count = block, self.count + 1
        return BlockStart(block.index, block.kind, block.call_id, block.name)


def iter_blocks(deltas: Iterable[Delta]) -> Iterator[BlockEvent]:
    """The reply's blocks in order, then one ``ReplyEnd`` (also when the deltas end without usage)."""
    blocks = _Blocks()
    for delta in deltas:
        if delta.heartbeat:
            yield KeepAlive()
            continue
        if delta.reasoning:
            yield from blocks.text(THINKING, delta.reasoning)
        if delta.content:
            yield from blocks.text(TEXT, delta.content)
        for fragment in delta.tool_calls or ():
            if isinstance(fragment, dict):
                yield from blocks.call(fragment)
        if delta.usage is not None:
            yield from blocks.close()
            yield ReplyEnd(delta.usage, delta.finish_reason or "stop")
            return
    yield from blocks.close()
    yield ReplyEnd(None, "stop")


def iter_until_stop_sequence(events: Iterable[BlockEvent], sequences: tuple[str, ...]) -> Iterator[BlockEvent]:
    """The blocks with the answer text cut before the first of ``sequences`` it holds; the reply
    then ends there (``ReplyEnd`` with ``stop_sequence`` set and no usage), the rest unread.

    Text that may be the start of a sequence is held until the next text tells; reasoning and
    calls pass as they come.
    """
    sequences = tuple(s for s in sequences if s)
    if not sequences:
        yield from events
        return
    held, shown = "", []
    for event in events:
        if not (isinstance(event, (BlockDelta, BlockStop)) and event.kind == TEXT):
            yield event
            continue
        if isinstance(event, BlockStop):  # no sequence in it: the held text was plain text
            if held:
                yield BlockDelta(event.index, TEXT, held)
            held, shown = "", []
            yield event
            continue
        text = held + event.text
        found = _first_match(text, sequences)
        if found is not None:
            at, sequence = found
            if at:
                yield BlockDelta(event.index, TEXT, text[:at])
            yield BlockStop(event.index, TEXT, "".join(shown) + text[:at])
            yield ReplyEnd(None, "stop_sequence", sequence)
            return
        keep = _longest_partial(text, sequences)
        held, out = text[len(text) - keep :], text[: len(text) - keep]
        if out:
            shown.append(out)
            yield BlockDelta(event.index, TEXT, out)
        else:
            yield HELD


def _first_match(text: str, sequences: tuple[str, ...]) -> tuple[int, str] | None:
    hits = [(text.find(s), s) for s in sequences if s in text]
    return min(hits) if hits else None


def _longest_partial(text: str, sequences: tuple[str, ...]) -> int:
    """How many of the text's last characters could begin one of the sequences."""
    longest = 0
    for sequence in sequences:
        for size in range(min(len(sequence) - 1, len(text)), longest, -1):
            if text.endswith(sequence[:size]):
                longest = size
                break
    return longest
