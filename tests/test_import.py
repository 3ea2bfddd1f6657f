"""python provider_loader.py import NAME FILE: provider folders from browser captures.

Captures are written the way browsers write them: Chrome's and Firefox's "Copy as cURL (bash)"
and HAR exports. The end-to-end tests import a capture of the loopback fake Qwen and chat
through the imported folder with the real openai package.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import openai
import pytest
from dotenv import dotenv_values

import importer.folder as folder_module
import provider_loader
import services
import settings
from app import create_app
from importer.capture import Capture, parse_curl, parse_har, split_shell_words
from importer.folder import detect_dialect, import_capture, write_env_values
from placeholders import fill_headers, fill_placeholders
from provider_loader import Provider, ProviderError, parse_header_text
from settings import DEFAULT_ENV_FILE
from tests.conftest import ROOT
from tests.fake_qwen import CHAT_ID, ServerThread
from tests.helpers import import_lines

# --- what the captures hold ----------------------------------------------------------------

QWEN = "https://chat.qwen.ai"
CAPTURED_CHAT_ID = "8f2b6c1e-3d4a-4b5c-9e7f-0a1b2c3d4e5f"
CAPTURED_REQUEST_ID = "5d41402a-bc4b-4a2f-8d7e-1234567890ab"
JWT = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImxlZ2FjeSJ9.eyJpZCI6ImI3ZTQiLCJ0eXBlIjoiYWNjZXNzX3Rva2VuIn0.Zm9vYmFyYmF6cXV4"
BX_UA = "231!Gk3+Ep0/Fy/jQx9bXuWmZk3AlmvS5sT+Yw=="
BX_UMIDTOKEN = "T2gAq8xYz_Jb1hPbJ0n4Ww9xKc5vLr2QmN=="
SSXMOD = "Qq$2+/Yb=ex"
# A cookie header as the browser sends it: ';', '=', '$', a space and double quotes.
COOKIE_TEMPLATE = "token=@TOKEN@; ssxmod_itna=" + SSXMOD + '; cna=Bd4 KIQ; x-ap="ap-southeast-1"; acw_tc=0a1b2c3d17890'
UA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/140.0.0.0 Safari/537.36"
SEC_CH_UA = '"Chromium";v="140", "Not=A?Brand";v="24", "Google Chrome";v="140"'
TIMEZONE = "Sat Sep 26 2026 00:12:26 GMT+0700"
PROMPT = 'What\'s new in Café "Qwen"?\nTell me!'


def cookie(token: str = JWT) -> str:
    return COOKIE_TEMPLATE.replace("@TOKEN@", token)


def qwen_body(model: str = "qwen3.7-plus") -> dict:
    """The v2 body of section 4 of the wire-format notes, as the browser sends it."""
    return {
        "stream": True,
        "version": "2.1",
        "incremental_output": True,
        "chatId": CAPTURED_CHAT_ID,
        "parentId": "",
        "chat_id": CAPTURED_CHAT_ID,
        "chat_mode": "normal",
        "model": model,
        "parent_id": None,
        "messages": [
            {
                "id": None,
                "fid": "22222222-2222-4222-8222-222222222222",
                "parentId": None,
                "childrenIds": ["33333333-3333-4333-8333-333333333333"],
                "role": "user",
                "content": PROMPT,
                "user_action": "chat",
                "files": [],
                "timestamp": 1789353631,
                "models": [model],
                "model": "",
                "chat_type": "t2t",
                "feature_config": {
                    "thinking_enabled": False,
                    "output_schema": "phase",
                    "research_mode": "normal",
                    "auto_thinking": False,
                    "thinking_mode": "Fast",
                    "auto_search": True,
                },
                "extra": {"meta": {"subChatType": "t2t"}},
                "sub_chat_type": "t2t",
                "parent_id": None,
            }
        ],
        "timestamp": 1789353631,
    }


def compact(value: dict) -> str:
    """JSON as a browser's JSON.stringify writes it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# Chrome's "Copy as cURL (bash)": url first, one option per line, '!' and quotes force $'...'
# (Chrome writes '!' as \u0021, ' as \', a backslash as \\); -b carries the cookies.
CHROME_QWEN = r"""curl '@BASE@/api/v2/chat/completions?chat_id=8f2b6c1e-3d4a-4b5c-9e7f-0a1b2c3d4e5f' \
  -H 'accept: application/json' \
  -H 'accept-language: en-US,en;q=0.9,fr;q=0.8' \
  -H 'authorization: Bearer @TOKEN@' \
  -H $'bx-ua: 231\u0021Gk3+Ep0/Fy/jQx9bXuWmZk3AlmvS5sT+Yw==' \
  -H 'bx-umidtoken: T2gAq8xYz_Jb1hPbJ0n4Ww9xKc5vLr2QmN==' \
  -H 'bx-v: 2.5.37' \
  -H 'content-type: application/json' \
  -b 'token=@TOKEN@; ssxmod_itna=Qq$2+/Yb=ex; cna=Bd4 KIQ; x-ap="ap-southeast-1"; acw_tc=0a1b2c3d17890' \
  -H 'origin: @BASE@' \
  -H 'priority: u=1, i' \
  -H 'referer: @BASE@/c/8f2b6c1e-3d4a-4b5c-9e7f-0a1b2c3d4e5f' \
  -H 'sec-ch-ua: "Chromium";v="140", "Not=A?Brand";v="24", "Google Chrome";v="140"' \
  -H 'sec-ch-ua-mobile: ?0' \
  -H 'sec-ch-ua-platform: "Windows"' \
  -H 'sec-fetch-dest: empty' \
  -H 'sec-fetch-mode: cors' \
  -H 'sec-fetch-site: same-origin' \
  -H 'source: web' \
  -H 'timezone: Sat Sep 26 2026 00:12:26 GMT+0700' \
  -H 'user-agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/140.0.0.0 Safari/537.36' \
  -H 'version: 0.3.11' \
  -H 'x-accel-buffering: no' \
  -H 'x-request-id: 5d41402a-bc4b-4a2f-8d7e-1234567890ab' \
  --data-raw $'{"stream":true,"version":"2.1","incremental_output":true,"chatId":"8f2b6c1e-3d4a-4b5c-9e7f-0a1b2c3d4e5f","parentId":"","chat_id":"8f2b6c1e-3d4a-4b5c-9e7f-0a1b2c3d4e5f","chat_mode":"normal","model":"@MODEL@","parent_id":null,"messages":[{"id":null,"fid":"22222222-2222-4222-8222-222222222222","parentId":null,"childrenIds":["33333333-3333-4333-8333-333333333333"],"role":"user","content":"What\'s new in Caf\u00e9 \\"Qwen\\"?\\nTell me\u0021","user_action":"chat","files":[],"timestamp":1789353631,"models":["@MODEL@"],"model":"","chat_type":"t2t","feature_config":{"thinking_enabled":false,"output_schema":"phase","research_mode":"normal","auto_thinking":false,"thinking_mode":"Fast","auto_search":true},"extra":{"meta":{"subChatType":"t2t"}},"sub_chat_type":"t2t","parent_id":null}],"timestamp":1789353631}' \
  --compressed
"""


def chrome_qwen(base: str = QWEN, token: str = JWT, model: str = "qwen3.7-plus") -> str:
    return CHROME_QWEN.replace("@BASE@", base).replace("@TOKEN@", token).replace("@MODEL@", model)


def chrome_qwen_headers(base: str = QWEN, token: str = JWT) -> tuple[tuple[str, str], ...]:
    """What parse_curl must find in CHROME_QWEN: the -H lines in order, then -b as Cookie."""
    return (
        ("accept", "application/json"),
        ("accept-language", "en-US,en;q=0.9,fr;q=0.8"),
        ("authorization", f"Bearer {token}"),
        ("bx-ua", BX_UA),
        ("bx-umidtoken", BX_UMIDTOKEN),
        ("bx-v", "2.5.37"),
        ("content-type", "application/json"),
        ("origin", base),
        ("priority", "u=1, i"),
        ("referer", f"{base}/c/{CAPTURED_CHAT_ID}"),
        ("sec-ch-ua", SEC_CH_UA),
        ("sec-ch-ua-mobile", "?0"),
        ("sec-ch-ua-platform", '"Windows"'),
        ("sec-fetch-dest", "empty"),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-site", "same-origin"),
        ("source", "web"),
        ("timezone", TIMEZONE),
        ("user-agent", UA),
        ("version", "0.3.11"),
        ("x-accel-buffering", "no"),
        ("x-request-id", CAPTURED_REQUEST_ID),
        ("Cookie", cookie(token)),
    )


FIREFOX_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
# Firefox: one line, -X POST, the cookie as a -H, non-ASCII as \uXXXX inside $'...'.
FIREFOX_QWEN = (
    "curl 'https://chat.qwen.ai/api/v2/chat/completions?chat_id=8f2b6c1e-3d4a-4b5c-9e7f-0a1b2c3d4e5f' -X POST "
    f"-H 'User-Agent: {FIREFOX_UA}' -H 'Accept: application/json' -H 'Accept-Language: en-US,en;q=0.5' "
    "-H 'Accept-Encoding: gzip, deflate, br, zstd' -H 'Content-Type: application/json' "
    f"-H 'Authorization: Bearer {JWT}' -H 'source: web' -H 'Origin: https://chat.qwen.ai' -H 'Connection: keep-alive' "
    "-H 'Referer: https://chat.qwen.ai/c/8f2b6c1e-3d4a-4b5c-9e7f-0a1b2c3d4e5f' "
    f"-H 'Cookie: {cookie()}' -H 'Sec-Fetch-Dest: empty' -H 'Sec-Fetch-Mode: cors' -H 'Sec-Fetch-Site: same-origin' "
    "-H 'Priority: u=0' -H 'TE: trailers' "
    r"""--data-raw $'{"model":"qwen3.7-plus","chat_id":"8f2b6c1e-3d4a-4b5c-9e7f-0a1b2c3d4e5f","messages":[{"role":"user","content":"Caf\u00e9 it\'s \\u00e9"}]}'"""
)

SECRETS = [JWT, BX_UA, BX_UMIDTOKEN, cookie(), SSXMOD, "Bd4 KIQ", "0a1b2c3d17890"]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def run_import(capsys, *argv: str) -> tuple[int, str, str]:
    code = provider_loader.main(["import", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def folder_texts(folder: Path) -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8") for path in sorted(folder.rglob("*")) if path.is_file()}


def header_map(folder: Path) -> tuple[str, str, dict[str, str]]:
    request = parse_header_text((folder / "header.txt").read_text(encoding="utf-8"))
    return request.method, request.path, {name.lower(): value for name, value in request.headers}


# --- split_shell_words -----------------------------------------------------------------------

# Each expectation was checked against bash's own splitting (printf '%s\0' WORDS).
SHELL_WORDS = [
    ("'a b'", ["a b"]),
    ("'it'\\''s'", ["it's"]),
    ("'a \"b\" \\n $HOME'", ['a "b" \\n $HOME']),
    ('"a \\"b\\" \\\\ \\$HOME \\`x\\` \\n end"', ['a "b" \\ $HOME `x` \\n end']),
    ('"it\'s"', ["it's"]),
    ("$'line\\nnext\\ttab\\rcr'", ["line\nnext\ttab\rcr"]),
    ("$'it\\'s \\\\ \\\"q\\\"'", ['it\'s \\ "q"']),
    ("$'\\x41\\x7e\\x41B'", ["A~AB"]),
    ("$'caf\\u00e9 \\u20ac \\u00e9A'", ["café € éA"]),
    ("$'\\U0001F600!'", ["\U0001f600!"]),
    ("$'\\101\\060\\1014'", ["A0A4"]),
    ("$'\\a\\b\\e\\f\\v\\?'", ["\a\b\x1b\f\v?"]),
    ("$'\\q \\xzz'", ["\\q \\xzz"]),
    ("abc \\\n  def", ["abc", "def"]),
    ("abc \\\r\n  def", ["abc", "def"]),
    ("ab\\\ncd", ["abcd"]),
    ("ab\\\r\ncd", ["abcd"]),
    ("a'b'\"c\"", ["abc"]),
    ("a'b'\"c\"$'\\n'd", ["abc\nd"]),
    ("'' x \"\" $''", ["", "x", "", ""]),
    ("-H 'a: b'", ["-H", "a: b"]),
    ("a\\ b \\'c", ["a b", "'c"]),
    ("  a \t\n b  ", ["a", "b"]),
    ("", []),
]


@pytest.mark.parametrize(("text", "words"), SHELL_WORDS, ids=[repr(t)[:40] for t, _ in SHELL_WORDS])
def test_split_shell_words(text, words):
    assert split_shell_words(text) == words


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("curl 'https://x", "'...'"),
        ('curl "https://x', '"..."'),
        ('curl "https://x\\"', '"..."'),
        ("curl $'https://x", "$'...'"),
        ("curl $'it\\'s", "$'...'"),
    ],
)
def test_split_shell_words_unterminated_quote(text, kind):
    with pytest.raises(ProviderError, match="unterminated") as caught:
        split_shell_words(text)
    assert kind in str(caught.value)


# --- parse_curl --------------------------------------------------------------------------------


def test_parse_curl_chrome_capture():
    capture = parse_curl(chrome_qwen())
    assert capture == Capture(
        method="POST",
        url=f"{QWEN}/api/v2/chat/completions?chat_id={CAPTURED_CHAT_ID}",
        headers=chrome_qwen_headers(),
        body=compact(qwen_body()),
    )
    assert json.loads(capture.body)["messages"][0]["content"] == PROMPT


def test_parse_curl_chrome_capture_saved_with_windows_line_endings():
    assert parse_curl(chrome_qwen().replace("\n", "\r\n")) == parse_curl(chrome_qwen())


def test_parse_curl_firefox_capture():
    capture = parse_curl(FIREFOX_QWEN)
    assert capture == Capture(
        method="POST",
        url=f"{QWEN}/api/v2/chat/completions?chat_id={CAPTURED_CHAT_ID}",
        headers=(
            ("User-Agent", FIREFOX_UA),
            ("Accept", "application/json"),
            ("Accept-Language", "en-US,en;q=0.5"),
            ("Accept-Encoding", "gzip, deflate, br, zstd"),
            ("Content-Type", "application/json"),
            ("Authorization", f"Bearer {JWT}"),
            ("source", "web"),
            ("Origin", QWEN),
            ("Connection", "keep-alive"),
            ("Referer", f"{QWEN}/c/{CAPTURED_CHAT_ID}"),
            ("Cookie", cookie()),
            ("Sec-Fetch-Dest", "empty"),
            ("Sec-Fetch-Mode", "cors"),
            ("Sec-Fetch-Site", "same-origin"),
            ("Priority", "u=0"),
            ("TE", "trailers"),
        ),
        body='{"model":"qwen3.7-plus","chat_id":"8f2b6c1e-3d4a-4b5c-9e7f-0a1b2c3d4e5f",'
        '"messages":[{"role":"user","content":"Café it\'s \\u00e9"}]}',
    )
    assert json.loads(capture.body)["messages"][0]["content"] == "Café it's é"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "curl 'https://example.com/api/models' -H 'accept: application/json' --compressed",
            Capture("GET", "https://example.com/api/models", (("accept", "application/json"),), ""),
            id="no body is a GET; --compressed takes no value",
        ),
        pytest.param(
            "curl --compressed -H 'accept: a' -H 'x-one: 1' -H 'accept: b' 'https://example.com/x'",
            Capture("GET", "https://example.com/x", (("accept", "a"), ("x-one", "1"), ("accept", "b")), ""),
            id="repeated -H kept in order; URL after the options",
        ),
        pytest.param(
            "curl 'https://example.com/up' -X PUT --data-binary '{\"a\": 1}'",
            Capture("PUT", "https://example.com/up", (), '{"a": 1}'),
            id="-X PUT honoured with a body",
        ),
        pytest.param(
            "curl 'https://example.com/up' --request put -H 'Content-Type: text/plain'",
            Capture("PUT", "https://example.com/up", (("Content-Type", "text/plain"),), ""),
            id="--request, lower case",
        ),
        pytest.param(
            "curl 'https://example.com/form' -d a=1 --data 'b=2 3'",
            Capture("POST", "https://example.com/form", (), "a=1&b=2 3"),
            id="several -d joined with & like curl",
        ),
        pytest.param(
            "curl 'https://example.com/x' --data-binary $'{\"t\":\"\\u00e9\\\\n\"}'",
            Capture("POST", "https://example.com/x", (), '{"t":"é\\n"}'),
            id="--data-binary with $'...'",
        ),
        pytest.param(
            "curl -A 'agent/1' -e 'https://ref.example/' -m 30 --url 'https://example.com/u'",
            Capture(
                "GET", "https://example.com/u", (("User-Agent", "agent/1"), ("Referer", "https://ref.example/")), ""
            ),
            id="-A -e --url; -m's value is not the URL",
        ),
        pytest.param(
            "curl 'http://127.0.0.1:8080/v1/chat/completions' -H 'Content-Type: application/json'"
            ' --data-raw \'{"model":"m","messages":[]}\'',
            Capture(
                "POST",
                "http://127.0.0.1:8080/v1/chat/completions",
                (("Content-Type", "application/json"),),
                '{"model":"m","messages":[]}',
            ),
            id="http loopback",
        ),
    ],
)
def test_parse_curl_options(text, expected):
    assert parse_curl(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "starting with 'curl'"),
        ("hello world, this is not a capture", "starting with 'curl'"),
        ("wget https://example.com/x", "starting with 'curl'"),
        ("fetch('https://example.com/x', {method: 'POST'})", 'copied with "Copy as fetch"'),
        ("curl", "no http(s) URL"),
        ("curl -H 'accept: x' --compressed", "no http(s) URL"),
        ("curl 'ftp://example.com/file'", "no http(s) URL"),
        ("curl 'https://example.com/x' -H 'no colon here'", "malformed header"),
        ("curl 'https://example.com/x' -H 'bad name: v'", "malformed header"),
        ("curl 'https://example.com/x", "unterminated"),
    ],
)
def test_parse_curl_garbage(text, message):
    with pytest.raises(ProviderError, match="^capture: ") as caught:
        parse_curl(text)
    assert message in str(caught.value)


# --- parse_har ---------------------------------------------------------------------------------


def har_entry(
    method: str,
    url: str,
    headers: list[tuple[str, str]] = (),
    body: str | None = None,
    response_mime: str = "application/json",
    response_headers: list[tuple[str, str]] | None = None,
    base64_body: bool = False,
) -> dict:
    """One entry as Chrome's "Save all as HAR (with content)" writes it."""
    request = {
        "method": method,
        "url": url,
        "httpVersion": "http/2.0",
        "headers": [{"name": name, "value": value} for name, value in headers],
        "queryString": [],
        "cookies": [],
        "headersSize": -1,
        "bodySize": len(body or ""),
    }
    if body is not None:
        text = base64.b64encode(body.encode()).decode() if base64_body else body
        request["postData"] = {"mimeType": "application/json", "text": text}
        if base64_body:
            request["postData"]["encoding"] = "base64"
    if response_headers is None:
        response_headers = [("content-type", response_mime)]
    answer = "data: {}\n\n" if "event-stream" in response_mime else '{"success": true}'
    response = {
        "status": 200,
        "statusText": "",
        "httpVersion": "http/2.0",
        "headers": [{"name": name, "value": value} for name, value in response_headers],
        "cookies": [],
        "content": {"size": len(answer), "mimeType": response_mime, "text": answer},
        "redirectURL": "",
        "headersSize": -1,
        "bodySize": -1,
        "_transferSize": 100,
    }
    return {
        "_initiator": {"type": "script"},
        "_priority": "High",
        "_resourceType": "fetch",
        "cache": {},
        "connection": "443",
        "request": request,
        "response": response,
        "serverIPAddress": "47.246.1.1",
        "startedDateTime": "2026-09-26T00:12:26.000Z",
        "time": 812.5,
        "timings": {"blocked": 1, "dns": -1, "ssl": -1, "connect": -1, "send": 0, "wait": 800, "receive": 11.5},
    }


def har(*entries: dict) -> str:
    log = {"version": "1.2", "creator": {"name": "WebInspector", "version": "537.36"}, "pages": [], "entries": entries}
    return json.dumps({"log": log}, indent=2)


def h2_headers(method: str, path: str, *headers: tuple[str, str]) -> list[tuple[str, str]]:
    pseudo = [(":authority", "chat.qwen.ai"), (":method", method), (":path", path), (":scheme", "https")]
    return [*pseudo, *headers]


QWEN_HEADERS = [
    ("accept", "application/json"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("authorization", f"Bearer {JWT}"),
    ("bx-ua", BX_UA),
    ("bx-umidtoken", BX_UMIDTOKEN),
    ("bx-v", "2.5.37"),
    ("content-length", "1234"),
    ("content-type", "application/json"),
    ("cookie", cookie()),
    ("referer", f"{QWEN}/c/{CAPTURED_CHAT_ID}"),
    ("source", "web"),
    ("x-request-id", CAPTURED_REQUEST_ID),
]
NEW_CHAT_BODY = {
    "chatId": "",
    "models": ["qwen3.7-plus"],
    "project_id": "",
    "timestamp": 1789354566060,
    "chat_type": "t2t",
    "chat_mode": "normal",
}
FIRST_CHAT = "11111111-1111-4111-8111-111111111111"


def completion_url(chat_id: str = CAPTURED_CHAT_ID) -> str:
    return f"{QWEN}/api/v2/chat/completions?chat_id={chat_id}"


def qwen_har_entries(base64_body: bool = False) -> list[dict]:
    """A page session: model list, chat creation, two completions, and noise around them."""
    new_chat_headers = [("content-type", "application/json"), ("referer", f"{QWEN}/c/new-chat")]
    first = dict(qwen_body(), chat_id=FIRST_CHAT, chatId=FIRST_CHAT)
    return [
        har_entry("GET", f"{QWEN}/api/models", h2_headers("GET", "/api/models", ("accept", "application/json"))),
        har_entry(
            "POST",
            f"{QWEN}/api/v2/chats/new",
            h2_headers("POST", "/api/v2/chats/new", *new_chat_headers),
            compact(NEW_CHAT_BODY),
        ),
        har_entry(
            "POST",
            completion_url(FIRST_CHAT),
            h2_headers("POST", f"/api/v2/chat/completions?chat_id={FIRST_CHAT}", *QWEN_HEADERS),
            compact(first),
            response_mime="text/event-stream",
        ),
        har_entry(
            "GET",
            f"{QWEN}/api/v2/chats/{FIRST_CHAT}/stream",
            h2_headers("GET", "/x", ("accept", "text/event-stream")),
            response_mime="text/event-stream",
        ),
        har_entry(
            "POST",
            completion_url(),
            h2_headers("POST", f"/api/v2/chat/completions?chat_id={CAPTURED_CHAT_ID}", *QWEN_HEADERS),
            compact(qwen_body()),
            response_mime="text/event-stream; charset=utf-8",
            base64_body=base64_body,
        ),
        har_entry(
            "POST",
            f"{QWEN}/api/v2/chats/{CAPTURED_CHAT_ID}/title",
            h2_headers("POST", "/t", ("content-type", "application/json")),
            '{"title": "x"}',
        ),
    ]


def test_parse_har_picks_the_last_event_stream_post_and_the_new_chat():
    chat, create = parse_har(har(*qwen_har_entries()))
    assert chat == Capture("POST", completion_url(), tuple(QWEN_HEADERS), compact(qwen_body()))
    assert create == Capture(
        "POST",
        f"{QWEN}/api/v2/chats/new",
        (("content-type", "application/json"), ("referer", f"{QWEN}/c/new-chat")),
        compact(NEW_CHAT_BODY),
    )


def test_parse_har_event_stream_named_only_in_the_response_headers():
    entry = har_entry(
        "POST",
        completion_url(),
        QWEN_HEADERS,
        compact(qwen_body()),
        response_mime="",
        response_headers=[("Content-Type", "text/event-stream;charset=UTF-8")],
    )
    plain = har_entry("POST", f"{QWEN}/api/other", [("a", "b")], "{}")
    chat, create = parse_har(har(entry, plain))
    assert chat.url == completion_url()
    assert create is None


def test_parse_har_decodes_a_base64_body():
    chat, _ = parse_har(har(*qwen_har_entries(base64_body=True)))
    assert chat.body == compact(qwen_body())
    assert json.loads(chat.body)["messages"][0]["content"] == PROMPT


def test_parse_har_drops_http2_pseudo_headers():
    chat, create = parse_har(har(*qwen_har_entries()))
    for capture in (chat, create):
        assert [name for name, _ in capture.headers if name.startswith(":")] == []
    assert dict(chat.headers)["authorization"] == f"Bearer {JWT}"


@pytest.mark.parametrize(
    ("match", "url", "method"),
    [
        (f"chat_id={FIRST_CHAT}", completion_url(FIRST_CHAT), "POST"),
        ("chats/new", f"{QWEN}/api/v2/chats/new", "POST"),
        ("/api/models", f"{QWEN}/api/models", "GET"),
        ("/api/v2/chat/completions", completion_url(), "POST"),
    ],
)
def test_parse_har_match_picks_by_url_substring(match, url, method):
    chat, create = parse_har(har(*qwen_har_entries()), match=match)
    assert (chat.method, chat.url) == (method, url)
    assert create.url == f"{QWEN}/api/v2/chats/new"


def test_parse_har_match_without_a_hit():
    with pytest.raises(ProviderError) as caught:
        parse_har(har(*qwen_har_entries()), match="/api/nowhere")
    assert "'/api/nowhere'" in str(caught.value)
    assert "--match" in str(caught.value)


def test_parse_har_without_a_streamed_post():
    entries = [
        har_entry("GET", f"{QWEN}/api/models"),
        har_entry("POST", f"{QWEN}/api/v2/chats/new", [("a", "b")], "{}"),
        har_entry("GET", f"{QWEN}/events", response_mime="text/event-stream"),
    ]
    with pytest.raises(ProviderError) as caught:
        parse_har(har(*entries))
    assert "text/event-stream" in str(caught.value)
    assert "--match" in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "not json at all",
        "[]",
        '{"log": []}',
        '{"log": {}}',
        '{"log": null}',
        '{"entries": []}',
        '{"log": {"entries": null}}',
        "",
    ],
)
def test_parse_har_not_a_har(text):
    with pytest.raises(ProviderError, match="not a HAR file"):
        parse_har(text)


# --- detect_dialect ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "dialect"),
    [
        (f"/api/v2/chat/completions?chat_id={CAPTURED_CHAT_ID}", qwen_body(), "qwen"),
        ("/api/v2/chat/completions", {"chat_id": "x", "messages": []}, "qwen"),
        ("/v1/chat/completions", {"model": "m", "messages": []}, "openai"),
        ("/openai/v1/chat/completions?api-version=1", {"model": "m", "messages": [{"role": "user"}]}, "openai"),
        ("/v1/chat/completions", {"messages": []}, None),
        ("/v1/chat/completions", None, None),
        ("/api/ask", {"q": "hi"}, None),
        ("/api/ask", {"model": "m", "messages": []}, None),
    ],
)
def test_detect_dialect(path, body, dialect):
    assert detect_dialect(path, body) == dialect


# --- write_env_values --------------------------------------------------------------------------

ENV_VALUES = [
    ("plain", "plain-Value_123"),
    ("spaces", "with spaces inside"),
    ("edge spaces", " leading and trailing "),
    ("cookie", "a=1; b=2==; c=x"),
    ("dollar", "price $5 and $HOME"),
    ("double quotes", 'say "hi"'),
    ("single quote", "it's"),
    ("both quotes", 'it\'s "quoted"'),
    ("hash", "#not-a-comment"),
    ("one backslash", "back\\slash"),
    ("dollar brace", "pre${QWEN_IMPORT_UNSET_VARIABLE}post"),
    ("single quote and dollar", "it's $5"),
    ("trailing backslash", "ends-with\\"),
    ("double backslash", "two\\\\backslashes"),
]


@pytest.mark.parametrize(("label", "value"), ENV_VALUES, ids=[label for label, _ in ENV_VALUES])
def test_env_values_read_back_exactly_by_python_dotenv(tmp_path, monkeypatch, label, value):
    monkeypatch.delenv("QWEN_IMPORT_UNSET_VARIABLE", raising=False)
    env_file = tmp_path / ".env"
    assert write_env_values(env_file, {"SECRET_VALUE": value}) == (["SECRET_VALUE"], [])
    # The service reads .env without ${} expansion, so secrets come back exactly as captured.
    assert dotenv_values(env_file, interpolate=False) == {"SECRET_VALUE": value}


@pytest.mark.parametrize(("label", "value"), ENV_VALUES, ids=[label for label, _ in ENV_VALUES])
def test_env_values_reach_the_service_exactly(tmp_path, monkeypatch, label, value):
    from app import create_app

    monkeypatch.delenv("SECRET_VALUE", raising=False)
    env_file = tmp_path / ".env"
    write_env_values(env_file, {"SECRET_VALUE": value})
    app = create_app({"TESTING": True, "PROVIDERS_DIR": str(tmp_path / "none"), "ENV_FILE": str(env_file)})
    # The service trims the ends: a credential is never meant to start or end with white space.
    assert app.extensions["reverse_api"].variables(["SECRET_VALUE"]) == {"SECRET_VALUE": value.strip()}


def test_env_file_is_created_private(tmp_path):
    env_file = tmp_path / ".env"
    write_env_values(env_file, {"A": "1"})
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600


def test_env_file_existing_values_kept_unless_forced(tmp_path):
    env_file = write(tmp_path / ".env", "# mine\nA='old'\nexport B=old-b\n\n# C=commented\nOTHER=1\n")
    assert write_env_values(env_file, {"A": "new", "B": "new-b", "C": "new-c"}) == (["C"], ["A", "B"])
    assert env_file.read_text() == "# mine\nA='old'\nexport B=old-b\n\n# C=commented\nOTHER=1\nC='new-c'\n"
    assert write_env_values(env_file, {"A": "new", "B": "new-b"}, force=True) == (["A", "B"], [])
    assert env_file.read_text() == "# mine\nA='new'\nB='new-b'\n\n# C=commented\nOTHER=1\nC='new-c'\n"
    assert dotenv_values(env_file) == {"A": "new", "B": "new-b", "OTHER": "1", "C": "new-c"}


def test_env_file_untouched_when_nothing_is_written(tmp_path):
    env_file = write(tmp_path / ".env", "A=1")
    before = env_file.stat().st_mtime_ns
    assert write_env_values(env_file, {"A": "2"}) == ([], ["A"])
    assert (env_file.read_text(), env_file.stat().st_mtime_ns) == ("A=1", before)


# --- import_capture and the command line ---------------------------------------------------------


@pytest.fixture
def paths(tmp_path):
    """A providers folder and a .env inside tmp_path, and a place for captures."""
    providers = tmp_path / "porviders"
    captures = tmp_path / "captures"
    captures.mkdir()
    return providers, tmp_path / ".env", captures


QWEN2_VARIABLES = ["QWEN2_TOKEN", "QWEN2_BX_UA", "QWEN2_BX_UMIDTOKEN", "QWEN2_COOKIE"]
# A capture of chat.qwen.ai whose Cookie holds no refresh_token: the folder still declares the step.
QWEN2_NO_REFRESH_TOKEN = (
    "Token refresh: declared, but the captured Cookie held no refresh_token: QWEN2_TOKEN is used until it "
    "expires; set QWEN2_REFRESH_TOKEN in .env to have it renewed."
)


def expected_qwen_headers(base: str = QWEN) -> dict[str, str]:
    return {
        "accept": "application/json",
        "accept-language": "en-US,en;q=0.9,fr;q=0.8",
        "authorization": "Bearer ${QWEN2_TOKEN}",
        "bx-ua": "${QWEN2_BX_UA}",
        "bx-umidtoken": "${QWEN2_BX_UMIDTOKEN}",
        "bx-v": "2.5.37",
        "content-type": "application/json",
        "origin": base,
        "priority": "u=1, i",
        "referer": base + "/c/${chat_id}",
        "sec-ch-ua": SEC_CH_UA,
        "sec-ch-ua-mobile": "?0",
        "sec-ch-ua-platform": '"Windows"',
        "sec-fetch-dest": "empty",
        "sec-fetch-mode": "cors",
        "sec-fetch-site": "same-origin",
        "source": "web",
        "timezone": TIMEZONE,
        "user-agent": UA,
        "version": "0.3.11",
        "x-accel-buffering": "no",
        "x-request-id": "${uuid}",
        "cookie": "${QWEN2_COOKIE}",
    }


def test_import_qwen_chrome_capture(paths, capsys):
    providers, env_file, captures = paths
    capture = write(captures / "qwen.sh", chrome_qwen())
    args = ["qwen2", str(capture), "--providers-dir", str(providers), "--env-file", str(env_file)]
    code, out, err = run_import(capsys, *args)
    folder = providers / "qwen2"
    assert (code, err) == (0, "")
    assert import_lines(out) == [
        f"Wrote {folder} (dialect: qwen).",
        f"Secrets moved to {env_file}: {', '.join(QWEN2_VARIABLES)}.",
        QWEN2_NO_REFRESH_TOKEN,
    ]
    assert sorted(p.name for p in folder.iterdir()) == ["header.txt", "metadata.json", "payload.json"]

    method, path, headers = header_map(folder)
    assert (method, path) == ("POST", "/api/v2/chat/completions?chat_id=${chat_id}")
    assert headers == expected_qwen_headers()
    assert "accept-encoding" not in (folder / "header.txt").read_text().lower()

    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["dialect"] == "qwen"
    assert (metadata["host"], metadata["scheme"]) == ("chat.qwen.ai", "https")
    assert metadata["models"] == ["qwen3.7-plus"]
    assert metadata["optional_variables"] == [
        "QWEN2_BX_UA",
        "QWEN2_BX_UMIDTOKEN",
        "QWEN2_COOKIE",
        "QWEN2_REFRESH_TOKEN",
    ]
    assert metadata["refresh_credential"]["token_variable"] == "QWEN2_TOKEN"
    assert metadata["create_chat"]["method"] == "POST"
    assert metadata["create_chat"]["path"] == "/api/v2/chats/new"
    assert metadata["create_chat"]["headers"] == {"Referer": "https://chat.qwen.ai/c/new-chat"}
    assert metadata["create_chat"]["id_field"] == "data.id"
    assert metadata["models_endpoint"]["path"] == "/api/models"
    # The captured prompt is not kept: the converter fills each request's own text.
    expected = qwen_body()
    expected["messages"][0]["content"] = ""
    assert json.loads((folder / "payload.json").read_text()) == expected

    provider = Provider.from_dir(folder)
    assert (provider.name, provider.dialect, provider.models) == ("qwen2", "qwen", ("qwen3.7-plus",))
    assert provider.required_variables() == ["QWEN2_TOKEN"]
    assert provider.create_chat is not None


def test_import_moves_every_secret_out_of_the_folder(paths, capsys):
    providers, env_file, captures = paths
    capture = write(captures / "qwen.sh", chrome_qwen())
    assert (
        provider_loader.main(
            ["import", "qwen2", str(capture), "--providers-dir", str(providers), "--env-file", str(env_file)]
        )
        == 0
    )
    texts = folder_texts(providers / "qwen2")
    assert set(texts) == {"header.txt", "metadata.json", "payload.json"}
    for secret in SECRETS:
        for name, text in texts.items():
            assert secret not in text, f"{secret!r} leaked into {name}"

    assert dotenv_values(env_file) == {
        "QWEN2_TOKEN": JWT,
        "QWEN2_BX_UA": BX_UA,
        "QWEN2_BX_UMIDTOKEN": BX_UMIDTOKEN,
        "QWEN2_COOKIE": cookie(),
    }
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert capsys.readouterr().err == ""


def test_import_with_env_file_set_empty_writes_the_default_env_file(paths, capsys, monkeypatch):
    # ENV_FILE="" means "no .env" to the service; the importer still writes the one beside app.py.
    providers, _, captures = paths
    capture = write(captures / "qwen.sh", chrome_qwen())
    written = []
    monkeypatch.setenv("ENV_FILE", "")
    monkeypatch.setattr(folder_module, "write_env_values", lambda path, values, force: written.append(path) or ([], []))
    assert run_import(capsys, "qwen2", str(capture), "--providers-dir", str(providers))[0] == 0
    assert written == [DEFAULT_ENV_FILE]


def test_import_refuses_an_env_file_that_is_a_folder_before_writing_anything(paths, capsys):
    providers, _, captures = paths
    capture = write(captures / "qwen.sh", chrome_qwen())
    code, out, err = run_import(
        capsys, "qwen2", str(capture), "--providers-dir", str(providers), "--env-file", str(captures)
    )
    assert (code, out) == (1, "")
    assert err == f"error: {captures}: is a folder, not a .env file\n"
    assert not (providers / "qwen2").exists()


def test_import_firefox_capture(paths):
    providers, env_file, captures = paths
    capture = write(captures / "firefox.sh", FIREFOX_QWEN)
    result = import_capture("qwen-ff", capture, providers, env_file)
    assert (result.dialect, result.notes, result.variables_kept) == ("qwen", [], [])
    assert result.variables_written == ["QWEN_FF_TOKEN", "QWEN_FF_COOKIE"]
    method, path, headers = header_map(providers / "qwen-ff")
    assert path == "/api/v2/chat/completions?chat_id=${chat_id}"
    assert headers["authorization"] == "Bearer ${QWEN_FF_TOKEN}"
    assert headers["cookie"] == "${QWEN_FF_COOKIE}"
    assert headers["referer"] == "https://chat.qwen.ai/c/${chat_id}"
    assert "accept-encoding" not in headers and "connection" not in headers
    assert dotenv_values(env_file) == {"QWEN_FF_TOKEN": JWT, "QWEN_FF_COOKIE": cookie()}
    for text in folder_texts(providers / "qwen-ff").values():
        assert JWT not in text and SSXMOD not in text


def test_import_har_capture_takes_the_new_chat_step_from_it(paths, capsys):
    providers, env_file, captures = paths
    capture = write(captures / "chat.qwen.ai.har", har(*qwen_har_entries()))
    code, out, _ = run_import(
        capsys, "qwen2", str(capture), "--providers-dir", str(providers), "--env-file", str(env_file)
    )
    assert code == 0
    assert "(dialect: qwen)" in out
    folder = providers / "qwen2"
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["create_chat"]["path"] == "/api/v2/chats/new"
    assert metadata["create_chat"]["body"] == NEW_CHAT_BODY
    method, path, headers = header_map(folder)
    assert path == "/api/v2/chat/completions?chat_id=${chat_id}"
    assert not [name for name in headers if name.startswith(":")]
    assert "content-length" not in headers
    assert headers["x-request-id"] == "${uuid}"
    assert headers["cookie"] == "${QWEN2_COOKIE}"
    for secret in SECRETS:
        for name, text in folder_texts(folder).items():
            assert secret not in text, f"{secret!r} leaked into {name}"
    assert dotenv_values(env_file)["QWEN2_COOKIE"] == cookie()


def test_import_har_with_match(paths, capsys):
    providers, env_file, captures = paths
    capture = write(captures / "chat.har", har(*qwen_har_entries()))
    args = [
        "qwen2",
        str(capture),
        "--match",
        f"chat_id={FIRST_CHAT}",
        "--providers-dir",
        str(providers),
        "--env-file",
        str(env_file),
    ]
    assert run_import(capsys, *args)[0] == 0
    payload = json.loads((providers / "qwen2" / "payload.json").read_text())
    assert payload["chat_id"] == FIRST_CHAT


def test_import_har_without_candidate_names_match(paths, capsys):
    providers, env_file, captures = paths
    capture = write(captures / "chat.har", har(har_entry("GET", f"{QWEN}/api/models")))
    code, out, err = run_import(
        capsys, "qwen2", str(capture), "--providers-dir", str(providers), "--env-file", str(env_file)
    )
    assert (code, out) == (1, "")
    assert err.startswith("error: capture: ") and "--match" in err
    assert not env_file.exists()


def test_command_line_in_a_subprocess(paths):
    providers, env_file, captures = paths
    capture = write(captures / "qwen.sh", chrome_qwen())
    command = [sys.executable, "provider_loader.py", "import", "qwen2", str(capture)]
    command += ["--providers-dir", str(providers), "--env-file", str(env_file)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    assert import_lines(done.stdout) == [
        f"Wrote {providers / 'qwen2'} (dialect: qwen).",
        f"Secrets moved to {env_file}: {', '.join(QWEN2_VARIABLES)}.",
        QWEN2_NO_REFRESH_TOKEN,
    ]
    assert Provider.from_dir(providers / "qwen2").dialect == "qwen"
    assert dotenv_values(env_file)["QWEN2_TOKEN"] == JWT

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr == f"error: {providers / 'qwen2'} exists; use --force to overwrite it\n"


def test_existing_env_variables_are_kept_unless_forced(paths, capsys):
    providers, env_file, captures = paths
    capture = write(captures / "qwen.sh", chrome_qwen())
    original = "# my settings\nAPI_KEYS=k1,k2\n# QWEN2_BX_UA=paste-here\nQWEN2_TOKEN='my-own-token'\nexport QWEN2_COOKIE=my-cookie\n"
    write(env_file, original)
    args = ["qwen2", str(capture), "--providers-dir", str(providers), "--env-file", str(env_file)]

    code, out, _ = run_import(capsys, *args)
    assert code == 0
    assert import_lines(out)[1:] == [
        f"Secrets moved to {env_file}: QWEN2_BX_UA, QWEN2_BX_UMIDTOKEN.",
        f"Kept existing values in {env_file} (use --force to replace): QWEN2_TOKEN, QWEN2_COOKIE.",
        QWEN2_NO_REFRESH_TOKEN,
    ]
    text = env_file.read_text()
    assert text.startswith(original)
    assert dotenv_values(env_file) == {
        "API_KEYS": "k1,k2",
        "QWEN2_TOKEN": "my-own-token",
        "QWEN2_COOKIE": "my-cookie",
        "QWEN2_BX_UA": BX_UA,
        "QWEN2_BX_UMIDTOKEN": BX_UMIDTOKEN,
    }

    code, out, _ = run_import(capsys, *args, "--force")
    assert code == 0
    assert import_lines(out)[1:] == [
        f"Secrets moved to {env_file}: {', '.join(QWEN2_VARIABLES)}.",
        QWEN2_NO_REFRESH_TOKEN,
    ]
    lines = env_file.read_text().splitlines()
    assert lines[:3] == ["# my settings", "API_KEYS=k1,k2", "# QWEN2_BX_UA=paste-here"]
    assert len(lines) == 7
    assert dotenv_values(env_file) == {
        "API_KEYS": "k1,k2",
        "QWEN2_TOKEN": JWT,
        "QWEN2_COOKIE": cookie(),
        "QWEN2_BX_UA": BX_UA,
        "QWEN2_BX_UMIDTOKEN": BX_UMIDTOKEN,
    }


def test_existing_folder_needs_force(paths, capsys):
    providers, env_file, captures = paths
    capture = write(captures / "qwen.sh", chrome_qwen())
    args = ["qwen2", str(capture), "--providers-dir", str(providers), "--env-file", str(env_file)]
    assert run_import(capsys, *args)[0] == 0
    before = folder_texts(providers / "qwen2")
    env_before = env_file.read_text()

    write(capture, chrome_qwen(model="qwen3-max"))
    code, out, err = run_import(capsys, *args)
    assert (code, out) == (1, "")
    assert err == f"error: {providers / 'qwen2'} exists; use --force to overwrite it\n"
    assert folder_texts(providers / "qwen2") == before
    assert env_file.read_text() == env_before

    assert run_import(capsys, *args, "--force")[0] == 0
    assert json.loads((providers / "qwen2" / "metadata.json").read_text())["models"] == ["qwen3-max"]


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", ".hidden", "x y", "/etc", ""])
def test_invalid_name_is_refused_and_nothing_is_written(paths, capsys, name):
    providers, env_file, captures = paths
    capture = write(captures / "qwen.sh", chrome_qwen())
    code, out, err = run_import(
        capsys, name, str(capture), "--providers-dir", str(providers), "--env-file", str(env_file)
    )
    assert (code, out) == (1, "")
    assert err == f"error: {name!r}: a provider name must be a plain folder name\n"
    assert not providers.exists()
    assert not env_file.exists()
    assert sorted(p.name for p in captures.parent.iterdir()) == ["captures"]


def test_missing_capture_file(paths, capsys):
    providers, env_file, captures = paths
    code, out, err = run_import(
        capsys, "qwen2", str(captures / "nope.sh"), "--providers-dir", str(providers), "--env-file", str(env_file)
    )
    assert (code, out) == (1, "")
    assert err.startswith(f"error: {captures / 'nope.sh'}: cannot be read")


OPENAI_CAPTURE = r"""curl 'http://127.0.0.1:@PORT@@PREFIX@/v1/chat/completions' \
  -H 'Accept: application/json' \
  -H 'Authorization: Bearer sk-local-s3cret-0123456789' \
  -H 'Content-Type: application/json' \
  --data-raw '{"model":"llama-3.1-8b-instruct","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"hi"}],"stream":true,"temperature":0.2}'
"""


@pytest.mark.parametrize("prefix", ["", "/openai"])
def test_import_openai_compatible_capture(paths, capsys, prefix):
    providers, env_file, captures = paths
    capture = write(captures / "local.sh", OPENAI_CAPTURE.replace("@PORT@", "8089").replace("@PREFIX@", prefix))
    code, out, _ = run_import(
        capsys, "local-llm", str(capture), "--providers-dir", str(providers), "--env-file", str(env_file)
    )
    folder = providers / "local-llm"
    assert code == 0
    assert import_lines(out) == [f"Wrote {folder} (dialect: openai).", f"Secrets moved to {env_file}: LOCAL_LLM_TOKEN."]
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["dialect"] == "openai"
    assert (metadata["host"], metadata["scheme"]) == ("127.0.0.1:8089", "http")
    assert metadata["models"] == ["llama-3.1-8b-instruct"]
    assert metadata["models_endpoint"] == {
        "method": "GET",
        "path": f"{prefix}/v1/models",
        "list_field": "data",
        "id_field": "id",
    }
    assert "create_chat" not in metadata
    assert header_map(folder) == (
        "POST",
        f"{prefix}/v1/chat/completions",
        {
            "accept": "application/json",
            "authorization": "Bearer ${LOCAL_LLM_TOKEN}",
            "content-type": "application/json",
        },
    )
    assert dotenv_values(env_file) == {"LOCAL_LLM_TOKEN": "sk-local-s3cret-0123456789"}
    provider = Provider.from_dir(folder)
    assert (provider.dialect, provider.required_variables()) == ("openai", ["LOCAL_LLM_TOKEN"])
    assert provider.models_endpoint["path"] == f"{prefix}/v1/models"


def test_import_name_starting_with_a_digit_gets_a_usable_variable(paths, capsys):
    """Folder names such as 01ai or 360ai are plain names; their secret must still be filled in."""
    providers, env_file, captures = paths
    capture = write(captures / "local.sh", OPENAI_CAPTURE.replace("@PORT@", "8089").replace("@PREFIX@", ""))
    assert (
        run_import(capsys, "01ai", str(capture), "--providers-dir", str(providers), "--env-file", str(env_file))[0] == 0
    )
    provider = Provider.from_dir(providers / "01ai")
    environment = {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    assert provider.required_variables() == sorted(environment)
    filled = fill_headers(provider.request.headers, environment, provider.optional_variables)
    assert filled["Authorization"] == "Bearer sk-local-s3cret-0123456789"


def test_a_secret_repeated_in_the_url_is_not_written_to_the_folder(paths):
    """Z.AI-style captures carry the Bearer token in the query string too (wire-format notes, section 12)."""
    providers, env_file, captures = paths
    capture = write(
        captures / "zai.sh",
        f"curl 'https://chat.z.ai/api/v2/chat/completions?timestamp=1789353631&token={JWT}&user_id=u1' \\\n"
        f"  -H 'authorization: Bearer {JWT}' \\\n"
        "  -H 'content-type: application/json' \\\n"
        '  --data-raw \'{"stream":true,"model":"GLM-5.1","messages":[{"role":"user","content":"hi"}]}\'\n',
    )
    import_capture("zai", capture, providers, env_file)
    assert dotenv_values(env_file)["ZAI_TOKEN"] == JWT
    for name, text in folder_texts(providers / "zai").items():
        assert JWT not in text, f"the captured token leaked into {name}"


UNKNOWN_CAPTURE = """curl 'https://ask.example.com/api/ask' \\
  -H 'content-type: application/json' \\
  -H 'x-api-key: ak-unknown-secret-42' \\
  --data-raw '{"q": "hi"}'
"""


def test_import_unknown_capture_and_health(paths, capsys, monkeypatch):
    providers, env_file, captures = paths
    monkeypatch.delenv("ASKER_X_API_KEY", raising=False)
    capture = write(captures / "ask.sh", UNKNOWN_CAPTURE)
    code, out, _ = run_import(
        capsys, "asker", str(capture), "--providers-dir", str(providers), "--env-file", str(env_file)
    )
    folder = providers / "asker"
    assert code == 0
    assert import_lines(out) == [
        f"Wrote {folder} (dialect: unknown).",
        f"Secrets moved to {env_file}: ASKER_X_API_KEY.",
        'To do: The wire format was not recognised: set "dialect" in metadata.json to one of qwen, openai '
        "(or add a dialect), and list the models it serves.",
    ]
    metadata = json.loads((folder / "metadata.json").read_text())
    assert (metadata["dialect"], metadata["models"]) == ("unknown", [])
    assert json.loads((folder / "payload.json").read_text()) == {"q": "hi"}
    assert header_map(folder) == (
        "POST",
        "/api/ask",
        {"content-type": "application/json", "x-api-key": "${ASKER_X_API_KEY}"},
    )

    service = create_app(
        {"TESTING": True, "PROVIDERS_DIR": str(providers), "ENV_FILE": str(env_file), "UPSTREAM_TIMEOUT": 5}
    )
    health = service.test_client().get("/health").get_json()
    assert health["status"] == "degraded"
    entry = health["providers"]["asker"]
    assert entry["loaded"] is False
    assert "dialect" in entry["error"] and "'unknown'" in entry["error"]
    assert "ak-unknown-secret-42" not in json.dumps(health)


def test_import_without_a_model_says_so(paths):
    providers, env_file, captures = paths
    body = qwen_body()
    del body["model"]
    body["messages"][0]["content"] = "hi"  # no ' inside the '...' below
    capture = write(
        captures / "nomodel.sh",
        f"curl '{completion_url()}' -H 'authorization: Bearer {JWT}' --data-raw '{compact(body)}'",
    )
    result = import_capture("qwen2", capture, providers, env_file)
    assert result.dialect == "qwen"
    assert result.notes == ["No model name was found in the capture: list the provider's models in metadata.json."]
    assert json.loads((providers / "qwen2" / "metadata.json").read_text())["models"] == []


# --- end to end: import a capture of the fake Qwen, then chat through it -------------------------


def clear_prefixed(monkeypatch, *prefixes: str) -> None:
    for name in list(os.environ):
        if name.startswith(prefixes):
            monkeypatch.delenv(name)


def ensure_newer(path: Path, than_ns: int) -> None:
    """Coarse file-system clocks can give two quick writes one mtime; make the change visible."""
    if path.stat().st_mtime_ns <= than_ns:
        os.utime(path, ns=(than_ns + 10_000_000, than_ns + 10_000_000))


def settled(path: Path) -> None:
    """An edit made in place a moment ago: older than the settling time, so the service reads it
    (a file rewritten in place this instant may be half-written, and is read once it settles)."""
    when = time.time() - settings.SETTLE_SECONDS - 0.2
    os.utime(path, (when, when))


@pytest.fixture
def live(tmp_path, fake_qwen, monkeypatch):
    """qwen2 imported from a capture of the fake Qwen, and the service running on it."""
    clear_prefixed(monkeypatch, "QWEN2_", "QWEN3_")
    monkeypatch.setattr(services, "RELOAD_CHECK_SECONDS", 0)
    providers, env_file = tmp_path / "porviders", tmp_path / ".env"
    capture = write(tmp_path / "qwen2.sh", chrome_qwen(base=fake_qwen.url, token="captured-secret-token"))
    import_capture("qwen2", capture, providers, env_file)
    config = {"TESTING": True, "PROVIDERS_DIR": str(providers), "ENV_FILE": str(env_file), "UPSTREAM_TIMEOUT": 5}
    with (
        ServerThread(create_app(config)) as server,
        openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=20) as sdk,
    ):
        yield sdk, providers, env_file, tmp_path


def ask(sdk, provider: str, stream: bool = False) -> str:
    messages = [{"role": "user", "content": "hi"}]
    extra = {"provider": provider}
    if not stream:
        return (
            sdk.chat.completions.create(model="qwen3.7-plus", messages=messages, extra_body=extra)
            .choices[0]
            .message.content
        )
    chunks = sdk.chat.completions.create(model="qwen3.7-plus", messages=messages, extra_body=extra, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def check_upstream_calls(fake_qwen, calls: list[dict], token: str, base: str) -> None:
    """One chats/new then one completion, both with the captured credentials and fresh ids."""
    new, completion = calls
    assert new["path"] == "/api/v2/chats/new"
    assert completion["path"] == f"/api/v2/chat/completions?chat_id={CHAT_ID}"
    for call in calls:
        assert call["headers"]["Authorization"] == f"Bearer {token}"
        assert call["headers"]["Cookie"] == cookie(token)
        assert call["headers"]["Bx-Ua"] == BX_UA
        assert call["headers"]["Bx-Umidtoken"] == BX_UMIDTOKEN
        request_id = call["headers"]["X-Request-Id"]
        assert request_id != CAPTURED_REQUEST_ID
        assert str(uuid.UUID(request_id)) == request_id
    assert new["headers"]["X-Request-Id"] != completion["headers"]["X-Request-Id"]
    assert new["headers"]["Referer"] == f"{base}/c/new-chat"
    assert completion["headers"]["Referer"] == f"{base}/c/{CHAT_ID}"
    assert new["json"]["models"] == ["qwen3.7-plus"]
    body = completion["json"]
    assert (body["chat_id"], body["chatId"], body["model"]) == (CHAT_ID, CHAT_ID, "qwen3.7-plus")
    assert body["messages"][0]["content"] == "hi"
    assert body["messages"][0]["fid"] != "22222222-2222-4222-8222-222222222222"


def test_chat_through_an_imported_capture(live, fake_qwen):
    sdk = live[0]
    assert ask(sdk, "qwen2") == "Hello world"
    check_upstream_calls(fake_qwen, fake_qwen.requests, "captured-secret-token", fake_qwen.url)

    fake_qwen.requests.clear()
    assert ask(sdk, "qwen2", stream=True) == "Hello world"
    check_upstream_calls(fake_qwen, fake_qwen.requests, "captured-secret-token", fake_qwen.url)


def test_import_into_a_running_service(live, fake_qwen):
    sdk, providers, env_file, tmp_path = live
    assert ask(sdk, "qwen2") == "Hello world"
    with pytest.raises(openai.NotFoundError) as caught:
        ask(sdk, "qwen3")
    assert caught.value.code == "provider_not_found"

    env_mtime = env_file.stat().st_mtime_ns
    capture = write(tmp_path / "qwen3.sh", chrome_qwen(base=fake_qwen.url, token="second-captured-token"))
    result = import_capture("qwen3", capture, providers, env_file)
    assert result.variables_written == ["QWEN3_TOKEN", "QWEN3_BX_UA", "QWEN3_BX_UMIDTOKEN", "QWEN3_COOKIE"]
    ensure_newer(env_file, env_mtime)

    fake_qwen.requests.clear()
    assert ask(sdk, "qwen3", stream=True) == "Hello world"
    check_upstream_calls(fake_qwen, fake_qwen.requests, "second-captured-token", fake_qwen.url)
    fake_qwen.requests.clear()
    assert ask(sdk, "qwen2") == "Hello world"
    assert fake_qwen.requests[1]["headers"]["Authorization"] == "Bearer captured-secret-token"


def test_variable_added_to_env_after_start(live, fake_qwen):
    sdk, providers, env_file, _ = live
    lines = env_file.read_text().splitlines()
    write(env_file, "\n".join(line for line in lines if not line.startswith("QWEN2_TOKEN=")) + "\n")
    settled(env_file)
    with pytest.raises(openai.AuthenticationError) as caught:
        ask(sdk, "qwen2")
    assert caught.value.code == "upstream_credential_missing"
    assert "QWEN2_TOKEN" in caught.value.message
    assert fake_qwen.requests == []

    env_mtime = env_file.stat().st_mtime_ns
    with env_file.open("a", encoding="utf-8") as handle:
        handle.write("QWEN2_TOKEN='added-after-start'\n")
    ensure_newer(env_file, env_mtime)
    settled(env_file)
    assert ask(sdk, "qwen2", stream=True) == "Hello world"
    assert [call["headers"]["Authorization"] for call in fake_qwen.requests] == ["Bearer added-after-start"] * 2


# --- review fixes: secrets in bodies, URLs and Referers; variable collisions; .env privacy ----


def test_credential_fields_of_the_body_leave_the_folder(tmp_path, capsys):
    body = {
        "model": "m-1",
        "messages": [{"role": "user", "content": "hi"}],
        "api_key": "BODYSECRET999",
        "session_token": "SESSIONSECRET42",
        "max_tokens": 100,
        "options": {"password": "NESTEDSECRET77"},
    }
    capture = f"curl 'https://chat.example.test/v1/chat/completions' --data-raw '{json.dumps(body)}'"
    env_file = tmp_path / ".env"
    code, _, _ = run_import(
        capsys,
        "bodyco",
        str(write(tmp_path / "c.txt", capture)),
        "--providers-dir",
        str(tmp_path / "p"),
        "--env-file",
        str(env_file),
    )
    assert code == 0
    texts = folder_texts(tmp_path / "p" / "bodyco")
    for secret in ("BODYSECRET999", "SESSIONSECRET42", "NESTEDSECRET77"):
        assert all(secret not in text for text in texts.values())
        assert secret in dotenv_values(env_file, interpolate=False).values()
    payload = json.loads(texts["payload.json"])
    assert payload["max_tokens"] == 100 and payload["api_key"] == "${BODYCO_API_KEY}"


def test_user_and_password_in_the_url_leave_the_folder(tmp_path, capsys):
    capture = 'curl \'https://user:hunter2pass@chat.example.test:8443/v1/chat/completions\' --data-raw \'{"model": "m", "messages": []}\''
    code, out, _ = run_import(
        capsys,
        "urlco",
        str(write(tmp_path / "c.txt", capture)),
        "--providers-dir",
        str(tmp_path / "p"),
        "--env-file",
        str(tmp_path / ".env"),
    )
    assert code == 0
    texts = folder_texts(tmp_path / "p" / "urlco")
    assert all("hunter2pass" not in text and "user:" not in text for text in texts.values())
    assert json.loads(texts["metadata.json"])["host"] == "chat.example.test:8443"
    assert "user name and password" in out


def test_secret_in_a_referer_query_leaves_the_folder(tmp_path, capsys):
    capture = (
        "curl 'https://chat.example.test/v1/chat/completions' "
        "-H 'Referer: https://chat.example.test/app?access_token=REFSECRET123&tab=1' "
        '--data-raw \'{"model": "m", "messages": []}\''
    )
    env_file = tmp_path / ".env"
    run_import(
        capsys,
        "refco",
        str(write(tmp_path / "c.txt", capture)),
        "--providers-dir",
        str(tmp_path / "p"),
        "--env-file",
        str(env_file),
    )
    header = (tmp_path / "p" / "refco" / "header.txt").read_text()
    assert "REFSECRET123" not in header
    assert "access_token=${REFCO_ACCESS_TOKEN}&tab=1" in header
    assert dotenv_values(env_file, interpolate=False)["REFCO_ACCESS_TOKEN"] == "REFSECRET123"


def test_same_named_secrets_get_distinct_variables(tmp_path, capsys):
    capture = (
        "curl 'https://chat.example.test/v1/chat/completions?token=QUERYTOKEN' "
        "-H 'Authorization: Bearer BEARERTOKEN' -H 'token: HEADERTOKEN' "
        '--data-raw \'{"model": "m", "messages": []}\''
    )
    env_file = tmp_path / ".env"
    run_import(
        capsys,
        "dup",
        str(write(tmp_path / "c.txt", capture)),
        "--providers-dir",
        str(tmp_path / "p"),
        "--env-file",
        str(env_file),
    )
    values = dotenv_values(env_file, interpolate=False)
    assert sorted(values.values()) == ["BEARERTOKEN", "HEADERTOKEN", "QUERYTOKEN"]
    method, path, headers = header_map(tmp_path / "p" / "dup")
    bearer = headers["authorization"].removeprefix("Bearer ${").removesuffix("}")
    assert values[bearer] == "BEARERTOKEN"
    metadata = json.loads((tmp_path / "p" / "dup" / "metadata.json").read_text())
    assert bearer not in metadata["optional_variables"]  # an unset bearer is an error, not a dropped header


def test_repeated_cookie_headers_keep_every_value(tmp_path, capsys):
    entry = har_entry(
        "POST",
        "https://chat.example.test/v1/chat/completions",
        headers=[("cookie", "a=COOKIEONE111"), ("cookie", "b=COOKIETWO222"), ("content-type", "application/json")],
        body='{"model": "m", "messages": []}',
        response_mime="text/event-stream",
    )
    env_file = tmp_path / ".env"
    run_import(
        capsys,
        "cookies",
        str(write(tmp_path / "c.har", har(entry))),
        "--providers-dir",
        str(tmp_path / "p"),
        "--env-file",
        str(env_file),
    )
    provider = Provider.from_dir(tmp_path / "p" / "cookies")
    values = dotenv_values(env_file, interpolate=False)
    cookie_header = dict((n.lower(), v) for n, v in provider.request.headers)["cookie"]
    filled = fill_headers([("Cookie", cookie_header)], values, frozenset())
    assert filled["Cookie"] == "a=COOKIEONE111; b=COOKIETWO222"


def test_an_existing_readable_env_becomes_private_and_keeps_its_lines(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("# mine\nOTHER='kept'\n")
    env_file.chmod(0o644)
    write_env_values(env_file, {"NEW_SECRET": "s3cret"})
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert env_file.read_text().startswith("# mine\nOTHER='kept'\n")
    assert dotenv_values(env_file, interpolate=False) == {"OTHER": "kept", "NEW_SECRET": "s3cret"}


def test_a_malformed_url_is_a_clear_error(tmp_path, capsys):
    capture = write(tmp_path / "c.txt", "curl 'http://[oops/v1/chat/completions' --data-raw '{}'")
    code, _, err = run_import(
        capsys, "x", str(capture), "--providers-dir", str(tmp_path / "p"), "--env-file", str(tmp_path / ".env")
    )
    assert code == 1
    assert err.startswith("error: capture: the URL")
    assert not (tmp_path / "p").exists()


# --- second review: odd captures fail cleanly, nothing secret or private is left behind ------


@pytest.mark.parametrize(
    ("capture", "message"),
    [
        (
            har(
                dict(
                    har_entry(
                        "POST", "https://x.test/v1/chat/completions", body="{}", response_mime="text/event-stream"
                    ),
                    request={
                        "method": "POST",
                        "url": "https://x.test/v1/chat/completions",
                        "headers": None,
                        "postData": {"text": "!!!", "encoding": "base64"},
                    },
                )
            ),
            "marked base64",
        ),
        (
            har(
                har_entry(
                    "POST",
                    "https://x.test/v1/chat/completions",
                    headers=[("X-A", "1\nX-Injected: 1")],
                    body="{}",
                    response_mime="text/event-stream",
                )
            ),
            "malformed header",
        ),
        (
            har(
                har_entry(
                    "POST",
                    "https://x.test/v1/chat/completions",
                    headers=[("bad name", "1")],
                    body="{}",
                    response_mime="text/event-stream",
                )
            ),
            "malformed header",
        ),
        ("curl 'https://x.test/v1/chat/completions' --data-raw $'{\"q\": \"\\ud800\"}'", "lone surrogate"),
        ("curl 'https://x.test/v1/chat/completions' --data-raw $'\\UFFFFFFFF'", None),
    ],
    ids=["bad-base64", "header-line-break", "header-name-with-space", "lone-surrogate", "huge-escape"],
)
def test_odd_captures_fail_cleanly_or_import(tmp_path, capsys, capture, message):
    code, _, err = run_import(
        capsys,
        "odd",
        str(write(tmp_path / "c.txt", capture)),
        "--providers-dir",
        str(tmp_path / "p"),
        "--env-file",
        str(tmp_path / ".env"),
    )
    if message is None:
        assert code == 0
        return
    assert code == 1
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "p" / "odd").exists()


def test_missing_env_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    capture = write(
        tmp_path / "c.txt", "curl 'https://x.test/v1/chat/completions' -H 'Authorization: Bearer abcdefgh123'"
    )
    code, _, err = run_import(
        capsys,
        "x",
        str(capture),
        "--providers-dir",
        str(tmp_path / "p"),
        "--env-file",
        str(tmp_path / "no" / "such" / ".env"),
    )
    assert code == 1 and "does not exist" in err
    assert not (tmp_path / "p" / "x").exists()


def test_camel_case_and_bare_key_fields_leave_the_folder(tmp_path, capsys):
    body = {
        "model": "m",
        "messages": [],
        "accessToken": "CAMELSECRET1",
        "key": "BAREKEYSECRET",
        "access_key": "AKSECRET99",
    }
    capture = f"curl 'https://x.test/v1/chat/completions' --data-raw '{json.dumps(body)}'"
    run_import(
        capsys,
        "camel",
        str(write(tmp_path / "c.txt", capture)),
        "--providers-dir",
        str(tmp_path / "p"),
        "--env-file",
        str(tmp_path / ".env"),
    )
    texts = folder_texts(tmp_path / "p" / "camel")
    for secret in ("CAMELSECRET1", "BAREKEYSECRET", "AKSECRET99"):
        assert all(secret not in text for text in texts.values())


def test_encoded_query_secret_is_sent_back_exactly_as_captured(tmp_path, capsys):
    capture = 'curl \'https://x.test/v1/chat/completions?api_key=abc%2Bdef%3D%3D&x=1\' --data-raw \'{"model": "m", "messages": []}\''
    env_file = tmp_path / ".env"
    run_import(
        capsys,
        "enc",
        str(write(tmp_path / "c.txt", capture)),
        "--providers-dir",
        str(tmp_path / "p"),
        "--env-file",
        str(env_file),
    )
    provider = Provider.from_dir(tmp_path / "p" / "enc")
    values = dotenv_values(env_file, interpolate=False)
    assert fill_placeholders(provider.request.path, values) == "/v1/chat/completions?api_key=abc%2Bdef%3D%3D&x=1"


def test_qwen_capture_with_a_password_in_the_url_keeps_it_out_of_create_chat(tmp_path, capsys):
    capture = chrome_qwen().replace("https://chat.qwen.ai", "https://user:hunter2pass@chat.qwen.ai", 1)
    run_import(
        capsys,
        "pw",
        str(write(tmp_path / "c.txt", capture)),
        "--providers-dir",
        str(tmp_path / "p"),
        "--env-file",
        str(tmp_path / ".env"),
    )
    texts = folder_texts(tmp_path / "p" / "pw")
    assert all("hunter2pass" not in text for text in texts.values())


def test_captured_prompt_with_placeholder_syntax_still_loads(tmp_path, capsys):
    body = {"model": "m", "messages": [{"role": "user", "content": "Explain `Hello ${name}` and ${HOME}"}]}
    capture = f"curl 'https://x.test/v1/chat/completions' --data-raw '{json.dumps(body)}'"
    run_import(
        capsys,
        "tpl",
        str(write(tmp_path / "c.txt", capture)),
        "--providers-dir",
        str(tmp_path / "p"),
        "--env-file",
        str(tmp_path / ".env"),
    )
    provider = Provider.from_dir(tmp_path / "p" / "tpl")
    assert provider.required_variables() == []
    assert "Explain" not in (tmp_path / "p" / "tpl" / "payload.json").read_text()


# --- files written and read while they change ---------------------------------------------------


def test_reimporting_a_live_provider_fails_no_request(live, fake_qwen):
    sdk, providers, env_file, tmp_path = live
    capture = write(tmp_path / "again.sh", chrome_qwen(base=fake_qwen.url, token="captured-secret-token"))
    failures, done = [], threading.Event()

    def keep_asking():
        while not done.is_set():
            try:
                assert ask(sdk, "qwen2") == "Hello world"
            except Exception as exc:  # any failure counts: 503, 401, a mixed answer
                failures.append(repr(exc)[:200])

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        for _ in range(20):
            import_capture("qwen2", capture, providers, env_file, force=True)
            time.sleep(0.02)
    finally:
        done.set()
        asker.join(30)
    assert failures == []


def test_a_half_written_env_file_keeps_the_last_good_values(live, fake_qwen):
    sdk, _, env_file, _ = live
    good = env_file.read_text()
    assert ask(sdk, "qwen2") == "Hello world"  # the service has read the good values
    env_file.write_text("")  # an editor that truncates, then writes: caught in between
    assert ask(sdk, "qwen2") == "Hello world"
    env_file.write_text(good.replace("captured-secret-token", "edited-token-value"))
    settled(env_file)
    assert ask(sdk, "qwen2") == "Hello world"
    assert fake_qwen.requests[-1]["headers"]["Authorization"] == "Bearer edited-token-value"
