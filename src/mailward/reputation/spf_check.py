"""SPF (RFC 7208) for the envelope sender and the HELO name, with pyspf.

pyspf takes its DNS function from the module attribute ``spf.DNSLookup``, not
from a parameter. We install, once, a dispatcher that uses the lookup bound to
the current context (set around each check, in the thread that runs it) and
otherwise falls back to pyspf's own, so our resolver, cache and budget apply to
our checks without changing pyspf's behaviour for anyone else in the process.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import spf

from .resolver import Deadline, DnsClient, Outcome

log = logging.getLogger(__name__)

SpfLookup = Callable[[str, str], list[Any]]
_bound_lookup: contextvars.ContextVar[SpfLookup | None] = contextvars.ContextVar("mailward_spf_lookup", default=None)
_library_lookup = spf.DNSLookup


def _dispatch(name: str, qtype: str, strict: bool = True, timeout: float = 30) -> list[Any]:
    lookup = _bound_lookup.get()
    if lookup is None:
        answer: list[Any] = _library_lookup(name, qtype, strict, timeout)
        return answer
    return lookup(name, qtype)


if getattr(spf.DNSLookup, "__module__", "") != __name__:
    spf.DNSLookup = _dispatch


@dataclass(frozen=True)
class SpfResult:
    identity: str  # "mailfrom" or "helo" (RFC 7208 2.3, 2.4)
    sender: str  # the checked identity as an address (postmaster@helo for HELO and bounces)
    domain: str
    result: str  # pass, fail, softfail, neutral, none, permerror, temperror
    explanation: str = ""

    @property
    def failed_dns(self) -> bool:
        return self.result == "temperror"


class _Query(spf.query):  # type: ignore[misc]  # pyspf has no types
    """pyspf's query with the ``ptr`` mechanism and ``%{p}`` macro as RFC 7208 5.5 and 7.3 have them.

    pyspf ends the whole check with temperror when the PTR lookup, or the address
    lookup of a PTR name, fails. The connecting client owns its reverse zone, so
    it could turn a domain's ``-all`` (and a DMARC reject) into temperror by not
    answering. The RFC says: a failed PTR lookup means no match (``%{p}`` becomes
    "unknown"), a name whose address lookup fails is skipped. These lookups get at
    most one query timeout and half of what is left of the budget, once per check,
    so a slow reverse zone cannot spend the time the rest of the record needs.
    """

    def __init__(self, client: DnsClient, deadline: Deadline, **kwargs: Any):
        super().__init__(**kwargs)
        self._client, self._deadline = client, deadline
        self._ptrs: list[str] | None = None

    def validated_ptrs(self) -> list[str]:
        if self._ptrs is None:
            share = min(self._client.query_timeout, self._deadline.remaining() / 2)
            token = _bound_lookup.set(_lookup_through(self._client, Deadline.after(share, self._deadline.clock)))
            try:
                self._ptrs = self._validate_ptrs()
            finally:
                _bound_lookup.reset(token)
        return self._ptrs

    def _validate_ptrs(self) -> list[str]:
        try:
            names: list[str] = self.dns_ptr(self.i)[: spf.MAX_PTR]
        except spf.TempError:
            return []
        valid = []
        for name in names:
            try:
                # Not a void lookup (4.6.4 counts terms), or the client's PTR names could make a permerror.
                addresses = self.dns(name, self.A, ignore_void=True)
            except spf.TempError:
                continue
            if self.cidrmatch(addresses, self.cidrmax):
                valid.append(name)
        return valid


def check_spf(client: DnsClient, deadline: Deadline, ip: str, sender: str, helo: str, identity: str) -> SpfResult:
    """Evaluate one identity; DNS trouble becomes ``temperror``, hostile input ``permerror``."""
    token = _bound_lookup.set(_lookup_through(client, deadline))
    try:
        query = _Query(
            client, deadline, i=ip, s=sender if identity == "mailfrom" else "", h=helo, timeout=client.query_timeout
        )
        result, _code, explanation = query.check()
        checked = query.s
    except Exception as exc:  # pyspf on hostile input: an answer we cannot use, never a crash
        log.debug("SPF check of %r/%r failed: %s", sender, helo, exc)
        result, explanation, checked = "permerror", type(exc).__name__, sender or f"postmaster@{helo}"
    finally:
        _bound_lookup.reset(token)
    return SpfResult(identity, checked, checked.rpartition("@")[2].lower(), result, explanation)


def _lookup_through(client: DnsClient, deadline: Deadline) -> SpfLookup:
    """pyspf's DNSLookup contract: ``[((name, qtype), value), ...]``, TempError when DNS fails."""

    def lookup(name: str, qtype: str) -> list[Any]:
        answer = client.query(name, qtype, deadline)
        records: tuple[Any, ...] = answer.records  # the fields read below belong to each rdtype's class
        if answer.outcome.unavailable:
            raise spf.TempError(f"DNS {answer.outcome.value} for {name} {qtype}")
        if answer.outcome is not Outcome.ANSWER:
            return []
        key = (name, qtype)
        if qtype in ("A", "AAAA"):
            return [(key, r.address) for r in records]
        if qtype == "MX":
            return [(key, (r.preference, r.exchange)) for r in records]
        if qtype == "PTR":
            return [(key, r.target.to_text(True)) for r in records]
        if qtype in ("TXT", "SPF"):
            return [(key, r.strings) for r in records]
        return []

    return lookup
