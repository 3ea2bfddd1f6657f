"""The API fronts: each parses its own clients' requests and renders its own replies and errors.

To add a front, write a module here that provides what ``Front`` describes and list it in
``FRONTS``; the first whose ``owns(path)`` is true renders that path's errors.
"""

from __future__ import annotations

from typing import Protocol

from flask import Flask, Response

from converters import ApiError
from fronts import anthropic_messages, openai_chat, openai_responses
from redaction import Redactor


class Front(Protocol):
    """What app.py asks of a front module."""

    def register(self, app: Flask) -> None: ...  # add its routes

    def owns(self, path: str) -> bool: ...  # are errors on this path in its shape?

    def error_response(self, error: ApiError, redact: Redactor) -> Response: ...

    ACCEPTS_X_API_KEY: bool  # does its clients' SDK send the key as x-api-key (Anthropic's)?


# The OpenAI front owns every path, so it comes last: it is the default error shape.
FRONTS: tuple[Front, ...] = (anthropic_messages, openai_responses, openai_chat)


def front_for(path: str) -> Front:
    """The front whose error shape a path's clients read."""
    return next(front for front in FRONTS if front.owns(path))
