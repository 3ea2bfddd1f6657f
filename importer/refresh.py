"""Token refresh for an imported folder: the refresh-token cookie moved to a variable of its own,
and the dialect's ``refresh_credential`` step written with the folder's variable names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dialects.contract import ImportHints
from placeholders import env_names_in

if TYPE_CHECKING:
    from importer.folder import SecretStore


@dataclass
class RefreshPlan:
    """What an import does about token refresh: the step (or None), the variables it adds to
    ``optional_variables``, and a line for the user."""

    step: dict | None = None
    optional: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def split_refresh_cookie(
    headers: Iterable[tuple[str, str]], cookie: str | None
) -> tuple[list[tuple[str, str]], str | None]:
    """The captured headers with every ``cookie=`` pair taken out of their Cookie headers (one left
    empty is dropped), and the first such value; the rest of each jar is kept as captured."""
    kept: list[tuple[str, str]] = []
    found = None
    for name, value in headers:
        pairs = value.split(";") if cookie and name.lower() == "cookie" else []
        taken = [pair.partition("=")[2].strip() for pair in pairs if _cookie_name(pair) == cookie]
        if not taken:
            kept.append((name, value))
            continue
        found = found or next((token for token in taken if token), None)
        jar = ";".join(pair for pair in pairs if _cookie_name(pair) != cookie).strip()
        if jar:
            kept.append((name, jar))
    return kept, found


def _cookie_name(pair: str) -> str:
    return pair.partition("=")[0].strip()


def plan_refresh(
    dialect: str | None,
    hints: ImportHints | None,
    base_url: str,
    headers: list[tuple[str, str]],
    store: SecretStore,
    refresh_token: str | None,
) -> RefreshPlan:
    """The refresh step of a folder whose dialect knows one; a captured refresh token is stored as
    ``PREFIX_REFRESH_TOKEN`` (for the ``refresh_token`` cookie), step or not, so it never goes back
    into the cookie jar."""
    if hints is None or hints.refresh_cookie is None or hints.refresh_step is None:
        return RefreshPlan()
    cookie = hints.refresh_cookie
    variable = store.variable(cookie, refresh_token) if refresh_token else store.base_name(cookie)
    token = _token_variable(headers)
    step = hints.refresh_step(base_url, token, variable) if token else None
    if step is None:
        kept = [variable] if refresh_token else []  # ready for a step declared by hand
        return RefreshPlan(None, kept, [_no_step_line(dialect, base_url, token)])
    if refresh_token:
        line = f"Token refresh: {token} is renewed at {step.get('host') or base_url} with {variable}."
    else:
        line = (
            f"Token refresh: declared, but the captured Cookie held no {cookie}: {token} is used until it "
            f"expires; set {variable} in .env to have it renewed."
        )
    return RefreshPlan(step, [variable], [line])


def _token_variable(headers: list[tuple[str, str]]) -> str:
    """The variable the captured Authorization header moved to (what a refresh renews), or ""."""
    names = [n for name, value in headers if name.lower() == "authorization" for n in env_names_in(value)]
    return names[0] if len(names) == 1 else ""


def _no_step_line(dialect: str | None, base_url: str, token: str) -> str:
    if not token:
        return "Token refresh: none: the capture has no Authorization token to renew, so no refresh_credential step."
    return (
        f"Token refresh: none: the {dialect} dialect knows no refresh endpoint for {base_url}, so the folder "
        f"has no refresh_credential step and {token} is used until it expires."
    )
