"""What a dialect provides: how to speak to one family of upstreams, from request to errors."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from converters import ApiError, ChatRequest, Delta
from drift import DriftLog


@dataclass(frozen=True)
class Plan:
    """What a dialect made of a request, once: the upstream model, and notes for its payload builder."""

    model: str
    notes: Any = None


@dataclass(frozen=True)
class UpstreamCall:
    """What one upstream call needs besides the client's request."""

    plan: Plan
    chat_id: str = ""
    now: float = 0.0
    history: bool = False  # send every message (True) or fold them into one (False)
    parent_id: str = ""  # the reply this turn answers, in a continued chat
    parent_fields: tuple[str, ...] = ()  # the payload keys that name it

    @property
    def model(self) -> str:
        return self.plan.model


@dataclass(frozen=True)
class UpstreamAnswer:
    """An upstream answer that is not the expected stream, as a dialect's error reader sees it."""

    status: int
    content_type: str
    body: str  # at most a bounded prefix, secrets already blanked
    retry_after: str | None = None


@dataclass(frozen=True)
class ImportHints:
    """What the capture importer asks of a dialect, so nothing upstream-specific lives there."""

    # Does a captured chat request (path with query, parsed JSON body) speak this dialect?
    recognizes: Callable[[str, Any], bool]
    # The captured body without the conversation it carried.
    strip_prompt: Callable[[dict], dict]
    # metadata.json keys for a capture: (scheme://host, URL path, the chat-creation (path, body) or None).
    metadata: Callable[[str, str, tuple[str, Any] | None], dict]
    # Captured chat ids (UUIDs in the Referer, ``chat_id=`` in the query) become ${chat_id}.
    fresh_chat_ids: bool = False
    # A HAR entry whose URL holds this is the chat-creation request.
    create_chat_marker: str | None = None
    # A cookie holding a refresh token: taken out of the captured cookie jar into a variable of its
    # own (``PREFIX_REFRESH_TOKEN`` for ``refresh_token``), so no stale copy rides along with the jar.
    refresh_cookie: str | None = None
    # metadata.json's ``refresh_credential`` step: (scheme://host, token variable, refresh-token
    # variable) -> the step, or None where the dialect knows no refresh endpoint for that host.
    refresh_step: Callable[[str, str, str], dict | None] | None = None


@dataclass(frozen=True)
class Dialect:
    """One family of upstreams; ``metadata.json`` names it by ``name``."""

    name: str
    # Check the request once and choose the upstream model; ``history`` is the folder's message mode.
    prepare: Callable[[ChatRequest, bool], Plan]
    build_payload: Callable[[dict, ChatRequest, UpstreamCall], dict]
    # SSE data payloads to deltas; the credential's variable name is for errors that blame it, and
    # shapes the parser does not recognise are counted in the DriftLog.
    iter_deltas: Callable[[Iterable[str], str, DriftLog | None], Iterator[Delta]]
    read_error: Callable[[UpstreamAnswer, str], ApiError]
    hints: ImportHints
    # Takes the client's tools itself (passes them through); otherwise the service emulates them.
    native_tools: bool = False
