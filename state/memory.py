"""The in-memory state store: one process's dicts behind one lock, for tests and single runs.

Values are kept as JSON text, so callers get copies and unserialisable values fail here as they
would in the shared backends.
"""

from __future__ import annotations

import json
import threading
import time

from state.contract import Change


def _expiry(ttl: float | None) -> float | None:
    return None if ttl is None else time.time() + ttl


def _live(expires: float | None) -> bool:
    return expires is None or expires > time.time()


class MemoryStore:
    """The ``Store`` contract in one process's memory."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, tuple[str, float | None]] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._leases: dict[str, dict[str, float]] = {}

    def get(self, key: str) -> dict | None:
        with self._lock:
            return self._read(key)

    def put(self, key: str, value: dict, ttl: float | None = None) -> None:
        with self._lock:
            self._write(key, value, ttl)

    def delete(self, key: str) -> None:
        with self._lock:
            self._values.pop(key, None)

    def take(self, key: str) -> dict | None:
        with self._lock:
            value = self._read(key)
            self._values.pop(key, None)
            return value

    def update(self, key: str, change: Change, ttl: float | None = None) -> dict | None:
        with self._lock:
            new = change(self._read(key))
            self._write(key, new, ttl)
            return new

    def acquire(self, name: str, owner: str, ttl: float) -> bool:
        with self._lock:
            holder = self._holder(name)
            if holder not in (None, owner):
                return False
            self._locks[name] = (owner, time.time() + ttl)
            return True

    def release(self, name: str, owner: str) -> None:
        with self._lock:
            if self._holder(name) == owner:
                del self._locks[name]

    def lock_holder(self, name: str) -> str | None:
        with self._lock:
            return self._holder(name)

    def try_lease(self, group: str, member: str, limit: int, ttl: float) -> bool:
        with self._lock:
            members = self._live_members(group)
            if limit and member not in members and len(members) >= limit:
                return False
            members[member] = time.time() + ttl
            return True

    def drop_lease(self, group: str, member: str) -> None:
        with self._lock:
            self._leases.get(group, {}).pop(member, None)

    def count_leases(self, group: str) -> int:
        with self._lock:
            return len(self._live_members(group))

    def close(self) -> None:
        """Nothing to release."""

    def _read(self, key: str) -> dict | None:
        text, expires = self._values.get(key, (None, None))
        if text is None or not _live(expires):
            self._values.pop(key, None)
            return None
        return json.loads(text)

    def _write(self, key: str, value: dict | None, ttl: float | None) -> None:
        if value is None:
            self._values.pop(key, None)
        else:
            self._values[key] = (json.dumps(value), _expiry(ttl))

    def _holder(self, name: str) -> str | None:
        owner, expires = self._locks.get(name, (None, 0.0))
        return owner if owner is not None and _live(expires) else None

    def _live_members(self, group: str) -> dict[str, float]:
        """The group's members, with lapsed ones dropped first."""
        members = self._leases.setdefault(group, {})
        for member in [m for m, expires in members.items() if not _live(expires)]:
            del members[member]
        return members
