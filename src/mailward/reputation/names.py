"""The names a message asks us to look up: its client's address and the domains it names.

Organizational domains (RFC 7489 3.2) come from the Public Suffix List that the
``publicsuffixlist`` package ships and updates with its releases, never fetched
at run time; DMARC alignment and URI blocklists both need them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit

from publicsuffixlist import PublicSuffixList

from ..addresses import IPAddress
from ..message import ParsedMessage

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
# Absolute URLs and the bare "www." hosts that mail clients turn into links.
_URL = re.compile(r"(?i)(?:\b(?:https?|ftp)://|\bwww\.)[^\s\"'<>()\[\]{}\\^`|]{1,2048}")


def reverse_name(ip: IPAddress) -> str:
    """The DNSBL query prefix (RFC 5782 2.1, 2.4): reversed octets or nibbles."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ".".join(reversed(str(ip).split(".")))
    return ".".join(reversed(ip.exploded.replace(":", "")))


def normalise_domain(text: str) -> str | None:
    """Lower-case ASCII (IDNA) form without the root dot, or ``None`` if it cannot be a host name."""
    domain = text.strip().rstrip(".").lower()
    if not domain or len(domain) > 253:
        return None
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        return None
    return domain


def within(domain: str, parents: Iterable[str]) -> bool:
    """``domain`` is one of ``parents`` or below one of them."""
    return any(domain == p or domain.endswith("." + p) for p in parents)


class OrgDomains:
    """Organizational domains from the shipped Public Suffix List (loaded once per process)."""

    def __init__(self, psl: PublicSuffixList | None = None):
        self._psl = psl or PublicSuffixList()

    def registrable(self, domain: str) -> str | None:
        """The organizational domain, or ``None`` when ``domain`` is itself a public suffix."""
        return self._psl.privatesuffix(domain)

    def aligned(self, a: str, b: str, strict: bool) -> bool:
        """DMARC identifier alignment (RFC 7489 3.1): equal, or (relaxed) same organizational domain."""
        if a == b:
            return True
        if strict:
            return False
        org = self.registrable(a)
        return org is not None and org == self.registrable(b)


def url_domains(message: ParsedMessage, orgs: OrgDomains, skip: Iterable[str] = ()) -> Iterator[tuple[str, str]]:
    """Organizational domains of the URLs in the message's text parts, first seen first.

    Yields ``(domain, location)``; IP-address hosts are left to client blocklists.
    """
    skip = tuple(skip)
    seen: set[str] = set()
    for obj in message.text_objects():
        for match in _URL.finditer(obj.text()):
            url = match.group(0)
            if url[:4].lower() == "www.":
                url = "http://" + url
            try:
                host = urlsplit(url).hostname
            except ValueError:
                continue
            domain = normalise_domain(host) if host else None
            org = orgs.registrable(domain) if domain else None
            if domain is None or org is None or org in seen or within(domain, skip):
                continue
            seen.add(org)
            yield org, obj.path
