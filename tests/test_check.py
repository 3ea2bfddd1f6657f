"""``python app.py check [PROVIDER]``: a probe a user runs when answers look wrong; no server needed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import probe
from settings import load_settings
from tests.conftest import ROOT, SHIPPED_QWEN, TOKEN, copy_provider
from tests.fake_qwen import answer_frames, delta_frame, frame, json_reply, sse_reply, summary_frames


def run_check(providers_dir, capsys, *argv: str) -> tuple[int, str]:
    settings = load_settings({"PROVIDERS_DIR": str(providers_dir), "ENV_FILE": None, "UPSTREAM_TIMEOUT": 5.0})
    code = probe.main(list(argv), settings)
    return code, capsys.readouterr().out


def test_python_app_py_check_reports_a_working_provider(providers_dir, fake_qwen):
    # The real command line, as a user types it, from another working directory.
    env = {**os.environ, "PROVIDERS_DIR": str(providers_dir), "QWEN_TOKEN": TOKEN, "ENV_FILE": os.devnull}
    fake_qwen.reply = sse_reply(summary_frames(["Greeting."]) + answer_frames(["O", "K"]))
    result = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "check"],
        env=env,
        cwd=providers_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "qwen: ok"
    assert "  model: qwen3.7-plus" in lines
    assert "  created a chat in" in result.stdout and "  first delta after" in result.stdout
    assert "  answer: 2 characters 'OK'; reasoning: 9 characters" in lines
    assert "  usage: 10 prompt + 2 completion tokens" in lines
    assert "  nothing unrecognised" in lines
    assert TOKEN not in result.stdout + result.stderr
    sent = fake_qwen.requests[-1]["json"]["messages"][0]["content"]
    assert sent == probe.PROMPT


def test_check_names_the_error_and_what_to_do(providers_dir, fake_qwen, qwen_token, capsys):
    fake_qwen.reply = json_reply(
        {"success": False, "data": {"code": "RateLimited", "details": "Daily limit.", "num": 2}}
    )
    code, out = run_check(providers_dir, capsys)
    assert code == 1
    assert out.startswith("qwen: FAILED\n")
    assert "error 429 rate_limit_exceeded: The upstream is rate limiting this account: RateLimited: Daily limit." in out
    assert "what to do: wait (Retry-After says how long) or use another account." in out


def test_check_of_a_provider_without_credentials_says_which_to_set(providers_dir, fake_qwen, monkeypatch, capsys):
    monkeypatch.delenv("QWEN_TOKEN", raising=False)
    code, out = run_check(providers_dir, capsys, "qwen")
    assert code == 1
    assert "error 401 upstream_credential_missing" in out and "QWEN_TOKEN" in out
    assert "what to do: set the variables it names in .env" in out
    assert fake_qwen.requests == []


def test_check_without_any_configured_provider_fails(providers_dir, fake_qwen, monkeypatch, capsys):
    monkeypatch.delenv("QWEN_TOKEN", raising=False)
    code, out = run_check(providers_dir, capsys)
    assert code == 1
    assert "No provider has its credentials set" in out


def test_check_shows_what_it_did_not_recognise(providers_dir, fake_qwen, qwen_token, capsys):
    odd = delta_frame("image_gen", "https://cdn.example/x.png")
    fake_qwen.reply = sse_reply([odd, *answer_frames(["OK"])])
    code, out = run_check(providers_dir, capsys)
    assert code == 0
    assert "unrecognised: unknown_phase x1; last: {'kind': 'unknown_phase', 'phase': 'image_gen'}" in out
    assert "cdn.example" not in out


def test_check_fails_on_an_empty_answer(providers_dir, fake_qwen, qwen_token, capsys):
    fake_qwen.reply = sse_reply(
        [frame({"choices": [{"delta": {"role": "assistant", "content": "", "phase": "answer", "status": "finished"}}]})]
    )
    code, out = run_check(providers_dir, capsys)
    assert code == 1
    assert "answer: 0 characters" in out and "empty_reply x1" in out


def test_check_of_one_provider_among_several(providers_dir, fake_qwen, qwen_token, capsys):
    copy_provider(SHIPPED_QWEN, providers_dir / "other", host="127.0.0.1:9", scheme="http")
    code, out = run_check(providers_dir, capsys, "qwen")
    assert code == 0
    assert out.startswith("qwen: ok") and "other" not in out
    code, out = run_check(providers_dir, capsys)
    assert code == 1  # "other" cannot be reached
    assert "qwen: ok" in out
    assert "other: FAILED" in out and "upstream_unreachable" in out and "check the network" in out
    assert "(the connection was refused)" in out


def test_check_of_an_unknown_or_broken_provider(providers_dir, fake_qwen, qwen_token, capsys):
    code, out = run_check(providers_dir, capsys, "nope")
    assert (code, out) == (2, "nope: FAILED\n  no such provider (loaded: qwen)\n")
    (providers_dir / "broken").mkdir()
    code, out = run_check(providers_dir, capsys)
    assert code == 1
    assert "broken: FAILED\n  not loaded: broken/metadata.json: file is missing" in out
    assert "qwen: ok" in out


@pytest.mark.parametrize("code", sorted(probe.ADVICE))
def test_every_advice_is_a_sentence(code):
    assert probe.ADVICE[code].endswith(".") and len(probe.ADVICE[code]) > 20


def test_check_says_which_providers_it_skipped_and_why(providers_dir, fake_qwen, qwen_token, monkeypatch, capsys):
    copy_provider(ROOT / "porviders" / "openai", providers_dir / "openai")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code, out = run_check(providers_dir, capsys)
    assert code == 0
    assert "openai: skipped (set OPENAI_API_KEY to check it)" in out
    assert "qwen: ok" in out


def test_check_with_only_broken_and_unconfigured_folders_says_so(providers_dir, fake_qwen, monkeypatch, capsys):
    monkeypatch.delenv("QWEN_TOKEN", raising=False)
    (providers_dir / "broken").mkdir()
    code, out = run_check(providers_dir, capsys)
    assert code == 1
    assert "broken: FAILED" in out and "qwen: skipped (set QWEN_TOKEN to check it)" in out
    assert "No provider has its credentials set" in out


def test_check_reports_no_drift_line_when_no_stream_was_read(providers_dir, fake_qwen, qwen_token, capsys):
    fake_qwen.chat_reply = json_reply({"success": False, "data": {"code": "Unauthorized", "details": "expired"}})
    code, out = run_check(providers_dir, capsys, "qwen")
    assert code == 1
    assert "upstream_credential_rejected" in out
    assert "unrecognised" not in out


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_check_help(providers_dir, capsys, flag):
    code, out = run_check(providers_dir, capsys, flag)
    assert code == 0
    assert out.startswith("usage: python app.py check [PROVIDER]")
