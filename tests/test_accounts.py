"""Accounts that stay alive: token refresh, several accounts, cooldowns, /health, against the fakes.

The fake chat upstream accepts only live access tokens of the fake auth server, which rotates
refresh tokens and counts every stale one it is sent.
"""

from __future__ import annotations

import os
import threading
import time

import openai
import requests

from state import StateError
from tests.fake_qwen import Reply, ServerThread, answer_frames, json_reply, sse_reply

RATE_LIMITED = {"success": False, "data": {"code": "RateLimited", "details": "upper limit", "num": 2}}
WAF_PAGE = Reply(chunks=[b"<!doctypehtml><html>aliyun_waf_aa</html>"], content_type="text/html")


def write_env(path, **values) -> None:
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))


def chat(client, content="hi"):
    return client.post(
        "/v1/chat/completions", json={"model": "qwen3-max", "messages": [{"role": "user", "content": content}]}
    )


def completion_accounts(fake_qwen) -> list[str | None]:
    return [r["account"] for r in fake_qwen.requests if r["path"].startswith("/api/v2/chat/completions")]


def account_health(client, account_id="1") -> dict:
    accounts = client.get("/health").get_json()["providers"]["qwen"]["accounts"]
    return next(a for a in accounts if a["id"] == account_id)


# --- refresh -----------------------------------------------------------------------------------


def test_a_token_about_to_expire_is_refreshed_before_use_with_the_web_apps_request(make_app, env_file, auth, fake_qwen):
    access, refresh = auth.issue("alice", lifetime=60)  # inside REFRESH_LEEWAY_SECONDS (180)
    write_env(env_file, QWEN_TOKEN=access, QWEN_REFRESH_TOKEN=refresh)
    response = chat(make_app().test_client())
    assert response.status_code == 200, response.get_json()
    assert len(auth.refreshes) == 1
    sent = auth.refreshes[0]["headers"]
    assert sent["Cookie"] == f"refresh_token={refresh}"
    assert sent["X-Request-Origin"] == "https://chat.qwen.ai"
    assert sent["Origin"] == "https://chat.qwen.ai" and sent["Source"] == "web" and sent["Version"]
    assert sent["Timezone"].endswith("GMT+0000") and len(sent["X-Request-Id"]) == 36
    assert "Authorization" not in sent and "Bx-Ua" not in sent  # the expiring token is not sent there
    used = [r["headers"]["Authorization"] for r in fake_qwen.requests]
    assert used and all(u != f"Bearer {access}" for u in used)
    assert completion_accounts(fake_qwen) == ["alice"]


def test_the_rotated_token_is_used_next_time_and_after_a_restart(make_app, env_file, auth, fake_qwen):
    access, refresh = auth.issue("alice", lifetime=60)
    write_env(env_file, QWEN_TOKEN=access, QWEN_REFRESH_TOKEN=refresh)
    assert chat(make_app().test_client()).status_code == 200
    auth.expire(access)  # what .env holds is dead now: only the store's rotated token works
    restarted = make_app().test_client()
    for _ in range(3):
        assert chat(restarted).status_code == 200
    assert len(auth.refreshes) == 1 and auth.stale_uses == 0
    assert completion_accounts(fake_qwen) == ["alice"] * 4
    health = account_health(restarted)
    assert health["state"] == "ok" and 800 < health["access_expires_in"] <= 900
    assert health["last_refresh"]["outcome"] == "ok" and health["refreshable"] is True


def test_a_token_rejected_before_the_first_byte_is_refreshed_once_and_retried(make_app, env_file, auth, fake_qwen):
    access, refresh = auth.issue("alice")  # looks valid for 900 s, but the upstream says otherwise
    auth.expire(access)
    write_env(env_file, QWEN_TOKEN=access, QWEN_REFRESH_TOKEN=refresh)
    response = chat(make_app().test_client())
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["choices"][0]["message"]["content"] == "Hello world"
    assert len(auth.refreshes) == 1


def test_a_refresh_token_alone_is_enough(make_app, env_file, auth, fake_qwen):
    _, refresh = auth.issue("alice")
    write_env(env_file, QWEN_REFRESH_TOKEN=refresh)
    client = make_app().test_client()
    assert client.get("/health").get_json()["providers"]["qwen"]["missing_variables"] == []
    assert chat(client).status_code == 200
    assert completion_accounts(fake_qwen) == ["alice"]


def test_a_refused_refresh_needs_a_recapture_and_fresh_values_in_env_bring_the_account_back(
    make_app, env_file, auth, fake_qwen
):
    access, refresh = auth.issue("alice", lifetime=60)
    auth.expire(access)
    write_env(env_file, QWEN_TOKEN=access, QWEN_REFRESH_TOKEN=refresh)
    auth.refuse = True
    client = make_app().test_client()
    response = chat(client)
    assert response.status_code == 401
    error = response.get_json()["error"]
    assert error["code"] == "upstream_credential_rejected"
    assert "QWEN_TOKEN and QWEN_REFRESH_TOKEN" in error["message"]
    assert account_health(client)["state"] == "needs_recapture"
    assert account_health(client)["last_refresh"]["outcome"] == "refused"
    calls = len(fake_qwen.requests)
    assert chat(client).status_code == 401 and len(fake_qwen.requests) == calls  # no call spent on it
    auth.refuse = False
    fresh_access, fresh_refresh = auth.issue("alice")
    write_env(env_file, QWEN_TOKEN=fresh_access, QWEN_REFRESH_TOKEN=fresh_refresh)
    _age(env_file)
    assert chat(client).status_code == 200
    assert account_health(client)["state"] == "ok"


def test_a_web_page_from_the_refresh_is_no_proof_the_account_is_dead(make_app, env_file, auth, fake_qwen):
    access, refresh = auth.issue("alice", lifetime=60)  # expiring, but still accepted
    write_env(env_file, QWEN_TOKEN=access, QWEN_REFRESH_TOKEN=refresh)
    auth.html = True
    client = make_app().test_client()
    assert chat(client).status_code == 200  # answered with the old token
    health = account_health(client)
    assert health["state"] == "expiring" and health["last_refresh"]["outcome"].startswith("failed")
    assert chat(client).status_code == 200
    assert len(auth.refreshes) == 1  # not tried again at once


def test_a_token_that_is_not_a_jwt_is_used_as_it_is(make_app, env_file, fake_qwen, auth):
    fake_qwen.auth = None
    write_env(env_file, QWEN_TOKEN="opaque-token-value-123")
    client = make_app().test_client()
    assert chat(client).status_code == 200
    assert fake_qwen.requests[-1]["headers"]["Authorization"] == "Bearer opaque-token-value-123"
    health = account_health(client)
    assert health == {
        "id": "1",
        "state": "ok",
        "access_expires_in": None,
        "refreshable": False,
        "last_refresh": None,
        "cooldown_until": None,
        "reason": None,
        "in_flight": 0,
        "token_check": "not_a_jwt",  # used as it is, and /health says what it is
    }


# --- several accounts --------------------------------------------------------------------------


def test_a_rate_limited_account_rests_and_the_next_one_answers(make_app, env_file, auth, fake_qwen):
    first, _ = auth.issue("alice")
    second, _ = auth.issue("bob")
    write_env(env_file, QWEN_TOKEN=first, QWEN_TOKEN_2=second)
    fake_qwen.account_replies["alice"] = json_reply(RATE_LIMITED)
    client = make_app().test_client()
    response = chat(client)
    assert response.status_code == 200, response.get_json()
    assert completion_accounts(fake_qwen) == ["alice", "bob"]
    health = account_health(client, "1")
    assert health["state"] == "cooling_down" and health["reason"] == "quota_exhausted"
    assert 7000 < health["cooldown_until"] - _now() <= 7200  # Qwen's num: 2 hours
    assert chat(client).status_code == 200
    assert completion_accounts(fake_qwen) == ["alice", "bob", "bob"]  # alice is not asked while resting


def test_every_account_resting_gives_429_until_the_first_is_back(make_app, env_file, auth, fake_qwen):
    first, _ = auth.issue("alice")
    write_env(env_file, QWEN_TOKEN=first)
    fake_qwen.account_replies["alice"] = json_reply(RATE_LIMITED)
    client = make_app().test_client()
    assert chat(client).status_code == 429
    response = chat(client)
    assert response.status_code == 429
    assert response.get_json()["error"]["code"] == "insufficient_quota"
    assert 7000 < int(response.headers["Retry-After"]) <= 7200
    assert len(completion_accounts(fake_qwen)) == 1


def test_a_browser_check_rests_the_account_for_the_configured_time(make_app, env_file, auth, fake_qwen):
    first, _ = auth.issue("alice")
    second, _ = auth.issue("bob")
    write_env(env_file, QWEN_TOKEN=first, QWEN_TOKEN_2=second)
    fake_qwen.account_replies["alice"] = WAF_PAGE
    client = make_app(BROWSER_CHECK_COOLDOWN_SECONDS=300).test_client()
    assert chat(client).status_code == 200
    health = account_health(client, "1")
    assert health["reason"] == "browser_check" and 290 < health["cooldown_until"] - _now() <= 300


def test_a_rejected_account_without_refresh_token_is_skipped_for_the_next(make_app, env_file, auth, fake_qwen):
    second, _ = auth.issue("bob")
    write_env(env_file, QWEN_TOKEN="not-a-live-token-1", QWEN_TOKEN_2=second)
    client = make_app().test_client()
    assert chat(client).status_code == 200
    assert account_health(client, "1")["state"] == "needs_recapture"
    assert account_health(client, "2")["state"] == "ok"


def test_least_recently_used_account_goes_first(make_app, env_file, auth, fake_qwen):
    first, _ = auth.issue("alice")
    second, _ = auth.issue("bob")
    write_env(env_file, QWEN_TOKEN=first, QWEN_TOKEN_2=second)
    client = make_app().test_client()
    for _ in range(4):
        assert chat(client).status_code == 200
    assert completion_accounts(fake_qwen) == ["alice", "bob", "alice", "bob"]


def test_busy_accounts_make_a_request_wait_then_429_accounts_busy(make_app, env_file, auth, fake_qwen, tmp_path):
    first, _ = auth.issue("alice")
    write_env(env_file, QWEN_TOKEN=first)
    fake_qwen.reply = sse_reply(answer_frames(["slow"]), delay=0.4)
    app = make_app(ACCOUNT_CONCURRENCY=1, ACCOUNT_WAIT_SECONDS=0.2)
    with ServerThread(app) as server:
        body = {"model": "qwen3-max", "messages": [{"role": "user", "content": "hi"}]}
        holder = threading.Thread(
            target=requests.post, args=(server.url + "/v1/chat/completions",), kwargs={"json": body}
        )
        holder.start()
        _wait_until(lambda: account_health(app.test_client())["in_flight"] == 1)
        response = requests.post(server.url + "/v1/chat/completions", json=body, timeout=10)
        holder.join()
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "accounts_busy"
    assert response.headers["Retry-After"] == "1"
    assert account_health(app.test_client())["in_flight"] == 0


def test_health_and_the_state_file_never_hold_a_token(make_app, env_file, auth, fake_qwen, tmp_path):
    access, refresh = auth.issue("alice", lifetime=60)
    write_env(env_file, QWEN_TOKEN=access, QWEN_REFRESH_TOKEN=refresh)
    client = make_app().test_client()
    assert chat(client).status_code == 200
    rotated = fake_qwen.requests[-1]["headers"]["Authorization"].removeprefix("Bearer ")
    new_refresh = next(iter(auth.refresh_tokens))
    health = client.get("/health").get_data(as_text=True)
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("state.sqlite3*"))
    for secret in (access, refresh, rotated, new_refresh):
        assert secret not in health
        for piece in secret.split("."):
            assert piece.encode() not in stored


def test_the_sdk_sees_a_normal_answer_when_the_first_account_is_rate_limited(make_app, env_file, auth, fake_qwen):
    first, _ = auth.issue("alice")
    second, _ = auth.issue("bob")
    write_env(env_file, QWEN_TOKEN=first, QWEN_TOKEN_2=second)
    fake_qwen.account_replies["alice"] = json_reply(RATE_LIMITED)
    app = make_app()
    with ServerThread(app) as server, openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as sdk:
        stream = sdk.chat.completions.create(
            model="qwen3-max", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Hello world"


def _now() -> float:
    return time.time()


def _age(path) -> None:
    """Back-date a rewritten .env past the settle time, as a minute-old edit would be."""
    old = time.time() - 5
    os.utime(path, (old, old))


def _wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --- what a careless operator, a flaky auth host or a failing store does ------------------------


def test_a_fresh_access_token_alone_in_env_keeps_the_stores_live_refresh_token(make_app, env_file, auth, fake_qwen):
    access, refresh = auth.issue("alice", lifetime=60)
    write_env(env_file, QWEN_TOKEN=access, QWEN_REFRESH_TOKEN=refresh)
    client = make_app().test_client()
    assert chat(client).status_code == 200  # refresh -> rotated
    pasted, _ = auth.issue("alice", lifetime=60)  # the operator pastes a new access token only
    write_env(env_file, QWEN_TOKEN=pasted, QWEN_REFRESH_TOKEN=refresh)
    _age(env_file)
    assert chat(client).status_code == 200
    assert len(auth.refreshes) == 2 and auth.stale_uses == 0
    assert auth.refreshes[1]["token"] != refresh
    assert fake_qwen.requests[-1]["headers"]["Authorization"] != f"Bearer {pasted}"  # refreshed from it


def test_a_refresh_token_already_rotated_is_never_sent_again(make_app, env_file, auth, fake_qwen):
    auth.lifetime = 60  # every token the fake hands out is about to expire: each request refreshes
    access, first = auth.issue("alice")
    write_env(env_file, QWEN_TOKEN=access, QWEN_REFRESH_TOKEN=first)
    client = make_app().test_client()
    assert chat(client).status_code == 200  # first -> second
    second = next(iter(auth.refresh_tokens))
    newer, _ = auth.issue("alice")
    write_env(env_file, QWEN_TOKEN=newer, QWEN_REFRESH_TOKEN=second)  # a newer capture holding `second`
    _age(env_file)
    assert chat(client).status_code == 200  # second -> third
    assert [r["token"] for r in auth.refreshes] == [first, second]
    write_env(env_file, QWEN_TOKEN=access, QWEN_REFRESH_TOKEN=first)  # the old capture pasted back
    _age(env_file)
    response = chat(client)
    assert response.status_code == 401
    assert "already used once" in response.get_json()["error"]["message"]
    assert len(auth.refreshes) == 2 and auth.stale_uses == 0
    assert account_health(client)["state"] == "needs_recapture"


def test_a_refresh_error_never_quotes_the_rotated_refresh_token(make_app, env_file, auth, fake_qwen):
    access, refresh = auth.issue("alice", lifetime=60)  # refreshed at once; the new one lives 900 s
    write_env(env_file, QWEN_TOKEN=access, QWEN_REFRESH_TOKEN=refresh)
    client = make_app().test_client()
    assert chat(client).status_code == 200
    rotated = next(iter(auth.refresh_tokens))  # only the store holds it
    auth.echo = True
    fake_qwen.auth.expire(fake_qwen.requests[-1]["headers"]["Authorization"].removeprefix("Bearer "))
    response = chat(client)
    text = response.get_data(as_text=True)
    assert auth.refreshes[-1]["token"] == rotated and "malformed" in text
    assert rotated not in text and "[redacted]" in text
    assert "credential refresh of account 1" in response.get_json()["error"]["message"]


def test_an_auth_outage_is_asked_once_and_the_valid_token_keeps_serving(make_app, env_file, auth, fake_qwen):
    access, refresh = auth.issue("alice", lifetime=60)  # expiring, still accepted
    write_env(env_file, QWEN_TOKEN=access, QWEN_REFRESH_TOKEN=refresh)
    auth.outage = True
    client = make_app().test_client()
    for _ in range(3):
        assert chat(client).status_code == 200
    assert len(auth.refreshes) == 1  # then RETRY_AFTER_FAILURE_SECONDS of rest
    auth.expire(access)
    response = chat(client)  # rejected now, and the auth host is still down
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "upstream_refresh_failed"
    assert int(response.headers["Retry-After"]) <= 30
    assert len(auth.refreshes) == 1
    assert account_health(client)["state"] != "needs_recapture"  # an outage is no proof


def test_a_trickling_refresh_answer_is_bounded_as_a_whole(make_app, env_file, auth, fake_qwen):
    access, refresh = auth.issue("alice", lifetime=60)
    write_env(env_file, QWEN_TOKEN=access, QWEN_REFRESH_TOKEN=refresh)
    auth.trickle = 0.3  # each gap is short, the whole answer is not
    client = make_app(UPSTREAM_TIMEOUT=1.0).test_client()
    assert chat(client).status_code == 200  # served with the still-valid token
    assert account_health(client)["last_refresh"]["outcome"] == "failed: upstream_timeout"


def test_a_refresh_token_left_in_the_cookie_jar_is_never_sent_with_chats(make_app, env_file, auth, fake_qwen):
    access, refresh = auth.issue("alice")
    write_env(env_file, QWEN_TOKEN=access, QWEN_REFRESH_TOKEN=refresh, QWEN_COOKIE=f"a=1; refresh_token={refresh}; b=2")
    assert chat(make_app().test_client()).status_code == 200
    assert {r["headers"]["Cookie"] for r in fake_qwen.requests} == {"a=1; b=2"}


def test_every_account_resting_after_one_request_answers_with_the_earliest_back(make_app, env_file, auth, fake_qwen):
    first, _ = auth.issue("alice")
    second, _ = auth.issue("bob")
    write_env(env_file, QWEN_TOKEN=first, QWEN_TOKEN_2=second)
    fake_qwen.account_replies["alice"] = json_reply({"success": False, "data": {"code": "ParallelLimited"}})
    fake_qwen.account_replies["bob"] = json_reply(RATE_LIMITED)  # 2 hours
    client = make_app(RATE_LIMIT_COOLDOWN_SECONDS=60).test_client()
    response = chat(client)
    assert response.status_code == 429
    assert response.get_json()["error"]["code"] == "rate_limit_exceeded"
    assert 55 < int(response.headers["Retry-After"]) <= 60  # alice is back first
    assert chat(client).headers["Retry-After"] == response.headers["Retry-After"]


def test_every_account_rejected_names_every_accounts_variables(make_app, env_file, auth, fake_qwen):
    write_env(env_file, QWEN_TOKEN="dead-token-value-1", QWEN_TOKEN_2="dead-token-value-2")
    response = chat(make_app().test_client())
    assert response.status_code == 401
    message = response.get_json()["error"]["message"]
    assert "QWEN_TOKEN and QWEN_REFRESH_TOKEN (account 1)" in message
    assert "QWEN_TOKEN_2 and QWEN_REFRESH_TOKEN_2 (account 2)" in message


def test_a_failing_state_store_is_a_clear_503_and_leaves_no_account_taken(make_app, env_file, auth, fake_qwen):
    access, _ = auth.issue("alice")
    write_env(env_file, QWEN_TOKEN=access)
    app = make_app(ACCOUNT_CONCURRENCY=1)
    store = app.extensions["reverse_api"].store
    client = app.test_client()
    real_update = store.update

    def broken_update(*args, **kwargs):
        raise StateError("database is locked")

    store.update = broken_update  # the write after the lease is taken fails
    first, _ = auth.issue("bob")
    write_env(env_file, QWEN_TOKEN=access, QWEN_TOKEN_2=first)  # two accounts: the choice notes its use
    _age(env_file)
    response = chat(client)
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "state_store_unavailable"
    store.update = real_update
    assert all(a["in_flight"] == 0 for a in client.get("/health").get_json()["providers"]["qwen"]["accounts"])
    assert chat(client).status_code == 200

    store.get = broken_update
    health = client.get("/health")
    assert health.status_code == 200
    assert health.get_json()["status"] == "degraded" and "database is locked" in health.get_json()["state_store_error"]
