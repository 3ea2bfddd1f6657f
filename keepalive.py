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
from typing import Any

from converters import Delta, upstream_error

QUEUE_SIZE = 64  # deltas read ahead of a slow client; past this the reader waits
OFFER_RETRY_SECONDS = 0.5  # how often a waiting reader checks whether anyone still listens


class Abort:
    """What to cut when nobody listens any more: the upstream replies a reader has open."""

    def __init__(self) -> None:
        self._replies: list[Any] = []

    def watch(self, reply: Any) -> None:
        self._replies.append(reply)

    def __call__(self) -> None:
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


def first_deltas_within(reply: PacedReply, seconds: float) -> list[Delta]:
    """Up to the first delta that says something (keep-alives dropped, notices kept), as
    ``pipeline.first_deltas``, but never longer than ``seconds``: past that, a heartbeat
    commits the stream to HTTP 200."""
    deadline = time.monotonic() + seconds
    notices = []
    try:
        while True:
            delta = reply.next_within(deadline - time.monotonic())
            if delta is None or (delta.heartbeat and time.monotonic() >= deadline):
                return [*notices, Delta(heartbeat=True)]
            if delta.is_notice:
                notices.append(delta)
            elif not delta.heartbeat:
                return [*notices, delta]
    except StopIteration:
        raise upstream_error("The upstream ended the stream without a reply.", code="upstream_truncated") from None
    except BaseException:
        reply.close()
        raise


def iter_paced(reply: PacedReply, seconds: float) -> Iterator[Delta]:
    """The reply's deltas, with a heartbeat whenever nothing came for ``seconds``."""
    try:
        while True:
            try:
                delta = reply.next_within(seconds)
            except StopIteration:
                return
            yield Delta(heartbeat=True) if delta is None else delta
    finally:
        reply.close()
