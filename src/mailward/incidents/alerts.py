"""Alerts for the security team: webhook (JSON POST), email and syslog, rate-limited and de-duplicated.

Raising an alert never waits on a channel: alerts go to a queue that one
background thread delivers, so a slow webhook cannot stall a milter thread.
An alert with the same ``dedup_key`` as one sent within ``dedup_window`` is
dropped, and beyond ``rate_limit`` alerts per ``rate_period`` the rest are
only counted; the next alert that goes out says how many were held back
(the JSON log has every one of them).

Alerts name the incident, the subject and what an analyst can do; they carry
no exception text, paths or connection strings: a webhook may well end up in
a chat room. Much of an alert comes from the message (object names, envelope,
Subject), so the text channels print every value through
:func:`~mailward.textsafe.neutralise`: a file name with line breaks cannot add a
forged line to the mail an analyst acts on. The webhook's JSON escapes by itself.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import smtplib
import socket
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from ..marks import alert_mark, key_path, load_release_key, marked
from ..textsafe import neutralise

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger(__name__)


class AlertKind(str, Enum):
    MALWARE = "malware"  # a message carried malware (either direction)
    SUSPENSION = "suspension"  # an account or host was suspended by the counters
    BLOCK = "block"  # an address was blocked (failed logins) or an analyst blocked something
    STORE_ERROR = "store-error"  # the quarantine could not keep a message (it was tempfailed)
    VIRUS_NOTICE = "virus-notice"  # a short notice to the admin and the sending account (notices.py)
    MODEL = "model"  # the spam model on disk could not be loaded; the last good one stays


class Delivery(str, Enum):
    """What became of one raised alert."""

    QUEUED = "queued"
    DUPLICATE = "duplicate"
    RATE_LIMITED = "rate-limited"


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    incident_id: str
    summary: str  # one line for a human
    subject: str = ""  # "account alice", "address 203.0.113.5", "sender x@example.org"
    severity: str = "high"  # ECS-style: low | medium | high | critical
    details: tuple[tuple[str, str], ...] = ()
    remedy: str = ""  # the command that undoes or follows up, for the analyst
    dedup_key: str = ""  # default: kind + subject
    at: float = field(default_factory=time.time)
    host: str = field(default_factory=socket.gethostname)

    @property
    def key(self) -> str:
        return self.dedup_key or f"{self.kind.value}:{self.subject}"

    def as_dict(self, suppressed: int = 0) -> dict[str, object]:
        doc: dict[str, object] = {
            "source": "mailward",
            "kind": self.kind.value,
            "incident_id": self.incident_id,
            "severity": self.severity,
            "summary": self.summary,
            "subject": self.subject,
            "details": dict(self.details),
            "remedy": self.remedy,
            "host": self.host,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
        }
        if suppressed:
            doc["suppressed_since_last"] = suppressed
        return doc

    def text(self, suppressed: int = 0) -> str:
        """The alert for people (mail, notices): each value on its one line, its control,
        bidi and line-separator characters shown as escapes."""
        lines = [
            neutralise(self.summary),
            "",
            f"Incident: {self.incident_id}",
            f"Kind:     {self.kind.value}",
            f"Severity: {self.severity}",
            f"Host:     {self.host}",
            f"Time:     {self.as_dict()['time']}",
        ]
        if self.subject:
            lines.append(f"Subject:  {neutralise(self.subject)}")
        lines += [f"{neutralise(name)}: {neutralise(value)}" for name, value in self.details]
        if self.remedy:
            lines += ["", f"To act: {neutralise(self.remedy)}"]
        if suppressed:
            lines += [
                "",
                f"{suppressed} further alert(s) were held back by the rate limit or as duplicates; "
                "see the Mailward log.",
            ]
        return "\n".join(lines) + "\n"


class Channel(Protocol):
    name: str

    def send(self, alert: Alert, suppressed: int) -> None:
        """Deliver or raise; the dispatcher logs and counts failures."""


class WebhookChannel:
    name = "webhook"

    def __init__(self, url: str, token: str = "", timeout: float = 5.0):
        self.url, self._token, self.timeout = url, token, timeout

    def send(self, alert: Alert, suppressed: int) -> None:
        body = json.dumps(alert.as_dict(suppressed)).encode()
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "mailward-alerts"},
        )
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # non-2xx raises HTTPError
            response.read()


class EmailChannel:
    """Alert mail through the MTA, which passes it through Mailward again.

    An alert quotes what it reports (``invoice.zip > eicar.com``), so the rules
    that caught the original may well catch the alert, which would raise another
    alert, and so on. With ``key`` (the release key) each alert carries an HMAC
    mark over its incident, time, body and recipients that the milter verifies
    and honours by delivering the alert tagged.
    """

    name = "email"

    def __init__(
        self, host: str, port: int, sender: str, recipients: tuple[str, ...], timeout: float = 30.0, key: bytes = b""
    ):
        self.host, self.port, self.sender, self.recipients, self.timeout = host, port, sender, recipients, timeout
        self._key = key

    def send(self, alert: Alert, suppressed: int) -> None:
        from email.policy import SMTP

        from ..evidence import ALERT_HEADER

        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg["Subject"] = f"[Mailward {alert.severity}] {neutralise(alert.summary)} ({alert.incident_id})"
        msg["X-Mailward-Alert"] = alert.kind.value
        msg.set_content(alert.text(suppressed))
        data = msg.as_bytes(policy=SMTP)
        if self._key:
            data = marked(
                data,
                ALERT_HEADER,
                alert_mark(self._key, alert.incident_id, data, self.recipients, time.time()),
            )
        options = ["SMTPUTF8"] if any(not a.isascii() for a in (self.sender, *self.recipients)) else []
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            smtp.sendmail(self.sender, list(self.recipients), data, mail_options=options)


_FACILITIES = {
    "kern": 0,
    "user": 1,
    "mail": 2,
    "daemon": 3,
    "auth": 4,
    "syslog": 5,
    "authpriv": 10,
    **{f"local{i}": 16 + i for i in range(8)},
}
_SEVERITY = {"low": 5, "medium": 4, "high": 3, "critical": 2}  # notice, warning, err, crit


class SyslogChannel:
    """RFC 3164 datagrams to a unix socket (``/dev/log``) or ``udp:HOST:PORT``."""

    name = "syslog"

    def __init__(self, address: str, facility: str = "auth"):
        if facility not in _FACILITIES:
            raise ValueError(f"unknown syslog facility {facility!r}")
        self.address, self.facility = address, _FACILITIES[facility]

    def send(self, alert: Alert, suppressed: int) -> None:
        priority = self.facility * 8 + _SEVERITY.get(alert.severity, 4)
        extra = f" suppressed={suppressed}" if suppressed else ""
        text = (
            f"<{priority}>mailward[{os.getpid()}]: incident={alert.incident_id} kind={alert.kind.value} "
            f'subject="{neutralise(alert.subject)}"{extra} {neutralise(alert.summary)}'
        )
        data = text.encode("utf-8", "replace")[:2048]
        if self.address.startswith("udp:"):
            host, _, port = self.address[4:].rpartition(":")
            with socket.socket(
                socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET, socket.SOCK_DGRAM
            ) as sock:
                sock.sendto(data, (host.strip("[]"), int(port)))
        else:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(data, self.address)


Observer = Callable[[str, str, str], None]  # (what, label, result) for metrics


class AlertDispatcher:
    """Queues alerts for the channels, after de-duplication and the rate limit."""

    def __init__(
        self,
        channels: list[Channel],
        dedup_window: float = 3600.0,
        rate_limit: int = 30,
        rate_period: float = 600.0,
        clock: Callable[[], float] = time.time,
        observe: Observer | None = None,
    ):
        self.channels = list(channels)
        self._dedup_window, self._rate_limit, self._rate_period = dedup_window, rate_limit, rate_period
        self._clock = clock
        self._observe = observe or (lambda what, label, result: None)
        self._lock = threading.Lock()
        self._last_sent: dict[str, float] = {}
        self._sent_times: deque[float] = deque()
        self._suppressed = 0
        self._queue: queue.Queue[tuple[Alert, int] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def raise_alert(self, alert: Alert) -> Delivery:
        now = self._clock()
        with self._lock:
            for key in [k for k, at in self._last_sent.items() if now - at >= self._dedup_window]:
                del self._last_sent[key]
            while self._sent_times and now - self._sent_times[0] >= self._rate_period:
                self._sent_times.popleft()
            if alert.key in self._last_sent:
                delivery = Delivery.DUPLICATE
            elif len(self._sent_times) >= self._rate_limit:
                delivery = Delivery.RATE_LIMITED
            else:
                delivery = Delivery.QUEUED
                self._last_sent[alert.key] = now
                self._sent_times.append(now)
            if delivery is Delivery.QUEUED:
                suppressed, self._suppressed = self._suppressed, 0
            else:
                self._suppressed += 1
        log.warning("alert %s: %s", alert.kind.value, alert.summary, extra={"event": _alert_event(alert, delivery)})
        self._observe("alert", alert.kind.value, delivery.value)
        if delivery is Delivery.QUEUED and self.channels:
            self._start()
            self._queue.put((alert, suppressed))
        return delivery

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every queued alert was handed to every channel (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 10.0) -> None:
        self.drain(timeout)
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None  # an alert raised later (a straggling connection) starts a new one

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mailward-alerts", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                alert, suppressed = item
                for channel in self.channels:
                    try:
                        channel.send(alert, suppressed)
                        self._observe("delivery", channel.name, "sent")
                    except Exception as exc:
                        # The type only: messages of HTTP or SMTP errors may echo URLs with tokens.
                        log.error(
                            "alert %s could not be sent by %s: %s", alert.incident_id, channel.name, type(exc).__name__
                        )
                        self._observe("delivery", channel.name, "failed")
            finally:
                self._queue.task_done()


def _alert_event(alert: Alert, delivery: Delivery) -> dict[str, object]:
    return {
        "event": {
            "kind": "alert",
            "category": ["intrusion_detection"],
            "type": ["info"],
            "action": f"alert-{alert.kind.value}",
            "id": alert.incident_id,
            "severity": {"low": 21, "medium": 47, "high": 73, "critical": 99}.get(alert.severity, 47),
        },
        "mailward": {
            "incident_id": alert.incident_id,
            "alert": {
                "kind": alert.kind.value,
                "subject": alert.subject,
                "summary": alert.summary,
                "delivery": delivery.value,
                "details": dict(alert.details),
                "remedy": alert.remedy,
            },
        },
    }


def email_channel(settings: Settings, recipients: tuple[str, ...]) -> EmailChannel:
    """Mail to ``recipients`` through the configured alert relay (default: the release relay), marked with
    the release key so the milter does not filter what Mailward itself says."""
    config = settings.alerts
    return EmailChannel(
        config.smtp_host or settings.quarantine.relay_host,
        config.smtp_port or settings.quarantine.relay_port,
        config.email_from or f"mailward@{socket.getfqdn()}",
        recipients,
        settings.quarantine.relay_timeout,
        load_release_key(key_path(settings)),
    )


def channels_from_settings(settings: Settings) -> list[Channel]:
    """The channels ``[alerts]`` configures; none means alerts go to the log only."""
    from ..errors import ConfigError

    config = settings.alerts
    out: list[Channel] = []
    if config.webhook_url:
        if not config.webhook_url.startswith(("http://", "https://")):
            raise ConfigError(settings.source, "alerts.webhook_url", "must be an http:// or https:// URL")
        token = ""
        if config.webhook_token_file:
            try:
                with open(config.webhook_token_file, encoding="utf-8") as fh:
                    token = fh.read().strip()
            except OSError as exc:
                raise ConfigError(
                    settings.source, "alerts.webhook_token_file", f"cannot read: {exc.strerror}"
                ) from None
        out.append(WebhookChannel(config.webhook_url, token, config.webhook_timeout))
    if config.email_to:
        out.append(email_channel(settings, config.email_to))
    if config.syslog:
        if config.syslog_facility not in _FACILITIES:
            raise ConfigError(
                settings.source, "alerts.syslog_facility", f"must be one of {', '.join(sorted(_FACILITIES))}"
            )
        out.append(SyslogChannel(config.syslog, config.syslog_facility))
    return out


def model_refusal_alert(settings: Settings) -> Callable[[str], None]:
    """What a scanning process calls when it cannot load the spam model on disk (it keeps the last good one).

    The dispatcher is built at the first refusal only: most processes never need one.
    """
    from ..verdict import new_incident_id

    dispatcher: list[AlertDispatcher] = []

    def alert(reason: str) -> None:
        if not dispatcher:
            config = settings.alerts
            dispatcher.append(
                AlertDispatcher(
                    channels_from_settings(settings), config.dedup_window, config.rate_limit, config.rate_period
                )
            )
        problem = reason.split(": ", 1)[-1][:200]  # without the path: alerts name no files
        dispatcher[0].raise_alert(
            Alert(
                AlertKind.MODEL,
                new_incident_id(),
                "Spam model cannot be loaded; the last good model stays in use",
                subject="spam model",
                severity="medium",
                dedup_key=f"model:{problem}",
                details=(("problem", problem),),
                remedy="check owner and mode of the model directory (the milter's user must read it); "
                "mailward model list",
            )
        )

    return alert
