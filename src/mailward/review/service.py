"""What analysts (CLI or web) and recipients (digest links) may do to quarantined mail: one place.

``mailward quarantine`` and ``mailward web`` both call these methods, so they
share the store, the release rules (claim once, malware only with force) and
the audit trail; only the actor differs (the OS user, or ``web:<account>``).
Recipients get a narrower door (:meth:`QuarantineService.recipient_records`,
:meth:`QuarantineService.release_for_recipient`): only held inbound mail
addressed to them, never malware; and since a release delivers to all the
original recipients, a recipient may release only a message sent to nobody else.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from ..actor import Actor
from ..config import Settings
from ..envelope import Direction
from ..errors import StoreError
from ..evidence import Label
from ..incidents import SubjectKind, open_incidents
from ..marks import key_path, load_release_key
from ..policy import Listed
from ..quarantine.records import AuditEvent, ListFilter, QuarantineRecord, Removal, Status
from ..quarantine.release import Relay, ReleaseOutcome, ReleaseResult, release
from ..quarantine.render import MessageView, inspect_message
from ..quarantine.store import QuarantineStore


@dataclass(frozen=True)
class Inspection:
    """One message as an analyst sees it: the record, its parsed view and its audit trail."""

    record: QuarantineRecord
    view: MessageView
    history: tuple[AuditEvent, ...]


class QuarantineService:
    """Review actions on one store, with the configured relay, release key and limits."""

    def __init__(self, settings: Settings, store: QuarantineStore, relay: Relay | None = None):
        self.settings = settings
        self.store = store
        self.relay = relay or Relay.from_settings(settings)

    def find(self, filters: ListFilter) -> list[QuarantineRecord]:
        return self.store.list(filters)

    def get(self, quarantine_id: str) -> QuarantineRecord | None:
        return self.store.get(quarantine_id)

    def inspect(self, quarantine_id: str, actor: Actor) -> Inspection | None:
        """Parse the stored bytes for display (never render them) and note who looked."""
        record = self.store.get(quarantine_id)
        if record is None:
            return None
        limits = self.settings.limits
        view = inspect_message(self.store.read(quarantine_id), limits.max_parts, limits.max_depth)
        self.store.record_event(quarantine_id, "show", actor)
        return Inspection(record, view, tuple(self.store.history(quarantine_id)))

    def history(self, quarantine_id: str) -> list[AuditEvent]:
        return self.store.history(quarantine_id)

    def release(
        self,
        quarantine_id: str,
        actor: Actor,
        force: bool = False,
        reclaim: bool = False,
        without_held_copy: bool = False,
    ) -> ReleaseResult:
        """Deliver once to the original recipients through the relay (malware only with ``force``)."""
        return release(
            self.store,
            quarantine_id,
            actor,
            self.relay,
            load_release_key(key_path(self.settings)),
            force=force,
            reclaim_after=2 * self.relay.timeout if reclaim else None,
            without_held_copy=without_held_copy,
        )

    def delete(self, quarantine_id: str, actor: Actor) -> Removal:
        return self.store.delete(quarantine_id, actor)

    def label(self, quarantine_id: str, label: Label, actor: Actor) -> bool:
        """Record an analyst's label; the training ledger takes it from the store's label table."""
        return self.store.record_label(quarantine_id, label, actor)

    def record_event(self, quarantine_id: str, action: str, actor: Actor, detail: str = "") -> None:
        self.store.record_event(quarantine_id, action, actor, detail)

    # -- recipients, through a signed digest link ------------------------------------------------

    def recipient_records(
        self, recipient: str, issued_before: float, quarantine_id: str = ""
    ) -> list[QuarantineRecord]:
        """The held, non-malware inbound mail addressed to ``recipient``, received before the link was made."""
        wanted = recipient.lower()
        records = self.store.list(
            ListFilter(
                direction=Direction.INBOUND, status=Status.HELD, recipient=wanted, until=issued_before, limit=1000
            )
        )
        return [r for r in records if recipient_may_see(r, wanted) and (not quarantine_id or r.id == quarantine_id)]

    def release_for_recipient(
        self, quarantine_id: str, recipient: str, issued_before: float, actor: Actor
    ) -> ReleaseResult:
        """A recipient's own release: only a message they may see, and only if it was for them alone.

        A release delivers to every original recipient; one recipient must not
        decide for the others, so a message with several recipients needs an analyst.
        """
        mine = self.recipient_records(recipient, issued_before, quarantine_id)
        if not mine:
            return ReleaseResult(ReleaseOutcome.NOT_FOUND)
        if {r.lower() for r in mine[0].envelope.recipients} != {recipient.lower()}:
            raise StoreError("this message was also addressed to others: ask an analyst to release it")
        return self.release(quarantine_id, actor)


def recipient_may_see(record: QuarantineRecord, recipient: str) -> bool:
    """Inbound, held, not malware, and addressed to ``recipient`` (exact address, any case)."""
    return (
        record.direction is Direction.INBOUND
        and record.status is Status.HELD
        and not record.is_malware
        and recipient.lower() in {r.lower() for r in record.envelope.recipients}
    )


def block_sender(settings: Settings, sender: str, reason: str, actor: Actor) -> bool:
    """Block an envelope sender everywhere (the incidents block list); False if it was already blocked."""
    incidents = open_incidents(settings, actor=actor)
    try:
        _, created = incidents.block(SubjectKind.SENDER, sender, reason, actor)
    finally:
        incidents.close()
    return created


def list_sender(settings: Settings, allow: bool, sender: str, scope: str, reason: str, actor: Actor) -> bool:
    """Allow or block ``sender`` for ``scope`` ("" = everyone, else a recipient address or domain).

    The sender lists of `mailward allow` (incidents.senderlists): an allowed
    sender skips spam and reputation checks (never malware) for that scope.
    False if the sender already had an entry there (it stays as it is).
    """
    incidents = open_incidents(settings, actor=actor)
    try:
        _, created = incidents.list_sender(Listed.ALLOW if allow else Listed.BLOCK, sender, scope, reason, actor)
    finally:
        incidents.close()
    return created


def web_actor(account: str, client: str) -> Actor:
    """The audit trail's subject for a web action: the account, this host, and the client address."""
    return Actor(name=f"web:{account}", host=socket.gethostname(), origin=f"http {client}" if client else "http")
