"""A provider's accounts: which exist, the values each uses now, and which may take a request.

Account 1 uses the provider's variables as the folder names them; account N the same names with
``_N``. What the upstream did to an account (a rotated token, a cooldown, a refused refresh) is
kept in the state store, so every worker process and every host sees the same.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from converters import ApiError
from credentials import fingerprint, is_jwt, jwt_expiry, without_bearer
from provider_loader import Provider
from settings import account_numbers, read_variables
from state import StateError, Store

OK, EXPIRING, COOLING_DOWN, NEEDS_RECAPTURE = "ok", "expiring", "cooling_down", "needs_recapture"
# What an upstream error says about the account that met it: it rests, for this reason.
COOLDOWN_REASONS = {
    "rate_limit_exceeded": "rate_limited",
    "insufficient_quota": "quota_exhausted",
    "upstream_browser_check": "browser_check",
}
POLL_SECONDS = 0.05
BUSY_RETRY_AFTER = "1"
EXHAUSTED = "accounts_exhausted"
RETIRED_KEPT = 32  # fingerprints of refresh tokens already rotated away, never to be sent again

log = logging.getLogger("reverse_api")
_WARNED_PREFIXES: set[str] = set()  # each variable pasted with "Bearer " is warned about once


@dataclass(frozen=True)
class Account:
    """One account of a provider as the environment and the state store describe it now."""

    provider: Provider
    id: str  # "1", "2", ...
    env_values: dict[str, str]  # the provider's variable names -> this account's values in env/.env
    record: dict  # what the state store holds for it

    @property
    def key(self) -> str:
        return f"account:{self.provider.name}:{self.id}"

    @property
    def lease_group(self) -> str:
        return f"in_flight:{self.provider.name}:{self.id}"

    @property
    def lock_name(self) -> str:
        return f"refresh:{self.provider.name}:{self.id}"

    def variable(self, name: str) -> str:
        """The environment variable that holds ``name`` for this account (``QWEN_TOKEN_2``)."""
        return name if self.id == "1" else f"{name}_{self.id}"

    @cached_property
    def source(self) -> str:
        """Fingerprint of the operator's credential values: when it changes, a fresh capture came in."""
        return fingerprint({name: self.env_values.get(name, "") for name in credential_names(self.provider)})

    @cached_property
    def values(self) -> dict[str, str]:
        """The values to send. A rotated value in the store wins, variable by variable, while the
        environment still holds the value it was rotated from; a variable the operator changed
        since (a fresh capture) is theirs again."""
        values = dict(self.env_values)
        origins = self.record.get("origins", {})
        for name, value in self.record.get("values", {}).items():
            if origins.get(name) == value_fingerprint(name, self.env_values.get(name, "")):
                values[name] = value
        return values

    def retired_values(self) -> list[str]:
        """Names of the refresh values about to be sent that were already rotated away: sending one
        again could get the whole session revoked."""
        step = self.provider.refresh
        retired = set(self.record.get("retired", []))
        names = sorted(step.names_read()) if step else []
        return [name for name in names if value_fingerprint(name, self.values.get(name, "")) in retired]

    @property
    def token_variable(self) -> str:
        if self.provider.refresh is not None:
            return self.provider.refresh.token_variable
        required = self.provider.required_variables()
        return required[0] if required else ""

    def expires_at(self) -> float | None:
        token = self.values.get(self.token_variable, "")
        return jwt_expiry(token) if token else None

    @property
    def refreshable(self) -> bool:
        step = self.provider.refresh
        return step is not None and all(self.values.get(name) for name in step.names_read())

    def needs_refresh(self, now: float, leeway: float) -> bool:
        """Before use: no token yet, or one that expires within ``leeway`` seconds."""
        if not self.refreshable:
            return False
        expires = self.expires_at()
        return not self.values.get(self.token_variable) or expires is not None and expires - now < leeway

    def token_check(self, now: float) -> str | None:
        """What the token looks like, told without asking the upstream: "ok", "not_a_jwt" where
        the provider expects a JWT, "expired" (with no refresh to renew it), or None (nothing to tell)."""
        name = self.provider.jwt_variable
        token = self.values.get(name, "") if name else ""
        if not token:
            return None
        if not is_jwt(token):
            return "not_a_jwt"
        expires = jwt_expiry(token)
        if expires is not None and expires <= now and not self.refreshable:
            return "expired"
        return "ok"

    def state(self, now: float, leeway: float) -> str:
        if self.record.get("needs_recapture") == self.source:
            return NEEDS_RECAPTURE
        if self.record.get("cooldown_until", 0) > now:
            return COOLING_DOWN
        expires = self.expires_at()
        return EXPIRING if expires is not None and expires - now < leeway else OK

    def missing_variables(self) -> list[str]:
        """Required variables this account lacks (a token its refresh will bring is not missing)."""
        names = [n for n in self.provider.required_variables() if n not in self.values]
        if self.refreshable:
            names = [n for n in names if n != self.token_variable]
        return [self.variable(n) for n in names]

    def recapture_names(self) -> list[str]:
        return [self.variable(name) for name in key_names(self.provider)]


@dataclass(frozen=True)
class Lease:
    """An account taken for one request; counted in flight until released."""

    account: Account
    member: str


def value_fingerprint(name: str, value: str) -> str:
    return fingerprint({name: value})


def credential_names(provider: Provider) -> list[str]:
    """The variables that make up an account's credential (fingerprinted to notice a fresh capture)."""
    return sorted(set(provider.required_variables()) | set(provider.refresh_variables()))


def key_names(provider: Provider) -> list[str]:
    """An account exists when one of these is set: its token, or its refresh token."""
    read = sorted(provider.refresh.names_read()) if provider.refresh else []
    return list(dict.fromkeys([*provider.required_variables(), *read]))


class AccountBook:
    """Every provider's accounts, their state in the store, and the choice of one per request."""

    def __init__(self, store: Store, config: dict) -> None:
        self.store = store
        self.leeway = config["REFRESH_LEEWAY_SECONDS"]
        self.concurrency = config["ACCOUNT_CONCURRENCY"]
        self.wait_seconds = config["ACCOUNT_WAIT_SECONDS"]
        self.browser_cooldown = config["BROWSER_CHECK_COOLDOWN_SECONDS"]
        self.rate_limit_cooldown = config["RATE_LIMIT_COOLDOWN_SECONDS"]
        # A worker that dies mid-request leaves its lease behind; it lapses after the longest request.
        self.lease_seconds = config["REQUEST_TIMEOUT"] + 60

    # --- reading -----------------------------------------------------------------------------

    def accounts(self, provider: Provider, file_values: dict[str, str]) -> list[Account]:
        """Account 1 (when set, or when nothing else is), then every account N the environment holds."""
        numbers = account_numbers(key_names(provider), file_values)
        found = [self._account(provider, str(n), file_values) for n in [1, *numbers]]
        first = found[0]
        if numbers and not any(first.env_values.get(name) for name in key_names(provider)):
            found = found[1:]
        return found

    def reload(self, account: Account) -> Account:
        """The same account with what the store holds now (another worker may have changed it)."""
        return replace(account, record=self.store.get(account.key) or {})

    def _account(self, provider: Provider, account_id: str, file_values: dict[str, str]) -> Account:
        suffix = "" if account_id == "1" else f"_{account_id}"
        names = provider.variable_names()
        found = read_variables([name + suffix for name in names], file_values)
        env_values = {name: found[name + suffix] for name in names if name + suffix in found}
        for name in provider.bearer_variables & env_values.keys():
            env_values[name] = _without_pasted_prefix(provider, name + suffix, env_values[name])
        return Account(provider, account_id, env_values, self.store.get(f"account:{provider.name}:{account_id}") or {})

    # --- choosing ----------------------------------------------------------------------------

    def choose(
        self,
        provider: Provider,
        file_values: dict[str, str],
        tried: set[str],
        request_id: str,
        prefer: str | None = None,
    ) -> Lease:
        """An available account, ``prefer`` (a continued chat's) first, then the least recently
        used; waits while every one is busy.

        :raise ApiError: 429 ``accounts_busy`` after ACCOUNT_WAIT_SECONDS, or why none can serve.
        """
        deadline = time.monotonic() + self.wait_seconds
        while True:
            now = time.time()
            every = self.accounts(provider, file_values)
            candidates = [a for a in every if a.id not in tried]
            usable = [a for a in candidates if a.state(now, self.leeway) not in (COOLING_DOWN, NEEDS_RECAPTURE)]
            if not usable:
                # Told of every account, those this request tried included: the earliest back.
                raise self._none_usable_error(provider, every, now)
            for account in sorted(usable, key=lambda a: (a.id != prefer, a.record.get("last_used", 0))):
                lease = self._take(account, request_id, note_use=len(candidates) > 1)
                if lease is not None:
                    return lease
            if time.monotonic() >= deadline:
                raise _busy_error(provider, self.concurrency)
            time.sleep(POLL_SECONDS)

    def _take(self, account: Account, request_id: str, note_use: bool) -> Lease | None:
        member = f"{request_id or 'req'}:{uuid.uuid4().hex[:8]}"
        if not self.store.try_lease(account.lease_group, member, self.concurrency, self.lease_seconds):
            return None
        lease = Lease(account, member)
        if note_use:  # only an order between accounts needs it: one write less for a single account
            try:
                self._change(account, last_used=time.time())
            except StateError:
                self.release(lease)
                raise
        return lease

    def release(self, lease: Lease) -> None:
        """Never raises: a store that fails here leaves the lease to lapse by itself."""
        try:
            self.store.drop_lease(lease.account.lease_group, lease.member)
        except StateError as exc:
            log.warning("could not release account %s of %s: %s", lease.account.id, lease.account.provider.name, exc)

    def _none_usable_error(self, provider: Provider, accounts: list[Account], now: float) -> ApiError:
        states = [a.state(now, self.leeway) for a in accounts]
        cooling = [a for a, state in zip(accounts, states, strict=True) if state == COOLING_DOWN]
        if cooling:
            return _cooling_error(provider, min(cooling, key=lambda a: a.record["cooldown_until"]), now)
        if any(state != NEEDS_RECAPTURE for state in states):
            # Only accounts this request already tried are left: the error it met says more.
            return ApiError("No account is left to try.", status=503, type="server_error", code=EXHAUSTED)
        names = ", ".join(f"{' and '.join(a.recapture_names())} (account {a.id})" for a in accounts)
        return ApiError(
            f'Every account of provider "{provider.name}" needs a fresh capture: its credential was rejected. '
            f"Capture {names} again from a logged-in browser session.",
            status=401,
            type="authentication_error",
            code="upstream_credential_rejected",
            retryable=False,
        )

    # --- what happened -----------------------------------------------------------------------

    def judge(self, account: Account, error: ApiError, after_first_byte: bool = False) -> bool:
        """Record what an upstream error says about the account; True when another account may
        answer instead (a cooldown-type error, or a credential the upstream refuses). After the
        first byte only a cooldown is noted: the credential had just worked."""
        reason = COOLDOWN_REASONS.get(error.code or "")
        if reason is not None:
            self.cool_down(account, self._cooldown_seconds(reason, error), reason)
            return True
        if error.code == "upstream_credential_rejected" and not after_first_byte:
            self.mark_needs_recapture(account)
            return True
        return False

    def cool_down(self, account: Account, seconds: float, reason: str) -> None:
        self._change(account, cooldown_until=time.time() + seconds, cooldown_reason=reason)

    def mark_needs_recapture(self, account: Account) -> None:
        # Tied to the values that were refused: fresh ones in .env lift it, with no restart.
        self._change(account, needs_recapture=account.source)

    def save_refresh(self, account: Account, new_values: dict[str, str]) -> Account:
        """Keep rotated values at once: from now on they are newer than the environment's. The
        refresh values just sent are retired: none is ever sent again."""
        values = {**account.values, **new_values}
        rotated = {name: values[name] for name in account.provider.refresh_variables() if name in values}
        origins = {name: value_fingerprint(name, account.env_values.get(name, "")) for name in rotated}
        sent = [
            value_fingerprint(name, account.values.get(name, ""))
            for name in sorted(account.provider.refresh.names_read())
        ]
        retired = [*account.record.get("retired", []), *sent][-RETIRED_KEPT:]
        outcome = {"at": time.time(), "outcome": "ok"}
        changes = {"values": rotated, "origins": origins, "retired": retired, "last_refresh": outcome}
        record = self._change(account, **changes, retry_at=0, needs_recapture=None)
        return replace(account, record=record)

    def note_refresh_failure(self, account: Account, outcome: str, retry_in: float) -> None:
        self._change(account, last_refresh={"at": time.time(), "outcome": outcome}, retry_at=time.time() + retry_in)

    def _change(self, account: Account, **changes: Any) -> dict:
        return self.store.update(account.key, lambda record: {**(record or {}), **changes}) or {}

    def _cooldown_seconds(self, reason: str, error: ApiError) -> float:
        if reason == "browser_check":
            return self.browser_cooldown
        stated = error.headers.get("Retry-After", "")
        return float(stated) if stated.isdigit() else self.rate_limit_cooldown

    # --- /health -----------------------------------------------------------------------------

    def health(self, provider: Provider, file_values: dict[str, str]) -> list[dict]:
        """Each account that has a token or a refresh token, by id: never a token, a cookie or any
        part of one."""
        now = time.time()
        accounts = [
            a for a in self.accounts(provider, file_values) if any(a.values.get(n) for n in key_names(provider))
        ]
        return [self._health_of(account, now) for account in accounts]

    def _health_of(self, account: Account, now: float) -> dict:
        expires = account.expires_at()
        cooling = account.record.get("cooldown_until", 0) > now
        return {
            "id": account.id,
            "state": account.state(now, self.leeway),
            "access_expires_in": None if expires is None else int(expires - now),
            "refreshable": account.refreshable,
            "last_refresh": account.record.get("last_refresh"),
            "cooldown_until": account.record["cooldown_until"] if cooling else None,
            "reason": account.record.get("cooldown_reason") if cooling else None,
            "in_flight": self.store.count_leases(account.lease_group),
            "token_check": account.token_check(now),
        }


def _without_pasted_prefix(provider: Provider, variable: str, value: str) -> str:
    """A token pasted as ``Bearer eyJ...`` where the folder writes ``Bearer ${...}`` itself: used
    without the duplicate, and the operator told once."""
    bare = without_bearer(value)
    if bare != value and variable not in _WARNED_PREFIXES:
        _WARNED_PREFIXES.add(variable)
        log.warning(
            "%s holds its 'Bearer ' prefix; provider %s adds it itself, so it is sent once. "
            "Remove the prefix from the value (in .env, or in the environment).",
            variable,
            provider.name,
        )
    return bare


def _cooling_error(provider: Provider, first_back: Account, now: float) -> ApiError:
    reason = first_back.record.get("cooldown_reason", "rate_limited")
    wait = str(max(1, math.ceil(first_back.record["cooldown_until"] - now)))
    message = f'Every account of provider "{provider.name}" is resting after the upstream said {reason}; '
    message += f"the first is back in {wait} s."
    if reason == "browser_check":
        return ApiError(
            message, status=503, type="server_error", code="upstream_browser_check", headers={"Retry-After": wait}
        )
    quota = reason == "quota_exhausted"
    return ApiError(
        message,
        status=429,
        type="insufficient_quota" if quota else "rate_limit_error",
        code="insufficient_quota" if quota else "rate_limit_exceeded",
        headers={"Retry-After": wait},
    )


def _busy_error(provider: Provider, limit: int) -> ApiError:
    return ApiError(
        f'Every account of provider "{provider.name}" has {limit} requests in flight (ACCOUNT_CONCURRENCY); '
        "none came free within ACCOUNT_WAIT_SECONDS. Retry shortly, or add accounts.",
        status=429,
        type="rate_limit_error",
        code="accounts_busy",
        headers={"Retry-After": BUSY_RETRY_AFTER},
    )
