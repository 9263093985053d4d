"""DMARC (RFC 7489): policy discovery, identifier alignment and the domain's requested disposition.

Built on our SPF and DKIM results rather than on a DMARC package: the one
evaluator on PyPI (``dmarc``) counts a signature by ``d=co.uk`` as aligned with
any ``*.co.uk`` author and resolves through a process-wide default resolver.
Alignment here compares organizational domains from the Public Suffix List.

Deliberately not done: ``pct`` sampling by chance. A failing message under a
policy with ``pct`` < 100 gets the next weaker disposition (RFC 7489 6.6.4 does
so for messages sampled out), which keeps verdicts reproducible.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from .dkim_check import DkimResult
from .names import OrgDomains, normalise_domain
from .resolver import Deadline, DnsClient
from .spf_check import SpfResult

_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:(.*)", re.DOTALL)  # field-name *WSP ":" value (RFC 5322 3.6.8, 4.5)


class Disposition(str, Enum):
    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"

    def weaker(self) -> Disposition:
        return Disposition.QUARANTINE if self is Disposition.REJECT else Disposition.NONE


@dataclass(frozen=True)
class DmarcRecord:
    policy: Disposition
    subdomain_policy: Disposition | None = None
    strict_dkim: bool = False
    strict_spf: bool = False
    percent: int = 100

    @classmethod
    def parse(cls, text: str) -> DmarcRecord | None:
        """The record's policy tags, or ``None`` if it is not a usable DMARC record (RFC 7489 6.3)."""
        parts = [p.strip() for p in text.split(";")]
        tags: dict[str, str] = {}
        for part in parts[1:]:
            name, sep, value = part.partition("=")
            if sep:
                tags.setdefault(name.strip().lower(), value.strip().lower())
        version = parts[0].replace(" ", "")
        if version != "v=DMARC1":
            return None
        policy = _disposition(tags.get("p"))
        if policy is None:
            # 6.6.3: a record with a bad or missing p= but a valid rua= is read as p=none.
            if "rua" not in tags:
                return None
            policy = Disposition.NONE
        percent = tags.get("pct", "100")
        return cls(
            policy=policy,
            subdomain_policy=_disposition(tags.get("sp")),
            strict_dkim=tags.get("adkim") == "s",
            strict_spf=tags.get("aspf") == "s",
            percent=min(100, max(0, int(percent))) if percent.isdigit() else 100,
        )


@dataclass(frozen=True)
class PolicyLookup:
    """Where the From domain's policy was found (or why not)."""

    domain: str  # RFC5322.From domain
    record: DmarcRecord | None = None
    found_at: str = ""  # the domain whose _dmarc record applies
    dns_failed: bool = False


@dataclass(frozen=True)
class DmarcResult:
    domain: str
    result: str  # pass, fail, none, temperror
    disposition: Disposition = Disposition.NONE  # what the domain asks for this message
    spf_aligned: bool = False
    dkim_aligned: bool = False
    detail: str = ""


def author_domains(header: bytes, decoded: Sequence[str] = ()) -> list[str]:
    """Distinct RFC5322.From domains, read from the undecoded header block so encoded words stay opaque.

    ``decoded`` (the From fields with RFC 2047 encoded words decoded) is read only
    when the undecoded fields name no domain: an address hidden in encoded words
    is not one (RFC 2047 5), but it is what a mail client shows as the author.
    """
    for values in (_from_fields(header), decoded):
        domains: list[str] = []
        for _, address in email.utils.getaddresses(list(values)):
            domain = normalise_domain(address.rpartition("@")[2]) if "@" in address else None
            if domain and domain not in domains:
                domains.append(domain)
        if domains:
            return domains
    return []


def _from_fields(header: bytes) -> list[str]:
    """The From fields' unfolded values, with the obsolete syntax RFC 5322 4.5 has readers accept.

    The stdlib's parser takes a field with blanks before its colon (``From : a@b``,
    or ``X-Any : v`` above the From) for the end of the header block, which would
    hide the author from DMARC; Postfix, and so the milter, reads such fields.
    """
    values: list[list[bytes]] = []
    current: list[bytes] | None = None
    for line in re.split(rb"\r?\n", header):
        if line[:1] in (b" ", b"\t"):  # folded: part of the field above
            if current is not None:
                current.append(line)
            continue
        match = _FIELD.match(line)
        current = [match.group(2)] if match and match.group(1).lower() == b"from" else None
        if current is not None:
            values.append(current)
    return [b"".join(v).decode("ascii", "surrogateescape") for v in values]


def discover_policy(client: DnsClient, deadline: Deadline, domain: str, orgs: OrgDomains) -> PolicyLookup:
    """The From domain's own record, else its organizational domain's (RFC 7489 6.6.3)."""
    candidates = [domain]
    org = orgs.registrable(domain)
    if org and org != domain:
        candidates.append(org)
    for candidate in candidates:
        answer = client.query(f"_dmarc.{candidate}", "TXT", deadline)
        if answer.outcome.unavailable:
            return PolicyLookup(domain, dns_failed=True)
        records = [
            t
            for t in (b.decode("utf-8", "replace") for b in answer.texts())
            if t.replace(" ", "").startswith("v=DMARC1")
        ]
        if len(records) == 1:
            record = DmarcRecord.parse(records[0])
            if record is not None:
                return PolicyLookup(domain, record, candidate)
    return PolicyLookup(domain)


def evaluate(
    lookup: PolicyLookup, spf: SpfResult | None, signatures: Sequence[DkimResult], orgs: OrgDomains
) -> DmarcResult:
    """Pass when an aligned identifier passed; otherwise the disposition the domain asks for."""
    domain, record = lookup.domain, lookup.record
    if lookup.dns_failed:
        return DmarcResult(domain, "temperror", detail="policy lookup failed")
    if record is None:
        return DmarcResult(domain, "none", detail="no policy")
    spf_aligned = spf is not None and spf.result == "pass" and orgs.aligned(domain, spf.domain, record.strict_spf)
    dkim_aligned = any(s.result == "pass" and orgs.aligned(domain, s.domain, record.strict_dkim) for s in signatures)
    where = f"policy of {lookup.found_at}"
    if spf_aligned or dkim_aligned:
        return DmarcResult(domain, "pass", Disposition.NONE, spf_aligned, dkim_aligned, where)
    # An identifier that would align could not be checked: no verdict on a DNS outage. Others'
    # DNS trouble does not count, or a spoofer could dodge DMARC by making its own lookups time out.
    if (spf is not None and spf.failed_dns and orgs.aligned(domain, spf.domain, record.strict_spf)) or any(
        s.failed_dns and orgs.aligned(domain, s.domain, record.strict_dkim) for s in signatures
    ):
        return DmarcResult(domain, "temperror", detail=f"{where}; an aligned SPF or DKIM lookup failed")
    disposition = record.policy
    if lookup.found_at != domain and record.subdomain_policy is not None:
        disposition = record.subdomain_policy
    detail = f"{where}: p={disposition.value}"
    if record.percent < 100:
        disposition = disposition.weaker() if disposition is not Disposition.NONE else disposition
        detail += f" at pct={record.percent}, applied as {disposition.value}"
    return DmarcResult(domain, "fail", disposition, False, False, detail)


def _disposition(value: str | None) -> Disposition | None:
    try:
        return Disposition(value) if value is not None else None
    except ValueError:
        return None
