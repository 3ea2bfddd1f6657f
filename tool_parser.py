"""An incremental reader of the tool calls a web chat writes in its answer, as the prompt taught it.

Provides ``ToolCallParser`` (feed text, get ``TextEvent``s and ``CallEvent``s) and ``parse_all``. Pure: no I/O.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

CALL_START = "[TOOL CALL]"
CALL_END = "[END TOOL CALL]"
START_MARKERS = (CALL_START, "<tool_call>")  # the second: models trained on it write it anyway
END_MARKERS = (CALL_END, "</tool_call>")
FENCE = "```"
MAX_CALL_BODY = 256 * 1024  # characters read after a start marker before the call is given up as text
MAX_EDGE = 256  # characters of whitespace and fence allowed before and after the JSON of a call

# Markers match in any ASCII letter case; translate() keeps lengths, where str.lower() may not.
_LOWER = {code: code + 32 for code in range(ord("A"), ord("Z") + 1)}
_STARTS = tuple(marker.lower() for marker in START_MARKERS)
_ENDS = tuple(marker.lower() for marker in END_MARKERS)
_TEXT_STOP = re.compile("|".join(re.escape(m) for m in (*_STARTS, FENCE)), re.IGNORECASE | re.ASCII)
_FENCE_STOP = re.compile(re.escape(FENCE))
_STRING_STOP = re.compile(r'["\\]')
_OBJECT_STOP = re.compile(r'["{}\[\]<`]')
_LEAD = re.compile(r"\s*(?:```[\w+.-]*\s*)?")  # what may open a call body: whitespace and a ```json fence
_LEAD_PREFIX = re.compile(r"\s*(?:`{1,2}|```[\w+.-]*\s*)?")
_TRAIL_PREFIX = re.compile(r"\s*(?:`{1,3}\s*)?")
_FENCE_AROUND = re.compile(r"^```[\w+.-]*|```$")


@dataclass(frozen=True)
class TextEvent:
    """Answer text, to pass on as it is."""

    text: str


@dataclass(frozen=True)
class CallEvent:
    """One complete tool call: a known tool's name and its arguments."""

    name: str
    arguments: dict


Event = TextEvent | CallEvent


class ToolCallParser:
    """Splits an answer into text and tool calls, the same however the text was cut into pieces.

    Text goes out as soon as it cannot begin a marker; a call goes out once its end marker arrives.
    Between markers a JSON lexer follows strings, so an end marker quoted in an argument ends nothing.
    """

    def __init__(self, tool_names: Iterable[str]) -> None:
        self._names = frozenset(tool_names)
        self._reset()

    def _reset(self) -> None:
        self._rest = ""  # not yet read: held-back text, or the unread part of a call
        self._line = ""  # the end of the current line as read so far (a fence counts at its start only)
        self._in_fence = False
        self._in_call = False
        self._head: list[str] = []  # the call read so far, its start marker first
        self._size = 0  # characters of the call body read so far
        self._phase = "lead"  # where the call's JSON stands: "lead", "object" or "trail"
        self._edge = ""  # whitespace and fence read before or after the JSON
        self._depth = 0
        self._in_string = False

    def feed(self, text: str) -> list[Event]:
        self._rest += text
        events: list[Event] = []
        while (self._step_call if self._in_call else self._step_text)(events):
            pass
        return events

    def finish(self) -> list[Event]:
        """What remains at the end of the answer; the parser is then ready for another."""
        events: list[Event] = []
        if self._in_call:
            text = "".join(self._head) + self._rest
            call = _call_from(_without_end_prefix(text[len(self._head[0]) :]), self._names)
            if call:
                events.append(call)
            else:
                _emit(events, text)
        else:
            _emit(events, self._rest)
        self._reset()
        return events

    # --- text between calls ---------------------------------------------------------------

    def _step_text(self, out: list[Event]) -> bool:
        """Emit text up to a start marker (True: a call begins) or up to a held-back tail (False)."""
        buffer, pos = self._rest, 0
        while match := (_FENCE_STOP if self._in_fence else _TEXT_STOP).search(buffer, pos):
            if match.group() != FENCE:
                self._emit_text(out, buffer[: match.start()])
                self._line = "call"  # whatever follows the call is not at a line's start
                self._start_call(match.group(), buffer[match.end() :])
                return True
            if self._opens_line(buffer, match.start()):
                self._in_fence = not self._in_fence  # markers inside a code block are documentation
            pos = match.end()
        keep = _held_from(buffer, pos, (FENCE,) if self._in_fence else (*_STARTS, FENCE))
        self._emit_text(out, buffer[:keep])
        self._rest = buffer[keep:]
        return False

    def _opens_line(self, buffer: str, at: int) -> bool:
        """A fence counts only at the start of a line (after at most three spaces), as in Markdown:
        an inline ``` in prose must not turn every later call into documentation."""
        start = buffer.rfind("\n", 0, at)
        before = buffer[start + 1 : at] if start >= 0 else self._line + buffer[:at]
        return len(before) <= 3 and not before.strip()

    def _emit_text(self, out: list[Event], text: str) -> None:
        _emit(out, text)
        newline = text.rfind("\n")
        self._line = (self._line + text if newline < 0 else text[newline + 1 :])[-4:]

    def _start_call(self, marker: str, rest: str) -> None:
        self._in_call, self._head, self._rest, self._size = True, [marker], rest, 0
        self._phase, self._edge, self._depth, self._in_string = "lead", "", 0, False

    # --- inside a call ----------------------------------------------------------------------

    def _step_call(self, out: list[Event]) -> bool:
        """Read the call's body; True once it is decided (a call, or text), False to wait for more."""
        rest, i = self._rest, 0
        limit = MAX_CALL_BODY - self._size
        bound = min(len(rest), limit)
        while i < bound:
            if self._in_string:
                i, waiting = self._skip_string(rest, i, bound)
                if waiting:
                    break
                continue
            char = rest[i]
            if char in "[<":
                marker = _marker_at(rest, i)
                if marker is None:  # perhaps a marker, cut short: wait for the rest of it
                    break
                if marker:
                    return self._close(out, i, len(marker) if marker in _ENDS else 0)
            if not self._read(char):
                return self._close(out, i, 0, failed=True)
            i = self._next(rest, i + 1, bound)
        if i >= limit:  # this long without an end: given up, to keep memory bounded
            return self._close(out, i, 0, failed=True)
        self._head.append(rest[:i])
        self._size += i
        self._rest = rest[i:]
        return False

    def _skip_string(self, rest: str, i: int, bound: int) -> tuple[int, bool]:
        """Where reading goes on after a JSON string's next quote or escape; True to wait for more text."""
        match = _STRING_STOP.search(rest, i, bound)
        if match is None:
            return bound, False
        if match.group() == '"':
            self._in_string = False
            return match.end(), False
        if match.end() >= len(rest):  # the escaped character has not come yet
            return match.start(), True
        return match.end() + 1, False

    def _read(self, char: str) -> bool:
        """Advance the call's JSON by one character outside a string; False when it cannot be a call."""
        if self._phase == "object":
            if char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                self._phase = "trail" if self._depth == 0 else "object"
            elif char == '"':
                self._in_string = True
            return char not in "<`"
        if self._phase == "key":
            # Just after the object's "{" only a key or the object's end may come: prose such as
            # "[TOOL CALL] { and then..." is text at once, not held to the end of the answer.
            if char.isspace():
                return True
            self._phase = "object"
            if char == "}":
                self._depth, self._phase = 0, "trail"
            self._in_string = char == '"'
            return char in '"}'
        if self._phase == "lead" and char == "{":
            lead, self._phase, self._depth, self._edge = self._edge, "key", 1, ""
            return _LEAD.fullmatch(lead) is not None
        self._edge += char
        prefix = _LEAD_PREFIX if self._phase == "lead" else _TRAIL_PREFIX
        return len(self._edge) <= MAX_EDGE and prefix.fullmatch(self._edge) is not None

    def _next(self, rest: str, i: int, bound: int) -> int:
        """Where reading goes on: inside the JSON object, straight to the next character that matters."""
        if self._phase != "object" or self._in_string:
            return i
        match = _OBJECT_STOP.search(rest, i, bound)
        return match.start() if match else bound

    def _close(self, out: list[Event], i: int, end: int, failed: bool = False) -> bool:
        """Decide the call that ends at ``i`` (its end marker ``end`` characters long); back to text."""
        text = "".join(self._head) + self._rest[:i]
        call = None if failed else _call_from(text[len(self._head[0]) :], self._names)
        if call:
            out.append(call)
        else:
            text += self._rest[i : i + end]
            self._emit_text(out, text)
            if text.count(FENCE) % 2:  # the reader sees a fence opened in that text
                self._in_fence = not self._in_fence
        self._in_call = False
        self._rest = self._rest[i + end :]
        return True


def parse_all(text: str, tool_names: Iterable[str]) -> list[Event]:
    """A whole answer's events, adjacent text merged: the non-streaming path, and a reference for tests."""
    parser = ToolCallParser(tool_names)
    events: list[Event] = []
    for event in parser.feed(text) + parser.finish():
        if isinstance(event, TextEvent):
            _emit(events, event.text)
        else:
            events.append(event)
    return events


def _emit(out: list[Event], text: str) -> None:
    if not text:
        return
    if out and isinstance(out[-1], TextEvent):
        out[-1] = TextEvent(out[-1].text + text)
    else:
        out.append(TextEvent(text))


def _held_from(buffer: str, pos: int, patterns: tuple[str, ...]) -> int:
    """Where the longest tail of ``buffer[pos:]`` that could begin one of ``patterns`` starts."""
    longest = max(map(len, patterns)) - 1
    tail = buffer[max(pos, len(buffer) - longest) :].translate(_LOWER)
    for size in range(len(tail), 0, -1):
        if any(pattern.startswith(tail[-size:]) for pattern in patterns):
            return len(buffer) - size
    return len(buffer)


def _marker_at(text: str, i: int) -> str | None:
    """The (lower-case) marker that starts at ``i``; "" when none does; None when too little text is here."""
    piece = text[i : i + len(CALL_END)].translate(_LOWER)
    for marker in (*_ENDS, *_STARTS):
        if piece.startswith(marker):
            return marker
    if any(marker.startswith(piece) for marker in (*_ENDS, *_STARTS)):
        return None
    return ""


def _without_end_prefix(body: str) -> str:
    """A body cut off at the end of the answer, less the beginning of an end marker it may end with."""
    stripped = body.rstrip()
    for size in range(min(len(stripped), len(CALL_END) - 1), 0, -1):
        if any(marker.startswith(stripped[-size:].translate(_LOWER)) for marker in _ENDS):
            return stripped[:-size]
    return body


def _call_from(body: str, names: frozenset[str]) -> CallEvent | None:
    """The call a body holds: ``{"name": ..., "arguments": {...}}`` naming a known tool, or None."""
    data = _json_object(_FENCE_AROUND.sub("", body.strip()).strip())
    name = data.get("name") if data else None
    if not isinstance(name, str) or name not in names:
        return None
    arguments = data.get("arguments", data.get("parameters"))  # "parameters": a common slip
    if arguments is None or arguments == "":
        arguments = {}
    elif isinstance(arguments, str):  # OpenAI's own wire form: an object, encoded
        arguments = _json_object(arguments)
    return CallEvent(name, arguments) if isinstance(arguments, dict) else None


def _json_object(text: str) -> dict | None:
    try:
        data = json.loads(text, strict=False, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400: read as infinity, written back as Infinity, which is not JSON
        raise ValueError(f"{text} is out of range")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity: a client could not read them back
