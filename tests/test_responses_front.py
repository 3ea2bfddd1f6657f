"""The Responses front, driven by the real ``openai`` SDK (``responses.create`` and
``responses.stream()``) against the loopback fake Qwen, as Codex uses it."""

from __future__ import annotations

import json

import openai
import pytest
import requests
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.fake_qwen import answer_frames, frame, sse_reply, summary_frames
from tests.test_tools import CALL, model

MODEL = "qwen3.7-plus"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": False,
}
EVENTS = TypeAdapter(ResponseStreamEvent)


def raw_events(service: str, body: dict) -> list[tuple[str, dict]]:
    """The stream as it is on the wire: ``(event name, data)`` pairs, keep-alive comments left out."""
    reply = requests.post(f"{service}/v1/responses", json={**body, "stream": True}, timeout=20)
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    assert "[DONE]" not in reply.text
    pairs = []
    for block in reply.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n") if not line.startswith(":"))
        if lines:
            pairs.append((lines["event"], json.loads(lines["data"])))
    return pairs


def thinking_reply():
    return sse_reply(summary_frames(["Hmm."]) + answer_frames(["Par", "is."]))


# --- non-streaming ---------------------------------------------------------------------------------


def test_create_returns_a_response_with_output_text_and_usage(sdk, fake_qwen):
    response = sdk.responses.create(model=MODEL, input="Hello?", instructions="Be brief.")
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.model == MODEL
    assert response.output_text == "Hello world"
    (message,) = response.output
    assert (message.type, message.role, message.status) == ("message", "assistant", "completed")
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (10, 2, 12)
    assert response.instructions == "Be brief."
    prompt = fake_qwen.requests[-1]["json"]["messages"][0]["content"]
    assert prompt.index("Be brief.") < prompt.index("Hello?")


def test_every_field_the_sdk_lists_is_there(client):
    raw = client.post("/v1/responses", json={"model": MODEL, "input": "Hi"}).get_json()
    Response.model_validate(raw)
    for name in ("error", "incomplete_details", "previous_response_id", "reasoning", "usage", "text", "tools"):
        assert name in raw
    assert raw["output"][0]["content"][0] == {
        "type": "output_text",
        "text": "Hello world",
        "annotations": [],
        "logprobs": [],
    }
    assert raw["usage"]["output_tokens_details"] == {"reasoning_tokens": 0}


def test_reasoning_is_an_item_with_a_summary_before_the_message(sdk, fake_qwen):
    fake_qwen.reply = thinking_reply()
    response = sdk.responses.create(model=MODEL, input="Capital?", reasoning={"effort": "high", "summary": "auto"})
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    assert [s.text for s in reasoning.summary] == ["Hmm."]
    assert message.content[0].text == "Paris."
    assert fake_qwen.requests[-1]["json"]["messages"][0]["feature_config"]["thinking_mode"] == "Thinking"
    sdk.responses.create(model=MODEL, input="Capital?", reasoning={"effort": "none"})
    assert fake_qwen.requests[-1]["json"]["messages"][0]["feature_config"]["thinking_mode"] == "Fast"


def test_easy_messages_and_typed_ones_fold_alike(sdk, fake_qwen):
    conversation = [
        {"role": "developer", "content": "Be brief."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello."}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
        {"role": "user", "content": "Again?"},
    ]
    sdk.responses.create(model=MODEL, input=conversation, store=False)
    prompt = fake_qwen.requests[-1]["json"]["messages"][0]["content"]
    assert "System: Be brief." in prompt and "User: Hi" in prompt and "Assistant: Hello." in prompt
    assert prompt.endswith("User: Again?") and "opaque" not in prompt


# --- streaming ------------------------------------------------------------------------------------


def test_the_stream_follows_the_responses_event_order(service, fake_qwen):
    fake_qwen.reply = thinking_reply()
    events = raw_events(service, {"model": MODEL, "input": "Capital?"})
    for name, data in events:
        assert name == data["type"]
        EVENTS.validate_python(data)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert [name for name, _ in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1][1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message"]
    assert final["usage"]["output_tokens"] == 2 and events[0][1]["response"]["status"] == "in_progress"
    ids = {data["item_id"] for _, data in events if "item_id" in data}
    assert ids == {item["id"] for item in final["output"]}  # every event names its item by one id


def test_responses_stream_gives_text_deltas_and_the_final_response(sdk, fake_qwen):
    fake_qwen.reply = thinking_reply()
    with sdk.responses.stream(model=MODEL, input="Capital?") as stream:
        text = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == "Paris." and final.output_text == "Paris." and final.status == "completed"
    assert final.output[0].summary[0].text == "Hmm."


def test_an_error_after_the_first_byte_is_response_failed(service, fake_qwen):
    error = frame({"error": {"code": "Bad_Request", "details": "The chat is in progress!"}})
    fake_qwen.reply = sse_reply([*answer_frames(["Hi"])[:1], error])
    events = raw_events(service, {"model": MODEL, "input": "Hi"})
    assert events[0][0] == "response.created" and events[-1][0] == "response.failed"
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed" and "in progress" in failed["error"]["message"]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    EVENTS.validate_python(events[-1][1])


# --- tools ------------------------------------------------------------------------------------------


def test_a_function_call_round_trip(sdk, fake_qwen):
    prompts = model(fake_qwen, CALL, "It is sunny in Paris.")
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    first = sdk.responses.create(model=MODEL, input=ask, tools=[WEATHER])
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == {"city": "Paris"} and call.id.startswith("fc_")
    history = [*ask, call.model_dump(), {"type": "function_call_output", "call_id": call.call_id, "output": "18 C"}]
    second = sdk.responses.create(model=MODEL, input=history, tools=[WEATHER])
    assert second.output_text == "It is sunny in Paris."
    assert "18 C" in prompts[-1]


def test_a_streamed_function_call(sdk, service, fake_qwen):
    model(fake_qwen, "Checking. " + CALL)
    events = raw_events(service, {"model": MODEL, "input": "Weather?", "tools": [WEATHER], "tool_choice": "auto"})
    names = [name for name, _ in events]
    assert "response.function_call_arguments.delta" in names and "response.function_call_arguments.done" in names
    done = next(data for name, data in events if name == "response.function_call_arguments.done")
    assert json.loads(done["arguments"]) == {"city": "Paris"} and done["name"] == "get_weather"
    model(fake_qwen, CALL)
    with sdk.responses.stream(model=MODEL, input="Weather?", tools=[WEATHER]) as stream:
        final = stream.get_final_response()
    assert [item.type for item in final.output] == ["function_call"]


def test_tool_choice_in_the_responses_shape_is_read(sdk, fake_qwen):
    prompts = model(fake_qwen, CALL)
    sdk.responses.create(
        model=MODEL, input="x", tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"}
    )
    assert "[TOOL CALL]" in prompts[0]
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model=MODEL, input="x", tools=[WEATHER], tool_choice={"type": "function", "name": "nope"})
    assert caught.value.code == "invalid_tool_choice"


# --- refusals ---------------------------------------------------------------------------------------


def test_previous_response_id_is_a_clear_400(sdk, fake_qwen):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model=MODEL, input="x", previous_response_id="resp_123")
    assert caught.value.param == "previous_response_id" and "stores no responses" in caught.value.message
    assert fake_qwen.requests == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": MODEL}, "input"),
        ({"model": MODEL, "input": 5}, "input"),
        ({"model": MODEL, "input": [{"type": "web_search_call", "id": "x"}]}, "input[0]"),
        ({"model": MODEL, "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"model": MODEL, "input": [{"role": [], "content": "x"}]}, "input[0].role"),
        ({"model": MODEL, "input": [{"role": {"a": 1}, "content": "x"}]}, "input[0].role"),
        ({"model": MODEL, "input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
        ({"model": MODEL, "input": "x", "reasoning": "high"}, "reasoning"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(client, fake_qwen, body, param):
    reply = client.post("/v1/responses", json=body)
    assert reply.status_code == 400 and reply.get_json()["error"]["param"] == param
    assert fake_qwen.requests == []


def test_an_image_is_refused_as_unsupported_content(client):
    item = {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AA"}]}
    reply = client.post("/v1/responses", json={"model": MODEL, "input": [item]})
    assert reply.status_code == 400 and reply.get_json()["error"]["code"] == "unsupported_content"


def test_an_unknown_model_is_404(sdk):
    with pytest.raises(openai.NotFoundError):
        sdk.responses.create(model="gpt-9-nonexistent", input="x")


def test_a_websocket_upgrade_is_refused_at_once(service):
    headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "x"}
    reply = requests.get(f"{service}/v1/responses", headers=headers, timeout=5)
    assert reply.status_code == 405 and reply.headers["Allow"].startswith("POST")
    error = reply.json()["error"]
    assert error["code"] == "websocket_not_supported" and "supports_websockets = false" in error["message"]


def test_no_field_the_sdk_lists_is_left_out_and_codex_settings_are_echoed(client, service, fake_qwen):
    from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseReasoningItem

    from tests.test_anthropic_front import missing_fields

    codex = {"text": {"verbosity": "medium"}, "prompt_cache_key": "k1", "store": False, "temperature": "hot"}
    fake_qwen.reply = thinking_reply()
    raw = client.post("/v1/responses", json={"model": MODEL, "input": "Hi", **codex}).get_json()
    assert missing_fields(Response, raw) == []
    assert raw["text"] == {"format": {"type": "text"}, "verbosity": "medium"} and raw["prompt_cache_key"] == "k1"
    assert raw["store"] is False and raw["temperature"] == 1.0  # a wrong type is not echoed back
    reasoning, message = raw["output"]
    assert missing_fields(ResponseReasoningItem, reasoning) == []
    assert missing_fields(ResponseOutputMessage, message) == []
    model(fake_qwen, CALL)
    (call,) = client.post("/v1/responses", json={"model": MODEL, "input": "x", "tools": [WEATHER]}).get_json()["output"]
    assert missing_fields(ResponseFunctionToolCall, call) == []
    fake_qwen.reply = thinking_reply()
    for name, data in raw_events(service, {"model": MODEL, "input": "Hi"}):
        event_type = type(EVENTS.validate_python(data))
        assert missing_fields(event_type, data) == [], name
