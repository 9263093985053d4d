"""Virus notices: admin and (outbound) the sending account, never the sender of inbound mail."""

from __future__ import annotations

import email
from dataclasses import replace

from mailward.config import load_settings
from mailward.envelope import Direction, Envelope
from mailward.evidence import Category, Evidence, Finding, MessageFacts, Severity
from mailward.incidents import open_incidents
from mailward.verdict import Action, Outcome, Verdict
from support.incidents import wait_for
from support.quarantine import SmtpSink

MALWARE = Evidence(
    findings=(Finding(Category.MALWARE, "clamav:Win.Trojan.X-123", Severity.HIGH, "clamav", "invoice.zip > a.exe"),),
    message=MessageFacts("Invoice 2291", "<x@y>"),
)


def outcome(
    direction: Direction,
    action: Action = Action.REJECT,
    incident: str = "MW-6B000000-0000ABCD",
    evidence: Evidence = MALWARE,
) -> Outcome:
    env = Envelope(
        mail_from="someone@example.org",
        recipients=("a@example.com", "b@example.com"),
        client_address="192.0.2.9",
        auth_user="alice@example.com" if direction is Direction.OUTBOUND else "",
        queue_id="4QX",
        direction=direction,
    )
    acted_on = (Category.MALWARE,) if evidence.of(Category.MALWARE) else ()  # as policy.decide says
    return Outcome(env, Verdict(action, ("malware",), incident, acted_on=acted_on), evidence, 100)


def runtime(tmp_path, sink: SmtpSink, inbound: bool = True, outbound: bool = True):
    cfg = tmp_path / "m.toml"
    cfg.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        f"[policy.inbound]\nnotify_virus = {str(inbound).lower()}\n"
        f"[policy.outbound]\nnotify_virus = {str(outbound).lower()}\n"
        f'[alerts]\nnotice_to = ["postmaster@example.com"]\n'
        f'smtp_host = "127.0.0.1"\nsmtp_port = {sink.port}\n'
        f'email_from = "mailward@mx.example.com"\n'
    )
    return open_incidents(load_settings(cfg))


def test_outbound_notice_goes_to_the_admin_and_the_sending_account(tmp_path):
    with SmtpSink() as sink:
        incidents = runtime(tmp_path, sink)
        try:
            incidents.observe(outcome(Direction.OUTBOUND))
            assert wait_for(lambda: sink.received)
        finally:
            incidents.close()
        [(mail_from, rcpts, raw)] = sink.received
    assert set(rcpts) == {"postmaster@example.com", "alice@example.com"}
    notice = email.message_from_bytes(raw)
    assert "MW-6B000000-0000ABCD" in notice["Subject"] and notice["X-Mailward-Alert"] == "virus-notice"
    body = notice.get_payload(decode=True).decode()
    assert "sent from your account was refused" in body and "Invoice 2291" in body


def test_inbound_notice_never_goes_to_the_sender(tmp_path):
    with SmtpSink() as sink:
        incidents = runtime(tmp_path, sink)
        try:
            incidents.observe(outcome(Direction.INBOUND, Action.QUARANTINE))
            assert wait_for(lambda: sink.received)
        finally:
            incidents.close()
        [(_, rcpts, raw)] = sink.received
    assert rcpts == ("postmaster@example.com",)
    assert b"someone@example.org" not in b"".join(r.encode() for r in rcpts)


def test_notices_are_off_by_default_per_direction_and_only_for_undelivered_malware(tmp_path):
    with SmtpSink() as sink:
        incidents = runtime(tmp_path, sink, inbound=False, outbound=True)
        try:
            assert incidents.notices.notify(outcome(Direction.INBOUND)) is None
            assert incidents.notices.notify(outcome(Direction.OUTBOUND, Action.TAG)) is None
            incidents.observe(outcome(Direction.OUTBOUND, evidence=Evidence()))  # no malware: no notice
            assert incidents.alerts.drain(5) and incidents.notices.dispatcher.drain(5)
        finally:
            incidents.close()
        assert sink.received == []
    plain = open_incidents(load_settings(None, {"state_dir": str(tmp_path / "d")}))
    assert plain.notices is None
    plain.close()


def test_the_subject_quoted_in_a_notice_stays_on_its_line(tmp_path):
    """An encoded-word Subject may decode to line breaks and ESC (r9): shown as escapes, no forged line."""
    lure = "Invoice\n\nYour mailbox is over quota: log in at https://evil.example/\n\x1b[2J"
    evidence = Evidence(findings=MALWARE.findings, message=MessageFacts(lure, "<x@y>"))
    with SmtpSink() as sink:
        incidents = runtime(tmp_path, sink)
        try:
            incidents.observe(outcome(Direction.INBOUND, Action.QUARANTINE, evidence=evidence))
            assert wait_for(lambda: sink.received)
        finally:
            incidents.close()
        [(_, _, raw)] = sink.received
    body = email.message_from_bytes(raw).get_payload(decode=True).decode()
    assert "subject: Invoice\\x0a\\x0aYour mailbox is over quota: log in at https://evil.example/\\x0a\\x1b[2J" in (
        body.splitlines()
    )
    assert "\x1b" not in body


def test_an_outbound_notice_never_goes_to_the_envelope_sender_the_client_chose(tmp_path):
    """A login without '@' (r9) or no login at all: MAIL FROM is whatever the client wrote, here an
    outside address; only the admin is told, and the notice names the account."""
    chosen = ({"auth_user": "carol", "mail_from": "victim@elsewhere.example"}, {"auth_user": "", "mail_from": "x@y.z"})
    with SmtpSink() as sink:
        incidents = runtime(tmp_path, sink)
        try:
            for n, change in enumerate(chosen):
                base = outcome(Direction.OUTBOUND, incident=f"MW-6B000000-0000000{n}")
                incidents.observe(replace(base, envelope=replace(base.envelope, **change)))
            assert wait_for(lambda: len(sink.received) == 2)
        finally:
            incidents.close()
        received = sink.received
    assert [rcpts for _, rcpts, _ in received] == [("postmaster@example.com",)] * 2
    bodies = [email.message_from_bytes(raw).get_payload(decode=True).decode() for _, _, raw in received]
    assert any("account: carol" in body.splitlines() for body in bodies)
