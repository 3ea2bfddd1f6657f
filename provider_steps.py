"""The upstream steps a provider folder declares in metadata.json, read and checked.

Every step has one form: ``method``, ``path``, ``headers`` (laid over header.txt's; ``null``
leaves a captured header out), ``body``, and optionally its own ``host`` and ``scheme`` (Qwen
refreshes its token at auth.qwen.ai, not at the chat host). What a step reads from its answer
depends on the step: ``create_chat`` the new chat's ``id_field``; ``refresh_credential`` the
``fields`` (dotted path -> variable) and ``set_cookies`` (cookie name -> variable) that replace
the variables they name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from placeholders import ENV_NAME, env_names_in

STEP_KEYS = frozenset({"method", "path", "headers", "body", "host", "scheme"})
CREATE_CHAT_KEYS = STEP_KEYS | {"id_field"}
REFRESH_KEYS = STEP_KEYS | {"fields", "set_cookies", "token_variable"}
SCHEMES = ("https", "http")


class StepError(ValueError):
    """A step declaration that cannot be used; the message names the key and the reason."""


@dataclass(frozen=True)
class Step:
    """One declared upstream request, and what to read from its answer."""

    method: str
    path: str
    headers: tuple[tuple[str, str | None], ...] = ()  # over header.txt's; None leaves one out
    body: dict | None = field(default=None, hash=False, compare=False)
    host: str = ""  # empty: the provider's own
    scheme: str = ""
    id_field: str = "data.id"
    fields: tuple[tuple[str, str], ...] = ()  # answer path -> variable it replaces
    set_cookies: tuple[tuple[str, str], ...] = ()  # cookie name -> variable it replaces
    token_variable: str = ""  # whose expiry says when to run this step again

    def base_url(self, scheme: str, host: str) -> str:
        """Where the step goes: its own host and scheme, or the provider's."""
        return f"{self.scheme or scheme}://{self.host or host}"

    def names_read(self) -> set[str]:
        """Environment variables the step's request uses (found once: every request asks)."""
        found = self.__dict__.get("_names_read")
        if found is None:
            sent = [value for _, value in self.headers if value is not None]
            found = frozenset(env_names_in([sent, self.path, self.body or {}]))
            object.__setattr__(self, "_names_read", found)  # frozen, and the answer never changes
        return set(found)

    def names_written(self) -> list[str]:
        """Variables the step's answer replaces, in declaration order."""
        return list(dict.fromkeys([name for _, name in self.fields] + [name for _, name in self.set_cookies]))


def parse_create_chat(spec: Any) -> Step | None:
    """The optional step that opens a chat before each completion (Qwen's v2 flow)."""
    if spec is None:
        return None
    step = _parse_step(spec, CREATE_CHAT_KEYS)
    id_field = spec.get("id_field", "data.id")
    if not isinstance(id_field, str) or not id_field:
        raise StepError("'id_field' must be a dotted path such as 'data.id'")
    return replace(step, id_field=id_field)


def parse_refresh(spec: Any) -> Step | None:
    """The optional step that trades a refresh token for a new credential."""
    if spec is None:
        return None
    step = _parse_step(spec, REFRESH_KEYS)
    fields = _variable_map(spec, "fields")
    cookies = _variable_map(spec, "set_cookies")
    if not fields and not cookies:
        raise StepError("'fields' or 'set_cookies' must name the variables the answer replaces")
    written = [name for _, name in fields + cookies]
    token = spec.get("token_variable", written[0])
    if token not in written:
        raise StepError("'token_variable' must be one of the variables the answer replaces")
    return replace(step, fields=fields, set_cookies=cookies, token_variable=token)


def _parse_step(spec: Any, known: frozenset[str]) -> Step:
    if not isinstance(spec, dict):
        raise StepError("must be an object")
    unknown = sorted(set(spec) - known)
    if unknown:
        raise StepError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    path, method, body = spec.get("path"), spec.get("method", "POST"), spec.get("body")
    if not isinstance(path, str) or not path.startswith("/"):
        raise StepError("'path' must start with '/'")
    if not isinstance(method, str) or not method.isalpha():
        raise StepError("'method' must be an HTTP method such as 'GET' or 'POST'")
    if body is not None and not isinstance(body, dict):
        raise StepError("'body' must be a JSON object")
    return Step(method.upper(), path, _headers(spec.get("headers", {})), body, _host(spec), _scheme(spec))


def _headers(headers: Any) -> tuple[tuple[str, str | None], ...]:
    if not isinstance(headers, dict) or not all(v is None or isinstance(v, str) for v in headers.values()):
        raise StepError("'headers' must map names to strings (or null, to leave a captured header out)")
    return tuple(headers.items())


def _host(spec: dict) -> str:
    host = spec.get("host", "")
    if not isinstance(host, str) or any(c in host for c in "/\\@?# \r\n"):
        raise StepError(f"'host' must be a bare host[:port], got {host!r}")
    return host.strip()


def _scheme(spec: dict) -> str:
    scheme = spec.get("scheme", "")
    if scheme and scheme not in SCHEMES:
        raise StepError("'scheme' must be 'https' or 'http'")
    return scheme


def _variable_map(spec: dict, key: str) -> tuple[tuple[str, str], ...]:
    value = spec.get(key, {})
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise StepError(f"{key!r} must map names to variable names")
    for name in value.values():
        if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
            raise StepError(f"{key!r}: {name!r} is not an upper-case variable name")
    return tuple(value.items())
