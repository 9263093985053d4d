"""The Prometheus endpoint: served on loopback, fed by outcomes, live values read at scrape time."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client import generate_latest

from mailward.actor import Actor
from mailward.config import load_settings
from mailward.envelope import Direction, Envelope
from mailward.evidence import Category, Evidence, Finding, Severity, SpamAssessment
from mailward.metrics import Metrics
from mailward.quarantine import open_store
from mailward.signatures import load_rules, rules_version
from mailward.source import MessageSource
from mailward.verdict import Action, Outcome, Verdict
from support.mail import plain_mail as message
from support.quarantine import spam_case


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outcome(version: str, findings=(), error: str = "") -> Outcome:
    evidence = Evidence(
        findings=tuple(findings), spam=SpamAssessment(0.99, (), version), timings=(("parse", 0.002), ("yara", 0.004))
    )
    return Outcome(
        Envelope(direction=Direction.OUTBOUND),
        Verdict(Action.QUARANTINE, ("spam",), "MW-1", 0.99, acted_on=(Category.SPAM,)),
        evidence,
        100,
        seconds=0.01,
        error=error,
    )


def test_endpoint_serves_message_stage_error_and_live_figures(tmp_path):
    settings = load_settings(None, {"state_dir": str(tmp_path / "state")})
    store = open_store(settings)
    verdict, evidence = spam_case()
    store.put(MessageSource.of(message()), Envelope(), verdict, evidence)
    metrics = Metrics()
    metrics.watch("quarantine", store.stats)
    metrics.watch("blocks", lambda: {"account": 2, "address": 1})
    metrics.set_rules_version(rules_version(settings))
    metrics.observe(
        _outcome(
            "nb-1",
            [
                Finding(Category.ERROR, "dns-failed", Severity.HIGH, "dns"),
                Finding(Category.UNCHECKED, "yara-timeout", Severity.HIGH, "yara"),
                Finding(Category.UNCHECKED, "detector-error", Severity.HIGH, "spam-model"),
                Finding(Category.UNCHECKED, "parse-error", Severity.INFO, "parser"),
            ],
        )
    )
    metrics.observe(_outcome("nb-2", error="worker died"))
    port = _port()
    server = metrics.serve(f"127.0.0.1:{port}")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
        store.close()
    assert 'mailward_messages_total{direction="outbound",reason="spam",verdict="quarantine"} 2.0' in text
    assert 'mailward_stage_seconds_count{stage="yara"} 2.0' in text
    assert 'mailward_message_seconds_bucket{direction="outbound",le="0.01"} 2.0' in text
    assert 'mailward_detector_errors_total{detector="dns"} 1.0' in text
    assert 'mailward_detector_errors_total{detector="spam-model"} 1.0' in text
    assert 'detector="parser"' not in text  # malformed input is not a failing detector
    assert 'mailward_detector_timeouts_total{detector="yara"} 1.0' in text
    assert 'mailward_scan_failures_total{direction="outbound"} 1.0' in text
    assert 'mailward_model_info{version="nb-2"} 1.0' in text and 'version="nb-1"' not in text  # only the live one
    assert f'mailward_rules_info{{version="{rules_version(settings)}"}} 1.0' in text
    assert "mailward_quarantine_messages 1.0" in text
    assert f"mailward_quarantine_bytes {float(len(message()))}" in text
    assert 'mailward_blocks_active{kind="account"} 2.0' in text


def test_quarantine_gauges_come_from_the_store(store_factory):
    """Both backends answer the scrape through the store, held messages only."""
    store = store_factory()
    deleted = store.put(MessageSource.of(message()), Envelope(), *spam_case())
    store.put(MessageSource.of(message(subject="second")), Envelope(), *spam_case())
    store.delete(deleted, Actor.service())
    metrics = Metrics()
    metrics.watch("quarantine", store.stats)
    port = _port()
    server = metrics.serve(f"127.0.0.1:{port}")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
    assert "mailward_quarantine_messages 1.0" in text
    assert f"mailward_quarantine_bytes {float(len(message(subject='second')))}" in text


def test_rules_version_names_the_bundle_and_changes_with_the_rules(tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.yar").write_text("rule a { condition: false }\n")
    settings = load_settings(None, {"state_dir": str(tmp_path / "state"), "signatures": {"rules_dirs": [str(rules)]}})
    before = rules_version(settings)
    assert rules_version(settings) == before  # an unchanged tree: the same version
    assert load_rules(settings).fingerprint.startswith(before)  # the name of the compiled bundle
    (rules / "a.yar").write_text("rule a { condition: true }\n")
    after = rules_version(settings)
    assert after != before
    metrics = Metrics()
    metrics.set_rules_version(before)
    metrics.set_rules_version(after)
    text = generate_latest(metrics.registry).decode()
    assert f'mailward_rules_info{{version="{after}"}} 1.0' in text and before not in text


def test_a_bad_listen_address_names_the_key():
    try:
        Metrics().serve("9464", "/etc/mailward.toml")
    except Exception as exc:
        assert "metrics.listen" in str(exc) and "/etc/mailward.toml" in str(exc)
    else:
        raise AssertionError("accepted a listen address without a host")
