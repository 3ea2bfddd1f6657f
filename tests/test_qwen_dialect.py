"""Unit tests for the qwen dialect: payloads, stream frames to deltas, error answers; no network."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path

import pytest

from converters import ApiError, Delta
from dialects.qwen import build_qwen_payload, error_from_upstream, iter_qwen_deltas, thinking_choice
from drift import DriftLog
from pipeline import build_create_chat_body
from tests import fake_qwen as fq
from tests.helpers import data_of, datas, usage_total

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_PATH = ROOT / "porviders" / "qwen" / "payload.json"
CHAT_ID = "c0ffee00-1111-4111-8111-111111111111"
NOW = 1790000000.75

# --- helpers ------------------------------------------------------------------------------


def answer(content: str, status: str = "typing", use: dict | None = None) -> str:
    delta = {"role": "assistant", "content": content, "phase": "answer", "status": status}
    body: dict = {"choices": [{"delta": delta}], "response_id": fq.RESPONSE_ID}
    if use is not None:
        body["usage"] = use
    return json.dumps(body)


def collect(payloads) -> tuple[list[Delta], ApiError | None]:
    """Deltas yielded before the iterator ended (notices of the upstream's ids aside), and the
    ApiError it raised if any."""
    seen: list[Delta] = []
    try:
        for delta in iter_qwen_deltas(payloads):
            if not delta.is_notice:
                seen.append(delta)
    except ApiError as error:
        return seen, error
    return seen, None


def text_of(deltas: list[Delta]) -> str:
    return "".join(d.content for d in deltas)


def reasoning_of(deltas: list[Delta]) -> str:
    return "".join(d.reasoning for d in deltas)


@pytest.fixture
def template() -> dict:
    return json.loads(TEMPLATE_PATH.read_text())


def is_uuid4(value: str) -> bool:
    parsed = uuid.UUID(value)
    return parsed.version == 4 and str(parsed) == value


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


def test_deltas_announce_the_upstream_response_id_first():
    frames = [fq.created_frame(), *fq.answer_frames(["Hi"])]
    deltas = list(iter_qwen_deltas(datas(frames)))
    assert deltas[0] == Delta(response_id=fq.RESPONSE_ID)
    assert deltas[0].is_notice
    assert [d for d in deltas[1:] if d.is_notice] == []


@pytest.mark.parametrize("created", [{}, {"response_id": ""}, {"response_id": 7}, "x"])
def test_deltas_created_frame_without_a_usable_id_announces_nothing(created):
    deltas = list(iter_qwen_deltas([json.dumps({"response.created": created}), *datas(fq.answer_frames(["Hi"]))]))
    assert [d for d in deltas if d.response_id] == []


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


# --- candidates and drift ---------------------------------------------------------------------

OTHER = "r0ffee00-9999-4999-8999-999999999999"


def tagged(response_id: str, content: str, status: str = "typing") -> str:
    delta = {"role": "assistant", "content": content, "phase": "answer", "status": status}
    return json.dumps({"choices": [{"delta": delta}], "response_id": response_id})


def created(response_id: str, index: str) -> str:
    return json.dumps({"response.created": {"chat_id": CHAT_ID, "response_id": response_id, "response_index": index}})


def replay(payloads: list[str]) -> tuple[str, DriftLog]:
    drift = DriftLog()
    deltas = list(iter_qwen_deltas(payloads, "QWEN_TOKEN", drift))
    return "".join(d.content for d in deltas), drift


def test_frames_of_a_candidate_never_announced_are_dropped_and_counted_once():
    text, drift = replay(
        [
            created(fq.RESPONSE_ID, "0"),
            tagged(fq.RESPONSE_ID, "Hel"),
            tagged(OTHER, "Bon"),
            tagged(OTHER, "jour"),
            tagged(fq.RESPONSE_ID, "lo"),
            tagged(fq.RESPONSE_ID, "", "finished"),
        ]
    )
    assert text == "Hello"
    assert drift.snapshot()["counts"]["dropped_candidate"] == 1
    assert drift.snapshot()["last"]["response_index"] == "unannounced"


def test_without_response_created_the_first_tagged_reply_is_kept():
    text, drift = replay([tagged(fq.RESPONSE_ID, "Hi"), tagged(OTHER, "Yo"), tagged(fq.RESPONSE_ID, "", "finished")])
    assert text == "Hi"
    assert drift.snapshot()["counts"]["dropped_candidate"] == 1


def test_untagged_frames_while_two_candidates_are_open_are_dropped_not_mixed():
    untagged = json.dumps(
        {"choices": [{"delta": {"role": "assistant", "content": "??", "phase": "answer", "status": "typing"}}]}
    )
    text, drift = replay(
        [
            created(fq.RESPONSE_ID, "0"),
            created(OTHER, "1"),
            tagged(fq.RESPONSE_ID, "Hi"),
            untagged,
            tagged(fq.RESPONSE_ID, "", "finished"),
        ]
    )
    assert text == "Hi"
    assert drift.snapshot()["counts"]["dropped_candidate"] == 2  # the second candidate, and the untagged frame


def test_untagged_frames_of_a_lone_reply_are_kept():
    untagged = json.dumps(
        {"choices": [{"delta": {"role": "assistant", "content": "Hi", "phase": "answer", "status": "finished"}}]}
    )
    text, drift = replay([created(fq.RESPONSE_ID, "0"), untagged])
    assert text == "Hi"
    assert drift.total == 0


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("response.stopped", "response.stopped"),
        ("sk-proj-ABCDEF0123456789", "<24 characters>"),
        ("a private sentence", "<18 characters>"),
        ("x1", "<2 characters>"),
    ],
)
def test_drift_shows_names_only_when_they_look_like_names(name, shown):
    frame = json.dumps(
        {
            "choices": [{"delta": {"role": "assistant", "content": "Hi", "phase": "answer", "status": "finished"}}],
            "response_id": fq.RESPONSE_ID,
            name: 1,
        }
    )
    _, drift = replay([frame])
    assert drift.snapshot()["last"]["key"] == shown
