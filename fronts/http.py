"""What every front shares of Flask: the request's JSON body and its view of the services."""

from __future__ import annotations

import json
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
