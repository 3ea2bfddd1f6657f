"""Writing a provider folder from a capture: secrets moved to ``.env``, per-request values made fresh.

What is particular to one upstream is asked of its dialect (``ImportHints``), never written here.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters import json_depth
from dialects import DIALECTS
from dialects.contract import ImportHints
from importer.capture import Capture, parse_curl, parse_har
from importer.refresh import plan_refresh, split_refresh_cookie
from placeholders import escape_placeholders
from provider_loader import (
    DROPPED_HEADERS,
    HEADER_FILE,
    MAX_JSON_DEPTH,
    METADATA_FILE,
    PAYLOAD_FILE,
    ProviderError,
    is_plain_name,
    variable_prefix,
)
from redaction import SECRET_HEADER

NOT_SECRET_HEADERS = frozenset({"bx-v", "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest"})
URL_HEADERS = frozenset({"referer", "origin"})
# Body fields that hold credentials: whole words of the key, so max_tokens is not one of them.
SECRET_FIELD = re.compile(
    r"(^|_)(key|api_?key|token|secret|password|passwd|pwd|passphrase|session(_?id)?|auth|authorization|signature"
    r"|sign|sig|credentials?|jwt|cookies?)($|_)",
    re.IGNORECASE,
)
REQUEST_ID_HEADERS = frozenset({"x-request-id", "request-id", "x-client-request-id", "x-correlation-id"})
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
AUTH_SCHEME = re.compile(r"^(Bearer|Basic|Token|Bot)\s+(.+)$", re.IGNORECASE)


@dataclass
class ImportResult:
    """What an import wrote, and what the user still has to do."""

    folder: Path
    dialect: str
    variables_written: list[str] = field(default_factory=list)
    variables_kept: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)  # printed as they are
    notes: list[str] = field(default_factory=list)  # printed as "To do: ..."
    account: int | None = None  # set by ``--account N``: only .env was written
    next_step: str = ""


def detect_dialect(path: str, body: Any) -> str | None:
    """Which known wire format a captured chat request speaks, or None: the first dialect that says so."""
    return next((name for name, dialect in DIALECTS.items() if dialect.hints.recognizes(path, body)), None)


def import_capture(
    name: str, capture_file: Path, providers_dir: Path, env_file: Path, match: str | None = None, force: bool = False
) -> ImportResult:
    """Write ``providers_dir/name`` from a cURL command or a HAR file, moving secrets into ``env_file``."""
    check_name(name)
    folder = providers_dir / name
    if folder.exists() and not force:
        raise ProviderError(f"{folder} exists; use --force to overwrite it")
    plan = plan_folder(name, capture_file, match)
    check_env_file(env_file)
    _write_folder(folder, plan.files)
    result = ImportResult(folder, plan.dialect or "unknown", info=plan.info, notes=plan.notes)
    result.variables_written, result.variables_kept = write_env_values(env_file, plan.values, force)
    return result


@dataclass
class FolderPlan:
    """A capture made into a provider folder, before anything is written: the files, the secrets
    they name (variable -> captured value), and what to tell the user."""

    dialect: str | None
    host: str
    files: dict[str, bytes]
    values: dict[str, str]
    info: list[str]
    notes: list[str]


def plan_folder(name: str, capture_file: Path, match: str | None = None, dialect: str | None = None) -> FolderPlan:
    """What importing ``capture_file`` as ``name`` writes. ``dialect``, an existing folder's, stands
    for a capture in no known wire format; a capture in another one is refused."""
    chat, create = _read_capture(capture_file, match)
    url = _split_url(chat.url)
    body = _json_or_none(chat.body)
    if json_depth(body) > MAX_JSON_DEPTH:
        raise ProviderError(f"capture: the request body is nested deeper than {MAX_JSON_DEPTH} levels")
    path = url.path + (f"?{url.query}" if url.query else "")
    spoken = _spoken_dialect(path, body, dialect)
    hints = DIALECTS[spoken].hints if spoken else None
    fresh_ids = bool(hints and hints.fresh_chat_ids)
    store = SecretStore(variable_prefix(name))
    captured, refresh_token = split_refresh_cookie(chat.headers, hints.refresh_cookie if hints else None)
    headers, optional = _headers_for_folder(captured, store, fresh_ids)
    refresh = plan_refresh(spoken, hints, f"{url.scheme}://{_host(url)}", headers, store, refresh_token)
    body = _secret_fields(_without_prompt(body, hints), store)
    metadata = _metadata(name, url, spoken, body, optional + refresh.optional, create)
    if refresh.step is not None:
        metadata["refresh_credential"] = refresh.step
    files = _folder_files(chat.method, _fresh_path(path, fresh_ids, store), headers, body, metadata)
    notes = _import_notes(spoken, body) + _url_credential_note(url)
    return FolderPlan(spoken, _host(url), files, store.values, refresh.lines, notes)


def check_name(name: str) -> None:
    if not is_plain_name(name):
        raise ProviderError(f"{name!r}: a provider name must be a plain folder name")


def check_env_file(env_file: Path) -> None:
    """Refuse a .env that cannot be written before anything else is."""
    if not env_file.parent.is_dir():
        raise ProviderError(f"{env_file.parent}: folder for the .env file does not exist")
    if env_file.is_dir():
        raise ProviderError(f"{env_file}: is a folder, not a .env file")


def _spoken_dialect(path: str, body: Any, folder_dialect: str | None) -> str | None:
    detected = detect_dialect(path, body)
    if folder_dialect and detected not in (None, folder_dialect):
        raise ProviderError(f"capture: it speaks the {detected} dialect, but the folder speaks {folder_dialect}")
    return detected or folder_dialect


class SecretStore:
    """Captured secret values and the variables they move to: one variable per distinct value."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.values: dict[str, str] = {}

    def base_name(self, label: str) -> str:
        """``PREFIX_LABEL``: the name a value captured under ``label`` gets when it is free."""
        return f"{self.prefix}_{re.sub(r'[^A-Z0-9]+', '_', label.upper()).strip('_')}"

    def variable(self, label: str, value: str) -> str:
        """The variable holding ``value``, named ``PREFIX_LABEL`` (``_ALT``, ``_ALT2``... when taken).

        Never ``_2``: ``PREFIX_LABEL_2`` is account 2's ``PREFIX_LABEL``.
        """
        base = self.base_name(label)
        name, number = base, 1
        while name in self.values and self.values[name] != value:
            name, number = f"{base}_ALT{number if number > 1 else ''}", number + 1
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
        # The URL itself is not quoted: its query may hold a credential.
        raise ProviderError(f"capture: the URL cannot be read ({exc})") from None
    return parts


def _as_text(value: Any) -> Any:
    """A captured JSON value with every string kept as text (no captured "${X}" goes live)."""
    if isinstance(value, str):
        return escape_placeholders(value)
    if isinstance(value, dict):
        return {key: _as_text(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_text(item) for item in value]
    return value


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except (ValueError, RecursionError):
        return None


def _headers_for_folder(
    headers: Iterable[tuple[str, str]], store: SecretStore, fresh_ids: bool
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
            value = _fresh_path(value, False, store)  # a token in a Referer's query string, say
            kept.append((name, UUID.sub("${chat_id}", value) if fresh_ids else value))
        else:
            kept.append((name, escape_placeholders(value)))  # a captured "${X}" must stay text
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
    """The captured body with credential-like string fields (api_key, token, password...) moved out,
    and every other string kept as text (a captured "${X}" never becomes a placeholder)."""
    if isinstance(body, str):
        return escape_placeholders(body)
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


def _fresh_path(path: str, fresh_ids: bool, store: SecretStore) -> str:
    """A captured path or URL with secret query values moved to variables and a chat id made fresh."""
    base, _, query = path.partition("?")
    pairs = []
    for pair in query.split("&") if query else []:
        key, sep, value = pair.partition("=")
        if fresh_ids and key == "chat_id":
            value = "${chat_id}"
        elif value and SECRET_HEADER.search(urllib.parse.unquote(key)):
            # Kept percent-encoded, as captured: filled back in, it is sent exactly as the browser did.
            value = f"${{{store.variable(urllib.parse.unquote(key), value)}}}"
        else:
            value = escape_placeholders(value)
        pairs.append(f"{escape_placeholders(key)}{sep}{value}")
    return escape_placeholders(base) + ("?" + "&".join(pairs) if query else "")


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
    if dialect:
        created = None
        if create is not None:
            created = (
                escape_placeholders(urllib.parse.urlsplit(create.url).path),
                _as_text(_json_or_none(create.body)),
            )
        metadata.update(DIALECTS[dialect].hints.metadata(f"{url.scheme}://{_host(url)}", url.path, created))
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
    if folder.is_symlink():
        raise ProviderError(f"{folder} is a symbolic link; the importer never writes through one")
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        write_atomically(folder / name, data)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` whole: a fresh 0600 file beside it (created exclusively, never through a
    symlink), then renamed over it, so a reader sees the old file or the new, never half of one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)  # replaces a symlink at ``path`` itself, never its target
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _without_prompt(body: Any, hints: ImportHints | None) -> Any:
    """The captured conversation is not kept: the dialect fills in each request's own, and the
    captured text may be private (or hold ${...}, which would read as a placeholder)."""
    if hints is None or not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return body
    return hints.strip_prompt(body)


def _import_notes(dialect: str | None, body: Any) -> list[str]:
    if dialect is None:
        return [
            'The wire format was not recognised: set "dialect" in metadata.json to one of '
            f"{', '.join(DIALECTS)} (or add a dialect), and list the models it serves.",
        ]
    if not (isinstance(body, dict) and body.get("model")):
        return ["No model name was found in the capture: list the provider's models in metadata.json."]
    return []


def write_env_values(env_file: Path, values: Mapping[str, str], force: bool = False) -> tuple[list[str], list[str]]:
    """Add variables to a .env file (created with mode 0600); existing ones are kept unless
    ``force``. One set to nothing (``QWEN_TOKEN=`` as .env.example has it) is filled in."""
    existing = env_file.read_text(encoding="utf-8").splitlines() if env_file.exists() else []
    names = {
        line.split("=", 1)[0].strip().removeprefix("export ").strip(): i
        for i, line in enumerate(existing)
        if "=" in line and not line.lstrip().startswith("#")
    }
    written, kept = [], []
    for name, value in values.items():
        line = f"{name}={_env_quote(value)}"
        if name in names and not force and not _is_empty_assignment(existing[names[name]]):
            kept.append(name)
            continue
        if name in names:
            existing[names[name]] = line
        else:
            existing.append(line)
        written.append(name)
    if written:
        try:
            data = ("\n".join(existing) + "\n").encode("utf-8")
        except UnicodeEncodeError:
            raise ProviderError(
                "capture: a secret holds text that cannot be saved as UTF-8 (a lone surrogate)"
            ) from None
        write_atomically(env_file, data)  # only its owner can read it, and no reader sees half of it
    return written, kept


def _is_empty_assignment(line: str) -> bool:
    """``NAME=``, ``NAME=""`` or ``NAME=''`` (a comment after it allowed): a value left to fill."""
    value = line.split("=", 1)[1].split(" #", 1)[0].strip()
    return value in ("", '""', "''")


def _env_quote(value: str) -> str:
    """Single quotes, with python-dotenv's two escapes there (\\ and \'); the service reads .env
    without ${} expansion, so the value comes back exactly."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
