"""The reverse API: builds the Flask app (settings, hooks, routes, error rendering) and serves it.

Everything else has a home of its own; see README "Development" for the layout and import rules.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hmac
import ipaddress
import logging
import math
import os
import socket
import sys
import time
import uuid
from pathlib import Path

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

import fronts
import status_page
from converters import ApiError
from fronts.http import read_body, request_scope
from redaction import printable
from services import DEFAULT_STATE_FILE, Services
from settings import load_settings, split_list
from state import StateError, open_store

ENDPOINTS = (
    "POST /v1/chat/completions",
    "POST /v1/messages",
    "POST /v1/messages/count_tokens",
    "POST /v1/responses",
    "GET /v1/models",
)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Past this, an oversized body is not read to its end: the connection is closed instead.
DRAIN_LIMIT = 64 * 1024 * 1024
CORS_ALLOWED_HEADERS = "Authorization, Content-Type, x-api-key, anthropic-version, anthropic-beta"

log = logging.getLogger("reverse_api")


def create_app(config: dict | None = None) -> Flask:
    """Build the app: defaults, then .env, then the environment, then explicit overrides (tests)."""
    app = Flask(__name__)
    app.config.from_mapping(load_settings(config))
    _configure_logging(app.config["LOG_LEVEL"])
    app.config["API_KEYS"] = split_list(app.config["API_KEYS"])
    app.config["CORS_ORIGINS"] = split_list(app.config["CORS_ORIGINS"])
    app.config["ALLOWED_HOSTS"] = tuple(name.lower() for name in split_list(app.config["ALLOWED_HOSTS"]))
    # Werkzeug stops reading a body without Content-Length (chunked) here; one byte more tells us it was over.
    app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_BODY_BYTES"] + 1
    # "//" in a path would otherwise get Werkzeug's HTML redirect page instead of a JSON 404.
    app.url_map.merge_slashes = False
    app.extensions["reverse_api"] = Services(app.config)
    _register_hooks(app)
    app.add_url_rule("/health", view_func=health, methods=["GET"])
    app.add_url_rule("/", view_func=index, methods=["GET"])  # HEAD too: clients probe it before starting
    for front in fronts.FRONTS:
        front.register(app)
    return app


def _configure_logging(level: str) -> None:
    log.setLevel(level.upper())
    if not logging.getLogger().handlers and not log.handlers:
        # Under gunicorn nothing configured logging: give our lines somewhere to go.
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        log.addHandler(handler)


# --- hooks ---------------------------------------------------------------------------------


def _register_hooks(app: Flask) -> None:
    app.before_request(_start_request)
    app.before_request(_refuse_web_pages)  # before anything else: a page may not even probe
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
    if response.is_streamed:
        return response  # its line is written when it ends (fronts.http.stream_response)
    elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
    path = printable(request.path)  # a %0a in the URL must not write a line of its own
    log.info("%s %s %s %d %.1fms", g.get("request_id"), request.method, path, response.status_code, elapsed)
    return response


def _refuse_web_pages() -> None:
    """Without API_KEYS, only local programs may call: a web page the user visits must not drive
    the service (a cross-site POST needs no preflight) nor read it through DNS rebinding."""
    config = current_app.config
    if config["API_KEYS"]:
        return
    host = _host_name(request.host or "")
    if not (_is_loopback(host) or host in config["ALLOWED_HOSTS"]):
        raise ApiError(
            f"Host {host or '(none)'!r} is not allowed: without API_KEYS the service answers only on "
            "localhost. Add the name to ALLOWED_HOSTS, or set API_KEYS.",
            status=403,
            code="host_not_allowed",
        )
    origin = request.headers.get("Origin")
    cors_allowed = bool(origin) and (origin in config["CORS_ORIGINS"] or "*" in config["CORS_ORIGINS"])
    own = origin == f"{request.scheme}://{request.host}"
    cross_site = request.headers.get("Sec-Fetch-Site") == "cross-site"
    if (origin and not own and not cors_allowed) or (cross_site and not cors_allowed):
        raise ApiError(
            "Cross-site requests from web pages are refused: allow the page's origin in CORS_ORIGINS, or set API_KEYS.",
            status=403,
            code="cross_site_refused",
        )


@functools.lru_cache(maxsize=64)  # the same few Host names come on every request
def _is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address written as one (never a name that starts with 127.)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str:
    """The name in a Host header, without its port: ``[::1]:5000`` -> ``::1``."""
    if host.startswith("["):
        return host[1:].partition("]")[0].lower()
    return host.rpartition(":")[0].lower() if host.count(":") == 1 else host.lower()


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
    headers = {} if length <= DRAIN_LIMIT else {"Connection": "close"}
    error = ApiError(
        f"The request body is {length} bytes; the limit is {limit}.",
        status=413,
        code="request_too_large",
        headers=headers,
    )
    if length <= DRAIN_LIMIT:
        _discard_input(length)
    raise error


def _discard_input(length: int) -> None:
    """Read an oversized body to its end (within CLIENT_TIMEOUT), so the client reads the 413."""
    with contextlib.suppress(ApiError):  # a client too slow for that: the connection closes
        read_body(length, current_app.config["CLIENT_TIMEOUT"], request.environ["wsgi.input"], keep=False)


def _check_api_key() -> None:
    keys = current_app.config["API_KEYS"]
    if not keys or not request.path.startswith("/v1/"):
        return
    if not _supplied_key_matches(keys):
        raise ApiError(
            "Invalid or missing API key: send it as 'Authorization: Bearer <key>'"
            + (" or as 'x-api-key: <key>'." if fronts.front_for(request.path).ACCEPTS_X_API_KEY else "."),
            status=401,
            code="invalid_api_key",
        )


def _supplied_key_matches(keys: tuple[str, ...]) -> bool:
    """The key as OpenAI clients send it (``Authorization: Bearer``), or where the front takes it,
    as Anthropic's do (``x-api-key``)."""
    scheme, _, bearer = request.headers.get("Authorization", "").partition(" ")
    supplied = [bearer.strip()] if scheme.lower() == "bearer" else []
    if "x-api-key" in request.headers and fronts.front_for(request.path).ACCEPTS_X_API_KEY:
        supplied.append(request.headers["x-api-key"].strip())
    # Compare with every key, in constant time, so timing tells nothing about which came close.
    matches = [hmac.compare_digest(value.encode(), key.encode()) for value in supplied for key in keys]
    return any(matches)


def _add_cors_headers(response: Response) -> Response:
    origin = request.headers.get("Origin")
    allowed = current_app.config["CORS_ORIGINS"]
    if not origin or not (origin in allowed or "*" in allowed):
        return response
    response.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
    response.headers["Access-Control-Expose-Headers"] = "x-request-id, x-ignored-fields"
    response.vary.add("Origin")
    if request.method == "OPTIONS":
        # Authorization must be named: the * wildcard does not cover it.
        requested = request.headers.get("Access-Control-Request-Headers", "")
        response.headers["Access-Control-Allow-Headers"] = ", ".join(filter(None, [CORS_ALLOWED_HEADERS, requested]))
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Max-Age"] = "600"
    return response


# --- errors: each rendered by the front whose clients asked ---------------------------------


def render_api_error(error: ApiError) -> Response:
    redact = request_scope().redact  # the request's own, when it got that far
    return fronts.front_for(request.path).error_response(error, redact)


def _render_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    message = error.description or error.name
    if status == 404:
        message = (
            f"Unknown route {request.method} {request.path}. "
            "This service serves /v1/chat/completions, /v1/messages, /v1/responses, /v1/models and /health."
        )
    elif status == 405:
        message = f"Method {request.method} is not allowed for {request.path}."
    kind = "server_error" if status >= 500 else "invalid_request_error"
    code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(status)
    response = render_api_error(ApiError(message, status=status, type=kind, code=code))
    if status == 405 and error.valid_methods:
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def _render_unexpected(error: Exception) -> Response:
    log.exception("%s unexpected error", g.get("request_id"))
    message = f"Internal server error (request {g.get('request_id')})."
    return render_api_error(ApiError(message, status=500, type="server_error", code="internal_error"))


# --- the root and health ---


def index() -> Response:
    """What clients probe before they start, and where a person finds the routes; a browser
    (asking for HTML before JSON) gets the status page."""
    if request.method == "GET" and _prefers_html():
        return Response(status_page.render(health_report()), mimetype="text/html")
    return jsonify({"service": "reverse-api", "status": "ok", "endpoints": ENDPOINTS, "health": "/health"})


def _prefers_html() -> bool:
    """A browser's Accept (text/html first, */* after it); curl's */* and SDKs' JSON get JSON."""
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


# --- health --------------------------------------------------------------------------------


def health() -> Response:
    return jsonify(health_report())


def health_report() -> dict:
    """Per provider: loaded or why not, which credentials are missing (names only), its accounts'
    states (never a token), drift, and the last error its requests ended with.

    "ok" when every folder loaded and at least one provider has its credentials.
    """
    scope = request_scope()
    providers: dict[str, dict] = {}
    store_error = None
    for name, provider in scope.registry.providers.items():
        try:
            missing = scope.accounts.accounts(provider, scope.file_values)[0].missing_variables()
            accounts = scope.accounts.health(provider, scope.file_values)
        except StateError as exc:
            store_error = f"The state store is unavailable: {exc}"
            missing, accounts = [], []
        providers[name] = {
            "loaded": True,
            "credentials_set": not missing and store_error is None,
            "missing_variables": missing,
            "accounts": accounts,
            "drift": scope.drift.snapshot(name),  # what its streams held that the parser did not know
            "last_error": scope.drift.last_error(name),
        }
        if name in scope.registry.stale:
            providers[name]["reload_error"] = scope.registry.stale[name]  # serving its last good version
    for name, reason in scope.registry.errors.items():
        providers[name] = {"loaded": False, "error": reason}
    usable = any(p.get("credentials_set") and _has_a_live_token(p) for p in providers.values())
    healthy = usable and not scope.registry.errors and not scope.registry.stale
    body = {"status": "ok" if healthy else "degraded", "providers": providers}
    if store_error:
        body["state_store_error"] = store_error
    return body


def _has_a_live_token(provider: dict) -> bool:
    """No account left whose token is known expired with nothing to renew it (told without asking)."""
    accounts = provider.get("accounts") or []
    return not accounts or any(account.get("token_check") != "expired" for account in accounts)


# --- serving -------------------------------------------------------------------------------


def exposure_warning(host: str, api_keys: tuple[str, ...] | str) -> str | None:
    """A loud warning when anyone on the network could spend the provider accounts."""
    if split_list(api_keys) or host in ("localhost", "::1") or host.startswith("127."):
        return None
    return (
        f"!!! Listening on {host} with no API_KEYS: anyone who can reach this port can use the "
        "provider accounts configured here. Set API_KEYS or listen on 127.0.0.1. !!!"
    )


def main(argv: list[str] | None = None) -> None:
    """``python app.py``: gunicorn with gevent workers; ``--debug`` for Flask's reloading dev server;
    ``check [PROVIDER]`` for one tiny real chat through each configured provider."""
    args = sys.argv[1:] if argv is None else argv
    # .env is read by create_app in each worker (and re-read when it changes), not copied
    # into the environment, so real environment variables keep winning over it.
    settings = load_settings()
    logging.basicConfig(level=settings["LOG_LEVEL"].upper(), format=LOG_FORMAT)
    # urllib3's own DEBUG lines print full request lines, query strings (and secrets in them) included.
    logging.getLogger("urllib3").setLevel(max(logging.INFO, logging.getLogger().level))
    if args[:1] == ["check"]:
        import probe  # only the command needs it, never a worker

        sys.exit(probe.main(args[1:], settings))
    _check_state_store(settings)
    _check_port_free(settings["HOST"], settings["PORT"])
    warning = exposure_warning(settings["HOST"], settings["API_KEYS"])
    if warning:
        log.warning(warning)
    debug = "--debug" in args
    if debug or sys.platform == "win32":
        if not debug:
            log.warning("gunicorn does not run on Windows: serving with Flask's threaded development server")
        create_app().run(host=settings["HOST"], port=settings["PORT"], debug=debug, threaded=True)
        return
    # A fresh interpreter, so the gevent worker patches sockets before anything imports them.
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", *gunicorn_args(settings), "app:create_app()"])


def _check_port_free(host: str, port: int) -> None:
    """One line naming PORT when the port is taken (or HOST cannot be listened on), rather than
    gunicorn's retries and traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe_socket:
        probe_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe_socket.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                sys.exit(f"PORT={port} is already in use on {host}: stop what listens there, or set another PORT.")
            sys.exit(f"Cannot listen on HOST={host} PORT={port}: {exc.strerror or exc}.")


def _check_state_store(settings: dict) -> None:
    """Open the state store once before serving, so a wrong STATE_URL or a missing STATE_SECRET
    stops the start with its reason instead of failing every worker."""
    try:
        open_store(settings["STATE_URL"], settings["STATE_SECRET"], DEFAULT_STATE_FILE).close()
    except StateError as exc:
        sys.exit(f"Cannot open the state store: {exc}")
    if settings["STATE_URL"] == "memory://" and settings["WORKERS"] > 1:
        log.warning(
            "STATE_URL=memory:// keeps state per worker: %d workers may each refresh the same "
            "token. Use the default SQLite store.",
            settings["WORKERS"],
        )


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
        # gunicorn's async workers bound the wait for a request's headers by --keep-alive (idle
        # keep-alive connections and half-sent headers alike): CLIENT_TIMEOUT is that bound.
        f"--keep-alive={max(1, math.ceil(settings['CLIENT_TIMEOUT']))}",  # whole seconds, for gunicorn
        f"--log-level={settings['LOG_LEVEL'].lower()}",
        # Its hooks: a worker stopped at once ends its streams with an error event. A path, as
        # gunicorn reads it before --chdir: "python:serving" would not be found from elsewhere.
        f"--config={Path(__file__).resolve().with_name('serving.py')}",
    ]


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


if __name__ == "__main__":
    main()
