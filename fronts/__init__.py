"""The API fronts: each parses its own clients' requests and renders its own replies and errors.

To add a front, write a module here with ``register(app)``, ``owns(path)`` and
``error_response(error, redact)``, and list it in ``FRONTS``: the last one is the default.
"""

from __future__ import annotations

from fronts import openai_chat

FRONTS = (openai_chat,)


def front_for(path: str):  # noqa: ANN201 - a front module
    """The front whose error shape a path's clients read."""
    return next(front for front in FRONTS if front.owns(path))
