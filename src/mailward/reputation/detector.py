"""The ``dns`` detector: blocklists and sender authentication of one inbound message.

All lookups of a message (client blocklists, URL-domain blocklists, SPF for the
sender and HELO, each DKIM key, DMARC policies) start together on a thread pool
the detector owns, and the detector waits for them no longer than the budget: a
lookup still running then counts as unavailable. When nothing a message asked
was answered, a probe that no sender can influence checks the resolver in the
background; if it is dead, lookups are skipped for ``retry_after`` seconds. A
blocklist zone that did not answer while others did is skipped likewise. An
outage thus costs each scanning process a few budgets per ``retry_after``, not
one per message, and no sender can switch checks off for the next message by
making its own lookups time out.

DNS trouble is evidence of kind ``unchecked`` named ``dns-unavailable`` with a
low severity by default: like postscreen, rspamd or SpamAssassin, Mailward
fails open on DNS, because tempfailing all inbound mail during a resolver outage
delays every sender, while a spam run that coincides with one only gets tagged.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from itertools import islice
from typing import Any

from ..addresses import IPAddress, client_ip
from ..config import ReputationSettings, Settings
from ..envelope import Direction, Envelope
from ..errors import ConfigError
from ..evidence import Category, Evidence, Finding, Severity
from ..message import ParsedMessage
from . import dmarc_check
from .dkim_check import DkimResult, Progress, signatures, verify_signature
from .dmarc_check import Disposition, DmarcResult, PolicyLookup, author_domains, discover_policy
from .names import OrgDomains, normalise_domain, reverse_name, url_domains, within
from .resolver import Backoff, Clock, Deadline, DnsClient, Lookup, Outcome
from .results_header import HEADER, authserv_id, results_value
from .spf_check import SpfResult, check_spf
from .zones import Zone, parse_zones

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
RESOLVER = ""  # the backoff key of the resolver itself (zones use their names)
MAX_AUTHOR_DOMAINS = 5  # a From: with thousands of addresses must not mean thousands of lookups
# Canonicalizing and hashing a body for one signature runs at 8-36 MB/s here (blank lines slowest,
# base64 fastest): a signature still verifying when the DNS budget ends gets this much more per
# byte, so a big honest message is not cut short into permerror (and a DMARC reject).
DKIM_BYTES_PER_SECOND = 10 * 1024 * 1024


@dataclass(frozen=True)
class _Job:
    """One lookup in flight; ``fallback`` stands in for its result if the budget runs out first.

    A callable ``fallback`` is asked then: what a lookup cut short means can depend on how far it got.
    """

    kind: str  # dnsbl, uribl, spf, dkim, dmarc
    future: Future[Any]
    fallback: Any
    zone: Zone | None = None  # for blocklist lookups
    subject: str = ""  # what was looked up: address, URL domain, identity, author domain
    location: str = ""


class ReputationDetector:
    name = "dns"

    def __init__(
        self,
        settings: ReputationSettings,
        client: DnsClient,
        orgs: OrgDomains,
        *,
        allow_networks: tuple[Network, ...] = (),
        clock: Clock = time.monotonic,
    ):
        self.settings = settings
        self.client = client
        self._orgs = orgs
        self._dnsbl = parse_zones(settings.dnsbl)
        self._uribl = parse_zones(settings.uribl)
        self._allow_networks = allow_networks
        self._allow_domains = tuple(d for d in map(normalise_domain, settings.allow_domains) if d)
        self._skip_url_domains = tuple(d for d in map(normalise_domain, settings.uribl_skip_domains) if d)
        self.authserv_id = authserv_id(settings)
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="mailward-dns")
        self._backoff = Backoff(settings.retry_after, clock)
        self._probe: Future[Any] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = time.monotonic) -> ReputationDetector:
        rep = settings.reputation
        networks = check_settings(settings)
        networks += tuple(ipaddress.ip_network(n, strict=False) for n in settings.direction.internal_networks)
        return cls(rep, DnsClient.from_settings(rep), OrgDomains(), allow_networks=networks, clock=clock)

    # --- one message --------------------------------------------------------------
    def inspect(self, message: ParsedMessage, envelope: Envelope) -> Evidence:
        ip = client_ip(envelope.client_address)
        if self._skipped(ip, envelope):
            return Evidence()
        if down := self._backoff.remaining(RESOLVER):
            return Evidence(findings=(self._unavailable(f"resolver found dead, lookups skipped for {down:.1f}s more"),))
        deadline = Deadline.after(self.settings.budget, self._clock)
        jobs, skipped, unchecked_authors = self._start(message, envelope, ip, deadline)
        done, _ = wait([j.future for j in jobs], timeout=deadline.remaining())
        verifying = [j.future for j in jobs if j.kind == "dkim" and j.future not in done]
        if verifying:  # the body's size prices this work, for honest signers too; max_message_size caps it
            more, _ = wait(verifying, timeout=len(message.raw) * len(verifying) / DKIM_BYTES_PER_SECOND)
            done |= more
        return self._evidence(jobs, done, skipped, unchecked_authors)

    def _skipped(self, ip: IPAddress | None, envelope: Envelope) -> bool:
        # No client (an offline scan, a local submission): nothing to look up that the milter would.
        if ip is None or envelope.direction is Direction.OUTBOUND:
            return True
        if ip is not None and any(ip in net for net in self._allow_networks if net.version == ip.version):
            return True
        host = normalise_domain(envelope.client_name) if envelope.client_name else None
        return host is not None and within(host, self._allow_domains)

    def _start(
        self, message: ParsedMessage, envelope: Envelope, ip: IPAddress | None, deadline: Deadline
    ) -> tuple[list[_Job], list[str], list[str]]:
        """Start every lookup; also returns the zones skipped because they stopped answering
        and the author domains past ``MAX_AUTHOR_DOMAINS``, left unchecked."""
        rep, jobs, skipped = self.settings, [], []
        dnsbl: list[Zone] = []
        uribl: list[Zone] = []
        for kind, zones, live in (("dnsbl", self._dnsbl, dnsbl), ("uribl", self._uribl, uribl)):
            for zone in zones:
                if down := self._backoff.remaining(zone.name):
                    skipped.append(f"{kind} {zone.name} (not answering, skipped for {down:.0f}s more)")
                else:
                    live.append(zone)

        def start(kind: str, fallback: Any, call: Callable[..., Any], *args: Any, **where: Any) -> None:
            jobs.append(_Job(kind, self._pool.submit(_guarded, fallback, call, *args), fallback, **where))

        if ip is not None:
            prefix = reverse_name(ip)
            for zone in dnsbl:
                name = f"{prefix}.{zone.name}"
                start("dnsbl", _spent(name), self.client.query, name, "A", deadline, zone=zone, subject=str(ip))
        helo = normalise_domain(envelope.helo) if envelope.helo else None
        if ip is not None and rep.spf:
            identities = ["mailfrom"] + (["helo"] if helo else [])
            for identity in identities:
                sender = envelope.mail_from if identity == "mailfrom" else ""
                fallback = SpfResult(
                    identity, sender, (sender.rpartition("@")[2] or helo or "").lower(), "temperror", "DNS budget spent"
                )
                start(
                    "spf",
                    fallback,
                    check_spf,
                    self.client,
                    deadline,
                    str(ip),
                    envelope.mail_from,
                    helo or envelope.helo,
                    identity,
                    subject=identity,
                )
        header = message.raw_headers  # split once, by the parser
        if rep.dkim:
            for index, (domain, selector) in enumerate(signatures(header)[: rep.max_signatures]):
                progress = Progress(domain, selector)
                start(
                    "dkim",
                    progress.cut_short,
                    verify_signature,
                    message.raw,
                    index,
                    self.client,
                    deadline,
                    rep.min_key_bits,
                    progress,
                    subject=domain,
                )
        authors = author_domains(header, message.header_all("from")) if rep.dmarc else []
        for domain in authors[:MAX_AUTHOR_DOMAINS]:
            start(
                "dmarc",
                PolicyLookup(domain, dns_failed=True),
                discover_policy,
                self.client,
                deadline,
                domain,
                self._orgs,
                subject=domain,
            )
        if uribl:  # last: the most numerous, so they queue behind the rest
            for domain, location in islice(
                url_domains(message, self._orgs, self._skip_url_domains), rep.max_uri_domains
            ):
                for zone in uribl:
                    name = f"{domain}.{zone.name}"
                    start(
                        "uribl",
                        _spent(name),
                        self.client.query,
                        name,
                        "A",
                        deadline,
                        zone=zone,
                        subject=domain,
                        location=location,
                    )
        return jobs, skipped, authors[MAX_AUTHOR_DOMAINS:]

    # --- results ------------------------------------------------------------------
    def _evidence(
        self, jobs: list[_Job], done: set[Future[Any]], skipped: list[str], unchecked_authors: list[str]
    ) -> Evidence:
        rep = self.settings
        findings: list[Finding] = []
        unavailable: list[str] = list(skipped)
        answered = 0
        zones_failed: set[str] = set()
        zones_answered: set[str] = set()
        spf: list[SpfResult] = []
        dkim: list[DkimResult] = []
        policies: list[PolicyLookup] = []
        results_of: dict[str, list[Any]] = {"spf": spf, "dkim": dkim, "dmarc": policies}
        for job in jobs:
            if job.future in done:
                result = job.future.result()
            else:
                job.future.cancel()
                result = _fallback(job.fallback)
            if job.kind in ("dnsbl", "uribl") and job.zone is not None:  # every blocklist job has its zone
                if result.outcome.unavailable:
                    unavailable.append(f"{job.kind} {job.zone.name} ({result.outcome.value})")
                    zones_failed.add(job.zone.name)
                    continue
                answered += 1
                zones_answered.add(job.zone.name)
                findings.extend(self._listing(job, result))
                continue
            failed = result.dns_failed if job.kind == "dmarc" else result.failed_dns
            if failed:
                unavailable.append(f"{job.kind} {job.subject or result.domain or 'signature'}".rstrip())
            else:
                answered += 1
            results_of[job.kind].append(result)

        mailfrom = next((s for s in spf if s.identity == "mailfrom"), None)
        dmarc = [dmarc_check.evaluate(p, mailfrom, dkim, self._orgs) for p in policies]
        unavailable += [
            f"dmarc {d.domain}" for d, p in zip(dmarc, policies) if d.result == "temperror" and not p.dns_failed
        ]
        findings += self._spf_findings(spf) + self._dkim_findings(dkim) + self._dmarc_findings(dmarc, mailfrom, dkim)
        if unchecked_authors:
            findings.append(self._too_many_authors(unchecked_authors))
        if unavailable:
            findings.append(self._unavailable("; ".join(dict.fromkeys(unavailable))))
        self._note_health(answered, bool(unavailable), zones_failed - zones_answered)

        headers: tuple[tuple[str, str], ...] = ()
        if rep.spf or rep.dkim or rep.dmarc:
            shown_dkim = dkim or ([DkimResult("", "", "none")] if rep.dkim else [])
            headers = ((HEADER, results_value(self.authserv_id, spf, shown_dkim, dmarc)),)
        passed = [s.domain for s in spf if s.identity == "mailfrom" and s.result == "pass"]
        passed += [d.domain for d in dkim if d.result == "pass"] + [d.domain for d in dmarc if d.result == "pass"]
        authenticated = tuple(dict.fromkeys(d.lower().rstrip(".") for d in passed if d))
        return Evidence(findings=tuple(findings), headers=headers, authenticated=authenticated)

    def _listing(self, job: _Job, lookup: Lookup) -> list[Finding]:
        if lookup.outcome is not Outcome.ANSWER:
            return []
        zone = job.zone
        if zone is None:  # only blocklist jobs come here, each with its zone
            return []
        answer = zone.classify(lookup.addresses())
        found = []
        if answer.listed:
            found.append(
                Finding(
                    Category.REPUTATION,
                    f"{job.kind}:{zone.name}",
                    answer.severity,
                    job.kind,
                    job.location,
                    f"{job.subject} listed: {', '.join(answer.listed)}",
                )
            )
        if answer.errors:
            found.append(
                Finding(
                    Category.UNCHECKED,
                    f"{job.kind}-error",
                    self.settings.dns_unavailable,
                    job.kind,
                    job.location,
                    f"{zone.name} answered {', '.join(answer.errors)} for {job.subject}"
                    " (not a listing code: query refused, rate limited or misconfigured)",
                )
            )
        return found

    def _spf_findings(self, results: list[SpfResult]) -> list[Finding]:
        severities = {
            "fail": self.settings.spf_fail,
            "softfail": self.settings.spf_softfail,
            "permerror": Severity.INFO,
        }
        found = []
        for check in results:
            if check.result in severities:
                name = "spf-" + ("helo-" if check.identity == "helo" else "") + check.result
                found.append(
                    Finding(
                        Category.AUTHENTICATION,
                        name,
                        severities[check.result],
                        "spf",
                        "",
                        f"{check.sender}: {check.explanation}"[:300],
                    )
                )
        return found

    def _dkim_findings(self, results: list[DkimResult]) -> list[Finding]:
        broken = [r for r in results if r.result in ("fail", "policy", "permerror")]
        if not broken or any(r.result == "pass" for r in results):
            return []
        detail = "; ".join(f"d={r.domain} s={r.selector}: {r.result} ({r.reason})" for r in broken)
        return [Finding(Category.AUTHENTICATION, "dkim-fail", self.settings.dkim_fail, "dkim", "", detail[:500])]

    def _dmarc_findings(
        self, results: list[DmarcResult], spf: SpfResult | None, dkim: list[DkimResult]
    ) -> list[Finding]:
        severities = {
            Disposition.REJECT: self.settings.dmarc_reject,
            Disposition.QUARANTINE: self.settings.dmarc_quarantine,
            Disposition.NONE: self.settings.dmarc_none,
        }
        seen = f"spf={spf.result} ({spf.domain})" if spf else "spf=none"
        seen += "".join(f", dkim={d.result} ({d.domain})" for d in dkim) or ", dkim=none"
        return [
            Finding(
                Category.AUTHENTICATION,
                f"dmarc-{r.disposition.value}",
                severities[r.disposition],
                "dmarc",
                "",
                f"{r.domain}: {r.detail}; {seen}"[:500],
            )
            for r in results
            if r.result == "fail"
        ]

    def _too_many_authors(self, unchecked: list[str]) -> Finding:
        """Authors past the lookup limit may be spoofed domains that ask for reject (RFC 7489 6.6.1
        applies the strictest policy among the From domains), so they weigh as a DMARC reject:
        otherwise a spoofer would list the victim's address after a few of its own."""
        return Finding(
            Category.AUTHENTICATION,
            "dmarc-too-many-authors",
            self.settings.dmarc_reject,
            "dmarc",
            "",
            f"{MAX_AUTHOR_DOMAINS + len(unchecked)} author domains, only the first {MAX_AUTHOR_DOMAINS} checked;"
            f" unchecked: {', '.join(unchecked)}"[:500],
        )

    def _unavailable(self, detail: str) -> Finding:
        return Finding(Category.UNCHECKED, "dns-unavailable", self.settings.dns_unavailable, "dns", "", detail[:500])

    def _note_health(self, answered: int, trouble: bool, silent_zones: set[str]) -> None:
        if not answered:
            if trouble and self._backoff.period > 0 and (self._probe is None or self._probe.done()):
                self._probe = self._pool.submit(self._check_resolver)
            return
        self._backoff.clear(RESOLVER)
        for zone in sorted(silent_zones):
            if self._backoff.trip(zone):
                log.warning("blocklist zone %s is not answering: skipping it for %.0fs", zone, self._backoff.period)

    def _check_resolver(self) -> None:
        if not self.client.responds() and self._backoff.trip(RESOLVER):
            log.warning(
                "DNS unavailable (nameservers %s): skipping lookups for %.0fs",
                ", ".join(self.client.nameservers),
                self._backoff.period,
            )


def check_settings(settings: Settings) -> tuple[Network, ...]:
    """Validate the ``[reputation]`` section; errors name the file and key. Returns the allowed networks."""
    rep, source = settings.reputation, settings.source

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(source, f"reputation.{key}", problem)

    for key in ("dnsbl", "uribl"):
        try:
            parse_zones(getattr(rep, key))
        except ValueError as exc:
            raise fail(key, str(exc)) from None
    for key in ("budget", "query_timeout"):
        if not getattr(rep, key) > 0:
            raise fail(key, "must be more than 0")
    for key in ("threads", "cache_size", "max_signatures"):
        if getattr(rep, key) < 1:
            raise fail(key, "must be 1 or more")
    if not 0 < rep.port < 65536:
        raise fail("port", "must be between 1 and 65535")
    for server in rep.nameservers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise fail("nameservers", f"{server!r} is not an IP address") from None
    try:
        return tuple(ipaddress.ip_network(n, strict=False) for n in rep.allow_networks)
    except ValueError as exc:
        raise fail("allow_networks", str(exc)) from None


def _guarded(fallback: Any, call: Callable[..., Any], *args: Any) -> Any:
    """Run one lookup; a bug or a library crash on hostile input counts as its fallback, logged."""
    try:
        return call(*args)
    except Exception:
        log.exception("reputation lookup %s failed", getattr(call, "__name__", call))
        return _fallback(fallback)


def _fallback(fallback: Any) -> Any:
    return fallback() if callable(fallback) else fallback


def _spent(name: str) -> Lookup:
    return Lookup(name, "A", Outcome.TIMEOUT, detail="DNS budget spent")
