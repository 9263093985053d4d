"""Bounded lookups: per-TTL caching, dead and silent servers, the per-message budget."""

from __future__ import annotations

import socket
import time

import pytest

from dns_server import BlackHole, DnsServer, soa
from mailward.evidence import Category, Severity
from mailward.reputation.resolver import Deadline, DnsClient, Outcome
from support.mail import signable_mail as message
from support.reputation import detector_for, envelope, no_system_resolver, parse  # noqa: F401

ZONES = {
    "cache.test.": soa("cache.test.", ttl=300, negative_ttl=1)
    + """
short 1 IN A 192.0.2.1
long 300 IN A 192.0.2.2
txt 1 IN TXT "v=spf1 -all"
""",
    "bl.test.": soa("bl.test.") + "7.100.51.198 IN A 127.0.0.2\n",
}
SILENT = [f"slow{i}.test" for i in range(4)]


@pytest.fixture(scope="module")
def server():
    with DnsServer(ZONES, silent=SILENT) as srv:
        yield srv


def _client(port: int, timeout: float = 1.0) -> DnsClient:
    return DnsClient(("127.0.0.1",), port, query_timeout=timeout, cache_size=100)


def test_answers_are_cached_for_their_ttl_and_negative_ones_for_the_soa_minimum(server):
    client = _client(server.port)

    def ask_all() -> None:
        assert client.query("short.cache.test", "A", Deadline.after(1)).addresses() == ["192.0.2.1"]
        assert client.query("long.cache.test", "A", Deadline.after(1)).outcome is Outcome.ANSWER
        assert client.query("missing.cache.test", "A", Deadline.after(1)).outcome is Outcome.NXDOMAIN
        assert client.query("txt.cache.test", "A", Deadline.after(1)).outcome is Outcome.NODATA

    for _ in range(3):
        ask_all()
    names = ("short.cache.test", "long.cache.test", "missing.cache.test", "txt.cache.test")
    assert [server.count(n, "A") for n in names] == [1, 1, 1, 1]
    time.sleep(1.1)
    ask_all()
    # 1 s TTL and 1 s SOA minimum expired; the 300 s answer is still fresh.
    assert [server.count(n, "A") for n in names] == [2, 1, 2, 2]


def test_a_spent_budget_still_reads_the_cache(server):
    """A DKIM key fetched after hashing a big body, or a lookup queued behind others, may come
    after the budget: what the cache holds is answered, only a new query is refused."""
    client = _client(server.port)
    asked = server.count("long.cache.test", "A"), server.count("long.cache.test", "MX")
    assert client.query("long.cache.test", "A", Deadline.after(1)).outcome is Outcome.ANSWER
    spent = Deadline(time.monotonic() - 1)
    assert client.query("long.cache.test", "A", spent).addresses() == ["192.0.2.2"]
    assert client.query("long.cache.test", "MX", spent).detail == "budget spent"  # never asked
    assert (server.count("long.cache.test", "A"), server.count("long.cache.test", "MX")) == (asked[0] + 1, asked[1])


def test_caches_belong_to_their_client(server):
    _client(server.port).query("long.cache.test", "TXT", Deadline.after(1))
    _client(server.port).query("long.cache.test", "TXT", Deadline.after(1))
    assert server.count("long.cache.test", "TXT") == 2


def test_failures_are_outcomes_not_listings_and_not_cached(server):
    client = _client(server.port, timeout=0.3)
    started = time.monotonic()
    silent = client.query("x.slow0.test", "A", Deadline.after(5))
    assert silent.outcome is Outcome.TIMEOUT and silent.outcome.unavailable
    assert time.monotonic() - started < 0.3 + 0.25  # the per-query timeout, not the budget
    refused = client.query("not-ours.example", "A", Deadline.after(1))
    assert refused.outcome is Outcome.FAILURE
    client.query("not-ours.example", "A", Deadline.after(1))
    assert server.count("not-ours.example") == 2
    assert client.query("a..b", "A", Deadline.after(1)).outcome is Outcome.NXDOMAIN  # never sent
    assert client.query("x", "A", Deadline(time.monotonic() - 1)).detail == "budget spent"


def test_dead_server_costs_at_most_the_budget_then_dns_is_skipped(server):
    with BlackHole() as hole:
        det = detector_for(
            hole.port,
            dnsbl=["bl.test", "other.test"],
            uribl=["uribl.test"],
            budget=0.6,
            query_timeout=0.4,
            retry_after=0.5,
        )
        msg = parse(message(body="see http://spam-domain.test/\n"))
        started = time.monotonic()
        evidence = det.inspect(msg, envelope(client="198.51.100.7"))
        elapsed = time.monotonic() - started
        assert elapsed < 0.6 + 0.15, elapsed
        assert hole.received >= 4  # all lookups were really sent
        (finding,) = evidence.findings
        assert (finding.category, finding.name, finding.detector) == (Category.UNCHECKED, "dns-unavailable", "dns")
        assert finding.severity is Severity.LOW
        assert "dnsbl bl.test" in finding.detail and "spf mailfrom" in finding.detail

        time.sleep(0.5)  # the background probe of the root zone times out too: resolver dead
        started = time.monotonic()
        again = det.inspect(msg, envelope(client="198.51.100.7"))
        assert time.monotonic() - started < 0.1
        assert [f.name for f in again.findings] == ["dns-unavailable"] and "skipped" in again.findings[0].detail

        time.sleep(0.55)  # retry_after passed: DNS is tried again
        sent = hole.received
        det.inspect(msg, envelope(client="198.51.100.7"))
        assert hole.received > sent


def test_a_sender_whose_lookups_time_out_cannot_switch_checks_off(server):
    det = detector_for(server.port, budget=0.6, query_timeout=0.3)
    own = parse(message(from_="x@evil.slow1.test"))
    evidence = det.inspect(own, envelope(client="198.51.100.7", mail_from="x@evil.slow1.test", helo="mx.slow1.test"))
    assert [f.name for f in evidence.findings] == ["dns-unavailable"]
    time.sleep(0.4)  # the probe got its answer: the resolver is alive
    before = server.count("_dmarc.cache.test", "TXT")
    det.inspect(parse(message(from_="ceo@cache.test")), envelope(client="198.51.100.7"))
    assert server.count("_dmarc.cache.test", "TXT") == before + 1


def test_nothing_listening_costs_the_query_timeout_not_the_budget():
    # Linux reports no ICMP "port unreachable" on unconnected UDP sockets: this is a timeout too.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    det = detector_for(port, dnsbl=["bl.test"], budget=2.0, query_timeout=0.3)
    started = time.monotonic()
    evidence = det.inspect(parse(message()), envelope(client="198.51.100.7"))
    assert time.monotonic() - started < 0.3 + 0.25  # dnspython may overshoot by its retry pause
    assert [f.name for f in evidence.findings] == ["dns-unavailable"]


def test_lookups_run_in_parallel_and_a_silent_zone_does_not_hide_the_others(server):
    det = detector_for(
        server.port, dnsbl=["bl.test"] + SILENT, budget=1.5, query_timeout=0.4, spf=False, dkim=False, dmarc=False
    )
    started = time.monotonic()
    evidence = det.inspect(parse(message()), envelope(client="198.51.100.7"))
    elapsed = time.monotonic() - started
    assert elapsed < 0.8, elapsed  # four 0.4 s timeouts side by side, not one after another
    assert [f.name for f in evidence.of(Category.REPUTATION)] == ["dnsbl:bl.test"]
    (unavailable,) = evidence.of(Category.UNCHECKED)
    assert all(f"dnsbl {zone}" in unavailable.detail for zone in SILENT)
    # Something answered, so the resolver is alive; the silent zones are skipped for retry_after.
    before = server.count("7.100.51.198.slow0.test"), server.count("7.100.51.198.bl.test")
    started = time.monotonic()
    again = det.inspect(parse(message()), envelope(client="198.51.100.7"))
    assert time.monotonic() - started < 0.1
    assert server.count("7.100.51.198.slow0.test") == before[0]
    assert [f.name for f in again.of(Category.REPUTATION)] == ["dnsbl:bl.test"]  # from the cache
    assert "dnsbl slow0.test (not answering, skipped" in again.of(Category.UNCHECKED)[0].detail


def test_budget_cuts_lookups_that_would_outlast_it(server):
    det = detector_for(
        server.port, dnsbl=SILENT, budget=0.3, query_timeout=1.0, spf=False, dkim=False, dmarc=False, retry_after=0
    )
    started = time.monotonic()
    evidence = det.inspect(parse(message()), envelope(client="198.51.100.7"))
    assert time.monotonic() - started < 0.3 + 0.15
    assert [f.name for f in evidence.findings] == ["dns-unavailable"]


def test_warm_cache_answers_without_the_server(server):
    det = detector_for(server.port, dnsbl=["bl.test"], spf=False, dkim=False, dmarc=False)
    msg, env = parse(message()), envelope(client="198.51.100.7")
    first = det.inspect(msg, env)
    sent = len(server.queries)
    started = time.monotonic()
    second = det.inspect(msg, env)
    assert time.monotonic() - started < 0.1
    assert len(server.queries) == sent and first.findings == second.findings
