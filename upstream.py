"""The upstream HTTP client: the only code that imports requests or urllib3.

Every call to a provider goes through ``UpstreamClient.send``: one connection pool per provider,
no redirects followed, no cookies kept, an explicit timeout, and transport failures as ApiError.

Requests are handed to requests' transport adapter directly, already prepared: their headers
were checked when they were filled and their paths when they were built, and nothing a
``requests.Session`` adds per call (merging, proxy and netrc look-ups, a cookie jar, redirect
bookkeeping) is wanted here. That machinery was over half the service's CPU per request.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

import json_codec
from converters import ApiError, upstream_error
from settings import ca_bundle

READ_CHUNK = 64 * 1024
ERROR_BODY_BYTES = 64 * 1024
WHY_UNREACHABLE = (
    ("NameResolution", "the host name could not be resolved"),
    ("gaierror", "the host name could not be resolved"),
    ("ConnectionRefused", "the connection was refused"),
    ("ProxyError", "the proxy failed"),
    ("SSLError", "TLS failed"),
    ("ConnectTimeout", "the connection timed out"),
    ("Network is unreachable", "the network is unreachable"),
)

# What a requests.Session would add to every request; upstreams have always seen these.
DEFAULT_HEADERS = tuple(requests.utils.default_headers().items())
BODYLESS_METHODS = ("GET", "HEAD")

log = logging.getLogger("reverse_api")


class UpstreamClient:
    """One pool of connections per provider, made on first use and kept for the process."""

    def __init__(self, pool_size: int, timeout: float) -> None:
        self.pool_size = pool_size
        self.timeout = timeout
        self.adapters: dict[str, HTTPAdapter] = {}
        self._lock = threading.Lock()
        # Proxy and CA settings are read once here, not from the environment on every request
        # (requests' per-request lookup was a sixth of the service's CPU per request).
        self._proxies = requests.utils.get_environ_proxies("https://upstream.invalid") or {}
        self._verify = ca_bundle() or True

    def send(
        self, pool: str, method: str, url: str, headers: dict, payload: Any = None, timeout: float | None = None
    ) -> UpstreamReply:
        """One upstream request, its answer left unread (a stream is read as it arrives)."""
        timeout = self.timeout if timeout is None else timeout
        prepared = prepared_request(method, url, headers, payload)
        try:
            response = self._adapter(pool).send(
                prepared, stream=True, timeout=timeout, verify=self._verify, proxies=self._proxies
            )
        except requests.Timeout:
            raise upstream_error(
                f"The upstream did not answer within {timeout:g} s.", status=504, code="upstream_timeout"
            ) from None
        except requests.ConnectionError as exc:
            if _is_protocol_error(exc):
                # Connected, but what came back was no HTTP answer (or the upstream hung up first).
                raise upstream_error(
                    f"The upstream {urlsplit(url).netloc} closed the connection or did not answer in HTTP.",
                    code="upstream_error",
                ) from None
            raise _unreachable(urlsplit(url).netloc, exc) from None
        except requests.RequestException as exc:
            raise _unreachable(urlsplit(url).netloc, exc) from None
        except ValueError:  # http.client refusing a header name or value: the folder's, never shown (a secret)
            raise ApiError(
                f"The request to {urlsplit(url).netloc} could not be sent: a header name or value of the provider "
                "folder is not valid HTTP.",
                status=503,
                type="server_error",
                code="provider_misconfigured",
                retryable=False,
            ) from None
        return UpstreamReply(response, timeout)

    def close(self) -> None:
        for adapter in list(self.adapters.values()):
            adapter.close()

    def _adapter(self, pool: str) -> HTTPAdapter:
        # No cookie jar outlives a response: the service is stateless, and one client's Set-Cookie
        # must never reach the next client's call.
        adapter = self.adapters.get(pool)
        if adapter is None:
            with self._lock:
                adapter = self.adapters.setdefault(pool, HTTPAdapter(pool_connections=4, pool_maxsize=self.pool_size))
        return adapter


def prepared_request(method: str, url: str, headers: dict, payload: Any = None) -> requests.PreparedRequest:
    """The request as requests' transport sends it. ``url`` is already safe to send (built from a
    folder's host and a checked, percent-encoded path) and ``headers`` are checked values."""
    prepared = requests.PreparedRequest()
    prepared.method = method.upper()  # as requests would: a folder may write "get"
    prepared.url = url
    prepared.headers = CaseInsensitiveDict(DEFAULT_HEADERS)
    prepared.headers.update(headers)
    prepared.hooks = {"response": []}
    if payload is not None:
        prepared.body = json_codec.dumps(payload)
        if "Content-Type" not in prepared.headers:
            prepared.headers["Content-Type"] = "application/json"
        prepared.headers["Content-Length"] = str(len(prepared.body))
    elif prepared.method not in BODYLESS_METHODS:
        prepared.headers["Content-Length"] = "0"
    return prepared


class UpstreamReply:
    """An upstream answer: status and headers, then its body read whole (bounded) or as a stream."""

    def __init__(self, response: requests.Response, timeout: float) -> None:
        self._response = response
        self._lock = threading.Lock()
        self._closed = False
        self.timeout = timeout
        self.status = response.status_code
        self.headers = response.headers
        self.content_type = response.headers.get("Content-Type", "")

    def __enter__(self) -> UpstreamReply:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._response.close()

    def set_cookies(self) -> list[str]:
        """Every Set-Cookie header, one per cookie (requests' own view joins them with commas)."""
        raw_headers = getattr(self._response.raw, "headers", None)
        return list(raw_headers.getlist("Set-Cookie")) if hasattr(raw_headers, "getlist") else []

    def abort(self) -> None:
        """Cut the connection now, even while another thread or greenlet is blocked reading it
        (a client that left); a reply already closed, its connection back in the pool, is left alone.

        Only the socket is shut down: the reader, woken by it, closes the reply itself (closing it
        from here, under its feet, is a reentrant call into its buffered reader)."""
        with self._lock:
            if self._closed:
                return
            sock = self._socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _socket(self) -> socket.socket | None:
        """The socket under the answer: the connection's, or, when the upstream said
        ``Connection: close`` (http.client then hands it to the response), the response file's."""
        raw = self._response.raw
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        if sock is None:
            reader = getattr(getattr(raw, "_fp", None), "fp", None)
            sock = getattr(getattr(reader, "raw", None), "_sock", None)
        return sock if isinstance(sock, socket.socket) else None

    def read_text(self, limit: int = ERROR_BODY_BYTES) -> str:
        """At most ``limit`` bytes of a non-stream answer (JSON, an error page), decoded."""
        try:
            raw = self._response.raw.read(limit, decode_content=True)
        except Exception as exc:  # urllib3 errors have no common base; never a 500
            raise self._read_failure(exc) from None
        return raw.decode("utf-8", errors="replace")

    def read_within(self, seconds: float, limit: int) -> bytes:
        """The whole body, unless it takes longer than ``seconds`` or grows past ``limit`` bytes."""
        deadline = time.monotonic() + seconds
        body = bytearray()
        for chunk in self._response.iter_content(READ_CHUNK):
            body += chunk
            if time.monotonic() > deadline or len(body) > limit:
                raise TimeoutError("the answer was too slow or too large")
        return bytes(body)

    def iter_bytes(self) -> Iterator[bytes]:
        """Bytes as they arrive: ``read1`` returns whatever is there, so no event is held back."""
        raw = self._response.raw
        encoded = self.headers.get("Content-Encoding", "").lower() not in ("", "identity")
        # gzip and deflate are undone by urllib3's reader. A plain stream is read from the
        # http.client response under it: urllib3's layers cost microseconds per event and add
        # nothing to a plain body (a failed read is named below, and drops the connection).
        plain = getattr(raw, "_fp", None) if not encoded else None
        if not isinstance(plain, http.client.HTTPResponse):  # a mock's body, or urllib3 changed: its own path
            plain = None
        read = plain.read1 if plain is not None else lambda size: raw.read1(size, decode_content=encoded)
        try:
            while True:
                chunk = read(READ_CHUNK)
                if not chunk:
                    break
                yield chunk
        except Exception as exc:  # urllib3 and http.client raise their own types; name the failure, never a 500
            raise self._read_failure(exc) from None
        if plain is not None:
            if plain.length:  # a Content-Length not reached: the upstream went before the end it announced
                raise self._read_failure(http.client.IncompleteRead(b"", plain.length))
            plain.close()  # read to its end (http.client leaves a full Content-Length body open)
            raw.release_conn()  # so the connection goes back to the pool

    def _read_failure(self, exc: Exception) -> ApiError:
        """A failed read of the answer: 504 when it went silent, else 502."""
        if "timed out" in str(exc).lower() or "timeout" in type(exc).__name__.lower():
            return upstream_error(
                f"The upstream stopped sending for {self.timeout:g} s.", status=504, code="upstream_timeout"
            )
        return upstream_error(
            f"The upstream connection failed mid-reply: {type(exc).__name__}.", code="upstream_disconnected"
        )


def _is_protocol_error(exc: requests.ConnectionError) -> bool:
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # MaxRetryError wraps the real cause
    return isinstance(reason, urllib3.exceptions.ProtocolError)


def _unreachable(host: str, exc: Exception) -> ApiError:
    return upstream_error(
        f"Could not reach the upstream {host}: {type(exc).__name__}{_why_unreachable(exc)}.",
        code="upstream_unreachable",
    )


def _why_unreachable(exc: Exception) -> str:
    """What the causes say, in words a user can act on: DNS, a refused port, TLS, a proxy."""
    causes, seen = [], exc
    while seen is not None and len(causes) < 8:
        causes.append(seen)
        seen = getattr(seen, "reason", None) or seen.__cause__ or seen.__context__
    names = " ".join(type(cause).__name__ for cause in causes) + " " + " ".join(str(c) for c in causes[-1:])
    for marker, words in WHY_UNREACHABLE:
        if marker in names:
            return f" ({words})"
    return ""
