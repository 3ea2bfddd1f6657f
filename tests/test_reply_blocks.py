"""Replies as blocks (reply_blocks): the order the Anthropic and Responses fronts render."""

from __future__ import annotations

import pytest

from converters import Delta
from reply_blocks import BlockDelta, BlockStart, BlockStop, KeepAlive, ReplyEnd, iter_blocks, iter_until_stop_sequence

END = Delta(usage={"prompt_tokens": 1, "completion_tokens": 2}, finish_reason="tool_calls")


def call(index: int, arguments: str, call_id: str = "", name: str = "") -> dict:
    fragment = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        fragment["id"], fragment["function"]["name"] = call_id, name
    return fragment


def test_blocks_open_and_close_in_turn_with_the_whole_text_at_the_stop():
    deltas = [
        Delta(reasoning="Hm"),
        Delta(heartbeat=True),
        Delta(reasoning="m."),
        Delta(content="Hi"),
        Delta(response_id="r1"),  # a notice: nothing to render
        Delta(tool_calls=[call(0, "", "call_a", "f")]),
        Delta(tool_calls=[call(0, '{"x"'), call(0, ": 1}")]),
        Delta(tool_calls=[call(1, "{}", "call_b", "g")]),
        END,
    ]
    assert list(iter_blocks(deltas)) == [
        BlockStart(0, "thinking"),
        BlockDelta(0, "thinking", "Hm"),
        KeepAlive(),
        BlockDelta(0, "thinking", "m."),
        BlockStop(0, "thinking", "Hmm."),
        BlockStart(1, "text"),
        BlockDelta(1, "text", "Hi"),
        BlockStop(1, "text", "Hi"),
        BlockStart(2, "tool_call", "call_a", "f"),
        BlockDelta(2, "tool_call", '{"x"'),
        BlockDelta(2, "tool_call", ": 1}"),
        BlockStop(2, "tool_call", '{"x": 1}', "call_a", "f"),
        BlockStart(3, "tool_call", "call_b", "g"),
        BlockDelta(3, "tool_call", "{}"),
        BlockStop(3, "tool_call", "{}", "call_b", "g"),
        ReplyEnd(END.usage, "tool_calls"),
    ]


def test_a_piece_of_an_earlier_call_is_never_a_delta_for_a_closed_block():
    deltas = [Delta(tool_calls=[call(0, "{}", "a", "f")]), Delta(tool_calls=[call(1, "{}", "b", "g")])]
    events = list(iter_blocks([*deltas, Delta(tool_calls=[call(0, "late")]), END]))
    assert [e for e in events if isinstance(e, BlockDelta) and e.text == "late"] == []


def test_deltas_that_end_without_usage_still_close_and_end():
    assert list(iter_blocks([Delta(content="x")]))[-2:] == [BlockStop(0, "text", "x"), ReplyEnd(None, "stop")]


def texts(events) -> str:
    return "".join(e.text for e in events if isinstance(e, BlockDelta))


@pytest.mark.parametrize("size", [1, 2, 3, 5, 100])
def test_a_stop_sequence_split_anywhere_cuts_the_text_before_it(size):
    answer = "alpha beta STOP gamma"
    deltas = [Delta(content=answer[i : i + size]) for i in range(0, len(answer), size)]
    events = list(iter_until_stop_sequence(iter_blocks([*deltas, END]), ("STOP",)))
    assert texts(events) == "alpha beta "
    assert events[-2:] == [BlockStop(0, "text", "alpha beta "), ReplyEnd(None, "stop_sequence", "STOP")]


def test_text_that_only_looked_like_a_sequence_is_shown_whole():
    deltas = [Delta(content="a ST"), Delta(content="OOP"), Delta(content=" S"), END]
    events = list(iter_until_stop_sequence(iter_blocks(deltas), ("STOP",)))
    assert texts(events) == "a STOOP S"
    assert events[-1] == ReplyEnd(END.usage, "tool_calls")


def test_the_earliest_sequence_wins():
    deltas = [Delta(content="one two three"), END]
    events = list(iter_until_stop_sequence(iter_blocks(deltas), ("three", "two")))
    assert texts(events) == "one " and events[-1].stop_sequence == "two"
