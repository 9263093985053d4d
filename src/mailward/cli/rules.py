"""`mailward rules check`: vet YARA rule files before they enter the SMTP path."""

from __future__ import annotations

import argparse

from ..config import Settings
from ..signatures.check import rules_check_main


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("rules", help="YARA rule management")
    sub = p.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    check = sub.add_parser(
        "check", help="compile each file alone; with --benign, measure speed and false positives", add_help=False
    )
    check.add_argument("args", nargs=argparse.REMAINDER, help="DIR [--benign DIR] [--min-speed MB/S] [--json]")
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    return rules_check_main(args.args)
