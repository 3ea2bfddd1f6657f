"""One upstream request built from a folder's templates: URL, headers and body, every value checked.

The chat request itself comes from header.txt and payload.json; a declared step (open a chat,
refresh a credential) lays its own headers over header.txt's and may go to its own host.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from converters import ApiError
from placeholders import MissingVariables, UnsafePathValue, fill_headers, fill_placeholders, fill_url_path
from provider_loader import Provider
from provider_steps import Step
from settings import unreadable_env_lines

SAFE_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*$")
# What one header line cannot carry: a line break, a NUL, a character past Latin-1 (one search a value).
UNFIT_HEADER_VALUE = re.compile(r"[\r\n\0]|[^\x00-\xff]")


def request_values(environment: dict[str, str], model: str, chat_id: str, now: float) -> dict[str, Any]:
    """The variables plus the per-request values placeholders may use (a fresh uuid each call)."""
    values: dict[str, Any] = dict(environment)
    values.update(
        chat_id=chat_id,
        uuid=str(uuid.uuid4()),
        timestamp=int(now),
        timestamp_ms=int(now * 1000),
        model=model,
        dollar="$",
        date=time.strftime("%a %b %d %Y %H:%M:%S GMT+0000", time.gmtime(now)),
    )
    return values


def request_url(provider: Provider, path: str, values: dict) -> str:
    """The chat request's URL (or another path on the provider's host)."""
    return provider.base_url + _filled_path(provider, path, values)


def step_url(provider: Provider, step: Step, values: dict) -> str:
    return step.base_url(provider.scheme, provider.host) + _filled_path(provider, step.path, values)


def request_headers(provider: Provider, values: dict, unset: set[str] | None = None) -> dict[str, str]:
    return fill_checked_headers(provider, provider.request.headers, values, unset)


def step_headers(provider: Provider, step: Step, values: dict, unset: set[str] | None = None) -> dict[str, str]:
    """header.txt's headers with the step's laid over them; a step header set to null leaves one out."""
    replaced = {name.lower() for name, _ in step.headers}
    kept = [h for h in provider.request.headers if h[0].lower() not in replaced]
    headers = kept + [(name, value) for name, value in step.headers if value is not None]
    return fill_checked_headers(provider, headers, values, unset)


def without_refresh_cookies(provider: Provider, headers: dict[str, str]) -> dict[str, str]:
    """Headers with the cookies the refresh step rotates taken out of any Cookie header: a
    refresh_token pasted in with the rest of the cookie jar goes stale at the first refresh,
    and is never sent with the chat requests."""
    names = {name for name, _ in provider.refresh.set_cookies} if provider.refresh else set()
    cookie = next((key for key in headers if key.lower() == "cookie"), None)
    if not names or cookie is None:
        return headers
    kept = [p for p in headers[cookie].split(";") if p.strip() and p.split("=", 1)[0].strip() not in names]
    trimmed = {key: value for key, value in headers.items() if key != cookie}
    return {**trimmed, cookie: "; ".join(p.strip() for p in kept)} if kept else trimmed


def fill_template(provider: Provider, value: Any, values: dict) -> Any:
    """A body template with its placeholders filled; unset variables are named in the error."""
    try:
        return fill_placeholders(value, values)
    except MissingVariables as exc:
        raise missing_variables_error(provider, exc.names) from None


def fill_checked_headers(provider: Provider, headers: Any, values: dict, unset: set[str] | None = None) -> dict:
    """Fill header values; headers naming an unset optional variable (or one of ``unset``) are left out."""
    try:
        filled = fill_headers(headers, values, provider.optional_variables | (unset or set()))
    except MissingVariables as exc:
        raise missing_variables_error(provider, exc.names) from None
    # A value pasted with a stray space or newline at either end: HTTP would trim it anyway.
    filled = {name: value.strip() for name, value in filled.items()}
    for name, value in filled.items():
        if UNFIT_HEADER_VALUE.search(value):
            _check_header_value(provider, name, value)
    return filled


def missing_variables_error(provider: Provider, names: list[str]) -> ApiError:
    return ApiError(
        f'Provider "{provider.name}" is missing its credential: set {", ".join(names)} in the environment or in .env'
        f"{unreadable_env_lines()}.",
        status=401,
        type="authentication_error",
        code="upstream_credential_missing",
        retryable=False,
    )


def _filled_path(provider: Provider, path: str, values: dict) -> str:
    """A filled path must stay one path on its host: each value one segment, no spaces, line
    breaks or fragments."""
    try:
        filled = fill_url_path(path, values)
    except MissingVariables as exc:
        raise missing_variables_error(provider, exc.names) from None
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
