"""The status page at ``GET /``: what render() shows of a /health report, how the app serves it
beside the JSON index, and the page itself in a real headless chromium, updating as states change."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time
import urllib.parse

import pytest

import status_page
from app import create_app
from tests.conftest import TOKEN
from tests.fake_qwen import ServerThread

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the browser tests say so below (and fail on CI)
    webdriver = None

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
NOW = 1_700_000_000


def account(**changes) -> dict:
    """An account as AccountBook._health_of reports it."""
    base = {
        "id": "1",
        "state": "ok",
        "access_expires_in": None,
        "refreshable": False,
        "last_refresh": None,
        "cooldown_until": None,
        "reason": None,
        "in_flight": 0,
    }
    return {**base, **changes}


def loaded(*accounts, **changes) -> dict:
    base = {
        "loaded": True,
        "credentials_set": True,
        "missing_variables": [],
        "accounts": list(accounts),
        "drift": {"counts": {"unknown_phase": 0, "unknown_key": 0}, "last": None},
        "last_error": None,
    }
    return {**base, **changes}


def row(html: str, provider: str, account_id: str) -> str:
    """The <tr> of one account."""
    found = re.search(rf'<tr class="account" data-provider="{provider}" data-account="{account_id}".*?</tr>', html)
    assert found, f"no row for {provider} account {account_id}"
    return found.group(0)


def main_of(html: str) -> str:
    return html.split("<main>", 1)[1].split("</main>", 1)[0]


# --- render() ------------------------------------------------------------------------------


def test_a_page_is_a_whole_html_document_with_nothing_external():
    html = status_page.render({"status": "ok", "providers": {"qwen": loaded(account())}})
    assert html.startswith("<!DOCTYPE html>")
    assert html.count("<main>") == html.count("</main>") == 1
    assert "<style>" in html and "<script>" in html
    assert not re.search(r"""(src|href)=|@import|https?://""", html), "the page loads nothing from elsewhere"


def test_loaded_and_unloaded_providers_each_get_a_block():
    report = {
        "status": "degraded",
        "providers": {"qwen": loaded(account()), "broken": {"loaded": False, "error": "metadata.json: no host"}},
    }
    html = status_page.render(report)
    assert 'data-provider="qwen"' in html and 'data-provider="broken"' in html
    assert "did not load" in html and "metadata.json: no host" in html
    assert 'data-status="degraded"' in html


@pytest.mark.parametrize("state", ["ok", "expiring", "cooling_down", "needs_recapture", "some_later_state"])
def test_each_account_state_is_shown_on_its_row(state):
    html = status_page.render({"providers": {"qwen": loaded(account(id="2", state=state))}})
    shown = row(html, "qwen", "2")
    assert f'data-state="{state}"' in shown
    assert f">{state}</span>" in shown


def test_a_token_expiry_is_a_countdown_the_script_keeps_ticking():
    html = status_page.render({"providers": {"qwen": loaded(account(access_expires_in=843))}})
    shown = row(html, "qwen", "1")
    assert 'data-expires-in="843"' in shown
    assert "14 min 03 s" in shown  # what it reads before the script runs


@pytest.mark.parametrize(
    ("seconds", "text"), [(5, "5 s"), (60, "1 min 00 s"), (3725, "1 h 02 min 05 s"), (0, "expired"), (-30, "expired")]
)
def test_countdown_words(seconds, text):
    html = status_page.render({"providers": {"qwen": loaded(account(access_expires_in=seconds))}})
    assert f">{text}</span>" in row(html, "qwen", "1")


def test_a_token_without_an_expiry_has_no_countdown():
    html = status_page.render({"providers": {"qwen": loaded(account(access_expires_in=None))}})
    assert "data-expires-in" not in main_of(html)
    assert "<td>—</td>" in row(html, "qwen", "1")


def test_a_cooldown_shows_until_when_and_why():
    html = status_page.render(
        {"providers": {"qwen": loaded(account(state="cooling_down", cooldown_until=NOW, reason="rate_limited"))}}
    )
    shown = row(html, "qwen", "1")
    assert "until 2023-11-14 22:13:20 UTC (rate_limited)" in shown


def test_in_flight_and_last_refresh_are_shown():
    refreshed = account(in_flight=3, refreshable=True, last_refresh={"at": NOW, "outcome": "invalid_grant"})
    shown = row(status_page.render({"providers": {"qwen": loaded(refreshed)}}), "qwen", "1")
    assert "<td>3</td>" in shown
    assert "2023-11-14 22:13:20 UTC (invalid_grant)" in shown


def test_missing_variables_are_named():
    info = loaded(credentials_set=False, missing_variables=["QWEN_TOKEN", "QWEN_COOKIE"])
    html = status_page.render({"status": "degraded", "providers": {"qwen": info}})
    assert "Not configured: set QWEN_TOKEN, QWEN_COOKIE to use it." in html
    assert "No account has a token." in html


@pytest.mark.parametrize(("check", "words"), [("not_a_jwt", "not a JWT"), ("expired", "capture it again")])
def test_a_token_check_is_said_in_words(check, words):
    shown = row(status_page.render({"providers": {"qwen": loaded(account(token_check=check))}}), "qwen", "1")
    assert words in shown and f'data-token-check="{check}"' in shown


def test_the_last_error_shows_its_code_status_and_time():
    info = loaded(account(), last_error={"code": "upstream_rate_limited", "status": 429, "at": NOW})
    html = status_page.render({"providers": {"qwen": info}})
    assert "upstream_rate_limited" in html and "(HTTP 429)" in html and "2023-11-14 22:13:20 UTC" in html


def test_drift_counts_and_the_last_drift_are_shown():
    drift = {
        "counts": {"unknown_phase": 2, "unknown_key": 0},
        "last": {"kind": "unknown_phase", "phase": "think", "at": NOW},
    }
    html = status_page.render({"providers": {"qwen": loaded(account(), drift=drift)}})
    assert '<span data-drift="unknown_phase">unknown_phase: 2</span>' in html
    assert '<span data-drift="unknown_key">unknown_key: 0</span>' in html
    assert "kind=unknown_phase, phase=think" in html


def test_a_state_store_error_and_a_reload_error_are_shown():
    report = {
        "status": "degraded",
        "state_store_error": "The state store is unavailable: connection refused",
        "providers": {"qwen": loaded(account(), reload_error="payload.json: not JSON")},
    }
    html = status_page.render(report)
    assert "The state store is unavailable: connection refused" in html
    assert "the reload failed: payload.json: not JSON" in html


def test_unknown_scalar_account_fields_are_shown_by_name_and_others_ignored():
    extra = account(token_state="rejected", checked_at=NOW, nested={"secret": "x"}, listed=[1, 2])
    shown = row(status_page.render({"providers": {"qwen": loaded(extra)}}), "qwen", "1")
    assert "token_state: rejected" in shown and f"checked_at: {NOW}" in shown
    assert "nested" not in shown and "listed" not in shown


@pytest.mark.parametrize(
    "report",
    [
        {},
        {"providers": None},
        {"providers": {"qwen": None}},
        {"providers": {"qwen": loaded("not an account", {"id": None}, account(access_expires_in=float("nan")))}},
        {
            "providers": {
                "qwen": loaded(account(cooldown_until=1e300, last_refresh="yesterday"), drift=[], last_error=7)
            }
        },
    ],
)
def test_odd_reports_still_render(report):
    html = status_page.render(report)
    assert "<main>" in html and "</main>" in html


HOSTILE = '<script>window.pwned=1</script>"><img src=x onerror=alert(1)>'


def test_every_value_is_escaped():
    report = {
        "status": HOSTILE,
        "state_store_error": HOSTILE,
        "providers": {
            HOSTILE: loaded(
                account(id=HOSTILE, state=HOSTILE, reason=HOSTILE, cooldown_until=HOSTILE, **{HOSTILE: HOSTILE}),
                missing_variables=[HOSTILE],
                reload_error=HOSTILE,
                last_error={"code": HOSTILE, "status": HOSTILE, "at": HOSTILE},
                drift={"counts": {HOSTILE: HOSTILE}, "last": {"kind": HOSTILE}},
            ),
            "broken": {"loaded": False, "error": HOSTILE},
        },
    }
    html = status_page.render(report)
    assert html.count("<script>") == 1  # the page's own
    assert "<img" not in html and "onerror=alert(1)&gt;" in html
    assert "&quot;&gt;&lt;img" in html  # no quote left to end an attribute with
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in html


def test_nothing_but_the_report_is_shown():
    """No secret can appear: the page shows the report's names and states, and holds no token."""
    report = {"status": "ok", "providers": {"qwen": loaded(account(access_expires_in=100))}}
    html = main_of(status_page.render(report))
    assert TOKEN not in html and "Bearer" not in html


# --- the app: browsers get the page, clients the JSON index ----------------------------------


def test_a_browser_gets_the_status_page(client):
    reply = client.get("/", headers={"Accept": BROWSER_ACCEPT})
    assert reply.status_code == 200
    assert reply.mimetype == "text/html"
    html = reply.get_data(as_text=True)
    assert 'data-provider="qwen"' in html
    assert 'data-account="1" data-state="ok"' in html
    assert TOKEN not in html


@pytest.mark.parametrize("accept", ["*/*", "application/json", None])
def test_clients_keep_getting_the_json_index(client, accept):
    reply = client.get("/", headers={"Accept": accept} if accept else {})
    assert reply.status_code == 200
    assert reply.mimetype == "application/json"
    assert reply.get_json()["service"] == "reverse-api"


def test_head_is_answered_as_the_api_does(client):
    reply = client.head("/", headers={"Accept": BROWSER_ACCEPT})
    assert reply.status_code == 200
    assert reply.mimetype == "application/json"


def test_the_page_and_health_hold_the_same_providers(client):
    health = client.get("/health").get_json()
    html = client.get("/", headers={"Accept": "text/html"}).get_data(as_text=True)
    for name in health["providers"]:
        assert f'data-provider="{name}"' in html


# --- a real browser ------------------------------------------------------------------------


def jwt(expires_in: float) -> str:
    """A JWT-shaped token whose exp the service reads (it never checks the signature)."""

    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'exp': int(time.time() + expires_in)})}.c2lnbmF0dXJl"


@pytest.fixture(scope="module")
def browser():
    """Debian's headless chromium through its chromedriver: nothing downloaded. Without them the
    browser tests skip, except on CI (the CI variable set), where they fail: CI must run them."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if webdriver is None or chromium is None or driver is None:
        message = "selenium, chromium or chromedriver is missing (Debian: apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run the browser tests, not skip them")
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    session = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    try:
        yield session
    finally:
        session.quit()


@pytest.fixture
def token_with_expiry(qwen_token, monkeypatch):
    token = jwt(3600)
    monkeypatch.setenv("QWEN_TOKEN", token)
    return token


@pytest.fixture
def live_app(app_config, token_with_expiry):
    return create_app(app_config)


@pytest.fixture
def live_url(live_app):
    with ServerThread(live_app) as server:
        yield server.url


def account_row(browser, provider: str, account_id: str):
    return browser.find_element(By.CSS_SELECTOR, f'tr[data-provider="{provider}"][data-account="{account_id}"]')


def wait(browser, seconds: float):
    """A wait that shrugs off a row read while the script swapped <main> under it."""
    return WebDriverWait(browser, seconds, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException])


def first_poll_done(browser) -> None:
    """The script's first poll re-renders <main>: elements found before it go stale."""
    wait(browser, 10).until(lambda b: b.find_element(By.ID, "live").text.startswith("live:"))


def test_the_page_follows_an_account_into_a_cooldown_without_a_reload(browser, live_app, live_url, token_with_expiry):
    browser.get(live_url + "/")
    first_poll_done(browser)
    assert account_row(browser, "qwen", "1").get_attribute("data-state") == "ok"
    assert token_with_expiry not in browser.page_source
    browser.execute_script("document.body.dataset.loadedOnce = 'yes'")  # gone if the page reloads

    services = live_app.extensions["reverse_api"]
    provider = services.current().providers["qwen"]
    first = services.accounts.accounts(provider, services.env.values())[0]
    services.accounts.cool_down(first, 120, "rate_limited")

    wait(browser, 10).until(lambda b: account_row(b, "qwen", "1").get_attribute("data-state") == "cooling_down")
    assert "rate_limited" in account_row(browser, "qwen", "1").text
    assert browser.execute_script("return document.body.dataset.loadedOnce") == "yes"


def test_the_token_expiry_counts_down(browser, live_url):
    browser.get(live_url + "/")
    first_poll_done(browser)

    def countdown(b):
        return account_row(b, "qwen", "1").find_element(By.CSS_SELECTOR, "[data-expires-in]").text

    first = countdown(browser)
    assert re.fullmatch(r"59 min \d\d s|1 h 00 min \d\d s", first), first
    wait(browser, 5).until(lambda b: countdown(b) != first)
    assert re.fullmatch(r"59 min \d\d s", countdown(browser))


def test_a_crafted_page_counts_to_expired_and_runs_no_injected_script(browser):
    """A report no test configuration makes: hostile names, and a token two seconds from expiry."""
    report = {
        "status": "degraded",
        "providers": {
            "qwen": loaded(account(access_expires_in=2)),
            "broken": {"loaded": False, "error": HOSTILE},
        },
    }
    browser.get("data:text/html;charset=utf-8," + urllib.parse.quote(status_page.render(report)))
    cell = account_row(browser, "qwen", "1").find_element(By.CSS_SELECTOR, "[data-expires-in]")
    assert cell.text in ("2 s", "1 s")
    wait(browser, 6).until(lambda b: cell.text == "expired")  # a data: page cannot fetch /health: no swap
    assert HOSTILE in browser.find_element(By.CSS_SELECTOR, 'section[data-provider="broken"]').text
    assert browser.execute_script("return window.pwned") is None
    assert browser.find_elements(By.TAG_NAME, "img") == []
