"""Upstream model lists, cached: a slow or failing upstream never holds ``/v1/models`` up."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from converters import ApiError
from provider_loader import Provider, merge_model_ids

FAILED_REFRESH_RETRY_SECONDS = 60.0
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
