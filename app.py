"""The reverse API: an OpenAI-compatible Flask service in front of web chat providers.

Routes, error rendering, upstream calls and serving; the other modules hold no Flask or requests.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import partial
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from dotenv import dotenv_values
from flask import Flask, Response, current_app, g, jsonify, request
from requests.adapters import HTTPAdapter
from werkzeug.exceptions import HTTPException

from converters import (
    DIALECTS,
    REASONING_FORMATS,
    UNNAMED_CREDENTIAL,
    ApiError,
    ChatRequest,
    CompletionMeta,
    Delta,
    UpstreamCall,
    build_create_chat_body,
    completion_from_deltas,
    iter_chunks,
    iter_reasoning_format,
    upstream_error,
    validate_chat_request,
)
from provider_loader import (
    MissingVariables,
    Provider,
    Redactor,
    Registry,
    default_providers_dir,
    determine_provider,
    fill_headers,
    fill_placeholders,
    folder_signature,
    ids_from_models_answer,
    is_plain_name,
    load_providers,
    merge_model_ids,
    redact_headers,
)
from streaming import DONE, SseLineTooLong, format_sse, iter_data, iter_sse_bytes, iter_sse_events

DEFAULTS = {
    "HOST": "127.0.0.1",
    "PORT": 5000,
    "PROVIDERS_DIR": None,  # None means porviders/ next to this file
    "UPSTREAM_TIMEOUT": 60.0,
    "REASONING_FORMAT": "reasoning_content",
    "POOL_SIZE": 512,
    "LOG_LEVEL": "INFO",
    "API_KEYS": "",  # comma-separated; empty means open, as for a laptop
    "CORS_ORIGINS": "",  # comma-separated origins, or *; empty means no CORS
    "MAX_BODY_BYTES": 10 * 1024 * 1024,
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
}
ENV_TYPES = {
    "PORT": int,
    "UPSTREAM_TIMEOUT": float,
    "POOL_SIZE": int,
    "MAX_BODY_BYTES": int,
    "WORKERS": int,
    "WORKER_CONNECTIONS": int,
    "THREADS": int,
    "BACKLOG": int,
    "MODELS_CACHE_SECONDS": float,
    "MODELS_REFRESH_TIMEOUT": float,
}
DEFAULT_ENV_FILE = Path(__file__).resolve().with_name(".env")
RELOAD_CHECK_SECONDS = 1.0
FAILED_REFRESH_RETRY_SECONDS = 60.0
MODELS_BODY_BYTES = 4 * 1024 * 1024
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Past this, an oversized body is not read to its end: the connection is closed instead.
DRAIN_LIMIT = 64 * 1024 * 1024
CORS_ALLOWED_HEADERS = "Authorization, Content-Type"
READ_CHUNK = 64 * 1024
ERROR_BODY_BYTES = 64 * 1024
SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
SAFE_PATH = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*$")
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

log = logging.getLogger("reverse_api")


class Services:
    """What the app keeps between requests: providers (re-read when their folders change),
    one HTTP pool per provider, the variables from .env, and the upstream model lists."""

    def __init__(self, config: dict) -> None:
        self.providers_dir = Path(config["PROVIDERS_DIR"] or default_providers_dir())
        self.env_file = Path(config["ENV_FILE"]) if config["ENV_FILE"] else None
        self.pool_size = config["POOL_SIZE"]
        self.models = ModelCatalog(config["MODELS_CACHE_SECONDS"], config["MODELS_REFRESH_TIMEOUT"])
        self.models_timeout = config["MODELS_REFRESH_TIMEOUT"]
        self.sessions: dict[str, requests.Session] = {}
        self._lock = threading.Lock()
        self._dotenv: tuple[tuple | None, dict[str, str]] = (None, {})
        self._next_check = 0.0
        self._redactor: tuple[tuple[str, ...] | None, Redactor] = (None, Redactor(()))
        self._signature = folder_signature(self.providers_dir)
        self.registry = self._load()

    def current(self) -> Registry:
        """The providers, re-read when a folder changed (checked at most once a second)."""
        now = time.monotonic()
        if now < self._next_check:
            return self.registry
        with self._lock:
            self._next_check = now + RELOAD_CHECK_SECONDS
            signature = folder_signature(self.providers_dir)
            if signature != self._signature:
                self._signature, self.registry = signature, self._load()
                log.info("provider folders changed: loaded %s", ", ".join(sorted(self.registry.providers)) or "none")
        return self.registry

    def _load(self) -> Registry:
        registry = load_providers(self.providers_dir)
        for name, reason in registry.errors.items():
            log.error("provider %s not loaded: %s", name, reason)
        for name in registry.providers:
            self.sessions.setdefault(name, _new_session(self.pool_size))
        return registry

    def variables(self, names: Iterable[str]) -> dict[str, str]:
        """The named variables: the real environment wins over .env (re-read when it changes)."""
        file_values = self._dotenv_values()
        found = {}
        for name in names:
            value = os.environ[name] if name in os.environ else file_values.get(name)
            if value and value.strip():
                found[name] = value.strip()  # a token pasted with a stray space or newline
        return found

    def _dotenv_values(self) -> dict[str, str]:
        try:
            stat = self.env_file.stat() if self.env_file else None
        except OSError:
            stat = None
        version = (stat.st_mtime_ns, stat.st_size) if stat else None
        if version != self._dotenv[0]:
            values = dotenv_values(self.env_file, interpolate=False) if stat else {}
            self._dotenv = (version, {k: v for k, v in values.items() if v is not None})
        return self._dotenv[1]

    def secrets(self) -> list[str]:
        """The current values of every variable the providers fill in (credentials among them)."""
        names = {name for p in self.registry.providers.values() for name in p.variable_names()}
        return list(self.variables(names).values())

    def redactor(self) -> Redactor:
        """A Redactor for the current secrets, rebuilt only when they change."""
        secrets = tuple(sorted(self.secrets()))
        if self._redactor[0] != secrets:
            self._redactor = (secrets, Redactor(secrets))
        return self._redactor[1]


class ModelCatalog:
    """Upstream model lists, cached; a slow or failing upstream never holds /v1/models up."""

    def __init__(self, ttl: float, timeout: float) -> None:
        self.ttl, self.timeout = ttl, timeout
        self._cache: dict[str, tuple[float, list[str]]] = {}
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="models")

    def ids(self, providers: list[Provider], fetcher: Callable[[Provider], list[str]]) -> dict[str, list[str]]:
        """Each provider's models: its folder's, then its upstream's.

        Stale lists are refreshed all at once and waited for together, never past the timeout;
        a refresh that takes longer goes on and fills the cache for later requests.
        """
        deadline = time.monotonic() + self.timeout
        futures = {p.name: self._refresh_soon(p, fetcher) for p in providers if self._stale(p)}
        found = {}
        for provider in providers:
            upstream = self._cached(provider.name)
            if provider.name in futures:
                with contextlib.suppress(FutureTimeout):  # past the deadline: the last good list
                    upstream = futures[provider.name].result(timeout=max(0.0, deadline - time.monotonic()))
            found[provider.name] = merge_model_ids(provider.models, upstream)
        return found

    def owner(self, model: str, providers: list[Provider]) -> Provider | None:
        """The first provider whose last upstream list names the model (no upstream call)."""
        return next((p for p in providers if model in self._cached(p.name)), None)

    def _stale(self, provider: Provider) -> bool:
        expires = self._cache.get(provider.name, (0.0, []))[0]
        return provider.models_endpoint is not None and time.monotonic() >= expires

    def _cached(self, name: str) -> list[str]:
        return self._cache.get(name, (0.0, []))[1]

    def _refresh_soon(self, provider: Provider, fetcher: Callable[[Provider], list[str]]) -> Future:
        with self._lock:
            if provider.name not in self._pending:
                self._pending[provider.name] = self._executor.submit(self._refresh, provider, fetcher)
            return self._pending[provider.name]

    def _refresh(self, provider: Provider, fetcher: Callable[[Provider], list[str]]) -> list[str]:
        try:
            ids, ttl = fetcher(provider), self.ttl
        except Exception as exc:  # a failure keeps the last good list (or just the folder's)
            log.warning("models of %s not refreshed: %s", provider.name, type(exc).__name__)
            ids, ttl = self._cached(provider.name), min(self.ttl, FAILED_REFRESH_RETRY_SECONDS)
        self._cache[provider.name] = (time.monotonic() + ttl, ids)
        with self._lock:
            self._pending.pop(provider.name, None)
        return ids


def create_app(config: dict | None = None) -> Flask:
    """Build the app: defaults, then .env, then the environment, then explicit overrides (tests)."""
    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    env_file = (config or {}).get("ENV_FILE", os.environ.get("ENV_FILE", DEFAULT_ENV_FILE))
    app.config.update(_config_from_env(env_file))
    app.config.update(config or {})
    app.config["ENV_FILE"] = env_file
    _check_config(app.config)
    _configure_logging(app.config["LOG_LEVEL"])
    app.config["API_KEYS"] = _split_list(app.config["API_KEYS"])
    app.config["CORS_ORIGINS"] = _split_list(app.config["CORS_ORIGINS"])
    # Werkzeug stops reading a body without Content-Length (chunked) here; one byte more tells us it was over.
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_BODY_BYTES"] + 1
    # "//" in a path would otherwise get Werkzeug's HTML redirect page instead of a JSON 404.
    app.url_map.merge_slashes = False
    app.extensions["reverse_api"] = Services(app.config)
    _register_hooks(app)
    _register_routes(app)
    return app


def _config_from_env(env_file: str | Path | None) -> dict:
    """Settings from .env, then from the real environment, which wins."""
    file_values = dotenv_values(env_file, interpolate=False) if env_file and Path(env_file).is_file() else {}
    found = {}
    for key in DEFAULTS:
        value = os.environ[key] if key in os.environ else file_values.get(key)
        if value not in (None, ""):
            found[key] = _convert(key, value)
    return found


def _convert(key: str, value: str) -> Any:
    try:
        return ENV_TYPES.get(key, str)(value)
    except ValueError:
        raise SystemExit(f"Environment variable {key}={value!r} is not a valid {ENV_TYPES[key].__name__}") from None


def _configure_logging(level: str) -> None:
    log.setLevel(level.upper())
    if not logging.getLogger().handlers and not log.handlers:
        # Under gunicorn nothing configured logging: give our lines somewhere to go.
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        log.addHandler(handler)


def _split_list(value: str | list | tuple) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    return tuple(item.strip() for item in items if item.strip())


def _check_config(config: dict) -> None:
    if config["LOG_LEVEL"].upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise SystemExit("LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    if config["REASONING_FORMAT"] not in REASONING_FORMATS:
        raise SystemExit(f"REASONING_FORMAT must be one of {', '.join(REASONING_FORMATS)}")


def _new_session(pool_size: int) -> requests.Session:
    session = requests.Session()
    # Proxy and CA settings are read once here, not from the environment on every request
    # (requests' per-request lookup was a sixth of the service's CPU per request).
    session.trust_env = False
    session.proxies = requests.utils.get_environ_proxies("https://upstream.invalid") or {}
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    # The service is stateless: upstream Set-Cookie must not leak from one client's call to the next.
    session.cookies.set_policy(_RejectCookies())
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class _RejectCookies(DefaultCookiePolicy):
    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False


def _services() -> Services:
    return current_app.extensions["reverse_api"]


# --- hooks and errors --------------------------------------------------------------------


def _register_hooks(app: Flask) -> None:
    app.before_request(_start_request)
    app.before_request(_answer_preflight)
    app.before_request(_check_api_key)  # before the body is drained: strangers get nothing read for them
    app.before_request(_limit_body)
    app.after_request(_add_cors_headers)
    app.after_request(_finish_request)
    app.register_error_handler(ApiError, render_api_error)
    app.register_error_handler(HTTPException, _render_http_exception)
    app.register_error_handler(Exception, _render_unexpected)


def _start_request() -> None:
    g.request_id = "req_" + uuid.uuid4().hex
    g.started = time.perf_counter()


def _finish_request(response: Response) -> Response:
    response.headers["x-request-id"] = g.get("request_id", "")
    elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
    log.info("%s %s %s %d %.1fms", g.get("request_id"), request.method, request.path, response.status_code, elapsed)
    return response


def _answer_preflight() -> Response | None:
    """Browsers ask before a cross-origin POST; answer without auth (they send none)."""
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return Response(status=204)
    return None


def _limit_body() -> None:
    """Refuse oversized bodies on Content-Length, draining them so the client still reads the 413."""
    length = request.content_length
    limit = current_app.config["MAX_BODY_BYTES"]
    if length is None or length <= limit:
        return
    error = ApiError(f"The request body is {length} bytes; the limit is {limit}.", status=413, code="request_too_large")
    if length <= DRAIN_LIMIT:
        _discard_input(length)
    else:
        error.headers["Connection"] = "close"
    raise error


def _discard_input(length: int) -> None:
    stream = request.environ["wsgi.input"]
    while length > 0:
        chunk = stream.read(min(length, 64 * 1024))
        if not chunk:
            return
        length -= len(chunk)


def _check_api_key() -> None:
    keys = current_app.config["API_KEYS"]
    if not keys or not request.path.startswith("/v1/"):
        return
    scheme, _, supplied = request.headers.get("Authorization", "").partition(" ")
    supplied_bytes = supplied.strip().encode()
    # Compare with every key, in constant time, so timing tells nothing about which came close.
    matches = [hmac.compare_digest(supplied_bytes, key.encode()) for key in keys]
    if scheme.lower() != "bearer" or not any(matches):
        raise ApiError(
            "Invalid or missing API key: send it as 'Authorization: Bearer <key>'.", status=401, code="invalid_api_key"
        )


def _add_cors_headers(response: Response) -> Response:
    origin = request.headers.get("Origin")
    allowed = current_app.config["CORS_ORIGINS"]
    if not origin or not (origin in allowed or "*" in allowed):
        return response
    response.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
    response.headers["Access-Control-Expose-Headers"] = "x-request-id"
    response.vary.add("Origin")
    if request.method == "OPTIONS":
        # Authorization must be named: the * wildcard does not cover it.
        requested = request.headers.get("Access-Control-Request-Headers", "")
        response.headers["Access-Control-Allow-Headers"] = ", ".join(filter(None, [CORS_ALLOWED_HEADERS, requested]))
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Max-Age"] = "600"
    return response


def render_api_error(error: ApiError) -> Response:
    body = error.to_dict()
    body["error"]["message"] = redact(body["error"]["message"])
    response = jsonify(body)
    response.status_code = error.status
    response.headers.update(error.headers)
    if 400 <= error.status < 500 and error.status not in (408, 409, 429):
        # The same request would fail the same way; spare the upstream the SDKs' retries.
        response.headers.setdefault("x-should-retry", "false")
    return response


def redact(text: str) -> str:
    """Blank out every credential value the providers use, wherever it turned up."""
    return _services().redactor()(text)


def _render_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    message = error.description or error.name
    if status == 404:
        message = (
            f"Unknown route {request.method} {request.path}. "
            "This service serves /v1/chat/completions, /v1/models and /health."
        )
    elif status == 405:
        message = f"Method {request.method} is not allowed for {request.path}."
    api_error = ApiError(message, status=status, type=_error_type(status), code=_error_code(status))
    response = render_api_error(api_error)
    if status == 405 and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def _error_type(status: int) -> str:
    return "server_error" if status >= 500 else "invalid_request_error"


def _error_code(status: int) -> str | None:
    return {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(status)


def _render_unexpected(error: Exception) -> Response:
    log.exception("%s unexpected error", g.get("request_id"))
    message = f"Internal server error (request {g.get('request_id')})."
    return render_api_error(ApiError(message, status=500, type="server_error", code="internal_error"))


# --- routes ------------------------------------------------------------------------------


def _register_routes(app: Flask) -> None:
    app.add_url_rule("/health", view_func=health, methods=["GET"])
    app.add_url_rule("/v1/models", view_func=list_models, methods=["GET"])
    app.add_url_rule("/v1/models/<path:model_id>", view_func=retrieve_model, methods=["GET"])
    app.add_url_rule("/v1/chat/completions", view_func=chat_completions, methods=["POST"])


def health() -> Response:
    """Per provider: loaded or why not, and which credentials are missing (names only).

    "ok" when every folder loaded and at least one provider has its credentials.
    """
    registry = _services().current()
    providers: dict[str, dict] = {}
    for name, provider in registry.providers.items():
        found = _services().variables(provider.required_variables())
        missing = [n for n in provider.required_variables() if n not in found]
        providers[name] = {"loaded": True, "credentials_set": not missing, "missing_variables": missing}
    for name, reason in registry.errors.items():
        providers[name] = {"loaded": False, "error": reason}
    usable = any(p.get("credentials_set") for p in providers.values())
    healthy = usable and not registry.errors
    return jsonify({"status": "ok" if healthy else "degraded", "providers": providers})


def list_models() -> Response:
    services = _services()
    providers = _sorted_providers(services.current())
    ids = services.models.ids(providers, partial(fetch_model_ids, services))
    data = [model_object(model, provider) for provider in providers for model in ids[provider.name]]
    return jsonify({"object": "list", "data": data})


def _sorted_providers(registry: Registry) -> list[Provider]:
    return [registry.providers[name] for name in sorted(registry.providers)]


def find_provider(model: str) -> Provider | None:
    """The folder's lists and patterns first, then the models the upstreams last listed."""
    registry = _services().current()
    found = determine_provider(registry.providers, model)
    return found or _services().models.owner(model, _sorted_providers(registry))


def retrieve_model(model_id: str) -> Response:
    provider = find_provider(model_id)
    if provider is None:
        raise ApiError(f"The model '{model_id}' does not exist.", status=404, param="model", code="model_not_found")
    return jsonify(model_object(model_id, provider))


def fetch_model_ids(services: Services, provider: Provider) -> list[str]:
    """Ask the upstream's declared models endpoint (runs outside any request)."""
    endpoint = provider.models_endpoint
    variables = request_variables(services.variables(provider.variable_names()), "", "", time.time())
    # No chat exists here: headers naming one (Referer .../c/${chat_id}) are left out.
    headers = fill_headers(provider.request.headers, variables, provider.optional_variables | {"chat_id"})
    url = provider.base_url + fill_placeholders(endpoint["path"], variables)
    timeout = services.models_timeout
    session = services.sessions[provider.name]
    with session.request(endpoint["method"], url, headers=headers, timeout=timeout, stream=True) as response:
        response.raise_for_status()
        return ids_from_models_answer(json.loads(_read_within(response, timeout)), endpoint)


def _read_within(response: requests.Response, seconds: float) -> bytes:
    """The whole body, unless it takes longer than ``seconds`` or grows past MODELS_BODY_BYTES."""
    deadline = time.monotonic() + seconds
    body = bytearray()
    for chunk in response.iter_content(64 * 1024):
        body += chunk
        if time.monotonic() > deadline or len(body) > MODELS_BODY_BYTES:
            raise TimeoutError("the models answer was too slow or too large")
    return bytes(body)


def model_object(model_id: str, provider: Provider) -> dict:
    return {"id": model_id, "object": "model", "created": provider.created, "owned_by": provider.owned_by}


def chat_completions() -> Response:
    chat_request = validate_chat_request(_json_body())
    provider = resolve_provider(chat_request)
    meta = CompletionMeta.new(chat_request.model)
    deltas = open_reply(provider, chat_request)
    # Pull the first delta before answering, so upstream failures still get a real HTTP status.
    deltas = _prepend(_first_delta(deltas), deltas)
    deltas = iter_reasoning_format(deltas, current_app.config["REASONING_FORMAT"])
    if chat_request.stream:
        body = iter_stream_body(deltas, meta, chat_request.include_usage, _services().redactor())
        return Response(body, mimetype="text/event-stream", headers=STREAM_HEADERS)
    return jsonify(completion_from_deltas(deltas, meta))


def _json_body() -> Any:
    raw = request.get_data(cache=False)
    limit = current_app.config["MAX_BODY_BYTES"]
    if len(raw) > limit:
        raise ApiError(
            f"The request body is over the limit of {limit} bytes.",
            status=413,
            code="request_too_large",
            headers={"Connection": "close"},  # the rest of a chunked body is not read
        )
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError("The request body is not valid JSON.", code="invalid_json") from None


def resolve_provider(chat_request: ChatRequest) -> Provider:
    """The explicit ``provider`` field wins; otherwise the model name decides."""
    registry = _services().current()
    name = chat_request.provider
    if name is None:
        provider = find_provider(chat_request.model)
        if provider is None:
            raise ApiError(
                f'No provider found for model "{chat_request.model}". '
                "Please specify a provider or use a supported model.",
                status=404,
                param="model",
                code="provider_not_found",
            )
        return provider
    if not is_plain_name(name):
        raise ApiError("'provider' must be a plain provider folder name.", param="provider", code="invalid_provider")
    if name in registry.errors:
        raise ApiError(
            f'Provider "{name}" failed to load: {registry.errors[name]}',
            status=503,
            type="server_error",
            param="provider",
            code="provider_unavailable",
            retryable=False,
        )
    if name not in registry.providers:
        known = ", ".join(sorted(registry.providers)) or "none"
        raise ApiError(
            f'Provider "{name}" not found (available: {known}).',
            status=404,
            param="provider",
            code="provider_not_found",
        )
    return registry.providers[name]


def iter_stream_body(
    deltas: Iterator[Delta], meta: CompletionMeta, include_usage: bool, redact: Redactor
) -> Iterator[bytes]:
    """SSE bytes for the client; an error after the first byte becomes an error event."""
    try:
        yield from iter_sse_bytes(iter_chunks(deltas, meta, include_usage))
    except ApiError as exc:
        body = exc.to_dict()
        body["error"]["message"] = redact(exc.message)
        log.warning("stream %s ended with an error: %s", meta.id, body["error"]["message"])
        yield format_sse(body)
        yield DONE
    except Exception:  # a bug must still end the stream the way clients understand
        log.exception("stream %s failed", meta.id)
        error = ApiError(f"Internal error in stream {meta.id}.", status=500, type="server_error", code="internal_error")
        yield format_sse(error.to_dict())
        yield DONE
    finally:
        deltas.close()


def _first_delta(deltas: Iterator[Delta]) -> Delta:
    """The first delta that says something; keep-alives before it are dropped."""
    for delta in deltas:
        if not delta.heartbeat:
            return delta
    raise upstream_error("The upstream ended the stream without a reply.", code="upstream_truncated")


def _prepend(first: Delta, rest: Iterator[Delta]) -> Iterator[Delta]:
    try:
        yield first
        yield from rest
    finally:
        rest.close()


# --- the upstream ------------------------------------------------------------------------


def open_reply(provider: Provider, chat_request: ChatRequest) -> Iterator[Delta]:
    """Start the upstream reply and return its deltas (the connection closes with the iterator)."""
    dialect = DIALECTS[provider.dialect]
    dialect.check_request(chat_request)
    model = dialect.upstream_model(chat_request)
    now = time.time()
    chat_id = create_chat(provider, model, now) if provider.create_chat else ""
    variables = request_variables(_services().variables(provider.variable_names()), model, chat_id, now)
    headers = _fill_headers(provider, provider.request.headers, variables)
    call = UpstreamCall(model=model, chat_id=chat_id, now=now, history=provider.message_mode == "history")
    # The template is filled first, so placeholders in the client's own text are never expanded.
    payload = dialect.build_payload(_fill(provider, provider.payload, variables), chat_request, call)
    url = provider.base_url + _safe_path(provider, _fill(provider, provider.request.path, variables))
    response = send_upstream(provider, provider.request.method, url, headers, payload)
    redact = _services().redactor()
    return iter_upstream_deltas(provider, response, current_app.config["UPSTREAM_TIMEOUT"], redact)


def create_chat(provider: Provider, model: str, now: float) -> str:
    """Open a chat when the provider declares that step (Qwen v2); return its id."""
    step = provider.create_chat
    variables = request_variables(_services().variables(provider.variable_names()), model, "", now)
    # The chat does not exist yet: captured headers naming it (a Referer) are left out unless overridden.
    headers = _fill_headers(
        provider, _with_overrides(provider.request.headers, step.headers), variables, frozenset({"chat_id"})
    )
    body = build_create_chat_body(_fill(provider, provider.create_chat_body, variables), model, now)
    url = provider.base_url + _safe_path(provider, _fill(provider, step.path, variables))
    response = send_upstream(provider, step.method, url, headers, body)
    with response:
        data = _read_json_answer(provider, response, _services().redactor())
    chat_id = _dig(data, provider.create_chat_id_field)
    if not isinstance(chat_id, str) or not SAFE_ID.fullmatch(chat_id):
        raise upstream_error(f"The upstream did not return a usable chat id at '{provider.create_chat_id_field}'.")
    return chat_id


def request_variables(environment: dict[str, str], model: str, chat_id: str, now: float) -> dict[str, Any]:
    """Environment variables plus the per-request values placeholders may use."""
    values: dict[str, Any] = dict(environment)
    values.update(
        chat_id=chat_id,
        uuid=str(uuid.uuid4()),
        timestamp=int(now),
        timestamp_ms=int(now * 1000),
        model=model,
    )
    return values


def _with_overrides(headers: tuple[tuple[str, str], ...], overrides: tuple[tuple[str, str], ...]) -> list:
    replaced = {name.lower() for name, _ in overrides}
    return [h for h in headers if h[0].lower() not in replaced] + list(overrides)


def _safe_path(provider: Provider, path: str) -> str:
    """A filled path must stay one path on the provider's host: no spaces, line breaks or fragments."""
    if not SAFE_PATH.fullmatch(path):
        raise ApiError(
            f'Provider "{provider.name}": a value filled into the request path is not URL-safe.',
            status=400,
            code="invalid_value",
        )
    return path


def _fill(provider: Provider, value: Any, variables: dict) -> Any:
    try:
        return fill_placeholders(value, variables)
    except MissingVariables as exc:
        raise _missing_variables_error(provider, exc) from None


def _fill_headers(provider: Provider, headers: Any, variables: dict, unset: frozenset = frozenset()) -> dict[str, str]:
    """Fill header values; headers naming an unset optional variable (or one of ``unset``) are left out."""
    try:
        filled = fill_headers(headers, variables, provider.optional_variables | unset)
    except MissingVariables as exc:
        raise _missing_variables_error(provider, exc) from None
    # A value pasted with a stray space or newline at either end: HTTP would trim it anyway.
    filled = {name: value.strip() for name, value in filled.items()}
    for name, value in filled.items():
        _check_header_value(provider, name, value)
    return filled


def _check_header_value(provider: Provider, name: str, value: str) -> None:
    """A filled header must stay one header line that HTTP can carry (Latin-1, no line breaks)."""
    if any(c in value for c in "\r\n\0"):
        raise ApiError(
            f'Provider "{provider.name}": the value filled into header {name} has a line break.',
            status=503,
            type="server_error",
            code="provider_misconfigured",
            retryable=False,
        )
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ApiError(
            f'Provider "{provider.name}": the value filled into header {name} has characters HTTP headers '
            "cannot carry.",
            status=400,
            code="invalid_value",
        ) from None


def _missing_variables_error(provider: Provider, exc: MissingVariables) -> ApiError:
    names = ", ".join(exc.names)
    return ApiError(
        f'Provider "{provider.name}" is missing its credential: set {names} in the environment or in .env.',
        status=401,
        type="authentication_error",
        code="upstream_credential_missing",
        retryable=False,
    )


def send_upstream(provider: Provider, method: str, url: str, headers: dict, payload: Any) -> requests.Response:
    """The one place that calls the upstream; transport failures become ApiError."""
    session = _services().sessions[provider.name]
    timeout = current_app.config["UPSTREAM_TIMEOUT"]
    path = urlsplit(url).path
    if log.isEnabledFor(logging.DEBUG):
        # Credential-like headers by name, and any secret value wherever it stands.
        shown = _services().redactor()(str(redact_headers(headers)))
        log.debug("%s upstream %s %s%s headers=%s", g.get("request_id"), method, provider.host, path, shown)
    try:
        return session.request(
            method, url, headers=headers, json=payload, stream=True, timeout=timeout, allow_redirects=False
        )
    except requests.Timeout:
        raise upstream_error(
            f"The upstream did not answer within {timeout:g} s.", status=504, code="upstream_timeout"
        ) from None
    except requests.ConnectionError as exc:
        if _is_protocol_error(exc):
            # Connected, but what came back was no HTTP answer (or the upstream hung up first).
            raise upstream_error(
                f"The upstream {provider.host} closed the connection or did not answer in HTTP.",
                code="upstream_error",
            ) from None
        raise _unreachable(provider, exc) from None
    except requests.RequestException as exc:
        raise _unreachable(provider, exc) from None


def _is_protocol_error(exc: requests.ConnectionError) -> bool:
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # MaxRetryError wraps the real cause
    return isinstance(reason, urllib3.exceptions.ProtocolError)


def _unreachable(provider: Provider, exc: Exception) -> ApiError:
    return upstream_error(
        f"Could not reach the upstream {provider.host}: {type(exc).__name__}.", code="upstream_unreachable"
    )


def _read_json_answer(provider: Provider, response: requests.Response, redact: Redactor) -> Any:
    body = _read_error_body(response, redact)
    content_type = response.headers.get("Content-Type", "")
    if response.status_code >= 300 or "json" not in content_type:
        raise _answer_error(provider, response, body)
    try:
        data = json.loads(body)
    except ValueError:
        raise upstream_error("The upstream answered with invalid JSON.") from None
    if isinstance(data, dict) and data.get("success") is False:
        raise _answer_error(provider, response, body)
    return data


def _read_error_body(response: requests.Response, redact: Redactor) -> str:
    """At most ERROR_BODY_BYTES of a non-stream answer (JSON, an error page), secrets blanked.

    Blanked here, before any message quotes and trims it: a secret cut in half would not match.
    """
    try:
        raw = response.raw.read(ERROR_BODY_BYTES, decode_content=True)
    except Exception as exc:  # urllib3 errors have no common base; never a 500
        raise _read_failure(exc) from None
    return redact(raw.decode("utf-8", errors="replace"))


def _read_failure(exc: Exception) -> ApiError:
    """A failed read of the upstream's answer: 504 when it went silent, else 502."""
    if "timed out" in str(exc).lower() or "timeout" in type(exc).__name__.lower():
        timeout = current_app.config["UPSTREAM_TIMEOUT"] if current_app else None
        silent = f" for {timeout:g} s" if timeout else ""
        return upstream_error(f"The upstream stopped sending{silent}.", status=504, code="upstream_timeout")
    return upstream_error(
        f"The upstream connection failed mid-reply: {type(exc).__name__}.", code="upstream_disconnected"
    )


def iter_upstream_deltas(
    provider: Provider, response: requests.Response, timeout: float, redact: Redactor
) -> Iterator[Delta]:
    """Check the upstream answer, then parse its SSE stream; always release the connection."""
    try:
        content_type = response.headers.get("Content-Type", "")
        if response.status_code != 200 or "text/event-stream" not in content_type:
            body = _read_error_body(response, redact)
            raise _answer_error(provider, response, body)
        # Each frame is blanked before parsing, so no error quoting it can carry a secret.
        events = map(redact, iter_data(iter_sse_events(iter_raw_chunks(response, timeout))))
        yield from DIALECTS[provider.dialect].iter_deltas(events)
    except ApiError as exc:
        if exc.code == "upstream_credential_rejected":  # raised mid-stream, before the variable was known
            exc.message = exc.message.replace(UNNAMED_CREDENTIAL, _credential_name(provider))
        raise
    except SseLineTooLong as exc:
        raise upstream_error(f"The upstream sent {exc}.") from None
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        # A frame of an unexpected shape: the upstream's fault, never a 500.
        raise upstream_error(f"The upstream sent an event this service cannot read ({type(exc).__name__}).") from None
    finally:
        response.close()


def iter_raw_chunks(response: requests.Response, timeout: float) -> Iterator[bytes]:
    """Bytes as they arrive: ``read1`` returns whatever is there, so no event is held back."""
    encoded = response.headers.get("Content-Encoding", "").lower() not in ("", "identity")
    try:
        while True:
            # requests leaves decoding to its own readers; gzip and deflate are undone here (and only
            # then: urllib3's decoding path costs microseconds per event on a plain stream).
            chunk = response.raw.read1(READ_CHUNK, decode_content=encoded)
            if not chunk:
                return
            yield chunk
    except Exception as exc:  # urllib3 raises its own types; name the failure, never a 500
        error = _read_failure(exc)
        if error.status == 504:
            error.message = f"The upstream stopped sending for {timeout:g} s."
        raise error from None


def _answer_error(provider: Provider, response: requests.Response, body: str) -> ApiError:
    """The dialect's reading of an upstream answer that is not the expected stream."""
    content_type = response.headers.get("Content-Type", "")
    error = DIALECTS[provider.dialect].error_from_answer(
        response.status_code, content_type, body, _credential_name(provider)
    )
    retry_after = response.headers.get("Retry-After")
    if error.status == 429 and retry_after and "Retry-After" not in error.headers:
        error.headers["Retry-After"] = retry_after
    return error


def _credential_name(provider: Provider) -> str:
    names = provider.required_variables()
    return names[0] if names else "the provider's credential"


def _dig(data: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        data = data.get(key) if isinstance(data, dict) else None
    return data


# --- serving -----------------------------------------------------------------------------


def exposure_warning(host: str, api_keys: tuple[str, ...] | str) -> str | None:
    """A loud warning when anyone on the network could spend the provider accounts."""
    if _split_list(api_keys) or host in ("localhost", "::1") or host.startswith("127."):
        return None
    return (
        f"!!! Listening on {host} with no API_KEYS: anyone who can reach this port can use the "
        "provider accounts configured here. Set API_KEYS or listen on 127.0.0.1. !!!"
    )


def main(argv: list[str] | None = None) -> None:
    """``python app.py``: gunicorn with gevent workers; ``--debug`` for Flask's reloading dev server."""
    # .env is read by create_app in each worker (and re-read when it changes), not copied
    # into the environment, so real environment variables keep winning over it.
    settings = {**DEFAULTS, **_config_from_env(os.environ.get("ENV_FILE", DEFAULT_ENV_FILE))}
    _check_config(settings)
    logging.basicConfig(level=settings["LOG_LEVEL"].upper(), format=LOG_FORMAT)
    # urllib3's own DEBUG lines print full request lines, query strings (and secrets in them) included.
    logging.getLogger("urllib3").setLevel(max(logging.INFO, logging.getLogger().level))
    warning = exposure_warning(settings["HOST"], settings["API_KEYS"])
    if warning:
        log.warning(warning)
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    if debug or sys.platform == "win32":
        if not debug:
            log.warning("gunicorn does not run on Windows: serving with Flask's threaded development server")
        create_app().run(host=settings["HOST"], port=settings["PORT"], debug=debug, threaded=True)
        return
    # A fresh interpreter, so the gevent worker patches sockets before anything imports them.
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", *gunicorn_args(settings), "app:create_app()"])


def gunicorn_args(settings: dict) -> list[str]:
    return [
        f"--bind={_bind_address(settings['HOST'], settings['PORT'])}",
        f"--chdir={Path(__file__).resolve().parent}",
        f"--worker-class={settings['WORKER_CLASS']}",
        f"--workers={settings['WORKERS']}",
        f"--threads={settings['THREADS']}",
        f"--worker-connections={settings['WORKER_CONNECTIONS']}",
        f"--backlog={settings['BACKLOG']}",
        "--timeout=120",  # async workers heartbeat while streaming; this only catches a stuck worker
        "--graceful-timeout=30",
        "--keep-alive=75",
        f"--log-level={settings['LOG_LEVEL'].lower()}",
    ]


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


if __name__ == "__main__":
    main()
