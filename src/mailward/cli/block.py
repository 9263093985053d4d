"""`mailward block list | add | remove | history`: the block list, by hand.

Subjects: ``account`` (SASL login), ``address`` (client IP), ``network``
(CIDR), ``sender`` (envelope sender) and ``domain`` (sender domain and its
subdomains). Suspensions the milter made and blocks after failed logins are
listed and lifted the same way. Every change is in the audit trail with the
OS user (or ``--analyst``), host and SSH client. Exit status: ``cli.analyst``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time

from ..actor import Actor
from ..config import Settings
from ..incidents import Block, SubjectKind, normalise
from ..policy import Listed
from ..textsafe import json_line, neutralise
from .allow import add_entry, remove_entry
from .analyst import FAILED, OK, REFUSED, incident_store, row_limit

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_KINDS = [k.value for k in SubjectKind]
_SCOPED = (SubjectKind.SENDER.value, SubjectKind.DOMAIN.value)
RECIPIENT_HELP = (
    "sender or domain only: block it for this recipient domain or address alone (its mail counts "
    "as certain spam for them; see `mailward allow list`) instead of refusing it for everyone"
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = commands.add_parser("block", help="list, add and remove blocks and suspensions")
    b.add_argument("--analyst", default="", help="name recorded in the audit trail (default: the OS user)")
    sub = b.add_subparsers(dest="block_command", required=True, metavar="ACTION")

    p = sub.add_parser("list", help="active blocks and suspensions, newest first")
    p.add_argument("--kind", choices=_KINDS)
    p.add_argument("--all", action="store_true", help="include lifted and expired ones")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(handler=_list)

    p = sub.add_parser("add", help="block an account, address, network, sender or domain")
    p.add_argument("kind", choices=_KINDS)
    p.add_argument("value")
    p.add_argument("--reason", required=True, help="why (for analysts; never shown to senders)")
    p.add_argument("--for", dest="duration", help="expire after this long: 30m, 12h, 7d, 2w (default: never)")
    p.add_argument("--recipient", default="", help=RECIPIENT_HELP)
    p.set_defaults(handler=_add)

    p = sub.add_parser("remove", help="lift a block or suspension")
    p.add_argument("kind", choices=_KINDS)
    p.add_argument("value")
    p.add_argument("--reason", default="", help="recorded in the audit trail")
    p.add_argument("--recipient", default="", help=RECIPIENT_HELP)
    p.set_defaults(handler=_remove)

    p = sub.add_parser("history", help="the audit trail of the block list")
    p.add_argument("kind", nargs="?", choices=_KINDS)
    p.add_argument("value", nargs="?")
    p.add_argument("--limit", type=row_limit, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_history)


def duration(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 12h, 7d")
    return float(match.group(1)) * _UNIT[match.group(2)]


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def _line(block: Block) -> str:
    now = time.time()
    state = (
        "active"
        if block.active(now)
        else f"expired {_when(block.expires_at)}"
        if block.expired(now)
        else f"lifted by {block.lifted_by} {_when(block.lifted_at)}"
    )
    until = "until lifted" if block.expires_at is None else f"until {_when(block.expires_at)}"
    return (
        f"{block.kind.value:8} {neutralise(block.value):32} {block.origin.value:13} {block.incident_id}  "
        f"{_when(block.created_at)} by {neutralise(block.created_by)}, {until}, {neutralise(state)}\n"
        f"{'':8} reason: {neutralise(block.reason)}"
    )


def _list(args: argparse.Namespace, settings: Settings) -> int:
    with incident_store(settings, args.analyst, "block list") as incidents:
        blocks = incidents.store.blocks(SubjectKind(args.kind) if args.kind else None, include_inactive=args.all)
    for block in blocks:
        print(json_line(block.as_dict()) if args.json else _line(block))
    if not blocks and not args.json:
        print("no blocks")
    return OK


def _scoped(args: argparse.Namespace, command: str) -> bool | None:
    """Whether this is a per-recipient sender list entry; None (after a message) when --recipient does not fit."""
    if not args.recipient:
        return False
    if args.kind not in _SCOPED:
        print(f"mailward {command}: --recipient applies to sender and domain blocks only", file=sys.stderr)
        return None
    return True


def _add(args: argparse.Namespace, settings: Settings) -> int:
    scoped = _scoped(args, "block add")
    if scoped is None or (scoped and args.duration):
        if scoped:
            print("mailward block add: --for does not apply with --recipient", file=sys.stderr)
        return FAILED
    if scoped:
        return add_entry(Listed.BLOCK, args.value, args.recipient, args.reason, args.analyst, settings, "block add")
    try:
        seconds = duration(args.duration) if args.duration else None
    except argparse.ArgumentTypeError as exc:
        print(f"mailward block add: {exc}", file=sys.stderr)
        return FAILED
    actor = Actor.current(args.analyst)
    with incident_store(settings, args.analyst, "block add") as incidents:  # closing waits for the alert
        block, created = incidents.block(SubjectKind(args.kind), args.value, args.reason, actor, seconds)
    if not created:
        print(f"already blocked:\n{_line(block)}", file=sys.stderr)
        return REFUSED
    print(f"blocked:\n{_line(block)}")
    return OK


def _remove(args: argparse.Namespace, settings: Settings) -> int:
    scoped = _scoped(args, "block remove")
    if scoped is None:
        return FAILED
    if scoped:
        return remove_entry(
            Listed.BLOCK, args.value, args.recipient, args.reason, args.analyst, settings, "block remove"
        )
    actor = Actor.current(args.analyst)
    with incident_store(settings, args.analyst, "block remove") as incidents:
        block = incidents.lift(SubjectKind(args.kind), args.value, actor, args.reason)
    if block is None:
        print(f"mailward block remove: no active block of {args.kind} {neutralise(args.value)}", file=sys.stderr)
        return REFUSED
    print(f"lifted:\n{_line(block)}")
    return OK


def _history(args: argparse.Namespace, settings: Settings) -> int:
    kind = SubjectKind(args.kind) if args.kind else None
    with incident_store(settings, args.analyst, "block history") as incidents:
        value = normalise(kind, args.value) if kind is not None and args.value else None
        entries = incidents.store.audit(kind, value, args.limit)
    for entry in entries:
        if args.json:
            print(json_line(entry.as_dict()))
        else:
            where = f" ({entry.origin})" if entry.origin else ""
            print(
                neutralise(
                    f"{_when(entry.at)}  {entry.action:6} {entry.kind.value} {entry.value}  "
                    f"{entry.incident_id}  by {entry.actor}@{entry.host}{where}: {entry.detail}"
                )
            )
    return OK
