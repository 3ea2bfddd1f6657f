"""python provider_loader.py import NAME FILE --account N, and the refresh step a Qwen import declares.

Captures are the browser-shaped ones of test_import.py, with a ``refresh_token`` cookie added
where a test needs one. The end-to-end test adds account 2 to a folder the service runs on, and
the service refreshes and uses it against the fake Qwen and its fake auth server.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dotenv import dotenv_values

import accounts
import provider_loader
import settings
from provider_loader import Provider
from tests.conftest import SHIPPED_QWEN
from tests.helpers import import_lines
from tests.test_import import (
    BX_UA,
    BX_UMIDTOKEN,
    JWT,
    OPENAI_CAPTURE,
    QWEN,
    QWEN_HEADERS,
    chrome_qwen,
    cookie,
    h2_headers,
    har,
    har_entry,
    header_map,
    run_import,
    write,
)

REFRESH_TOKEN = "rt-1.eyJpZCI6ImI3ZTQifQ.r3fr35h-s3cret"
SECOND_TOKEN = "second-access-token-s3cret"
SECOND_REFRESH = "rt-2.second-refresh-s3cret"
MYQWEN_VARIABLES = ["MYQWEN_TOKEN", "MYQWEN_BX_UA", "MYQWEN_BX_UMIDTOKEN", "MYQWEN_COOKIE", "MYQWEN_REFRESH_TOKEN"]


def with_refresh_cookie(capture: str, refresh: str = REFRESH_TOKEN) -> str:
    """A Chrome capture whose -b cookie jar holds a refresh_token, as chat.qwen.ai's does."""
    return capture.replace("; cna=", f"; refresh_token={refresh}; cna=", 1)


@pytest.fixture
def paths(tmp_path):
    """A providers folder, a .env and a place for captures, inside tmp_path."""
    captures = tmp_path / "captures"
    captures.mkdir()
    return tmp_path / "porviders", tmp_path / ".env", captures


def import_args(providers: Path, env_file: Path, *argv: str) -> list[str]:
    return [*argv, "--providers-dir", str(providers), "--env-file", str(env_file)]


def imported(paths, capsys, name: str = "myqwen", text: str | None = None) -> tuple[Path, str]:
    """A folder imported fresh (no --account) from a capture of chat.qwen.ai with a refresh token,
    and what the command printed."""
    providers, env_file, captures = paths
    capture = write(captures / f"{name}.sh", text or with_refresh_cookie(chrome_qwen()))
    code, out, err = run_import(capsys, *import_args(providers, env_file, name, str(capture)))
    assert (code, err) == (0, "")
    return providers / name, out


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of a folder: its bytes and its modification time."""
    return {path.name: (path.read_bytes(), path.stat().st_mtime_ns) for path in sorted(folder.iterdir())}


def renamed(value, old: str, new: str):
    """A JSON value with every variable name's prefix ``old`` changed to ``new``."""
    return json.loads(json.dumps(value).replace(old, new))


# --- the refresh step of a fresh import ----------------------------------------------------------


def test_a_fresh_qwen_import_declares_the_shipped_refresh_step_under_its_own_prefix(paths, capsys):
    folder, _ = imported(paths, capsys)
    metadata = json.loads((folder / "metadata.json").read_text())
    shipped = json.loads((SHIPPED_QWEN / "metadata.json").read_text())["refresh_credential"]
    assert metadata["refresh_credential"] == renamed(shipped, "${QWEN_", "${MYQWEN_") | {
        "fields": {"data.access_token": "MYQWEN_TOKEN", "data.refresh_token": "MYQWEN_REFRESH_TOKEN"},
        "set_cookies": {"refresh_token": "MYQWEN_REFRESH_TOKEN"},
        "token_variable": "MYQWEN_TOKEN",
    }
    assert metadata["optional_variables"][-1] == "MYQWEN_REFRESH_TOKEN"

    provider = Provider.from_dir(folder)
    assert provider.refresh is not None
    assert (provider.refresh.host, provider.refresh.token_variable) == ("auth.qwen.ai", "MYQWEN_TOKEN")
    assert provider.refresh.names_read() == {"MYQWEN_REFRESH_TOKEN"}
    assert "MYQWEN_REFRESH_TOKEN" in provider.optional_variables
    assert provider.required_variables() == ["MYQWEN_TOKEN"]
    assert all(name.startswith("MYQWEN_") for name in provider.variable_names())


def test_a_refresh_token_cookie_becomes_its_own_variable_and_leaves_the_jar(paths, capsys):
    providers, env_file, _ = paths
    folder, out = imported(paths, capsys)
    assert import_lines(out) == [
        f"Wrote {folder} (dialect: qwen).",
        f"Secrets moved to {env_file}: {', '.join(MYQWEN_VARIABLES)}.",
        "Token refresh: MYQWEN_TOKEN is renewed at auth.qwen.ai with MYQWEN_REFRESH_TOKEN.",
    ]
    values = dotenv_values(env_file)
    assert list(values) == MYQWEN_VARIABLES
    assert values["MYQWEN_REFRESH_TOKEN"] == REFRESH_TOKEN
    assert values["MYQWEN_COOKIE"] == cookie()  # the rest of the jar exactly as captured
    assert "refresh_token=" not in values["MYQWEN_COOKIE"]
    assert header_map(folder)[2]["cookie"] == "${MYQWEN_COOKIE}"
    for text in (out, *(path.read_text() for path in folder.iterdir())):
        assert REFRESH_TOKEN not in text


@pytest.mark.parametrize(
    ("jar", "left"),
    [
        ("refresh_token=@RT@; token=abc; cna=x", "token=abc; cna=x"),
        ("token=abc; refresh_token=@RT@; cna=x", "token=abc; cna=x"),
        ("token=abc; cna=x; refresh_token=@RT@", "token=abc; cna=x"),
        ("token=abc;refresh_token=@RT@;cna=x", "token=abc;cna=x"),
        ("token=abc; my_refresh_token=keep; cna=x", "token=abc; my_refresh_token=keep; cna=x"),
        ("refresh_token=@RT@", None),  # the jar held nothing else: no Cookie header at all
    ],
)
def test_the_refresh_token_is_cut_out_of_any_place_in_the_jar(paths, capsys, jar, left):
    providers, env_file, captures = paths
    capture = chrome_qwen().replace(f"-b '{cookie()}'", f"-b '{jar.replace('@RT@', REFRESH_TOKEN)}'")
    folder, _ = imported(paths, capsys, text=capture)
    values = dotenv_values(env_file)
    assert values.get("MYQWEN_COOKIE") == left
    assert ("cookie" in header_map(folder)[2]) is (left is not None)
    if "@RT@" in jar:
        assert values["MYQWEN_REFRESH_TOKEN"] == REFRESH_TOKEN
    Provider.from_dir(folder)


def test_a_har_capture_gives_the_refresh_token_too(paths, capsys):
    providers, env_file, captures = paths
    headers = [(n, with_refresh_cookie(v) if n == "cookie" else v) for n, v in QWEN_HEADERS]
    entry = har_entry(
        "POST",
        f"{QWEN}/api/v2/chat/completions?chat_id=8f2b6c1e-3d4a-4b5c-9e7f-0a1b2c3d4e5f",
        h2_headers("POST", "/api/v2/chat/completions", *headers),
        json.dumps({"chat_id": "8f2b6c1e-3d4a-4b5c-9e7f-0a1b2c3d4e5f", "model": "qwen3.7-plus", "messages": []}),
        response_mime="text/event-stream",
    )
    capture = write(captures / "chat.har", har(entry))
    assert run_import(capsys, *import_args(providers, env_file, "myqwen", str(capture)))[0] == 0
    values = dotenv_values(env_file)
    assert (values["MYQWEN_REFRESH_TOKEN"], values["MYQWEN_COOKIE"]) == (REFRESH_TOKEN, cookie())


def test_without_a_refresh_token_only_the_step_is_new(paths, capsys):
    providers, env_file, captures = paths
    capture = write(captures / "qwen.sh", chrome_qwen())
    code, out, _ = run_import(capsys, *import_args(providers, env_file, "myqwen", str(capture)))
    assert code == 0
    assert import_lines(out)[1:] == [
        f"Secrets moved to {env_file}: MYQWEN_TOKEN, MYQWEN_BX_UA, MYQWEN_BX_UMIDTOKEN, MYQWEN_COOKIE.",
        "Token refresh: declared, but the captured Cookie held no refresh_token: MYQWEN_TOKEN is used until it "
        "expires; set MYQWEN_REFRESH_TOKEN in .env to have it renewed.",
    ]
    assert dotenv_values(env_file)["MYQWEN_COOKIE"] == cookie()
    provider = Provider.from_dir(providers / "myqwen")
    assert provider.refresh is not None and "MYQWEN_REFRESH_TOKEN" in provider.optional_variables
    assert provider.required_variables() == ["MYQWEN_TOKEN"]


@pytest.mark.parametrize("base", ["https://chat.example.com", "https://qwen.ai.example.com"])
def test_a_qwen_capture_off_qwen_ai_gets_no_refresh_step_and_says_so(paths, capsys, base):
    providers, env_file, captures = paths
    capture = write(captures / "qwen.sh", with_refresh_cookie(chrome_qwen(base=base)))
    code, out, _ = run_import(capsys, *import_args(providers, env_file, "mirror", str(capture)))
    assert code == 0
    assert import_lines(out)[-1] == (
        f"Token refresh: none: the qwen dialect knows no refresh endpoint for {base}, so the folder has no "
        "refresh_credential step and MIRROR_TOKEN is used until it expires."
    )
    metadata = json.loads((providers / "mirror" / "metadata.json").read_text())
    assert "refresh_credential" not in metadata
    # The refresh token still stays out of the jar, ready for a step declared by hand.
    assert metadata["optional_variables"][-1] == "MIRROR_REFRESH_TOKEN"
    assert "refresh_token=" not in dotenv_values(env_file)["MIRROR_COOKIE"]
    assert Provider.from_dir(providers / "mirror").refresh is None


def test_an_openai_import_is_as_before(paths, capsys):
    providers, env_file, captures = paths
    text = OPENAI_CAPTURE.replace("@PORT@", "8089").replace("@PREFIX@", "")
    capture = write(
        captures / "local.sh", text.replace(" \\\n  --data-raw", " \\\n  -b 'a=1; refresh_token=x' \\\n  --data-raw")
    )
    code, out, _ = run_import(capsys, *import_args(providers, env_file, "local", str(capture)))
    assert code == 0
    assert import_lines(out) == [
        f"Wrote {providers / 'local'} (dialect: openai).",
        f"Secrets moved to {env_file}: LOCAL_TOKEN, LOCAL_COOKIE.",
    ]
    assert "refresh_credential" not in json.loads((providers / "local" / "metadata.json").read_text())
    assert dotenv_values(env_file) == {
        "LOCAL_TOKEN": "sk-local-s3cret-0123456789",
        "LOCAL_COOKIE": "a=1; refresh_token=x",
    }


def test_the_imported_folder_and_its_env_give_the_service_its_refresh_variable(paths, capsys, monkeypatch):
    monkeypatch.delenv("MYQWEN_REFRESH_TOKEN", raising=False)
    monkeypatch.delenv("MYQWEN_TOKEN", raising=False)
    folder, _ = imported(paths, capsys)
    provider = Provider.from_dir(folder)
    file_values = settings.EnvFile(paths[1]).values()
    found = settings.read_variables(provider.refresh_variables(), file_values)
    assert found == {"MYQWEN_REFRESH_TOKEN": REFRESH_TOKEN, "MYQWEN_TOKEN": JWT}
    assert accounts.key_names(provider) == ["MYQWEN_TOKEN", "MYQWEN_REFRESH_TOKEN"]


# --- --account N -----------------------------------------------------------------------------


def second_capture(captures: Path, base: str = QWEN, **changes: str) -> Path:
    """Another login's capture: its own token in Authorization and the jar, its own refresh token."""
    text = with_refresh_cookie(chrome_qwen(base=base, token=SECOND_TOKEN), SECOND_REFRESH)
    for old, new in changes.items():
        text = text.replace(old, new)
    return write(captures / "second.sh", text)


def test_account_2_goes_to_env_with_suffixed_names_and_leaves_the_folder_alone(paths, capsys):
    providers, env_file, captures = paths
    folder, _ = imported(paths, capsys)
    before, env_before = snapshot(folder), dotenv_values(env_file)
    args = import_args(providers, env_file, "myqwen", str(second_capture(captures)), "--account", "2")
    code, out, err = run_import(capsys, *args)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"Account 2 of myqwen: {folder} is left as it was.",
        f"Secrets moved to {env_file}: {', '.join(f'{name}_2' for name in MYQWEN_VARIABLES)}.",
        "Token refresh: MYQWEN_TOKEN_2 is renewed with MYQWEN_REFRESH_TOKEN_2.",
        f"Next: the running service picks account 2 up from {env_file} by itself (GET /health lists it under "
        "providers.myqwen.accounts). Delete the capture file: it holds your session.",
    ]
    assert snapshot(folder) == before
    assert sorted(p.name for p in providers.iterdir()) == ["myqwen"]
    assert dotenv_values(env_file) == {
        **env_before,
        "MYQWEN_TOKEN_2": SECOND_TOKEN,
        "MYQWEN_BX_UA_2": BX_UA,
        "MYQWEN_BX_UMIDTOKEN_2": BX_UMIDTOKEN,
        "MYQWEN_COOKIE_2": cookie(SECOND_TOKEN),
        "MYQWEN_REFRESH_TOKEN_2": SECOND_REFRESH,
    }
    for secret in (SECOND_TOKEN, SECOND_REFRESH, BX_UA):
        assert secret not in out


def test_accounts_of_the_shipped_qwen_folder_are_seen_by_the_service(paths, capsys, monkeypatch):
    for name in ("QWEN_TOKEN_3", "QWEN_REFRESH_TOKEN_3"):
        monkeypatch.delenv(name, raising=False)
    providers, env_file, captures = paths
    shutil.copytree(SHIPPED_QWEN, providers / "qwen")
    before = snapshot(providers / "qwen")
    args = import_args(providers, env_file, "qwen", str(second_capture(captures)), "--account", "3")
    assert run_import(capsys, *args)[0] == 0
    assert snapshot(providers / "qwen") == before
    provider = Provider.from_dir(providers / "qwen")
    file_values = settings.EnvFile(env_file).values()
    assert settings.account_numbers(accounts.key_names(provider), file_values) == [3]
    suffixed = [f"{name}_3" for name in provider.variable_names()]
    assert settings.read_variables(suffixed, file_values) == {
        "QWEN_TOKEN_3": SECOND_TOKEN,
        "QWEN_BX_UA_3": BX_UA,
        "QWEN_BX_UMIDTOKEN_3": BX_UMIDTOKEN,
        "QWEN_COOKIE_3": cookie(SECOND_TOKEN),
        "QWEN_REFRESH_TOKEN_3": SECOND_REFRESH,
    }


def test_account_1_replaces_the_unsuffixed_values_only_with_force(paths, capsys):
    providers, env_file, captures = paths
    folder, _ = imported(paths, capsys)
    args = import_args(providers, env_file, "myqwen", str(second_capture(captures)), "--account", "1")
    code, out, _ = run_import(capsys, *args)
    assert code == 0
    assert out.splitlines()[1] == (
        f"Kept existing values in {env_file} (use --force to replace): {', '.join(MYQWEN_VARIABLES)}."
    )
    assert dotenv_values(env_file)["MYQWEN_TOKEN"] == JWT

    code, out, _ = run_import(capsys, *args, "--force")
    assert code == 0
    assert out.splitlines()[1] == f"Secrets moved to {env_file}: {', '.join(MYQWEN_VARIABLES)}."
    values = dotenv_values(env_file)
    assert list(values) == MYQWEN_VARIABLES
    assert (values["MYQWEN_TOKEN"], values["MYQWEN_REFRESH_TOKEN"]) == (SECOND_TOKEN, SECOND_REFRESH)


def test_an_existing_account_is_kept_unless_forced(paths, capsys):
    providers, env_file, captures = paths
    imported(paths, capsys)
    with env_file.open("a") as handle:
        handle.write("MYQWEN_TOKEN_2='my-own'\n")
    args = import_args(providers, env_file, "myqwen", str(second_capture(captures)), "--account", "2")
    out = run_import(capsys, *args)[1].splitlines()
    assert (
        out[1]
        == f"Secrets moved to {env_file}: MYQWEN_BX_UA_2, MYQWEN_BX_UMIDTOKEN_2, MYQWEN_COOKIE_2, MYQWEN_REFRESH_TOKEN_2."
    )
    assert out[2] == f"Kept existing values in {env_file} (use --force to replace): MYQWEN_TOKEN_2."
    assert dotenv_values(env_file)["MYQWEN_TOKEN_2"] == "my-own"
    run_import(capsys, *args, "--force")
    assert dotenv_values(env_file)["MYQWEN_TOKEN_2"] == SECOND_TOKEN


def test_account_on_a_missing_folder_fails_and_writes_nothing(paths, capsys):
    providers, env_file, captures = paths
    capture = second_capture(captures)
    code, out, err = run_import(capsys, *import_args(providers, env_file, "myqwen", str(capture), "--account", "2"))
    assert (code, out) == (1, "")
    assert err == (
        f"error: {providers / 'myqwen'} does not exist: import the capture without --account first "
        "(python provider_loader.py import myqwen FILE), then add accounts with --account 2, 3, ...\n"
    )
    assert not providers.exists() and not env_file.exists()
    assert sorted(p.name for p in captures.parent.iterdir()) == ["captures"]


@pytest.mark.parametrize("number", ["0", "-1", "1000", "2.5", "x", "", "²", "1e2"])
def test_the_account_number_is_checked(paths, capsys, number):
    providers, env_file, captures = paths
    imported(paths, capsys)
    env_before = env_file.read_bytes()
    args = import_args(providers, env_file, "myqwen", str(second_capture(captures)), f"--account={number}")
    with pytest.raises(SystemExit) as exited:
        provider_loader.main(["import", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --account: must be a whole number from 1 to 999, got {number!r}" in err
    assert env_file.read_bytes() == env_before


@pytest.mark.parametrize("number", ["2", "999", "007"])
def test_account_numbers_up_to_999_are_taken(paths, capsys, number):
    providers, env_file, captures = paths
    imported(paths, capsys)
    args = import_args(providers, env_file, "myqwen", str(second_capture(captures)), "--account", number)
    assert run_import(capsys, *args)[0] == 0
    assert dotenv_values(env_file)[f"MYQWEN_TOKEN_{int(number)}"] == SECOND_TOKEN


def test_secrets_the_folder_does_not_use_are_left_out_and_named(paths, capsys):
    providers, env_file, captures = paths
    folder, _ = imported(paths, capsys)
    extra = "-H 'x-csrf-token: csrf-s3cret-value' \\\n  -H 'source: web'"
    capture = second_capture(captures, **{"-H 'source: web'": extra})
    code, out, _ = run_import(capsys, *import_args(providers, env_file, "myqwen", str(capture), "--account", "2"))
    assert code == 0
    assert f"Not written, as {folder} does not use them: MYQWEN_X_CSRF_TOKEN." in out.splitlines()
    assert "csrf-s3cret-value" not in env_file.read_text() + out
    assert "MYQWEN_X_CSRF_TOKEN_2" not in dotenv_values(env_file)


def test_a_folder_imported_before_refresh_existed_gets_no_refresh_token(paths, capsys):
    providers, env_file, captures = paths
    folder, _ = imported(paths, capsys)
    metadata = json.loads((folder / "metadata.json").read_text())
    del metadata["refresh_credential"]
    metadata["optional_variables"].remove("MYQWEN_REFRESH_TOKEN")
    (folder / "metadata.json").write_text(json.dumps(metadata))
    code, out, _ = run_import(
        capsys, *import_args(providers, env_file, "myqwen", str(second_capture(captures)), "--account", "2")
    )
    assert code == 0
    assert f"Not written, as {folder} does not use them: MYQWEN_REFRESH_TOKEN." in out.splitlines()
    values = dotenv_values(env_file)
    assert "MYQWEN_REFRESH_TOKEN_2" not in values
    assert "refresh_token=" not in values["MYQWEN_COOKIE_2"]  # a stale copy would never be renewed either


def test_a_capture_without_a_refresh_token_says_the_account_is_not_renewed(paths, capsys):
    providers, env_file, captures = paths
    imported(paths, capsys)
    capture = write(captures / "plain.sh", chrome_qwen(token=SECOND_TOKEN))
    code, out, _ = run_import(capsys, *import_args(providers, env_file, "myqwen", str(capture), "--account", "2"))
    assert code == 0
    assert (
        "Token refresh: none, as the capture held no MYQWEN_REFRESH_TOKEN_2: MYQWEN_TOKEN_2 is used until it expires."
        in out.splitlines()
    )


def test_a_capture_of_another_host_is_refused(paths, capsys):
    providers, env_file, captures = paths
    imported(paths, capsys)
    env_before = env_file.read_bytes()
    capture = second_capture(captures, base="https://chat.example.com")
    code, out, err = run_import(capsys, *import_args(providers, env_file, "myqwen", str(capture), "--account", "2"))
    assert (code, out) == (1, "")
    assert err == (
        f"error: capture: it was sent to chat.example.com, but {providers / 'myqwen'} talks to chat.qwen.ai; "
        "import it as a provider of its own (without --account)\n"
    )
    assert env_file.read_bytes() == env_before


def test_a_capture_in_another_dialect_is_refused(paths, capsys):
    providers, env_file, captures = paths
    openai_capture = write(captures / "local.sh", OPENAI_CAPTURE.replace("@PORT@", "8089").replace("@PREFIX@", ""))
    assert run_import(capsys, *import_args(providers, env_file, "local", str(openai_capture)))[0] == 0
    capture = second_capture(captures, base="http://127.0.0.1:8089")
    code, _, err = run_import(capsys, *import_args(providers, env_file, "local", str(capture), "--account", "2"))
    assert code == 1
    assert err == "error: capture: it speaks the qwen dialect, but the folder speaks openai\n"


def test_a_capture_without_a_credential_makes_no_account(paths, capsys):
    providers, env_file, captures = paths
    imported(paths, capsys)
    env_before = env_file.read_bytes()
    text = chrome_qwen(token=SECOND_TOKEN).replace(f"  -H 'authorization: Bearer {SECOND_TOKEN}' \\\n", "")
    capture = write(captures / "anon.sh", text)
    code, _, err = run_import(capsys, *import_args(providers, env_file, "myqwen", str(capture), "--account", "2"))
    assert code == 1
    assert err == (
        "error: capture: it holds no value for MYQWEN_TOKEN or MYQWEN_REFRESH_TOKEN, so it would make no "
        f"account of {providers / 'myqwen'}\n"
    )
    assert env_file.read_bytes() == env_before


def test_a_non_chat_request_of_the_har_still_splits_the_refresh_token(paths, capsys):
    """--match may pick any request of the site: the folder's dialect names its secrets."""
    providers, env_file, captures = paths
    imported(paths, capsys)
    headers = [
        ("authorization", f"Bearer {SECOND_TOKEN}"),
        ("cookie", with_refresh_cookie(cookie(SECOND_TOKEN), SECOND_REFRESH)),
    ]
    capture = write(
        captures / "models.har", har(har_entry("GET", f"{QWEN}/api/models", h2_headers("GET", "/api/models", *headers)))
    )
    args = import_args(providers, env_file, "myqwen", str(capture), "--match", "/api/models", "--account", "2")
    assert run_import(capsys, *args)[0] == 0
    values = dotenv_values(env_file)
    assert (values["MYQWEN_REFRESH_TOKEN_2"], values["MYQWEN_COOKIE_2"]) == (SECOND_REFRESH, cookie(SECOND_TOKEN))


def test_a_folder_that_does_not_load_is_named(paths, capsys):
    providers, env_file, captures = paths
    folder, _ = imported(paths, capsys)
    (folder / "metadata.json").write_text("{")
    code, _, err = run_import(
        capsys, *import_args(providers, env_file, "myqwen", str(second_capture(captures)), "--account", "2")
    )
    assert code == 1
    assert err.startswith(f"error: {folder} does not load, so its variables are unknown; fix it first (")


# --- end to end: account 2 added to a folder the service runs on ----------------------------------


def test_the_service_refreshes_and_uses_an_imported_account_2(
    accounts_dir, make_app, env_file, auth, fake_qwen, capsys
):
    access, refresh = auth.issue("alice")
    env_file.write_text(f"QWEN_TOKEN={access}\nQWEN_REFRESH_TOKEN={refresh}\n")
    bob_access, bob_refresh = auth.issue("bob", lifetime=60)  # inside the refresh leeway: renewed first
    captures = env_file.parent / "captures"
    captures.mkdir()
    text = with_refresh_cookie(chrome_qwen(base=fake_qwen.url, token=bob_access), bob_refresh)
    capture = write(captures / "bob.sh", text)
    folder = accounts_dir / "qwen"
    before = snapshot(folder)
    assert run_import(capsys, *import_args(accounts_dir, env_file, "qwen", str(capture), "--account", "2"))[0] == 0
    assert snapshot(folder) == before

    client = make_app().test_client()
    for _ in range(2):
        response = client.post(
            "/v1/chat/completions", json={"model": "qwen3-max", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert response.status_code == 200, response.get_json()
    completions = [r for r in fake_qwen.requests if r["path"].startswith("/api/v2/chat/completions")]
    assert sorted(r["account"] for r in completions) == ["alice", "bob"]
    assert [r["token"] for r in auth.refreshes] == [bob_refresh]
    bob_call = next(r for r in completions if r["account"] == "bob")
    assert "refresh_token=" not in bob_call["headers"]["Cookie"]
    ids = [a["id"] for a in client.get("/health").get_json()["providers"]["qwen"]["accounts"]]
    assert ids == ["1", "2"]


# --- names that could be read as another account's ---------------------------------------------


def test_a_repeated_secret_name_never_looks_like_account_2(paths, capsys, monkeypatch):
    providers, env_file, captures = paths
    monkeypatch.delenv("DUP_TOKEN_2", raising=False)
    capture = write(
        captures / "dup.sh",
        "curl 'https://chat.example.test/v1/chat/completions?token=QUERYTOKEN' -H 'Authorization: Bearer BEARER' "
        '-H \'token: HEADERTOKEN\' --data-raw \'{"model": "m", "messages": []}\'',
    )
    assert run_import(capsys, *import_args(providers, env_file, "dup", str(capture)))[0] == 0
    values = dotenv_values(env_file)
    assert values == {"DUP_TOKEN": "BEARER", "DUP_TOKEN_ALT": "HEADERTOKEN", "DUP_TOKEN_ALT2": "QUERYTOKEN"}
    provider = Provider.from_dir(providers / "dup")
    assert settings.account_numbers(accounts.key_names(provider), values) == []


def test_an_account_variable_the_folder_itself_uses_is_refused(paths, capsys):
    providers, env_file, captures = paths
    folder, _ = imported(paths, capsys)
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["optional_variables"].append("MYQWEN_COOKIE_2")  # by hand, or by an importer of old
    (folder / "metadata.json").write_text(json.dumps(metadata))
    env_before = env_file.read_bytes()
    args = import_args(providers, env_file, "myqwen", str(second_capture(captures)), "--account", "2")
    code, _, err = run_import(capsys, *args, "--force")
    assert code == 1
    assert err == (
        f"error: {folder} itself uses MYQWEN_COOKIE_2, which account 2 needs for its own values; rename those "
        "variables in the folder (and in .env) first\n"
    )
    assert env_file.read_bytes() == env_before
