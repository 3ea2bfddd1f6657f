"""JSON in and out on the hot paths (request bodies, upstream bodies and frames, stream chunks).

orjson is several times faster than the standard library at both ends. It is stricter, so
whatever it refuses is handed to the standard library, which keeps today's behaviour exactly:
lone surrogates (a client's ``"\\ud800"``), ``NaN`` and ``Infinity``, and on the way out
integers past 64 bits. Nothing but a refusal pays for the second try. The one difference left:
an integer past 64 bits is read as a float (no field of any API here holds one).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: str | bytes) -> Any:
    """Parse JSON text; raises ``ValueError`` (``json.JSONDecodeError``) as ``json.loads`` does."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON, non-ASCII written as itself; a lone surrogate as its ``\\udXXX`` escape."""
    try:
        return orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError: a lone surrogate, an int past 64 bits, a str subclass
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8", errors="backslashreplace")
