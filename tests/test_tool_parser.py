"""Unit tests for tool_parser.py: tool calls read out of an answer, the same however it was split."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tool_parser import MAX_CALL_BODY, CallEvent, TextEvent, ToolCallParser, parse_all

NAMES = frozenset({"get_weather", "get_time", "search"})
PROPERTY = settings(max_examples=300, deadline=None, database=None)
WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
CALL = f"[TOOL CALL]\n{WEATHER}\n[END TOOL CALL]"
PARIS = CallEvent("get_weather", {"city": "Paris"})


def feed_pieces(pieces: list[str], names: frozenset[str] = NAMES) -> list:
    """Feed the pieces one by one; return every event with adjacent text merged."""
    parser = ToolCallParser(names)
    events = [event for piece in pieces for event in parser.feed(piece)] + parser.finish()
    merged: list = []
    for event in events:
        if isinstance(event, TextEvent) and merged and isinstance(merged[-1], TextEvent):
            merged[-1] = TextEvent(merged[-1].text + event.text)
        else:
            merged.append(event)
    return merged


def split_at(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def text_of(events: list) -> str:
    return "".join(event.text for event in events if isinstance(event, TextEvent))


# Answers a model writes, plain and odd: every one must come out the same for every split.
ANSWERS = [
    "Just an answer, no tools.",
    f"Let me check.\n{CALL}",
    f"{CALL}\n[TOOL CALL]\n" + '{"name": "get_time", "arguments": {}}' + "\n[END TOOL CALL]",
    f"Before\n{CALL}\nAfter the call.",
    '<tool_call>\n{"name": "search", "arguments": {"q": "x"}}\n</tool_call>',
    '[TOOL CALL]\n```json\n{"name": "search", "arguments": {"q": "fenced"}}\n```\n[END TOOL CALL]',
    '[TOOL CALL]{"name": "search", "arguments": "{\\"q\\": \\"as a string\\"}"}[END TOOL CALL]',
    '[TOOL CALL]\n{"name": "search", "arguments": {"q": "quotes \\" and [END TOOL CALL] and \\\\"}}\n[END TOOL CALL]',
    '[TOOL CALL]\n{"name": "unknown_tool", "arguments": {}}\n[END TOOL CALL] then text',
    '[TOOL CALL]\n{"name": "search", "arguments": [1, 2]}\n[END TOOL CALL]',
    "[TOOL CALL]\n{not json}\n[END TOOL CALL]",
    f"Docs:\n```\n{CALL}\n```\nand a real one:\n{CALL}",
    "Write [TOOL CALL] then JSON, then [END TOOL CALL]. `` ` ``` `` ```` x",
    "[tool call]\n" + WEATHER + "\n[end tool call]",
    "[TOOL CALL]\n" + WEATHER,  # cut off: a complete call all the same
    "[TOOL CALL]\n" + WEATHER + "\n[END TOO",
    '[TOOL CALL]\n{"name": "search", "arguments": {"q": "unterminated',
    "[TOOL CALL] [TOOL CALL]" + WEATHER + "[END TOOL CALL]",
    "[TOOL CALL]" + WEATHER + "[TOOL CALL]" + WEATHER + "[END TOOL CALL]",
    'Nested {"a": [1, {"b": "<tool_call>"}]} [TOOL CALL]{"name": "search", "arguments": {"a": [[1], {"b": []}]}}[END TOOL CALL]',
    "Hello [TO",
    "ünïcødé 你好 😀 [TOOL CALL]" + '{"name": "search", "arguments": {"q": "你好 😀"}}' + "[END TOOL CALL] ✓",
    "```python\nprint('[TOOL CALL]')\n```\n```\nunclosed [TOOL CALL]" + WEATHER + "[END TOOL CALL]",
]


# --- what is a call and what is text -----------------------------------------------------------


def test_text_then_a_call():
    assert parse_all(f"Let me check.\n{CALL}", NAMES) == [TextEvent("Let me check.\n"), PARIS]


def test_two_calls():
    time = '[TOOL CALL]{"name": "get_time", "arguments": {"zone": "UTC"}}[END TOOL CALL]'
    events = parse_all(f"{CALL}\n{time}", NAMES)
    assert events == [PARIS, TextEvent("\n"), CallEvent("get_time", {"zone": "UTC"})]


def test_text_after_a_call():
    assert parse_all(f"{CALL}\nDone.", NAMES) == [PARIS, TextEvent("\nDone.")]


@pytest.mark.parametrize(
    "answer",
    [
        f"<tool_call>\n{WEATHER}\n</tool_call>",
        f"<TOOL_CALL>{WEATHER}</Tool_Call>",
        f"[Tool Call]{WEATHER}[End Tool Call]",
        f"[TOOL CALL]{WEATHER}</tool_call>",  # ends mixed up: still one call
        f"[TOOL CALL]\n\n  ```json\n{WEATHER}\n```  \n[END TOOL CALL]",
        f"[TOOL CALL]```{WEATHER}```[END TOOL CALL]",
        '[TOOL CALL]{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}[END TOOL CALL]',
        '[TOOL CALL]{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Paris"\n  }\n}[END TOOL CALL]',
        '[TOOL CALL]{"name": "get_weather", "parameters": {"city": "Paris"}}[END TOOL CALL]',
    ],
)
def test_call_spellings_a_model_may_use(answer):
    assert parse_all(answer, NAMES) == [PARIS]


@pytest.mark.parametrize(
    ("body", "arguments"),
    [
        ('{"name": "get_time"}', {}),
        ('{"name": "get_time", "arguments": null}', {}),
        ('{"name": "get_time", "arguments": ""}', {}),
        ('{"name": "get_time", "arguments": {"q": "[END TOOL CALL]"}}', {"q": "[END TOOL CALL]"}),
        ('{"name": "get_time", "arguments": {"q": "a \\"quoted\\" </tool_call>"}}', {"q": 'a "quoted" </tool_call>'}),
        ('{"name": "get_time", "arguments": {"code": "```"}}', {"code": "```"}),
        ('{"name": "get_time", "arguments": {"text": "line one\nline two"}}', {"text": "line one\nline two"}),
    ],
)
def test_call_arguments(body, arguments):
    assert parse_all(f"[TOOL CALL]{body}[END TOOL CALL]", NAMES) == [CallEvent("get_time", arguments)]


@pytest.mark.parametrize(
    "answer",
    [
        '[TOOL CALL]\n{"name": "delete_everything", "arguments": {}}\n[END TOOL CALL]',  # not a tool offered
        '[TOOL CALL]\n{"name": "search", "arguments": [1, 2]}\n[END TOOL CALL]',
        '[TOOL CALL]\n{"name": "search", "arguments": "not an object"}\n[END TOOL CALL]',
        '[TOOL CALL]\n{"name": "search", "arguments": "[1]"}\n[END TOOL CALL]',
        '[TOOL CALL]\n{"name": "search", "arguments": 5}\n[END TOOL CALL]',
        '[TOOL CALL]\n{"name": "search", "arguments": {"x": NaN}}\n[END TOOL CALL]',
        '[TOOL CALL]\n{"name": ["search"]}\n[END TOOL CALL]',
        '[TOOL CALL]\n{"arguments": {}}\n[END TOOL CALL]',
        "[TOOL CALL]\n{name: 'search'}\n[END TOOL CALL]",
        '[TOOL CALL]\n["search", {}]\n[END TOOL CALL]',
        '[TOOL CALL]\n{"name": "search"} and more\n[END TOOL CALL]',
        '[TOOL CALL]\n{"name": "search"}{"name": "search"}\n[END TOOL CALL]',
        "[TOOL CALL][END TOOL CALL]",
        "[TOOL CALL] is how a call starts",
        "[TOOL CALL]\n``js on\n{}[END TOOL CALL]",
        '<tool_call><b>{"name": "search"}</b></tool_call>',
    ],
)
def test_what_is_not_a_call_comes_out_as_the_text_it_was(answer):
    assert parse_all(answer, NAMES) == [TextEvent(answer)]
    assert feed_pieces(list(answer)) == [TextEvent(answer)]


def test_no_tools_means_no_calls():
    assert parse_all(CALL, frozenset()) == [TextEvent(CALL)]


def test_a_marker_in_a_code_fence_is_documentation():
    answer = f"Use this format:\n```\n{CALL}\n```\nThat is all."
    assert parse_all(answer, NAMES) == [TextEvent(answer)]


def test_the_fence_is_followed_across_feeds():
    pieces = ["Format:\n`", "``\n[TOOL", f" CALL]\n{WEATHER}\n[END TOOL CALL]\n``", "`\nNow: ", CALL]
    assert feed_pieces(pieces) == [TextEvent("".join(pieces[:-1])), PARIS]


def test_a_fence_opened_in_a_failed_call_still_counts():
    answer = f"[TOOL CALL] ```python\nprint(1)\n{CALL}\n```\n"
    assert parse_all(answer, NAMES) == [TextEvent(answer)]
    assert parse_all(answer + CALL, NAMES) == [TextEvent(answer), PARIS]


def test_a_call_after_a_fenced_example_is_read():
    events = parse_all(f"```json\n{WEATHER}\n```\n{CALL}", NAMES)
    assert events == [TextEvent(f"```json\n{WEATHER}\n```\n"), PARIS]


def test_a_start_marker_inside_a_call_abandons_the_first():
    answer = f"[TOOL CALL] oops {CALL}"
    assert parse_all("[TOOL CALL]" + WEATHER + CALL, NAMES) == [PARIS, PARIS]  # no end: complete, so a call
    assert parse_all(answer, NAMES) == [TextEvent("[TOOL CALL] oops "), PARIS]


# --- streaming: what goes out when ---------------------------------------------------------------


def test_only_a_possible_marker_is_held_back():
    parser = ToolCallParser(NAMES)
    assert parser.feed("Hello [TO") == [TextEvent("Hello ")]
    assert parser.feed("P") == [TextEvent("[TOP")]
    assert parser.finish() == []


@pytest.mark.parametrize(
    ("piece", "out", "held"),
    [
        ("Hello [TO", "Hello ", "[TO"),
        ("Hello [", "Hello ", "["),
        ("Hello <tool_c", "Hello ", "<tool_c"),
        ("Hello [tool ca", "Hello ", "[tool ca"),
        ("Hello ``", "Hello ", "``"),
        ("Hello `", "Hello ", "`"),
        ("Hello [X", "Hello [X", ""),
        ("Hello [TOOL CALLS", "Hello [TOOL CALLS", ""),
        ("a [ b [", "a [ b ", "["),
        ("Hello", "Hello", ""),
        ("```\n[TO", "```\n[TO", ""),  # in a code block only a fence matters
        ("```\n``", "```\n", "``"),
    ],
)
def test_held_back_text(piece, out, held):
    parser = ToolCallParser(NAMES)
    assert text_of(parser.feed(piece)) == out
    assert parser.finish() == ([TextEvent(held)] if held else [])


def test_text_before_a_call_goes_out_before_the_call_ends():
    parser = ToolCallParser(NAMES)
    assert parser.feed("Let me look. [TOOL CALL]\n{") == [TextEvent("Let me look. ")]
    assert parser.feed('"name": "get_weather", "arguments": {"city": "Paris"}}\n[END TOOL') == []
    assert parser.feed(" CALL] Done") == [PARIS, TextEvent(" Done")]


def test_prose_that_names_the_marker_is_let_go_at_once():
    parser = ToolCallParser(NAMES)
    assert parser.feed("Write [TOOL CALL] then the JSON") == [TextEvent("Write [TOOL CALL] then the JSON")]


def test_an_unterminated_call_at_the_end():
    assert parse_all(f"[TOOL CALL]\n{WEATHER}\n", NAMES) == [PARIS]
    assert parse_all(f"[TOOL CALL]\n{WEATHER}\n[END TO", NAMES) == [PARIS]
    cut = '[TOOL CALL]\n{"name": "get_weather", "arguments": {"city": "Par'
    assert parse_all(cut, NAMES) == [TextEvent(cut)]


def test_a_call_body_too_long_is_given_up_as_text():
    answer = '[TOOL CALL]{"name": "search", "arguments": {"q": "' + "x" * MAX_CALL_BODY + '"}}[END TOOL CALL] bye'
    parser = ToolCallParser(NAMES)
    events = [event for start in range(0, len(answer), 4096) for event in parser.feed(answer[start : start + 4096])]
    assert events and all(isinstance(event, TextEvent) for event in events)  # given up before the end came
    events += parser.finish()
    assert text_of(events) == answer
    assert feed_pieces([answer]) == [TextEvent(answer)]


def test_a_long_call_within_the_limit_is_a_call():
    value = "y" * (MAX_CALL_BODY - 100)
    answer = '[TOOL CALL]{"name": "search", "arguments": {"q": "' + value + '"}}[END TOOL CALL]'
    assert feed_pieces([answer[i : i + 1000] for i in range(0, len(answer), 1000)]) == [
        CallEvent("search", {"q": value})
    ]


def test_the_parser_is_ready_again_after_finish():
    parser = ToolCallParser(NAMES)
    parser.feed("```\n[TOOL CALL]")
    parser.finish()
    assert parser.feed(CALL) + parser.finish() == [PARIS]


# --- the same however it is split ----------------------------------------------------------------


def test_a_call_split_at_every_boundary():
    answer = f"Hi [TOOL CALL]\n{WEATHER}\n[END TOOL CALL] bye"
    expected = [TextEvent("Hi "), PARIS, TextEvent(" bye")]
    for first in range(len(answer) + 1):
        for second in range(first, len(answer) + 1):
            assert feed_pieces(split_at(answer, [first, second])) == expected, (first, second)


@pytest.mark.parametrize("answer", ANSWERS)
def test_every_single_character_split_matches_the_whole(answer):
    assert feed_pieces(list(answer)) == parse_all(answer, NAMES)


@pytest.mark.parametrize("answer", ANSWERS)
def test_concatenated_text_and_calls_cover_the_answer(answer):
    events = parse_all(answer, NAMES)
    assert all(event.text for event in events if isinstance(event, TextEvent))
    assert len(text_of(events)) <= len(answer)
    assert not any(
        isinstance(a, TextEvent) and isinstance(b, TextEvent) for a, b in zip(events, events[1:], strict=False)
    )


@PROPERTY
@given(st.data())
def test_random_splits_match_the_whole(data):
    answer = data.draw(st.sampled_from(ANSWERS))
    cuts = data.draw(st.lists(st.integers(0, len(answer)), max_size=12))
    assert feed_pieces(split_at(answer, cuts)) == parse_all(answer, NAMES)


FRAGMENTS = [
    "[TOOL CALL]",
    "[END TOOL CALL]",
    "<tool_call>",
    "</tool_call>",
    "[tool",
    " call]",
    "```",
    "`",
    "{",
    "}",
    '"',
    "\\",
    "[",
    "]",
    "<",
    WEATHER,
    '{"name": "search"}',
    '"name": "get_time"',
    "\n",
    " ",
    "text",
    "json",
]


@PROPERTY
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=16), st.data())
def test_random_answers_split_randomly_match_the_whole(fragments, data):
    answer = "".join(fragments)
    cuts = data.draw(st.lists(st.integers(0, len(answer)), max_size=10))
    whole = parse_all(answer, NAMES)
    assert feed_pieces(split_at(answer, cuts)) == whole
    assert feed_pieces(list(answer)) == whole
    if not any(isinstance(event, CallEvent) for event in whole):
        assert text_of(whole) == answer  # nothing taken: nothing lost


def test_prose_about_the_protocol_is_not_held_to_the_end():
    parser = ToolCallParser({"get_weather"})
    events = parser.feed("To call a tool I open with [TOOL CALL] { and put the name inside. More text")
    assert "".join(e.text for e in events if isinstance(e, TextEvent)).startswith(
        "To call a tool I open with [TOOL CALL] {"
    )


def test_an_inline_fence_in_prose_does_not_hide_later_calls():
    text = (
        'Use triple backticks (```) for code.\n[TOOL CALL]\n{"name": "get_weather", "arguments": {}}\n[END TOOL CALL]'
    )
    assert [e for e in parse_all(text, {"get_weather"}) if isinstance(e, CallEvent)] == [CallEvent("get_weather", {})]


def test_a_fence_at_a_line_start_still_hides_a_call():
    text = 'Example:\n  ```\n[TOOL CALL]\n{"name": "get_weather", "arguments": {}}\n[END TOOL CALL]\n```\n'
    assert parse_all(text, {"get_weather"}) == [TextEvent(text)]


def test_a_number_json_cannot_write_back_makes_no_call():
    text = '[TOOL CALL]\n{"name": "get_weather", "arguments": {"x": 1e400}}\n[END TOOL CALL]'
    assert parse_all(text, {"get_weather"}) == [TextEvent(text)]
