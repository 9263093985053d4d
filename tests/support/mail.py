"""Build test messages at test time (EICAR and GTUBE are written here, never committed as files)."""

from __future__ import annotations

import uuid
from email.message import EmailMessage

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def message(
    body: str = "Hello,\n\nthe minutes of today's meeting are below.\n\nRegards,\nAnna\n",
    subject: str = "Meeting minutes",
    sender: str = "anna@example.org",
    to: str = "user@example.test",
    attachments: tuple[tuple[str, bytes, str], ...] = (),
) -> tuple[str, bytes]:
    """Return (Message-ID, raw bytes with CRLF line ends)."""
    msg = EmailMessage()
    message_id = f"<{uuid.uuid4().hex}@example.org>"
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    msg.set_content(body)
    for name, data, ctype in attachments:
        maintype, subtype = ctype.split("/", 1)
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return message_id, msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def eicar_message(**kw) -> tuple[str, bytes]:
    return message(attachments=(("invoice.com", EICAR, "application/octet-stream"),), **kw)


def gtube_message(**kw) -> tuple[str, bytes]:
    return message(body=f"Cheap watches!\n\n{GTUBE}\n", subject="Special offer", **kw)
