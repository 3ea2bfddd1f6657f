"""Keep-alive while the upstream is silent: a reply read in its own thread, so silence is noticed.

A thinking model can send nothing for a long time before its first delta, and clients, proxies
and load balancers drop connections idle for 30 to 100 s. The reader thread hands deltas over a
bounded handoff; the stream being written sees a heartbeat whenever nothing came for a while.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from converters import CLIENT_GONE, ApiError, Delta, upstream_error

QUEUE_SIZE = 64  # deltas read ahead of a slow client; past this the reader waits
OFFER_RETRY_SECONDS = 0.5  # how often a waiting reader checks whether anyone still listens
PAUSE_SECONDS = 0.002  # items further apart than this are a paced stream, not a burst
_OPEN_REPLIES: weakref.WeakSet = weakref.WeakSet()  # the replies being read, for end_open_replies


class Abort:
    """What to cut when nobody listens any more: the upstream replies a reader has open."""

    def __init__(self) -> None:
        self._replies: list[Any] = []
        self._fired = False

    def watch(self, reply: Any) -> None:
        self._replies.append(reply)
        if self._fired:  # opened after the client left (its headers were still on the way)
            reply.abort()

    def __call__(self) -> None:
        self._fired = True
        for reply in self._replies:
            reply.abort()


class Handoff:
    """A bounded hand-over from one reader thread to one writer, with no lock taken while the
    writer is behind: items wait in a deque (its appends and pops are atomic), and each side
    wakes the other only when that one is waiting (for an item, or for room)."""

    def __init__(self, size: int) -> None:
        self._items: deque = deque()
        self._size = size
        self._arrived, self._taken = threading.Event(), threading.Event()
        self._writer_waits = self._reader_waits = False
        self._last_put = 0.0

    def ready(self) -> bool:
        """Whether an item is waiting: taking it will not block."""
        return bool(self._items)

    def put(self, item: tuple, stop: threading.Event) -> bool:
        """Hand ``item`` over, waiting while the writer is ``size`` items behind; False once
        ``stop`` is set (nobody listens any more)."""
        while len(self._items) >= self._size:
            if stop.is_set():
                return False
            self._reader_waits = True
            self._taken.clear()
            if len(self._items) >= self._size:  # looked at after the flag: a take in between is seen
                self._taken.wait(OFFER_RETRY_SECONDS)
            self._reader_waits = False
        if stop.is_set():
            return False
        self._items.append(item)
        now = time.monotonic()
        if self._writer_waits:
            self._arrived.set()
            if now - self._last_put > PAUSE_SECONDS:
                # The first item after a pause goes out now, before the reader reads on; in a
                # burst the reader goes on, and what it reads meanwhile goes out in one write.
                time.sleep(0)
        self._last_put = now
        return True

    def put_now(self, item: tuple) -> None:
        """Hand ``item`` over past the bound, from any thread (the service is stopping)."""
        self._items.append(item)
        self._arrived.set()

    def get(self, timeout: float) -> tuple | None:
        """The next item, or None when none came within ``timeout`` seconds."""
        if not self._items:
            self._writer_waits = True
            self._arrived.clear()
            if not self._items:  # looked at after the flag: an item put in between is seen
                self._arrived.wait(timeout)
            self._writer_waits = False
            if not self._items:
                return None
        item = self._items.popleft()
        if self._reader_waits:
            self._taken.set()
        return item


def end_open_replies(error: ApiError) -> None:
    """Give every reply still being written ``error`` after what it holds: the service is stopping
    at once, and its clients get an error event rather than a silent cut."""
    for reply in list(_OPEN_REPLIES):
        reply.interrupt(error)


class PacedReply:
    """Deltas produced by a reader thread; ``next_within`` gives None when nothing came in time.

    ``produce(watch)`` opens the reply, passing each upstream reply it opens to ``watch``.
    """

    def __init__(self, produce: Callable[[Callable[[Any], None]], Iterator[Delta]]) -> None:
        self._handoff = Handoff(QUEUE_SIZE)
        self._stop = threading.Event()
        self._abort = Abort()
        self._finished = False
        _OPEN_REPLIES.add(self)
        # The reader holds no reference to this object: once the stream is dropped, the reader stops.
        weakref.finalize(self, self._stop.set)
        abort = self._abort
        args = (lambda: produce(abort.watch), self._handoff, self._stop)
        threading.Thread(target=_read, args=args, daemon=True).start()

    def next_within(self, seconds: float) -> Delta | None:
        """The next delta, or None after ``seconds`` of silence; re-raises the reader's error.

        :raise StopIteration: when the reply has ended.
        """
        item = self._handoff.get(max(0.0, seconds))
        if item is None:
            return None
        kind, value = item
        if kind == "error":
            self._finished = True
            raise value
        if kind == "end":
            self._finished = True
            self._stop.set()
            raise StopIteration
        return value

    def ready(self) -> bool:
        """Whether the next delta (or the end) is already here: a writer may join it to what it holds."""
        return self._handoff.ready()

    def interrupt(self, error: ApiError) -> None:
        """End the reply with ``error`` now, whatever the reader is doing."""
        self._stop.set()
        self._handoff.put_now(("error", error))

    def close(self) -> None:
        """Nobody listens any more: stop the reader and, if the reply was still coming, cut the
        upstream connection at once rather than at its next frame (which may be a minute away)."""
        self._stop.set()
        if not self._finished:
            self._finished = True
            self._abort()


def _read(produce: Callable[[], Iterator[Delta]], handoff: Handoff, stop: threading.Event) -> None:
    deltas = None
    try:
        deltas = produce()
        waiting_for_first = True
        for delta in deltas:
            if not handoff.put(("delta", delta), stop):
                return
            if waiting_for_first and not (delta.heartbeat or delta.is_notice):
                # Let the writer send the first words now rather than after the rest of this read.
                time.sleep(0)
                waiting_for_first = False
        handoff.put(("end", None), stop)
    except BaseException as exc:  # an ApiError above all: raised again where the stream is written
        handoff.put(("error", exc), stop)
        if not isinstance(exc, Exception):
            raise
    finally:
        if deltas is not None:
            deltas.close()  # releases the upstream connection


# A heartbeat made here, for the client, when the upstream has been silent: unlike the upstream's
# own keep-alives (dropped before the first byte), it commits the stream to HTTP 200.
SILENCE = Delta(heartbeat=True)
POLL_SECONDS = 1.0  # how often a waiting request looks whether its client is still there


def client_gone() -> ApiError:
    """The client closed its connection: nobody waits for this reply any more (499, as nginx logs it)."""
    return ApiError("The client closed the connection before the reply was complete.", status=499, code=CLIENT_GONE)


@dataclass(frozen=True)
class Watch:
    """How one request waits: keep-alives (0: none), an overall deadline, and who is listening."""

    keepalive: float
    timeout: float  # REQUEST_TIMEOUT: seconds for the whole reply
    client_gone: Callable[[], bool] = lambda: False


def iter_watched(reply: PacedReply, watch: Watch) -> Iterator[Delta]:
    """The reply's deltas, with SILENCE after ``keepalive`` seconds without a delta for the client,
    a 504 past the deadline, and an end as soon as the client has left."""
    started = time.monotonic()
    deadline, silent_since, looked = started + watch.timeout, started, started
    try:
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise upstream_error(
                    f"The reply took longer than REQUEST_TIMEOUT ({watch.timeout:g} s).",
                    status=504,
                    code="upstream_timeout",
                )
            if now - looked >= POLL_SECONDS:
                looked = now
                if watch.client_gone():
                    raise client_gone()
            wait = min(POLL_SECONDS, deadline - now)
            if watch.keepalive:
                wait = min(wait, max(0.0, silent_since + watch.keepalive - now))
            try:
                delta = reply.next_within(wait)
            except StopIteration:
                return
            if delta is not None and not delta.heartbeat:
                silent_since = now  # close enough, and one clock read fewer per delta
                yield delta
                continue
            # Silence, or the upstream's own keep-alive (which is not for the client yet).
            if watch.keepalive and time.monotonic() - silent_since >= watch.keepalive:
                silent_since = time.monotonic()
                yield SILENCE
            if delta is not None:
                yield delta
    finally:
        reply.close()


class WatchedReply:
    """A reply's deltas, and whether the next one is already here (``ready``): what lets a writer
    send the events of one upstream read in one write without holding any for a later one."""

    def __init__(self, deltas: Iterator[Delta], ready: Callable[[], bool]) -> None:
        self._deltas = deltas
        self.ready = ready
        self.ended = ""  # how the reply ended, for the request's log line: completed, client_left, error <code>

    def __iter__(self) -> WatchedReply:
        return self

    def __next__(self) -> Delta:
        try:
            return next(self._deltas)
        except StopIteration:
            self.ended = "completed"
            raise
        except ApiError as exc:
            self.ended = "client_left" if exc.code == CLIENT_GONE else f"error {exc.code}"
            raise

    def close(self) -> None:
        self._deltas.close()


def first_deltas(deltas: Iterator[Delta]) -> list[Delta]:
    """Up to the first delta that says something (upstream keep-alives dropped, notices kept), or
    SILENCE when the service's keep-alive comes first and commits the stream."""
    notices = []
    for delta in deltas:
        if delta is SILENCE:
            return [*notices, delta]
        if delta.is_notice:
            notices.append(delta)
        elif not delta.heartbeat:
            return [*notices, delta]
    raise upstream_error("The upstream ended the stream without a reply.", code="upstream_truncated")
