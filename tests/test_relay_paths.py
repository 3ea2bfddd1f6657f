"""The relay's fast paths: each must give what the plain path gave, byte for byte or behaviour for
behaviour (JSON, chunk frames, the prepared upstream request, the handoff, joined writes)."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

import pytest
import responses

import json_codec
from fronts.openai_render import ChunkFrame, CompletionMeta, chunk_from_delta
from keepalive import Handoff
from streaming import format_sse, iter_coalesced
from tests.conftest import ROOT
from tests.fake_qwen import answer_frames, created_frame
from tests.raw_upstream import RawUpstream, sse_head
from tests.test_serving import raw_providers, start, stop
from upstream import UpstreamClient, prepared_request

# --- json_codec ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"a": [1, 2.5, "é", null, true]}',
        '"\\ud800"',  # a lone surrogate: orjson refuses it, the standard library reads it
        "NaN",
        "[1e400]",
        '{"a": 1, "a": 2}',
    ],
)
def test_loads_reads_what_the_standard_library_reads(text):
    expected = json.loads(text)
    found = json_codec.loads(text)
    assert found == expected or (found != found and expected != expected)  # NaN is not itself


def test_loads_reads_an_integer_past_64_bits_as_a_float():
    assert json_codec.loads("123456789012345678901234567890") == pytest.approx(1.2345678901234568e29)


def test_loads_reads_utf16_bodies_and_raises_value_error_on_garbage():
    assert json_codec.loads('{"a": "é"}'.encode("utf-16")) == {"a": "é"}
    with pytest.raises(ValueError):
        json_codec.loads(b"{not json")


@pytest.mark.parametrize(
    "obj", [{"a": "é\u2028", "b": [1, None, 2.5]}, {"s": "\ud800 lone"}, {"big": 2**70}, {"nested": {"k": "</"}}]
)
def test_dumps_is_compact_utf8_json_with_lone_surrogates_escaped(obj):
    expected = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", errors="backslashreplace")
    assert json_codec.dumps(obj) == expected


# --- chunk frames ----------------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize(
    "fields",
    [
        {"content": "Hello"},
        {"reasoning_content": "think", "content": 'é"\\\n'},
        {"content": "\ud800"},
        {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
    ],
)
def test_chunk_frame_is_the_frame_of_the_chunk_dict(fields, include_usage):
    meta = CompletionMeta.new("qwen3.7-plus")
    extra = {"usage": None} if include_usage else {}
    assert ChunkFrame(meta, include_usage)(fields) == format_sse(chunk_from_delta(meta, fields, None, extra))


# --- the prepared upstream request -----------------------------------------------------------


@responses.activate
def test_a_prepared_request_carries_what_a_session_sent():
    responses.post("https://up.example/api", body="{}", content_type="application/json")
    client = UpstreamClient(pool_size=2, timeout=5)
    with client.send("p", "POST", "https://up.example/api", {"Authorization": "Bearer t", "accept": "x/y"}, {"q": "é"}):
        pass
    sent = responses.calls[0].request
    assert sent.headers["User-Agent"].startswith("python-requests/")
    assert sent.headers["Accept-Encoding"] == "gzip, deflate"
    assert sent.headers["Accept"] == "x/y"  # the folder's header wins, whatever its case
    assert sent.headers["Authorization"] == "Bearer t"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.headers["Content-Length"] == str(len(sent.body))
    assert json.loads(sent.body) == {"q": "é"}


def test_a_request_without_a_body_says_so_unless_it_is_a_get():
    assert prepared_request("POST", "http://h/x", {}).headers["Content-Length"] == "0"
    assert "Content-Length" not in prepared_request("GET", "http://h/x", {}).headers
    kept = prepared_request("POST", "http://h/x", {"Content-Type": "text/plain"}, {"a": 1})
    assert kept.headers["Content-Type"] == "text/plain"


@responses.activate
def test_no_cookie_of_one_answer_reaches_the_next_request():
    responses.get("https://up.example/a", body="", headers={"Set-Cookie": "sid=abcdef123456; Path=/"})
    responses.get("https://up.example/b", body="")
    client = UpstreamClient(pool_size=2, timeout=5)
    for path in ("a", "b"):
        with client.send("p", "GET", f"https://up.example/{path}", {}):
            pass
    assert "Cookie" not in responses.calls[1].request.headers


# --- the handoff -----------------------------------------------------------------------------


def test_handoff_gives_items_in_order_and_none_after_the_timeout():
    handoff, stop = Handoff(4), threading.Event()
    assert handoff.get(0.01) is None and not handoff.ready()
    for n in range(3):
        assert handoff.put(("delta", n), stop)
    assert handoff.ready()
    assert [handoff.get(0)[1] for _ in range(3)] == [0, 1, 2]
    assert handoff.get(0.01) is None


def test_handoff_wakes_a_waiting_writer_at_once():
    handoff, stop = Handoff(4), threading.Event()
    threading.Timer(0.05, lambda: handoff.put(("delta", "x"), stop)).start()
    started = time.monotonic()
    assert handoff.get(5.0) == ("delta", "x")
    assert time.monotonic() - started < 2.0


def test_a_full_handoff_holds_the_reader_until_the_writer_takes_or_nobody_listens():
    handoff, stop = Handoff(2), threading.Event()
    handoff.put(("delta", 1), stop)
    handoff.put(("delta", 2), stop)
    done = []
    reader = threading.Thread(target=lambda: done.append(handoff.put(("delta", 3), stop)))
    reader.start()
    time.sleep(0.1)
    assert not done  # waiting for room
    assert handoff.get(0) == ("delta", 1)
    reader.join(2)
    assert done == [True] and [handoff.get(0)[1] for _ in range(2)] == [2, 3]

    handoff.put(("delta", 4), stop)
    handoff.put(("delta", 5), stop)
    stop.set()
    assert handoff.put(("delta", 6), stop) is False  # nobody listens: the reader gives up


# --- joined writes ---------------------------------------------------------------------------


def test_frames_ready_together_are_joined_and_none_waits_for_a_later_one():
    waiting = [True, True, False, True, False]  # after frames 1-2 more was there; after 3 nothing
    frames = iter([b"1", b"2", b"3", b"4", b"5"])
    written = list(iter_coalesced(frames, lambda: waiting.pop(0)))
    assert written == [b"123", b"45"]


def test_joined_writes_close_the_frames_when_the_client_leaves():
    closed = []

    def frames():
        try:
            yield from (b"a", b"b", b"c")
        finally:
            closed.append(True)

    body = iter_coalesced(frames(), lambda: False)
    assert next(body) == b"a"
    body.close()
    assert closed == [True]


def read_chunks(url: str, body: bytes, seconds: float) -> list[tuple[float, bytes]]:
    """The HTTP chunks of a streamed answer as the client receives them: (arrival, data)."""
    host, port = url.removeprefix("http://").split(":")
    chunks, buffer = [], b""
    with socket.create_connection((host, int(port)), timeout=seconds) as sock:
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        sock.sendall(head.encode() + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            buffer += data
            now = time.monotonic()
            if not chunks and b"\r\n\r\n" in buffer:
                buffer = buffer.split(b"\r\n\r\n", 1)[1]
                chunks.append((now, b""))  # the head
            while chunks and b"\r\n" in buffer:
                size_line, rest = buffer.split(b"\r\n", 1)
                size = int(size_line, 16)
                if len(rest) < size + 2:
                    break
                chunks.append((now, rest[:size]))
                buffer = rest[size + 2 :]
    return chunks[1:]


@pytest.mark.skipif(sys.platform == "win32", reason="gunicorn does not run on Windows")
def test_under_gunicorn_the_events_of_one_upstream_read_go_out_in_one_write(tmp_path):
    burst = b"".join(answer_frames([f"w{n} " for n in range(40)])[:-1])  # 40 frames in one send
    later = b"".join(answer_frames(["end"], start=40))
    with RawUpstream() as raw:
        raw.script([sse_head(), created_frame(), burst, 0.6, later, "close"])
        process, url = start([sys.executable, str(ROOT / "app.py")], raw_providers(tmp_path, raw.host))
        try:
            request = {"model": "qwen3.7-plus", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
            chunks = read_chunks(url, json.dumps(request).encode(), 15)
        finally:
            stop(process)
    events = [(at, chunk.count(b"data: ")) for at, chunk in chunks if chunk]
    text = b"".join(chunk for _, chunk in chunks)
    assert all(f"w{n} ".encode() in text for n in range(40)) and b"data: [DONE]" in text
    burst_writes = [at for at, chunk in chunks if b"w39 " in chunk or b"w1 " in chunk]
    first_end = next(at for at, chunk in chunks if b'"end"' in chunk)
    # The role chunk and the first words go out at once; the other 39 events in a write or two,
    # not one write each, and well before the upstream's next read (0.6 s later).
    assert len([n for _, n in events]) <= 8, events
    assert max(burst_writes) < first_end - 0.3


# --- one redactor per provider ---------------------------------------------------------------


def test_a_stream_is_blanked_with_its_own_providers_secrets_and_errors_with_everyone_s(tmp_path, monkeypatch):
    from app import create_app

    monkeypatch.delenv("QWEN_TOKEN", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret-0123")
    env_file = tmp_path / ".env"
    env_file.write_text("QWEN_TOKEN=qwen-secret-first-0123\n")
    app = create_app(
        {"TESTING": True, "PROVIDERS_DIR": str(ROOT / "porviders"), "ENV_FILE": str(env_file), "STATE_URL": "memory://"}
    )
    services = app.extensions["reverse_api"]
    text = "qwen-secret-first-0123 sk-openai-secret-0123"
    scope = services.scope()
    qwen = scope.registry.providers["qwen"]
    assert scope.redact_for(qwen)(text) == "[redacted] sk-openai-secret-0123"
    assert scope.redact(text) == "[redacted] [redacted]"
    assert services.scope().redact_for(qwen) is scope.redact_for(qwen)  # made once, not per request

    replacement = tmp_path / ".env.new"
    replacement.write_text("QWEN_TOKEN=qwen-secret-second-0123\n")
    replacement.replace(env_file)  # a new file, as the importer writes it
    assert services.scope().redact_for(qwen)("qwen-secret-second-0123") == "[redacted]"


def test_an_empty_frame_says_nothing_more_came_and_what_is_held_goes_out():
    waiting = [True, False]  # after "Hello" the next delta was there, after it nothing
    frames = iter([b"Hello", b"", b"later"])
    written = []
    for write in iter_coalesced(frames, lambda: waiting.pop(0) if waiting else False):
        written.append(write)
        if write == b"Hello":
            break  # it went out before the frame that came after a wait
    assert written == [b"Hello"]


def test_text_held_for_a_stop_sequence_tells_the_writer():
    from converters import Delta
    from reply_blocks import HELD, iter_blocks, iter_until_stop_sequence

    events = list(iter_until_stop_sequence(iter_blocks([Delta(content="Hello"), Delta(content="E")]), ("END",)))
    assert HELD in events  # "E" may begin "END": held, and said so


def content_length_upstream(body: bytes, announced: int) -> tuple[socket.socket, threading.Thread]:
    """A one-answer upstream: an SSE head announcing ``announced`` bytes, then ``body`` and a close."""
    server = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            head = f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {announced}\r\n\r\n"
            conn.sendall(head.encode() + body)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return server, thread


@pytest.mark.parametrize(("missing", "fails"), [(0, False), (100, True)])
def test_a_body_short_of_its_content_length_is_a_failed_read_not_an_end(missing, fails):
    body = b"data: {}\n\n"
    server, thread = content_length_upstream(body, len(body) + missing)
    client = UpstreamClient(pool_size=2, timeout=5)
    url = f"http://127.0.0.1:{server.getsockname()[1]}/s"
    with server, client.send("p", "POST", url, {}, {"q": 1}) as reply:
        if fails:
            with pytest.raises(Exception) as caught:
                b"".join(reply.iter_bytes())
            assert caught.value.code == "upstream_disconnected"
        else:
            assert b"".join(reply.iter_bytes()) == body
    thread.join(5)


def test_a_lower_case_method_is_sent_upper_case():
    assert prepared_request("get", "http://h/x", {}).method == "GET"
    assert "Content-Length" not in prepared_request("get", "http://h/x", {}).headers
