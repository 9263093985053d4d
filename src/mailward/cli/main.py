"""`mailward`: the analysts' and administrators' command line.

Each subcommand lives in its own module and registers itself here; this is
the only place that loads configuration and sets up logging for the CLI.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..config import Settings, load_settings
from ..errors import ConfigError, MailwardError
from ..logs import LogFileError, configure_cli_logging
from ..privileges import PrivilegeError, become_service_user
from . import allow, block, config, model, quarantine, rules, scan, train, watch_auth, web


def _add_global_options(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument("--config", default=default, help="TOML configuration file (default: embedded defaults)")
    parser.add_argument("--state-dir", default=default, help="override state_dir")


def _accept_global_options_everywhere(parser: argparse.ArgumentParser) -> None:
    """``mailward quarantine list --config FILE`` works like ``mailward --config FILE quarantine list``.

    Each subcommand parser gets the options too, with a suppressed default so
    that, when absent there, the value given before the subcommand stays.
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _add_global_options(sub, argparse.SUPPRESS)
                _accept_global_options_everywhere(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailward", description="Mailward mail security tools.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    scan.register(commands)
    config.register(commands)
    quarantine.register(commands)
    rules.register(commands)
    block.register(commands)
    allow.register(commands)
    watch_auth.register(commands)
    train.register(commands)
    model.register(commands)
    web.register(commands)
    _accept_global_options_everywhere(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings: Settings = load_settings(args.config, {"state_dir": args.state_dir} if args.state_dir else None)
    except ConfigError as exc:
        print(f"mailward: configuration error: {exc}", file=sys.stderr)
        return 2
    try:  # before anything touches state (the log file included): what we create must be the milter's
        become_service_user(settings, keep_root=bool(getattr(args, "needs_root", lambda _: False)(settings)))
    except PrivilegeError as exc:
        print(f"mailward: {exc}", file=sys.stderr)
        return 1
    try:
        configure_cli_logging(settings.logging)
    except LogFileError as exc:
        print(f"mailward: {exc}", file=sys.stderr)
        return 1
    try:
        code: int = args.handler(args, settings)
        return code
    except MailwardError as exc:
        print(f"mailward: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
