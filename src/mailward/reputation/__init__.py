"""DNS reputation and sender authentication of inbound mail: DNSBL, URIBL, SPF, DKIM, DMARC.

One detector, ``dns``, does every lookup of a message in parallel within a time
budget, through one resolver and answer cache per scanning process. Findings are
``reputation`` (blocklist listings) and ``authentication`` (SPF, DKIM, DMARC),
plus ``unchecked`` when DNS could not answer; zone names appear in finding names
and details (logs), never in SMTP replies. The detector also hands the milter an
Authentication-Results header field through ``Evidence.headers``.

Example configuration::

    [reputation]
    nameservers = ["127.0.0.1"]          # a local recursive resolver (public DNSBLs refuse public ones)
    dnsbl = ["zen.spamhaus.org=127.0.0.[2..3]*high", "zen.spamhaus.org=127.0.0.[4..7]*high",
             "zen.spamhaus.org=127.0.0.[10;11]*low", "bl.spamcop.net=127.0.0.2*medium"]
    uribl = ["dbl.spamhaus.org=127.0.1.[2..99]*high", "multi.surbl.org&0xd8*high"]
    dmarc_reject = "high"
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import Settings
from .detector import ReputationDetector, check_settings
from .results_header import HEADER, authserv_id, claims_our_id, results_value

if TYPE_CHECKING:
    from ..detector import Detector

__all__ = [
    "HEADER",
    "ReputationDetector",
    "authserv_id",
    "check_settings",
    "claims_our_id",
    "detectors",
    "results_value",
]


def detectors(settings: Settings) -> list[Detector]:
    rep = settings.reputation
    if not rep.enabled or not (rep.dnsbl or rep.uribl or rep.spf or rep.dkim or rep.dmarc):
        return []
    return [ReputationDetector.from_settings(settings)]
