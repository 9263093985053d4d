"""One serialisation per type: the quarantine record, `mailward scan --json` and the summary log agree."""

from __future__ import annotations

import json
from pathlib import Path

from mailward.cli.scan import report
from mailward.envelope import Direction, Envelope
from mailward.evidence import Category, Clue, Evidence, Finding, Severity, SpamAssessment
from mailward.screening import event_of
from mailward.verdict import Action, Outcome, Verdict

EVIDENCE = Evidence(
    findings=(
        Finding(
            Category.MALWARE,
            "clamav:Eicar",
            Severity.CRITICAL,
            "clamav",
            "a.zip > eicar.com",
            "",
            "ab" * 32,
            "eicar.com",
            "text/plain",
        ),
        Finding(Category.SPAM, "gtube", Severity.HIGH, "gtube", detail="test pattern"),
    ),
    spam=SpamAssessment(0.97, (Clue("viagra", 2.5), Clue("meeting", -1.25)), "m-1"),
)
ENVELOPE = Envelope(
    "a@example.org",
    ("b@example.net",),
    "192.0.2.7",
    "mx.example.org",
    "mx",
    "",
    "smtpd",
    "Q1",
    "C1",
    Direction.OUTBOUND,
)


def test_evidence_and_envelope_come_back_from_their_own_dicts():
    assert Evidence.from_dict(json.loads(json.dumps(EVIDENCE.as_dict()))) == EVIDENCE
    assert Envelope.from_dict(json.loads(json.dumps(ENVELOPE.as_dict()))) == ENVELOPE
    assert Evidence.from_dict(Evidence().as_dict()) == Evidence()
    local = Envelope("root@localhost", ("a@example.org",), "127.0.0.1", local_submission=True)
    assert Envelope.from_dict(json.loads(json.dumps(local.as_dict()))) == local  # the sendmail command's mail


def test_a_record_from_before_local_submission_was_kept_reads_as_smtp_mail():
    doc = ENVELOPE.as_dict()
    del doc["local_submission"]
    assert Envelope.from_dict(doc) == ENVELOPE


def test_the_log_line_and_the_scan_report_show_clues_and_findings_as_the_record_keeps_them():
    outcome = Outcome(ENVELOPE, Verdict(Action.QUARANTINE, ("malware",), "MW-1"), EVIDENCE, 100)
    kept = EVIDENCE.as_dict()
    clues = kept["spam"]["clues"]
    logged = event_of(outcome)["mailward"]
    assert logged["clues"] == clues == [{"token": "viagra", "weight": 2.5}, {"token": "meeting", "weight": -1.25}]
    assert [{k: v for k, v in f.items() if k != "file"} for f in logged["findings"]] == kept["findings"]
    scanned = report(Path("x.eml"), outcome)
    assert scanned["clues"] == clues and scanned["findings"] == kept["findings"]
