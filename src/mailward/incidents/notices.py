"""Virus notices: a short mail with the incident ID to the admin and, for outbound mail, the sending account.

Off by default; ``policy.inbound.notify_virus`` / ``policy.outbound.notify_virus``
switch them on per direction. The sender of *inbound* mail never gets one: the
envelope sender of malware is forged more often than not, and a notice to it is
backscatter. Nor does the envelope sender of *outbound* mail: an account (or an
internal host) writes any MAIL FROM it likes, so a notice there would put a
Mailward-signed mail quoting the message in an outside mailbox of the sender's
choosing. The sending account is told at its SASL login when that login is an
address, the one address the account proved; otherwise only the admins are.
Notices take the alert path (queue, background thread, rate limit, the alert
mail format, the alert relay), so a slow relay never stalls the milter.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..config import Settings
from ..envelope import Direction
from ..verdict import Action, Outcome
from .alerts import Alert, AlertDispatcher, AlertKind, Delivery, email_channel

NOTICE_ACTIONS = (Action.REJECT, Action.QUARANTINE, Action.TEMPFAIL)  # the mail did not arrive (yet)


class NoticeChannel:
    """The alert mail channel with recipients chosen per notice (registered before it is queued)."""

    name = "notice"

    def __init__(self, settings: Settings):
        self._settings = settings
        self._lock = threading.Lock()
        self._recipients: dict[str, tuple[str, ...]] = {}

    def address(self, incident_id: str, recipients: tuple[str, ...]) -> None:
        with self._lock:
            self._recipients[incident_id] = recipients

    def forget(self, incident_id: str) -> tuple[str, ...]:
        with self._lock:
            return self._recipients.pop(incident_id, ())

    def send(self, alert: Alert, suppressed: int) -> None:
        recipients = self.forget(alert.incident_id)
        if recipients:
            email_channel(self._settings, recipients).send(alert, suppressed)


class VirusNotices:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.admins = settings.alerts.notice_to or settings.alerts.email_to
        self.channel = NoticeChannel(settings)
        alerts = settings.alerts
        self.dispatcher = AlertDispatcher(
            [self.channel], dedup_window=0.0, rate_limit=alerts.rate_limit, rate_period=alerts.rate_period, clock=clock
        )

    def recipients(self, outcome: Outcome) -> tuple[str, ...]:
        """The admin, plus the sending account of outbound mail when its login is an address (never the
        envelope sender, which the client chose); never anyone for clean or delivered mail."""
        env, verdict = outcome.envelope, outcome.verdict
        if not self.settings.policy.for_direction(env.direction).notify_virus or verdict.action not in NOTICE_ACTIONS:
            return ()
        found = list(self.admins)
        if env.direction is Direction.OUTBOUND and "@" in env.auth_user:
            found.append(env.auth_user)
        return tuple(dict.fromkeys(found))

    def notify(self, outcome: Outcome) -> Delivery | None:
        """Queue a notice for a message with malware; None when nobody is to be told."""
        recipients = self.recipients(outcome)
        if not recipients:
            return None
        env, verdict = outcome.envelope, outcome.verdict
        fate = {
            Action.REJECT: "was refused",
            Action.QUARANTINE: "is held in quarantine",
            Action.TEMPFAIL: "was deferred",
        }[verdict.action]
        outbound = env.direction is Direction.OUTBOUND
        whose = "A message sent from your account" if outbound else "A message to your domain"
        self.channel.address(verdict.incident_id, recipients)
        delivery = self.dispatcher.raise_alert(
            Alert(
                AlertKind.VIRUS_NOTICE,
                verdict.incident_id,
                f"{whose} {fate}: it carried malware",
                severity="high",
                dedup_key=f"notice:{verdict.incident_id}",
                details=(
                    ("direction", env.direction.value),
                    *((("account", env.auth_user),) if outbound and env.auth_user else ()),
                    ("envelope sender", env.mail_from or "<>"),
                    ("recipients", str(len(env.recipients))),
                    ("subject", outcome.evidence.message.subject[:200]),
                ),
                remedy=f"quote incident {verdict.incident_id} to your mail administrator",
            )
        )
        if delivery is not Delivery.QUEUED:
            self.channel.forget(verdict.incident_id)
        return delivery

    def close(self) -> None:
        self.dispatcher.close()
