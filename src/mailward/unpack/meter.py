"""Count real output bytes while unpacking, never what a header claims.

A handler reads every member through one :class:`Meter`; the meter stops the
read as soon as the message's remaining budget, the compression ratio limit or
the call's CPU time is crossed, so a bomb costs at most its allowance, whatever
its headers say.
"""

from __future__ import annotations

import time
from typing import IO

from .model import Allowance, Collector, Incomplete, Member, MemberState, Stop

CHUNK = 64 * 1024


class Meter:
    def __init__(self, allowance: Allowance, input_size: int):
        self.allowance = allowance
        self.input_size = max(input_size, 1)
        self.produced = 0
        self.cpu_limit = time.process_time() + allowance.seconds

    @property
    def remaining(self) -> int:
        return self.allowance.bytes - self.produced

    def charge(self, member_out: int, added: int, member_in: int | None = None) -> Incomplete | None:
        """Account ``added`` new bytes of a member that has produced ``member_out`` so far."""
        self.produced += added
        floor, ratio = self.allowance.ratio_floor, self.allowance.max_ratio
        if self.produced > self.allowance.bytes:
            return Incomplete(Stop.BUDGET, f"more than {self.allowance.bytes} bytes left for this message")
        if member_in is not None and member_out > floor and member_out > ratio * max(member_in, 1):
            return Incomplete(Stop.RATIO, f"member expands beyond {ratio}:1 ({member_in} bytes in)")
        if self.produced > floor and self.produced > ratio * self.input_size:
            return Incomplete(Stop.RATIO, f"container expands beyond {ratio}:1 ({self.input_size} bytes in)")
        return self.overtime()

    def overtime(self) -> Incomplete | None:
        """A ``parser-timeout`` once this call has used its CPU time: work that produces no bytes checks it too."""
        if time.process_time() > self.cpu_limit:
            return Incomplete(Stop.TIMEOUT, f"handler used more than {self.allowance.seconds:g}s of CPU")
        return None

    def read(self, stream: IO[bytes], member_in: int | None = None) -> tuple[bytes, Incomplete | None]:
        """Read ``stream`` to its end or to the first limit; the data is cut at the budget."""
        out = bytearray()
        while True:
            piece = stream.read(max(1, min(CHUNK, self.remaining + 1)))
            if not piece:
                return bytes(out), None
            out += piece
            problem = self.charge(len(out), len(piece), member_in)
            if problem is not None:
                if problem.stop is Stop.BUDGET:
                    excess = self.produced - self.allowance.bytes
                    del out[len(out) - excess :]
                    self.produced -= excess
                return bytes(out), problem


def collect(
    out: Collector, meter: Meter, label: str, content: bytes, declared: str = "application/octet-stream"
) -> bool:
    """Add a member that was decoded in one piece, charging it; False once a limit cut it."""
    problem = meter.charge(len(content), len(content))
    if problem is None:
        out.members.append(Member(label, content, declared_type=declared))
        return True
    keep = max(0, len(content) - max(0, meter.produced - meter.allowance.bytes))
    out.members.append(Member(label, content[:keep], MemberState.TRUNCATED, declared))
    out.incomplete.append(problem)
    return False
