"""End to end: a real Postfix and mailward-milter; an abusing host is suspended, refused at connect,
shown in the metrics and the log, and let back in by `mailward block remove`."""

from __future__ import annotations

import re
import smtplib
import socket
import time
import urllib.request

import pytest

from mailward.cli.main import main as cli
from support.mail import gtube_message, message

pytestmark = pytest.mark.postfix


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_spamming_host_is_suspended_and_refused_at_connect(postfix, milter, tmp_path):
    port = _free_port()
    # Submission is ORIGINATING (outbound) and comes from 127.0.0.1, which is exempt by default: not here.
    m = milter(
        f"[incidents]\nexempt_networks = []\nrefresh = 0.5\n[incidents.outbound_host]\nspam = 2\n"
        f'[policy.outbound]\nspam_action = "reject"\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
        f"[reputation]\nenabled = false\n"
    )
    for _ in range(2):
        code, text = postfix.send(gtube_message()[1], port=postfix.submission_port, rcpts=("x@remote.test",))
        assert code == 550 and "Message classified as spam" in text
    # Refused at connect, before it could even try AUTH; Postfix's greeting is its own generic 554
    # (libmilter carries no reply text at connect), our log line has the incident ID.
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP("127.0.0.1", postfix.submission_port, timeout=30)
    assert refused.value.smtp_code == 554
    assert b"spam" not in refused.value.smtp_error.lower()

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'mailward_blocks_total{kind="address",origin="suspension"} 1.0' in metrics
    assert re.search(
        r'mailward_messages_total\{direction="outbound",reason="blocked",verdict="reject"\} [1-9]', metrics
    )
    assert 'mailward_blocks_active{kind="address"} 1.0' in metrics
    assert "mailward_rules_info{version=" in metrics and "mailward_stage_seconds_bucket" in metrics

    docs = m.events()
    [suspension] = [d for d in docs if d.get("event", {}).get("action") == "suspension"]
    assert suspension["source"]["ip"] == "127.0.0.1"
    [refusal] = [d for d in docs if d.get("mailward", {}).get("reasons") == ["blocked"]]
    assert refusal["mailward"]["incident_id"] == suspension["mailward"]["incident_id"]
    assert refusal["source"]["ip"] == "127.0.0.1" and refusal["event"]["action"] == "reject"
    alerts = [d for d in docs if d.get("event", {}).get("action") == "alert-suspension"]
    assert alerts and alerts[0]["mailward"]["alert"]["delivery"] == "queued"

    assert cli(["--config", str(tmp_path / "mailward.toml"), "block", "remove", "address", "127.0.0.1"]) == 0
    time.sleep(0.6)  # the milter's copy of the block list refreshes
    mid, raw = message()
    assert postfix.send(raw)[0] == 250
    assert postfix.delivered(mid) is not None
