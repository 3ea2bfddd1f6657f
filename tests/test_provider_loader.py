"""Unit tests for provider_loader: header parsing, provider folders, selection and placeholders."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import provider_loader
from placeholders import MissingVariables, env_names_in, fill_headers, fill_placeholders
from provider_loader import (
    CapturedRequest,
    Provider,
    ProviderError,
    default_providers_dir,
    is_plain_name,
    load_providers,
    parse_header_text,
)
from routing import determine_provider

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_QWEN = ROOT / "porviders" / "qwen"

GOOD_METADATA = {
    "host": "chat.example.test",
    "models": ["ex-large", "ex-small"],
    "patterns": ["ex-*"],
    "created": 1700000000,
    "optional_variables": ["EX_COOKIE"],
}
GOOD_HEADER = (
    "POST /api/chat?x=1 HTTP/1.1\nHost: chat.example.test\nAuthorization: Bearer ${EX_TOKEN}\nCookie: ${EX_COOKIE}\n"
)
GOOD_PAYLOAD = {"stream": True, "model": "${model}"}


def write_provider(folder: Path, metadata=GOOD_METADATA, header=GOOD_HEADER, payload=GOOD_PAYLOAD) -> Path:
    """Write a provider folder; a str is written verbatim, None leaves the file out."""
    folder.mkdir(parents=True)
    if isinstance(metadata, dict) and "extra_variables" not in metadata:
        # Test folders have many names but share the EX_* variables: they declare them, as a user would.
        names = env_names_in([header if isinstance(header, str) else "", payload, metadata])
        names += metadata.get("optional_variables", [])
        metadata = {**metadata, "extra_variables": sorted(set(names))}
    for name, content in (("metadata.json", metadata), ("header.txt", header), ("payload.json", payload)):
        if content is None:
            continue
        text = content if isinstance(content, str) else json.dumps(content)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def make_provider(name: str, models=(), patterns=()) -> Provider:
    return Provider(
        name=name,
        host="h.test",
        scheme="https",
        dialect="qwen",
        request=CapturedRequest("POST", "/", ()),
        payload={},
        models=tuple(models),
        patterns=tuple(patterns),
    )


# --- parse_header_text -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "method", "path", "headers"),
    [
        ("POST /api/v2/chat?chat_id=1&a=b HTTP/1.1\n", "POST", "/api/v2/chat?chat_id=1&a=b", ()),
        ("GET / HTTP/2\nAccept: */*\n", "GET", "/", (("Accept", "*/*"),)),
        ("POST /x HTTP/1.1\r\nAccept: a\r\nX-B: b\r\n", "POST", "/x", (("Accept", "a"), ("X-B", "b"))),
        ("POST /x HTTP/2\n:authority: x\n:method: POST\nAccept: a", "POST", "/x", (("Accept", "a"),)),
        ("\n\n   \nPOST /x HTTP/1.1\n\nAccept: a\n  \n\nX-B: b\n\n", "POST", "/x", (("Accept", "a"), ("X-B", "b"))),
        ("POST /x HTTP/1.1\nHost: h\nContent-Length: 9\nConnection: close\nAccept-Encoding: br\n", "POST", "/x", ()),
        (
            "POST /x HTTP/1.1\nHOST: h\ncontent-LENGTH: 9\nCONNECTION: x\naccept-encoding: gzip\nA: 1",
            "POST",
            "/x",
            (("A", "1"),),
        ),
        (
            "POST /x HTTP/1.1\nCookie: a=1\nX-A: 1\ncookie: b=2\nX-A: 2",
            "POST",
            "/x",
            (("Cookie", "a=1; b=2"), ("X-A", "1, 2")),
        ),
        ("POST /x HTTP/1.1\nAccept: a\naccept: b\nACCEPT: c", "POST", "/x", (("Accept", "a, b, c"),)),
        (
            "POST /x HTTP/1.1\nReferer: https://x/y:8080/z?q=a:b",
            "POST",
            "/x",
            (("Referer", "https://x/y:8080/z?q=a:b"),),
        ),
        ("POST /x HTTP/1.1\nX-Empty:\nX-Pad:   v   ", "POST", "/x", (("X-Empty", ""), ("X-Pad", "v"))),
        (
            "POST /x HTTP/1.1\nAuthorization: Bearer ${QWEN_TOKEN}",
            "POST",
            "/x",
            (("Authorization", "Bearer ${QWEN_TOKEN}"),),
        ),
    ],
    ids=[
        "query-string",
        "http2-version",
        "crlf",
        "pseudo-headers-skipped",
        "blank-lines-skipped",
        "transport-headers-dropped",
        "transport-headers-dropped-any-case",
        "duplicates-merged-cookie-semicolon",
        "duplicates-merged-comma-first-name-kept",
        "value-with-colons",
        "empty-and-padded-values",
        "placeholder-kept-verbatim",
    ],
)
def test_parse_header_text_valid(text, method, path, headers):
    assert parse_header_text(text, "h.txt") == CapturedRequest(method, path, headers)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("", "h.txt: empty file"),
        ("\n  \n\t\n", "h.txt: empty file"),
        ("POST /x HTTP/1.1\nAccept: a\nno colon here\n", "h.txt, line 3:"),
        ("POST /x HTTP/1.1\nX Bad: v\n", "h.txt, line 2:"),
        ("POST /x HTTP/1.1\nX-Bad : v\n", "h.txt, line 2:"),
        ("POST /x HTTP/1.1\nAccept: a,\n  b\n", "h.txt, line 3:"),
        ("POST /x HTTP/1.1\nAccept: a,\n\tb: c\n", "h.txt, line 3:"),
        ("\n\nPOST /x HTTP/1.1\n\nAccept: a\n\nbroken\n", "h.txt, line 7:"),
        ("post /x HTTP/1.1\n", "h.txt, line 1:"),
        ("POST x HTTP/1.1\n", "h.txt, line 1:"),
        ("POST /x\n", "h.txt, line 1:"),
        ("POST /a b HTTP/1.1\n", "h.txt, line 1:"),
        ("\n\nAccept: a\n", "h.txt, line 3:"),
        ("https://x/y\n", "h.txt, line 1:"),
    ],
    ids=[
        "empty",
        "only-blank",
        "no-colon",
        "space-in-name",
        "space-before-colon",
        "continuation-line",
        "tab-continuation-line",
        "line-number-counts-blank-lines",
        "lower-case-method",
        "path-without-slash",
        "missing-version",
        "space-in-path",
        "header-instead-of-request-line",
        "url-instead-of-request-line",
    ],
)
def test_parse_header_text_malformed_names_file_and_line(text, where):
    with pytest.raises(ProviderError) as caught:
        parse_header_text(text, "h.txt")
    assert str(caught.value).startswith(where)


def test_parse_header_text_default_source_is_header_txt():
    with pytest.raises(ProviderError, match=r"^header\.txt: empty file"):
        parse_header_text("")


HEADER_FRAGMENTS = st.sampled_from(
    [
        "POST /x HTTP/1.1",
        "GET / HTTP/2",
        ":authority: x",
        "Host",
        "Cookie",
        ": ",
        ":",
        " ",
        "\t",
        "\n",
        "\r",
        "\r\n",
        "a",
        "é",
        "\x00",
        "\x0b",
        "\u2028",
        "${X}",
    ]
)


@settings(max_examples=200, deadline=None, database=None)
@given(st.one_of(st.text(), st.lists(HEADER_FRAGMENTS).map("".join)))
def test_parse_header_text_only_raises_provider_error(text):
    try:
        result = parse_header_text(text, "h.txt")
    except ProviderError as exc:
        assert str(exc).startswith("h.txt")
    else:
        assert isinstance(result, CapturedRequest)
        assert result.path.startswith("/")


# --- Provider.from_dir -------------------------------------------------------------------


def test_from_dir_reads_a_good_folder(tmp_path):
    folder = write_provider(tmp_path / "example")
    provider = Provider.from_dir(folder)
    assert provider.name == "example"
    assert provider.host == "chat.example.test"
    assert provider.scheme == "https"
    assert provider.base_url == "https://chat.example.test"
    assert provider.dialect == "qwen"
    assert provider.request == CapturedRequest(
        "POST", "/api/chat?x=1", (("Authorization", "Bearer ${EX_TOKEN}"), ("Cookie", "${EX_COOKIE}"))
    )
    assert provider.payload == {"stream": True, "model": "${model}"}
    assert provider.models == ("ex-large", "ex-small")
    assert provider.patterns == ("ex-*",)
    assert provider.owned_by == "example"
    assert provider.created == 1700000000
    assert provider.optional_variables == frozenset({"EX_COOKIE"})
    assert provider.create_chat is None
    assert provider.refresh is None
    assert provider.required_variables() == ["EX_TOKEN"]


@pytest.mark.parametrize(
    ("changes", "base_url"),
    [
        ({"host": "127.0.0.1:8080"}, "https://127.0.0.1:8080"),
        ({"host": "127.0.0.1:8080", "scheme": "http"}, "http://127.0.0.1:8080"),
        ({"host": "localhost", "scheme": "https"}, "https://localhost"),
    ],
)
def test_from_dir_base_url_uses_scheme_and_port(tmp_path, changes, base_url):
    folder = write_provider(tmp_path / "p", metadata={**GOOD_METADATA, **changes})
    assert Provider.from_dir(folder).base_url == base_url


def test_from_dir_reads_create_chat(tmp_path):
    create_chat = {
        "method": "post",
        "path": "/api/v2/chats/new",
        "headers": {"Referer": "https://x/c/new"},
        "body": {"chatId": "", "n": 1},
        "id_field": "data.chat.id",
    }
    folder = write_provider(tmp_path / "p", metadata={**GOOD_METADATA, "create_chat": create_chat, "owned_by": "me"})
    provider = Provider.from_dir(folder)
    step = provider.create_chat
    assert (step.method, step.path, step.headers) == ("POST", "/api/v2/chats/new", (("Referer", "https://x/c/new"),))
    assert step.body == {"chatId": "", "n": 1}
    assert step.id_field == "data.chat.id"
    assert step.base_url(provider.scheme, provider.host) == provider.base_url  # no host of its own
    assert provider.owned_by == "me"


REFRESH = {
    "host": "auth.example.com",
    "method": "GET",
    "path": "/refresh",
    "headers": {"Authorization": None, "Cookie": "rt=${EX_REFRESH_TOKEN}"},
    "fields": {"data.access_token": "EX_TOKEN", "data.refresh_token": "EX_REFRESH_TOKEN"},
    "set_cookies": {"rt": "EX_REFRESH_TOKEN"},
}


def test_from_dir_reads_a_refresh_step_on_its_own_host(tmp_path):
    folder = write_provider(tmp_path / "p", metadata={**GOOD_METADATA, "refresh_credential": REFRESH})
    provider = Provider.from_dir(folder)
    step = provider.refresh
    assert step.base_url(provider.scheme, provider.host) == "https://auth.example.com"
    assert step.headers == (("Authorization", None), ("Cookie", "rt=${EX_REFRESH_TOKEN}"))
    assert step.token_variable == "EX_TOKEN"  # the first variable the answer replaces
    assert step.names_read() == {"EX_REFRESH_TOKEN"}
    assert provider.refresh_variables() == ["EX_REFRESH_TOKEN", "EX_TOKEN"]
    # Only the refresh step uses the refresh token: without it the provider still works.
    assert provider.required_variables() == ["EX_TOKEN"]
    assert "EX_REFRESH_TOKEN" in provider.variable_names()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"fields": {}, "set_cookies": {}}, "'fields' or 'set_cookies' must name the variables"),
        ({"fields": {"data.x": "lower_case"}}, "is not an upper-case variable name"),
        ({"token_variable": "EX_OTHER"}, "'token_variable' must be one of the variables"),
        ({"host": "evil.com/path"}, "'host' must be a bare host[:port]"),
        ({"scheme": "ftp"}, "'scheme' must be 'https' or 'http'"),
        ({"headers": {"X": 1}}, "'headers' must map names to strings (or null"),
        ({"method": "GE T"}, "'method' must be an HTTP method"),
        ({"surprise": 1}, "unknown key 'surprise'"),
        ({"headers": {"Referer": "https://x/c/${chat_id}"}}, "no chat exists when it runs"),
    ],
)
def test_a_broken_refresh_step_names_its_key(tmp_path, change, reason):
    folder = write_provider(tmp_path / "p", metadata={**GOOD_METADATA, "refresh_credential": {**REFRESH, **change}})
    with pytest.raises(ProviderError) as caught:
        Provider.from_dir(folder)
    assert reason in str(caught.value)


def test_a_refresh_step_may_not_name_another_providers_variable(tmp_path):
    refresh = {**REFRESH, "fields": {"data.access_token": "OPENAI_API_KEY"}}
    folder = write_provider(tmp_path / "p", metadata={**GOOD_METADATA, "refresh_credential": refresh})
    with pytest.raises(ProviderError, match="OPENAI_API_KEY"):
        Provider.from_dir(folder)


def _without(key):
    return {k: v for k, v in GOOD_METADATA.items() if k != key}


@pytest.mark.parametrize(
    ("files", "bad_file", "reason"),
    [
        ({"metadata": "{not json"}, "metadata.json", "invalid JSON at line 1"),
        ({"payload": '{\n  "a": 1,\n}'}, "payload.json", "invalid JSON at line 3"),
        ({"metadata": None}, "metadata.json", "file is missing"),
        ({"header": None}, "header.txt", "file is missing"),
        ({"payload": None}, "payload.json", "file is missing"),
        ({"header": ""}, "header.txt", "empty file"),
        ({"header": "POST /x HTTP/1.1\nbroken\n"}, "header.txt", "line 2"),
        ({"metadata": "[1, 2]"}, "metadata.json", "expected a JSON object"),
        ({"metadata": '"host"'}, "metadata.json", "expected a JSON object"),
        ({"payload": "[]"}, "payload.json", "expected a JSON object"),
        ({"metadata": {**GOOD_METADATA, "hots": "x"}}, "metadata.json", "unknown key 'hots'"),
        ({"metadata": _without("host")}, "metadata.json", "key 'host' must be a non-empty string"),
        ({"metadata": {**GOOD_METADATA, "host": ""}}, "metadata.json", "key 'host' must be a non-empty string"),
        ({"metadata": {**GOOD_METADATA, "host": "   "}}, "metadata.json", "key 'host' must be a non-empty string"),
        ({"metadata": {**GOOD_METADATA, "host": 8080}}, "metadata.json", "key 'host' must be a non-empty string"),
        ({"metadata": {**GOOD_METADATA, "host": "x.test/api"}}, "metadata.json", "bare host[:port]"),
        ({"metadata": {**GOOD_METADATA, "host": "x.test/"}}, "metadata.json", "bare host[:port]"),
        ({"metadata": {**GOOD_METADATA, "host": "https://x.test"}}, "metadata.json", "bare host[:port]"),
        ({"metadata": {**GOOD_METADATA, "host": "x.test\\a"}}, "metadata.json", "bare host[:port]"),
        ({"metadata": {**GOOD_METADATA, "host": "user@x.test"}}, "metadata.json", "bare host[:port]"),
        ({"metadata": {**GOOD_METADATA, "host": "x.test?a"}}, "metadata.json", "bare host[:port]"),
        ({"metadata": {**GOOD_METADATA, "host": "x .test"}}, "metadata.json", "bare host[:port]"),
        ({"metadata": {**GOOD_METADATA, "scheme": "ftp"}}, "metadata.json", "key 'scheme' must be 'https' or 'http'"),
        ({"metadata": {**GOOD_METADATA, "scheme": "HTTPS"}}, "metadata.json", "key 'scheme' must be"),
        ({"metadata": {**GOOD_METADATA, "dialect": "gemini"}}, "metadata.json", "unknown dialect 'gemini'"),
        ({"metadata": {**GOOD_METADATA, "models": "ex-large"}}, "metadata.json", "key 'models' must be a list"),
        ({"metadata": {**GOOD_METADATA, "models": ["a", 1]}}, "metadata.json", "key 'models' must be a list"),
        ({"metadata": {**GOOD_METADATA, "models": ["a", ""]}}, "metadata.json", "key 'models' must be a list"),
        ({"metadata": {**GOOD_METADATA, "patterns": {"a": 1}}}, "metadata.json", "key 'patterns' must be a list"),
        ({"metadata": {**GOOD_METADATA, "optional_variables": "X"}}, "metadata.json", "key 'optional_variables'"),
        ({"metadata": {**GOOD_METADATA, "create_chat": "yes"}}, "metadata.json", "create_chat: must be an object"),
        ({"metadata": {**GOOD_METADATA, "create_chat": []}}, "metadata.json", "create_chat: must be an object"),
        (
            {"metadata": {**GOOD_METADATA, "create_chat": {"path": "/n", "url": "x"}}},
            "metadata.json",
            "unknown key 'url'",
        ),
        ({"metadata": {**GOOD_METADATA, "create_chat": {}}}, "metadata.json", "'path' must start with '/'"),
        ({"metadata": {**GOOD_METADATA, "create_chat": {"path": "api/new"}}}, "metadata.json", "'path' must start"),
        (
            {"metadata": {**GOOD_METADATA, "create_chat": {"path": "/n", "headers": ["a"]}}},
            "metadata.json",
            "'headers'",
        ),
        (
            {"metadata": {**GOOD_METADATA, "create_chat": {"path": "/n", "headers": {"a": 1}}}},
            "metadata.json",
            "'headers'",
        ),
        ({"metadata": {**GOOD_METADATA, "create_chat": {"path": "/n", "id_field": 3}}}, "metadata.json", "'id_field'"),
        ({"metadata": {**GOOD_METADATA, "created": "last tuesday"}}, "metadata.json", "created"),
        ({"metadata": {**GOOD_METADATA, "created": [2024]}}, "metadata.json", "created"),
    ],
    ids=[
        "metadata-bad-json",
        "payload-bad-json",
        "metadata-missing",
        "header-missing",
        "payload-missing",
        "header-empty",
        "header-malformed-line",
        "metadata-is-a-list",
        "metadata-is-a-string",
        "payload-is-a-list",
        "metadata-unknown-key",
        "host-missing",
        "host-empty",
        "host-blank",
        "host-not-a-string",
        "host-with-path",
        "host-with-trailing-slash",
        "host-with-scheme",
        "host-with-backslash",
        "host-with-userinfo",
        "host-with-query",
        "host-with-space",
        "scheme-ftp",
        "scheme-upper-case",
        "dialect-unknown",
        "models-a-string",
        "models-with-non-string",
        "models-with-empty-string",
        "patterns-an-object",
        "optional-variables-a-string",
        "create-chat-a-string",
        "create-chat-a-list",
        "create-chat-unknown-key",
        "create-chat-without-path",
        "create-chat-relative-path",
        "create-chat-headers-a-list",
        "create-chat-header-not-a-string",
        "create-chat-id-field-not-a-string",
        "created-not-a-number",
        "created-a-list",
    ],
)
def test_from_dir_broken_folder_names_the_file(tmp_path, files, bad_file, reason):
    folder = write_provider(tmp_path / "broken", **files)
    with pytest.raises(ProviderError) as caught:
        Provider.from_dir(folder)
    message = str(caught.value)
    assert message.startswith(str(folder / bad_file))
    assert reason in message


def test_from_dir_undecodable_file_is_a_provider_error(tmp_path):
    folder = write_provider(tmp_path / "p")
    (folder / "header.txt").write_bytes(b"POST /x HTTP/1.1\nX-A: \xff\xfe\n")
    with pytest.raises(ProviderError, match=r"header\.txt: cannot be read"):
        Provider.from_dir(folder)


# --- load_providers ----------------------------------------------------------------------


def test_load_providers_records_broken_folder_and_loads_the_rest(tmp_path):
    write_provider(tmp_path / "alpha")
    write_provider(tmp_path / "beta", metadata="{oops")
    write_provider(tmp_path / "gamma", metadata={**GOOD_METADATA, "host": "gamma.test"})
    registry = load_providers(tmp_path)
    assert sorted(registry.providers) == ["alpha", "gamma"]
    assert registry.providers["gamma"].host == "gamma.test"
    assert list(registry.errors) == ["beta"]
    # Named from the providers folder, without the server's path to it.
    assert registry.errors["beta"].startswith("beta/metadata.json: invalid JSON")
    assert str(tmp_path) not in registry.errors["beta"]


def test_load_providers_skips_dot_and_underscore_folders_and_files(tmp_path):
    write_provider(tmp_path / "alpha")
    write_provider(tmp_path / ".hidden", metadata="{oops")
    write_provider(tmp_path / "_draft", metadata="{oops")
    write_provider(tmp_path / "_good_but_disabled")
    (tmp_path / "README.md").write_text("not a provider")
    registry = load_providers(tmp_path)
    assert list(registry.providers) == ["alpha"]
    assert registry.errors == {}


def test_load_providers_missing_dir(tmp_path):
    missing = tmp_path / "nowhere"
    registry = load_providers(missing)
    assert registry.providers == {}
    assert registry.errors == {"*": f"{missing}: providers folder not found"}


def test_load_providers_empty_dir(tmp_path):
    registry = load_providers(tmp_path)
    assert (registry.providers, registry.errors) == ({}, {})


def test_load_providers_bad_created_is_recorded_not_raised(tmp_path):
    write_provider(tmp_path / "alpha")
    write_provider(tmp_path / "beta", metadata={**GOOD_METADATA, "created": "yesterday"})
    registry = load_providers(tmp_path)
    assert list(registry.providers) == ["alpha"]
    assert list(registry.errors) == ["beta"]


# --- determine_provider ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("providers", "model", "expected"),
    [
        ({"aaa": {"patterns": ["qwen*"]}, "zzz": {"models": ["qwen-max"]}}, "qwen-max", "zzz"),
        ({"zzz": {"models": ["m"]}, "aaa": {"models": ["m"]}}, "m", "aaa"),
        ({"zzz": {"patterns": ["q*"]}, "bbb": {"patterns": ["qw*"]}}, "qwen", "bbb"),
        ({"p": {"patterns": ["qwen*"]}}, "Qwen-X", "p"),
        ({"p": {"patterns": ["QWEN-?"]}}, "qwen-7", "p"),
        ({"p": {"patterns": ["qwen*"], "models": ["other"]}}, "llama", None),
        ({"p": {"models": ["Qwen-Max"]}}, "qwen-max", None),
        ({"p": {"patterns": ["qwen"]}}, "qwen-max", None),
        ({}, "qwen", None),
    ],
    ids=[
        "explicit-beats-pattern-that-sorts-first",
        "two-explicit-alphabetical",
        "two-patterns-alphabetical",
        "pattern-case-insensitive",
        "pattern-upper-case-glob",
        "no-match",
        "explicit-list-is-exact",
        "pattern-is-whole-name",
        "no-providers",
    ],
)
def test_determine_provider(providers, model, expected):
    built = {name: make_provider(name, **spec) for name, spec in providers.items()}
    chosen = determine_provider(built, model)
    assert (chosen.name if chosen else None) == expected


# --- is_plain_name -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["qwen", "my-provider_2.v1", "Q", "0", "a" * 64, "a..b"],
)
def test_is_plain_name_accepts(name):
    assert is_plain_name(name) is True


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "/etc",
        "a/b",
        "a\\b",
        "..",
        ".",
        "...",
        ".hidden",
        "_x",
        "-x",
        "x\x00y",
        "",
        " ",
        "my provider",
        " qwen",
        "qwen ",
        "qwen\n",
        "\nqwen",
        "qw\nen",
        "qwen\r",
        "qwen\t",
        "a" * 65,
        "qwén",
    ],
)
def test_is_plain_name_refuses(name):
    assert is_plain_name(name) is False


# --- env_names_in / required_variables ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("Bearer ${QWEN_TOKEN}", ["QWEN_TOKEN"]),
        ("${chat_id}", []),
        ("${Mixed_Case}", []),
        ("$QWEN_TOKEN {QWEN_TOKEN}", []),
        ("${A}${_B}-${c}-${A2}", ["A", "_B", "A2"]),
        ({"a": ["${X}", {"b": "${Y} ${uuid}"}], "n": 1, "z": None}, ["X", "Y"]),
        ((("Authorization", "Bearer ${TOKEN}"), ("X-Id", "${uuid}")), ["TOKEN"]),
        (42, []),
    ],
)
def test_env_names_in(value, names):
    assert env_names_in(value) == names


def test_shipped_qwen_requires_only_the_token():
    provider = Provider.from_dir(SHIPPED_QWEN)
    assert provider.required_variables() == ["QWEN_TOKEN"]
    optional = {"QWEN_BX_UA", "QWEN_BX_UMIDTOKEN", "QWEN_COOKIE", "QWEN_REFRESH_TOKEN"}
    assert provider.optional_variables == frozenset(optional)
    assert provider.refresh.base_url(provider.scheme, provider.host) == "https://auth.qwen.ai"
    assert provider.refresh.names_read() == {"QWEN_REFRESH_TOKEN"}


def test_required_variables_sorted_and_from_payload_and_create_chat_headers(tmp_path):
    metadata = {**GOOD_METADATA, "create_chat": {"path": "/new", "headers": {"X-C": "${C_VAR}"}}}
    folder = write_provider(tmp_path / "p", metadata=metadata, payload={"k": ["${B_VAR}", "${model}"]})
    assert Provider.from_dir(folder).required_variables() == ["B_VAR", "C_VAR", "EX_TOKEN"]


@pytest.mark.parametrize(
    ("header", "create_chat"),
    [
        ("POST /api?key=${PATH_KEY} HTTP/1.1\n", None),
        ("POST /api HTTP/1.1\n", {"path": "/new?key=${PATH_KEY}"}),
        ("POST /api HTTP/1.1\n", {"path": "/new", "body": {"token": "${PATH_KEY}"}}),
    ],
    ids=["request-path", "create-chat-path", "create-chat-body"],
)
def test_required_variables_include_every_filled_place(tmp_path, header, create_chat):
    """The app fills the request path and the create_chat path and body too, so their variables are needed."""
    metadata = {**GOOD_METADATA, **({"create_chat": create_chat} if create_chat else {})}
    folder = write_provider(tmp_path / "p", metadata=metadata, header=header, payload={})
    assert Provider.from_dir(folder).required_variables() == ["PATH_KEY"]


# --- fill_placeholders -------------------------------------------------------------------


def test_fill_placeholders_walks_nested_structure():
    template = {"a": ["${X}", {"b": "pre-${X}-${Y}-post"}], "n": 3, "none": None, "t": True, "f": 1.5}
    filled = fill_placeholders(template, {"X": "v", "Y": "w"})
    assert filled == {"a": ["v", {"b": "pre-v-w-post"}], "n": 3, "none": None, "t": True, "f": 1.5}


@pytest.mark.parametrize(
    ("template", "value", "expected"),
    [
        ("${V}", 1789353631, 1789353631),
        ("${V}", 0, 0),
        ("${V}", False, False),
        ("${V}", 2.5, 2.5),
        ("${V}", ["a", 1], ["a", 1]),
        ("${V}", {"k": "v"}, {"k": "v"}),
        ("${V}", "text", "text"),
        ("t=${V}", 1789353631, "t=1789353631"),
        ("${V}${V}", 7, "77"),
        (" ${V}", 7, " 7"),
        ("${V}", 'say "hi" \\ {"x": 1}\n', 'say "hi" \\ {"x": 1}\n'),
        ('{"a": "${V}"}', 'q"uote', '{"a": "q"uote"}'),
        ("x-${V}", r"\1 \g<0> \\", r"x-\1 \g<0> \\"),
        ("x-${V}", "${OTHER}", "x-${OTHER}"),
        ("$V {V} $${V}", "z", "$V {V} $z"),
    ],
    ids=[
        "whole-int-stays-int",
        "whole-zero-is-a-value",
        "whole-false-is-a-value",
        "whole-float",
        "whole-list",
        "whole-dict",
        "whole-str",
        "embedded-int-becomes-text",
        "two-placeholders-become-text",
        "leading-space-is-embedded",
        "json-special-characters-kept",
        "quotes-not-escaped",
        "regex-escapes-not-expanded",
        "no-second-expansion",
        "only-braced-form",
    ],
)
def test_fill_placeholders_value(template, value, expected):
    filled = fill_placeholders({"k": template}, {"V": value})["k"]
    assert filled == expected
    assert type(filled) is type(expected)


@pytest.mark.parametrize(
    ("template", "variables", "missing"),
    [
        ({"a": "${B}", "b": ["${A}", "x${C}y"], "c": "${E}"}, {"E": ""}, ["A", "B", "C", "E"]),
        (["${Z}", "${Z}", "${Z}-${Z}"], {}, ["Z"]),
        ({"a": "${SET} ${UNSET}"}, {"SET": "1"}, ["UNSET"]),
        ({"a": "${NONE}"}, {"NONE": None}, ["NONE"]),
        ({"deep": [[[{"x": "${chat_id}"}]]]}, {"chat_id": ""}, ["chat_id"]),
    ],
)
def test_fill_placeholders_lists_all_missing_sorted(template, variables, missing):
    with pytest.raises(MissingVariables) as caught:
        fill_placeholders(template, variables)
    assert caught.value.names == missing
    assert str(caught.value) == "Missing variables: " + ", ".join(missing)


def test_fill_placeholders_does_not_mutate_input():
    template = {"a": ["${X}", {"b": "${X}"}], "c": "${N}"}
    before = copy.deepcopy(template)
    filled = fill_placeholders(template, {"X": "v", "N": 5})
    assert template == before
    assert filled == {"a": ["v", {"b": "v"}], "c": 5}


def test_fill_placeholders_does_not_mutate_input_on_error():
    template = {"a": ["${X}", "${MISSING}"]}
    before = copy.deepcopy(template)
    with pytest.raises(MissingVariables):
        fill_placeholders(template, {"X": "v"})
    assert template == before


# --- fill_headers ------------------------------------------------------------------------

HEADERS = (
    ("Authorization", "Bearer ${TOKEN}"),
    ("Cookie", "${COOKIE}"),
    ("bx-ua", "${UA}"),
    ("Accept", "application/json"),
)


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (
            {"TOKEN": "t", "COOKIE": "c=1", "UA": "u"},
            {"Authorization": "Bearer t", "Cookie": "c=1", "bx-ua": "u", "Accept": "application/json"},
        ),
        ({"TOKEN": "t"}, {"Authorization": "Bearer t", "Accept": "application/json"}),
        ({"TOKEN": "t", "COOKIE": "", "UA": ""}, {"Authorization": "Bearer t", "Accept": "application/json"}),
        ({"TOKEN": "t", "UA": "u"}, {"Authorization": "Bearer t", "bx-ua": "u", "Accept": "application/json"}),
    ],
    ids=["all-set", "optional-unset-dropped", "optional-empty-dropped", "one-optional-set"],
)
def test_fill_headers_drops_headers_with_unset_optional(variables, expected):
    assert fill_headers(HEADERS, variables, frozenset({"COOKIE", "UA"})) == expected


@pytest.mark.parametrize(
    ("variables", "missing"),
    [({}, ["TOKEN"]), ({"TOKEN": ""}, ["TOKEN"]), ({"COOKIE": "c"}, ["TOKEN"])],
)
def test_fill_headers_required_missing_raises(variables, missing):
    with pytest.raises(MissingVariables) as caught:
        fill_headers(HEADERS, variables, frozenset({"COOKIE", "UA"}))
    assert caught.value.names == missing


def test_fill_headers_lists_every_missing_required():
    headers = [("A", "${B_VAR}"), ("B", "${A_VAR} ${C_VAR}")]
    with pytest.raises(MissingVariables) as caught:
        fill_headers(headers, {"C_VAR": "c"}, frozenset())
    assert caught.value.names == ["A_VAR", "B_VAR"]


def test_fill_headers_values_are_always_strings():
    """request_variables() passes timestamp as an int; a header value must still be text."""
    filled = fill_headers([("X-Timestamp", "${timestamp}")], {"timestamp": 1789353631}, frozenset())
    assert filled == {"X-Timestamp": "1789353631"}
    assert type(filled["X-Timestamp"]) is str


# --- default_providers_dir ---------------------------------------------------------------


def test_default_providers_dir_is_next_to_the_module(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    found = default_providers_dir()
    assert found.is_absolute()
    assert found == Path(provider_loader.__file__).absolute().parent / "porviders"
    assert found.resolve() == SHIPPED_QWEN.parent
    assert (found / "qwen" / "metadata.json").is_file()


# --- review fixes: folders that would fail on every request fail at load instead ------------


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"payload": {"stream": True, "when": "${tomorrow}"}}, "unknown per-request value ${tomorrow}"),
        ({"header": GOOD_HEADER + "Referer: https://x/c/${chat_id}\n"}, "declares no create_chat step"),
        (
            {"metadata": {**GOOD_METADATA, "create_chat": {"path": "/new", "body": 5}}},
            "'body' must be a JSON object",
        ),
    ],
    ids=["unknown-request-value", "chat-id-without-create-chat", "create-chat-body-not-object"],
)
def test_folders_that_cannot_work_are_refused_at_load(tmp_path, changes, reason):
    folder = write_provider(tmp_path / "broken", **changes)
    with pytest.raises(ProviderError) as caught:
        Provider.from_dir(folder)
    assert reason in str(caught.value)


def test_every_request_value_placeholder_is_known_and_the_shipped_folders_load():
    registry = load_providers(default_providers_dir())
    assert registry.errors == {}
    assert sorted(registry.providers) == ["openai", "qwen"]


def test_from_dir_reads_the_continuation_fields(tmp_path):
    metadata = {**GOOD_METADATA, "continuation": {"parent_fields": ["parent_id", "parentId"]}}
    assert Provider.from_dir(write_provider(tmp_path / "p", metadata=metadata)).parent_fields == (
        "parent_id",
        "parentId",
    )
    assert Provider.from_dir(write_provider(tmp_path / "q")).parent_fields == ()


@pytest.mark.parametrize(
    "spec", [True, {}, {"parent_fields": []}, {"parent_fields": [1]}, {"parent_fields": ["a"], "x": 1}]
)
def test_a_broken_continuation_names_its_key(tmp_path, spec):
    folder = write_provider(tmp_path / "p", metadata={**GOOD_METADATA, "continuation": spec})
    with pytest.raises(ProviderError, match="continuation"):
        Provider.from_dir(folder)
