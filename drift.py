"""Drift: what a dialect's parser met in an upstream's stream and did not recognise, counted.

A web upstream changes without notice; these counts (shown per provider in ``/health``) say so
before users notice empty or garbled answers. Only shapes are kept: names of keys and phases,
never content, ids or secrets.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

UNKNOWN_PHASE = "unknown_phase"
UNKNOWN_KEY = "unknown_key"
DROPPED_CANDIDATE = "dropped_candidate"
EMPTY_REPLY = "empty_reply"
ZERO_OUTPUT_ROUND = "zero_output_round"
KINDS = (UNKNOWN_PHASE, UNKNOWN_KEY, DROPPED_CANDIDATE, EMPTY_REPLY, ZERO_OUTPUT_ROUND)
# Names shown as they are: letters, "_" and "." only, and short. Anything else (digits, dashes,
# spaces: what ids, keys of other services and text look like) is shown by its length alone.
SHOWN_NAME = re.compile(r"[A-Za-z][A-Za-z_.]{0,39}")


def shape_name(value: Any) -> str:
    """A key or phase name fit to show in /health, where anyone may look: never content."""
    text = str(value)
    if SHOWN_NAME.fullmatch(text):
        return text
    return f"<{len(text)} character{'' if len(text) == 1 else 's'}>"


class DriftLog:
    """Counts of unrecognised shapes for one provider, and the last one met."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(KINDS, 0)
        self._last: dict | None = None

    def note(self, kind: str, **shape: Any) -> None:
        """Count one drift event; ``shape`` holds names (of keys, phases), never content."""
        with self._lock:
            self._counts[kind] += 1
            self._last = {"kind": kind, **{k: _shown(v) for k, v in shape.items()}, "at": int(time.time())}

    def snapshot(self) -> dict:
        with self._lock:
            return {"counts": dict(self._counts), "last": dict(self._last) if self._last else None}

    @property
    def total(self) -> int:
        return sum(self._counts.values())


class StreamDrift:
    """One stream's view of a DriftLog: each (kind, name) is counted once per stream."""

    def __init__(self, log: DriftLog | None) -> None:
        self.log = log
        self._seen: set[tuple] = set()

    def note(self, kind: str, **shape: Any) -> None:
        key = (kind, *sorted((k, str(v)) for k, v in shape.items()))
        if self.log is not None and key not in self._seen:
            self._seen.add(key)
            self.log.note(kind, **shape)


def _shown(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [shape_name(item) for item in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return shape_name(value)


class DriftLogs:
    """One DriftLog per provider, made on first use, and the last error each provider's requests
    ended with (its code, status and time: no text, which may quote the upstream); kept for the
    life of the process."""

    def __init__(self) -> None:
        self._logs: dict[str, DriftLog] = {}
        self._errors: dict[str, dict] = {}

    def note_error(self, provider: str, code: str, status: int) -> None:
        self._errors[provider] = {"code": code, "status": status, "at": int(time.time())}

    def last_error(self, provider: str) -> dict | None:
        found = self._errors.get(provider)
        return dict(found) if found else None

    def of(self, provider: str) -> DriftLog:
        log = self._logs.get(provider)
        return log if log is not None else self._logs.setdefault(provider, DriftLog())

    def snapshot(self, provider: str) -> dict:
        return self.of(provider).snapshot()
