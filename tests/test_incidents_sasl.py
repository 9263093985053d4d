"""End to end with SMTP AUTH: a real Postfix with Cyrus SASL (sasldb) and mailward-milter.

A compromised account's authenticated spam burst ends in its suspension (the milter sees
``{auth_authen}``), and a password-guessing client is blocked after 10 failures that Postfix
itself logged, found by the milter's own log follower (``incidents.follow_auth_log``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import smtplib
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from support.incidents import WebhookReceiver, wait_for
from support.mail import gtube_message

pytestmark = pytest.mark.postfix

PASSWORD = "correct horse battery"


@pytest.fixture
def sasl_postfix():
    """A private Postfix like the shared one, plus SMTP AUTH against a sasldb with user alice."""
    from harness.postfix import Postfix
    from real_parts import require

    require(os.geteuid() == 0, "end-to-end tests run Postfix and need root")
    require(
        shutil.which("postfix") is not None and shutil.which("saslpasswd2") is not None,
        "Postfix and sasl2-bin are not installed (run ./scripts/setup as root)",
    )
    run_dir = Path(tempfile.mkdtemp(prefix="mailward-sasl-", dir="/tmp"))
    os.chmod(run_dir, 0o755)
    pf = Postfix.create(run_dir / "sock" / "milter.sock")
    sasl = pf.conf / "sasl"  # where Debian's Postfix looks (cyrus_sasl_config_path is not consulted)
    sasl.mkdir()
    (sasl / "smtpd.conf").write_text(
        f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nmech_list: PLAIN LOGIN\nsasldb_path: {pf.base}/sasldb2\n"
    )
    subprocess.run(
        ["saslpasswd2", "-f", str(pf.base / "sasldb2"), "-p", "-c", "-u", "mx.mailward.test", "alice"],
        input=PASSWORD,
        text=True,
        check=True,
        capture_output=True,
    )
    shutil.chown(pf.base / "sasldb2", "postfix")
    subprocess.run(
        [
            "postconf",
            "-c",
            str(pf.conf),
            "-e",
            "smtpd_sasl_auth_enable = yes",
            "smtpd_sasl_type = cyrus",
            "smtpd_sasl_path = smtpd",
            "smtpd_sasl_security_options = noanonymous",
            "smtpd_relay_restrictions = permit_sasl_authenticated, permit_mynetworks, reject",
        ],
        check=True,
        capture_output=True,
    )
    pf.start()
    yield pf
    pf.destroy()
    shutil.rmtree(run_dir, ignore_errors=True)


def _events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")] if log.exists() else []


def test_compromised_account_is_suspended_and_password_guesser_blocked(sasl_postfix, tmp_path):
    from harness.milter import MilterProcess

    pf = sasl_postfix
    log = tmp_path / "milter.log"
    with WebhookReceiver() as hook:
        config = tmp_path / "mailward.toml"
        config.write_text(f"""\
state_dir = "{tmp_path / "state"}"
[milter]
socket = "unix:{pf.milter_socket}"
workers = 0
[incidents]
exempt_networks = []
follow_auth_log = true
auth_log = "{pf.base / "postfix.log"}"
refresh = 0.2
[incidents.account]
spam = 2
[alerts]
webhook_url = "{hook.url}"
[reputation]
enabled = false
[logging]
file = "{log}"
""")
        milter = MilterProcess(config, pf.milter_socket, log)
        milter.start()
        try:
            # 1. alice's password was phished: her authenticated spam is quarantined, then she is suspended.
            with smtplib.SMTP("127.0.0.1", pf.submission_port, timeout=60) as smtp:
                smtp.ehlo("laptop.example.org")
                smtp.login("alice@mx.mailward.test", PASSWORD)
                for _ in range(2):
                    smtp.sendmail("alice@mailward.test", ["victim@remote.test"], gtube_message()[1])
                code, text = smtp.mail("alice@mailward.test")
                text = text.decode()
                assert code == 550 and text.startswith("5.7.1 Sender not accepted (incident MW-"), text
            incident = re.search(r"incident (MW-\S+)\)", text).group(1)
            assert wait_for(lambda: any(a["kind"] == "suspension" for a in hook.received))
            [alert] = [a for a in hook.received if a["kind"] == "suspension"]
            assert alert["subject"] == "account alice@mx.mailward.test" and alert["incident_id"] == incident
            [suspension] = [e for e in _events(log) if e.get("event", {}).get("action") == "suspension"]
            assert suspension["user"]["name"] == "alice@mx.mailward.test"

            # 2. Someone guesses passwords: Postfix logs each failure, the milter's follower counts them.
            failures = 0
            for _ in range(4):
                with smtplib.SMTP("127.0.0.1", pf.submission_port, timeout=60) as smtp:
                    smtp.ehlo("guesser.example.net")
                    for _ in range(3):
                        if failures == 10:
                            break
                        with pytest.raises(smtplib.SMTPAuthenticationError):
                            smtp.login("bob@mx.mailward.test", f"guess{failures}")
                        failures += 1
            assert failures == 10
            assert wait_for(
                lambda: any(e.get("event", {}).get("action") == "auth-failures" for e in _events(log)), timeout=15
            ), pf.log()[-3000:]
            time.sleep(0.3)  # the milter's block list refreshes
            with pytest.raises(smtplib.SMTPConnectError) as refused:
                smtplib.SMTP("127.0.0.1", pf.submission_port, timeout=30)
            assert refused.value.smtp_code == 554
            assert wait_for(lambda: any(a["kind"] == "block" for a in hook.received))
            [block_alert] = [a for a in hook.received if a["kind"] == "block"]
            assert block_alert["subject"] == "address 127.0.0.1"
            assert "10 failed SMTP logins" in block_alert["details"]["reason"]
        finally:
            milter.stop()
    assert "SASL PLAIN authentication failed" in pf.log() or "SASL LOGIN authentication failed" in pf.log()
