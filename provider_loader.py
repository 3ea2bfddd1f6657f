"""Provider folders: metadata.json, header.txt and payload.json into validated Provider objects.

Also merges the models a folder lists with its upstream's. It is the entry of
``python provider_loader.py import NAME FILE``, which the ``importer`` package carries out.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from converters import dig, json_depth
from dialects import DIALECTS
from placeholders import ENV_NAME, PLACEHOLDER, REQUEST_VALUES, env_names_in, iter_strings
from provider_steps import Step, StepError, parse_create_chat, parse_refresh

METADATA_FILE = "metadata.json"
HEADER_FILE = "header.txt"
PAYLOAD_FILE = "payload.json"

# requests owns these; a browser's "br, zstd" would also break decoding without extra packages.
DROPPED_HEADERS = frozenset({"host", "content-length", "connection", "accept-encoding"})
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
        "refresh_credential",
        "continuation",
        "message_mode",
        "models_endpoint",
        "extra_variables",
    }
)
KNOWN_MODELS_ENDPOINT_KEYS = frozenset({"method", "path", "list_field", "id_field", "thinking_field"})
# A listed model whose ``thinking_field`` is true is also offered as "<id>-thinking" (its thinking mode).
THINKING_SUFFIX = "-thinking"
BEARER_PLACEHOLDER = re.compile(r"(?i:bearer)\s+\$\{([A-Z_][A-Z0-9_]*)\}")

PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
MAX_JSON_DEPTH = 64  # far past any real capture, far below Python's recursion limit
REQUEST_LINE = re.compile(r"^([A-Z]+) (/\S*) HTTP/[0-9.]+$")


class ProviderError(Exception):
    """A provider folder that cannot be used; the message names folder, file and reason."""


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
    create_chat: Step | None = None
    refresh: Step | None = None  # trades a refresh token for a new credential
    # Payload fields that name the reply a turn answers: set, the upstream chat is continued.
    parent_fields: tuple[str, ...] = ()
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
        _check_request_values(folder, request, payload, metadata)
        provider = cls(
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
            create_chat=_step(folder, metadata, "create_chat", parse_create_chat),
            refresh=_step(folder, metadata, "refresh_credential", parse_refresh),
            parent_fields=_parent_fields(folder, metadata.get("continuation")),
            message_mode=_message_mode(folder, metadata),
            models_endpoint=_models_endpoint(folder, metadata.get("models_endpoint")),
        )
        _check_variable_names(folder, provider.variable_names(), _str_tuple(folder, metadata, "extra_variables"))
        return provider

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def variable_names(self) -> list[str]:
        """Every environment variable the provider's files refer to."""
        return list(self._variable_names)

    def required_variables(self) -> list[str]:
        """Environment variables this provider cannot work without (a refresh token is not one:
        without it the credential is used until it expires)."""
        return [name for name in self._request_names if name not in self.optional_variables]

    def refresh_variables(self) -> list[str]:
        """Variables the refresh step sends or replaces (none without one)."""
        if self.refresh is None:
            return []
        return sorted(self.refresh.names_read() | set(self.refresh.names_written()))

    @cached_property
    def _variable_names(self) -> tuple[str, ...]:
        # Computed once: the files do not change under a loaded Provider (a change reloads it).
        return tuple(sorted(set(self._request_names) | self.optional_variables | set(self.refresh_variables())))

    @cached_property
    def _request_names(self) -> tuple[str, ...]:
        names = set(env_names_in(self.request.headers)) | set(env_names_in(self.request.path))
        names |= set(env_names_in(self.payload))
        if self.create_chat:
            names |= self.create_chat.names_read()
        return tuple(sorted(names))

    @cached_property
    def bearer_variables(self) -> frozenset[str]:
        """Variables a header sends right after ``Bearer `` (``Authorization: Bearer ${QWEN_TOKEN}``):
        a value pasted with its own prefix would go out as ``Bearer Bearer ...``."""
        headers = [value for _, value in self.request.headers]
        return frozenset(match.group(1) for value in headers for match in BEARER_PLACEHOLDER.finditer(value))

    @property
    def jwt_variable(self) -> str:
        """The variable whose JWT expiry drives the refresh step: it must hold a JWT."""
        return self.refresh.token_variable if self.refresh is not None else ""

    def matches_pattern(self, model: str) -> bool:
        lowered = model.lower()
        return any(fnmatch.fnmatchcase(lowered, p.lower()) for p in self.patterns)


@dataclass(frozen=True)
class Registry:
    """Every provider folder: the ones that loaded, and why the others did not."""

    providers: dict[str, Provider]
    errors: dict[str, str]
    # Folders whose latest read failed (half-written, say) and that serve their last good version.
    stale: dict[str, str] = field(default_factory=dict)

    def keeping(self, previous: Registry) -> Registry:
        """This reading, but a folder that loaded before and fails now keeps its last good version."""
        kept = {name: previous.providers[name] for name in self.errors if name in previous.providers}
        errors = {name: why for name, why in self.errors.items() if name not in kept}
        stale = {name: self.errors[name] for name in kept}
        return Registry({**self.providers, **kept}, errors, stale)


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
        # The line itself is not quoted (here nor below): /health is open, and a pasted key would show.
        raise ProviderError(f"{source}, line {first_no}: expected a request line like 'POST /path HTTP/1.1'")
    headers = [_parse_header_line(line, n, source) for n, line in numbered[1:]]
    kept = [h for h in headers if h is not None and h[0].lower() not in DROPPED_HEADERS]
    return CapturedRequest(match.group(1), match.group(2), _merge_duplicates(kept))


def _parse_header_line(line: str, number: int, source: str) -> tuple[str, str] | None:
    if line.startswith(":"):
        return None  # HTTP/2 pseudo-header such as :authority; requests builds its own.
    name, sep, value = line.partition(":")
    if not sep or not HEADER_NAME.match(name):
        # Not even the name: with no colon, the whole line (a pasted key, say) would be the name.
        raise ProviderError(f"{source}, line {number}: expected 'Name: value'")
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


def ids_from_models_answer(data: Any, endpoint: Mapping[str, str]) -> list[str]:
    """Model ids from an upstream's list answer: ``list_field`` (dotted) holds objects with ``id_field``."""
    items = dig(data, endpoint["list_field"])
    if not isinstance(items, list):
        raise ValueError(f"no list at '{endpoint['list_field']}' in the models answer")
    id_field, thinking_field = endpoint["id_field"], endpoint.get("thinking_field")
    ids = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get(id_field), str):
            ids.append(item[id_field])
            if thinking_field and dig(item, thinking_field) is True:
                ids.append(item[id_field] + THINKING_SUFFIX)  # so model pickers offer the thinking mode
    return ids


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
    except RecursionError:
        raise ProviderError(f"{folder / name}: nested too deeply to read") from None
    if not isinstance(value, dict):
        raise ProviderError(f"{folder / name}: expected a JSON object")
    if json_depth(value) > MAX_JSON_DEPTH:
        # Filling and copying walk the template recursively: refuse it here, not in a request.
        raise ProviderError(f"{folder / name}: nested deeper than {MAX_JSON_DEPTH} levels")
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
    if dialect not in DIALECTS:
        raise ProviderError(f"{folder / METADATA_FILE}: unknown dialect {dialect!r} (known: {', '.join(DIALECTS)})")
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
    if not isinstance(endpoint.get("thinking_field", ""), str):
        raise ProviderError(f"{source}: 'thinking_field' must be a string (a dotted path)")
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


def _parent_fields(folder: Path, spec: Any) -> tuple[str, ...]:
    """``continuation``: ``{"parent_fields": [...]}``, the payload keys (top level and in the
    message) that name the previous reply; a folder without it always sends the whole history."""
    if spec is None:
        return ()
    source = f"{folder / METADATA_FILE}: continuation"
    fields = spec.get("parent_fields") if isinstance(spec, dict) else None
    if set(spec if isinstance(spec, dict) else ()) - {"parent_fields"} or not fields:
        raise ProviderError(f'{source} must be {{"parent_fields": ["parent_id", ...]}}')
    if not isinstance(fields, list) or not all(isinstance(f, str) and f for f in fields):
        raise ProviderError(f"{source}: 'parent_fields' must be a list of payload keys")
    return tuple(fields)


def _step(folder: Path, metadata: dict, key: str, parse: Callable[[Any], Step | None]) -> Step | None:
    try:
        return parse(metadata.get(key))
    except StepError as exc:
        raise ProviderError(f"{folder / METADATA_FILE}: {key}: {exc}") from None


def variable_prefix(name: str) -> str:
    """NAME for a folder's own ${NAME_...} variables: upper case, never starting with a digit."""
    prefix = re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_") or "PROVIDER"
    return f"PROVIDER_{prefix}" if prefix[0].isdigit() else prefix


def _check_variable_names(folder: Path, names: list[str], extra: tuple[str, ...]) -> None:
    """A folder names only its own variables (NAME_*) and those it lists under ``extra_variables``,
    so an imported or copied folder cannot send another provider's key to its own host."""
    prefix = variable_prefix(folder.name) + "_"
    foreign = sorted(name for name in names if not name.startswith(prefix) and name not in extra)
    if foreign:
        raise ProviderError(
            f"{folder / METADATA_FILE}: ${{{foreign[0]}}} is not this folder's variable: name it {prefix}... "
            "or list it under extra_variables"
        )


def _check_request_values(folder: Path, request: CapturedRequest, payload: dict, metadata: dict) -> None:
    """Lower-case placeholders must be per-request values this service fills; ${chat_id} needs create_chat
    (and no refresh may name it: no chat exists then)."""
    create_chat, refresh = metadata.get("create_chat"), metadata.get("refresh_credential")
    if "chat_id" in {name for text in iter_strings(refresh or {}) for name in PLACEHOLDER.findall(text)}:
        raise ProviderError(f"{folder.name}: refresh_credential uses ${{chat_id}}, but no chat exists when it runs")
    places = [request.headers, request.path, payload, create_chat or {}, refresh or {}]
    used = {name for text in iter_strings(places) for name in PLACEHOLDER.findall(text) if not ENV_NAME.match(name)}
    unknown = sorted(used - REQUEST_VALUES)
    if unknown:
        known = ", ".join(sorted(REQUEST_VALUES))
        raise ProviderError(f"{folder.name}: unknown per-request value ${{{unknown[0]}}} (known: {known})")
    if "chat_id" in used and not create_chat:
        raise ProviderError(f"{folder.name}: ${{chat_id}} is used but metadata.json declares no create_chat step")


def default_providers_dir() -> Path:
    """``porviders/`` next to this file, whatever the working directory."""
    return Path(os.path.dirname(os.path.abspath(__file__))) / "porviders"


def main(argv: list[str] | None = None) -> int:
    """``python provider_loader.py import NAME FILE``: a provider folder from a browser capture."""
    # Imported here: the running service never loads the importer.
    from importer.cli import main as run_import

    return run_import(argv)


if __name__ == "__main__":
    sys.exit(main())
