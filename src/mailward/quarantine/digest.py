"""Digest notifications: plain-text mail listing what was quarantined, never its content.

Two kinds: each inbound recipient hears about messages held for them (so a
missing invoice is noticed), and the configured security contacts get the full
list. Outbound messages never go into recipient digests: their recipients are
outside the organisation and must not learn that anything was held.
Only envelope sender, subject, time, reasons and the ID are listed, all
neutralised; the reader asks an analyst to release by ID.
"""

from __future__ import annotations

import smtplib
import socket
from collections import defaultdict
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from ..envelope import Direction
from ..textsafe import neutralise
from .records import QuarantineRecord
from .release import Relay
from .render import when


@dataclass(frozen=True)
class Digest:
    to: str
    records: tuple[QuarantineRecord, ...]
    full: bool            # the security contact's list of everything, with direction and recipients


def plan_digests(records: list[QuarantineRecord], contacts: tuple[str, ...], per_recipient: bool) -> list[Digest]:
    """Who gets which records: every contact all of them; each inbound recipient their own."""
    digests = [Digest(c, tuple(records), True) for c in contacts if records]
    if per_recipient:
        mine: dict[str, list[QuarantineRecord]] = defaultdict(list)
        for r in records:
            if r.direction is Direction.INBOUND:
                for rcpt in dict.fromkeys(a.lower() for a in r.envelope.recipients):
                    mine[rcpt].append(r)
        digests += [Digest(to, tuple(rs), False) for to, rs in sorted(mine.items())]
    return digests


def compose(digest: Digest, sender: str, period: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = digest.to
    msg["Subject"] = f"Quarantine digest: {len(digest.records)} message(s) held {period}"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg["Auto-Submitted"] = "auto-generated"
    lines = [f"Messages held by Mailward {period}"
             + ("" if digest.full else " that were addressed to you") + ".", ""]
    for r in digest.records:
        lines.append(f"- {when(r.received_at)}  ID {r.id}")
        lines.append(f"  From:    <{neutralise(r.envelope.mail_from)}>")
        lines.append(f"  Subject: {neutralise(r.subject) or '(none)'}")
        lines.append(f"  Reason:  {', '.join(r.reasons) or '-'}")
        if digest.full:
            recipients = neutralise(", ".join(r.envelope.recipients))
            lines.append(f"  {r.direction.value} to {recipients}; status {r.status.value}")
        lines.append("")
    lines.append("If one of these is a message you expected, ask your mail administrator to review it,")
    lines.append("quoting its ID. Do not reply to this message.")
    msg.set_content("\n".join(lines), charset="utf-8")
    return msg


def default_sender() -> str:
    return f"postmaster@{socket.getfqdn()}"


def send(digests: list[Digest], sender: str, period: str, relay: Relay) -> list[tuple[Digest, str]]:
    """Send each digest in one SMTP session; returns ``(digest, error)`` for each that failed."""
    failed: list[tuple[Digest, str]] = []
    if not digests:
        return failed
    with smtplib.SMTP(relay.host, relay.port, timeout=relay.timeout) as smtp:
        for digest in digests:
            try:
                smtp.send_message(compose(digest, sender, period), from_addr=sender, to_addrs=[digest.to])
            except smtplib.SMTPException as exc:
                failed.append((digest, str(exc)))
                smtp.rset()
    return failed
