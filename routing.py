"""Which provider answers a request: the explicit ``provider`` field, else the model's name."""

from __future__ import annotations

from collections.abc import Mapping

from converters import ApiError
from model_catalog import ModelCatalog
from provider_loader import Provider, Registry, is_plain_name


def sorted_providers(registry: Registry) -> list[Provider]:
    return [registry.providers[name] for name in sorted(registry.providers)]


def determine_provider(providers: Mapping[str, Provider], model: str) -> Provider | None:
    """Pick the provider for a model: explicit model lists first, then patterns; ties alphabetical."""
    ordered = [providers[name] for name in sorted(providers)]
    for provider in ordered:
        if model in provider.models:
            return provider
    for provider in ordered:
        if provider.matches_pattern(model):
            return provider
    return None


def find_provider(registry: Registry, models: ModelCatalog, model: str) -> Provider | None:
    """The folder's lists and patterns first, then the models the upstreams last listed."""
    found = determine_provider(registry.providers, model)
    return found or models.owner(model, sorted_providers(registry))


def resolve_provider(registry: Registry, models: ModelCatalog, name: str | None, model: str) -> Provider:
    """The explicit provider wins; otherwise the model name decides."""
    if name is None:
        provider = find_provider(registry, models, model)
        if provider is None:
            raise ApiError(
                f'No provider found for model "{model}". Please specify a provider or use a supported model.',
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
