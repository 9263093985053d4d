"""Time the ``dns`` detector per message: cold and warm cache, a dead resolver, a silent zone.

Everything runs against the loopback test DNS server (tests/dns_server.py), with
an optional simulated round trip per answer (``--rtt``) standing for the path to
a real recursive resolver on a cache miss. The configuration is a realistic one:
three client blocklists, two URI blocklists, five URL domains per message, SPF
with an include, one 2048-bit DKIM signature and a DMARC policy.

    python bench/reputation_latency.py [--messages 100] [--rtt 0.02]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dns_server import BlackHole, DnsServer, soa  # noqa: E402
from mailward.reputation.detector import ReputationDetector  # noqa: E402
from support.mail import signable_mail as message
from support.reputation import DkimKey, envelope, parse, settings_for  # noqa: E402

DNSBL = ["bl1.test=127.0.0.[2..11]*high", "bl2.test", "bl3.test"]
URIBL = ["uribl1.test&0x0c*high", "uribl2.test"]


def zones(key: DkimKey) -> dict[str, str]:
    return {
        "sender.test.": soa("sender.test.")
        + f"""
@ IN TXT "v=spf1 include:_spf.provider.test -all"
_dmarc IN TXT "v=DMARC1; p=reject"
sel._domainkey IN TXT {key.record()}
""",
        "provider.test.": soa("provider.test.") + '_spf IN TXT "v=spf1 ip4:192.0.2.0/24 -all"\n',
        **{f"{z}.": soa(f"{z}.") for z in ("bl1.test", "bl2.test", "bl3.test", "uribl1.test", "uribl2.test")},
    }


def sample(key: DkimKey, i: int) -> tuple[bytes, str]:
    urls = " ".join(f"https://www.site{i}-{n}.test/page" for n in range(5))
    raw = key.sign(message(body=f"Hello,\nplease see {urls}\n"), "sender.test")
    return raw, f"192.0.2.{1 + i % 250}"


def timed(detector: ReputationDetector, raw: bytes, client: str) -> float:
    parsed = parse(raw)
    started = time.perf_counter()
    detector.inspect(parsed, envelope(client=client))
    return time.perf_counter() - started


def summary(name: str, seconds: list[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
    print(f"{name:<44} p50 {statistics.median(ms):8.2f} ms   p95 {p95:8.2f} ms   max {ms[-1]:8.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--rtt", type=float, default=0.02, help="simulated resolver round trip on a miss (s)")
    args = parser.parse_args()
    key = DkimKey.generate()
    samples = [sample(key, i) for i in range(args.messages)]

    with DnsServer(zones(key), silent=["silent.test"], delay=args.rtt) as server:
        detector = ReputationDetector.from_settings(
            settings_for(server.port, dnsbl=DNSBL, uribl=URIBL, allow_networks=[])
        )
        cold, warm = [], []
        before = len(server.queries)
        for raw, client in samples:
            detector.client.cache.flush()
            cold.append(timed(detector, raw, client))
            warm.append(timed(detector, raw, client))
        per_message = (len(server.queries) - before) / len(samples)
        print(f"{args.messages} messages, {per_message:.0f} DNS questions each, simulated RTT {args.rtt * 1000:.0f} ms")
        summary("cold cache (every answer from the server)", cold)
        summary("warm cache (the same message again)", warm)
        print(f"  serial sum of round trips would be >= {per_message * args.rtt * 1000:.0f} ms per message")

        silent = ReputationDetector.from_settings(
            settings_for(server.port, dnsbl=DNSBL + ["silent.test"], allow_networks=[], uribl=URIBL)
        )
        first = timed(silent, *samples[0])
        rest = [timed(silent, raw, client) for raw, client in samples[1:]]
        print(
            f"one silent zone (query_timeout {silent.settings.query_timeout:.1f} s): "
            f"first message {first * 1000:.0f} ms, then zone skipped:"
        )
        summary("  following messages", rest)

    with BlackHole() as hole:
        dead = ReputationDetector.from_settings(
            settings_for(hole.port, dnsbl=DNSBL, uribl=URIBL, allow_networks=[], budget=4.0, query_timeout=2.0)
        )
        first, second = timed(dead, *samples[0]), timed(dead, *samples[1])
        rest = [timed(dead, raw, client) for raw, client in samples[2:]]
        print(
            f"dead resolver (budget 4.0 s, query_timeout 2.0 s): first message {first * 1000:.0f} ms, second "
            f"{second * 1000:.0f} ms (the root probe confirms meanwhile), then lookups skipped for retry_after:"
        )
        summary("  following messages", rest)


if __name__ == "__main__":
    main()
