"""Server-sent events in and out, as small generators over bytes.

Decoding follows the WHATWG event-stream rules and is independent of how bytes are split.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import json_codec
from converters import CLIENT_GONE, ApiError
from redaction import Redactor, printable

DONE = b"data: [DONE]\n\n"
log = logging.getLogger("reverse_api")
KEEP_ALIVE = b": keep-alive\n\n"
MAX_LINE_BYTES = 16 * 1024 * 1024
# One event's data, all its lines together: an upstream that never sends a blank line must not
# grow one event without bound (a few MB of gzip once took a worker past 1.6 GB).
MAX_EVENT_BYTES = MAX_LINE_BYTES


class SseLineTooLong(Exception):
    """A line, or one event's data, grew past its limit (MAX_LINE_BYTES, MAX_EVENT_BYTES)."""


@dataclass(frozen=True)
class SseEvent:
    """One dispatched event; ``event`` is empty when the stream sent no ``event:`` field."""

    data: str
    event: str = ""
    id: str = ""


def iter_lines(chunks: Iterable[bytes], max_line: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """Split bytes into lines on CR, LF or CRLF, even when a CRLF straddles two chunks."""
    for lines in iter_line_blocks(chunks, max_line):
        yield from lines


def iter_line_blocks(chunks: Iterable[bytes], max_line: int = MAX_LINE_BYTES) -> Iterator[list[bytes]]:
    """The lines each chunk completes, together: one list per chunk that ends at least one line."""
    pending: list[bytes] = []
    pending_size = 0
    skip_lf = False
    for chunk in chunks:
        if not chunk:
            continue
        if skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        # A CR at the end of a chunk ends a line; an LF opening the next chunk belongs to it.
        skip_lf = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        pieces = chunk.split(b"\n")
        if len(pieces) > 1:
            pending.append(pieces[0])
            pieces[0] = b"".join(pending)
            rest = pieces.pop()
            pending, pending_size = [rest], len(rest)
            yield pieces
        else:
            pending.append(chunk)
            pending_size += len(chunk)
        if pending_size > max_line:
            raise SseLineTooLong(f"an event line longer than {max_line} bytes")
    # A last line with no line break was cut short; the SSE spec discards it.


def iter_sse_events(chunks: Iterable[bytes], max_event: int = MAX_EVENT_BYTES) -> Iterator[SseEvent]:
    """Parse spec SSE: join multi-line data with LF, skip comments, dispatch on blank lines.

    One exception to the spec: an upstream that writes a whole JSON event on every ``data:``
    line and leaves out the blank lines would have all its events joined into one that cannot
    be parsed. When an event's first two lines each stand alone, they are two events, and from
    then on every line that stands alone is dispatched as soon as it completes.
    """
    data: list[str] = []
    data_size = 0
    event = event_id = ""
    one_per_line = False  # learned: this stream writes a whole event on every data: line
    for raw, line in _decoded_lines(chunks):
        if not line:
            if data:
                yield SseEvent("\n".join(data), event, event_id)
            data, data_size, event = [], 0, ""
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            if not data and one_per_line and _stands_alone(value):
                yield SseEvent(value, event, event_id)
                continue
            # Checked only when a second line arrives, so ordinary streams parse nothing here.
            if len(data) == 1 and _stands_alone(data[0]) and _stands_alone(value):
                one_per_line = True
                yield SseEvent(data[0], event, event_id)
                yield SseEvent(value, event, event_id)
                data, data_size = [], 0
                continue
            data.append(value)
            data_size += len(raw)  # bytes on the wire, whatever the characters
            if data_size > max_event:
                raise SseLineTooLong(f"an event larger than {max_event} bytes")
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            event_id = value
    if data:
        # Complete data lines with no blank line after them: the stream closed right after an event.
        yield SseEvent("\n".join(data), event, event_id)


def _decoded_lines(chunks: Iterable[bytes]) -> Iterator[tuple[bytes, str]]:
    """Each complete line, as bytes and as text. The lines of one read are decoded at once: a line
    break never falls inside a UTF-8 character, so this decodes exactly as line by line would,
    and a character split across two reads survives (only complete lines are decoded)."""
    for block in iter_line_blocks(chunks):
        yield from zip(block, b"\n".join(block).decode("utf-8", errors="replace").split("\n"), strict=True)


def _stands_alone(data: str) -> bool:
    """A data line that is a whole event by itself: a JSON object, or ``[DONE]``."""
    text = data.strip()
    if text == "[DONE]":
        return True
    if not text.startswith("{"):
        return False
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


def iter_data(events: Iterable[SseEvent]) -> Iterator[str]:
    """The data of each event, stripped of Qwen's trailing space; ``[DONE]`` ends the stream."""
    for event in events:
        data = event.data.strip()
        if data == "[DONE]":
            return
        if data:
            yield data


def format_sse(obj: dict) -> bytes:
    """One ``data:`` event on one line, as every OpenAI client expects (a lone surrogate from a
    client's JSON written as its escape, ``\\udXXX``: it cannot be UTF-8)."""
    return b"data: " + json_codec.dumps(obj) + b"\n\n"


def format_event(name: str, obj: dict) -> bytes:
    """One named event (``event:`` then ``data:``), as the Anthropic and Responses streams are written."""
    return b"event: " + name.encode() + b"\n" + format_sse(obj)


def iter_guarded(
    frames: Iterable[bytes],
    render_error: Callable[[ApiError], bytes],
    stream_id: str,
    redact: Redactor,
    close: Callable[[], None],
) -> Iterator[bytes]:
    """A stream's bytes as they come; an error after the first byte ends it the way its front's
    clients read one (``render_error``), a bug as a 500 that tells nothing; ``close`` runs last."""
    try:
        yield from frames
    except ApiError as exc:
        # Upstream text: one log line, whatever it holds. A client that left is no fault here.
        level = logging.INFO if exc.code == CLIENT_GONE else logging.WARNING
        log.log(level, "stream %s ended: %s (%s)", stream_id, printable(redact(exc.message)), exc.code)
        yield render_error(exc)
    except Exception:  # a bug must still end the stream the way clients understand
        log.exception("stream %s failed", stream_id)
        yield render_error(internal_stream_error(stream_id))
    finally:
        close()


def internal_stream_error(stream_id: str) -> ApiError:
    return ApiError(f"Internal error in stream {stream_id}.", status=500, type="server_error", code="internal_error")


def iter_sse_bytes(objects: Iterable[dict | bytes | None]) -> Iterator[bytes]:
    """Frame each object as an SSE event (``None`` as a keep-alive comment, bytes as already
    framed), then ``[DONE]``."""
    for obj in objects:
        yield KEEP_ALIVE if obj is None else obj if type(obj) is bytes else format_sse(obj)
    yield DONE


def iter_coalesced(frames: Iterator[bytes], more_ready: Callable[[], bool]) -> Iterator[bytes]:
    """Frames joined into one write while the reply already holds what comes next: the events of
    one upstream read go out together (one write, one TCP segment, not one per event), and a
    frame is never held once nothing more is waiting. An empty frame is a front saying that a
    delta made nothing (it holds it): what is held goes out then, if nothing more is waiting."""
    held: list[bytes] = []
    try:
        for frame in frames:
            if frame:
                held.append(frame)
            if held and not more_ready():
                yield held[0] if len(held) == 1 else b"".join(held)
                held = []
        if held:
            yield b"".join(held)
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()
