"""The SMTP envelope of one message and the direction it travels."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any


class Direction(str, Enum):
    INBOUND = "inbound"  # from the internet into the organisation
    OUTBOUND = "outbound"  # from the organisation's users or hosts out


@dataclass(frozen=True)
class Envelope:
    """What the MTA told us about a message before its content.

    ``auth_user`` comes from the ``{auth_authen}`` macro and ``daemon`` from
    ``{daemon_name}``; both decide the direction together with the client address.
    ``local_submission`` marks mail from the host's own ``sendmail`` command
    (Postfix's ``non_smtpd_milters``), which has no SMTP client at all.
    """

    mail_from: str = ""
    recipients: tuple[str, ...] = ()
    client_address: str = ""
    client_name: str = ""
    helo: str = ""
    auth_user: str = ""
    daemon: str = ""
    queue_id: str = ""
    connection_id: str = ""
    direction: Direction = Direction.INBOUND
    local_submission: bool = False

    def with_direction(self, direction: Direction) -> Envelope:
        return replace(self, direction=direction)

    def as_dict(self) -> dict[str, object]:
        return {
            "mail_from": self.mail_from,
            "recipients": list(self.recipients),
            "client_address": self.client_address,
            "client_name": self.client_name,
            "helo": self.helo,
            "auth_user": self.auth_user,
            "daemon": self.daemon,
            "queue_id": self.queue_id,
            "connection_id": self.connection_id,
            "direction": self.direction.value,
            "local_submission": self.local_submission,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Envelope:
        """The envelope :meth:`as_dict` described (a stored quarantine record)."""
        return cls(
            mail_from=doc.get("mail_from", ""),
            recipients=tuple(doc.get("recipients", ())),
            client_address=doc.get("client_address", ""),
            client_name=doc.get("client_name", ""),
            helo=doc.get("helo", ""),
            auth_user=doc.get("auth_user", ""),
            daemon=doc.get("daemon", ""),
            queue_id=doc.get("queue_id", ""),
            connection_id=doc.get("connection_id", ""),
            direction=Direction(doc.get("direction", Direction.INBOUND.value)),
            local_submission=bool(doc.get("local_submission", False)),
        )


@dataclass(frozen=True)
class DirectionRules:
    """How to tell outbound from inbound (from the ``[direction]`` config section)."""

    internal_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    outbound_daemons: tuple[str, ...] = ("ORIGINATING", "submission", "submissions")
    authenticated_is_outbound: bool = True

    @classmethod
    def build(cls, networks: Iterable[str], daemons: Iterable[str], authenticated: bool = True) -> DirectionRules:
        return cls(
            internal_networks=tuple(ipaddress.ip_network(n, strict=False) for n in networks),
            outbound_daemons=tuple(daemons),
            authenticated_is_outbound=authenticated,
        )

    def classify(self, envelope: Envelope) -> Direction:
        if envelope.local_submission:  # written on this host: our users or our own services
            return Direction.OUTBOUND
        if self.authenticated_is_outbound and envelope.auth_user:
            return Direction.OUTBOUND
        if envelope.daemon and envelope.daemon in self.outbound_daemons:
            return Direction.OUTBOUND
        if envelope.client_address and self.internal_networks:
            try:
                addr = ipaddress.ip_address(envelope.client_address.strip("[]").removeprefix("IPv6:"))
            except ValueError:
                return Direction.INBOUND
            if any(addr in net for net in self.internal_networks if net.version == addr.version):
                return Direction.OUTBOUND
        return Direction.INBOUND
