"""A fake chat.qwen.ai on a loopback port, speaking the v2 wire format with its quirks.

Tests set ``fake.reply`` (and ``fake.chat_reply``) to script what the next calls answer.
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from flask import Flask, Response, request
from werkzeug.serving import make_server

CHAT_ID = "c0ffee00-1111-4111-8111-111111111111"
RESPONSE_ID = "r0ffee00-2222-4222-8222-222222222222"
UPSTREAM_ONLY_MODEL = "qwen-upstream-only"
UNAUTHORIZED = {"success": False, "request_id": "x", "data": {"code": "unauthorized", "details": "Token has expired"}}


def frame(obj: dict, trailing_space: bool = False) -> bytes:
    """One Qwen data frame: ``", "`` spacing and sometimes a space after the JSON."""
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + (b" " if trailing_space else b"") + b"\n\n"


def created_frame() -> bytes:
    body = {"response.created": {"chat_id": CHAT_ID, "parent_id": "p1", "response_id": RESPONSE_ID}}
    return frame(body, trailing_space=True)


def keep_alive_frame() -> bytes:
    return frame({"response.info": {"action": "keep_alive", "chat_id": CHAT_ID, "response_id": RESPONSE_ID}})


def usage(input_tokens: int, output_tokens: int, reasoning: int = 0) -> dict:
    details = {"text_tokens": output_tokens}
    if reasoning:
        details["reasoning_tokens"] = reasoning
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
        "output_tokens_details": details,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def delta_frame(phase: str, content: str = "", status: str = "typing", use: dict | None = None, **extra) -> bytes:
    delta = {"role": "assistant", "content": content, "phase": phase, "status": status, **extra}
    body: dict = {"choices": [{"delta": delta}], "response_id": RESPONSE_ID}
    if use is not None:
        body["usage"] = use
    return frame(body)


def answer_frames(pieces: list[str], input_tokens: int = 10, start: int = 0) -> list[bytes]:
    """Typing frames with cumulative usage, then a finished frame without usage (as Qwen does)."""
    frames = [delta_frame("answer", piece, use=usage(input_tokens, start + i + 1)) for i, piece in enumerate(pieces)]
    frames.append(delta_frame("answer", "", status="finished"))
    return frames


def summary_frames(thoughts: list[str], input_tokens: int = 10) -> list[bytes]:
    """thinking_summary frames whose ``summary_thought`` list is cumulative."""
    frames = []
    for n in range(1, len(thoughts) + 1):
        extra = {"summary_title": {"content": ["Thinking"]}, "summary_thought": {"content": thoughts[:n]}}
        frames.append(delta_frame("thinking_summary", extra=extra, use=usage(input_tokens, n, reasoning=n)))
    frames.append(delta_frame("thinking_summary", status="finished"))
    return frames


def web_search_frames() -> list[bytes]:
    call = {"name": "web_search", "arguments": '{"query": "x"}'}
    result = {
        "role": "function",
        "content": "",
        "phase": "web_search",
        "status": "finished",
        "name": "web_search",
        "extra": {"web_search_info": [{"title": "T", "url": "https://example.com"}]},
    }
    return [
        delta_frame("web_search", function_call=call, function_id="f1"),
        frame({"choices": [{"delta": result}], "response_id": RESPONSE_ID, "usage": {}}),
    ]


def sse_reply(frames: list[bytes], delay: float = 0.0) -> Reply:
    return Reply(chunks=[created_frame(), *frames], delay=delay)


@dataclass
class Reply:
    """What the fake answers: raw chunks with an optional delay before each."""

    chunks: list[bytes] = field(default_factory=list)
    status: int = 200
    content_type: str = "text/event-stream; charset=utf-8"
    delay: float = 0.0
    hang_before: float = 0.0
    headers: dict = field(default_factory=dict)


def gzip_reply(reply: Reply) -> Reply:
    """The same answer gzip-compressed, flushed after every chunk so it still streams."""
    compressor = zlib.compressobj(wbits=31)
    chunks = [compressor.compress(chunk) + compressor.flush(zlib.Z_SYNC_FLUSH) for chunk in reply.chunks]
    chunks[-1] += compressor.flush()
    return Reply(chunks=chunks, content_type=reply.content_type, headers={"Content-Encoding": "gzip"})


def json_reply(obj: dict, status: int = 200) -> Reply:
    return Reply(chunks=[json.dumps(obj).encode()], status=status, content_type="application/json")


class FakeQwen:
    """The fake upstream and everything it was sent."""

    def __init__(self) -> None:
        self.app = Flask("fake_qwen")
        self.app.add_url_rule("/api/v2/chats/new", view_func=self._new_chat, methods=["POST"])
        self.app.add_url_rule("/api/v2/chat/completions", view_func=self._completions, methods=["POST"])
        self.app.add_url_rule("/api/models", view_func=self._models, methods=["GET"])
        self.reset()

    def reset(self) -> None:
        self.requests: list[dict] = []
        self.chat_reply = json_reply({"success": True, "request_id": "x", "data": {"id": CHAT_ID}})
        self.reply = sse_reply(answer_frames(["Hello", " world"]))
        # Set when a completion stream ends before all its chunks were sent: the client (the
        # service) closed the connection.
        self.cut = threading.Event()
        # What GET /api/models lists: one model the folder also lists, one it does not.
        self.models_reply = json_reply({"data": [{"id": "qwen3.7-plus"}, {"id": UPSTREAM_ONLY_MODEL}]})
        # With an issuer (tests/fake_qwen_auth.py), only its live access tokens are accepted, and
        # ``account_replies`` scripts what one account's completions answer.
        self.auth = None
        self.account_replies: dict[str, Reply] = {}
        # A model: called with each completion's JSON body, it returns the Reply (tests/test_tools.py).
        self.responder = None

    def _record(self) -> str | None:
        account = self.auth.valid_access(request.headers.get("Authorization", "")) if self.auth else None
        self.requests.append(
            {
                "path": request.full_path.rstrip("?"),
                "headers": dict(request.headers),
                "json": request.get_json(silent=True),
                "account": account,
            }
        )
        return account

    def _rejected(self, account: str | None) -> bool:
        return self.auth is not None and account is None

    def _new_chat(self) -> Response:
        if self._rejected(self._record()):
            return self._answer(json_reply(UNAUTHORIZED))
        return self._answer(self.chat_reply)

    def _models(self) -> Response:
        self._record()
        return self._answer(self.models_reply)

    def _completions(self) -> Response:
        account = self._record()
        if self._rejected(account):
            return self._answer(json_reply(UNAUTHORIZED))
        if self.responder is not None:
            return self._answer(self.responder(request.get_json(silent=True) or {}), watch=True)
        return self._answer(self.account_replies.get(account or "", self.reply), watch=True)

    def _answer(self, reply: Reply, watch: bool = False) -> Response:
        time.sleep(reply.hang_before)
        chunks = self._iter_chunks(reply, watch)
        return Response(chunks, status=reply.status, content_type=reply.content_type, headers=reply.headers)

    def _iter_chunks(self, reply: Reply, watch: bool) -> Iterator[bytes]:
        sent = 0
        try:
            for chunk in reply.chunks:
                if reply.delay:
                    time.sleep(reply.delay)
                yield chunk
                sent += 1
        finally:
            if watch and sent < len(reply.chunks):
                self.cut.set()


@contextmanager
def serving(fake):
    """Serve a fake upstream (anything with ``.app``) on loopback, setting its ``url`` and ``host``."""
    with ServerThread(fake.app) as server:
        fake.url = server.url
        fake.host = f"127.0.0.1:{server.port}"
        yield fake


class ServerThread:
    """Serve a WSGI app on 127.0.0.1 at a free port for the length of a ``with`` block."""

    def __init__(self, wsgi_app) -> None:
        self.server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()
