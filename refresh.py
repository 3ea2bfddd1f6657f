"""Trading an account's refresh token for a new credential, once at a time across every process.

The refresh token rotates: whoever refreshes must send the latest one and save what comes back
before anyone else may refresh. So one lock per account in the state store; the others wait for
its result and use it, and nobody ever sends a refresh token that was already rotated.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import TYPE_CHECKING

from accounts import Account, AccountBook
from converters import ApiError, dig, upstream_error
from credentials import cookie_pairs
from dialects import DIALECTS
from dialects.contract import UpstreamAnswer
from upstream import UpstreamReply
from upstream_requests import fill_template, request_values, step_headers, step_url

if TYPE_CHECKING:
    from services import RequestScope

POLL_SECONDS = 0.05
RETRY_AFTER_FAILURE_SECONDS = 30.0  # a refresh that failed for no fault of the account is tried again after this
ANSWER_BYTES = 64 * 1024

log = logging.getLogger("reverse_api")


class RefreshRefused(Exception):
    """The upstream refused the refresh token itself (a JSON unauthorized): only a new capture helps."""


def refresh_account(scope: RequestScope, book: AccountBook, account: Account, forced: bool) -> Account:
    """The account with a fresh credential: refreshed here, or by whoever held the lock meanwhile.

    ``forced`` refreshes even a token that looks valid (the upstream just rejected it); without
    it, a token that has not expired yet is used as it is while another worker refreshes.
    :raise ApiError: the refresh failed; for a refused refresh token the account is marked
        ``needs_recapture`` first.
    """
    used = account.values.get(account.token_variable)
    owner = uuid.uuid4().hex
    # The lock outlives the longest refresh (connect, headers, body: each bounded by the timeout),
    # so it never lapses under a live holder and nobody sends the same refresh token twice.
    budget = scope.upstream.timeout
    lock_seconds = 3 * budget + 10
    deadline = time.monotonic() + lock_seconds + 5
    while True:
        if book.store.acquire(account.lock_name, owner, lock_seconds):
            try:
                return _refresh_holding_lock(scope, book, book.reload(account), used, forced)
            finally:
                book.store.release(account.lock_name, owner)
        current = book.reload(account)
        if current.values.get(current.token_variable) != used or not forced and _still_valid(current):
            return current  # refreshed elsewhere meanwhile, or good enough until that refresh ends
        if time.monotonic() >= deadline:
            raise upstream_error(
                f"Account {account.id} of provider {account.provider.name} is being refreshed elsewhere, "
                "and that refresh did not finish in time.",
                status=504,
                code="upstream_timeout",
            )
        time.sleep(POLL_SECONDS)


def _still_valid(account: Account) -> bool:
    expires = account.expires_at()
    return bool(account.values.get(account.token_variable)) and (expires is None or expires > time.time())


def _refresh_holding_lock(
    scope: RequestScope, book: AccountBook, account: Account, used: str | None, forced: bool
) -> Account:
    if account.values.get(account.token_variable) != used:
        return account  # refreshed by another worker just before this one took the lock
    if not forced and not account.needs_refresh(time.time(), book.leeway):
        return account
    retry_in = account.record.get("retry_at", 0) - time.time()
    if retry_in > 0:
        # The last refresh failed moments ago: asking again now would only add to the outage.
        if forced:
            raise _failed_recently_error(account, retry_in)
        return account
    retired = account.retired_values()
    if retired:
        book.mark_needs_recapture(account)
        raise _refused_error(account, f"{', '.join(map(account.variable, retired))} was already used once")
    try:
        new_values = _send_refresh(scope, account)
    except RefreshRefused as exc:
        book.note_refresh_failure(account, "refused", 0)
        book.mark_needs_recapture(account)
        raise _refused_error(account, str(exc)) from None
    except ApiError as exc:
        book.note_refresh_failure(account, f"failed: {exc.code}", RETRY_AFTER_FAILURE_SECONDS)
        raise _refresh_failed_error(account, exc) from None
    log.info("%s refreshed account %s of provider %s", scope.request_id, account.id, account.provider.name)
    return book.save_refresh(account, new_values)


def _send_refresh(scope: RequestScope, account: Account) -> dict[str, str]:
    """Send the folder's refresh step with the account's latest values; the variables it replaces."""
    provider, step = account.provider, account.provider.refresh
    values = request_values(account.values, "", "", time.time())
    headers = step_headers(provider, step, values, {"chat_id"})
    body = fill_template(provider, step.body, values) if step.body is not None else None
    timeout = scope.upstream.timeout
    with scope.upstream.send(provider.name, step.method, step_url(provider, step, values), headers, body) as reply:
        text = _read_answer(reply, timeout)
        cookies = cookie_pairs(reply.set_cookies())
        status, content_type, retry_after = reply.status, reply.content_type, reply.headers.get("Retry-After")
    data = _json_or_none(text)
    # An error quoting this answer must carry neither what was sent (the store's rotated values
    # are in no .env) nor what came back.
    fresh = [dig(data, path) for path, _ in step.fields]
    sent = [*account.values.values(), *cookies.values(), *(v for v in fresh if isinstance(v, str))]
    answer = UpstreamAnswer(status, content_type, scope.redact.with_secrets(sent)(text), retry_after)
    if 300 <= answer.status < 400 or data is None:
        # A redirect or a web page is a browser check or an outage, not proof the token is dead.
        where = step.host or provider.host
        raise upstream_error(f"{where} answered HTTP {answer.status} ({answer.content_type or 'no type'}), not JSON.")
    return _new_values(account, answer, data, cookies)


def _read_answer(reply: UpstreamReply, timeout: float) -> str:
    try:
        return reply.read_within(timeout, ANSWER_BYTES).decode("utf-8", "replace")
    except TimeoutError:
        # The whole answer is bounded, not each gap in it: the refresh lock must outlive it.
        raise upstream_error(
            "the answer took too long or was too large.", status=504, code="upstream_timeout"
        ) from None


def _new_values(account: Account, answer: UpstreamAnswer, data: object, cookies: dict[str, str]) -> dict[str, str]:
    step = account.provider.refresh
    if answer.status >= 400 or isinstance(data, dict) and data.get("success") is False:
        error = DIALECTS[account.provider.dialect].read_error(answer, account.variable(step.token_variable))
        if error.code == "upstream_credential_rejected":
            raise RefreshRefused(f"HTTP {answer.status}, {_envelope_code(data)}")
        raise error
    found = {name: dig(data, path) for path, name in step.fields}
    found.update({name: cookies[cookie] for cookie, name in step.set_cookies if cookie in cookies})
    new_values = {name: value for name, value in found.items() if isinstance(value, str) and value}
    if step.token_variable not in new_values:
        raise upstream_error(f"The credential refresh answered without a new {step.token_variable}.")
    return new_values


def _envelope_code(data: object) -> str:
    inner = data.get("data") if isinstance(data, dict) else None
    return str(inner.get("code") or "refused") if isinstance(inner, dict) else "refused"


def _json_or_none(text: str) -> object | None:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _refresh_failed_error(account: Account, error: ApiError) -> ApiError:
    """The same error, saying it was the refresh that failed (not the chat)."""
    return ApiError(
        f"The credential refresh of account {account.id} of provider {account.provider.name} failed: {error.message}",
        status=error.status,
        type=error.type,
        code=error.code,
        headers=error.headers,
    )


def _failed_recently_error(account: Account, retry_in: float) -> ApiError:
    outcome = account.record.get("last_refresh", {}).get("outcome", "failed")
    return upstream_error(
        f"The upstream rejected the token of account {account.id} of provider {account.provider.name}, and its "
        f"last refresh {outcome}; the next try is in {int(retry_in) + 1} s.",
        status=503,
        code="upstream_refresh_failed",
        headers={"Retry-After": str(int(retry_in) + 1)},
    )


def _refused_error(account: Account, reason: str) -> ApiError:
    names = " and ".join(account.recapture_names())
    return ApiError(
        f"The upstream refused the refresh token of account {account.id} of provider {account.provider.name} "
        f"({reason[:200]}). Capture {names} again from a logged-in browser session.",
        status=401,
        type="authentication_error",
        code="upstream_credential_rejected",
        retryable=False,
    )
