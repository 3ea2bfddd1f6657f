"""``python app.py check [PROVIDER]``: one tiny real chat through each configured provider, reported.

No server is needed: the check runs the same pipeline a request does, and says per provider what
happened, what it did not recognise, and what to do about an error. Exit 1 when a provider fails.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from converters import ApiError, ChatRequest, ContentPart, Delta, Message
from pipeline import STEPS_BEFORE_COMPLETION, completion, first_deltas, new_exchange
from provider_loader import Provider
from services import RequestScope, Services

PROMPT = "Reply with the single word OK."
SHOWN_ANSWER = 60
ADVICE = {
    "upstream_credential_missing": "set the variables it names in .env (README: Capturing credentials).",
    "upstream_credential_rejected": "capture a fresh token from a logged-in browser and put it in .env.",
    "upstream_browser_check": "open the site in a browser, pass the check, then capture fresh headers.",
    "rate_limit_exceeded": "wait (Retry-After says how long) or use another account.",
    "insufficient_quota": "the account's quota is used up: wait for it to reset, or use another account.",
    "upstream_unreachable": "check the network, and the host and scheme in metadata.json.",
    "upstream_timeout": "the upstream is slow or down: try again later, or raise UPSTREAM_TIMEOUT.",
    "upstream_truncated": "try again; if it keeps happening, the upstream's format may have changed.",
    "upstream_error": "compare a fresh browser capture with the folder: the upstream may have changed.",
    "provider_misconfigured": "fix the value in .env: a header value must be one line.",
    "invalid_value": "fix the value in .env: it holds characters a URL or header cannot carry.",
}
DEFAULT_ADVICE = "see README: Troubleshooting."


@dataclass
class Outcome:
    """What one provider's check saw."""

    name: str
    lines: list[str] = field(default_factory=list)
    error: ApiError | None = None

    def report(self) -> str:
        head = f"{self.name}: {'FAILED' if self.error else 'ok'}"
        return "\n".join([head, *(f"  {line}" for line in self.lines)])


def main(argv: list[str], settings: dict, out: TextIO | None = None) -> int:
    """Check the named provider, or every provider whose credentials are set."""
    out = out or sys.stdout
    services = Services(settings)
    scope = services.scope("check")
    registry = scope.registry
    if argv and argv[0] not in registry.providers:
        known = ", ".join(sorted(registry.providers)) or "none"
        reason = registry.errors.get(argv[0], f"no such provider (loaded: {known})")
        print(f"{argv[0]}: FAILED\n  {reason}", file=out)
        return 2 if argv[0] not in registry.errors else 1
    broken = [] if argv else [f"{name}: FAILED\n  not loaded: {why}" for name, why in sorted(registry.errors.items())]
    chosen = [registry.providers[argv[0]]] if argv else _configured(scope)
    for line in broken:
        print(line, file=out)
    if not chosen and not broken:
        print("No provider has its credentials set: see README: Capturing credentials.", file=out)
        return 1
    outcomes = [check_provider(services, scope, provider) for provider in chosen]
    for outcome in outcomes:
        print(outcome.report(), file=out, flush=True)
    return 1 if broken or any(o.error for o in outcomes) else 0


def _configured(scope: RequestScope) -> list[Provider]:
    providers = [scope.registry.providers[name] for name in sorted(scope.registry.providers)]
    return [p for p in providers if set(p.required_variables()) <= set(scope.variables(p))]


def check_provider(services: Services, scope: RequestScope, provider: Provider) -> Outcome:
    outcome = Outcome(provider.name)
    drift_before = scope.drift.snapshot(provider.name)["counts"]
    try:
        model = _model_for(services, provider)
        outcome.lines.append(f"model: {model}")
        _chat(scope, provider, model, outcome)
    except ApiError as error:
        outcome.error = error
        outcome.lines.append(f"error {error.status} {error.code}: {scope.redact(error.message)}")
        outcome.lines.append(f"what to do: {ADVICE.get(error.code or '', DEFAULT_ADVICE)}")
    outcome.lines.append(_drift_line(scope.drift.snapshot(provider.name), drift_before))
    return outcome


def _model_for(services: Services, provider: Provider) -> str:
    if provider.models:
        return provider.models[0]
    try:
        listed = services.fetch_model_ids(provider) if provider.models_endpoint else []
    except Exception:  # the reason is of no help here: the folder should name a model
        listed = []
    if not listed:
        raise ApiError(f'Provider "{provider.name}" lists no model to check with.', code="no_model")
    return listed[0]


def _chat(scope: RequestScope, provider: Provider, model: str, outcome: Outcome) -> None:
    request = probe_request(model)
    started = time.monotonic()
    exchange = new_exchange(scope, provider, request)
    for step in STEPS_BEFORE_COMPLETION:
        step(exchange)
    if exchange.chat_id:
        outcome.lines.append(f"created a chat in {_ms(started)} ms")
    deltas = completion(exchange)
    try:
        first = first_deltas(deltas)
        outcome.lines.append(f"first delta after {_ms(started)} ms")
        _summarise([*first, *deltas], outcome)
    finally:
        deltas.close()


def probe_request(model: str) -> ChatRequest:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    message = Message("user", (ContentPart("text", PROMPT),))
    return ChatRequest(model=model, messages=(message,), stream=True, passthrough=body)


def _summarise(deltas: list[Delta], outcome: Outcome) -> None:
    answer = "".join(d.content for d in deltas)
    reasoning = "".join(d.reasoning for d in deltas)
    usage = next((d.usage for d in deltas if d.usage is not None), None) or {}
    shown = answer if len(answer) <= SHOWN_ANSWER else answer[:SHOWN_ANSWER] + "..."
    outcome.lines.append(f"answer: {len(answer)} characters {shown!r}; reasoning: {len(reasoning)} characters")
    outcome.lines.append(
        f"usage: {usage.get('prompt_tokens', 0)} prompt + {usage.get('completion_tokens', 0)} completion tokens"
    )
    if not answer:
        outcome.error = ApiError("The reply had no content.", code="upstream_error")
        outcome.lines.append(f"what to do: {ADVICE['upstream_error']}")


def _drift_line(after: dict, before: dict) -> str:
    new = {kind: after["counts"][kind] - before.get(kind, 0) for kind in after["counts"]}
    seen = {kind: count for kind, count in new.items() if count}
    if not seen:
        return "nothing unrecognised"
    counts = ", ".join(f"{kind} x{count}" for kind, count in seen.items())
    last = {k: v for k, v in (after["last"] or {}).items() if k != "at"}
    return f"unrecognised: {counts}; last: {last}"


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
