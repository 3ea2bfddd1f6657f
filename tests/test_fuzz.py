"""Property-based and fuzz tests: no request body, however mangled, may crash the service.

- hypothesis drives ``validate_chat_request`` and ``fold_messages`` with arbitrary JSON-like values;
- a seeded mutator posts a few hundred mangled bodies to ``/v1/chat/completions`` and checks every
  answer against an oracle built from the parsing and validation rules of the README;
- a table of specific nasty bodies pins their exact status and ``param``.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from converters import ROLES as NEUTRAL_ROLES
from converters import ApiError, ChatRequest, Message
from fronts.openai_chat import ROLE_ALIASES, ROLES, parse_chat_request
from fronts.openai_render import error_body
from tests.helpers import fold

URL = "/v1/chat/completions"
VALID_BODY = {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}], "stream": False}
ROLE_LIST = sorted(ROLES)
TEXT_PART_TYPES = ("text", "refusal")
OTHER_PART_TYPES = ("image_url", "input_audio", "file", "video_url")
ERROR_KEYS = {"message", "type", "param", "code"}


def examples(n: int) -> settings:
    """hypothesis settings: no example database on disk (others share this tree), no deadline."""
    return settings(max_examples=n, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


# --- strategies ------------------------------------------------------------------------------

NASTY_CHARS = ["\x00", "\r", "\n", "\t", "\x7f", "\x85", "\u2028", "\ufeff", "\ud800", "\udfff", "😀", '"', "\\"]
chars = st.one_of(st.characters(), st.sampled_from(NASTY_CHARS))
texts = st.text(alphabet=chars, max_size=24)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(texts, children, max_size=4)),
    max_leaves=16,
)

roles = st.one_of(st.sampled_from([*ROLE_LIST, "robot", "User", " user", "user\n", ""]), json_values)
parts = st.one_of(
    st.fixed_dictionaries(
        {"type": st.one_of(st.sampled_from([*TEXT_PART_TYPES, *OTHER_PART_TYPES]), json_values)},
        optional={"text": st.one_of(texts, json_values), "refusal": st.one_of(texts, json_values)},
    ),
    json_values,
)
contents = st.one_of(st.none(), texts, st.lists(parts, max_size=4), json_values)
messages_any = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "role": roles,
            "content": contents,
            "tool_calls": json_values,
            "tool_call_id": json_values,
            "name": json_values,
        },
    ),
    json_values,
)
bodies_any = st.tuples(
    st.fixed_dictionaries(
        {},
        optional={
            "model": st.one_of(
                st.sampled_from(["qwen3.7-plus", "qwen-x-thinking", " ", "qwen\r\n"]), texts, json_values
            ),
            "messages": st.one_of(st.lists(messages_any, max_size=4), json_values),
            "stream": st.one_of(st.booleans(), json_values),
            "stream_options": st.one_of(
                st.fixed_dictionaries({}, optional={"include_usage": st.one_of(st.booleans(), json_values)}),
                json_values,
            ),
            "provider": st.one_of(st.sampled_from(["qwen", "../x", "/etc", "a/b", "."]), texts, json_values),
            "reasoning_effort": st.one_of(st.sampled_from(["none", "low", "high"]), texts, json_values),
        },
    ),
    st.dictionaries(texts, json_values, max_size=3),
).map(lambda pair: {**pair[1], **pair[0]})

# Well-formed pieces, for the properties that need valid input.
clean_texts = st.text(alphabet=chars, max_size=40)
text_parts = st.sampled_from(TEXT_PART_TYPES).flatmap(
    lambda kind: st.fixed_dictionaries({"type": st.just(kind), kind: clean_texts})
)
other_parts = st.fixed_dictionaries(
    {"type": st.sampled_from(OTHER_PART_TYPES)}, optional={"image_url": st.just({"url": "https://example.com/a.png"})}
)
tool_calls = st.lists(
    st.fixed_dictionaries(
        {
            "id": clean_texts,
            "type": st.just("function"),
            "function": st.fixed_dictionaries({"name": clean_texts, "arguments": clean_texts}),
        }
    ),
    max_size=2,
)


def valid_messages(part_strategy) -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {
            "role": st.sampled_from(ROLE_LIST),
            "content": st.one_of(st.none(), clean_texts, st.lists(part_strategy, max_size=3)),
        },
        optional={"tool_calls": tool_calls, "tool_call_id": clean_texts, "name": clean_texts},
    )


text_only_messages = valid_messages(text_parts)
any_part_messages = valid_messages(st.one_of(text_parts, text_parts, text_parts, other_parts))
# White space at either end is refused (it would reach the upstream as a model nobody has).
valid_models = st.text(alphabet=st.characters(min_codepoint=0x20, exclude_characters="\x7f"), min_size=1).filter(
    lambda m: m.strip() != "" and m == m.strip()
)
unknown_keys = st.dictionaries(
    texts.filter(lambda k: k not in {"model", "messages", "stream", "stream_options", "provider", "reasoning_effort"}),
    json_values,
    max_size=3,
)


# --- validate_chat_request -------------------------------------------------------------------


def check_validation_outcome(body: Any) -> ChatRequest | None:
    try:
        result = parse_chat_request(body)
    except ApiError as error:
        assert error.status == 400
        assert error.type == "invalid_request_error"
        assert isinstance(error.message, str) and error.message
        assert error.param is None or isinstance(error.param, str)
        assert set(error_body(error)["error"]) == ERROR_KEYS
        json.dumps(error_body(error))  # the error body is serialisable whatever the input was
        return None
    assert isinstance(result, ChatRequest)
    assert isinstance(result.model, str) and result.model.strip()
    assert isinstance(result.messages, tuple) and result.messages
    assert all(isinstance(m, Message) and m.role in NEUTRAL_ROLES for m in result.messages)
    assert type(result.stream) is bool
    assert type(result.include_usage) is bool
    assert result.reasoning_effort is None or isinstance(result.reasoning_effort, str)
    assert result.provider is None or isinstance(result.provider, str)
    return result


@examples(300)
@given(json_values)
def test_validate_any_json_value_returns_request_or_400(value):
    check_validation_outcome(value)


@examples(400)
@given(bodies_any)
def test_validate_body_shaped_values_returns_request_or_400(body):
    check_validation_outcome(body)


@examples(200)
@given(
    model=valid_models,
    messages=st.lists(any_part_messages, min_size=1, max_size=4),
    stream=st.one_of(st.none(), st.booleans()),
    include_usage=st.one_of(st.none(), st.booleans()),
    reasoning_effort=st.one_of(st.none(), texts),
    extra=unknown_keys,
)
def test_validate_accepts_every_valid_body(model, messages, stream, include_usage, reasoning_effort, extra):
    body = {**extra, "model": model, "messages": messages, "stream": stream, "reasoning_effort": reasoning_effort}
    if include_usage is not None:
        body["stream_options"] = {"include_usage": include_usage}
    result = check_validation_outcome(body)
    assert result is not None
    assert result.model == model
    assert result.passthrough["messages"] == messages
    assert [m.role for m in result.messages] == [ROLE_ALIASES.get(m["role"], m["role"]) for m in messages]
    assert result.stream is bool(stream)
    assert result.include_usage is bool(include_usage)
    assert result.reasoning_effort == reasoning_effort


# --- fold_messages ---------------------------------------------------------------------------


def message_texts(message: dict) -> list[str]:
    content = message.get("content")
    if isinstance(content, str):
        return [content] if content else []
    return [part[part["type"]] for part in content or [] if part[part["type"]]]


def first_unsupported_part(messages: list[dict]) -> str | None:
    for i, message in enumerate(messages):
        for j, part in enumerate(message.get("content") if isinstance(message.get("content"), list) else []):
            if part["type"] not in TEXT_PART_TYPES:
                return f"messages[{i}].content[{j}]"
    return None


@examples(300)
@given(st.lists(any_part_messages, min_size=1, max_size=5))
def test_fold_messages_returns_text_or_refuses_non_text_parts(messages):
    check_validation_outcome({"model": "m", "messages": messages})  # the input is a valid request
    unsupported = first_unsupported_part(messages)
    try:
        text = fold(messages)
    except ApiError as error:
        assert unsupported is not None, "refused a conversation made only of text"
        assert (error.status, error.code, error.param) == (400, "unsupported_content", unsupported)
        return
    assert unsupported is None, f"accepted the non-text part {unsupported}"
    assert isinstance(text, str)


@examples(200)
@given(clean_texts)
def test_fold_single_user_string_is_unchanged(text):
    folded = fold([{"role": "user", "content": text}])
    assert folded == text
    assert folded.encode("utf-8", "surrogatepass") == text.encode("utf-8", "surrogatepass")


@examples(300)
@given(st.lists(text_only_messages, min_size=2, max_size=6))
def test_fold_several_messages_keeps_every_text_in_order(messages):
    folded = fold(messages)
    assert isinstance(folded, str)
    position = 0
    for message in messages:
        for text in message_texts(message):
            found = folded.find(text, position)
            assert found >= 0, f"{text!r} missing (or out of order) in {folded!r}"
            position = found + len(text)
    labels = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
    for message in messages:
        content = message["content"]
        if isinstance(content, str) and content and message["role"] in labels:
            assert f"{labels[message['role']]}: {content}" in folded


# --- the HTTP fuzz ---------------------------------------------------------------------------

NON_UTF8 = [b"\xff", b"\x80", b"\xc3\x28", b"\xed\xa0\x80", b"\xf5\x80\x80\x80", b"\xc0\xaf", b"\xe2\x82"]
SURROGATES = ["\ud800", "a\udfffb", "\udc00\ud800", "\ud83d", "x\ud800\ud800y"]
UNICODE_POOL = [
    "\x00",
    "\r",
    "\n",
    "\r\n",
    "\t",
    "\x7f",
    "\u2028",
    "\ufeff",
    "é",
    "中",
    "😀",
    '"',
    "\\",
    "${QWEN_TOKEN}",
]


class Mutator:
    """Deterministic mutations of a chat body; values may stand for raw JSON text."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.raw: dict[str, str] = {}

    # values

    def raw_value(self, text: str) -> str:
        key = f"__raw_json_{len(self.raw)}__"
        self.raw[key] = text
        return key

    def random_text(self, max_len: int = 40) -> str:
        pieces = []
        for _ in range(self.rng.randrange(1, max_len)):
            roll = self.rng.random()
            if roll < 0.4:
                pieces.append(self.rng.choice(UNICODE_POOL))
            elif roll < 0.5:
                pieces.append(self.rng.choice(SURROGATES))
            elif roll < 0.8:
                pieces.append(chr(self.rng.randrange(0x20, 0x3000)))
            else:
                pieces.append(chr(self.rng.randrange(0, 0x110000)))
        return "".join(pieces)

    def huge_text(self) -> str:
        """100 KB to 1 MB once escaped as JSON."""
        size = self.rng.randrange(100_000, 1_000_001)
        unit = self.rng.choice(["a", "é", "😀", "ab\r\n", "\x00", '\\"', self.random_text(8)])
        return unit * max(1, size // (len(json.dumps(unit)) - 2))

    def wrong_type(self, value: Any) -> Any:
        return self.rng.choice([0, -1, 2**63, 1.5, -0.0, 1e308, True, False, [], [value], {}, {"x": value}, ""])

    def nested_dicts(self, depth: int = 50) -> dict:
        value: Any = "deep"
        for _ in range(depth):
            value = {"a": value}
        return value

    def new_value(self, current: Any) -> Any:
        op = self.rng.randrange(11)
        if op == 0:
            return None
        if op in (1, 2):
            return self.wrong_type(current)
        if op == 3:
            return self.huge_text() if self.rng.random() < 0.25 else self.random_text(200)
        if op == 4:
            return self.rng.choice(SURROGATES)
        if op == 5:
            return self.random_text()
        if op == 6:
            return self.raw_value("[" * 10_000 + "]" * 10_000)
        if op == 7:
            return self.nested_dicts()
        if op == 8:
            return self.raw_value("[" * 500 + "]" * 500)  # deep, but parseable
        if op == 9:
            return self.raw_value(self.rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-0", "9" * 5000]))
        return self.rng.choice([True, False, "true", 1, "qwen"])

    # the body

    def enrich(self, body: dict) -> None:
        """Add valid optional fields and messages, so mutations reach them too."""
        rng = self.rng
        if rng.random() < 0.5:
            body["stream"] = rng.choice([True, True, False, None])
        if rng.random() < 0.3:
            body["stream_options"] = {"include_usage": rng.choice([True, False])}
        if rng.random() < 0.2:
            body["provider"] = "qwen"
        if rng.random() < 0.2:
            body["reasoning_effort"] = rng.choice(["none", "high"])
        if rng.random() < 0.3:
            body["messages"][0]["content"] = [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]
        if rng.random() < 0.3:
            body["messages"] = [
                {"role": "system", "content": "be brief"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
                *body["messages"],
            ]

    def mutate(self, body: Any) -> Any:
        paths = list(iter_paths(body))
        path = self.rng.choice(paths)
        parent, key = (None, None) if not path else (get_path(body, path[:-1]), path[-1])
        current = body if parent is None else parent[key]
        op = self.rng.random()
        if op < 0.12 and parent is not None:
            del parent[key]
        elif op < 0.22 and isinstance(current, dict):
            current[self.random_text(10) if self.rng.random() < 0.5 else "temperature"] = self.new_value(None)
        elif op < 0.30 and isinstance(body, dict):
            body["stream"] = self.rng.choice([True, False])
        elif op < 0.40 and isinstance(body, dict) and isinstance(body.get("model"), str):
            # Still matches the qwen* pattern, so these reach the provider.
            if body["model"] not in self.raw:
                body["model"] += self.rng.choice(SURROGATES + UNICODE_POOL + [self.random_text(10)])
        elif parent is None:
            return self.new_value(body)
        else:
            parent[key] = self.new_value(current)
        return body

    def mutate_keeping_valid(self, body: dict) -> dict:
        """Nasty values where the README accepts anything, so the body still reaches the upstream."""
        rng = self.rng
        op = rng.randrange(5)
        if op == 0:
            # A text the user typed: content strings and text parts take any string.
            slots = [
                p
                for p in iter_paths(body)
                if p[-1:] in (("content",), ("text",)) and isinstance(get_path(body, p), str)
            ]
            if slots:
                path = rng.choice(slots)
                get_path(body, path[:-1])[path[-1]] = rng.choice(
                    [self.huge_text, self.random_text, lambda: rng.choice(SURROGATES)]
                )()
        elif op == 1:
            # Unknown fields are ignored, whatever they hold.
            holders = [p for p in iter_paths(body) if isinstance(get_path(body, p), dict)]
            key = rng.choice(["temperature", "tools", "n", "logit_bias", self.random_text(10)])
            get_path(body, rng.choice(holders))[key] = self.new_value(None)
        elif op == 2:
            pool = SURROGATES if rng.random() < 0.5 else [*UNICODE_POOL[4:], self.random_text(10)]
            body["model"] += rng.choice(pool)
            if any(ord(c) < 32 or c == "\x7f" for c in body["model"]):
                body["model"] = "qwen3.7-plus" + rng.choice(SURROGATES)
        elif op == 3:
            body["stream"] = rng.choice([True, False, None])
        else:
            body[rng.choice(["stream", "stream_options", "reasoning_effort", "provider"])] = None
        return body

    def serialise(self, body: Any) -> bytes:
        roll = self.rng.random()
        # Mostly ASCII JSON, where a lone surrogate is written as an escape (as any encoder does);
        # sometimes raw UTF-8, where it becomes CESU-style bytes that are not UTF-8.
        ascii_only = roll >= 0.05
        text = json.dumps(body, ensure_ascii=ascii_only)
        for key, raw in self.raw.items():
            text = text.replace(json.dumps(key), raw)
        data = text.encode("utf-8", "surrogatepass")
        if 0.05 <= roll < 0.11 and len(data) > 1:
            data = data[: self.rng.randrange(1, len(data))]  # truncated
        elif 0.11 <= roll < 0.17:
            at = self.rng.randrange(len(data) + 1)
            data = data[:at] + self.rng.choice(NON_UTF8) + data[at:]
        return data

    def case(self) -> bytes:
        self.raw = {}
        body = copy.deepcopy(VALID_BODY)
        self.enrich(body)
        if self.rng.random() < 0.45:
            for _ in range(self.rng.randrange(1, 4)):
                body = self.mutate_keeping_valid(body)
        if self.rng.random() < 0.75:
            for _ in range(self.rng.randrange(1, 4)):
                body = self.mutate(body)
        return self.serialise(body)


def iter_paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from iter_paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from iter_paths(child, (*prefix, index))


def get_path(value: Any, path: tuple) -> Any:
    for key in path:
        value = value[key]
    return value


def expected_outcome(raw: bytes, max_body: int) -> tuple:
    """What the README promises for this body, before any provider is asked."""
    if len(raw) > max_body:
        return ("too_large",)
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        return ("invalid_json",)
    try:
        request = parse_chat_request(parsed)
    except ApiError as error:
        return ("invalid", error.status, error.param)
    return ("valid", request)


def check_error_shape(response) -> dict:
    assert response.headers["Content-Type"] == "application/json", response.headers["Content-Type"]
    body = response.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == ERROR_KEYS, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    return error


def sse_payloads(data: bytes) -> list[str]:
    events = [e for e in data.decode("utf-8").split("\n\n") if e]
    payloads = []
    for event in events:
        if event.startswith(":"):
            continue  # keep-alive comment
        assert event.startswith("data: "), event[:200]
        payloads.append(event[len("data: ") :])
    return payloads


def check_success(response, request: ChatRequest) -> None:
    if request.stream:
        assert response.headers["Content-Type"].startswith("text/event-stream"), response.headers["Content-Type"]
        payloads = sse_payloads(response.get_data())
        assert payloads[-1] == "[DONE]"
        chunks = [json.loads(p) for p in payloads[:-1]]
        assert not any("error" in chunk for chunk in chunks), chunks
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text == "Hello world"
        assert all(c["model"] == request.model for c in chunks)
    else:
        assert response.headers["Content-Type"] == "application/json", response.headers["Content-Type"]
        body = response.get_json()
        assert body["object"] == "chat.completion"
        assert body["model"] == request.model
        assert body["choices"][0]["message"]["content"] == "Hello world"


def check_response(client, fake_qwen, raw: bytes) -> None:
    expected = expected_outcome(raw, client.application.config["MAX_BODY_BYTES"])
    upstream_calls = len(fake_qwen.requests)
    response = client.post(URL, data=raw, content_type="application/json")
    status = response.status_code
    assert response.headers.get("x-request-id", "").startswith("req_")
    if status == 200:
        assert expected[0] == "valid", f"accepted a body the README refuses: {expected}"
        check_success(response, expected[1])
        return
    error = check_error_shape(response)
    if status >= 500:
        assert (error["code"] or "").startswith("upstream_"), f"{status} {error}"
        return
    assert len(fake_qwen.requests) == upstream_calls, "a refused request reached the upstream"
    if expected[0] == "too_large":
        assert (status, error["code"]) == (413, "request_too_large"), error
    elif expected[0] == "invalid_json":
        assert (status, error["code"]) == (400, "invalid_json"), error
    elif expected[0] == "invalid":
        assert (status, error["param"], error["type"]) == (expected[1], expected[2], "invalid_request_error"), error
    elif status == 404:
        assert (error["code"], error["param"]) == ("provider_not_found", "model"), error
    else:
        assert status == 400 and error["code"] in ("unsupported_content", "invalid_provider"), f"{status} {error}"


def describe(raw: bytes) -> str:
    return repr(raw[:160]) + (f"... ({len(raw)} bytes)" if len(raw) > 160 else "")


@pytest.mark.parametrize("seed", [20260101, 20260202, 20260303])
def test_fuzzed_bodies_never_crash_the_service(client, fake_qwen, seed):
    mutator = Mutator(random.Random(seed))
    failures = []
    for _ in range(100):
        raw = mutator.case()
        try:
            check_response(client, fake_qwen, raw)
        except Exception as exc:  # collect every distinct failure, not only the first
            failures.append(f"{describe(raw)}\n    -> {type(exc).__name__}: {str(exc)[:300]}")
        fake_qwen.requests.clear()  # huge bodies need not stay in memory
    normal = client.post(URL, json=VALID_BODY)
    assert normal.status_code == 200
    assert normal.get_json()["choices"][0]["message"]["content"] == "Hello world"
    assert fake_qwen.requests[-1]["json"]["messages"][0]["content"] == "hi"
    if failures:
        pytest.fail(f"{len(failures)} of 100 bodies failed:\n" + "\n".join(failures[:8]), pytrace=False)


# --- specific nasty bodies -------------------------------------------------------------------


def raw_body(text: str) -> bytes:
    return text.encode("utf-8")


@pytest.mark.parametrize("model", ["qwen3.7-plus\r\n", "qwen3.7-plus\r\nX-Injected: 1", "qwen\x00", "\n"])
def test_control_characters_in_model_are_400_model(client, fake_qwen, model):
    response = client.post(URL, json={**VALID_BODY, "model": model})
    assert response.status_code == 400
    error = check_error_shape(response)
    assert (error["param"], error["type"]) == ("model", "invalid_request_error")
    assert fake_qwen.requests == []


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        '{"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "hi"}], "x": '
        + "[" * 100_000
        + "]" * 100_000
        + "}",
        '{"model": "qwen3.7-plus", "messages": [{"role": "user", "content": ' + "[" * 100_000,
    ],
    ids=["lists", "dicts", "inside-a-valid-body", "unclosed"],
)
def test_body_nested_100000_levels_is_400_invalid_json(client, fake_qwen, text):
    response = client.post(URL, data=raw_body(text), content_type="application/json")
    assert response.status_code == 400
    assert check_error_shape(response)["code"] == "invalid_json"
    assert fake_qwen.requests == []


@pytest.mark.parametrize("stream", ["false", "true"])
@pytest.mark.parametrize("content", ["\\ud800", "a\\udfffb", "\\udc00\\ud800"])
def test_lone_surrogate_in_content_is_not_5xx(client, fake_qwen, content, stream):
    text = f'{{"model": "qwen3.7-plus", "messages": [{{"role": "user", "content": "{content}"}}], "stream": {stream}}}'
    response = client.post(URL, data=raw_body(text), content_type="application/json")
    assert response.status_code < 500
    if response.status_code == 200:
        check_success(response, parse_chat_request(json.loads(text)))
        assert fake_qwen.requests[-1]["json"]["messages"][0]["content"] == json.loads(f'"{content}"')
    else:
        check_error_shape(response)


@pytest.mark.parametrize("stream", ["false", "true"])
def test_lone_surrogate_in_model_is_not_5xx(client, stream):
    # "qwen\ud800" matches the qwen* pattern, so the request reaches the provider and the reply.
    text = f'{{"model": "qwen\\ud800", "messages": [{{"role": "user", "content": "hi"}}], "stream": {stream}}}'
    response = client.post(URL, data=raw_body(text), content_type="application/json")
    assert response.status_code < 500
    if response.status_code == 200:
        check_success(response, parse_chat_request(json.loads(text)))
    else:
        check_error_shape(response)


def test_two_megabyte_content_reaches_the_upstream_intact(client, fake_qwen):
    rng = random.Random(7)
    alphabet = 'abc xyz\n\r\t"\\é中😀\x00'
    text = "".join(rng.choice(alphabet) for _ in range(2 * 1024 * 1024))
    response = client.post(URL, json={**VALID_BODY, "messages": [{"role": "user", "content": text}]})
    assert response.status_code == 200
    assert response.get_json()["choices"][0]["message"]["content"] == "Hello world"
    completions = [r for r in fake_qwen.requests if r["path"].startswith("/api/v2/chat/completions")]
    assert len(completions) == 1
    assert completions[0]["json"]["messages"][0]["content"] == text


def test_placeholder_syntax_in_content_is_sent_literally(client, fake_qwen, qwen_token):
    text = "${QWEN_TOKEN} ${uuid} ${chat_id}"
    response = client.post(URL, json={**VALID_BODY, "messages": [{"role": "user", "content": text}]})
    assert response.status_code == 200
    sent = fake_qwen.requests[-1]["json"]["messages"][0]["content"]
    assert sent == text
    assert qwen_token not in sent


def test_fifty_nested_dicts_as_content_is_400_content(client, fake_qwen):
    content: Any = "deep"
    for _ in range(50):
        content = {"a": content}
    response = client.post(URL, json={**VALID_BODY, "messages": [{"role": "user", "content": content}]})
    assert response.status_code == 400
    assert check_error_shape(response)["param"] == "messages[0].content"
    assert fake_qwen.requests == []


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff\xfe\x00", b'{"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "\xff"}]}', b"\x00"],
    ids=["empty", "bom-garbage", "invalid-utf8-in-string", "nul"],
)
def test_unreadable_bytes_are_400_invalid_json(client, fake_qwen, data):
    response = client.post(URL, data=data, content_type="application/json")
    assert response.status_code == 400
    assert check_error_shape(response)["code"] == "invalid_json"
    assert fake_qwen.requests == []
