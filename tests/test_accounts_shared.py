"""Account state shared by worker processes (SQLite) and by hosts (Redis), driven as users run it.

``python app.py`` with WORKERS=2 on one SQLite file; two service instances on one real Redis.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import redis
import requests

from tests.fake_qwen import ServerThread, json_reply
from tests.test_accounts import RATE_LIMITED, account_health, chat, completion_accounts, write_env
from tests.test_serving import ROOT, start, stop

SECRET = "a-long-random-state-secret-for-tests-0123456789"


def ask(url: str) -> str:
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30) as sdk:
        reply = sdk.chat.completions.create(model="qwen3-max", messages=[{"role": "user", "content": "hi"}])
    return reply.choices[0].message.content


def test_two_workers_refresh_an_expiring_token_once_and_a_restart_keeps_the_rotated_one(
    accounts_dir, env_file, auth, fake_qwen, tmp_path, monkeypatch
):
    access, refresh = auth.issue("alice", lifetime=60)
    write_env(env_file, QWEN_TOKEN=access, QWEN_REFRESH_TOKEN=refresh)
    auth.delay = 0.3  # a slow refresh: every other request arrives while it runs
    monkeypatch.setenv("WORKERS", "2")
    monkeypatch.setenv("ENV_FILE", str(env_file))
    monkeypatch.setenv("STATE_URL", f"sqlite:///{tmp_path / 'state.sqlite3'}")
    process, url = start([sys.executable, str(ROOT / "app.py")], accounts_dir, token=None)
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: ask(url), range(16)))
    finally:
        output = stop(process)
    assert answers == ["Hello world"] * 16
    assert len(auth.refreshes) == 1 and auth.stale_uses == 0
    assert "Booting worker" in output and output.count("Booting worker") >= 2
    assert access not in output and refresh not in output

    auth.expire(access)  # .env still holds it: a service that forgot the rotation would fail now
    process, url = start([sys.executable, str(ROOT / "app.py")], accounts_dir, token=None)
    try:
        assert ask(url) == "Hello world"
    finally:
        stop(process)
    assert len(auth.refreshes) == 1 and auth.stale_uses == 0
    assert set(completion_accounts(fake_qwen)) == {"alice"}


@pytest.fixture
def redis_app(make_app, redis_server):
    redis.Redis.from_url(redis_server).flushdb()

    def make(**config):
        return make_app(STATE_URL=redis_server, STATE_SECRET=SECRET, **config)

    return make


def test_two_instances_on_one_redis_see_the_same_cooldown(redis_app, env_file, auth, fake_qwen):
    first, _ = auth.issue("alice")
    second, _ = auth.issue("bob")
    write_env(env_file, QWEN_TOKEN=first, QWEN_TOKEN_2=second)
    fake_qwen.account_replies["alice"] = json_reply(RATE_LIMITED)
    one, other = redis_app().test_client(), redis_app().test_client()
    assert chat(one).status_code == 200
    assert account_health(other, "1")["state"] == "cooling_down"
    assert account_health(other, "2")["state"] == "ok"
    assert chat(other).status_code == 200
    assert completion_accounts(fake_qwen) == ["alice", "bob", "bob"]


def test_two_instances_on_one_redis_refresh_once_and_redis_holds_no_token(
    redis_app, redis_server, env_file, auth, fake_qwen
):
    access, refresh = auth.issue("alice", lifetime=60)
    write_env(env_file, QWEN_TOKEN=access, QWEN_REFRESH_TOKEN=refresh)
    auth.delay = 0.3
    body = {"model": "qwen3-max", "messages": [{"role": "user", "content": "hi"}]}
    with ServerThread(redis_app()) as one, ServerThread(redis_app()) as other:
        urls = [one.url, other.url] * 6
        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda u: requests.post(u + "/v1/chat/completions", json=body).status_code, urls))
    assert statuses == [200] * 12
    assert len(auth.refreshes) == 1 and auth.stale_uses == 0
    rotated = fake_qwen.requests[-1]["headers"]["Authorization"].removeprefix("Bearer ")
    raw = redis.Redis.from_url(redis_server)
    keys = list(raw.scan_iter("*"))
    assert keys and all(key.startswith(b"reverse_api:") for key in keys)
    dumped = b"".join(key + (raw.dump(key) or b"") for key in keys)
    for secret in (access, refresh, rotated, *auth.refresh_tokens):
        for piece in secret.split("."):
            assert piece.encode() not in dumped


def test_a_redis_store_without_state_secret_refuses_to_start(accounts_dir, redis_server, tmp_path):
    environment = {"PATH": "/usr/bin:/bin", "STATE_URL": redis_server, "PROVIDERS_DIR": str(accounts_dir)}
    environment["ENV_FILE"] = str(tmp_path / "none.env")
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py")], env=environment, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "STATE_SECRET" in result.stderr and "Traceback" not in result.stderr
