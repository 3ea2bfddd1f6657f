"""The request pipeline: the upstream steps behind one reply, each a small function.

A reply takes an account (refreshing its credential first when it is about to expire), runs
``STEPS_BEFORE_COMPLETION`` in order (today: open a chat when the folder declares it), then the
completion itself. Until the first delta that says something, an account the upstream turns
away is swapped for the next, unseen by the client. Model lists are fetched here too.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from accounts import EXHAUSTED, Account, Lease
from conversations import ReplyRecord, continued_request, iter_remembering
from converters import (
    CHAT_GONE,
    CLIENT_GONE,
    ApiError,
    ChatRequest,
    Delta,
    Message,
    copy_json,
    dig,
    iter_reasoning_format,
    upstream_error,
)
from dialects import DIALECTS
from dialects.contract import Dialect, Plan, UpstreamAnswer, UpstreamCall
from keepalive import PacedReply, Watch, WatchedReply, first_deltas, iter_watched
from provider_loader import Provider
from redaction import Redactor, redact_headers
from refresh import RETRY_AFTER_FAILURE_SECONDS, refresh_account
from state import StateError
from streaming import SseLineTooLong, iter_data, iter_sse_events
from tool_emulation import iter_reply_with_tools
from upstream import UpstreamReply
from upstream_requests import (
    fill_template,
    request_headers,
    request_url,
    request_values,
    step_headers,
    step_url,
    without_refresh_cookies,
)

if TYPE_CHECKING:
    from services import RequestScope

SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

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
    account: Account
    chat_id: str = ""
    watch: Callable[[UpstreamReply], None] | None = None  # told of each upstream reply opened
    parent_id: str = ""  # in a continued chat: the reply this turn answers
    turn: ReplyRecord | None = None  # told which account and chat answered
    redact: Redactor = field(init=False)

    def __post_init__(self) -> None:
        # Rotated values live only in the store: blank them too, wherever the upstream echoes them.
        rotated = tuple(sorted(self.account.record.get("values", {}).values()))
        self.redact = self.scope.redact_for(self.provider, rotated)

    @property
    def environment(self) -> dict[str, str]:
        return self.account.values

    def values(self) -> dict[str, Any]:
        """Environment variables plus the per-request values placeholders may use (a fresh uuid each call)."""
        return request_values(self.environment, self.plan.model, self.chat_id, self.now)

    @property
    def credential(self) -> str:
        """The variable an error that blames the credential names (this account's)."""
        names = self.provider.required_variables()
        return self.account.variable(names[0]) if names else "the provider's credential"


# --- a reply ---------------------------------------------------------------------------------


def start_watched_reply(
    scope: RequestScope, provider: Provider, chat_request: ChatRequest, reasoning_format: str, watch: Watch
) -> WatchedReply:
    """Open the upstream reply, with REASONING_FORMAT applied, and pull its first delta before
    answering, so upstream failures still get a real HTTP status. It is read in its own thread
    so the request can wait the way ``watch`` says: keep-alives while the client would get nothing
    (committing a stream to HTTP 200), a deadline for the whole reply, and an end when the client
    leaves. The upstream connection closes with the iterator."""

    def produce(abort_watch: Callable[[UpstreamReply], None]) -> Iterator[Delta]:
        # Formatted in the reader: hidden reasoning (and text held back while a tool call may be
        # starting) is silence for the client, so it must not hold the keep-alive back.
        turn = ReplyRecord(continuation=_take_continuation(scope, provider, chat_request))

        def open_attempt(request: ChatRequest) -> Iterator[Delta]:
            try:
                return open_reply(scope, provider, request, abort_watch, turn)
            finally:
                turn.continuation = None  # a required call asked for again goes to a fresh chat

        def remember(reply: Message) -> None:
            _remember(scope, provider, chat_request, reply, turn)

        native = DIALECTS[provider.dialect].native_tools
        deltas = iter_remembering(iter_reply_with_tools(open_attempt, chat_request, native), remember)
        if turn.continuation:
            deltas = _restoring(scope, provider, chat_request, turn, turn.continuation, deltas)
        return _noting_errors(scope, provider, iter_reasoning_format(deltas, reasoning_format))

    paced = PacedReply(produce)
    deltas = iter_watched(paced, watch)
    return WatchedReply(_prepend(first_deltas(deltas), deltas), paced.ready)


def _noting_errors(scope: RequestScope, provider: Provider, deltas: Iterator[Delta]) -> Iterator[Delta]:
    """The reply, its error (before or after the first delta) kept as the provider's last one
    for /health; a client that left is no error of the provider's."""
    try:
        yield from deltas
    except ApiError as exc:
        if exc.code != CLIENT_GONE:
            scope.drift.note_error(provider.name, exc.code, exc.status)
        raise


def open_reply(
    scope: RequestScope,
    provider: Provider,
    chat_request: ChatRequest,
    watch: Callable[[UpstreamReply], None] | None = None,
    turn: ReplyRecord | None = None,
) -> Iterator[Delta]:
    """The reply of the first account that gives one; ``watch`` sees every upstream reply opened.

    An account the upstream turns away before its first delta (a quota, a browser check, a
    refused credential) is marked so and the next account tries, with a fresh chat. When none is
    left, the error the last one met is the answer.
    """
    # The request is checked once, before any account is taken.
    DIALECTS[provider.dialect].prepare(chat_request, provider.message_mode == "history")
    tried: set[str] = set()
    last_error: ApiError | None = None
    while True:
        continuation = turn.continuation if turn else None
        lease = _choose_account(scope, provider, tried, last_error, continuation)
        if continuation and lease.account.id != continuation.account_id:
            turn.continuation = None  # its account cannot take it now: a fresh chat
        try:
            first, rest = _answer_of(scope, provider, chat_request, lease.account, watch, turn)
        except ApiError as exc:
            scope.accounts.release(lease)
            if exc.code == CHAT_GONE and turn and turn.continuation:
                turn.continuation, turn.chat_lost = None, True  # the upstream lost that chat: the whole history, unseen
                continue
            if exc.code == CHAT_GONE:  # refused for a fresh chat: no chat to give up, a plain refusal
                exc = upstream_error(exc.message, status=exc.status, headers=exc.headers)
                raise exc from None
            tried.add(lease.account.id)
            if not _judged(scope, lease.account, exc):
                raise
            log.warning(
                "%s account %s of %s turned away: %s", scope.request_id, lease.account.id, provider.name, exc.code
            )
            last_error = exc
            continue
        except BaseException as exc:
            scope.accounts.release(lease)  # whatever went wrong, the account is not left taken
            if isinstance(exc, StateError):
                raise store_unavailable_error(exc) from None
            raise
        return _relay(scope, lease, first, rest, turn)


def _continues(scope: RequestScope, provider: Provider) -> bool:
    """CONTINUATION is on and the folder says how to continue its chats (one message a turn)."""
    return scope.continuation and bool(provider.parent_fields) and provider.message_mode == "single"


def _take_continuation(scope: RequestScope, provider: Provider, chat_request: ChatRequest) -> Any:
    """The remembered chat this request extends, when the folder says how to continue one."""
    if not _continues(scope, provider):
        return None
    try:
        return scope.conversations.take(provider.name, chat_request)
    except StateError as exc:
        log.warning("%s no continuation (the state store failed: %s)", scope.request_id, exc)
        return None


def _restoring(
    scope: RequestScope, provider: Provider, chat_request: ChatRequest, turn: ReplyRecord, taken: Any, deltas: Any
) -> Iterator[Delta]:
    """A continued turn that fails before its reply is whole (an error, the client leaving) gives
    the remembered conversation back, so the client's retry still continues it."""
    try:
        yield from deltas
    finally:
        if not turn.remembered and not turn.chat_lost:
            with contextlib.suppress(StateError):
                scope.conversations.give_back(provider.name, chat_request, taken)


def _remember(
    scope: RequestScope, provider: Provider, chat_request: ChatRequest, reply: Message, turn: ReplyRecord
) -> None:
    if not _continues(scope, provider):
        return
    try:
        scope.conversations.remember(provider.name, chat_request, reply, turn)
        turn.remembered = True
    except StateError as exc:
        log.warning("%s conversation not remembered (the state store failed: %s)", scope.request_id, exc)


def _choose_account(
    scope: RequestScope, provider: Provider, tried: set[str], last_error: ApiError | None, continuation: Any
) -> Lease:
    prefer = continuation.account_id if continuation else None
    try:
        return scope.accounts.choose(provider, scope.file_values, tried, scope.request_id, prefer)
    except ApiError as exc:
        if last_error is not None and exc.code in (EXHAUSTED, "accounts_busy"):
            raise last_error from None  # what the upstream said says more than "no account left"
        if last_error is not None and exc.code == last_error.code:
            raise _with_summary(last_error, exc) from None
        raise
    except StateError as exc:
        raise store_unavailable_error(exc) from None


def _with_summary(last: ApiError, summary: ApiError) -> ApiError:
    """What the upstream said to the last account, then the state of them all (and its Retry-After)."""
    message = f"{last.message} ({summary.message})"
    return ApiError(
        message, summary.status, summary.type, summary.param, summary.code, {**last.headers, **summary.headers}
    )


def _judged(scope: RequestScope, account: Account, error: ApiError) -> bool:
    try:
        return scope.accounts.judge(account, error)
    except StateError as exc:
        log.warning("%s could not record what happened to account %s: %s", scope.request_id, account.id, exc)
        return False


def store_unavailable_error(exc: StateError) -> ApiError:
    """503 for a state store that cannot be reached: the accounts' state is unknown, so nothing is sent."""
    return ApiError(
        f"The state store is unavailable: {exc}",
        status=503,
        type="server_error",
        code="state_store_unavailable",
    )


def _answer_of(
    scope: RequestScope,
    provider: Provider,
    chat_request: ChatRequest,
    account: Account,
    watch: Callable[[UpstreamReply], None] | None,
    turn: ReplyRecord | None = None,
) -> tuple[list[Delta], Iterator[Delta]]:
    """One account's attempt up to its first delta; a rejected credential is refreshed and retried once."""
    account = fresh_account(scope, account)
    try:
        return _first_of(new_exchange(scope, provider, chat_request, account, watch, turn))
    except ApiError as exc:
        if exc.code != "upstream_credential_rejected" or not account.refreshable:
            raise
    account = refresh_account(scope, scope.accounts, account, forced=True)
    return _first_of(new_exchange(scope, provider, chat_request, account, watch, turn))


def fresh_account(scope: RequestScope, account: Account) -> Account:
    """The account, refreshed first when its token is missing or about to expire. A refresh that
    fails for no fault of the account leaves its token in use: it may still be accepted."""
    book = scope.accounts
    if not account.needs_refresh(time.time(), book.leeway) or account.record.get("retry_at", 0) > time.time():
        return account
    try:
        return refresh_account(scope, book, account, forced=False)
    except ApiError as exc:
        if exc.code == "upstream_credential_rejected" or not account.values.get(account.token_variable):
            raise
        log.warning(
            "%s refresh failed (%s); trying again in %g s", scope.request_id, exc.code, RETRY_AFTER_FAILURE_SECONDS
        )
        return account


def _first_of(exchange: Exchange) -> tuple[list[Delta], Iterator[Delta]]:
    """Steps, completion, and its deltas up to the first that says something."""
    run_steps(exchange)
    if exchange.turn is not None:  # this attempt's chat and (below) its reply, not an earlier try's
        exchange.turn.account_id, exchange.turn.chat_id = exchange.account.id, exchange.chat_id
        exchange.turn.response_id = ""
    deltas = completion(exchange)
    leading: list[Delta] = []
    try:
        for delta in deltas:
            leading.append(delta)
            if not delta.is_notice and not delta.heartbeat:
                break
    except BaseException:
        deltas.close()
        raise
    return leading, deltas


def _relay(
    scope: RequestScope, lease: Lease, first: list[Delta], rest: Iterator[Delta], turn: ReplyRecord | None
) -> Iterator[Delta]:
    """The reply, holding its account until it ends; a quota met mid-stream still rests the account."""
    try:
        for delta in itertools.chain(first, rest):
            if turn is not None and delta.response_id and not turn.response_id:
                turn.response_id = delta.response_id  # what the next turn names as its parent
            yield delta
    except ApiError as exc:
        with contextlib.suppress(StateError):  # the reply's own error matters more
            scope.accounts.judge(lease.account, exc, after_first_byte=True)
        if exc.code == CHAT_GONE:  # after the first byte there is nothing to fall back to
            raise upstream_error(exc.message) from None
        raise
    finally:
        rest.close()
        scope.accounts.release(lease)


def new_exchange(
    scope: RequestScope,
    provider: Provider,
    chat_request: ChatRequest,
    account: Account,
    watch: Callable[[UpstreamReply], None] | None = None,
    turn: ReplyRecord | None = None,
) -> Exchange:
    """One attempt's state: the account it speaks for, the plan, the time (and the chat it continues)."""
    dialect = DIALECTS[provider.dialect]
    continuation = turn.continuation if turn else None
    if continuation:
        chat_request = continued_request(chat_request, continuation)
    # Checked once per attempt, before anything is sent upstream.
    plan = dialect.prepare(chat_request, provider.message_mode == "history")
    exchange = Exchange(scope, provider, dialect, chat_request, plan, time.time(), account, watch=watch, turn=turn)
    if continuation:
        exchange.chat_id, exchange.parent_id = continuation.chat_id, continuation.parent_id
    return exchange


def create_chat(exchange: Exchange) -> None:
    """Open a chat when the provider declares that step (Qwen v2); its id fills ${chat_id}."""
    provider = exchange.provider
    step = provider.create_chat
    if step is None or exchange.chat_id:  # a continued chat exists already
        return
    values = exchange.values()
    # The chat does not exist yet: captured headers naming it (a Referer) are left out unless overridden.
    headers = without_refresh_cookies(provider, step_headers(provider, step, values, {"chat_id"}))
    body = build_create_chat_body(fill_template(provider, step.body, values), exchange.plan.model, exchange.now)
    with _send(exchange, step.method, step_url(provider, step, values), headers, body, step.path) as reply:
        data = _read_json_answer(exchange, reply)
    chat_id = dig(data, step.id_field)
    if not isinstance(chat_id, str) or not SAFE_ID.fullmatch(chat_id):
        raise upstream_error(f"The upstream did not return a usable chat id at '{step.id_field}'.")
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
    headers = without_refresh_cookies(provider, request_headers(provider, values))
    history = provider.message_mode == "history"
    call = UpstreamCall(
        exchange.plan, exchange.chat_id, exchange.now, history, exchange.parent_id, provider.parent_fields
    )
    # The template is filled first, so placeholders in the client's own text are never expanded.
    template = fill_template(provider, provider.payload, values)
    payload = exchange.dialect.build_payload(template, exchange.chat_request, call)
    url = request_url(provider, provider.request.path, values)
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
    redact = exchange.redact
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


# --- filling and sending ---------------------------------------------------------------------


def _send(exchange: Exchange, method: str, url: str, headers: dict, payload: Any, template: str = "") -> UpstreamReply:
    provider = exchange.provider
    if log.isEnabledFor(logging.DEBUG):
        # The path as the folder writes it (placeholders, never their values), credential-like
        # headers by name, and any secret value wherever it stands.
        shown = exchange.redact(str(redact_headers(headers)))
        path = template.split("?")[0]
        log.debug("%s upstream %s %s%s headers=%s", exchange.scope.request_id, method, provider.host, path, shown)
    reply = exchange.scope.upstream.send(provider.name, method, url, headers, payload)
    if exchange.watch is not None:
        exchange.watch(reply)
    return reply


def _read_json_answer(exchange: Exchange, reply: UpstreamReply) -> Any:
    # Blanked here, before any message quotes and trims it: a secret cut in half would not match.
    body = exchange.redact(reply.read_text())
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
