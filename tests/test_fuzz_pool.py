"""Mutants of the test fixtures through the real scanning pool: every one ends in a verdict.

The seeds are the mail fixtures and messages carrying what the unpack tests build
(zip, nested zip, tar.gz, 7z, ISO, RAR, TNEF, uuencode, a macro document, EICAR,
GTUBE); ``mutants.py`` mangles them. Each mutant goes through
``mailward.workers.ScanPool`` with every real detector (reputation asks a loopback
DNS server, so SPF, DKIM, DMARC and the block lists read the mangled headers and
URLs); no scan may fail (a failure
would apply ``on_error``), overrun the deadline, or leave the workers growing.
A long run of the same is ``bench/fuzz_pool.py``.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from dns_server import EMPTY_ROOT, DnsServer, knows_no_names
from mailward.config import load_settings
from mailward.policy import decide
from mailward.source import MessageSource
from mailward.workers import ScanPool
from mutants import SENDER, mutants, seeds_from
from support.mail import EICAR, eicar_message, gtube_message
from support.mail import mime_mail as message
from support.unpack import (
    iso_image,
    nested_zip,
    ooxml,
    rar4_stored,
    seven_zip,
    tar_gz,
    tnef,
    uuencoded,
    vba_project,
    zipped,
)

MUTANTS = 300
BUDGET = 20.0  # seconds per message, far below the milter's default deadline of 60
FIXTURES = Path(__file__).parent / "fixtures" / "mail"


def fixture_seeds() -> list[bytes]:
    macro = 'Sub AutoOpen()\n  Shell "cmd /c calc"\nEnd Sub\n'
    attachments = [
        ("a.zip", zipped({"eicar.com": EICAR, "note.txt": b"hello"})),
        ("deep.zip", nested_zip(4)),
        ("b.tar.gz", tar_gz({"x.com": EICAR})),
        ("c.7z", seven_zip({"x.com": EICAR})),
        ("d.iso", iso_image({"X.COM": EICAR})),
        ("e.rar", rar4_stored({"x.com": EICAR})),
        ("winmail.dat", tnef({"x.com": EICAR})),
        ("letter.docm", ooxml("docm", {"word/vbaProject.bin": vba_project(macro)})),
    ]
    seeds = seeds_from([FIXTURES])
    seeds += [message(attachments=[item]) for item in attachments]
    seeds.append(message(body="see below\n" + uuencoded("x.com", EICAR).decode()))
    seeds.append(message(html="<p>Hi <a href='http://example.org/'>there</a></p>", attachments=attachments[:2]))
    seeds += [eicar_message()[1], gtube_message()[1]]
    return seeds


def worker_rss_mib(pool: ScanPool) -> float:
    """The largest resident size among the pool's idle workers."""
    sizes = []
    for pid in pool.idle_pids():
        status = Path(f"/proc/{pid}/status").read_text()
        sizes += [int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")]
    return max(sizes)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Two workers with every detector, reputation included, its DNS a loopback server that knows no names."""
    with DnsServer({".": EMPTY_ROOT}) as dns:
        reputation = knows_no_names(dns.port)
        settings = load_settings(
            overrides={"state_dir": str(tmp_path_factory.mktemp("state")), "reputation": reputation}
        )
        p = ScanPool(settings, 2)
        yield settings, p, dns
        p.close()


def test_every_mutant_ends_in_a_verdict_within_its_budget(pool):
    settings, scan_pool, dns = pool
    seeds = fixture_seeds()
    for raw in seeds[:2]:  # warm both workers before measuring memory
        scan_pool.scan(MessageSource.of(raw), SENDER, BUDGET * 3)
    rss_before = worker_rss_mib(scan_pool)
    verdicts: Counter[str] = Counter()
    slowest = 0.0
    for name, raw in mutants(seeds, MUTANTS, seed=12):
        started = time.monotonic()
        evidence = scan_pool.scan(MessageSource.of(raw), SENDER, BUDGET)  # ScanFailed would escape: the test fails
        slowest = max(slowest, time.monotonic() - started)
        assert "scan-deadline" not in {f.name for f in evidence.findings}, name
        assert "detector-error" not in {f.name for f in evidence.findings}, (name, evidence.findings)
        verdicts[decide(evidence, settings.policy.inbound, "MW-FUZZ").action.value] += 1
    assert sum(verdicts.values()) == MUTANTS and slowest < BUDGET
    assert verdicts["reject"] > 0 and verdicts["accept"] + verdicts["tag"] > 0  # the mutants still say things
    assert worker_rss_mib(scan_pool) < rss_before + 256
    asked = {name for name, _ in dns.queries}
    assert "7.2.0.192.bl.test." in asked and "_dmarc.example.org." in asked  # reputation ran too
