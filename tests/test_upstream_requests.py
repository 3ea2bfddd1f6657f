"""Exactly what goes upstream: payload, headers and fresh ids, checked with ``responses``."""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
import responses

from tests.conftest import TOKEN
from tests.fake_qwen import answer_frames, created_frame

BASE = "https://chat.qwen.ai"
CHAT_ID = "abc123de-0000-4000-8000-000000000001"
SSE_BODY = b"".join([created_frame(), *answer_frames(["Hi"])])


@pytest.fixture
def upstream(qwen_token):
    """The shipped Qwen folder as is (https://chat.qwen.ai), answered by responses."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(f"{BASE}/api/v2/chats/new", json={"success": True, "data": {"id": CHAT_ID}})
        mock.post(f"{BASE}/api/v2/chat/completions", body=SSE_BODY, content_type="text/event-stream")
        yield mock


@pytest.fixture
def shipped_client(qwen_token):
    from app import create_app

    return create_app({"TESTING": True, "ENV_FILE": None}).test_client()


def post_chat(client, **changes):
    body = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}], **changes}
    return client.post("/v1/chat/completions", json=body)


def sent(upstream, index: int):
    request = upstream.calls[index].request
    return request, json.loads(request.body)


def test_chat_is_created_then_completed(shipped_client, upstream):
    assert post_chat(shipped_client).get_json()["choices"][0]["message"]["content"] == "Hi"
    assert [c.request.url for c in upstream.calls] == [
        f"{BASE}/api/v2/chats/new",
        f"{BASE}/api/v2/chat/completions?chat_id={CHAT_ID}",
    ]


def test_chat_creation_body_and_headers(shipped_client, upstream):
    before = int(time.time() * 1000)
    post_chat(shipped_client, model="qwen3.5-flash")
    request, body = sent(upstream, 0)
    assert body["models"] == ["qwen3.5-flash"]
    assert before <= body["timestamp"] <= int(time.time() * 1000)
    assert request.headers["Referer"] == "https://chat.qwen.ai/c/new-chat"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"


def test_completion_payload_is_filled_structurally(shipped_client, upstream):
    text = 'He said "hi" \\ ${NOT_A_VAR} \n{"json": true}'
    before = int(time.time())
    post_chat(shipped_client, messages=[{"role": "user", "content": text}])
    _, body = sent(upstream, 1)
    message = body["messages"][0]
    assert message["content"] == text
    assert (body["model"], message["models"]) == ("qwen3.7-plus", ["qwen3.7-plus"])
    assert body["chat_id"] == body["chatId"] == CHAT_ID
    assert body["stream"] is True and body["incremental_output"] is True
    assert message["feature_config"]["output_schema"] == "phase"
    assert before <= body["timestamp"] == message["timestamp"] <= int(time.time())
    assert uuid.UUID(message["fid"]).version == 4
    assert len(body["messages"]) == 1


def test_completion_headers(shipped_client, upstream):
    post_chat(shipped_client)
    request, _ = sent(upstream, 1)
    headers = request.headers
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Referer"] == f"https://chat.qwen.ai/c/{CHAT_ID}"
    assert (headers["source"], headers["Version"]) == ("web", "0.3.11")
    assert "br" not in headers.get("Accept-Encoding", "")
    assert headers.get("Host") is None  # requests derives it from the URL in metadata.json
    for optional in ("bx-ua", "bx-umidtoken", "Cookie"):
        assert optional not in headers


def test_fresh_ids_on_every_call(shipped_client, upstream):
    post_chat(shipped_client)
    post_chat(shipped_client)
    request_ids = [c.request.headers["X-Request-Id"] for c in upstream.calls]
    fids = [json.loads(c.request.body)["messages"][0]["fid"] for c in upstream.calls[1::2]]
    assert len(set(request_ids)) == 4
    assert all(re.fullmatch(r"[0-9a-f-]{36}", r) for r in request_ids)
    assert len(set(fids)) == 2


def test_optional_headers_are_sent_when_set(shipped_client, upstream, monkeypatch):
    monkeypatch.setenv("QWEN_BX_UA", "231!ua-blob")
    monkeypatch.setenv("QWEN_COOKIE", "token=abc; ssxmod_itna=1")
    post_chat(shipped_client)
    headers = sent(upstream, 1)[0].headers
    assert headers["bx-ua"] == "231!ua-blob"
    assert headers["Cookie"] == "token=abc; ssxmod_itna=1"
    assert "bx-umidtoken" not in headers


def test_conversation_is_folded_into_one_message(shipped_client, upstream):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": [{"type": "text", "text": "And"}, {"type": "text", "text": "Spain?"}]},
    ]
    post_chat(shipped_client, messages=messages)
    assert sent(upstream, 1)[1]["messages"][0]["content"] == (
        "System: Be brief.\n\nUser: Capital of France?\n\nAssistant: Paris.\n\nUser: And\nSpain?"
    )


@pytest.mark.parametrize("chat_id", ["../x?y", "abc\n", "abc\r\nX-Evil: 1", "", 7, None])
def test_unusable_chat_id_is_refused(shipped_client, upstream, chat_id):
    upstream.replace(responses.POST, f"{BASE}/api/v2/chats/new", json={"success": True, "data": {"id": chat_id}})
    response = post_chat(shipped_client)
    assert response.status_code == 502
    assert response.get_json()["error"]["code"] == "upstream_error"
    assert len(upstream.calls) == 1
