"""Release and alert marks: the HMAC primitives the quarantine and incident response share.

A mark is ``<id> <unix time> <hmac>`` in a header prepended to a message:
HMAC-SHA-256 under the release key (``release.key``, shared by all milter
hosts) over its domain (``release`` or ``alert``), the ID, the time, a digest
of the content (the body's lines and the fields that decide how they are read)
and of the recipients, so it cannot be forged, moved to other content or replayed
to other recipients. The quarantine marks what an
analyst releases (:mod:`mailward.quarantine.release`, which also checks marks
in the milter); incident response marks its alert mail (:mod:`mailward.incidents.alerts`).
Both build on this module, so neither imports the other.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from pathlib import Path

from .config import Settings
from .dbfile import create_private_file
from .errors import StoreError
from .evidence import content_digest
from .message import split_message

_KEY_BYTES = 32


def key_path(settings: Settings) -> Path:
    return settings.state_path(settings.quarantine.release_key_file, "release.key")


def load_release_key(path: Path) -> bytes:
    """Read the release key, creating it (random, mode 0600) the first time.

    Processes that start together may all find it missing: each makes a key of its own
    (``dbfile.create_private_file``), the first to appear wins, and no reader sees one half written.
    """
    if not path.exists():
        try:
            create_private_file(path, secrets.token_bytes(_KEY_BYTES))
        except OSError as exc:
            raise StoreError(f"cannot create release key {path}: {exc.strerror}") from exc
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"cannot read release key {path}: {exc.strerror}") from exc
    if len(key) < 16:
        raise StoreError(f"release key {path} is shorter than 16 bytes")
    return key


def recipients_digest(recipients: Iterable[str]) -> str:
    """Order and repetition do not matter: the MTA may pass recipients in any order."""
    return hashlib.sha256("\n".join(sorted(set(recipients))).encode("utf-8", "surrogateescape")).hexdigest()


def signature(key: bytes, domain: str, ident: str, stamp: int, digest: str, recipients: str) -> str:
    """The HMAC of one mark; ``digest`` is the body's, ``recipients`` the recipients' digest."""
    text = f"{domain} {ident} {stamp} {digest} {recipients}"
    return hmac.new(key, text.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def _mark(key: bytes, domain: str, ident: str, raw: bytes, recipients: Iterable[str], now: float) -> str:
    stamp = int(now)
    digest = content_digest(*split_message(raw))
    return f"{ident} {stamp} {signature(key, domain, ident, stamp, digest, recipients_digest(recipients))}"


def release_mark(key: bytes, quarantine_id: str, raw: bytes, recipients: Iterable[str], now: float) -> str:
    """The value of the ``X-Mailward-Release`` header for the message ``raw`` released to ``recipients``."""
    return _mark(key, "release", quarantine_id, raw, recipients, now)


def alert_mark(key: bytes, incident_id: str, raw: bytes, recipients: Iterable[str], now: float) -> str:
    """The value of the ``X-Mailward-Alert-Mark`` header of the alert e-mail ``raw``."""
    return _mark(key, "alert", incident_id, raw, recipients, now)


def parse_mark(value: str) -> tuple[str, int, str] | None:
    """``(id, stamp, hmac)`` of a mark header's value, or None if it is not shaped like one."""
    parts = value.split()
    if len(parts) != 3 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2]


def marked(raw: bytes, header_name: str, header_value: str) -> bytes:
    """``raw`` with a mark header prepended, in the message's own line-ending style."""
    eol = b"\r\n" if b"\r\n" in raw[:4096] else b"\n"
    return f"{header_name}: {header_value}".encode("ascii") + eol + raw
