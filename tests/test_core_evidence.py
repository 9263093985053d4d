"""Evidence an analyst can pivot on: rejected malware kept as a sample, object hashes, ECS fields."""

from __future__ import annotations

import hashlib
import socket
from dataclasses import replace

import pytest

from clamd_server import EICAR, EICAR_SIGNATURE
from mailward.actor import Actor
from mailward.config import ClamavSettings, ReputationSettings, Settings
from mailward.envelope import Direction, Envelope
from mailward.evidence import Category
from mailward.quarantine import ListFilter, ReleaseClaim, Status, open_store
from mailward.runtime import InProcessScanner
from mailward.screening import Screener, event_of, source_domain
from mailward.source import MessageSource
from mailward.verdict import Action
from support.mail import mime_mail as message
from support.quarantine import FakeClock
from support.unpack import ooxml, vba_project, zipped

PLAIN_MACRO = """Sub FormatTable()
    Selection.Font.Bold = True
End Sub
"""


@pytest.fixture
def screening(tmp_path, clamd):
    settings = replace(
        Settings(),
        state_dir=str(tmp_path),
        clamav=ClamavSettings(socket=clamd.socket),
        reputation=ReputationSettings(enabled=False),
    )
    scanner = InProcessScanner.from_settings(settings)
    clock = FakeClock()
    store = open_store(settings, clock=clock)
    screener = Screener(settings, scanner, store, clock=clock)
    yield screener, store, clock
    store.close()
    scanner.close()


def envelope(client_name: str = "[192.0.2.7]") -> Envelope:
    return Envelope(
        mail_from="sender@example.org",
        recipients=("user@example.com",),
        client_address="192.0.2.7",
        client_name=client_name,
        queue_id="4QX1",
        direction=Direction.INBOUND,
    )


def eicar_mail() -> bytes:
    raw = message(attachments=[("invoice.zip", zipped({"eicar.com": EICAR}))], subject="Your invoice")
    return raw.replace(b"Subject:", b"Message-ID: <abc.123@example.org>\nSubject:", 1)


def test_rejected_malware_is_kept_as_a_sample_that_needs_force(screening):
    screener, store, clock = screening
    raw = eicar_mail()
    outcome = screener.screen(MessageSource.of(raw), envelope())
    assert outcome.verdict.action is Action.REJECT and outcome.quarantine_id
    record = store.get(outcome.quarantine_id)
    assert record.status is Status.REJECTED and store.read(outcome.quarantine_id) == raw
    assert any(f.sha256 == hashlib.sha256(EICAR).hexdigest() for f in record.evidence.of(Category.MALWARE))
    analyst = Actor("analyst", "host")
    assert store.claim_release(outcome.quarantine_id, analyst) is ReleaseClaim.NEEDS_FORCE
    assert store.claim_release(outcome.quarantine_id, analyst, force=True) is ReleaseClaim.CLAIMED


def test_rejected_samples_follow_retention(screening):
    screener, store, clock = screening
    raw = eicar_mail()
    outcome = screener.screen(MessageSource.of(raw), envelope())
    clock.now += 31 * 86400
    assert store.purge(30, Actor("retention", "host")) == [outcome.quarantine_id]
    assert store.get(outcome.quarantine_id) is None


def test_reject_for_other_reasons_keeps_no_sample(screening):
    screener, store, _ = screening
    raw = message(attachments=[("table.docm", ooxml("docm", {"word/vbaProject.bin": vba_project(PLAIN_MACRO)}))])
    policy = replace(
        screener.settings.policy, inbound=replace(screener.settings.policy.inbound, macro_action_plain=Action.REJECT)
    )
    screener.settings = replace(screener.settings, policy=policy)
    outcome = screener.screen(MessageSource.of(raw), envelope())
    assert outcome.verdict.action is Action.REJECT and outcome.verdict.reasons == ("macro",)
    assert not outcome.quarantine_id and store.list(ListFilter()) == []


def test_findings_and_summary_event_carry_ecs_fields(screening):
    screener, _, _ = screening
    raw = eicar_mail()
    outcome = screener.screen(MessageSource.of(raw), envelope())
    doc = event_of(outcome)
    assert doc["email"]["subject"] == "Your invoice"
    assert doc["email"]["message_id"] == "<abc.123@example.org>"
    assert doc["host"]["name"] == socket.gethostname()
    assert doc["source"] == {"ip": "192.0.2.7", "domain": None}
    member = next(
        f
        for f in doc["mailward"]["findings"]
        if f["location"] == "invoice.zip > eicar.com" and f["name"] == f"clamav:{EICAR_SIGNATURE}"
    )
    assert member["file"] == {
        "hash": {"sha256": hashlib.sha256(EICAR).hexdigest()},
        "name": "eicar.com",
        "mime_type": member["mime_type"],
    }
    assert member["sha256"] == hashlib.sha256(EICAR).hexdigest() and member["file_name"] == "eicar.com"
    assert doc["file"]["hash"]["sha256"]  # ECS's single file: the first object named
    assert doc["mailward"]["quarantine_id"] == outcome.quarantine_id


@pytest.mark.parametrize(
    "client_name, domain",
    [
        ("[127.0.0.1]", None),
        ("[IPv6:2001:db8::1]", None),
        ("unknown", None),
        ("", None),
        ("192.0.2.1", None),
        ("mx1.Example.ORG.", "mx1.example.org"),
        ("mail.example.net", "mail.example.net"),
    ],
)
def test_source_domain_is_a_host_name_or_nothing(client_name, domain):
    assert source_domain(client_name) == domain


def test_subject_with_control_characters_is_made_printable_for_logs(screening):
    screener, _, _ = screening
    raw = message(subject="Hi\x1b[31m there")
    outcome = screener.screen(MessageSource.of(raw), envelope("mx.example.org"))
    assert "\x1b" not in event_of(outcome)["email"]["subject"]
    assert event_of(outcome)["source"]["domain"] == "mx.example.org"
