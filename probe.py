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
from keepalive import first_deltas
from pipeline import completion, fresh_account, new_exchange, run_steps
from provider_loader import Provider
from services import RequestScope, Services
from state import StateError

PROMPT = "Reply with the single word OK."
SHOWN_ANSWER = 60
ADVICE = {
    "upstream_credential_missing": "set the variables it names in .env (README: Credentials and accounts).",
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
USAGE = """usage: python app.py check [PROVIDER]

Send one tiny real chat through PROVIDER (a folder name), or through every provider whose
credentials are set, and report what happened. Exit 0 when all answered, 1 when one failed,
2 when PROVIDER does not exist."""


@dataclass
class Outcome:
    """What one provider's check saw."""

    name: str
    lines: list[str] = field(default_factory=list)
    error: ApiError | None = None
    read_stream: bool = False

    def report(self) -> str:
        head = f"{self.name}: {'FAILED' if self.error else 'ok'}"
        return "\n".join([head, *(f"  {line}" for line in self.lines)])


def main(argv: list[str], settings: dict, out: TextIO | None = None) -> int:
    """Check the named provider, or every provider whose credentials are set.

    Exit 0 when every provider checked answered, 1 when one failed (or none could be checked),
    2 when the named provider does not exist.
    """
    out = out or sys.stdout
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE, file=out)
        return 0
    try:
        services = Services(settings)
    except StateError as exc:
        print(f"Cannot open the state store: {exc}", file=out)
        return 1
    scope = services.scope("check")
    if argv:
        return _check_one(services, scope, argv[0], out)
    return _check_all(services, scope, out)


def _check_one(services: Services, scope: RequestScope, name: str, out: TextIO) -> int:
    registry = scope.registry
    if name in registry.errors:
        print(f"{name}: FAILED\n  not loaded: {registry.errors[name]}", file=out)
        return 1
    if name not in registry.providers:
        known = ", ".join(sorted(registry.providers)) or "none"
        print(f"{name}: FAILED\n  no such provider (loaded: {known})", file=out)
        return 2
    outcome = check_provider(services, scope, registry.providers[name])
    print(outcome.report(), file=out)
    return 1 if outcome.error else 0


def _check_all(services: Services, scope: RequestScope, out: TextIO) -> int:
    registry = scope.registry
    for name, why in sorted(registry.errors.items()):
        print(f"{name}: FAILED\n  not loaded: {why}", file=out)
    chosen = []
    for provider in (registry.providers[name] for name in sorted(registry.providers)):
        missing = scope.accounts.accounts(provider, scope.file_values)[0].missing_variables()
        if missing:
            print(f"{provider.name}: skipped (set {', '.join(missing)} to check it)", file=out)
        else:
            chosen.append(provider)
    if not chosen:
        print("No provider has its credentials set: see README: Credentials and accounts.", file=out)
        return 1
    outcomes = [check_provider(services, scope, provider) for provider in chosen]
    for outcome in outcomes:
        print(outcome.report(), file=out, flush=True)
    return 1 if registry.errors or any(o.error for o in outcomes) else 0


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
    if outcome.read_stream:  # drift is only news when a stream was read
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
    # The first account, as a request would use it (refreshed first when its token is about to expire).
    account = fresh_account(scope, scope.accounts.accounts(provider, scope.file_values)[0])
    exchange = new_exchange(scope, provider, request, account)
    run_steps(exchange)
    if exchange.chat_id:
        outcome.lines.append(f"created a chat in {_ms(started)} ms")
    deltas = completion(exchange)
    outcome.read_stream = True
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
