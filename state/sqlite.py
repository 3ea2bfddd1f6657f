"""The SQLite state store: one database file shared by the worker processes of one host.

Each process keeps one connection behind a lock (threads and gevent greenlets take turns), opened
again after a fork. Every write is one ``BEGIN IMMEDIATE`` transaction, so a read-then-write is
atomic across processes; a busy database is waited for (up to BUSY_TIMEOUT_MS), not failed.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from state.contract import Change, StateError
from state.crypto import Sealer

# Writes are a few statements long, so waits are short; under gevent one blocks the whole worker.
BUSY_TIMEOUT_MS = 5000
PURGE_EVERY = 60.0  # seconds between sweeps of expired rows; reads skip them meanwhile
SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL);
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS locks (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    grp TEXT NOT NULL, member TEXT NOT NULL, expires REAL NOT NULL, PRIMARY KEY (grp, member)
);
"""
ACQUIRE = """
INSERT INTO locks (name, owner, expires) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires = excluded.expires
WHERE locks.expires <= ? OR locks.owner = excluded.owner
"""
# SQLite's advice is never to use a connection across fork(), not even to close it: a child
# drops the one it inherited and keeps it referenced here, so no finalizer ever closes it.
_INHERITED: list[sqlite3.Connection] = []


def _create_private(path: Path) -> None:
    """Create the database file mode 0600; SQLite gives its -wal and -shm files the same mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))


def _use_wal(db: sqlite3.Connection) -> None:
    """Switch a new database to WAL, which lets readers and one writer work at once.

    The switch needs the file to itself and SQLite fails it at once, without the busy timeout,
    when another process is opening the same new file: so it is tried again for as long.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SqliteStore:
    """The ``Store`` contract in a SQLite file, with values sealed by ``sealer``."""

    def __init__(self, path: Path, sealer: Sealer) -> None:
        self.path = path
        self._sealer = sealer
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._next_purge = 0.0
        try:
            _create_private(path)
        except OSError as exc:
            raise StateError(f"cannot create the state database {path}: {exc}") from exc
        with self._connection():
            pass  # open now, so a bad path fails at start rather than on the first request

    def get(self, key: str) -> dict | None:
        with self._connection() as db:
            return self._read(db, key)

    def put(self, key: str, value: dict, ttl: float | None = None) -> None:
        # One statement: SQLite's own transaction around it is enough (and spares two round trips).
        with self._connection() as db:
            self._purge_now_and_then(db)
            self._write(db, key, value, ttl)

    def delete(self, key: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM kv WHERE key = ?", (key,))

    def take(self, key: str) -> dict | None:
        with self._transaction() as db:
            value = self._read(db, key)
            db.execute("DELETE FROM kv WHERE key = ?", (key,))
        return value

    def update(self, key: str, change: Change, ttl: float | None = None) -> dict | None:
        with self._transaction() as db:
            new = change(self._read(db, key))
            self._write(db, key, new, ttl)
        return new

    def acquire(self, name: str, owner: str, ttl: float) -> bool:
        now = time.time()
        with self._transaction() as db:
            return db.execute(ACQUIRE, (name, owner, now + ttl, now)).rowcount == 1

    def release(self, name: str, owner: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM locks WHERE name = ? AND owner = ?", (name, owner))

    def lock_holder(self, name: str) -> str | None:
        with self._connection() as db:
            row = db.execute("SELECT owner FROM locks WHERE name = ? AND expires > ?", (name, time.time())).fetchone()
        return row and row[0]

    def try_lease(self, group: str, member: str, limit: int, ttl: float) -> bool:
        now = time.time()
        if not limit:  # nothing to count: one statement (lapsed leases go with the periodic purge)
            with self._connection() as db:
                db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (group, member, now + ttl))
            return True
        with self._transaction() as db:
            db.execute("DELETE FROM leases WHERE grp = ? AND expires <= ?", (group, now))
            if not self._has_room(db, group, member, limit):
                return False
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (group, member, now + ttl))
            return True

    def drop_lease(self, group: str, member: str) -> None:
        with self._connection() as db:
            db.execute("DELETE FROM leases WHERE grp = ? AND member = ?", (group, member))

    def count_leases(self, group: str) -> int:
        with self._connection() as db:
            query = "SELECT COUNT(*) FROM leases WHERE grp = ? AND expires > ?"
            return db.execute(query, (group, time.time())).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            if self._db is not None and self._pid == os.getpid():
                self._db.close()
            self._db = None

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """This process's connection, held alone; SQLite errors become ``StateError``."""
        with self._lock:
            try:
                yield self._connected()
            except sqlite3.Error as exc:
                raise StateError(f"state database {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at its start so no other process writes in between."""
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                self._purge_now_and_then(db)
                yield db
                db.execute("COMMIT")
            finally:
                if db.in_transaction:  # the block raised, or COMMIT failed: leave nothing half done
                    db.execute("ROLLBACK")

    def _connected(self) -> sqlite3.Connection:
        if self._db is not None and self._pid != os.getpid():
            _INHERITED.append(self._db)
            self._db = None
        if self._db is None:
            self._db = self._connect()
            self._pid = os.getpid()
        return self._db

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _use_wal(db)
            # In WAL mode NORMAL stays consistent; a power cut may only lose the last writes of a cache.
            db.execute("PRAGMA synchronous = NORMAL")
            # IMMEDIATE: a process that read the schema while another created it could not write it.
            db.executescript(f"BEGIN IMMEDIATE; {SCHEMA} COMMIT;")
        except BaseException:
            db.close()
            raise
        return db

    def _purge_now_and_then(self, db: sqlite3.Connection) -> None:
        now = time.time()
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_EVERY
        for table in ("kv", "locks", "leases"):
            db.execute(f"DELETE FROM {table} WHERE expires <= ?", (now,))

    def _read(self, db: sqlite3.Connection, key: str) -> dict | None:
        row = db.execute("SELECT value, expires FROM kv WHERE key = ?", (key,)).fetchone()
        if row is None or (row[1] is not None and row[1] <= time.time()):
            return None
        return self._sealer.open(row[0], key)

    def _write(self, db: sqlite3.Connection, key: str, value: dict | None, ttl: float | None) -> None:
        if value is None:
            db.execute("DELETE FROM kv WHERE key = ?", (key,))
            return
        expires = None if ttl is None else time.time() + ttl
        db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (key, self._sealer.seal(value), expires))

    @staticmethod
    def _has_room(db: sqlite3.Connection, group: str, member: str, limit: int) -> bool:
        """Whether ``member`` already holds a lease in ``group`` or the group has fewer than ``limit``."""
        rows = db.execute("SELECT member = ? FROM leases WHERE grp = ?", (member, group)).fetchall()
        return any(row[0] for row in rows) or len(rows) < limit
