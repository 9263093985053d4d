"""Blocklist zones and the answer codes that mean "listed" in each.

Entries use Postfix's postscreen syntax, which mail admins already know:
``zone[=a.b.c.d][*severity]`` where each octet is ``n``, ``[n..m]`` or ``[n;m;...]``,
plus ``zone&mask[*severity]`` for bitmask lists (SURBL, URIBL) whose answer is
127.0.0.X with one bit per list. Several entries may name the same zone with
different codes and severities; the zone is still queried once.

An answer that matches no entry of its zone is an error, never a listing: lists
use 127.255.255.x (and e.g. 127.0.1.255, 127.0.0.1 on URIBL) to say "query refused"
or "rate limited", and a wildcarding resolver may answer anything at all.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..evidence import Severity

# Without a filter: any 127/8 answer except x.x.x.0/1/255 and 127.255.x.x, the usual error codes.
_DEFAULT_OCTETS = (frozenset({127}), frozenset(range(0, 255)), frozenset(range(0, 255)), frozenset(range(2, 255)))
_ENTRY = re.compile(
    r"^(?P<zone>[A-Za-z0-9_][A-Za-z0-9_.-]*[A-Za-z0-9])\.?"
    r"(?:=(?P<filter>[0-9.\[\];]+)|&(?P<mask>0x[0-9A-Fa-f]+|[0-9]+))?"
    r"(?:\*(?P<severity>[A-Za-z]+))?$"
)
_ITEM = r"\d{1,3}(?:\.\.\d{1,3})?"
_OCTET = rf"(\d{{1,3}}|\[{_ITEM}(?:;{_ITEM})*\])"
_FILTER = re.compile(rf"^{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}$")


@dataclass(frozen=True)
class CodeRule:
    """Which answers of a zone mean "listed", and how bad that listing is."""

    octets: tuple[frozenset[int], ...] | None = None  # per-octet allowed values
    mask: int | None = None  # bitmask on 127.0.0.X
    severity: Severity = Severity.MEDIUM

    def matches(self, address: ipaddress.IPv4Address) -> bool:
        packed = address.packed
        if self.mask is not None:
            return packed[:3] == b"\x7f\x00\x00" and bool(packed[3] & self.mask)
        octets = self.octets or _DEFAULT_OCTETS
        return all(value in allowed for value, allowed in zip(packed, octets))


@dataclass(frozen=True)
class ZoneAnswer:
    """What one zone's answer means: the codes that list, and the ones that are errors."""

    listed: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    severity: Severity = Severity.INFO


@dataclass(frozen=True)
class Zone:
    name: str
    rules: tuple[CodeRule, ...]

    def classify(self, answers: Iterable[str]) -> ZoneAnswer:
        listed, errors, severity = [], [], Severity.INFO
        for answer in answers:
            try:
                address = ipaddress.IPv4Address(answer)
            except ValueError:
                errors.append(answer)
                continue
            matching = [r.severity for r in self.rules if r.matches(address)]
            if matching:
                listed.append(answer)
                severity = max(severity, *matching)
            else:
                errors.append(answer)
        return ZoneAnswer(tuple(listed), tuple(errors), severity)


def parse_zones(entries: Iterable[str]) -> tuple[Zone, ...]:
    """Group entries by zone, in the order zones first appear; ``ValueError`` names a bad entry."""
    rules: dict[str, list[CodeRule]] = {}
    for entry in entries:
        match = _ENTRY.match(entry.strip())
        if match is None:
            raise ValueError(f"{entry!r} is not zone[=a.b.c.d][*severity] or zone&mask[*severity]")
        severity = _severity(match["severity"], entry)
        octets = _octets(match["filter"], entry) if match["filter"] else None
        mask = int(match["mask"], 0) if match["mask"] else None
        if mask is not None and not 0 < mask < 256:
            raise ValueError(f"{entry!r}: mask must be between 1 and 255")
        rules.setdefault(match["zone"].lower().rstrip("."), []).append(CodeRule(octets, mask, severity))
    return tuple(Zone(name, tuple(r)) for name, r in rules.items())


def _severity(name: str | None, entry: str) -> Severity:
    if name is None:
        return Severity.MEDIUM
    try:
        return Severity[name.upper()]
    except KeyError:
        raise ValueError(f"{entry!r}: severity must be one of {', '.join(s.name.lower() for s in Severity)}") from None


def _octets(text: str, entry: str) -> tuple[frozenset[int], ...]:
    match = _FILTER.match(text)
    if match is None:
        raise ValueError(f"{entry!r}: filter must be four octets, each n, [n..m] or [n;m]")
    octets = []
    for part in match.groups():
        values: set[int] = set()
        for item in part.strip("[]").split(";"):
            low, _, high = item.partition("..")
            lo, hi = int(low), int(high or low)
            if not 0 <= lo <= hi <= 255:
                raise ValueError(f"{entry!r}: {item!r} is not an octet or a rising range of octets")
            values.update(range(lo, hi + 1))
        octets.append(frozenset(values))
    return tuple(octets)
