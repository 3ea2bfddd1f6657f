"""``import NAME FILE --account N``: a capture's secrets as account N of an existing provider folder.

The folder is only read. Its variables get the capture's values in .env, with ``_N`` for N >= 2.
"""

from __future__ import annotations

from pathlib import Path

from importer.folder import FolderPlan, ImportResult, check_env_file, check_name, plan_folder, write_env_values
from provider_loader import Provider, ProviderError

MAX_ACCOUNT = 999  # the service reads NAME_2 ... NAME_999 (settings.account_numbers)


def account_variable(name: str, account: int) -> str:
    """The variable holding ``name`` for one account: ``QWEN_TOKEN`` for 1, ``QWEN_TOKEN_2`` for 2."""
    return name if account == 1 else f"{name}_{account}"


def check_account(account: int) -> None:
    if isinstance(account, bool) or not isinstance(account, int) or not 1 <= account <= MAX_ACCOUNT:
        raise ProviderError(f"--account must be a whole number from 1 to {MAX_ACCOUNT}, got {account!r}")


def import_account(
    name: str,
    capture_file: Path,
    providers_dir: Path,
    env_file: Path,
    account: int,
    match: str | None = None,
    force: bool = False,
) -> ImportResult:
    """Write a capture's secrets into ``env_file`` as account ``account`` of ``providers_dir/name``.

    The secrets are named as a fresh import of the capture under ``name`` would name them; those
    the folder does not use are left out. Existing variables are kept unless ``force``.
    """
    check_name(name)
    check_account(account)
    folder = providers_dir / name
    provider = _existing_provider(folder, name)
    plan = plan_folder(name, capture_file, match, provider.dialect)
    _check_same_host(plan, provider, folder)
    used = set(provider.variable_names())
    captured = {variable: value for variable, value in plan.values.items() if variable in used}
    _check_makes_an_account(provider, captured, folder)
    values = {account_variable(variable, account): value for variable, value in captured.items()}
    _check_no_clash(values, used, account, folder)
    check_env_file(env_file)
    result = ImportResult(folder, provider.dialect, account=account)
    result.variables_written, result.variables_kept = write_env_values(env_file, values, force)
    result.info = _unused_line(plan, used, folder) + _refresh_line(provider, captured, account)
    result.notes = _missing_notes(provider, captured, account, env_file)
    result.next_step = _next_step(name, account, env_file)
    return result


def _existing_provider(folder: Path, name: str) -> Provider:
    if not folder.is_dir():
        raise ProviderError(
            f"{folder} does not exist: import the capture without --account first "
            f"(python provider_loader.py import {name} FILE), then add accounts with --account 2, 3, ..."
        )
    try:
        return Provider.from_dir(folder)
    except ProviderError as exc:
        raise ProviderError(f"{folder} does not load, so its variables are unknown; fix it first ({exc})") from None


def _check_same_host(plan: FolderPlan, provider: Provider, folder: Path) -> None:
    """A capture of another site is refused: its secrets would be sent to this folder's host."""
    if plan.host.lower() != provider.host.lower():
        raise ProviderError(
            f"capture: it was sent to {plan.host}, but {folder} talks to {provider.host}; "
            "import it as a provider of its own (without --account)"
        )


def _account_keys(provider: Provider) -> list[str]:
    """What makes an account exist: its token or its refresh token (as accounts.key_names says)."""
    read = sorted(provider.refresh.names_read()) if provider.refresh else []
    return list(dict.fromkeys([*provider.required_variables(), *read]))


def _check_makes_an_account(provider: Provider, captured: dict[str, str], folder: Path) -> None:
    keys = _account_keys(provider)
    if not keys:
        raise ProviderError(f"{folder} needs no credential, so it has one account only")
    if not any(key in captured for key in keys):
        raise ProviderError(
            f"capture: it holds no value for {' or '.join(keys)}, so it would make no account of {folder}"
        )


def _check_no_clash(values: dict[str, str], used: set[str], account: int, folder: Path) -> None:
    """An account's variable that is also one of the folder's own would overwrite account 1's value
    (or be read as it): a hand-written QWEN_COOKIE_2 beside QWEN_COOKIE, say."""
    clash = sorted(set(values) & used) if account > 1 else []
    if clash:
        raise ProviderError(
            f"{folder} itself uses {', '.join(clash)}, which account {account} needs for its own values; "
            "rename those variables in the folder (and in .env) first"
        )


def _unused_line(plan: FolderPlan, used: set[str], folder: Path) -> list[str]:
    unused = [variable for variable in plan.values if variable not in used]
    if not unused:
        return []
    return [f"Not written, as {folder} does not use them: {', '.join(unused)}."]


def _refresh_line(provider: Provider, captured: dict[str, str], account: int) -> list[str]:
    if provider.refresh is None:
        return []
    token = account_variable(provider.refresh.token_variable, account)
    sent = sorted(provider.refresh.names_read())
    lacking = [account_variable(n, account) for n in sent if n not in captured]
    if lacking:
        return [f"Token refresh: none, as the capture held no {', '.join(lacking)}: {token} is used until it expires."]
    return [f"Token refresh: {token} is renewed with {', '.join(account_variable(n, account) for n in sent)}."]


def _missing_notes(provider: Provider, captured: dict[str, str], account: int, env_file: Path) -> list[str]:
    """Required variables the capture did not hold (a token its refresh will bring is not one)."""
    missing = [n for n in provider.required_variables() if n not in captured]
    refresh = provider.refresh
    if refresh is not None and all(n in captured for n in refresh.names_read()):
        missing = [n for n in missing if n != refresh.token_variable]
    return [f"set {account_variable(n, account)} in {env_file}: the capture held no value for it." for n in missing]


def _next_step(name: str, account: int, env_file: Path) -> str:
    return (
        f"Next: the running service picks account {account} up from {env_file} by itself (GET /health lists "
        f"it under providers.{name}.accounts). Delete the capture file: it holds your session."
    )
