"""Settings and variables: defaults, then ``.env``, then the real environment, by one rule.

The one place that reads the environment and ``.env``; the service and the importer both ask it.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import stat
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from converters import REASONING_FORMATS

DEFAULTS = {
    "HOST": "127.0.0.1",
    "PORT": 5000,
    "PROVIDERS_DIR": None,  # None means porviders/ next to app.py
    "UPSTREAM_TIMEOUT": 60.0,
    # A stream silent this long gets an SSE comment (and is committed to HTTP 200); 0 turns it off.
    "KEEPALIVE_SECONDS": 15.0,
    # The longest one chat request may take, streaming or not: 504 before the first byte, an
    # error event after. Work nobody waits for stops.
    "REQUEST_TIMEOUT": 600.0,
    "REASONING_FORMAT": "reasoning_content",
    "POOL_SIZE": 512,
    "LOG_LEVEL": "INFO",
    "API_KEYS": "",  # comma-separated; empty means open, as for a laptop
    "CORS_ORIGINS": "",  # comma-separated origins, or *; empty means no CORS
    "ALLOWED_HOSTS": "",  # without API_KEYS, Host names answered besides loopback ones
    "MAX_BODY_BYTES": 10 * 1024 * 1024,
    # The longest a client may take to send a request's headers, or its body: a slow or idle
    # client is dropped, so it cannot hold every connection slot.
    "CLIENT_TIMEOUT": 20.0,
    # Serving by `python app.py` (gunicorn); see README "Serving".
    # One gevent worker holds hundreds of streams; raise WORKERS on a machine of its own.
    "WORKERS": 1,
    "WORKER_CLASS": "gevent",
    "WORKER_CONNECTIONS": 1000,
    "THREADS": 1,
    "BACKLOG": 2048,
    # /v1/models merges the lists of providers that declare a models endpoint.
    "MODELS_CACHE_SECONDS": 600.0,
    "MODELS_REFRESH_TIMEOUT": 3.0,
    # Accounts (README "Credentials and accounts"): a token this close to its expiry is refreshed first.
    "REFRESH_LEEWAY_SECONDS": 180.0,
    "ACCOUNT_CONCURRENCY": 0,  # requests in flight per account; 0 means no limit
    "ACCOUNT_WAIT_SECONDS": 30.0,  # how long a request waits for a busy account before 429 accounts_busy
    "BROWSER_CHECK_COOLDOWN_SECONDS": 900.0,  # an account shown an anti-bot check rests this long
    "RATE_LIMIT_COOLDOWN_SECONDS": 60.0,  # a rate-limited account rests this long when the upstream says nothing
    # Where rotated tokens, cooldowns and locks live: empty means state.sqlite3 beside app.py;
    # sqlite:///relative/path, sqlite:////absolute/path, or redis://host:port/db to share it between hosts.
    "STATE_URL": "",
    "STATE_SECRET": "",  # the key tokens are encrypted with at rest; generated beside the SQLite file when empty
    # Continue the upstream chat a request's history extends (folders that declare how), sending
    # only the new turns; "off" sends the whole history to a fresh chat every time.
    "CONTINUATION": "on",
    "CONVERSATION_TTL_SECONDS": 86400.0,
}
ENV_TYPES = {
    "PORT": int,
    "UPSTREAM_TIMEOUT": float,
    "KEEPALIVE_SECONDS": float,
    "REQUEST_TIMEOUT": float,
    "POOL_SIZE": int,
    "MAX_BODY_BYTES": int,
    "CLIENT_TIMEOUT": float,
    "WORKERS": int,
    "WORKER_CONNECTIONS": int,
    "THREADS": int,
    "BACKLOG": int,
    "MODELS_CACHE_SECONDS": float,
    "MODELS_REFRESH_TIMEOUT": float,
    "REFRESH_LEEWAY_SECONDS": float,
    "ACCOUNT_CONCURRENCY": int,
    "ACCOUNT_WAIT_SECONDS": float,
    "BROWSER_CHECK_COOLDOWN_SECONDS": float,
    "RATE_LIMIT_COOLDOWN_SECONDS": float,
    "CONVERSATION_TTL_SECONDS": float,
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ENV_FILE_NAME = ".env"
SETTLE_SECONDS = 0.5
DEFAULT_ENV_FILE = Path(__file__).resolve().with_name(ENV_FILE_NAME)


class EnvFile:
    """The values of one ``.env`` file, re-read only when its size or modification time changes."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._version: tuple | None = None
        self._values: dict[str, str] = {}

    def values(self) -> dict[str, str]:
        version = self._stat()
        if version != self._version and self._settled(version):
            # No ${} expansion: values come back exactly as the importer wrote them.
            found = dotenv_values(self.path, interpolate=False) if version else {}
            self._version, self._values = version, {k: v for k, v in found.items() if v is not None}
            _note_unreadable(self.path, version)
        return self._values

    def _settled(self, version: tuple | None) -> bool:
        """A file rewritten in place less than SETTLE_SECONDS ago may be half-written: until it is
        older, the last values read stay in use. A file renamed into place (a new inode, as the
        importer writes it) is whole at once."""
        if version is None or self._version is None or version[0] != self._version[0]:
            return True
        age = time.time() - version[1] / 1e9
        return age >= SETTLE_SECONDS or age < 0  # a modification time ahead of the clock: nothing to wait for

    def _stat(self) -> tuple | None:
        try:
            found = self.path.stat() if self.path else None
        except OSError:
            return None
        return (found.st_ino, found.st_mtime_ns, found.st_size) if found and stat.S_ISREG(found.st_mode) else None


log = logging.getLogger("reverse_api")
# python-dotenv's own warning names a line but not the file; the one below names both.
logging.getLogger("dotenv.main").setLevel(logging.ERROR)
# Lines of each .env file that could not be read, by path: named at start and in credential errors.
_UNREADABLE: dict[str, list[int]] = {}


def _note_unreadable(path: Path | None, version: tuple | None) -> None:
    """Find the lines python-dotenv skipped (it only says so in a log line without the file)."""
    if path is None or version is None:
        _UNREADABLE.pop(str(path), None)
        return
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            lines = [binding.original.line for binding in parse_stream(stream) if binding.error]
    except OSError:
        lines = []
    if lines and _UNREADABLE.get(str(path)) != lines:
        log.warning(
            "%s: %s cannot be read (NAME=value expected) and %s ignored",
            path,
            _lines(lines),
            "is" if len(lines) == 1 else "are",
        )
    _UNREADABLE[str(path)] = lines


def unreadable_env_lines() -> str:
    """ " (.env line 3 could not be read)" for every .env read so far with such lines, else ""."""
    found = [f"{path} {_lines(lines)}" for path, lines in _UNREADABLE.items() if lines]
    return f" ({'; '.join(found)} could not be read)" if found else ""


def _lines(numbers: list[int]) -> str:
    return ("line " if len(numbers) == 1 else "lines ") + ", ".join(str(n) for n in numbers)


def lookup(name: str, file_values: Mapping[str, str]) -> str | None:
    """A variable's raw value: the real environment wins over .env, even when it is set empty."""
    return os.environ[name] if name in os.environ else file_values.get(name)


def read_variables(names: Iterable[str], file_values: Mapping[str, str]) -> dict[str, str]:
    """The named variables that hold something, stripped (a token pasted with a stray newline)."""
    found = {}
    for name in names:
        value = lookup(name, file_values)
        if value and value.strip():
            found[name] = value.strip()
    return found


def account_numbers(names: Iterable[str], file_values: Mapping[str, str]) -> list[int]:
    """The N of every ``NAME_N`` (N of 2 or more) set to something, for the given base names: the
    accounts besides the first that the environment and .env hold."""
    names = tuple(names)
    if not names:
        return []
    pattern = _numbered(names)
    found = set()
    for key in set(os.environ) | set(file_values):
        match = pattern.match(key)
        if match and (lookup(key, file_values) or "").strip():
            found.add(int(match.group(2)))
    return sorted(found)


@functools.lru_cache(maxsize=256)
def _numbered(names: tuple[str, ...]) -> re.Pattern:
    return re.compile(r"^({})_([2-9]|[1-9][0-9]{{1,2}})$".format("|".join(re.escape(name) for name in names)))


def ca_bundle() -> str | None:
    """The CA bundle requests and curl users name in the environment, if any."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None


def env_file_path(overrides: Mapping[str, Any] | None = None) -> str | Path | None:
    """The .env to read: an explicit ENV_FILE, then the environment's, then the one beside app.py."""
    return (overrides or {}).get("ENV_FILE", os.environ.get("ENV_FILE", DEFAULT_ENV_FILE))


def load_settings(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every setting: defaults, then .env, then the environment, then ``overrides`` (tests), checked."""
    env_file = env_file_path(overrides)
    settings = {**DEFAULTS, **_settings_from_env(EnvFile(env_file).values()), **(overrides or {})}
    settings["ENV_FILE"] = env_file
    _check(settings)
    return settings


def split_list(value: str | Iterable[str]) -> tuple[str, ...]:
    """A comma-separated setting (or a list) as a tuple of its non-blank items."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(item.strip() for item in items if item.strip())


def _settings_from_env(file_values: Mapping[str, str]) -> dict[str, Any]:
    found = {}
    for key in DEFAULTS:
        value = lookup(key, file_values)
        if value not in (None, ""):
            found[key] = _convert(key, value)
    return found


def _convert(key: str, value: str) -> Any:
    try:
        return ENV_TYPES.get(key, str)(value)
    except ValueError:
        raise SystemExit(f"Environment variable {key}={value!r} is not a valid {ENV_TYPES[key].__name__}") from None


def _check(settings: Mapping[str, Any]) -> None:
    if settings["LOG_LEVEL"].upper() not in LOG_LEVELS:
        raise SystemExit(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}")
    if not 1 <= settings["PORT"] <= 65535:
        raise SystemExit(f"PORT={settings['PORT']} is not a port: it must be from 1 to 65535")
    for name in ("REQUEST_TIMEOUT", "CLIENT_TIMEOUT"):
        if not math.isfinite(settings[name]) or settings[name] <= 0:
            raise SystemExit(f"{name} must be a number of seconds, more than 0")
    if not math.isfinite(settings["KEEPALIVE_SECONDS"]) or settings["KEEPALIVE_SECONDS"] < 0:
        raise SystemExit("KEEPALIVE_SECONDS must be a number of seconds, 0 or more (0 turns keep-alive off)")
    waits = (
        "REFRESH_LEEWAY_SECONDS",
        "ACCOUNT_WAIT_SECONDS",
        "BROWSER_CHECK_COOLDOWN_SECONDS",
        "RATE_LIMIT_COOLDOWN_SECONDS",
    )
    for name in waits:
        if not math.isfinite(settings[name]) or settings[name] < 0:
            raise SystemExit(f"{name} must be a number of seconds, 0 or more")
    if settings["CONTINUATION"] not in ("on", "off"):
        raise SystemExit("CONTINUATION must be on or off")
    if not math.isfinite(settings["CONVERSATION_TTL_SECONDS"]) or settings["CONVERSATION_TTL_SECONDS"] <= 0:
        raise SystemExit("CONVERSATION_TTL_SECONDS must be a number of seconds, more than 0")
    if settings["ACCOUNT_CONCURRENCY"] < 0:
        raise SystemExit("ACCOUNT_CONCURRENCY must be 0 (no limit) or more")
    if settings["REASONING_FORMAT"] not in REASONING_FORMATS:
        raise SystemExit(f"REASONING_FORMAT must be one of {', '.join(REASONING_FORMATS)}")
