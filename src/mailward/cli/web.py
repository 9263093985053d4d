"""`mailward web`: serve the quarantine web page, and manage its analysts' accounts.

``mailward web [--listen HOST:PORT]`` serves (default ``web.listen``,
127.0.0.1:8025); ``mailward web user add|passwd|unlock NAME`` manage the
local accounts (passwords read from the terminal, or one line of standard
input with ``--password-stdin`` for scripts). Needs the ``web`` extra.
Exit status: 0 done, 1 failed, 2 usage.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from ..actor import Actor
from ..config import Settings, parse_host_port
from ..errors import MailwardError

OK, FAILED, USAGE = 0, 1, 2


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    w = commands.add_parser("web", help="serve the quarantine web page; manage its accounts")
    w.add_argument("--listen", help="HOST:PORT to listen on (default: web.listen, 127.0.0.1:8025)")
    w.set_defaults(handler=_serve)
    sub = w.add_subparsers(dest="web_command", metavar="ACTION")
    u = sub.add_parser("user", help="add an analyst, change a password, unlock a locked account")
    usub = u.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    for name, text in (("add", "create an analyst account"), ("passwd", "set a new password (ends its sessions)")):
        p = usub.add_parser(name, help=text)
        p.add_argument("name")
        p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
        p.set_defaults(handler=_user)
    p = usub.add_parser("unlock", help="unlock an account locked after failed logins")
    p.add_argument("name")
    p.set_defaults(handler=_user)


def _extra_missing(exc: ImportError) -> int:
    print(f"mailward web: needs the web extra (pip install 'mailward[web]'): {exc}", file=sys.stderr)
    return FAILED


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    listen = args.listen or settings.web.listen
    try:
        parse_host_port(listen)
    except ValueError as exc:
        print(f"mailward web: --listen {listen!r}: {exc}", file=sys.stderr)
        return USAGE
    try:
        from ..web.server import serve
    except ImportError as exc:
        return _extra_missing(exc)
    serve(settings, listen)
    return OK


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("New password: ")
    if getpass.getpass("Again: ") != first:
        raise MailwardError("the passwords differ")
    return first


def _user(args: argparse.Namespace, settings: Settings) -> int:
    try:
        from ..web.server import open_accounts
    except ImportError as exc:
        return _extra_missing(exc)
    by = Actor.current().name
    try:
        accounts = open_accounts(settings)
        try:
            if args.user_command == "unlock":
                accounts.unlock(args.name, by)
                print(f"unlocked {args.name}")
            elif args.user_command == "add":
                accounts.add(args.name, _password(args), by)
                print(f"added {args.name}")
            else:
                accounts.set_password(args.name, _password(args), by)
                print(f"changed the password of {args.name}; its sessions ended")
        finally:
            accounts.close()
    except (MailwardError, OSError) as exc:
        print(f"mailward web user: {exc}", file=sys.stderr)
        return FAILED
    return OK
