"""Browser captures read: "Copy as cURL (bash)" commands and HAR files, as ``Capture`` objects."""

from __future__ import annotations

import base64
import json
import re
import sys
from dataclasses import dataclass
from typing import Any

from dialects import DIALECTS
from provider_loader import HEADER_NAME, ProviderError

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
# A HAR entry whose URL holds one of these is the request that opened the chat.
CREATE_CHAT_MARKERS = tuple(d.hints.create_chat_marker for d in DIALECTS.values() if d.hints.create_chat_marker)


@dataclass(frozen=True)
class Capture:
    """One captured browser request: method, full URL, headers in order, raw body."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: str = ""


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
    _refuse_other_copy_formats(text.strip())
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


# What the browsers' other "Copy as ..." entries write, and how each one starts.
OTHER_COPY_FORMATS = (
    ("Copy as fetch", re.compile(r"^\s*(await\s+)?fetch\s*\(", re.MULTILINE)),
    (
        "Copy as PowerShell",
        re.compile(r"^\s*(\$session\s*=|Invoke-WebRequest|Invoke-RestMethod)", re.IGNORECASE | re.MULTILINE),
    ),
    ("Copy as cURL (cmd)", re.compile(r'^\s*curl(\.exe)?\s+\^"', re.MULTILINE)),
    ("Copy as cURL (cmd)", re.compile(r"\s\^\r?\n")),
)


def _refuse_other_copy_formats(text: str) -> None:
    """A capture copied with another of the browser's entries, named, with the one to use."""
    for name, looks_like in OTHER_COPY_FORMATS:
        if looks_like.search(text):
            raise ProviderError(
                f'capture: this was copied with "{name}"; in the browser\'s Network panel, right-click the '
                'request and use "Copy as cURL (bash)" instead (or save the page\'s requests as a .har file)'
            )


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
    # Named, never quoted: the value may be a cookie or a token.
    if not sep or not HEADER_NAME.fullmatch(name.strip()):
        raise ProviderError("capture: malformed header line (not 'Name: value')")
    if "\n" in value or "\r" in value:
        raise ProviderError(f"capture: malformed header {name.strip()}: its value has a line break")
    return name.strip(), value.strip()


def parse_har(text: str, match: str | None = None) -> tuple[Capture, Capture | None]:
    """The chat request of a .har file, and the chat-creation request when it is there too.

    The chat request is the last POST whose answer is ``text/event-stream``, or the last
    request whose URL contains ``match``.
    """
    try:
        entries = json.loads(text)["log"]["entries"]
    except (ValueError, KeyError, TypeError, RecursionError):
        entries = None
    if not isinstance(entries, list):
        raise ProviderError("capture: not a HAR file (expected a list at log.entries)")
    requests = [entry for entry in entries if isinstance(entry, dict) and isinstance(entry.get("request"), dict)]
    chosen = [e for e in requests if _har_matches(e, match)]
    if not chosen:
        wanted = f"request whose URL contains {match!r}" if match else "POST answered with text/event-stream"
        raise ProviderError(f"capture: the HAR file has no {wanted}; pick one with --match SUBSTRING")
    create = [e for e in requests if any(m in str(e["request"].get("url") or "") for m in CREATE_CHAT_MARKERS)]
    return _capture_from_har(chosen[-1]), (_capture_from_har(create[-1]) if create else None)


def _har_matches(entry: dict, match: str | None) -> bool:
    request = entry["request"]
    if match:
        return match in str(request.get("url", ""))
    response = entry.get("response") if isinstance(entry.get("response"), dict) else {}
    content = response.get("content") if isinstance(response.get("content"), dict) else {}
    mime = str(content.get("mimeType", ""))
    headers = response.get("headers") if isinstance(response.get("headers"), list) else []
    mime += " ".join(str(h.get("value", "")) for h in headers if _is_content_type(h))
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
