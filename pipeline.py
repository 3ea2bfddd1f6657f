"""The request pipeline: the upstream steps behind one reply, each a small function.

A reply runs ``STEPS_BEFORE_COMPLETION`` in order (today: open a chat when the folder declares
it), then the completion itself. A new upstream step (credential refresh, upload) is one more
function in that tuple. Model lists are fetched here too, through the same upstream client.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from converters import ApiError, ChatRequest, Delta, copy_json, dig, iter_reasoning_format, upstream_error
from dialects import DIALECTS
from dialects.contract import Dialect, Plan, UpstreamAnswer, UpstreamCall
from keepalive import PacedReply, Watch, first_deltas, iter_watched
from placeholders import MissingVariables, UnsafePathValue, fill_headers, fill_placeholders, fill_url_path
from provider_loader import Provider, ids_from_models_answer
from redaction import redact_headers
from streaming import SseLineTooLong, iter_data, iter_sse_events
from upstream import UpstreamClient, UpstreamReply

if TYPE_CHECKING:
    from services import RequestScope

SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
SAFE_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*$")
MODELS_BODY_BYTES = 4 * 1024 * 1024

log = logging.getLogger("reverse_api")


@dataclass
class Exchange:
    """One client request's upstream work, carried from step to step."""

    scope: RequestScope
    provider: Provider
    dialect: Dialect
    chat_request: ChatRequest
    plan: Plan
    now: float
    environment: dict[str, str]
    chat_id: str = ""
    watch: Callable[[UpstreamReply], None] | None = None  # told of each upstream reply opened

    def values(self) -> dict[str, Any]:
        """Environment variables plus the per-request values placeholders may use (a fresh uuid each call)."""
        return request_values(self.environment, self.plan.model, self.chat_id, self.now)

    @property
    def credential(self) -> str:
        """The variable an error that blames the credential names."""
        names = self.provider.required_variables()
        return names[0] if names else "the provider's credential"


def request_values(environment: dict[str, str], model: str, chat_id: str, now: float) -> dict[str, Any]:
    values: dict[str, Any] = dict(environment)
    values.update(
        chat_id=chat_id,
        uuid=str(uuid.uuid4()),
        timestamp=int(now),
        timestamp_ms=int(now * 1000),
        model=model,
        dollar="$",
    )
    return values


# --- a reply ---------------------------------------------------------------------------------


def start_watched_reply(
    scope: RequestScope, provider: Provider, chat_request: ChatRequest, reasoning_format: str, watch: Watch
) -> Iterator[Delta]:
    """Open the upstream reply, with REASONING_FORMAT applied, and pull its first delta before
    answering, so upstream failures still get a real HTTP status. It is read in its own thread
    so the request can wait the way ``watch`` says: keep-alives while the client would get nothing
    (committing a stream to HTTP 200), a deadline for the whole reply, and an end when the client
    leaves. The upstream connection closes with the iterator."""

    def produce(abort_watch: Callable[[UpstreamReply], None]) -> Iterator[Delta]:
        # Formatted in the reader: hidden reasoning is silence for the client, so it must not
        # hold the keep-alive back.
        return iter_reasoning_format(open_reply(scope, provider, chat_request, abort_watch), reasoning_format)

    deltas = iter_watched(PacedReply(produce), watch)
    return _prepend(first_deltas(deltas), deltas)


def open_reply(
    scope: RequestScope,
    provider: Provider,
    chat_request: ChatRequest,
    watch: Callable[[UpstreamReply], None] | None = None,
) -> Iterator[Delta]:
    """Run the steps, then the completion; ``watch`` sees every upstream reply opened (to abort it)."""
    exchange = new_exchange(scope, provider, chat_request)
    exchange.watch = watch
    run_steps(exchange)
    return completion(exchange)


def new_exchange(scope: RequestScope, provider: Provider, chat_request: ChatRequest) -> Exchange:
    dialect = DIALECTS[provider.dialect]
    # Checked once, before anything is sent upstream.
    plan = dialect.prepare(chat_request, provider.message_mode == "history")
    return Exchange(scope, provider, dialect, chat_request, plan, time.time(), scope.variables(provider))


def create_chat(exchange: Exchange) -> None:
    """Open a chat when the provider declares that step (Qwen v2); its id fills ${chat_id}."""
    provider = exchange.provider
    step = provider.create_chat
    if step is None:
        return
    values = exchange.values()
    # The chat does not exist yet: captured headers naming it (a Referer) are left out unless overridden.
    headers = _fill_headers(provider, _with_overrides(provider.request.headers, step.headers), values, {"chat_id"})
    body = build_create_chat_body(_fill(provider, provider.create_chat_body, values), exchange.plan.model, exchange.now)
    with _send(exchange, step.method, _url(provider, step.path, values), headers, body, step.path) as reply:
        data = _read_json_answer(exchange, reply)
    chat_id = dig(data, provider.create_chat_id_field)
    if not isinstance(chat_id, str) or not SAFE_ID.fullmatch(chat_id):
        raise upstream_error(f"The upstream did not return a usable chat id at '{provider.create_chat_id_field}'.")
    exchange.chat_id = chat_id


STEPS_BEFORE_COMPLETION: tuple[Callable[[Exchange], None], ...] = (create_chat,)


def run_steps(exchange: Exchange) -> None:
    """Every step before the completion, in order."""
    for step in STEPS_BEFORE_COMPLETION:
        step(exchange)


def completion(exchange: Exchange) -> Iterator[Delta]:
    """Send the chat request itself and return the stream's deltas."""
    provider = exchange.provider
    values = exchange.values()
    headers = _fill_headers(provider, provider.request.headers, values)
    call = UpstreamCall(exchange.plan, exchange.chat_id, exchange.now, provider.message_mode == "history")
    # The template is filled first, so placeholders in the client's own text are never expanded.
    payload = exchange.dialect.build_payload(_fill(provider, provider.payload, values), exchange.chat_request, call)
    url = _url(provider, provider.request.path, values)
    reply = _send(exchange, provider.request.method, url, headers, payload, provider.request.path)
    return iter_upstream_deltas(exchange, reply)


def build_create_chat_body(template: dict | None, model: str, now: float) -> dict:
    """The body that opens a chat; Qwen's ``chats/new`` takes milliseconds."""
    body = copy_json(template) if template else {}
    if "models" in body:
        body["models"] = [model]
    if "timestamp" in body:
        body["timestamp"] = int(now * 1000)
    return body


def iter_upstream_deltas(exchange: Exchange, reply: UpstreamReply) -> Iterator[Delta]:
    """Check the upstream answer, then parse its SSE stream; always release the connection."""
    redact = exchange.scope.redact
    try:
        if reply.status != 200 or "text/event-stream" not in reply.content_type:
            raise _answer_error(exchange, reply, redact(reply.read_text()))
        # Each frame is blanked before parsing, so no error quoting it can carry a secret.
        events = map(redact, iter_data(iter_sse_events(reply.iter_bytes())))
        drift = exchange.scope.drift.of(exchange.provider.name)
        yield from exchange.dialect.iter_deltas(events, exchange.credential, drift)
    except SseLineTooLong as exc:
        raise upstream_error(f"The upstream sent {exc}.") from None
    except (TypeError, AttributeError, KeyError, ValueError, RecursionError) as exc:
        # A frame of an unexpected shape: the upstream's fault, never a 500.
        raise upstream_error(f"The upstream sent an event this service cannot read ({type(exc).__name__}).") from None
    finally:
        reply.close()


def _prepend(first: list[Delta], rest: Iterator[Delta]) -> Iterator[Delta]:
    try:
        yield from first
        yield from rest
    finally:
        rest.close()


# --- model lists -----------------------------------------------------------------------------


def fetch_model_ids(upstream: UpstreamClient, provider: Provider, environment: dict, timeout: float) -> list[str]:
    """Ask the upstream's declared models endpoint; any failure is the caller's to absorb."""
    endpoint = provider.models_endpoint
    values = request_values(environment, "", "", time.time())
    # No chat exists here: headers naming one (Referer .../c/${chat_id}) are left out.
    headers = fill_headers(provider.request.headers, values, provider.optional_variables | {"chat_id"})
    url = provider.base_url + fill_url_path(endpoint["path"], values)
    with upstream.send(provider.name, endpoint["method"], url, headers, timeout=timeout) as reply:
        if 300 <= reply.status < 400:
            raise ValueError(f"the models endpoint answered HTTP {reply.status}, a redirect, which is not followed")
        if reply.status >= 400:
            raise ValueError(f"the models endpoint answered HTTP {reply.status}")
        return ids_from_models_answer(json.loads(reply.read_within(timeout, MODELS_BODY_BYTES)), endpoint)


# --- filling and sending ---------------------------------------------------------------------


def _send(exchange: Exchange, method: str, url: str, headers: dict, payload: Any, template: str = "") -> UpstreamReply:
    provider = exchange.provider
    if log.isEnabledFor(logging.DEBUG):
        # The path as the folder writes it (placeholders, never their values), credential-like
        # headers by name, and any secret value wherever it stands.
        shown = exchange.scope.redact(str(redact_headers(headers)))
        path = template.split("?")[0]
        log.debug("%s upstream %s %s%s headers=%s", exchange.scope.request_id, method, provider.host, path, shown)
    reply = exchange.scope.upstream.send(provider.name, method, url, headers, payload)
    if exchange.watch is not None:
        exchange.watch(reply)
    return reply


def _read_json_answer(exchange: Exchange, reply: UpstreamReply) -> Any:
    # Blanked here, before any message quotes and trims it: a secret cut in half would not match.
    body = exchange.scope.redact(reply.read_text())
    if reply.status >= 300 or "json" not in reply.content_type:
        raise _answer_error(exchange, reply, body)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise upstream_error("The upstream answered with invalid JSON.") from None
    if isinstance(data, dict) and data.get("success") is False:
        raise _answer_error(exchange, reply, body)
    return data


def _answer_error(exchange: Exchange, reply: UpstreamReply, body: str) -> ApiError:
    """The dialect's reading of an upstream answer that is not the expected stream."""
    answer = UpstreamAnswer(reply.status, reply.content_type, body, reply.headers.get("Retry-After"))
    return exchange.dialect.read_error(answer, exchange.credential)


def _url(provider: Provider, path: str, values: dict) -> str:
    """A filled path must stay one path on the provider's host: each value one segment, no spaces,
    line breaks or fragments."""
    try:
        filled = fill_url_path(path, values)
    except MissingVariables as exc:
        raise _missing_variables_error(provider, exc) from None
    except UnsafePathValue as exc:
        raise ApiError(
            f'Provider "{provider.name}": the value of {exc} filled into the request path would leave its segment.',
            status=400,
            code="invalid_value",
        ) from None
    if not SAFE_PATH.fullmatch(filled):
        raise ApiError(
            f'Provider "{provider.name}": a value filled into the request path is not URL-safe.',
            status=400,
            code="invalid_value",
        )
    return provider.base_url + filled


def _with_overrides(headers: tuple[tuple[str, str], ...], overrides: tuple[tuple[str, str], ...]) -> list:
    replaced = {name.lower() for name, _ in overrides}
    return [h for h in headers if h[0].lower() not in replaced] + list(overrides)


def _fill(provider: Provider, value: Any, values: dict) -> Any:
    try:
        return fill_placeholders(value, values)
    except MissingVariables as exc:
        raise _missing_variables_error(provider, exc) from None


def _fill_headers(provider: Provider, headers: Any, values: dict, unset: set[str] | None = None) -> dict[str, str]:
    """Fill header values; headers naming an unset optional variable (or one of ``unset``) are left out."""
    try:
        filled = fill_headers(headers, values, provider.optional_variables | (unset or set()))
    except MissingVariables as exc:
        raise _missing_variables_error(provider, exc) from None
    # A value pasted with a stray space or newline at either end: HTTP would trim it anyway.
    filled = {name: value.strip() for name, value in filled.items()}
    for name, value in filled.items():
        _check_header_value(provider, name, value)
    return filled


def _check_header_value(provider: Provider, name: str, value: str) -> None:
    """A filled header must stay one header line that HTTP can carry (Latin-1, no line breaks)."""
    if any(c in value for c in "\r\n\0"):
        raise ApiError(
            f'Provider "{provider.name}": the value filled into header {name} has a line break.',
            status=503,
            type="server_error",
            code="provider_misconfigured",
            retryable=False,
        )
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ApiError(
            f'Provider "{provider.name}": the value filled into header {name} has characters HTTP headers '
            "cannot carry.",
            status=400,
            code="invalid_value",
        ) from None


def _missing_variables_error(provider: Provider, exc: MissingVariables) -> ApiError:
    names = ", ".join(exc.names)
    return ApiError(
        f'Provider "{provider.name}" is missing its credential: set {names} in the environment or in .env.',
        status=401,
        type="authentication_error",
        code="upstream_credential_missing",
        retryable=False,
    )
