"""Continuing the upstream chat: only the new turns are sent, with the last reply as parent_id.

Driven with openai-python against the loopback fake; the fake records every upstream request, so
the tests see which turns opened a chat and what each completion carried.
"""

from __future__ import annotations

import sys

import openai
import pytest

from tests.fake_qwen import CHAT_ID, RESPONSE_ID, answer_frames, json_reply, sse_reply
from tests.test_serving import ROOT, start, stop

SYSTEM = {"role": "system", "content": "Be brief."}


def completions(fake_qwen) -> list[dict]:
    return [r["json"] for r in fake_qwen.requests if r["path"].startswith("/api/v2/chat/completions")]


def chats_opened(fake_qwen) -> int:
    return sum(r["path"] == "/api/v2/chats/new" for r in fake_qwen.requests)


def talk(sdk, history: list[dict], text: str) -> list[dict]:
    """One turn: the user says ``text``; the reply joins the history as the client keeps it."""
    history = [*history, {"role": "user", "content": text}]
    reply = sdk.chat.completions.create(model="qwen3-max", messages=history)
    return [*history, {"role": "assistant", "content": reply.choices[0].message.content}]


def test_a_ten_turn_conversation_continues_one_chat_sending_only_the_new_turn(sdk, fake_qwen):
    history = [SYSTEM]
    for turn in range(10):
        history = talk(sdk, history, f"question {turn}")
    sent = completions(fake_qwen)
    assert chats_opened(fake_qwen) == 1 and len(sent) == 10
    assert "Be brief." in sent[0]["messages"][0]["content"]  # the first turn carries the history
    for turn, body in enumerate(sent[1:], start=1):
        assert body["messages"][0]["content"] == f"question {turn}"  # only the new turn
        assert body["parent_id"] == body["parentId"] == RESPONSE_ID
        assert body["messages"][0]["parent_id"] == RESPONSE_ID and body["chat_id"] == CHAT_ID


@pytest.mark.parametrize(
    "change",
    [
        lambda h: [h[0], {"role": "user", "content": "edited question"}, *h[2:]],  # an edited turn
        lambda h: [{"role": "system", "content": "Be long."}, *h[1:]],  # a changed system prompt
        lambda h: h[:2] + [{"role": "assistant", "content": "another reply"}],  # a reply not ours
    ],
)
def test_a_history_that_is_not_a_remembered_one_opens_a_fresh_chat(sdk, fake_qwen, change):
    history = talk(sdk, [SYSTEM], "question 0")
    talk(sdk, change(history), "question 1")
    sent = completions(fake_qwen)
    assert chats_opened(fake_qwen) == 2
    assert "question 0" in sent[1]["messages"][0]["content"] or "edited" in sent[1]["messages"][0]["content"]
    assert sent[1]["parent_id"] is None


def test_a_regenerated_reply_and_a_second_client_get_fresh_chats(sdk, fake_qwen):
    history = talk(sdk, [SYSTEM], "question 0")
    talk(sdk, history, "question 1")  # continues, and takes the remembered branch
    talk(sdk, history, "question 1")  # the same request again: the branch was used once
    assert chats_opened(fake_qwen) == 2
    assert completions(fake_qwen)[2]["parent_id"] is None


def test_a_parent_the_upstream_lost_falls_back_to_a_fresh_chat_unseen(sdk, fake_qwen):
    history = talk(sdk, [SYSTEM], "question 0")

    def respond(body: dict):
        if body.get("parent_id"):
            return json_reply({"success": False, "data": {"code": "PARENT_NOT_FOUND", "details": "no parent"}})
        return sse_reply(answer_frames(["fresh"]))

    fake_qwen.responder = respond
    reply = sdk.chat.completions.create(model="qwen3-max", messages=[*history, {"role": "user", "content": "q1"}])
    assert reply.choices[0].message.content == "fresh"
    sent = completions(fake_qwen)
    assert sent[1]["parent_id"] == RESPONSE_ID and sent[2]["parent_id"] is None
    assert "question 0" in sent[2]["messages"][0]["content"]  # the whole history, in a new chat
    assert chats_opened(fake_qwen) == 2


def test_continuation_off_sends_the_whole_history_every_time(app_config, qwen_token, fake_qwen):
    from app import create_app
    from tests.fake_qwen import ServerThread

    app = create_app({**app_config, "CONTINUATION": "off"})
    with ServerThread(app) as server, openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as sdk:
        history = talk(sdk, [SYSTEM], "question 0")
        talk(sdk, history, "question 1")
    assert chats_opened(fake_qwen) == 2
    assert "question 0" in completions(fake_qwen)[1]["messages"][0]["content"]


def test_an_agent_loop_continues_with_only_the_tool_result(sdk, fake_qwen):
    call = '[TOOL CALL]\n{"name": "get_time", "arguments": {}}\n[END TOOL CALL]'
    fake_qwen.responder = lambda body: sse_reply(
        answer_frames(["It is noon."] if "12:00" in body["messages"][0]["content"] else [call])
    )
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    history = [{"role": "user", "content": "What time is it?"}]
    first = sdk.chat.completions.create(model="qwen3-max", messages=history, tools=tools).choices[0].message
    tool_call = first.tool_calls[0]
    history += [
        {"role": "assistant", "content": None, "tool_calls": [tool_call.model_dump()]},
        {"role": "tool", "tool_call_id": tool_call.id, "content": "12:00"},
    ]
    final = sdk.chat.completions.create(model="qwen3-max", messages=history, tools=tools)
    assert final.choices[0].message.content == "It is noon."
    second = completions(fake_qwen)[1]
    assert second["parent_id"] == RESPONSE_ID and chats_opened(fake_qwen) == 1
    assert second["messages"][0]["content"].startswith("Tool result:\n[TOOL RESULT 1: get_time")


def test_two_workers_share_the_remembered_conversations(providers_dir, fake_qwen, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKERS", "2")
    monkeypatch.setenv("STATE_URL", f"sqlite:///{tmp_path / 'state.sqlite3'}")
    process, url = start([sys.executable, str(ROOT / "app.py")], providers_dir)
    try:
        history = [SYSTEM]
        for turn in range(6):  # a new connection each turn: both workers take turns
            with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as fresh:
                history = talk(fresh, history, f"question {turn}")
    finally:
        stop(process)
    assert chats_opened(fake_qwen) == 1
    assert all(body["parent_id"] == RESPONSE_ID for body in completions(fake_qwen)[1:])


def replies_with_ids(fake_qwen, answer):
    """Each completion answers with its own response id (r1, r2, ...); ``answer(body)`` gives the text."""
    from tests.fake_qwen import Reply, frame

    def delta(text: str, status: str, rid: str) -> bytes:
        return frame(
            {"choices": [{"delta": {"content": text, "phase": "answer", "status": status}}], "response_id": rid}
        )

    def respond(body: dict):
        rid = f"r{len(completions(fake_qwen))}"
        created = frame({"response.created": {"chat_id": CHAT_ID, "response_id": rid}})
        return Reply(chunks=[created, delta(answer(body), "typing", rid), delta("", "finished", rid)])

    fake_qwen.responder = respond


def test_after_a_retried_required_call_the_next_turn_names_the_reply_that_answered(sdk, fake_qwen):
    call = '[TOOL CALL]\n{"name": "get_time", "arguments": {}}\n[END TOOL CALL]'
    tries = []

    def answer(body):
        tries.append(1)
        return "no call" if len(tries) == 1 else call if len(tries) == 2 else "It is noon."

    replies_with_ids(fake_qwen, answer)
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]
    history = [{"role": "user", "content": "Time?"}]
    first = sdk.chat.completions.create(model="qwen3-max", messages=history, tools=tools, tool_choice="required")
    tool_call = first.choices[0].message.tool_calls[0]
    history += [
        {"role": "assistant", "content": None, "tool_calls": [tool_call.model_dump()]},
        {"role": "tool", "tool_call_id": tool_call.id, "content": "12:00"},
    ]
    sdk.chat.completions.create(model="qwen3-max", messages=history, tools=tools)
    assert completions(fake_qwen)[2]["parent_id"] == "r2"  # the second try answered, not the first


def test_an_error_frame_for_a_lost_chat_falls_back_unseen(sdk, fake_qwen):
    history = talk(sdk, [SYSTEM], "question 0")
    from tests.fake_qwen import Reply, frame

    def respond(body: dict):
        if body.get("parent_id"):
            return Reply(chunks=[frame({"error": {"code": "Not_Found", "details": "Chat not found"}})])
        return sse_reply(answer_frames(["fresh"]))

    fake_qwen.responder = respond
    reply = sdk.chat.completions.create(model="qwen3-max", messages=[*history, {"role": "user", "content": "q1"}])
    assert reply.choices[0].message.content == "fresh" and chats_opened(fake_qwen) == 2


def test_a_continued_turn_that_fails_is_continued_again_when_retried(sdk, fake_qwen):
    history = [*talk(sdk, [SYSTEM], "question 0"), {"role": "user", "content": "q1"}]
    fake_qwen.reply = json_reply({"success": False, "data": {"code": "Bad_Request", "details": "Internal error"}})
    with pytest.raises(openai.APIStatusError):
        sdk.chat.completions.create(model="qwen3-max", messages=history)
    fake_qwen.reply = sse_reply(answer_frames(["ok"]))
    assert sdk.chat.completions.create(model="qwen3-max", messages=history).choices[0].message.content == "ok"
    assert [body["parent_id"] for body in completions(fake_qwen)[1:]] == [RESPONSE_ID, RESPONSE_ID]
    assert chats_opened(fake_qwen) == 1
