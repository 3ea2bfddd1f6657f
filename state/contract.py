"""The state store's contract: the ``Store`` protocol every backend keeps, and ``StateError``.

The same test suite runs against every backend, so a caller never needs to know which one it has.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

Change = Callable[[dict | None], dict | None]


class StateError(Exception):
    """The store cannot be opened or reached; the message is complete and meant for an operator."""


class Store(Protocol):
    """Shared state: values that expire, locks with an owner, and leases counted per group.

    Keys, lock names, groups and members are short, non-secret strings; values are JSON dicts.
    Times are seconds; expiry follows the wall clock (``time.time()``), so hosts can share it.
    An entry whose expiry has passed reads as absent everywhere.
    """

    def get(self, key: str) -> dict | None:
        """The value under ``key``, or None."""

    def put(self, key: str, value: dict, ttl: float | None = None) -> None:
        """Store ``value`` under ``key``, for ``ttl`` seconds (None: until deleted)."""

    def delete(self, key: str) -> None:
        """Remove ``key``; absent keys are fine."""

    def take(self, key: str) -> dict | None:
        """Get and delete ``key`` at once: of several callers, exactly one gets the value."""

    def update(self, key: str, change: Change, ttl: float | None = None) -> dict | None:
        """Replace the value with ``change(value)`` atomically across processes and hosts.

        ``change`` gets the current value (or None) and returns the new one, stored for ``ttl``
        seconds like ``put``; returning None deletes the key. It must be a pure function that does
        not call the store: a backend may call it again when another writer got in first.
        Returns the new value.
        """

    def acquire(self, name: str, owner: str, ttl: float) -> bool:
        """Take the lock ``name`` for ``owner`` (a random token) unless someone else holds it.

        The lock lapses after ``ttl`` seconds, so a crashed holder cannot keep it. Acquiring a
        lock one already holds renews it.
        """

    def release(self, name: str, owner: str) -> None:
        """Free the lock, only if ``owner`` still holds it (not after it lapsed and passed on)."""

    def lock_holder(self, name: str) -> str | None:
        """The owner holding the lock now, or None."""

    def try_lease(self, group: str, member: str, limit: int, ttl: float) -> bool:
        """Add ``member`` to ``group`` unless the group already has ``limit`` live members.

        ``limit`` 0 means no limit. Each member lapses after ``ttl`` seconds, so a crashed
        worker's leases vanish. A member already in the group is renewed and counts as granted.
        """

    def drop_lease(self, group: str, member: str) -> None:
        """Remove ``member`` from ``group``; absent members are fine."""

    def count_leases(self, group: str) -> int:
        """How many live members ``group`` has."""

    def close(self) -> None:
        """Release connections; the store is not used afterwards."""
