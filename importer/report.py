"""What an import tells its user once the folder is written: which models the folder answers
(and which another folder keeps, or loses to it), and the request that tries it."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from provider_loader import Provider, determine_provider, load_providers
from settings import EnvFile, lookup


def import_report(name: str, providers_dir: Path, env_file: Path) -> tuple[list[str], str]:
    """(lines about shadowing, the next step) for the folder ``name`` as the service will load it."""
    registry = load_providers(providers_dir)
    provider = registry.providers.get(name)
    if provider is None:
        reason = registry.errors.get(name, "it did not load")
        return [], f"Next: the folder does not load yet ({reason}); fix it, then GET /health shows it."
    others = {other: p for other, p in registry.providers.items() if other != name}
    return shadowing_lines(provider, others), next_step(provider, others, env_file)


def shadowing_lines(provider: Provider, others: dict[str, Provider]) -> list[str]:
    """Models another folder keeps answering, and models this folder now takes from another."""
    everyone = {**others, provider.name: provider}
    lines = []
    for model in provider.models:
        owner = determine_provider(everyone, model)
        if owner is not None and owner.name != provider.name:
            lines.append(
                f'Model "{model}" is still answered by folder {owner.name} (it lists or matches it first): '
                f'send "provider": "{provider.name}" to use this one.'
            )
    taken = [
        (model, before.name)
        for model in dict.fromkeys(m for other in others.values() for m in other.models)
        if (before := determine_provider(others, model)) is not None and determine_provider(everyone, model) is provider
    ]
    for model, before in taken:
        lines.append(
            f'Folder {provider.name} now answers "{model}", which {before} answered before: '
            f'send "provider": "{before}" to keep using {before}.'
        )
    return lines


def next_step(provider: Provider, others: dict[str, Provider], env_file: Path) -> str:
    """The model to ask for, the provider field, and a curl line that tries the folder now."""
    everyone = {**others, provider.name: provider}
    owned = [m for m in provider.models if determine_provider(everyone, m) is provider]
    model = (owned or provider.models or [_pattern_example(provider)])[0]
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}]}
    if not owned:  # no model of its own reaches it by name: the provider field does
        body["provider"] = provider.name
    via = f'model "{model}"' if owned else f'"provider": "{provider.name}" (with model "{model}")'
    return (
        f"Next: start the service (python app.py) and ask for {via}; any request may also send "
        f'"provider": "{provider.name}" to choose this folder. Try it:\n'
        f"  curl {_base_url(env_file)}/v1/chat/completions -H 'Content-Type: application/json' "
        f"-d {shlex.quote(json.dumps(body))}\n"
        "Then delete the capture file: it holds your session."
    )


def _pattern_example(provider: Provider) -> str:
    pattern = provider.patterns[0] if provider.patterns else provider.name
    return pattern.replace("*", "").strip("?[]") or provider.name


def _base_url(env_file: Path) -> str:
    """Where ``python app.py`` listens with this .env (HOST and PORT as the service reads them)."""
    values = EnvFile(env_file).values()
    host = lookup("HOST", values) or "127.0.0.1"
    port = lookup("PORT", values) or "5000"
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # listening everywhere: loopback reaches it
    return f"http://{f'[{shown}]' if ':' in shown else shown}:{port}"
