"""Run every detector over one parsed message and collect their evidence.

Each detector package exposes ``detectors(settings)``; the inspector owns no
detection logic of its own. A detector that raises becomes its own ``unchecked``
finding, so one broken check never hides the others; and since a bug that a
message's bytes trigger triggers again on every retry, it is not a transient
``error`` (which tempfails by default: mail that could never be delivered).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Protocol

from .config import LimitSettings, Settings
from .envelope import Envelope
from .evidence import Category, Evidence, Finding, Severity
from .message import ParsedMessage, parse_message
from .unpack import Unpacker

log = logging.getLogger(__name__)


class Detector(Protocol):
    """Looks at a parsed message and reports evidence; never decides an action."""

    name: str

    def inspect(self, message: ParsedMessage, envelope: Envelope) -> Evidence: ...


@dataclass(frozen=True)
class Inspector:
    limits: LimitSettings
    detectors: tuple[Detector, ...]
    # One per process: it owns the libmagic handle and the long-lived parser sandbox.
    unpacker: Unpacker | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "Inspector":
        from . import models, reputation, signatures  # detector packages load rules and models here

        return cls(settings.limits, (*signatures.detectors(settings), *models.detectors(settings),
                                     *reputation.detectors(settings)), Unpacker(settings.limits))

    def inspect(self, raw: bytes, envelope: Envelope) -> Evidence:
        started = time.perf_counter()
        message = parse_message(raw, self.limits, self.unpacker)
        timings = [("parse", time.perf_counter() - started)]
        evidence = Evidence(findings=message.problems)
        for detector in self.detectors:
            t0 = time.perf_counter()
            try:
                found = detector.inspect(message, envelope)
            except Exception as exc:
                log.exception("detector %s failed", detector.name,
                              extra={"queue_id": envelope.queue_id, "connection_id": envelope.connection_id})
                found = Evidence(findings=(detector_error(detector.name, exc),))
            timings.append((detector.name, time.perf_counter() - t0))
            evidence = evidence.merged(found)
        return replace(evidence, timings=tuple(timings))


def detector_error(detector: str, exc: BaseException) -> Finding:
    """What a detector that raised on this message leaves: what it would have checked is unchecked."""
    return Finding(Category.UNCHECKED, "detector-error", Severity.HIGH, detector, "",
                   f"{type(exc).__name__}: {str(exc)[:200]}")
