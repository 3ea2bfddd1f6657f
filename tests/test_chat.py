"""Chat completions through the fake Qwen upstream, driven by the real openai package."""

from __future__ import annotations

import json

import openai
import pytest

from app import create_app
from tests.conftest import TOKEN
from tests.fake_qwen import (
    Reply,
    answer_frames,
    delta_frame,
    frame,
    gzip_reply,
    json_reply,
    sse_reply,
    summary_frames,
    usage,
    web_search_frames,
)

MESSAGES = [{"role": "user", "content": "hi"}]


def create(sdk, **kwargs):
    return sdk.chat.completions.create(model=kwargs.pop("model", "qwen3.7-plus"), messages=MESSAGES, **kwargs)


def collect_stream(sdk, **kwargs) -> list:
    return list(create(sdk, stream=True, **kwargs))


def stream_text(chunks: list) -> tuple[str, str]:
    content = reasoning = ""
    for chunk in chunks:
        if chunk.choices:
            delta = chunk.choices[0].delta
            content += delta.content or ""
            reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
    return content, reasoning


def thinking_reply() -> Reply:
    return sse_reply(summary_frames(["First thought.", "Second thought."]) + answer_frames(["Par", "is."]))


# --- non-streaming ---------------------------------------------------------------------------


def test_create_returns_the_answer_and_usage(sdk):
    completion = create(sdk)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "qwen3.7-plus"
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", "Hello world", "stop")
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        10,
        2,
        12,
    )


def test_create_returns_reasoning_content(sdk, fake_qwen):
    fake_qwen.reply = thinking_reply()
    message = create(sdk).choices[0].message
    assert message.content == "Paris."
    assert message.model_extra["reasoning_content"] == "First thought.\n\nSecond thought."


def test_no_reasoning_content_key_without_thinking(sdk):
    assert "reasoning_content" not in (create(sdk).choices[0].message.model_extra or {})


# --- streaming -------------------------------------------------------------------------------


def test_stream_yields_role_then_deltas_then_finish(sdk):
    chunks = collect_stream(sdk)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:])
    assert [c.choices[0].delta.content for c in chunks[1:-1]] == ["Hello", " world"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({(c.id, c.created, c.model) for c in chunks}) == 1


def test_stream_usage_chunk_when_asked(sdk):
    chunks = collect_stream(sdk, stream_options={"include_usage": True})
    assert chunks[-1].choices == []
    assert chunks[-1].usage.total_tokens == 12
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_helper_final_completion(sdk):
    with sdk.chat.completions.stream(model="qwen3.7-plus", messages=MESSAGES) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.role == "assistant"
    assert final.choices[0].message.content == "Hello world"


def test_stream_wire_format(service):
    import requests

    body = {"model": "qwen3.7-plus", "messages": MESSAGES, "stream": True}
    response = requests.post(service + "/v1/chat/completions", json=body, timeout=10)
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.headers["x-request-id"].startswith("req_")
    events = response.content.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    for event in events[:-2]:
        assert event.startswith(b"data: {") and b"\n" not in event
    assert b"event:" not in response.content


def test_stream_and_create_give_the_same_text_and_reasoning(sdk, fake_qwen):
    fake_qwen.reply = thinking_reply()
    streamed = stream_text(collect_stream(sdk))
    fake_qwen.reply = thinking_reply()
    message = create(sdk).choices[0].message
    assert streamed == (message.content, message.model_extra["reasoning_content"])


def test_think_phase_is_reasoning(sdk, fake_qwen):
    fake_qwen.reply = sse_reply([delta_frame("think", "Hmm. "), delta_frame("think", "Yes.")] + answer_frames(["Ok"]))
    assert stream_text(collect_stream(sdk)) == ("Ok", "Hmm. Yes.")


def test_keep_alives_and_trailing_spaces_are_ignored(sdk, fake_qwen):
    keep_alive = frame({"response.info": {"action": "keep_alive"}}, trailing_space=True)
    fake_qwen.reply = sse_reply([keep_alive, *answer_frames(["A"]), keep_alive])
    assert create(sdk).choices[0].message.content == "A"


def test_web_search_second_round_is_included_and_usage_adds_up(sdk, fake_qwen):
    round_one = answer_frames(["Let me search."], input_tokens=100)
    round_two = answer_frames(["Found", " it."], input_tokens=200)
    fake_qwen.reply = sse_reply(round_one + web_search_frames() + round_two)
    completion = create(sdk)
    assert completion.choices[0].message.content == "Let me search.Found it."
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (300, 3)
    chunks = collect_stream(sdk, stream_options={"include_usage": True})
    assert stream_text(chunks)[0] == "Let me search.Found it."
    assert chunks[-1].usage.prompt_tokens == 300


def test_reasoning_tokens_are_reported(sdk, fake_qwen):
    answer = [delta_frame("answer", "x", use=usage(10, 9, reasoning=7)), delta_frame("answer", status="finished")]
    fake_qwen.reply = sse_reply(answer)
    assert create(sdk).usage.completion_tokens_details.reasoning_tokens == 7


def test_unicode_survives_any_chunk_boundary(sdk, fake_qwen):
    text = "héllo 你好 🌍"
    whole = b"".join(sse_reply(answer_frames([text, "!"])).chunks).replace(b"\n", b"\r\n")
    fake_qwen.reply = Reply(chunks=[whole[i : i + 1] for i in range(len(whole))])
    assert create(sdk).choices[0].message.content == text + "!"


# --- thinking control and reasoning format ---------------------------------------------------


@pytest.mark.parametrize(
    ("model", "effort", "mode"),
    [
        ("qwen3.7-plus", None, "Fast"),  # the captured payload's mode stands
        ("qwen3.7-plus-thinking", None, "Thinking"),
        ("qwen3.7-plus", "high", "Thinking"),
        ("qwen3.7-plus-thinking", "none", "Fast"),
    ],
)
def test_thinking_mode_follows_suffix_and_effort(sdk, fake_qwen, model, effort, mode):
    extra = {"reasoning_effort": effort} if effort else {}
    completion = create(sdk, model=model, **extra)
    sent = fake_qwen.requests[-1]["json"]
    assert sent["model"] == "qwen3.7-plus"
    assert sent["messages"][0]["feature_config"]["thinking_mode"] == mode
    assert completion.model == model


@pytest.mark.parametrize(
    ("reasoning_format", "expected"),
    [
        ("think-tags", ("<think>\nFirst thought.\n\nSecond thought.\n</think>\n\nParis.", "")),
        ("hidden", ("Paris.", "")),
    ],
)
def test_reasoning_format_applies_to_both_modes(app_config, qwen_token, fake_qwen, reasoning_format, expected):
    from tests.fake_qwen import ServerThread

    app = create_app({**app_config, "REASONING_FORMAT": reasoning_format})
    with ServerThread(app) as server, openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as sdk:
        fake_qwen.reply = thinking_reply()
        assert stream_text(collect_stream(sdk)) == expected
        fake_qwen.reply = thinking_reply()
        message = create(sdk).choices[0].message
        assert (message.content, (message.model_extra or {}).get("reasoning_content", "")) == expected


# --- errors before the first byte ------------------------------------------------------------

RATE_LIMITED = {"success": False, "request_id": "r", "data": {"code": "RateLimited", "details": "Slow down", "num": 2}}
EXPIRED = {"success": False, "request_id": "r", "data": {"code": "unauthorized", "details": "Token has expired"}}
BAXIA = {"ret": ["FAIL_SYS_USER_VALIDATE", "RGV587_ERROR::SM::overloaded"], "data": {"url": "https://x/punish"}}
WAF_HTML = Reply(chunks=[b"<!doctypehtml><html><script>aliyun_waf_aa</script></html>"], content_type="text/html")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("reply", "error_class", "status", "code"),
    [
        (json_reply(RATE_LIMITED), openai.RateLimitError, 429, "rate_limit_exceeded"),
        (json_reply(EXPIRED), openai.AuthenticationError, 401, "upstream_credential_rejected"),
        (json_reply(BAXIA), openai.InternalServerError, 503, "upstream_browser_check"),
        (WAF_HTML, openai.InternalServerError, 503, "upstream_browser_check"),
        (
            json_reply({"success": False, "data": {"code": "Bad_Request", "details": "x"}}),
            openai.APIStatusError,
            502,
            "upstream_error",
        ),
        (
            Reply(chunks=[b"oops"], status=500, content_type="text/plain"),
            openai.InternalServerError,
            502,
            "upstream_error",
        ),
    ],
)
def test_upstream_errors_map_to_statuses(sdk, fake_qwen, reply, error_class, status, code, stream):
    fake_qwen.reply = reply
    with pytest.raises(error_class) as caught:
        create(sdk, stream=stream)
    assert caught.value.status_code == status
    assert caught.value.code == code


def test_rate_limit_sets_retry_after_from_hours(client, fake_qwen):
    fake_qwen.reply = json_reply(RATE_LIMITED)
    response = client.post("/v1/chat/completions", json={"model": "qwen3.7-plus", "messages": MESSAGES})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7200"


def test_expired_token_on_chat_creation_names_the_variable(sdk, fake_qwen):
    fake_qwen.chat_reply = json_reply(EXPIRED)
    with pytest.raises(openai.AuthenticationError) as caught:
        create(sdk)
    assert "QWEN_TOKEN" in caught.value.message
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(fake_qwen.requests) == 1  # no completion call after a refused chat creation


@pytest.mark.parametrize("value", [None, ""])
def test_missing_token_is_a_clear_error_without_upstream_call(sdk, fake_qwen, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("QWEN_TOKEN")
    else:
        monkeypatch.setenv("QWEN_TOKEN", value)
    with pytest.raises(openai.AuthenticationError) as caught:
        create(sdk)
    assert "QWEN_TOKEN" in caught.value.message
    assert caught.value.code == "upstream_credential_missing"
    assert fake_qwen.requests == []


def test_upstream_down_is_502(app_config, providers_dir, qwen_token):
    metadata = providers_dir / "qwen" / "metadata.json"
    data = json.loads(metadata.read_text())
    data["host"] = "127.0.0.1:1"
    metadata.write_text(json.dumps(data))
    response = (
        create_app(app_config)
        .test_client()
        .post("/v1/chat/completions", json={"model": "qwen3.7-plus", "messages": MESSAGES})
    )
    assert response.status_code == 502
    assert response.get_json()["error"]["code"] == "upstream_unreachable"


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_hanging_before_headers_is_504(app_config, qwen_token, fake_qwen, stream):
    fake_qwen.reply = Reply(chunks=answer_frames(["late"]), hang_before=1.5)
    client = create_app({**app_config, "UPSTREAM_TIMEOUT": 0.5}).test_client()
    response = client.post(
        "/v1/chat/completions", json={"model": "qwen3.7-plus", "messages": MESSAGES, "stream": stream}
    )
    assert response.status_code == 504
    assert response.get_json()["error"]["code"] == "upstream_timeout"


# --- errors after the first byte -------------------------------------------------------------


def test_in_stream_error_raises_api_error_in_the_sdk(sdk, fake_qwen):
    error = frame({"error": {"code": "ContextLengthExceeded", "details": "too long"}, "response_id": "r"})
    fake_qwen.reply = sse_reply([delta_frame("answer", "partial", use=usage(1, 1)), error])
    with pytest.raises(openai.APIError) as caught:
        collect_stream(sdk)
    assert "ContextLengthExceeded" in caught.value.message


def test_in_stream_error_is_502_when_not_streaming(sdk, fake_qwen):
    error = frame({"error": {"code": "ContextLengthExceeded", "details": "too long"}})
    fake_qwen.reply = sse_reply([delta_frame("answer", "partial"), error])
    with pytest.raises(openai.InternalServerError) as caught:
        create(sdk)
    assert caught.value.status_code == 502


def test_cut_stream_is_never_passed_off_as_complete(sdk, fake_qwen):
    fake_qwen.reply = sse_reply([delta_frame("answer", "Half an ans", use=usage(1, 1))])
    with pytest.raises(openai.APIError) as caught:
        collect_stream(sdk)
    assert "before the reply finished" in caught.value.message
    with pytest.raises(openai.InternalServerError) as caught:
        create(sdk)
    assert caught.value.code == "upstream_truncated"


def test_cut_stream_raw_events_end_with_error_then_done(client, fake_qwen):
    fake_qwen.reply = sse_reply([delta_frame("answer", "Half", use=usage(1, 1))])
    response = client.post("/v1/chat/completions", json={"model": "qwen3.7-plus", "messages": MESSAGES, "stream": True})
    events = response.get_data().split(b"\n\n")
    assert events[-1] == b""
    assert events[-2] == b"data: [DONE]"
    assert json.loads(events[-3][len(b"data: ") :])["error"]["code"] == "upstream_truncated"
    assert TOKEN.encode() not in response.get_data()


# --- review fixes: compressed streams, in-stream error codes, odd frames ---------------------


@pytest.mark.parametrize("stream", [False, True])
def test_gzip_compressed_stream_is_decoded(sdk, fake_qwen, stream):
    fake_qwen.reply = gzip_reply(sse_reply(answer_frames(["Zipped", " reply"])))
    if stream:
        assert stream_text(collect_stream(sdk))[0] == "Zipped reply"
    else:
        assert create(sdk).choices[0].message.content == "Zipped reply"


@pytest.mark.parametrize(
    ("error_frame", "status", "code"),
    [
        (frame({"error": {"code": "RateLimited", "details": "Slow down"}}), 429, "rate_limit_exceeded"),
        (
            frame({"error": {"code": "unauthorized", "details": "Token has expired"}}),
            401,
            "upstream_credential_rejected",
        ),
        (frame(BAXIA), 503, "upstream_browser_check"),
        (frame(EXPIRED), 401, "upstream_credential_rejected"),
    ],
    ids=["rate-limited", "unauthorized", "anti-bot", "envelope"],
)
def test_error_frames_in_the_stream_keep_their_meaning(client, fake_qwen, error_frame, status, code):
    fake_qwen.reply = sse_reply([error_frame])
    response = client.post("/v1/chat/completions", json={"model": "qwen3.7-plus", "messages": MESSAGES})
    assert response.status_code == status
    error = response.get_json()["error"]
    assert error["code"] == code
    if code == "upstream_credential_rejected":
        assert "QWEN_TOKEN" in error["message"]


def test_frame_with_odd_usage_types_is_not_a_crash(client, fake_qwen):
    odd = usage(5, 1)
    odd["output_tokens_details"] = [1]
    odd["prompt_tokens_details"] = "none"
    fake_qwen.reply = sse_reply([delta_frame("answer", "ok", use=odd), delta_frame("answer", status="finished")])
    body = {"model": "qwen3.7-plus", "messages": MESSAGES, "stream": True}
    events = client.post("/v1/chat/completions", json=body).get_data().split(b"\n\n")
    assert events[-2] == b"data: [DONE]"
    assert b'"content":"ok"' in b"".join(events)
