"""Digest notifications: mail listing what was quarantined, never its content.

Two kinds: each inbound recipient hears about messages held for them (so a
missing invoice is noticed), and the configured security contacts get the full
list. Outbound messages never go into recipient digests: their recipients are
outside the organisation and must not learn that anything was held.
Only envelope sender, subject, time, reasons and the ID are listed, all
neutralised (and HTML-escaped in the HTML part).

Each digest is a plain-text part and an HTML alternative. With ``web.base_url``
set, a recipient's digest links to their own page (signed, expiring links, see
:mod:`.links`) where they release held spam themselves; malware is listed but
never linked. Without it, the text says how to ask for a release.

Once per message and reader: the audit trail records every listing
(``notify``, "listed in digest to ADDRESS"), and a message already listed to
an address is not listed to it again, so running the digest twice in a period
sends nothing new.
"""

from __future__ import annotations

import html
import smtplib
import socket
from collections import defaultdict
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from ..envelope import Direction
from ..textsafe import neutralise
from .links import new_link, sign_link
from .records import AuditEvent, QuarantineRecord
from .release import Relay
from .render import when

NOTIFY = "notify"
_LISTED = "listed in digest to "


@dataclass(frozen=True)
class Digest:
    to: str
    records: tuple[QuarantineRecord, ...]
    full: bool  # the security contact's list of everything, with direction and recipients
    page: str = ""  # the recipient's signed page for this digest ("" without a web page)
    links: dict[str, str] = field(default_factory=dict)  # quarantine ID -> signed page of that message


@dataclass(frozen=True)
class Links:
    """Where the web page is and how to sign links to it; absent when there is no web page."""

    base_url: str
    key: bytes
    days: int
    now: float

    def url(self, recipient: str, quarantine_id: str = "") -> str:
        token = sign_link(self.key, new_link(recipient, quarantine_id, self.now, self.days))
        return f"{self.base_url.rstrip('/')}/r/{token}"


def already_listed(history: list[AuditEvent]) -> set[str]:
    """The addresses a message was already listed to, from its audit trail."""
    return {e.detail[len(_LISTED) :].lower() for e in history if e.action == NOTIFY and e.detail.startswith(_LISTED)}


def listed_detail(to: str) -> str:
    return _LISTED + to


def plan_digests(
    records: list[QuarantineRecord],
    contacts: tuple[str, ...],
    per_recipient: bool,
    listed: dict[str, set[str]] | None = None,
    links: Links | None = None,
) -> list[Digest]:
    """Who gets which records: every contact all of them; each inbound recipient their own.

    ``listed`` maps a quarantine ID to the addresses it was already listed to;
    those pairs are left out, and a reader with nothing new gets no digest.
    """
    listed = listed or {}

    def new_for(to: str) -> tuple[QuarantineRecord, ...]:
        return tuple(r for r in records if to.lower() not in listed.get(r.id, set()))

    digests = [Digest(c, new, True) for c in contacts if (new := new_for(c))]
    if per_recipient:
        mine: dict[str, list[QuarantineRecord]] = defaultdict(list)
        for r in records:
            if r.direction is Direction.INBOUND:
                for rcpt in dict.fromkeys(a.lower() for a in r.envelope.recipients):
                    if rcpt not in listed.get(r.id, set()):
                        mine[rcpt].append(r)
        for to, rs in sorted(mine.items()):
            if links is None:
                digests.append(Digest(to, tuple(rs), False))
                continue
            own = {r.id: links.url(to, r.id) for r in rs if _recipient_may_release(r)}
            digests.append(Digest(to, tuple(rs), False, links.url(to) if own else "", own))
    return digests


def _recipient_may_release(record: QuarantineRecord) -> bool:
    return not record.is_malware and len({a.lower() for a in record.envelope.recipients}) == 1


def compose(digest: Digest, sender: str, period: str, contact: str = "") -> EmailMessage:
    """The digest mail: plain text, and the same as HTML with links when there is a web page."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = digest.to
    msg["Subject"] = f"Quarantine digest: {len(digest.records)} message(s) held {period}"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or None)
    msg["Auto-Submitted"] = "auto-generated"
    ask = contact or "your mail administrator"
    intro = f"Messages held by Mailward {period}" + ("" if digest.full else " that were addressed to you") + "."
    lines = [intro, ""]
    for r in digest.records:
        lines.append(f"- {when(r.received_at)}  ID {r.id}")
        lines.append(f"  From:    <{neutralise(r.envelope.mail_from)}>")
        lines.append(f"  Subject: {neutralise(r.subject) or '(none)'}")
        lines.append(f"  Reason:  {', '.join(r.reasons) or '-'}")
        if digest.full:
            recipients = neutralise(", ".join(r.envelope.recipients))
            lines.append(f"  {r.direction.value} to {recipients}; status {r.status.value}")
        elif r.id in digest.links:
            lines.append(f"  Review or release: {digest.links[r.id]}")
        lines.append("")
    if digest.page:
        lines.append(f"All your held messages: {digest.page}")
        lines.append("The links are personal: do not forward this message.")
    if digest.full:
        lines.append("Review them with `mailward quarantine` or the quarantine web page.")
    else:
        lines.append(f"If one of these is a message you expected and it has no link, ask {ask} to review it,")
        lines.append("quoting its ID. Do not reply to this message.")
    msg.set_content("\n".join(lines), charset="utf-8")
    msg.add_alternative(_html(digest, intro, ask), subtype="html", charset="utf-8")
    return msg


def _html(digest: Digest, intro: str, ask: str) -> str:
    """The HTML alternative: a plain table, every value neutralised then escaped, no remote content."""

    def e(value: object) -> str:
        return html.escape(neutralise(str(value)), quote=True)

    rows = []
    for r in digest.records:
        cells = [
            when(r.received_at),
            f"&lt;{e(r.envelope.mail_from)}&gt;",
            e(r.subject) or "(none)",
            e(", ".join(r.reasons) or "-"),
            e(r.id),
        ]
        if digest.full:
            cells.append(f"{r.direction.value} to {e(', '.join(r.envelope.recipients))}; {r.status.value}")
        else:
            link = digest.links.get(r.id)
            cells.append(f'<a href="{e(link)}">Review or release</a>' if link else "ask an administrator")
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    last = "Recipients" if digest.full else "Action"
    page = (
        (f'<p><a href="{e(digest.page)}">All your held messages</a> (personal links: do not forward this message).</p>')
        if digest.page
        else ""
    )
    footer = (
        ""
        if digest.full
        else (
            f"<p>If one of these is a message you expected and it has no link, ask "
            f"{e(ask)} to review it, quoting its ID. Do not reply to this message.</p>"
        )
    )
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Quarantine digest</title></head><body>'
        f'<p>{e(intro)}</p><table border="1" cellpadding="4" cellspacing="0"><tr><th>Received</th>'
        f"<th>From</th><th>Subject</th><th>Reason</th><th>ID</th><th>{last}</th></tr>{''.join(rows)}</table>"
        f"{page}{footer}</body></html>"
    )


def default_sender() -> str:
    return f"postmaster@{socket.getfqdn()}"


def send(digests: list[Digest], sender: str, period: str, relay: Relay, contact: str = "") -> list[tuple[Digest, str]]:
    """Send each digest in one SMTP session; returns ``(digest, error)`` for each that failed."""
    failed: list[tuple[Digest, str]] = []
    if not digests:
        return failed
    with smtplib.SMTP(relay.host, relay.port, timeout=relay.timeout) as smtp:
        for digest in digests:
            try:
                smtp.send_message(compose(digest, sender, period, contact), from_addr=sender, to_addrs=[digest.to])
            except smtplib.SMTPException as exc:
                failed.append((digest, str(exc)))
                smtp.rset()
    return failed
