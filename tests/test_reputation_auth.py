"""SPF, DKIM and DMARC against a real DNS server on loopback; keys are generated per run."""

from __future__ import annotations

import time

import pytest

from dns_server import DnsServer, soa
from mailward.actor import Actor
from mailward.config import DirectionPolicy, load_settings
from mailward.evidence import Category, Severity
from mailward.incidents import open_incidents
from mailward.policy import Listed, decide
from mailward.reputation import HEADER, claims_our_id
from mailward.reputation.dmarc_check import Disposition, DmarcRecord
from mailward.runtime import InProcessScanner
from mailward.screening import Screener
from mailward.source import MessageSource
from mailward.verdict import Action
from support.mail import GTUBE
from support.mail import signable_mail as message
from support.reputation import DkimKey, detector_for, envelope, no_system_resolver, parse, txt  # noqa: F401

GOOD_IP, OTHER_IP, PROVIDER_IP = "192.0.2.10", "198.51.100.50", "203.0.113.9"
PTR_IPS = {"valid": "198.51.100.60", "unanswered name": "198.51.100.61", "unanswered PTR": "198.51.100.62"}


@pytest.fixture(scope="module")
def keys():
    return {"sender": DkimKey.generate(), "provider": DkimKey.generate(), "weak": DkimKey.generate(1024)}


@pytest.fixture(scope="module")
def server(keys):
    spf = txt(f"v=spf1 ip4:{GOOD_IP} -all")
    zones = {
        "sender.test.": soa("sender.test.")
        + f"""
@ IN TXT {spf}
_dmarc IN TXT "v=DMARC1; p=reject; rua=mailto:d@sender.test"
mx IN A {GOOD_IP}
mx IN TXT "v=spf1 a -all"
soft IN TXT "v=spf1 ip4:{GOOD_IP} ~all"
inc IN TXT "v=spf1 include:spf.provider.test -all"
sel._domainkey IN TXT {keys["sender"].record()}
weak._domainkey IN TXT {keys["weak"].record()}
broken._domainkey IN TXT "v=DKIM1; k=rsa; p=bm90IGEga2V5"
sha1only._domainkey IN TXT {txt(f"v=DKIM1; k=rsa; h=sha1; p={keys['sender'].public_b64}")}
""",
        "provider.test.": soa("provider.test.")
        + f"""
@ IN TXT "v=spf1 ip4:203.0.113.0/24 -all"
spf IN TXT "v=spf1 ip4:203.0.113.0/24 -all"
sel._domainkey IN TXT {keys["provider"].record()}
""",
        "quar.test.": soa("quar.test.") + '@ IN TXT "v=spf1 -all"\n_dmarc IN TXT "v=DMARC1; p=quarantine"\n',
        "none.test.": soa("none.test.") + '@ IN TXT "v=spf1 -all"\n_dmarc IN TXT "v=DMARC1; p=none"\n',
        "strict.test.": soa("strict.test.")
        + f"""
@ IN TXT {spf}
_dmarc IN TXT "v=DMARC1; p=reject; adkim=s; aspf=s"
sel._domainkey IN TXT {keys["sender"].record()}
""",
        "org.test.": soa("org.test.") + f'@ IN TXT {spf}\n_dmarc IN TXT "v=DMARC1; p=reject; sp=quarantine"\n',
        "pct.test.": soa("pct.test.") + '@ IN TXT "v=spf1 -all"\n_dmarc IN TXT "v=DMARC1; p=reject; pct=20"\n',
        "nopolicy.test.": soa("nopolicy.test.") + '@ IN TXT "v=spf1 -all"\n',
        # The reverse zone of the clients in PTR_IPS, which a spoofer owns: one name validates, one
        # has an address lookup that never answers, one address has a PTR lookup that never answers.
        "ptr.test.": soa("ptr.test.")
        + f"""
@ IN TXT "v=spf1 ip4:{GOOD_IP} ptr -all"
_dmarc IN TXT "v=DMARC1; p=reject"
macro IN TXT "v=spf1 exists:%{{p}}.ok.ptr.test -all"
host IN A {PTR_IPS["valid"]}
""",
        "100.51.198.in-addr.arpa.": soa("100.51.198.in-addr.arpa.")
        + f"""
{PTR_IPS["valid"].rpartition(".")[2]} IN PTR host.ptr.test.
{PTR_IPS["unanswered name"].rpartition(".")[2]} IN PTR host.slow.test.
""",
    }
    silent = [
        "slow.test",
        "slowkey._domainkey.sender.test",
        f"{PTR_IPS['unanswered PTR'].rpartition('.')[2]}.100.51.198.in-addr.arpa",
    ]
    with DnsServer(zones, silent=silent) as srv:
        yield srv


@pytest.fixture
def detector(server):
    return detector_for(server.port, authserv_id="mx.dest.test", budget=1.5, query_timeout=0.5)


def _names(evidence) -> dict[str, Severity]:
    return {f.name: f.severity for f in evidence.findings}


def _results(evidence) -> str:
    ((name, value),) = evidence.headers
    assert name == HEADER == "Authentication-Results"
    assert value.startswith("mx.dest.test; ")
    return value


def _check(detector, raw: bytes, **env):
    return detector.inspect(parse(raw), envelope(**env))


# --- SPF ---------------------------------------------------------------------------


def test_spf_pass_for_sender_and_helo(detector):
    evidence = _check(detector, message(), client=GOOD_IP)
    value = _results(evidence)
    assert "spf=pass smtp.mailfrom=alice@sender.test" in value and "spf=pass smtp.helo=mx.sender.test" in value
    assert "dmarc=pass header.from=sender.test" in value
    assert evidence.findings == ()
    assert evidence.authenticated == ("sender.test",)  # what a sender allow entry may be honoured for


def test_a_failing_sender_is_not_authenticated(detector):
    assert _check(detector, message(), client=OTHER_IP).authenticated == ()


def test_spf_fail_from_an_unauthorised_client(detector):
    evidence = _check(detector, message(), client=OTHER_IP)
    names = _names(evidence)
    assert names["spf-fail"] is Severity.LOW and names["spf-helo-fail"] is Severity.LOW
    assert "spf=fail smtp.mailfrom=alice@sender.test" in _results(evidence)


def test_spf_softfail_is_information_only(detector):
    evidence = _check(
        detector, message(from_="a@soft.sender.test"), client=OTHER_IP, mail_from="a@soft.sender.test", helo=""
    )
    assert _names(evidence)["spf-softfail"] is Severity.INFO
    assert "spf=softfail" in _results(evidence)


def test_spf_include_and_bounce_sender_uses_helo(detector):
    assert "spf=pass smtp.mailfrom=a@inc.sender.test" in _results(
        _check(detector, message(), client=PROVIDER_IP, mail_from="a@inc.sender.test", helo="")
    )
    bounce = _check(detector, message(), client=GOOD_IP, mail_from="")
    assert "spf=pass smtp.mailfrom=postmaster@mx.sender.test" in _results(bounce)


def test_a_validated_ptr_name_passes(detector):
    evidence = _check(detector, message(from_="ceo@ptr.test"), client=PTR_IPS["valid"], mail_from="ceo@ptr.test")
    assert "spf=pass smtp.mailfrom=ceo@ptr.test" in _results(evidence)


@pytest.mark.parametrize("client", [PTR_IPS["unanswered name"], PTR_IPS["unanswered PTR"]])
def test_a_spoofer_cannot_dodge_dmarc_with_its_own_reverse_dns(detector, client):
    # RFC 7208 5.5: an unanswered PTR lookup means no match, an unanswered name is skipped.
    evidence = _check(detector, message(from_="ceo@ptr.test"), client=client, mail_from="ceo@ptr.test", helo="")
    assert "spf=fail smtp.mailfrom=ceo@ptr.test" in _results(evidence)
    assert "dmarc=fail header.from=ptr.test policy.dmarc=reject" in _results(evidence)
    assert _names(evidence)["dmarc-reject"] is Severity.HIGH


def test_an_unvalidated_ptr_macro_expands_to_unknown(detector, server):
    sender = "ceo@macro.ptr.test"
    evidence = _check(detector, message(), client=PTR_IPS["unanswered PTR"], mail_from=sender, helo="")
    assert "spf=fail smtp.mailfrom=ceo@macro.ptr.test" in _results(evidence)  # RFC 7208 7.3
    assert server.count("unknown.ok.ptr.test", "A") == 1


# --- DKIM --------------------------------------------------------------------------


def test_valid_signature_passes_and_carries_dmarc_through_forwarding(detector, keys):
    signed = keys["sender"].sign(message(), "sender.test")
    evidence = _check(detector, signed, client=OTHER_IP)  # forwarded: SPF fails
    value = _results(evidence)
    assert "dkim=pass header.d=sender.test header.s=sel" in value and "dmarc=pass" in value
    assert set(_names(evidence)) == {"spf-fail", "spf-helo-fail"}


def test_crlf_message_as_the_milter_rebuilds_it(detector, keys):
    signed = keys["sender"].sign(message().replace(b"\n", b"\r\n"), "sender.test").replace(b"\n", b"\r\n")
    signed = signed.replace(b"\r\r\n", b"\r\n")
    evidence = _check(detector, signed, client=OTHER_IP)
    value = _results(evidence)
    assert "dkim=pass header.d=sender.test" in value and "dmarc=pass header.from=sender.test" in value


def test_changed_body_breaks_the_signature(detector, keys):
    signed = keys["sender"].sign(message(), "sender.test").replace(b"see you", b"wire money")
    evidence = _check(detector, signed, client=OTHER_IP)
    (dkim_fail,) = [f for f in evidence.findings if f.name == "dkim-fail"]
    assert dkim_fail.severity is Severity.LOW and "body hash mismatch" in dkim_fail.detail
    assert "dkim=fail" in _results(evidence)
    assert _names(evidence)["dmarc-reject"] is Severity.HIGH


def test_changed_signed_header_breaks_the_signature(detector, keys):
    signed = keys["sender"].sign(message(), "sender.test").replace(b"Subject: lunch", b"Subject: invoice")
    evidence = _check(detector, signed, client=GOOD_IP)
    assert "signature did not verify" in [f for f in evidence.findings if f.name == "dkim-fail"][0].detail
    assert "dmarc=pass" in _results(evidence)  # SPF still aligns


@pytest.mark.parametrize(
    "selector, min_bits, reason",
    [("missing", 1024, "no key"), ("broken", 1024, "unusable key"), ("weak", 2048, "too small")],
)
def test_unusable_keys_are_permerrors(server, keys, selector, min_bits, reason):
    det = detector_for(server.port, min_key_bits=min_bits, authserv_id="mx.dest.test")
    signed = keys["weak" if selector == "weak" else "sender"].sign(message(), "sender.test", selector)
    evidence = det.inspect(parse(signed), envelope(client=GOOD_IP))
    assert "dkim=permerror reason=" in _results(evidence)
    assert reason in [f for f in evidence.findings if f.name == "dkim-fail"][0].detail


def test_one_valid_signature_outweighs_a_broken_one(detector, keys):
    raw = keys["provider"].sign(message(), "provider.test")
    raw = keys["sender"].sign(raw, "sender.test", "missing") + b""
    evidence = _check(detector, raw, client=GOOD_IP)
    value = _results(evidence)
    assert "dkim=pass header.d=provider.test" in value and "dkim=permerror" in value
    assert "dkim-fail" not in _names(evidence)


@pytest.mark.parametrize(
    "selector, algorithm, reason",
    [
        ("sel", b"rsa-sha1", "rsa-sha1 is not acceptable"),
        ("sha1only", b"rsa-sha256", "the key does not allow rsa-sha256"),
    ],
)
def test_signatures_with_a_refused_hash_never_pass(detector, keys, selector, algorithm, reason):
    # RFC 8301 3.1: no rsa-sha1; RFC 6376 6.1.2: nothing the key's h= tag leaves out.
    signed = keys["sender"].sign(message(), "sender.test", selector, signature_algorithm=algorithm)
    evidence = _check(detector, signed, client=OTHER_IP)
    assert f'dkim=permerror reason="{reason}' in _results(evidence)
    assert _names(evidence)["dmarc-reject"] is Severity.HIGH and evidence.authenticated == ()


def test_a_body_longer_than_l_does_not_pass(detector, keys):
    signed = keys["sender"].sign(message(), "sender.test", length=True)
    assert "dkim=pass" in _results(_check(detector, signed, client=OTHER_IP))
    evidence = _check(detector, signed + b"\nUnsigned: pay to IBAN XX00 0000 today.\n", client=OTHER_IP)
    value = _results(evidence)
    assert 'dkim=policy reason="l= leaves 42 bytes of the body unsigned" header.d=sender.test' in value
    assert "dmarc=fail header.from=sender.test policy.dmarc=reject" in value
    assert "dkim-fail" in _names(evidence) and evidence.authenticated == ()


def _forged_signature(domain: str, names: int, body: bytes = b"Wire the money today.\n") -> bytes:
    """A signature claiming ``domain`` with ``names`` absent fields in h= (its b= does not matter)."""
    h = "from" + "".join(f":x-absent-{i}" for i in range(names))
    return f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={domain}; s=sel; h={h}; bh=AAAA; b=AAAA\n".encode()


@pytest.mark.parametrize("names, fields", [(257, 10), (200, 6000)])
def test_a_signature_too_costly_to_verify_is_refused_at_once(detector, names, fields):
    filler = "".join(f"X-Trace-{i}: {i}\n" for i in range(fields)).encode()
    forged = _forged_signature("sender.test", names) + filler + message()
    started = time.monotonic()
    evidence = _check(detector, forged, client=OTHER_IP, mail_from="x@provider.test")
    assert time.monotonic() - started < 1.0  # the budget is 1.5s
    assert "dkim=permerror" in _results(evidence) and "dmarc=fail header.from=sender.test" in _results(evidence)
    assert _names(evidence)["dmarc-reject"] is Severity.HIGH


def test_a_verification_the_budget_cuts_short_does_not_save_a_spoofer(server, monkeypatch):
    # The key comes at once; canonicalizing the sender's 16 MB of body outlasts the budget and the
    # time its size earns (made tiny here, so the machine's speed does not decide).
    monkeypatch.setattr("mailward.reputation.detector.DKIM_BYTES_PER_SECOND", 1 << 40)
    det = detector_for(server.port, authserv_id="mx.dest.test", budget=0.4, query_timeout=0.3)
    forged = _forged_signature("sender.test", 5) + message() + b"word  \t word  \n" * 1_000_000
    evidence = det.inspect(parse(forged), envelope(client=OTHER_IP, mail_from="x@provider.test", helo=""))
    value = _results(evidence)
    assert 'dkim=permerror reason="verification cost more than the budget" header.d=sender.test' in value
    assert "dmarc=fail header.from=sender.test policy.dmarc=reject" in value


def test_a_big_honest_message_gets_time_to_verify_by_its_size(server, keys):
    """Hashing 24 MB of body for its signature outlasts a 0.3 s budget (8-36 MB/s): cut short, the
    signature was permerror, and mail whose DMARC rests on DKIM alone got dmarc-reject."""
    det = detector_for(server.port, authserv_id="mx.dest.test", budget=0.3, query_timeout=0.25)
    sender = envelope(client=OTHER_IP, mail_from="x@provider.test", helo="")
    small = det.inspect(parse(keys["sender"].sign(message(), "sender.test")), sender)
    assert "dkim=pass" in _results(small)  # the answers are cached now: only the hashing takes time
    body = "The quarterly figures are attached, see the notes below.\n" * 420_000
    signed = keys["sender"].sign(message(body=body), "sender.test")
    evidence = det.inspect(parse(signed), sender)
    value = _results(evidence)
    assert "dkim=pass header.d=sender.test" in value and "dmarc=pass" in value
    assert "dmarc-reject" not in _names(evidence)


def test_unsigned_mail_says_dkim_none(detector):
    assert "dkim=none" in _results(_check(detector, message(), client=GOOD_IP))


# --- DMARC -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "domain, name, severity",
    [
        ("sender.test", "dmarc-reject", Severity.HIGH),
        ("quar.test", "dmarc-quarantine", Severity.MEDIUM),
        ("none.test", "dmarc-none", Severity.INFO),
        ("sub.org.test", "dmarc-quarantine", Severity.MEDIUM),  # org domain's sp= for a subdomain
        ("pct.test", "dmarc-quarantine", Severity.MEDIUM),  # p=reject at pct=20: the next weaker
    ],
)
def test_failing_dmarc_reports_the_domain_policy(detector, domain, name, severity):
    evidence = _check(detector, message(from_=f"ceo@{domain}"), client=OTHER_IP, mail_from=f"ceo@{domain}")
    (finding,) = [f for f in evidence.findings if f.name.startswith("dmarc-")]
    assert (finding.name, finding.severity, finding.category) == (name, severity, Category.AUTHENTICATION)
    assert domain in finding.detail
    assert f"dmarc=fail header.from={domain}" in _results(evidence)


def test_relaxed_alignment_accepts_the_organizational_domain(detector):
    evidence = _check(detector, message(from_="news@news.sender.test"), client=GOOD_IP)
    assert "dmarc=pass header.from=news.sender.test" in _results(evidence)


def test_strict_alignment_needs_the_exact_domain(detector, keys):
    signed = keys["sender"].sign(message(from_="a@mail.strict.test"), "strict.test")
    evidence = _check(detector, signed, client=GOOD_IP, mail_from="a@strict.test")
    value = _results(evidence)
    assert "spf=pass" in value and "dkim=pass header.d=strict.test" in value
    assert "dmarc=fail header.from=mail.strict.test" in value
    assert "dmarc-reject" in _names(evidence)


def test_spf_pass_for_another_domain_does_not_align(detector, keys):
    spoof = message(from_="ceo@sender.test")
    evidence = _check(detector, spoof, client=PROVIDER_IP, mail_from="bounce@provider.test", helo="")
    assert "spf=pass smtp.mailfrom=bounce@provider.test" in _results(evidence)
    assert "dmarc-reject" in _names(evidence)
    assert evidence.authenticated == ("provider.test",)  # the envelope sender's domain, not the From: one
    signed_by_provider = keys["provider"].sign(spoof, "provider.test")
    assert "dmarc-reject" in _names(
        _check(detector, signed_by_provider, client=PROVIDER_IP, mail_from="bounce@provider.test", helo="")
    )


def test_no_policy_and_no_from_mean_no_dmarc_finding(detector):
    evidence = _check(detector, message(from_="x@nopolicy.test"), client=OTHER_IP, mail_from="x@nopolicy.test")
    assert "dmarc=none header.from=nopolicy.test" in _results(evidence)
    assert not [n for n in _names(evidence) if n.startswith("dmarc")]
    assert "dmarc" not in _results(_check(detector, message(from_="undisclosed-recipients:;"), client=GOOD_IP))


@pytest.mark.parametrize(
    "head",
    [
        b"From : CEO <ceo@sender.test>\n",  # RFC 5322 4.5.1 obs-from: blanks before the colon
        b"X-Mailer : x\nFrom: CEO\n <ceo@sender.test>\n",  # which the stdlib takes for the end of the header block
        b"From: =?utf-8?b?Q0VPIDxjZW9Ac2VuZGVyLnRlc3Q+?=\n",  # "CEO <ceo@sender.test>" as a mail client shows it
    ],
)
def test_an_author_in_obsolete_syntax_or_encoded_words_is_still_checked(detector, head):
    raw = head + message().split(b"\n", 1)[1]
    evidence = _check(detector, raw, client=OTHER_IP, mail_from="x@provider.test", helo="")
    assert "dmarc=fail header.from=sender.test policy.dmarc=reject" in _results(evidence)
    assert _names(evidence)["dmarc-reject"] is Severity.HIGH


def test_encoded_words_do_not_add_to_an_author_address(detector):
    raw = b"From: =?utf-8?q?ceo=40quar.test?= <ceo@sender.test>\n" + message().split(b"\n", 1)[1]
    assert "header.from=quar.test" not in _results(_check(detector, raw, client=GOOD_IP))


def test_every_author_domain_is_evaluated(detector):
    evidence = _check(detector, message(from_="a@sender.test, b@quar.test"), client=GOOD_IP)
    assert "dmarc=pass header.from=sender.test" in _results(evidence)
    assert "dmarc-quarantine" in _names(evidence)


def test_a_crowd_of_authors_costs_a_bounded_number_of_lookups(detector, server):
    authors = ", ".join(f"a@crowd{i}.test" for i in range(200))
    _check(detector, message(from_=authors), client=GOOD_IP)
    assert sum(1 for name, _ in server.queries if name.startswith("_dmarc.crowd")) == 5


@pytest.mark.parametrize("separate_fields", [False, True])
def test_a_spoofed_author_past_the_lookup_limit_weighs_as_a_reject(detector, separate_fields):
    crowd = [f"x@a{i}.provider.test" for i in range(5)] + ["CEO <ceo@sender.test>"]
    head = "".join(f"From: {a}\n" for a in crowd) if separate_fields else f"From: {', '.join(crowd)}\n"
    raw = head.encode() + message().split(b"\n", 1)[1]
    evidence = _check(detector, raw, client=PROVIDER_IP, mail_from="x@provider.test", helo="")
    assert "header.from=sender.test" not in _results(evidence)  # five lookups at most, as above
    (finding,) = [f for f in evidence.findings if f.name == "dmarc-too-many-authors"]
    assert finding.severity is Severity.HIGH and finding.category is Category.AUTHENTICATION
    assert "unchecked: sender.test" in finding.detail


def test_unanswered_policy_lookup_is_temperror_not_failure(server):
    det = detector_for(server.port, authserv_id="mx.dest.test", budget=0.5, query_timeout=0.3)
    evidence = det.inspect(parse(message(from_="ceo@x.slow.test")), envelope(client=OTHER_IP))
    assert "dmarc=temperror header.from=x.slow.test" in _results(evidence)
    assert not [n for n in _names(evidence) if n.startswith("dmarc")]
    (unavailable,) = [f for f in evidence.findings if f.name == "dns-unavailable"]
    assert "dmarc x.slow.test" in unavailable.detail


def test_an_aligned_identifier_lost_to_dns_makes_dmarc_temperror(detector, keys):
    signed = keys["sender"].sign(message(), "sender.test", "slowkey")
    evidence = _check(detector, signed, client=OTHER_IP)
    assert "dkim=temperror" in _results(evidence) and "dmarc=temperror header.from=sender.test" in _results(evidence)
    assert not [n for n in _names(evidence) if n.startswith("dmarc")]


def test_a_spoofer_cannot_dodge_dmarc_by_making_its_own_lookups_time_out(detector, keys):
    spoof = keys["provider"].sign(message(from_="ceo@sender.test"), "evil.slow.test")
    evidence = _check(detector, spoof, client=OTHER_IP, mail_from="x@evil.slow.test", helo="mx.evil.slow.test")
    value = _results(evidence)
    assert "spf=temperror" in value and "dkim=temperror" in value
    assert "dmarc=fail header.from=sender.test" in value
    assert _names(evidence)["dmarc-reject"] is Severity.HIGH


def test_dmarc_record_parsing():
    assert DmarcRecord.parse("v=DMARC1; p=reject; sp=none; adkim=s; pct=50") == DmarcRecord(
        Disposition.REJECT, Disposition.NONE, strict_dkim=True, percent=50
    )
    assert DmarcRecord.parse("v=DMARC1; p=bogus; rua=mailto:a@b.test").policy is Disposition.NONE
    assert DmarcRecord.parse("v=DMARC1; p=bogus") is None
    assert DmarcRecord.parse("v=dmarc1; p=reject") is None
    assert DmarcRecord.parse("v=spf1 -all") is None


# --- policy and header -----------------------------------------------------------------


def test_dmarc_failure_is_scored_per_config(detector):
    spoof = _check(detector, message(), client=OTHER_IP)
    assert decide(spoof, DirectionPolicy(), "MW-1").action is Action.TAG
    enforcing = DirectionPolicy().with_actions({Category.AUTHENTICATION: Action.REJECT})
    assert decide(spoof, enforcing, "MW-1").action is Action.REJECT
    monitored = _check(detector, message(from_="x@none.test"), client=OTHER_IP, mail_from="x@none.test")
    assert decide(monitored, enforcing, "MW-1").action is Action.TAG  # only the LOW spf-fail tags


def test_results_header_never_carries_unsafe_values(detector):
    evidence = _check(detector, message(), client=OTHER_IP, mail_from='odd user;x="y"@sender.test')
    value = _results(evidence)
    assert "smtp.mailfrom=sender.test" in value and "odd user" not in value
    assert "\n" not in value and "\r" not in value


def test_claims_our_id_spots_forged_results():
    assert claims_our_id("mx.dest.test; spf=pass smtp.mailfrom=a@b.test", "MX.dest.test")
    assert claims_our_id("(comment) mx.dest.test 1; dkim=pass", "mx.dest.test")
    for hidden in ("(a (nested) comment)", "(x \\) y)", "\r\n\t(folded)"):  # RFC 5322 3.2.2 comments
        assert claims_our_id(f"{hidden} mx.dest.test; dmarc=pass", "mx.dest.test")
    assert claims_our_id('"mx.dest.test"; dmarc=pass', "mx.dest.test")
    assert claims_our_id("mx.dest.test.(c); dmarc=pass", "mx.dest.test")
    assert not claims_our_id("(mx.dest.test) mx.other.test; dmarc=pass", "mx.dest.test")
    assert not claims_our_id("(unclosed mx.dest.test; dmarc=pass", "mx.dest.test")
    assert not claims_our_id("mx.other.test; spf=pass", "mx.dest.test")


@pytest.mark.parametrize(
    "raw, env",
    [
        (b"DKIM-Signature: v=1; a=rsa-sha256; d=; s=\n" + message(), {}),
        (b"DKIM-Signature: \xff\xfe garbage ;;;= =\nDKIM-Signature: v=1; b=%%%; bh=***\n" + message(), {}),
        (
            message(
                from_="=?utf-8?b?Y2VvQHNlbmRlci50ZXN0?= <\xe2\x80\x8bceo@b\xc3\xbccher.test>".encode().decode("latin-1")
            ),
            {"mail_from": "a@@b..test", "helo": "[192.0.2.1]"},
        ),
        (b"From: " + b"x" * 5000 + b"@" + b"y." * 200 + b"test\n\n" + b"http://" + b"a" * 3000 + b".test/\n", {}),
        (b"\x00\x01binary\n\n\xff", {"mail_from": "<>", "helo": "-bad-.test", "client_name": "\xff.test"}),
    ],
)
def test_hostile_input_becomes_evidence_never_a_crash(detector, raw, env):
    evidence = detector.inspect(parse(raw), envelope(client=OTHER_IP, **env))
    assert not evidence.of(Category.ERROR)
    assert "\n" not in _results(evidence)


def test_an_allow_entry_is_honoured_only_for_an_authenticated_sender(server, tmp_path):
    """Through the screener: GTUBE from an allowed domain is delivered when SPF/DMARC pass, not when forged."""
    settings = load_settings(
        overrides={
            "state_dir": str(tmp_path),
            "reputation": {"nameservers": ["127.0.0.1"], "port": server.port, "budget": 2.0, "query_timeout": 1.0},
        }
    )
    incidents = open_incidents(settings)
    try:
        incidents.list_sender(Listed.ALLOW, "sender.test", "dest.test", "our partner", Actor("ann", "host"))
        scanner = InProcessScanner.from_settings(settings)
        screener = Screener(settings, scanner, None, lists=incidents)
        spam = MessageSource.of(message(body=f"Cheap watches!\n\n{GTUBE}\n"))
        genuine = screener.screen(spam, envelope(client=GOOD_IP))
        assert genuine.verdict.action is Action.ACCEPT and genuine.verdict.reasons == ("allowed",)
        forged = screener.screen(spam, envelope(client=OTHER_IP))  # SPF fails, DMARC p=reject
        assert forged.verdict.action is Action.QUARANTINE and "allowed" not in forged.verdict.reasons
        assert forged.verdict.acted_on == (Category.SPAM, Category.AUTHENTICATION)
        scanner.close()
    finally:
        incidents.close()
