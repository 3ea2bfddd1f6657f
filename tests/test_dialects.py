"""Dialects, message modes, upstream model lists, folder reloads and .env handling.

The OpenAI dialect is driven through the real ``openai`` package against the service, in front of a
loopback fake OpenAI-compatible upstream (``tests/fake_openai.py``).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import openai
import pytest
import requests

import provider_loader
import services
from app import create_app
from converters import fold_messages
from dialects import DIALECTS
from dialects.qwen import HISTORY_GAP_SECONDS
from fronts.openai_chat import parse_chat_request
from tests import fake_openai as fake_module
from tests.conftest import ROOT, TOKEN, copy_provider
from tests.fake_openai import (
    UPSTREAM_ID,
    UPSTREAM_ONLY_MODEL,
    FakeOpenAI,
    OpenAIReply,
    ToolCall,
    error_reply,
)
from tests.fake_qwen import UPSTREAM_ONLY_MODEL as QWEN_UPSTREAM_ONLY
from tests.fake_qwen import FakeQwen, Reply, ServerThread, json_reply, serving

SHIPPED_OPENAI = ROOT / "porviders" / "openai"
OPENAI_KEY = "sk-test-openai-k3y-value"
MESSAGES = [{"role": "user", "content": "hi"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
WEATHER_CALL = ToolCall(
    id="call_abc123", name="get_weather", argument_pieces=['{"ci', 'ty": "Pa', 'ris", "unit": "C"}']
)
TIME_CALL = ToolCall(id="call_def456", name="get_time", argument_pieces=['{"tz":', ' "CET"}'])


def metadata_of(folder: Path) -> dict:
    return json.loads((folder / "metadata.json").read_text())


def write_metadata(folder: Path, metadata: dict) -> None:
    (folder / "metadata.json").write_text(json.dumps(metadata))


def model_ids(client_or_url, headers: dict | None = None) -> list[str]:
    response = client_or_url.get("/v1/models", headers=headers or {})
    assert response.status_code == 200, response.get_json()
    return [item["id"] for item in response.get_json()["data"]]


def models_gets(fake_qwen) -> int:
    return sum(1 for r in fake_qwen.requests if r["path"] == "/api/models")


def completion_posts(fake_qwen) -> list[dict]:
    return [r for r in fake_qwen.requests if r["path"].startswith("/api/v2/chat/completions")]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chat(client, model: str = "qwen3.7-plus", **body):
    return client.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, **body})


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake_openai_server():
    with serving(FakeOpenAI()) as fake:
        yield fake


@pytest.fixture
def fake_openai(fake_openai_server):
    fake_openai_server.reset()
    return fake_openai_server


@pytest.fixture
def openai_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    return OPENAI_KEY


@pytest.fixture
def openai_dir(providers_dir, fake_openai):
    """The shipped qwen and openai folders, each pointed at its loopback fake."""
    copy_provider(SHIPPED_OPENAI, providers_dir / "openai", host=fake_openai.host, scheme="http")
    return providers_dir


@pytest.fixture
def oa_app(openai_dir, app_config, qwen_token, openai_key):
    return create_app(app_config)


@pytest.fixture
def oa_service(oa_app):
    with ServerThread(oa_app) as server:
        yield server.url


@pytest.fixture
def oa_sdk(oa_service):
    with openai.OpenAI(base_url=oa_service + "/v1", api_key="unused", max_retries=0, timeout=20) as client:
        yield client


def oa_create(sdk, **kwargs):
    return sdk.chat.completions.create(
        model=kwargs.pop("model", "gpt-4o-mini"), messages=kwargs.pop("messages", MESSAGES), **kwargs
    )


def reasoning_of(obj) -> str:
    return (obj.model_extra or {}).get("reasoning_content") or ""


# --- 1. the OpenAI dialect ---------------------------------------------------------------------


def test_openai_create_answers_with_our_id_and_the_upstream_usage(oa_sdk, fake_openai):
    before = int(time.time())
    completion = oa_create(oa_sdk)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-") and completion.id != UPSTREAM_ID
    assert completion.model == "gpt-4o-mini"
    assert before <= completion.created <= int(time.time())
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == (
        "assistant",
        "Hello from upstream",
        "stop",
    )
    assert choice.message.tool_calls is None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        11,
        7,
        18,
    )
    assert len(fake_openai.chat_requests()) == 1


def test_openai_stream_every_chunk_carries_our_id_created_and_model(oa_sdk):
    before = int(time.time())
    chunks = list(oa_create(oa_sdk, stream=True, stream_options={"include_usage": True}))
    ids = {chunk.id for chunk in chunks}
    assert len(ids) == 1
    (our_id,) = ids
    assert our_id.startswith("chatcmpl-") and our_id != UPSTREAM_ID
    assert len({chunk.created for chunk in chunks}) == 1
    assert before <= chunks[0].created <= int(time.time())
    assert {chunk.model for chunk in chunks} == {"gpt-4o-mini"}
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "Hello from upstream"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens, usage_chunk.usage.total_tokens) == (
        11,
        7,
        18,
    )
    assert all(c.usage is None for c in chunks[:-1])


def test_openai_stream_without_include_usage_sends_no_usage_chunk(oa_sdk, fake_openai):
    chunks = list(oa_create(oa_sdk, stream=True))
    assert all(chunk.choices for chunk in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    # ...but the upstream was asked for usage all the same.
    assert fake_openai.chat_requests()[0]["json"]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    "client_body",
    [
        pytest.param({"stream": False}, id="non-streaming"),
        pytest.param({"stream": True, "stream_options": {"include_usage": False}}, id="streaming"),
        pytest.param({}, id="no-stream-field"),
    ],
)
def test_openai_upstream_receives_the_clients_body(oa_service, fake_openai, client_body):
    body = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        ],
        "temperature": 0.25,
        "top_p": 0.9,
        "max_tokens": 50,
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
        "top_k": 40,
        "user": "someone",
        "provider": "openai",
        **client_body,
    }
    with requests.post(oa_service + "/v1/chat/completions", json=body, timeout=20) as response:
        assert response.status_code == 200, response.text
    (sent,) = fake_openai.chat_requests()
    expected = {key: value for key, value in body.items() if key != "provider"}
    expected["stream"] = True
    expected["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    assert sent["json"] == expected
    assert "provider" not in sent["json"]
    assert sent["headers"]["Authorization"] == f"Bearer {OPENAI_KEY}"
    assert sent["method"] == "POST"


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-5-foo"])
def test_openai_listed_and_pattern_models_route_to_the_openai_folder(oa_sdk, fake_openai, fake_qwen, model):
    completion = oa_create(oa_sdk, model=model, extra_body={"top_k": 3})
    assert completion.model == model
    assert completion.choices[0].message.content == "Hello from upstream"
    (sent,) = fake_openai.chat_requests()
    assert sent["json"]["model"] == model
    assert sent["json"]["top_k"] == 3
    assert fake_qwen.requests == []


def test_openai_reasoning_content_passes_through_non_streaming(oa_sdk, fake_openai):
    fake_openai.reply = OpenAIReply(reasoning=["Think", "ing..."], content=["Answer."])
    message = oa_create(oa_sdk).choices[0].message
    assert message.content == "Answer."
    assert reasoning_of(message) == "Thinking..."


def test_openai_reasoning_content_passes_through_streaming(oa_sdk, fake_openai):
    fake_openai.reply = OpenAIReply(reasoning=["Think", "ing..."], content=["Answer."])
    chunks = list(oa_create(oa_sdk, stream=True))
    reasoning = "".join(reasoning_of(c.choices[0].delta) for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (reasoning, content) == ("Thinking...", "Answer.")
    # reasoning is never sent as content
    assert all(not (c.choices[0].delta.content or "").startswith("Think") for c in chunks if c.choices)


def accumulate_tool_calls(chunks) -> dict[int, dict]:
    calls: dict[int, dict] = {}
    for chunk in chunks:
        if not chunk.choices:
            continue
        for fragment in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(fragment.index, {"id": "", "type": "", "name": "", "arguments": ""})
            call["id"] = fragment.id or call["id"]
            call["type"] = fragment.type or call["type"]
            if fragment.function is not None:
                call["name"] += fragment.function.name or ""
                call["arguments"] += fragment.function.arguments or ""
    return calls


def test_openai_streamed_tool_calls_reach_a_streaming_client(oa_sdk, fake_openai):
    fake_openai.reply = OpenAIReply(content=[], tool_calls=[WEATHER_CALL, TIME_CALL])
    chunks = list(oa_create(oa_sdk, stream=True, tools=[WEATHER_TOOL]))
    calls = accumulate_tool_calls(chunks)
    assert calls == {
        0: {"id": "call_abc123", "type": "function", "name": "get_weather", "arguments": WEATHER_CALL.arguments},
        1: {"id": "call_def456", "type": "function", "name": "get_time", "arguments": TIME_CALL.arguments},
    }
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    assert {c.id for c in chunks} == {chunks[0].id}


def test_openai_streamed_tool_call_through_the_sdk_stream_helper(oa_sdk, fake_openai):
    fake_openai.reply = OpenAIReply(content=[], tool_calls=[WEATHER_CALL])
    with oa_sdk.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES, tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert (call.id, call.type, call.function.name) == ("call_abc123", "function", "get_weather")
    assert call.function.arguments == '{"city": "Paris", "unit": "C"}'
    assert call.function.parsed_arguments == {"city": "Paris", "unit": "C"}
    assert final.id.startswith("chatcmpl-") and final.id != UPSTREAM_ID


def test_openai_tool_calls_are_merged_for_a_non_streaming_client(oa_sdk, fake_openai):
    fake_openai.reply = OpenAIReply(content=[], tool_calls=[WEATHER_CALL, TIME_CALL])
    completion = oa_create(oa_sdk, tools=[WEATHER_TOOL])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = [(c.id, c.type, c.function.name, c.function.arguments) for c in choice.message.tool_calls]
    assert calls == [
        ("call_abc123", "function", "get_weather", '{"city": "Paris", "unit": "C"}'),
        ("call_def456", "function", "get_time", '{"tz": "CET"}'),
    ]
    assert completion.usage.total_tokens == 18


@pytest.mark.parametrize("stream", [False, True])
def test_openai_upstream_finish_reason_length_is_passed_on(oa_sdk, fake_openai, stream):
    fake_openai.reply = OpenAIReply(content=["Cut by max_tokens"], finish_reason="length")
    if stream:
        chunks = list(oa_create(oa_sdk, stream=True, max_tokens=3))
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finishes == ["length"]
    else:
        assert oa_create(oa_sdk, max_tokens=3).choices[0].finish_reason == "length"


def test_openai_upstream_401_is_a_rejected_credential_naming_the_variable(oa_sdk, fake_openai):
    fake_openai.reply = error_reply(
        401, f"Incorrect API key provided: {OPENAI_KEY}.", "invalid_request_error", code="invalid_api_key"
    )
    with pytest.raises(openai.AuthenticationError) as caught:
        oa_create(oa_sdk)
    error = caught.value
    assert error.status_code == 401
    assert error.code == "upstream_credential_rejected"
    assert "OPENAI_API_KEY" in error.message
    assert OPENAI_KEY not in error.message  # the key the upstream echoed is blanked
    assert error.response.headers["x-should-retry"] == "false"


def test_openai_upstream_400_passes_its_param_and_code_on(oa_sdk, fake_openai):
    fake_openai.reply = error_reply(
        400,
        "Invalid value for 'temperature': must be at most 2.",
        "invalid_request_error",
        param="temperature",
        code="invalid_value",
    )
    with pytest.raises(openai.BadRequestError) as caught:
        oa_create(oa_sdk, temperature=1.5)
    error = caught.value
    assert error.status_code == 400
    assert (error.param, error.code, error.type) == ("temperature", "invalid_value", "invalid_request_error")
    assert "must be at most 2" in error.message


@pytest.mark.parametrize("stream", [False, True])
def test_openai_upstream_429_is_a_rate_limit_with_retry_after(oa_sdk, fake_openai, stream):
    fake_openai.reply = error_reply(
        429,
        "Rate limit reached for gpt-4o-mini.",
        "requests",
        code="rate_limit_exceeded",
        headers={"Retry-After": "7"},
    )
    with pytest.raises(openai.RateLimitError) as caught:
        result = oa_create(oa_sdk, stream=stream)
        if stream:
            list(result)
    error = caught.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.response.headers["retry-after"] == "7"


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(error_reply(500, "The server had an error.", "server_error"), id="json-body"),
        pytest.param(OpenAIReply(status=500), id="plain-body"),
        pytest.param(error_reply(503, "Overloaded.", "server_error"), id="503"),
    ],
)
def test_openai_upstream_5xx_is_502(oa_sdk, fake_openai, reply):
    fake_openai.reply = reply
    with pytest.raises(openai.InternalServerError) as caught:
        oa_create(oa_sdk)
    assert caught.value.status_code == 502


def test_openai_stream_cut_before_finish_is_an_api_error(oa_sdk, fake_openai):
    fake_openai.reply = OpenAIReply(content=["Half", " an"], cut_before_finish=True)
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in oa_create(oa_sdk, stream=True):
            received.append(chunk)
    assert caught.value.code == "upstream_truncated"
    # No finish reason was ever sent: the partial reply is not passed off as complete.
    assert not any(c.choices and c.choices[0].finish_reason for c in received)


def test_openai_non_streaming_cut_before_finish_is_502_truncated(oa_sdk, fake_openai):
    fake_openai.reply = OpenAIReply(content=["Half", " an"], cut_before_finish=True)
    with pytest.raises(openai.InternalServerError) as caught:
        oa_create(oa_sdk)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_truncated"


@pytest.mark.parametrize("value", [None, ""])
def test_openai_key_unset_is_401_without_an_upstream_call(
    openai_dir, app_config, qwen_token, fake_openai, monkeypatch, value
):
    if value is None:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    else:
        monkeypatch.setenv("OPENAI_API_KEY", value)
    client = create_app(app_config).test_client()
    for stream in (False, True):
        response = chat(client, "gpt-4o-mini", stream=stream)
        assert response.status_code == 401
        error = response.get_json()["error"]
        assert error["code"] == "upstream_credential_missing"
        assert "OPENAI_API_KEY" in error["message"]
        assert response.headers["x-should-retry"] == "false"
    assert fake_openai.chat_requests() == []
    health = client.get("/health").get_json()
    assert health["providers"]["openai"]["missing_variables"] == ["OPENAI_API_KEY"]


# --- 2. whole-history message mode ------------------------------------------------------------

HISTORY = [
    {"role": "developer", "content": "Be brief."},
    {"role": "system", "content": "Answer in English."},
    {"role": "user", "content": "What's the weather in Paris?"},
    {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "Sunny, 21 C"},
    {"role": "user", "content": [{"type": "text", "text": "And"}, {"type": "text", "text": "tomorrow?"}]},
]
HISTORY_ROLES = ["system", "system", "user", "assistant", "tool", "user"]
HISTORY_TEXTS = [
    "Be brief.",
    "Answer in English.",
    "What's the weather in Paris?",
    "Let me check.",
    "Sunny, 21 C",
    "And\ntomorrow?",
]


@pytest.fixture
def history_client(providers_dir, app_config, qwen_token):
    copy_provider(
        providers_dir / "qwen", providers_dir / "history", message_mode="history", models=["hist-model"], patterns=[]
    )
    return create_app(app_config).test_client()


def test_history_mode_sends_one_message_per_openai_message(history_client, fake_qwen, providers_dir):
    template = json.loads((providers_dir / "qwen" / "payload.json").read_text())["messages"][0]
    before = time.time()
    response = history_client.post("/v1/chat/completions", json={"model": "hist-model", "messages": HISTORY})
    after = time.time()
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["choices"][0]["message"]["content"] == "Hello world"
    (sent,) = completion_posts(fake_qwen)
    messages = sent["json"]["messages"]
    assert [m["role"] for m in messages] == HISTORY_ROLES
    assert [m["content"] for m in messages] == HISTORY_TEXTS
    assert all(m["models"] == ["hist-model"] for m in messages)
    fids = [m["fid"] for m in messages]
    assert len(set(fids)) == len(fids)
    assert template["fid"] not in fids
    stamps = [m["timestamp"] for m in messages]
    assert all(isinstance(s, int) for s in stamps)
    assert [b - a for a, b in zip(stamps, stamps[1:], strict=False)] == [HISTORY_GAP_SECONDS] * (len(stamps) - 1)
    assert int(before) <= stamps[-1] <= int(after)
    assert sent["json"]["model"] == "hist-model"
    # Each message is a copy of the captured one: everything else is as captured.
    changed = {"role", "content", "fid", "timestamp", "models", "childrenIds"}
    for message in messages:
        assert set(message) == set(template)
        assert {k: v for k, v in message.items() if k not in changed} == {
            k: v for k, v in template.items() if k not in changed
        }


def test_history_mode_fids_are_fresh_per_request(history_client, fake_qwen):
    for _ in range(2):
        response = history_client.post("/v1/chat/completions", json={"model": "hist-model", "messages": HISTORY[:3]})
        assert response.status_code == 200
    first, second = (posted["json"]["messages"] for posted in completion_posts(fake_qwen))
    assert not {m["fid"] for m in first} & {m["fid"] for m in second}


def test_history_mode_streams_too(history_client, fake_qwen):
    body = {"model": "hist-model", "messages": HISTORY[:3], "stream": True}
    response = history_client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert b'"Hello"' in response.data and response.data.rstrip().endswith(b"data: [DONE]")
    (sent,) = completion_posts(fake_qwen)
    assert [m["role"] for m in sent["json"]["messages"]] == ["system", "system", "user"]


def test_single_mode_still_folds_the_conversation_into_one_message(history_client, fake_qwen):
    response = history_client.post("/v1/chat/completions", json={"model": "qwen3.7-plus", "messages": HISTORY})
    assert response.status_code == 200
    (sent,) = completion_posts(fake_qwen)
    messages = sent["json"]["messages"]
    assert len(messages) == 1
    assert messages[0]["role"] == "user"
    assert messages[0]["content"] == fold_messages(parse_chat_request({"model": "m", "messages": HISTORY}).messages)
    assert messages[0]["content"].startswith("System: Be brief.\n\nSystem: Answer in English.\n\nUser: ")


# --- 3. upstream model lists -------------------------------------------------------------------


def folder_models(providers_dir: Path, name: str = "qwen") -> list[str]:
    return metadata_of(providers_dir / name)["models"]


def test_models_lists_the_folder_then_upstream_only_models_once(client, fake_qwen, providers_dir):
    ids = model_ids(client)
    assert ids == [*folder_models(providers_dir), QWEN_UPSTREAM_ONLY]
    assert len(ids) == len(set(ids))
    objects = client.get("/v1/models").get_json()["data"]
    assert {o["owned_by"] for o in objects} == {"qwen"}
    assert client.get(f"/v1/models/{QWEN_UPSTREAM_ONLY}").status_code == 200


def test_models_upstream_call_carries_the_credential_and_no_chat_id(client, fake_qwen):
    model_ids(client)
    (get,) = [r for r in fake_qwen.requests if r["path"] == "/api/models"]
    assert get["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert "${" not in json.dumps(get["headers"])


def test_models_are_cached_within_the_cache_time(client, fake_qwen, providers_dir):
    first = model_ids(client)
    fake_qwen.models_reply = json_reply({"data": [{"id": "qwen-later"}]})
    second = model_ids(client)
    assert second == first
    assert models_gets(fake_qwen) == 1


def test_models_cache_zero_asks_the_upstream_every_time(app_config, qwen_token, fake_qwen, providers_dir):
    client = create_app({**app_config, "MODELS_CACHE_SECONDS": 0}).test_client()
    assert model_ids(client)[-1] == QWEN_UPSTREAM_ONLY
    fake_qwen.models_reply = json_reply({"data": [{"id": "qwen-later"}]})
    assert model_ids(client) == [*folder_models(providers_dir), "qwen-later"]
    assert models_gets(fake_qwen) == 2


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(json_reply({"error": "boom"}, status=500), id="500"),
        pytest.param(json_reply({"unexpected": []}), id="no-list"),
        pytest.param(Reply(chunks=[b"<html>login</html>"], content_type="text/html"), id="html"),
    ],
)
def test_models_failing_upstream_serves_the_folder_list(client, fake_qwen, providers_dir, reply):
    fake_qwen.models_reply = reply
    assert model_ids(client) == folder_models(providers_dir)
    assert models_gets(fake_qwen) == 1


def test_models_redirect_is_not_followed_and_credentials_stay_home(client, fake_qwen, providers_dir, caplog):
    elsewhere = FakeQwen()
    with serving(elsewhere):
        target = elsewhere.url + "/api/models"
        fake_qwen.models_reply = Reply(
            chunks=[b""], status=302, content_type="text/plain", headers={"Location": target}
        )
        assert model_ids(client) == folder_models(providers_dir)
    assert elsewhere.requests == []  # the Bearer token never went to the redirect's host
    assert "HTTP 302, a redirect, which is not followed" in caplog.text


def test_models_refused_connection_serves_the_folder_list(tmp_path, qwen_token):
    root = tmp_path / "refused"
    root.mkdir()
    copy_provider(ROOT / "porviders" / "qwen", root / "qwen", host=f"127.0.0.1:{closed_port()}", scheme="http")
    client = create_app({"TESTING": True, "PROVIDERS_DIR": str(root), "ENV_FILE": None}).test_client()
    started = time.monotonic()
    assert model_ids(client) == folder_models(root)
    assert time.monotonic() - started < 2


def test_models_hanging_upstream_never_holds_the_list_up(app_config, qwen_token, fake_qwen, providers_dir):
    fake_qwen.models_reply = Reply(
        chunks=[json.dumps({"data": [{"id": "qwen-slow"}]}).encode()], content_type="application/json", hang_before=3
    )
    client = create_app({**app_config, "MODELS_REFRESH_TIMEOUT": 0.3}).test_client()
    started = time.monotonic()
    ids = model_ids(client)
    assert time.monotonic() - started < 1.5
    assert ids == folder_models(providers_dir)


def test_models_unset_credential_means_no_upstream_call(app_config, fake_qwen, providers_dir, monkeypatch):
    monkeypatch.delenv("QWEN_TOKEN", raising=False)
    client = create_app(app_config).test_client()
    assert model_ids(client) == folder_models(providers_dir)
    assert models_gets(fake_qwen) == 0


def test_models_of_the_openai_folder_are_merged_too(oa_app, fake_openai, fake_qwen, openai_dir):
    client = oa_app.test_client()
    data = client.get("/v1/models").get_json()["data"]
    openai_ids = [o["id"] for o in data if o["owned_by"] == "openai"]
    assert openai_ids == [*folder_models(openai_dir, "openai"), UPSTREAM_ONLY_MODEL]
    qwen_ids = [o["id"] for o in data if o["owned_by"] == "qwen"]
    assert qwen_ids == [*folder_models(openai_dir), QWEN_UPSTREAM_ONLY]
    (get,) = fake_openai.model_requests()
    assert get["method"] == "GET"
    assert get["headers"]["Authorization"] == f"Bearer {OPENAI_KEY}"
    # cached like any other
    client.get("/v1/models")
    assert len(fake_openai.model_requests()) == 1


def test_models_of_the_openai_folder_fall_back_when_its_endpoint_fails(oa_app, fake_openai, openai_dir):
    fake_openai.models_status = 500
    ids = model_ids(oa_app.test_client())
    assert ids[: len(folder_models(openai_dir, "openai"))] == folder_models(openai_dir, "openai")
    assert UPSTREAM_ONLY_MODEL not in ids


# --- 4. reloading provider folders ------------------------------------------------------------


@pytest.fixture
def instant_reload(monkeypatch):
    monkeypatch.setattr(services, "RELOAD_CHECK_SECONDS", 0)


def without_models_endpoint(folder: Path, **changes) -> None:
    metadata = metadata_of(folder)
    metadata.pop("models_endpoint", None)
    metadata.update(changes)
    write_metadata(folder, metadata)


def test_reload_sees_a_new_provider_folder(instant_reload, client, providers_dir, fake_qwen):
    assert "extra-model" not in model_ids(client)
    extra = copy_provider(providers_dir / "qwen", providers_dir / "extra")
    without_models_endpoint(extra, models=["extra-model"], patterns=[], owned_by="extra")
    assert "extra-model" in model_ids(client)
    assert client.get("/health").get_json()["providers"]["extra"]["loaded"] is True
    assert client.get("/v1/models/extra-model").get_json()["owned_by"] == "extra"
    assert chat(client, "extra-model").status_code == 200
    assert chat(client, "qwen3.7-plus").status_code == 200
    assert [r["json"]["model"] for r in completion_posts(fake_qwen)] == ["extra-model", "qwen3.7-plus"]


@pytest.mark.parametrize("models_endpoint", [False, True], ids=["folder-only", "with-models-endpoint"])
def test_reload_sees_a_changed_models_list(instant_reload, client, providers_dir, fake_qwen, models_endpoint):
    folder = providers_dir / "qwen"
    if not models_endpoint:
        without_models_endpoint(folder)
    before = model_ids(client)
    assert "qwen3.7-plus" in before and "qwen-added" not in before
    metadata = metadata_of(folder)
    metadata["models"] = ["qwen-added", *[m for m in metadata["models"] if m != "qwen3.5-flash"]]
    write_metadata(folder, metadata)
    after = model_ids(client)
    assert after[: len(metadata["models"])] == metadata["models"]
    assert "qwen3.5-flash" not in after


def test_reload_sees_a_broken_folder_and_the_others_keep_working(instant_reload, providers_dir, app_config, qwen_token):
    other = copy_provider(providers_dir / "qwen", providers_dir / "other")
    without_models_endpoint(other, models=["other-model"], patterns=[])
    client = create_app(app_config).test_client()
    assert "other-model" in model_ids(client)
    good_metadata = (other / "metadata.json").read_text()
    (other / "metadata.json").write_text('{"host": "x", ')  # cut mid-edit
    health = client.get("/health").get_json()
    assert health["status"] == "degraded"
    # The broken read is reported, and the folder's last good version keeps serving.
    assert health["providers"]["other"]["loaded"] is True
    assert "metadata.json" in health["providers"]["other"]["reload_error"]
    assert health["providers"]["qwen"]["loaded"] is True
    assert "other-model" in model_ids(client)
    assert chat(client, "qwen3.7-plus").status_code == 200
    assert chat(client, "other-model", provider="other").status_code == 200
    # fixed again: the report goes away without a restart
    (other / "metadata.json").write_text(good_metadata + " ")
    health = client.get("/health").get_json()
    assert health["providers"]["other"]["loaded"] is True and "reload_error" not in health["providers"]["other"]
    assert health["status"] == "ok"
    assert chat(client, "other-model").status_code == 200


def test_reload_with_the_default_interval_within_about_a_second(client, providers_dir):
    assert services.RELOAD_CHECK_SECONDS <= 1.0
    assert "late" not in client.get("/health").get_json()["providers"]
    late = copy_provider(providers_dir / "qwen", providers_dir / "late")
    without_models_endpoint(late, models=["late-model"], patterns=[])
    started = time.monotonic()
    while "late" not in client.get("/health").get_json()["providers"]:
        assert time.monotonic() - started < 1.5, "the new folder was not seen within 1.5 s"
        time.sleep(0.05)
    assert "late-model" in model_ids(client)


# --- 5. .env ----------------------------------------------------------------------------------


@pytest.fixture
def env_file(tmp_path, monkeypatch):
    for name in ("QWEN_TOKEN", "QWEN_BX_UA", "QWEN_BX_UMIDTOKEN", "QWEN_COOKIE", "API_KEYS", "REASONING_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / ".env"
    path.write_text("QWEN_TOKEN=dotenv-token-one\n")
    return path


def env_app(app_config, env_file: Path):
    return create_app({**app_config, "ENV_FILE": str(env_file)})


def bearer_tokens(fake_qwen) -> list[str]:
    return [r["headers"].get("Authorization") for r in fake_qwen.requests if r["path"] != "/api/models"]


def test_env_file_supplies_the_token(app_config, env_file, fake_qwen):
    assert "QWEN_TOKEN" not in os.environ
    client = env_app(app_config, env_file).test_client()
    response = chat(client)
    assert response.status_code == 200, response.get_json()
    assert bearer_tokens(fake_qwen) == ["Bearer dotenv-token-one"] * 2  # chats/new, then completions
    assert client.get("/health").get_json()["providers"]["qwen"]["credentials_set"] is True


def test_real_environment_wins_over_the_env_file(app_config, env_file, fake_qwen, monkeypatch):
    monkeypatch.setenv("QWEN_TOKEN", "environment-token")
    client = env_app(app_config, env_file).test_client()
    assert chat(client).status_code == 200
    assert set(bearer_tokens(fake_qwen)) == {"Bearer environment-token"}


def test_env_file_edited_after_start_is_read_by_the_next_request(app_config, env_file, fake_qwen):
    client = env_app(app_config, env_file).test_client()
    assert chat(client).status_code == 200
    mtime = env_file.stat().st_mtime
    env_file.write_text("QWEN_TOKEN=dotenv-token-two\n")
    os.utime(env_file, (mtime + 2, mtime + 2))  # an edit made a moment later
    assert chat(client).status_code == 200
    assert bearer_tokens(fake_qwen) == ["Bearer dotenv-token-one"] * 2 + ["Bearer dotenv-token-two"] * 2
    # and a value removed from .env is gone too
    env_file.write_text("# nothing\n")
    os.utime(env_file, (mtime + 4, mtime + 4))
    response = chat(client)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "upstream_credential_missing"


def test_env_file_token_is_redacted_from_errors(app_config, env_file, fake_qwen):
    fake_qwen.reply = json_reply(
        {"success": False, "data": {"code": "Bad", "details": "token dotenv-token-one is odd"}}
    )
    client = env_app(app_config, env_file).test_client()
    response = chat(client)
    assert response.status_code == 502
    assert "dotenv-token-one" not in response.get_data(as_text=True)


def test_env_file_settings_are_applied_at_create_app(app_config, env_file, fake_qwen):
    env_file.write_text("QWEN_TOKEN=dotenv-token-one\nAPI_KEYS=dotenv-key-1, dotenv-key-2\nREASONING_FORMAT=hidden\n")
    flask_app = env_app(app_config, env_file)
    assert flask_app.config["API_KEYS"] == ("dotenv-key-1", "dotenv-key-2")
    assert flask_app.config["REASONING_FORMAT"] == "hidden"
    client = flask_app.test_client()
    refused = client.get("/v1/models")
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "invalid_api_key"
    assert client.get("/v1/models", headers={"Authorization": "Bearer dotenv-key-2"}).status_code == 200
    assert chat(client).status_code == 401
    ok = client.post(
        "/v1/chat/completions",
        json={"model": "qwen3.7-plus", "messages": MESSAGES},
        headers={"Authorization": "Bearer dotenv-key-1"},
    )
    assert ok.status_code == 200


def test_env_settings_in_the_real_environment_win(app_config, env_file, monkeypatch):
    env_file.write_text("API_KEYS=dotenv-key\n")
    monkeypatch.setenv("API_KEYS", "environment-key")
    assert env_app(app_config, env_file).config["API_KEYS"] == ("environment-key",)


# --- 6. the dialect table ---------------------------------------------------------------------


def test_the_loader_knows_exactly_the_registered_dialects(tmp_path):
    # One registry: every registered dialect loads, and nothing else does.
    for name in [*DIALECTS, "klingon"]:
        copy_provider(ROOT / "porviders" / "openai", tmp_path / name)
        metadata = json.loads((tmp_path / name / "metadata.json").read_text())
        (tmp_path / name / "metadata.json").write_text(json.dumps({**metadata, "dialect": name}))
    registry = provider_loader.load_providers(tmp_path)
    assert sorted(registry.providers) == sorted(DIALECTS)
    assert set(registry.errors) == {"klingon"}
    assert f"known: {', '.join(DIALECTS)}" in registry.errors["klingon"]
    assert all(name == dialect.name for name, dialect in DIALECTS.items())


# --- review fixes: reasoning formats with tool calls, n > 1 ------------------------------------


@pytest.mark.parametrize("reasoning_format", ["think-tags", "hidden"])
@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_formats_keep_tool_calls_and_finish_reason(
    openai_dir, app_config, qwen_token, openai_key, fake_openai, reasoning_format, stream
):
    fake_openai.reply = OpenAIReply(content=[], reasoning=["Let me call it."], tool_calls=[WEATHER_CALL])
    app = create_app({**app_config, "REASONING_FORMAT": reasoning_format})
    with ServerThread(app) as server, openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as sdk:
        if stream:
            with sdk.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGES, tools=[WEATHER_TOOL]) as s:
                completion = s.get_final_completion()
        else:
            completion = oa_create(sdk, tools=[WEATHER_TOOL])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == (
        WEATHER_CALL.id,
        WEATHER_CALL.name,
        WEATHER_CALL.arguments,
    )
    expected_text = "<think>\nLet me call it.\n</think>\n\n" if reasoning_format == "think-tags" else ""
    assert (choice.message.content or "") == expected_text


def test_only_the_first_choice_is_relayed_when_the_upstream_sends_several(oa_sdk, fake_openai, monkeypatch):
    # An upstream asked for n=2 interleaves choices 0 and 1; mixing them would garble the answer.
    def two_choices(reply, model, include_usage):
        head = {"id": "chatcmpl-upstream", "object": "chat.completion.chunk", "created": 1, "model": model}
        for index, text in ((0, "AAA"), (1, "BBB"), (0, "aaa"), (1, "bbb")):
            choice = {"index": index, "delta": {"content": text}, "finish_reason": None}
            yield fake_module.sse({**head, "choices": [choice]})
        for index, reason in ((1, "length"), (0, "stop")):
            yield fake_module.sse({**head, "choices": [{"index": index, "delta": {}, "finish_reason": reason}]})
        yield b"data: [DONE]\n\n"

    monkeypatch.setattr(fake_module.FakeOpenAI, "_chunks", staticmethod(two_choices))
    choice = oa_create(oa_sdk, n=2).choices[0]
    assert (choice.message.content, choice.finish_reason) == ("AAAaaa", "stop")


# --- review fixes: models from the upstream are usable; refreshes share one deadline ----------


def test_a_model_only_the_upstream_lists_can_be_retrieved_and_used(client, fake_qwen):
    fake_qwen.models_reply = json_reply({"data": [{"id": "custom-upstream-model"}]})
    assert "custom-upstream-model" in model_ids(client)
    assert client.get("/v1/models/custom-upstream-model").get_json()["owned_by"] == "qwen"
    assert chat(client, model="custom-upstream-model").status_code == 200
    assert completion_posts(fake_qwen)[-1]["json"]["model"] == "custom-upstream-model"


def test_several_slow_model_lists_are_waited_for_together(app_config, qwen_token, fake_qwen, providers_dir):
    for name in ("slow1", "slow2", "slow3"):
        copy_provider(providers_dir / "qwen", providers_dir / name, host=fake_qwen.host, scheme="http")
    fake_qwen.models_reply = Reply(chunks=[b'{"data": []}'], content_type="application/json", hang_before=3)
    client = create_app({**app_config, "MODELS_REFRESH_TIMEOUT": 0.5}).test_client()
    started = time.monotonic()
    model_ids(client)
    assert time.monotonic() - started < 1.5  # one shared deadline, not 0.5 s per provider


def test_a_trickling_models_answer_is_given_up_and_not_waited_for_again(
    app_config, qwen_token, fake_qwen, providers_dir
):
    body = json.dumps({"data": [{"id": "qwen-trickle"}]}).encode()
    fake_qwen.models_reply = Reply(chunks=[bytes([b]) for b in body], content_type="application/json", delay=0.2)
    client = create_app({**app_config, "MODELS_REFRESH_TIMEOUT": 0.5}).test_client()
    started = time.monotonic()
    assert model_ids(client) == folder_models(providers_dir)
    assert time.monotonic() - started < 1.5
    time.sleep(0.5)  # the refresh gives up at its deadline and remembers the failure
    started = time.monotonic()
    assert model_ids(client) == folder_models(providers_dir)
    assert time.monotonic() - started < 0.3
    assert models_gets(fake_qwen) == 1


# --- second review: short keys never break relayed JSON; a failed refresh keeps the last list --


@pytest.mark.parametrize("key", ["null", "1700", "test"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_short_api_key_never_corrupts_the_relayed_answer(
    openai_dir, app_config, qwen_token, fake_openai, monkeypatch, key, stream
):
    monkeypatch.setenv("OPENAI_API_KEY", key)
    client = create_app(app_config).test_client()
    response = chat(client, model="gpt-4o-mini", stream=stream)
    assert response.status_code == 200
    if stream:
        events = [json.loads(e[6:]) for e in response.get_data().split(b"\n\n") if e.startswith(b"data: {")]
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    else:
        text = response.get_json()["choices"][0]["message"]["content"]
    assert text == "Hello from upstream"


def test_a_failed_refresh_keeps_the_last_good_upstream_list(app_config, qwen_token, fake_qwen, providers_dir):
    client = create_app({**app_config, "MODELS_CACHE_SECONDS": 0}).test_client()
    assert QWEN_UPSTREAM_ONLY in model_ids(client)
    fake_qwen.models_reply = Reply(chunks=[b"down"], status=503, content_type="text/plain")
    assert QWEN_UPSTREAM_ONLY in model_ids(client)
    assert client.get(f"/v1/models/{QWEN_UPSTREAM_ONLY}").status_code == 200
