"""Unit tests for converters.py: the neutral contract (ApiError, messages, deltas), no I/O."""

from __future__ import annotations

import pytest

from converters import ApiError, Delta, iter_reasoning_format
from fronts.openai_render import error_body
from tests.helpers import USAGE, fold

# --- ApiError -----------------------------------------------------------------------------


def test_api_error_defaults():
    error = ApiError("oops")
    assert (error.status, error.type, error.param, error.code, error.headers) == (
        400,
        "invalid_request_error",
        None,
        None,
        {},
    )
    assert error_body(error) == {
        "error": {"message": "oops", "type": "invalid_request_error", "param": None, "code": None}
    }


@pytest.mark.parametrize(
    ("retryable", "headers"), [(None, {}), (True, {"x-should-retry": "true"}), (False, {"x-should-retry": "false"})]
)
def test_api_error_retryable_sets_x_should_retry(retryable, headers):
    assert ApiError("m", retryable=retryable).headers == headers


def test_api_error_copies_headers():
    given = {"Retry-After": "5"}
    error = ApiError("m", headers=given, retryable=False)
    assert error.headers == {"Retry-After": "5", "x-should-retry": "false"}
    assert given == {"Retry-After": "5"}


# --- fold_messages ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["hello", "  padded  ", "\n\nlines\n  indented\n\n", "", 'quotes " and \\ and ${X} and {{y}}', "ünïcødé 你好"],
)
def test_fold_sends_a_lone_user_string_unchanged(text):
    assert fold([{"role": "user", "content": text}]) == text


def test_fold_joins_the_text_parts_of_a_lone_user_message():
    message = {"role": "user", "content": [{"type": "text", "text": " one "}, {"type": "text", "text": "two\n"}]}
    assert fold([message]) == " one \ntwo\n"


def test_fold_lone_user_message_with_null_content_is_empty():
    assert fold([{"role": "user", "content": None}]) == ""


def test_fold_labels_a_whole_conversation_in_order():
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "What's the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "user", "content": [{"type": "text", "text": "And"}, {"type": "text", "text": "tomorrow?"}]},
    ]
    assert fold(messages) == (
        "System: You are terse.\n\n"
        "System: Answer in French.\n\n"
        "User: What's the weather in Paris?\n\n"
        'Assistant: [called get_weather({"city": "Paris"})]\n\n'
        'Tool result (call_1):\n{"temp": 21}\n\n'
        "User: And\ntomorrow?"
    )


def test_fold_assistant_with_text_and_several_tool_calls():
    messages = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "b", "type": "function", "function": {"name": "g", "arguments": '{"x": 1}'}},
            ],
        },
    ]
    assert fold(messages) == 'User: hi\n\nAssistant: Let me check.\n[called f({})]\n[called g({"x": 1})]'


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"role": "system", "content": "Be nice."}, "System: Be nice."),
        ({"role": "developer", "content": "Be nice."}, "System: Be nice."),
        ({"role": "assistant", "content": "Earlier answer"}, "Assistant: Earlier answer"),
        ({"role": "tool", "tool_call_id": "call_9", "content": "42"}, "Tool result (call_9):\n42"),
        ({"role": "function", "name": "lookup", "content": "42"}, "Tool result (lookup):\n42"),
        ({"role": "tool", "content": "42"}, "Tool result:\n42"),
    ],
)
def test_fold_labels_a_lone_non_user_message(message, expected):
    assert fold([message]) == expected


def test_fold_drops_empty_blocks():
    messages = [
        {"role": "system", "content": "S"},
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "U"},
    ]
    assert fold(messages) == "System: S\n\nUser: U"


def test_fold_two_user_messages_are_labelled():
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert fold(messages) == "User: a\n\nUser: b"


@pytest.mark.parametrize(
    ("messages", "param", "kind"),
    [
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    ],
                }
            ],
            "messages[0].content[1]",
            "image_url",
        ),
        (
            [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "u"},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]},
            ],
            "messages[2].content[0]",
            "image_url",
        ),
        (
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]}],
            "messages[0].content[0]",
            "input_audio",
        ),
    ],
)
def test_fold_refuses_non_text_parts(messages, param, kind):
    with pytest.raises(ApiError) as info:
        fold(messages)
    error = info.value
    assert (error.status, error.type, error.code, error.param) == (
        400,
        "invalid_request_error",
        "unsupported_content",
        param,
    )
    assert error.message == f"Content parts of type '{kind}' are not supported by this provider; send text."


# --- iter_reasoning_format ----------------------------------------------------------------


def reply_deltas() -> list[Delta]:
    return [
        Delta(reasoning="First."),
        Delta(reasoning="\n\nSecond."),
        Delta(content="Hello"),
        Delta(content=" world"),
        Delta(usage=USAGE),
    ]


def test_reasoning_format_reasoning_content_passes_through():
    given = reply_deltas()
    out = list(iter_reasoning_format(given, "reasoning_content"))
    assert out == given
    assert all(a is b for a, b in zip(out, given, strict=True))


def test_reasoning_format_hidden_drops_reasoning():
    given = [*reply_deltas()[:3], Delta(content="!", reasoning="mixed"), Delta(usage=USAGE)]
    out = list(iter_reasoning_format(given, "hidden"))
    assert out == [Delta(content="Hello"), Delta(content="!"), Delta(usage=USAGE)]


def test_reasoning_format_think_tags_wraps_reasoning_once():
    out = list(iter_reasoning_format(reply_deltas(), "think-tags"))
    assert out == [
        Delta(content="<think>\nFirst."),
        Delta(content="\n\nSecond."),
        Delta(content="\n</think>\n\nHello"),
        Delta(content=" world"),
        Delta(usage=USAGE),
    ]
    text = "".join(d.content for d in out)
    assert text == "<think>\nFirst.\n\nSecond.\n</think>\n\nHello world"
    assert text.count("<think>") == 1
    assert all(d.reasoning == "" for d in out)


def test_reasoning_format_think_tags_without_reasoning_is_plain():
    given = [Delta(content="a"), Delta(content="b"), Delta(usage=USAGE)]
    assert list(iter_reasoning_format(given, "think-tags")) == given


def test_reasoning_format_think_tags_reasoning_and_content_in_one_delta():
    out = list(iter_reasoning_format([Delta(reasoning="r", content="c")], "think-tags"))
    assert out == [Delta(content="<think>\nr\n</think>\n\nc")]


def test_reasoning_format_think_tags_closes_the_tag_when_no_content_follows():
    # A reply that is only reasoning (answer empty) must not leave "<think>" open.
    out = list(iter_reasoning_format([Delta(reasoning="only thinking"), Delta(usage=USAGE)], "think-tags"))
    text = "".join(d.content for d in out)
    assert text.rstrip("\n") == "<think>\nonly thinking\n</think>"
    assert out[-1].usage == USAGE
