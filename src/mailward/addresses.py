"""Envelope addresses and client IPs in the one spelling that blocks, sender lists and policy tables compare.

Postfix accepts one address written several ways and delivers them alike:
``<ceo@example.org.>``, ``<"ceo"@example.org>``, ``<@relay.example:ceo@example.org>``,
``<ceo@[example.org]>``. A list that compared the text as written would let each of
them past an entry for ``ceo@example.org``, so every comparison goes through
:func:`canonical_address` first.
"""

from __future__ import annotations

import ipaddress
import re

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 5322 atext, with RFC 6531's UTF-8: anything but specials, space and controls.
_ATOM = r'[^\s\x00-\x1f\x7f()<>\[\]:;@\\,."]+'
_DOT_ATOM = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_QUOTED_PAIR = re.compile(r"\\(.)")


def canonical_address(text: str) -> str:
    """``text`` (an envelope address, or a domain) lower-cased, without angle brackets, a source route
    (``@relay.example:``), a trailing dot of the domain, quotes round a local part that needs none, or
    brackets round a domain name that is no address literal (``[192.0.2.1]`` keeps them)."""
    text = without_route(text.strip().removeprefix("<").removesuffix(">").strip())
    local, at, domain = text.rpartition("@")
    domain = domain.lower().rstrip(".")
    if domain.startswith("[") and domain.endswith("]") and not _address_literal(domain[1:-1]):
        domain = domain[1:-1].rstrip(".")
    if not at:
        return domain
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        unquoted = _QUOTED_PAIR.sub(r"\1", local[1:-1])
        if _DOT_ATOM.fullmatch(unquoted):  # the same address as written without quotes
            local = unquoted
    return f"{local.lower()}@{domain}"


def without_route(address: str) -> str:
    """``address`` less an RFC 5321 source route (``@relay.example:``): relays are no part of it,
    and Postfix's smtpd drops them from the recipient it records."""
    if address.startswith("@") and ":" in address:
        return address.partition(":")[2]
    return address


def _address_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text.removeprefix("ipv6:"))
    except ValueError:
        return False
    return True


def policy_keys(subject: str) -> tuple[str, ...]:
    """What a policy table or sender list entry may name for ``subject``, most specific first.

    ``ceo@mail.example.org`` -> itself, ``mail.example.org``, ``example.org``, ``org``.
    """
    subject = canonical_address(subject)
    local, at, domain = subject.rpartition("@")
    keys = [subject] if at and local else []
    while domain:
        keys.append(domain)
        domain = domain.partition(".")[2]
    return tuple(keys)


def policy_subject(value: str) -> str:
    """An address or domain as policy tables and sender lists store it; ValueError if it is neither."""
    text = canonical_address(value).removeprefix("@")
    local, at, domain = text.rpartition("@")
    if (
        (at and not local)
        or not domain
        or any(c.isspace() or c in '<>@,;"\\' for c in domain)
        or any(c.isspace() or c == "@" for c in local)
        or ".." in domain
        or domain.startswith(".")
    ):
        raise ValueError(f"{value!r} is not an address (user@example.org) or a domain (example.org)")
    return f"{local}@{domain}" if at else domain


def client_ip(address: str) -> IPAddress | None:
    """The client address as Postfix gives it (``[...]`` and ``IPv6:`` tolerated)."""
    text = address.strip().strip("[]")
    if text[:5].lower() == "ipv6:":
        text = text[5:]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
