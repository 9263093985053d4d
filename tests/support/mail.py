"""The one place test mail is built, at test time (EICAR and GTUBE are written here, never committed as files).

Two ways to build, for two kinds of test:

- ``message`` and ``mime_mail`` go through the standard library's MIME writer: mail as a mail client
  would send it, with attachments and alternatives.
- ``literal`` writes headers and body exactly as given, for tests whose assertions depend on the
  bytes (header order and spacing, line ends, DKIM-signed headers, tokens a model learns):
  ``plain_mail`` (quarantine and web), ``bare_mail`` (models) and ``signable_mail`` (reputation).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from email.message import EmailMessage

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def _mime(
    body: str,
    subject: str,
    sender: str,
    to: str,
    attachments: Sequence[tuple[str, bytes, str]] = (),
    html: str | None = None,
    message_id: str | None = None,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    if message_id is not None:
        msg["Message-ID"] = message_id
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for name, data, ctype in attachments:
        maintype, subtype = ctype.split("/", 1)
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg


def message(
    body: str = "Hello,\n\nthe minutes of today's meeting are below.\n\nRegards,\nAnna\n",
    subject: str = "Meeting minutes",
    sender: str = "anna@example.org",
    to: str = "user@example.test",
    attachments: tuple[tuple[str, bytes, str], ...] = (),
) -> tuple[str, bytes]:
    """(Message-ID, raw bytes with CRLF line ends): mail as an MTA receives it, found again by its ID."""
    message_id = f"<{uuid.uuid4().hex}@example.org>"
    msg = _mime(body, subject, sender, to, attachments, message_id=message_id)
    return message_id, msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def eicar_message(**kw) -> tuple[str, bytes]:
    return message(attachments=(("invoice.com", EICAR, "application/octet-stream"),), **kw)


def gtube_message(**kw) -> tuple[str, bytes]:
    return message(body=f"Cheap watches!\n\n{GTUBE}\n", subject="Special offer", **kw)


def mime_mail(
    body: str = "Hello,\nsee the attachment.\n",
    attachments: Sequence[tuple[str, bytes]] = (),
    subject: str = "Documents",
    html: str | None = None,
) -> bytes:
    """A MIME mail (LF line ends, no Message-ID) carrying ``(filename, bytes)`` attachments, for the scanners."""
    octets = [(name, data, "application/octet-stream") for name, data in attachments]
    return _mime(body, subject, "sender@example.org", "user@example.com", octets, html).as_bytes()


def literal(headers: Sequence[tuple[str, str]], body: str | bytes = b"", *, eol: str = "\r\n") -> bytes:
    """These headers in this order, each ``Name: value`` then ``eol``, a blank line, and ``body`` as given."""
    head = "".join(f"{name}: {value}{eol}" for name, value in headers) + eol
    return head.encode() + (body.encode() if isinstance(body, str) else body)


def plain_mail(subject: str = "Hello", sender: str = "alice@example.org", body: bytes = b"Hi there.\r\n") -> bytes:
    """A plain-text mail from Alice to Bob (CRLF), as the quarantine stores and lists it."""
    return literal(
        [
            ("From", f"Alice <{sender}>"),
            ("To", "bob@example.net"),
            ("Subject", subject),
            ("MIME-Version", "1.0"),
            ("Content-Type", "text/plain; charset=utf-8"),
        ],
        body,
    )


def bare_mail(subject: str, body: str) -> bytes:
    """Only From and Subject (LF): the model tests' mail, whose every token is one the test chose."""
    return literal([("From", "someone@example.org"), ("Subject", subject)], f"{body}\n", eol="\n")


def signable_mail(from_: str = "Alice <alice@sender.test>", body: str = "Hello Bob,\nsee you.\n") -> bytes:
    """The headers a DKIM signature covers (From, To, Subject, Date, Message-ID), LF line ends."""
    return literal(
        [
            ("From", from_),
            ("To", "bob@dest.test"),
            ("Subject", "lunch"),
            ("Date", "Mon, 1 Jan 2024 10:00:00 +0000"),
            ("Message-ID", "<1@sender.test>"),
        ],
        body,
        eol="\n",
    )
