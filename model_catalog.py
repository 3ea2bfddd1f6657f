"""Upstream model lists, cached: a slow or failing upstream never holds ``/v1/models`` up."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import json_codec
from converters import ApiError
from placeholders import fill_headers, fill_url_path
from provider_loader import Provider, ids_from_models_answer, merge_model_ids
from upstream import UpstreamClient
from upstream_requests import request_values, without_refresh_cookies

FAILED_REFRESH_RETRY_SECONDS = 60.0
MODELS_BODY_BYTES = 4 * 1024 * 1024
# Failures whose messages this service wrote itself (no upstream text in them): safe to log whole.
OWN_MESSAGES = (ApiError, ValueError, TimeoutError)

log = logging.getLogger("reverse_api")


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

    def fresh_list(self, provider: Provider) -> list[str] | None:
        """The provider's upstream list when it has one and it is fresh (no upstream call)."""
        ids = self._cached(provider.name)
        return ids if ids and not self._stale(provider) else None

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
            log.warning("models of %s not refreshed: %s", provider.name, _describe(exc))
            ids, ttl = self._cached(provider.name), min(self.ttl, FAILED_REFRESH_RETRY_SECONDS)
        self._cache[provider.name] = (time.monotonic() + ttl, ids)
        with self._lock:
            self._pending.pop(provider.name, None)
        return ids


def _describe(failure: Exception) -> str:
    if isinstance(failure, ApiError):
        return f"{failure.code}: {failure.message}"
    if isinstance(failure, OWN_MESSAGES):
        return f"{type(failure).__name__}: {str(failure)[:200]}"
    return type(failure).__name__


def fetch_model_ids(upstream: UpstreamClient, provider: Provider, environment: dict, timeout: float) -> list[str]:
    """Ask the upstream's declared models endpoint; any failure is the caller's to absorb."""
    endpoint = provider.models_endpoint
    values = request_values(environment, "", "", time.time())
    # No chat exists here: headers naming one (Referer .../c/${chat_id}) are left out.
    headers = fill_headers(provider.request.headers, values, provider.optional_variables | {"chat_id"})
    headers = without_refresh_cookies(provider, headers)
    url = provider.base_url + fill_url_path(endpoint["path"], values)
    with upstream.send(provider.name, endpoint["method"], url, headers, timeout=timeout) as reply:
        if 300 <= reply.status < 400:
            raise ValueError(f"the models endpoint answered HTTP {reply.status}, a redirect, which is not followed")
        if reply.status >= 400:
            raise ValueError(f"the models endpoint answered HTTP {reply.status}")
        return ids_from_models_answer(json_codec.loads(reply.read_within(timeout, MODELS_BODY_BYTES)), endpoint)
