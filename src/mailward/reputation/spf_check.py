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


def check_spf(client: DnsClient, deadline: Deadline, ip: str, sender: str, helo: str, identity: str) -> SpfResult:
    """Evaluate one identity; DNS trouble becomes ``temperror``, hostile input ``permerror``."""
    token = _bound_lookup.set(_lookup_through(client, deadline))
    try:
        query = spf.query(i=ip, s=sender if identity == "mailfrom" else "", h=helo, timeout=client.query_timeout)
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
