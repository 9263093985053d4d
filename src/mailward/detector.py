"""The contract between the inspector and the detector packages.

It lives apart from :mod:`mailward.pipeline` so that the detector packages
(signatures, models, reputation) can name it without importing the flow
that runs them.
"""

from __future__ import annotations

from typing import Protocol

from .envelope import Envelope
from .evidence import Evidence
from .message import ParsedMessage


class Detector(Protocol):
    """Looks at a parsed message and reports evidence; never decides an action."""

    @property
    def name(self) -> str: ...      # read-only: detectors are frozen dataclasses

    def inspect(self, message: ParsedMessage, envelope: Envelope) -> Evidence: ...
