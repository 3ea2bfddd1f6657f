"""Work in progress: replaced by the front itself."""

from __future__ import annotations

from flask import Flask

from fronts.openai_render import error_response

__all__ = ["error_response", "owns", "register"]

ACCEPTS_X_API_KEY = True  # the Anthropic SDK sends the key as x-api-key


def register(app: Flask) -> None:
    pass


def owns(path: str) -> bool:
    return False
