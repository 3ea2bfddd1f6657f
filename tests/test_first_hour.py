"""No silent surprises for a new user: what used to happen without a word now says so."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import openai
import pytest

from app import create_app
from importer.cli import main as import_main
from tests.conftest import ROOT, SHIPPED_QWEN, TOKEN, copy_provider
from tests.fake_qwen import answer_frames, created_frame, json_reply, sse_reply
from tests.raw_upstream import RawUpstream, sse_head
from tests.test_serving import raw_providers, start, stop


def ask(client, model="qwen3.7-plus", **extra):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    return client.post("/v1/chat/completions", json=body)


def jwt(exp: float) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'exp': int(exp), 'sub': 'u'})}.c2lnbmF0dXJl"


# --- model names -----------------------------------------------------------------------------


def test_a_model_only_a_pattern_matches_and_the_fresh_list_lacks_is_a_404_with_suggestions(client):
    assert ask(client, "qwen3.7-pluss").status_code == 200  # no list fetched yet: sent as it is
    client.get("/v1/models")  # the upstream's list, fresh now
    response = ask(client, "qwen3.7-pluss")
    assert response.status_code == 404
    error = response.get_json()["error"]
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert "Did you mean 'qwen3.7-plus'" in error["message"]
    retrieved = client.get("/v1/models/qwen3.7-pluss")
    assert retrieved.status_code == 404 and retrieved.get_json()["error"]["code"] == "model_not_found"
    assert ask(client, "qwen-upstream-only").status_code == 200  # on the upstream's list
    assert ask(client, "qwen3.7-plus-thinking").status_code == 200  # a listed model's thinking mode


def test_models_list_the_thinking_variants_the_upstream_says_exist(client, fake_qwen):
    thinking = {"info": {"meta": {"capabilities": {"thinking": True}}}}
    fake_qwen.models_reply = json_reply({"data": [{"id": "qwen3.7-plus", **thinking}, {"id": "qwen-plain"}]})
    ids = [m["id"] for m in client.get("/v1/models").get_json()["data"]]
    assert "qwen3.7-plus-thinking" in ids and "qwen-plain" in ids
    assert "qwen-plain-thinking" not in ids
    assert client.get("/v1/models/qwen3.7-plus-thinking").status_code == 200


@pytest.mark.parametrize("model", ["qwen3.7-plus ", " qwen3.7-plus", "qwen3.7-plus\u00a0"])
def test_white_space_around_the_model_is_refused_not_forwarded(client, fake_qwen, model):
    response = ask(client, model)
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == "model"
    assert not [r for r in fake_qwen.requests if "completions" in r["path"]]


# --- credentials -----------------------------------------------------------------------------


def test_a_token_pasted_with_its_bearer_prefix_is_sent_once_and_warned_about(
    app_config, fake_qwen, monkeypatch, caplog
):
    monkeypatch.setenv("QWEN_TOKEN", f"Bearer {TOKEN}")
    client = create_app(app_config).test_client()
    with caplog.at_level(logging.WARNING, logger="reverse_api"):
        assert ask(client).status_code == 200
        assert ask(client).status_code == 200
    assert fake_qwen.requests[-1]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    warnings = [r.getMessage() for r in caplog.records if "prefix" in r.getMessage()]
    assert len(warnings) == 1 and "QWEN_TOKEN" in warnings[0] and TOKEN not in warnings[0]


@pytest.mark.parametrize(
    ("token", "check"),
    [("opaque-token-value", "not_a_jwt"), (jwt(time.time() - 60), "expired"), (jwt(time.time() + 3600), "ok")],
)
def test_health_tells_a_token_that_is_no_jwt_or_expired_without_asking_upstream(
    app_config, fake_qwen, monkeypatch, token, check
):
    monkeypatch.setenv("QWEN_TOKEN", token)
    monkeypatch.delenv("QWEN_REFRESH_TOKEN", raising=False)
    client = create_app(app_config).test_client()
    account = client.get("/health").get_json()["providers"]["qwen"]["accounts"][0]
    assert account["token_check"] == check
    assert not [r for r in fake_qwen.requests if "chat" in r["path"]]


def test_an_unreadable_env_line_is_named_at_start_and_in_the_credential_error(
    providers_dir, tmp_path, monkeypatch, caplog
):
    monkeypatch.delenv("QWEN_TOKEN", raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("LOG_LEVEL=INFO\nQWEN_TOKEN eyJ-pasted-without-equals\n")
    with caplog.at_level(logging.WARNING, logger="reverse_api"):
        client = create_app({"PROVIDERS_DIR": str(providers_dir), "ENV_FILE": str(env_file)}).test_client()
    assert any(str(env_file) in r.getMessage() and "line 2" in r.getMessage() for r in caplog.records)
    error = ask(client).get_json()["error"]
    assert error["code"] == "upstream_credential_missing"
    assert f"{env_file} line 2 could not be read" in error["message"]


# --- fields that are ignored -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"n": 2}, "n"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}}, "response_format"),
        ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
        ({"n": 3, "logprobs": True}, "n, logprobs"),
    ],
)
def test_ignored_fields_that_change_the_answer_are_named_in_a_header(client, extra, named):
    for stream in (False, True):
        response = ask(client, stream=stream, **extra)
        assert response.status_code == 200
        assert response.headers["x-ignored-fields"] == named


def test_no_ignored_fields_header_for_a_plain_request(client):
    assert "x-ignored-fields" not in ask(client, n=1, response_format={"type": "text"}, temperature=0.2).headers


def test_the_sdk_can_read_the_ignored_fields(sdk):
    raw = sdk.chat.completions.with_raw_response.create(
        model="qwen3.7-plus", messages=[{"role": "user", "content": "hi"}], n=2
    )
    assert raw.headers["x-ignored-fields"] == "n"


# --- the request log line of a stream --------------------------------------------------------


def stream_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if " stream: " in r.getMessage()]


def test_a_stream_s_log_line_is_written_at_its_end_with_its_times(client, caplog):
    with caplog.at_level(logging.INFO, logger="reverse_api"):
        response = ask(client, stream=True)
        assert b"[DONE]" in response.get_data()
    (line,) = stream_lines(caplog)
    assert "POST /v1/chat/completions 200 stream: first byte " in line
    assert line.endswith("in all, completed")


def test_a_stream_that_ends_with_an_upstream_error_says_so(client, fake_qwen, caplog):
    fake_qwen.reply = sse_reply([created_frame(), *answer_frames(["Hel"])[:-1]])  # cut: never finished
    with caplog.at_level(logging.INFO, logger="reverse_api"):
        ask(client, stream=True).get_data()
    (line,) = stream_lines(caplog)
    assert line.endswith("error upstream_truncated")


def test_a_stream_the_client_leaves_says_so(client, fake_qwen, caplog):
    fake_qwen.reply = sse_reply([created_frame(), *answer_frames(["a", "b", "c"])], delay=0.2)
    with caplog.at_level(logging.INFO, logger="reverse_api"):
        response = client.post(
            "/v1/chat/completions",
            json={"model": "qwen3.7-plus", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
            buffered=False,
        )
        body = iter(response.response)
        next(body)
        response.close()  # the client goes
    (line,) = stream_lines(caplog)
    assert line.endswith("client_left")


# --- the import command ----------------------------------------------------------------------


def run_import(capsys, *argv) -> tuple[int, str, str]:
    code = import_main(["import", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('fetch("https://chat.qwen.ai/api/v2/chat/completions", {"headers": {}, "method": "POST"});', "Copy as fetch"),
        ('curl ^"https://chat.qwen.ai/api/v2/chat/completions^" ^\n  -H ^"accept: */*^"', "Copy as cURL (cmd)"),
        ("$session = New-Object Microsoft.PowerShell.Commands.WebRequestSession\n", "Copy as PowerShell"),
    ],
)
def test_a_capture_in_another_copy_format_is_named_and_the_right_one_given(tmp_path, capsys, text, named):
    capture = tmp_path / "capture.txt"
    capture.write_text(text)
    code, _, err = run_import(
        capsys, "qwen2", str(capture), "--providers-dir", str(tmp_path / "p"), "--env-file", str(tmp_path / ".env")
    )
    assert code == 1
    assert f'copied with "{named}"' in err and 'use "Copy as cURL (bash)"' in err
    assert "Traceback" not in err


def qwen_curl(token: str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.e30.c2ln") -> str:
    body = {
        "stream": True,
        "incremental_output": True,
        "chat_id": "c0ffee00-1111-4111-8111-111111111111",
        "chat_mode": "normal",
        "model": "qwen3.7-plus",
        "parent_id": None,
        "messages": [{"role": "user", "content": "hello", "models": ["qwen3.7-plus"], "chat_type": "t2t"}],
    }
    return (
        "curl 'https://chat.qwen.ai/api/v2/chat/completions?chat_id=c0ffee00-1111-4111-8111-111111111111' "
        f"-H 'authorization: Bearer {token}' -H 'content-type: application/json' "
        f"--data-raw '{json.dumps(body)}'"
    )


def test_an_import_whose_models_another_folder_serves_says_so_and_prints_the_next_step(tmp_path, capsys):
    providers = tmp_path / "porviders"
    copy_provider(SHIPPED_QWEN, providers / "qwen")  # before "zqwen": it wins ties
    capture = tmp_path / "capture.txt"
    capture.write_text(qwen_curl())
    code, out, err = run_import(
        capsys, "zqwen", str(capture), "--providers-dir", str(providers), "--env-file", str(tmp_path / ".env")
    )
    assert code == 0, err
    assert 'Model "qwen3.7-plus" is still answered by folder qwen' in out
    assert 'send "provider": "zqwen" to use this one' in out
    assert "Next: start the service" in out
    assert "curl http://127.0.0.1:5000/v1/chat/completions" in out and '"provider": "zqwen"' in out


def test_an_import_that_takes_models_from_another_folder_says_which(tmp_path, capsys):
    providers = tmp_path / "porviders"
    copy_provider(SHIPPED_QWEN, providers / "zqwen")  # after "aqwen" alphabetically: the import wins ties
    capture = tmp_path / "capture.txt"
    capture.write_text(qwen_curl())
    code, out, _ = run_import(
        capsys, "aqwen", str(capture), "--providers-dir", str(providers), "--env-file", str(tmp_path / ".env")
    )
    assert code == 0
    assert 'Folder aqwen now answers "qwen3.7-plus", which zqwen answered before' in out
    assert 'send "provider": "zqwen" to keep using zqwen' in out


def test_a_lone_import_gives_its_model_and_a_curl_line(tmp_path, capsys):
    capture = tmp_path / "capture.txt"
    capture.write_text(qwen_curl())
    code, out, _ = run_import(
        capsys, "qwen", str(capture), "--providers-dir", str(tmp_path / "p"), "--env-file", str(tmp_path / ".env")
    )
    assert code == 0
    assert "ask for model" in out and "still answered" not in out and "now answers" not in out
    curl_line = next(line for line in out.splitlines() if line.strip().startswith("curl "))
    assert json.loads(curl_line.split("-d ", 1)[1].strip("'"))["messages"][0]["content"] == "Hello"


# --- python app.py: ports and Ctrl-C ---------------------------------------------------------


def run_app(env: dict, timeout: float = 20) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, str(ROOT / "app.py")], env=environment, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("port", ["0", "70000", "-1"])
def test_a_port_out_of_range_is_one_line_naming_port(port):
    done = run_app({"PORT": port})
    assert done.returncode != 0
    assert f"PORT={port}" in done.stderr and "1 to 65535" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_a_port_in_use_is_one_line_naming_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_app({"PORT": str(port), "HOST": "127.0.0.1"})
    assert done.returncode != 0
    assert f"PORT={port} is already in use" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.skipif(sys.platform == "win32", reason="gunicorn does not run on Windows")
def test_ctrl_c_during_a_stream_ends_it_with_an_error_event_and_no_traceback(tmp_path):
    script = [sse_head(), created_frame()]
    for frame in answer_frames(["tick "] * 40):
        script += [frame, 0.1]  # a slow reply, still coming when Ctrl-C comes
    with RawUpstream() as raw:
        raw.script([*script, "close"])
        process, url = start([sys.executable, str(ROOT / "app.py")], raw_providers(tmp_path, raw.host))
        try:
            with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as sdk:
                stream = sdk.chat.completions.create(
                    model="qwen3.7-plus", messages=[{"role": "user", "content": "hi"}], stream=True
                )
                received = []
                with pytest.raises(openai.APIError) as caught:
                    for chunk in stream:
                        received.append(chunk)
                        if len(received) == 3:
                            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole group
        finally:
            output = stop(process)
    assert caught.value.body["code"] == "service_stopping"
    assert "Traceback" not in output, output
    assert "error service_stopping" in output  # and the stream's log line says how it ended


def test_an_expired_token_nothing_can_renew_makes_health_degraded(app_config, monkeypatch):
    monkeypatch.setenv("QWEN_TOKEN", jwt(time.time() - 60))
    monkeypatch.delenv("QWEN_REFRESH_TOKEN", raising=False)
    assert create_app(app_config).test_client().get("/health").get_json()["status"] == "degraded"


def test_an_import_fills_the_empty_placeholders_env_example_left(tmp_path, capsys):
    env_file = tmp_path / ".env"
    env_file.write_text("# copied from .env.example\nQWEN_TOKEN=\nQWEN_REFRESH_TOKEN=''\nKEPT=1\n")
    capture = tmp_path / "capture.txt"
    capture.write_text(qwen_curl(token="eyJhbGciOiJIUzI1NiJ9.e30.c2ln"))
    code, out, _ = run_import(
        capsys, "qwen", str(capture), "--providers-dir", str(tmp_path / "p"), "--env-file", str(env_file)
    )
    assert code == 0
    from dotenv import dotenv_values

    values = dotenv_values(env_file)
    assert values["QWEN_TOKEN"] == "eyJhbGciOiJIUzI1NiJ9.e30.c2ln" and values["KEPT"] == "1"
    assert "Kept existing values" not in out


def test_a_fetch_copy_after_other_text_is_named_too(tmp_path, capsys):
    capture = tmp_path / "capture.txt"
    capture.write_text('// copied from the browser\nfetch("https://chat.qwen.ai/api/v2/chat/completions", {});\n')
    code, _, err = run_import(
        capsys, "qwen2", str(capture), "--providers-dir", str(tmp_path / "p"), "--env-file", str(tmp_path / ".env")
    )
    assert code == 1 and 'copied with "Copy as fetch"' in err
