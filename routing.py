"""Which provider answers a request: the explicit ``provider`` field, else the model's name."""

from __future__ import annotations

import difflib

from converters import ApiError
from model_catalog import ModelCatalog
from provider_loader import THINKING_SUFFIX, Provider, Registry, determine_provider, is_plain_name


def sorted_providers(registry: Registry) -> list[Provider]:
    return [registry.providers[name] for name in sorted(registry.providers)]


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
        check_model_known(models, provider, model)
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


def check_model_known(models: ModelCatalog, provider: Provider, model: str) -> None:
    """A model only a pattern matched, which the provider's fresh upstream list does not hold, is
    a 404 naming the closest ids, not a request sent upstream for a model nobody has (a typo)."""
    listed = models.fresh_list(provider)
    if model in provider.models or listed is None or model in listed:
        return
    known = list(dict.fromkeys([*provider.models, *listed]))
    if model.removesuffix(THINKING_SUFFIX) in known:  # a thinking variant the list did not spell out
        return
    close = difflib.get_close_matches(model, known, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(m) for m in close)}?" if close else ""
    raise ApiError(
        f"The model '{model}' does not exist at provider \"{provider.name}\" (its upstream lists {len(listed)} "
        f"ids; GET /v1/models shows them).{hint}",
        status=404,
        param="model",
        code="model_not_found",
    )
