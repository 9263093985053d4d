"""Run every detector over one parsed message and collect their evidence.

Each detector package exposes ``detectors(settings)``, composed by
:func:`mailward.runtime.build_inspector`; the inspector owns no detection
logic of its own. A detector that raises becomes its own ``unchecked``
finding, so one broken check never hides the others; and since a bug that a
message's bytes trigger triggers again on every retry, it is not a transient
``error`` (which tempfails by default: mail that could never be delivered).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import TypeVar

from .config import LimitSettings
from .detector import Detector, is_staged
from .envelope import Envelope
from .evidence import (
    ALERT_HEADER,
    RELEASE_HEADER,
    Category,
    Evidence,
    Finding,
    MarkProof,
    MessageFacts,
    Severity,
    content_digest,
)
from .message import ParsedMessage, parse_message, split_message
from .unpack import Unpacker

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Inspector:
    limits: LimitSettings
    detectors: tuple[Detector, ...]
    # One per process: it owns the libmagic handle and the long-lived parser sandbox.
    unpacker: Unpacker | None = None

    def inspect(self, raw: bytes, envelope: Envelope) -> Evidence:
        started = time.perf_counter()
        message = parse_message(raw, self.limits, self.unpacker)
        timings = [("parse", time.perf_counter() - started)]
        evidence = Evidence(findings=message.problems)
        # Detectors that wait on another process (clamd) start first and are collected last.
        begun = {
            d.name: _guarded(d, envelope, partial(d.begin, message, envelope)) for d in self.detectors if is_staged(d)
        }
        for detector in sorted(self.detectors, key=lambda d: d.name in begun):
            t0 = time.perf_counter()
            finish = begun.get(detector.name)
            if isinstance(finish, Evidence):  # begin() itself failed
                found = finish
            else:
                found = _guarded(detector, envelope, finish or partial(detector.inspect, message, envelope))
            timings.append((detector.name, time.perf_counter() - t0))
            evidence = evidence.merged(found)
        # Marks are read here, where the message already is, so the milter process never holds a body.
        return replace(
            evidence,
            findings=describe_objects(evidence.findings, message),
            message=MessageFacts.of(message),
            timings=tuple(timings),
            marks=mark_proof(message),
        )


def mark_proof(message: ParsedMessage) -> MarkProof | None:
    """The release and alert marks ``message`` claims and its body digest; None when it claims none.

    Read from the parsed headers; the content is hashed only for a message that claims a mark.
    """
    if b"x-mailward-" not in message.raw_headers.lower():  # ordinary mail: nothing to look up
        return None
    release = tuple(" ".join(v.split()) for v in message.header_all(RELEASE_HEADER))
    alert = tuple(" ".join(v.split()) for v in message.header_all(ALERT_HEADER))
    if not release and not alert:
        return None
    return MarkProof(release, alert, content_digest(*split_message(message.raw)))


def detector_error(detector: str, exc: BaseException) -> Finding:
    """What a detector that raised on this message leaves: what it would have checked is unchecked."""
    return Finding(
        Category.UNCHECKED, "detector-error", Severity.HIGH, detector, "", f"{type(exc).__name__}: {str(exc)[:200]}"
    )


def _guarded(detector: Detector, envelope: Envelope, call: Callable[[], T]) -> T | Evidence:
    """``call()``, or that detector's ``unchecked`` finding when it raises (one broken check never hides the others)."""
    try:
        return call()
    except Exception as exc:
        log.exception("detector %s failed", detector.name)
        return Evidence(findings=(detector_error(detector.name, exc),))


def describe_objects(findings: tuple[Finding, ...], message: ParsedMessage) -> tuple[Finding, ...]:
    """Give each finding located on an object that object's SHA-256, name and real type, for pivoting."""
    by_path = {o.path: o for o in message.objects}
    out = []
    for finding in findings:
        obj = by_path.get(finding.location)
        if obj is not None and obj.has_content and not finding.sha256:
            finding = replace(
                finding,
                sha256=obj.sha256,
                file_name=obj.names[0] if obj.names else "",
                mime_type=obj.sniffed_type or obj.declared_type,
            )
        out.append(finding)
    return tuple(out)
