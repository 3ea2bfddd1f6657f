"""What the app keeps between requests, and what one request sees of it (read once per request)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from accounts import AccountBook
from conversations import ConversationBook
from drift import DriftLogs
from model_catalog import ModelCatalog, fetch_model_ids
from provider_loader import Provider, Registry, default_providers_dir, folder_signature, load_providers
from redaction import Redactor
from settings import EnvFile, account_numbers, read_variables
from state import Store, open_store
from upstream import UpstreamClient

RELOAD_CHECK_SECONDS = 1.0
MAX_REDACTORS = 64
DEFAULT_STATE_FILE = Path(__file__).resolve().with_name("state.sqlite3")

log = logging.getLogger("reverse_api")


@dataclass(frozen=True)
class RequestScope:
    """One request's view of the services: providers, .env values and redactor, each read once."""

    registry: Registry
    file_values: dict[str, str]
    redactors: Callable[[Provider | None, tuple[str, ...]], Redactor]
    upstream: UpstreamClient
    models: ModelCatalog
    drift: DriftLogs
    accounts: AccountBook
    request_id: str = ""
    conversations: ConversationBook | None = None
    continuation: bool = False  # CONTINUATION=on

    @cached_property
    def redact(self) -> Redactor:
        """Every provider's secrets blanked: for text that may quote any of them (an error)."""
        return self.redactors(None, ())

    def redact_for(self, provider: Provider, rotated: tuple[str, ...] = ()) -> Redactor:
        """One provider's secrets blanked (and an account's ``rotated`` values, which only the
        store holds): what its upstream's frames pass through, so the cost per frame does not
        grow with the secrets of every other provider."""
        return self.redactors(provider, rotated)


class Services:
    """Providers (re-read when their folders change), the upstream client, .env and model lists."""

    def __init__(self, config: dict, store: Store | None = None) -> None:
        self.store = store or open_store(config["STATE_URL"], config["STATE_SECRET"], DEFAULT_STATE_FILE)
        self.accounts = AccountBook(self.store, config)
        self.conversations = ConversationBook(self.store, config["CONVERSATION_TTL_SECONDS"])
        self.continuation = config["CONTINUATION"] == "on"
        self.providers_dir = Path(config["PROVIDERS_DIR"] or default_providers_dir())
        self.env = EnvFile(config["ENV_FILE"])
        self.upstream = UpstreamClient(config["POOL_SIZE"], config["UPSTREAM_TIMEOUT"])
        self.models = ModelCatalog(config["MODELS_CACHE_SECONDS"], config["MODELS_REFRESH_TIMEOUT"])
        self.models_timeout = config["MODELS_REFRESH_TIMEOUT"]
        self.drift = DriftLogs()  # per process: each worker counts what it parsed
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._redactors = Redactors()
        self._signature = folder_signature(self.providers_dir)
        self.registry = self._load()

    def scope(self, request_id: str = "") -> RequestScope:
        """What one request works with; .env is checked once here, not at every step."""
        registry = self.current()
        file_values = self.env.values()
        return RequestScope(
            registry,
            file_values,
            lambda provider, rotated: self._redactors.of(registry, file_values, provider, rotated),
            self.upstream,
            self.models,
            self.drift,
            self.accounts,
            request_id,
            self.conversations,
            self.continuation,
        )

    def current(self) -> Registry:
        """The providers, re-read when a folder changed (checked at most once a second)."""
        now = time.monotonic()
        if now < self._next_check:
            return self.registry
        with self._lock:
            self._next_check = now + RELOAD_CHECK_SECONDS
            signature = folder_signature(self.providers_dir)
            if signature != self._signature:
                # A folder caught mid-write reads as broken: requests keep its last good version.
                self._signature, self.registry = signature, self._load().keeping(self.registry)
                log.info("provider folders changed: loaded %s", ", ".join(sorted(self.registry.providers)) or "none")
        return self.registry

    def variables(self, names: list[str]) -> dict[str, str]:
        """The named variables: the real environment wins over .env (re-read when it changes)."""
        return read_variables(names, self.env.values())

    def fetch_model_ids(self, provider: Provider) -> list[str]:
        """The upstream's model list (runs outside any request, in the catalog's threads)."""
        first = self.accounts.accounts(provider, self.env.values())[0]  # its latest values, rotated or not
        return fetch_model_ids(self.upstream, provider, first.values, self.models_timeout)

    def _load(self) -> Registry:
        registry = load_providers(self.providers_dir)
        for name, reason in registry.errors.items():
            log.error("provider %s not loaded: %s (its last good version, if any, stays in use)", name, reason)
        return registry


class Redactors:
    """Redactors for the variables' current values: one per provider, and one for them all.

    Made on first use and kept while the providers and .env stay the same objects (both are
    replaced when they change, never changed in place), so a request builds none. The real
    environment is the one the process started with.
    """

    def __init__(self) -> None:
        # One tuple, replaced whole: a thread never sees a new basis with the old redactors.
        self._state: tuple[Registry | None, dict | None, dict[str | None, Redactor]] = (None, None, {})

    def of(
        self, registry: Registry, file_values: dict[str, str], provider: Provider | None, rotated: tuple[str, ...]
    ) -> Redactor:
        known_registry, known_values, made = self._state
        # Rotated values change at each refresh: past a few dozen kept, start again.
        if known_registry is not registry or known_values is not file_values or len(made) > MAX_REDACTORS:
            made = {}
            self._state = (registry, file_values, made)
        key = (provider.name if provider else None, rotated)
        found = made.get(key)
        if found is None:
            providers = [provider] if provider else registry.providers.values()
            names = {name for p in providers for name in _every_account_name(p, file_values)}
            found = Redactor(read_variables(names, file_values).values())
            found = made[key] = found.with_secrets(rotated) if rotated else found
        return found


def _every_account_name(provider: Provider, file_values: dict[str, str]) -> list[str]:
    """The provider's variables under every account's name (QWEN_TOKEN, QWEN_TOKEN_2, ...)."""
    names = provider.variable_names()
    numbers = account_numbers(names, file_values)
    return names + [f"{name}_{n}" for n in numbers for name in names]
