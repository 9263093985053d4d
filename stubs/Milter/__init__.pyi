# Type stub for the part of pymilter (the Milter package) that Mailward uses. pymilter ships no
# type information; without this stub every Milter name is Any and mypy checks nothing about the
# callbacks or the replies. Extend it when Mailward uses more of pymilter.
from collections.abc import Callable
from typing import TypeVar

_F = TypeVar("_F", bound=Callable[..., int])
_C = TypeVar("_C", bound=type[Base])

# Callback replies (from the milter C extension).
CONTINUE: int
REJECT: int
TEMPFAIL: int
ACCEPT: int
DISCARD: int
NOREPLY: int  # a callback negotiated as unanswered (Milter.noreply's wrapper returns it)

# Actions a milter asks the MTA for at registration.
ADDHDRS: int
CHGHDRS: int
DELRCPT: int
QUARANTINE: int

# Protocol steps a milter asks the MTA not to skip (P_NO*) or to await a reply for (P_NR_*).
P_NODATA: int
P_NR_DATA: int
P_NR_HDR: int
P_NR_BODY: int

factory: Callable[[], Base]

def set_flags(flags: int) -> None: ...
def runmilter(name: str, socketname: str, timeout: int = 0, rmsock: bool = True) -> None: ...
def stop() -> None: ...
def header_leading_space(klass: _C) -> _C: ...
def noreply(func: _F) -> _F: ...

# Per optional callback name: (the P_NR_* bit that leaves it unanswered, the P_NO* bit that skips it).
OPTIONAL_CALLBACKS: dict[str, tuple[int, int]]

def decode(strategy: str) -> Callable[[_F], _F]: ...

class Base:
    _protocol: int  # the protocol steps negotiated with the MTA
    @classmethod
    def protocol_mask(cls) -> int: ...
    def getsymval(self, sym: str) -> str | None: ...
    def setreply(self, rcode: str, xcode: str | None = None, msg: str | None = None, *ml: str) -> int: ...
    def addheader(self, field: str, value: str, idx: int = -1) -> int: ...
    def chgheader(self, field: str, idx: int, value: str) -> int: ...
    def delrcpt(self, rcpt: str) -> int: ...
    def quarantine(self, reason: str) -> int: ...
