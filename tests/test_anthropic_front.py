"""The Anthropic Messages front, driven by the real ``anthropic`` SDK against the loopback fake Qwen."""

from __future__ import annotations

import json

import anthropic
import pytest
import requests
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from app import create_app
from converters import Delta
from tests.fake_qwen import ServerThread, answer_frames, frame, sse_reply, summary_frames
from tests.test_tools import CALL, model

MODEL = "qwen3.7-plus"
ASK = [{"role": "user", "content": "Weather in Paris?"}]
WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
EVENTS = TypeAdapter(RawMessageStreamEvent)


@pytest.fixture
def claude(service):
    with anthropic.Anthropic(base_url=service, api_key="unused", max_retries=0, timeout=20) as client:
        yield client


def raw_events(service: str, body: dict, headers: dict | None = None) -> list[tuple[str, dict]]:
    """The stream as it is on the wire: ``(event name, data)`` pairs."""
    reply = requests.post(f"{service}/v1/messages", json={**body, "stream": True}, headers=headers, timeout=20)
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    pairs = []
    for block in reply.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        pairs.append((lines["event"], json.loads(lines["data"])))
    return pairs


def body(**fields) -> dict:
    return {"model": MODEL, "max_tokens": 1024, "messages": ASK, **fields}


# --- non-streaming ---------------------------------------------------------------------------------


def test_create_returns_a_message_with_text_and_usage(claude, fake_qwen):
    message = claude.messages.create(**body())
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == MODEL
    assert [(b.type, b.text) for b in message.content] == [("text", "Hello world")]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (10, 2)
    assert fake_qwen.requests[-1]["json"]["messages"][0]["content"] == "Weather in Paris?"


def test_every_field_the_sdk_lists_is_present(client):
    raw = client.post("/v1/messages", json=body()).get_json()
    Message.model_validate(raw)
    assert set(raw) >= {"id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"}
    assert set(raw["usage"]) >= {
        "input_tokens",
        "output_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    }
    assert raw["content"][0] == {"type": "text", "text": "Hello world", "citations": None}


def test_system_as_text_blocks_with_cache_control_is_folded_first(claude, fake_qwen):
    system = [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}]
    claude.messages.create(**body(system=system, metadata={"user_id": "u1"}), extra_headers={"anthropic-beta": "x"})
    prompt = fake_qwen.requests[-1]["json"]["messages"][0]["content"]
    assert prompt.index("Be brief.") < prompt.index("Weather in Paris?")


def test_thinking_blocks_come_first_and_thinking_switches_the_mode(claude, fake_qwen):
    fake_qwen.reply = sse_reply(summary_frames(["Hmm."]) + answer_frames(["Paris."]))
    message = claude.messages.create(**body(thinking={"type": "enabled", "budget_tokens": 2000}))
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Hmm." and message.content[1].text == "Paris."
    assert fake_qwen.requests[-1]["json"]["messages"][0]["feature_config"]["thinking_mode"] == "Thinking"
    claude.messages.create(**body(thinking={"type": "disabled"}))
    assert fake_qwen.requests[-1]["json"]["messages"][0]["feature_config"]["thinking_mode"] == "Fast"


def test_thinking_in_history_is_accepted_and_left_out(claude, fake_qwen):
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "secret musing", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Sunny."},
            ],
        },
        {"role": "user", "content": "And tomorrow?"},
    ]
    claude.messages.create(**body(messages=history))
    prompt = fake_qwen.requests[-1]["json"]["messages"][0]["content"]
    assert "Sunny." in prompt and "And tomorrow?" in prompt and "secret musing" not in prompt


def test_a_stop_sequence_cuts_the_answer_and_is_named(claude, fake_qwen):
    fake_qwen.reply = sse_reply(answer_frames(["One, tw", "o, three"]))
    message = claude.messages.create(**body(stop_sequences=["two", "o, th"]))
    assert message.content[0].text == "One, "
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "two")


def test_a_reply_the_upstream_cut_for_length_is_max_tokens():
    # The Qwen dialect never reports one; an OpenAI-compatible upstream does ("length").
    from fronts.anthropic_render import MessageMeta, message_from_events
    from reply_blocks import iter_blocks

    deltas = [Delta(content="Long"), Delta(usage={"prompt_tokens": 3, "completion_tokens": 1}, finish_reason="length")]
    message = message_from_events(iter_blocks(deltas), MessageMeta.new(MODEL, 3))
    assert message["stop_reason"] == "max_tokens" and message["content"][0]["text"] == "Long"
    assert (message["usage"]["input_tokens"], message["usage"]["output_tokens"]) == (3, 1)


# --- streaming ------------------------------------------------------------------------------------


def test_the_stream_follows_anthropics_event_order(service, fake_qwen):
    fake_qwen.reply = sse_reply(summary_frames(["Hmm."]) + answer_frames(["Par", "is."]))
    events = raw_events(service, body())
    names = [name for name, _ in events]
    assert all(name == data["type"] for name, data in events)  # event: lines name each JSON type
    for _, data in events:
        EVENTS.validate_python(data)
    assert names[0] == "message_start" and names.count("message_start") == 1
    assert names[-2:] == ["message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["input_tokens"] > 0
    blocks = [data for name, data in events if name.startswith("content_block")]
    assert [(d["type"], d["index"]) for d in blocks] == [
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
    ]
    assert blocks[0]["content_block"]["type"] == "thinking" and blocks[1]["delta"]["type"] == "thinking_delta"
    assert blocks[4]["delta"] == {"type": "text_delta", "text": "Par"}
    final = events[-2][1]
    assert final["delta"]["stop_reason"] == "end_turn" and final["usage"]["output_tokens"] == 2


def test_messages_stream_gives_the_final_message(claude, fake_qwen):
    fake_qwen.reply = sse_reply(summary_frames(["Hmm."]) + answer_frames(["Par", "is."]))
    with claude.messages.stream(**body()) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Paris."
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Hmm." and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 2


def test_a_silent_stream_pings(app_config, qwen_token, fake_qwen):
    app = create_app({**app_config, "KEEPALIVE_SECONDS": 0.2})
    fake_qwen.reply = sse_reply(answer_frames(["late"]), delay=0.3)
    with ServerThread(app) as server:
        names = [name for name, _ in raw_events(server.url, body())]
    assert "ping" in names and names[0] == "message_start"
    assert names.count("message_start") == 1 and names[-1] == "message_stop"


# --- tools ------------------------------------------------------------------------------------------


def test_a_tool_use_round_trip_with_tool_result(claude, fake_qwen):
    prompts = model(fake_qwen, "Let me check. " + CALL, "It is sunny in Paris.")
    first = claude.messages.create(**body(tools=[WEATHER]))
    assert first.stop_reason == "tool_use"
    text, use = first.content
    assert (text.type, text.text) == ("text", "Let me check. ")
    assert use.type == "tool_use" and use.id.startswith("toolu_") and use.name == "get_weather"
    assert use.input == {"city": "Paris"}
    result = {"type": "tool_result", "tool_use_id": use.id, "content": [{"type": "text", "text": "18 C, sunny"}]}
    history = [*ASK, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}]
    second = claude.messages.create(**body(messages=history, tools=[WEATHER]))
    assert second.content[0].text == "It is sunny in Paris." and second.stop_reason == "end_turn"
    assert "18 C, sunny" in prompts[-1]


def test_a_tool_result_marked_as_error_says_so(claude, fake_qwen):
    prompts = model(fake_qwen, "Sorry.")
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "timeout", "is_error": True}
    history = [*ASK, {"role": "assistant", "content": [use]}, {"role": "user", "content": [result]}]
    claude.messages.create(**body(messages=history, tools=[WEATHER]))
    assert "error" in prompts[-1] and "timeout" in prompts[-1]


def test_a_streamed_tool_use_opens_its_input_with_an_empty_piece(service, claude, fake_qwen):
    model(fake_qwen, CALL)
    events = raw_events(service, body(tools=[WEATHER], tool_choice={"type": "any"}))
    start = next(data for name, data in events if name == "content_block_start")
    assert start["content_block"]["type"] == "tool_use" and start["content_block"]["input"] == {}
    pieces = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert pieces[0] == {"type": "input_json_delta", "partial_json": ""}
    assert json.loads("".join(p["partial_json"] for p in pieces)) == {"city": "Paris"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    model(fake_qwen, CALL)
    with claude.messages.stream(**body(tools=[WEATHER])) as stream:
        final = stream.get_final_message()
    assert final.content[0].input == {"city": "Paris"} and final.stop_reason == "tool_use"


@pytest.mark.parametrize(
    ("choice", "rule"),
    [
        ({"type": "auto"}, None),
        ({"type": "any"}, "You must call at least one tool in this answer."),
        ({"type": "tool", "name": "get_weather"}, "You must call get_weather in this answer."),
    ],
)
def test_tool_choice_is_read(claude, fake_qwen, choice, rule):
    prompts = model(fake_qwen, CALL)
    claude.messages.create(**body(tools=[WEATHER], tool_choice=choice))
    assert "[TOOL CALL]" in prompts[0]
    if rule:
        assert rule in prompts[0]
    else:
        assert "You must call" not in prompts[0] and "When no tool is needed" in prompts[0]


def test_tool_choice_none_offers_no_tools(claude, fake_qwen):
    prompts = model(fake_qwen, "Fine.")
    claude.messages.create(**body(tools=[WEATHER], tool_choice={"type": "none"}))
    assert "[TOOL CALL]" not in prompts[0]


def test_disable_parallel_tool_use_keeps_the_first_call(claude, fake_qwen):
    model(fake_qwen, CALL + "\n" + CALL.replace("Paris", "Rome"))
    both = claude.messages.create(**body(tools=[WEATHER]))
    assert [b.input["city"] for b in both.content] == ["Paris", "Rome"]
    model(fake_qwen, CALL + "\n" + CALL.replace("Paris", "Rome"))
    one = claude.messages.create(
        **body(tools=[WEATHER], tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    )
    assert [b.input["city"] for b in one.content] == ["Paris"]


# --- count_tokens, errors, auth, probes --------------------------------------------------------------


def test_count_tokens_estimates_without_an_upstream_call(claude, fake_qwen):
    small = claude.messages.count_tokens(model=MODEL, messages=ASK)
    large = claude.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "word " * 400}], tools=[WEATHER]
    )
    assert 1 <= small.input_tokens < 20 and 400 <= large.input_tokens < 700
    assert fake_qwen.requests == []


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
        ({"system": 5}, "system"),
        ({"thinking": {"type": "sometimes"}}, "thinking"),
        ({"tool_choice": {"type": "maybe"}}, "tool_choice"),
    ],
)
def test_bad_requests_are_400_invalid_request_error(client, fake_qwen, changes, param):
    # Sent raw: the SDK itself refuses some of these before sending.
    fields = {key: value for key, value in body(**changes).items() if value is not None}
    reply = client.post("/v1/messages", json=fields)
    error = reply.get_json()
    assert reply.status_code == 400 and error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"].startswith(param)
    assert fake_qwen.requests == []


def test_an_unknown_model_is_404_not_found_error(claude):
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(**body(model="claude-sonnet-4-5"))
    assert caught.value.body["error"]["type"] == "not_found_error"


def test_an_unknown_route_under_messages_speaks_anthropic(client):
    reply = client.post("/v1/messages/batches", json={})
    assert reply.status_code == 404 and reply.get_json()["type"] == "error"
    assert reply.get_json()["error"]["type"] == "not_found_error"


def test_an_upstream_failure_before_the_first_byte_keeps_its_status(claude, fake_qwen):
    from tests.fake_qwen import json_reply

    fake_qwen.reply = json_reply({"success": False, "data": {"code": "Bad_Request", "details": "nope"}}, status=500)
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude.messages.create(**body())
    assert caught.value.status_code == 502 and caught.value.body["error"]["type"] == "api_error"


def test_an_error_after_the_first_byte_is_an_error_event(service, claude, fake_qwen):
    error = frame({"error": {"code": "Bad_Request", "details": "The chat is in progress!"}})
    fake_qwen.reply = sse_reply([*answer_frames(["Hi"])[:1], error])
    events = raw_events(service, body())
    assert events[0][0] == "message_start"
    assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "api_error"
    assert "in progress" in events[-1][1]["error"]["message"]
    assert events[-1][1]["request_id"].startswith("req_")  # the request's own, though its context is gone
    fake_qwen.reply = sse_reply([*answer_frames(["Hi"])[:1], error])
    with pytest.raises(anthropic.APIStatusError), claude.messages.stream(**body()) as stream:
        stream.get_final_message()


@pytest.fixture
def keyed_service(app_config, qwen_token):
    with ServerThread(create_app({**app_config, "API_KEYS": "sk-right"})) as server:
        yield server.url


def test_x_api_key_is_accepted_on_messages(keyed_service):
    with anthropic.Anthropic(base_url=keyed_service, api_key="sk-right", max_retries=0) as good:
        assert good.messages.create(**body()).content[0].text == "Hello world"
    with anthropic.Anthropic(base_url=keyed_service, auth_token="sk-right", max_retries=0) as bearer:
        assert bearer.messages.create(**body()).content[0].text == "Hello world"
    with (
        anthropic.Anthropic(base_url=keyed_service, api_key="sk-wrong", max_retries=0) as bad,
        pytest.raises(anthropic.AuthenticationError) as caught,
    ):
        bad.messages.create(**body())
    assert caught.value.body["error"]["type"] == "authentication_error"
    assert "x-api-key" in caught.value.body["error"]["message"]
    chat = requests.post(f"{keyed_service}/v1/chat/completions", headers={"x-api-key": "sk-right"}, json={}, timeout=5)
    assert chat.status_code == 401  # the OpenAI routes keep to Authorization: Bearer


def test_the_root_answers_head_and_get(client):
    assert client.head("/").status_code == 200
    reply = client.get("/")
    assert reply.status_code == 200 and "POST /v1/messages" in reply.get_json()["endpoints"]


# --- continuation ------------------------------------------------------------------------------------


def test_an_agent_loop_continues_one_upstream_chat(claude, fake_qwen):
    """Claude Code's shape: thinking and tool use sent back, a tool result as the new turn."""
    from tests.fake_qwen import RESPONSE_ID

    prompts = model(fake_qwen, CALL, "Sunny.")
    system = [{"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}}]
    first = claude.messages.create(**body(system=system, tools=[WEATHER]))
    result = {"type": "tool_result", "tool_use_id": first.content[0].id, "content": "18 C"}
    history = [*ASK, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}]
    claude.messages.create(**body(system=system, messages=history, tools=[WEATHER]))
    completions = [r["json"] for r in fake_qwen.requests if r["path"].startswith("/api/v2/chat/completions")]
    assert completions[1]["parent_id"] == RESPONSE_ID
    assert "You are an agent." in prompts[0] and "You are an agent." not in prompts[1]
    assert "18 C" in prompts[1]


# --- what the SDK's types list, and the errors' types --------------------------------------------


def missing_fields(model_type, data: dict, where: str = "") -> list[str]:
    """Every field the SDK's pydantic model lists that ``data`` lacks, nested models too."""
    import typing

    from pydantic import BaseModel

    missing = []
    for name, info in model_type.model_fields.items():
        key = info.alias or name
        if key not in data:
            missing.append(where + key)
            continue
        inner = [a for a in typing.get_args(info.annotation) or (info.annotation,) if isinstance(a, type)]
        nested = [a for a in inner if issubclass(a, BaseModel)]
        if len(nested) == 1 and isinstance(data[key], dict):
            missing += missing_fields(nested[0], data[key], f"{where}{key}.")
    return missing


def test_no_field_the_sdk_lists_is_left_out(client, service, fake_qwen):
    from anthropic.types import MessageDeltaUsage, TextBlock, ThinkingBlock, ToolUseBlock

    fake_qwen.reply = sse_reply(summary_frames(["Hmm."]) + answer_frames(["Paris."]))
    raw = client.post("/v1/messages", json=body()).get_json()
    assert missing_fields(Message, raw) == []
    thinking, text = raw["content"]
    assert missing_fields(ThinkingBlock, thinking) == [] and missing_fields(TextBlock, text) == []
    model(fake_qwen, CALL)
    (use,) = client.post("/v1/messages", json=body(tools=[WEATHER])).get_json()["content"]
    assert missing_fields(ToolUseBlock, use) == []
    events = dict(raw_events(service, body()))
    assert missing_fields(Message, events["message_start"]["message"]) == []
    assert set(events["message_delta"]["usage"]) == set(MessageDeltaUsage.model_fields)


@pytest.mark.parametrize(
    ("status", "code", "seen", "kind"),
    [
        (400, None, 400, "invalid_request_error"),
        (401, "invalid_api_key", 401, "authentication_error"),
        (401, "missing_credential", 502, "api_error"),  # the provider's credential: not the client's key
        (403, None, 403, "permission_error"),
        (404, "model_not_found", 404, "not_found_error"),
        (413, None, 413, "request_too_large"),
        (429, None, 429, "rate_limit_error"),
        (500, None, 500, "api_error"),
        (502, None, 502, "api_error"),
        (503, None, 503, "overloaded_error"),
        (504, None, 504, "timeout_error"),
        (529, None, 529, "overloaded_error"),
    ],
)
def test_error_types_follow_the_status(app, status, code, seen, kind):
    from converters import ApiError
    from fronts.anthropic_render import error_response
    from redaction import Redactor

    with app.test_request_context("/v1/messages"):
        response = error_response(ApiError("x", status=status, code=code), Redactor(()))
    assert response.status_code == seen and response.get_json()["error"]["type"] == kind
    assert (response.headers.get("x-should-retry") == "false") is (status in (400, 401, 403, 404, 413))


def test_hidden_reasoning_leaves_no_thinking_block(app_config, qwen_token, fake_qwen):
    app = create_app({**app_config, "REASONING_FORMAT": "hidden"})
    fake_qwen.reply = sse_reply(summary_frames(["Hmm."]) + answer_frames(["Paris."]))
    content = app.test_client().post("/v1/messages", json=body()).get_json()["content"]
    assert [b["type"] for b in content] == ["text"]


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}}],
        [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {}}]}],
    ],
)
def test_images_are_refused_not_dropped(client, fake_qwen, content):
    reply = client.post("/v1/messages", json=body(messages=[{"role": "user", "content": content}]))
    assert reply.status_code == 400 and "image" in reply.get_json()["error"]["message"]
    assert fake_qwen.requests == []
