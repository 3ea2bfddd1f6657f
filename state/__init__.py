"""The state store: what must outlive a request and be shared by workers (SQLite) or hosts (Redis).

``open_store(url, secret, default_path)`` picks the backend from STATE_URL; all keep ``Store``.
"""

from __future__ import annotations

from pathlib import Path

from state.contract import StateError, Store
from state.crypto import MAKE_SECRET, Sealer, fernet_for, fernet_from_file
from state.memory import MemoryStore
from state.redis import RedisStore, without_credentials
from state.sqlite import SqliteStore

__all__ = ["Store", "StateError", "open_store"]

KEY_FILE = "state.key"  # beside the SQLite file, when STATE_SECRET is empty
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
FORMS = (
    "empty (SQLite beside app.py), sqlite:///relative/path, sqlite:////absolute/path, "
    "redis://[:password@]host:port/db, rediss://... (TLS), unix:///path/to/redis.sock, memory://"
)


def open_store(url: str, secret: str, default_path: Path) -> Store:
    """The store STATE_URL names, its values sealed with STATE_SECRET (or a generated key file).

    :raise StateError: the URL is not one of the accepted forms, or the store cannot be opened.
    """
    if url == "":
        return _open_sqlite(default_path, secret)
    if url.startswith("sqlite:///"):
        # Relative to the folder of the default file (the app's), whatever the working directory:
        # `python app.py`, gunicorn's --chdir and the importer all mean the same file.
        return _open_sqlite(default_path.parent / url.removeprefix("sqlite:///"), secret)
    if url.startswith(REDIS_SCHEMES):
        return _open_redis(url, secret)
    if url == "memory://":
        return MemoryStore()
    raise StateError(f"STATE_URL {without_credentials(url)!r} is not understood; use one of: {FORMS}")


def _open_sqlite(path: Path, secret: str) -> SqliteStore:
    """SQLite at ``path``; with no secret, the key is the file beside it (made on first use)."""
    if path == Path(""):
        raise StateError(f"STATE_URL names no SQLite file; use one of: {FORMS}")
    path = path.absolute()  # a worker forked later, or after a chdir, still opens the same file
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fernet = fernet_for(secret) if secret else fernet_from_file(path.with_name(KEY_FILE))
    except OSError as exc:
        raise StateError(f"cannot prepare the state store {path}: {exc}") from exc
    return SqliteStore(path, Sealer(fernet))


def _open_redis(url: str, secret: str) -> RedisStore:
    if not secret:
        raise StateError(
            "a Redis state store is shared, so its key cannot be generated on one host: set STATE_SECRET, "
            f"the same on every host, to a key made with: {MAKE_SECRET}"
        )
    return RedisStore.from_url(url, Sealer(fernet_for(secret)))
