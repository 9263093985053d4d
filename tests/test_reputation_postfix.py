"""End to end: Postfix -> mailward-milter -> loopback DNS server, scored per config.

Postfix's client is 127.0.0.1, so these tests clear the default allowlist and
list 127.0.0.1 in a test blocklist; sender domains live in test zones.
"""

from __future__ import annotations

import re

import pytest

from dns_server import DnsServer, soa
from support.mail import message
from support.reputation import DkimKey

pytestmark = pytest.mark.postfix


@pytest.fixture(scope="module")
def key():
    return DkimKey.generate()


@pytest.fixture(scope="module")
def dns(key):
    zones = {
        "bl.test.": soa("bl.test.") + "1.0.0.127 IN A 127.0.0.2\n",
        "uribl.test.": soa("uribl.test.") + "spam-domain.test IN A 127.0.0.2\n",
        "spoofed.test.": soa("spoofed.test.") + '@ IN TXT "v=spf1 -all"\n_dmarc IN TXT "v=DMARC1; p=reject"\n',
        "good.test.": soa("good.test.")
        + f"""
@ IN TXT "v=spf1 ip4:127.0.0.1 -all"
_dmarc IN TXT "v=DMARC1; p=reject"
sel._domainkey IN TXT {key.record()}
""",
    }
    with DnsServer(zones) as server:
        yield server


def _config(dns, **reputation: str) -> str:
    lines = [
        'nameservers = ["127.0.0.1"]',
        f"port = {dns.port}",
        "allow_networks = []",
        'authserv_id = "mx.mailward.test"',
        *(f"{k} = {v}" for k, v in reputation.items()),
    ]
    return "[reputation]\n" + "\n".join(lines) + "\n"


def _incident(text: str) -> str:
    return re.search(r"MW-[0-9A-F]+-[0-9A-F]+", text).group(0)


def test_listed_client_is_rejected_generically_when_configured(postfix, milter, dns):
    m = milter(_config(dns, dnsbl='["bl.test=127.0.0.2*high"]') + '[policy.inbound]\nreputation_action = "reject"\n')
    mid, raw = message()
    code, text = postfix.send(raw)
    assert code == 550 and "Sender reputation check failed" in text
    assert "bl.test" not in text
    assert postfix.milter_action(mid) == "reject"
    assert postfix.delivered(mid, timeout=0) is None
    event = m.event_for(_incident(text))
    (listing,) = [f for f in event["mailward"]["findings"] if f["category"] == "reputation"]
    assert listing["name"] == "dnsbl:bl.test" and "127.0.0.1" in listing["detail"]  # zone in the log


def test_listed_url_is_tagged_by_default_and_headers_added(postfix, milter, dns):
    milter(_config(dns, uribl='["uribl.test"]', spf="false", dkim="false", dmarc="false"))
    mid, raw = message(body="Hello,\n\nthe minutes are at http://www.spam-domain.test/minutes\n\nAnna\n")
    assert postfix.send(raw)[0] == 250
    delivered = postfix.delivered(mid)
    assert delivered is not None, postfix.log()[-2000:]
    assert delivered["X-Mailward-Verdict"] == "tag" and "reputation" in delivered["X-Mailward-Reasons"]


def test_failing_dmarc_is_rejected_when_authentication_is_enforced(postfix, milter, dns):
    milter(_config(dns) + '[policy.inbound]\nauthentication_action = "reject"\n')
    mid, raw = message(sender="CEO <ceo@spoofed.test>")
    code, text = postfix.send(raw, mail_from="ceo@spoofed.test")
    assert code == 550 and "Sender authentication failed" in text and "spoofed" not in text


def test_authenticated_mail_gets_authentication_results(postfix, milter, dns, key):
    milter(_config(dns) + '[policy.inbound]\nauthentication_action = "reject"\n')
    mid, raw = message(sender="Anna <anna@good.test>")
    # With a Date: of its own, or Postfix adds one (127.0.0.1 is a local client) and breaks the signature.
    raw = raw.replace(b"Subject:", b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nSubject:", 1)
    signed = key.sign(raw.replace(b"\r\n", b"\n"), "good.test").replace(b"\n", b"\r\n")
    assert postfix.send(signed, mail_from="anna@good.test")[0] == 250
    delivered = postfix.delivered(mid)
    assert delivered is not None, postfix.log()[-2000:]
    (ours,) = delivered.get_all("Authentication-Results")
    value = " ".join(ours.split())
    assert value.startswith("mx.mailward.test;")
    assert "spf=pass smtp.mailfrom=anna@good.test" in value
    assert "dkim=pass header.d=good.test header.s=sel" in value and "dmarc=pass header.from=good.test" in value
