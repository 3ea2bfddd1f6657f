"""The status page a browser gets at ``GET /``: providers, accounts and errors, from /health's report.

One renderer only: the page's script polls /health and, when something changed, asks for this page
again and swaps its ``<main>``; it only counts token expiries down itself. Everything shown comes
from the report (names and states, never a value), and every piece of it is escaped.
"""

from __future__ import annotations

import math
import time
from html import escape
from typing import Any

# Shown in their own columns; any other scalar an account gains later goes to "other".
ACCOUNT_COLUMNS = (
    "id",
    "state",
    "access_expires_in",
    "cooldown_until",
    "reason",
    "in_flight",
    "last_refresh",
    "token_check",
)
# What /health's token_check says, in words a newcomer reads.
TOKEN_CHECKS = {
    "ok": "looks fine",
    "not_a_jwt": "not a JWT: check the value pasted (the whole token after 'Bearer ')",
    "expired": "expired, and nothing can renew it: capture it again (with its refresh token)",
}
REFRESH_SECONDS = 3
NOTHING = "—"

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em}h2{font-size:1.1em;margin:0 0 .4em}
section{border:1px solid #ccc;border-radius:6px;padding:.8em;margin:.8em 0}
table{border-collapse:collapse}td,th{border-bottom:1px solid #eee;padding:.2em .6em;text-align:left}
.ok{color:#17702a}.expiring{color:#a36b00}.cooling_down,.degraded{color:#b34700}
.needs_recapture,.error,.not_loaded{color:#b00020}.muted{color:#777}
"""

# Volatile fields (expiries tick every second) are left out of the comparison: the page counts them
# down itself, so only a real change (a state, a cooldown, an error) asks for the page again. The
# first poll always does: the state may have changed between this page's rendering and it.
SCRIPT = """
const pad = n => String(n).padStart(2, "0");
function shown(s) {
  if (s <= 0) return "expired";
  const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), r = s % 60;
  return h ? `${h} h ${pad(m)} min ${pad(r)} s` : m ? `${m} min ${pad(r)} s` : `${r} s`;
}
function arm() {
  for (const c of document.querySelectorAll("[data-expires-in]"))
    c.dataset.deadline = Date.now() + 1000 * Number(c.dataset.expiresIn);
  tick();
}
function tick() {
  for (const c of document.querySelectorAll("[data-deadline]"))
    c.textContent = shown(Math.round((Number(c.dataset.deadline) - Date.now()) / 1000));
}
const steady = text => JSON.stringify(JSON.parse(text), (k, v) => k === "access_expires_in" ? undefined : v);
let last = null;
async function poll() {
  const live = document.getElementById("live");
  try {
    const now = steady(await (await fetch("/health", {cache: "no-store"})).text());
    if (now !== last) {
      const page = await (await fetch("/", {headers: {Accept: "text/html"}, cache: "no-store"})).text();
      const fresh = new DOMParser().parseFromString(page, "text/html").querySelector("main");
      document.querySelector("main").innerHTML = fresh.innerHTML;
      arm();
    }
    last = now;
    live.textContent = "live: checked /health at " + new Date().toLocaleTimeString();
  } catch (e) {
    live.textContent = "cannot reach /health (" + e + "); showing what it said last";
  }
}
arm();
poll();
setInterval(tick, 1000);
setInterval(poll, REFRESH_MS);
"""


def render(report: dict) -> str:
    """The whole page for one /health report."""
    script = SCRIPT.replace("REFRESH_MS", str(REFRESH_SECONDS * 1000))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>reverse API status</title><style>{STYLE}</style></head>\n<body>"
        f"<h1>reverse API status</h1>\n<main>{render_main(report)}</main>\n"
        f'<p id="live" class="muted">refreshed from /health every {REFRESH_SECONDS} s</p>'
        f"<script>{script}</script></body></html>\n"
    )


def render_main(report: dict) -> str:
    """What the script swaps on a change: the overall status, then one block per provider."""
    report = _mapping(report)
    providers = _mapping(report.get("providers"))
    blocks = [_provider(str(name), _mapping(info)) for name, info in providers.items()]
    return _overall(report) + ("".join(blocks) or '<p class="muted">No provider folder was found.</p>')


def _overall(report: dict) -> str:
    status = str(report.get("status", "unknown"))
    html = f'<p id="status">Overall: <strong class="{_css(status)}" data-status="{escape(status)}">'
    html += f"{escape(status)}</strong></p>"
    if report.get("state_store_error"):
        html += f'<p class="error" id="state-store-error">{_text(report["state_store_error"])}</p>'
    return html


def _provider(name: str, info: dict) -> str:
    """A loaded provider's credentials, accounts, last error and drift; or why it did not load."""
    head = f'<section data-provider="{escape(name)}"><h2>{escape(name)} '
    if not info.get("loaded"):
        reason = _text(info.get("error", "no reason given"))
        return head + f'<span class="not_loaded">did not load</span></h2><p class="error">{reason}</p></section>'
    parts = [head + '<span class="ok">loaded</span></h2>']
    if info.get("reload_error"):
        parts.append(
            f'<p class="error">Serving its last good version; the reload failed: {_text(info["reload_error"])}</p>'
        )
    missing = [str(n) for n in info.get("missing_variables") or []]
    if missing:  # not configured: no error unless it is wanted (then README "Credentials and accounts")
        parts.append(f'<p class="muted">Not configured: set {escape(", ".join(missing))} to use it.</p>')
    elif info.get("credentials_set"):
        parts.append('<p class="muted">Credentials set.</p>')
    accounts = [_mapping(a) for a in info.get("accounts") or []]
    parts += [_accounts_table(name, accounts), _last_error(info.get("last_error")), _drift(info.get("drift"))]
    return "".join(parts) + "</section>"


def _accounts_table(provider: str, accounts: list[dict]) -> str:
    if not accounts:
        return '<p class="muted">No account has a token.</p>'
    head = "".join(f"<th>{h}</th>" for h in ("account", "state", "token expires in", "token", "cooldown"))
    head += "<th>in flight</th><th>last refresh</th><th>other</th>"
    rows = "".join(_account_row(provider, account) for account in accounts)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _account_row(provider: str, account: dict) -> str:
    """One account; its row carries provider, id and state as attributes for tests and scripts."""
    account_id, state = str(account.get("id", "?")), str(account.get("state", "unknown"))
    attributes = f'data-provider="{escape(provider)}" data-account="{escape(account_id)}" data-state="{escape(state)}"'
    cells = [
        escape(account_id),
        f'<span class="{_css(state)}">{escape(state)}</span>',
        _expiry(account.get("access_expires_in")),
        _token_check(account.get("token_check")),
        _cooldown(account.get("cooldown_until"), account.get("reason")),
        _text(account.get("in_flight", 0)),
        _last_refresh(account.get("last_refresh")),
        _others(account),
    ]
    return f'<tr class="account" {attributes}>' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _expiry(seconds: Any) -> str:
    """A countdown the script keeps ticking; a token with no readable expiry shows a dash."""
    if not _is_number(seconds):
        return NOTHING
    return f'<span class="expiry" data-expires-in="{int(seconds)}">{escape(_duration(int(seconds)))}</span>'


def _duration(seconds: int) -> str:
    """The same words as the script's, so the page reads the same before the script runs."""
    if seconds <= 0:
        return "expired"
    hours, minutes, rest = seconds // 3600, seconds % 3600 // 60, seconds % 60
    if hours:
        return f"{hours} h {minutes:02d} min {rest:02d} s"
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def _cooldown(until: Any, reason: Any) -> str:
    if not until:
        return NOTHING
    return f"until {_when(until)}" + (f" ({_text(reason)})" if reason else "")


def _last_refresh(value: Any) -> str:
    """The store keeps ``{at, outcome}``; a bare time or anything else is shown as it is."""
    if isinstance(value, dict):
        return f"{_when(value.get('at'))} ({_text(value.get('outcome', '?'))})"
    return _when(value) if value else NOTHING


def _token_check(check: Any) -> str:
    if check is None:
        return NOTHING
    words = TOKEN_CHECKS.get(str(check), str(check))
    css = "muted" if check == "ok" else "error"
    return f'<span class="{css}" data-token-check="{escape(str(check))}">{escape(words)}</span>'


def _others(account: dict) -> str:
    """Scalar fields this page does not know yet (a later check's state), by name."""
    extra = [(k, v) for k, v in account.items() if k not in ACCOUNT_COLUMNS and _is_scalar(v)]
    return "<br>".join(f"{escape(str(k))}: {_text(v)}" for k, v in extra) or NOTHING


def _last_error(error: Any) -> str:
    if not isinstance(error, dict):
        return '<p class="muted">Last error: none since start.</p>'
    code, status, at = _text(error.get("code", "?")), _text(error.get("status", "?")), _when(error.get("at"))
    return f'<p class="last-error">Last error: <span class="error">{code}</span> (HTTP {status}) at {at}</p>'


def _drift(drift: Any) -> str:
    """Counts per kind of unrecognised stream shape, and the last one met (names only)."""
    drift = _mapping(drift)
    counts = _mapping(drift.get("counts"))
    shown = ", ".join(
        f'<span data-drift="{escape(str(k))}">{escape(str(k))}: {_text(n)}</span>' for k, n in counts.items()
    )
    html = f'<p class="drift">Drift: {shown or "none counted"}</p>'
    last = drift.get("last")
    if isinstance(last, dict):
        pairs = ", ".join(f"{escape(str(k))}={_text(v)}" for k, v in last.items() if k != "at")
        html += f'<p class="drift muted">Last drift: {pairs} at {_when(last.get("at"))}</p>'
    return html


def _when(epoch: Any) -> str:
    """A store's epoch seconds as UTC; anything else is shown escaped, never trusted."""
    if not _is_number(epoch):
        return _text(epoch) if epoch is not None else NOTHING
    try:
        return escape(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch)))
    except (OverflowError, OSError):
        return escape(str(epoch))


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return escape(", ".join(map(str, value)) if isinstance(value, list) else str(value))


def _css(state: str) -> str:
    """A class from a state name: only letters and "_" survive, so no value can break out."""
    return "".join(c for c in state if c.isalpha() or c == "_")


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _is_number(value: Any) -> bool:
    """A real, finite number: a bool, NaN or infinity is shown as text, never computed with."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float))
