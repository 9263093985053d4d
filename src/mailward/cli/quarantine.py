"""`mailward quarantine ...`: review, release, label, export, purge and audit quarantined mail.

Every action that touches a message is written to the audit trail with the
OS user (or ``--analyst``), the host and the SSH client address if any.
Exit status: 0 done, 1 failed or not found, 3 refused (malware without
``--force``, already released, a release in progress).
"""

from __future__ import annotations

import argparse
import os
import re
import smtplib
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..actor import Actor
from ..config import Settings
from ..envelope import Direction
from ..errors import MailwardError
from ..evidence import Label
from ..marks import load_release_key
from ..quarantine import ListFilter, QuarantineStore, Removal, Status, open_store
from ..quarantine import digest as digests
from ..quarantine.links import link_key_path
from ..quarantine.release import Relay, ReleaseOutcome
from ..quarantine.render import render_history, render_list, render_show, when
from ..review.service import QuarantineService
from ..textsafe import json_line, neutralise
from ..verdict import Action
from .analyst import row_limit

OK, FAILED, REFUSED = 0, 1, 3
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "": 86400}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    q = commands.add_parser("quarantine", help="review, release, label and purge quarantined mail")
    q.add_argument("--analyst", default="", help="name recorded in the audit trail (default: the OS user)")
    sub = q.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")

    p = sub.add_parser("list", help="list quarantined messages, newest first")
    p.add_argument("--direction", choices=[d.value for d in Direction])
    p.add_argument("--verdict", choices=[a.value for a in Action], help="the action the policy chose")
    p.add_argument("--reason", help="a reason category, e.g. malware, spam")
    p.add_argument("--sender", help="envelope sender contains this")
    p.add_argument("--recipient", help="an envelope recipient contains this")
    p.add_argument("--subject", help="subject contains this")
    p.add_argument("--since", help="received at or after: 2024-05-01[T10:00] (UTC) or an age like 12h, 7d")
    p.add_argument("--until", help="received before: same forms as --since")
    p.add_argument("--status", choices=[s.value for s in Status])
    p.add_argument("--limit", type=row_limit, default=200)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(handler=_list)

    p = sub.add_parser("show", help="headers, parts, findings and text of one message, rendered safely")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_show)

    p = sub.add_parser("release", help="deliver to the original recipients through the configured relay")
    p.add_argument("id")
    p.add_argument("--force", action="store_true", help="required for messages with a malware verdict")
    p.add_argument(
        "--reclaim",
        action="store_true",
        help="take over a release whose releaser died (only after twice the relay timeout)",
    )
    p.add_argument(
        "--without-held-copy",
        action="store_true",
        help="with quarantine.hold: deliver although Postfix's held copy is gone "
        "(first make sure it was not released with postsuper -H)",
    )
    # With a hold queue the release deletes Postfix's held copy (postsuper): that needs root.
    p.set_defaults(handler=_release, needs_root=lambda settings: settings.quarantine.hold)

    p = sub.add_parser("delete", help="remove the message and its record (the audit trail stays)")
    p.add_argument("id")
    p.set_defaults(handler=_delete)

    p = sub.add_parser("label", help="record an analyst label for training (phish trains as spam)")
    p.add_argument("id")
    p.add_argument("label", choices=[lb.value for lb in Label])
    p.set_defaults(handler=_label)

    p = sub.add_parser("export", help="write the raw message (.eml) for sandbox analysis")
    p.add_argument("id")
    p.add_argument(
        "-o",
        "--output",
        help="file to create (mode 0600, never overwritten); default: standard output unless a terminal",
    )
    p.set_defaults(handler=_export)

    p = sub.add_parser("purge", help="delete records older than the retention (for cron or a systemd timer)")
    p.add_argument(
        "--older-than", help="age like 30d or 12h (a bare number is days; 0 purges everything); default: retention_days"
    )
    p.set_defaults(handler=_purge)

    p = sub.add_parser("history", help="the audit trail of one message")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_history)

    p = sub.add_parser("digest", help="mail each recipient (and the security contacts) what was held for them")
    p.add_argument("--since", default="24h", help="period covered: an age like 24h or a date (default 24h)")
    p.add_argument("--to", action="append", default=[], help="security contact (repeatable; adds to config)")
    p.add_argument("--contacts-only", action="store_true", help="send only the security contacts' digest")
    p.add_argument("--recipients", action="store_true", help=argparse.SUPPRESS)  # the default since 16.2
    p.add_argument("--dry-run", action="store_true", help="print the digests instead of sending them")
    p.set_defaults(handler=_digest)


def parse_age(text: str) -> float:
    """Seconds in ``30d``, ``12h``, ``90m``, ``2w`` (a bare number is days)."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 30d, 12h)")
    return float(match.group(1)) * _UNIT[match.group(2)]


def parse_when(text: str, now: float) -> float:
    """A point in time: an ISO date/time (UTC unless it says otherwise) or an age before ``now``."""
    if _DURATION.match(text) and not re.match(r"^\d{4}-", text):
        return now - parse_age(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date or age: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _run(args: argparse.Namespace, settings: Settings, action: Callable[[QuarantineStore, Actor], int]) -> int:
    try:
        with open_store(settings) as store:
            return action(store, Actor.current(args.analyst))
    except argparse.ArgumentTypeError as exc:
        print(f"mailward quarantine: {exc}", file=sys.stderr)
        return 2
    except (MailwardError, OSError, smtplib.SMTPException) as exc:
        print(f"mailward quarantine: {exc}", file=sys.stderr)
        return FAILED


def _not_found(quarantine_id: str) -> int:
    print(f"mailward quarantine: no quarantined message {quarantine_id}", file=sys.stderr)
    return FAILED


def _list(args: argparse.Namespace, settings: Settings) -> int:
    def action(store: QuarantineStore, actor: Actor) -> int:
        now = time.time()
        filters = ListFilter(
            direction=Direction(args.direction) if args.direction else None,
            action=args.verdict or "",
            reason=args.reason or "",
            sender=args.sender or "",
            recipient=args.recipient or "",
            subject=args.subject or "",
            since=parse_when(args.since, now) if args.since else None,
            until=parse_when(args.until, now) if args.until else None,
            status=Status(args.status) if args.status else None,
            limit=args.limit,
        )
        _print(args, QuarantineService(settings, store).find(filters), render_list)
        return OK

    return _run(args, settings, action)


def _print(args: argparse.Namespace, items: list[Any], render: Callable[[Any], str]) -> None:
    """One JSON object per line with --json, else the human table."""
    if args.json:
        sys.stdout.write("".join(json_line(item.as_dict()) + "\n" for item in items))
    else:
        sys.stdout.write(render(items))


def _show(args: argparse.Namespace, settings: Settings) -> int:
    def action(store: QuarantineStore, actor: Actor) -> int:
        seen = QuarantineService(settings, store).inspect(args.id, actor)
        if seen is None:
            return _not_found(args.id)
        record, view = seen.record, seen.view
        if args.json:
            print(
                json_line(
                    {
                        **record.as_dict(),
                        "headers": [list(h) for h in view.headers],
                        "parts": [p.as_dict() for p in view.parts],
                        "problem": view.problem,
                    }
                )
            )
        else:
            sys.stdout.write(render_show(record, view))
        return OK

    return _run(args, settings, action)


def _release(args: argparse.Namespace, settings: Settings) -> int:
    def action(store: QuarantineStore, actor: Actor) -> int:
        result = QuarantineService(settings, store).release(
            args.id, actor, force=args.force, reclaim=args.reclaim, without_held_copy=args.without_held_copy
        )
        messages = {
            ReleaseOutcome.RELEASED: f"released {args.id} {result.detail}",
            ReleaseOutcome.FAILED: f"release of {args.id} failed {result.detail}; it stays in quarantine",
            ReleaseOutcome.NOT_FOUND: f"no quarantined message {args.id}",
            ReleaseOutcome.ALREADY_RELEASED: f"{args.id} was already released",
            ReleaseOutcome.IN_PROGRESS: f"{args.id} is being released by someone else "
            "(if that releaser died, retry later with --reclaim)",
            ReleaseOutcome.NEEDS_FORCE: f"{args.id} has a malware verdict: release it only with --force",
            ReleaseOutcome.NO_HELD_COPY: f"{args.id}: {result.detail}; if its recipients never got it, "
            "release it with --without-held-copy",
        }
        print(
            neutralise(messages[result.outcome]),  # recipients and the relay's reply are not ours
            file=sys.stdout if result.outcome is ReleaseOutcome.RELEASED else sys.stderr,
        )
        if result.outcome is ReleaseOutcome.RELEASED:
            return OK
        return FAILED if result.outcome in (ReleaseOutcome.FAILED, ReleaseOutcome.NOT_FOUND) else REFUSED

    return _run(args, settings, action)


def _delete(args: argparse.Namespace, settings: Settings) -> int:
    def action(store: QuarantineStore, actor: Actor) -> int:
        outcome = QuarantineService(settings, store).delete(args.id, actor)
        if outcome is Removal.NOT_FOUND:
            return _not_found(args.id)
        if outcome is Removal.IN_PROGRESS:
            print(f"mailward quarantine: {args.id} is being released right now; not deleted", file=sys.stderr)
            return REFUSED
        print(f"deleted {args.id}")
        return OK

    return _run(args, settings, action)


def _label(args: argparse.Namespace, settings: Settings) -> int:
    def action(store: QuarantineStore, actor: Actor) -> int:
        if not QuarantineService(settings, store).label(args.id, Label(args.label), actor):
            return _not_found(args.id)
        print(f"labelled {args.id} {args.label}")
        return OK

    return _run(args, settings, action)


def _export(args: argparse.Namespace, settings: Settings) -> int:
    def action(store: QuarantineStore, actor: Actor) -> int:
        if store.get(args.id) is None:
            return _not_found(args.id)
        raw = store.read(args.id)
        if args.output:
            try:
                fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as exc:
                print(f"mailward quarantine: cannot create {args.output}: {exc.strerror}", file=sys.stderr)
                return FAILED
            with os.fdopen(fd, "wb") as out:
                out.write(raw)
            where = str(Path(args.output).resolve())
        elif sys.stdout.isatty():
            print(
                "mailward quarantine: refusing to write a raw message to a terminal; use -o FILE or a pipe",
                file=sys.stderr,
            )
            return FAILED
        else:
            sys.stdout.buffer.write(raw)
            sys.stdout.buffer.flush()
            where = "standard output"
        store.record_event(args.id, "export", actor, f"{len(raw)} bytes to {where}")
        return OK

    return _run(args, settings, action)


def _purge(args: argparse.Namespace, settings: Settings) -> int:
    def action(store: QuarantineStore, actor: Actor) -> int:
        if args.older_than is not None:
            days = parse_age(args.older_than) / 86400  # 0: everything received before now
        elif settings.quarantine.retention_days > 0:
            days = settings.quarantine.retention_days
        else:
            print("retention_days is 0 (keep forever) and no --older-than given: nothing purged")
            return OK
        purged = store.purge(days, actor)
        print(f"purged {len(purged)} message(s) older than {days:g} days")
        return OK

    return _run(args, settings, action)


def _history(args: argparse.Namespace, settings: Settings) -> int:
    def action(store: QuarantineStore, actor: Actor) -> int:
        events = QuarantineService(settings, store).history(args.id)
        if not events:
            return _not_found(args.id)
        _print(args, events, render_history)
        return OK

    return _run(args, settings, action)


def _digest(args: argparse.Namespace, settings: Settings) -> int:
    def action(store: QuarantineStore, actor: Actor) -> int:
        now = time.time()
        since = parse_when(args.since, now)
        records = store.list(ListFilter(since=since, status=Status.HELD, limit=100_000))
        contacts = tuple(dict.fromkeys([*settings.quarantine.digest_recipients, *args.to]))
        listed = {r.id: digests.already_listed(store.history(r.id)) for r in records}
        links = None
        if settings.web.base_url:
            links = digests.Links(
                settings.web.base_url, load_release_key(link_key_path(settings)), settings.web.link_days, now
            )
        plan = digests.plan_digests(records, contacts, not args.contacts_only, listed, links)
        sender = settings.quarantine.digest_sender or digests.default_sender()
        contact = settings.quarantine.digest_recipients[0] if settings.quarantine.digest_recipients else ""
        period = f"since {when(since)}"
        if args.dry_run:
            for d in plan:
                sys.stdout.write(digests.compose(d, sender, period, contact).as_string() + "\n")
            return OK
        failed = digests.send(plan, sender, period, Relay.from_settings(settings), contact)
        failed_to = {d.to for d, _ in failed}
        for d in plan:
            if d.to not in failed_to:
                for r in d.records:
                    store.record_event(r.id, digests.NOTIFY, actor, digests.listed_detail(d.to))
        for d, error in failed:
            print(f"mailward quarantine: digest to {d.to} failed: {error}", file=sys.stderr)
        print(
            f"sent {len(plan) - len(failed)} digest(s) covering {len({r.id for d in plan for r in d.records})} "
            "message(s)"
        )
        return FAILED if failed else OK

    return _run(args, settings, action)
