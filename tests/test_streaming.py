"""Unit tests for streaming: line splitting, SSE parsing and SSE output framing."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming import (
    DONE,
    SseEvent,
    SseLineTooLong,
    format_sse,
    iter_data,
    iter_lines,
    iter_sse_bytes,
    iter_sse_events,
)

PROPERTY = settings(max_examples=200, deadline=None, database=None)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """Cut bytes at the given positions (empty chunks included where cuts repeat)."""
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def reference_lines(data: bytes) -> list[bytes]:
    """Complete lines of a whole byte string, ended by CRLF, CR or LF; an unended remainder is dropped."""
    return re.split(rb"\r\n|\r|\n", data)[:-1]


# --- iter_lines --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "lines"),
    [
        ([b"a\nb\n"], [b"a", b"b"]),
        ([b"a\rb\r"], [b"a", b"b"]),
        ([b"a\r\nb\r\n"], [b"a", b"b"]),
        ([b"a\r", b"\nb\n"], [b"a", b"b"]),
        ([b"a\r", b"", b"", b"\nb\n"], [b"a", b"b"]),
        ([b"a\r", b"\n", b"\n"], [b"a", b""]),
        ([b"a\r", b"\r\n"], [b"a", b""]),
        ([b"a\r\r\nb\r"], [b"a", b"", b"b"]),
        ([b"\r", b"\r", b"\n"], [b"", b""]),
        ([b"a\n\nb\n"], [b"a", b"", b"b"]),
        ([b"\n\r\n\r"], [b"", b"", b""]),
        ([b"", b"a", b"", b"b", b"", b"c\n", b""], [b"abc"]),
        ([b"da", b"ta: x", b"\n"], [b"data: x"]),
        ([b"tail"], []),
        ([b"a\n", b"tail"], [b"a"]),
        ([b"\n", b"\n"], [b"", b""]),
        ([], []),
        ([b"", b""], []),
        ([b"\xe4\xbd", b"\xa0\n"], [b"\xe4\xbd\xa0"]),
    ],
    ids=[
        "lf",
        "cr",
        "crlf",
        "crlf-split-across-chunks",
        "crlf-split-with-empty-chunks-between",
        "split-crlf-then-lf",
        "cr-then-crlf-across-chunks",
        "cr-then-crlf",
        "cr-cr-lf-in-three-chunks",
        "blank-line",
        "only-terminators",
        "empty-chunks-ignored",
        "line-across-chunks",
        "cut-short-line-dropped",
        "cut-short-line-in-own-chunk-dropped",
        "two-empty-lines",
        "no-chunks",
        "only-empty-chunks",
        "bytes-are-not-decoded",
    ],
)
def test_iter_lines(chunks, lines):
    assert list(iter_lines(chunks)) == lines


@pytest.mark.parametrize(
    "chunks",
    [
        [b"x" * 11],
        [b"x" * 6, b"x" * 5],
        [b"ok\n" + b"x" * 11],
        [b"ok\n", b"x" * 4, b"x" * 4, b"x" * 4],
    ],
)
def test_iter_lines_raises_past_max_line(chunks):
    with pytest.raises(SseLineTooLong, match="longer than 10 bytes"):
        list(iter_lines(chunks, max_line=10))


@pytest.mark.parametrize(
    ("chunks", "lines"),
    [
        ([b"x" * 10, b"\n"], [b"x" * 10]),
        ([b"x" * 5, b"x" * 5, b"\n", b"y" * 10 + b"\n"], [b"x" * 10, b"y" * 10]),
        ([b"x" * 10 + b"\r", b"\n" + b"y" * 10 + b"\r\n"], [b"x" * 10, b"y" * 10]),
    ],
)
def test_iter_lines_allows_exactly_max_line(chunks, lines):
    assert list(iter_lines(chunks, max_line=10)) == lines


def test_iter_lines_is_lazy():
    def chunks():
        yield b"first\nsec"
        raise AssertionError("read past the first line")

    assert next(iter_lines(chunks())) == b"first"


@PROPERTY
@given(
    st.one_of(
        st.binary(max_size=200),
        st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"x", b"yz", b"\xe4\xbd\xa0", b"\xff"]), max_size=40).map(
            b"".join
        ),
    ),
    st.data(),
)
def test_iter_lines_independent_of_splits(whole, data):
    cuts = data.draw(st.lists(st.integers(0, len(whole)), max_size=12))
    expected = list(iter_lines([whole]))
    assert expected == reference_lines(whole)
    assert list(iter_lines(split_at(whole, cuts))) == expected


# --- iter_sse_events ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "events"),
    [
        (b"data: a\ndata: b\n\n", [SseEvent("a\nb")]),
        (b"data: a\ndata:\ndata: b\n\n", [SseEvent("a\n\nb")]),
        (b": keep-alive\ndata: x\n: more\n\n", [SseEvent("x")]),
        (b":\n\n", []),
        (b"data:x\n\n", [SseEvent("x")]),
        (b"data:  x \n\n", [SseEvent(" x ")]),
        (b'data: {"a": "b:c"}\n\n', [SseEvent('{"a": "b:c"}')]),
        (b"data\n\n", [SseEvent("")]),
        (b"data: \n\n", [SseEvent("")]),
        (b"event: delta\nid: 7\ndata: x\n\n", [SseEvent("x", "delta", "7")]),
        (b"event:delta\nid:7\ndata:x\n\n", [SseEvent("x", "delta", "7")]),
        (b"id: 1\ndata: a\n\ndata: b\n\n", [SseEvent("a", "", "1"), SseEvent("b", "", "1")]),
        (b"event: e\ndata: a\n\ndata: b\n\n", [SseEvent("a", "e"), SseEvent("b")]),
        (b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n", [SseEvent("a", "", "1"), SseEvent("b", "", "1")]),
        (b"event: ping\n\ndata: x\n\n", [SseEvent("x")]),
        (b"\n\n\ndata: x\n\n\n\n", [SseEvent("x")]),
        (b"retry: 100\nfoo: bar\nDATA: no\ndata : no\ndata: yes\n\n", [SseEvent("yes")]),
        (b"data: last", []),
        (b"data: a\n\ndata: last\n", [SseEvent("a"), SseEvent("last")]),
        (b"event: e\nid: 9\ndata: x\ndata: y", [SseEvent("x", "e", "9")]),
        (b"event: e\n", []),
        (b"data: a\r\n\r\ndata: b\r\rdata: c\n\n", [SseEvent("a"), SseEvent("b"), SseEvent("c")]),
        (b"", []),
    ],
    ids=[
        "multi-line-data",
        "empty-middle-data-line",
        "comments-ignored",
        "comment-only",
        "no-space-after-colon",
        "only-one-space-removed",
        "colons-in-value",
        "field-without-colon",
        "empty-data",
        "event-and-id",
        "event-and-id-without-space",
        "id-persists",
        "event-resets-after-dispatch",
        "id-with-nul-ignored",
        "blank-line-without-data-does-not-dispatch",
        "extra-blank-lines",
        "unknown-and-wrong-case-fields-ignored",
        "final-line-cut-short-is-dropped",
        "final-event-without-blank-line",
        "final-event-keeps-fields-drops-cut-line",
        "fields-without-data-never-dispatch",
        "crlf-and-cr-line-ends",
        "empty-stream",
    ],
)
def test_iter_sse_events(stream, events):
    assert list(iter_sse_events([stream])) == events


@pytest.mark.parametrize("char", ["é", "你", "😀", "\u2028", "\x85"])
def test_iter_sse_events_multibyte_split_anywhere(char):
    stream = f"data: x{char}y\n\n".encode()
    expected = [SseEvent(f"x{char}y")]
    for cut in range(len(stream) + 1):
        assert list(iter_sse_events([stream[:cut], stream[cut:]])) == expected, cut
    assert list(iter_sse_events([stream[i : i + 1] for i in range(len(stream))])) == expected


@pytest.mark.parametrize(
    ("stream", "data"),
    [
        (b"data: a\xffb\n\n", "a\ufffdb"),
        (b"data: \xe4\xbd\n\n", "\ufffd"),
        (b"data: \xc0\xaf\n\n", "\ufffd\ufffd"),
        (b"data: \xed\xa0\x80\n\n", "\ufffd\ufffd\ufffd"),
        (b"data: ok\xf0\x9f\x98\n", "ok\ufffd"),
    ],
    ids=["invalid-byte", "truncated-sequence", "overlong", "surrogate", "truncated-at-end-of-stream"],
)
def test_iter_sse_events_invalid_utf8_becomes_replacement(stream, data):
    assert list(iter_sse_events([stream])) == [SseEvent(data)]


def test_iter_sse_events_invalid_field_name_bytes_do_not_raise():
    assert list(iter_sse_events([b"\xff: x\ndata: y\n\n"])) == [SseEvent("y")]


LINE_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=20)
EVENTS = st.lists(
    st.tuples(
        st.lists(LINE_TEXT, min_size=1, max_size=3),
        LINE_TEXT,
        LINE_TEXT.filter(lambda s: "\x00" not in s),
    ),
    max_size=6,
)


def encode_events(events: list[tuple[list[str], str, str]]) -> bytes:
    out = []
    for lines, event, event_id in events:
        out.append(f"event: {event}\nid: {event_id}\n")
        out.extend(f"data: {line}\n" for line in lines)
        out.append("\n")
    return "".join(out).encode("utf-8")


@PROPERTY
@given(EVENTS, st.data())
def test_iter_sse_events_independent_of_splits(events, data):
    stream = encode_events(events)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    expected = [SseEvent("\n".join(lines), event, event_id) for lines, event, event_id in events]
    whole = list(iter_sse_events([stream]))
    assert whole == expected
    assert list(iter_sse_events(split_at(stream, cuts))) == whole


# --- iter_data ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datas", "expected"),
    [
        (['{"a":1} ', ' {"b":2}'], ['{"a":1}', '{"b":2}']),
        (["a", "[DONE]", "after"], ["a"]),
        (["a", " [DONE] ", "after"], ["a"]),
        (["[DONE]"], []),
        (["", "  ", "\n", "x"], ["x"]),
        (["[done]", "[DONE]x"], ["[done]", "[DONE]x"]),
        ([], []),
    ],
    ids=[
        "trailing-space-stripped",
        "done-stops",
        "done-with-spaces-stops",
        "only-done",
        "blank-skipped",
        "not-done",
        "empty",
    ],
)
def test_iter_data(datas, expected):
    assert list(iter_data(SseEvent(d) for d in datas)) == expected


def test_iter_data_stops_reading_at_done():
    def events():
        yield SseEvent("a")
        yield SseEvent("[DONE]")
        raise AssertionError("read past [DONE]")

    assert list(iter_data(events())) == ["a"]


def test_iter_data_on_qwen_style_stream():
    stream = b'data: {"x":1} \n\ndata: {"x":2} \n\ndata: [DONE]\n\ndata: {"x":3}\n\n'
    assert list(iter_data(iter_sse_events([stream]))) == ['{"x":1}', '{"x":2}']


# --- format_sse / iter_sse_bytes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "wire"),
    [
        ({"a": 1}, b'data: {"a":1}\n\n'),
        ({}, b"data: {}\n\n"),
        ({"a": [1, 2], "b": {"c": None, "d": True}}, b'data: {"a":[1,2],"b":{"c":null,"d":true}}\n\n'),
        ({"t": "é你😀"}, 'data: {"t":"é你😀"}\n\n'.encode()),
        ({"t": "a\nb\r\n"}, b'data: {"t":"a\\nb\\r\\n"}\n\n'),
        ({"t": 'q"\\'}, b'data: {"t":"q\\"\\\\"}\n\n'),
        ({"t": "\u2028"}, 'data: {"t":"\u2028"}\n\n'.encode()),
    ],
    ids=[
        "simple",
        "empty",
        "nested-compact",
        "non-ascii-as-utf8",
        "newlines-escaped",
        "quotes-escaped",
        "line-separator",
    ],
)
def test_format_sse(obj, wire):
    assert format_sse(obj) == wire


@pytest.mark.parametrize(
    "obj",
    [{"a": 1}, {"t": "é你😀\n\r\u2028\x85"}, {"choices": [{"delta": {"content": "data: x\n\n"}}]}],
)
def test_format_sse_round_trips_through_parser(obj):
    wire = format_sse(obj)
    assert wire.count(b"\n") == 2
    assert [json.loads(d) for d in iter_data(iter_sse_events([wire]))] == [obj]


def test_iter_sse_bytes_frames_objects_then_done():
    assert list(iter_sse_bytes([{"a": 1}, {"b": "é"}])) == [
        b'data: {"a":1}\n\n',
        'data: {"b":"é"}\n\n'.encode(),
        b"data: [DONE]\n\n",
    ]


def test_iter_sse_bytes_empty_is_only_done():
    assert list(iter_sse_bytes([])) == [b"data: [DONE]\n\n"]
    assert DONE == b"data: [DONE]\n\n"


def test_iter_sse_bytes_parses_back():
    objs = [{"i": i, "t": "你" * i} for i in range(3)]
    wire = b"".join(iter_sse_bytes(objs))
    assert wire.endswith(b"data: [DONE]\n\n")
    assert [json.loads(d) for d in iter_data(iter_sse_events([wire]))] == objs


# --- events without blank lines ------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "datas"),
    [
        (b'data: {"a":1}\ndata: {"b":2}\ndata: {"c":3}\n', ['{"a":1}', '{"b":2}', '{"c":3}']),
        (b'data: {"a":1}\ndata: {"b":2}\n\n', ['{"a":1}', '{"b":2}']),
        (b'data: {"a":1}\ndata: [DONE]\n', ['{"a":1}']),
        (b'data: {"a":1}\r\ndata: {"b":2}\r\n', ['{"a":1}', '{"b":2}']),
        # Spec behaviour where a line does not stand alone: the event stays joined.
        (b'data: {"a":\ndata: 1}\n\n', ['{"a":\n1}']),
        (b'data: {"a":1}\ndata: not json\n\n', ['{"a":1}\nnot json']),
        (b"data: a\ndata: b\n\n", ["a\nb"]),
        (b"data: [1]\ndata: [2]\n\n", ["[1]\n[2]"]),
        # A blank line ends the split run: the next event is judged afresh.
        (b'data: {"a":1}\ndata: {"b":2}\n\ndata: x\ndata: {"c":3}\n\n', ['{"a":1}', '{"b":2}', 'x\n{"c":3}']),
    ],
    ids=[
        "no-blank-lines",
        "blank-at-end",
        "done-line",
        "crlf",
        "multi-line-json",
        "bad-second-line",
        "plain-text",
        "arrays-are-not-events",
        "blank-line-resets",
    ],
)
def test_events_without_blank_lines_are_one_event_per_line(stream, datas):
    assert list(iter_data(iter_sse_events([stream]))) == datas


def test_events_without_blank_lines_stream_as_they_arrive():
    # Each event is dispatched when the next data line completes: nothing waits for the end.
    pulled = []

    def lines():
        for n in range(3):
            pulled.append(n)
            yield f'data: {{"n":{n}}}\n'.encode()

    events = iter_sse_events(lines())
    assert next(events).data == '{"n":0}'
    assert pulled == [0, 1]  # dispatched once the second line completed, not at the end
    assert next(events).data == '{"n":1}'
    assert pulled == [0, 1]  # and each line from then on as soon as it completes
    assert next(events).data == '{"n":2}'
    assert pulled == [0, 1, 2]


def test_an_event_that_never_ends_is_refused_past_its_limit():
    lines = (b"data: " + b"x" * 9 + b"\n" for _ in range(1000))  # no blank line, ever
    with pytest.raises(SseLineTooLong, match="an event larger than 50 bytes"):
        list(iter_sse_events(lines, max_event=50))


def test_an_event_just_under_its_limit_is_kept():
    assert list(iter_sse_events([b"data: abcd\ndata: efgh\n\n"], max_event=22)) == [SseEvent("abcd\nefgh")]
