"""DKIM signature verification (RFC 6376) with dkimpy, through our resolver.

dkimpy answers True/False or raises; the reason a signature did not pass (no key,
DNS down, body changed, bad signature) is recovered here so that DMARC and the
Authentication-Results header can tell ``fail`` from ``permerror`` and
``temperror`` (RFC 8601 2.7.1): a DNS outage must never read as a forgery.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import dkim
import dkim.util

from .resolver import Deadline, DnsClient, Outcome

log = logging.getLogger(__name__)


class _SenderFaults(logging.LoggerAdapter[logging.Logger]):
    """dkimpy logs a sender's broken signature or key as an error; for us it is evidence, logged at debug."""

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:
        self.debug(msg, *args, **kwargs)


_DKIMPY_LOG = _SenderFaults(log, {})


MAX_SIGNED_FIELDS = 256  # h= entries; real signers name a few dozen at most
MAX_HEADER_WORK = 1 << 20  # h= entries x header fields, some 50 ms of dkimpy's header selection


@dataclass(frozen=True)
class DkimResult:
    domain: str  # d=
    selector: str  # s=
    result: str  # pass, fail, policy, permerror, temperror (RFC 8601 2.7.1)
    reason: str = ""

    @property
    def failed_dns(self) -> bool:
        return self.result == "temperror"


class _Refused(dkim.DKIMException):  # type: ignore[misc]  # dkimpy has no types
    """A signature not to be counted whatever its cryptography says: ``permerror``."""


class Progress:
    """How far a verification got, to judge one that the budget cut short.

    Waiting for the key is DNS: ``temperror``, as for any lookup. Anything else is
    work over what the sender sent (header fields, h=, body), priced by the sender:
    ``permerror``, or a forger could make its signature slow to verify and so turn
    a DMARC reject into temperror. A verification that never started is ours to
    blame: ``temperror``.
    """

    def __init__(self, domain: str, selector: str):
        self.domain, self.selector = domain, selector
        self.stage = "queued"  # then computing, dns (the key lookup), computing

    def cut_short(self) -> DkimResult:
        if self.stage == "computing":
            return DkimResult(self.domain, self.selector, "permerror", "verification cost more than the budget")
        return DkimResult(self.domain, self.selector, "temperror", "DNS budget spent")


def signatures(header: bytes) -> list[tuple[str, str]]:
    """``(d=, s=)`` of each DKIM-Signature in the header block, numbered as dkimpy numbers them.

    Known before verifying, so that a verification the budget cut short still
    says which domain it was for (DMARC must know whether it could have aligned).
    """
    try:
        fields, _ = dkim.rfc822_parse(header + b"\r\n\r\n")
    except Exception:  # DKIMException, or IndexError on a leading folded line: dkimpy verifies none either
        return []
    found = []
    for name, value in fields:
        if name.lower() == b"dkim-signature":
            try:
                tags = dkim.util.parse_tag_value(value)
            except Exception:  # malformed tag list: verification will say permerror
                tags = {}
            found.append((_text(tags.get(b"d", b"")).lower(), _text(tags.get(b"s", b""))))
    return found


def verify_signature(
    raw: bytes, index: int, client: DnsClient, deadline: Deadline, min_key_bits: int, progress: Progress | None = None
) -> DkimResult:
    """Verify the ``index``-th signature (0 = topmost); ``progress`` says how far it got."""
    progress = progress or Progress("", "")
    progress.stage = "computing"
    key_lookups: list[tuple[Outcome, bytes | None]] = []
    algorithm = b""

    def txt(name: bytes, timeout: float = 5) -> bytes | None:
        progress.stage = "dns"
        answer = client.query(name.decode("ascii", "replace"), "TXT", deadline)
        progress.stage = "computing"
        texts = answer.texts()
        key_lookups.append((answer.outcome, texts[0] if texts else None))
        if answer.outcome.unavailable:
            raise dkim.DnsTimeoutError(f"{answer.outcome.value}: {answer.detail}")
        key = key_lookups[-1][1]
        if key is not None:
            _check_key_hashes(key, algorithm)
        return key

    verifier = None
    try:
        verifier = dkim.DKIM(raw, logger=_DKIMPY_LOG, minkey=min_key_bits)
        prep = verifier.verify_headerprep(idx=index)
        if not prep:
            raise _Refused("no signature")
        sig, include_headers, sig_fields = prep
        algorithm = sig[b"a"]
        _check_signature(sig, include_headers, len(verifier.headers))
        if not verifier.verify_sig(sig, include_headers, sig_fields[index], txt):
            result, reason = _why_not(key_lookups)
        elif unsigned := _unsigned_length(sig, verifier.body):
            result, reason = "policy", f"l= leaves {unsigned} bytes of the body unsigned"
        else:
            result, reason = "pass", ""
    except dkim.ValidationError as exc:  # body hash mismatch, malformed or expired signature
        result, reason = "fail", str(exc)
    except dkim.DKIMException as exc:  # refused, key too small, bad tags, unparsable message
        result, reason = "permerror", str(exc)
    except Exception as exc:  # dkimpy on hostile input: unusable, never a crash
        log.debug("DKIM verification raised %s", type(exc).__name__)
        result, reason = "permerror", type(exc).__name__
    fields = getattr(verifier, "signature_fields", None) or {}
    return DkimResult(_text(fields.get(b"d", b"")).lower(), _text(fields.get(b"s", b"")), result, reason[:200])


def _check_signature(sig: dict[bytes, bytes], include_headers: list[bytes], header_fields: int) -> None:
    """Refuse, before any DNS or hashing, what no verifier may accept or what only a forger sends.

    dkimpy scans every header field for each h= name it does not find, so h= and
    the header block together set the CPU a verification takes: a forger chooses both.
    """
    if sig[b"a"] == b"rsa-sha1":
        raise _Refused("rsa-sha1 is not acceptable (RFC 8301 3.1)")
    if len(include_headers) > MAX_SIGNED_FIELDS:
        raise _Refused(f"h= names {len(include_headers)} fields, more than {MAX_SIGNED_FIELDS}")
    if len(include_headers) * header_fields > MAX_HEADER_WORK:
        raise _Refused(f"h= of {len(include_headers)} names over {header_fields} header fields costs too much")


def _check_key_hashes(key: bytes, algorithm: bytes) -> None:
    """RFC 6376 3.6.1, 6.1.2: a key whose h= tag omits the signature's hash does not verify it."""
    try:
        hashes = dkim.util.parse_tag_value(key).get(b"h")
    except Exception:  # a malformed key: dkimpy says why
        return
    if hashes is not None and algorithm.rpartition(b"-")[2] not in {h.strip() for h in hashes.split(b":")}:
        raise _Refused(f"the key does not allow {algorithm.decode('ascii', 'replace')}")


def _unsigned_length(sig: dict[bytes, bytes], body: bytes) -> int:
    """How much canonicalized body an l= tag leaves out: text anyone could have appended (RFC 6376 8.2)."""
    if b"l" not in sig:
        return 0
    canonical = dkim.CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple")).canonicalize_body(body)
    return max(0, len(canonical) - int(sig[b"l"]))


def _why_not(key_lookups: list[tuple[Outcome, bytes | None]]) -> tuple[str, str]:
    """dkimpy said False: was it DNS, the key, or the signature itself?"""
    if not key_lookups:
        return "permerror", "no signature"
    outcome, key = key_lookups[-1]
    if outcome.unavailable:
        return "temperror", "key lookup failed"
    if key is None:
        return "permerror", "no key"
    try:
        dkim.evaluate_pk(b"key", key)
    except (dkim.DKIMException, ValueError) as exc:
        return "permerror", f"unusable key: {exc}"
    return "fail", "signature did not verify"


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
