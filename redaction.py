"""Redaction: secret values blanked out of any text that may leave the service (errors, logs, frames)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

REDACTED = "[redacted]"
# Header names that carry credentials; the importer moves such headers out of captures too. bx-*
# are Alibaba's anti-bot headers (Qwen and other Alibaba sites): secret whatever the dialect, so
# they stay here rather than in the qwen dialect's hints.
SECRET_HEADER = re.compile(
    r"^(authorization|bx-)|cookie|token|secret|key|session|auth|sign|jwt|passw|pwd|credential|(^|[-_])sig($|[-_])",
    re.IGNORECASE,
)
# Shorter values ("null", "test", "1700") would blank ordinary words and break JSON being relayed;
# real credentials are far longer.
MIN_SECRET_LENGTH = 8
MIN_COOKIE_VALUE_LENGTH = 8  # cookie values such as "1" or "zh-CN" are not worth blanking


class Redactor:
    """Blanks secret values in text: as given, JSON-escaped, and each piece of a cookie string."""

    def __init__(self, secrets: Iterable[str]) -> None:
        variants = {form for secret in secrets for form in _secret_forms(secret) if len(form) >= MIN_SECRET_LENGTH}
        # Longest first, so no fragment of a longer secret survives a shorter match.
        self._forms = sorted(variants, key=len, reverse=True)

    def with_secrets(self, secrets: Iterable[str]) -> Redactor:
        """This redactor, blanking ``secrets`` too."""
        combined = Redactor(secrets)
        combined._forms = sorted(set(self._forms) | set(combined._forms), key=len, reverse=True)
        return combined

    def __call__(self, text: str) -> str:
        # A substring test per form is several times cheaper than one regex over every stream frame.
        for form in self._forms:
            if form in text:
                text = text.replace(form, REDACTED)
        return text


def _secret_forms(secret: str) -> set[str]:
    escaped = json.dumps(secret)[1:-1]
    # JSON may also escape "/" (as JavaScript servers do): cover that spelling too.
    forms = {secret, escaped, escaped.replace("/", "\\/"), json.dumps(secret, ensure_ascii=False)[1:-1]}
    for piece in secret.split(";"):  # a cookie string: each cookie's value may be echoed alone
        value = piece.partition("=")[2].strip()
        if len(value) >= MIN_COOKIE_VALUE_LENGTH:
            forms.add(value)
    return forms


def printable(text: str) -> str:
    """Control characters written as escapes, so text from outside keeps one log line one line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of upstream headers fit for a debug log: credential-like values blanked."""
    return {name: REDACTED if SECRET_HEADER.search(name) else value for name, value in headers.items()}
