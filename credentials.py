"""What can be told of a credential without asking the upstream: a JWT's expiry, a fingerprint,
the cookies an answer sets. Pure: nothing here sends or stores anything.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Iterable, Mapping


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` of a JWT, read without checking its signature (the upstream checks it); None
    for anything that is not a JWT with a numeric ``exp`` (such a token is used as it is)."""
    claims = _jwt_part(token.removeprefix("Bearer "), 1)
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, (int, float)) and not isinstance(exp, bool):
        return float(exp)
    return None


def is_jwt(token: str) -> bool:
    """Three base64url parts whose first is a JSON header naming its algorithm: what a JWT looks like."""
    header = _jwt_part(token, 0)
    return isinstance(header, dict) and "alg" in header


def _jwt_part(token: str, index: int) -> object:
    """Part ``index`` of a three-part token, base64url-decoded as JSON; None when it is none."""
    parts = token.strip().split(".")
    if len(parts) != 3:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(parts[index] + "=" * (-len(parts[index]) % 4)))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def without_bearer(value: str) -> str:
    """A credential pasted with its ``Bearer `` prefix (a whole Authorization value), without it."""
    head, _, rest = value.partition(" ")
    return rest.strip() if head.lower() == "bearer" and rest.strip() else value


def fingerprint(values: Mapping[str, str]) -> str:
    """A short digest of credential values: tells "the operator put new values in .env" from
    "these are the values we started from", without keeping the values themselves."""
    return _digest(tuple(sorted(values.items())))


# The same few credentials are fingerprinted on every request; the cache holds in memory only
# what the environment holds already.
@functools.lru_cache(maxsize=256)
def _digest(items: tuple[tuple[str, str], ...]) -> str:
    canonical = json.dumps(items, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def cookie_pairs(set_cookie_headers: Iterable[str]) -> dict[str, str]:
    """``name -> value`` of each ``Set-Cookie`` header (attributes such as Path and Expires dropped)."""
    pairs = {}
    for header in set_cookie_headers:
        name, sep, value = header.split(";", 1)[0].partition("=")
        if sep and name.strip():
            pairs[name.strip()] = value.strip().strip('"')
    return pairs
