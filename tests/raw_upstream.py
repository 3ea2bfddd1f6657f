"""A raw-socket fake Qwen for fault tests: scripted bytes, stalls, cuts, resets and garbage.

Each accepted connection reads one whole request (headers and Content-Length body), records it,
then runs a script. ``POST /api/v2/chats/new`` gets a valid chat id unless a script is queued in
``new_chats``; ``POST /api/v2/chat/completions`` runs the next script queued in ``completions``, or
``default`` (a good two-piece reply) once the queue is empty. Every answer says
``Connection: close``, so one connection carries one request.

A script is a callable taking a :class:`Link`, or a list of steps run in order:

- ``bytes``: sent as they are;
- a number: seconds to wait (cut short when the peer closes);
- ``"close"``: an orderly close (FIN), ``"reset"``: an abortive close (SO_LINGER 0, RST),
  ``"hang"``: keep the connection open and silent until the peer leaves (or ``MAX_SECONDS``);
- a callable: called with the :class:`Link`.

The link watches the socket while it waits, so each :class:`Connection` records when the peer
(the service) closed it. Nothing runs longer than ``MAX_SECONDS``, and everything stops with the
``with`` block.
"""

from __future__ import annotations

import json
import select
import socket
import socketserver
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tests.fake_qwen import CHAT_ID, answer_frames, created_frame

MAX_SECONDS = 10.0
POLL = 0.02
NEW_CHAT_PATH = "/api/v2/chats/new"
COMPLETIONS_PATH = "/api/v2/chat/completions"
SSE_TYPE = "text/event-stream; charset=utf-8"
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error", 502: "Bad Gateway"}

Script = Callable[["Link"], Any] | list  # a callable, or a list of steps (see the module doc)


def head(status: int = 200, content_type: str = SSE_TYPE, length: int | None = None, **extra: str) -> bytes:
    """A status line and headers; no Content-Length unless given (the body then ends at close)."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}", f"Content-Type: {content_type}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.append("Connection: close")
    lines.extend(f"{name.replace('_', '-')}: {value}" for name, value in extra.items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def sse_head() -> bytes:
    """Qwen's stream headers: event-stream, no length, the body ends when the connection closes."""
    return head(200, SSE_TYPE, Cache_Control="no-cache")


def whole(status: int, content_type: str, body: bytes) -> bytes:
    """A complete answer with a proper Content-Length."""
    return head(status, content_type, len(body)) + body


def json_answer(obj: Any, status: int = 200) -> bytes:
    return whole(status, "application/json", json.dumps(obj).encode())


def new_chat_ok() -> list:
    return [json_answer({"success": True, "data": {"id": CHAT_ID}}), "close"]


def good_reply(pieces: Iterable[str] = ("Recovered",)) -> list:
    """A complete Qwen stream: headers, response.created, answer frames, finished, close."""
    return [sse_head(), created_frame(), *answer_frames(list(pieces)), "close"]


@dataclass
class Connection:
    """One accepted connection: the request it carried and how it ended."""

    opened_at: float
    method: str = ""
    target: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    bytes_sent: int = 0
    peer_closed_at: float | None = None  # time.monotonic() when the peer was seen leaving
    peer_closed: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def mark_peer_closed(self) -> None:
        if not self.peer_closed.is_set():
            self.peer_closed_at = time.monotonic()
            self.peer_closed.set()


class Link:
    """The upstream's end of one connection, for scripts."""

    def __init__(self, sock: socket.socket, record: Connection, stop: threading.Event, deadline: float) -> None:
        self.sock = sock
        self.record = record
        self.stop = stop
        self.deadline = deadline
        self.closed = False
        sock.settimeout(MAX_SECONDS)  # bounds sendall when the peer stops reading
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def alive(self) -> bool:
        return not self.closed and not self.record.peer_closed.is_set() and not self.stop.is_set()

    def send(self, data: bytes) -> bool:
        """Send everything; False (and the peer recorded as gone) when the peer has left."""
        if not self.alive:
            return False
        try:
            self.sock.sendall(data)
        except TimeoutError:
            return False
        except OSError:
            self.record.mark_peer_closed()
            return False
        self.record.bytes_sent += len(data)
        return True

    def wait(self, seconds: float) -> bool:
        """Stay silent for ``seconds`` while watching for the peer to leave; True if still there."""
        end = min(time.monotonic() + seconds, self.deadline)
        while self.alive:
            left = end - time.monotonic()
            if left <= 0:
                return True
            try:
                readable, _, _ = select.select([self.sock], [], [], min(left, POLL))
                if readable and not self.sock.recv(65536):
                    self.record.mark_peer_closed()
            except OSError:
                self.record.mark_peer_closed()
        return False

    def hang(self) -> None:
        """Never answer: hold the connection open until the peer leaves or time runs out."""
        self.wait(MAX_SECONDS)

    def stream(self, frames: Iterable[bytes], interval: float) -> int:
        """Send frames ``interval`` seconds apart until they run out or the peer leaves."""
        sent = 0
        for data in frames:
            if not self.send(data):
                break
            sent += 1
            if not self.wait(interval):
                break
        return sent

    def close(self) -> None:
        """An orderly close: FIN after everything sent."""
        if not self.closed:
            self.closed = True
            self.sock.close()

    def reset(self) -> None:
        """An abortive close: SO_LINGER 0 makes the kernel send RST instead of FIN."""
        if not self.closed:
            self.closed = True
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()

    def run(self, script: Script) -> None:
        if callable(script):
            script(self)
            return
        for step in script:
            if isinstance(step, bytes):
                self.send(step)
            elif isinstance(step, (int, float)):
                self.wait(step)
            elif step == "close":
                self.close()
            elif step == "reset":
                self.reset()
            elif step == "hang":
                self.hang()
            elif callable(step):
                step(self)
            else:
                raise ValueError(f"unknown script step {step!r}")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    upstream: RawUpstream


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        upstream = self.server.upstream
        sock: socket.socket = self.request
        record = Connection(opened_at=time.monotonic())
        upstream.connections.append(record)
        link = Link(sock, record, upstream.stop_event, record.opened_at + MAX_SECONDS)
        try:
            if not self._read_request(sock, record, link.deadline):
                return
            link.run(upstream.script_for(record))
        except Exception as exc:  # a fake must never take a test down with a thread traceback
            upstream.errors.append(exc)
        finally:
            link.close()
            record.finished.set()

    def _read_request(self, sock: socket.socket, record: Connection, deadline: float) -> bool:
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = self._recv(sock, deadline)
            if not chunk:
                record.mark_peer_closed()
                return False
            buffer += chunk
        head_bytes, _, body = buffer.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        record.method, record.target, _ = lines[0].split(" ", 2)
        for line in lines[1:]:
            name, _, value = line.partition(":")
            record.headers[name.strip().lower()] = value.strip()
        length = int(record.headers.get("content-length", "0"))
        while len(body) < length:
            chunk = self._recv(sock, deadline)
            if not chunk:
                record.mark_peer_closed()
                return False
            body += chunk
        record.body = body
        return True

    def _recv(self, sock: socket.socket, deadline: float) -> bytes:
        stop = self.server.upstream.stop_event
        while not stop.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], POLL)
            if readable:
                try:
                    return sock.recv(65536)
                except OSError:
                    return b""
        return b""


class RawUpstream:
    """The fake on 127.0.0.1 at a free port, serving for the length of a ``with`` block."""

    def __init__(self, default: Script | None = None) -> None:
        self.completions: deque[Script] = deque()
        self.new_chats: deque[Script] = deque()
        self.default = default if default is not None else good_reply()
        self.connections: list[Connection] = []
        self.errors: list[Exception] = []
        self.stop_event = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.upstream = self
        self.port = self._server.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(POLL,), daemon=True)

    def script(self, *scripts: Script) -> RawUpstream:
        """Queue what the next completion requests get, one script per request."""
        self.completions.extend(scripts)
        return self

    def script_for(self, record: Connection) -> Script:
        if record.method == "POST" and record.path == NEW_CHAT_PATH:
            return self.new_chats.popleft() if self.new_chats else new_chat_ok()
        if record.method == "POST" and record.path == COMPLETIONS_PATH:
            return self.completions.popleft() if self.completions else self.default
        return [json_answer({"success": False, "data": {"code": "NotFound"}}, status=404), "close"]

    def completion_connections(self) -> list[Connection]:
        return [c for c in self.connections if c.path == COMPLETIONS_PATH]

    def __enter__(self) -> RawUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_event.set()  # every wait and read loop notices within POLL seconds
        self._server.shutdown()
        self._server.server_close()
        for record in self.connections:
            record.finished.wait(1.0)
