"""Signed, expiring links that let one recipient see and release their own held mail.

A digest carries links of two scopes: one message, or the whole digest (every
held message for that recipient received before the link was made). The link
is the authority, so it is an HMAC (SHA-256) over the recipient, the scope and
both times, with a key of its own in the state directory (``links.key``; not the
release key, so a leaked link key cannot forge release marks). Only the stdlib:
digests are signed by the lean CLI install, verified by ``mailward web``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from .records import check_id

KEY_NAME = "links.key"
_DOMAIN = "mailward-recipient-link-v1"


@dataclass(frozen=True)
class RecipientLink:
    recipient: str  # lower-case envelope address
    quarantine_id: str  # one message, or "" for the whole digest
    issued_at: int
    expires_at: int

    def valid_at(self, now: float) -> bool:
        return self.issued_at - 300 <= now < self.expires_at  # five minutes of clock skew


def link_key_path(settings: Settings) -> Path:
    return Path(settings.state_dir) / KEY_NAME


def _payload(link: RecipientLink) -> bytes:
    return "\n".join((_DOMAIN, link.recipient, link.quarantine_id, str(link.issued_at), str(link.expires_at))).encode(
        "utf-8", "surrogateescape"
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_link(key: bytes, link: RecipientLink) -> str:
    """The URL-safe token for ``link``: the payload and its HMAC, each base64url."""
    payload = _payload(link)
    return _b64(payload) + "." + _b64(hmac.new(key, payload, hashlib.sha256).digest())


def verify_link(key: bytes, token: str, now: float) -> RecipientLink | None:
    """The link ``token`` stands for, if its HMAC holds and it has not expired; else None."""
    body, dot, mac = token.partition(".")
    if not dot or len(token) > 2048:
        return None
    try:
        payload, signature = _unb64(body), _unb64(mac)
    except ValueError:
        return None
    if not hmac.compare_digest(signature, hmac.new(key, payload, hashlib.sha256).digest()):
        return None
    fields = payload.decode("utf-8", "surrogateescape").split("\n")
    if len(fields) != 5 or fields[0] != _DOMAIN or not fields[3].isdigit() or not fields[4].isdigit():
        return None
    if fields[2]:
        check_id(fields[2])
    link = RecipientLink(fields[1], fields[2], int(fields[3]), int(fields[4]))
    return link if link.valid_at(now) else None


def new_link(recipient: str, quarantine_id: str, now: float, days: int) -> RecipientLink:
    """A link made at ``now``; whole seconds rounded up, so it covers mail received in that second."""
    issued = math.ceil(now)
    return RecipientLink(recipient.lower(), quarantine_id, issued, issued + days * 86400)
