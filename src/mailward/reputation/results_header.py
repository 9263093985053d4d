"""The Authentication-Results header field (RFC 8601) for inbound mail, built with ``authres``.

Values come from the sender (envelope, DKIM tags, library error text), so each
is reduced to characters that cannot break out of the field before ``authres``
formats it. A receiving MTA must also delete fields that claim its own
authserv-id before adding its own (RFC 8601 5): :func:`claims_our_id` tells
which ones.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from typing import Any

import authres
import authres.dmarc

from ..config import ReputationSettings
from .dkim_check import DkimResult
from .dmarc_check import DmarcResult
from .spf_check import SpfResult

HEADER = "Authentication-Results"
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]{1,254}$")
_TOKEN = re.compile(r'[^\s()<>@,;:\\"/\[\]?=]*')  # RFC 2045 token, what an authserv-id is when not quoted


def authserv_id(settings: ReputationSettings) -> str:
    """The id our Authentication-Results fields carry: configured, else this host's name."""
    return settings.authserv_id or socket.gethostname()


def results_value(
    authserv_id: str, spf: Sequence[SpfResult], dkim: Sequence[DkimResult], dmarc: Sequence[DmarcResult]
) -> str:
    """The field's value (without the name), e.g. ``mx.example.org; spf=pass smtp.mailfrom=...``."""
    results: list[Any] = []
    for check in spf:
        if check.identity == "helo":
            results.append(authres.SPFAuthenticationResult(result=check.result, smtp_helo=_safe(check.domain)))
        else:
            sender = check.sender if _safe(check.sender) else check.domain
            results.append(authres.SPFAuthenticationResult(result=check.result, smtp_mailfrom=_safe(sender)))
    for signature in dkim:
        results.append(
            authres.DKIMAuthenticationResult(
                result=signature.result,
                reason=_reason(signature.reason),
                header_d=_safe(signature.domain),
                header_s=_safe(signature.selector),
            )
        )
    for alignment in dmarc:
        results.append(
            authres.dmarc.DMARCAuthenticationResult(
                result=alignment.result,
                header_from=_safe(alignment.domain),
                policy=alignment.disposition.value if alignment.result == "fail" else None,
            )
        )
    header = authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=results)
    return str(header).partition(": ")[2]


def claims_our_id(value: str, authserv_id: str) -> bool:
    """Whether an existing Authentication-Results value claims to come from us (a forgery inbound).

    The authserv-id is read after CFWS as RFC 5322 3.2.2 has it: comments nest and
    hold quoted-pairs, as ``authres`` and mail clients read them, so no comment a
    forger writes can hide our id. A quoted or root-dotted id counts as ours too:
    deleting a forgery a lenient reader would credit to us costs nothing.
    """
    start = _after_cfws(value)
    if value[start : start + 1] == '"':
        found = re.sub(r"\\(.)", r"\1", value[start + 1 :].partition('"')[0])
    else:
        match = _TOKEN.match(value, start)
        found = match.group() if match else ""
    return bool(found) and found.rstrip(".").lower() == authserv_id.rstrip(".").lower()


def _after_cfws(text: str) -> int:
    """Where the first thing that is neither white space nor a (nested) comment starts."""
    depth, index = 0, 0
    while index < len(text):
        char = text[index]
        if depth and char == "\\":
            index += 1  # a quoted-pair: the next character is literal
        elif char == "(":
            depth += 1
        elif depth and char == ")":
            depth -= 1
        elif not depth and not char.isspace():
            return index
        index += 1
    return index


def _safe(value: str) -> str | None:
    return value if value and _SAFE_VALUE.match(value) else None


def _reason(text: str) -> str | None:
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)[:80].strip()
    return cleaned or None
