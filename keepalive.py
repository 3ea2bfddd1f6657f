"""Keep-alive while the upstream is silent: a reply read in its own thread, so silence is noticed.

A thinking model can send nothing for a long time before its first delta, and clients, proxies
and load balancers drop connections idle for 30 to 100 s. The reader thread hands deltas over a
bounded queue; the stream being written sees a heartbeat whenever nothing came for a while.
"""

from __future__ import annotations

import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from converters import ApiError, Delta, upstream_error

QUEUE_SIZE = 64  # deltas read ahead of a slow client; past this the reader waits
OFFER_RETRY_SECONDS = 0.5  # how often a waiting reader checks whether anyone still listens


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


class PacedReply:
    """Deltas produced by a reader thread; ``next_within`` gives None when nothing came in time.

    ``produce(watch)`` opens the reply, passing each upstream reply it opens to ``watch``.
    """

    def __init__(self, produce: Callable[[Callable[[Any], None]], Iterator[Delta]]) -> None:
        self._queue: queue.Queue = queue.Queue(QUEUE_SIZE)
        self._stop = threading.Event()
        self._abort = Abort()
        self._finished = False
        # The reader holds no reference to this object: once the stream is dropped, the reader stops.
        weakref.finalize(self, self._stop.set)
        abort = self._abort
        args = (lambda: produce(abort.watch), self._queue, self._stop)
        threading.Thread(target=_read, args=args, daemon=True).start()

    def next_within(self, seconds: float) -> Delta | None:
        """The next delta, or None after ``seconds`` of silence; re-raises the reader's error.

        :raise StopIteration: when the reply has ended.
        """
        try:
            kind, value = self._queue.get(timeout=max(0.0, seconds))
        except queue.Empty:
            return None
        if kind == "error":
            self._finished = True
            raise value
        if kind == "end":
            self._finished = True
            self._stop.set()
            raise StopIteration
        return value

    def close(self) -> None:
        """Nobody listens any more: stop the reader and, if the reply was still coming, cut the
        upstream connection at once rather than at its next frame (which may be a minute away)."""
        self._stop.set()
        if not self._finished:
            self._finished = True
            self._abort()


def _read(produce: Callable[[], Iterator[Delta]], handoff: queue.Queue, stop: threading.Event) -> None:
    deltas = None
    try:
        deltas = produce()
        waiting_for_first = True
        for delta in deltas:
            if not _offer(handoff, stop, ("delta", delta)):
                return
            if waiting_for_first and not (delta.heartbeat or delta.is_notice):
                # Let the writer send the first words now rather than after the rest of this read.
                time.sleep(0)
                waiting_for_first = False
        _offer(handoff, stop, ("end", None))
    except BaseException as exc:  # an ApiError above all: raised again where the stream is written
        _offer(handoff, stop, ("error", exc))
        if not isinstance(exc, Exception):
            raise
    finally:
        if deltas is not None:
            deltas.close()  # releases the upstream connection


def _offer(handoff: queue.Queue, stop: threading.Event, item: tuple) -> bool:
    while not stop.is_set():
        try:
            handoff.put(item, timeout=OFFER_RETRY_SECONDS)
            return True
        except queue.Full:
            continue
    return False


# A heartbeat made here, for the client, when the upstream has been silent: unlike the upstream's
# own keep-alives (dropped before the first byte), it commits the stream to HTTP 200.
SILENCE = Delta(heartbeat=True)
POLL_SECONDS = 1.0  # how often a waiting request looks whether its client is still there


def client_gone() -> ApiError:
    """The client closed its connection: nobody waits for this reply any more (499, as nginx logs it)."""
    return ApiError("The client closed the connection before the reply was complete.", status=499, code="client_gone")


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
