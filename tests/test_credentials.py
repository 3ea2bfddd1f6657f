"""What a credential tells without asking the upstream, and how the accounts are found in .env."""

from __future__ import annotations

import base64
import json

import pytest

from credentials import cookie_pairs, fingerprint, jwt_expiry
from settings import account_numbers
from tests.fake_qwen_auth import make_jwt


def test_jwt_expiry_reads_exp_without_checking_the_signature():
    assert jwt_expiry(make_jwt({"exp": 1796184000, "iat": 1796183100})) == 1796184000.0
    assert jwt_expiry("Bearer " + make_jwt({"exp": 5})) == 5.0  # pasted with its prefix


@pytest.mark.parametrize(
    "token",
    [
        "opaque-token-value",
        "a.b",
        "a.!!!.c",
        make_jwt({"iat": 1}),  # no exp
        make_jwt({"exp": "soon"}),
        make_jwt({"exp": True}),
        "x." + base64.urlsafe_b64encode(json.dumps([1, 2]).encode()).decode() + ".y",
        "x." + base64.urlsafe_b64encode(b"\xff\xfe").decode() + ".y",
    ],
)
def test_a_token_that_is_not_a_jwt_with_exp_has_no_known_expiry(token):
    assert jwt_expiry(token) is None


def test_fingerprint_changes_with_any_value_and_never_holds_one():
    first = fingerprint({"QWEN_TOKEN": "secret-one", "QWEN_REFRESH_TOKEN": "r"})
    assert first == fingerprint({"QWEN_REFRESH_TOKEN": "r", "QWEN_TOKEN": "secret-one"})
    assert first != fingerprint({"QWEN_TOKEN": "secret-two", "QWEN_REFRESH_TOKEN": "r"})
    assert "secret" not in first and len(first) == 32


def test_cookie_pairs_keep_name_and_value_only():
    headers = [
        'refresh_token="abc.def"; Domain=qwen.ai; Path=/; HttpOnly; Expires=Wed, 21 Oct 2026 07:28:00 GMT',
        "token=xyz",
        "broken",
        "=nameless",
    ]
    assert cookie_pairs(headers) == {"refresh_token": "abc.def", "token": "xyz"}


def test_account_numbers_come_from_env_and_dotenv_for_the_given_names(monkeypatch):
    monkeypatch.setenv("QWEN_TOKEN_3", "x")
    monkeypatch.setenv("QWEN_TOKEN_4", "  ")  # blank: no account
    monkeypatch.delenv("QWEN_TOKEN_2", raising=False)
    file_values = {"QWEN_REFRESH_TOKEN_2": "r", "QWEN_TOKEN_1": "x", "QWEN_TOKEN_02": "x", "OTHER_TOKEN_5": "x"}
    assert account_numbers(["QWEN_TOKEN", "QWEN_REFRESH_TOKEN"], file_values) == [2, 3]
    assert account_numbers([], file_values) == []
