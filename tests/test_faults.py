"""Upstream faults at the byte level: refused, stalled, cut, reset, garbage, HTML, huge lines, bad UTF-8,
and clients that leave mid-stream. After each fault the service must still answer.

The upstream here is ``tests.raw_upstream.RawUpstream``, a raw-socket fake Qwen scripted per connection;
the service is the real app served on a loopback port.
"""

from __future__ import annotations

import json
import random
import socket
import time
from contextlib import ExitStack

import openai
import pytest
import requests

from app import create_app
from tests.conftest import SHIPPED_QWEN, TOKEN, copy_provider
from tests.fake_qwen import RESPONSE_ID, ServerThread, created_frame, delta_frame, keep_alive_frame, usage
from tests.raw_upstream import RawUpstream, head, sse_head, whole

MESSAGES = [{"role": "user", "content": "hi"}]
STREAM = pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])

WAF_PAGE = (
    b"<!doctypehtml><html><head><meta charset=utf-8><script>var aliyun_waf_aa='f3a1';"
    b"location.reload()</script></head><body>Checking your browser</body></html>"
)
NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
FIVE_MB = 5 * 1024 * 1024
CLOSED_EARLY = "The upstream closed the stream before the reply finished."


# --- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
def raw():
    with RawUpstream() as upstream:
        yield upstream
    assert upstream.errors == []


@pytest.fixture
def serve(tmp_path, qwen_token):
    """``serve(host, timeout=3.0, **more)``: the app on a loopback port, provider ``qwen`` at ``host``.

    ``more`` adds provider folders (name=host), reachable with the request's ``provider`` field.
    """
    with ExitStack() as stack:
        count = 0

        def start(host: str, timeout: float = 3.0, **more: str) -> str:
            nonlocal count
            count += 1
            root = tmp_path / f"porviders{count}"
            root.mkdir()
            for name, where in {"qwen": host, **more}.items():
                copy_provider(SHIPPED_QWEN, root / name, host=where, scheme="http")
            app = create_app({"TESTING": True, "PROVIDERS_DIR": str(root), "UPSTREAM_TIMEOUT": timeout})
            stack.callback(_close_sessions, app)
            return stack.enter_context(ServerThread(app)).url

        yield start


def _close_sessions(app) -> None:
    app.extensions["reverse_api"].upstream.close()


def chat(url: str, stream: bool = False, timeout: float = 15.0, **extra) -> requests.Response:
    body = {"model": "qwen3.7-plus", "messages": MESSAGES, "stream": stream, **extra}
    return requests.post(url + "/v1/chat/completions", json=body, timeout=timeout)


def timed_chat(url: str, stream: bool = False, **extra) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = chat(url, stream, **extra)
    return response, time.monotonic() - started


def sse_events(body: bytes) -> list:
    """Each event of a stream: a dict for JSON data, ``"[DONE]"``, or the comment text."""
    assert body.endswith(b"\n\n"), body[-200:]
    events: list = []
    for block in body[:-2].split(b"\n\n"):
        if block.startswith(b":"):
            events.append(block.decode())
            continue
        assert block.startswith(b"data: ") and b"\n" not in block, block[:200]
        data = block[len(b"data: ") :]
        events.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return events


def chunk_content(events: list) -> str:
    return "".join(
        (e["choices"][0]["delta"].get("content") or "") for e in events if isinstance(e, dict) and e.get("choices")
    )


def error_body(message: str, code: str) -> dict:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": code}}


def assert_json_error(
    response: requests.Response, status: int, code: str | tuple[str, ...], message: str | None = None
) -> dict:
    """A real HTTP error status with an OpenAI error body, before any stream byte.

    ``code`` is the exact code, or a tuple of the codes accepted where the README leaves it open.
    """
    assert response.status_code == status, response.text[:500]
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("server_error", None)
    assert error["code"] in code if isinstance(code, tuple) else error["code"] == code
    if message is not None:
        assert error["message"] == message
    assert TOKEN not in response.text
    return error


def assert_stream_fault(response: requests.Response, content: str, message: str, code: str) -> None:
    """Content so far, then one error event, then [DONE]; never a finish_reason before the error.

    A ``message`` ending in ``...`` is a prefix (for messages that name a library's exception type).
    """
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(response.content)
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    if message.endswith("..."):
        assert error["message"].startswith(message[:-3])
        message = error["message"]
    assert events[-2] == error_body(message, code)
    chunks = events[:-2]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(isinstance(c, dict) and "error" not in c for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * len(chunks)
    assert chunk_content(chunks) == content
    assert TOKEN.encode() not in response.content


def assert_still_serving(url: str, content: str = "Recovered", **extra) -> None:
    """/health answers and a normal request, streaming and not, succeeds in full."""
    health = requests.get(url + "/health", timeout=5)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    reply = chat(url, **extra)
    assert reply.status_code == 200, reply.text[:500]
    choice = reply.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == (content, "stop")
    streamed = chat(url, stream=True, **extra)
    assert streamed.status_code == 200
    events = sse_events(streamed.content)
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunk_content(events) == content


def sdk_for(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=15)


def sdk_stream_until_error(url: str) -> tuple[str, openai.APIError]:
    """Stream with the real SDK; return the text received before it raised."""
    text = ""
    with sdk_for(url) as sdk, pytest.raises(openai.APIError) as caught:
        for chunk in sdk.chat.completions.create(model="qwen3.7-plus", messages=MESSAGES, stream=True):
            assert chunk.choices[0].finish_reason is None  # a cut reply never looks complete
            text += chunk.choices[0].delta.content or ""
    return text, caught.value


def answer(text: str, n: int) -> bytes:
    return delta_frame("answer", text, use=usage(10, n))


def finished() -> bytes:
    return delta_frame("answer", "", status="finished")


PARTIAL = [sse_head(), created_frame(), answer("Hello", 1), answer(" wor", 2)]


def garbage(size: int, seed: int, newlines: bool = True) -> bytes:
    data = random.Random(seed).randbytes(size)
    if not newlines:
        data = data.replace(b"\n", b"x").replace(b"\r", b"y")
    return data


# --- refused connection ----------------------------------------------------------------------


@STREAM
def test_refused_connection_is_502_unreachable_and_fast(serve, fake_qwen, stream):
    with socket.socket() as closed:  # bound but not listening: connecting is refused at once
        closed.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{closed.getsockname()[1]}"
        url = serve(host, working=fake_qwen.host)  # "qwen" sorts first, so it answers
        response, elapsed = timed_chat(url, stream)
        error = assert_json_error(response, 502, "upstream_unreachable")
        assert error["message"].startswith(f"Could not reach the upstream {host}")
        assert elapsed < 0.5
        assert_still_serving(url, content="Hello world", provider="working")


# --- stalls ------------------------------------------------------------------------------------


@STREAM
def test_hang_before_headers_is_504_within_bound(raw, serve, stream):
    raw.script(["hang"])  # reads the request, never answers
    url = serve(raw.host, timeout=0.5)
    response, elapsed = timed_chat(url, stream)
    assert_json_error(response, 504, "upstream_timeout", "The upstream did not answer within 0.5 s.")
    assert 0.4 < elapsed < 3.0
    hung = raw.completion_connections()[0]
    assert hung.peer_closed.wait(2.0), "the service left the stalled upstream connection open"
    assert_still_serving(url)


def test_hang_on_chat_creation_is_504(raw, serve):
    raw.new_chats.append(["hang"])
    url = serve(raw.host, timeout=0.5)
    response, elapsed = timed_chat(url)
    assert_json_error(response, 504, "upstream_timeout", "The upstream did not answer within 0.5 s.")
    assert elapsed < 3.0
    assert raw.completion_connections() == []
    assert_still_serving(url)


@pytest.mark.parametrize(
    "where",
    ["chat-creation-json", "completion-error-body"],
)
def test_hang_inside_a_length_delimited_answer_is_504(raw, serve, where):
    """Headers, part of the body, then silence: 'no answer within UPSTREAM_TIMEOUT' is a 504."""
    if where == "chat-creation-json":
        raw.new_chats.append([head(200, "application/json", length=200), b'{"success": true, "da', "hang"])
    else:
        raw.script([head(500, "text/plain", length=200), b"Internal", "hang"])
    url = serve(raw.host, timeout=0.5)
    response, elapsed = timed_chat(url)
    assert elapsed < 3.0
    assert_json_error(response, 504, "upstream_timeout")
    assert_still_serving(url)


@STREAM
def test_hang_mid_stream(raw, serve, stream):
    raw.script([*PARTIAL, "hang"])
    url = serve(raw.host, timeout=0.5)
    response, elapsed = timed_chat(url, stream)
    assert elapsed < 3.0
    message = "The upstream stopped sending for 0.5 s."
    if stream:
        assert_stream_fault(response, "Hello wor", message, "upstream_timeout")
    else:
        assert_json_error(response, 504, "upstream_timeout", message)
    assert raw.completion_connections()[0].peer_closed.wait(2.0)
    assert_still_serving(url)


def test_hang_mid_stream_raises_api_error_in_the_sdk(raw, serve):
    raw.script([*PARTIAL, "hang"])
    url = serve(raw.host, timeout=0.5)
    text, error = sdk_stream_until_error(url)
    assert text == "Hello wor"
    assert error.message == "The upstream stopped sending for 0.5 s."
    assert error.body == error_body("The upstream stopped sending for 0.5 s.", "upstream_timeout")["error"]
    assert_still_serving(url)


# --- cuts ----------------------------------------------------------------------------------------


@STREAM
@pytest.mark.parametrize("how", ["close", "reset"])
def test_cut_mid_stream(raw, serve, stream, how):
    raw.script([*PARTIAL, 0.2, how])  # the pause lets the service read the frames before an RST
    url = serve(raw.host)
    response = chat(url, stream)
    if how == "close":
        code, message = "upstream_truncated", CLOSED_EARLY
    else:
        code, message = "upstream_disconnected", "The upstream connection failed mid-reply: ..."
    if stream:
        assert_stream_fault(response, "Hello wor", message, code)
    else:
        error = assert_json_error(response, 502, code)
        assert error["message"].startswith(message.removesuffix("..."))
    assert_still_serving(url)


@pytest.mark.parametrize("how", ["close", "reset"])
def test_cut_mid_stream_raises_api_error_in_the_sdk(raw, serve, how):
    raw.script([*PARTIAL, 0.2, how])
    url = serve(raw.host)
    text, error = sdk_stream_until_error(url)
    assert text == "Hello wor"
    assert error.body["code"] == {"close": "upstream_truncated", "reset": "upstream_disconnected"}[how]
    assert_still_serving(url)


@STREAM
def test_cut_inside_a_frame_is_a_truncation(raw, serve, stream):
    """A TCP cut lands anywhere: half a data line, then FIN, is a cut reply, not upstream garbage."""
    half = answer(" world", 3)[:25]
    assert half == b'data: {"choices": [{"delt'
    raw.script([*PARTIAL, half, 0.1, "close"])
    url = serve(raw.host)
    response = chat(url, stream)
    if stream:
        assert_stream_fault(response, "Hello wor", CLOSED_EARLY, "upstream_truncated")
    else:
        assert_json_error(response, 502, "upstream_truncated", CLOSED_EARLY)
    assert_still_serving(url)


@STREAM
def test_cut_after_headers_before_any_frame_is_502(raw, serve, stream):
    raw.script([sse_head(), "close"])
    url = serve(raw.host)
    response = chat(url, stream)
    assert_json_error(response, 502, "upstream_truncated", CLOSED_EARLY)
    assert_still_serving(url)


@STREAM
@pytest.mark.parametrize("how", ["close", "reset"])
def test_dropped_before_any_answer_is_502(raw, serve, stream, how):
    """Request read, then FIN or RST instead of a status line. The README does not say which of
    its two 502 codes this is (the host was reached but dropped the call), so both are accepted."""
    raw.script([how])
    url = serve(raw.host)
    response, elapsed = timed_chat(url, stream)
    assert_json_error(response, 502, ("upstream_error", "upstream_unreachable"))
    assert elapsed < 1.0
    assert_still_serving(url)


# --- garbage -------------------------------------------------------------------------------------


@STREAM
@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        pytest.param(
            garbage(4096, seed=1),
            "upstream_truncated",
            CLOSED_EARLY,
            id="random-binary",
        ),
        pytest.param(
            b"data: <html>oops</html>\n\n",
            "upstream_error",
            "The upstream sent an unreadable event: '<html>oops</html>'",
            id="data-not-json",
        ),
        pytest.param(
            b"data: \x00\x01\x02\xff\xfe\n\n",
            "upstream_error",
            "The upstream sent an unreadable event: '\\x00\\x01\\x02\ufffd\ufffd'",
            id="data-binary",
        ),
        pytest.param(
            b"data: [1, 2]\n\n",
            "upstream_error",
            "The upstream sent an unexpected event: '[1, 2]'",
            id="data-json-array",
        ),
    ],
)
def test_garbage_first_is_a_json_502(raw, serve, stream, body, code, message):
    raw.script([sse_head(), body, "close"])
    url = serve(raw.host)
    response = chat(url, stream)
    assert_json_error(response, 502, code, message)
    assert_still_serving(url)


@STREAM
def test_garbage_after_content_ends_the_stream_with_an_error(raw, serve, stream):
    raw.script([*PARTIAL, b"data: \x00\x01garbage\n\n", answer("!", 3), finished(), "close"])
    url = serve(raw.host)
    response = chat(url, stream)
    message = "The upstream sent an unreadable event: '\\x00\\x01garbage'"
    if stream:
        assert_stream_fault(response, "Hello wor", message, "upstream_error")
    else:
        assert_json_error(response, 502, "upstream_error", message)
    assert_still_serving(url)


@STREAM
def test_garbage_instead_of_http_is_502_upstream_error(raw, serve, stream):
    """The host was reached and answered, unreadably: README's 'unreadable answers' row, 502
    upstream_error, not 'connection refused / DNS failure' (upstream_unreachable)."""
    raw.script([b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n", "close"])
    url = serve(raw.host)
    response = chat(url, stream)
    assert_json_error(response, 502, "upstream_error")
    assert_still_serving(url)


# --- HTML instead of SSE -------------------------------------------------------------------------


@STREAM
def test_waf_html_page_is_503_browser_check(raw, serve, stream):
    raw.script([whole(200, "text/html; charset=utf-8", WAF_PAGE), "close"])
    url = serve(raw.host)
    response = chat(url, stream)
    error = assert_json_error(response, 503, "upstream_browser_check")
    assert error["message"].startswith("The upstream asked for a browser check (anti-bot challenge).")
    assert response.headers["x-should-retry"] == "false"
    # The only account now rests BROWSER_CHECK_COOLDOWN_SECONDS: asking again at once would not help.
    again = chat(url, stream)
    assert_json_error(again, 503, "upstream_browser_check")
    assert 890 < int(again.headers["Retry-After"]) <= 900
    account = requests.get(url + "/health", timeout=5).json()["providers"]["qwen"]["accounts"][0]
    assert (account["state"], account["reason"]) == ("cooling_down", "browser_check")


@STREAM
def test_plain_html_502_page_is_502_upstream_error(raw, serve, stream):
    """A proxy's own error page is an HTTP error (502 upstream_error), not an anti-bot check."""
    raw.script([whole(502, "text/html", NGINX_502), "close"])
    url = serve(raw.host)
    response = chat(url, stream)
    error = assert_json_error(response, 502, "upstream_error")
    assert error["message"].startswith(
        "The upstream answered HTTP 502 (text/html): <html> <head><title>502 Bad Gateway"
    )
    assert response.headers.get("x-should-retry") != "false"
    assert_still_serving(url)


# --- huge lines ----------------------------------------------------------------------------------


@STREAM
def test_five_megabyte_answer_frame_arrives_whole(raw, serve, stream):
    text = "".join(f"line {i:07d} of a very long answer. " for i in range(FIVE_MB // 32))
    assert len(text) > FIVE_MB - 64
    raw.script([sse_head(), created_frame(), answer(text, 1), answer(" The end.", 2), finished(), "close"])
    url = serve(raw.host)
    response = chat(url, stream, timeout=30)
    assert response.status_code == 200
    if stream:
        events = sse_events(response.content)
        assert events[-1] == "[DONE]"
        assert events[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunk_content(events) == text + " The end."
    else:
        choice = response.json()["choices"][0]
        assert choice["message"]["content"] == text + " The end."
        assert choice["finish_reason"] == "stop"
    assert_still_serving(url)


HUGE_LINES = {  # built when the test runs, not at collection
    "binary": lambda: garbage(FIVE_MB, seed=2, newlines=False),
    "data-prefixed": lambda: b"data: " + garbage(FIVE_MB, seed=3, newlines=False),
    "past-the-line-limit": lambda: b"data: " + b"{" * (17 * 1024 * 1024),
}


@STREAM
@pytest.mark.parametrize(
    ("kind", "code", "message_start"),
    [
        ("binary", "upstream_truncated", CLOSED_EARLY),
        ("data-prefixed", "upstream_truncated", CLOSED_EARLY),  # a line cut short is dropped
        ("past-the-line-limit", "upstream_error", "The upstream sent an event line longer than 16777216 bytes"),
    ],
)
def test_huge_garbage_line_then_close_is_502(raw, serve, stream, kind, code, message_start):
    raw.script([sse_head(), HUGE_LINES[kind](), "close"])
    url = serve(raw.host)
    response = chat(url, stream, timeout=30)
    error = assert_json_error(response, 502, code)
    assert error["message"].startswith(message_start)
    assert len(error["message"]) < 2000  # never the megabytes echoed back
    assert_still_serving(url)


# --- invalid UTF-8 -------------------------------------------------------------------------------


def _bad_utf8_frame(link) -> None:
    """A frame with a lone 0xFF and a truncated 3-byte sequence; a valid é split across two sends."""
    start = b'data: {"choices": [{"delta": {"role": "assistant", "content": "caf\xc3'
    rest = b'\xa9 \xff ok \xe2\x82 end \xe4\xbd\xa0", "phase": "answer", "status": "typing"}}], "response_id": "'
    link.send(start)
    link.wait(0.05)
    link.send(rest + RESPONSE_ID.encode() + b'"}\n\n')


@STREAM
def test_invalid_utf8_in_content_becomes_replacement_characters(raw, serve, stream):
    raw.script([sse_head(), created_frame(), _bad_utf8_frame, answer("!", 2), finished(), "close"])
    url = serve(raw.host)
    response = chat(url, stream)
    expected = "café \ufffd ok \ufffd end 你!"
    assert response.status_code == 200
    if stream:
        events = sse_events(response.content)
        assert events[-2]["choices"][0]["finish_reason"] == "stop"
        assert chunk_content(events) == expected
    else:
        assert response.json()["choices"][0]["message"]["content"] == expected
    assert_still_serving(url)


# --- the client leaves mid-stream ----------------------------------------------------------------


def _ticks(link) -> None:
    """An answer frame every 50 ms for up to 10 s, until the peer leaves."""
    link.send(sse_head() + created_frame())
    link.stream((answer(f"tick{i} ", i + 1) for i in range(200)), interval=0.05)


def _keep_alives(link) -> None:
    """One answer frame so the reply is committed, then only keep-alives every 50 ms."""
    link.send(sse_head() + created_frame() + answer("First", 1))
    link.stream((keep_alive_frame() for _ in range(200)), interval=0.05)


def test_client_leaving_closes_the_upstream_connection(raw, serve):
    raw.script(_ticks)
    url = serve(raw.host)
    body = {"model": "qwen3.7-plus", "messages": MESSAGES, "stream": True}
    left = leave_stream_at(url, body, b'"content":"tick0 "')
    assert_upstream_closed_soon(raw, left, "the service kept reading from the upstream after the client left")
    assert raw.completion_connections()[0].finished.wait(2.0)
    assert_still_serving(url)


def test_client_leaving_during_keep_alives_closes_the_upstream_connection(raw, serve):
    raw.script(_keep_alives)
    url = serve(raw.host)
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps({"model": "qwen3.7-plus", "messages": MESSAGES, "stream": True}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(request)
        deadline = time.monotonic() + 5
        while b": keep-alive\n\n" not in received.partition(b'"content":"First"')[2]:
            assert time.monotonic() < deadline, received[-500:]
            piece = client.recv(65536)
            assert piece, received[-500:]
            received += piece
        left = time.monotonic()
    assert received.startswith(b"HTTP/1.1 200 ")
    upstream = raw.completion_connections()[0]
    assert upstream.peer_closed.wait(3.0), "the service kept reading keep-alives after the client left"
    assert upstream.peer_closed_at - left < 2.0
    assert upstream.finished.wait(2.0)
    assert_still_serving(url)


def test_client_leaving_while_the_upstream_is_silent_cuts_the_upstream_at_once(raw, tmp_path, qwen_token):
    # A thinking model before its first word: the stream is committed by a keep-alive, then the
    # client gives up. The upstream connection is cut then, not at its next frame.
    raw.script([sse_head(), created_frame(), "hang"])
    root = tmp_path / "porviders"
    root.mkdir()
    copy_provider(SHIPPED_QWEN, root / "qwen", host=raw.host, scheme="http")
    app = create_app({"TESTING": True, "PROVIDERS_DIR": str(root), "UPSTREAM_TIMEOUT": 8.0, "KEEPALIVE_SECONDS": 0.2})
    body = {"model": "qwen3.7-plus", "messages": MESSAGES, "stream": True}
    with ServerThread(app) as server:
        left = leave_stream_at(server.url, body, b": keep-alive")
        assert_upstream_closed_soon(raw, left, "the upstream stayed open after the client left")
        assert_still_serving(server.url)


def leave_stream_at(url: str, body: dict, marker: bytes) -> float:
    """Read a stream until ``marker`` arrives, then leave; returns when the client left."""
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=5) as response:
        assert response.status_code == 200
        received = b""
        for piece in response.iter_content(chunk_size=None):
            received += piece
            if marker in received:
                break
        return time.monotonic()


def assert_upstream_closed_soon(raw, left: float, message: str) -> None:
    upstream = raw.completion_connections()[0]
    assert upstream.peer_closed.wait(3.0), message
    assert upstream.peer_closed_at - left < 2.0


# --- work nobody waits for stops ---------------------------------------------------------------


def watched_app(raw, tmp_path, **config):
    root = tmp_path / "porviders"
    root.mkdir()
    copy_provider(SHIPPED_QWEN, root / "qwen", host=raw.host, scheme="http")
    return create_app({"TESTING": True, "PROVIDERS_DIR": str(root), "UPSTREAM_TIMEOUT": 8.0, **config})


def _endless(link) -> None:
    """An answer that never finishes: a delta every 50 ms for as long as anyone reads."""
    link.send(sse_head() + created_frame())
    link.stream((answer(f"w{n} ", n + 1) for n in range(100_000)), interval=0.05)


@pytest.mark.parametrize("script", [[sse_head(), created_frame(), "hang"], _endless], ids=["silent", "endless"])
def test_a_non_streaming_client_that_gives_up_stops_the_upstream(raw, tmp_path, qwen_token, script):
    raw.script(script)
    with ServerThread(watched_app(raw, tmp_path)) as server:
        with pytest.raises(requests.Timeout):
            requests.post(
                server.url + "/v1/chat/completions", json={"model": "qwen3.7-plus", "messages": MESSAGES}, timeout=0.5
            )
        left = time.monotonic()
        upstream = raw.completion_connections()[0]
        assert upstream.peer_closed.wait(4.0), "the service went on reading for a client that left"
        assert upstream.peer_closed_at - left < 3.0
        assert_still_serving(server.url)


def test_a_stream_whose_client_leaves_before_the_first_byte_stops_the_upstream(raw, tmp_path, qwen_token):
    raw.script([sse_head(), created_frame(), "hang"])
    with ServerThread(watched_app(raw, tmp_path, KEEPALIVE_SECONDS=30)) as server:
        body = {"model": "qwen3.7-plus", "messages": MESSAGES, "stream": True}
        with pytest.raises(requests.Timeout):
            requests.post(server.url + "/v1/chat/completions", json=body, timeout=0.5)
        left = time.monotonic()
        upstream = raw.completion_connections()[0]
        assert upstream.peer_closed.wait(4.0)
        assert upstream.peer_closed_at - left < 3.0


@pytest.mark.parametrize("stream", [False, True])
def test_request_timeout_bounds_the_whole_reply(raw, tmp_path, qwen_token, stream):
    raw.script(_endless)
    app = watched_app(raw, tmp_path, REQUEST_TIMEOUT=1.5, KEEPALIVE_SECONDS=0.3)
    started = time.monotonic()
    with ServerThread(app) as server:
        body = {"model": "qwen3.7-plus", "messages": MESSAGES, "stream": stream}
        response = requests.post(server.url + "/v1/chat/completions", json=body, timeout=10)
        took = time.monotonic() - started
        if stream:
            assert response.status_code == 200
            events = [json.loads(line[6:]) for line in response.text.split("\n") if line.startswith("data: {")]
            assert events[-1]["error"]["code"] == "upstream_timeout"
            assert response.text.rstrip().endswith("data: [DONE]")
        else:
            assert response.status_code == 504
            assert response.json()["error"]["code"] == "upstream_timeout"
            assert "REQUEST_TIMEOUT" in response.json()["error"]["message"]
        assert 1.4 < took < 4.0
        assert raw.completion_connections()[0].peer_closed.wait(3.0)


def test_a_non_streaming_reply_is_bounded(serve, raw, monkeypatch):
    import fronts.openai_chat

    monkeypatch.setattr(fronts.openai_chat, "MAX_REPLY_BYTES", 5)
    url = serve(raw.host)
    response = chat(url)
    assert response.status_code == 502
    assert "longer than 5 characters; ask for it streamed" in response.json()["error"]["message"]


def _flood(link) -> None:
    """An answer that never finishes and comes as fast as it can be read."""
    link.send(sse_head() + created_frame())
    frames = (answer("x" * 2000, n + 1) for n in range(1_000_000))
    link.stream(frames, interval=0)


def test_a_client_that_stops_reading_is_dropped_with_its_upstream(raw, tmp_path, qwen_token):
    raw.script(_flood)
    with ServerThread(watched_app(raw, tmp_path, CLIENT_TIMEOUT=1.0)) as server:
        port = int(server.url.rsplit(":", 1)[1])
        body = json.dumps({"model": "qwen3.7-plus", "messages": MESSAGES, "stream": True}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            client.recv(1024)  # the stream started; from now on the client reads nothing
            upstream = raw.completion_connections()[0]
            assert upstream.peer_closed.wait(8.0), "a client that stopped reading held its upstream"
