"""What the app keeps between requests, and what one request sees of it (read once per request)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from accounts import AccountBook
from conversations import ConversationBook
from drift import DriftLogs
from model_catalog import ModelCatalog
from pipeline import fetch_model_ids
from provider_loader import Provider, Registry, default_providers_dir, folder_signature, load_providers
from redaction import Redactor
from settings import EnvFile, account_numbers, read_variables
from state import Store, open_store
from upstream import UpstreamClient

RELOAD_CHECK_SECONDS = 1.0
DEFAULT_STATE_FILE = Path(__file__).resolve().with_name("state.sqlite3")

log = logging.getLogger("reverse_api")


@dataclass(frozen=True)
class RequestScope:
    """One request's view of the services: providers, .env values and redactor, each read once."""

    registry: Registry
    file_values: dict[str, str]
    redact: Redactor
    upstream: UpstreamClient
    models: ModelCatalog
    drift: DriftLogs
    accounts: AccountBook
    request_id: str = ""
    conversations: ConversationBook | None = None
    continuation: bool = False  # CONTINUATION=on


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
        self._redactor: tuple[tuple[str, ...] | None, Redactor] = (None, Redactor(()))
        self._signature = folder_signature(self.providers_dir)
        self.registry = self._load()

    def scope(self, request_id: str = "") -> RequestScope:
        """What one request works with; .env is checked once here, not at every step."""
        registry = self.current()
        file_values = self.env.values()
        redact = self._redactor_for(registry, file_values)
        return RequestScope(
            registry,
            file_values,
            redact,
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

    def _redactor_for(self, registry: Registry, file_values: dict[str, str]) -> Redactor:
        """A Redactor for the current values of every provider variable, rebuilt only when they change."""
        names = {name for p in registry.providers.values() for name in _every_account_name(p, file_values)}
        secrets = tuple(sorted(read_variables(names, file_values).values()))
        if self._redactor[0] != secrets:
            self._redactor = (secrets, Redactor(secrets))
        return self._redactor[1]


def _every_account_name(provider: Provider, file_values: dict[str, str]) -> list[str]:
    """The provider's variables under every account's name (QWEN_TOKEN, QWEN_TOKEN_2, ...)."""
    names = provider.variable_names()
    numbers = account_numbers(names, file_values)
    return names + [f"{name}_{n}" for n in numbers for name in names]
