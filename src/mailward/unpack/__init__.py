"""Container and document handlers: one object's bytes in, members and observations out.

Handlers know nothing of MIME or of the object tree; :mod:`mailward.message`
walks the tree, charges the per-message budget and turns every early stop into
evidence. Fragile parsers run in :class:`Sandbox` with a hard time limit.
"""

from .model import Allowance, Fact, Incomplete, Member, MemberState, Observation, Stop, Unpacked
from .sandbox import Sandbox
from .sniff import Kind, Sniffed, Sniffer
from .unpacker import Unpacker

__all__ = [
    "Allowance",
    "Fact",
    "Incomplete",
    "Kind",
    "Member",
    "MemberState",
    "Observation",
    "Sandbox",
    "Sniffed",
    "Sniffer",
    "Stop",
    "Unpacked",
    "Unpacker",
]
