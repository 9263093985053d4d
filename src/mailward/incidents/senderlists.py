"""Sender allow and block lists, global, per recipient domain and per recipient, as the milter sees them.

Like the block list, an in-memory snapshot reloaded every ``incidents.refresh``
seconds (and at once after a change on this host), so a lookup costs no
database round trip and survives a brief database outage.

Which entry applies (``docs/policy.md``): the most specific scope that has an
entry for the sender wins (recipient address, then its domain and parent
domains, then the global list); within a scope the most specific sender
(address, then domain, then parent domains). Only inbound mail is looked up:
outbound senders are our own users.

Anti-spoofing: an *allow* entry is honoured only when the envelope sender's
domain is authenticated for this message (SPF passed for it, or a DKIM
signature or DMARC passed for it or a parent domain). An unauthenticated allow
is ignored and the message is screened as usual. A *block* entry needs no
proof: a forger gains nothing by having its mail stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from ..addresses import policy_keys
from ..envelope import Direction, Envelope
from ..policy import Listed
from .records import SenderEntry

log = logging.getLogger(__name__)


def authenticated_for(sender: str, authenticated: Iterable[str]) -> bool:
    """Whether ``sender``'s domain is one of the ``authenticated`` domains or below one of them."""
    domain = sender.rpartition("@")[2].lower().rstrip(".")
    return bool(domain) and any(domain == d or domain.endswith("." + d) for d in authenticated)


class SenderLists:
    """The entry (allow or block) that applies to one sender and recipient."""

    def __init__(self, load: Callable[[], list[SenderEntry]], refresh: float, clock: Callable[[], float] = time.time):
        self._load = load
        self._refresh = refresh
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], SenderEntry] = {}
        self._loaded_at = float("-inf")

    def reload(self) -> None:
        entries = {(e.scope, e.sender): e for e in self._load()}
        with self._lock:
            self._entries, self._loaded_at = entries, self._clock()

    def _current(self) -> dict[tuple[str, str], SenderEntry]:
        if self._clock() - self._loaded_at >= self._refresh:
            try:
                self.reload()
            except Exception:  # keep the last good lists: a database outage must not stop the mail
                log.exception("cannot reload the sender lists; using the last copy")
                with self._lock:
                    self._loaded_at = self._clock()
        return self._entries

    def entry(self, mail_from: str, recipient: str) -> SenderEntry | None:
        """The entry that applies by precedence, whether or not it would be honoured."""
        entries = self._current()
        if not entries or "@" not in mail_from:
            return None  # bounces (null sender) are never listed
        senders = policy_keys(mail_from)
        for scope in (*policy_keys(recipient), ""):
            for sender in senders:
                found = entries.get((scope, sender))
                if found is not None:
                    return found
        return None

    def listed(self, envelope: Envelope, recipient: str, authenticated: tuple[str, ...]) -> Listed | None:
        """Block, allow (only for an authenticated sender domain) or None, for inbound mail."""
        if envelope.direction is not Direction.INBOUND:
            return None
        found = self.entry(envelope.mail_from, recipient)
        if found is None:
            return None
        if found.listed is Listed.ALLOW and not authenticated_for(envelope.mail_from, authenticated):
            log.info(
                "allow entry for %s not honoured: the sender domain is not authenticated",
                found.sender,
                extra={"queue_id": envelope.queue_id, "connection_id": envelope.connection_id},
            )
            return None
        return found.listed
