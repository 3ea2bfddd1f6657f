"""Encryption at rest for the state store: the Fernet key from STATE_SECRET or a key file, and the
``Sealer`` that turns values into ciphertext and back.

A value is sealed whole (its JSON), so no token is ever in the clear in SQLite or Redis.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from state.contract import StateError

log = logging.getLogger("reverse_api")  # the service's own handler and format

# A Fernet key as Fernet.generate_key() writes it: urlsafe base64 of 32 bytes, 44 characters.
FERNET_KEY = re.compile(r"[A-Za-z0-9_-]{43}=")
KEY_FILE_WAIT = 2.0  # seconds a loser of the key-file race waits for the winner to finish writing
MAKE_SECRET = 'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'


def fernet_for(secret: str) -> Fernet:
    """The Fernet for a secret: a Fernet key is used as is; any other string is stretched to one.

    The stretch is one SHA-256, so the secret should be a long random string, not a password.
    """
    if not secret:
        raise StateError("STATE_SECRET is empty: set it to a long random string, made for example with " + MAKE_SECRET)
    if FERNET_KEY.fullmatch(secret):
        return Fernet(secret.encode())
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()))


def fernet_from_file(path: Path) -> Fernet:
    """The Fernet whose key is in ``path``, creating the file (mode 0600) when it is missing.

    Several processes may start at once: the first creates the file exclusively, the others read
    its key, waiting briefly if they catch it before its one write.
    """
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return Fernet(_read_key_file(path))
    key = Fernet.generate_key()
    try:
        os.write(descriptor, key)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return Fernet(key)


def _read_key_file(path: Path) -> bytes:
    deadline = time.monotonic() + KEY_FILE_WAIT
    while True:
        key = path.read_bytes().strip()
        if FERNET_KEY.fullmatch(key.decode("ascii", "replace")):
            _warn_if_readable_by_others(path)
            return key
        if time.monotonic() > deadline:
            raise StateError(
                f"{path} does not hold a Fernet key. Restore it, or delete it to start with empty state "
                "(a new key is made; the stored state is then unreadable and ignored)."
            )
        time.sleep(0.02)


def _warn_if_readable_by_others(path: Path) -> None:
    if path.stat().st_mode & 0o077:
        log.warning("%s can be read by other users; it is the state store's key: chmod 600 it", path)


class Sealer:
    """Seals values for a backend and opens them again; unreadable ones read as absent.

    A value that fails to open was sealed under another key: STATE_SECRET changed, or the key
    file was replaced. The state is a cache of newer credentials than the environment holds, so
    it is read as absent (the service falls back to the operator's values) and overwritten on
    the next write, with one warning per store rather than an error on every request.
    """

    def __init__(self, fernet: Fernet) -> None:
        self._fernet = fernet
        self._warned = False

    def seal(self, value: dict) -> bytes:
        return self._fernet.encrypt(json.dumps(value, separators=(",", ":")).encode())

    def open(self, sealed: bytes | None, key: str) -> dict | None:
        if sealed is None:
            return None
        try:
            return json.loads(self._fernet.decrypt(sealed))
        except InvalidToken:
            self._warn_unreadable(key)
            return None

    def _warn_unreadable(self, key: str) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "state under %r cannot be decrypted: STATE_SECRET changed (or the key file was replaced) "
                "since it was stored. Such state is treated as absent and overwritten as it is written again.",
                key,
            )
