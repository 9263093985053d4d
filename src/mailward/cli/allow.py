"""`mailward allow list | add | remove`: the sender allow list, global or per recipient domain or address.

An allowed sender skips the spam and reputation checks for the recipients the
entry is for, and only when its domain passed SPF, DKIM or DMARC for the
message; malware, banned files and macros are stopped all the same. Per-recipient
*block* entries are made with ``mailward block add sender|domain VALUE --recipient
SCOPE`` and listed here too. Every change is in the audit trail (``mailward block
history``). Exit status: ``cli.analyst``.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..actor import Actor
from ..addresses import policy_subject
from ..config import Settings
from ..incidents import SenderEntry
from ..policy import Listed
from ..textsafe import json_line, neutralise
from .analyst import OK, REFUSED, incident_store

SCOPE_HELP = "recipient domain or address the entry is for (default: everyone)"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = commands.add_parser("allow", help="list, add and remove sender allow list entries")
    a.add_argument("--analyst", default="", help="name recorded in the audit trail (default: the OS user)")
    sub = a.add_subparsers(dest="allow_command", required=True, metavar="ACTION")

    p = sub.add_parser("list", help="active allow and per-recipient block entries")
    p.add_argument("--recipient", default=None, help="only the entries for this scope ('' = the global list)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(handler=_list)

    p = sub.add_parser("add", help="allow a sender address or domain")
    p.add_argument("sender", help="user@example.org, or example.org (and its subdomains)")
    p.add_argument("--recipient", default="", help=SCOPE_HELP)
    p.add_argument("--reason", required=True, help="why (for analysts)")
    p.set_defaults(handler=_add)

    p = sub.add_parser("remove", help="remove a sender's allow entry")
    p.add_argument("sender")
    p.add_argument("--recipient", default="", help=SCOPE_HELP)
    p.add_argument("--reason", default="", help="recorded in the audit trail")
    p.set_defaults(handler=_remove)


def line(entry: SenderEntry) -> str:
    """One entry for a terminal (every stored text escaped)."""
    when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(entry.created_at))
    scope = entry.scope or "(everyone)"
    return (
        f"{entry.listed.value:5} {neutralise(entry.sender):32} for {neutralise(scope):28} {when} by "
        f"{neutralise(entry.created_by)}\n{'':5} reason: {neutralise(entry.reason)}"
    )


def add_entry(
    listed: Listed, sender: str, scope: str, reason: str, analyst: str, settings: Settings, command: str
) -> int:
    """Shared by `allow add` and `block add --recipient`."""
    with incident_store(settings, analyst, command) as incidents:
        entry, created = incidents.list_sender(listed, sender, scope, reason, Actor.current(analyst))
    if not created:
        print(f"already listed (remove it first to change it):\n{line(entry)}", file=sys.stderr)
        return REFUSED
    print(f"{'allowed' if listed is Listed.ALLOW else 'blocked'}:\n{line(entry)}")
    return OK


def remove_entry(
    listed: Listed, sender: str, scope: str, reason: str, analyst: str, settings: Settings, command: str
) -> int:
    """Shared by `allow remove` and `block remove --recipient`: removes only an entry of that list."""
    with incident_store(settings, analyst, command) as incidents:
        current = [
            e for e in incidents.sender_entries(scope) if e.sender == policy_subject(sender) and e.listed is listed
        ]
        entry = incidents.unlist_sender(sender, scope, Actor.current(analyst), reason) if current else None
    if entry is None:
        where = f"for {scope}" if scope else "for everyone"
        print(
            f"mailward {command}: no {listed.value} entry of {neutralise(sender)} {neutralise(where)}", file=sys.stderr
        )
        return REFUSED
    print(f"removed:\n{line(entry)}")
    return OK


def _list(args: argparse.Namespace, settings: Settings) -> int:
    with incident_store(settings, args.analyst, "allow list") as incidents:
        entries = incidents.sender_entries(args.recipient)
    for entry in entries:
        print(json_line(entry.as_dict()) if args.json else line(entry))
    if not entries and not args.json:
        print("no entries")
    return OK


def _add(args: argparse.Namespace, settings: Settings) -> int:
    return add_entry(Listed.ALLOW, args.sender, args.recipient, args.reason, args.analyst, settings, "allow add")


def _remove(args: argparse.Namespace, settings: Settings) -> int:
    return remove_entry(Listed.ALLOW, args.sender, args.recipient, args.reason, args.analyst, settings, "allow remove")
