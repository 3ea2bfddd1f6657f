"""Unit tests for converters.py: pure request/response conversion, no Flask and no network."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import pytest

from converters import (
    ApiError,
    ChatRequest,
    CompletionMeta,
    Delta,
    build_create_chat_body,
    build_qwen_payload,
    completion_from_deltas,
    error_from_upstream,
    fold_messages,
    iter_chunks,
    iter_qwen_deltas,
    iter_reasoning_format,
    thinking_choice,
    validate_chat_request,
)
from tests import fake_qwen as fq

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_PATH = ROOT / "porviders" / "qwen" / "payload.json"
CHAT_ID = "c0ffee00-1111-4111-8111-111111111111"
NOW = 1790000000.75


# --- helpers ------------------------------------------------------------------------------


def data_of(raw: bytes) -> str:
    """The JSON text of one fake_qwen SSE frame, as the SSE reader hands it over."""
    text = raw.decode()
    assert text.startswith("data: ")
    return text[len("data: ") :].strip()


def datas(frames: list[bytes]) -> list[str]:
    return [data_of(raw) for raw in frames]


def answer(content: str, status: str = "typing", use: dict | None = None) -> str:
    delta = {"role": "assistant", "content": content, "phase": "answer", "status": status}
    body: dict = {"choices": [{"delta": delta}], "response_id": fq.RESPONSE_ID}
    if use is not None:
        body["usage"] = use
    return json.dumps(body)


def collect(payloads) -> tuple[list[Delta], ApiError | None]:
    """Deltas yielded before the iterator ended, and the ApiError it raised if any."""
    seen: list[Delta] = []
    try:
        for delta in iter_qwen_deltas(payloads):
            seen.append(delta)
    except ApiError as error:
        return seen, error
    return seen, None


def text_of(deltas: list[Delta]) -> str:
    return "".join(d.content for d in deltas)


def reasoning_of(deltas: list[Delta]) -> str:
    return "".join(d.reasoning for d in deltas)


def usage_total(prompt: int, completion: int, reasoning: int = 0, cached: int = 0) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


@pytest.fixture
def template() -> dict:
    return json.loads(TEMPLATE_PATH.read_text())


def is_uuid4(value: str) -> bool:
    parsed = uuid.UUID(value)
    return parsed.version == 4 and str(parsed) == value


def meta() -> CompletionMeta:
    return CompletionMeta(id="chatcmpl-abc", created=1790000000, model="qwen3-max")


def valid_body(**changes) -> dict:
    body = {"model": "qwen3-max", "messages": [{"role": "user", "content": "hi"}]}
    body.update(changes)
    return body


def raises_api_error(body) -> ApiError:
    with pytest.raises(ApiError) as info:
        validate_chat_request(body)
    return info.value


# --- ApiError -----------------------------------------------------------------------------


def test_api_error_to_dict_has_exactly_the_openai_error_fields():
    error = ApiError("bad", status=404, type="not_found_error", param="model", code="model_not_found")
    assert error.to_dict() == {
        "error": {"message": "bad", "type": "not_found_error", "param": "model", "code": "model_not_found"}
    }
    assert list(error.to_dict()) == ["error"]
    assert set(error.to_dict()["error"]) == {"message", "type", "param", "code"}
    assert str(error) == "bad"


def test_api_error_defaults():
    error = ApiError("oops")
    assert (error.status, error.type, error.param, error.code, error.headers) == (
        400,
        "invalid_request_error",
        None,
        None,
        {},
    )
    assert error.to_dict() == {
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
    request = validate_chat_request(valid_body(messages=messages))
    assert request.messages == messages


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
    request = validate_chat_request(valid_body(messages=[{"role": "assistant", "content": content}]))
    assert request.messages[0]["content"] == content


def test_validate_returns_defaults_for_a_minimal_body():
    body = valid_body()
    request = validate_chat_request(body)
    assert request == ChatRequest(
        model="qwen3-max",
        messages=[{"role": "user", "content": "hi"}],
        stream=False,
        include_usage=False,
        reasoning_effort=None,
        provider=None,
    )
    assert request.messages is body["messages"]


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
    request = validate_chat_request(body)
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
    request = validate_chat_request(body)
    assert request.model == "qwen3-max"
    assert request.messages == [{"role": "user", "content": "hi", "name": "bob", "weird": 1}]


@pytest.mark.parametrize("stream", ["true", 1, 0, "yes", [], {}])
def test_validate_rejects_a_non_bool_stream(stream):
    error = raises_api_error(valid_body(stream=stream))
    assert (error.status, error.type, error.param) == (400, "invalid_request_error", "stream")
    assert error.message == "'stream' must be of type bool."


@pytest.mark.parametrize("stream", [True, False])
def test_validate_carries_stream(stream):
    assert validate_chat_request(valid_body(stream=stream)).stream is stream


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
    request = validate_chat_request(valid_body(stream=True, stream_options=stream_options))
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
    request = validate_chat_request(valid_body(provider="qwen", reasoning_effort="high"))
    assert request.provider == "qwen"
    assert request.reasoning_effort == "high"


@pytest.mark.parametrize(
    ("key", "value"), [("provider", 1), ("provider", ["qwen"]), ("reasoning_effort", 2), ("reasoning_effort", True)]
)
def test_validate_rejects_non_string_provider_and_reasoning_effort(key, value):
    error = raises_api_error(valid_body(**{key: value}))
    assert (error.status, error.param) == (400, key)
    assert error.message == f"'{key}' must be of type str."


# --- fold_messages ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["hello", "  padded  ", "\n\nlines\n  indented\n\n", "", 'quotes " and \\ and ${X} and {{y}}', "ünïcødé 你好"],
)
def test_fold_sends_a_lone_user_string_unchanged(text):
    assert fold_messages([{"role": "user", "content": text}]) == text


def test_fold_joins_the_text_parts_of_a_lone_user_message():
    message = {"role": "user", "content": [{"type": "text", "text": " one "}, {"type": "text", "text": "two\n"}]}
    assert fold_messages([message]) == " one \ntwo\n"


def test_fold_lone_user_message_with_null_content_is_empty():
    assert fold_messages([{"role": "user", "content": None}]) == ""


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
    assert fold_messages(messages) == (
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
    assert fold_messages(messages) == 'User: hi\n\nAssistant: Let me check.\n[called f({})]\n[called g({"x": 1})]'


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
    assert fold_messages([message]) == expected


def test_fold_drops_empty_blocks():
    messages = [
        {"role": "system", "content": "S"},
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": None},
        {"role": "user", "content": "U"},
    ]
    assert fold_messages(messages) == "System: S\n\nUser: U"


def test_fold_two_user_messages_are_labelled():
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert fold_messages(messages) == "User: a\n\nUser: b"


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
        fold_messages(messages)
    error = info.value
    assert (error.status, error.type, error.code, error.param) == (
        400,
        "invalid_request_error",
        "unsupported_content",
        param,
    )
    assert error.message == f"Content parts of type '{kind}' are not supported by this provider; send text."


# --- thinking_choice ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "effort", "expected"),
    [
        ("qwen3-max", None, ("qwen3-max", None)),
        ("qwen3-max-thinking", None, ("qwen3-max", True)),
        ("qwen3-max-thinking", "none", ("qwen3-max", False)),
        ("qwen3-max-thinking", "low", ("qwen3-max", True)),
        ("qwen3-max", "none", ("qwen3-max", False)),
        ("qwen3-max", "low", ("qwen3-max", True)),
        ("qwen3-max", "medium", ("qwen3-max", True)),
        ("qwen3-max", "high", ("qwen3-max", True)),
        ("qwen3-thinking-max", None, ("qwen3-thinking-max", None)),
        ("qwen3.7-plus-thinking-thinking", None, ("qwen3.7-plus-thinking", True)),
    ],
)
def test_thinking_choice(model, effort, expected):
    assert thinking_choice(model, effort) == expected


# --- build_qwen_payload / build_create_chat_body ------------------------------------------


def test_payload_fills_model_ids_and_timestamps(template):
    payload = build_qwen_payload(template, "qwen3-max", "Hi there", None, CHAT_ID, NOW)
    assert payload["model"] == "qwen3-max"
    assert payload["chat_id"] == CHAT_ID
    assert payload["chatId"] == CHAT_ID
    assert payload["timestamp"] == 1790000000
    assert type(payload["timestamp"]) is int
    assert len(payload["messages"]) == 1
    message = payload["messages"][0]
    assert message["models"] == ["qwen3-max"]
    assert message["content"] == "Hi there"
    assert message["timestamp"] == 1790000000
    assert type(message["timestamp"]) is int
    assert message["role"] == "user"
    assert is_uuid4(message["fid"])
    assert message["fid"] != template["messages"][0]["fid"]
    assert len(message["childrenIds"]) == 1
    assert is_uuid4(message["childrenIds"][0])
    assert message["childrenIds"] != template["messages"][0]["childrenIds"]
    assert message["childrenIds"][0] != message["fid"]
    # What is not filled stays as captured.
    for key in ("stream", "version", "incremental_output", "chat_mode", "parent_id", "parentId"):
        assert payload[key] == template[key]
    for key in ("id", "parentId", "user_action", "files", "model", "chat_type", "extra", "sub_chat_type"):
        assert message[key] == template["messages"][0][key]


def test_payload_ids_are_fresh_on_every_call(template):
    first = build_qwen_payload(template, "qwen3-max", "a", None, CHAT_ID, NOW)["messages"][0]
    second = build_qwen_payload(template, "qwen3-max", "a", None, CHAT_ID, NOW)["messages"][0]
    assert first["fid"] != second["fid"]
    assert first["childrenIds"] != second["childrenIds"]


@pytest.mark.parametrize(
    "text",
    [
        'He said "hi" \\ back\\slash\n\tnew line',
        "${X} ${QWEN_TOKEN} {{model}} {text}",
        "",
        "  spaces \n\n",
        '"}], "model": "evil',
        "你好 ünïcødé \u2028 \x00",
    ],
)
def test_payload_content_is_the_text_exactly(template, text):
    payload = build_qwen_payload(template, "qwen3-max", text, None, CHAT_ID, NOW)
    assert payload["messages"][0]["content"] == text
    assert json.loads(json.dumps(payload))["messages"][0]["content"] == text


@pytest.mark.parametrize(
    ("now", "seconds"), [(1790000000.0, 1790000000), (1790000000.999, 1790000000), (1790000001, 1790000001)]
)
def test_payload_timestamps_are_int_seconds(template, now, seconds):
    payload = build_qwen_payload(template, "m", "t", None, CHAT_ID, now)
    assert payload["timestamp"] == seconds == int(now)
    assert payload["messages"][0]["timestamp"] == seconds


def test_payload_keeps_only_one_message(template):
    first = template["messages"][0]
    template["messages"] = [
        first,
        {**copy.deepcopy(first), "role": "assistant", "content": "old answer"},
        {**copy.deepcopy(first), "content": "old question"},
    ]
    payload = build_qwen_payload(template, "qwen3-max", "new question", None, CHAT_ID, NOW)
    assert len(payload["messages"]) == 1
    assert payload["messages"][0]["role"] == "user"
    assert payload["messages"][0]["content"] == "new question"
    assert len(template["messages"]) == 3


@pytest.mark.parametrize("thinking", [True, False, None])
def test_payload_does_not_mutate_the_template(template, thinking):
    before = copy.deepcopy(template)
    build_qwen_payload(template, "qwen3-max", "x", thinking, CHAT_ID, NOW)
    assert template == before


def test_payload_thinking_true_sets_thinking_mode(template):
    payload = build_qwen_payload(template, "qwen3-max", "x", True, CHAT_ID, NOW)
    assert payload["messages"][0]["feature_config"] == {
        "thinking_enabled": True,
        "output_schema": "phase",
        "research_mode": "normal",
        "auto_thinking": False,
        "thinking_mode": "Thinking",
        "auto_search": True,
        "thinking_format": "summary",
    }


def test_payload_thinking_false_sets_fast_and_removes_thinking_format(template):
    template["messages"][0]["feature_config"].update(
        thinking_enabled=True, thinking_mode="Thinking", thinking_format="summary", auto_thinking=True
    )
    payload = build_qwen_payload(template, "qwen3-max", "x", False, CHAT_ID, NOW)
    assert payload["messages"][0]["feature_config"] == {
        "thinking_enabled": False,
        "output_schema": "phase",
        "research_mode": "normal",
        "auto_thinking": False,
        "thinking_mode": "Fast",
        "auto_search": True,
    }


def test_payload_thinking_none_keeps_the_captured_feature_config(template):
    template["messages"][0]["feature_config"].update(thinking_enabled=True, thinking_mode="Auto", thinking_format="x")
    captured = copy.deepcopy(template["messages"][0]["feature_config"])
    payload = build_qwen_payload(template, "qwen3-max", "x", None, CHAT_ID, NOW)
    assert payload["messages"][0]["feature_config"] == captured


def test_payload_without_feature_config_gets_one_when_thinking_is_chosen(template):
    del template["messages"][0]["feature_config"]
    thinking = build_qwen_payload(template, "m", "x", True, CHAT_ID, NOW)["messages"][0]
    assert thinking["feature_config"] == {
        "output_schema": "phase",
        "thinking_enabled": True,
        "auto_thinking": False,
        "thinking_mode": "Thinking",
        "thinking_format": "summary",
    }
    fast = build_qwen_payload(template, "m", "x", False, CHAT_ID, NOW)["messages"][0]
    assert fast["feature_config"] == {
        "output_schema": "phase",
        "thinking_enabled": False,
        "auto_thinking": False,
        "thinking_mode": "Fast",
    }
    kept = build_qwen_payload(template, "m", "x", None, CHAT_ID, NOW)["messages"][0]
    assert "feature_config" not in kept


@pytest.mark.parametrize("messages", ["missing", [], None, ["text"]])
def test_payload_with_a_template_without_a_usable_message(template, messages):
    if messages == "missing":
        del template["messages"]
    else:
        template["messages"] = messages
    payload = build_qwen_payload(template, "m", "hello", None, CHAT_ID, NOW)
    assert len(payload["messages"]) == 1
    message = payload["messages"][0]
    assert message["role"] == "user"
    assert message["content"] == "hello"
    assert message["models"] == ["m"]
    assert message["timestamp"] == 1790000000
    assert is_uuid4(message["fid"])


def test_payload_does_not_add_chat_id_keys_absent_from_the_template(template):
    del template["chatId"]
    payload = build_qwen_payload(template, "m", "x", None, CHAT_ID, NOW)
    assert "chatId" not in payload
    assert payload["chat_id"] == CHAT_ID


def test_create_chat_body_replaces_models_and_timestamp_in_milliseconds():
    template = json.loads((ROOT / "porviders" / "qwen" / "metadata.json").read_text())["create_chat"]["body"]
    before = copy.deepcopy(template)
    body = build_create_chat_body(template, "qwen3-max", 1790000000.25)
    assert body == {
        "chatId": "",
        "models": ["qwen3-max"],
        "project_id": "",
        "timestamp": 1790000000250,
        "chat_type": "t2t",
        "chat_mode": "normal",
    }
    assert type(body["timestamp"]) is int
    assert template == before


@pytest.mark.parametrize("template", [None, {}])
def test_create_chat_body_without_template_is_empty(template):
    assert build_create_chat_body(template, "m", NOW) == {}


def test_create_chat_body_does_not_add_absent_keys():
    assert build_create_chat_body({"title": "New Chat"}, "m", NOW) == {"title": "New Chat"}


# --- iter_qwen_deltas ---------------------------------------------------------------------


def test_deltas_bookkeeping_frames_yield_nothing_but_keep_alive_marks():
    frames = [fq.created_frame(), fq.keep_alive_frame(), fq.keep_alive_frame(), *fq.answer_frames(["Hi"])]
    deltas, error = collect(datas(frames))
    assert error is None
    heartbeat = Delta(heartbeat=True)
    assert deltas == [heartbeat, heartbeat, Delta(content="Hi"), Delta(usage=usage_total(10, 1))]


def test_deltas_plain_answer_from_fake_frames():
    frames = [fq.created_frame(), *fq.answer_frames(["Hello", " world"])]
    deltas, error = collect(datas(frames))
    assert error is None
    assert deltas == [Delta(content="Hello"), Delta(content=" world"), Delta(usage=usage_total(10, 2))]


def test_deltas_accept_frames_with_trailing_whitespace():
    deltas, error = collect([answer("A") + " ", " " + answer("", status="finished") + "\n"])
    assert error is None
    assert [d.content for d in deltas] == ["A", ""]


def test_deltas_usage_maps_qwen_counters():
    use = {
        "input_tokens": 1047,
        "output_tokens": 80,
        "characters": 0,
        "total_tokens": 1127,
        "input_tokens_details": {"text_tokens": 1047},
        "output_tokens_details": {"text_tokens": 80, "reasoning_tokens": 62},
        "prompt_tokens_details": {"cached_tokens": 512},
    }
    earlier = {**use, "output_tokens": 70, "output_tokens_details": {"reasoning_tokens": 62}}
    payloads = [answer("Hel", use=earlier), answer("lo", use=use), answer("", status="finished")]
    deltas, error = collect(payloads)
    assert error is None
    assert deltas[-1] == Delta(usage=usage_total(1047, 80, reasoning=62, cached=512))
    assert deltas[-1].usage == {
        "prompt_tokens": 1047,
        "completion_tokens": 80,
        "total_tokens": 1127,
        "prompt_tokens_details": {"cached_tokens": 512},
        "completion_tokens_details": {"reasoning_tokens": 62},
    }
    assert [d.content for d in deltas[:-1]] == ["Hel", "lo"]


def test_deltas_without_any_usage_end_with_zero_usage():
    deltas, error = collect([answer("x"), answer("", status="finished")])
    assert error is None
    assert deltas == [Delta(content="x"), Delta(usage=usage_total(0, 0))]


def test_deltas_empty_typing_frames_yield_nothing():
    deltas, error = collect([answer(""), answer("a"), answer(""), answer("", status="finished")])
    assert error is None
    assert deltas == [Delta(content="a"), Delta(usage=usage_total(0, 0))]


def test_deltas_think_phase_is_reasoning():
    def think(content, status="typing"):
        delta = {"role": "assistant", "content": content, "phase": "think", "status": status}
        return json.dumps({"choices": [{"delta": delta}]})

    payloads = [
        think("Let"),
        think(" me think"),
        think("", "finished"),
        answer("Answer"),
        answer("", status="finished"),
    ]
    deltas, error = collect(payloads)
    assert error is None
    assert deltas == [
        Delta(reasoning="Let"),
        Delta(reasoning=" me think"),
        Delta(content="Answer"),
        Delta(usage=usage_total(0, 0)),
    ]


def test_deltas_thinking_summary_emits_each_thought_once():
    frames = [
        fq.created_frame(),
        *fq.summary_frames(["I recognize a greeting.", "I should answer briefly.", "Done."]),
        *fq.answer_frames(["Hi!"]),
    ]
    deltas, error = collect(datas(frames))
    assert error is None
    assert deltas[:-1] == [
        Delta(reasoning="I recognize a greeting."),
        Delta(reasoning="\n\nI should answer briefly."),
        Delta(reasoning="\n\nDone."),
        Delta(content="Hi!"),
    ]
    assert reasoning_of(deltas) == "I recognize a greeting.\n\nI should answer briefly.\n\nDone."
    assert deltas[-1].usage is not None


def test_deltas_thinking_summary_repeated_lists_emit_nothing():
    def summary(items):
        return data_of(fq.delta_frame("thinking_summary", extra={"summary_thought": {"content": items}}))

    payloads = [
        summary(["A"]),
        summary(["A"]),
        summary(["A", "B"]),
        summary(["A", "B"]),
        summary(["A", "B"]),
        data_of(fq.delta_frame("thinking_summary", status="finished")),
        answer("ok"),
        answer("", status="finished"),
    ]
    deltas, error = collect(payloads)
    assert error is None
    assert deltas == [
        Delta(reasoning="A"),
        Delta(reasoning="\n\nB"),
        Delta(content="ok"),
        Delta(usage=usage_total(0, 0)),
    ]


def test_deltas_thinking_summary_without_thought_list_emits_nothing():
    payloads = [
        data_of(fq.delta_frame("thinking_summary", extra={"summary_title": {"content": ["Title"]}})),
        data_of(fq.delta_frame("thinking_summary")),
        answer("ok"),
        answer("", status="finished"),
    ]
    deltas, error = collect(payloads)
    assert error is None
    assert deltas == [Delta(content="ok"), Delta(usage=usage_total(0, 0))]


def test_deltas_thinking_then_answer_usage_counts_reasoning_tokens():
    payloads = [
        data_of(
            fq.delta_frame(
                "thinking_summary",
                extra={"summary_thought": {"content": ["T"]}},
                use=fq.usage(100, 20, reasoning=20),
            )
        ),
        data_of(fq.delta_frame("thinking_summary", status="finished")),
        answer("Hi", use=fq.usage(100, 25, reasoning=20)),
        answer("", status="finished"),
    ]
    deltas, error = collect(payloads)
    assert error is None
    assert deltas == [Delta(reasoning="T"), Delta(content="Hi"), Delta(usage=usage_total(100, 25, reasoning=20))]


def test_deltas_web_search_two_rounds():
    frames = [
        fq.created_frame(),
        *fq.answer_frames(["Let me ", "search."], input_tokens=10),
        *fq.web_search_frames(),
        *fq.answer_frames(["Found ", "it", "."], input_tokens=50),
    ]
    deltas, error = collect(datas(frames))
    assert error is None
    assert [d.content for d in deltas[:-1]] == ["Let me ", "search.", "Found ", "it", "."]
    assert all(d.reasoning == "" and d.usage is None for d in deltas[:-1])
    # Last usage of round 1 is (10, 2), of round 2 is (50, 3); counters restart per round.
    assert deltas[-1] == Delta(usage=usage_total(60, 5))


def test_deltas_function_frame_content_is_never_emitted():
    result = {"role": "function", "content": "SECRET SEARCH RESULT", "phase": "web_search", "status": "finished"}
    payloads = [
        answer("a", use=fq.usage(1, 1)),
        answer("", status="finished"),
        data_of(fq.delta_frame("web_search", function_call={"name": "web_search", "arguments": "{"})),
        json.dumps({"choices": [{"delta": result}], "usage": {"input_tokens": 999, "output_tokens": 999}}),
        answer("b", use=fq.usage(2, 1)),
        answer("", status="finished"),
    ]
    deltas, error = collect(payloads)
    assert error is None
    assert text_of(deltas) == "ab"
    assert deltas[-1] == Delta(usage=usage_total(3, 2))


def test_deltas_truncated_stream_raises_after_content():
    frames = [fq.created_frame(), *fq.answer_frames(["Hel", "lo"])[:-1]]
    deltas, error = collect(datas(frames))
    assert deltas == [Delta(content="Hel"), Delta(content="lo")]
    assert error is not None
    assert (error.status, error.type, error.code) == (502, "server_error", "upstream_truncated")
    assert error.message == "The upstream closed the stream before the reply finished."


def test_deltas_stream_cut_during_web_search_is_truncated():
    frames = [fq.created_frame(), *fq.answer_frames(["Let me search."]), *fq.web_search_frames()]
    deltas, error = collect(datas(frames))
    assert deltas == [Delta(content="Let me search.")]
    assert error is not None
    assert (error.status, error.code) == (502, "upstream_truncated")


def test_deltas_stream_cut_during_thinking_is_truncated():
    frames = [fq.created_frame(), *fq.summary_frames(["A"])]
    deltas, error = collect(datas(frames))
    assert deltas == [Delta(reasoning="A")]
    assert error is not None
    assert (error.status, error.code) == (502, "upstream_truncated")


@pytest.mark.parametrize("payloads", [[], [data_of(fq.created_frame())], [data_of(fq.keep_alive_frame())]])
def test_deltas_stream_without_reply_is_truncated(payloads):
    deltas, error = collect(payloads)
    assert [d for d in deltas if not d.heartbeat] == []
    assert error is not None
    assert (error.status, error.code) == (502, "upstream_truncated")


def test_deltas_in_stream_error_frame():
    payloads = [
        answer("partial"),
        json.dumps({"error": {"code": "ContextLengthExceeded", "details": "Too long input"}, "response_id": "r"}),
        answer("never"),
    ]
    deltas, error = collect(payloads)
    assert deltas == [Delta(content="partial")]
    assert error is not None
    assert (error.status, error.type, error.code) == (502, "server_error", "upstream_error")
    assert "ContextLengthExceeded" in error.message
    assert "Too long input" in error.message
    assert error.message == "The upstream reported an error: ContextLengthExceeded: Too long input"


def test_deltas_in_stream_error_string():
    deltas, error = collect([json.dumps({"error": "boom"})])
    assert deltas == []
    assert error is not None
    assert error.status == 502
    assert error.message == "The upstream reported an error: boom"


def test_deltas_in_stream_error_message_is_bounded():
    deltas, error = collect([json.dumps({"error": {"code": "X", "details": "d" * 5000}})])
    assert error is not None
    assert error.message.startswith("The upstream reported an error: X: ddd")
    assert len(error.message) == 300


def test_deltas_in_stream_envelope_rate_limited():
    envelope = {
        "success": False,
        "request_id": "x",
        "data": {"code": "RateLimited", "details": "Too many requests.", "num": 1},
    }
    deltas, error = collect([json.dumps(envelope)])
    assert deltas == []
    assert error is not None
    assert (error.status, error.type, error.code) == (429, "rate_limit_error", "rate_limit_exceeded")
    assert error.headers == {"Retry-After": "3600"}


@pytest.mark.parametrize("bad", ["not json", "[DONE]", "{", "data: {}", ""])
def test_deltas_non_json_frame_raises_502(bad):
    deltas, error = collect([answer("a"), bad])
    assert deltas == [Delta(content="a")]
    assert error is not None
    assert (error.status, error.type, error.code) == (502, "server_error", "upstream_error")
    assert error.message == f"The upstream sent an unreadable event: {bad!r}"


@pytest.mark.parametrize("bad", ["[1, 2]", "null", "3", '"text"'])
def test_deltas_json_frame_that_is_not_an_object_raises_502(bad):
    deltas, error = collect([bad])
    assert error is not None
    assert (error.status, error.code) == (502, "upstream_error")
    assert error.message == f"The upstream sent an unexpected event: {bad!r}"


def test_deltas_unreadable_frame_message_is_bounded():
    deltas, error = collect(["x" * 5000])
    assert error is not None
    assert error.message == "The upstream sent an unreadable event: " + repr("x" * 300)


# --- error_from_upstream ------------------------------------------------------------------

JSON = "application/json; charset=utf-8"
BAXIA = json.dumps(
    {
        "ret": ["FAIL_SYS_USER_VALIDATE", "RGV587_ERROR::SM::哎哟喂,被挤爆啦,请稍后重试"],
        "data": {
            "url": "https://chat.qwen.ai:443//api/v2/chat/completions/_____tmd_____/punish?x5secdata=abc&action=captcha"
        },
    },
    ensure_ascii=False,
)
WAF_HTML = "<!doctypehtml><html><head><script>var aliyun_waf_aa='1';</script></head><body></body></html>"


def envelope(code: str, details: str = "", **extra) -> str:
    return json.dumps({"success": False, "request_id": "r-1", "data": {"code": code, "details": details, **extra}})


@pytest.mark.parametrize(
    ("status", "content_type", "body", "expected"),
    [
        pytest.param(
            200,
            JSON,
            envelope("RateLimited", "You've reached the upper limit for today's usage.", num=2),
            (429, "insufficient_quota", "insufficient_quota", {"Retry-After": "7200"}),
            id="ratelimited-upper-limit-num2",
        ),
        pytest.param(
            200,
            JSON,
            envelope("RateLimited", "Slow down.", num=2),
            (429, "rate_limit_error", "rate_limit_exceeded", {"Retry-After": "7200"}),
            id="ratelimited-num2",
        ),
        pytest.param(
            200,
            JSON,
            envelope("RateLimited", "Slow down."),
            (429, "rate_limit_error", "rate_limit_exceeded", {}),
            id="ratelimited-no-num",
        ),
        pytest.param(
            200,
            JSON,
            envelope("RateLimited", "Slow down.", num=0.5),
            (429, "rate_limit_error", "rate_limit_exceeded", {"Retry-After": "1800"}),
            id="ratelimited-half-hour",
        ),
        pytest.param(
            200,
            JSON,
            envelope("ParallelLimited", "The chat is in progress elsewhere"),
            (429, "rate_limit_error", "rate_limit_exceeded", {}),
            id="parallel-limited",
        ),
        pytest.param(
            200,
            JSON,
            envelope("quotaLimited", "No more."),
            (429, "insufficient_quota", "insufficient_quota", {}),
            id="quotaLimited",
        ),
        pytest.param(
            200,
            JSON,
            envelope("quota_limit", ""),
            (429, "insufficient_quota", "insufficient_quota", {}),
            id="quota_limit",
        ),
        pytest.param(
            200,
            JSON,
            envelope("unauthorized", "Token has expired, please log in again."),
            (401, "authentication_error", "upstream_credential_rejected", {"x-should-retry": "false"}),
            id="unauthorized",
        ),
        pytest.param(
            200,
            JSON,
            envelope("Unauthorized", ""),
            (401, "authentication_error", "upstream_credential_rejected", {"x-should-retry": "false"}),
            id="Unauthorized-case",
        ),
        pytest.param(
            200,
            JSON,
            envelope("Bad_Request", "Token has expired, please log in again."),
            (401, "authentication_error", "upstream_credential_rejected", {"x-should-retry": "false"}),
            id="token-expired-details",
        ),
        pytest.param(
            200,
            JSON,
            BAXIA,
            (503, "server_error", "upstream_browser_check", {"x-should-retry": "false"}),
            id="baxia",
        ),
        pytest.param(
            200,
            "text/html; charset=utf-8",
            WAF_HTML,
            (503, "server_error", "upstream_browser_check", {"x-should-retry": "false"}),
            id="waf-html",
        ),
        pytest.param(
            405,
            "text/plain",
            WAF_HTML,
            (503, "server_error", "upstream_browser_check", {"x-should-retry": "false"}),
            id="waf-marker-any-type",
        ),
        pytest.param(
            200,
            "text/html",
            "<html><body>Please wait</body></html>",
            (503, "server_error", "upstream_browser_check", {"x-should-retry": "false"}),
            id="html-page",
        ),
        pytest.param(
            200,
            JSON,
            envelope("Bad_Request", "Internal error..."),
            (502, "server_error", "upstream_error", {}),
            id="bad-request",
        ),
        pytest.param(
            500,
            "text/plain",
            "Internal Server Error",
            (502, "server_error", "upstream_error", {}),
            id="http-500",
        ),
        pytest.param(
            401,
            "text/plain",
            "Unauthorized",
            (401, "authentication_error", "upstream_credential_rejected", {"x-should-retry": "false"}),
            id="http-401",
        ),
        pytest.param(
            403,
            JSON,
            '{"detail": "Forbidden"}',
            (401, "authentication_error", "upstream_credential_rejected", {"x-should-retry": "false"}),
            id="http-403",
        ),
        pytest.param(
            401,
            JSON,
            envelope("RateLimited", "Slow down."),
            (429, "rate_limit_error", "rate_limit_exceeded", {}),
            id="envelope-wins-over-status",
        ),
        pytest.param(
            200,
            JSON,
            '{"success": true, "data": {}}',
            (502, "server_error", "upstream_error", {}),
            id="unexpected-json",
        ),
    ],
)
def test_error_from_upstream_table(status, content_type, body, expected):
    error = error_from_upstream(status, content_type, body, "QWEN_TOKEN")
    assert isinstance(error, ApiError)
    assert (error.status, error.type, error.code, error.headers) == expected
    assert error.param is None


def test_error_rate_limited_message():
    error = error_from_upstream(200, JSON, envelope("RateLimited", "Slow down.", num=2), "QWEN_TOKEN")
    assert error.message == "The upstream is rate limiting this account: RateLimited: Slow down."


def test_error_credential_message_names_the_variable():
    body = envelope("unauthorized", "Token has expired, please log in again.")
    error = error_from_upstream(200, JSON, body, "QWEN_TOKEN")
    assert error.message == (
        "The upstream rejected the provider credential (Token has expired, please log in again.). "
        "Refresh QWEN_TOKEN from a logged-in browser session."
    )
    assert "QWEN_TOKEN" in error.message


def test_error_http_401_message_names_status_and_variable():
    error = error_from_upstream(401, "text/plain", "nope", "MY_CRED")
    assert error.message == (
        "The upstream rejected the provider credential (HTTP 401). Refresh MY_CRED from a logged-in browser session."
    )


def test_error_browser_check_message():
    error = error_from_upstream(200, JSON, BAXIA, "QWEN_TOKEN")
    assert error.message.startswith("The upstream asked for a browser check (anti-bot challenge).")
    assert "QWEN_TOKEN" not in error.message


def test_error_other_envelope_message():
    error = error_from_upstream(200, JSON, envelope("Bad_Request", "The chat is in progress!"), "QWEN_TOKEN")
    assert error.message == "The upstream refused the request: Bad_Request: The chat is in progress!"


def test_error_envelope_without_data():
    error = error_from_upstream(200, JSON, '{"success": false}', "QWEN_TOKEN")
    assert (error.status, error.code) == (502, "upstream_error")
    assert error.message == "The upstream refused the request"


def test_error_http_500_message_is_trimmed_and_bounded():
    body = "Internal   Server\n\n  Error " + "x" * 2000
    error = error_from_upstream(500, "text/plain", body, "QWEN_TOKEN")
    prefix = "The upstream answered HTTP 500 (text/plain): "
    expected_body = ("Internal Server Error " + "x" * 2000)[:300]
    assert error.message == prefix + expected_body
    assert len(error.message) == len(prefix) + 300
    assert (error.status, error.type, error.code) == (502, "server_error", "upstream_error")


def test_error_http_500_without_content_type():
    error = error_from_upstream(500, "", "  oops  ", "QWEN_TOKEN")
    assert error.message == "The upstream answered HTTP 500 (no content type): oops"


def test_error_http_429_without_envelope():
    error = error_from_upstream(429, "text/plain", "slow down", "QWEN_TOKEN")
    assert (error.status, error.code) == (429, "rate_limit_exceeded")
    assert error.message == "The upstream is rate limiting requests."


# --- iter_reasoning_format ----------------------------------------------------------------

USAGE = usage_total(5, 7, reasoning=3)


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
