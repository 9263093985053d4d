"""The contract between the inspector and the detector packages.

It lives apart from :mod:`mailward.pipeline` so that the detector packages
(signatures, models, reputation) can name it without importing the flow
that runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeGuard

from .envelope import Envelope
from .evidence import Evidence
from .message import ParsedMessage


class Detector(Protocol):
    """Looks at a parsed message and reports evidence; never decides an action."""

    @property
    def name(self) -> str: ...  # read-only: detectors are frozen dataclasses

    def inspect(self, message: ParsedMessage, envelope: Envelope) -> Evidence: ...


class StagedDetector(Detector, Protocol):
    """A detector that waits on another process (clamd): ``begin`` starts the wait early and
    returns what collects its evidence, so the other detectors run meanwhile."""

    def begin(self, message: ParsedMessage, envelope: Envelope) -> Callable[[], Evidence]: ...


def is_staged(detector: Detector) -> TypeGuard[StagedDetector]:
    """Whether ``detector`` is staged: the inspector tells them apart by the ``begin`` method."""
    return hasattr(detector, "begin")
