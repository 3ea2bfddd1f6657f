"""What every front shares of Flask: the request's JSON body and its view of the services."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

from flask import current_app, g, request

from converters import ApiError
from services import RequestScope, Services


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
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    # gevent wraps the real socket; its own recv would wait instead of answering at once.
    sock = getattr(sock, "_sock", sock)
    if not isinstance(sock, socket.socket):
        return lambda: False

    def gone() -> bool:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""  # b"": the client hung up
        except (BlockingIOError, InterruptedError):
            return False  # open, and nothing sent: still waiting for us
        except OSError:
            return True

    return gone


def json_body() -> Any:
    """The request body as JSON; over MAX_BODY_BYTES (a chunked body) it is a 413."""
    raw = request.get_data(cache=False)
    limit = current_app.config["MAX_BODY_BYTES"]
    if len(raw) > limit:
        raise ApiError(
            f"The request body is over the limit of {limit} bytes.",
            status=413,
            code="request_too_large",
            headers={"Connection": "close"},  # the rest of a chunked body is not read
        )
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError("The request body is not valid JSON.", code="invalid_json") from None
