"""DNSBL and URIBL lookups against a real DNS server on loopback serving test zones."""

from __future__ import annotations

import ipaddress

import pytest

from dns_server import DnsServer, soa
from mailward.config import DirectionPolicy, load_settings
from mailward.envelope import Direction
from mailward.errors import ConfigError
from mailward.evidence import Category, Severity
from mailward.policy import decide
from mailward.reputation import detectors
from mailward.reputation.zones import parse_zones
from mailward.verdict import Action
from support.mail import signable_mail as message
from support.reputation import detector_for, envelope, no_system_resolver, parse  # noqa: F401

V6_LISTED = "2001:db8:1::7"


def _rev(address: str) -> str:
    return ipaddress.ip_address(address).reverse_pointer.rsplit(".", 2)[0]


ZONES = {
    "bl.test.": soa("bl.test.")
    + f"""
2.0.0.127 IN A 127.0.0.2
7.100.51.198 IN A 127.0.0.4
8.100.51.198 IN A 127.255.255.254
9.100.51.198 IN A 127.0.0.4
9.100.51.198 IN A 127.0.0.10
10.100.51.198 IN A 10.1.2.3
{_rev(V6_LISTED)} IN A 127.0.0.3
""",
    "other.test.": soa("other.test.") + "7.100.51.198 IN A 127.0.0.2\n",
    "uribl.test.": soa("uribl.test.")
    + """
spam-domain.test IN A 127.0.0.8
grey-domain.test IN A 127.0.0.4
refused-domain.test IN A 127.0.0.1
""",
}
DNSBL = ["bl.test=127.0.0.[2..3]*high", "bl.test=127.0.0.4*medium", "bl.test=127.0.0.10*low", "other.test"]
URIBL = ["uribl.test&0x0c*high"]


@pytest.fixture(scope="module")
def server():
    with DnsServer(ZONES) as srv:
        yield srv


@pytest.fixture
def detector(server):
    return detector_for(server.port, dnsbl=DNSBL, uribl=URIBL, spf=False, dkim=False, dmarc=False)


def _inspect(detector, client: str, body: str = "Hello\n", **env):
    return detector.inspect(parse(message(body=body)), envelope(client=client, **env))


def test_listed_ipv4_client_reports_each_zone_with_its_severity(detector):
    evidence = _inspect(detector, "198.51.100.7")
    listings = {f.name: f for f in evidence.of(Category.REPUTATION)}
    assert set(listings) == {"dnsbl:bl.test", "dnsbl:other.test"}
    assert listings["dnsbl:bl.test"].severity is Severity.MEDIUM
    assert "127.0.0.4" in listings["dnsbl:bl.test"].detail and "198.51.100.7" in listings["dnsbl:bl.test"].detail
    assert listings["dnsbl:other.test"].severity is Severity.MEDIUM  # no *severity: the default
    assert not evidence.of(Category.UNCHECKED)


def test_rfc5782_test_point_is_listed_and_unlisted_client_is_clean(detector):
    assert detector.inspect(parse(message()), envelope(client="127.0.0.2"))  # allowlisted loopback: skipped
    clean = _inspect(detector, "198.51.100.200")
    assert clean.findings == ()


def test_several_codes_in_one_answer_take_the_strongest(detector):
    (finding,) = [f for f in _inspect(detector, "198.51.100.9").findings if f.name == "dnsbl:bl.test"]
    assert finding.severity is Severity.MEDIUM
    assert "127.0.0.4" in finding.detail and "127.0.0.10" in finding.detail


def test_ipv6_client_is_looked_up_by_nibbles(detector, server):
    (finding,) = _inspect(detector, V6_LISTED).of(Category.REPUTATION)
    assert finding.name == "dnsbl:bl.test" and finding.severity is Severity.HIGH
    assert server.count(f"{_rev(V6_LISTED)}.bl.test", "A") >= 1


def test_ipv4_mapped_ipv6_client_is_looked_up_as_ipv4(detector):
    names = {f.name for f in _inspect(detector, "::ffff:198.51.100.7").of(Category.REPUTATION)}
    assert names == {"dnsbl:bl.test", "dnsbl:other.test"}


@pytest.mark.parametrize("client, code", [("198.51.100.8", "127.255.255.254"), ("198.51.100.10", "10.1.2.3")])
def test_refused_and_foreign_answers_are_errors_never_listings(detector, client, code):
    evidence = _inspect(detector, client)
    assert not evidence.of(Category.REPUTATION)
    (error,) = evidence.of(Category.UNCHECKED)
    assert error.name == "dnsbl-error" and error.severity is Severity.LOW
    assert code in error.detail and "bl.test" in error.detail


def test_uribl_looks_up_registrable_domains_of_message_urls(detector, server):
    body = (
        "Buy now: https://shop.www.spam-domain.test/offer?id=1 and see\n"
        '<a href="http://img.grey-domain.test/x.png">www.harmless.test</a>\n'
    )
    evidence = _inspect(detector, "198.51.100.200", body=body)
    listings = {f.detail.split()[0]: f for f in evidence.of(Category.REPUTATION)}
    assert set(listings) == {"spam-domain.test", "grey-domain.test"}
    assert all(f.name == "uribl:uribl.test" and f.severity is Severity.HIGH for f in listings.values())
    assert listings["spam-domain.test"].location == "part body"
    assert server.count("harmless.test.uribl.test", "A") >= 1
    assert server.count("shop.www.spam-domain.test.uribl.test") == 0


def test_uribl_bitmask_zone_treats_unmasked_code_as_error(detector):
    evidence = _inspect(detector, "198.51.100.200", body="http://refused-domain.test/\n")
    assert not evidence.of(Category.REPUTATION)
    assert [f.name for f in evidence.of(Category.UNCHECKED)] == ["uribl-error"]


def test_uribl_respects_skip_list_and_domain_limit(server):
    det = detector_for(
        server.port,
        uribl=URIBL,
        spf=False,
        dkim=False,
        dmarc=False,
        uribl_skip_domains=["spam-domain.test"],
        max_uri_domains=2,
    )
    body = "http://a.spam-domain.test/ http://one.test/ http://two.test/ http://three.test/\n"
    evidence = det.inspect(parse(message(body=body)), envelope(client="198.51.100.201"))
    assert evidence.findings == ()  # the listed domain was skipped
    assert server.count("one.test.uribl.test") == 1 and server.count("two.test.uribl.test") == 1
    assert server.count("three.test.uribl.test") == 0  # past the limit


def test_outbound_and_allowlisted_clients_are_not_looked_up(server):
    det = detector_for(server.port, dnsbl=DNSBL, allow_networks=["198.51.100.0/28"], allow_domains=["trusted.test"])
    before = len(server.queries)
    assert det.inspect(parse(message()), envelope(client="198.51.100.7")).findings == ()
    assert det.inspect(parse(message()), envelope(client="203.0.113.5", client_name="mx1.Trusted.test.")).findings == ()
    assert det.inspect(parse(message()), envelope(client="203.0.113.5", direction=Direction.OUTBOUND)).findings == ()
    assert len(server.queries) == before


@pytest.mark.parametrize("client", ["127.0.0.1", "10.1.2.3", "192.168.7.7", "fd00::25", "fe80::1"])
def test_loopback_private_and_link_local_clients_are_skipped_by_default(server, client):
    det = detector_for(server.port, dnsbl=DNSBL)
    before = len(server.queries)
    evidence = det.inspect(parse(message()), envelope(client=client))
    assert evidence.findings == () and evidence.headers == () and len(server.queries) == before


def test_internal_networks_from_direction_settings_are_skipped(server):
    settings = load_settings(
        overrides={
            "direction": {"internal_networks": ["198.51.100.0/24"]},
            "reputation": {"nameservers": ["127.0.0.1"], "port": server.port, "dnsbl": DNSBL},
        }
    )
    (det,) = detectors(settings)
    assert det.inspect(parse(message()), envelope(client="198.51.100.7")).findings == ()


def test_listing_is_scored_per_policy_config(detector):
    evidence = _inspect(detector, "198.51.100.7")
    assert decide(evidence, DirectionPolicy(), "MW-1").action is Action.TAG
    strict = DirectionPolicy().with_actions({Category.REPUTATION: Action.REJECT})
    verdict = decide(evidence, strict, "MW-1")
    assert verdict.action is Action.REJECT
    assert "bl.test" not in str(verdict.reply) and "other.test" not in str(verdict.reply)


@pytest.mark.parametrize(
    "entry",
    [
        "bl.test=127.0.0",
        "bl.test=127.0.0.[3..2]",
        "bl.test*severe",
        "bl.test&0",
        "bl.test=127.0.0.256",
        "-bad.test",
        "bl.test=a.b.c.d",
    ],
)
def test_bad_zone_entries_are_config_errors_naming_the_key(entry):
    with pytest.raises(ConfigError) as caught:
        detectors(load_settings(overrides={"reputation": {"nameservers": ["127.0.0.1"], "dnsbl": [entry]}}))
    assert caught.value.key == "reputation.dnsbl"


def test_zone_entries_group_by_zone_and_match_postscreen_filters():
    zone, bits = parse_zones(["a.test=127.0.[0..1].[2;4..5]*critical", "A.test.", "b.test&0x8"])
    assert zone.name == "a.test" and len(zone.rules) == 2
    answer = zone.classify(["127.0.1.4", "127.0.0.3", "127.255.255.255"])
    assert answer.listed == ("127.0.1.4", "127.0.0.3") and answer.errors == ("127.255.255.255",)
    assert answer.severity is Severity.CRITICAL
    assert bits.classify(["127.0.0.8", "127.0.0.4", "127.0.1.8"]).listed == ("127.0.0.8",)
