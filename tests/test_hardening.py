"""Hostile upstreams, deep JSON, foreign variables and odd captures: each a reproduction that once
hurt the service, now with the behaviour a user expects."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import socket
import threading
import time
from pathlib import Path

import openai
import pytest
import requests
import responses

import provider_loader
from app import create_app
from importer.folder import import_capture
from provider_loader import Provider, ProviderError, load_providers
from tests.conftest import SHIPPED_QWEN, copy_provider
from tests.fake_qwen import Reply, ServerThread, answer_frames, created_frame, delta_frame, sse_reply

MESSAGES = [{"role": "user", "content": "hi"}]
DEEP = 100_000  # far past Python's recursion limit


def deep_json(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def chat(client, stream: bool = False):
    return client.post("/v1/chat/completions", json={"model": "qwen3.7-plus", "messages": MESSAGES, "stream": stream})


def sse_error(response) -> dict:
    events = [
        line[len("data: ") :] for line in response.get_data(as_text=True).split("\n") if line.startswith("data: ")
    ]
    assert events[-1] == "[DONE]"
    return json.loads(events[-2])["error"]


# --- one bad upstream answer ---------------------------------------------------------------------


def endless_event(megabytes: int) -> Reply:
    """data: lines that never reach a blank line, gzip-compressed as a hostile upstream sends them."""
    line = b"data: " + b"x" * 1023 + b"\n"
    body = gzip.compress(created_frame() + line * (megabytes * 1024))
    return Reply(chunks=[body], headers={"Content-Encoding": "gzip"})


@pytest.mark.parametrize("stream", [False, True])
def test_an_event_that_never_ends_is_a_502_before_the_first_byte(client, fake_qwen, stream):
    fake_qwen.reply = endless_event(20)  # 20 MiB of one event, a few dozen KB on the wire
    response = chat(client, stream)
    assert response.status_code == 502
    error = response.get_json()["error"]
    assert (error["code"], error["message"]) == (
        "upstream_error",
        f"The upstream sent an event larger than {16 * 1024 * 1024} bytes.",
    )


def test_an_event_that_never_ends_after_the_first_byte_is_an_error_event(client, fake_qwen):
    line = b"data: " + b"x" * 1023 + b"\n"
    body = gzip.compress(created_frame() + delta_frame("answer", "Hi") + line * (17 * 1024))
    fake_qwen.reply = Reply(chunks=[body], headers={"Content-Encoding": "gzip"})
    response = chat(client, stream=True)
    assert response.status_code == 200
    error = sse_error(response)
    assert (error["code"], error["message"]) == (
        "upstream_error",
        f"The upstream sent an event larger than {16 * 1024 * 1024} bytes.",
    )


def test_other_requests_are_served_while_a_huge_event_is_refused(service, fake_qwen, providers_dir):
    copy_provider(SHIPPED_QWEN, providers_dir / "calm", host=fake_qwen.host, scheme="http")
    results = {}

    def hostile():
        results["hostile"] = requests.post(
            service + "/v1/chat/completions",
            json={"model": "qwen3.7-plus", "messages": MESSAGES, "provider": "qwen"},
            timeout=30,
        ).status_code

    fake_qwen.reply = endless_event(40)
    thread = threading.Thread(target=hostile)
    thread.start()
    assert requests.get(service + "/health", timeout=5).status_code == 200
    thread.join(30)
    assert results["hostile"] == 502
    fake_qwen.reply = sse_reply(answer_frames(["Fine"]))
    with openai.OpenAI(base_url=service + "/v1", api_key="x", max_retries=0) as sdk:
        answer = sdk.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES)
    assert answer.choices[0].message.content == "Fine"


@pytest.mark.parametrize(
    "where",
    ["frame", "error-body", "chat-creation"],
)
@pytest.mark.parametrize("stream", [False, True])
def test_json_nested_past_the_recursion_limit_is_a_502(client, fake_qwen, where, stream):
    if where == "frame":
        fake_qwen.reply = Reply(chunks=[created_frame(), b"data: " + deep_json().encode() + b"\n\n"])
    elif where == "error-body":
        fake_qwen.reply = Reply(chunks=[deep_json().encode()], content_type="application/json")
    else:
        fake_qwen.chat_reply = Reply(chunks=[deep_json().encode()], content_type="application/json")
    response = chat(client, stream)
    assert response.status_code == 502, response.get_data(as_text=True)[:300]
    assert response.get_json()["error"]["type"] == "server_error"


def test_a_deep_frame_after_the_first_byte_is_an_error_event(client, fake_qwen):
    fake_qwen.reply = Reply(
        chunks=[created_frame(), delta_frame("answer", "Hi"), b"data: " + deep_json().encode() + b"\n\n"]
    )
    response = chat(client, stream=True)
    assert response.status_code == 200
    assert sse_error(response)["code"] == "upstream_error"


def test_a_deep_payload_json_is_a_broken_folder_and_the_others_load(providers_dir, app_config, qwen_token):
    copy_provider(SHIPPED_QWEN, providers_dir / "aaa-deep")
    (providers_dir / "aaa-deep" / "payload.json").write_text('{"x": ' + deep_json() + "}")
    copy_provider(SHIPPED_QWEN, providers_dir / "bbb-nested")
    (providers_dir / "bbb-nested" / "payload.json").write_text('{"x": ' + deep_json(80) + "}")
    client = create_app(app_config).test_client()
    health = client.get("/health").get_json()["providers"]
    assert health["aaa-deep"] == {"loaded": False, "error": "aaa-deep/payload.json: nested too deeply to read"}
    assert health["bbb-nested"]["error"] == "bbb-nested/payload.json: nested deeper than 64 levels"
    assert health["qwen"]["loaded"] is True
    assert chat(client).status_code == 200


# --- credentials go only where the folder says ------------------------------------------------------


def write_folder(root: Path, name: str, header: str, metadata: dict | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps({"host": "h.test", "dialect": "openai", **(metadata or {})}))
    (folder / "header.txt").write_text(header)
    (folder / "payload.json").write_text("{}")
    return folder


def test_a_folder_may_not_name_another_providers_variable(tmp_path):
    write_folder(tmp_path, "evil", "POST /v1/chat/completions HTTP/1.1\nAuthorization: Bearer ${OPENAI_API_KEY}\n")
    registry = load_providers(tmp_path)
    assert "evil" not in registry.providers
    assert registry.errors["evil"] == (
        "evil/metadata.json: ${OPENAI_API_KEY} is not this folder's variable: name it EVIL_... or list it under extra_variables"
    )


def test_a_folder_names_its_own_variables_and_those_it_lists(tmp_path):
    header = "POST /v1/chat/completions HTTP/1.1\nAuthorization: Bearer ${MY_CHAT_KEY}\nX-Org: ${SHARED_ORG}\n"
    folder = write_folder(tmp_path, "my-chat", header, {"extra_variables": ["SHARED_ORG"]})
    assert Provider.from_dir(folder).variable_names() == ["MY_CHAT_KEY", "SHARED_ORG"]


@pytest.mark.parametrize("name", ["qwen", "openai"])
def test_the_shipped_folders_keep_working(name):
    Provider.from_dir(Path(provider_loader.__file__).parent / "porviders" / name)


def test_a_captured_placeholder_stays_text_and_is_sent_as_captured(tmp_path, fake_qwen, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-victim-key-0123456789")
    capture = tmp_path / "capture.sh"
    capture.write_text(
        f"curl '{fake_qwen.url}/v1/chat/completions' -H 'Authorization: Bearer sk-mine-0123456789' "
        '-H \'X-Note: ${OPENAI_API_KEY}\' --data-raw \'{"model": "m", "messages": [], "user": "${OPENAI_API_KEY}"}\''
    )
    root = tmp_path / "porviders"
    import_capture("mine", capture, root, tmp_path / ".env")
    provider = Provider.from_dir(root / "mine")
    assert "OPENAI_API_KEY" not in provider.variable_names()
    assert "${dollar}{OPENAI_API_KEY}" in (root / "mine" / "header.txt").read_text()


@pytest.mark.parametrize(
    ("option", "secret"),
    [
        ("-H 'Cf-Access-Jwt-Assertion: eyJhbGciOi.jwt-value-123'", "eyJhbGciOi.jwt-value-123"),
        ("-H 'X-Cookie: session=abcdef0123456789'", "session=abcdef0123456789"),
        ("URL?sig=signature0123456789", "signature0123456789"),
        ("URL?jwt=jwtvalue0123456789", "jwtvalue0123456789"),
        ("BODY credentials", "credential-value-0123"),
        ("BODY jwt", "jwt-body-value-0123"),
        ("BODY pwd", "pwd-value-0123456"),
        ("BODY passphrase", "passphrase-value-0123"),
        ("BODY cookie", "cookie-body-value-0123"),
    ],
)
def test_the_importer_moves_secrets_it_used_to_miss(tmp_path, option, secret):
    url = "https://chat.example.test/v1/chat/completions"
    body = {"model": "m", "messages": []}
    extra = ""
    if option.startswith("URL"):
        url += option[3:]
    elif option.startswith("BODY"):
        body[option.split()[1]] = secret
    else:
        extra = option
    capture = tmp_path / "capture.sh"
    capture.write_text(f"curl '{url}' {extra} --data-raw '{json.dumps(body)}'")
    root = tmp_path / "porviders"
    import_capture("ex", capture, root, tmp_path / ".env")
    for path in (root / "ex").iterdir():
        assert secret not in path.read_text(), path.name
    assert secret in (tmp_path / ".env").read_text()


@pytest.mark.parametrize(
    "line",
    ["-H 'Cookie: token=s3cret-cookie-value\\r\\nX: y'", "-H 'Authorization Bearer s3cret-cookie-value'"],
)
def test_importer_errors_name_the_header_never_its_value(tmp_path, capsys, line):
    capture = tmp_path / "capture.sh"
    capture.write_text(
        f"curl 'https://chat.example.test/v1/chat/completions' {line.replace(chr(92) + 'r' + chr(92) + 'n', chr(13) + chr(10))} --data-raw '{{}}'"
    )
    code = provider_loader.main(
        ["import", "ex", str(capture), "--providers-dir", str(tmp_path / "p"), "--env-file", str(tmp_path / ".env")]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: capture: malformed header")
    assert "s3cret" not in err


def test_a_url_error_does_not_quote_the_url(tmp_path, capsys):
    capture = tmp_path / "capture.sh"
    capture.write_text("curl 'https://[bad-host/v1/chat/completions?access_token=s3cret-token-value' --data-raw '{}'")
    code = provider_loader.main(
        ["import", "ex", str(capture), "--providers-dir", str(tmp_path / "p"), "--env-file", str(tmp_path / ".env")]
    )
    err = capsys.readouterr().err
    assert code == 1 and "s3cret" not in err and err.startswith("error: capture: the URL cannot be read")


@pytest.mark.parametrize(
    "har",
    [
        '{"log": {"entries": ' + deep_json() + "}}",
        json.dumps(
            {
                "log": {
                    "entries": [
                        {
                            "request": {"method": "POST", "url": "https://x.test/v1/chat/completions", "headers": []},
                            "response": {"headers": 7, "content": {"mimeType": "text/event-stream"}},
                        }
                    ]
                }
            }
        ),
    ],
    ids=["nested-100000-deep", "response-headers-not-a-list"],
)
def test_odd_hars_are_error_lines(tmp_path, capsys, har):
    capture = tmp_path / "capture.har"
    capture.write_text(har)
    code = provider_loader.main(
        ["import", "ex", str(capture), "--providers-dir", str(tmp_path / "p"), "--env-file", str(tmp_path / ".env")]
    )
    out, err = capsys.readouterr()
    assert code in (0, 1)
    assert "Traceback" not in out + err
    if code == 1:
        assert err.startswith("error: ")


def test_a_deeply_nested_body_is_an_error_line(tmp_path, capsys):
    capture = tmp_path / "capture.sh"
    capture.write_text("curl 'https://x.test/v1/chat/completions' --data-raw '{\"a\": " + "[" * 500 + "]" * 500 + "}'")
    code = provider_loader.main(
        ["import", "ex", str(capture), "--providers-dir", str(tmp_path / "p"), "--env-file", str(tmp_path / ".env")]
    )
    assert code == 1
    assert capsys.readouterr().err == "error: capture: the request body is nested deeper than 64 levels\n"


def test_a_lone_surrogate_in_a_secret_leaves_no_temporary_file(tmp_path, capsys):
    capture = tmp_path / "capture.sh"
    capture.write_text(
        "curl 'https://x.test/v1/chat/completions' -H $'Authorization: Bearer abc\\ud800def0123456' --data-raw '{}'"
    )
    env = tmp_path / ".env"
    code = provider_loader.main(
        ["import", "ex", str(capture), "--providers-dir", str(tmp_path / "p"), "--env-file", str(env)]
    )
    out, err = capsys.readouterr()
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_force_never_writes_through_a_symlink(tmp_path):
    capture = tmp_path / "capture.sh"
    capture.write_text(
        "curl 'https://x.test/v1/chat/completions' -H 'Authorization: Bearer tok-0123456789' --data-raw '{\"model\": \"m\", \"messages\": []}'"
    )
    root = tmp_path / "porviders"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "linked").symlink_to(elsewhere)
    with pytest.raises(ProviderError, match="symbolic link"):
        import_capture("linked", capture, root, tmp_path / ".env", force=True)
    assert list(elsewhere.iterdir()) == []
    import_capture("ex", capture, root, tmp_path / ".env")
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    (root / "ex" / "header.txt").unlink()
    (root / "ex" / "header.txt").symlink_to(target)
    env_target = tmp_path / "victim.env"
    env_target.write_text("KEEP=1\n")
    import_capture("ex", capture, root, tmp_path / ".env", force=True)
    assert target.read_text() == "keep me"  # the link was replaced, its target left alone
    assert not (root / "ex" / "header.txt").is_symlink()
    assert os.stat(root / "ex" / "header.txt").st_mode & 0o777 == 0o600


def deployment_folder(root: Path, host: str) -> Path:
    folder = write_folder(
        root,
        "azure",
        "POST /openai/deployments/${model}/chat/completions?api-version=${AZURE_VERSION} HTTP/1.1\napi-key: ${AZURE_KEY}\n",
        {"host": host, "scheme": "http", "models": ["gpt-x"], "patterns": ["*"]},
    )
    return folder


@pytest.mark.parametrize(
    ("model", "status", "sent_path"),
    [
        ("gpt-x", 200, "/openai/deployments/gpt-x/chat/completions?api-version=2024%2F10"),
        (
            "../../../admin/x?",
            200,
            "/openai/deployments/..%2F..%2F..%2Fadmin%2Fx%3F/chat/completions?api-version=2024%2F10",
        ),
        ("..", 400, None),
        (".", 400, None),
        ("%2e%2e", 400, None),  # ".." once decoded: refused too
    ],
)
def test_a_value_filled_into_a_path_stays_one_segment(tmp_path, monkeypatch, model, status, sent_path):
    monkeypatch.setenv("AZURE_KEY", "azure-key-0123456789")
    monkeypatch.setenv("AZURE_VERSION", "2024%2F10")  # kept percent-encoded, as captured
    deployment_folder(tmp_path, "azure.test")
    app = create_app({"TESTING": True, "PROVIDERS_DIR": str(tmp_path), "ENV_FILE": None, "KEEPALIVE_SECONDS": 0})
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(
            responses.POST, re.compile(r"http://azure\.test/.*"), callback=lambda request: (500, {}, "no")
        )
        response = app.test_client().post("/v1/chat/completions", json={"model": model, "messages": MESSAGES})
        sent = [call.request.path_url for call in mock.calls]
    assert (response.status_code == 400) == (status == 400)
    if status == 400:
        assert response.get_json()["error"]["code"] == "invalid_value"
        assert sent == []
    else:
        assert sent == [sent_path]


@pytest.mark.parametrize(
    "header",
    [
        "GET https://h.test/x?key=sk-pasted-key-0123456789 HTTP/1.1\n",
        "POST /x HTTP/1.1\nsk-pasted-key-0123456789\n",
        "POST /x HTTP/1.1\nBad Name sk-pasted-key-0123456789: v\n",
    ],
)
def test_a_broken_header_txt_is_named_by_line_never_quoted(tmp_path, header, caplog):
    write_folder(tmp_path, "ex", header)
    app = create_app({"TESTING": True, "PROVIDERS_DIR": str(tmp_path), "ENV_FILE": None})
    body = app.test_client().get("/health").get_data(as_text=True)
    assert "ex/header.txt, line" in body
    assert "sk-pasted" not in body and "sk-pasted" not in caplog.text


def test_the_debug_log_shows_the_path_template_not_the_credential_in_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("BOT_TOKEN", "bot-secret-0123456789")
    write_folder(
        tmp_path,
        "bot",
        "POST /bot${BOT_TOKEN}/v1/chat/completions HTTP/1.1\n",
        {"host": "127.0.0.1:9", "scheme": "http"},
    )
    app = create_app({"TESTING": True, "PROVIDERS_DIR": str(tmp_path), "ENV_FILE": None, "LOG_LEVEL": "DEBUG"})
    app.test_client().post("/v1/chat/completions", json={"model": "m", "messages": MESSAGES, "provider": "bot"})
    assert "/bot${BOT_TOKEN}/v1/chat/completions" in caplog.text
    assert "bot-secret" not in caplog.text


def test_a_line_break_in_the_url_does_not_forge_a_log_line(client, caplog):
    client.get("/v1/models%0a2026-12-02 00:00:00 INFO reverse_api: forged")
    lines = [record.getMessage() for record in caplog.records if "forged" in record.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "\\n2026" in lines[0]


# --- web pages --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({}, 200, None),  # curl, the SDKs: no Origin, no Sec-Fetch-Site
        ({"Host": "127.0.0.1:5000"}, 200, None),
        ({"Host": "[::1]:5000"}, 200, None),
        ({"Host": "attacker.example"}, 403, "host_not_allowed"),  # DNS rebinding
        ({"Host": "localhost.attacker.example"}, 403, "host_not_allowed"),
        ({"Host": "127.evil.example:5000"}, 403, "host_not_allowed"),  # a name, not a loopback address
        ({"Host": "127.0.0.1.nip.io"}, 403, "host_not_allowed"),
        ({"Origin": "https://evil.example"}, 403, "cross_site_refused"),  # a cross-site text/plain POST
        ({"Sec-Fetch-Site": "cross-site"}, 403, "cross_site_refused"),
        ({"Origin": "http://localhost"}, 200, None),  # a page the service serves itself
        ({"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}, 200, None),
    ],
)
def test_without_api_keys_only_local_programs_are_answered(client, fake_qwen, headers, status, code):
    body = json.dumps({"model": "qwen3.7-plus", "messages": MESSAGES})
    response = client.post("/v1/chat/completions", data=body, content_type="text/plain", headers=headers)
    assert response.status_code == status
    if code:
        assert response.get_json()["error"]["code"] == code
        assert fake_qwen.requests == []
    assert client.get("/health", headers=headers).status_code == (status if status == 403 else 200)


def test_allowed_hosts_and_cors_origins_open_what_they_name(app_config, qwen_token, fake_qwen):
    client = create_app({**app_config, "ALLOWED_HOSTS": "box.lan", "CORS_ORIGINS": "https://ui.example"}).test_client()
    assert client.get("/v1/models", headers={"Host": "box.lan"}).status_code == 200
    assert client.get("/v1/models", headers={"Host": "other.lan"}).status_code == 403
    headers = {"Origin": "https://ui.example", "Sec-Fetch-Site": "cross-site"}
    assert client.get("/v1/models", headers=headers).status_code == 200
    assert client.get("/v1/models", headers={**headers, "Origin": "https://evil.example"}).status_code == 403


def test_with_api_keys_the_key_decides(app_config, qwen_token, fake_qwen):
    client = create_app({**app_config, "API_KEYS": "k-0123456789"}).test_client()
    headers = {"Host": "anything.example", "Origin": "https://evil.example", "Authorization": "Bearer k-0123456789"}
    assert client.get("/v1/models", headers=headers).status_code == 200
    assert client.get("/v1/models", headers={**headers, "Authorization": "Bearer wrong"}).status_code == 401


def test_the_sdk_through_a_real_port_is_unaffected(sdk):
    assert sdk.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES).choices[0].message.content


# --- slow clients ----------------------------------------------------------------------------------


def test_a_body_that_trickles_in_is_a_408_within_client_timeout(app_config, qwen_token, fake_qwen):
    app = create_app({**app_config, "CLIENT_TIMEOUT": 1.0})
    with ServerThread(app) as server, socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
        started = time.monotonic()
        for _ in range(3):  # a byte now and then keeps a per-read timeout from ever firing
            time.sleep(0.4)
            with contextlib.suppress(OSError):  # the 408 may already have closed the connection
                sock.sendall(b" ")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"request_timeout" in answer
        assert time.monotonic() - started < 3
        assert fake_qwen.requests == []
