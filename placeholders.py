"""``${NAME}`` placeholders: which variables a value names, and filling them in, structurally.

Upper-case names come from the environment; lower-case ones are per-request values.
"""

from __future__ import annotations

import functools
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# ``${dollar}`` fills to a literal "$": how the importer keeps a captured "${...}" from going live.
LITERAL_DOLLAR = "${dollar}"
# Upper-case names come from the environment; lower-case ones are filled per request.
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# ``date`` is the time as a browser's Date string, in UTC ("Wed Dec 02 2026 03:20:00 GMT+0000"): Qwen's Timezone header.
REQUEST_VALUES = frozenset({"chat_id", "uuid", "timestamp", "timestamp_ms", "model", "dollar", "date"})


# What a filled value may keep as it is: in a path, what one segment can hold (RFC 3986 pchar);
# in the query, the same less "&" and "#" (which would start another parameter or a fragment).
SEGMENT_SAFE = "!$&'()*+,;=:@"
QUERY_SAFE = "!$'()*+,;=:@/?"


class UnsafePathValue(ValueError):
    """A value filled into a path that would climb out of its segment ("." or "..")."""


class MissingVariables(Exception):
    """Placeholders whose environment variables are unset or empty."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = sorted(set(names))
        super().__init__("Missing variables: " + ", ".join(self.names))


def env_names_in(value: Any) -> list[str]:
    """Environment placeholder names used anywhere in a JSON-like value."""
    names: list[str] = []
    for text in iter_strings(value):
        names.extend(n for n in PLACEHOLDER.findall(text) if ENV_NAME.match(n))
    return names


def fill_placeholders(value: Any, variables: Mapping[str, Any]) -> Any:
    """Return a copy of a JSON-like value with every ``${NAME}`` replaced, walking the structure.

    A string that is exactly one placeholder takes the variable's own type (an int stays an int).
    :raise MissingVariables: listing every name that has no non-empty value.
    """
    missing: list[str] = []
    filled = _fill(value, variables, missing)  # _fill builds new containers: the input is never changed
    if missing:
        raise MissingVariables(missing)
    return filled


def _fill(value: Any, variables: Mapping[str, Any], missing: list[str]) -> Any:
    if isinstance(value, dict):
        return {key: _fill(item, variables, missing) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, variables, missing) for item in value]
    if isinstance(value, str):
        return _fill_string(value, variables, missing)
    return value


def _fill_string(text: str, variables: Mapping[str, Any], missing: list[str]) -> Any:
    whole = PLACEHOLDER.fullmatch(text)
    if whole and variables.get(whole.group(1)) not in (None, ""):
        return variables[whole.group(1)]

    def replace(match: re.Match) -> str:
        found = variables.get(match.group(1))
        if found in (None, ""):
            missing.append(match.group(1))
            return ""
        return str(found)

    return PLACEHOLDER.sub(replace, text)


def escape_placeholders(text: str) -> str:
    """Text that fills to itself: every ``${`` in it written as ``${dollar}{``."""
    return text.replace("${", LITERAL_DOLLAR + "{")


def fill_headers(
    headers: Iterable[tuple[str, str]], variables: Mapping[str, Any], optional: frozenset[str]
) -> dict[str, str]:
    """Fill header values; a header whose optional variable is unset or empty is dropped."""
    filled: dict[str, str] = {}
    missing: list[str] = []
    for name, value, used in header_template(tuple(headers)):
        if not used:
            filled[name] = value
            continue
        if any(n in optional and variables.get(n) in (None, "") for n in used):
            continue
        filled[name] = str(_fill_string(value, variables, missing))
    if missing:
        raise MissingVariables(missing)
    return filled


@functools.lru_cache(maxsize=256)
def header_template(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """Each header with the placeholder names its value uses, found once per folder's headers."""
    return tuple((name, value, tuple(PLACEHOLDER.findall(value))) for name, value in headers)


def iter_strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from iter_strings(item)


def fill_url_path(template: str, variables: Mapping[str, Any]) -> str:
    """Fill a request path: each value becomes one path segment (or one query value), percent-encoded.

    Environment values keep their own percent-escapes (the importer stores captured ones as
    sent); per-request values (``${model}``, from the client) are encoded whole.
    :raise MissingVariables: listing every name that has no non-empty value.
    :raise UnsafePathValue: for a value that is "." or ".." in the path.
    """
    missing: list[str] = []
    base, mark, query = template.partition("?")
    filled = _fill_url_part(base, variables, SEGMENT_SAFE, missing) + mark
    filled += _fill_url_part(query, variables, QUERY_SAFE, missing) if mark else ""
    if missing:
        raise MissingVariables(missing)
    return filled


def _fill_url_part(text: str, variables: Mapping[str, Any], safe: str, missing: list[str]) -> str:
    def replace(match: re.Match) -> str:
        name, found = match.group(1), variables.get(match.group(1))
        if found in (None, ""):
            missing.append(name)
            return ""
        value = str(found)
        if safe == SEGMENT_SAFE and urllib.parse.unquote(value) in (".", ".."):
            raise UnsafePathValue(name)
        return urllib.parse.quote(value, safe=safe + ("%" if ENV_NAME.match(name) else ""))

    return PLACEHOLDER.sub(replace, text)
