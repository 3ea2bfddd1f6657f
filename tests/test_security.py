"""Who may use the service, what it refuses, and that no credential leaks anywhere."""

from __future__ import annotations

import json
import logging
import socket

import openai
import pytest
import requests

from app import create_app, exposure_warning
from tests.conftest import TOKEN, copy_provider
from tests.fake_qwen import Reply, ServerThread, answer_frames, delta_frame, frame, sse_reply
from tests.test_serving import free_port

KEY = "sk-proxy-key-123456"
OTHER_KEY = "sk-proxy-key-abcdef"
CHAT = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def locked_app(app_config, qwen_token):
    return create_app({**app_config, "API_KEYS": f"{KEY}, {OTHER_KEY}"})


@pytest.fixture
def locked(locked_app):
    return locked_app.test_client()


# --- API keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": KEY},
        {"Authorization": f"Basic {KEY}"},
        {"X-Api-Key": KEY},
        {"Api-Key": KEY},
    ],
    ids=["none", "wrong", "longer", "no-scheme", "basic", "x-api-key", "api-key"],
)
@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/qwen3.7-plus"])
def test_v1_needs_a_valid_key(locked, headers, path):
    response = locked.get(path, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "invalid_api_key"
    assert response.headers["x-should-retry"] == "false"


def test_key_in_query_string_is_refused(locked, fake_qwen):
    response = locked.post(f"/v1/chat/completions?api_key={KEY}", json=CHAT)
    assert response.status_code == 401
    assert fake_qwen.requests == []


@pytest.mark.parametrize("key", [KEY, OTHER_KEY])
def test_any_configured_key_works(locked, key):
    assert locked.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_chat_with_the_sdk_and_a_key(locked_app):
    with ServerThread(locked_app) as server:
        good = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
        assert good.chat.completions.create(**CHAT).choices[0].message.content == "Hello world"
        bad = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.chat.completions.create(**CHAT)
    assert caught.value.code == "invalid_api_key"


def test_refused_chat_never_reaches_the_upstream(locked, fake_qwen):
    assert locked.post("/v1/chat/completions", json=CHAT).status_code == 401
    assert fake_qwen.requests == []


def test_health_stays_open_without_secrets(locked):
    response = locked.get("/health")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    for secret in (TOKEN, KEY, OTHER_KEY):
        assert secret not in text


def test_open_when_no_keys_are_set(client):
    assert client.get("/v1/models").status_code == 200


@pytest.mark.parametrize(
    ("host", "keys", "warns"),
    [
        ("0.0.0.0", "", True),
        ("192.0.2.10", "", True),
        ("::", "", True),
        ("0.0.0.0", KEY, False),
        ("127.0.0.1", "", False),
        ("localhost", "", False),
        ("::1", "", False),
        ("localhost.example.com", "", True),
        ("127.0.0.1", KEY, False),
    ],
)
def test_exposure_warning(host, keys, warns):
    warning = exposure_warning(host, keys)
    assert (warning is not None) == warns
    if warns:
        assert "API_KEYS" in warning and host in warning


# --- CORS ----------------------------------------------------------------------------------


def cors_app(app_config, origins: str, **extra):
    return create_app({**app_config, "CORS_ORIGINS": origins, **extra}).test_client()


def preflight(client, origin: str, path: str = "/v1/chat/completions"):
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os",
        },
    )


def test_preflight_from_an_allowed_origin(app_config, qwen_token):
    client = cors_app(app_config, "https://ui.example, https://other.example", API_KEYS=KEY)
    response = preflight(client, "https://ui.example")
    assert response.status_code == 204  # no key needed: browsers send none on preflight
    assert response.headers["Access-Control-Allow-Origin"] == "https://ui.example"
    allowed = [h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")]
    assert "authorization" in allowed and "content-type" in allowed and "x-stainless-os" in allowed
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Origin" in response.headers["Vary"]


def test_actual_request_exposes_the_request_id(app_config, qwen_token):
    client = cors_app(app_config, "https://ui.example")
    response = client.get("/v1/models", headers={"Origin": "https://ui.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "https://ui.example"
    assert response.headers["Access-Control-Expose-Headers"] == "x-request-id, x-ignored-fields"


def test_other_origins_get_no_cors_headers(app_config, qwen_token):
    client = cors_app(app_config, "https://ui.example")
    response = client.get("/v1/models", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Origin" not in preflight(client, "https://evil.example").headers


def test_no_cors_by_default(client):
    assert "Access-Control-Allow-Origin" not in preflight(client, "https://ui.example").headers


def test_wildcard_origin(app_config, qwen_token):
    response = cors_app(app_config, "*").get("/v1/models", headers={"Origin": "https://any.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"


# --- body size -----------------------------------------------------------------------------


def test_oversized_body_is_413_on_content_length(app_config, qwen_token, fake_qwen):
    client = create_app({**app_config, "MAX_BODY_BYTES": 1000}).test_client()
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]})
    response = client.post("/v1/chat/completions", data=body, content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "request_too_large"
    assert fake_qwen.requests == []


def test_oversized_chunked_body_is_413(app_config, qwen_token):
    app = create_app({**app_config, "MAX_BODY_BYTES": 1000})
    with ServerThread(app) as server:
        chunks = (b"x" * 500 for _ in range(10))  # a generator body is sent chunked, with no Content-Length
        response = requests.post(server.url + "/v1/chat/completions", data=chunks, timeout=10)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_real_client_receives_413_for_an_11_mib_body(app, service):
    body = b'{"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "' + b"x" * (11 * 1024 * 1024) + b'"}]}'
    response = requests.post(service + "/v1/chat/completions", data=body, timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert requests.get(service + "/health", timeout=5).status_code == 200


def test_huge_declared_length_is_refused_without_reading(service):
    with socket.create_connection(("127.0.0.1", int(service.rsplit(":", 1)[1])), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000000\r\n\r\n{"
        )
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413")


# --- secrets -------------------------------------------------------------------------------


def test_upstream_echoing_the_token_is_redacted(client, fake_qwen):
    fake_qwen.reply = Reply(chunks=[f"bad auth header: Bearer {TOKEN}".encode()], status=500, content_type="text/plain")
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    assert TOKEN not in response.get_data(as_text=True)
    assert "[redacted]" in response.get_json()["error"]["message"]


def test_in_stream_error_echoing_the_token_is_redacted(client, fake_qwen, caplog):
    error = frame({"error": {"code": "Bad", "details": f"token {TOKEN} refused"}})
    fake_qwen.reply = sse_reply([delta_frame("answer", "partial"), error])
    with caplog.at_level(logging.DEBUG):
        body = client.post("/v1/chat/completions", json={**CHAT, "stream": True}).get_data(as_text=True)
    assert "[redacted]" in body
    assert TOKEN not in body
    assert TOKEN not in caplog.text


def test_logs_never_hold_the_token_at_debug(app_config, qwen_token, fake_qwen, caplog, monkeypatch):
    client = create_app({**app_config, "LOG_LEVEL": "DEBUG"}).test_client()
    monkeypatch.setenv("QWEN_COOKIE", "token=cookie-secret-value")
    monkeypatch.setenv("QWEN_BX_UA", "231!bx-ua-secret-blob")
    fake_qwen.reply = sse_reply(answer_frames(["ok"]))
    with caplog.at_level(logging.DEBUG):
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        fake_qwen.chat_reply = Reply(chunks=[TOKEN.encode()], status=401, content_type="text/plain")
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 401
    assert "upstream POST" in caplog.text  # the debug line with headers was written
    for secret in (TOKEN, "cookie-secret-value", "bx-ua-secret-blob"):
        assert secret not in caplog.text


def test_one_log_line_per_request_with_id_status_and_time(client, caplog):
    with caplog.at_level(logging.INFO, logger="reverse_api"):
        response = client.get("/v1/models")
    lines = [r.getMessage() for r in caplog.records if r.name == "reverse_api" and r.levelno == logging.INFO]
    assert len(lines) == 1
    assert response.headers["x-request-id"] in lines[0]
    assert " 200 " in lines[0] and lines[0].endswith("ms")


# --- the upstream address is the folder's alone ---------------------------------------------


def test_request_fields_cannot_redirect_the_upstream(app_config, qwen_token, fake_qwen):
    # The Host is the service's (a name it was told to answer to); it never picks the upstream.
    client = create_app({**app_config, "ALLOWED_HOSTS": "evil.example"}).test_client()
    body = {
        **CHAT,
        "base_url": "http://127.0.0.1:9",
        "host": "evil.example",
        "url": "http://evil.example/x",
        "headers": {"Authorization": "Bearer stolen"},
        "path": "/admin",
    }
    response = client.post(
        "/v1/chat/completions", json=body, headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"}
    )
    assert response.status_code == 200
    sent = fake_qwen.requests[-1]
    assert sent["path"].startswith("/api/v2/chat/completions?chat_id=")
    assert sent["headers"]["Host"] == fake_qwen.host
    assert sent["headers"]["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("model", ["qwen\r\nX-Injected: 1", "qwen\nx", "qwen\x00", "qwen\rx"])
def test_control_characters_in_the_model_are_refused(client, fake_qwen, model):
    response = client.post("/v1/chat/completions", json={**CHAT, "model": model})
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == "model"
    assert fake_qwen.requests == []


def test_model_filled_into_a_header_or_path_cannot_inject(tmp_path, fake_qwen, qwen_token):
    from tests.conftest import SHIPPED_QWEN

    root = tmp_path / "providers"
    root.mkdir()
    folder = copy_provider(SHIPPED_QWEN, root / "qwen", host=fake_qwen.host, scheme="http")
    header = folder / "header.txt"
    lines = header.read_text().splitlines()
    lines[0] = "POST /api/v2/chat/completions?chat_id=${chat_id}&m=${model} HTTP/1.1"
    header.write_text("\n".join([*lines, "X-Model: ${model}"]) + "\n")
    client = create_app({"PROVIDERS_DIR": str(root), "ENV_FILE": None}).test_client()
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert fake_qwen.requests[-1]["headers"]["X-Model"] == "qwen3.7-plus"
    # A value filled into the path is one value: what could start a fragment or another
    # parameter is percent-encoded, so nothing is injected.
    response = client.post("/v1/chat/completions", json={**CHAT, "model": "qwen#frag&admin=1 x", "provider": "qwen"})
    assert response.status_code == 200
    path = fake_qwen.requests[-1]["path"]
    assert path.endswith("&m=qwen%23frag%26admin=1%20x")
    assert "&admin=" not in path and "#" not in path
    # A name HTTP headers cannot carry is a clear 400, not a crash inside the HTTP client.
    response = client.post("/v1/chat/completions", json={**CHAT, "model": "qwen-你好", "provider": "qwen"})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_value"


# --- review fixes: secrets cut by trimming, escaped, or echoed one cookie at a time ----------


def test_a_token_cut_by_message_trimming_is_still_blanked(client, fake_qwen):
    body = ("x" * 285 + f" bad token {TOKEN}").encode()
    fake_qwen.reply = Reply(chunks=[body], status=500, content_type="text/plain")
    message = client.post("/v1/chat/completions", json=CHAT).get_json()["error"]["message"]
    assert TOKEN[:6] not in message


def test_a_token_at_the_end_of_a_long_in_stream_error_is_blanked(client, fake_qwen, caplog):
    error = frame({"error": {"code": "X", "details": "z" * 240 + TOKEN}})
    fake_qwen.reply = sse_reply([delta_frame("answer", "partial"), error])
    with caplog.at_level(logging.WARNING):
        text = client.post("/v1/chat/completions", json={**CHAT, "stream": True}).get_data(as_text=True)
    assert TOKEN[:6] not in text
    assert TOKEN[:6] not in caplog.text


def test_json_escaped_and_cookie_piece_secrets_are_blanked(client, fake_qwen, monkeypatch):
    monkeypatch.setenv("QWEN_BX_UA", "231!abc/def/ghi-ua-secret")
    monkeypatch.setenv("QWEN_COOKIE", "token=cookie-value-123456; lang=en")
    echoed = (
        b'data: {"error": {"code": "X", "details": "ua 231!abc\\/def\\/ghi-ua-secret and cookie-value-123456"}}\n\n'
    )
    fake_qwen.reply = sse_reply([delta_frame("answer", "partial"), echoed])
    text = client.post("/v1/chat/completions", json={**CHAT, "stream": True}).get_data(as_text=True)
    assert "ghi-ua-secret" not in text
    assert "cookie-value-123456" not in text


def test_a_token_pasted_with_whitespace_around_it_still_works(client, fake_qwen, monkeypatch):
    monkeypatch.setenv("QWEN_TOKEN", f"  {TOKEN}\n")
    monkeypatch.setenv("QWEN_COOKIE", "\tcna=abcdefghijkl ")
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    sent = fake_qwen.requests[-1]["headers"]
    assert sent["Authorization"] == f"Bearer {TOKEN}" and sent["Cookie"] == "cna=abcdefghijkl"


def test_debug_logging_from_python_app_py_keeps_urllib3_request_lines_out(monkeypatch):
    import app as app_module

    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("PORT", str(free_port()))  # main() checks that its port is free first
    monkeypatch.setattr(app_module.os, "execv", lambda *args: None)  # stop before gunicorn takes over
    monkeypatch.setattr(app_module.logging, "basicConfig", lambda **kwargs: logging.getLogger().setLevel("DEBUG"))
    app_module.main([])
    assert not logging.getLogger("urllib3").isEnabledFor(logging.DEBUG)
