"""What every front shares of Flask: the request's JSON body and its view of the services."""

from __future__ import annotations

import _socket
import logging
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response, current_app, g, request
from werkzeug.exceptions import ClientDisconnected

import json_codec
from converters import ApiError
from keepalive import WatchedReply
from redaction import printable
from services import RequestScope, Services
from streaming import iter_coalesced

READ_CHUNK = 64 * 1024
log = logging.getLogger("reverse_api")
# Proxies (nginx) must pass each event on at once, not buffer the stream.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def services() -> Services:
    """The app's services: the one place a front looks them up."""
    return current_app.extensions["reverse_api"]


def request_scope() -> RequestScope:
    """The services as this request sees them, read once (the error handler reuses it)."""
    if "scope" not in g:
        g.scope = services().scope(g.get("request_id", ""))
    return g.scope


def client_gone_check() -> Callable[[], bool]:
    """Whether this request's client has closed its connection, asked without reading from it."""
    # gevent wraps the real socket (and replaces socket.socket): ask the real one, whose recv
    # answers at once where gevent's would wait.
    wrapped = client_socket()
    sock = getattr(wrapped, "_sock", wrapped)
    if not isinstance(sock, _socket.socket):
        return lambda: False

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock.fileno()], [], [], 0)
            # Nothing to read: still waiting for us. Readable: a hang-up (b"") or pipelined bytes.
            return bool(readable) and sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError, TimeoutError):
            return False
        except (OSError, ValueError):  # closed under us
            return True

    return gone


def client_socket() -> socket.socket | None:
    """The connection to the client, as the server hands it over (gevent's wrapper under gunicorn)."""
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    return sock if hasattr(sock, "settimeout") else None


def stream_response(body: Iterator[bytes], reply: WatchedReply) -> Response:
    """An event stream: the view returns it and the body streams as the generator yields, what
    ``reply`` delivered together written together; its log line is written when it ends."""
    logged = _logged_stream(iter_coalesced(body, reply.ready), reply, StreamLog.of_request())
    return Response(logged, mimetype="text/event-stream", headers=STREAM_HEADERS)


class StreamLog:
    """What a stream's log line names, taken while the request is still there (a streamed body
    runs after Flask has let the request go)."""

    def __init__(self, request_id: str, method: str, path: str, started: float) -> None:
        self.request_id, self.method, self.path, self.started = request_id, method, path, started

    @classmethod
    def of_request(cls) -> StreamLog:
        started = g.get("started", time.perf_counter())
        return cls(g.get("request_id", ""), request.method, printable(request.path), started)

    def write(self, first_byte: float | None, ended: str) -> None:
        now = time.perf_counter()
        shown = f"{(first_byte - self.started) * 1000:.1f}ms" if first_byte is not None else "none"
        log.info(
            "%s %s %s 200 stream: first byte %s, %.1fms in all, %s",
            self.request_id,
            self.method,
            self.path,
            shown,
            (now - self.started) * 1000,
            ended,
        )


def _logged_stream(body: Iterator[bytes], reply: WatchedReply, stream_log: StreamLog) -> Iterator[bytes]:
    """The body, and one log line at its real end: when the first byte went, the whole time, and
    how it ended (completed, client_left when the client went first, or the error it ended with)."""
    first_byte = None
    finished = False
    try:
        for frame in body:
            if first_byte is None:
                first_byte = time.perf_counter()
            yield frame
        finished = True
    finally:
        # Closed before its end: the client went (or a write to it failed). Its end with nothing
        # said by the reply: the stream's own guard caught a bug.
        stream_log.write(first_byte, (reply.ended or "error internal_error") if finished else "client_left")


def set_write_timeout(seconds: float) -> None:
    """How long one write to the client may block before the client counts as gone."""
    sock = client_socket()
    if sock is not None:
        sock.settimeout(seconds)


def read_body(length: int | None, seconds: float, stream: Any = None, keep: bool = True) -> bytes:
    """The request body (``length`` bytes, or to its end), received within ``seconds`` in all: a
    client that sends a byte now and then cannot hold a connection slot (408, connection closed).
    With ``keep`` false it is read and dropped (draining an oversized body)."""
    sock, deadline = client_socket(), time.monotonic() + seconds
    previous = sock.gettimeout() if sock else None
    source = stream or request.stream
    chunks, received = [], 0
    try:
        while length is None or received < length:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            if sock is not None:
                sock.settimeout(remaining)
            try:
                chunk = source.read(READ_CHUNK if length is None else min(READ_CHUNK, length - received))
            except ClientDisconnected:
                # Under gunicorn a receive that timed out reads as a body cut short.
                if time.monotonic() < deadline - 0.05:
                    raise
                raise TimeoutError from None
            if not chunk:
                break
            received += len(chunk)
            if keep:
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            f"The request body did not arrive within CLIENT_TIMEOUT ({seconds:g} s).",
            status=408,
            code="request_timeout",
            headers={"Connection": "close"},
        ) from None
    finally:
        if sock is not None:
            sock.settimeout(previous)  # streaming the answer must not inherit the deadline
    return b"".join(chunks)


def json_body() -> Any:
    """The request body as JSON; over MAX_BODY_BYTES (a chunked body) it is a 413."""
    raw = read_body(request.content_length, current_app.config["CLIENT_TIMEOUT"])
    limit = current_app.config["MAX_BODY_BYTES"]
    if len(raw) > limit:
        raise ApiError(
            f"The request body is over the limit of {limit} bytes.",
            status=413,
            code="request_too_large",
            headers={"Connection": "close"},  # the rest of a chunked body is not read
        )
    try:
        return json_codec.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError("The request body is not valid JSON.", code="invalid_json") from None


def optional_field(body: dict, key: str, kind: type, default: Any) -> Any:
    """A body field that may be absent or null (then ``default``), else of type ``kind`` (else 400)."""
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise ApiError(f"'{key}' must be of type {kind.__name__}.", param=key)
    return value


def model_field(body: dict) -> str:
    """The request's ``model``: a non-empty string that could not split a header or a log line."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ApiError("'model' is required and must be a non-empty string.", param="model")
    if any(ord(c) < 32 or c == "\x7f" for c in model):
        raise ApiError("'model' must not contain control characters.", param="model")
    if model != model.strip():  # "qwen3.7-plus " would be sent upstream as a model nobody has
        raise ApiError(f"'model' has white space at its start or end: {model!r}.", param="model")
    return model


def block_reasoning_format(config: dict) -> str:
    """REASONING_FORMAT for the fronts with reasoning blocks of their own (thinking blocks,
    reasoning items): reasoning kept apart unless hidden; think-tags are for chat completions."""
    return "hidden" if config["REASONING_FORMAT"] == "hidden" else "reasoning_content"
