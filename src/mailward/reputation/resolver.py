"""One caching, deadline-bounded DNS client per scanning process.

dnspython does the wire work, and its thread-safe LRU cache keeps answers for
their TTL and negative answers (NXDOMAIN, NODATA) for the SOA minimum, as RFC 2308
says. Every query is bounded twice: by the per-query timeout and by what is left
of the message's budget, so a dead server costs at most the budget. Failures are
outcomes, not exceptions: the caller turns them into evidence.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from ..config import ReputationSettings

Clock = Callable[[], float]


class Outcome(str, Enum):
    ANSWER = "answer"
    NXDOMAIN = "nxdomain"
    NODATA = "nodata"
    TIMEOUT = "timeout"  # no reply within the query timeout or the budget
    FAILURE = "failure"  # SERVFAIL, REFUSED, port unreachable, malformed reply

    @property
    def unavailable(self) -> bool:
        """DNS could not say; never to be read as "not listed" or "no record"."""
        return self in (Outcome.TIMEOUT, Outcome.FAILURE)


@dataclass(frozen=True)
class Lookup:
    name: str
    rdtype: str
    outcome: Outcome
    records: tuple[dns.rdata.Rdata, ...] = ()
    detail: str = ""

    def addresses(self) -> list[str]:
        return [r.address for r in self.records if hasattr(r, "address")]

    def texts(self) -> list[bytes]:
        """TXT records, each with its character-strings joined (RFC 7208 3.3, RFC 6376 3.6.2.2)."""
        return [b"".join(r.strings) for r in self.records if hasattr(r, "strings")]


@dataclass(frozen=True)
class Deadline:
    """The moment a message's lookups must be done by."""

    expires: float
    clock: Clock = field(default=time.monotonic, compare=False)

    @classmethod
    def after(cls, seconds: float, clock: Clock = time.monotonic) -> Deadline:
        return cls(clock() + seconds, clock)

    def remaining(self) -> float:
        return max(0.0, self.expires - self.clock())


class DnsClient:
    """Resolves names through the configured nameservers with a per-process cache."""

    def __init__(
        self, nameservers: tuple[str, ...] = (), port: int = 53, query_timeout: float = 2.0, cache_size: int = 50_000
    ):
        resolver = dns.resolver.Resolver(configure=not nameservers)
        if nameservers:
            resolver.nameservers = list(nameservers)
        resolver.port = port
        # One try per nameserver: retransmission is the recursive resolver's job, and dnspython
        # sleeps between rounds past the lifetime.
        resolver.timeout = query_timeout / max(1, len(resolver.nameservers))
        resolver.lifetime = query_timeout
        resolver.retry_servfail = False
        resolver.use_edns(0, 0, 1232)
        resolver.cache = dns.resolver.LRUCache(cache_size)
        self._resolver = resolver
        self.query_timeout = query_timeout

    @classmethod
    def from_settings(cls, settings: ReputationSettings) -> DnsClient:
        return cls(settings.nameservers, settings.port, settings.query_timeout, settings.cache_size)

    @property
    def nameservers(self) -> tuple[str, ...]:
        return tuple(str(ns) for ns in self._resolver.nameservers)

    @property
    def cache(self) -> dns.resolver.LRUCache:
        cache: dns.resolver.LRUCache = self._resolver.cache
        return cache

    def responds(self) -> bool:
        """Whether any nameserver answers at all, bypassing the cache.

        Timeouts on a message's names can be the sender's doing (an authoritative
        server that never answers); a question about the root zone cannot, so only
        its silence marks the resolver dead. Any reply counts, even REFUSED.
        """
        probe = dns.message.make_query(".", "NS")
        for server in self._resolver.nameservers:
            try:
                dns.query.udp(probe, str(server), timeout=self.query_timeout, port=self._resolver.port)
                return True
            except (dns.exception.DNSException, OSError):
                continue
        return False

    def query(self, name: str, rdtype: str, deadline: Deadline) -> Lookup:
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException:
            return Lookup(name, rdtype, Outcome.NXDOMAIN, detail="not a valid DNS name")
        lifetime = min(self.query_timeout, deadline.remaining())
        if lifetime <= 0:  # the budget bounds waiting, not reading what is known already
            cached = self.cache.get((qname, dns.rdatatype.from_text(rdtype), dns.rdataclass.IN))
            if cached is None:
                return Lookup(name, rdtype, Outcome.TIMEOUT, detail="budget spent")
            return _answered(name, rdtype, cached)
        try:
            answer = self._resolver.resolve(qname, rdtype, lifetime=lifetime, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return Lookup(name, rdtype, Outcome.NXDOMAIN)
        except dns.exception.Timeout:
            return Lookup(name, rdtype, Outcome.TIMEOUT, detail=f"no answer within {lifetime:.2f}s")
        except dns.exception.DNSException as exc:  # NoNameservers (SERVFAIL, REFUSED, unreachable), YXDOMAIN
            return Lookup(name, rdtype, Outcome.FAILURE, detail=type(exc).__name__)
        return _answered(name, rdtype, answer)


def _answered(name: str, rdtype: str, answer: dns.resolver.Answer) -> Lookup:
    if answer.rrset is None:
        return Lookup(name, rdtype, Outcome.NODATA)
    return Lookup(name, rdtype, Outcome.ANSWER, tuple(answer.rrset))


class Backoff:
    """What was found not answering (the resolver, a blocklist zone), skipped until its time is up.

    Per process, like the cache: a zone that stopped answering costs one query
    timeout per ``period``, not one per message.
    """

    def __init__(self, period: float, clock: Clock = time.monotonic):
        self.period = period
        self._clock = clock
        self._until: dict[str, float] = {}

    def remaining(self, key: str) -> float:
        return max(0.0, self._until.get(key, 0.0) - self._clock())

    def trip(self, key: str) -> bool:
        """Start skipping ``key``; False when backing off is disabled (period 0)."""
        if self.period <= 0:
            return False
        self._until[key] = self._clock() + self.period
        return True

    def clear(self, key: str) -> None:
        self._until.pop(key, None)
