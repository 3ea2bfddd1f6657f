"""The Qwen stream as it is now: two candidates, events without blank lines, cumulative usage,
keep-alive while the upstream is silent, and drift made visible. Through the openai SDK."""

from __future__ import annotations

import json
import time

import openai
import pytest
import requests

from app import create_app
from tests.fake_qwen import (
    CHAT_ID,
    RESPONSE_ID,
    Reply,
    ServerThread,
    answer_frames,
    created_frame,
    delta_frame,
    frame,
    json_reply,
    keep_alive_frame,
    sse_reply,
    summary_frames,
    usage,
)

MESSAGES = [{"role": "user", "content": "hi"}]
OTHER_ID = "r0ffee00-9999-4999-8999-999999999999"


def ask(sdk, stream: bool, **kwargs):
    """The answer text and usage, streaming (usage asked for) or not."""
    if not stream:
        completion = sdk.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES, **kwargs)
        return completion.choices[0].message.content, completion.usage
    chunks = list(
        sdk.chat.completions.create(
            model="qwen3.7-plus", messages=MESSAGES, stream=True, stream_options={"include_usage": True}, **kwargs
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks[-1].usage


def health_drift(url: str, provider: str = "qwen") -> dict:
    return requests.get(url + "/health", timeout=5).json()["providers"][provider]["drift"]


# --- two candidate answers ----------------------------------------------------------------------


def candidate_created(response_id: str, index: str) -> bytes:
    return frame(
        {
            "response.created": {
                "chat_id": CHAT_ID,
                "parent_id": "p1",
                "response_id": response_id,
                "response_index": index,
            }
        }
    )


def candidate_frame(response_id: str, content: str, status: str = "typing", use: dict | None = None) -> bytes:
    delta = {"role": "assistant", "content": content, "phase": "answer", "status": status}
    body: dict = {"choices": [{"delta": delta}], "response_id": response_id}
    if use is not None:
        body["usage"] = use
    return frame(body)


def two_candidates() -> Reply:
    """Both replies opened, then their frames interleaved, each tagged with its own response_id."""
    return Reply(
        chunks=[
            candidate_created(RESPONSE_ID, "0"),
            candidate_created(OTHER_ID, "1"),
            candidate_frame(RESPONSE_ID, "Hel", use=usage(10, 1)),
            candidate_frame(OTHER_ID, "Bon", use=usage(10, 5)),
            candidate_frame(RESPONSE_ID, "lo", use=usage(10, 2)),
            candidate_frame(OTHER_ID, "jour", use=usage(10, 9)),
            candidate_frame(OTHER_ID, "", status="finished"),
            candidate_frame(RESPONSE_ID, "", status="finished"),
        ]
    )


@pytest.mark.parametrize("stream", [False, True])
def test_only_the_first_candidate_is_relayed_and_its_usage(sdk, fake_qwen, service, stream):
    fake_qwen.reply = two_candidates()
    text, use = ask(sdk, stream)
    assert text == "Hello"
    assert (use.prompt_tokens, use.completion_tokens, use.total_tokens) == (10, 2, 12)
    drift = health_drift(service)
    assert drift["counts"]["dropped_candidate"] == 1
    assert drift["last"]["kind"] == "dropped_candidate"
    assert drift["last"]["response_index"] == 1
    assert OTHER_ID not in json.dumps(drift) and "Bon" not in json.dumps(drift)


# --- events without blank lines ---------------------------------------------------------------


def without_blank_lines(frames: list[bytes]) -> list[bytes]:
    return [raw.replace(b"\n\n", b"\n") for raw in frames]


@pytest.mark.parametrize("stream", [False, True])
def test_events_without_blank_lines_are_read_one_per_line(sdk, fake_qwen, stream):
    fake_qwen.reply = Reply(chunks=without_blank_lines([created_frame(), *answer_frames(["Hello", " world"])]))
    text, use = ask(sdk, stream)
    assert text == "Hello world"
    assert use.completion_tokens == 2


def test_a_joined_event_that_is_not_json_line_by_line_is_still_refused(client, fake_qwen):
    fake_qwen.reply = Reply(chunks=[created_frame(), b'data: {"choices": [\ndata: not json\n\n'])
    response = client.post("/v1/chat/completions", json={"model": "qwen3.7-plus", "messages": MESSAGES})
    assert response.status_code == 502
    assert response.get_json()["error"]["code"] == "upstream_error"


# --- usage ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_usage_counters_within_a_round_replace_each_other(sdk, fake_qwen, stream):
    frames = [delta_frame("answer", piece, use=usage(100, n)) for n, piece in enumerate(["a", "b", "c", "d"], 1)]
    fake_qwen.reply = sse_reply([*frames, delta_frame("answer", "", status="finished")])
    text, use = ask(sdk, stream)
    assert text == "abcd"
    assert (use.prompt_tokens, use.completion_tokens) == (100, 4)  # the latest counters, never 1+2+3+4


# --- keep-alive while the upstream is silent ----------------------------------------------------


@pytest.fixture
def keepalive_service(app_config, qwen_token):
    app = create_app({**app_config, "KEEPALIVE_SECONDS": 0.3})
    with ServerThread(app) as server:
        yield server.url


def slow_reply(silence: float, *frames: bytes) -> Reply:
    """The stream opens, then says nothing for ``silence`` seconds before its answer."""
    return Reply(chunks=[created_frame(), *frames], delay=silence / (len(frames) + 1))


def read_stream(url: str, started: float) -> list[tuple[float, str]]:
    """Each non-empty SSE line with the time it arrived, from a raw streaming request."""
    body = {"model": "qwen3.7-plus", "messages": MESSAGES, "stream": True}
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=20) as response:
        assert response.status_code == 200
        return [(time.monotonic() - started, line) for line in response.iter_lines(decode_unicode=True) if line]


def test_a_silent_upstream_gets_keep_alive_comments_before_its_first_delta(keepalive_service, fake_qwen):
    fake_qwen.reply = slow_reply(2.0, *answer_frames(["Hello"]))
    started = time.monotonic()
    lines = read_stream(keepalive_service, started)
    comments = [(at, line) for at, line in lines if line.startswith(":")]
    first_content = next(at for at, line in lines if '"content":"Hello"' in line)
    assert len(comments) >= 2, lines
    assert comments[0][0] < 1.0 < first_content  # the client heard something long before the answer
    assert lines[-1][1] == "data: [DONE]"


def test_upstream_keep_alive_frames_alone_do_not_keep_the_client_waiting(keepalive_service, fake_qwen):
    # Qwen's own keep-alive frames are not for the client before the first delta; the service's are.
    fake_qwen.reply = slow_reply(2.0, *[keep_alive_frame()] * 9, *answer_frames(["Hi"]))
    started = time.monotonic()
    lines = read_stream(keepalive_service, started)
    assert lines[0][0] < 1.0, lines
    assert "".join(line for _, line in lines).count('"content":"Hi"') == 1


def test_hidden_reasoning_is_silence_for_the_keep_alive(app_config, qwen_token, fake_qwen):
    # With REASONING_FORMAT=hidden the client gets nothing while the model thinks, however often
    # the upstream sends thinking frames: the keep-alive must still come.
    app = create_app({**app_config, "KEEPALIVE_SECONDS": 0.3, "REASONING_FORMAT": "hidden"})
    thoughts = summary_frames([f"Thought {n}." for n in range(12)])
    fake_qwen.reply = Reply(chunks=[created_frame(), *thoughts, *answer_frames(["Hi"])], delay=0.1)
    with ServerThread(app) as server:
        lines = read_stream(server.url, time.monotonic())
    first_content = next(at for at, line in lines if '"content":"Hi"' in line)
    comments = [at for at, line in lines if line.startswith(":")]
    assert comments and comments[0] < first_content - 0.3, lines
    assert not any("Thought" in line for _, line in lines)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -1.0])
def test_keep_alive_must_be_a_finite_number_of_seconds(app_config, qwen_token, value):
    with pytest.raises(SystemExit, match="KEEPALIVE_SECONDS must be"):
        create_app({**app_config, "KEEPALIVE_SECONDS": value})


def test_an_error_after_the_keep_alive_is_an_error_event_then_done(keepalive_service, fake_qwen):
    error = frame({"error": {"code": "Bad_Request", "details": "The chat is in progress!"}})
    fake_qwen.reply = slow_reply(1.5, error)
    lines = read_stream(keepalive_service, time.monotonic())
    assert lines[0][1].startswith("data: ") and lines[1][1].startswith(":")
    events = [json.loads(line[len("data: ") :]) for _, line in lines if line.startswith("data: {")]
    assert events[-1]["error"]["code"] == "upstream_error"
    assert lines[-1][1] == "data: [DONE]"
    with openai.OpenAI(base_url=keepalive_service + "/v1", api_key="x", max_retries=0) as sdk:
        fake_qwen.reply = slow_reply(1.5, error)
        with pytest.raises(openai.APIError, match="The chat is in progress"):
            list(sdk.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES, stream=True))


def test_an_error_before_the_keep_alive_keeps_its_http_status(keepalive_service, fake_qwen):
    fake_qwen.reply = json_reply({"success": False, "data": {"code": "RateLimited", "details": "Slow down.", "num": 1}})
    sdk = openai.OpenAI(base_url=keepalive_service + "/v1", api_key="x", max_retries=0)
    with sdk, pytest.raises(openai.RateLimitError) as info:
        list(sdk.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES, stream=True))
    assert info.value.status_code == 429
    assert info.value.response.headers["Retry-After"] == "3600"


def test_the_sdk_reads_a_stream_with_keep_alives(keepalive_service, fake_qwen):
    fake_qwen.reply = slow_reply(1.2, *answer_frames(["Hello", " world"]))
    with openai.OpenAI(base_url=keepalive_service + "/v1", api_key="x", max_retries=0) as sdk:
        chunks = list(sdk.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world"


def test_non_streaming_requests_wait_without_keep_alive(keepalive_service, fake_qwen):
    fake_qwen.reply = slow_reply(1.0, *answer_frames(["Hello"]))
    body = {"model": "qwen3.7-plus", "messages": MESSAGES}
    response = requests.post(keepalive_service + "/v1/chat/completions", json=body, timeout=20)
    assert response.status_code == 200
    assert response.text.startswith("{")  # one JSON body, nothing before it
    assert response.json()["choices"][0]["message"]["content"] == "Hello"


def test_keep_alive_zero_turns_it_off(app_config, qwen_token, fake_qwen):
    app = create_app({**app_config, "KEEPALIVE_SECONDS": 0})
    fake_qwen.reply = slow_reply(0.9, *answer_frames(["Hello"]))
    with ServerThread(app) as server:
        lines = read_stream(server.url, time.monotonic())
    assert not any(line.startswith(":") for _, line in lines)
    assert lines[0][0] > 0.6  # nothing was sent while the upstream was silent


# --- drift ------------------------------------------------------------------------------------


def test_an_ordinary_stream_adds_no_drift(sdk, fake_qwen, service):
    for stream in (False, True):
        assert ask(sdk, stream)[0] == "Hello world"
    drift = health_drift(service)
    assert drift == {"counts": dict.fromkeys(drift["counts"], 0), "last": None}
    assert set(drift["counts"]) == {
        "unknown_phase",
        "unknown_key",
        "dropped_candidate",
        "empty_reply",
        "zero_output_round",
    }


def test_unknown_phases_and_keys_are_counted_by_shape_never_content(sdk, fake_qwen, service):
    secret_text = "a private sentence the user wrote"
    odd = frame(
        {
            "choices": [
                {"delta": {"role": "assistant", "content": secret_text, "phase": "image_gen", "status": "typing"}}
            ],
            "response_id": RESPONSE_ID,
            "novelty": {"x": secret_text},
        }
    )
    fake_qwen.reply = sse_reply([odd, *answer_frames(["Hello"])])
    assert ask(sdk, False)[0] == "Hello"
    drift = health_drift(service)
    assert drift["counts"]["unknown_phase"] == 1
    assert drift["counts"]["unknown_key"] == 1
    assert drift["last"]["kind"] in ("unknown_phase", "unknown_key")
    assert secret_text not in json.dumps(drift)
    fake_qwen.reply = sse_reply(answer_frames(["Hello"]))
    ask(sdk, False)  # the next, ordinary, stream adds nothing
    assert health_drift(service)["counts"]["unknown_phase"] == 1


def test_replies_without_content_and_rounds_without_output_are_counted(sdk, fake_qwen, service):
    fake_qwen.reply = sse_reply(
        [delta_frame("answer", "", use=usage(10, 0)), delta_frame("answer", "", status="finished")]
    )
    assert ask(sdk, False)[0] == ""
    counts = health_drift(service)["counts"]
    assert (counts["empty_reply"], counts["zero_output_round"]) == (1, 1)
