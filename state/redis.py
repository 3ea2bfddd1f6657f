"""The Redis state store: state shared by several hosts, every key under one prefix.

Values are sealed strings with Redis's own expiry; locks and leases are small Lua scripts, so each
check-and-change runs at once on the server; ``update`` retries a WATCH/MULTI transaction.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Iterator

import redis

from state.contract import Change, StateError
from state.crypto import Sealer

PREFIX = "reverse_api:"
CONNECT_TIMEOUT = 5.0  # seconds; a Redis that does not answer fails the call rather than hanging it
UPDATE_ATTEMPTS = 100  # WATCH conflicts tolerated in one update before giving up
# A lock is taken when free, or renewed by the owner already holding it.
ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
# A group is a sorted set of members scored by their expiry: drop the lapsed, count, add. The set
# itself expires with its longest lease, so an abandoned group leaves nothing behind.
TRY_LEASE = """
local group, member, limit, now = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3]
local expires, ttl_ms = ARGV[4], tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', group, '-inf', now)
if limit > 0 and not redis.call('ZSCORE', group, member) and redis.call('ZCARD', group) >= limit then
  return 0
end
redis.call('ZADD', group, expires, member)
if redis.call('PTTL', group) < ttl_ms then redis.call('PEXPIRE', group, ttl_ms) end
return 1
"""


def without_credentials(url: str) -> str:
    """The URL fit for a message: user and password blanked, query (which may hold one) dropped."""
    return re.sub(r"//[^/@]*@", "//***@", url.split("?", 1)[0])


def _ms(ttl: float) -> int:
    """Seconds as Redis milliseconds; never 0, which Redis refuses."""
    return max(1, math.ceil(ttl * 1000))


class RedisStore:
    """The ``Store`` contract in a Redis database, with values sealed by ``sealer``."""

    def __init__(self, client: redis.Redis, sealer: Sealer, prefix: str = PREFIX, label: str = "Redis") -> None:
        self._client = client
        self._sealer = sealer
        self._prefix = prefix
        self._label = label  # how messages name this Redis, credentials left out
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)
        self._try_lease = client.register_script(TRY_LEASE)

    @classmethod
    def from_url(cls, url: str, sealer: Sealer, prefix: str = PREFIX) -> RedisStore:
        """Connect to ``url`` and check that Redis answers, so a wrong URL fails at start."""
        label = without_credentials(url)
        try:
            client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT)
        except ValueError as exc:
            raise StateError(f"STATE_URL {label} is not a Redis URL redis-py understands: {exc}") from exc
        try:
            client.ping()
        except redis.RedisError as exc:
            client.close()
            raise StateError(f"cannot reach the state store at {label} (STATE_URL): {exc}") from exc
        return cls(client, sealer, prefix, label)

    def get(self, key: str) -> dict | None:
        with self._reaching():
            return self._sealer.open(self._client.get(self._kv(key)), key)

    def put(self, key: str, value: dict, ttl: float | None = None) -> None:
        with self._reaching():
            self._client.set(self._kv(key), self._sealer.seal(value), px=None if ttl is None else _ms(ttl))

    def delete(self, key: str) -> None:
        with self._reaching():
            self._client.delete(self._kv(key))

    def take(self, key: str) -> dict | None:
        with self._reaching(), self._client.pipeline(transaction=True) as pipe:
            sealed, _ = pipe.get(self._kv(key)).delete(self._kv(key)).execute()
        return self._sealer.open(sealed, key)

    def update(self, key: str, change: Change, ttl: float | None = None) -> dict | None:
        with self._reaching(), self._client.pipeline() as pipe:
            for _ in range(UPDATE_ATTEMPTS):
                with contextlib.suppress(redis.WatchError):
                    return self._update_once(pipe, key, change, ttl)
        raise StateError(f"state key {key!r} at {self._label} changed under every one of {UPDATE_ATTEMPTS} updates")

    def acquire(self, name: str, owner: str, ttl: float) -> bool:
        with self._reaching():
            return self._acquire(keys=[self._lock(name)], args=[owner, _ms(ttl)]) == 1

    def release(self, name: str, owner: str) -> None:
        with self._reaching():
            self._release(keys=[self._lock(name)], args=[owner])

    def lock_holder(self, name: str) -> str | None:
        with self._reaching():
            owner = self._client.get(self._lock(name))
        return None if owner is None else owner.decode()

    def try_lease(self, group: str, member: str, limit: int, ttl: float) -> bool:
        now = time.time()
        args = [member, limit, repr(now), repr(now + ttl), _ms(ttl)]
        with self._reaching():
            return self._try_lease(keys=[self._group(group)], args=args) == 1

    def drop_lease(self, group: str, member: str) -> None:
        with self._reaching():
            self._client.zrem(self._group(group), member)

    def count_leases(self, group: str) -> int:
        with self._reaching():
            return self._client.zcount(self._group(group), f"({time.time()!r}", "+inf")

    def close(self) -> None:
        self._client.close()

    def _update_once(self, pipe: redis.client.Pipeline, key: str, change: Change, ttl: float | None) -> dict | None:
        """One optimistic try: raises ``WatchError`` when someone else wrote the key meanwhile."""
        name = self._kv(key)
        pipe.watch(name)
        new = change(self._sealer.open(pipe.get(name), key))
        pipe.multi()
        if new is None:
            pipe.delete(name)
        else:
            pipe.set(name, self._sealer.seal(new), px=None if ttl is None else _ms(ttl))
        pipe.execute()
        return new

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        """Redis failures as ``StateError`` naming this Redis."""
        try:
            yield
        except redis.RedisError as exc:
            raise StateError(f"state store at {self._label}: {exc}") from exc

    def _kv(self, key: str) -> str:
        return f"{self._prefix}kv:{key}"

    def _lock(self, name: str) -> str:
        return f"{self._prefix}lock:{name}"

    def _group(self, group: str) -> str:
        return f"{self._prefix}lease:{group}"
