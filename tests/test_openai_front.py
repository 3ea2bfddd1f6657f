"""Unit tests for the OpenAI front: request parsing and normalisation, chunks, completions, errors."""

from __future__ import annotations

import json

import pytest

from converters import ApiError, ChatRequest, ContentPart, Delta, Message
from dialects.qwen import iter_qwen_deltas
from fronts.openai_chat import ROLE_ALIASES, parse_chat_request
from fronts.openai_render import CompletionMeta, completion_from_deltas, error_body, iter_chunks
from tests import fake_qwen as fq
from tests.helpers import USAGE, datas, usage_total

# --- helpers ------------------------------------------------------------------------------


def meta() -> CompletionMeta:
    return CompletionMeta(id="chatcmpl-abc", created=1790000000, model="qwen3-max")


def valid_body(**changes) -> dict:
    body = {"model": "qwen3-max", "messages": [{"role": "user", "content": "hi"}]}
    body.update(changes)
    return body


def raises_api_error(body) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_chat_request(body)
    return info.value


# --- error bodies -------------------------------------------------------------------------


def test_error_body_has_exactly_the_openai_error_fields():
    error = ApiError("bad", status=404, type="not_found_error", param="model", code="model_not_found")
    assert error_body(error) == {
        "error": {"message": "bad", "type": "not_found_error", "param": "model", "code": "model_not_found"}
    }
    assert list(error_body(error)) == ["error"]
    assert set(error_body(error)["error"]) == {"message", "type", "param", "code"}
    assert str(error) == "bad"


# --- validate_chat_request ----------------------------------------------------------------


@pytest.mark.parametrize("body", [[], [{"model": "m"}], "text", "", None, 0, 3.5, True])
def test_validate_rejects_a_body_that_is_not_an_object(body):
    error = raises_api_error(body)
    assert error.status == 400
    assert error.type == "invalid_request_error"
    assert error.param is None
    assert error.message == "The request body must be a JSON object."


@pytest.mark.parametrize(
    "changes",
    [
        {"model": None},
        {"model": ""},
        {"model": "   "},
        {"model": 5},
        {"model": ["qwen3-max"]},
        {"model": {"id": "qwen3-max"}},
        {"model": True},
    ],
)
def test_validate_rejects_a_bad_model(changes):
    error = raises_api_error(valid_body(**changes))
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", "model")
    assert error.message == "'model' is required and must be a non-empty string."


def test_validate_rejects_a_missing_model():
    error = raises_api_error({"messages": [{"role": "user", "content": "hi"}]})
    assert (error.status, error.param) == (400, "model")


@pytest.mark.parametrize(
    "messages",
    [None, [], {}, {"role": "user", "content": "hi"}, "hi", 1, "missing"],
)
def test_validate_rejects_bad_messages(messages):
    body = valid_body(messages=messages)
    if messages == "missing":
        del body["messages"]
    error = raises_api_error(body)
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", "messages")
    assert error.message == "'messages' is required and must be a non-empty array."


@pytest.mark.parametrize("bad", ["hello", None, 3, ["user", "hi"], True])
def test_validate_rejects_a_message_that_is_not_an_object(bad):
    error = raises_api_error(valid_body(messages=[{"role": "user", "content": "hi"}, bad]))
    assert (error.status, error.param) == (400, "messages[1]")
    assert error.message == "'messages[1]' must be an object."


@pytest.mark.parametrize(
    "message",
    [
        {"content": "hi"},
        {"role": None, "content": "hi"},
        {"role": "robot", "content": "hi"},
        {"role": "User", "content": "hi"},
        {"role": "", "content": "hi"},
        {"role": 1, "content": "hi"},
        # A JSON array or object as role must be a 400 too, not a crash (unhashable in a set lookup).
        {"role": ["user"], "content": "hi"},
        {"role": {"name": "user"}, "content": "hi"},
    ],
)
def test_validate_rejects_an_unknown_role(message):
    error = raises_api_error(valid_body(messages=[message]))
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", "messages[0].role")
    assert error.message == ("'messages[0].role' must be one of: assistant, developer, function, system, tool, user.")


@pytest.mark.parametrize("content", [1, 2.5, True, {"type": "text", "text": "hi"}, {}])
def test_validate_rejects_content_of_a_wrong_type(content):
    error = raises_api_error(valid_body(messages=[{"role": "user", "content": content}]))
    assert (error.status, error.param) == (400, "messages[0].content")
    assert error.message == "'messages[0].content' must be a string or an array of parts."


@pytest.mark.parametrize(
    ("parts", "param"),
    [
        (["hello"], "messages[0].content[0]"),
        ([None], "messages[0].content[0]"),
        ([1], "messages[0].content[0]"),
        ([["text", "hi"]], "messages[0].content[0]"),
        ([{"text": "no type"}], "messages[0].content[0]"),
        ([{"type": None, "text": "x"}], "messages[0].content[0]"),
        ([{"type": 1, "text": "x"}], "messages[0].content[0]"),
        ([{"type": "text", "text": "ok"}, "second"], "messages[0].content[1]"),
    ],
)
def test_validate_rejects_a_bad_content_part(parts, param):
    error = raises_api_error(valid_body(messages=[{"role": "user", "content": parts}]))
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", param)
    assert error.message == f"'{param}' must be an object with a string 'type'."


@pytest.mark.parametrize(
    ("parts", "param"),
    [
        ([{"type": "text"}], "messages[0].content[0].text"),
        ([{"type": "text", "text": None}], "messages[0].content[0].text"),
        ([{"type": "text", "text": 5}], "messages[0].content[0].text"),
        ([{"type": "text", "text": ["a"]}], "messages[0].content[0].text"),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": {"value": "b"}}], "messages[0].content[1].text"),
        ([{"type": "refusal", "refusal": 1}], "messages[0].content[0].refusal"),
    ],
)
def test_validate_rejects_a_text_part_without_string_text(parts, param):
    error = raises_api_error(valid_body(messages=[{"role": "user", "content": parts}]))
    assert (error.status, error.param) == (400, param)
    assert error.message == f"'{param}' must be a string."


def test_validate_points_at_the_right_message_index():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "user", "content": 7}]
    assert raises_api_error(valid_body(messages=messages)).param == "messages[2].content"


@pytest.mark.parametrize("role", ["system", "developer", "user", "assistant", "tool", "function"])
def test_validate_accepts_every_role(role):
    messages = [{"role": role, "content": "x"}]
    request = parse_chat_request(valid_body(messages=messages))
    assert request.passthrough["messages"] == messages
    assert request.messages == (Message(ROLE_ALIASES.get(role, role), (ContentPart("text", "x"),)),)


@pytest.mark.parametrize(
    "content",
    [
        None,
        "",
        "text",
        [],
        [{"type": "text", "text": "a"}, {"type": "text", "text": ""}],
        [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}],
        [{"type": "refusal", "refusal": "no"}],
    ],
)
def test_validate_accepts_content_shapes(content):
    request = parse_chat_request(valid_body(messages=[{"role": "assistant", "content": content}]))
    assert request.passthrough["messages"][0]["content"] == content
    parts = request.messages[0].parts
    if isinstance(content, list):
        assert [part.type for part in parts] == [part["type"] for part in content]
        assert [part.raw for part in parts if not part.is_text] == [p for p in content if p["type"] == "image_url"]
    else:
        assert parts == (() if content is None else (ContentPart("text", content),))


def test_validate_returns_defaults_for_a_minimal_body():
    body = valid_body()
    request = parse_chat_request(body)
    assert request == ChatRequest(
        model="qwen3-max",
        messages=(Message("user", (ContentPart("text", "hi"),)),),
        stream=False,
        include_usage=False,
        reasoning_effort=None,
        provider=None,
    )
    assert request.passthrough is body


def test_validate_accepts_null_optional_fields():
    body = valid_body(
        stream=None,
        stream_options=None,
        reasoning_effort=None,
        provider=None,
        temperature=None,
        top_p=None,
        max_tokens=None,
        tools=None,
        tool_choice=None,
        user=None,
        n=None,
        stop=None,
        response_format=None,
    )
    request = parse_chat_request(body)
    assert (request.stream, request.include_usage, request.reasoning_effort, request.provider) == (
        False,
        False,
        None,
        None,
    )


def test_validate_ignores_unknown_fields():
    body = valid_body(
        temperature=0.2,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        frobnicate={"x": [1, 2]},
        seed="not even an int",
        messages=[{"role": "user", "content": "hi", "name": "bob", "weird": 1}],
    )
    request = parse_chat_request(body)
    assert request.model == "qwen3-max"
    assert request.messages == (Message("user", (ContentPart("text", "hi"),), name="bob"),)
    assert request.passthrough["messages"] == [{"role": "user", "content": "hi", "name": "bob", "weird": 1}]
    assert request.tools == ({"type": "function", "function": {"name": "f", "parameters": {}}},)


@pytest.mark.parametrize("stream", ["true", 1, 0, "yes", [], {}])
def test_validate_rejects_a_non_bool_stream(stream):
    error = raises_api_error(valid_body(stream=stream))
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", "stream")
    assert error.message == "'stream' must be of type bool."


@pytest.mark.parametrize("stream", [True, False])
def test_validate_carries_stream(stream):
    assert parse_chat_request(valid_body(stream=stream)).stream is stream


@pytest.mark.parametrize(
    ("stream_options", "include_usage"),
    [
        ({"include_usage": True}, True),
        ({"include_usage": False}, False),
        ({"include_usage": None}, False),
        ({}, False),
        ({"other": 1}, False),
        (None, False),
    ],
)
def test_validate_parses_include_usage(stream_options, include_usage):
    request = parse_chat_request(valid_body(stream=True, stream_options=stream_options))
    assert request.include_usage is include_usage


@pytest.mark.parametrize(
    ("stream_options", "param"),
    [
        ("include_usage", "stream_options"),
        ([{"include_usage": True}], "stream_options"),
        (True, "stream_options"),
        ({"include_usage": "true"}, "stream_options.include_usage"),
        ({"include_usage": 1}, "stream_options.include_usage"),
    ],
)
def test_validate_rejects_bad_stream_options(stream_options, param):
    error = raises_api_error(valid_body(stream=True, stream_options=stream_options))
    assert (error.status, error.param) == (400, param)


def test_validate_carries_provider_and_reasoning_effort():
    request = parse_chat_request(valid_body(provider="qwen", reasoning_effort="high"))
    assert request.provider == "qwen"
    assert request.reasoning_effort == "high"


@pytest.mark.parametrize(
    ("key", "value"), [("provider", 1), ("provider", ["qwen"]), ("reasoning_effort", 2), ("reasoning_effort", True)]
)
def test_validate_rejects_non_string_provider_and_reasoning_effort(key, value):
    error = raises_api_error(valid_body(**{key: value}))
    assert (error.status, error.param) == (400, key)
    assert error.message == f"'{key}' must be of type str."


# --- iter_chunks --------------------------------------------------------------------------


def test_chunks_without_usage():
    deltas = [Delta(reasoning="think"), Delta(content="Hel"), Delta(content="lo"), Delta(usage=USAGE)]
    chunks = list(iter_chunks(deltas, meta(), include_usage=False))
    head = {
        "id": "chatcmpl-abc",
        "object": "chat.completion.chunk",
        "created": 1790000000,
        "model": "qwen3-max",
        "system_fingerprint": "fp_reverse_api",
    }

    def choice(delta, finish=None):
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    assert chunks == [
        choice({"role": "assistant", "content": ""}),
        choice({"reasoning_content": "think"}),
        choice({"content": "Hel"}),
        choice({"content": "lo"}),
        choice({}, "stop"),
    ]
    assert all("usage" not in chunk for chunk in chunks)
    assert all(chunk["choices"] for chunk in chunks)
    assert sum("role" in chunk["choices"][0]["delta"] for chunk in chunks) == 1


def test_chunks_with_usage():
    deltas = [Delta(content="Hi"), Delta(usage=USAGE)]
    chunks = list(iter_chunks(deltas, meta(), include_usage=True))
    assert len(chunks) == 4
    for chunk in chunks[:-1]:
        assert chunk["usage"] is None
        assert len(chunk["choices"]) == 1
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
        {"role": "assistant", "content": ""},
        {"content": "Hi"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, "stop"]
    assert chunks[-1] == {
        "id": "chatcmpl-abc",
        "object": "chat.completion.chunk",
        "created": 1790000000,
        "model": "qwen3-max",
        "system_fingerprint": "fp_reverse_api",
        "choices": [],
        "usage": USAGE,
    }
    assert {(c["id"], c["created"], c["model"], c["object"]) for c in chunks} == {
        ("chatcmpl-abc", 1790000000, "qwen3-max", "chat.completion.chunk")
    }


def test_chunks_with_usage_but_none_received():
    chunks = list(iter_chunks([Delta(content="x")], meta(), include_usage=True))
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_chunks_delta_with_both_reasoning_and_content():
    chunks = list(iter_chunks([Delta(reasoning="r", content="c")], meta(), include_usage=False))
    assert chunks[1]["choices"][0]["delta"] == {"reasoning_content": "r", "content": "c"}


def test_chunks_are_json_serializable():
    chunks = list(iter_chunks([Delta(content='é"\\'), Delta(usage=USAGE)], meta(), include_usage=True))
    assert [json.loads(json.dumps(c)) for c in chunks] == chunks


def test_completion_meta_new():
    first, second = CompletionMeta.new("m"), CompletionMeta.new("m")
    assert first.id.startswith("chatcmpl-")
    assert len(first.id) == len("chatcmpl-") + 32
    assert first.id != second.id
    assert type(first.created) is int
    assert first.model == "m"


# --- completion_from_deltas ---------------------------------------------------------------


def test_completion_from_deltas_with_reasoning():
    deltas = [Delta(reasoning="a"), Delta(reasoning="b"), Delta(content="Hel"), Delta(content="lo"), Delta(usage=USAGE)]
    assert completion_from_deltas(deltas, meta()) == {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1790000000,
        "model": "qwen3-max",
        "system_fingerprint": "fp_reverse_api",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello",
                    "refusal": None,
                    "annotations": [],
                    "reasoning_content": "ab",
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }


def test_completion_from_deltas_without_reasoning():
    completion = completion_from_deltas([Delta(content="Hi"), Delta(usage=USAGE)], meta())
    message = completion["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Hi", "refusal": None, "annotations": []}
    assert "reasoning_content" not in message
    assert completion["usage"] == USAGE
    assert completion["choices"][0]["finish_reason"] == "stop"


def test_completion_from_no_deltas():
    completion = completion_from_deltas([], meta())
    assert completion["choices"][0]["message"]["content"] == ""
    assert completion["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_completion_end_to_end_from_qwen_frames():
    frames = [fq.created_frame(), *fq.summary_frames(["Plan."]), *fq.answer_frames(["Hello", " world"])]
    completion = completion_from_deltas(iter_qwen_deltas(datas(frames)), meta())
    message = completion["choices"][0]["message"]
    assert message["content"] == "Hello world"
    assert message["reasoning_content"] == "Plan."
    assert completion["usage"] == usage_total(10, 2)


def test_a_collected_reply_counts_tool_call_arguments_against_its_bound():
    from converters import iter_bounded

    fragment = {"index": 0, "function": {"arguments": "x" * 600}}
    with pytest.raises(ApiError, match="longer than 1000 characters"):
        list(iter_bounded([Delta(tool_calls=[fragment]), Delta(tool_calls=[fragment])], 1000))


def test_long_tool_calls_are_joined_once():
    pieces = [
        Delta(tool_calls=[{"index": 0, "id": "c", "function": {"name": "f" if n == 0 else "", "arguments": "ab"}}])
        for n in range(5000)
    ]
    completion = completion_from_deltas([*pieces, Delta(usage=USAGE, finish_reason="tool_calls")], meta())
    call = completion["choices"][0]["message"]["tool_calls"][0]
    assert call == {"id": "c", "type": "function", "function": {"name": "f", "arguments": "ab" * 5000}}
