"""Provider folders: parse metadata.json, header.txt and payload.json into Provider objects.

Also picks the provider for a model, fills ``${NAME}`` placeholders at request time, and
imports new folders from browser captures: ``python provider_loader.py import NAME FILE``.
"""

from __future__ import annotations

import argparse
import base64
import copy
import fnmatch
import json
import os
import re
import sys
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

METADATA_FILE = "metadata.json"
HEADER_FILE = "header.txt"
PAYLOAD_FILE = "payload.json"

# requests owns these; a browser's "br, zstd" would also break decoding without extra packages.
DROPPED_HEADERS = frozenset({"host", "content-length", "connection", "accept-encoding"})
KNOWN_DIALECTS = ("qwen", "openai")  # the stream parsers of converters.DIALECTS
MESSAGE_MODES = ("single", "history")
KNOWN_METADATA_KEYS = frozenset(
    {
        "host",
        "scheme",
        "dialect",
        "models",
        "patterns",
        "owned_by",
        "created",
        "description",
        "optional_variables",
        "create_chat",
        "message_mode",
        "models_endpoint",
    }
)
KNOWN_MODELS_ENDPOINT_KEYS = frozenset({"method", "path", "list_field", "id_field"})
KNOWN_CREATE_CHAT_KEYS = frozenset({"method", "path", "headers", "body", "id_field"})

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Upper-case names come from the environment; lower-case ones are filled per request.
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
REQUEST_VALUES = frozenset({"chat_id", "uuid", "timestamp", "timestamp_ms", "model"})
SECRET_HEADER = re.compile(r"^(authorization|cookie|bx-)|token|secret|key|session|auth|sign", re.IGNORECASE)
# Shorter values ("null", "test", "1700") would blank ordinary words and break JSON being relayed;
# real credentials are far longer.
MIN_SECRET_LENGTH = 8
MIN_COOKIE_VALUE_LENGTH = 8  # cookie values such as "1" or "zh-CN" are not worth blanking
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
REQUEST_LINE = re.compile(r"^([A-Z]+) (/\S*) HTTP/[0-9.]+$")


class ProviderError(Exception):
    """A provider folder that cannot be used; the message names folder, file and reason."""


class MissingVariables(Exception):
    """Placeholders whose environment variables are unset or empty."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = sorted(set(names))
        super().__init__("Missing variables: " + ", ".join(self.names))


@dataclass(frozen=True)
class CapturedRequest:
    """A request as copied from the browser: method, path and headers (in file order)."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Provider:
    """One provider folder, validated and ready to build upstream requests from."""

    name: str
    host: str
    scheme: str
    dialect: str
    request: CapturedRequest
    payload: dict = field(hash=False, compare=False)
    models: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    owned_by: str = ""
    created: int = 0
    optional_variables: frozenset[str] = frozenset()
    create_chat: CapturedRequest | None = None
    create_chat_body: dict | None = field(default=None, hash=False, compare=False)
    create_chat_id_field: str = "data.id"
    message_mode: str = "single"
    models_endpoint: dict | None = field(default=None, hash=False, compare=False)

    @classmethod
    def from_dir(cls, folder: Path) -> Provider:
        """Read and validate one provider folder."""
        metadata = _read_json(folder, METADATA_FILE)
        _check_keys(folder / METADATA_FILE, metadata, KNOWN_METADATA_KEYS)
        header_path = folder / HEADER_FILE
        request = parse_header_text(_read_text(folder, HEADER_FILE), str(header_path))
        payload = _read_json(folder, PAYLOAD_FILE)
        create_chat = metadata.get("create_chat")
        _check_request_values(folder, request, payload, create_chat)
        return cls(
            name=folder.name,
            host=_required_str(folder, metadata, "host"),
            scheme=_scheme(folder, metadata),
            dialect=_dialect(folder, metadata),
            request=request,
            payload=payload,
            models=_str_tuple(folder, metadata, "models"),
            patterns=_str_tuple(folder, metadata, "patterns"),
            owned_by=str(metadata.get("owned_by") or folder.name),
            created=_created(folder, metadata),
            optional_variables=frozenset(_str_tuple(folder, metadata, "optional_variables")),
            create_chat=_create_chat_request(folder, create_chat),
            create_chat_body=(create_chat or {}).get("body"),
            create_chat_id_field=(create_chat or {}).get("id_field", "data.id"),
            message_mode=_message_mode(folder, metadata),
            models_endpoint=_models_endpoint(folder, metadata.get("models_endpoint")),
        )

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def variable_names(self) -> list[str]:
        """Every environment variable the provider's files refer to."""
        return list(self._variable_names)

    def required_variables(self) -> list[str]:
        """Environment variables this provider cannot work without."""
        return [name for name in self._variable_names if name not in self.optional_variables]

    @cached_property
    def _variable_names(self) -> tuple[str, ...]:
        # Computed once: the files do not change under a loaded Provider (a change reloads it).
        names = set(env_names_in(self.request.headers)) | set(env_names_in(self.request.path))
        names |= set(env_names_in(self.payload)) | self.optional_variables
        if self.create_chat:
            names |= set(env_names_in(self.create_chat.headers)) | set(env_names_in(self.create_chat.path))
            names |= set(env_names_in(self.create_chat_body))
        return tuple(sorted(names))

    def claims(self, model: str) -> bool:
        return model in self.models or self.matches_pattern(model)

    def matches_pattern(self, model: str) -> bool:
        lowered = model.lower()
        return any(fnmatch.fnmatchcase(lowered, p.lower()) for p in self.patterns)


@dataclass(frozen=True)
class Registry:
    """Every provider folder: the ones that loaded, and why the others did not."""

    providers: dict[str, Provider]
    errors: dict[str, str]


def parse_header_text(text: str, source: str = HEADER_FILE) -> CapturedRequest:
    """Parse a raw captured request: a request line, then ``Name: value`` lines."""
    # Only CR and LF end lines: splitlines() would also split on form feeds and U+2028.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        raise ProviderError(f"{source}: empty file, expected a request line like 'POST /path HTTP/1.1'")
    first_no, first = numbered[0]
    match = REQUEST_LINE.match(first.strip())
    if not match:
        raise ProviderError(f"{source}, line {first_no}: expected 'METHOD /path HTTP/1.1', got {first.strip()[:80]!r}")
    headers = [_parse_header_line(line, n, source) for n, line in numbered[1:]]
    kept = [h for h in headers if h is not None and h[0].lower() not in DROPPED_HEADERS]
    return CapturedRequest(match.group(1), match.group(2), _merge_duplicates(kept))


def _parse_header_line(line: str, number: int, source: str) -> tuple[str, str] | None:
    if line.startswith(":"):
        return None  # HTTP/2 pseudo-header such as :authority; requests builds its own.
    name, sep, value = line.partition(":")
    if not sep or not HEADER_NAME.match(name):
        raise ProviderError(f"{source}, line {number}: expected 'Name: value', got {line[:80]!r}")
    return name, value.strip()


def _merge_duplicates(headers: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    merged: dict[str, tuple[str, str]] = {}
    for name, value in headers:
        key = name.lower()
        if key in merged:
            glue = "; " if key == "cookie" else ", "
            value = merged[key][1] + glue + value
            name = merged[key][0]
        merged[key] = (name, value)
    return tuple(merged.values())


def load_providers(providers_dir: Path) -> Registry:
    """Load every sub-folder; a broken one is recorded in ``errors`` and the rest still load."""
    providers: dict[str, Provider] = {}
    errors: dict[str, str] = {}
    if not providers_dir.is_dir():
        return Registry(providers, {"*": f"{providers_dir}: providers folder not found"})
    for folder in sorted(p for p in providers_dir.iterdir() if p.is_dir()):
        if folder.name.startswith((".", "_")):
            continue
        try:
            providers[folder.name] = Provider.from_dir(folder)
        except ProviderError as exc:
            # Named from the providers folder: /health is open and need not show server paths.
            errors[folder.name] = str(exc).replace(str(providers_dir) + os.sep, "")
    return Registry(providers, errors)


def determine_provider(providers: Mapping[str, Provider], model: str) -> Provider | None:
    """Pick the provider for a model: explicit model lists first, then patterns; ties alphabetical."""
    ordered = [providers[name] for name in sorted(providers)]
    for provider in ordered:
        if model in provider.models:
            return provider
    for provider in ordered:
        if provider.matches_pattern(model):
            return provider
    return None


def ids_from_models_answer(data: Any, endpoint: Mapping[str, str]) -> list[str]:
    """Model ids from an upstream's list answer: ``list_field`` (dotted) holds objects with ``id_field``."""
    items = data
    for key in endpoint["list_field"].split("."):
        items = items.get(key) if isinstance(items, dict) else None
    if not isinstance(items, list):
        raise ValueError(f"no list at '{endpoint['list_field']}' in the models answer")
    id_field = endpoint["id_field"]
    return [item[id_field] for item in items if isinstance(item, dict) and isinstance(item.get(id_field), str)]


def merge_model_ids(listed: Iterable[str], fetched: Iterable[str]) -> list[str]:
    """The folder's models first, then the upstream's others, each once."""
    return list(dict.fromkeys([*listed, *(model for model in fetched if model)]))


def folder_signature(providers_dir: Path) -> tuple:
    """A cheap fingerprint of the provider folders: names, sizes and modification times."""
    entries = []
    try:
        folders = sorted(p for p in providers_dir.iterdir() if p.is_dir())
    except OSError:
        return ()
    for folder in folders:
        for name in (METADATA_FILE, HEADER_FILE, PAYLOAD_FILE):
            try:
                stat = (folder / name).stat()
                entries.append((folder.name, name, stat.st_mtime_ns, stat.st_size))
            except OSError:
                entries.append((folder.name, name, None, None))
    return tuple(entries)


def is_plain_name(name: str) -> bool:
    """True for a bare folder name: no path separators, dots-only names or control characters."""
    return bool(PLAIN_NAME.fullmatch(name)) and set(name) != {"."}


def env_names_in(value: Any) -> list[str]:
    """Environment placeholder names used anywhere in a JSON-like value."""
    names: list[str] = []
    for text in _iter_strings(value):
        names.extend(n for n in PLACEHOLDER.findall(text) if ENV_NAME.match(n))
    return names


def fill_placeholders(value: Any, variables: Mapping[str, Any]) -> Any:
    """Return a copy of a JSON-like value with every ``${NAME}`` replaced, walking the structure.

    A string that is exactly one placeholder takes the variable's own type (an int stays an int).
    :raise MissingVariables: listing every name that has no non-empty value.
    """
    missing: list[str] = []
    filled = _fill(value, variables, missing)  # _fill builds new containers: the input is never changed
    if missing:
        raise MissingVariables(missing)
    return filled


def _fill(value: Any, variables: Mapping[str, Any], missing: list[str]) -> Any:
    if isinstance(value, dict):
        return {key: _fill(item, variables, missing) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, variables, missing) for item in value]
    if isinstance(value, str):
        return _fill_string(value, variables, missing)
    return value


def _fill_string(text: str, variables: Mapping[str, Any], missing: list[str]) -> Any:
    whole = PLACEHOLDER.fullmatch(text)
    if whole and variables.get(whole.group(1)) not in (None, ""):
        return variables[whole.group(1)]

    def replace(match: re.Match) -> str:
        found = variables.get(match.group(1))
        if found in (None, ""):
            missing.append(match.group(1))
            return ""
        return str(found)

    return PLACEHOLDER.sub(replace, text)


def fill_headers(
    headers: Iterable[tuple[str, str]], variables: Mapping[str, Any], optional: frozenset[str]
) -> dict[str, str]:
    """Fill header values; a header whose optional variable is unset or empty is dropped."""
    filled: dict[str, str] = {}
    missing: list[str] = []
    for name, value in headers:
        used = PLACEHOLDER.findall(value)
        if any(n in optional and variables.get(n) in (None, "") for n in used):
            continue
        filled[name] = str(_fill_string(value, variables, missing))
    if missing:
        raise MissingVariables(missing)
    return filled


class Redactor:
    """Blanks secret values in text: as given, JSON-escaped, and each piece of a cookie string."""

    def __init__(self, secrets: Iterable[str]) -> None:
        variants = {form for secret in secrets for form in _secret_forms(secret) if len(form) >= MIN_SECRET_LENGTH}
        # Longest first, so no fragment of a longer secret survives a shorter match.
        self._forms = sorted(variants, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        # A substring test per form is several times cheaper than one regex over every stream frame.
        for form in self._forms:
            if form in text:
                text = text.replace(form, "[redacted]")
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


def redact_secrets(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret value found in a text (see Redactor)."""
    return Redactor(secrets)(text)


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of upstream headers fit for a debug log: credential-like values blanked."""
    return {name: "[redacted]" if SECRET_HEADER.search(name) else value for name, value in headers.items()}


def _iter_strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _iter_strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _iter_strings(item)


def _read_text(folder: Path, name: str) -> str:
    try:
        return (folder / name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProviderError(f"{folder / name}: file is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProviderError(f"{folder / name}: cannot be read ({exc})") from None


def _read_json(folder: Path, name: str) -> dict:
    try:
        value = json.loads(_read_text(folder, name))
    except json.JSONDecodeError as exc:
        raise ProviderError(f"{folder / name}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(value, dict):
        raise ProviderError(f"{folder / name}: expected a JSON object")
    return value


def _check_keys(path: Path, data: dict, known: frozenset[str]) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ProviderError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")


def _required_str(folder: Path, metadata: dict, key: str) -> str:
    value = metadata.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ProviderError(f"{folder / METADATA_FILE}: key {key!r} must be a non-empty string")
    if any(c in value for c in "/\\@?# \r\n"):
        raise ProviderError(f"{folder / METADATA_FILE}: key {key!r} must be a bare host[:port], got {value!r}")
    return value.strip()


def _created(folder: Path, metadata: dict) -> int:
    value = metadata.get("created")
    if value is None:
        return int((folder / METADATA_FILE).stat().st_mtime)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProviderError(f"{folder / METADATA_FILE}: key 'created' must be an integer (Unix seconds)")
    return value


def _scheme(folder: Path, metadata: dict) -> str:
    scheme = metadata.get("scheme", "https")
    if scheme not in ("https", "http"):
        raise ProviderError(f"{folder / METADATA_FILE}: key 'scheme' must be 'https' or 'http'")
    return scheme


def _dialect(folder: Path, metadata: dict) -> str:
    dialect = metadata.get("dialect", "qwen")
    if dialect not in KNOWN_DIALECTS:
        raise ProviderError(
            f"{folder / METADATA_FILE}: unknown dialect {dialect!r} (known: {', '.join(KNOWN_DIALECTS)})"
        )
    return dialect


def _message_mode(folder: Path, metadata: dict) -> str:
    mode = metadata.get("message_mode", "single")
    if mode not in MESSAGE_MODES:
        raise ProviderError(f"{folder / METADATA_FILE}: key 'message_mode' must be one of {', '.join(MESSAGE_MODES)}")
    return mode


def _models_endpoint(folder: Path, spec: Any) -> dict | None:
    """Where the upstream lists its models: ``GET path``, ids at ``list_field[].id_field``."""
    source = f"{folder / METADATA_FILE}: models_endpoint"
    if not _optional_section(folder, spec, source, KNOWN_MODELS_ENDPOINT_KEYS):
        return None
    endpoint = {"method": "GET", "list_field": "data", "id_field": "id", **spec}
    if not isinstance(endpoint.get("path"), str) or not endpoint["path"].startswith("/"):
        raise ProviderError(f"{source}: 'path' must start with '/'")
    if not all(isinstance(endpoint[key], str) for key in ("method", "list_field", "id_field")):
        raise ProviderError(f"{source}: 'method', 'list_field' and 'id_field' must be strings")
    return endpoint


def _optional_section(folder: Path, spec: Any, source: str, known: frozenset[str]) -> bool:
    """True when an optional metadata object is present; raises when it is not a valid one."""
    if spec is None:
        return False
    if not isinstance(spec, dict):
        raise ProviderError(f"{source} must be an object")
    _check_keys(folder / METADATA_FILE, spec, known)
    return True


def _str_tuple(folder: Path, metadata: dict, key: str) -> tuple[str, ...]:
    value = metadata.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ProviderError(f"{folder / METADATA_FILE}: key {key!r} must be a list of non-empty strings")
    return tuple(value)


def _create_chat_request(folder: Path, spec: Any) -> CapturedRequest | None:
    """The optional step that opens a chat before each completion (Qwen's v2 flow)."""
    source = f"{folder / METADATA_FILE}: create_chat"
    if not _optional_section(folder, spec, source, KNOWN_CREATE_CHAT_KEYS):
        return None
    path, method, headers = spec.get("path"), spec.get("method", "POST"), spec.get("headers", {})
    if not isinstance(path, str) or not path.startswith("/"):
        raise ProviderError(f"{source}: 'path' must start with '/'")
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise ProviderError(f"{source}: 'headers' must map names to strings")
    if not isinstance(spec.get("id_field", "data.id"), str):
        raise ProviderError(f"{source}: 'id_field' must be a dotted path such as 'data.id'")
    if not isinstance(spec.get("body", {}), dict):
        raise ProviderError(f"{source}: 'body' must be a JSON object")
    return CapturedRequest(str(method).upper(), path, tuple(headers.items()))


def _check_request_values(folder: Path, request: CapturedRequest, payload: dict, create_chat: Any) -> None:
    """Lower-case placeholders must be per-request values this service fills; ${chat_id} needs create_chat."""
    places = [request.headers, request.path, payload, create_chat or {}]
    used = {name for text in _iter_strings(places) for name in PLACEHOLDER.findall(text) if not ENV_NAME.match(name)}
    unknown = sorted(used - REQUEST_VALUES)
    if unknown:
        known = ", ".join(sorted(REQUEST_VALUES))
        raise ProviderError(f"{folder.name}: unknown per-request value ${{{unknown[0]}}} (known: {known})")
    if "chat_id" in used and not create_chat:
        raise ProviderError(f"{folder.name}: ${{chat_id}} is used but metadata.json declares no create_chat step")


def default_providers_dir() -> Path:
    """``porviders/`` next to this file, whatever the working directory."""
    return Path(os.path.dirname(os.path.abspath(__file__))) / "porviders"


# --- importing a browser capture -----------------------------------------------------------

ENV_FILE_NAME = ".env"
CURL_VALUE_OPTIONS = {
    "-H": "header",
    "--header": "header",
    "-X": "method",
    "--request": "method",
    "-d": "data",
    "--data": "data",
    "--data-raw": "data",
    "--data-binary": "data",
    "--data-ascii": "data",
    "-b": "cookie",
    "--cookie": "cookie",
    "-A": "user-agent",
    "--user-agent": "user-agent",
    "-e": "referer",
    "--referer": "referer",
    "--url": "url",
}
# Options that take a value we do not need; skipping the value keeps the URL from being mistaken.
CURL_IGNORED_VALUE_OPTIONS = frozenset({"-o", "--output", "-m", "--max-time", "--connect-timeout", "-x", "--proxy"})
ANSI_C_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "\\": "\\",
    "'": "'",
    '"': '"',
    "a": "\a",
    "b": "\b",
    "e": "\x1b",
    "E": "\x1b",
    "f": "\f",
    "v": "\v",
    "?": "?",
}
NOT_SECRET_HEADERS = frozenset({"bx-v", "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest"})
URL_HEADERS = frozenset({"referer", "origin"})
# Body fields that hold credentials: whole words of the key, so max_tokens is not one of them.
SECRET_FIELD = re.compile(
    r"(^|_)(key|api_?key|token|secret|password|passwd|session(_?id)?|auth|authorization|signature|sign|credential)($|_)",
    re.IGNORECASE,
)
REQUEST_ID_HEADERS = frozenset({"x-request-id", "request-id", "x-client-request-id", "x-correlation-id"})
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
AUTH_SCHEME = re.compile(r"^(Bearer|Basic|Token|Bot)\s+(.+)$", re.IGNORECASE)
QWEN_CREATE_CHAT = {
    "method": "POST",
    "path": "/api/v2/chats/new",
    "headers": {"Referer": "https://chat.qwen.ai/c/new-chat"},
    "body": {"chatId": "", "models": [""], "project_id": "", "timestamp": 0, "chat_type": "t2t", "chat_mode": "normal"},
    "id_field": "data.id",
}


@dataclass(frozen=True)
class Capture:
    """One captured browser request: method, full URL, headers in order, raw body."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: str = ""


@dataclass
class ImportResult:
    """What an import wrote, and what the user still has to do."""

    folder: Path
    dialect: str
    variables_written: list[str] = field(default_factory=list)
    variables_kept: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def split_shell_words(text: str) -> list[str]:
    """Split a bash command line as browsers write it: '...', "...", $'...', backslashes, continuations."""
    words: list[str] = []
    word: list[str] | None = None
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and text[i + 1 : i + 2] in ("\n", "\r"):
            i += 2 + (text[i + 1 : i + 3] == "\r\n")
            continue
        if char.isspace():
            if word is not None:
                words.append("".join(word))
                word = None
            i += 1
            continue
        word = word if word is not None else []
        piece, i = _shell_piece(text, i)
        word.append(piece)
    if word is not None:
        words.append("".join(word))
    return words


def _shell_piece(text: str, i: int) -> tuple[str, int]:
    """One quoted or bare piece of a word, starting at ``i``; returns it and the next index."""
    if text.startswith("$'", i):
        return _ansi_c_quoted(text, i + 2)
    if text[i] == "'":
        end = text.find("'", i + 1)
        if end < 0:
            raise ProviderError("capture: unterminated '...' string")
        return text[i + 1 : end], end + 1
    if text[i] == '"':
        return _double_quoted(text, i + 1)
    if text[i] == "\\" and i + 1 < len(text):
        return text[i + 1], i + 2
    return text[i], i + 1


def _double_quoted(text: str, i: int) -> tuple[str, int]:
    out = []
    while i < len(text):
        char = text[i]
        if char == '"':
            return "".join(out), i + 1
        if char == "\\" and text[i + 1 : i + 2] in ('"', "\\", "$", "`"):
            out.append(text[i + 1])
            i += 2
            continue
        out.append(char)
        i += 1
    raise ProviderError('capture: unterminated "..." string')


def _ansi_c_quoted(text: str, i: int) -> tuple[str, int]:
    """Bash's $'...' strings, which Chrome uses when a body holds quotes or non-ASCII text."""
    out = []
    while i < len(text):
        char = text[i]
        if char == "'":
            return "".join(out), i + 1
        if char != "\\":
            out.append(char)
            i += 1
            continue
        escape, i = _ansi_c_escape(text, i + 1)
        out.append(escape)
    raise ProviderError("capture: unterminated $'...' string")


def _ansi_c_escape(text: str, i: int) -> tuple[str, int]:
    char = text[i : i + 1]
    if char in ANSI_C_ESCAPES:
        return ANSI_C_ESCAPES[char], i + 1
    for prefix, width in (("x", 2), ("u", 4), ("U", 8)):
        if char == prefix:
            digits = re.match(rf"[0-9a-fA-F]{{1,{width}}}", text[i + 1 :])
            if digits and int(digits.group(), 16) <= sys.maxunicode:
                return chr(int(digits.group(), 16)), i + 1 + len(digits.group())
    octal = re.match(r"[0-7]{1,3}", text[i:])
    if octal:
        return chr(int(octal.group(), 8)), i + len(octal.group())
    return "\\" + char, i + 1


def parse_curl(text: str) -> Capture:
    """A Capture from "Copy as cURL (bash)" as Chrome and Firefox write it."""
    words = split_shell_words(text.strip())
    if not words or words[0] != "curl":
        raise ProviderError("capture: expected a command starting with 'curl'")
    found: dict[str, list[str]] = {}
    url = ""
    index = 1
    while index < len(words):
        word = words[index]
        option = CURL_VALUE_OPTIONS.get(word)
        if option and index + 1 < len(words):
            found.setdefault(option, []).append(words[index + 1])
            index += 2
        elif word in CURL_IGNORED_VALUE_OPTIONS:
            index += 2
        else:
            url = url or ("" if word.startswith("-") else word)
            index += 1
    return _capture_from_curl_options(url or (found.get("url") or [""])[0], found)


def _capture_from_curl_options(url: str, found: dict[str, list[str]]) -> Capture:
    if not url.startswith(("http://", "https://")):
        raise ProviderError("capture: no http(s) URL found in the curl command")
    headers = [_split_header(h) for h in found.get("header", [])]
    for option, name in (("cookie", "Cookie"), ("user-agent", "User-Agent"), ("referer", "Referer")):
        headers.extend((name, value) for value in found.get(option, []))
    body = "&".join(found.get("data", []))
    method = (found.get("method") or ["POST" if body else "GET"])[-1].upper()
    return Capture(method, url, tuple(headers), body)


def _split_header(line: str) -> tuple[str, str]:
    name, sep, value = line.partition(":")
    if not sep or not HEADER_NAME.fullmatch(name.strip()) or "\n" in value or "\r" in value:
        raise ProviderError(f"capture: malformed header {line[:80]!r}")
    return name.strip(), value.strip()


def parse_har(text: str, match: str | None = None) -> tuple[Capture, Capture | None]:
    """The chat request of a .har file, and Qwen's chat-creation request when it is there too.

    The chat request is the last POST whose answer is ``text/event-stream``, or the last
    request whose URL contains ``match``.
    """
    try:
        entries = json.loads(text)["log"]["entries"]
    except (ValueError, KeyError, TypeError):
        entries = None
    if not isinstance(entries, list):
        raise ProviderError("capture: not a HAR file (expected a list at log.entries)")
    requests = [entry for entry in entries if isinstance(entry, dict) and isinstance(entry.get("request"), dict)]
    chosen = [e for e in requests if _har_matches(e, match)]
    if not chosen:
        wanted = f"request whose URL contains {match!r}" if match else "POST answered with text/event-stream"
        raise ProviderError(f"capture: the HAR file has no {wanted}; pick one with --match SUBSTRING")
    create = [e for e in requests if "/api/v2/chats/new" in str(e["request"].get("url") or "")]
    return _capture_from_har(chosen[-1]), (_capture_from_har(create[-1]) if create else None)


def _har_matches(entry: dict, match: str | None) -> bool:
    request = entry["request"]
    if match:
        return match in str(request.get("url", ""))
    response = entry.get("response") if isinstance(entry.get("response"), dict) else {}
    content = response.get("content") if isinstance(response.get("content"), dict) else {}
    mime = str(content.get("mimeType", ""))
    mime += " ".join(str(h.get("value", "")) for h in response.get("headers", []) if _is_content_type(h))
    return request.get("method") == "POST" and "text/event-stream" in mime


def _is_content_type(header: Any) -> bool:
    return isinstance(header, dict) and str(header.get("name", "")).lower() == "content-type"


def _capture_from_har(entry: dict) -> Capture:
    request = entry["request"]
    listed = request.get("headers") if isinstance(request.get("headers"), list) else []
    pairs = [h for h in listed if isinstance(h, dict) and not str(h.get("name", "")).startswith(":")]
    headers = [_split_header(f"{h.get('name', '')}: {h.get('value', '')}") for h in pairs]
    post = request.get("postData") if isinstance(request.get("postData"), dict) else {}
    body = str(post.get("text") or "")
    if post.get("encoding") == "base64":
        try:
            body = base64.b64decode(body, validate=True).decode("utf-8", errors="replace")
        except ValueError:
            raise ProviderError("capture: the HAR request body is marked base64 but is not") from None
    return Capture(str(request.get("method") or "GET").upper(), str(request.get("url") or ""), tuple(headers), body)


def detect_dialect(path: str, body: Any) -> str | None:
    """Which known wire format a captured chat request speaks, or None."""
    if path.startswith("/api/v2/chat/completions") and isinstance(body, dict) and "chat_id" in path + str(body):
        return "qwen"
    is_chat_path = path.split("?")[0].endswith("/chat/completions")
    if is_chat_path and isinstance(body, dict) and isinstance(body.get("messages"), list) and "model" in body:
        return "openai"
    return None


def import_capture(
    name: str, capture_file: Path, providers_dir: Path, env_file: Path, match: str | None = None, force: bool = False
) -> ImportResult:
    """Write ``providers_dir/name`` from a cURL command or a HAR file, moving secrets into ``env_file``."""
    if not is_plain_name(name):
        raise ProviderError(f"{name!r}: a provider name must be a plain folder name")
    folder = providers_dir / name
    if folder.exists() and not force:
        raise ProviderError(f"{folder} exists; use --force to overwrite it")
    chat, create = _read_capture(capture_file, match)
    url = _split_url(chat.url)
    body = _json_or_none(chat.body)
    path = url.path + (f"?{url.query}" if url.query else "")
    dialect = detect_dialect(path, body)
    store = SecretStore(_variable_prefix(name))
    headers, optional = _headers_for_folder(chat.headers, store, dialect)
    body = _secret_fields(_without_prompt(body, dialect), store)
    result = ImportResult(folder, dialect or "unknown")
    metadata = _metadata(name, url, dialect, body, optional, create)
    files = _folder_files(chat.method, _fresh_path(path, dialect, store), headers, body, metadata)
    if not env_file.parent.is_dir():
        raise ProviderError(f"{env_file.parent}: folder for the .env file does not exist")
    _write_folder(folder, files)
    result.variables_written, result.variables_kept = write_env_values(env_file, store.values, force)
    result.notes = _import_notes(dialect, body) + _url_credential_note(url)
    return result


class SecretStore:
    """Captured secret values and the variables they move to: one variable per distinct value."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.values: dict[str, str] = {}

    def variable(self, label: str, value: str) -> str:
        """The variable holding ``value``, named ``PREFIX_LABEL`` (``_2``, ``_3``... when taken)."""
        base = f"{self.prefix}_{re.sub(r'[^A-Z0-9]+', '_', label.upper()).strip('_')}"
        name, number = base, 2
        while name in self.values and self.values[name] != value:
            name, number = f"{base}_{number}", number + 1
        self.values[name] = value
        return name


def _read_capture(capture_file: Path, match: str | None) -> tuple[Capture, Capture | None]:
    try:
        text = capture_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProviderError(f"{capture_file}: cannot be read ({exc})") from None
    if text.lstrip().startswith("{"):
        return parse_har(text, match)
    return parse_curl(text), None


def _split_url(url: str) -> urllib.parse.SplitResult:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what raises on a malformed one
    except ValueError as exc:
        raise ProviderError(f"capture: the URL {url[:80]!r} cannot be read ({exc})") from None
    return parts


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _headers_for_folder(
    headers: Iterable[tuple[str, str]], store: SecretStore, dialect: str | None
) -> tuple[list[tuple[str, str]], list[str]]:
    """Captured headers with secrets moved to variables and per-request values made fresh."""
    kept: list[tuple[str, str]] = []
    optional: list[str] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in DROPPED_HEADERS or name.startswith(":"):
            continue
        if lowered in REQUEST_ID_HEADERS:
            kept.append((name, "${uuid}"))
        elif SECRET_HEADER.search(name) and lowered not in NOT_SECRET_HEADERS and value:
            kept.append((name, _secret_placeholder(name, value, store, optional)))
        elif lowered in URL_HEADERS:
            value = _fresh_path(value, None, store)  # a token in a Referer's query string, say
            kept.append((name, UUID.sub("${chat_id}", value) if dialect == "qwen" else value))
        else:
            kept.append((name, value))
    return kept, optional


def _secret_placeholder(name: str, value: str, store: SecretStore, optional: list[str]) -> str:
    lowered = name.lower()
    scheme = AUTH_SCHEME.match(value) if lowered == "authorization" else None
    if scheme:
        return f"{scheme.group(1)} ${{{store.variable('TOKEN', scheme.group(2))}}}"
    variable = store.variable(name, value)
    if lowered != "authorization" and "key" not in lowered and variable not in optional:
        optional.append(variable)  # cookies and anti-bot headers: the request may work without them
    return f"${{{variable}}}"


def _secret_fields(body: Any, store: SecretStore) -> Any:
    """The captured body with credential-like string fields (api_key, token, password...) moved out."""
    if isinstance(body, dict):
        return {key: _secret_field(key, value, store) for key, value in body.items()}
    if isinstance(body, list):
        return [_secret_fields(item, store) for item in body]
    return body


def _secret_field(key: str, value: Any, store: SecretStore) -> Any:
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key).replace("-", "_")  # accessToken -> access_Token
    if isinstance(value, str) and value and SECRET_FIELD.search(words):
        return f"${{{store.variable(key, value)}}}"
    return _secret_fields(value, store)


def _variable_prefix(name: str) -> str:
    """NAME for ${NAME_TOKEN}: upper case, and never starting with a digit (not a valid variable)."""
    prefix = re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_") or "PROVIDER"
    return f"PROVIDER_{prefix}" if prefix[0].isdigit() else prefix


def _fresh_path(path: str, dialect: str | None, store: SecretStore) -> str:
    """A captured path or URL with secret query values moved to variables and Qwen's chat id made fresh."""
    base, _, query = path.partition("?")
    pairs = []
    for pair in query.split("&") if query else []:
        key, sep, value = pair.partition("=")
        if dialect == "qwen" and key == "chat_id":
            value = "${chat_id}"
        elif value and SECRET_HEADER.search(urllib.parse.unquote(key)):
            # Kept percent-encoded, as captured: filled back in, it is sent exactly as the browser did.
            value = f"${{{store.variable(urllib.parse.unquote(key), value)}}}"
        pairs.append(f"{key}{sep}{value}")
    return base + ("?" + "&".join(pairs) if query else "")


def _metadata(
    name: str,
    url: urllib.parse.SplitResult,
    dialect: str | None,
    body: Any,
    optional: list[str],
    create: Capture | None,
) -> dict:
    model = body.get("model") if isinstance(body, dict) and isinstance(body.get("model"), str) else None
    metadata: dict[str, Any] = {
        "description": f"Imported from a browser capture of {url.scheme}://{_host(url)}{url.path}",
        "host": _host(url),
        "scheme": url.scheme,
        "dialect": dialect or "unknown",
        "owned_by": name,
        "models": [model] if model else [],
        "patterns": [],
        "optional_variables": optional,
    }
    if dialect == "qwen":
        metadata.update(_qwen_metadata(url, create))
    elif dialect == "openai":
        models_path = url.path[: -len("chat/completions")] + "models"
        metadata["models_endpoint"] = {"method": "GET", "path": models_path, "list_field": "data", "id_field": "id"}
    return metadata


def _host(url: urllib.parse.SplitResult) -> str:
    """host[:port] of a URL, without any user:password@ part."""
    host = f"[{url.hostname}]" if url.hostname and ":" in url.hostname else url.hostname or ""
    return f"{host}:{url.port}" if url.port else host


def _url_credential_note(url: urllib.parse.SplitResult) -> list[str]:
    if url.username is None:
        return []
    return [
        "The captured URL carried a user name and password; they were left out of the folder. Send them as "
        "an Authorization header placeholder if the site needs them."
    ]


def _qwen_metadata(url: urllib.parse.SplitResult, create: Capture | None) -> dict:
    create_chat = copy.deepcopy(QWEN_CREATE_CHAT)
    create_chat["headers"] = {"Referer": f"{url.scheme}://{_host(url)}/c/new-chat"}
    if create is not None:
        body = _json_or_none(create.body)
        create_chat["path"] = urllib.parse.urlsplit(create.url).path
        create_chat["body"] = body if isinstance(body, dict) else create_chat["body"]
    return {
        "message_mode": "single",
        "models_endpoint": {"method": "GET", "path": "/api/models", "list_field": "data", "id_field": "id"},
        "create_chat": create_chat,
    }


def _folder_files(
    method: str, path: str, headers: list[tuple[str, str]], body: Any, metadata: dict
) -> dict[str, bytes]:
    """The three files, encoded before anything is written, so a capture that cannot be saved
    (a lone surrogate, say) leaves no half-written folder behind."""
    lines = [f"{method} {path} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    texts = {
        HEADER_FILE: "\n".join(lines) + "\n",
        PAYLOAD_FILE: json.dumps(body if isinstance(body, dict) else {}, indent=2, ensure_ascii=False) + "\n",
        METADATA_FILE: json.dumps(metadata, indent=2, ensure_ascii=False) + "\n",
    }
    try:
        return {name: text.encode("utf-8") for name, text in texts.items()}
    except UnicodeEncodeError:
        raise ProviderError("capture: it holds text that cannot be saved as UTF-8 (a lone surrogate)") from None


def _write_folder(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def _without_prompt(body: Any, dialect: str | None) -> Any:
    """The captured conversation is not kept: the dialect fills in each request's own, and the
    captured text may be private (or hold ${...}, which would read as a placeholder)."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return body
    if dialect == "openai":
        return {**body, "messages": []}
    if dialect == "qwen":
        messages = [{**m, "content": ""} if isinstance(m, dict) else m for m in body["messages"]]
        return {**body, "messages": messages}
    return body


def _import_notes(dialect: str | None, body: Any) -> list[str]:
    if dialect is None:
        return [
            'The wire format was not recognised: set "dialect" in metadata.json to one of '
            f"{', '.join(KNOWN_DIALECTS)} (or add a dialect), and list the models it serves.",
        ]
    if not (isinstance(body, dict) and body.get("model")):
        return ["No model name was found in the capture: list the provider's models in metadata.json."]
    return []


def write_env_values(env_file: Path, values: Mapping[str, str], force: bool = False) -> tuple[list[str], list[str]]:
    """Add variables to a .env file (created with mode 0600); existing ones are kept unless ``force``."""
    existing = env_file.read_text(encoding="utf-8").splitlines() if env_file.exists() else []
    names = {
        line.split("=", 1)[0].strip().removeprefix("export ").strip(): i
        for i, line in enumerate(existing)
        if "=" in line and not line.lstrip().startswith("#")
    }
    written, kept = [], []
    for name, value in values.items():
        line = f"{name}={_env_quote(value)}"
        if name in names and not force:
            kept.append(name)
            continue
        if name in names:
            existing[names[name]] = line
        else:
            existing.append(line)
        written.append(name)
    if written:
        _write_private(env_file, "\n".join(existing) + "\n")
    return written, kept


def _write_private(path: Path, text: str) -> None:
    """Replace a file by one only its owner can read, never exposing the new text on the way."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)


def _env_quote(value: str) -> str:
    """Single quotes, with python-dotenv's two escapes there (\\ and \'); the service reads .env
    without ${} expansion, so the value comes back exactly."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def default_env_file() -> Path:
    """The .env that ``python app.py`` reads, next to this file."""
    return Path(os.path.dirname(os.path.abspath(__file__))) / ENV_FILE_NAME


def main(argv: list[str] | None = None) -> int:
    """``python provider_loader.py import NAME FILE``: a provider folder from a browser capture."""
    parser = argparse.ArgumentParser(prog="python provider_loader.py", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("import", help="write porviders/NAME from a cURL command or a .har file")
    command.add_argument("name", help="the provider's folder name, e.g. qwen2")
    command.add_argument("file", type=Path, help='a "Copy as cURL (bash)" command saved to a file, or a .har file')
    command.add_argument("--match", help="in a HAR file, the request whose URL contains this text")
    command.add_argument("--force", action="store_true", help="overwrite the folder and existing .env variables")
    command.add_argument(
        "--providers-dir", type=Path, default=Path(os.environ.get("PROVIDERS_DIR") or default_providers_dir())
    )
    command.add_argument("--env-file", type=Path, default=Path(os.environ.get("ENV_FILE") or default_env_file()))
    args = parser.parse_args(argv)
    try:
        result = import_capture(args.name, args.file, args.providers_dir, args.env_file, args.match, args.force)
    except ProviderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:  # a file that cannot be written, an odd capture: no traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    _print_result(result, args.env_file)
    return 0


def _print_result(result: ImportResult, env_file: Path) -> None:
    print(f"Wrote {result.folder} (dialect: {result.dialect}).")
    if result.variables_written:
        print(f"Secrets moved to {env_file}: {', '.join(result.variables_written)}.")
    if result.variables_kept:
        print(f"Kept existing values in {env_file} (use --force to replace): {', '.join(result.variables_kept)}.")
    for note in result.notes:
        print(f"To do: {note}")


if __name__ == "__main__":
    sys.exit(main())
