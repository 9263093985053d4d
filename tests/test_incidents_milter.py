"""Suspensions and blocks through the milter protocol (pymilter's TestCtx with SASL macros), no MTA."""

from __future__ import annotations

import json
import logging
import os
import re
import time

import Milter
import pytest
from prometheus_client import generate_latest

from mailward.actor import Actor
from mailward.cli.main import main as cli
from mailward.incidents import SubjectKind
from mailward.metrics import Metrics
from support.incidents import WebhookReceiver, wait_for
from support.mail import eicar_message, gtube_message, message
from support.milter import MilterClient
from support.quarantine import FakeClock

INTERNALS = re.compile(r"EICAR|yara|Traceback|Error|pymilter|spam burst|suspen|sqlite", re.I)
REPLY = re.compile(r"^Sender not accepted \(incident (MW-[0-9A-F]{8}-[0-9A-F]{12})\)$")


def _events(caplog, action: str) -> list[dict]:
    return [r.event for r in caplog.records if getattr(r, "event", {}).get("event", {}).get("action") == action]


def test_outbound_spam_burst_suspends_the_account_until_lifted(tmp_path, monkeypatch, caplog, milter_runtime):
    caplog.set_level(logging.INFO)
    metrics = Metrics()
    with WebhookReceiver() as hook:
        rt = milter_runtime(
            tmp_path,
            f'[incidents]\nrefresh = 0.0\n[incidents.account]\nspam = 3\n[alerts]\nwebhook_url = "{hook.url}"\n',
            metrics=metrics,
        )
        client = MilterClient(rt, monkeypatch)
        rc, ctx = client.connect(ip="203.0.113.20", auth="alice")
        assert rc == Milter.CONTINUE
        for _ in range(3):  # outbound spam is quarantined, and counted
            assert client.send(ctx, gtube_message()[1]) == Milter.DISCARD
        # The next transaction of the same connection is refused at MAIL FROM, generically.
        assert client.send(ctx, message()[1]) == Milter.REJECT
        code, xcode, text = ctx.reply
        assert (code, xcode) == ("550", "5.7.1")
        incident = REPLY.match(text).group(1)
        assert not INTERNALS.search(text)
        # A new connection, from another address, is refused too; another account is not.
        rc, ctx2 = client.connect(ip="192.0.2.44", auth="alice")
        assert client.send(ctx2, message()[1]) == Milter.REJECT and incident in ctx2.reply[2]
        rc, ctx3 = client.connect(ip="203.0.113.20", auth="bob")
        assert client.send(ctx3, message()[1]) == Milter.ACCEPT

        assert wait_for(lambda: len(hook.received) == 1)
        alert = hook.received[0]
        assert alert["kind"] == "suspension" and alert["incident_id"] == incident
        assert alert["subject"] == "account alice" and "spam" in alert["details"]["reason"]
        assert alert["remedy"].endswith("mailward block remove account alice")
        assert hook.headers[0]["Content-Type"] == "application/json"

    # Logs and metrics show it.
    [suspended] = _events(caplog, "suspension")
    assert suspended["user"]["name"] == "alice" and suspended["mailward"]["incident_id"] == incident
    refused = [e for e in _events(caplog, "reject") if e["mailward"]["reasons"] == ["blocked"]]
    assert len(refused) == 2 and refused[0]["user"]["name"] == "alice"
    assert refused[0]["mailward"]["findings"][0]["category"] == "blocked"
    text = generate_latest(metrics.registry).decode()
    assert 'mailward_blocks_total{kind="account",origin="suspension"} 1.0' in text
    assert 'mailward_messages_total{direction="outbound",reason="blocked",verdict="reject"} 2.0' in text
    assert 'mailward_messages_total{direction="outbound",reason="spam",verdict="quarantine"} 3.0' in text
    assert 'mailward_alerts_total{delivery="queued",kind="suspension"} 1.0' in text
    assert 'mailward_stage_seconds_count{stage="incidents"} 4.0' in text  # counting costs are measured

    # An analyst lifts it with the CLI; the milter sees that at once (refresh = 0).
    assert (
        cli(["--config", str(tmp_path / "m.toml"), "block", "remove", "account", "alice", "--reason", "password reset"])
        == 0
    )
    rc, ctx4 = client.connect(ip="203.0.113.20", auth="alice")
    assert client.send(ctx4, message()[1]) == Milter.ACCEPT
    history = rt.incidents.store.audit(SubjectKind.ACCOUNT, "alice")
    assert [e.action for e in history] == ["remove", "add"] and history[0].detail == "password reset"


def test_outbound_malware_suspends_at_once_and_alerts_twice(tmp_path, monkeypatch, milter_runtime):
    with WebhookReceiver() as hook:
        rt = milter_runtime(tmp_path, f'[alerts]\nwebhook_url = "{hook.url}"\n')
        client = MilterClient(rt, monkeypatch)
        _, ctx = client.connect(ip="203.0.113.21", auth="carol")
        assert client.send(ctx, eicar_message()[1], "carol@example.org") == Milter.REJECT
        incident = re.search(r"incident (MW-\S+)\)", ctx.reply[2]).group(1)
        assert client.send(ctx, message()[1], "carol@example.org") == Milter.REJECT
        assert ctx.reply[2] == f"Sender not accepted (incident {incident})"
        assert wait_for(lambda: len(hook.received) == 2)
    kinds = {a["kind"]: a for a in hook.received}
    assert kinds["malware"]["incident_id"] == kinds["suspension"]["incident_id"] == incident
    assert kinds["malware"]["details"]["direction"] == "outbound"
    assert "EICAR" in kinds["malware"]["details"]["signatures"]  # analysts need the name
    assert kinds["malware"]["severity"] == "critical"
    assert "malware" in kinds["suspension"]["details"]["reason"]


def test_recipient_flood_suspends(tmp_path, monkeypatch, milter_runtime):
    rt = milter_runtime(tmp_path, "[incidents.account]\nrecipients = 5\n")
    client = MilterClient(rt, monkeypatch)
    _, ctx = client.connect(auth="dave")
    rcpts = [f"u{i}@example.test" for i in range(6)]
    assert client.send(ctx, message()[1], "dave@example.org", *rcpts) == Milter.ACCEPT  # judged on content
    assert client.send(ctx, message()[1], "dave@example.org") == Milter.REJECT
    [block] = rt.incidents.store.active_blocks()
    assert "recipient flood: 6 recipients" in block.reason


def test_blocked_address_is_rejected_at_connect(tmp_path, monkeypatch, caplog, milter_runtime):
    caplog.set_level(logging.INFO)
    rt = milter_runtime(tmp_path)
    block, _ = rt.incidents.block(SubjectKind.NETWORK, "198.51.100.0/24", "scanner", Actor("ann", "ws"))
    client = MilterClient(rt, monkeypatch)
    rc, ctx = client.connect(ip="198.51.100.7")
    assert rc == Milter.REJECT  # Postfix answers with its own generic 554 (no reply text at connect)
    [event] = [e for e in _events(caplog, "reject")]
    assert event["source"]["ip"] == "198.51.100.7" and event["mailward"]["incident_id"] == block.incident_id
    rc, _ = client.connect(ip="198.51.101.7")
    assert rc == Milter.CONTINUE


@pytest.mark.parametrize(
    "sender",
    [
        "<ceo-fraud@example.org.>",
        '<"ceo-fraud"@example.org>',
        '<"ceo\\-fraud"@Example.ORG>',
        "<@relay.example,@b.example:ceo-fraud@example.org>",
        "<a@evil.example.>",
        "<a@MX.EVIL.EXAMPLE.>",
        "<a@[evil.example]>",
        "<@relay.example:a@[mx.evil.example.]>",
    ],
)
def test_sender_blocks_hold_for_every_spelling_postfix_accepts(tmp_path, monkeypatch, milter_runtime, sender):
    """r7: a trailing dot, quotes that change nothing, a source route or brackets round a name walked
    past blocks of ceo-fraud@example.org and evil.example."""
    rt = milter_runtime(tmp_path, "[incidents]\nrefresh = 0.0\n")
    rt.incidents.block(SubjectKind.SENDER, "ceo-fraud@example.org", "BEC", Actor("ann", "ws"))
    rt.incidents.block(SubjectKind.DOMAIN, "evil.example", "phishing kit", Actor("ann", "ws"))
    client = MilterClient(rt, monkeypatch)
    _, ctx = client.connect(ip="198.51.100.7")
    assert ctx._envfrom(sender) == Milter.REJECT
    _, ctx = client.connect(ip="198.51.100.7")
    assert ctx._envfrom('<"ceo fraud"@example.org>') == Milter.CONTINUE  # another mailbox: its quotes matter


def test_a_block_whose_policy_is_quarantine_goes_to_the_quarantine(tmp_path, monkeypatch, milter_runtime):
    rt = milter_runtime(tmp_path, '[policy.inbound]\nblocked_action = "quarantine"\n')
    rt.incidents.block(SubjectKind.DOMAIN, "example.org", "phish wave", Actor("ann", "ws"))
    client = MilterClient(rt, monkeypatch)
    _, ctx = client.connect()
    assert client.send(ctx, message()[1], "x@mail.example.org") == Milter.DISCARD  # subdomains too
    assert client.send(ctx, message()[1], "x@example.net") == Milter.ACCEPT
    assert len(list((tmp_path / "state" / "quarantine").rglob("*.eml"))) == 1


def test_inbound_host_abuse_is_suspended_and_exempt_networks_are_not(tmp_path, monkeypatch, milter_runtime):
    rt = milter_runtime(
        tmp_path, '[incidents.inbound_host]\nmalware = 2\n[incidents]\nexempt_networks = ["192.0.2.0/28"]\n'
    )
    client = MilterClient(rt, monkeypatch)
    for ip in ("192.0.2.50", "192.0.2.5"):
        for _ in range(2):
            _, ctx = client.connect(ip=ip)
            assert client.send(ctx, eicar_message()[1]) == Milter.REJECT
    assert client.connect(ip="192.0.2.50")[0] == Milter.REJECT
    assert client.connect(ip="192.0.2.5")[0] == Milter.CONTINUE  # exempt: counted, never blocked
    [block] = rt.incidents.store.active_blocks()
    assert block.value == "192.0.2.50" and "inbound malware sent: 2 malware" in block.reason


def test_a_dead_incident_store_never_stops_the_mail(tmp_path, monkeypatch, caplog, milter_runtime):
    rt = milter_runtime(tmp_path, "[incidents.account]\nmessages = 1\n")
    store = rt.incidents.store
    store.close()
    os.remove(store.path)
    os.mkdir(store.path)  # the database can no longer be opened
    client = MilterClient(rt, monkeypatch)
    _, ctx = client.connect(auth="erin")
    assert client.send(ctx, message()[1]) == Milter.ACCEPT
    assert client.send(ctx, message()[1]) == Milter.ACCEPT
    assert any("cannot update the counters of account erin" in r.getMessage() for r in caplog.records)


def test_quarantine_store_failure_tempfails_and_alerts(tmp_path, monkeypatch, milter_runtime):
    import shutil

    with WebhookReceiver() as hook:
        rt = milter_runtime(
            tmp_path, f'[policy.inbound]\nmalware_action = "quarantine"\n[alerts]\nwebhook_url = "{hook.url}"\n'
        )
        messages = tmp_path / "state" / "quarantine" / "messages"
        shutil.rmtree(messages)
        messages.write_text("not a directory")  # the store can no longer keep anything
        client = MilterClient(rt, monkeypatch)
        _, ctx = client.connect()
        assert client.send(ctx, eicar_message()[1]) == Milter.TEMPFAIL
        incident = re.search(r"incident (MW-\S+)\)", ctx.reply[2]).group(1)
        assert wait_for(lambda: {a["kind"] for a in hook.received} == {"malware", "store-error"})
    [alert] = [a for a in hook.received if a["kind"] == "store-error"]
    assert alert["incident_id"] == incident and alert["severity"] == "critical"
    assert str(tmp_path) not in json.dumps(alert)  # no paths, no exception text


def test_two_milter_hosts_on_postgresql_count_one_account_together(tmp_path, monkeypatch, fresh_pg_dsn, milter_runtime):
    toml = (
        f'[quarantine]\nbackend = "postgresql"\ndsn = "{fresh_pg_dsn}"\n'
        f"[incidents]\nrefresh = 0.0\nflush_interval = 0.05\n[incidents.account]\nspam = 3\n"
    )
    mx1 = milter_runtime(tmp_path / "mx1", toml)
    mx2 = milter_runtime(tmp_path / "mx2", toml)
    one, two = MilterClient(mx1, monkeypatch), MilterClient(mx2, monkeypatch)
    _, ctx = one.connect(auth="frank")
    for _ in range(2):
        assert one.send(ctx, gtube_message()[1]) == Milter.DISCARD
    _, ctx = two.connect(auth="frank")
    assert two.send(ctx, gtube_message()[1]) == Milter.DISCARD  # the third spam, on the other host
    # Each host knows the other's counts from its next flush on (flush_interval): then one suspends.
    assert wait_for(lambda: mx2.incidents.store.active_blocks(), timeout=10)
    assert two.send(ctx, message()[1]) == Milter.REJECT
    one = MilterClient(mx1, monkeypatch)
    _, ctx = one.connect(auth="frank")
    assert one.send(ctx, message()[1]) == Milter.REJECT  # the first host refuses too
    assert not (tmp_path / "mx1" / "state" / "incidents.sqlite3").exists()


def test_an_expired_suspension_does_not_come_straight_back(tmp_path, monkeypatch, milter_runtime):
    """r6: the spam that suspended alice for 10 min is still inside the hour when the suspension ends;
    it must not suspend her again on her next clean messages."""
    clock = FakeClock(float(int(time.time())))
    rt = milter_runtime(
        tmp_path, "[incidents]\nrefresh = 0.0\nsuspend_for = 600\n[incidents.account]\nspam = 3\n", clock=clock
    )
    client = MilterClient(rt, monkeypatch)
    _, ctx = client.connect(ip="203.0.113.20", auth="alice")
    for _ in range(3):
        client.send(ctx, gtube_message()[1])
    assert client.send(ctx, message()[1]) == Milter.REJECT
    clock.now += 601
    for _ in range(3):
        _, ctx = client.connect(ip="203.0.113.20", auth="alice")
        assert client.send(ctx, message()[1]) == Milter.ACCEPT
    assert len(rt.incidents.store.blocks(include_inactive=True)) == 1
    for _ in range(3):  # a new burst after it ended suspends her again
        client.send(ctx, gtube_message()[1])
    assert client.send(ctx, message()[1]) == Milter.REJECT
