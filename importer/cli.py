"""The ``import`` command: ``python provider_loader.py import NAME FILE`` writes a provider folder.

With ``--account N`` it writes only .env: the capture's secrets as account N of the folder NAME.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from importer.accounts import MAX_ACCOUNT, import_account
from importer.folder import ImportResult, import_capture
from importer.report import import_report
from provider_loader import ProviderError, default_providers_dir
from settings import DEFAULT_ENV_FILE, EnvFile, env_file_path, lookup


def main(argv: list[str] | None = None) -> int:
    """``python provider_loader.py import NAME FILE``: a provider folder from a browser capture."""
    args = _parser().parse_args(argv)
    try:
        result = _run(args)
    except ProviderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:  # a file that cannot be written, an odd capture: no traceback
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    _print_result(result, args.env_file)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python provider_loader.py", description=main.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("import", help="write porviders/NAME from a cURL command or a .har file")
    command.add_argument("name", help="the provider's folder name, e.g. qwen2")
    command.add_argument("file", type=Path, help='a "Copy as cURL (bash)" command saved to a file, or a .har file')
    command.add_argument("--match", help="in a HAR file, the request whose URL contains this text")
    command.add_argument(
        "--account",
        type=_account_number,
        metavar="N",
        help="write the capture's secrets to .env as account N of the existing folder NAME (NAME_..._N), "
        "leaving the folder as it is; 1 means the folder's own variables",
    )
    command.add_argument(
        "--force", action="store_true", help="overwrite the folder (not with --account) and existing .env variables"
    )
    # ENV_FILE set empty means "no .env" to the service; the importer still needs a file to write.
    env_file = Path(env_file_path() or DEFAULT_ENV_FILE)
    # The folder the service reads: PROVIDERS_DIR as the service sees it (environment, then .env).
    providers_dir = lookup("PROVIDERS_DIR", EnvFile(env_file).values()) or default_providers_dir()
    command.add_argument("--providers-dir", type=Path, default=Path(providers_dir))
    command.add_argument("--env-file", type=Path, default=env_file)
    return parser


def _account_number(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,4}", text) or not 1 <= int(text) <= MAX_ACCOUNT:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_ACCOUNT}, got {text!r}")
    return int(text)


def _run(args: argparse.Namespace) -> ImportResult:
    if args.account is None:
        result = import_capture(args.name, args.file, args.providers_dir, args.env_file, args.match, args.force)
        shadowing, result.next_step = import_report(args.name, args.providers_dir, args.env_file)
        result.info.extend(shadowing)
        return result
    return import_account(args.name, args.file, args.providers_dir, args.env_file, args.account, args.match, args.force)


def _print_result(result: ImportResult, env_file: Path) -> None:
    if result.account is None:
        print(f"Wrote {result.folder} (dialect: {result.dialect}).")
    else:
        print(f"Account {result.account} of {result.folder.name}: {result.folder} is left as it was.")
    if result.variables_written:
        print(f"Secrets moved to {env_file}: {', '.join(result.variables_written)}.")
    if result.variables_kept:
        print(f"Kept existing values in {env_file} (use --force to replace): {', '.join(result.variables_kept)}.")
    for line in result.info:
        print(line)
    for note in result.notes:
        print(f"To do: {note}")
    if result.next_step:
        print(result.next_step)


if __name__ == "__main__":
    sys.exit(main())
